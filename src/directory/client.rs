//! The directory as agents and routers use it, whichever engine holds it:
//! the embedded directory over HTTP, or a JetStream key-value bucket.

use std::time::Duration;

use super::http::HttpDirectory;
#[cfg(feature = "nats")]
use super::kv::KvDirectory;
use super::record::{Catalog, InstanceRecord};

/// Errors talking to the directory.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered, or the connection broke.
    #[error("directory {url} unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The lease is unknown to the directory (expired or lost in a restart).
    #[error("lease unknown to the directory")]
    LeaseUnknown,
    /// The directory refused the request.
    #[error("directory refused the request ({status}): {body}")]
    Refused { status: u16, body: String },
}

/// A directory: where agents register their instances and routers watch
/// the catalog.
#[derive(Clone, Debug)]
pub enum DirectoryClient {
    /// The embedded directory, over HTTP/JSON.
    Http(HttpDirectory),
    /// A JetStream key-value bucket.
    #[cfg(feature = "nats")]
    Kv(KvDirectory),
}

impl DirectoryClient {
    /// A client of the embedded directory at `base` (e.g.
    /// `http://127.0.0.1:7070`).
    pub fn http(base: &str) -> Self {
        Self::Http(HttpDirectory::new(base))
    }

    /// The directory's URL, password redacted.
    pub fn url(&self) -> &str {
        match self {
            Self::Http(http) => http.url(),
            #[cfg(feature = "nats")]
            Self::Kv(kv) => kv.url(),
        }
    }

    /// Registers `record`, starting its lease.
    pub async fn register(&self, record: &InstanceRecord) -> Result<(), ClientError> {
        match self {
            Self::Http(http) => http.register(record).await,
            #[cfg(feature = "nats")]
            Self::Kv(kv) => kv.register(record).await,
        }
    }

    /// Extends `record`'s lease. [`ClientError::LeaseUnknown`] means:
    /// register again.
    pub async fn renew(&self, record: &InstanceRecord) -> Result<(), ClientError> {
        match self {
            Self::Http(http) => http.renew(&record.service, &record.id).await,
            // A bucket entry carries its own lease: renewing is writing it
            // again.
            #[cfg(feature = "nats")]
            Self::Kv(kv) => kv.register(record).await,
        }
    }

    /// Removes a registration.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError> {
        match self {
            Self::Http(http) => http.deregister(service, id).await,
            #[cfg(feature = "nats")]
            Self::Kv(kv) => kv.deregister(service, id).await,
        }
    }

    /// The live catalog; when `after` is given, waits up to `wait` for it to
    /// change from that (epoch, index).
    pub async fn catalog(
        &self,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Catalog, ClientError> {
        match self {
            Self::Http(http) => http.catalog(after, wait).await,
            #[cfg(feature = "nats")]
            Self::Kv(kv) => kv.catalog(after, wait).await,
        }
    }

    /// True when the directory answers.
    pub async fn ping(&self) -> bool {
        match self {
            Self::Http(http) => http.ping().await,
            #[cfg(feature = "nats")]
            Self::Kv(kv) => kv.ping(),
        }
    }
}
