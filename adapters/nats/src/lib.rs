//! NATS adapter (async-nats): core NATS ingress and egress.
//!
//! Ingress subscribes to `<prefix>.>` in a queue group, so routers sharing a
//! group split the messages. Egress publishes to the instance's inbox subject
//! with the topic appended (`_baker.<service>.<instance>.<topic>`), keeping
//! the publisher's headers and reply subject, so a request is answered by the
//! instance directly. Core NATS is at most once: a publish resolves once it
//! is handed to the connection, and the ack handle only matters for requests,
//! which get an error reply when they cannot be delivered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::header::HeaderName;
use async_nats::{Client, HeaderMap, Subject};
use async_trait::async_trait;
use baker_adapter_api::{
    header, AckHandle, Adapter, AdapterError, BrokerHealth, Delivery, Destination, Endpoint,
    Headers, InboxConsumer, Ingress, IngressOptions, IngressStatus, Message, Properties, Reply,
    ReplyInbox, SendError, Settle, Settlement, Target,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

mod jetstream;

pub use async_nats;
pub use jetstream::{stream_name, DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM};

/// The servers of a broker URL: `nats://HOST:PORT`, or several separated by
/// commas (`nats://a:4222,b:4222`; the scheme may be given once), query
/// removed.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let url = url.split('?').next().unwrap_or(url);
    let scheme = url.split_once("://").map_or("nats", |(scheme, _)| scheme);
    if scheme != "nats" && scheme != "tls" {
        return Err("expected nats://HOST:PORT[,HOST:PORT...]".to_owned());
    }
    url.split(',')
        .map(|server| {
            let server = server.trim();
            let full = if server.contains("://") {
                server.to_owned()
            } else {
                format!("{scheme}://{server}")
            };
            full.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{server:?}: {e}"))
        })
        .collect()
}

/// Default broker URL.
pub const DEFAULT_BROKER: &str = "nats://127.0.0.1:4222";

/// How long the server may take to confirm the ingress subscription.
const SUBSCRIBE_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The NATS adapter. Keeps one connection per broker URL, opened on first use
/// and reconnected by async-nats itself.
#[derive(Default)]
pub struct NatsAdapter {
    clients: Mutex<HashMap<String, Client>>,
}

impl NatsAdapter {
    async fn client(&self, url: &str) -> Result<Client, AdapterError> {
        // The query holds Baker's settings (`inbox=jetstream`), not the
        // connection's: one connection per server.
        let url = url.split('?').next().unwrap_or(url);
        if let Some(client) = self.lock_clients().get(url) {
            return Ok(client.clone());
        }
        let servers = server_addrs(url).map_err(|reason| AdapterError::InvalidBroker {
            url: url.to_owned(),
            reason,
        })?;
        let broker = url.to_owned();
        // retry_on_initial_connect: an unreachable broker must not stall the
        // router; async-nats keeps reconnecting with backoff and buffers
        // publishes meanwhile (bounded by its client capacity).
        let client = async_nats::ConnectOptions::new()
            .name("baker-mq")
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let broker = broker.clone();
                async move { report_event(&broker, event) }
            })
            .connect(servers)
            .await
            .map_err(|e| AdapterError::Broker {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(self
            .lock_clients()
            .entry(url.to_owned())
            .or_insert(client)
            .clone())
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Seconds (since the Unix epoch) of the last slow-consumer warning.
static LAST_SLOW_CONSUMER_LOG: AtomicU64 = AtomicU64::new(0);

/// Logs connection events. Slow-consumer events (one per message NATS
/// dropped because this process fell behind) are counted in
/// `baker_nats_slow_consumer_total` and logged at most every 10 s.
fn report_event(broker: &str, event: async_nats::Event) {
    match event {
        async_nats::Event::SlowConsumer(_) => {
            metrics::counter!("baker_nats_slow_consumer_total", "broker" => broker.to_owned())
                .increment(1);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = LAST_SLOW_CONSUMER_LOG.load(Ordering::Relaxed);
            if now >= last + 10
                && LAST_SLOW_CONSUMER_LOG
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(%broker, "NATS dropped messages for this slow consumer (see baker_nats_slow_consumer_total)");
            }
        }
        async_nats::Event::Connected => tracing::info!(%broker, "connected to NATS"),
        other => tracing::warn!(%broker, event = %other, "NATS connection event"),
    }
}

fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace))
}

