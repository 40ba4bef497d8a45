//! Baker's settings in a NATS broker URL's query: which ingress
//! (`ingress=core|jetstream`), durable inboxes (`inbox=jetstream`), and the
//! settings of the streams and consumers Baker creates.

use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};

use crate::UrlError;

/// How long the server waits for a message's ack before redelivering it,
/// unless the broker URL says (`ack_wait_secs`): longer than the slowest
/// delivery with its retries. A message held longer sends progress acks.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The JetStream settings a broker URL's query can give: `storage`,
/// `replicas`, `max_bytes`, `max_age_secs`, applied when Baker creates a
/// stream, and `ack_wait_secs`, applied when it creates the ingress's
/// durable consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    pub storage: StorageType,
    pub replicas: usize,
    pub max_bytes: i64,
    pub max_age: Duration,
    pub ack_wait: Duration,
}

impl StreamSettings {
    /// The settings in `url`'s query, or why they are not valid.
    pub fn from_url(url: &str) -> Result<Self, UrlError> {
        let mut settings = StreamSettings {
            storage: StorageType::File,
            replicas: 1,
            max_bytes: -1,
            max_age: Duration::ZERO,
            ack_wait: ACK_WAIT,
        };
        let Some(query) = baker_adapter_api::split_query(url).1 else {
            return Ok(settings);
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let invalid = |expected| UrlError::Value {
                key: key.to_owned(),
                value: value.to_owned(),
                expected,
            };
            let number = || value.parse::<u64>().map_err(|_| invalid("a whole number"));
            match key {
                "storage" => {
                    settings.storage = match value {
                        "file" => StorageType::File,
                        "memory" => StorageType::Memory,
                        _ => return Err(invalid("file or memory")),
                    }
                }
                "replicas" => {
                    settings.replicas = match number()? {
                        n @ 1..=5 => n as usize,
                        _ => return Err(invalid("1 to 5")),
                    }
                }
                "max_bytes" => settings.max_bytes = i64::try_from(number()?).unwrap_or(i64::MAX),
                "max_age_secs" => settings.max_age = Duration::from_secs(number()?),
                "ack_wait_secs" => {
                    settings.ack_wait = match number()? {
                        n @ 1..=3600 => Duration::from_secs(n),
                        _ => return Err(invalid("1 to 3600")),
                    }
                }
                "inbox" if value == "jetstream" => {}
                "ingress" if value == "jetstream" || value == "core" => {}
                _ => return Err(UrlError::Unknown(pair.to_owned())),
            }
        }
        Ok(settings)
    }

    pub(crate) fn apply(&self, config: StreamConfig) -> StreamConfig {
        StreamConfig {
            storage: self.storage,
            num_replicas: self.replicas,
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            ..config
        }
    }
}

/// A stream name from `text`: letters, digits, `-` and `_` kept, the rest `_`.
pub fn stream_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether the broker URL asks for a durable inbox (`?inbox=jetstream`).
pub fn durable_inbox(url: &str) -> bool {
    has_setting(url, "inbox=jetstream")
}

/// Whether the broker URL asks for the JetStream ingress (`?ingress=jetstream`).
pub fn jetstream_ingress(url: &str) -> bool {
    has_setting(url, "ingress=jetstream")
}

fn has_setting(url: &str, pair: &str) -> bool {
    baker_adapter_api::split_query(url)
        .1
        .is_some_and(|query| query.split('&').any(|p| p == pair))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UrlError;

    #[test]
    fn stream_settings_come_from_the_url_query() {
        let plain = StreamSettings::from_url("nats://127.0.0.1:4222").unwrap();
        assert_eq!((plain.storage, plain.replicas), (StorageType::File, 1));
        let set = StreamSettings::from_url(
            "nats://h:4222?storage=memory&replicas=3&max_bytes=1048576&max_age_secs=60&inbox=jetstream",
        )
        .unwrap();
        assert_eq!(set.storage, StorageType::Memory);
        assert_eq!(set.replicas, 3);
        assert_eq!(set.max_bytes, 1_048_576);
        assert_eq!(set.max_age, Duration::from_secs(60));
        assert_eq!(plain.ack_wait, ACK_WAIT);
        let short = StreamSettings::from_url("nats://h?ack_wait_secs=3").unwrap();
        assert_eq!(short.ack_wait, Duration::from_secs(3));
        assert!(StreamSettings::from_url("nats://h?ack_wait_secs=0").is_err());
        assert!(StreamSettings::from_url("nats://h?replicas=7")
            .unwrap_err()
            .to_string()
            .contains("1 to 5"));
        assert!(StreamSettings::from_url("nats://h?ingress=jetstream&inbox=jetstream").is_ok());
        assert!(jetstream_ingress(
            "nats://h?storage=memory&ingress=jetstream"
        ));
        assert!(!jetstream_ingress("nats://h?ingress=core"));
        assert!(StreamSettings::from_url("nats://h?ingress=jetsream").is_err());
        assert_eq!(
            StreamSettings::from_url("nats://h?colour=blue"),
            Err(UrlError::Unknown("colour=blue".into()))
        );
        assert!(durable_inbox("nats://h?storage=memory&inbox=jetstream"));
        assert!(!durable_inbox("nats://h?storage=memory"));
    }
}
