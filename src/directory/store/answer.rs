//! Answers to a watch: the changes of the watched services since the
//! watcher's index, from the log, or all of their records; each record
//! written as it was serialised at registration.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use baker_directory_api::{Removal, RemovalCause};
use bytes::Bytes;

use super::{service_leases, Inner, ServiceState, Store};

impl Store {
    /// What changed in `services` since `after` (the watcher's epoch and
    /// index), as the JSON of a [`Changes`](baker_directory_api::Changes);
    /// waits up to `wait` for a change of one of them first. Records are
    /// written as they were serialised at registration, once for every
    /// watcher.
    pub async fn watch(
        &self,
        services: &BTreeSet<String>,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Vec<u8> {
        let since = after
            .filter(|(epoch, _)| *epoch == self.epoch)
            .map(|(_, index)| index);
        if let Some(index) = since {
            let waits = {
                let mut inner = self.lock();
                let known = inner.forgotten < index && index <= inner.index;
                known.then(|| {
                    (services.iter())
                        .map(|service| {
                            let state = match inner.services.get(service.as_str()) {
                                Some(state) => state,
                                None => inner
                                    .services
                                    .entry(Arc::from(service.as_str()))
                                    .or_insert_with(|| ServiceState::new(0)),
                            };
                            state.changed.subscribe()
                        })
                        .collect::<Vec<_>>()
                })
            };
            match waits {
                Some(waits) if waits.is_empty() => tokio::time::sleep(wait).await,
                Some(mut waits) if waits.iter().all(|rx| *rx.borrow() <= index) => {
                    let changed = waits
                        .iter_mut()
                        .map(|rx| Box::pin(rx.wait_for(move |changed| *changed > index)));
                    let _ = tokio::time::timeout(wait, futures::future::select_all(changed)).await;
                }
                _ => {}
            }
        }
        let inner = self.lock();
        match since.filter(|index| inner.forgotten < *index && *index <= inner.index) {
            Some(index) => self.delta(&inner, services, index),
            None => self.full(&inner, services),
        }
    }

    /// Every record of `services`, as a full answer.
    fn full(&self, inner: &Inner, services: &BTreeSet<String>) -> Vec<u8> {
        let mut out = self.head(inner, true);
        let mut first = true;
        for service in services {
            for lease in service_leases(&inner.leases, service) {
                push_item(&mut out, &mut first, &lease.json);
            }
        }
        out.extend_from_slice(b"],\"removed\":[]}");
        out
    }

    /// The changes of `services` after `index`, the last of each record's.
    fn delta(&self, inner: &Inner, services: &BTreeSet<String>, index: u64) -> Vec<u8> {
        let start = inner.log.partition_point(|change| change.index <= index);
        let mut last: HashMap<(&str, &str), &Result<Bytes, RemovalCause>> = HashMap::new();
        for change in inner.log.range(start..) {
            if services.contains(&*change.service) {
                last.insert((&change.service, &change.id), &change.what);
            }
        }
        let mut out = self.head(inner, false);
        let mut first = true;
        for json in last.values().copied().flatten() {
            push_item(&mut out, &mut first, json);
        }
        out.extend_from_slice(b"],\"removed\":[");
        let mut first = true;
        for ((service, id), what) in &last {
            if let Err(cause) = what {
                let removal = Removal {
                    service: (*service).to_owned(),
                    id: (*id).to_owned(),
                    cause: *cause,
                };
                let json = serde_json::to_vec(&removal).expect("a removal serialises");
                push_item(&mut out, &mut first, &json);
            }
        }
        out.extend_from_slice(b"]}");
        out
    }

    fn head(&self, inner: &Inner, full: bool) -> Vec<u8> {
        format!(
            "{{\"epoch\":{},\"index\":{},\"full\":{full},\"instances\":[",
            self.epoch, inner.index
        )
        .into_bytes()
    }
}

/// Appends one JSON array item.
fn push_item(out: &mut Vec<u8>, first: &mut bool, json: &[u8]) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.extend_from_slice(json);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::directory::store::LeaseOutcome;
    use baker_directory_api::testing::record;

    fn changes(json: Vec<u8>) -> baker_directory_api::Changes {
        serde_json::from_slice(&json).expect("the answer is a Changes")
    }

    fn set(services: &[&str]) -> BTreeSet<String> {
        services.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_watch_answers_only_its_services_and_only_what_changed() {
        let store = Arc::new(Store::new());
        let t0 = Instant::now();
        for (service, id) in [("a", "1"), ("a", "2"), ("b", "1"), ("c", "1")] {
            store.register(record(service, id, 5), "o", t0).unwrap();
        }
        let watched = set(&["a", "c"]);
        let first = changes(store.watch(&watched, None, Duration::ZERO).await);
        assert!(first.full);
        let ids: Vec<_> = (first.instances.iter())
            .map(|r| format!("{}/{}", r.service, r.id))
            .collect();
        assert_eq!(ids, ["a/1", "a/2", "c/1"]);
        let position = Some((first.epoch, first.index));

        // A change of b does not wake a watcher of a and c.
        let waiting = {
            let (store, watched) = (store.clone(), watched.clone());
            tokio::spawn(async move {
                store
                    .watch(&watched, position, Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.register(record("b", "2", 5), "o", t0).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "woken by another service's change");

        // A change of a does, and the answer holds only a's changes.
        let mut draining = record("a", "1", 5);
        draining.status = crate::directory::Status::Draining;
        store.register(draining.clone(), "o", t0).unwrap();
        store.deregister("a", "2", "o", t0);
        let delta = changes(
            tokio::time::timeout(Duration::from_secs(1), waiting)
                .await
                .unwrap()
                .unwrap(),
        );
        assert!(!delta.full);
        assert_eq!(delta.instances, [draining]);
        assert_eq!(
            delta.removed,
            [Removal {
                service: "a".into(),
                id: "2".into(),
                cause: RemovalCause::Deregistered
            }]
        );

        // A lapse says so; a renewal is no change.
        let position = Some((delta.epoch, delta.index));
        assert_eq!(store.renew("c", "1", "o", t0), LeaseOutcome::Done);
        assert!(changes(store.watch(&watched, position, Duration::ZERO).await).is_empty());
        store.expire(t0 + Duration::from_secs(6));
        let lapsed = changes(store.watch(&watched, position, Duration::ZERO).await);
        let causes: Vec<_> = lapsed
            .removed
            .iter()
            .map(|r| (r.id.as_str(), r.cause))
            .collect();
        assert_eq!(causes.len(), 2);
        assert!(causes
            .iter()
            .all(|(_, cause)| *cause == RemovalCause::Lapsed));
    }

    #[tokio::test]
    async fn a_watcher_of_another_epoch_or_index_starts_over() {
        let store = Store::new();
        store
            .register(record("a", "1", 5), "o", Instant::now())
            .unwrap();
        let watched = set(&["a"]);
        for after in [(store.epoch() ^ 1, 1), (store.epoch(), 1_000)] {
            let answer = changes(
                store
                    .watch(&watched, Some(after), Duration::from_secs(5))
                    .await,
            );
            assert!(answer.full, "{after:?}");
            assert_eq!(answer.instances.len(), 1);
        }
    }
}
