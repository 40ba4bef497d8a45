//! What a directory is to Baker, whichever engine holds it: the instance
//! record and the catalog ([`record`]), and the [`Directory`] trait that
//! agents register through and routers watch through. The embedded
//! directory's HTTP client lives in the core; other engines (the JetStream
//! key-value bucket) are crates of their own that implement the trait.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;

pub mod changes;
pub mod record;

pub use changes::{Changes, Removal, RemovalCause, MAX_WATCHED_SERVICES};

pub use record::{
    valid_name, Catalog, EndpointRecord, InstanceRecord, RecordError, Status, DEFAULT_TTL_SECS,
    DEFAULT_WEIGHT,
};

#[cfg(feature = "testing")]
pub mod testing;

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
    /// Another owner's live lease holds the instance (two sidecars
    /// registering the same instance id?).
    #[error("the instance is registered by another owner: {0}")]
    Owned(String),
    /// The directory refused the request.
    #[error("directory refused the request ({status}): {body}")]
    Refused { status: u16, body: String },
}

/// A directory: where agents register their instances and routers watch
/// the catalog.
#[async_trait]
pub trait Directory: Send + Sync + std::fmt::Debug + 'static {
    /// The directory's URL, password redacted.
    fn url(&self) -> &str;

    /// Registers `record`, starting its lease.
    async fn register(&self, record: &InstanceRecord) -> Result<(), ClientError>;

    /// Extends `record`'s lease. [`ClientError::LeaseUnknown`] means:
    /// register again.
    async fn renew(&self, record: &InstanceRecord) -> Result<(), ClientError>;

    /// Removes a registration.
    async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError>;

    /// The live catalog; when `after` is given, waits up to `wait` for it to
    /// change from that (epoch, index).
    async fn catalog(
        &self,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Catalog, ClientError>;

    /// The records of `services`: all of them without `after` (or when the
    /// directory cannot tell what changed since), else the changes since
    /// that (epoch, index), waiting up to `wait` for one. Only a change of
    /// one of `services` ends the wait: a router is not woken, nor sent
    /// anything, for the rest of the fleet.
    ///
    /// The default answers in full from [`Directory::catalog`], for engines
    /// that only keep the whole catalog.
    async fn watch(
        &self,
        services: &BTreeSet<String>,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Changes, ClientError> {
        let catalog = self.catalog(after, wait).await?;
        Ok(Changes::full_from(catalog, services))
    }

    /// True when the directory answers.
    async fn ping(&self) -> bool;
}
