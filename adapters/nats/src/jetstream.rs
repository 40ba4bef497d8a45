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
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind, Context};
use async_nats::HeaderMap;
use async_trait::async_trait;
use baker_adapter_api::{
    header, AckHandle, AdapterError, Cause, Delivery, Destination, Ingress, IngressStatus, Settle,
    Settlement,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use crate::convert::{message_from_parts, nats_headers};
use crate::UrlError;

/// Subject prefix of dead letters: `_baker.dlq.<service>`.
pub const DEAD_LETTER_PREFIX: &str = "_baker.dlq";
/// The stream keeping dead letters.
pub const DEAD_LETTER_STREAM: &str = "BAKER_DLQ";

/// How long the server waits for a message's ack before redelivering it,
/// unless the broker URL says (`ack_wait_secs`): longer than the slowest
/// delivery with its retries. A message held longer sends progress acks.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Pause before a nak'd message is redelivered.
const NAK_DELAY: Duration = Duration::from_secs(1);

/// The JetStream settings a broker URL's query can give: `storage`,
/// `replicas`, `max_bytes`, `max_age_secs`, applied when Baker creates a
/// stream, and `ack_wait_secs`, applied when it creates the ingress's
/// durable consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    pub storage: StorageType,
    pub replicas: usize,
    pub max_bytes: i64,
    pub max_age: Duration,
    pub ack_wait: Duration,
}

impl StreamSettings {
    /// The settings in `url`'s query, or why they are not valid.
    pub fn from_url(url: &str) -> Result<Self, UrlError> {
        let mut settings = StreamSettings {
            storage: StorageType::File,
            replicas: 1,
            max_bytes: -1,
            max_age: Duration::ZERO,
            ack_wait: ACK_WAIT,
        };
        let Some((_, query)) = url.split_once('?') else {
            return Ok(settings);
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let invalid = |expected| UrlError::Value {
                key: key.to_owned(),
                value: value.to_owned(),
                expected,
            };
            let number = || value.parse::<u64>().map_err(|_| invalid("a whole number"));
            match key {
                "storage" => {
                    settings.storage = match value {
                        "file" => StorageType::File,
                        "memory" => StorageType::Memory,
                        _ => return Err(invalid("file or memory")),
                    }
                }
                "replicas" => {
                    settings.replicas = match number()? {
                        n @ 1..=5 => n as usize,
                        _ => return Err(invalid("1 to 5")),
                    }
                }
                "max_bytes" => settings.max_bytes = i64::try_from(number()?).unwrap_or(i64::MAX),
                "max_age_secs" => settings.max_age = Duration::from_secs(number()?),
                "ack_wait_secs" => {
                    settings.ack_wait = match number()? {
                        n @ 1..=3600 => Duration::from_secs(n),
                        _ => return Err(invalid("1 to 3600")),
                    }
                }
                "inbox" if value == "jetstream" => {}
                "ingress" if value == "jetstream" || value == "core" => {}
                _ => return Err(UrlError::Unknown(pair.to_owned())),
            }
        }
        Ok(settings)
    }

    fn apply(&self, config: StreamConfig) -> StreamConfig {
        StreamConfig {
            storage: self.storage,
            num_replicas: self.replicas,
            max_bytes: self.max_bytes,
            max_age: self.max_age,
            ..config
        }
    }
}

/// A stream name from `text`: letters, digits, `-` and `_` kept, the rest `_`.
pub fn stream_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One settlement for the ack task.
enum Ack {
    Kind(Acker, AckKind),
    /// Work in progress: restart the message's ack wait.
    Progress(async_nats::Subject),
    /// Answer once every settlement queued before is sent.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Publish the dead letter, then ack (or nak when it could not be kept).
    DeadLetter {
        acker: Acker,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    },
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
            Ack::DeadLetter {
                acker,
                subject,
                headers,
                payload,
            } => {
                let js = js.clone();
                // Off the ack task: a dead letter waits for its stream's ack.
                tokio::spawn(async move {
                    let kept = match js.publish_with_headers(subject, headers, payload).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    let kind = if kept {
                        AckKind::Ack
                    } else {
                        tracing::warn!(
                            "could not keep a dead letter; the message will be redelivered"
                        );
                        AckKind::Nak(Some(NAK_DELAY))
                    };
                    let _ = acker.ack_with(kind).await;
                });
            }
        }
    }
}

/// Settles one JetStream delivery.
struct JetStreamSettle {
    acker: Option<Acker>,
    /// The message's ack subject, for progress acks.
    reply: Option<async_nats::Subject>,
    acks: mpsc::UnboundedSender<Ack>,
    /// How often a held message restarts its ack wait: a third of it.
    progress_every: Duration,
    service: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
}

