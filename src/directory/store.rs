//! The directory's state: instance records with leases, and a change index
//! that watchers wait on.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::record::{Catalog, InstanceRecord, RecordError};

struct Lease {
    record: InstanceRecord,
    expires_at: Instant,
    /// Who registered it: an agent's owner id, or empty (an agent of a
    /// release without owners; anyone may take such a lease).
    owner: String,
}

impl Lease {
    /// Whether `owner` may not touch this lease at `now`: it is live and
    /// another's.
    fn held_against(&self, owner: &str, now: Instant) -> bool {
        !self.owner.is_empty() && self.owner != owner && self.expires_at > now
    }
}

/// Why the store refused a registration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The record is not valid.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A live lease of another owner holds the instance.
    #[error("{service}/{id} is registered by another owner until its lease ends (two sidecars registering the same instance id?)")]
    Owned { service: String, id: String },
}

/// What became of a renewal or deregistration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Done.
    Done,
    /// No such lease (expired, never registered, or lost in a restart).
    Unknown,
    /// A live lease of another owner.
    Owned,
}

struct Inner {
    leases: BTreeMap<(String, String), Lease>,
    index: u64,
}

/// Instance records with leases. Soft state: everything in it is rebuilt by
/// agents re-registering, so it is never persisted.
pub struct Store {
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
    epoch: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store with a fresh epoch.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                leases: BTreeMap::new(),
                index: 1,
            }),
            changes: watch::Sender::new(1),
            epoch: fastrand::u64(1..u64::MAX),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, inner: &mut Inner) {
        inner.index += 1;
        self.changes.send_replace(inner.index);
    }

    /// This store's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Registers or re-registers an instance for `owner`, starting a fresh
    /// lease; refused while another owner's lease is live.
    pub fn register(
        &self,
        record: InstanceRecord,
        owner: &str,
        now: Instant,
    ) -> Result<u64, StoreError> {
        record.validate()?;
        let mut inner = self.lock();
        let key = (record.service.clone(), record.id.clone());
        let existing = inner.leases.get(&key);
        if existing.is_some_and(|lease| lease.held_against(owner, now)) {
            return Err(StoreError::Owned {
                service: key.0,
                id: key.1,
            });
        }
        let changed = existing.is_none_or(|lease| lease.record != record);
        let expires_at = now + Duration::from_secs(record.ttl_secs);
        let owner = owner.to_owned();
        inner.leases.insert(
            key,
            Lease {
                record,
                expires_at,
                owner,
            },
        );
        if changed {
            self.bump(&mut inner);
        }
        Ok(inner.index)
    }

    /// Extends `owner`'s lease by its TTL. [`LeaseOutcome::Unknown`]: the
    /// agent must register again.
    pub fn renew(&self, service: &str, id: &str, owner: &str, now: Instant) -> LeaseOutcome {
        let mut inner = self.lock();
        match inner.leases.get_mut(&(service.to_owned(), id.to_owned())) {
            Some(lease) if lease.held_against(owner, now) => LeaseOutcome::Owned,
            Some(lease) => {
                lease.expires_at = now + Duration::from_secs(lease.record.ttl_secs);
                LeaseOutcome::Done
            }
            None => LeaseOutcome::Unknown,
        }
    }

    /// Removes `owner`'s instance.
    pub fn deregister(&self, service: &str, id: &str, owner: &str, now: Instant) -> LeaseOutcome {
        let mut inner = self.lock();
        let key = (service.to_owned(), id.to_owned());
        match inner.leases.get(&key) {
            Some(lease) if lease.held_against(owner, now) => LeaseOutcome::Owned,
            Some(_) => {
                inner.leases.remove(&key);
                self.bump(&mut inner);
                LeaseOutcome::Done
            }
            None => LeaseOutcome::Unknown,
        }
    }

    /// Removes every lease that expired before `now`; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        let before = inner.leases.len();
        inner.leases.retain(|_, lease| lease.expires_at > now);
        let removed = before - inner.leases.len();
        if removed > 0 {
            tracing::info!(removed, "expired instance leases");
            self.bump(&mut inner);
        }
        removed
    }

    /// Every live record.
    pub fn catalog(&self) -> Catalog {
        let inner = self.lock();
        Catalog {
            epoch: self.epoch,
            index: inner.index,
            instances: inner.leases.values().map(|l| l.record.clone()).collect(),
        }
    }

    /// The records of one service.
    pub fn service(&self, service: &str) -> Vec<InstanceRecord> {
        let inner = self.lock();
        inner
            .leases
            .values()
            .filter(|l| l.record.service == service)
            .map(|l| l.record.clone())
            .collect()
    }

    /// Waits until the index differs from `index` or `wait` passes.
    pub async fn wait_for_change(&self, index: u64, wait: Duration) {
        let mut changes = self.changes.subscribe();
        let _ = tokio::time::timeout(wait, changes.wait_for(|current| *current != index)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baker_directory_api::testing::record;

    #[test]
    fn lease_expires_unless_renewed() {
        let store = Store::new();
        let t0 = Instant::now();
        store.register(record("s", "a", 2), "o", t0).unwrap();
        store.register(record("s", "b", 2), "o", t0).unwrap();
        let renewed = store.renew("s", "a", "o", t0 + Duration::from_millis(1500));
        assert_eq!(renewed, LeaseOutcome::Done);
        assert_eq!(store.expire(t0 + Duration::from_millis(2100)), 1);
        let ids: Vec<_> = store
            .catalog()
            .instances
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a"]);
        let late = store.renew("s", "b", "o", t0 + Duration::from_millis(2200));
        assert_eq!(late, LeaseOutcome::Unknown);
    }

    #[test]
    fn reregistering_the_same_record_does_not_bump_the_index() {
        let store = Store::new();
        let now = Instant::now();
        let first = store.register(record("s", "a", 5), "o", now).unwrap();
        assert_eq!(
            store.register(record("s", "a", 5), "o", now).unwrap(),
            first
        );
        let mut changed = record("s", "a", 5);
        changed.status = crate::directory::Status::Draining;
        assert!(store.register(changed, "o", now).unwrap() > first);
    }

    #[test]
    fn invalid_names_are_refused() {
        let store = Store::new();
        let err = store
            .register(record("orders.v2", "a", 5), "o", Instant::now())
            .unwrap_err();
        assert!(err.to_string().contains("service \"orders.v2\""));
    }

    #[test]
    fn a_live_lease_belongs_to_its_owner_until_it_ends() {
        let store = Store::new();
        let t0 = Instant::now();
        store.register(record("s", "a", 2), "owner-1", t0).unwrap();
        let rogue = store.register(record("s", "a", 2), "owner-2", t0);
        assert!(matches!(rogue, Err(StoreError::Owned { .. })));
        assert_eq!(store.renew("s", "a", "owner-2", t0), LeaseOutcome::Owned);
        assert_eq!(store.deregister("s", "a", "", t0), LeaseOutcome::Owned);
        // Its own re-registration (a status change) succeeds.
        store.register(record("s", "a", 2), "owner-1", t0).unwrap();
        // Once the lease has run out, another owner may take the instance.
        let later = t0 + Duration::from_millis(2100);
        store
            .register(record("s", "a", 2), "owner-2", later)
            .unwrap();
        assert_eq!(
            store.deregister("s", "a", "owner-2", later),
            LeaseOutcome::Done
        );
        // A lease without an owner (an older agent) may be taken by anyone.
        store.register(record("s", "b", 2), "", t0).unwrap();
        store.register(record("s", "b", 2), "owner-3", t0).unwrap();
    }

    #[tokio::test]
    async fn watchers_wake_on_change() {
        let store = std::sync::Arc::new(Store::new());
        let index = store.catalog().index;
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.wait_for_change(index, Duration::from_secs(5)).await })
        };
        store
            .register(record("s", "a", 5), "o", Instant::now())
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("watcher woke")
            .unwrap();
    }
}
