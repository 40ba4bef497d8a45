//! The instance record: what the directory knows about one service instance.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Health status of an instance, as registered by its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Healthy: routers send to it.
    #[default]
    Passing,
    /// Failing its health checks: routers skip it.
    Critical,
    /// Leaving: routers send it nothing new while its in-flight work finishes.
    Draining,
}

impl Status {
    /// The lowercase name used in the API and in `baker-mq status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Critical => "critical",
            Status::Draining => "draining",
        }
    }
}

/// Where an instance consumes its messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    /// Adapter name: `nats`, `memory`, ...
    pub adapter: String,
    /// Broker URL, e.g. `nats://127.0.0.1:4222`.
    pub broker: String,
    /// Inbox address on that broker, e.g. `_baker.orders.orders-1`.
    pub inbox: String,
}

/// One registered instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    /// Service name: letters, digits, `-` and `_`.
    pub service: String,
    /// Instance id, unique within the service: letters, digits, `-` and `_`.
    pub id: String,
    /// Version of the software the instance runs (free-form).
    #[serde(default)]
    pub version: String,
    /// Where the instance consumes its messages.
    pub endpoint: EndpointRecord,
    /// Relative share of traffic under the `weighted` policy.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Availability zone or other locality label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Health status.
    #[serde(default)]
    pub status: Status,
    /// Lease length in seconds: the record expires unless renewed within it.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
}

/// Default weight of an instance.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Default lease length.
pub const DEFAULT_TTL_SECS: u64 = 10;

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn default_ttl_secs() -> u64 {
    DEFAULT_TTL_SECS
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// A name field holds characters that cannot appear in every protocol's
    /// addresses.
    #[error("{field} {value:?} must be 1-128 characters of letters, digits, '-' or '_'")]
    InvalidName { field: &'static str, value: String },
    /// The lease length is out of range.
    #[error("ttl_secs must be between 1 and 3600, got {0}")]
    InvalidTtl(u64),
    /// A field is longer than a record needs.
    #[error("{field} is {len} bytes; at most {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// More metadata entries than a record needs.
    #[error("metadata has {0} entries; at most {MAX_METADATA_ENTRIES}")]
    TooManyLabels(usize),
}

/// Longest broker URL, inbox, version or zone in a record.
pub const MAX_FIELD_LEN: usize = 1024;
/// Most metadata entries in a record.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Longest metadata key or value.
pub const MAX_LABEL_LEN: usize = 256;

/// True for a name usable as a token in every protocol's addresses (a NATS
/// subject token, an MQTT topic level, an AMQP routing-key word).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl InstanceRecord {
    /// Checks names and lease length.
    pub fn validate(&self) -> Result<(), RecordError> {
        for (field, value) in [("service", &self.service), ("id", &self.id)] {
            if !valid_name(value) {
                return Err(RecordError::InvalidName {
                    field,
                    value: value.clone(),
                });
            }
        }
        if !(1..=3600).contains(&self.ttl_secs) {
            return Err(RecordError::InvalidTtl(self.ttl_secs));
        }
        let zone = self.zone.as_deref().unwrap_or_default();
        for (field, value, max) in [
            ("endpoint.adapter", self.endpoint.adapter.as_str(), 64),
            ("endpoint.broker", &self.endpoint.broker, MAX_FIELD_LEN),
            ("endpoint.inbox", &self.endpoint.inbox, MAX_FIELD_LEN),
            ("version", &self.version, 128),
            ("zone", zone, 128),
        ] {
            if value.len() > max {
                return Err(RecordError::TooLong {
                    field,
                    len: value.len(),
                    max,
                });
            }
        }
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(RecordError::TooManyLabels(self.metadata.len()));
        }
        for (key, value) in &self.metadata {
            for text in [key, value] {
                if text.len() > MAX_LABEL_LEN {
                    return Err(RecordError::TooLong {
                        field: "metadata",
                        len: text.len(),
                        max: MAX_LABEL_LEN,
                    });
                }
            }
        }
        Ok(())
    }

    /// Removes credentials from the endpoint's broker URL (records name
    /// brokers without them; each router connects with its own); whether
    /// there were any.
    pub fn strip_credentials(&mut self) -> bool {
        let broker = &mut self.endpoint.broker;
        if !baker_adapter_api::has_credentials(broker) {
            return false;
        }
        *broker = baker_adapter_api::without_credentials(broker);
        true
    }

    /// True when routers may send to this instance.
    pub fn routable(&self) -> bool {
        self.status == Status::Passing
    }
}

/// Everything the directory holds at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Random id of the directory process: changes when it restarts, so a
    /// watcher knows its index no longer means anything.
    pub epoch: u64,
    /// Incremented on every change.
    pub index: u64,
    /// Every live instance, ordered by service then id.
    pub instances: Vec<InstanceRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-]{1,12}"
    }

    prop_compose! {
        fn records()(
            service in name(),
            id in name(),
            version in ".{0,12}",
            adapter in "nats|amqp|mqtt|memory",
            host in "[a-z0-9.-]{1,12}",
            credentials in proptest::option::of(("[a-z]{1,6}", "[^@:]{1,10}")),
            inbox in ".{0,20}",
            weight in any::<u32>(),
            zone in proptest::option::of(".{0,8}"),
            metadata in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
            status in prop_oneof![Just(Status::Passing), Just(Status::Critical), Just(Status::Draining)],
            ttl_secs in 1u64..=3600,
        ) -> InstanceRecord {
            let userinfo = credentials
                .map(|(user, password)| format!("{user}:{password}@"))
                .unwrap_or_default();
            InstanceRecord {
                service,
                id,
                version,
                endpoint: EndpointRecord {
                    broker: format!("{adapter}://{userinfo}{host}:4222"),
                    adapter,
                    inbox,
                },
                weight,
                zone,
                metadata,
                status,
                ttl_secs,
            }
        }
    }

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 500,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn a_record_survives_its_json(record in records()) {
            let text = serde_json::to_string(&record).unwrap();
            let back: InstanceRecord = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &record);
            prop_assert!(record.validate().is_ok(), "{:?}", record.validate());
        }

        #[test]
        fn any_json_is_read_or_refused_without_panicking(text in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for input in [text.as_bytes(), &bytes] {
                if let Ok(record) = serde_json::from_slice::<InstanceRecord>(input) {
                    let _ = record.validate();
                }
            }
        }

        #[test]
        fn stripping_credentials_leaves_no_password(mut record in records()) {
            let password = record
                .endpoint
                .broker
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .and_then(|(userinfo, _)| userinfo.split_once(':'))
                .map(|(_, password)| password.to_owned());
            let had = record.strip_credentials();
            prop_assert_eq!(had, password.is_some());
            if let Some(password) = password {
                prop_assert!(
                    !record.endpoint.broker.contains(&format!(":{password}@")),
                    "{}",
                    record.endpoint.broker
                );
                prop_assert!(!record.endpoint.broker.contains('@'), "{}", record.endpoint.broker);
                let shown = baker_adapter_api::redact_url(&format!("nats://u:{password}@h:4222/v?q=1"));
                prop_assert_eq!(shown, "nats://h:4222/v");
            }
        }
    }
}
