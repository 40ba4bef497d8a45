//! What a reader holds of the bucket: the live leases, each judged from its
//! entry's write time (the server's clock) and its record's TTL.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baker_adapter_nats::async_nats::jetstream::kv;
use baker_directory_api::{Catalog, Changes, InstanceRecord, Removal, RemovalCause};
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
    /// The latest changes, by index, for readers that come back with an
    /// older one: each a key and its record, or why it left.
    log: VecDeque<(u64, String, Result<InstanceRecord, RemovalCause>)>,
    /// Changes made since the last index.
    pending: Vec<(String, Result<InstanceRecord, RemovalCause>)>,
    /// The highest index the log no longer covers: a reader at or behind it
    /// gets the records in full.
    forgotten: u64,
}

/// Changes a reader's log keeps; one further behind reads in full.
const LOG_LEN: usize = 10_000;

/// A lease that ran out this close to a removal lapsed, rather than was
/// removed by its agent: the server's own TTL marker comes at expiry.
const LAPSE_SKEW: Duration = Duration::from_secs(1);

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
                    self.pending
                        .push((key.to_owned(), Ok(lease.record.clone())));
                    self.leases.insert(key.to_owned(), lease);
                    true
                }
            },
            None => match self.leases.remove(key) {
                Some(held) => {
                    let cause = if held.expires <= now + LAPSE_SKEW {
                        RemovalCause::Lapsed
                    } else {
                        RemovalCause::Deregistered
                    };
                    self.pending.push((key.to_owned(), Err(cause)));
                    true
                }
                None => false,
            },
        }
    }

    /// Logs the pending changes at the current index.
    pub(crate) fn log_pending(&mut self) {
        for (key, change) in self.pending.drain(..) {
            if self.log.len() == LOG_LEN {
                if let Some((index, _, _)) = self.log.pop_front() {
                    self.forgotten = index;
                }
            }
            self.log.push_back((self.index, key, change));
        }
    }

    /// The view was replaced whole: a reader of an earlier index reads it
    /// in full.
    pub(crate) fn forget_changes(&mut self) {
        self.pending.clear();
        self.log.clear();
        // A reader at the current index has the whole view.
        self.forgotten = self.index.saturating_sub(1);
    }

    /// What changed since `after`, or every record when the log cannot say.
    pub(crate) fn changes_since(&self, after: Option<(u64, u64)>) -> Changes {
        let epoch = KV_EPOCH + self.recreations;
        let since = after
            .filter(|(e, index)| *e == epoch && self.forgotten < *index && *index <= self.index)
            .map(|(_, index)| index);
        let Some(since) = since else {
            let catalog = self.catalog();
            return Changes {
                epoch,
                index: self.index,
                full: true,
                instances: catalog.instances,
                removed: Vec::new(),
            };
        };
        let start = self.log.partition_point(|(index, _, _)| *index <= since);
        let mut last: HashMap<&str, &Result<InstanceRecord, RemovalCause>> = HashMap::new();
        for (_, key, change) in self.log.range(start..) {
            last.insert(key, change);
        }
        let mut changes = Changes {
            epoch,
            index: self.index,
            ..Changes::default()
        };
        for (key, change) in last {
            match change {
                Ok(record) => changes.instances.push(record.clone()),
                Err(cause) => {
                    if let Some((service, id)) = key.split_once('.') {
                        changes.removed.push(Removal {
                            service: service.to_owned(),
                            id: id.to_owned(),
                            cause: *cause,
                        });
                    }
                }
            }
        }
        changes
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

    fn bump(view: &mut View) {
        view.index += 1;
        view.log_pending();
    }

    #[test]
    fn a_reader_gets_what_changed_since_its_index_and_why_records_left() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut view = View::default();
        for id in ["a", "b", "c"] {
            view.apply(&format!("s.{id}"), Some(lease(id, 10, t0)), t0);
        }
        bump(&mut view);
        let first = view.changes_since(None);
        assert!(first.full);
        assert_eq!(first.instances.len(), 3);
        let position = Some((first.epoch, first.index));

        // b is deleted by its agent while its lease runs; c's lease ran out.
        view.apply("s.b", None, t0 + Duration::from_secs(2));
        bump(&mut view);
        view.apply("s.c", None, t0 + Duration::from_secs(10));
        bump(&mut view);
        let mut delta = view.changes_since(position);
        assert!(!delta.full && delta.instances.is_empty());
        delta.removed.sort_by(|x, y| x.id.cmp(&y.id));
        let causes: Vec<_> = delta
            .removed
            .iter()
            .map(|r| (r.id.as_str(), r.cause))
            .collect();
        assert_eq!(
            causes,
            [
                ("b", RemovalCause::Deregistered),
                ("c", RemovalCause::Lapsed)
            ]
        );

        // A reader of another epoch, or one the log no longer covers,
        // reads in full.
        assert!(
            view.changes_since(Some((first.epoch + 1, first.index)))
                .full
        );
        view.forget_changes();
        assert!(view.changes_since(position).full);
        assert!(!view.changes_since(Some((first.epoch, view.index))).full);
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
