//! Publishing with confirms, settled in publish order by one task per
//! broker link.
//!
//! Why in order: lapin pairs a returned (unroutable) message with whichever
//! confirm it resolves next, and resolves the confirms of one
//! `multiple` ack in no particular order, so under load the return of
//! message A can arrive on the confirm of message B, which would then be
//! retried while A counted as delivered and was lost. Every publish is
//! handed to lapin and queued among the confirms awaited in one step, under
//! the link's lock, so the queue is in publish order; the task settles the
//! queue's head, and on each ack takes all confirms that are already
//! resolved, collects every returned message among them, and matches
//! returns to messages by their `baker-msg-id` header and routing key (the
//! inbox queue, which tells the copies of a broadcast apart), not by which
//! confirm carried them. (RabbitMQ sends a message's return before its ack,
//! so by the time a message's confirm resolves its return, if any, is on a
//! resolved confirm.)
//!
//! While the link has a usable channel, a sender publishes itself, with no
//! hop through the task; while it has none, its publishes go to the task,
//! which connects (once for all of them) or fails them at once while the
//! broker is unreachable.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use baker_adapter_api::{header, Cause, SendError};
use bytes::Bytes;
use futures::FutureExt;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};

use crate::link::{redact, Link};
use crate::AmqpError;

/// One message to publish.
pub struct Publish {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    /// Ask the broker to return the message when no queue takes it.
    pub mandatory: bool,
    pub payload: Bytes,
    pub properties: BasicProperties,
}

struct Request {
    publish: Publish,
    reply: oneshot::Sender<Result<(), SendError>>,
}

/// A publish on its way: being written by lapin's I/O thread, then
/// awaiting the broker's confirm.
enum Stage {
    Writing(Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>),
    Confirming(PublisherConfirm),
}

struct InFlight {
    stage: Stage,
    /// Message id and routing key: what identifies a returned message. The
    /// routing key (the inbox queue) tells apart the copies of a broadcast,
    /// which share their message id.
    key: Option<(String, ShortString)>,
    reply: oneshot::Sender<Result<(), SendError>>,
    sent: Instant,
}

impl InFlight {
    /// Polls the publish on, its write then its confirm.
    fn poll_verdict(&mut self, cx: &mut Context<'_>) -> Poll<lapin::Result<Confirmation>> {
        loop {
            match &mut self.stage {
                Stage::Writing(write) => match ready!(write.as_mut().poll(cx)) {
                    Ok(confirm) => self.stage = Stage::Confirming(confirm),
                    Err(error) => return Poll::Ready(Err(error)),
                },
                Stage::Confirming(confirm) => return Pin::new(confirm).poll(cx),
            }
        }
    }

    /// The verdict, if it is already there.
    fn verdict_now(&mut self) -> Option<lapin::Result<Confirmation>> {
        std::future::poll_fn(|cx| self.poll_verdict(cx)).now_or_never()
    }
}

/// How long a publish may wait for its confirm. A broker that blocks
/// publishers (a memory or disk alarm) confirms nothing; past this the
/// message counts as unreachable, goes back to the ingress for redelivery,
/// and no longer holds a place in the router's in-flight window.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Handle to a link's publishing: its publisher task and what it shares
/// with the task.
#[derive(Clone)]
pub struct Publisher {
    requests: mpsc::Sender<Request>,
    link: Arc<Link>,
    confirms: Arc<Confirms>,
}

/// Most requests waiting for the task; senders wait beyond it.
const QUEUE: usize = 4096;

fn message_id(properties: &BasicProperties) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(header::MSG_ID)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

impl Publisher {
    /// Starts the publisher task of `link`.
    pub fn start(link: Arc<Link>) -> Self {
        let (requests, receiver) = mpsc::channel(QUEUE);
        let confirms = Arc::new(Confirms::default());
        tokio::spawn(run(link.clone(), confirms.clone(), receiver));
        Self {
            requests,
            link,
            confirms,
        }
    }

    /// Publishes and waits for the broker's verdict.
    pub async fn publish(&self, publish: Publish) -> Result<(), SendError> {
        let (reply, verdict) = oneshot::channel();
        let request = Request { publish, reply };
        match self.link.usable() {
            Some(channel) => self.confirms.publish(&self.link, channel, request),
            None => self
                .requests
                .send(request)
                .await
                .map_err(|_| SendError::unreachable("publisher stopped".to_owned()))?,
        }
        verdict
            .await
            .unwrap_or_else(|_| Err(SendError::unreachable("publisher stopped".to_owned())))
    }
}

