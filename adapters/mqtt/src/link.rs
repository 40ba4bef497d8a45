//! One egress connection to a broker: QoS 1 publishes that resolve when the
//! broker's PUBACK arrives.
//!
//! rumqttc assigns packet ids inside its event loop, and reports each one as
//! an `Outgoing::Publish(pkid)` event in the order the publish requests were
//! queued (a pkid collision only delays that order, never reorders it). So a
//! publisher queues its waiter and its request under one lock
//! ([`Session::order`]), which makes the waiters' order the requests' order;
//! the event loop task pairs each event with the next waiter and resolves it
//! on the PUBACK for that pkid.
//!
//! The connection is a clean session, and each connection is a fresh
//! rumqttc client and event loop (a *session* here). When it drops, every
//! publish still waiting fails as unreachable at once and the core sends the
//! message elsewhere; nothing of the old session is retransmitted, so a
//! stale PUBACK can never resolve a newer publish.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use baker_adapter_api::SendError;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{oneshot, watch};

use crate::connect::Broker;

/// How long a publish may wait for its PUBACK before it counts as
/// unreachable (and no longer holds a place in the router's window).
const PUBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a link is made its publishes wait for its first
/// connection.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(5);
/// Publish requests queued for the event loop; publishers wait beyond it.
const REQUEST_CAPACITY: usize = 1024;
/// Most QoS 1 publishes awaiting their PUBACK on one connection (the
/// broker's Receive Maximum lowers it).
const MAX_INFLIGHT: u16 = 1024;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What the broker said about one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// Taken, and at least one subscription matched.
    Delivered,
    /// Taken, but no subscription matched: the broker discards it.
    NoSubscribers,
}

type Waiter = oneshot::Sender<Result<Accepted, SendError>>;

#[derive(Default)]
struct Waiting {
    /// Queued, pkid not yet known; in request order.
    unassigned: VecDeque<Waiter>,
    /// Sent, awaiting the PUBACK.
    by_pkid: HashMap<u16, Waiter>,
    /// False once the connection is gone: nothing may be queued any more.
    closed: bool,
}

/// One connection's client and the publishes waiting on it.
struct Session {
    client: AsyncClient,
    /// Held while queueing a waiter and its request, so both queues agree.
    order: tokio::sync::Mutex<()>,
    waiting: Mutex<Waiting>,
    /// Largest packet the broker takes (from its CONNACK), 0 if unlimited.
    max_packet: AtomicU32,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An egress connection, reconnected with backoff for as long as the
/// process runs.
pub struct Link {
    url: String,
    /// The broker's connection errors (shared by its connections).
    errors: Arc<crate::connect::ErrorLog>,
    current: ArcSwapOption<Session>,
    connected: watch::Sender<bool>,
    ever_connected: AtomicBool,
    started: std::time::Instant,
    /// Set once no endpoint uses the broker: the connection loop ends.
    closed: watch::Sender<bool>,
}

impl Link {
    /// Starts connecting to `broker`.
    pub fn start(broker: Broker) -> Arc<Link> {
        let link = Arc::new(Link {
            url: broker.shown.clone(),
            errors: broker.errors.clone(),
            current: ArcSwapOption::empty(),
            connected: watch::channel(false).0,
            ever_connected: AtomicBool::new(false),
            started: std::time::Instant::now(),
            closed: watch::channel(false).0,
        });
        tokio::spawn(run(link.clone(), broker));
        link
    }

    /// Broker URL, password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Why the broker refuses this sidecar, while it does.
    pub fn refused(&self) -> Option<String> {
        self.errors.refused()
    }

    /// Disconnects and stops reconnecting: no endpoint uses the broker.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Whether the connection is up.
    pub fn connected(&self) -> bool {
        *self.connected.borrow()
    }