impl Settle for JetStreamSettle {
    fn settle(mut self: Box<Self>, outcome: Settlement) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        let ack = match outcome {
            Settlement::Delivered => Ack::Kind(acker, AckKind::Ack),
            Settlement::Requeue { .. } => Ack::Kind(acker, AckKind::Nak(Some(NAK_DELAY))),
            Settlement::DeadLetter { reason, attempts } => {
                let mut headers = self.headers.take().unwrap_or_default();
                headers.insert(header::ERROR, reason.replace(['\r', '\n'], " ").as_str());
                headers.insert(header::ATTEMPTS, attempts.to_string().as_str());
                Ack::DeadLetter {
                    acker,
                    subject: format!("{DEAD_LETTER_PREFIX}.{}", self.service),
                    headers,
                    payload: self.payload.clone(),
                }
            }
        };
        let _ = self.acks.send(ack);
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
    tokio::spawn(run_acks(js, receiver));
    Ok(JetStreamIngress {
        client,
        messages: Some(messages),
        acks,
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
        let (service, topic) = rest.split_once('.').unwrap_or((rest, ""));
        let destination = Destination {
            service: service.to_owned(),
            topic: topic.to_owned(),
        };
        let origin = message.subject.to_string();
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
            progress_every: self.progress_every,
            service: destination.service.clone(),
            headers: native_headers,
            payload,
        };
        if let Some(id) = stable_id {
            if message.headers.get(header::MSG_ID).is_none() {
                message.headers.insert(header::MSG_ID, id);
            }
        }
        Some(Delivery {
            message,
            destination,
            origin,
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

/// Whether the broker URL asks for a durable inbox (`?inbox=jetstream`).
pub fn durable_inbox(url: &str) -> bool {
    has_setting(url, "inbox=jetstream")
}

/// Whether the broker URL asks for the JetStream ingress (`?ingress=jetstream`).
pub fn jetstream_ingress(url: &str) -> bool {
    has_setting(url, "ingress=jetstream")
}

fn has_setting(url: &str, pair: &str) -> bool {
    url.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|p| p == pair))
}

/// The stream that keeps a durable inbox.
pub fn inbox_stream(inbox: &str) -> String {
    format!("BAKER_INBOX_{}", stream_name(inbox))
}

/// Creates (if absent) the stream keeping `inbox` and its topics.
pub async fn create_inbox_stream(
    client: async_nats::Client,
    url: &str,
    inbox: &str,
) -> Result<(), AdapterError> {
    let settings = StreamSettings::from_url(url).map_err(|e| e.for_url(url))?;
    jetstream::new(client)
        .get_or_create_stream(settings.apply(StreamConfig {
            name: inbox_stream(inbox),
            subjects: vec![inbox.to_owned(), format!("{inbox}.>")],
            ..Default::default()
        }))
        .await
        .map(drop)
        .map_err(|e| AdapterError::Broker {
            url: baker_adapter_api::redact_url(url),
            reason: format!("creating the inbox stream of {inbox}: {e}"),
        })
}

/// Sends to a durable inbox: resolves on the inbox stream's publish ack,
/// with `Nats-Msg-Id` from `baker-msg-id` so that the stream drops a
/// redelivered copy within its duplicate window.
pub struct DurableTarget {
    js: Context,
    inbox: String,
}

impl DurableTarget {
    pub fn new(client: async_nats::Client, inbox: &str) -> Self {
        Self {
            js: jetstream::new(client),
            inbox: inbox.to_owned(),
        }
    }
}

#[async_trait]
impl baker_adapter_api::Target for DurableTarget {
    async fn send(
        &self,
        destination: &Destination,
        message: &baker_adapter_api::Message,
    ) -> Result<(), baker_adapter_api::SendError> {
        use baker_adapter_api::SendError;
        let subject = if destination.topic.is_empty() {
            self.inbox.clone()
        } else {
            format!("{}.{}", self.inbox, destination.topic)
        };
        let (mut headers, _) = nats_headers(message);
        if let Some(id) = message.headers.get(header::MSG_ID) {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        }
        let ack = self
            .js
            .publish_with_headers(subject, headers, message.payload.clone())
            .await
            .map_err(|e| SendError::unreachable(Cause::new(e)))?;
        ack.await.map(drop).map_err(|error| {
            use async_nats::jetstream::context::PublishErrorKind;
            match error.kind() {
                // Also what a cluster answers while the stream's leader is
                // being elected again (a node lost): hand the message back
                // for a later try rather than dead-letter it.
                PublishErrorKind::StreamNotFound => SendError::unreachable(format!(
                    "no stream answers for the inbox {} (its agent creates it; in a cluster, \
                     its leader may be moving)",
                    self.inbox
                )),
                PublishErrorKind::MaxPayloadExceeded => SendError::rejected(Cause::new(error)),
                _ => SendError::unreachable(Cause::new(error)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_settings_come_from_the_url_query() {
        let plain = StreamSettings::from_url("nats://127.0.0.1:4222").unwrap();
        assert_eq!((plain.storage, plain.replicas), (StorageType::File, 1));
        let set = StreamSettings::from_url(
            "nats://h:4222?storage=memory&replicas=3&max_bytes=1048576&max_age_secs=60&inbox=jetstream",
        )
        .unwrap();
        assert_eq!(set.storage, StorageType::Memory);
        assert_eq!(set.replicas, 3);
        assert_eq!(set.max_bytes, 1_048_576);
        assert_eq!(set.max_age, Duration::from_secs(60));
        assert_eq!(plain.ack_wait, ACK_WAIT);
        let short = StreamSettings::from_url("nats://h?ack_wait_secs=3").unwrap();
        assert_eq!(short.ack_wait, Duration::from_secs(3));
        assert!(StreamSettings::from_url("nats://h?ack_wait_secs=0").is_err());
        assert!(StreamSettings::from_url("nats://h?replicas=7")
            .unwrap_err()
            .to_string()
            .contains("1 to 5"));
        assert!(StreamSettings::from_url("nats://h?ingress=jetstream&inbox=jetstream").is_ok());
        assert!(jetstream_ingress(
            "nats://h?storage=memory&ingress=jetstream"
        ));
        assert!(!jetstream_ingress("nats://h?ingress=core"));
        assert!(StreamSettings::from_url("nats://h?ingress=jetsream").is_err());
        assert_eq!(
            StreamSettings::from_url("nats://h?colour=blue"),
            Err(UrlError::Unknown("colour=blue".into()))
        );
        assert!(durable_inbox("nats://h?storage=memory&inbox=jetstream"));
        assert!(!durable_inbox("nats://h?storage=memory"));
    }
}
