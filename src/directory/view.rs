//! What a watcher makes of the directory's answers: the records of the
//! services it follows ([`Records`]), and the records of a restarted
//! directory's previous epoch it keeps for one lease ([`Carryover`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::record::{Catalog, InstanceRecord};
use super::Changes;

/// The records of a previous directory epoch that the current one does not
/// know yet, each held until its lease would have run out.
#[derive(Debug, Default)]
pub(super) struct Carryover {
    epoch: u64,
    held: Vec<(InstanceRecord, Instant)>,
}

impl Carryover {
    /// The view to route from, given the directory's `catalog` and the view
    /// published before it, at `now`.
    pub(super) fn view(&mut self, catalog: Catalog, previous: &Catalog, now: Instant) -> Catalog {
        if self.epoch != 0 && catalog.epoch != self.epoch {
            self.held = previous
                .instances
                .iter()
                .map(|r| (r.clone(), now + Duration::from_secs(r.ttl_secs)))
                .collect();
        }
        self.epoch = catalog.epoch;
        self.expire(&catalog, now);
        if self.held.is_empty() {
            return catalog;
        }
        let mut view = catalog;
        view.instances
            .extend(self.held.iter().map(|(record, _)| record.clone()));
        view.instances
            .sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        view
    }

    /// Drops held records that the directory knows again or whose lease ran
    /// out. Returns whether any was dropped.
    pub(super) fn expire(&mut self, catalog: &Catalog, now: Instant) -> bool {
        let before = self.held.len();
        self.held.retain(|(record, until)| {
            *until > now
                && !catalog
                    .instances
                    .iter()
                    .any(|r| r.service == record.service && r.id == record.id)
        });
        self.held.len() != before
    }

    /// When the next held record runs out.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.held.iter().map(|(_, until)| *until).min()
    }
}

/// The directory's records of the services followed, kept up to date from
/// each answer.
#[derive(Debug, Default)]
pub(super) struct Records(pub(super) BTreeMap<(String, String), InstanceRecord>);

impl Records {
    /// Applies an answer: a full one replaces everything.
    pub(super) fn apply(&mut self, changes: Changes) {
        if changes.full {
            self.0.clear();
        }
        for removal in changes.removed {
            self.0.remove(&(removal.service, removal.id));
        }
        for record in changes.instances {
            self.0
                .insert((record.service.clone(), record.id.clone()), record);
        }
    }

    /// The records, with those self-preservation holds, as a catalog at
    /// `position`.
    pub(super) fn catalog<'a>(
        &self,
        (epoch, index): (u64, u64),
        held: impl Iterator<Item = &'a InstanceRecord>,
    ) -> Catalog {
        let mut instances: Vec<InstanceRecord> = self.0.values().cloned().collect();
        let before = instances.len();
        instances.extend(held.cloned());
        if instances.len() > before {
            instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        }
        Catalog {
            epoch,
            index,
            instances,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baker_directory_api::testing::record;

    fn catalog(epoch: u64, index: u64, ids: &[&str]) -> Catalog {
        Catalog {
            epoch,
            index,
            instances: ids.iter().map(|id| record("s", id, 10)).collect(),
        }
    }

    fn ids(catalog: &Catalog) -> Vec<&str> {
        catalog.instances.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn a_restarted_directory_does_not_empty_the_view_for_one_lease() {
        let t0 = Instant::now();
        let mut carryover = Carryover::default();
        let first = carryover.view(catalog(1, 5, &["a", "b"]), &Catalog::default(), t0);
        assert_eq!(ids(&first), ["a", "b"]);

        // The directory restarts empty: a and b stay.
        let empty = carryover.view(catalog(2, 1, &[]), &first, t0);
        assert_eq!(ids(&empty), ["a", "b"]);
        assert_eq!((empty.epoch, empty.index), (2, 1));

        // b registers again (as the new directory has it, draining, say) and
        // c is new; a is still held.
        let mut again = catalog(2, 3, &["b", "c"]);
        again.instances[0].status = crate::directory::Status::Draining;
        let view = carryover.view(again.clone(), &empty, t0 + Duration::from_secs(1));
        assert_eq!(ids(&view), ["a", "b", "c"]);
        assert_eq!(view.instances[1].status, crate::directory::Status::Draining);

        // a's lease runs out without a registration: it leaves the view.
        let later = t0 + Duration::from_secs(11);
        assert!(carryover.expire(&again, later));
        let view = carryover.view(again, &view, later);
        assert_eq!(ids(&view), ["b", "c"]);
        assert_eq!(carryover.next_expiry(), None);
    }

    #[test]
    fn within_one_epoch_removals_apply_at_once() {
        let t0 = Instant::now();
        let mut carryover = Carryover::default();
        let first = carryover.view(catalog(1, 1, &["a", "b"]), &Catalog::default(), t0);
        let second = carryover.view(catalog(1, 2, &["a"]), &first, t0);
        assert_eq!(ids(&second), ["a"]);
    }
}
