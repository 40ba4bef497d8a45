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
//!   carries (ns since a process-wide `Instant`, u64 LE, then the sequence
//!   number and the run's tag, u64 LE each).
//!
//! `BAKER_BENCH_ROUNDS` rounds (default 3), medians. `BAKER_BENCH_PAYLOAD`
//! sets the payload size, `BAKER_BENCH_TIMEOUT_SECS` the overall limit,
//! `BAKER_BENCH_AMQP_URL` the broker without vhost (default
//! `amqp://guest:guest@127.0.0.1:5672`). Vhosts are created and deleted
//! with `rabbitmqctl` (also on panic, timeout and Ctrl-C), and
//! `rabbitmq-plugins enable rabbitmq_shovel` is run at the start.
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

use std::io::{Read, Seek};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use common::{
    child_exited, cpu_per_msg, env_or, epoch, free_addr, http_client, kill_children, log_tail,
    median, now_ns, pace, per_second, percentile_us, pids_named, publish_on_own_thread, range,
    ratio, read_stamp, responds_ok, sidecar_state, spawn_baker_mq, spawn_directory,
    stamped_payload, stop_child, CleanupGuard, CpuProbe, CpuUse, Directory, READY_TIMEOUT,
    RUN_DEADLINE, STAMP,
};

/// Time with no message, once publishing is done, after which a run ends
/// (and counts what did not arrive as lost).
const QUIET: Duration = Duration::from_secs(5);
/// Longest wait for one AMQP operation (connect, declare, close...).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one `rabbitmqctl` / `rabbitmq-plugins` command.
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of the payload header: the common stamp (send time in ns, sequence
/// number), then the run's tag.
const HEADER: usize = STAMP + 8;
/// The consumer acks (with `multiple`) at least every this many deliveries,
/// and whenever no delivery is waiting.
const ACK_BATCH: u64 = 64;

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

// ---------------------------------------------------------------------------
// Vhosts (and the child processes of `common`): removed by the guard's Drop
// (also on panic), by the watchdog on overall timeout and on SIGINT/SIGTERM.

static VHOSTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn delete_vhosts() {
    let vhosts: Vec<String> =
        std::mem::take(&mut *VHOSTS.lock().unwrap_or_else(|e| e.into_inner()));
    for vhost in vhosts {
        match rabbit_ctl("rabbitmqctl", &["delete_vhost", &vhost]) {
            Ok(_) => eprintln!("deleted vhost {vhost}"),
            Err(e) => eprintln!("could not delete vhost {vhost}: {e}"),
        }
    }
}

/// Set once the bench is being aborted (timeout, signal): the main thread's
/// panics that follow (its connections die with the vhosts) are not news.
static ABORTING: AtomicBool = AtomicBool::new(false);

/// Cleans up and exits with `code`, from the watchdog or the signal thread.
fn abort(code: i32) -> ! {
    ABORTING.store(true, Ordering::Release);
    cleanup();
    std::process::exit(code);
}

/// Stops every child, then deletes every vhost this run created. Safe to call
/// more than once, from any thread.
fn cleanup() {
    static BUSY: Mutex<()> = Mutex::new(());
    let _busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
    kill_children();
    delete_vhosts();
}

/// Runs `rabbitmqctl`-style `tool` with `args`, at most `CTL_TIMEOUT`;
/// its stdout, or why it failed.
fn rabbit_ctl(tool: &str, args: &[&str]) -> Result<String, String> {
    let what = format!("{tool} {}", args.join(" "));
    let mut out = tempfile::tempfile().map_err(|e| format!("{what}: temp file: {e}"))?;
    let mut err = tempfile::tempfile().map_err(|e| format!("{what}: temp file: {e}"))?;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(err.try_clone().map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let deadline = Instant::now() + CTL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: no answer within {CTL_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
    };
    let read = |file: &mut std::fs::File| {
        let mut text = String::new();
        let _ = file.rewind();
        let _ = file.read_to_string(&mut text);
        text
    };
    let stdout = read(&mut out);
    if status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{what}: {status}: {}{}",
            read(&mut err).trim(),
            stdout.trim()
        ))
    }
}

