//! One message's journey: ingress → resolve → pick → egress → settle.
//!
//! The ingress delivery's ack handle is settled only after the egress has
//! resolved: acked once an instance's broker took the message, dead-lettered
//! when no instance can take it. Retries move to the next instance and are
//! bounded by `max_attempts`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use baker_adapter_api::{header, Delivery, Destination, Message, Settlement, Settling};
use futures::future::Either;
use opentelemetry::context::FutureExt as _;

use super::attempts::{attempt_text, FailedAttempts};
use super::outlier::OutlierConfig;
use super::policy::Pick;
use super::reply::ReplyProxy;
use super::shadow::ShadowCopy;
use super::table::{RoutingTable, ServiceRoute};
pub use super::undelivered::Failure;
use super::undelivered::{Cause, UndeliveredReporter};
use crate::directory::Interest;
use crate::traces::Traces;

/// Tunables of the journey.
#[derive(Debug, Clone)]
pub struct JourneyConfig {
    /// Sends tried per message (across instances) before dead-lettering.
    pub max_attempts: u32,
    /// Largest payload routed; larger ones are dead-lettered.
    pub max_payload: usize,
    /// When failing instances are ejected.
    pub outlier: OutlierConfig,
}

/// What [`Journey::try_carry`] did with a delivery.
#[must_use = "a delivery handed back must be carried"]
// The delivery comes back by value, to move on into its journey: boxing it
// would cost an allocation for each one handed back.
#[allow(clippy::large_enum_variant)]
pub enum Quick {
    /// The instance took it; what is left is its settlement (usually
    /// nothing).
    Sent(Settling),
    /// It needs a journey: carry it with [`Journey::carry_picked`], with the
    /// instance picked for it, if any.
    Wait(Delivery, Option<usize>),
}

/// How one delivery ended, for the caller's accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by every instance it was sent to.
    Delivered,
    /// Dead-lettered.
    Undeliverable(Failure),
}

/// Carries deliveries from ingress to instances.
pub struct Journey {
    table: Arc<ArcSwap<RoutingTable>>,
    pub(super) config: JourneyConfig,
    undelivered: Arc<UndeliveredReporter>,
    pub(super) replies: Option<Arc<ReplyProxy>>,
    /// The services the router follows: a message for another one waits for
    /// its first view. None: the table holds every service.
    interest: Option<Arc<Interest>>,
    /// Where spans of routed messages go, when traces are on.
    pub(super) traces: Option<Arc<Traces>>,
}

const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Most Bakers a message may go through: a chain of meshes is a handful of
/// hops; a loop would go on for ever.
pub const MAX_HOPS: u32 = 8;
/// Pause before a message no instance's broker could take is routed again,
/// for an ingress that cannot hand it back to its broker.
const ROUTE_AGAIN_PAUSE: Duration = Duration::from_secs(1);

