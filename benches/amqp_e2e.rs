//! End-to-end throughput and latency over a real RabbitMQ broker, three paths
//! with the same at-least-once guarantee (persistent messages, publisher
//! confirms, manual consumer acks), in one run, each on a fresh vhost of its
//! own:
//!
//! * `direct`:   publisher → durable queue → consumer;
//! * `shovel`:   publisher → durable queue `bench.src` → RabbitMQ's own
//!   Shovel plugin (a dynamic shovel, `ack-mode` `on-confirm`, running inside
//!   the broker) → durable queue `bench.dst` → consumer: the broker's own
//!   answer to the same forwarding job;
//! * `baker-mq`: publisher → topic exchange `baker`, routing key
//!   `<svc>.work` → `baker.ingress` → a `baker-mq --adapter amqp` sidecar
//!   (with its own `baker-mq directory`) → the instance inbox
//!   `_baker.<svc>.i1` → consumer.
//!
//! Per path and round, interleaved across paths round by round:
//!
//! * throughput: `BAKER_BENCH_AMQP_MESSAGES` messages published as fast as
//!   publisher confirms allow (at most `BAKER_BENCH_AMQP_CONFIRM_WINDOW`
//!   unconfirmed), consumed with manual acks (prefetch
//!   `BAKER_BENCH_AMQP_PREFETCH`, acks batched with `multiple`); received
//!   msgs/s, with the CPU time the bench, the hop (baker-mq) and the broker
//!   (beam.smp) spent per message (Linux /proc). Every confirmed message must
//!   arrive: losses fail the bench (after the report), duplicates are
//!   reported;
//! * latency: `BAKER_BENCH_AMQP_LATENCY_MESSAGES` paced at
//!   `BAKER_BENCH_AMQP_RATE` msg/s, p50/p99 from the send time each payload
//!   carries (see `common::stamp`: the send time, the sequence number and
//!   the run's tag).
//!
//! `BAKER_BENCH_ROUNDS` rounds (default 3), medians. `BAKER_BENCH_PAYLOAD`
//! sets the payload size, `BAKER_BENCH_TIMEOUT_SECS` the overall limit,
//! `BAKER_BENCH_AMQP_URL` the broker without vhost (default
//! `amqp://guest:guest@127.0.0.1:5672`). Vhosts are created and deleted
//! with `rabbitmqctl` (also on panic, timeout and Ctrl-C), and
//! `rabbitmq-plugins enable rabbitmq_shovel` is run at the start. The
//! harness in `common` measures and reports; this file holds what is
//! RabbitMQ's own: vhosts, the paths, the Shovel and the sidecar's
//! arguments.
//!
//! When `baker-mq --adapter amqp` does not start (a build without the AMQP
//! adapter exits at once with "unknown adapter"), the `baker-mq` path is
//! skipped with a message and the other two are still measured.
//!
//! Run with `cargo bench --bench amqp_e2e`; quick run:
//! `BAKER_BENCH_AMQP_MESSAGES=5000 BAKER_BENCH_AMQP_LATENCY_MESSAGES=500 BAKER_BENCH_ROUNDS=1 cargo bench --bench amqp_e2e`.
//! Without `--bench` on its command line (e.g. `cargo test --benches`) it
//! does nothing, so test runs need no broker.

mod common;

use std::fmt::Display;
use std::future::Future;
use std::path::Path as FsPath;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use common::baker::{start_directory, start_sidecar, Sidecar};
use common::confirms::{Confirm, Confirms};
use common::cpu::{cmdline, pids_named};
use common::measure::{Closed, Consumer, Mode, Next, Path, Published, Publisher, Route, Timing};
use common::procs::{bench_main, run_tool, stop_child, Created};
use common::report::{self, Report};
use common::rounds::{self, Load, Plan, Sizes};
use common::stamp::now_ns;
use common::{env_or, run_id};

/// Time with no message, once publishing is done, after which a run ends
/// (and counts what did not arrive as lost).
const QUIET: Duration = Duration::from_secs(5);
/// Longest wait for one AMQP operation (connect, declare, close...).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one `rabbitmqctl` / `rabbitmq-plugins` command.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// The consumer acks (with `multiple`) at least every this many deliveries,
/// and whenever no delivery is waiting.
const ACK_BATCH: u64 = 64;
const SHOVEL_SRC: &str = "bench.src";
const SHOVEL_DST: &str = "bench.dst";

/// The broker URL without vhost, e.g. `amqp://guest:guest@127.0.0.1:5672`.
fn amqp_base() -> String {
    std::env::var("BAKER_BENCH_AMQP_URL")
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_owned())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn urlencode(text: &str) -> String {
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

fn vhost_uri(vhost: &str) -> String {
    format!("{}/{}", amqp_base(), urlencode(vhost))
}

/// The broker URL with its password hidden, for the report.
fn shown_broker() -> String {
    let base = amqp_base();
    match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}{}", &base[..s + 3], &base[a + 1..]),
        _ => base,
    }
}