/// Converts NATS headers to Baker's.
pub fn headers_from_nats(map: Option<&HeaderMap>) -> Headers {
    let Some(map) = map else {
        return Headers::default();
    };
    let mut headers = Headers::with_capacity(map.len() + 3);
    for (name, values) in map.iter() {
        for value in values {
            headers.append(
                AsRef::<str>::as_ref(name).to_owned(),
                value.as_str().to_owned(),
            );
        }
    }
    headers
}

/// Baker's own header names, made once: a custom NATS header name built from
/// a `&str` is an allocation, and these are on every message.
static BAKER_HEADER_NAMES: [(&str, HeaderName); 6] = [
    (header::MSG_ID, HeaderName::from_static(header::MSG_ID)),
    (header::ATTEMPT, HeaderName::from_static(header::ATTEMPT)),
    (header::ORIGIN, HeaderName::from_static(header::ORIGIN)),
    (header::KEY, HeaderName::from_static(header::KEY)),
    (header::ERROR, HeaderName::from_static(header::ERROR)),
    (header::TOPIC, HeaderName::from_static(header::TOPIC)),
];

/// NATS headers that carry the common message properties, so that they
/// survive a hop between NATS and a protocol with native properties (AMQP).
const CONTENT_TYPE: &str = "content-type";
const CONTENT_ENCODING: &str = "content-encoding";
const CORRELATION_ID: &str = "correlation-id";
const MESSAGE_ID: &str = "message-id";

/// Moves the property headers out of `headers` into [`Properties`].
pub fn properties_from_headers(headers: &mut Headers) -> Properties {
    if headers.is_empty() {
        return Properties::default();
    }
    let mut take = |name| headers.remove(name).map(|v| v.into_owned());
    Properties {
        content_type: take(CONTENT_TYPE),
        content_encoding: take(CONTENT_ENCODING),
        correlation_id: take(CORRELATION_ID),
        message_id: take(MESSAGE_ID),
        ..Default::default()
    }
}

/// Adds the properties NATS can carry as headers. Persistence, expiration,
/// priority and timestamp have no NATS equivalent and are dropped.
fn properties_to_headers(properties: &Properties, headers: &mut HeaderMap) {
    for (name, value) in [
        (CONTENT_TYPE, &properties.content_type),
        (CONTENT_ENCODING, &properties.content_encoding),
        (CORRELATION_ID, &properties.correlation_id),
        (MESSAGE_ID, &properties.message_id),
    ] {
        if let Some(value) = value.as_deref().filter(|v| valid_header_value(v)) {
            headers.insert(name, value);
        }
    }
}

/// What NATS accepts as a header name: printable ASCII without ':'.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// What NATS accepts as a header value: no line breaks.
fn valid_header_value(value: &str) -> bool {
    !value.contains(['\r', '\n'])
}

/// Converts Baker's headers to NATS headers. Headers NATS cannot carry (from
/// another protocol's ingress) are left out and counted in the result.
pub fn headers_to_nats(headers: &Headers) -> (HeaderMap, usize) {
    let mut map = HeaderMap::new();
    let mut skipped = 0;
    for (name, value) in headers.iter() {
        if !valid_header_name(name) || !valid_header_value(value) {
            skipped += 1;
            continue;
        }
        match BAKER_HEADER_NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, known)) => map.append(known.clone(), value),
            None => map.append(name, value),
        }
    }
    (map, skipped)
}

/// Baker's form of a message received from NATS.
fn message_from_nats(msg: async_nats::Message) -> Message {
    message_from_parts(
        msg.headers.as_ref(),
        msg.reply.map(|r| r.to_string()),
        msg.payload,
    )
}

/// Baker's form of a NATS message given as its parts.
pub(crate) fn message_from_parts(
    headers: Option<&HeaderMap>,
    reply_to: Option<String>,
    payload: Bytes,
) -> Message {
    let mut headers = headers_from_nats(headers);
    let properties = properties_from_headers(&mut headers);
    Message {
        headers,
        reply_to,
        payload,
        properties,
        native: None,
    }
}

