//! Shadow traffic: a copy of a share of a service's messages goes to its
//! instances of one version, which get nothing else, so that a new version
//! can be tried on real traffic before it takes any.
//!
//! What a copy may never do is touch the original: it is sent only once the
//! original was delivered and settled, so it neither delays nor fails it,
//! and what becomes of it is counted apart
//! (`baker_shadow_copies_total{service,outcome}`). A copy carries the
//! `baker-shadow: true` header (the consumer knows it is one) and no reply
//! address (a shadow instance must not answer the requester). Copies are
//! bounded: each rule allows `max_in_flight` at once, and a copy beyond
//! that is dropped and counted (`dropped`). A copy's send is part of its
//! message's journey, so it stays inside the router's window and a graceful
//! stop waits for it; no task is left behind.
//!
//! The rule (service, version, share, budget) is configuration; which
//! instances run the version is the directory's, so copies start as soon as
//! an instance of it registers and stop when the last one leaves.

use std::sync::Arc;

use baker_adapter_api::{header, Destination, Message};

use super::policy::Pick;
pub use super::table::shadow::{
    ShadowRoute, ShadowRule, ShadowState, ShadowStates, DEFAULT_MAX_IN_FLIGHT,
};
use super::table::{InstanceRoute, RoutingTable};

/// A copy to send once its original is settled; holds its place in the
/// rule's budget until dropped.
pub struct ShadowCopy {
    state: Arc<ShadowState>,
    table: Arc<RoutingTable>,
    pub(super) destination: Destination,
    pub(super) message: Message,
}

impl Drop for ShadowCopy {
    fn drop(&mut self) {
        self.state.release();
    }
}

impl ShadowCopy {
    /// A copy of `message` (delivered to `destination`) when its service's
    /// rule says this one is copied and its budget has room; the budget's
    /// overflow is counted.
    pub fn of(
        table: &Arc<RoutingTable>,
        destination: &Destination,
        message: &Message,
    ) -> Option<Box<ShadowCopy>> {
        let shadow = table.service(&destination.service)?.shadow.as_ref()?;
        let state = shadow.admit_copy()?;
        let mut copy = message.clone();
        copy.reply_to = None;
        copy.headers.remove(header::ATTEMPT);
        copy.headers.insert(header::SHADOW, "true");
        // Boxed: a journey keeps room for one, and most have none.
        Some(Box::new(ShadowCopy {
            state,
            table: table.clone(),
            destination: destination.clone(),
            message: copy,
        }))
    }

    /// The service's shadow routing in the table the copy was taken from.
    pub(super) fn route(&self) -> Option<&ShadowRoute> {
        self.table
            .service(&self.destination.service)?
            .shadow
            .as_ref()
    }

