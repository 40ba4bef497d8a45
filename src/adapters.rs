//! What this binary has built in that names a protocol: the adapters, the
//! directory engines besides the embedded one, and the settings that moved
//! into an adapter's own. Adding a protocol is a crate under `adapters/` (or
//! `directory/`) and lines here.

use std::sync::Arc;

use baker_adapter_api::{AccessBook, Adapter, BrokerHealth};

use crate::directory::{ClientError, DirectoryClient};

/// The adapter of the ingress and of registered instances unless the
/// configuration names another.
pub const DEFAULT_ADAPTER: &str = "nats";

/// The adapter that needs no broker (its brokers live in the process): what
/// `baker-mq demo` runs on unless told otherwise, and what unit tests route
/// through.
pub const IN_PROCESS_ADAPTER: &str = "memory";

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
    /// The adapters enabled by cargo features, with no `[[brokers]]`
    /// settings.
    pub fn builtin() -> Self {
        Self::with_access(&AccessBook::default())
    }

    /// The adapters enabled by cargo features, connecting with the
    /// credentials and TLS `access` holds for each broker.
    pub fn with_access(access: &AccessBook) -> Self {
        let adapters: Vec<Arc<dyn Adapter>> = vec![
            #[cfg(feature = "amqp")]
            Arc::new(baker_adapter_amqp::AmqpAdapter::new(access.clone())),
            #[cfg(feature = "nats")]
            Arc::new(baker_adapter_nats::NatsAdapter::new(access.clone())),
            #[cfg(feature = "mqtt")]
            Arc::new(baker_adapter_mqtt::MqttAdapter::new(access.clone())),
            #[cfg(feature = "memory")]
            Arc::new(baker_adapter_memory::MemoryAdapter),
        ];
        Self { adapters }
    }

    /// The adapter called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Adapter>> {
        self.adapters.iter().find(|a| a.name() == name)
    }

    /// The adapter whose URLs have `url`'s scheme.
    pub fn for_url(&self, url: &str) -> Option<&Arc<dyn Adapter>> {
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        self.adapters
            .iter()
            .find(|a| a.schemes().contains(&scheme.as_str()))
    }

    /// Every URL scheme of every adapter, e.g. `nats://`.
    pub fn schemes(&self) -> Vec<String> {
        let schemes = self.adapters.iter().flat_map(|a| a.schemes());
        schemes.map(|s| format!("{s}://")).collect()
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

/// A directory engine other than the embedded one, chosen by its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryEngine {
    /// A JetStream key-value bucket
    /// (`nats://HOST:PORT[,HOST:PORT...][?bucket=NAME&replicas=N]`).
    #[cfg(feature = "nats")]
    Kv(baker_directory_kv::KvSettings),
}

impl DirectoryEngine {
    /// The engine `url` names: `None` when no engine of this build claims
    /// it, else the engine or why the URL is not valid for it.
    pub fn for_url(url: &str) -> Option<Result<Self, String>> {
        #[cfg(feature = "nats")]
        if baker_directory_kv::KvSettings::claims(url) {
            return Some(
                baker_directory_kv::KvSettings::parse(url)
                    .map(Self::Kv)
                    .map_err(|e| e.to_string()),
            );
        }
        let _ = url;
        None
    }

    /// The URL forms the engines of this build take, for error messages.
    pub fn url_forms() -> &'static [&'static str] {
        &[
            #[cfg(feature = "nats")]
            "nats://HOST:PORT[,HOST:PORT...] (JetStream key-value bucket)",
        ]
    }

    /// The engine's URL, in canonical form.
    pub fn url(&self) -> String {
        match *self {
            #[cfg(feature = "nats")]
            Self::Kv(ref settings) => settings.display_url(),
        }
    }

    /// A client of the engine, connecting in the background.
    pub async fn open(&self) -> Result<DirectoryClient, ClientError> {
        match *self {
            #[cfg(feature = "nats")]
            Self::Kv(ref settings) => Ok(DirectoryClient::new(
                baker_directory_kv::KvDirectory::new(settings.clone()).await?,
            )),
        }
    }
}
