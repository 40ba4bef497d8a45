//! The directory's state: instance records with leases, a change index
//! that watchers wait on, and a log of the latest changes, so that a
//! router's watch is answered with what changed in the services it routes
//! to, and woken only by those.
//!
//! - `answer`: the answers to a watch, built from the log

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baker_directory_api::RemovalCause;
use bytes::Bytes;
use tokio::sync::watch;

use super::record::{Catalog, InstanceRecord, RecordError};

mod answer;

struct Lease {
    record: InstanceRecord,
    /// The record as JSON, written once per change and sent as is to every
    /// watcher that needs it.
    json: Bytes,
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

/// Changes kept for watchers that come back with an older index; one
/// further behind gets its services in full. Enough for a rolling upgrade
/// of a large fleet between two watches of a router.
pub const CHANGE_LOG_LEN: usize = 200_000;

/// One change, as the log keeps it.
struct Change {
    index: u64,
    service: Arc<str>,
    id: Arc<str>,
    /// The record as JSON, or why it left.
    what: Result<Bytes, RemovalCause>,
}

/// What the store knows of one service beyond its records.
struct ServiceState {
    /// The index of the service's last change; watchers of the service wait
    /// on it, so a change wakes only them.
    changed: watch::Sender<u64>,
    /// Its live records.
    instances: usize,
}

impl ServiceState {
    fn new(index: u64) -> Self {
        Self {
            changed: watch::Sender::new(index),
            instances: 0,
        }
    }
}

struct Inner {
    leases: BTreeMap<(String, String), Lease>,
    index: u64,
    log: VecDeque<Change>,
    /// The highest index the log no longer holds: a watcher at or behind it
    /// starts over.
    forgotten: u64,
    services: HashMap<Arc<str>, ServiceState>,
}

impl Inner {
    /// Records a change of `service`/`id` at the current index and wakes the
    /// service's watchers.
    fn log(&mut self, service: &str, id: &str, what: Result<Bytes, RemovalCause>) {
        let index = self.index;
        let state = match self.services.get_mut(service) {
            Some(state) => state,
            None => self
                .services
                .entry(Arc::from(service))
                .or_insert_with(|| ServiceState::new(index)),
        };
        match &what {
            Ok(_) => state.instances += 1,
            Err(_) => state.instances = state.instances.saturating_sub(1),
        }
        state.changed.send_replace(index);
        let service = self
            .services
            .get_key_value(service)
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| Arc::from(service));
        if self.log.len() == CHANGE_LOG_LEN {
            if let Some(oldest) = self.log.pop_front() {
                self.forgotten = oldest.index;
            }
        }
        self.log.push_back(Change {
            index,
            service,
            id: Arc::from(id),
            what,
        });
    }
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
                log: VecDeque::new(),
                forgotten: 0,
                services: HashMap::new(),
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
        let expires_at = now + Duration::from_secs(record.ttl_secs);
        let owner = owner.to_owned();
        if let Some(lease) = existing.filter(|lease| lease.record == record) {
            let json = lease.json.clone();
            inner.leases.insert(
                key,
                Lease {
                    record,
                    json,
                    expires_at,
                    owner,
                },
            );
            return Ok(inner.index);
        }
        let new = existing.is_none();
        let json = Bytes::from(serde_json::to_vec(&record).expect("a record serialises"));
        inner.leases.insert(
            key.clone(),
            Lease {
                record,
                json: json.clone(),
                expires_at,
                owner,
            },
        );
        self.bump(&mut inner);
        if !new {
            // A changed record: counted once.
            if let Some(state) = inner.services.get_mut(key.0.as_str()) {
                state.instances = state.instances.saturating_sub(1);
            }
        }
        inner.log(&key.0, &key.1, Ok(json));
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
                inner.log(service, id, Err(RemovalCause::Deregistered));
                LeaseOutcome::Done
            }
            None => LeaseOutcome::Unknown,
        }
    }

    /// Removes every lease that expired before `now`; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut inner = self.lock();
        let expired: Vec<(String, String)> = (inner.leases.iter())
            .filter(|(_, lease)| lease.expires_at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        if expired.is_empty() {
            return 0;
        }
        self.bump(&mut inner);
        for key in &expired {
            inner.leases.remove(key);
            inner.log(&key.0, &key.1, Err(RemovalCause::Lapsed));
        }
        tracing::info!(removed = expired.len(), "expired instance leases");
        expired.len()
    }

    /// Forgets the services that have neither records nor watchers.
    pub fn forget_idle_services(&self) {
        let mut inner = self.lock();
        inner
            .services
            .retain(|_, state| state.instances > 0 || state.changed.receiver_count() > 0);
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
        service_leases(&inner.leases, service)
            .map(|lease| lease.record.clone())
            .collect()
    }

    /// Waits until the index differs from `index` or `wait` passes.
    pub async fn wait_for_change(&self, index: u64, wait: Duration) {
        let mut changes = self.changes.subscribe();
        let _ = tokio::time::timeout(wait, changes.wait_for(|current| *current != index)).await;
    }
}

/// The leases of `service`, in id order.
fn service_leases<'a>(
    leases: &'a BTreeMap<(String, String), Lease>,
    service: &'a str,
) -> impl Iterator<Item = &'a Lease> + 'a {
    leases
        .range((service.to_owned(), String::new())..)
        .take_while(move |((name, _), _)| name == service)
        .map(|(_, lease)| lease)
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
