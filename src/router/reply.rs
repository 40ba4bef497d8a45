//! The reply proxy: answers to requests whose requester and instance are on
//! different brokers or protocols.
//!
//! An instance replies on its own broker, at the request's reply address.
//! When the request came from another broker (or protocol), that address is
//! meaningless there, so the router stamps the request with its own reply
//! inbox on the instance's broker and a token, remembers the requester's
//! reply address and correlation id under that token, and sends each reply
//! that comes back to the requester, on the ingress broker. Requests whose
//! instance shares the ingress broker keep their reply address untouched and
//! never pass through here.
//!
//! Replies are at most once: a reply that arrives after [`REPLY_TIMEOUT`],
//! or while the router restarts, is dropped (and counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use baker_adapter_api::{Adapter, Message, Reply, ReplyInbox, SendError};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::adapters::AdapterRegistry;
use crate::shutdown::Shutdown;

/// How long a request waits for its reply before its token is forgotten.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Most requests waiting for a reply at once; beyond it, requests that need
/// the proxy are handed back to the ingress, as when a broker is unreachable.
pub const MAX_PENDING: usize = 100_000;

/// Replies buffered between the reply inboxes and the forwarding task.
const REPLY_BUFFER: usize = 1024;

/// Replies being sent to requesters at once.
const FORWARDING_WINDOW: usize = 256;

/// Independent locks over the pending requests, so that concurrent requests
/// rarely wait for each other.
const SHARDS: usize = 16;

/// What a reply needs to find its requester.
struct Pending {
    reply_to: String,
    correlation_id: Option<String>,
    correlation_data: Option<bytes::Bytes>,
    since: Instant,
}

type InboxKey = (String, String);

/// Forwards replies between brokers. One per router.
pub struct ReplyProxy {
    ingress: Arc<dyn Adapter>,
    ingress_broker: String,
    adapters: AdapterRegistry,
    router_id: String,
    /// Reply inboxes by (adapter, broker), read without a lock.
    inboxes: ArcSwap<HashMap<InboxKey, Arc<dyn ReplyInbox>>>,
    /// Serializes opening inboxes, off the common path.
    opening: tokio::sync::Mutex<()>,
    pending: [Mutex<HashMap<u64, Pending>>; SHARDS],
    pending_count: AtomicUsize,
    next_token: AtomicU64,
    replies: mpsc::Sender<Reply>,
    incoming: Mutex<Option<mpsc::Receiver<Reply>>>,
}

/// A request registered with the proxy: forget it if its send fails.
pub struct Stamped {
    /// The request, with its reply address pointed at the proxy.
    pub message: Message,
    token: u64,
}

impl ReplyProxy {
    /// A proxy for a router whose ingress is `ingress` on `ingress_broker`.
    pub fn new(ingress: Arc<dyn Adapter>, ingress_broker: &str, adapters: AdapterRegistry) -> Self {
        let (replies, incoming) = mpsc::channel(REPLY_BUFFER);
        Self {
            ingress,
            ingress_broker: ingress_broker.to_owned(),
            adapters,
            router_id: format!("{:016x}", fastrand::u64(..)),
            inboxes: ArcSwap::default(),
            opening: tokio::sync::Mutex::new(()),
            pending: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            pending_count: AtomicUsize::new(0),
            next_token: AtomicU64::new(1),
            replies,
            incoming: Mutex::new(Some(incoming)),
        }
    }

    /// Whether a request to an instance on `adapter` and `broker` needs the
    /// proxy to be answered: the instance is on another broker or protocol
    /// than the requester.
    pub fn needed_for(&self, adapter: &str, broker: &str) -> bool {
        adapter != self.ingress.name()
            || (broker != self.ingress_broker
                && !self.ingress.same_broker(broker, &self.ingress_broker))
    }

