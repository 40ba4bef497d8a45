//! Routing on every worker thread: with more than one worker, the ingress
//! task hands its deliveries to one routing task per worker (a shard), each
//! carrying its own journeys, so that routing work is spread over the
//! runtime's threads rather than confined to the task that reads the
//! ingress.
//!
//! The window stays one: a delivery takes a permit of `max_in_flight` before
//! it leaves the ingress, and gives it back once its journey has ended, so a
//! full window stops pulling from the ingress as it does with one task.
//! Deliveries go to the shards in runs of at most [`RUN`], each run to the
//! next shard: one wake-up per run rather than per message.

use std::sync::Arc;

use baker_adapter_api::{Delivery, Ingress};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::stopping::{Stopping, Turn};
use super::{start, Journey};
use crate::shutdown::Shutdown;

/// Most deliveries handed to one shard before the next shard's turn.
const RUN: usize = 32;

/// A delivery and its place in the window.
type Admitted = (Delivery, OwnedSemaphorePermit);

/// [`super::run`] over `shards` routing tasks.
pub(super) async fn run(
    journey: Arc<Journey>,
    mut ingress: Box<dyn Ingress>,
    max_in_flight: usize,
    shards: usize,
    shutdown: Shutdown,
) {
    let window = Arc::new(Semaphore::new(max_in_flight));
    let (senders, mut tasks): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| {
            let (sender, receiver) = mpsc::unbounded_channel::<Admitted>();
            (sender, tokio::spawn(shard(journey.clone(), receiver)))
        })
        .unzip();
    let mut turn = 0;
    // A permit taken while waiting for the next delivery.
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut stopping = Stopping::new(&shutdown);
    loop {
        tokio::select! {
            biased;
            turn = stopping.next() => match turn {
                Turn::Stop => {
                    let in_flight = max_in_flight - window.available_permits();
                    stopping.close(&mut *ingress, in_flight).await;
                }
                Turn::Deadline => break,
            },
            permit = window.clone().acquire_owned(), if held.is_none() => {
                held = Some(permit.expect("the window is never closed"));
            }
            delivery = ingress.next(), if held.is_some() => match delivery {
                Some(delivery) => {
                    let shard = &senders[turn];
                    turn = (turn + 1) % senders.len();
                    let first = held.take().expect("a permit is held");
                    // A shard ends only once its sender is dropped, below.
                    let _ = shard.send((delivery, first));
                    // What has already arrived goes to the same shard.
                    for _ in 1..RUN {
                        let Ok(permit) = window.clone().try_acquire_owned() else {
                            break;
                        };
                        match ingress.try_next() {
                            Some(delivery) => {
                                let _ = shard.send((delivery, permit));
                            }
                            None => {
                                held = Some(permit);
                                break;
                            }
                        }
                    }
                }
                None => break,
            },
        }
    }
    if !stopping.closing() {
        tracing::warn!("ingress closed by the broker side");
    }
    drop(held);
    // The shards finish what they have, then end.
    drop(senders);
    let finish = futures::future::join_all(tasks.iter_mut());
    tokio::select! {
        _ = finish => {}
        _ = stopping.deadline() => {
            tracing::warn!(in_flight = max_in_flight - window.available_permits(),
                "messages did not finish within the drain timeout; brokers with acknowledgements redeliver them");
            // Dropping what is left settles it as requeued, before the
            // ingress passes its last settlements to the broker.
            for task in &tasks {
                task.abort();
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }
    Stopping::finish(&mut *ingress).await;
}

/// One routing task: carries the deliveries it is handed until its sender
/// is gone and its journeys have ended.
async fn shard(journey: Arc<Journey>, mut deliveries: mpsc::UnboundedReceiver<Admitted>) {
    let journey = &*journey;
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = deliveries.recv() => match next {
                Some((delivery, permit)) => {
                    start(journey, &mut in_flight, delivery, permit).await;
                    while let Ok((delivery, permit)) = deliveries.try_recv() {
                        start(journey, &mut in_flight, delivery, permit).await;
                    }
                }
                None => break,
            },
        }
    }
    while in_flight.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use async_trait::async_trait;
    use baker_adapter_api::{
        AckHandle, Destination, IngressStatus, Message, Settle, Settlement, Settling, Topic,
    };
    use baker_directory_api::testing::record;

    use super::*;
    use crate::adapters::AdapterRegistry;
    use crate::directory::Catalog;
    use crate::router::{JourneyConfig, PolicyKind, TableBuilder};

    /// Deliveries given out once, then the end of the ingress; closed, it
    /// gives out ten more at most, as a broker's last ones on the wire.
    struct Queue(VecDeque<Delivery>, Arc<AtomicUsize>);

    impl Queue {
        fn take(&mut self) -> Option<Delivery> {
            let delivery = self.0.pop_front()?;
            self.1.fetch_add(1, Ordering::SeqCst);
            Some(delivery)
        }
    }

    #[async_trait]
    impl Ingress for Queue {
        async fn next(&mut self) -> Option<Delivery> {
            // Gives the runtime a turn, as a real ingress waiting on its
            // broker would.
            tokio::task::yield_now().await;
            self.take()
        }
        fn try_next(&mut self) -> Option<Delivery> {
            self.take()
        }
        async fn close(&mut self) {
            self.0.truncate(10);
        }
        fn status(&self) -> IngressStatus {
            IngressStatus::always_connected()
        }
    }

    /// How many settlements run at once, at most: each holds its thread
    /// for a while, as a journey's CPU work would.
    #[derive(Default)]
    struct Overlap {
        now: AtomicUsize,
        most: AtomicUsize,
        settled: AtomicUsize,
        delivered: AtomicUsize,
        taken: Arc<AtomicUsize>,
    }

    struct Busy(Arc<Overlap>);

    impl Settle for Busy {
        fn settle(self: Box<Self>, outcome: Settlement) -> Settling {
            self.0.settled.fetch_add(1, Ordering::SeqCst);
            if outcome != Settlement::Delivered {
                return Settling::done();
            }
            self.0.delivered.fetch_add(1, Ordering::SeqCst);
            let now = self.0.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.0.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            self.0.now.fetch_sub(1, Ordering::SeqCst);
            Settling::done()
        }
    }

    async fn journey(broker: &str) -> Arc<Journey> {
        let mut r = record("s", "a", 5);
        r.endpoint.broker = format!("memory://{broker}");
        let table = TableBuilder::new(
            Arc::new(AdapterRegistry::builtin()),
            HashMap::from([("s".to_owned(), PolicyKind::RoundRobin)]),
        )
        .build(Arc::new(Catalog {
            epoch: 1,
            index: 1,
            instances: vec![r],
        }))
        .await;
        Arc::new(Journey::new(
            Arc::new(ArcSwap::from_pointee(table)),
            JourneyConfig {
                max_attempts: 1,
                max_payload: 1024,
                outlier: Default::default(),
            },
            Default::default(),
            None,
        ))
    }

    fn deliveries(n: usize, overlap: &Arc<Overlap>) -> Queue {
        Queue(
            (0..n)
                .map(|_| Delivery {
                    message: Message::default(),
                    destination: Destination {
                        service: "s".to_owned(),
                        topic: Topic::new("t", '.'),
                    },
                    ack: AckHandle::new(Busy(overlap.clone())),
                })
                .collect(),
            overlap.taken.clone(),
        )
    }

    /// Routes `4 * RUN` deliveries to an instance on memory broker
    /// `broker` with `route`, and says how their settlements overlapped.
    async fn route_all<F: std::future::Future<Output = ()>>(
        broker: &str,
        route: impl FnOnce(Arc<Journey>, Box<dyn Ingress>) -> F,
    ) -> Arc<Overlap> {
        let memory = baker_adapter_memory::broker(broker);
        let _inbox = memory.subscribe("_baker.s.a.>", None, 1_000);
        let overlap = Arc::new(Overlap::default());
        let ingress = Box::new(deliveries(4 * RUN, &overlap));
        tokio::time::timeout(
            Duration::from_secs(20),
            route(journey(broker).await, ingress),
        )
        .await
        .expect("every journey ends");
        assert_eq!(overlap.delivered.load(Ordering::SeqCst), 4 * RUN);
        overlap
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journeys_run_on_more_than_one_thread_at_once() {
        let overlap = route_all("shards-overlap", |journey, ingress| {
            super::super::run(journey, ingress, 1_000, Shutdown::new())
        })
        .await;
        assert!(
            overlap.most.load(Ordering::SeqCst) >= 2,
            "journeys never overlapped: routing is confined to one thread"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_window_bounds_journeys_across_shards() {
        let overlap = route_all("shards-window", |journey, ingress| {
            run(journey, ingress, 1, 2, Shutdown::new())
        })
        .await;
        assert_eq!(overlap.most.load(Ordering::SeqCst), 1, "a window of one");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_finishes_every_delivery_taken_from_the_ingress() {
        let broker = baker_adapter_memory::broker("shards-stop");
        let _inbox = broker.subscribe("_baker.s.a.>", None, 100_000);
        let overlap = Arc::new(Overlap::default());
        let journey = journey("shards-stop").await;
        let ingress = Box::new(deliveries(10_000, &overlap));
        let shutdown = Shutdown::new();
        let stopping = shutdown.clone();
        let taken = overlap.taken.clone();
        tokio::spawn(async move {
            while taken.load(Ordering::SeqCst) < 100 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stopping.trigger();
        });
        tokio::time::timeout(
            Duration::from_secs(20),
            run(journey, ingress, 64, 2, shutdown),
        )
        .await
        .expect("the router stops");
        let taken = overlap.taken.load(Ordering::SeqCst);
        assert!(taken < 10_000, "stopped before the end of the ingress");
        assert_eq!(overlap.delivered.load(Ordering::SeqCst), taken);
        // The rest went back when the ingress was dropped.
        assert_eq!(overlap.settled.load(Ordering::SeqCst), 10_000);
    }
}
