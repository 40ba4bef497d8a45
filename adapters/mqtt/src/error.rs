//! The adapter's own errors, turned into the API's errors at its edge. Each
//! message says what was being done. Connection errors are not among them:
//! every connection retries, and logs its failures ([`crate::connect`]).

use baker_adapter_api::{redact_url, AdapterError};

/// Why a broker URL cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Not `mqtt://` or `mqtts://` (or `tcp://`, `ssl://`).
    #[error("expected mqtt://[USER:PASSWORD@]HOST[:PORT][?client_id=ID&session_expiry=SECS&keep_alive=SECS], or mqtts:// for TLS")]
    Scheme,
    /// The port is not a number.
    #[error("port {0:?} is not a number")]
    Port(String),
    /// A query parameter Baker does not know, or a malformed value.
    #[error(
        "query parameter {0:?}: expected client_id=ID, session_expiry=SECS or keep_alive=SECS"
    )]
    Query(String),
}

impl UrlError {
    /// The API error naming `url` (password redacted).
    pub fn for_url(self, url: &str) -> AdapterError {
        AdapterError::InvalidBroker {
            url: redact_url(url),
            reason: self.to_string(),
        }
    }
}

/// Why the MQTT adapter could not connect or subscribe.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The broker refused the subscription.
    #[error("the broker refused the subscription {filter}: {codes}")]
    SubscriptionRefused { filter: String, codes: String },
    /// No subscription was granted in time.
    #[error("no subscription to {filter} within {secs} s")]
    SubscribeTimeout { filter: String, secs: u64 },
    /// The connection's task ended before the subscription was granted.
    #[error("the connection for {filter} ended before it subscribed")]
    Ended { filter: String },
}

impl MqttError {
    /// The API error for `url` (password redacted).
    pub fn for_url(self, url: &str) -> AdapterError {
        AdapterError::Broker {
            url: redact_url(url),
            reason: self.to_string(),
        }
    }
}
