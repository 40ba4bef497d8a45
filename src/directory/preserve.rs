//! Self-preservation, as Eureka has it: when at least half of a service's
//! instances (of three or more) lapse within one lease, the likelier cause
//! is a network blip between their agents and the directory, not a mass
//! death. The router then keeps the instances it knew instead of emptying
//! the service in one step, and lets real sends judge them: a send to an
//! instance that is gone fails (where its protocol says so) and outlier
//! ejection takes it out of routing, while the others keep their traffic.
//!
//! A single lapse still removes its instance at once (it comes back if more
//! lapses follow within the lease and make half), and so does one on a
//! protocol where a send to a gone instance succeeds silently (core NATS
//! inboxes): keeping those would lose messages. A held instance leaves the
//! view when it registers again (the directory has it back), when its agent
//! deregisters it, or after [`HOLD_LIMIT`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::InstanceRecord;
use super::{Changes, Removal, RemovalCause};

/// Longest an instance is held after its lease lapsed.
pub const HOLD_LIMIT: Duration = Duration::from_secs(300);

/// Fewest instances a service needs for its lapses to be held back.
const MIN_INSTANCES: usize = 3;

/// Whether a send to the instance fails once it is gone, so that keeping it
/// costs a retry and not a message.
pub type SendFailsWhenGone = Arc<dyn Fn(&InstanceRecord) -> bool + Send + Sync>;

/// The lapsed instances a router keeps, and the recent lapses per service.
#[derive(Default)]
pub struct Preservation {
    judge: Option<SendFailsWhenGone>,
    /// Lapses per service within the last lease that were not held.
    lapses: HashMap<String, Vec<(Instant, InstanceRecord)>>,
    /// Held records, with when they lapsed.
    held: BTreeMap<(String, String), (InstanceRecord, Instant)>,
}

impl std::fmt::Debug for Preservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preservation")
            .field("enabled", &self.judge.is_some())
            .field("held", &self.held.len())
            .finish()
    }
}

impl Preservation {
    /// Self-preservation for instances `judge` says a send fails to once
    /// they are gone.
    pub fn new(judge: SendFailsWhenGone) -> Self {
        Self {
            judge: Some(judge),
            ..Self::default()
        }
    }

    /// Holds back the lapses of `changes` (a delta, before it is applied to
    /// `known`, the directory's records) that self-preservation keeps, at
    /// `now`.
    pub fn hold_back(
        &mut self,
        changes: &Changes,
        known: &BTreeMap<(String, String), InstanceRecord>,
        now: Instant,
    ) {
        let Some(judge) = &self.judge else { return };
        if changes.full {
            return;
        }
        // The lapses of this answer, per service.
        let mut batch: BTreeMap<&str, Vec<&InstanceRecord>> = BTreeMap::new();
        for removal in &changes.removed {
            if removal.cause != RemovalCause::Lapsed {
                continue;
            }
            let key = (removal.service.clone(), removal.id.clone());
            if let Some(record) = known.get(&key) {
                batch.entry(&record.service).or_default().push(record);
            }
        }
        let mut hold = Vec::new();
        for (service, lapsed) in batch {
            let lease = Duration::from_secs(lapsed.iter().map(|r| r.ttl_secs).max().unwrap_or(1));
            let recent = self.lapses.entry(service.to_owned()).or_default();
            recent.retain(|(at, _)| now.duration_since(*at) < lease);
            let held = self.held.keys().filter(|(s, _)| s == service).count();
            let known = known.keys().filter(|(s, _)| s == service).count();
            // Every instance the service had within the lease, and those of
            // them that lapsed (held ones included).
            let instances = known + held + recent.len();
            let lapsing = recent.len() + lapsed.len() + held;
            if instances < MIN_INSTANCES || lapsing * 2 < instances {
                recent.extend(lapsed.into_iter().map(|r| (now, r.clone())));
                continue;
            }
            // The lapses of this lease that went at once are kept too: the
            // service is not emptied one step at a time either.
            let earlier = std::mem::take(recent).into_iter().map(|(_, r)| r);
            let kept: Vec<InstanceRecord> = (earlier.chain(lapsed.into_iter().cloned()))
                .filter(|r| judge(r))
                .collect();
            if !kept.is_empty() {
                tracing::warn!(service, lapsed = lapsing, instances, kept = kept.len(),
                    "self-preservation: half or more of the service's instances lapsed within one lease; \
                     keeping them (sends judge them) rather than emptying the service");
            }
            hold.extend(kept);
        }
        for record in hold {
            let key = (record.service.clone(), record.id.clone());
            self.held.insert(key, (record, now));
        }
    }

    /// Releases the held records that are back in `known`, that the
    /// directory says were deregistered (in `changes`), whose service is no
    /// longer followed (`followed` false), or held for [`HOLD_LIMIT`].
    /// Returns whether any was released.
    pub fn release(
        &mut self,
        removed: &[Removal],
        known: &BTreeMap<(String, String), InstanceRecord>,
        followed: impl Fn(&str) -> bool,
        now: Instant,
    ) -> bool {
        let before = self.held.len();
        self.held.retain(|key, (_, since)| {
            let deregistered = (removed.iter()).any(|r| {
                r.service == key.0 && r.id == key.1 && r.cause == RemovalCause::Deregistered
            });
            !known.contains_key(key)
                && !deregistered
                && followed(&key.0)
                && now.duration_since(*since) < HOLD_LIMIT
        });
        let released = before - self.held.len();
        if released > 0 {
            tracing::info!(
                released,
                held = self.held.len(),
                "self-preservation: instances released"
            );
        }
        released > 0
    }