/// The publishes awaiting their confirm, in publish order, shared by the
/// senders that queue them and the task that settles them.
#[derive(Default)]
struct Confirms(Mutex<Queue>);

#[derive(Default)]
struct Queue {
    in_flight: VecDeque<InFlight>,
    returned: HashSet<(String, ShortString)>,
    /// The task, while it has no confirm to wait for: the sender that
    /// queues the next one wakes it.
    idle: Option<Waker>,
}

impl Confirms {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `request`'s publish to lapin on `channel` and queues it for
    /// its confirm, in one step, so the queue is in publish order.
    fn publish(&self, link: &Link, channel: Channel, Request { publish, reply }: Request) {
        let key = message_id(&publish.properties).map(|id| (id, publish.routing_key.clone()));
        // Handed over, not waited for: polled once, the publish is queued
        // for lapin's I/O thread, in order, and the sender goes on to wait
        // for its verdict. Its write is awaited with its confirm (waiting
        // for each write cost 1.5 times the CPU per message,
        // docs/benchmarks.md).
        let Publish {
            exchange,
            routing_key,
            mandatory,
            payload,
            properties,
        } = publish;
        let mut write: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            let options = BasicPublishOptions {
                mandatory,
                ..Default::default()
            };
            (channel.basic_publish(exchange, routing_key, options, &payload, properties)).await
        });
        let mut queue = self.queue();
        let stage = match (&mut write).now_or_never() {
            None => Stage::Writing(write),
            Some(Ok(confirm)) => Stage::Confirming(confirm),
            Some(Err(error)) => {
                drop(queue);
                if link.usable().is_none() {
                    link.reset();
                }
                let _ = reply.send(Err(SendError::unreachable(Cause::new(error))));
                return;
            }
        };
        queue.in_flight.push_back(InFlight {
            stage,
            key,
            reply,
            sent: Instant::now(),
        });
        let idle = queue.idle.take();
        drop(queue);
        if let Some(task) = idle {
            task.wake();
        }
    }

    /// The verdict of the oldest publish awaiting one; pending (and the
    /// task woken by the next publish) while there is none.
    fn poll_first(&self, cx: &mut Context<'_>) -> Poll<lapin::Result<Confirmation>> {
        let mut queue = self.queue();
        match queue.in_flight.front_mut() {
            Some(first) => first.poll_verdict(cx),
            None => {
                queue.idle = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Fails the publishes that have waited longer than
    /// [`CONFIRM_TIMEOUT`].
    fn expire(&self, link: &Link) {
        let mut queue = self.queue();
        while queue
            .in_flight
            .front()
            .is_some_and(|f| f.sent.elapsed() > CONFIRM_TIMEOUT)
        {
            let expired = queue.in_flight.pop_front().expect("checked");
            let reason = match expired.stage {
                // A connection whose broker stopped reading fills its
                // socket buffer, and then nothing more is written: it is
                // given up, and the next send connects again.
                Stage::Writing(_) => {
                    link.abandon();
                    format!(
                        "the broker took no publish within {} s",
                        CONFIRM_TIMEOUT.as_secs()
                    )
                }
                Stage::Confirming(_) => format!(
                    "no confirm from the broker within {} s",
                    CONFIRM_TIMEOUT.as_secs()
                ),
            };
            let _ = expired.reply.send(Err(SendError::unreachable(reason)));
        }
    }

    /// Settles the oldest publish, whose confirm is `first`, and every
    /// following one whose confirm is already there.
    fn settle(&self, link: &Link, first: lapin::Result<Confirmation>) {
        let mut queue = self.queue();
        let Some(head) = queue.in_flight.pop_front() else {
            return;
        };
        let mut batch = vec![(head, first)];
        while let Some(next) = queue.in_flight.front_mut() {
            match next.verdict_now() {
                Some(result) => {
                    batch.push((queue.in_flight.pop_front().expect("checked"), result));
                }
                None => break,
            }
        }
        for (_, result) in &batch {
            if let Ok(Confirmation::Ack(Some(message)) | Confirmation::Nack(Some(message))) = result
            {
                if let Some(id) = message_id(&message.delivery.properties) {
                    queue
                        .returned
                        .insert((id, message.delivery.routing_key.clone()));
                }
            }
        }
        for (entry, result) in batch {
            let was_returned = entry
                .key
                .as_ref()
                .is_some_and(|key| queue.returned.remove(key));
            let verdict = match result {
                Ok(_) if was_returned => Err(SendError::unavailable(
                    "no queue took the message (returned by the broker)".to_owned(),
                )),
                Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => Ok(()),
                // RabbitMQ nacks for passing reasons (a quorum queue without
                // a leader, a full queue rejecting publishes): redeliver
                // rather than dead-letter.
                Ok(Confirmation::Nack(_)) => Err(SendError::unreachable(
                    "the broker did not take the message (nack)".to_owned(),
                )),
                Err(error) => {
                    link.reset();
                    Err(SendError::unreachable(Cause::new(error)))
                }
            };
            let _ = entry.reply.send(verdict);
        }
    }
}

/// How often a lost connection is re-established while nothing is sent,
/// so that health shows the truth and the first message after an outage
/// does not pay for the reconnection.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// A connection attempt running beside the publisher task.
type Connecting = Pin<Box<dyn Future<Output = Result<Channel, AmqpError>> + Send>>;

/// The publisher task's state.
struct Task {
    link: Arc<Link>,
    confirms: Arc<Confirms>,
    /// The connection attempt in progress, if any. It runs beside the task,
    /// which goes on settling confirms and answering requests meanwhile.
    connecting: Option<Connecting>,
    /// The last connection attempt failed: requests fail at once, rather
    /// than each waiting for an attempt of its own, until one succeeds.
    unreachable: Option<Cause>,
    /// Requests waiting for the attempt in progress (a first connection, or
    /// a reconnection right after a connection was lost).
    waiting: Vec<Request>,
}

async fn run(link: Arc<Link>, confirms: Arc<Confirms>, mut requests: mpsc::Receiver<Request>) {
    let mut task = Task {
        link,
        confirms,
        connecting: None,
        unreachable: None,
        waiting: Vec::new(),
    };
    let mut reconnect = tokio::time::interval(RECONNECT_EVERY);
    reconnect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            // Checked on a timer, not as a select! precondition: a condition
            // is only evaluated when the select! starts, and an idle link
            // loses its connection while the task waits.
            _ = reconnect.tick() => {
                task.confirms.expire(&task.link);
                if task.connecting.is_none()
                    && !task.link.connected()
                    && (task.link.was_connected() || task.unreachable.is_some())
                {
                    task.start_connecting();
                }
            }
            connected = async { task.connecting.as_mut().expect("guarded").await }, if task.connecting.is_some() => {
                task.connecting = None;
                task.connected(connected);
            }
            first = std::future::poll_fn(|cx| task.confirms.poll_first(cx)) => {
                task.confirms.settle(&task.link, first);
            }
            request = requests.recv() => {
                let Some(request) = request else { return };
                task.request(request);
            }
        }
    }
}

