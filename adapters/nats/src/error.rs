//! The adapter's own errors, turned into the API's errors at its edge.

use baker_adapter_api::{redact_url, AdapterError};

/// Why a broker URL cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Not `nats://` (or `tls://`).
    #[error("expected nats://HOST:PORT[,HOST:PORT...]")]
    Scheme,
    /// One of the servers is not a server address.
    #[error("{server:?}: {reason}")]
    Server { server: String, reason: String },
    /// A setting of the query Baker does not know.
    #[error("unknown setting {0:?} (expected ingress=core|jetstream, inbox=jetstream, storage, replicas, max_bytes, max_age_secs, ack_wait_secs)")]
    Unknown(String),
    /// A setting's value is out of range or malformed.
    #[error("{key}={value:?}: expected {expected}")]
    Value {
        key: String,
        value: String,
        expected: &'static str,
    },
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