impl Journey {
    /// A journey over `table`. Requests to instances on another broker than
    /// the requester's get their replies through `replies`; without it their
    /// reply address passes through unchanged.
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        config: JourneyConfig,
        undelivered: Arc<UndeliveredReporter>,
        replies: Option<Arc<ReplyProxy>>,
    ) -> Self {
        Self {
            table,
            config,
            undelivered,
            replies,
            interest: None,
            traces: None,
        }
    }

    /// Gives each routed message a span in `traces`.
    pub fn with_traces(mut self, traces: Arc<Traces>) -> Self {
        self.traces = Some(traces);
        self
    }

    /// Learns the services messages name into `interest`: a message for a
    /// service not followed yet waits for its first view.
    pub fn with_interest(mut self, interest: Arc<Interest>) -> Self {
        self.interest = Some(interest);
        self
    }

    /// Routes one delivery and settles it.
    pub fn carry(&self, delivery: Delivery) -> impl std::future::Future<Output = Outcome> + '_ {
        self.carry_picked(delivery, None)
    }

    /// [`Journey::carry`] for a delivery [`Journey::try_carry`] handed back:
    /// its first send goes to the instance picked there (`picked`), so that
    /// a policy with a sequence (round robin) is not moved on twice.
    pub fn carry_picked(
        &self,
        delivery: Delivery,
        picked: Option<usize>,
    ) -> impl std::future::Future<Output = Outcome> + '_ {
        // The parts as the future's own arguments: an async fn keeps its
        // arguments, and taking a `Delivery` apart inside it would keep a
        // second copy of the message.
        self.carry_parts(delivery.message, delivery.destination, delivery.ack, picked)
    }

    /// The journey of a delivery whose send completes at once, without a
    /// future: the common case on core NATS, where a send hands the message
    /// to the connection's buffer. `Quick::Sent` once the instance took it
    /// (what is left is its settlement, usually nothing); `Quick::Wait` with
    /// the delivery untouched, and the instance picked if any, when any step
    /// would wait or the message is not a plain one (a hop count, no
    /// instance to pick, a copy to every instance, a proxied reply, a send
    /// that cannot complete at once): the caller carries it with
    /// [`Journey::carry_picked`].
    pub fn try_carry(&self, mut delivery: Delivery) -> Quick {
        if self.traces.is_some() {
            // Its span lives through the journey.
            return Quick::Wait(delivery, None);
        }
        let started = Instant::now();
        let message = &mut delivery.message;
        if message.payload.len() > self.config.max_payload
            || message.headers.get(header::HOPS).is_some()
        {
            return Quick::Wait(delivery, None);
        }
        let table = self.table.load();
        let Some(service) = table.service(&delivery.destination.service) else {
            return Quick::Wait(delivery, None);
        };
        if let Some(used) = &service.used {
            used.touch();
        }
        if service.shadow.is_some() {
            // A copy may be due, to send once this one is settled.
            return Quick::Wait(delivery, None);
        }
        let Ok(service) = service.for_message(message) else {
            return Quick::Wait(delivery, None);
        };
        if service.into_baker {
            return Quick::Wait(delivery, None);
        }
        let Pick::One(first) = service.policy.pick(&service.instances, message) else {
            return Quick::Wait(delivery, None);
        };
        let instance = &service.instances[service.admitted_from(first)];
        if self.proxy_for(instance, message).is_some() {
            return Quick::Wait(delivery, Some(first));
        }
        // As `route` does; the slow path removes them again, to no effect.
        message.headers.remove(header::ATTEMPT);
        message.headers.remove(header::SHADOW);
        if !instance.target.try_send(&delivery.destination, message) {
            return Quick::Wait(delivery, Some(first));
        }
        self.sent(instance, &Ok(()));
        service.latency.record(started.elapsed().as_secs_f64());
        Quick::Sent(delivery.ack.ack())
    }

    async fn carry_parts(
        &self,
        mut message: Message,
        destination: Destination,
        ack: baker_adapter_api::AckHandle,
        picked: Option<usize>,
    ) -> Outcome {
        let started = Instant::now();
        let hops = match message.headers.get(header::HOPS) {
            Some(text) => text.parse::<u32>().unwrap_or(MAX_HOPS),
            None => 0,
        };
        // Every message's journey lives in the router's window as one
        // allocation: what only some messages need (progress reports, the
        // wait for a new service, retries, broadcast copies) is boxed where
        // it happens, so that the common journey stays small.
        let mut copy = None;
        let traced = (self.traces.as_ref()).map(|t| t.begin(&mut message, &destination));
        let (mut outcome, ack) = {
            let route = self.route(&mut message, &destination, hops, started, picked, &mut copy);
            // Boxed where traced: the span's context around every poll.
            let route = match &traced {
                Some(context) => Either::Left(Box::pin(route.with_context(context.clone()))),
                None => Either::Right(route),
            };
            tokio::pin!(route);
            match ack.progress_interval() {
                None => (route.await, ack),
                Some(every) => Box::pin(with_progress(route, ack, every)).await,
            }
        };
        // An at-least-once ingress whose broker has no hand-back (MQTT): the
        // message is routed again here after a pause, holding its place in
        // the window, until it is delivered or found undeliverable (or the
        // router stops, which leaves it with the broker).
        while ack.routes_again() {
            let Outcome::Undeliverable(failure) = &outcome else {
                break;
            };
            if failure.cause != Cause::Unreachable {
                break;
            }
            self.undelivered
                .record(&destination.service, failure.cause, &failure.reason);
            Box::pin(tokio::time::sleep(ROUTE_AGAIN_PAUSE)).await;
            let again = self.route(
                &mut message,
                &destination,
                hops,
                Instant::now(),
                None,
                &mut copy,
            );
            outcome = match &traced {
                Some(context) => Box::pin(again.with_context(context.clone())).await,
                None => Box::pin(again).await,
            };
        }
        // Settling is part of the journey: what it has left to do (a dead
        // letter to publish, a pause before a hand-back) holds the message's
        // place in the window, and a graceful stop waits for it.
        let settling = match &outcome {
            Outcome::Delivered => ack.ack(),
            Outcome::Undeliverable(failure) => {
                self.undelivered
                    .record(&destination.service, failure.cause, &failure.reason);
                if failure.cause == Cause::Unreachable {
                    ack.settle(Settlement::Requeue {
                        reason: failure.reason.clone(),
                    })
                } else {
                    let code = failure.cause.code();
                    ack.dead_letter(failure.reason.clone(), failure.attempts, code)
                }
            }
        };
        settling.await;
        if let Some(context) = &traced {
            let failure = match &outcome {
                Outcome::Delivered => None,
                Outcome::Undeliverable(failure) => Some(failure.reason.as_str()),
            };
            crate::traces::settled(context, failure);
        }
        // The original is settled: its shadow copy, if any, cannot touch it.
        if let Some(copy) = copy {
            Box::pin(self.send_shadow(copy)).await;
        }
        outcome
    }

    async fn route(
        &self,
        message: &mut Message,
        destination: &Destination,
        hops: u32,
        started: Instant,
        picked: Option<usize>,
        copy: &mut Option<Box<ShadowCopy>>,
    ) -> Outcome {
        if message.payload.len() > self.config.max_payload {
            return Outcome::Undeliverable(Failure::new(
                Cause::TooLarge,
                format!(
                    "payload of {} bytes exceeds max_payload {}",
                    message.payload.len(),
                    self.config.max_payload
                ),
                0,
            ));
        }
        // One lookup on the way of a known service; a service not followed
        // yet waits for its first view, then is looked up again.
        let table = self.table.load_full();
        let reloaded;
        let service = match (table.service(&destination.service), &self.interest) {
            (Some(service), _) => service,
            (None, None) => return Outcome::Undeliverable(no_route(destination)),
            (None, Some(interest)) => {
                if let Err(no_view) = Box::pin(interest.view_of(&destination.service)).await {
                    let reason = no_view.to_string();
                    return Outcome::Undeliverable(Failure::new(Cause::NoRoute, reason, 0));
                }
                reloaded = self.table.load_full();
                match reloaded.service(&destination.service) {
                    Some(service) => service,
                    None => return Outcome::Undeliverable(no_route(destination)),
                }
            }
        };
        if let Some(used) = &service.used {
            used.touch();
        }
        let shadowed = service.shadow.is_some();
        let service = match service.for_message(message) {
            Ok(service) => service,
            Err(version) => {
                return Outcome::Undeliverable(Failure::new(
                    Cause::NoRoute,
                    format!(
                        "no routable instance of service {:?} at version {version:?}",
                        destination.service
                    ),
                    0,
                ))
            }
        };
        // An attempt number is this router's to give, on retries only; a
        // hop count only into another Baker's ingress; a shadow mark only
        // on its copies.
        message.headers.remove(header::ATTEMPT);
        message.headers.remove(header::SHADOW);
        message.headers.remove(header::HOPS);
        if hops >= MAX_HOPS {
            return Outcome::Undeliverable(Failure::new(
                Cause::Loop,
                format!(
                    "routed by {hops} Bakers already: a routing loop (an instance's inbox is \
                     another Baker's ingress that routes back)"
                ),
                0,
            ));
        }
        if service.into_baker {
            message.headers.insert(header::HOPS, (hops + 1).to_string());
        }
        // An instance already picked for this message (see `try_carry`), if
        // the table still has it.
        let pick = match picked.filter(|&i| i < service.instances.len()) {
            Some(index) => Pick::One(index),
            None => service.policy.pick(&service.instances, message),
        };
        let outcome = match pick {
            Pick::One(first) => self.deliver_one(service, first, destination, message).await,
            Pick::All => Box::pin(self.broadcast(service, destination, message)).await,
            Pick::Nobody => Err(no_route(destination)),
        };
        match outcome {
            Ok(()) => {
                service.latency.record(started.elapsed().as_secs_f64());
                if shadowed {
                    *copy = ShadowCopy::of(&self.table.load_full(), destination, message);
                }
                Outcome::Delivered
            }
            Err(failure) => Outcome::Undeliverable(failure),
        }
    }

    /// Sends to `first`, then to the following instances on failure.
    async fn deliver_one(
        &self,
        service: &ServiceRoute,
        first: usize,
        destination: &Destination,
        message: &mut Message,
    ) -> Result<(), Failure> {
        let mut failed = FailedAttempts::default();
        let mut cursor = first;
        for attempt in 1..=self.config.max_attempts {
            let index = service.admitted_from(cursor);
            cursor = index + 1;
            let instance = &service.instances[index];
            if attempt > 1 {
                message
                    .headers
                    .insert(header::ATTEMPT, attempt_text(attempt));
            }
            match self.send(instance, destination, message).await {
                Ok(()) => return Ok(()),
                Err(error) => failed.record(instance, error, attempt)?,
            }
            if attempt < self.config.max_attempts {
                Box::pin(tokio::time::sleep(RETRY_PAUSE * attempt)).await;
            }
        }
        Err(failed.exhausted(
            format!("undeliverable after {} attempts", self.config.max_attempts),
            self.config.max_attempts,
        ))
    }

    /// Sends a copy to every instance; fails if any copy fails after its
    /// retries (the worst outcome of the copies wins).
    async fn broadcast(
        &self,
        service: &ServiceRoute,
        destination: &Destination,
        message: &mut Message,
    ) -> Result<(), Failure> {
        let message = &*message;
        let copies = service.instances.iter().map(|instance| async move {
            let mut failed = FailedAttempts::default();
            for attempt in 1..=self.config.max_attempts {
                match self.send(instance, destination, message).await {
                    Ok(()) => return Ok(()),
                    Err(error) => failed.record(instance, error, attempt)?,
                }
                tokio::time::sleep(RETRY_PAUSE * attempt).await;
            }
            Err(failed.exhausted(
                format!("copy to {} undeliverable", instance.record.id),
                self.config.max_attempts,
            ))
        });
        let failures: Vec<Failure> = futures::future::join_all(copies)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        match failures.first() {
            None => Ok(()),
            Some(first) => {
                // The worst copy decides: any copy that could be dead-lettered
                // makes the message dead-lettered; only all-unreachable
                // copies send it back for redelivery.
                let worst = failures
                    .iter()
                    .find(|f| f.cause != Cause::Unreachable)
                    .unwrap_or(first);
                let (cause, attempts) = (worst.cause, worst.attempts);
                let reasons: Vec<_> = failures.into_iter().map(|f| f.reason).collect();
                Err(Failure::new(cause, reasons.join("; "), attempts))
            }
        }
    }
}