impl Task {
    fn start_connecting(&mut self) {
        let link = self.link.clone();
        self.connecting = Some(Box::pin(async move { link.channel().await }));
    }

    fn connected(&mut self, result: Result<Channel, AmqpError>) {
        match result {
            Ok(_) => {
                if self.unreachable.take().is_some() {
                    tracing::info!(broker = %redact(self.link.url()), "AMQP broker reachable again");
                }
                for request in std::mem::take(&mut self.waiting) {
                    self.publish(request);
                }
            }
            Err(error) => {
                let error = Cause::new(error);
                if self.unreachable.is_none() {
                    tracing::warn!(%error, "AMQP broker unreachable; sends to it fail until it answers again");
                }
                for request in self.waiting.drain(..) {
                    let _ = request
                        .reply
                        .send(Err(SendError::unreachable(error.clone())));
                }
                self.unreachable = Some(error);
            }
        }
    }

    fn request(&mut self, request: Request) {
        if self.link.usable().is_some() {
            self.publish(request);
        } else if let Some(error) = &self.unreachable {
            let _ = request
                .reply
                .send(Err(SendError::unreachable(error.clone())));
        } else {
            self.waiting.push(request);
            if self.connecting.is_none() {
                self.start_connecting();
            }
        }
    }

    fn publish(&mut self, request: Request) {
        match self.link.usable() {
            Some(channel) => self.confirms.publish(&self.link, channel, request),
            None => {
                let _ = request
                    .reply
                    .send(Err(SendError::unreachable("connection lost".to_owned())));
            }
        }
    }
}
