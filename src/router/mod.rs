//! The router role: consumes the ingress, routes each message by its
//! service's policy to a routable instance, and settles the ingress message
//! once the instance's broker has it.
//!
//! Concurrency is a bounded window: at most `max_in_flight` messages are
//! between ingress and settlement, and a full window stops pulling from the
//! ingress, so memory stays bounded and the broker holds the backlog.

mod attempts;
mod builder;
pub mod journey;
pub mod outlier;
pub mod policy;
pub mod reply;
mod send;
pub mod shadow;
mod shards;
mod stats;
mod stopping;
pub mod table;
pub mod undelivered;
pub mod zones;

use std::sync::Arc;

use arc_swap::ArcSwap;
use baker_adapter_api::{Delivery, Ingress};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

pub use builder::TableBuilder;
pub use journey::{Journey, JourneyConfig, Outcome, Quick};
pub use policy::PolicyKind;
pub use table::RoutingTable;

use crate::directory::{Interest, View};
use crate::shutdown::Shutdown;
use stopping::{Stopping, Turn};

/// Rebuilds the routing table whenever a new view arrives, and swaps it in;
/// then tells `interest` which services the table covers. Returns at
/// shutdown.
pub async fn follow_catalog(
    mut views: watch::Receiver<Arc<View>>,
    mut builder: TableBuilder,
    table: Arc<ArcSwap<RoutingTable>>,
    interest: Arc<Interest>,
    shutdown: Shutdown,
) {
    loop {
        let view = views.borrow_and_update().clone();
        let catalog = view.catalog.clone();
        let next = builder.build(catalog.clone()).await;
        let routable: usize = catalog.instances.iter().filter(|r| r.routable()).count();
        tracing::debug!(index = catalog.index, routable, "routing table updated");
        table.store(Arc::new(next));
        if let Some(covers) = &view.covers {
            interest.covered(covers.clone());
        }
        if shutdown
            .run_until(views.changed())
            .await
            .is_none_or(|r| r.is_err())
        {
            return;
        }
    }
}

/// Pulls deliveries from `ingress` and carries each through `journey`, with at
/// most `max_in_flight` at once. At shutdown it closes the ingress, routes
/// what the ingress had already received, and lets in-flight messages finish,
/// all within the drain timeout (10 s, `stopping.rs`).
///
/// On a runtime of one thread the journeys are futures of this task; with
/// more worker threads they are spread over one routing task per worker
/// (`shards.rs`).
pub async fn run(
    journey: Arc<Journey>,
    ingress: Box<dyn Ingress>,
    max_in_flight: usize,
    shutdown: Shutdown,
) {
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    if workers > 1 {
        return shards::run(journey, ingress, max_in_flight, workers, shutdown).await;
    }
    run_here(journey, ingress, max_in_flight, shutdown).await
}

/// A delivery's place in the window while it has more to do: its journey,
/// or the work left of its settlement.
type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Starts `delivery`, holding `held` until it is done. A delivery whose send
/// completes at once (core NATS, usually) is sent and settled here with no
/// future at all ([`Journey::try_carry`]); any other is carried by a journey
/// that is polled once and kept among `in_flight` only if it has more to
/// do.
async fn start<'a, T: Send + 'a>(
    journey: &'a Journey,
    in_flight: &mut FuturesUnordered<Pending<'a>>,
    delivery: Delivery,
    held: T,
) {
    // A send that completes at once uses no resource of the runtime's, so
    // a steady ingress would keep this task from ever yielding: each
    // delivery counts against its cooperative budget, as a channel's send
    // would.
    tokio::task::coop::consume_budget().await;
    let mut pending: Pending<'a> = match journey.try_carry(delivery) {
        Quick::Sent(settling) if !settling.is_pending() => return,
        Quick::Sent(settling) => Box::pin(async move {
            settling.await;
            drop(held);
        }),
        Quick::Wait(delivery, picked) => Box::pin(async move {
            journey.carry_picked(delivery, picked).await;
            drop(held);
        }),
    };
    if futures::poll!(pending.as_mut()).is_pending() {
        in_flight.push(pending);
    }
}

/// [`run`] with every journey a future of this task.
async fn run_here(
    journey: Arc<Journey>,
    mut ingress: Box<dyn Ingress>,
    max_in_flight: usize,
    shutdown: Shutdown,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut stopping = Stopping::new(&shutdown);
    loop {
        tokio::select! {
            biased;
            turn = stopping.next() => match turn {
                Turn::Stop => stopping.close(&mut *ingress, in_flight.len()).await,
                Turn::Deadline => break,
            },
            Some(_) = in_flight.next(), if !in_flight.is_empty() => {}
            delivery = ingress.next(), if in_flight.len() < max_in_flight => match delivery {
                Some(delivery) => {
                    // Each delivery is started here: one whose send and
                    // settlement complete at once (core NATS, usually) ends
                    // without joining the window's set. Then what has already
                    // arrived, without a round through the select for each.
                    let mut next = Some(delivery);
                    while let Some(delivery) = next.take() {
                        start(&journey, &mut in_flight, delivery, ()).await;
                        if in_flight.len() < max_in_flight {
                            next = ingress.try_next();
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
    let finish = async { while in_flight.next().await.is_some() {} };
    tokio::select! {
        _ = finish => {}
        _ = stopping.deadline() => {
            tracing::warn!(in_flight = in_flight.len(),
                "messages did not finish within the drain timeout; brokers with acknowledgements redeliver them");
        }
    }
    // Dropping what is left settles it as requeued, before the ingress
    // passes its last settlements to the broker.
    drop(in_flight);
    Stopping::finish(&mut *ingress).await;
}
