//! What a reader holds of the bucket: the live leases, each judged from its
//! entry's write time (the server's clock) and its record's TTL.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baker_adapter_nats::async_nats::jetstream::kv;
use baker_directory_api::{Catalog, InstanceRecord};
use bytes::Bytes;

/// Epoch of the catalogs read from a bucket. The bucket outlives its
/// readers, so unlike the embedded directory it does not restart empty,
/// unless someone deletes it: each re-creation is a new epoch, so that
/// routers keep the records the new bucket does not have yet for one lease,
/// as they do for a restarted embedded directory.
pub const KV_EPOCH: u64 = 1;

/// The live records of the bucket, as one reader follows it.
#[derive(Default)]
pub(crate) struct View {
    /// Live records by key.
    pub(crate) leases: HashMap<String, Lease>,
    /// True once a whole read of the bucket has completed.
    pub(crate) loaded: bool,
    /// Bumped on every change of the live records.
    pub(crate) index: u64,
    /// Times the bucket was found deleted and created again.
    pub(crate) recreations: u64,
    /// When the last catalog was built for a reader, and how long that took.
    pub(crate) built: Option<(tokio::time::Instant, Duration)>,
    /// The services the loaded view holds; `None`: the whole bucket.
    pub(crate) filter: Filter,
}

/// The services a reader follows; `None`: the whole bucket.
pub(crate) type Filter = Option<Arc<BTreeSet<String>>>;

/// Whether the key `<service>.<id>` is one of `filter`'s services.
pub(crate) fn in_filter(key: &str, filter: &Filter) -> bool {
    match filter {
        None => true,
        Some(services) => key
            .split_once('.')
            .is_some_and(|(service, _)| services.contains(service)),
    }
}

/// A record and when its lease runs out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lease {
    record: InstanceRecord,
    /// The entry as written, to tell a renewal from a change.
    value: Bytes,
    pub(crate) expires: SystemTime,
}

impl Lease {
    /// The lease of `value` written at `written`, or why it is no record.
    pub(crate) fn parse(value: &Bytes, written: SystemTime) -> Result<Lease, serde_json::Error> {
        let record: InstanceRecord = serde_json::from_slice(value)?;
        Ok(Lease {
            expires: written + Duration::from_secs(record.ttl_secs),
            record,
            value: value.clone(),
        })
    }
}

/// The key of an instance.
pub fn key(service: &str, id: &str) -> String {
    format!("{service}.{id}")
}

/// When an entry was written, from its server timestamp.
pub(crate) fn written_at(entry: &kv::Entry) -> SystemTime {
    let nanos = entry.created.unix_timestamp_nanos();
    UNIX_EPOCH + Duration::from_nanos(nanos.clamp(0, u64::MAX as i128) as u64)
}

impl View {
    /// Applies one entry of the bucket; true when the live records changed
    /// (a renewal that only moves a lease is no change).
    pub(crate) fn apply(&mut self, key: &str, lease: Option<Lease>, now: SystemTime) -> bool {
        match lease.filter(|l| l.expires > now) {
            Some(lease) => match self.leases.get_mut(key) {
                Some(held) if held.value == lease.value => {
                    held.expires = lease.expires;
                    false
                }
                _ => {
                    self.leases.insert(key.to_owned(), lease);
                    true
                }
            },
            None => self.leases.remove(key).is_some(),
        }
    }

    /// The keys whose lease ran out by `now`.
    pub(crate) fn due(&self, now: SystemTime) -> Vec<String> {
        self.leases
            .iter()
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Drops the leases that ran out; true when any did.
    pub(crate) fn expire(&mut self, now: SystemTime) -> bool {
        let before = self.leases.len();
        self.leases.retain(|_, lease| lease.expires > now);
        self.leases.len() != before
    }

    pub(crate) fn next_expiry(&self) -> Option<SystemTime> {
        self.leases.values().map(|l| l.expires).min()
    }

    /// Every record held. A lease that ran out stays until the bucket
    /// confirms it (`end_leases`), which takes one request.
    pub(crate) fn catalog(&self) -> Catalog {
        let mut instances: Vec<InstanceRecord> =
            self.leases.values().map(|l| l.record.clone()).collect();
        instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        Catalog {
            epoch: KV_EPOCH + self.recreations,
            index: self.index,
            instances,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baker_directory_api::testing::record;

    fn lease(id: &str, ttl: u64, written: SystemTime) -> Lease {
        let value = Bytes::from(serde_json::to_vec(&record("s", id, ttl)).unwrap());
        Lease::parse(&value, written).unwrap()
    }

    #[test]
    fn a_lease_runs_out_ttl_after_its_write_even_with_no_event() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut view = View::default();
        assert!(view.apply("s.a", Some(lease("a", 10, t0)), t0));
        assert!(view.apply("s.b", Some(lease("b", 30, t0)), t0));
        assert_eq!(view.next_expiry(), Some(t0 + Duration::from_secs(10)));

        // No event for a: at 10 s its lease is due (to be confirmed with
        // the bucket), b's is not.
        let at = t0 + Duration::from_secs(10);
        assert_eq!(view.due(at), ["s.a"]);
        assert!(view.due(at - Duration::from_millis(1)).is_empty());
        assert!(view.apply("s.a", None, at));
        let ids: Vec<_> = view.catalog().instances.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn a_renewal_moves_the_lease_without_changing_the_view() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut view = View::default();
        assert!(view.apply("s.a", Some(lease("a", 10, t0)), t0));
        let later = t0 + Duration::from_secs(5);
        assert!(!view.apply("s.a", Some(lease("a", 10, later)), later));
        assert_eq!(view.next_expiry(), Some(later + Duration::from_secs(10)));

        // A changed record is a change; so is a delete.
        let mut draining = record("s", "a", 10);
        draining.status = baker_directory_api::Status::Draining;
        let value = Bytes::from(serde_json::to_vec(&draining).unwrap());
        assert!(view.apply("s.a", Some(Lease::parse(&value, later).unwrap()), later));
        assert!(view.apply("s.a", None, later));
        assert!(!view.apply("s.a", None, later));
    }

    #[test]
    fn an_entry_written_longer_ago_than_its_ttl_is_not_taken() {
        // Read at start from a bucket whose server never removed it.
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut view = View::default();
        let now = t0 + Duration::from_secs(60);
        assert!(!view.apply("s.a", Some(lease("a", 10, t0)), now));
        assert!(view.catalog().instances.is_empty());
    }
}
