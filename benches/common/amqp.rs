//! What the AMQP benches (`amqp_e2e`, `amqp_client`) share: the broker's
//! URL, connecting with a time limit, queues, the broker's process, and the
//! load generator every AMQP path is measured with ([`AmqpRoute`]: a
//! publisher with confirms on its own connection, a consumer with manual,
//! batched acks on another, both lapin), so that paths differ only in what
//! lies between the two.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::confirms::{Confirm, Confirms};
use super::cpu::{cmdline, pids_named};
use super::measure::{Closed, Consumer, Next, Path, Published, Publisher, Route};
use super::procs::run_tool;
use super::stamp::now_ns;

/// Longest wait for one AMQP operation (connect, declare, close...).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one `rabbitmqctl` / `rabbitmq-plugins` command.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// The consumer acks (with `multiple`) at least every this many deliveries,
/// and whenever no delivery is waiting.
pub const ACK_BATCH: u64 = 64;

/// The broker URL without vhost, e.g. `amqp://guest:guest@127.0.0.1:5672`.
pub fn amqp_base() -> String {
    std::env::var("BAKER_BENCH_AMQP_URL")
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_owned())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn vhost_uri(vhost: &str) -> String {
    format!("{}/{}", amqp_base(), urlencode(vhost))
}

/// The broker URL with its password hidden, for the report.
pub fn shown_broker() -> String {
    let base = amqp_base();
    match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}{}", &base[..s + 3], &base[a + 1..]),
        _ => base,
    }
}

pub fn rabbit_ctl(tool: &str, args: &[&str]) -> Result<String, String> {
    run_tool(tool, args, CTL_TIMEOUT)
}

// ---------------------------------------------------------------------------
// AMQP helpers.

/// Awaits `future` for at most `OP_TIMEOUT`; its value, or what went wrong.
pub async fn attempt<T, E: Display>(
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, future).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
    }
}