/// Runs `route`, telling the broker every `every` that the message is still
/// being worked on, so that retries taking longer than the broker's
/// redelivery timer do not bring a second copy.
async fn with_progress(
    mut route: std::pin::Pin<&mut impl std::future::Future<Output = Outcome>>,
    ack: baker_adapter_api::AckHandle,
    every: Duration,
) -> (Outcome, baker_adapter_api::AckHandle) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            outcome = &mut route => return (outcome, ack),
            _ = ticks.tick() => ack.progress(),
        }
    }
}

fn no_route(destination: &Destination) -> Failure {
    Failure::new(
        Cause::NoRoute,
        format!("no routable instance of service {:?}", destination.service),
        0,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use baker_adapter_api::{AckHandle, Settle, Settlement, Settling};
    use bytes::Bytes;

    use super::*;
    use crate::adapters::AdapterRegistry;
    use crate::directory::{Catalog, InstanceRecord};
    use crate::router::{PolicyKind, TableBuilder};
    use baker_directory_api::testing::record;

    /// Records each settlement at once.
    pub(crate) struct Recorder(pub Arc<Mutex<Vec<Settlement>>>);

    impl Settle for Recorder {
        fn settle(self: Box<Self>, outcome: Settlement) -> Settling {
            self.0.lock().unwrap().push(outcome);
            Settling::done()
        }
    }

    /// A settlement with work left: it records its outcome only after a
    /// pause, as a dead letter waiting for its broker would.
    struct Slow(Arc<Mutex<Vec<Settlement>>>);

    impl Settle for Slow {
        fn settle(self: Box<Self>, outcome: Settlement) -> Settling {
            Settling::later(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                self.0.lock().unwrap().push(outcome);
            })
        }
    }

    /// A settlement that wants progress every 10 s and counts it.
    struct Patient(Arc<std::sync::atomic::AtomicU32>);

    impl Settle for Patient {
        fn settle(self: Box<Self>, _: Settlement) -> Settling {
            Settling::done()
        }

        fn progress_interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(10))
        }

        fn progress(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_held_long_tells_the_broker_it_is_in_progress() {
        let broker = baker_adapter_memory::broker("journey-progress");
        // Room for one message: the second send waits until it is read.
        let mut a = broker.subscribe("_baker.s.a.>", None, 1);
        let journey =
            Arc::new(journey("journey-progress", &["a"], PolicyKind::RoundRobin, 1024).await);
        let (first, _) = delivery("s", b"1");
        assert_eq!(journey.carry(first).await, Outcome::Delivered);
        let progress = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (mut held, _) = delivery("s", b"2");
        held.ack = AckHandle::new(Patient(progress.clone()));
        let carried = tokio::spawn({
            let journey = journey.clone();
            async move { journey.carry(held).await }
        });
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(progress.load(std::sync::atomic::Ordering::Relaxed), 3);
        a.recv().await.unwrap();
        assert_eq!(carried.await.unwrap(), Outcome::Delivered);
        a.recv().await.unwrap();
    }

    /// A journey over instances of service `s` on a fresh memory broker.
    async fn journey(
        broker: &str,
        ids: &[&str],
        policy: PolicyKind,
        max_payload: usize,
    ) -> Journey {
        journey_with_replies(broker, ids, policy, max_payload, None).await
    }

    async fn journey_with_replies(
        broker: &str,
        ids: &[&str],
        policy: PolicyKind,
        max_payload: usize,
        replies: Option<Arc<ReplyProxy>>,
    ) -> Journey {
        let instances: Vec<InstanceRecord> = ids
            .iter()
            .map(|id| {
                let mut r = record("s", id, 5);
                r.endpoint.broker = format!("memory://{broker}");
                r
            })
            .collect();
        let mut builder = TableBuilder::new(
            Arc::new(AdapterRegistry::builtin()),
            HashMap::from([("s".to_owned(), policy)]),
        );
        let table = builder
            .build(Arc::new(Catalog {
                epoch: 1,
                index: 1,
                instances,
            }))
            .await;
        Journey::new(
            Arc::new(ArcSwap::from_pointee(table)),
            JourneyConfig {
                max_attempts: 3,
                max_payload,
                outlier: OutlierConfig {
                    consecutive_failures: 2,
                    base_ejection: std::time::Duration::from_secs(60),
                },
            },
            Default::default(),
            replies,
        )
    }

    fn delivery(service: &str, payload: &'static [u8]) -> (Delivery, Arc<Mutex<Vec<Settlement>>>) {
        let settled = Arc::new(Mutex::new(Vec::new()));
        let delivery = Delivery {
            message: Message {
                payload: Bytes::from_static(payload),
                ..Default::default()
            },
            destination: Destination {
                service: service.to_owned(),
                topic: baker_adapter_api::Topic::new("t", '.'),
            },
            ack: AckHandle::new(Recorder(settled.clone())),
        };
        (delivery, settled)
    }

    fn dead_letter_reason(settled: &Mutex<Vec<Settlement>>) -> String {
        match settled.lock().unwrap().as_slice() {
            [Settlement::DeadLetter { reason, .. }] => reason.clone(),
            other => panic!("expected one dead letter, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_send_moves_to_the_next_instance_then_acks() {
        let broker = baker_adapter_memory::broker("journey-retry");
        // `a` has no consumer, so sends to it fail; `b` has one.
        let mut b = broker.subscribe("_baker.s.b.>", None, 10);
        let journey = journey("journey-retry", &["a", "b"], PolicyKind::RoundRobin, 1024).await;
        let (d, settled) = delivery("s", b"x");
        assert_eq!(journey.carry(d).await, Outcome::Delivered);
        assert_eq!(*settled.lock().unwrap(), vec![Settlement::Delivered]);
        let got = b.recv().await.unwrap();
        assert_eq!(got.subject, "_baker.s.b.t");
        assert_eq!(got.message.headers.get(header::ATTEMPT), Some("2"));
    }

    #[tokio::test]
    async fn a_message_an_instance_takes_at_once_is_sent_and_settled_without_a_future() {
        let broker = baker_adapter_memory::broker("journey-quick");
        let mut a = broker.subscribe("_baker.s.a.>", None, 10);
        let journey = journey("journey-quick", &["a"], PolicyKind::RoundRobin, 1024).await;
        let (d, settled) = delivery("s", b"x");
        let Quick::Sent(settling) = journey.try_carry(d) else {
            panic!("a send with room in the inbox waits for nothing");
        };
        assert!(!settling.is_pending());
        assert_eq!(*settled.lock().unwrap(), vec![Settlement::Delivered]);
        assert_eq!(a.recv().await.unwrap().subject, "_baker.s.a.t");
        let table = journey.table.load();
        let stats = &table.service("s").unwrap().instances[0].stats;
        assert_eq!(
            stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_message_handed_back_goes_to_the_instance_picked_for_it() {
        let broker = baker_adapter_memory::broker("journey-picked");
        // `a`'s inbox is full, so a send to it has to wait.
        let mut a = broker.subscribe("_baker.s.a.>", None, 1);
        let mut b = broker.subscribe("_baker.s.b.>", None, 10);
        assert_eq!(broker.publish("_baker.s.a.t", Message::default()).await, 1);
        let journey = journey("journey-picked", &["a", "b"], PolicyKind::RoundRobin, 1024).await;
        let (d, settled) = delivery("s", b"picked");
        let Quick::Wait(d, picked) = journey.try_carry(d) else {
            panic!("a full inbox cannot take a message at once");
        };
        assert_eq!(picked, Some(0), "round robin picks `a` first");
        assert!(settled.lock().unwrap().is_empty(), "handed back unsettled");
        // Round robin has moved on to `b`: the journey must still go to `a`.
        let carried = tokio::spawn(async move { journey.carry_picked(d, picked).await });
        a.recv().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), a.recv())
            .await
            .expect("the message reaches `a`")
            .unwrap();
        assert_eq!(&got.message.payload[..], b"picked");
        assert_eq!(carried.await.unwrap(), Outcome::Delivered);
        assert!(b.try_recv().is_err(), "nothing went to `b`");
    }

    #[tokio::test]
    async fn a_message_with_a_hop_count_is_handed_back_untouched() {
        let broker = baker_adapter_memory::broker("journey-hops");
        let _a = broker.subscribe("_baker.s.a.>", None, 10);
        let journey = journey("journey-hops", &["a"], PolicyKind::RoundRobin, 1024).await;
        let (mut d, _) = delivery("s", b"x");
        d.message.headers.insert(header::HOPS, "3");
        let Quick::Wait(d, _) = journey.try_carry(d) else {
            panic!("a hop count is the journey's to check");
        };
        assert_eq!(d.message.headers.get(header::HOPS), Some("3"));
    }

    #[tokio::test]
    async fn a_journey_in_the_window_stays_small() {
        // Each message in the window is one allocation of this future
        // (2.8 kB before the rare paths were boxed).
        let journey = journey("journey-size", &["a"], PolicyKind::RoundRobin, 1024).await;
        let (d, _) = delivery("s", b"x");
        let size = std::mem::size_of_val(&journey.carry(d));
        assert!(size <= 1_280, "a journey takes {size} bytes");
    }

    #[tokio::test]
    async fn a_message_that_went_through_too_many_bakers_is_a_loop() {
        let journey = journey("journey-loop", &["a"], PolicyKind::RoundRobin, 1024).await;
        let (mut d, settled) = delivery("s", b"x");
        d.message.headers.insert(header::HOPS, MAX_HOPS.to_string());
        assert!(matches!(
            journey.carry(d).await,
            Outcome::Undeliverable(Failure {
                cause: Cause::Loop,
                ..
            })
        ));
        assert!(dead_letter_reason(&settled).contains("routing loop"));
    }

    #[tokio::test]
    async fn a_first_attempt_carries_no_header_of_bakers() {
        let broker = baker_adapter_memory::broker("journey-plain");
        let mut a = broker.subscribe("_baker.s.a.>", None, 10);
        let journey = journey("journey-plain", &["a"], PolicyKind::RoundRobin, 1024).await;
        let (mut d, _) = delivery("s", b"x");
        // A stale attempt number (another router's, say) is not this one's,
        // nor a hop count, to an inbox that is no Baker's ingress.
        d.message.headers.insert(header::ATTEMPT, "3");
        d.message.headers.insert(header::HOPS, "2");
        assert_eq!(journey.carry(d).await, Outcome::Delivered);
        let got = a.recv().await.unwrap();
        assert!(got.message.headers.is_empty(), "{:?}", got.message.headers);
    }

    #[tokio::test]
    async fn a_journey_ends_once_its_settlement_has_finished() {
        let journey = journey("journey-slow", &[], PolicyKind::RoundRobin, 1024).await;
        let (mut d, _) = delivery("s", b"x");
        let settled = Arc::new(Mutex::new(Vec::new()));
        d.ack = AckHandle::new(Slow(settled.clone()));
        assert!(matches!(journey.carry(d).await, Outcome::Undeliverable(_)));
        // Inside the router's window: the dead letter is kept before the
        // journey gives its place to another message.
        assert_eq!(settled.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn when_every_attempt_fails_the_message_is_dead_lettered_with_the_reason() {
        let journey = journey("journey-none", &["a", "b"], PolicyKind::RoundRobin, 1024).await;
        let (d, settled) = delivery("s", b"x");
        assert!(matches!(
            journey.carry(d).await,
            Outcome::Undeliverable(Failure {
                cause: Cause::Unavailable,
                ..
            })
        ));
        assert!(dead_letter_reason(&settled).contains("after 3 attempts"));
    }

    #[tokio::test]
    async fn an_unknown_service_is_dead_lettered_not_dropped() {
        let journey = journey("journey-unknown", &["a"], PolicyKind::RoundRobin, 1024).await;
        let (d, settled) = delivery("nosuch", b"x");
        assert!(matches!(
            journey.carry(d).await,
            Outcome::Undeliverable(Failure {
                cause: Cause::NoRoute,
                ..
            })
        ));
        assert!(dead_letter_reason(&settled).contains("no routable instance of service \"nosuch\""));
    }

    #[tokio::test]
    async fn an_oversized_payload_is_dead_lettered() {
        let broker = baker_adapter_memory::broker("journey-large");
        let _a = broker.subscribe("_baker.s.a.>", None, 10);
        let journey = journey("journey-large", &["a"], PolicyKind::RoundRobin, 4).await;
        let (d, settled) = delivery("s", b"too large");
        assert!(matches!(
            journey.carry(d).await,
            Outcome::Undeliverable(Failure {
                cause: Cause::TooLarge,
                ..
            })
        ));
        assert!(dead_letter_reason(&settled).contains("exceeds max_payload 4"));
    }

    #[tokio::test]
    async fn broadcast_delivers_a_copy_to_every_instance_and_fails_if_one_copy_fails() {
        let broker = baker_adapter_memory::broker("journey-broadcast");
        let mut a = broker.subscribe("_baker.s.a.>", None, 10);
        let mut b = broker.subscribe("_baker.s.b.>", None, 10);
        let journey = journey(
            "journey-broadcast",
            &["a", "b"],
            PolicyKind::Broadcast,
            1024,
        )
        .await;
        let (d, _) = delivery("s", b"x");
        assert_eq!(journey.carry(d).await, Outcome::Delivered);
        assert!(a.recv().await.is_some() && b.recv().await.is_some());
        drop(b);
        let (d, settled) = delivery("s", b"x");
        assert!(matches!(journey.carry(d).await, Outcome::Undeliverable(..)));
        assert!(dead_letter_reason(&settled).contains("copy to b"));
    }

    #[tokio::test]
    async fn a_reply_from_an_instance_on_another_broker_reaches_the_requester() {
        let requesters = baker_adapter_memory::broker("journey-reply-a");
        let instances = baker_adapter_memory::broker("journey-reply-b");
        let adapters = AdapterRegistry::builtin();
        let proxy = Arc::new(ReplyProxy::new(
            adapters
                .get(crate::adapters::IN_PROCESS_ADAPTER)
                .unwrap()
                .clone(),
            "memory://journey-reply-a",
            adapters,
        ));
        let shutdown = crate::shutdown::Shutdown::new();
        tokio::spawn(proxy.clone().run(shutdown.clone()));
        let mut instance = instances.subscribe("_baker.s.a.>", None, 10);
        let mut requester = requesters.subscribe("requester.inbox", None, 10);
        let journey = journey_with_replies(
            "journey-reply-b",
            &["a"],
            PolicyKind::RoundRobin,
            1024,
            Some(proxy),
        )
        .await;

        let (mut request, settled) = delivery("s", b"ping");
        request.message.reply_to = Some("requester.inbox".to_owned());
        request.message.properties.correlation_id = Some("c-1".to_owned());
        assert_eq!(journey.carry(request).await, Outcome::Delivered);
        assert_eq!(*settled.lock().unwrap(), vec![Settlement::Delivered]);
        let got = instance.recv().await.unwrap();
        let reply_to = got.message.reply_to.clone().unwrap();
        assert!(
            reply_to.starts_with("_baker.reply."),
            "the instance answers the router's inbox on its own broker, not {reply_to}"
        );
        let reply = Message {
            payload: Bytes::from_static(b"pong"),
            ..Default::default()
        };
        assert_eq!(instances.publish(&reply_to, reply.clone()).await, 1);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), requester.recv())
            .await
            .expect("reply forwarded in time")
            .unwrap();
        assert_eq!(answer.message.payload, Bytes::from_static(b"pong"));
        assert_eq!(
            answer.message.properties.correlation_id.as_deref(),
            Some("c-1")
        );
        // One reply per request: a second one with the same token is dropped.
        instances.publish(&reply_to, reply).await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), requester.recv())
                .await
                .is_err()
        );
        shutdown.trigger();
    }

    #[tokio::test]
    async fn a_request_to_an_instance_on_the_requesters_broker_keeps_its_reply_address() {
        let broker = baker_adapter_memory::broker("journey-reply-same");
        let adapters = AdapterRegistry::builtin();
        let proxy = Arc::new(ReplyProxy::new(
            adapters
                .get(crate::adapters::IN_PROCESS_ADAPTER)
                .unwrap()
                .clone(),
            "memory://journey-reply-same",
            adapters,
        ));
        let mut instance = broker.subscribe("_baker.s.a.>", None, 10);
        let journey = journey_with_replies(
            "journey-reply-same",
            &["a"],
            PolicyKind::RoundRobin,
            1024,
            Some(proxy),
        )
        .await;
        let (mut request, _) = delivery("s", b"ping");
        request.message.reply_to = Some("requester.inbox".to_owned());
        assert_eq!(journey.carry(request).await, Outcome::Delivered);
        let got = instance.recv().await.unwrap();
        assert_eq!(got.message.reply_to.as_deref(), Some("requester.inbox"));
    }

    #[tokio::test]
    async fn an_instance_failing_in_a_row_is_ejected_and_skipped() {
        let broker = baker_adapter_memory::broker("journey-eject");
        // `a` has no consumer: every send to it fails.
        let mut b = broker.subscribe("_baker.s.b.>", None, 100);
        let journey = journey("journey-eject", &["a", "b"], PolicyKind::RoundRobin, 1024).await;
        for _ in 0..10 {
            let (d, _) = delivery("s", b"x");
            assert_eq!(journey.carry(d).await, Outcome::Delivered);
        }
        let mut retried = 0;
        for _ in 0..10 {
            let got = b.recv().await.unwrap();
            if got.message.headers.get(header::ATTEMPT).is_some() {
                retried += 1;
            }
        }
        assert_eq!(
            retried, 2,
            "after 2 failures in a row `a` is ejected, and messages go to `b` first"
        );
        let table = journey.table.load();
        let a = table.stats("s", "a").unwrap();
        assert!(a.outlier.is_ejected());
        assert_eq!(a.outlier.ejections(), 1);
    }

    #[tokio::test]
    async fn retries_never_reach_an_instance_of_weight_zero() {
        let broker = baker_adapter_memory::broker("journey-weight-zero");
        let mut standby = broker.subscribe("_baker.s.z.>", None, 10);
        let adapters = AdapterRegistry::builtin();
        let mut zero = record("s", "z", 5);
        zero.weight = 0;
        zero.endpoint.broker = "memory://journey-weight-zero".to_owned();
        // `b` has no consumer: every send to it fails.
        let mut b = record("s", "b", 5);
        b.endpoint.broker = "memory://journey-weight-zero".to_owned();
        let mut builder = TableBuilder::new(
            Arc::new(adapters),
            HashMap::from([("s".to_owned(), PolicyKind::Weighted)]),
        );
        let table = builder
            .build(Arc::new(Catalog {
                epoch: 1,
                index: 1,
                instances: vec![b, zero],
            }))
            .await;
        let journey = Journey::new(
            Arc::new(ArcSwap::from_pointee(table)),
            JourneyConfig {
                max_attempts: 3,
                max_payload: 1024,
                outlier: OutlierConfig::default(),
            },
            Default::default(),
            None,
        );
        let (d, settled) = delivery("s", b"x");
        assert!(matches!(journey.carry(d).await, Outcome::Undeliverable(..)));
        assert!(dead_letter_reason(&settled).contains("after 3 attempts"));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), standby.recv())
                .await
                .is_err(),
            "the weight-0 instance got a retry"
        );
    }
}