fn rabbit_ctl(tool: &str, args: &[&str]) -> Result<String, String> {
    run_tool(tool, args, CTL_TIMEOUT)
}

// ---------------------------------------------------------------------------
// Vhosts: removed at the end by the harness's cleanup hook (also on panic,
// timeout and signal).

static VHOSTS: Created = Created::new();

fn delete_vhosts() {
    for vhost in VHOSTS.take() {
        match rabbit_ctl("rabbitmqctl", &["delete_vhost", &vhost]) {
            Ok(_) => eprintln!("deleted vhost {vhost}"),
            Err(e) => eprintln!("could not delete vhost {vhost}: {e}"),
        }
    }
}

/// Creates `vhost` with full permissions for guest; registered for deletion
/// before it is created.
fn add_vhost(vhost: &str) {
    VHOSTS.add(vhost);
    rabbit_ctl("rabbitmqctl", &["add_vhost", vhost]).unwrap_or_else(|e| panic!("{e}"));
    rabbit_ctl(
        "rabbitmqctl",
        &["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("created vhost {vhost}");
}

// ---------------------------------------------------------------------------
// AMQP helpers.

/// Awaits `future` for at most `OP_TIMEOUT`; its value, or what went wrong.
async fn attempt<T, E: Display>(future: impl Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, future).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
    }
}

