//! What this binary has built in that names a protocol: the adapters, the
//! directory engines besides the embedded one, and the settings that moved
//! into an adapter's own. Adding a protocol is a crate under `adapters/` (or
//! `directory/`) and lines here.

use std::sync::Arc;

use baker_adapter_api::{AccessBook, Adapter, BrokerHealth, IngressOptions};

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

impl std::fmt::Debug for AdapterRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AdapterRegistry")
            .field(&self.names())
            .finish()
    }
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

    /// Whether a send to `record`'s instance fails once it is gone (see
    /// `Adapter::send_fails_when_gone`); false for an adapter this build
    /// lacks.
    pub fn send_fails_when_gone(&self, record: &crate::directory::InstanceRecord) -> bool {
        let endpoint = baker_adapter_api::Endpoint {
            adapter: record.endpoint.adapter.clone(),
            broker: record.endpoint.broker.clone(),
            inbox: record.endpoint.inbox.clone(),
        };
        (self.get(&record.endpoint.adapter)).is_some_and(|a| a.send_fails_when_gone(&endpoint))
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

    /// Checks an instance's endpoint as a record gives it: an adapter of
    /// this build, a broker URL it can use, a literal inbox address, and
    /// one outside the namespace of an ingress subscribed with `ingress`
    /// (where a delivered message would come back to the routers).
    pub fn check_endpoint(
        &self,
        adapter: &str,
        broker: &str,
        inbox: &str,
        ingress: &IngressOptions,
    ) -> Result<(), EndpointRefusal> {
        let Some(found) = self.get(adapter) else {
            return Err(EndpointRefusal::UnknownAdapter(format!(
                "adapter {adapter:?} is not built into this baker-mq (available: {})",
                self.names().join(", ")
            )));
        };
        (found.validate_broker(broker))
            .map_err(|e| EndpointRefusal::InvalidBroker(e.to_string()))?;
        (found.validate_inbox(inbox)).map_err(|e| EndpointRefusal::InvalidInbox(e.to_string()))?;
        if found.inbox_in_ingress(inbox, ingress) {
            return Err(EndpointRefusal::Loop(format!(
                "inbox {inbox:?} lies in the ingress namespace (prefix {:?}, group {:?}): \
                 messages delivered there would be routed again",
                ingress.prefix, ingress.queue_group
            )));
        }
        Ok(())
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

/// Why an endpoint is not routed to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointRefusal {
    /// No adapter of this name.
    #[error("{0}")]
    UnknownAdapter(String),
    /// The broker URL does not parse for the adapter.
    #[error("{0}")]
    InvalidBroker(String),
    /// The inbox is not a literal address for the adapter.
    #[error("{0}")]
    InvalidInbox(String),
    /// The inbox lies in an ingress namespace.
    #[error("{0}")]
    Loop(String),
    /// The broker is not one this router may connect to.
    #[error("{0}")]
    NotAllowed(String),
    /// The adapter could not bind a target.
    #[error("{0}")]
    Bind(String),
}

impl EndpointRefusal {
    /// The `reason` label of `baker_records_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::UnknownAdapter(_) => "unknown_adapter",
            Self::InvalidBroker(_) => "invalid_broker",
            Self::InvalidInbox(_) => "invalid_inbox",
            Self::Loop(_) => "loop",
            Self::NotAllowed(_) => "broker_not_allowed",
            Self::Bind(_) => "bind",
        }
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

    /// A client of the engine, connecting in the background with the
    /// credentials and TLS `access` holds for its servers; writes are
    /// `owner`'s.
    pub async fn open(
        &self,
        access: &AccessBook,
        owner: &str,
    ) -> Result<DirectoryClient, ClientError> {
        let _ = (access, owner);
        match *self {
            #[cfg(feature = "nats")]
            Self::Kv(ref settings) => Ok(DirectoryClient::new(
                baker_directory_kv::KvDirectory::new(
                    settings.clone(),
                    access.get(&settings.servers),
                    owner,
                )
                .await?,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 300,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Every built-in adapter reads any broker URL, inbox and access
        /// settings without panicking, and names the URL only redacted.
        #[test]
        fn any_broker_url_or_inbox_is_checked_without_panicking(
            scheme in "nats|tls|amqp|amqps|mqtt|mqtts|tcp|ssl|memory|[a-z]{1,5}",
            rest in ".{0,40}",
            inbox in ".{0,20}",
        ) {
            let url = format!("{scheme}://{rest}");
            let registry = AdapterRegistry::builtin();
            for name in registry.names() {
                let adapter = registry.get(name).unwrap();
                if let Err(error) = adapter.validate_broker(&url) {
                    let text = error.to_string();
                    if let Some((_, Some(password))) = baker_adapter_api::access::url_credentials(&url) {
                        prop_assert!(!text.contains(&format!(":{password}@")), "{text}");
                    }
                }
                let _ = adapter.validate_inbox(&inbox);
            }
        }
    }
}