/// NATS headers for `message`: its headers and the properties NATS carries.
/// Returns how many headers NATS could not carry.
pub(crate) fn nats_headers(message: &Message) -> (HeaderMap, usize) {
    let (mut headers, skipped) = headers_to_nats(&message.headers);
    properties_to_headers(&message.properties, &mut headers);
    (headers, skipped)
}

pub(crate) fn publish_error(error: async_nats::client::PublishError) -> SendError {
    match error.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded
        | async_nats::client::PublishErrorKind::InvalidSubject => {
            SendError::Rejected(error.to_string())
        }
        _ => SendError::Unreachable(error.to_string()),
    }
}

/// An instance's subscription to its inbox subjects.
struct NatsInboxConsumer(async_nats::Subscriber);

#[async_trait]
impl InboxConsumer for NatsInboxConsumer {
    async fn next(&mut self) -> Option<Message> {
        self.0.next().await.map(message_from_nats)
    }

    async fn close(&mut self) {
        if let Err(error) = self.0.drain().await {
            tracing::debug!(%error, "could not drain an inbox subscription");
        }
    }
}

/// A router's reply inbox on a NATS broker: the subjects
/// `_baker.reply.<router>.<token>`.
struct NatsReplyInbox {
    prefix: String,
}

impl ReplyInbox for NatsReplyInbox {
    fn stamp(&self, token: &str, message: &mut Message) {
        message.reply_to = Some(format!("{}{token}", self.prefix));
    }
}

/// Follows `client`'s connection: async-nats reconnects by itself and
/// resubscribes, so the connection is the ingress's state.
fn connection_status(client: &Client) -> IngressStatus {
    let client = client.clone();
    IngressStatus::new(move || {
        client.connection_state() == async_nats::connection::State::Connected
    })
}

struct NatsIngress {
    subscriber: async_nats::Subscriber,
    client: Client,
    prefix_len: usize,
}

/// Answers a request that could not be delivered, so the requester learns why
/// instead of waiting for its timeout.
struct ErrorReply {
    client: Client,
    reply: Subject,
}

impl Settle for ErrorReply {
    fn settle(self: Box<Self>, outcome: Settlement) {
        let reason = match outcome {
            Settlement::Delivered => return,
            Settlement::DeadLetter { reason, .. } | Settlement::Requeue { reason } => reason,
        };
        let mut headers = HeaderMap::new();
        // A header value may not hold line breaks; reasons can quote names
        // that came from elsewhere.
        let reason = reason.replace(['\r', '\n'], " ");
        headers.insert(header::ERROR, reason.as_str());
        tokio::spawn(async move {
            if let Err(error) = self
                .client
                .publish_with_headers(self.reply, headers, Bytes::new())
                .await
            {
                tracing::debug!(%error, "could not send error reply");
            }
        });
    }
}

impl NatsIngress {
    fn delivery(&self, msg: async_nats::Message) -> Option<Delivery> {
        let rest = msg.subject.get(self.prefix_len..)?;
        let (service, topic) = rest.split_once('.').unwrap_or((rest, ""));
        let destination = Destination {
            service: service.to_owned(),
            topic: topic.to_owned(),
        };
        let ack = match &msg.reply {
            Some(reply) => AckHandle::new(ErrorReply {
                client: self.client.clone(),
                reply: reply.clone(),
            }),
            None => AckHandle::noop(),
        };
        Some(Delivery {
            origin: msg.subject.to_string(),
            message: message_from_nats(msg),
            destination,
            ack,
        })
    }
}

#[async_trait]
impl Ingress for NatsIngress {
    fn status(&self) -> IngressStatus {
        connection_status(&self.client)
    }

    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let msg = self.subscriber.next().await?;
            if let Some(delivery) = self.delivery(msg) {
                return Some(delivery);
            }
        }
    }

    fn try_next(&mut self) -> Option<Delivery> {
        loop {
            let msg = self.subscriber.next().now_or_never()??;
            if let Some(delivery) = self.delivery(msg) {
                return Some(delivery);
            }
        }
    }

    async fn close(&mut self) {
        // Drain: the server stops sending to this member of the queue group,
        // and the stream ends after the messages already on the wire.
        if let Err(error) = self.subscriber.drain().await {
            tracing::warn!(%error, "could not drain the ingress subscription");
        }
    }
}