/// Awaits `future` for at most `OP_TIMEOUT`; panics with `what` when it
/// takes longer or fails.
pub async fn within<T, E: Display>(what: &str, future: impl Future<Output = Result<T, E>>) -> T {
    attempt(future)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub async fn connect(vhost: &str, name: &str) -> Connection {
    let uri = vhost_uri(vhost);
    within(
        &format!("connecting to {} vhost {vhost}", shown_broker()),
        Connection::connect(
            &uri,
            ConnectionProperties::default().with_connection_name(name.into()),
        ),
    )
    .await
}

/// Messages in `queue` (passive declare on a channel of its own), or why not.
pub async fn queue_depth(connection: &Connection, queue: &str) -> Result<u32, String> {
    let channel = attempt(connection.create_channel()).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared =
        attempt(channel.queue_declare(queue.into(), passive, FieldTable::default())).await;
    let _ = attempt(channel.close(200, "done".into())).await;
    declared.map(|q| q.message_count())
}

// ---------------------------------------------------------------------------
// The paths.

/// One way from the publisher to the consumer.
pub struct AmqpRoute {
    /// The path's name, for errors.
    pub name: &'static str,
    /// In confirm mode, on `publisher_conn`.
    pub publisher: Channel,
    pub publisher_conn: Connection,
    pub consumer: Connection,
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    /// At most this many unconfirmed publishes.
    pub window: usize,
    pub prefetch: u16,
}

impl Route for AmqpRoute {
    type Consumer = AmqpConsumer;
    type Publisher = AmqpPublisher;

    /// A channel of its own with the prefetch, consuming the path's queue.
    async fn consume(&self, tag: u64) -> AmqpConsumer {
        let name = self.name;
        let channel = within(
            &format!("[{name}] consumer channel"),
            self.consumer.create_channel(),
        )
        .await;
        within(
            &format!("[{name}] basic.qos"),
            channel.basic_qos(self.prefetch, BasicQosOptions::default()),
        )
        .await;
        let consumer = within(
            &format!("[{name}] consuming {}", self.queue),
            channel.basic_consume(
                self.queue.as_str().into(),
                format!("bench-{tag}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await;
        AmqpConsumer {
            channel,
            consumer,
            last: None,
            unacked: 0,
            error: None,
            headers: None,
            delivery_mode: None,
        }
    }

    fn publisher(&self, _tag: u64) -> AmqpPublisher {
        AmqpPublisher {
            channel: self.publisher.clone(),
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            confirms: Confirms::new(self.window),
        }
    }
}

pub struct AmqpConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
    /// The latest delivery not yet acked.
    last: Option<Acker>,
    unacked: u64,
    error: Option<String>,
    /// Header names of the first message, for the record.
    headers: Option<Vec<String>>,
    /// Its delivery mode (2: persistent), for the record.
    delivery_mode: Option<u8>,
}

impl AmqpConsumer {
    /// Acks everything delivered so far (the latest delivery, with
    /// `multiple`).
    async fn settle(&mut self) {
        if let Some(acker) = self.last.take() {
            self.unacked = 0;
            if let Err(e) = attempt(acker.ack(BasicAckOptions { multiple: true })).await {
                self.error.get_or_insert(format!("ack: {e}"));
            }
        }
    }
}

impl Consumer for AmqpConsumer {
    async fn receive(&mut self, wait: Duration) -> Next {
        let next = match self.consumer.next().now_or_never() {
            Some(next) => next,
            None => {
                // Nothing waiting: settle what was received, then wait.
                self.settle().await;
                match tokio::time::timeout(wait, self.consumer.next()).await {
                    Ok(next) => next,
                    Err(_) => return Next::Idle,
                }
            }
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return Next::Ended(format!("consume: {e}")),
            None => return Next::Ended("consumer cancelled".to_owned()),
        };
        let at = now_ns();
        if self.headers.is_none() {
            let headers = delivery.properties.headers().as_ref();
            let names = headers.map(|h| h.inner().keys().map(|k| k.to_string()).collect());
            self.headers = Some(names.unwrap_or_default());
            self.delivery_mode = *delivery.properties.delivery_mode();
        }
        self.last = Some(delivery.acker);
        self.unacked += 1;
        if self.unacked >= ACK_BATCH {
            self.settle().await;
        }
        Next::Message {
            at,
            payload: delivery.data.into(),
            redelivered: delivery.redelivered,
        }
    }

    async fn close(mut self) -> Closed {
        self.settle().await;
        // Closing the channel returns anything prefetched but not acked (a
        // late duplicate, say) to the queue, where a later run counts it as
        // stale.
        let _ = attempt(self.channel.close(200, "done".into())).await;
        Closed {
            error: self.error,
            note: (self.headers).map(|h| {
                let mode = self.delivery_mode;
                format!("headers of a delivered message: {h:?}, delivery mode {mode:?}")
            }),
        }
    }
}

/// Persistent, mandatory publishes with at most `window` unconfirmed.
pub struct AmqpPublisher {
    channel: Channel,
    exchange: String,
    routing_key: String,
    confirms: Confirms,
}

impl Publisher for AmqpPublisher {
    async fn publish(&mut self, payload: Vec<u8>, out: &mut Published) -> bool {
        if !self.confirms.room(out).await {
            return false;
        }
        let channel = self.channel.clone();
        let exchange = self.exchange.as_str().into();
        let routing_key = self.routing_key.as_str().into();
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let properties = BasicProperties::default().with_delivery_mode(2);
        let confirm = async move {
            // Resolves once the frames are written; then to the confirm.
            let publish =
                channel.basic_publish(exchange, routing_key, options, &payload, properties);
            match publish.await?.await? {
                Confirmation::Ack(None) => Ok(Confirm::Kept),
                Confirmation::Ack(Some(_)) => Ok(Confirm::Returned),
                Confirmation::Nack(_) => Ok(Confirm::Nacked),
                Confirmation::NotRequested => {
                    Ok(Confirm::Failed("publisher confirms not enabled".to_owned()))
                }
            }
        };
        let confirm =
            confirm.map(|c: lapin::Result<_>| c.unwrap_or_else(|e| Confirm::Failed(e.to_string())));
        // Hand the new message to the connection now, and count confirms.
        self.confirms.push_now(confirm, out);
        out.errors == 0
    }

    async fn finish(mut self, out: &mut Published) {
        self.confirms.drain(out).await;
    }
}

/// Publisher (confirm mode) and consumer connections on `vhost`.
pub async fn open_path(
    name: &'static str,
    vhost: &str,
    (exchange, routing_key, queue): (&str, &str, &str),
    hop: Option<u32>,
    (window, prefetch): (usize, u16),
) -> Path<AmqpRoute> {
    let publisher_conn = connect(vhost, &format!("baker-bench-{name}-publisher")).await;
    let consumer = connect(vhost, &format!("baker-bench-{name}-consumer")).await;
    let publisher = within("publisher channel", publisher_conn.create_channel()).await;
    within(
        "confirm.select",
        publisher.confirm_select(ConfirmSelectOptions::default()),
    )
    .await;
    let route = AmqpRoute {
        name,
        publisher,
        publisher_conn,
        consumer,
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        queue: queue.to_owned(),
        window,
        prefetch,
    };
    Path { name, hop, route }
}

/// Declares `queues` (durable) on `vhost`.
pub async fn declare_queues(vhost: &str, queues: &[&str]) {
    let admin = connect(vhost, "baker-bench-setup").await;
    let channel = within("setup channel", admin.create_channel()).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for queue in queues {
        let declared = channel.queue_declare((*queue).into(), durable, FieldTable::default());
        within(&format!("declaring queue {queue}"), declared).await;
    }
    let _ = attempt(admin.close(200, "done".into())).await;
}

/// The pid of the local RabbitMQ node: the `beam.smp` started with
/// `-s rabbit boot` (not the short-lived ones of `rabbitmqctl`), or the only
/// `beam.smp` there is.
pub fn broker_pid() -> Option<String> {
    let mut beams = pids_named("beam.smp");
    let mut rabbits: Vec<String> = beams
        .iter()
        .filter(|pid| cmdline(pid).contains(" rabbit boot"))
        .cloned()
        .collect();
    match (rabbits.len(), beams.len()) {
        (1, _) => Some(rabbits.remove(0)),
        (_, 1) => Some(beams.remove(0)),
        _ => None,
    }
}

/// The plan of both AMQP benches: one load published as fast as confirms
/// allow (at most `window` unconfirmed), latency each round, RabbitMQ as
/// the broker whose CPU is counted.
pub fn burst_plan(window: usize, sizes: super::rounds::Sizes) -> super::rounds::Plan {
    use super::measure::{Mode, Timing};
    use super::rounds::{Load, Plan};
    Plan {
        loads: vec![Load {
            label: "throughput",
            mode: Mode::Burst,
            about: format!("published as fast as confirms allow (at most {window} unconfirmed)"),
            loss_ok: false,
        }],
        latency_each_round: true,
        timing: Timing {
            quiet: Duration::from_secs(5),
            linger: Duration::ZERO,
        },
        pause: Duration::from_millis(500),
        broker: broker_pid().into_iter().collect(),
        strict: true,
        sizes,
    }
}