    /// The records held.
    pub fn held(&self) -> impl Iterator<Item = &InstanceRecord> {
        self.held.values().map(|(record, _)| record)
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// When the next held record reaches [`HOLD_LIMIT`].
    pub fn next_release(&self) -> Option<Instant> {
        self.held
            .values()
            .map(|(_, since)| *since + HOLD_LIMIT)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baker_directory_api::testing::record;

    fn known(ids: &[&str]) -> BTreeMap<(String, String), InstanceRecord> {
        (ids.iter())
            .map(|id| (("s".to_owned(), id.to_string()), record("s", id, 10)))
            .collect()
    }

    fn lapses(ids: &[&str]) -> Changes {
        Changes {
            removed: (ids.iter())
                .map(|id| Removal {
                    service: "s".into(),
                    id: id.to_string(),
                    cause: RemovalCause::Lapsed,
                })
                .collect(),
            ..Changes::default()
        }
    }

    fn everything() -> SendFailsWhenGone {
        Arc::new(|_| true)
    }

    #[test]
    fn half_of_a_service_lapsing_at_once_is_held_back() {
        let mut preservation = Preservation::new(everything());
        let t0 = Instant::now();
        preservation.hold_back(&lapses(&["a", "b"]), &known(&["a", "b", "c", "d"]), t0);
        let held: Vec<_> = preservation.held().map(|r| r.id.as_str()).collect();
        assert_eq!(held, ["a", "b"]);

        // Back in the directory: released.
        assert!(preservation.release(&[], &known(&["a", "b", "c"]), |_| true, t0));
        assert!(preservation.is_empty());
    }

    #[test]
    fn a_single_lapse_is_removed_but_the_one_that_makes_half_brings_it_back() {
        let mut preservation = Preservation::new(everything());
        let t0 = Instant::now();
        preservation.hold_back(&lapses(&["a"]), &known(&["a", "b", "c", "d"]), t0);
        assert!(preservation.is_empty(), "a single lapse goes at once");
        let second = t0 + Duration::from_secs(1);
        preservation.hold_back(&lapses(&["b"]), &known(&["b", "c", "d"]), second);
        let held: Vec<_> = preservation.held().map(|r| r.id.as_str()).collect();
        assert_eq!(held, ["a", "b"], "the second within one lease makes half");
        // Further lapses one at a time are held as well.
        preservation.hold_back(&lapses(&["c"]), &known(&["c", "d"]), second);
        assert_eq!(preservation.len(), 3);
        // A lapse more than one lease after the first one is alone again.
        let mut preservation = Preservation::new(everything());
        preservation.hold_back(&lapses(&["a"]), &known(&["a", "b", "c", "d"]), t0);
        let at = t0 + Duration::from_secs(30);
        preservation.hold_back(&lapses(&["b"]), &known(&["b", "c", "d"]), at);
        assert!(preservation.is_empty());
    }

    #[test]
    fn small_services_gone_instances_that_cannot_be_judged_and_deregistrations_are_not_held() {
        let t0 = Instant::now();
        let mut preservation = Preservation::new(everything());
        preservation.hold_back(&lapses(&["a", "b"]), &known(&["a", "b"]), t0);
        assert!(preservation.is_empty(), "fewer than three instances");

        let mut preservation = Preservation::new(Arc::new(|r| r.id != "a"));
        preservation.hold_back(&lapses(&["a", "b", "c"]), &known(&["a", "b", "c"]), t0);
        let held: Vec<_> = preservation.held().map(|r| r.id.as_str()).collect();
        assert_eq!(
            held,
            ["b", "c"],
            "a send to a gone a would succeed silently"
        );

        let mut preservation = Preservation::default();
        preservation.hold_back(&lapses(&["a", "b", "c"]), &known(&["a", "b", "c"]), t0);
        assert!(preservation.is_empty(), "off");
    }

    #[test]
    fn held_instances_leave_on_deregistration_unfollowing_or_the_limit() {
        let t0 = Instant::now();
        let mut preservation = Preservation::new(everything());
        preservation.hold_back(&lapses(&["a", "b", "c"]), &known(&["a", "b", "c"]), t0);
        assert_eq!(preservation.len(), 3);
        let deregistered = Changes {
            removed: vec![Removal {
                service: "s".into(),
                id: "a".into(),
                cause: RemovalCause::Deregistered,
            }],
            ..Changes::default()
        };
        let none = BTreeMap::new();
        assert!(preservation.release(&deregistered.removed, &none, |_| true, t0));
        assert_eq!(preservation.len(), 2);
        assert!(!preservation.release(&[], &none, |_| true, t0));
        assert_eq!(preservation.next_release(), Some(t0 + HOLD_LIMIT));
        assert!(preservation.release(&[], &none, |_| true, t0 + HOLD_LIMIT));
        assert!(preservation.is_empty());
    }
}