    /// The shadow instance the copy goes to: one of the version's, by the
    /// service's policy among them.
    pub(super) fn instance(&self) -> Option<&InstanceRoute> {
        let group = self.route()?.group.as_deref()?;
        let index = match group.policy.pick(&group.instances, &self.message) {
            Pick::One(index) => index,
            Pick::All | Pick::Nobody => 0,
        };
        Some(&group.instances[group.admitted_from(index)])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use baker_adapter_api::{AckHandle, Delivery, Settlement, Topic};
    use baker_directory_api::testing::record;
    use bytes::Bytes;

    use super::*;
    use crate::adapters::AdapterRegistry;
    use crate::directory::Catalog;
    use crate::router::journey::tests::Recorder;
    use crate::router::journey::Outcome;
    use crate::router::outlier::OutlierConfig;
    use crate::router::Journey;
    use crate::router::{JourneyConfig, TableBuilder};

    /// A journey over `s`: `a` at version 1, `shadow` at version 2, on the
    /// memory broker `broker`; every message copied to version 2, at most
    /// `budget` copies under way.
    async fn journey(broker: &str, budget: usize) -> (Journey, Arc<ShadowState>) {
        let on_broker = |id: &str, version: &str| {
            let mut r = record("s", id, 5);
            r.version = version.to_owned();
            r.endpoint.broker = format!("memory://{broker}");
            r
        };
        let rule = ShadowRule {
            version: "2".into(),
            per_mille: 1000,
            max_in_flight: budget,
        };
        let mut builder = TableBuilder::new(Arc::new(AdapterRegistry::builtin()), HashMap::new())
            .with_shadows(HashMap::from([("s".to_owned(), rule)]));
        let state = builder.shadow_state("s").unwrap();
        let table = builder
            .build(Arc::new(Catalog {
                epoch: 1,
                index: 1,
                instances: vec![on_broker("a", "1"), on_broker("shadow", "2")],
            }))
            .await;
        let config = JourneyConfig {
            max_attempts: 1,
            max_payload: 1024,
            outlier: OutlierConfig::default(),
        };
        let table = Arc::new(ArcSwap::from_pointee(table));
        (Journey::new(table, config, Default::default(), None), state)
    }

    fn delivery(n: u8, settled: &Arc<Mutex<Vec<Settlement>>>) -> Delivery {
        let mut message = Message {
            payload: Bytes::from(vec![n]),
            reply_to: Some("requester".into()),
            ..Default::default()
        };
        // A publisher's own mark is not taken for Baker's.
        message.headers.insert(header::SHADOW, "true");
        Delivery {
            message,
            destination: Destination {
                service: "s".into(),
                topic: Topic::new("t", '.'),
            },
            ack: AckHandle::new(Recorder(settled.clone())),
        }
    }

    #[tokio::test]
    async fn copies_go_to_the_shadow_version_marked_after_the_original_is_settled() {
        let broker = baker_adapter_memory::broker("shadow-copies");
        let mut a = broker.subscribe("_baker.s.a.>", None, 100);
        let mut shadow = broker.subscribe("_baker.s.shadow.>", None, 100);
        let (journey, _) = journey("shadow-copies", 10).await;
        let settled = Arc::new(Mutex::new(Vec::new()));
        for n in 0..5 {
            assert_eq!(
                journey.carry(delivery(n, &settled)).await,
                Outcome::Delivered
            );
        }
        assert_eq!(settled.lock().unwrap().len(), 5);
        for n in 0..5 {
            let original = a.try_recv().expect("the original");
            assert_eq!(original.message.payload[..], [n]);
            assert_eq!(original.message.headers.get(header::SHADOW), None);
            assert!(original.message.reply_to.is_some());
            let copy = shadow.try_recv().expect("its copy");
            assert_eq!(copy.message.payload[..], [n]);
            assert_eq!(copy.message.headers.get(header::SHADOW), Some("true"));
            assert_eq!(copy.message.reply_to, None, "a copy is never answered");
        }
        assert!(a.try_recv().is_err() && shadow.try_recv().is_err());
    }

    #[tokio::test]
    async fn copies_beyond_the_budget_are_dropped_and_never_hold_up_an_original() {
        let broker = baker_adapter_memory::broker("shadow-budget");
        let _a = broker.subscribe("_baker.s.a.>", None, 100);
        // Never read, room for one: the second copy on waits.
        let _shadow = broker.subscribe("_baker.s.shadow.>", None, 1);
        let (journey, state) = journey("shadow-budget", 2).await;
        let journey = Arc::new(journey);
        let settled = Arc::new(Mutex::new(Vec::new()));
        let mut journeys = Vec::new();
        for n in 0..10 {
            let (journey, delivery) = (journey.clone(), delivery(n, &settled));
            journeys.push(tokio::spawn(async move { journey.carry(delivery).await }));
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while settled.lock().unwrap().len() < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("every original settled while copies wait");
        assert!(settled
            .lock()
            .unwrap()
            .iter()
            .all(|s| *s == Settlement::Delivered));
        assert_eq!(state.in_flight(), 2, "the budget, no more");
        let waiting = journeys.iter().filter(|j| !j.is_finished()).count();
        assert_eq!(waiting, 2, "only the journeys whose copy waits");
        for journey in journeys {
            journey.abort();
        }
    }
}
