//! The ingress's session under its client id: telling when another client
//! takes it over, and taking over the session of the previous default id.
//!
//! The client id must be the router's alone: a second client connecting
//! with it takes the session over (MQTT 5 reason 0x8E), and two routers
//! sharing one take it from each other every few hundred milliseconds,
//! each redelivering what the other had not acknowledged. That is reported
//! as a fault (log and `/readyz`), not retried quietly. When the default
//! client id changed (`previous`), the messages the broker kept for the old
//! one are taken over once ([`adopt`]): a connection under the old id that
//! subscribes to nothing, unsubscribes the old subscription, routes what was
//! kept, and ends the old session.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, StateError};
use rumqttc::Outgoing;

use super::{IngressSpec, Shared};
use crate::acks::Acks;

/// How long a taken-over session stays a fault in `/readyz` after the last
/// takeover.
const TAKEOVER_SHOWN: Duration = Duration::from_secs(60);
/// A connection the broker closes sooner than this after accepting it,
/// this many times in a row, is taken to be a session taken over by another
/// client with the same id (Mosquitto 2.0 closes it without reason code
/// 0x8E); an outage fails connecting instead.
const SHORT_LIVED: Duration = Duration::from_secs(5);
const SHORT_LIVED_IN_A_ROW: u32 = 3;
/// How long the previous client id's session must be quiet (nothing more
/// arriving, everything acknowledged) before it is ended.
const ADOPT_QUIET: Duration = Duration::from_secs(1);

/// Takeovers of one ingress's session, as its connections end.
#[derive(Default)]
pub(crate) struct Takeovers {
    /// When another client last took the session over.
    last: Mutex<Option<Instant>>,
    /// Connections in a row the broker closed soon after accepting them.
    short_closes: Mutex<u32>,
}

impl Takeovers {
    /// Records how a connection that was up since `connected_at` (if it
    /// came up) ended; true when that says the session was taken over.
    pub(crate) fn closed(&self, error: &ConnectionError, connected_at: Option<Instant>) -> bool {
        let closed_soon =
            connected_at.is_some_and(|at| at.elapsed() < SHORT_LIVED) && aborted(error);
        let mut short_closes = self.short_closes.lock().unwrap_or_else(|e| e.into_inner());
        *short_closes = if closed_soon { *short_closes + 1 } else { 0 };
        let taken = taken_over(error) || *short_closes >= SHORT_LIVED_IN_A_ROW;
        if taken {
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        taken
    }

    /// The fault to show while another client keeps taking the session of
    /// `client_id`.
    pub(crate) fn problem(&self, client_id: &str) -> Option<String> {
        let at = (*self.last.lock().unwrap_or_else(|e| e.into_inner()))?;
        (at.elapsed() < TAKEOVER_SHOWN).then(|| {
            format!(
                "another client took over the session of client id {client_id:?} (MQTT reason 0x8E), \
                 {}s ago: two routers share this client id; give each its own (client_id= in the \
                 broker URL, or leave it unset: the default is unique per sidecar)",
                at.elapsed().as_secs()
            )
        })
    }
}

/// Whether the broker closed the connection without a word.
fn aborted(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::MqttState(StateError::ConnectionAborted) | ConnectionError::Io(_)
    )
}

/// Whether `error` is the broker saying another client took the session.
fn taken_over(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            ..
        })
    )
}

/// On the connection under the previous client id: when its session is
/// there, stops its subscription (the broker keeps sending what it had
/// queued) and ends the session once everything kept was routed and
/// acknowledged; when it is not, there is nothing to take.
pub(crate) fn adopt(
    shared: &Arc<Shared>,
    client: &AsyncClient,
    acks: &Acks,
    session_present: bool,
) {
    if !session_present {
        // Connecting made an empty session: end it, so that the other
        // sidecars on this host find none either.
        shared.shutdown.store(true, Ordering::Relaxed);
        let _ = client.try_disconnect();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut finished = shared.finished.subscribe();
            let _ = finished.wait_for(|done| *done).await;
            end_session(&shared.spec).await;
        });
        return;
    }
    tracing::info!(broker = %shared.spec.broker.shown, previous = %shared.spec.client_id,
        "taking over the messages the broker kept for this ingress's previous client id");
    let _ = client.try_unsubscribe(shared.spec.filter.clone());
    let (shared, acks) = (shared.clone(), acks.clone());
    tokio::spawn(async move {
        loop {
            while shared.quiet_for() < ADOPT_QUIET {
                tokio::time::sleep(ADOPT_QUIET - shared.quiet_for()).await;
            }
            if !acks.settled().await {
                return; // The connection dropped: the next one starts over.
            }
            if shared.quiet_for() >= ADOPT_QUIET {
                break;
            }
        }
        shared.shutdown.store(true, Ordering::Relaxed);
        acks.shutdown();
        let mut finished = shared.finished.subscribe();
        let _ = finished.wait_for(|done| *done).await;
        end_session(&shared.spec).await;
        tracing::info!(broker = %shared.spec.broker.shown, previous = %shared.spec.client_id,
            "the previous client id's session is taken over and ended");
    });
}

/// Ends the session of `spec`'s client id: a clean start with no expiry.
async fn end_session(spec: &IngressSpec) {
    let mut options = spec.broker.options(spec.client_id.clone());
    options
        .set_clean_start(true)
        .set_session_expiry_interval(Some(0));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}