/// Creates `vhost` with full permissions for guest; registered for deletion
/// before it is created.
fn add_vhost(vhost: &str) {
    VHOSTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(vhost.to_owned());
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

/// Awaits `future`, panicking with `what` if it takes longer than
/// `OP_TIMEOUT` or fails.
async fn within<T, E: std::fmt::Display>(
    what: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    match tokio::time::timeout(OP_TIMEOUT, future).await {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: no answer within {OP_TIMEOUT:?}"),
    }
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

async fn declare_durable(channel: &Channel, queue: &str) {
    within(
        &format!("declaring queue {queue}"),
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
}

/// Messages in `queue` (passive declare on a channel of its own), or why not.
async fn queue_depth(connection: &Connection, queue: &str) -> Result<u32, String> {
    let channel = tokio::time::timeout(OP_TIMEOUT, connection.create_channel())
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let declared = tokio::time::timeout(
        OP_TIMEOUT,
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string());
    let _ = tokio::time::timeout(OP_TIMEOUT, channel.close(200, "done".into())).await;
    declared.map(|q| q.message_count())
}

// ---------------------------------------------------------------------------
// Measurement.

/// How a run publishes.
#[derive(Clone, Copy)]
enum Mode {
    /// As fast as the confirm window allows.
    Throughput,
    /// At this many messages per second (and within the confirm window).
    Paced(u64),
}

#[derive(Default)]
struct Outcome {
    /// Handed to the broker.
    published: u64,
    /// Confirmed (ack, not returned) by the broker: what must arrive.
    confirmed: u64,
    /// Confirmed but returned as unroutable (mandatory publish).
    returned: u64,
    nacked: u64,
    /// Publishes or confirms that failed (channel or connection errors).
    errors: u64,
    first_error: Option<String>,
    /// Distinct messages of this run received.
    received: u64,
    duplicates: u64,
    /// Deliveries flagged `redelivered` by the broker.
    redelivered: u64,
    /// Messages of an earlier run that showed up in this one.
    stale: u64,
    /// From the first publish to the last message received.
    elapsed: Duration,
    /// From the first publish to the last confirm.
    publish_elapsed: Duration,
    /// Latencies in ns, sorted.
    latencies: Vec<u64>,
    /// The run hit a deadline.
    timed_out: bool,
}

impl Outcome {
    fn lost(&self) -> u64 {
        self.confirmed.saturating_sub(self.received)
    }

    /// Anything that breaks the at-least-once promise or the run itself.
    fn failed(&self) -> bool {
        self.lost() > 0
            || self.returned > 0
            || self.nacked > 0
            || self.errors > 0
            || self.timed_out
            || self.confirmed < self.published
    }

    fn rate(&self) -> f64 {
        per_second(self.received, self.elapsed)
    }

    fn publish_rate(&self) -> f64 {
        self.confirmed as f64 / self.publish_elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_us(&self, p: f64) -> f64 {
        percentile_us(&self.latencies, p)
    }

    fn problems(&self) -> String {
        let mut p = Vec::new();
        if self.lost() > 0 {
            p.push(format!("{} lost", self.lost()));
        }
        if self.returned > 0 {
            p.push(format!("{} returned unroutable", self.returned));
        }
        if self.nacked > 0 {
            p.push(format!("{} nacked", self.nacked));
        }
        if self.errors > 0 {
            p.push(format!(
                "{} publish errors (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.confirmed + self.returned + self.nacked + self.errors < self.published {
            p.push("unconfirmed publishes".to_owned());
        }
        if self.timed_out {
            p.push("timed out".to_owned());
        }
        p.join(", ")
    }
}

/// A payload for message `seq` of the run tagged `tag`, padded to `size`.
fn payload(tag: u64, seq: u64, size: usize) -> Vec<u8> {
    stamped_payload(seq, &tag.to_le_bytes(), size)
}

/// The run tag a payload carries after the stamp, if it is long enough.
fn payload_tag(p: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(STAMP..HEADER)?.try_into().ok()?))
}

/// A unique tag for each run, so messages of one run are never counted in
/// another.
fn next_tag() -> u64 {
    static TAG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    TAG.fetch_add(1, Ordering::Relaxed)
}

/// One way from the publisher to the consumer.
struct Route {
    name: &'static str,
    /// In confirm mode.
    publisher: Channel,
    consumer: Connection,
    exchange: String,
    routing_key: String,
    queue: String,
    /// The process between publisher and consumer, if any.
    hop_pid: Option<u32>,
}

struct Consumed {
    received: u64,
    duplicates: u64,
    redelivered: u64,
    stale: u64,
    last_ns: u64,
    latencies: Vec<u64>,
    timed_out: bool,
    error: Option<String>,
    /// Header names of the first message of this run, for the record.
    first_headers: Option<Vec<String>>,
}

/// Acks everything delivered so far (the latest delivery, with `multiple`).
async fn settle(last: &mut Option<Acker>, unacked: &mut u64, error: &mut Option<String>) {
    if let Some(acker) = last.take() {
        *unacked = 0;
        match tokio::time::timeout(OP_TIMEOUT, acker.ack(BasicAckOptions { multiple: true })).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                error.get_or_insert(format!("ack: {e}"));
            }
            Err(_) => {
                error.get_or_insert("ack timed out".to_owned());
            }
        }
    }
}

async fn consume(
    mut consumer: lapin::Consumer,
    count: u64,
    tag: u64,
    quiet: Duration,
    done: Arc<AtomicBool>,
) -> Consumed {
    let mut seen = vec![false; count as usize];
    let mut out = Consumed {
        received: 0,
        duplicates: 0,
        redelivered: 0,
        stale: 0,
        last_ns: 0,
        latencies: Vec::with_capacity(count as usize),
        timed_out: false,
        error: None,
        first_headers: None,
    };
    let mut last: Option<Acker> = None;
    let mut unacked = 0;
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut idle_since = Instant::now();
    loop {
        if Instant::now() > deadline {
            out.timed_out = true;
            break;
        }
        let next = match consumer.next().now_or_never() {
            Some(next) => Some(next),
            None => {
                // Nothing waiting: settle what was received, then wait.
                settle(&mut last, &mut unacked, &mut out.error).await;
                tokio::time::timeout(Duration::from_millis(100), consumer.next())
                    .await
                    .ok()
            }
        };
        let delivery = match next {
            Some(Some(Ok(delivery))) => delivery,
            Some(Some(Err(e))) => {
                out.error.get_or_insert(format!("consume: {e}"));
                break;
            }
            Some(None) => {
                out.error.get_or_insert("consumer cancelled".to_owned());
                break;
            }
            None => {
                if done.load(Ordering::Acquire) && idle_since.elapsed() >= quiet {
                    break;
                }
                continue;
            }
        };
        let at = now_ns();
        idle_since = Instant::now();
        if delivery.redelivered {
            out.redelivered += 1;
        }
        let p = &delivery.data;
        let stamp = read_stamp(p).filter(|_| payload_tag(p) == Some(tag));
        if let Some((sent, seq)) = stamp {
            match seen.get_mut(seq as usize) {
                Some(s) if !*s => {
                    *s = true;
                    out.received += 1;
                    out.latencies.push(at.saturating_sub(sent));
                    out.last_ns = at;
                    if out.first_headers.is_none() {
                        out.first_headers = Some(
                            delivery
                                .properties
                                .headers()
                                .as_ref()
                                .map(|h| h.inner().keys().map(|k| k.to_string()).collect())
                                .unwrap_or_default(),
                        );
                    }
                }
                _ => out.duplicates += 1,
            }
        } else {
            out.stale += 1;
        }
        last = Some(delivery.acker);
        unacked += 1;
        if unacked >= ACK_BATCH {
            settle(&mut last, &mut unacked, &mut out.error).await;
        }
        if out.received == count {
            break;
        }
    }
    settle(&mut last, &mut unacked, &mut out.error).await;
    out
}

#[derive(Default)]
struct Published {
    published: u64,
    confirmed: u64,
    returned: u64,
    nacked: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    stalled: bool,
}

impl Published {
    fn record(&mut self, result: lapin::Result<Confirmation>) {
        match result {
            Ok(Confirmation::Ack(None)) => self.confirmed += 1,
            Ok(Confirmation::Ack(Some(_))) => self.returned += 1,
            Ok(Confirmation::Nack(_)) => self.nacked += 1,
            Ok(Confirmation::NotRequested) => {
                self.errors += 1;
                self.first_error
                    .get_or_insert("publisher confirms not enabled".to_owned());
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e.to_string());
            }
        }
    }
}

/// What one run publishes, and how.
struct PublishJob {
    /// In confirm mode.
    channel: Channel,
    exchange: String,
    routing_key: String,
    count: u64,
    size: usize,
    tag: u64,
    mode: Mode,
    /// At most this many unconfirmed.
    window: usize,
}

/// Publishes `job.count` persistent messages as `job.mode` says, with at
/// most `job.window` unconfirmed, and waits for every confirm.
async fn publish(job: PublishJob) -> Published {
    let PublishJob {
        channel,
        exchange,
        routing_key,
        count,
        size,
        tag,
        mode,
        window,
    } = job;
    let mut out = Published::default();
    let mut in_flight = FuturesUnordered::new();
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let t0 = Instant::now();
    'publish: for seq in 0..count {
        if out.errors > 0 {
            break;
        }
        if let Mode::Paced(rate) = mode {
            pace(t0, rate, seq);
        }
        while in_flight.len() >= window {
            match tokio::time::timeout(READY_TIMEOUT, in_flight.next()).await {
                Ok(Some(result)) => out.record(result),
                Ok(None) => break,
                Err(_) => {
                    out.stalled = true;
                    break 'publish;
                }
            }
        }
        let channel = channel.clone();
        let exchange = exchange.as_str().into();
        let routing_key = routing_key.as_str().into();
        let data = payload(tag, seq, size);
        in_flight.push(async move {
            // Resolves once the frames are written; then to the confirm.
            channel
                .basic_publish(
                    exchange,
                    routing_key,
                    options,
                    &data,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await
        });
        out.published += 1;
        // Hand the new message to the connection now, and reap confirms.
        while let Some(Some(result)) = in_flight.next().now_or_never() {
            out.record(result);
        }
    }
    let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
    while !in_flight.is_empty() {
        match tokio::time::timeout_at(deadline, in_flight.next()).await {
            Ok(Some(result)) => out.record(result),
            Ok(None) => break,
            Err(_) => {
                out.stalled = true;
                break;
            }
        }
    }
    out.elapsed = t0.elapsed();
    out
}

/// Publishes `count` messages on `route` as `mode` says and counts what
/// arrives until all did, or nothing did for `quiet` after the last confirm.
async fn measure(
    route: &Route,
    count: u64,
    size: usize,
    mode: Mode,
    config: &Config,
    quiet: Duration,
) -> (Outcome, Option<Vec<String>>) {
    let tag = next_tag();
    let channel = within(
        &format!("[{}] consumer channel", route.name),
        route.consumer.create_channel(),
    )
    .await;
    within(
        &format!("[{}] basic.qos", route.name),
        channel.basic_qos(config.prefetch, BasicQosOptions::default()),
    )
    .await;
    let consumer = within(
        &format!("[{}] consuming {}", route.name, route.queue),
        channel.basic_consume(
            route.queue.as_str().into(),
            format!("bench-{tag}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    let done = Arc::new(AtomicBool::new(false));
    let started = now_ns();
    let consuming = tokio::spawn(consume(consumer, count, tag, quiet, done.clone()));

    let job = PublishJob {
        channel: route.publisher.clone(),
        exchange: route.exchange.clone(),
        routing_key: route.routing_key.clone(),
        count,
        size,
        tag,
        mode,
        window: config.window,
    };
    // The connection's I/O runs on lapin's own thread.
    let publishing = publish_on_own_thread(done.clone(), move || publish(job));
    let published = tokio::time::timeout(RUN_DEADLINE + OP_TIMEOUT, publishing)
        .await
        .expect("publishing timed out")
        .expect("publisher thread failed");
    let consumed = tokio::time::timeout(RUN_DEADLINE + quiet + OP_TIMEOUT, consuming)
        .await
        .expect("consumer timed out")
        .expect("consumer task failed");
    // Closing the channel returns anything prefetched but not acked (a late
    // duplicate, say) to the queue, where a later run counts it as stale.
    let _ = tokio::time::timeout(OP_TIMEOUT, channel.close(200, "done".into())).await;

    let mut errors = published.errors;
    let mut first_error = published.first_error;
    if let Some(e) = consumed.error {
        errors += 1;
        first_error.get_or_insert(e);
    }
    let mut out = Outcome {
        published: published.published,
        confirmed: published.confirmed,
        returned: published.returned,
        nacked: published.nacked,
        errors,
        first_error,
        received: consumed.received,
        duplicates: consumed.duplicates,
        redelivered: consumed.redelivered,
        stale: consumed.stale,
        elapsed: Duration::from_nanos(consumed.last_ns.saturating_sub(started)),
        publish_elapsed: published.elapsed,
        latencies: consumed.latencies,
        timed_out: published.stalled || consumed.timed_out,
    };
    out.latencies.sort_unstable();
    (out, consumed.first_headers)
}

/// Sends single messages until one makes it through `route`, then a small
/// burst to warm connections and caches.
async fn warm_up(route: &Route, config: &Config) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT * 2;
    loop {
        let (probe, headers) = measure(
            route,
            1,
            config.size,
            Mode::Throughput,
            config,
            Duration::from_millis(500),
        )
        .await;
        if probe.received == 1 {
            eprintln!(
                "[{}] path works; headers of a delivered message: {:?}",
                route.name,
                headers.unwrap_or_default()
            );
            break;
        }
        if probe.errors > 0 || probe.returned > 0 || probe.nacked > 0 {
            return Err(format!("probe message failed: {}", probe.problems()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "nothing arrives on {} when publishing to exchange {:?} with routing key {}",
                route.queue, route.exchange, route.routing_key
            ));
        }
    }
    let (burst, _) = measure(route, 2_000, config.size, Mode::Throughput, config, QUIET).await;
    if burst.failed() {
        return Err(format!("warm-up burst: {}", burst.problems()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// CPU accounting.

/// The pid of the local RabbitMQ node: the `beam.smp` started with
/// `-s rabbit boot` (not the short-lived ones of `rabbitmqctl`), or the only
/// `beam.smp` there is.
fn broker_pid() -> Option<String> {
    let mut beams = pids_named("beam.smp");
    let mut rabbits: Vec<String> = beams
        .iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(" rabbit boot")
        })
        .cloned()
        .collect();
    match (rabbits.len(), beams.len()) {
        (1, _) => Some(rabbits.remove(0)),
        (_, 1) => Some(beams.remove(0)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The paths.

struct PathResult {
    name: &'static str,
    throughput: Vec<Outcome>,
    latency: Vec<Outcome>,
    /// CPU time over all the throughput runs.
    cpu: Option<CpuUse>,
}

impl PathResult {
    fn rates(&self) -> Vec<f64> {
        self.throughput.iter().map(Outcome::rate).collect()
    }

    fn latency_median(&self, p: f64) -> f64 {
        median(
            &self
                .latency
                .iter()
                .map(|o| o.percentile_us(p))
                .collect::<Vec<_>>(),
        )
    }

    fn all(&self) -> impl Iterator<Item = &Outcome> {
        self.throughput.iter().chain(&self.latency)
    }
}

struct Config {
    messages: u64,
    latency_messages: u64,
    rate: u64,
    size: usize,
    rounds: usize,
    window: usize,
    prefetch: u16,
}

/// Publisher (confirm mode) and consumer connections on `vhost`.
async fn open_route(
    name: &'static str,
    vhost: &str,
    exchange: &str,
    routing_key: &str,
    queue: &str,
    hop_pid: Option<u32>,
) -> (Route, Connection) {
    let publisher_conn = connect(vhost, &format!("baker-bench-{name}-publisher")).await;
    let consumer = connect(vhost, &format!("baker-bench-{name}-consumer")).await;
    let publisher = within("publisher channel", publisher_conn.create_channel()).await;
    within(
        "confirm.select",
        publisher.confirm_select(ConfirmSelectOptions::default()),
    )
    .await;
    (
        Route {
            name,
            publisher,
            consumer,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            queue: queue.to_owned(),
            hop_pid,
        },
        publisher_conn,
    )
}

const SHOVEL_SRC: &str = "bench.src";
const SHOVEL_DST: &str = "bench.dst";

async fn start_shovel(vhost: &str) {
    let admin = connect(vhost, "baker-bench-setup").await;
    let channel = within("setup channel", admin.create_channel()).await;
    declare_durable(&channel, SHOVEL_SRC).await;
    declare_durable(&channel, SHOVEL_DST).await;
    let _ = tokio::time::timeout(OP_TIMEOUT, admin.close(200, "done".into())).await;
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
        rabbit_ctl(
            "rabbitmqctl",
            &[
                "set_parameter",
                "-p",
                &vhost,
                "shovel",
                "bench-shovel",
                &definition,
            ],
        )
    })
    .await
    .expect("rabbitmqctl thread")
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("shovel {SHOVEL_SRC} -> {SHOVEL_DST} defined");
}

struct Baker {
    service: String,
    admin: SocketAddr,
    pid: u32,
}

/// Starts `baker-mq directory` and a `baker-mq --adapter amqp` sidecar on
/// `vhost`; `Err` (with the reason, and both stopped) when the sidecar exits
/// early or does not become ready and routed in time.
async fn start_baker(run: &str, vhost: &str, logs: &Path) -> Result<Baker, String> {
    let Directory {
        addr: directory,
        pid: dir_pid,
        log: dir_log,
    } = spawn_directory(logs);

    let http = http_client();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !responds_ok(&http, &format!("http://{directory}/healthz")).await {
        if Instant::now() > deadline || child_exited(dir_pid).is_some() {
            stop_child(dir_pid);
            return Err(format!(
                "baker-mq directory not up at {directory}; log:\n{}",
                log_tail(&dir_log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let admin = free_addr();
    let service = format!("bsvc{run}");
    let sidecar_log = logs.join("sidecar.log");
    let pid = spawn_baker_mq(
        "baker-mq sidecar",
        &[
            "--adapter",
            "amqp",
            "--broker",
            &vhost_uri(vhost),
            "--directory",
            &format!("http://{directory}"),
            "--admin",
            &admin.to_string(),
            "--register",
            &format!("service={service},id=i1"),
        ],
        &sidecar_log,
    );

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child_exited(pid) {
            stop_child(dir_pid);
            let log = log_tail(&sidecar_log);
            let why = if log.contains("unknown adapter") {
                "this baker-mq has no AMQP adapter yet"
            } else {
                "it exited early"
            };
            stop_child(pid);
            return Err(format!(
                "`baker-mq --adapter amqp` did not start: {why} ({status})\nits stderr:\n{log}"
            ));
        }
        let (ready, routed) = sidecar_state(&http, admin, &service).await;
        if ready && routed {
            break;
        }
        if Instant::now() > deadline {
            stop_child(pid);
            stop_child(dir_pid);
            return Err(format!(
                "baker-mq not ready/routed within {READY_TIMEOUT:?} (ready={ready}, routed={routed}); sidecar log:\n{}",
                log_tail(&sidecar_log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("baker-mq ready (admin {admin}, directory {directory}, pid {pid})");
    Ok(Baker {
        service,
        admin,
        pid,
    })
}

// ---------------------------------------------------------------------------
// Running and reporting.

async fn run_all(paths: &[Route], config: &Config) -> Vec<PathResult> {
    let broker = broker_pid();
    if broker.is_none() {
        eprintln!("no single RabbitMQ beam.smp process found: broker CPU not reported");
    }
    let mut results: Vec<PathResult> = paths
        .iter()
        .map(|p| PathResult {
            name: p.name,
            throughput: Vec::new(),
            latency: Vec::new(),
            cpu: None,
        })
        .collect();
    let pause = Duration::from_millis(500);
    for round in 0..config.rounds {
        for (path, result) in paths.iter().zip(&mut results) {
            eprintln!(
                "[{}] round {}/{}: throughput, {} messages",
                path.name,
                round + 1,
                config.rounds,
                config.messages
            );
            let probe = CpuProbe {
                hop: path.hop_pid.map(|p| p.to_string()),
                broker: broker.clone(),
            };
            let before = probe.sample();
            let (outcome, _) = measure(
                path,
                config.messages,
                config.size,
                Mode::Throughput,
                config,
                QUIET,
            )
            .await;
            let cpu = probe.since(before);
            result.cpu = Some(match result.cpu {
                None => cpu,
                Some(sum) => sum.add(cpu),
            });
            eprintln!(
                "[{}]   {:.0} msg/s received, {:.0} msg/s confirmed{}",
                path.name,
                outcome.rate(),
                outcome.publish_rate(),
                if outcome.failed() {
                    format!("; {}", outcome.problems())
                } else {
                    String::new()
                }
            );
            result.throughput.push(outcome);
            tokio::time::sleep(pause).await;
        }
        for (path, result) in paths.iter().zip(&mut results) {
            eprintln!(
                "[{}] round {}/{}: latency, {} messages at {} msg/s",
                path.name,
                round + 1,
                config.rounds,
                config.latency_messages,
                config.rate
            );
            let (outcome, _) = measure(
                path,
                config.latency_messages,
                config.size,
                Mode::Paced(config.rate),
                config,
                QUIET,
            )
            .await;
            eprintln!(
                "[{}]   p50 {:.0} µs, p99 {:.0} µs{}",
                path.name,
                outcome.percentile_us(0.5),
                outcome.percentile_us(0.99),
                if outcome.failed() {
                    format!("; {}", outcome.problems())
                } else {
                    String::new()
                }
            );
            result.latency.push(outcome);
            tokio::time::sleep(pause).await;
        }
    }
    results
}

/// The 1-minute load average (Linux /proc), to judge how much else ran.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn print_report(
    config: &Config,
    version: &str,
    results: &[PathResult],
    skipped: &[String],
    load: [Option<f64>; 2],
) {
    let flag = |outcomes: &mut dyn Iterator<Item = &Outcome>| {
        let problems: Vec<String> = outcomes
            .filter(|o| o.failed())
            .map(Outcome::problems)
            .collect();
        if problems.is_empty() {
            String::new()
        } else {
            format!("  FAILED: {}", problems.join("; "))
        }
    };
    println!();
    println!(
        "AMQP end-to-end: RabbitMQ {version} at {}; {} B persistent messages, publisher confirms (at most {} unconfirmed), manual acks (prefetch {}, batched); {} round(s), one fresh vhost per path",
        shown_broker(),
        config.size,
        config.window,
        config.prefetch,
        config.rounds,
    );
    let shown = |l: Option<f64>| l.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}"));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cores} cores; 1-min load average {} at the start, {} at the end{}",
        shown(load[0]),
        shown(load[1]),
        if load[0].is_some_and(|l| l > 1.0) {
            " (other work was running before the start: figures may be noisy)"
        } else {
            ""
        }
    );
    for s in skipped {
        println!("SKIPPED {s}");
    }

    println!();
    println!(
        "(i) throughput: {} msgs per round published as fast as confirms allow; received/s = distinct received / (last receive - first publish); medians",
        config.messages
    );
    println!(
        "{:<9} | {:>11} | {:>11} {:>19} | {:>6} {:>6} | {:>16} {:>16} {:>16} | {:>16}",
        "path",
        "confirmed/s",
        "received/s",
        "(min - max)",
        "lost",
        "dup",
        "CPU bench",
        "CPU hop",
        "CPU broker",
        "CPU other procs"
    );
    println!("{}", "-".repeat(146));
    for r in results {
        let rates = r.rates();
        let (lo, hi) = range(&rates);
        let lost: u64 = r.throughput.iter().map(Outcome::lost).sum();
        let dup: u64 = r.throughput.iter().map(|o| o.duplicates).sum();
        let received: u64 = r.throughput.iter().map(|o| o.received).sum();
        let publish: Vec<f64> = r.throughput.iter().map(Outcome::publish_rate).collect();
        let cpu = |d| cpu_per_msg(d, received);
        let usage = r.cpu.unwrap_or_default();
        println!(
            "{:<9} | {:>11.0} | {:>11.0} {:>19} | {:>6} {:>6} | {:>16} {:>16} {:>16} | {:>16}{}",
            r.name,
            median(&publish),
            median(&rates),
            format!("({lo:.0} - {hi:.0})"),
            lost,
            dup,
            cpu(usage.bench),
            cpu(usage.hop),
            cpu(usage.broker),
            cpu(usage.other),
            flag(&mut r.throughput.iter()),
        );
    }
    println!("   per round received/s:");
    for r in results {
        let rounds: Vec<String> = r.rates().iter().map(|v| format!("{v:.0}")).collect();
        println!("     {:<9} {}", r.name, rounds.join(", "));
    }
    println!("   CPU = user+system time of the process over the throughput runs / messages received (10 ms tick resolution);");
    println!("   the shovel runs inside the broker, so its cost is in CPU broker; CPU hop is baker-mq's process;");
    println!("   CPU other procs = the machine's busy time less those three: anything else running (should be ~0)");

    println!();
    println!(
        "(ii) latency: {} msgs per round paced at {} msg/s; medians over rounds of each round's percentile",
        config.latency_messages, config.rate
    );
    println!(
        "{:<9} | {:>9} {:>9} {:>9} {:>9} | {:>6} {:>6}",
        "path", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "lost", "dup"
    );
    println!("{}", "-".repeat(70));
    for r in results {
        let lost: u64 = r.latency.iter().map(Outcome::lost).sum();
        let dup: u64 = r.latency.iter().map(|o| o.duplicates).sum();
        println!(
            "{:<9} | {:>9.0} {:>9.0} {:>9.0} {:>9.0} | {:>6} {:>6}{}",
            r.name,
            r.latency_median(0.50),
            r.latency_median(0.99),
            r.latency_median(0.999),
            r.latency_median(1.0),
            lost,
            dup,
            flag(&mut r.latency.iter()),
        );
    }
    println!("   per round p50/p99 µs:");
    for r in results {
        let rounds: Vec<String> = r
            .latency
            .iter()
            .map(|o| format!("{:.0}/{:.0}", o.percentile_us(0.5), o.percentile_us(0.99)))
            .collect();
        println!("     {:<9} {}", r.name, rounds.join(", "));
    }

    let redelivered: u64 = results
        .iter()
        .flat_map(PathResult::all)
        .map(|o| o.redelivered)
        .sum();
    let stale: u64 = results
        .iter()
        .flat_map(PathResult::all)
        .map(|o| o.stale)
        .sum();
    if redelivered > 0 || stale > 0 {
        println!(
            "redelivered flags seen: {redelivered}; messages of an earlier run seen later: {stale}"
        );
    }

    let find = |name: &str| results.iter().find(|r| r.name == name);
    let rate = |p: &PathResult| median(&p.rates());
    println!();
    println!("ratios (median throughput)");
    if let (Some(b), Some(s)) = (find("baker-mq"), find("shovel")) {
        println!("  baker-mq / shovel  {:>6.3}", ratio(rate(b), rate(s)));
    } else {
        println!("  baker-mq / shovel     n/a (baker-mq path skipped)");
    }
    if let Some(d) = find("direct") {
        for name in ["shovel", "baker-mq"] {
            if let Some(p) = find(name) {
                println!(
                    "  {name:<8} / direct  {:>6.3}   latency added over direct: p50 {:+.0} µs, p99 {:+.0} µs",
                    ratio(rate(p), rate(d)),
                    p.latency_median(0.5) - d.latency_median(0.5),
                    p.latency_median(0.99) - d.latency_median(0.99),
                );
            }
        }
    }
}

/// Runs the whole bench; `false` when a path broke the at-least-once
/// promise or the baker-mq path started but did not work.
fn bench_main() -> bool {
    let config = Config {
        messages: env_or("BAKER_BENCH_AMQP_MESSAGES", 50_000),
        latency_messages: env_or("BAKER_BENCH_AMQP_LATENCY_MESSAGES", 5_000),
        rate: env_or("BAKER_BENCH_AMQP_RATE", 1_000),
        size: env_or("BAKER_BENCH_PAYLOAD", 128usize).max(HEADER),
        rounds: env_or("BAKER_BENCH_ROUNDS", 3),
        window: env_or("BAKER_BENCH_AMQP_CONFIRM_WINDOW", 1_000),
        prefetch: env_or("BAKER_BENCH_AMQP_PREFETCH", 1_000),
    };
    assert!(
        config.messages > 0
            && config.latency_messages > 0
            && config.rate > 0
            && config.rounds > 0
            && config.window > 0
            && config.prefetch > 0,
        "message counts, rate, rounds, window and prefetch must be positive"
    );
    let timeout = Duration::from_secs(env_or("BAKER_BENCH_TIMEOUT_SECS", 1_200));
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !ABORTING.load(Ordering::Acquire) {
            default_hook(info);
        }
    }));
    // Whatever happens, the bench ends, its children die and its vhosts go.
    common::watchdog("amqp_e2e", timeout, || abort(2));
    // The same on Ctrl-C or SIGTERM.
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("amqp_e2e: interrupted; cleaning up");
        abort(130);
    });
    epoch();
    let load_start = load_average();
    let run = common::run_id();
    let logs = tempfile::tempdir().expect("temp dir");

    rabbit_ctl("rabbitmq-plugins", &["enable", "rabbitmq_shovel"])
        .unwrap_or_else(|e| panic!("cannot enable the shovel plugin: {e}"));
    let version = rabbit_ctl("rabbitmqctl", &["version"])
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let direct_vhost = format!("baker-bench-direct-{run}");
    let shovel_vhost = format!("baker-bench-shovel-{run}");
    let baker_vhost = format!("baker-bench-baker-{run}");
    for vhost in [&direct_vhost, &shovel_vhost, &baker_vhost] {
        add_vhost(vhost);
    }

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (results, skipped, mut ok) = runtime.block_on(async {
        let mut skipped = Vec::new();
        let mut ok = true;
        let mut paths = Vec::new();
        let mut connections = Vec::new();

        // (a) direct.
        let (route, conn) = open_route(
            "direct",
            &direct_vhost,
            "",
            "bench.direct",
            "bench.direct",
            None,
        )
        .await;
        let setup = within("setup channel", route.consumer.create_channel()).await;
        declare_durable(&setup, "bench.direct").await;
        let _ = tokio::time::timeout(OP_TIMEOUT, setup.close(200, "done".into())).await;
        paths.push(route);
        connections.push(conn);

        // (b) the broker's Shovel.
        start_shovel(&shovel_vhost).await;
        let (route, conn) =
            open_route("shovel", &shovel_vhost, "", SHOVEL_SRC, SHOVEL_DST, None).await;
        paths.push(route);
        connections.push(conn);

        // (c) baker-mq.
        let mut baker = None;
        match start_baker(&run, &baker_vhost, logs.path()).await {
            Ok(b) => {
                let inbox = format!("_baker.{}.i1", b.service);
                let (route, conn) = open_route(
                    "baker-mq",
                    &baker_vhost,
                    "baker",
                    &format!("{}.work", b.service),
                    &inbox,
                    Some(b.pid),
                )
                .await;
                match queue_depth(&route.consumer, &inbox).await {
                    Ok(_) => {
                        paths.push(route);
                        connections.push(conn);
                        baker = Some(b);
                    }
                    Err(e) => {
                        ok = false;
                        skipped.push(format!(
                            "baker-mq: FAILED: its inbox queue {inbox} is not there: {e}"
                        ));
                    }
                }
            }
            Err(e) => {
                eprintln!("\n*** skipping the baker-mq path: {e}\n");
                if !e.contains("no AMQP adapter yet") {
                    ok = false;
                }
                let first = e.lines().next().unwrap_or_default().to_owned();
                skipped.push(format!("baker-mq: {first}"));
            }
        }

        let mut working = Vec::new();
        for path in paths {
            eprintln!("[{}] warming up", path.name);
            match warm_up(&path, &config).await {
                Ok(()) => working.push(path),
                Err(e) => {
                    eprintln!("\n*** [{}] does not work, left out: {e}\n", path.name);
                    ok = false;
                    skipped.push(format!("{}: FAILED: {e}", path.name));
                }
            }
        }
        let results = run_all(&working, &config).await;

        // What is left in the queues (late duplicates would be here).
        let mut depths = Vec::new();
        for path in &working {
            let mut queues = vec![path.queue.clone()];
            match path.name {
                "shovel" => queues.push(SHOVEL_SRC.to_owned()),
                "baker-mq" => queues.push("baker.ingress".to_owned()),
                _ => {}
            }
            for queue in queues {
                let depth = queue_depth(&path.consumer, &queue).await;
                depths.push(format!(
                    "{queue}: {}",
                    depth.map_or_else(|e| format!("? ({e})"), |d| d.to_string())
                ));
            }
        }
        eprintln!("messages left in the queues: {}", depths.join(", "));

        if let Some(b) = &baker {
            common::print_baker_counts(b.admin).await;
            let log = std::fs::read_to_string(logs.path().join("sidecar.log")).unwrap_or_default();
            common::print_log_warnings(&log);
        }

        for path in &working {
            let _ = tokio::time::timeout(OP_TIMEOUT, path.consumer.close(200, "done".into())).await;
        }
        for conn in &connections {
            let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "done".into())).await;
        }
        (results, skipped, ok)
    });
    drop(runtime);
    print_report(
        &config,
        &version,
        &results,
        &skipped,
        [load_start, load_average()],
    );
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.all().any(Outcome::failed))
        .map(|r| r.name)
        .collect();
    if !failed.is_empty() {
        println!();
        println!(
            "FAILED: at-least-once broken or run incomplete on: {}",
            failed.join(", ")
        );
        ok = false;
    }
    ok
}

fn main() {
    if !common::invoked_as_bench() {
        println!(
            "amqp_e2e: needs RabbitMQ and rabbitmqctl; run it with `cargo bench --bench amqp_e2e`"
        );
        return;
    }
    let ok = {
        let _cleanup = CleanupGuard(cleanup);
        bench_main()
    };
    if !ok {
        std::process::exit(1);
    }
}
