//! The ingress: a shared subscription on a persistent session, with manual,
//! in-order acknowledgements.
//!
//! Routers subscribe to `$share/<group>/<prefix>/+/#` at QoS 1, so the
//! broker splits messages between them. The session is persistent (clean
//! start off, a session expiry), so what is published while a router is
//! briefly down waits in the broker under the router's client id. The
//! Receive Maximum is the router's in-flight window: the broker sends no
//! more unacknowledged messages than that, which bounds what this side
//! holds. The event loop runs in a task of its own and never waits on the
//! router: its delivery channel has room for every message the broker may
//! have outstanding.
//!
//! Settling: delivered → PUBACK (through the in-order window, [`Acks`]);
//! dead letter → republished to `_baker-dlq/<original topic>` with
//! `baker-error` and `baker-attempts`, and acknowledged once the broker
//! PUBACKs that; unreachable instances (MQTT has no negative ack) → routed
//! again by the router after a pause (`Settle::routes_again`), keeping its
//! place in the window; a handle dropped unsettled → the same, from here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baker_adapter_api::{
    code, header, new_message_id, AckHandle, Delivery, Every, Ingress, IngressStatus,
};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::acks::Acks;
use crate::connect::Broker;
use crate::convert;
use crate::link::Link;
use crate::MqttError;
use session::{adopt, Takeovers};
use settle::Settler;
pub use settle::DEAD_LETTER_PREFIX;

mod session;
mod settle;

/// How long closing waits for the broker to confirm the unsubscribe.
const UNSUBSCRIBE_WAIT: Duration = Duration::from_secs(1);
/// After the unsubscribe, the broker may still send what it had queued for
/// this session; closing takes it until the session has been quiet this
/// long...
const QUIET: Duration = Duration::from_millis(300);
/// ...or this long has passed (the router allows closing 3 s).
const DRAIN_WAIT: Duration = Duration::from_millis(1500);
/// How long the first connection and subscription may take. A first
/// connection the broker refuses (or TLS fails) does not fail the ingress:
/// it is retried like any later one, the ingress reporting itself not
/// connected meanwhile.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The largest packet MQTT allows: the router takes whatever the broker
/// takes, so that an oversized message reaches the core and is
/// dead-lettered there rather than dropped by the broker for this client.
const MAX_PACKET: u32 = 268_435_455;

/// What an ingress connects with.
#[derive(Clone)]
pub struct IngressSpec {
    pub broker: Broker,
    pub client_id: String,
    pub prefix: String,
    pub filter: String,
    pub receive_max: u16,
    /// The client id this ingress had by default before, whose session may
    /// still hold messages: they are taken over once at start.
    pub previous: Option<String>,
}

/// State shared by the event loop task, the settlers and the ingress.
pub(crate) struct Shared {
    pub(crate) spec: IngressSpec,
    /// Egress link to the same broker, for dead letters and error replies.
    pub(crate) dlq: Arc<Link>,
    /// Increments per connection; a settler of an older one does not requeue.
    pub(crate) generation: AtomicU64,
    pub(crate) requeue: mpsc::UnboundedSender<Delivery>,
    pub(crate) closing: AtomicBool,
    pub(crate) shutdown: AtomicBool,
    connected: Arc<AtomicBool>,
    /// The current connection's client and ack window.
    current: Mutex<Option<(AsyncClient, Acks)>>,
    unsubscribed: Notify,
    /// When the last publish (or connection) arrived, in ms since `started`.
    last_publish_ms: AtomicU64,
    started: std::time::Instant,
    pub(crate) finished: watch::Sender<bool>,
    /// This connection only takes over the previous client id's session.
    adopting: bool,
    /// Whether another client takes this ingress's session over.
    pub(crate) takeovers: Takeovers,
}

/// Handle on a running ingress connection, for health and flush.
#[derive(Clone)]
pub struct IngressState {
    pub url: String,
    /// The broker's connection errors.
    pub errors: Arc<crate::connect::ErrorLog>,
    pub connected: Arc<AtomicBool>,
    pub finished: watch::Receiver<bool>,
}

