//! JetStream ingress: at-least-once routing on NATS.
//!
//! A work-queue stream captures the ingress subjects (`<prefix>.>`); one
//! durable pull consumer, named after the queue group, is shared by every
//! router, so routers split the messages and a restarted router resumes
//! where the last one left off. A message is acked only after its egress
//! was accepted; a retryable failure is nak'd with a delay; a message that
//! cannot be delivered is published to `_baker.dlq.<service>` (kept by the
//! stream `BAKER_DLQ`) with `baker-error` and `baker-attempts`, then acked.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy};
use async_nats::jetstream::{self, AckKind, Context};
use async_nats::HeaderMap;
use async_trait::async_trait;
use baker_adapter_api::{
    code, header, new_message_id, AckHandle, AdapterError, Delivery, Destination, Ingress,
    IngressStatus, Settle, Settlement, Settling,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use crate::convert::{malformed_headers, message_from_parts, report_malformed};
use crate::settings::{stream_name, StreamSettings};

/// Subject prefix of dead letters: `_baker.dlq.<service>`.
pub const DEAD_LETTER_PREFIX: &str = "_baker.dlq";
/// The stream keeping dead letters.
pub const DEAD_LETTER_STREAM: &str = "BAKER_DLQ";

/// Pause before a nak'd message is redelivered.
const NAK_DELAY: Duration = Duration::from_secs(1);

/// One settlement for the ack task.
// The large variant is the common one (an ack): boxing it would allocate for
// each message.
#[allow(clippy::large_enum_variant)]
enum Ack {
    Kind(Acker, AckKind),
    /// Work in progress: restart the message's ack wait.
    Progress(async_nats::Subject),
    /// Answer once every settlement queued before is sent.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Sends each settlement to the server, in one task for every delivery.
async fn run_acks(js: Context, mut acks: mpsc::UnboundedReceiver<Ack>) {
    while let Some(ack) = acks.recv().await {
        match ack {
            Ack::Kind(acker, kind) => {
                if let Err(error) = acker.ack_with(kind).await {
                    tracing::debug!(%error, "could not settle a JetStream message");
                }
            }
            Ack::Flush(done) => {
                let _ = done.send(());
            }
            Ack::Progress(reply) => {
                if let Err(error) = js.client().publish(reply, "+WPI".into()).await {
                    tracing::debug!(%error, "could not send a JetStream progress ack");
                }
            }
        }
    }
}

/// Publishes a dead letter, then acks the original (or naks it, to be
/// redelivered, when the dead letter could not be kept).
async fn dead_letter(
    js: Context,
    acker: Acker,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) {
    let kept = match js.publish_with_headers(subject, headers, payload).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    let kind = if kept {
        AckKind::Ack
    } else {
        tracing::warn!("could not keep a dead letter; the message will be redelivered");
        AckKind::Nak(Some(NAK_DELAY))
    };
    let _ = acker.ack_with(kind).await;
}

/// Settles one JetStream delivery.
struct JetStreamSettle {
    acker: Option<Acker>,
    /// The message's ack subject, for progress acks.
    reply: Option<async_nats::Subject>,
    acks: mpsc::UnboundedSender<Ack>,
    /// For dead letters.
    js: Context,
    /// How often a held message restarts its ack wait: a third of it.
    progress_every: Duration,
    service: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
}

impl Settle for JetStreamSettle {
    fn settle(mut self: Box<Self>, outcome: Settlement) -> Settling {
        let Some(acker) = self.acker.take() else {
            return Settling::done();
        };
        let kind = match outcome {
            Settlement::Delivered => AckKind::Ack,
            Settlement::Requeue { .. } => AckKind::Nak(Some(NAK_DELAY)),
            Settlement::DeadLetter {
                reason, attempts, ..
            } => {
                let mut headers = self.headers.take().unwrap_or_default();
                headers.insert(header::ERROR, reason.replace(['\r', '\n'], " ").as_str());
                headers.insert(header::ATTEMPTS, attempts.to_string().as_str());
                // Waits for the dead-letter stream's ack, in the router's
                // window.
                return Settling::later(dead_letter(
                    self.js.clone(),
                    acker,
                    format!("{DEAD_LETTER_PREFIX}.{}", self.service),
                    headers,
                    self.payload.clone(),
                ));
            }
        };
        let _ = self.acks.send(Ack::Kind(acker, kind));
        Settling::done()
    }

    fn progress_interval(&self) -> Option<Duration> {
        Some(self.progress_every)
    }

    fn progress(&self) {
        if let Some(reply) = &self.reply {
            let _ = self.acks.send(Ack::Progress(reply.clone()));
        }
    }
}

pub struct JetStreamIngress {
    client: async_nats::Client,
    messages: Option<jetstream::consumer::pull::Stream>,
    acks: mpsc::UnboundedSender<Ack>,
    js: Context,
    progress_every: Duration,
    prefix_len: usize,
}

/// Creates (if absent) the ingress stream, the dead-letter stream and the
/// shared durable consumer, and starts pulling.
pub async fn start(
    client: async_nats::Client,
    url: &str,
    prefix: &str,
    group: &str,
    max_ack_pending: usize,
) -> Result<JetStreamIngress, AdapterError> {
    let broker_error = |what: &str, error: String| AdapterError::Broker {
        url: url.to_owned(),
        reason: format!("{what}: {error}"),
    };
    let settings = StreamSettings::from_url(url).map_err(|e| e.for_url(url))?;
    if let Some(reason) = crate::overlap::core_routers_on(&client, prefix).await {
        return Err(AdapterError::Broker {
            url: baker_adapter_api::redact_url(url),
            reason,
        });
    }
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(settings.apply(StreamConfig {
            name: format!("BAKER_INGRESS_{}", stream_name(prefix)),
            subjects: vec![format!("{prefix}.>")],
            retention: RetentionPolicy::WorkQueue,
            ..Default::default()
        }))
        .await
        .map_err(|e| broker_error("creating the ingress stream", e.to_string()))?;
    js.get_or_create_stream(settings.apply(StreamConfig {
        name: DEAD_LETTER_STREAM.to_owned(),
        subjects: vec![format!("{DEAD_LETTER_PREFIX}.>")],
        ..Default::default()
    }))
    .await
    .map_err(|e| broker_error("creating the dead-letter stream", e.to_string()))?;
    let durable = stream_name(group);
    let consumer = stream
        .get_or_create_consumer(
            &durable,
            PullConfig {
                durable_name: Some(durable.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: settings.ack_wait,
                max_ack_pending: i64::try_from(max_ack_pending.max(1)).unwrap_or(i64::MAX),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| broker_error("creating the durable consumer", e.to_string()))?;
    // The consumer's own ack wait counts: it may have been made by a router
    // with other settings.
    let progress_every = consumer.cached_info().config.ack_wait / 3;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| broker_error("pulling from the durable consumer", e.to_string()))?;
    let (acks, receiver) = mpsc::unbounded_channel();
    tokio::spawn(run_acks(js.clone(), receiver));
    Ok(JetStreamIngress {
        client,
        messages: Some(messages),
        acks,
        js,
        progress_every,
        prefix_len: prefix.len() + 1,
    })
}

impl JetStreamIngress {
    fn delivery(&self, message: jetstream::Message) -> Option<Delivery> {
        // A message id that a redelivery keeps, whichever router takes it:
        // durable inboxes de-duplicate on it.
        let stable_id = message
            .info()
            .ok()
            .map(|info| format!("{}:{}", info.stream, info.stream_sequence));
        let reply = message.reply.clone();
        let (message, acker) = message.split();
        let Some(rest) = message.subject.get(self.prefix_len..) else {
            // Not under the prefix: the stream's subjects say it cannot be.
            let _ = self.acks.send(Ack::Kind(acker, AckKind::Term));
            return None;
        };
        let destination = Destination::from_address(rest, '.');
        let malformed = malformed_headers(&message).map(str::to_owned);
        // The original headers go with the settlement (a dead letter keeps
        // them), so Baker's copy is made from them rather than from a clone.
        // The JetStream reply subject is the ack address, not the
        // publisher's: none.
        let async_nats::Message {
            headers: native_headers,
            payload,
            ..
        } = message;
        let mut message = message_from_parts(native_headers.as_ref(), None, payload.clone());
        let settle = JetStreamSettle {
            acker: Some(acker),
            reply,
            acks: self.acks.clone(),
            js: self.js.clone(),
            progress_every: self.progress_every,
            service: destination.service.clone(),
            headers: native_headers,
            payload,
        };
        if let Some(reason) = malformed {
            // Redelivering it would fail the same way: kept aside at once,
            // with the reason, behind no other message.
            report_malformed(&reason, "dead-lettered");
            // Bounded by the consumer's max_ack_pending, like any message.
            AckHandle::new(settle)
                .dead_letter(reason, 0, code::BAD_MESSAGE)
                .detach();
            return None;
        }
        // Baker's id, whatever the publisher set: the same on every
        // redelivery, so durable inboxes and consumers can drop copies.
        message
            .headers
            .insert(header::MSG_ID, stable_id.unwrap_or_else(new_message_id));
        Some(Delivery {
            message,
            destination,
            ack: AckHandle::new(settle),
        })
    }
}

#[async_trait]
impl Ingress for JetStreamIngress {
    fn status(&self) -> IngressStatus {
        crate::link::connection_status(&self.client)
    }

    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let messages = self.messages.as_mut()?;
            match messages.next().await {
                Some(Ok(message)) => {
                    if let Some(delivery) = self.delivery(message) {
                        return Some(delivery);
                    }
                }
                Some(Err(error)) => {
                    // Missed heartbeats and the like: the stream goes on.
                    tracing::debug!(%error, "JetStream pull");
                }
                None => return None,
            }
        }
    }

    fn try_next(&mut self) -> Option<Delivery> {
        loop {
            let messages = self.messages.as_mut()?;
            match messages.next().now_or_never()?? {
                Ok(message) => {
                    if let Some(delivery) = self.delivery(message) {
                        return Some(delivery);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    async fn close(&mut self) {
        // Pull no more, and hand back what was pulled but not taken, for the
        // other routers; a message still on its way here is redelivered
        // after the ack wait.
        if let Some(mut messages) = self.messages.take() {
            while let Some(Some(Ok(message))) = messages.next().now_or_never() {
                let (_, acker) = message.split();
                let _ = self.acks.send(Ack::Kind(acker, AckKind::Nak(None)));
            }
        }
    }

    async fn finish(&mut self) {
        // Settlements go out through the ack task: wait until it has sent
        // everything queued so far (the adapter's flush then writes them).
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.acks.send(Ack::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}
