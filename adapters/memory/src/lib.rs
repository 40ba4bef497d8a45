//! An in-process broker with NATS-like subjects, for unit tests and the demo.
//!
//! Brokers are named: `memory://demo` in an endpoint refers to the broker
//! returned by [`broker("demo")`](broker), shared by everything in the process.
//! Subscriptions have bounded buffers and publishing waits for room, so a slow
//! subscriber slows the publisher down instead of losing messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use async_trait::async_trait;
use baker_adapter_api::{
    AckHandle, Adapter, AdapterError, AppClient, BrokerHealth, Cause, Delivery, Destination,
    Endpoint, InboxConsumer, Ingress, IngressOptions, IngressStatus, Message, Provisioning,
    Replies, Reply, ReplyInbox, Roles, SendError, Target,
};
use tokio::sync::mpsc;

/// URL scheme of memory brokers.
pub const SCHEME: &str = "memory://";

/// A message as a memory subscriber receives it.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Subject it was published to.
    pub subject: String,
    /// The message.
    pub message: Message,
}

struct Subscription {
    id: u64,
    pattern: Vec<String>,
    group: Option<String>,
    sender: mpsc::Sender<Envelope>,
}

/// One in-process broker.
#[derive(Default)]
pub struct MemoryBroker {
    subscriptions: RwLock<Vec<Subscription>>,
    next_id: AtomicU64,
    group_cursor: AtomicUsize,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscriber {
    broker: Arc<MemoryBroker>,
    id: u64,
    receiver: mpsc::Receiver<Envelope>,
}

impl Subscriber {
    /// The next message; `None` once unsubscribed and drained.
    pub async fn recv(&mut self) -> Option<Envelope> {
        self.receiver.recv().await
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Result<Envelope, mpsc::error::TryRecvError> {
        self.receiver.try_recv()
    }

    /// Stops receiving new messages; those already buffered are still
    /// returned by [`recv`](Self::recv).
    pub fn unsubscribe(&self) {
        let mut subs = self
            .broker
            .subscriptions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| s.id != self.id);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

/// The memory broker named `name`, created on first use.
pub fn broker(name: &str) -> Arc<MemoryBroker> {
    static BROKERS: OnceLock<Mutex<HashMap<String, Arc<MemoryBroker>>>> = OnceLock::new();
    let mut brokers = BROKERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    brokers.entry(name.to_owned()).or_default().clone()
}

fn broker_for_url(url: &str) -> Result<Arc<MemoryBroker>, AdapterError> {
    match url.strip_prefix(SCHEME) {
        Some(name) if !name.is_empty() => Ok(broker(name)),
        _ => Err(AdapterError::InvalidBroker {
            url: url.to_owned(),
            reason: format!("expected {SCHEME}NAME"),
        }),
    }
}

fn matches(pattern: &[String], subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for (i, p) in pattern.iter().enumerate() {
        if p == ">" {
            return i < pattern.len() && tokens.next().is_some();
        }
        match tokens.next() {
            Some(t) if p == "*" || p == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

impl MemoryBroker {
    /// Subscribes to `pattern` (`*` matches one token, `>` the rest). Members
    /// of the same `group` share messages: each goes to one of them.
    pub fn subscribe(
        self: &Arc<Self>,
        pattern: &str,
        group: Option<&str>,
        capacity: usize,
    ) -> Subscriber {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscriptions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Subscription {
                id,
                pattern: pattern.split('.').map(str::to_owned).collect(),
                group: group.map(str::to_owned),
                sender,
            });
        Subscriber {
            broker: self.clone(),
            id,
            receiver,
        }
    }

    /// Publishes to every matching plain subscription and to one member of
    /// each matching group, waiting for buffer room. Returns how many
    /// subscribers received it.
    pub async fn publish(&self, subject: &str, message: Message) -> usize {
        let recipients = self.recipients(subject);
        let mut delivered = 0;
        for sender in recipients {
            let envelope = Envelope {
                subject: subject.to_owned(),
                message: message.clone(),
            };
            if sender.send(envelope).await.is_ok() {
                delivered += 1;
            }
        }
        delivered
    }

    /// Publishes as [`publish`](Self::publish) does if every recipient has room
    /// now: whether it did (`false` with no subscriber, or a buffer full,
    /// and then nothing was sent, though a queue group's turn has moved on
    /// to its next member).
    pub fn try_publish(&self, subject: &str, message: &Message) -> bool {
        let recipients = self.recipients(subject);
        let permits: Option<Vec<_>> = recipients.iter().map(|s| s.try_reserve().ok()).collect();
        match permits {
            Some(permits) if !permits.is_empty() => {
                for permit in permits {
                    permit.send(Envelope {
                        subject: subject.to_owned(),
                        message: message.clone(),
                    });
                }
                true
            }
            _ => false,
        }
    }

    /// Messages waiting in the buffers of the subscriptions made with
    /// exactly `pattern`.
    pub fn buffered(&self, pattern: &str) -> u64 {
        let subs = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
        subs.iter()
            .filter(|s| s.pattern.join(".") == pattern)
            .map(|s| (s.sender.max_capacity() - s.sender.capacity()) as u64)
            .sum()
    }

    fn recipients(&self, subject: &str) -> Vec<mpsc::Sender<Envelope>> {
        let subs = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
        let mut plain = Vec::new();
        let mut groups: Vec<(&str, Vec<&mpsc::Sender<Envelope>>)> = Vec::new();
        for sub in subs.iter().filter(|s| matches(&s.pattern, subject)) {
            match &sub.group {
                None => plain.push(sub.sender.clone()),
                Some(group) => match groups.iter_mut().find(|(g, _)| g == group) {
                    Some((_, members)) => members.push(&sub.sender),
                    None => groups.push((group, vec![&sub.sender])),
                },
            }
        }
        let cursor = self.group_cursor.fetch_add(1, Ordering::Relaxed);
        for (_, members) in groups {
            plain.push(members[cursor % members.len()].clone());
        }
        plain
    }
}

/// The memory adapter.
#[derive(Default)]
pub struct MemoryAdapter;

struct MemoryIngress {
    subscriber: Subscriber,
    prefix_len: usize,
}

#[async_trait]
impl Ingress for MemoryIngress {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let envelope = self.subscriber.recv().await?;
            if let Some(delivery) = self.delivery(envelope) {
                return Some(delivery);
            }
        }
    }

    fn try_next(&mut self) -> Option<Delivery> {
        loop {
            let envelope = self.subscriber.receiver.try_recv().ok()?;
            if let Some(delivery) = self.delivery(envelope) {
                return Some(delivery);
            }
        }
    }

    fn status(&self) -> IngressStatus {
        IngressStatus::always_connected()
    }

    async fn close(&mut self) {
        self.subscriber.unsubscribe();
    }
}

impl MemoryIngress {
    fn delivery(&self, envelope: Envelope) -> Option<Delivery> {
        let rest = envelope.subject.get(self.prefix_len..)?;
        Some(Delivery {
            destination: Destination::from_address(rest, '.'),
            message: envelope.message,
            ack: AckHandle::noop(),
        })
    }
}

struct MemoryTarget {
    broker: Arc<MemoryBroker>,
    inbox: String,
}

#[async_trait]
impl Target for MemoryTarget {
    async fn send(&self, destination: &Destination, message: &Message) -> Result<(), SendError> {
        let subject = (destination.topic)
            .under(&self.inbox, '.')
            .map_err(|e| SendError::rejected(Cause::new(e)))?;
        match self.broker.publish(&subject, message.clone()).await {
            0 => Err(SendError::unavailable(format!(
                "no subscriber on {subject}"
            ))),
            _ => Ok(()),
        }
    }

    fn try_send(&self, destination: &Destination, message: &Message) -> bool {
        (destination.topic)
            .under(&self.inbox, '.')
            .is_ok_and(|subject| self.broker.try_publish(&subject, message))
    }
}

#[async_trait]
impl InboxConsumer for Subscriber {
    async fn next(&mut self) -> Option<Message> {
        self.recv().await.map(|envelope| envelope.message)
    }

    async fn close(&mut self) {
        self.unsubscribe();
    }
}

/// A router's reply inbox on a memory broker: the subjects
/// `_baker.reply.<router>.<token>`.
struct MemoryReplyInbox {
    prefix: String,
}

impl ReplyInbox for MemoryReplyInbox {
    fn stamp(&self, token: &str, message: &mut Message) {
        message.reply_to = Some(format!("{}{token}", self.prefix));
    }
}

#[async_trait]
impl Adapter for MemoryAdapter {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn default_broker(&self) -> &'static str {
        "memory://default"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["memory"]
    }

    fn default_inbox(&self, service: &str, instance: &str) -> String {
        format!("_baker.{service}.{instance}")
    }

    /// The ingress takes `PREFIX.>`, as on NATS.
    fn inbox_in_ingress(&self, inbox: &str, ingress: &IngressOptions) -> bool {
        baker_adapter_api::address_under(inbox, &ingress.prefix, '.')
    }

    fn validate_inbox(&self, inbox: &str) -> Result<(), AdapterError> {
        if inbox.is_empty()
            || inbox
                .split('.')
                .any(|t| t.is_empty() || t == "*" || t == ">")
        {
            return Err(AdapterError::InvalidInbox {
                inbox: inbox.to_owned(),
                reason: "must be dot-separated non-empty tokens without wildcards".to_owned(),
            });
        }
        Ok(())
    }

    async fn ingress(
        &self,
        broker: &str,
        options: &IngressOptions,
    ) -> Result<Box<dyn Ingress>, AdapterError> {
        let broker = broker_for_url(broker)?;
        let pattern = format!("{}.>", options.prefix);
        Ok(Box::new(MemoryIngress {
            subscriber: broker.subscribe(&pattern, Some(&options.queue_group), options.buffer),
            prefix_len: options.prefix.len() + 1,
        }))
    }

    async fn target(&self, endpoint: &Endpoint) -> Result<Arc<dyn Target>, AdapterError> {
        self.validate_inbox(&endpoint.inbox)?;
        Ok(Arc::new(MemoryTarget {
            broker: broker_for_url(&endpoint.broker)?,
            inbox: endpoint.inbox.clone(),
        }))
    }

    fn health(&self) -> Vec<BrokerHealth> {
        Vec::new()
    }

    async fn flush(&self) {}

    fn roles(&self) -> Roles<'_> {
        Roles::all(self)
    }
}

#[async_trait]
impl Replies for MemoryAdapter {
    async fn reply_inbox(
        &self,
        broker: &str,
        router_id: &str,
        replies: mpsc::Sender<Reply>,
    ) -> Result<Arc<dyn ReplyInbox>, AdapterError> {
        let prefix = format!("_baker.reply.{router_id}.");
        let mut subscriber = broker_for_url(broker)?.subscribe(&format!("{prefix}*"), None, 64);
        let tokens_from = prefix.len();
        tokio::spawn(async move {
            while let Some(envelope) = subscriber.recv().await {
                let reply = Reply {
                    token: envelope.subject[tokens_from..].to_owned(),
                    message: envelope.message,
                };
                if replies.send(reply).await.is_err() {
                    return;
                }
            }
        });
        Ok(Arc::new(MemoryReplyInbox { prefix }))
    }

