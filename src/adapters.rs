//! The adapters built into this binary, and the settings that moved into
//! an adapter's own. Adding a protocol is a crate under `adapters/` and a line
//! here.

use std::sync::Arc;

use baker_adapter_api::{Adapter, BrokerHealth};

/// The adapter of the ingress and of registered instances unless the
/// configuration names another.
pub const DEFAULT_ADAPTER: &str = "nats";

/// The adapter `baker-mq demo` runs on unless told otherwise: one that needs
/// no broker.
pub const DEMO_ADAPTER: &str = "memory";

/// Default log filter: Baker's own events (the adapters' included), and only
/// warnings from libraries (lapin warns once per returned message, which
/// Baker handles and counts).
pub const DEFAULT_LOG: &str =
    "warn,lapin::returned_messages=error,baker_mq=info,baker_adapter_api=info,baker_adapter_amqp=info,baker_adapter_nats=info,baker_adapter_mqtt=info,baker_adapter_memory=info";

/// Every adapter this build has, by name.
#[derive(Clone)]
pub struct AdapterRegistry {
    adapters: Vec<Arc<dyn Adapter>>,
}

impl AdapterRegistry {
    /// The adapters enabled by cargo features.
    pub fn builtin() -> Self {
        let adapters: Vec<Arc<dyn Adapter>> = vec![
            #[cfg(feature = "amqp")]
            Arc::new(baker_adapter_amqp::AmqpAdapter::default()),
            #[cfg(feature = "nats")]
            Arc::new(baker_adapter_nats::NatsAdapter::default()),
            #[cfg(feature = "mqtt")]
            Arc::new(baker_adapter_mqtt::MqttAdapter::default()),
            #[cfg(feature = "memory")]
            Arc::new(baker_adapter_memory::MemoryAdapter),
        ];
        Self { adapters }
    }

    /// The adapter called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Adapter>> {
        self.adapters.iter().find(|a| a.name() == name)
    }

    /// Names of every adapter.
    pub fn names(&self) -> Vec<&'static str> {
        self.adapters.iter().map(|a| a.name()).collect()
    }

    /// Flushes every adapter's connections, waiting at most `timeout`.
    pub async fn flush(&self, timeout: std::time::Duration) {
        let all = futures::future::join_all(self.adapters.iter().map(|a| a.flush()));
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("brokers did not confirm the final flush in time");
        }
    }

    /// Connection state of every broker any adapter has opened.
    pub fn health(&self) -> Vec<BrokerHealth> {
        self.adapters.iter().flat_map(|a| a.health()).collect()
    }
}

/// A setting that moved into an adapter's broker URL: naming it is an error
/// that says what to write instead (silently ignoring it would change how a
/// router takes its messages).
pub struct MovedSetting {
    /// Its config-file key.
    pub key: &'static str,
    /// Its environment variable.
    pub variable: &'static str,
    /// What to write instead.
    pub instead: &'static str,
}

/// Every setting that moved into an adapter (the flags are gone too; clap
/// refuses them).
pub const MOVED_SETTINGS: &[MovedSetting] = &[MovedSetting {
    key: "nats_ingress",
    variable: "BAKER_NATS_INGRESS",
    instead: "the NATS ingress is chosen in the broker URL now: \
              nats://HOST:PORT?ingress=jetstream (or ?ingress=core, the default)",
}];
