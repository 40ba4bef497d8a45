//! The directory as agents and routers use it, whichever engine holds it:
//! the embedded directory over HTTP, or an engine of its own crate.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::Every;

use super::http::{HttpDirectory, Identity};
use super::{Catalog, Changes, ClientError, Directory, InstanceRecord};

/// A directory: where agents register their instances and routers watch
/// the catalog. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DirectoryClient(Arc<dyn Directory>);

impl DirectoryClient {
    /// A client of `directory`.
    pub fn new(directory: impl Directory) -> Self {
        Self(Arc::new(directory))
    }

    /// A client of the embedded directory at `base` (e.g.
    /// `http://127.0.0.1:7070`), as `identity`.
    pub fn http(base: &str, identity: &Identity) -> Self {
        Self::new(HttpDirectory::new(base, identity))
    }

    /// The directory's URL, password redacted.
    pub fn url(&self) -> &str {
        self.0.url()
    }

    /// Registers `record`, starting its lease.
    pub async fn register(&self, record: &InstanceRecord) -> Result<(), ClientError> {
        self.0.register(record).await
    }

    /// Extends `record`'s lease. [`ClientError::LeaseUnknown`] means:
    /// register again.
    pub async fn renew(&self, record: &InstanceRecord) -> Result<(), ClientError> {
        self.0.renew(record).await
    }

    /// Removes a registration.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError> {
        self.0.deregister(service, id).await
    }

    /// The live catalog; when `after` is given, waits up to `wait` for it to
    /// change from that (epoch, index).
    pub async fn catalog(
        &self,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Catalog, ClientError> {
        let mut catalog = self.0.catalog(after, wait).await?;
        strip_credentials(&mut catalog.instances);
        Ok(catalog)
    }

    /// What changed in `services` since `after` (all of their records
    /// without it), waiting up to `wait` for a change of one of them.
    pub async fn watch(
        &self,
        services: &BTreeSet<String>,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Changes, ClientError> {
        let mut changes = self.0.watch(services, after, wait).await?;
        strip_credentials(&mut changes.instances);
        Ok(changes)
    }

    /// True when the directory answers.
    pub async fn ping(&self) -> bool {
        self.0.ping().await
    }
}

/// Removes credentials from records written by older agents: a router never
/// shows or uses them (it connects with its own).
fn strip_credentials(records: &mut [InstanceRecord]) {
    let mut stripped = 0;
    for record in records {
        stripped += usize::from(record.strip_credentials());
    }
    if stripped > 0 {
        static STRIPPED: Every = Every::new(Duration::from_secs(300));
        if STRIPPED.check().is_some() {
            tracing::warn!(
                stripped,
                "instance records name their brokers with credentials; \
                    ignored (this router connects with its own: see [[brokers]] in \
                    docs/configuration.md); upgrade the agents that write them"
            );
        }
    }
}