    async fn send_reply(
        &self,
        broker: &str,
        reply_to: &str,
        message: &Message,
    ) -> Result<(), SendError> {
        let broker = broker_for_url(broker).map_err(|e| SendError::rejected(Cause::new(e)))?;
        match broker.publish(reply_to, message.clone()).await {
            0 => Err(SendError::unavailable(format!(
                "no subscriber on {reply_to}"
            ))),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Provisioning for MemoryAdapter {
    /// Messages buffered for the inbox's subscribers.
    async fn inbox_backlog(&self, endpoint: &Endpoint) -> Result<Option<u64>, AdapterError> {
        let broker = broker_for_url(&endpoint.broker)?;
        let pattern = format!("{}.>", endpoint.inbox);
        Ok(Some(broker.buffered(&pattern)))
    }
}

#[async_trait]
impl AppClient for MemoryAdapter {
    async fn publish_to_ingress(
        &self,
        broker: &str,
        prefix: &str,
        destination: &Destination,
        message: &Message,
    ) -> Result<(), SendError> {
        let broker = broker_for_url(broker).map_err(|e| SendError::rejected(Cause::new(e)))?;
        let subject = (destination.topic)
            .under(&format!("{prefix}.{}", destination.service), '.')
            .map_err(|e| SendError::rejected(Cause::new(e)))?;
        match broker.publish(&subject, message.clone()).await {
            0 => Err(SendError::unavailable(format!(
                "no subscriber on {subject}"
            ))),
            _ => Ok(()),
        }
    }

    async fn consume_inbox(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Box<dyn InboxConsumer>, AdapterError> {
        let broker = broker_for_url(&endpoint.broker)?;
        Ok(Box::new(broker.subscribe(
            &format!("{}.>", endpoint.inbox),
            None,
            256,
        )))
    }

    fn describe_ingress(&self, prefix: &str, destination: &Destination) -> String {
        format!("{prefix}.{}.{}", destination.service, destination.topic)
    }

    /// Every name is a broker of its own, in this process.
    fn private_broker(&self, name: &str) -> Option<String> {
        Some(format!("{SCHEME}{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns_match_like_nats() {
        let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert!(matches(&p("baker.>"), "baker.orders.get"));
        assert!(!matches(&p("baker.>"), "baker"));
        assert!(matches(&p("a.*.c"), "a.b.c"));
        assert!(!matches(&p("a.*"), "a.b.c"));
        assert!(matches(&p("a.b"), "a.b"));
    }

    #[tokio::test]
    async fn group_members_share_messages() {
        let broker = broker("group-test");
        let mut a = broker.subscribe("x.>", Some("g"), 100);
        let mut b = broker.subscribe("x.>", Some("g"), 100);
        for _ in 0..10 {
            assert_eq!(broker.publish("x.y", Message::default()).await, 1);
        }
        let (mut na, mut nb) = (0, 0);
        while a.receiver.try_recv().is_ok() {
            na += 1;
        }
        while b.receiver.try_recv().is_ok() {
            nb += 1;
        }
        assert_eq!((na, nb), (5, 5));
    }
}