pub struct MqttIngress {
    deliveries: mpsc::Receiver<Delivery>,
    requeued: mpsc::UnboundedReceiver<Delivery>,
    shared: Arc<Shared>,
    /// The connection taking over the previous client id's session, while
    /// it runs.
    adopting: Option<Arc<Shared>>,
    closing: bool,
}

impl MqttIngress {
    /// Connects, subscribes, and returns once the broker granted the
    /// subscription.
    pub async fn start(
        spec: IngressSpec,
        dlq: Arc<Link>,
    ) -> Result<(MqttIngress, IngressState), MqttError> {
        let filter = spec.filter.clone();
        let previous = spec.previous.clone().map(|client_id| IngressSpec {
            client_id,
            previous: None,
            ..spec.clone()
        });
        // Room for what both connections may have outstanding.
        let connections = if previous.is_some() { 2 } else { 1 };
        let capacity = usize::from(spec.receive_max) * connections + 64;
        let (deliveries_tx, deliveries) = mpsc::channel(capacity);
        let (requeue, requeued) = mpsc::unbounded_channel();
        let shared = Shared::new(spec, dlq.clone(), requeue.clone(), false);
        let state = IngressState {
            url: shared.spec.broker.shown.clone(),
            errors: shared.spec.broker.errors.clone(),
            connected: shared.connected.clone(),
            finished: shared.finished.subscribe(),
        };
        let (first_tx, first) = oneshot::channel();
        let task = tokio::spawn(run(shared.clone(), deliveries_tx.clone(), first_tx));
        match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, first).await {
            Ok(Ok(Ok(()))) => {
                let adopting = previous.map(|spec| {
                    let adopting = Shared::new(spec, dlq, requeue, true);
                    tokio::spawn(run(adopting.clone(), deliveries_tx, oneshot::channel().0));
                    adopting
                });
                Ok((
                    MqttIngress {
                        deliveries,
                        requeued,
                        shared,
                        adopting,
                        closing: false,
                    },
                    state,
                ))
            }
            Ok(Ok(Err(reason))) => {
                task.abort();
                Err(reason)
            }
            Ok(Err(_)) => {
                task.abort();
                Err(MqttError::Ended { filter })
            }
            Err(_) => {
                task.abort();
                Err(MqttError::SubscribeTimeout {
                    filter,
                    secs: FIRST_CONNECT_TIMEOUT.as_secs(),
                })
            }
        }
    }
}

impl Shared {
    fn new(
        spec: IngressSpec,
        dlq: Arc<Link>,
        requeue: mpsc::UnboundedSender<Delivery>,
        adopting: bool,
    ) -> Arc<Self> {
        Arc::new(Shared {
            spec,
            dlq,
            generation: AtomicU64::new(0),
            requeue,
            closing: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            connected: Arc::new(AtomicBool::new(false)),
            current: Mutex::new(None),
            unsubscribed: Notify::new(),
            last_publish_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
            finished: watch::channel(false).0,
            adopting,
            takeovers: Takeovers::default(),
        })
    }

    pub(crate) fn stamp_arrival(&self) {
        self.last_publish_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long nothing has arrived.
    pub(crate) fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_publish_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    fn current(&self) -> Option<(AsyncClient, Acks)> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn options(&self) -> MqttOptions {
        let spec = &self.spec;
        let mut options = spec.broker.options(spec.client_id.clone());
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(spec.broker.url.session_expiry))
            .set_manual_acks(true)
            .set_receive_maximum(Some(spec.receive_max))
            .set_max_packet_size(Some(MAX_PACKET));
        options
    }