struct NatsTarget {
    client: Client,
    inbox: String,
    reported_skipped: AtomicBool,
}

#[async_trait]
impl Target for NatsTarget {
    async fn send(&self, destination: &Destination, message: &Message) -> Result<(), SendError> {
        let subject = if destination.topic.is_empty() {
            self.inbox.clone()
        } else {
            let mut s = String::with_capacity(self.inbox.len() + 1 + destination.topic.len());
            s.push_str(&self.inbox);
            s.push('.');
            s.push_str(&destination.topic);
            s
        };
        let (headers, skipped) = nats_headers(message);
        if skipped > 0 && !self.reported_skipped.swap(true, Ordering::Relaxed) {
            tracing::warn!(inbox = %self.inbox, skipped,
                "headers that NATS cannot carry were left out (reported once per instance)");
        }
        let result = match &message.reply_to {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(
                        subject,
                        reply.clone(),
                        headers,
                        message.payload.clone(),
                    )
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(subject, headers, message.payload.clone())
                    .await
            }
        };
        result.map_err(publish_error)
    }
}

#[async_trait]
impl Adapter for NatsAdapter {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn default_broker(&self) -> &'static str {
        DEFAULT_BROKER
    }

    fn default_inbox(&self, service: &str, instance: &str) -> String {
        format!("_baker.{service}.{instance}")
    }

    fn validate_inbox(&self, inbox: &str) -> Result<(), AdapterError> {
        if valid_subject(inbox) {
            Ok(())
        } else {
            Err(AdapterError::InvalidInbox {
                inbox: inbox.to_owned(),
                reason: "must be a NATS subject of non-empty tokens without wildcards".to_owned(),
            })
        }
    }

    async fn ingress(
        &self,
        broker: &str,
        options: &IngressOptions,
    ) -> Result<Box<dyn Ingress>, AdapterError> {
        let client = self.client(broker).await?;
        if options.at_least_once {
            let ingress = jetstream::start(
                client,
                broker,
                &options.prefix,
                &options.queue_group,
                options.buffer,
            )
            .await?;
            return Ok(Box::new(ingress));
        }
        let subscriber = client
            .queue_subscribe(format!("{}.>", options.prefix), options.queue_group.clone())
            .await
            .map_err(|e| AdapterError::Broker {
                url: broker.to_owned(),
                reason: e.to_string(),
            })?;
        // The subscription counts once the server has it (the PONG of a
        // flush follows the SUB): until then the router is not ready, and
        // core NATS would give what is published meanwhile to nobody.
        match tokio::time::timeout(SUBSCRIBE_CONFIRM_TIMEOUT, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(AdapterError::Broker {
                    url: baker_adapter_api::redact_url(broker),
                    reason: format!("subscription not confirmed: {error}"),
                })
            }
            Err(_) => {
                return Err(AdapterError::Broker {
                    url: baker_adapter_api::redact_url(broker),
                    reason: "subscription not confirmed: the server did not answer".to_owned(),
                })
            }
        }
        Ok(Box::new(NatsIngress {
            subscriber,
            client,
            prefix_len: options.prefix.len() + 1,
        }))
    }

    /// The query holds Baker's settings, not the server's address.
    fn same_broker(&self, a: &str, b: &str) -> bool {
        a.split('?').next() == b.split('?').next()
    }

    /// With `inbox=jetstream` in the broker URL, creates the stream that
    /// keeps the inbox (`BAKER_INBOX_<inbox>`, capturing `<inbox>.>`).
    async fn prepare_inbox(
        &self,
        endpoint: &Endpoint,
        _options: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), AdapterError> {
        if !jetstream::durable_inbox(&endpoint.broker) {
            return Ok(());
        }
        self.validate_inbox(&endpoint.inbox)?;
        let client = self.client(&endpoint.broker).await?;
        jetstream::create_inbox_stream(client, &endpoint.broker, &endpoint.inbox).await
    }

    async fn target(&self, endpoint: &Endpoint) -> Result<Arc<dyn Target>, AdapterError> {
        self.validate_inbox(&endpoint.inbox)?;
        if jetstream::durable_inbox(&endpoint.broker) {
            return Ok(Arc::new(jetstream::DurableTarget::new(
                self.client(&endpoint.broker).await?,
                &endpoint.inbox,
            )));
        }
        Ok(Arc::new(NatsTarget {
            client: self.client(&endpoint.broker).await?,
            inbox: endpoint.inbox.clone(),
            reported_skipped: AtomicBool::new(false),
        }))
    }

    async fn reply_inbox(
        &self,
        broker: &str,
        router_id: &str,
        replies: tokio::sync::mpsc::Sender<Reply>,
    ) -> Result<Arc<dyn ReplyInbox>, AdapterError> {
        let prefix = format!("_baker.reply.{router_id}.");
        let mut subscriber = self
            .client(broker)
            .await?
            .subscribe(format!("{prefix}*"))
            .await
            .map_err(|e| AdapterError::Broker {
                url: broker.to_owned(),
                reason: e.to_string(),
            })?;
        let tokens_from = prefix.len();
        tokio::spawn(async move {
            while let Some(msg) = subscriber.next().await {
                let token = msg.subject[tokens_from..].to_owned();
                let reply = Reply {
                    token,
                    message: message_from_nats(msg),
                };
                if replies.send(reply).await.is_err() {
                    return;
                }
            }
        });
        Ok(Arc::new(NatsReplyInbox { prefix }))
    }

    async fn publish_to_ingress(
        &self,
        broker: &str,
        prefix: &str,
        destination: &Destination,
        message: &Message,
    ) -> Result<(), SendError> {
        let client = self
            .client(broker)
            .await
            .map_err(|e| SendError::Unreachable(e.to_string()))?;
        let mut subject = format!("{prefix}.{}", destination.service);
        if !destination.topic.is_empty() {
            subject.push('.');
            subject.push_str(&destination.topic);
        }
        let (headers, _) = nats_headers(message);
        client
            .publish_with_headers(subject, headers, message.payload.clone())
            .await
            .map_err(publish_error)
    }

    async fn consume_inbox(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Box<dyn InboxConsumer>, AdapterError> {
        let client = self.client(&endpoint.broker).await?;
        let subscriber = client
            .subscribe(format!("{}.>", endpoint.inbox))
            .await
            .map_err(|e| AdapterError::Broker {
                url: endpoint.broker.clone(),
                reason: e.to_string(),
            })?;
        // The subscription must be at the server before the instance is
        // registered, or the first messages routed to it go nowhere.
        client.flush().await.map_err(|e| AdapterError::Broker {
            url: endpoint.broker.clone(),
            reason: e.to_string(),
        })?;
        Ok(Box::new(NatsInboxConsumer(subscriber)))
    }

    async fn send_reply(
        &self,
        broker: &str,
        reply_to: &str,
        message: &Message,
    ) -> Result<(), SendError> {
        let client = self
            .client(broker)
            .await
            .map_err(|e| SendError::Unreachable(e.to_string()))?;
        let (headers, _) = nats_headers(message);
        client
            .publish_with_headers(reply_to.to_owned(), headers, message.payload.clone())
            .await
            .map_err(publish_error)
    }

    async fn flush(&self) {
        let clients: Vec<(String, Client)> = self
            .lock_clients()
            .iter()
            .map(|(url, client)| (url.clone(), client.clone()))
            .collect();
        for (url, client) in clients {
            if let Err(error) = client.flush().await {
                tracing::warn!(broker = %url, %error, "could not flush before exit");
            }
        }
    }

    fn health(&self) -> Vec<BrokerHealth> {
        self.lock_clients()
            .iter()
            .map(|(url, client)| BrokerHealth {
                adapter: "nats",
                broker: baker_adapter_api::redact_url(url),
                connected: client.connection_state() == async_nats::connection::State::Connected,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_url_may_list_several_servers() {
        let servers = server_addrs("nats://a:4222,b:4223,tls://c:4224?inbox=jetstream").unwrap();
        let hosts: Vec<_> = servers
            .iter()
            .map(|s| format!("{}:{}", s.host(), s.port()))
            .collect();
        assert_eq!(hosts, ["a:4222", "b:4223", "c:4224"]);
        assert!(server_addrs("amqp://a:5672").is_err());
        assert_eq!(server_addrs("127.0.0.1:4222").unwrap().len(), 1);
    }
}
