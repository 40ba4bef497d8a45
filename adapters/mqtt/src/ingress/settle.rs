//! Settling a QoS 1 ingress message: its ack in the window, a dead letter
//! (with an error reply to a waiting requester), or a retry in its place.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::{Every, SendError, Settle, Settlement, Settling};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

use super::Shared;
use crate::acks::Acks;
use crate::convert;
use crate::link::Accepted;

/// Prefix of the dead-letter topics: `_baker-dlq/<original topic>`.
pub const DEAD_LETTER_PREFIX: &str = "_baker-dlq";

/// Pause before a message handed back is routed again.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Settles one QoS 1 ingress message.
pub(crate) struct Settler {
    pub(crate) shared: Arc<Shared>,
    pub(crate) acks: Acks,
    pub(crate) generation: u64,
    pub(crate) place: u64,
    pub(crate) publish: Arc<Publish>,
}

impl Settler {
    async fn dead_letter(&self, reason: &str, attempts: u32) -> Result<(), SendError> {
        let topic = std::str::from_utf8(&self.publish.topic).unwrap_or("?");
        let dlq_topic = format!("{DEAD_LETTER_PREFIX}/{topic}");
        let properties = convert::dead_lettered(&self.publish, reason, attempts);
        let reply = properties
            .response_topic
            .clone()
            .filter(|r| convert::valid_topic_name(r));
        match self
            .shared
            .dlq
            .publish(dlq_topic, self.publish.payload.clone(), properties)
            .await
        {
            Ok(Accepted::Delivered) => {}
            Ok(Accepted::NoSubscribers) => {
                metrics::counter!("baker_mqtt_dead_letters_unheard_total").increment(1);
                static UNHEARD: Every = Every::new(Duration::from_secs(10));
                if let Some(held_back) = UNHEARD.check() {
                    tracing::warn!(prefix = DEAD_LETTER_PREFIX, held_back, "a dead letter had no subscriber and the broker discarded it; keep a persistent session subscribed to {DEAD_LETTER_PREFIX}/# (counted in baker_mqtt_dead_letters_unheard_total; logged at most every 10 s)");
                }
            }
            Err(error) => return Err(error),
        }
        if let Some(reply) = reply {
            // A requester waiting on its response topic learns why at once
            // instead of timing out. Best effort: the dead letter is safe.
            let error = PublishProperties {
                correlation_data: self
                    .publish
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_data.clone()),
                user_properties: vec![(
                    baker_adapter_api::header::ERROR.to_owned(),
                    reason.replace('\0', " "),
                )],
                ..Default::default()
            };
            let _ = (self.shared.dlq)
                .publish(reply, bytes::Bytes::new(), error)
                .await;
        }
        Ok(())
    }

    /// Routes the message again after a pause, in the same place of the
    /// window; unless the connection it came on is gone (the broker then
    /// redelivers it) or the ingress is closing (it stays in the session).
    async fn requeue(self) {
        tokio::time::sleep(REQUEUE_PAUSE).await;
        let shared = self.shared.clone();
        if shared.closing.load(Ordering::Relaxed)
            || shared.generation.load(Ordering::Relaxed) != self.generation
        {
            return;
        }
        let publish = self.publish.clone();
        let ack = Some((self.acks.clone(), self.generation, self.place));
        // The topic parsed before, so it parses again.
        if let Ok(delivery) = shared.delivery(publish, ack) {
            let _ = shared.requeue.send(delivery);
        }
    }
}

impl Settle for Settler {
    fn settle(self: Box<Self>, outcome: Settlement) -> Settling {
        match outcome {
            // The common case: nothing left to wait for.
            Settlement::Delivered => {
                self.acks.done(self.place);
                Settling::done()
            }
            Settlement::DeadLetter {
                reason, attempts, ..
            } => Settling::later(async move {
                match self.dead_letter(&reason, attempts).await {
                    Ok(()) => self.acks.done(self.place),
                    Err(error) => {
                        tracing::warn!(%error, "could not dead-letter an MQTT message; it will be routed again");
                        self.requeue().await;
                    }
                }
            }),
            // The router routes it again itself (`routes_again`); this is
            // a handle dropped unsettled, or a dead letter that failed.
            Settlement::Requeue { .. } => Settling::later(self.requeue()),
        }
    }

    /// MQTT has no negative acknowledgement, and an unacknowledged message
    /// comes back only when the session reconnects.
    fn routes_again(&self) -> bool {
        true
    }
}