    /// Registers `message`'s requester and returns a copy of the request
    /// whose replies come to this router's inbox on `adapter` and `broker`.
    pub async fn stamp(
        &self,
        adapter: &str,
        broker: &str,
        message: &Message,
    ) -> Result<Stamped, SendError> {
        let Some(reply_to) = message.reply_to.clone() else {
            return Ok(Stamped {
                message: message.clone(),
                token: 0,
            });
        };
        let inbox = self.inbox(adapter, broker).await?;
        if self.pending_count.load(Ordering::Relaxed) >= MAX_PENDING {
            return Err(SendError::unreachable(format!(
                "{MAX_PENDING} requests already wait for replies"
            )));
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.shard(token).insert(
            token,
            Pending {
                reply_to,
                correlation_id: message.properties.correlation_id.clone(),
                correlation_data: message.properties.correlation_data.clone(),
                since: Instant::now(),
            },
        );
        self.pending_count.fetch_add(1, Ordering::Relaxed);
        let mut stamped = message.clone();
        inbox.stamp(&format!("{token:x}"), &mut stamped);
        Ok(Stamped {
            message: stamped,
            token,
        })
    }

    /// Forgets a request whose send failed: no reply will come.
    pub fn forget(&self, stamped: Stamped) {
        self.take(stamped.token);
    }

    fn shard(&self, token: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        // Tokens are sequential: their low bits spread them evenly.
        self.pending[token as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, token: u64) -> Option<Pending> {
        let pending = self.shard(token).remove(&token);
        if pending.is_some() {
            self.pending_count.fetch_sub(1, Ordering::Relaxed);
        }
        pending
    }

    async fn inbox(&self, adapter: &str, broker: &str) -> Result<Arc<dyn ReplyInbox>, SendError> {
        let key = (adapter.to_owned(), broker.to_owned());
        if let Some(inbox) = self.inboxes.load().get(&key) {
            return Ok(inbox.clone());
        }
        let _one_at_a_time = self.opening.lock().await;
        if let Some(inbox) = self.inboxes.load().get(&key) {
            return Ok(inbox.clone());
        }
        let replies = self
            .adapters
            .get(adapter)
            .ok_or_else(|| SendError::rejected(format!("adapter {adapter:?} is not built in")))?
            .replies()
            .ok_or_else(|| {
                SendError::rejected(format!(
                    "cannot proxy the reply: the {adapter} adapter has no reply inbox"
                ))
            })?;
        let inbox = replies
            .reply_inbox(broker, &self.router_id, self.replies.clone())
            .await
            .map_err(|error| SendError::unreachable(format!("opening the reply inbox: {error}")))?;
        tracing::info!(%adapter, broker = %baker_adapter_api::redact_url(broker),
            "reply inbox open: replies from this broker are forwarded to requesters");
        self.inboxes.rcu(|inboxes| {
            let mut inboxes = HashMap::clone(inboxes);
            inboxes.insert(key.clone(), inbox.clone());
            inboxes
        });
        Ok(inbox)
    }

    /// Sends each reply to its requester, and forgets requests whose reply
    /// did not come within [`REPLY_TIMEOUT`]. Returns at shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let Some(mut incoming) = self
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut sending = FuturesUnordered::new();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                _ = &mut cancelled => return,
                _ = sweep.tick() => self.expire(),
                Some(()) = sending.next(), if !sending.is_empty() => {}
                reply = incoming.recv(), if sending.len() < FORWARDING_WINDOW => {
                    let Some(reply) = reply else { return };
                    sending.push(self.forward(reply));
                }
            }
        }
    }

    async fn forward(&self, reply: Reply) {
        let Reply { token, mut message } = reply;
        let Some(pending) = u64::from_str_radix(&token, 16)
            .ok()
            .and_then(|t| self.take(t))
        else {
            metrics::counter!("baker_replies_total", "outcome" => "unmatched").increment(1);
            return;
        };
        message.properties.correlation_id = pending.correlation_id;
        message.properties.correlation_data = pending.correlation_data;
        message.reply_to = None;
        message.native = None;
        let Some(replies) = self.ingress.replies() else {
            metrics::counter!("baker_replies_total", "outcome" => "failed").increment(1);
            return;
        };
        let outcome = match replies
            .send_reply(&self.ingress_broker, &pending.reply_to, &message)
            .await
        {
            Ok(()) => "forwarded",
            Err(error) => {
                tracing::debug!(%error, "could not forward a reply to its requester");
                "failed"
            }
        };
        metrics::counter!("baker_replies_total", "outcome" => outcome).increment(1);
    }

    fn expire(&self) {
        let mut expired = 0;
        for shard in &self.pending {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = shard.len();
            shard.retain(|_, p| p.since.elapsed() < REPLY_TIMEOUT);
            expired += before - shard.len();
        }
        if expired > 0 {
            self.pending_count.fetch_sub(expired, Ordering::Relaxed);
            metrics::counter!("baker_replies_total", "outcome" => "timed_out")
                .increment(expired as u64);
        }
    }
}