    async fn session(&self) -> Result<Arc<Session>, SendError> {
        if let Some(session) = self.current.load_full() {
            return Ok(session);
        }
        let waited = self.started.elapsed();
        if !self.ever_connected.load(Ordering::Relaxed) && waited < FIRST_CONNECT_WAIT {
            // A link just made by binding a target: give its first
            // connection a moment rather than failing the first messages.
            // Only a moment: a broker that is down from the start must not
            // slow every message sent its way.
            let mut connected = self.connected.subscribe();
            let _ =
                tokio::time::timeout(FIRST_CONNECT_WAIT - waited, connected.wait_for(|c| *c)).await;
            if let Some(session) = self.current.load_full() {
                return Ok(session);
            }
        }
        Err(SendError::unreachable(format!(
            "not connected to MQTT broker {}",
            self.url
        )))
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub async fn publish(
        &self,
        topic: String,
        mut payload: Bytes,
        mut properties: PublishProperties,
    ) -> Result<Accepted, SendError> {
        if !crate::convert::valid_topic_name(&topic) {
            return Err(SendError::rejected(format!(
                "{topic:?} is not a valid MQTT topic name"
            )));
        }
        let session = self.session().await?;
        let max = session.max_packet.load(Ordering::Relaxed);
        if max > 0 {
            // The packet's size, from the packet the client will build;
            // the properties are moved in and back out, not copied.
            let mut packet =
                Publish::new(topic.as_str(), QoS::AtLeastOnce, payload, Some(properties));
            let size = packet.size();
            properties = packet.properties.take().unwrap_or_default();
            payload = packet.payload;
            if size > max as usize {
                return Err(SendError::rejected(format!(
                    "a packet of {size} bytes exceeds the broker's maximum of {max}"
                )));
            }
        }
        let (waiter, verdict) = oneshot::channel();
        {
            let _order = session.order.lock().await;
            {
                let mut waiting = session.lock();
                if waiting.closed {
                    return Err(SendError::unreachable(format!(
                        "connection to MQTT broker {} lost",
                        self.url
                    )));
                }
                waiting.unassigned.push_back(waiter);
            }
            // The topic was checked above, so this fails only when the
            // event loop is gone, and then its waiter fails with it.
            let _ = session
                .client
                .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
                .await;
        }
        match tokio::time::timeout(PUBACK_TIMEOUT, verdict).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SendError::unreachable(format!(
                "connection to MQTT broker {} lost before its PUBACK",
                self.url
            ))),
            Err(_) => Err(SendError::unreachable(format!(
                "no PUBACK from MQTT broker {} within {} s",
                self.url,
                PUBACK_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// What a PUBACK's reason code means for the publish.
fn verdict(reason: PubAckReason) -> Result<Accepted, SendError> {
    match reason {
        PubAckReason::Success => Ok(Accepted::Delivered),
        PubAckReason::NoMatchingSubscribers => Ok(Accepted::NoSubscribers),
        // The message itself is at fault: elsewhere it fails the same way.
        PubAckReason::TopicNameInvalid | PubAckReason::PayloadFormatInvalid => Err(
            SendError::rejected(format!("the broker refused the message: {reason:?}")),
        ),
        other => Err(SendError::unavailable(format!(
            "the broker did not take the message: {other:?}"
        ))),
    }
}

fn options(broker: &Broker) -> MqttOptions {
    let id = format!("baker-out-{:x}-{:x}", std::process::id(), fastrand_u32());
    let mut options = broker.options(id);
    options
        .set_clean_start(true)
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_outgoing_inflight_upper_limit(MAX_INFLIGHT);
    options
}

/// A random number for client ids, without a dependency for it.
pub fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish() as u32
}

async fn run(link: Arc<Link>, broker: Broker) {
    let mut closed = link.closed.subscribe();
    let closing = async move {
        let _ = closed.wait_for(|closed| *closed).await;
    };
    // Runs until the link is closed; a publish waiting then fails as
    // unreachable, as on any connection loss.
    tokio::select! {
        () = connect_and_serve(&link, &broker) => {}
        () = closing => {
            if let Some(session) = link.current.swap(None) {
                let _ = session.client.try_disconnect();
            }
            link.connected.send_replace(false);
        }
    }
}

async fn connect_and_serve(link: &Arc<Link>, broker: &Broker) {
    let mut backoff = BACKOFF_START;
    let mut outage_reported = false;
    loop {
        let mut up = false;
        let (client, mut eventloop) = AsyncClient::new(options(broker), REQUEST_CAPACITY);
        let session = Arc::new(Session {
            client,
            order: tokio::sync::Mutex::new(()),
            waiting: Mutex::new(Waiting::default()),
            max_packet: AtomicU32::new(0),
        });
        let error = loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    let max = connack
                        .properties
                        .as_ref()
                        .and_then(|p| p.max_packet_size)
                        .unwrap_or(0);
                    session.max_packet.store(max, Ordering::Relaxed);
                    link.current.store(Some(session.clone()));
                    link.ever_connected.store(true, Ordering::Relaxed);
                    link.connected.send_replace(true);
                    broker.errors.connected();
                    up = true;
                    backoff = BACKOFF_START;
                    if outage_reported {
                        tracing::info!(broker = %link.url, "MQTT egress reconnected");
                        outage_reported = false;
                    } else {
                        tracing::info!(broker = %link.url, tls = broker.tls(), "connected to MQTT broker");
                    }
                }
                // pkid 0 is a QoS 0 publish, which has no waiter.
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    let mut waiting = session.lock();
                    if let Some(waiter) = waiting.unassigned.pop_front() {
                        waiting.by_pkid.insert(pkid, waiter);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let waiter = session.lock().by_pkid.remove(&ack.pkid);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(verdict(ack.reason));
                    }
                }
                Ok(_) => {}
                Err(error) => break error,
            }
        };
        link.current.store(None);
        link.connected.send_replace(false);
        {
            // Dropping the waiters fails their publishes as unreachable.
            let mut waiting = session.lock();
            waiting.closed = true;
            waiting.unassigned.clear();
            waiting.by_pkid.clear();
        }
        drop(eventloop);
        if up {
            tracing::warn!(broker = %link.url, %error, "MQTT egress connection lost; reconnecting with backoff");
        } else {
            broker.errors.failed("egress", &error);
        }
        outage_reported = true;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puback_reasons_map_to_what_the_core_does_next() {
        assert!(matches!(
            verdict(PubAckReason::Success),
            Ok(Accepted::Delivered)
        ));
        assert!(matches!(
            verdict(PubAckReason::NoMatchingSubscribers),
            Ok(Accepted::NoSubscribers)
        ));
        assert!(matches!(
            verdict(PubAckReason::PayloadFormatInvalid),
            Err(SendError::Rejected(_))
        ));
        assert!(matches!(
            verdict(PubAckReason::QuotaExceeded),
            Err(SendError::Unavailable(_))
        ));
    }
}