/// Awaits `future` for at most `OP_TIMEOUT`; panics with `what` when it
/// takes longer or fails.
async fn within<T, E: Display>(what: &str, future: impl Future<Output = Result<T, E>>) -> T {
    attempt(future)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn connect(vhost: &str, name: &str) -> Connection {
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
async fn queue_depth(connection: &Connection, queue: &str) -> Result<u32, String> {
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
struct AmqpRoute {
    /// The path's name, for errors.
    name: &'static str,
    /// In confirm mode, on `publisher_conn`.
    publisher: Channel,
    publisher_conn: Connection,
    consumer: Connection,
    exchange: String,
    routing_key: String,
    queue: String,
    /// At most this many unconfirmed publishes.
    window: usize,
    prefetch: u16,
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

struct AmqpConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
    /// The latest delivery not yet acked.
    last: Option<Acker>,
    unacked: u64,
    error: Option<String>,
    /// Header names of the first message, for the record.
    headers: Option<Vec<String>>,
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
            note: (self.headers).map(|h| format!("headers of a delivered message: {h:?}")),
        }
    }
}

/// Persistent, mandatory publishes with at most `window` unconfirmed.
struct AmqpPublisher {
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
async fn open_path(
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
async fn declare_queues(vhost: &str, queues: &[&str]) {
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

/// Declares the Shovel's two queues on `vhost` and defines the shovel
/// between them.
async fn start_shovel(vhost: &str) {
    declare_queues(vhost, &[SHOVEL_SRC, SHOVEL_DST]).await;
    let uri = format!("amqp://guest:guest@127.0.0.1/{}", urlencode(vhost));
    let definition = serde_json::json!({
        "src-protocol": "amqp091",
        "src-uri": uri,
        "src-queue": SHOVEL_SRC,
        "dest-protocol": "amqp091",
        "dest-uri": uri,
        "dest-queue": SHOVEL_DST,
        "ack-mode": "on-confirm",
    })
    .to_string();
    let vhost = vhost.to_owned();
    tokio::task::spawn_blocking(move || {
        let args = ["set_parameter", "-p", &vhost, "shovel", "bench-shovel"];
        rabbit_ctl("rabbitmqctl", &[&args[..], &[&definition]].concat())
    })
    .await
    .expect("rabbitmqctl thread")
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("shovel {SHOVEL_SRC} -> {SHOVEL_DST} defined");
}

/// Starts `baker-mq directory` and a `baker-mq --adapter amqp` sidecar on
/// `vhost`; the sidecar and its service, or why not (and both stopped).
async fn start_baker(run: &str, vhost: &str, logs: &FsPath) -> Result<(Sidecar, String), String> {
    let directory = start_directory(logs).await?;
    let service = format!("bsvc{run}");
    let args = [
        "--adapter",
        "amqp",
        "--broker",
        &vhost_uri(vhost),
        "--register",
        &format!("service={service},id=i1"),
    ];
    let log = logs.join("sidecar.log");
    match start_sidecar("baker-mq sidecar", &directory, &args, &service, log).await {
        Ok(sidecar) => Ok((sidecar, service)),
        Err(e) => {
            stop_child(directory.pid);
            let why = if e.contains("unknown adapter") {
                "this baker-mq has no AMQP adapter yet"
            } else {
                "it did not become ready"
            };
            Err(format!(
                "`baker-mq --adapter amqp` did not start: {why}\n{e}"
            ))
        }
    }
}

/// The pid of the local RabbitMQ node: the `beam.smp` started with
/// `-s rabbit boot` (not the short-lived ones of `rabbitmqctl`), or the only
/// `beam.smp` there is.
fn broker_pid() -> Option<String> {
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

async fn bench() -> bool {
    let sizes = Sizes::from_env(
        ("BAKER_BENCH_AMQP_MESSAGES", 50_000),
        ("BAKER_BENCH_AMQP_LATENCY_MESSAGES", 5_000),
        ("BAKER_BENCH_AMQP_RATE", 1_000),
    );
    let window: usize = env_or("BAKER_BENCH_AMQP_CONFIRM_WINDOW", 1_000);
    let prefetch: u16 = env_or("BAKER_BENCH_AMQP_PREFETCH", 1_000);
    assert!(
        window > 0 && prefetch > 0,
        "the confirm window and prefetch must be positive"
    );
    let run = run_id();
    let logs = tempfile::tempdir().expect("temp dir");
    rabbit_ctl("rabbitmq-plugins", &["enable", "rabbitmq_shovel"])
        .unwrap_or_else(|e| panic!("cannot enable the shovel plugin: {e}"));
    let version = rabbit_ctl("rabbitmqctl", &["version"])
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let vhost = |path: &str| format!("baker-bench-{path}-{run}");
    for path in ["direct", "shovel", "baker"] {
        add_vhost(&vhost(path));
    }

    let flow = (window, prefetch);
    let direct = ("", "bench.direct", "bench.direct");
    declare_queues(&vhost("direct"), &["bench.direct"]).await;
    let mut paths = vec![open_path("direct", &vhost("direct"), direct, None, flow).await];
    start_shovel(&vhost("shovel")).await;
    let shovel = ("", SHOVEL_SRC, SHOVEL_DST);
    paths.push(open_path("shovel", &vhost("shovel"), shovel, None, flow).await);
    let mut skipped = Vec::new();
    let mut baker = None;
    match start_baker(&run, &vhost("baker"), logs.path()).await {
        Ok((sidecar, service)) => {
            let inbox = format!("_baker.{service}.i1");
            let path = ("baker", &format!("{service}.work")[..], &inbox[..]);
            let path = open_path("baker-mq", &vhost("baker"), path, Some(sidecar.pid), flow).await;
            match queue_depth(&path.route.consumer, &inbox).await {
                Ok(_) => paths.push(path),
                Err(e) => skipped.push((
                    format!("baker-mq: FAILED: its inbox queue {inbox} is not there: {e}"),
                    true,
                )),
            }
            baker = Some(sidecar);
        }
        Err(e) => {
            eprintln!("\n*** skipping the baker-mq path: {e}\n");
            let first = e.lines().next().unwrap_or_default();
            skipped.push((
                format!("baker-mq: {first}"),
                !e.contains("no AMQP adapter yet"),
            ));
        }
    }

    let plan = Plan {
        loads: vec![Load {
            label: "throughput",
            mode: Mode::Burst,
            about: format!("published as fast as confirms allow (at most {window} unconfirmed)"),
            loss_ok: false,
        }],
        latency_each_round: true,
        timing: Timing {
            quiet: QUIET,
            linger: Duration::ZERO,
        },
        pause: Duration::from_millis(500),
        broker: broker_pid().into_iter().collect(),
        strict: true,
        sizes,
    };
    let results = rounds::run(&plan, &paths, skipped).await;

    // What is left in the queues (late duplicates would be here).
    let mut depths = Vec::new();
    for Path { name, route, .. } in &paths {
        let mut queues = vec![route.queue.clone()];
        match *name {
            "shovel" => queues.push(SHOVEL_SRC.to_owned()),
            "baker-mq" => queues.push("baker.ingress".to_owned()),
            _ => {}
        }
        for queue in queues {
            let depth = queue_depth(&route.consumer, &queue).await;
            let depth = depth.map_or_else(|e| format!("? ({e})"), |d| d.to_string());
            depths.push(format!("{queue}: {depth}"));
        }
    }
    eprintln!("messages left in the queues: {}", depths.join(", "));
    if let Some(sidecar) = &baker {
        sidecar.print_record().await;
    }
    for Path { route, .. } in &paths {
        for connection in [&route.consumer, &route.publisher_conn] {
            let _ = attempt(connection.close(200, "done".into())).await;
        }
    }

    let report = Report {
        title: format!(
            "AMQP end-to-end: RabbitMQ {version} at {}; {} B persistent messages, publisher confirms (at most {window} unconfirmed), manual acks (prefetch {prefetch}, batched); {} round(s), one fresh vhost per path",
            shown_broker(),
            plan.sizes.size,
            plan.sizes.rounds,
        ),
        notes: vec![
            "the shovel runs inside the broker, so its cost is in CPU broker (RabbitMQ's beam.smp); CPU hop is baker-mq's process".to_owned(),
        ],
        ratios: vec![
            ("baker-mq", "shovel"),
            ("shovel", "direct"),
            ("baker-mq", "direct"),
        ],
        target: None,
    };
    report::print(&plan, &report, &results)
}

fn main() {
    bench_main(
        "amqp_e2e",
        "RabbitMQ and rabbitmqctl",
        1_200,
        delete_vhosts,
        bench,
    );
}
