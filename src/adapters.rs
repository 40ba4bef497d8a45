//! The adapters built into this binary. Adding a protocol is one crate under
//! `adapters/` and one line here.

use std::sync::Arc;

use baker_adapter_api::{Adapter, BrokerHealth};

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