    /// The delivery for `publish`, or the reason its topic is unusable.
    pub(crate) fn delivery(
        self: &Arc<Self>,
        publish: Arc<Publish>,
        ack: Option<(Acks, u64, u64)>,
    ) -> Result<Delivery, (String, AckHandle)> {
        let make_ack = |publish: &Arc<Publish>| match ack {
            Some((acks, generation, place)) => AckHandle::new(Settler {
                shared: self.clone(),
                acks,
                generation,
                place,
                publish: publish.clone(),
            }),
            None => AckHandle::noop(),
        };
        let topic = match std::str::from_utf8(&publish.topic) {
            Ok(topic) => topic,
            Err(_) => return Err(("topic is not UTF-8".to_owned(), make_ack(&publish))),
        };
        let Some(destination) = convert::destination(&self.spec.prefix, topic) else {
            return Err((
                format!(
                    "topic {topic:?} names no service (expected {}/<service>/<topic...>)",
                    self.spec.prefix
                ),
                make_ack(&publish),
            ));
        };
        let ack = make_ack(&publish);
        let mut message = convert::from_mqtt(&publish);
        // Baker's id on what can come again (QoS 1), whatever the publisher
        // set; none at QoS 0.
        if publish.qos == QoS::AtMostOnce {
            message.headers.remove(header::MSG_ID);
        } else {
            message.headers.insert(header::MSG_ID, new_message_id());
        }
        Ok(Delivery {
            message,
            destination,
            ack,
        })
    }
}

