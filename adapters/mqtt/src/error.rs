//! The adapter's own errors, turned into the API's errors at its edge.

use baker_adapter_api::{redact_url, AdapterError};

/// Why a broker URL cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Not `mqtt://` (or `tcp://`).
    #[error("expected mqtt://[USER:PASSWORD@]HOST[:PORT][?client_id=ID&session_expiry=SECS&keep_alive=SECS]")]
    Scheme,
    /// `mqtts://` needs a TLS backend this build does not have.
    #[error("TLS (mqtts://) is not supported by this build")]
    Tls,
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