async fn run(
    shared: Arc<Shared>,
    deliveries: mpsc::Sender<Delivery>,
    first: oneshot::Sender<Result<(), MqttError>>,
) {
    let mut first = Some(first);
    let mut backoff = BACKOFF_START;
    let mut outage_reported = false;
    let url = shared.spec.broker.shown.clone();
    let errors = shared.spec.broker.errors.clone();
    while !shared.shutdown.load(Ordering::Relaxed) {
        // Room for an ack per unacknowledged message and the subscription:
        // the ack window never waits long, and the event loop drains it.
        let (client, mut eventloop) =
            AsyncClient::new(shared.options(), usize::from(shared.spec.receive_max) + 16);
        let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let acks = Acks::start(client.clone());
        *shared.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((client.clone(), acks.clone()));
        if !shared.closing.load(Ordering::Relaxed) && !shared.adopting {
            // Queued until the connection is up. Repeated on every
            // connection: harmless when the session kept it.
            let _ = client
                .subscribe(shared.spec.filter.clone(), QoS::AtLeastOnce)
                .await;
        }
        let mut place = 0u64;
        let mut up = false;
        let mut connected_at = None;
        let error = loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    shared.stamp_arrival();
                    if publish.dup {
                        metrics::counter!("baker_mqtt_redelivered_total").increment(1);
                    }
                    let publish = Arc::new(publish);
                    let ack = if publish.qos == QoS::AtMostOnce {
                        None
                    } else {
                        acks.arrived(publish.pkid);
                        place += 1;
                        Some((acks.clone(), generation, place - 1))
                    };
                    match shared.delivery(publish, ack) {
                        Ok(delivery) => {
                            // Only fails once the ingress is closed: the
                            // message stays unacknowledged in the session.
                            let _ = deliveries.send(delivery).await;
                        }
                        Err((reason, ack)) => {
                            metrics::counter!("baker_mqtt_malformed_total").increment(1);
                            static MALFORMED: Every = Every::new(Duration::from_secs(10));
                            if let Some(held_back) = MALFORMED.check() {
                                tracing::warn!(%reason, held_back, "MQTT ingress message cannot be routed; dead-lettered (QoS 1) or dropped (QoS 0), counted in baker_mqtt_malformed_total; logged at most every 10 s");
                            }
                            // The event loop cannot wait: on its own (bounded
                            // by the messages the broker has outstanding).
                            ack.dead_letter(reason, 0, code::BAD_MESSAGE).detach();
                        }
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    shared.connected.store(true, Ordering::Relaxed);
                    shared.stamp_arrival();
                    errors.connected();
                    up = true;
                    connected_at = Some(std::time::Instant::now());
                    backoff = BACKOFF_START;
                    if shared.adopting {
                        adopt(&shared, &client, &acks, connack.session_present);
                    }
                    if outage_reported {
                        tracing::info!(broker = %url, session_present = connack.session_present,
                            "MQTT ingress reconnected; the broker redelivers unacknowledged messages");
                        outage_reported = false;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    let refused: Vec<_> = suback
                        .return_codes
                        .iter()
                        .filter(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                        .collect();
                    let result = if refused.is_empty() {
                        Ok(())
                    } else {
                        Err(MqttError::SubscriptionRefused {
                            filter: shared.spec.filter.clone(),
                            codes: format!("{refused:?}"),
                        })
                    };
                    match (first.take(), result) {
                        (Some(first), result) => {
                            let _ = first.send(result);
                        }
                        (None, Err(error)) => tracing::error!(broker = %url, %error),
                        (None, Ok(())) => {}
                    }
                }
                Ok(Event::Incoming(Packet::UnsubAck(_))) => shared.unsubscribed.notify_one(),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break None,
                Ok(_) => {}
                Err(error) => break Some(error),
            }
        };
        shared.connected.store(false, Ordering::Relaxed);
        drop(eventloop);
        let Some(error) = error else { break };
        if shared.shutdown.load(Ordering::Relaxed) {
            break;
        }
        if shared.adopting && up {
            // Another sidecar on this host may be taking the same session
            // over: one of them is enough, and no fight.
            tracing::info!(broker = %url, previous = %shared.spec.client_id, %error,
                "the connection taking over the previous client id's session closed; the next start tries again");
            break;
        }
        if shared.takeovers.closed(&error, connected_at) {
            static TAKEOVERS: Every = Every::new(Duration::from_secs(30));
            if let Some(held_back) = TAKEOVERS.check() {
                tracing::error!(broker = %url, client_id = %shared.spec.client_id, held_back,
                    "another client keeps taking this ingress's MQTT session over (reason 0x8E, or the connection closed soon after it opened several times in a row: Mosquitto 2.0 closes without a reason): two routers share this client id and take the session from each other, redelivering what the other had not acknowledged; give each router its own (client_id= in the broker URL, or leave it unset: the default is unique per sidecar); logged at most every 30 s");
            }
        } else if up {
            tracing::warn!(broker = %url, %error, "MQTT ingress connection lost; reconnecting with backoff");
        } else {
            errors.failed("ingress", &error);
        }
        outage_reported = true;
        if let Some(first) = first.take() {
            // The ingress exists, not connected: it connects and subscribes
            // when the broker lets it.
            let _ = first.send(Ok(()));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    shared.finished.send_replace(true);
}

#[async_trait]
impl Ingress for MqttIngress {
    fn status(&self) -> IngressStatus {
        let shared = self.shared.clone();
        IngressStatus::flag(self.shared.connected.clone())
            .with_problem(move || shared.takeovers.problem(&shared.spec.client_id))
    }

    async fn next(&mut self) -> Option<Delivery> {
        tokio::select! {
            biased;
            Some(delivery) = self.requeued.recv(), if !self.closing => Some(delivery),
            delivery = self.deliveries.recv() => delivery,
        }
    }

    fn try_next(&mut self) -> Option<Delivery> {
        if !self.closing {
            if let Ok(delivery) = self.requeued.try_recv() {
                return Some(delivery);
            }
        }
        self.deliveries.try_recv().ok()
    }

    async fn close(&mut self) {
        self.closing = true;
        self.shared.closing.store(true, Ordering::Relaxed);
        if let Some((client, _)) = self.shared.current() {
            // The rest of the group takes new messages from here on.
            let unsubscribed = self.shared.unsubscribed.notified();
            if client
                .unsubscribe(self.shared.spec.filter.clone())
                .await
                .is_ok()
            {
                let _ = tokio::time::timeout(UNSUBSCRIBE_WAIT, unsubscribed).await;
            }
            // Take what the broker had already queued for this session, so
            // that it is routed now rather than at this router's next start.
            let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
            while tokio::time::Instant::now() < deadline {
                let last =
                    Duration::from_millis(self.shared.last_publish_ms.load(Ordering::Relaxed));
                let quiet_for = self.shared.started.elapsed().saturating_sub(last);
                if quiet_for >= QUIET {
                    break;
                }
                tokio::time::sleep(QUIET - quiet_for).await;
            }
        }
        // What was received still comes out of `next`; whatever arrives
        // later stays unacknowledged in the session, for the next start.
        self.deliveries.close();
    }
}

impl Drop for MqttIngress {
    fn drop(&mut self) {
        for shared in std::iter::once(&self.shared).chain(&self.adopting) {
            shared.shutdown.store(true, Ordering::Relaxed);
            if let Some((_, acks)) = shared.current() {
                // Sends the acks already due, then disconnects; the session
                // keeps the rest for the next start.
                acks.shutdown();
            }
        }
    }
}
