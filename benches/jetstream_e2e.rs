//! End-to-end throughput and latency over NATS JetStream, at least once on
//! every hop, three paths on the same nats-server, in one run:
//!
//! * `direct`:   JetStream publish with ack → a stream → a pull consumer
//!   that acks each message;
//! * `relay`:    JetStream publish with ack → a work-queue stream over
//!   `<prefix>.<svc>.<topic>` → a minimal JetStream relay (this binary
//!   re-executed with `BAKER_BENCH_JS_RELAY=1`, a separate process: it pulls
//!   from a durable consumer, publishes each message with ack to
//!   `_baker.<svc>.i1.<topic>`, kept by a second stream, and acks the
//!   original only once that publish is acked, with at most
//!   `BAKER_BENCH_RELAY_MAX_IN_FLIGHT` messages in flight, baker-mq's
//!   default of 1024) → the pull consumer;
//! * `baker-mq`: JetStream publish with ack → `BAKER_INGRESS_<prefix>` → a
//!   `baker-mq` sidecar with `?ingress=jetstream` in its broker URL (with its own `baker-mq
//!   directory`) registering instance `i1` with a durable inbox
//!   (`broker=…?inbox=jetstream`) → `BAKER_INBOX__baker_<svc>_i1` → the pull
//!   consumer.
//!
//! With `BAKER_BENCH_RELAY_HDR=1` a fourth path, `relay+hdr`, runs the same
//! relay also stamping what baker-mq adds to every message (`baker-msg-id`,
//! `baker-origin`, `baker-attempt`, and `Nats-Msg-Id` for the inbox
//! stream's de-duplication): the floor for a hop doing baker-mq's job.
//!
//! For each path, interleaved across paths round by round,
//! `BAKER_BENCH_ROUNDS` windowed runs of `BAKER_BENCH_MESSAGES` messages: at
//! most `BAKER_BENCH_WINDOW` publishes awaiting their stream ack and at most
//! as many messages published but not yet received, giving received msgs/s
//! end to end and the CPU time each process spent per message (Linux
//! /proc); then a paced run of `BAKER_BENCH_LATENCY_MESSAGES` at
//! `BAKER_BENCH_RATE` msg/s for p50/p99. Each payload starts with its send
//! time and a sequence number (see `common`). `BAKER_BENCH_PAYLOAD` sets the
//! payload size, `BAKER_BENCH_TIMEOUT_SECS` the overall limit,
//! `BAKER_BENCH_RELAY_RUNTIME` the relay's tokio runtime (`current_thread`,
//! the default and what baker-mq uses, or `multi_thread`).
//!
//! Every stream and consumer the run creates has the run's id in its name
//! and is deleted at the end, also when the bench fails or times out (the
//! shared `BAKER_DLQ`, which baker-mq creates when absent, is left alone).
//!
//! Needs a nats-server with JetStream (`BAKER_BENCH_NATS_URL`, default
//! nats://127.0.0.1:4222; `bash integration/brokers.sh` starts one). Run
//! with `cargo bench --bench jetstream_e2e`; quick run:
//! `BAKER_BENCH_MESSAGES=5000 BAKER_BENCH_LATENCY_MESSAGES=1000 BAKER_BENCH_ROUNDS=1 cargo bench --bench jetstream_e2e`.
//! Without `--bench` on its command line (e.g. `cargo test --benches`) it
//! does nothing, so test runs need no broker.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind, Context, ContextBuilder};
use async_nats::Client;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use baker_adapter_nats::stream_name;
use common::{
    cpu_per_msg, env_or, epoch, free_addr, http_client, kill_children, log_tail, median, now_ns,
    pace, payload, pids_named, publish_on_own_thread, range, ratio, read_stamp, responds_ok,
    sidecar_state, spawn_baker_mq, spawn_child, spawn_directory, with_child, CleanupGuard,
    CpuProbe, CpuUse, Directory, Outcome, READY_TIMEOUT, RUN_DEADLINE, STAMP,
};

/// Selects relay mode when this binary re-executes itself.
const RELAY_ENV: &str = "BAKER_BENCH_JS_RELAY";
const RELAY_STREAM_ENV: &str = "BAKER_BENCH_JS_RELAY_STREAM";
const RELAY_CONSUMER_ENV: &str = "BAKER_BENCH_JS_RELAY_CONSUMER";
const RELAY_PREFIX_ENV: &str = "BAKER_BENCH_JS_RELAY_PREFIX";
const RELAY_INSTANCE_ENV: &str = "BAKER_BENCH_JS_RELAY_INSTANCE";
/// Set to `1`: the relay stamps the headers baker-mq adds.
const RELAY_STAMP_ENV: &str = "BAKER_BENCH_JS_RELAY_STAMP";
/// The relay's bound on messages pulled but not yet settled.
const RELAY_MAX_IN_FLIGHT_ENV: &str = "BAKER_BENCH_RELAY_MAX_IN_FLIGHT";
/// The relay's tokio runtime: `current_thread` (default, as baker-mq's) or
/// `multi_thread`.
const RELAY_RUNTIME_ENV: &str = "BAKER_BENCH_RELAY_RUNTIME";
const NATS_URL_ENV: &str = "BAKER_BENCH_NATS_URL";

/// baker-mq's default `max_in_flight`, the relay's default bound.
const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
/// As baker-mq's ingress consumer: how long the server waits for an ack.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Time with no message, once publishing is done, after which a run ends.
/// Longer than for core NATS: a hop may still be working through the
/// backlog its ingress stream holds when the last publish is acked.
const QUIET: Duration = Duration::from_secs(3);
/// Messages per pull request of the bench's consumer, which must not be what
/// limits a path.
const CONSUMER_BATCH: usize = 1_000;

fn nats_url() -> String {
    std::env::var(NATS_URL_ENV).unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

// ---------------------------------------------------------------------------
// What this run created on the broker, deleted at the end, also by the
// cleanup guard and the watchdog.

/// Streams (with every consumer on them) and consumers (stream, name) to
/// delete.
struct Created {
    streams: Vec<String>,
    consumers: Vec<(String, String)>,
}

static CREATED: Mutex<Created> = Mutex::new(Created {
    streams: Vec::new(),
    consumers: Vec::new(),
});

fn created() -> std::sync::MutexGuard<'static, Created> {
    CREATED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records stream `name` for deletion, before it exists: a failure while it
/// is being created must not leave it behind.
fn will_delete_stream(name: &str) {
    created().streams.push(name.to_owned());
}

fn will_delete_consumer(stream: &str, name: &str) {
    created()
        .consumers
        .push((stream.to_owned(), name.to_owned()));
}

fn deleted_consumer(stream: &str, name: &str) {
    created()
        .consumers
        .retain(|(s, c)| !(s == stream && c == name));
}

/// Deletes every recorded consumer, then every recorded stream; returns how
/// many of each the server confirmed deleted. Each at most once, whoever
/// calls this first (the end of the run, the guard, the watchdog).
async fn delete_created(js: &Context) -> (usize, usize) {
    let (streams, consumers) = {
        let mut created = created();
        (
            std::mem::take(&mut created.streams),
            std::mem::take(&mut created.consumers),
        )
    };
    let mut deleted = (0, 0);
    for (stream, consumer) in &consumers {
        match js.delete_consumer_from_stream(consumer, stream).await {
            Ok(_) => deleted.1 += 1,
            Err(e) => eprintln!("could not delete consumer {consumer} on {stream}: {e}"),
        }
    }
    for stream in &streams {
        match js.delete_stream(stream).await {
            Ok(_) => deleted.0 += 1,
            Err(e) => eprintln!("could not delete stream {stream}: {e}"),
        }
    }
    deleted
}

/// The guard's and the watchdog's cleanup: the children first (so nothing
/// recreates what is deleted), then what the run created on the broker, on
/// a connection and runtime of its own, bounded in time.
fn cleanup() {
    kill_children();
    {
        let created = created();
        if created.streams.is_empty() && created.consumers.is_empty() {
            return;
        }
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cleanup: no runtime; streams left: {:?}", created().streams);
        return;
    };
    runtime.block_on(async {
        let work = async {
            let client = async_nats::connect(nats_url()).await.ok()?;
            let deleted = delete_created(&jetstream::new(client)).await;
            Some(deleted)
        };
        match tokio::time::timeout(Duration::from_secs(20), work).await {
            Ok(Some((streams, consumers))) => {
                eprintln!("cleanup: deleted {streams} stream(s) and {consumers} consumer(s)")
            }
            _ => eprintln!(
                "cleanup: could not reach {}; streams left: {:?}",
                nats_url(),
                created().streams
            ),
        }
    });
}

// ---------------------------------------------------------------------------
// Relay mode.

/// Counts the relay's failures; it reports the first few, never one line
/// per message.
static RELAY_ERRORS: AtomicUsize = AtomicUsize::new(0);

fn relay_error(what: &str, error: impl std::fmt::Display) {
    if RELAY_ERRORS.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("relay: {what}: {error}");
    }
}

/// What the relay needs for each message.
struct RelayConfig {
    js: Context,
    prefix_len: usize,
    instance: String,
    stamp: bool,
    /// For `baker-msg-id` when the stream sequence is not known.
    id_prefix: String,
}

/// Forwards one message: publishes it to its inbox subject, waits for the
/// inbox stream's ack, then acks the original (or naks it, for redelivery,
/// when the publish failed).
async fn forward(config: Arc<RelayConfig>, message: jetstream::Message, count: u64) {
    // As baker-mq: `<stream>:<stream sequence>`, the same on a redelivery.
    let stable_id = config.stamp.then(|| {
        message.info().map_or_else(
            |_| format!("{}-{count:x}", config.id_prefix),
            |info| format!("{}:{}", info.stream, info.stream_sequence),
        )
    });
    let (message, acker) = message.split();
    let Some(rest) = message.subject.get(config.prefix_len..) else {
        relay_error("subject outside the prefix", &message.subject);
        let _ = acker.ack_with(AckKind::Term).await;
        return;
    };
    let subject = match rest.split_once('.') {
        Some((service, topic)) => format!("_baker.{service}.{}.{topic}", config.instance),
        None => format!("_baker.{rest}.{}", config.instance),
    };
    let published = match stable_id {
        Some(id) => {
            let mut headers = message.headers.unwrap_or_default();
            headers.insert("baker-msg-id", id.as_str());
            headers.insert("baker-origin", message.subject.as_str());
            headers.insert("baker-attempt", "1");
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            config
                .js
                .publish_with_headers(subject, headers, message.payload)
                .await
        }
        None => match message.headers {
            Some(headers) => {
                config
                    .js
                    .publish_with_headers(subject, headers, message.payload)
                    .await
            }
            None => config.js.publish(subject, message.payload).await,
        },
    };
    let kept = match published {
        Ok(ack) => match ack.await {
            Ok(_) => true,
            Err(e) => {
                relay_error("publish ack", e);
                false
            }
        },
        Err(e) => {
            relay_error("publish", e);
            false
        }
    };
    let kind = if kept {
        AckKind::Ack
    } else {
        AckKind::Nak(Some(Duration::from_secs(1)))
    };
    if let Err(e) = acker.ack_with(kind).await {
        relay_error("ack", e);
    }
}

fn relay_main() {
    let stream = std::env::var(RELAY_STREAM_ENV).expect("relay stream");
    let durable = std::env::var(RELAY_CONSUMER_ENV).expect("relay consumer");
    let prefix = std::env::var(RELAY_PREFIX_ENV).expect("relay prefix");
    let instance = std::env::var(RELAY_INSTANCE_ENV).expect("relay instance");
    let stamp = std::env::var(RELAY_STAMP_ENV).is_ok_and(|v| v == "1");
    let max_in_flight: usize = env_or(RELAY_MAX_IN_FLIGHT_ENV, DEFAULT_MAX_IN_FLIGHT).max(1);
    // Exit when the parent goes away (its end of our stdin closes).
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    // Single-threaded by default, like baker-mq's default runtime.
    let runtime = match std::env::var(RELAY_RUNTIME_ENV).as_deref() {
        Ok("current_thread") | Err(_) => tokio::runtime::Builder::new_current_thread(),
        Ok("multi_thread") => tokio::runtime::Builder::new_multi_thread(),
        Ok(other) => {
            panic!("{RELAY_RUNTIME_ENV}={other:?}: expected current_thread or multi_thread")
        }
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    runtime.block_on(async move {
        let client = async_nats::ConnectOptions::new()
            .name("baker-bench-js-relay")
            .connect(nats_url())
            .await
            .expect("relay connects to NATS");
        // The context's defaults, as baker-mq's egress uses them.
        let js = jetstream::new(client);
        let consumer = js
            .get_stream(&stream)
            .await
            .expect("relay finds its ingress stream")
            // As baker-mq's ingress consumer.
            .get_or_create_consumer(
                &durable,
                PullConfig {
                    durable_name: Some(durable.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: max_in_flight as i64,
                    ..Default::default()
                },
            )
            .await
            .expect("relay creates its durable consumer");
        // Pull requests as baker-mq's ingress makes them (the defaults).
        let mut messages = consumer.messages().await.expect("relay pulls");
        println!("ready");
        let config = Arc::new(RelayConfig {
            js,
            prefix_len: prefix.len() + 1,
            instance,
            stamp,
            id_prefix: format!("{:016x}", fastrand::u64(..)),
        });
        let mut in_flight = FuturesUnordered::new();
        let mut count = 0u64;
        loop {
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                next = messages.next(), if in_flight.len() < max_in_flight => match next {
                    Some(Ok(message)) => {
                        count += 1;
                        in_flight.push(forward(config.clone(), message, count));
                        // Take what has already arrived without a round
                        // through the select for each, as baker-mq does.
                        while in_flight.len() < max_in_flight {
                            match messages.next().now_or_never() {
                                Some(Some(Ok(message))) => {
                                    count += 1;
                                    in_flight.push(forward(config.clone(), message, count));
                                }
                                _ => break,
                            }
                        }
                    }
                    // Missed heartbeats and the like: the stream goes on.
                    Some(Err(e)) => relay_error("pull", e),
                    None => break,
                },
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Measurement.

/// How a run publishes. Either way at most `window` publishes await their
/// stream ack.
#[derive(Clone, Copy)]
enum Mode {
    /// At this many messages per second.
    Paced(u64),
    /// As fast as possible, with at most `window` published but not yet
    /// received (closed loop: the path's sustainable rate).
    Window,
}

/// One way from the publisher to the consumer.
struct Route {
    name: &'static str,
    /// Subjects published to: `<publish_prefix>.<tag>`.
    publish_prefix: String,
    /// The stream the consumer pulls from, and the prefix of the subjects
    /// there: `<receive_prefix>.<tag>`.
    receive_stream: String,
    receive_prefix: String,
    /// The process between publisher and consumer, if any.
    hop_pid: Option<u32>,
}

struct Config {
    run: String,
    messages: u64,
    latency_messages: u64,
    rate: u64,
    size: usize,
    rounds: usize,
    window: u64,
}

/// Publishes `count` messages to `<publish_prefix>.<tag>` as `mode` says,
/// with a JetStream publish each, and counts what a new pull consumer on
/// `<receive_prefix>.<tag>` of the path's receiving stream gets (acking
/// each), until all arrived, or nothing did for `QUIET` after the last
/// publish ack. Deletes the consumer and purges the receiving stream after.
async fn measure(
    publisher: &Client,
    js: &Context,
    config: &Config,
    route: &Route,
    tag: &str,
    count: u64,
    mode: Mode,
) -> Outcome {
    static CONSUMERS: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "benchjs_{}_c{}",
        config.run,
        CONSUMERS.fetch_add(1, Ordering::Relaxed)
    );
    will_delete_consumer(&route.receive_stream, &name);
    let stream = js
        .get_stream(&route.receive_stream)
        .await
        .unwrap_or_else(|e| panic!("stream {}: {e}", route.receive_stream));
    let consumer = stream
        .create_consumer(PullConfig {
            durable_name: Some(name.clone()),
            filter_subject: format!("{}.{tag}", route.receive_prefix),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("consumer on {}: {e}", route.receive_stream));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(CONSUMER_BATCH)
        .messages()
        .await
        .expect("the bench's consumer pulls");

    let done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let started = now_ns();
    let consume = {
        let done = done.clone();
        let received = received.clone();
        tokio::spawn(async move {
            let mut seen = vec![false; count as usize];
            let mut out = Outcome {
                latencies: Vec::with_capacity(count as usize),
                ..Outcome::default()
            };
            let mut last = started;
            let deadline = Instant::now() + RUN_DEADLINE;
            loop {
                if Instant::now() > deadline {
                    out.timed_out = true;
                    break;
                }
                match tokio::time::timeout(QUIET, messages.next()).await {
                    Ok(Some(Ok(message))) => {
                        let at = now_ns();
                        let stamp = read_stamp(&message.payload);
                        let _ = message.ack().await;
                        let Some((sent, seq)) = stamp else {
                            continue;
                        };
                        match seen.get_mut(seq as usize) {
                            Some(s) if !*s => {
                                *s = true;
                                out.received += 1;
                                received.store(out.received, Ordering::Release);
                                out.latencies.push(at.saturating_sub(sent));
                                last = at;
                                if out.received == count {
                                    break;
                                }
                            }
                            _ => out.duplicates += 1,
                        }
                    }
                    // Missed heartbeats and the like.
                    Ok(Some(Err(_))) => {}
                    Ok(None) => break,
                    Err(_) if done.load(Ordering::Acquire) => break,
                    Err(_) => {}
                }
            }
            out.elapsed = Duration::from_nanos(last - started);
            out
        })
    };

    let publish = {
        let publisher = publisher.clone();
        let subject = format!("{}.{tag}", route.publish_prefix);
        let (size, window) = (config.size, config.window);
        publish_on_own_thread(done.clone(), move || async move {
            // Built here, as its ack task runs on this thread's runtime.
            let js = ContextBuilder::new()
                .timeout(Duration::from_secs(10))
                .max_ack_inflight(window as usize + 1)
                .build(publisher);
            let subject = async_nats::Subject::from(subject);
            let mut pending: VecDeque<jetstream::context::PublishAckFuture> =
                VecDeque::with_capacity(window as usize);
            let mut errors = 0u64;
            let t0 = Instant::now();
            let mut sent = 0;
            let mut stalled = false;
            'publish: for seq in 0..count {
                match mode {
                    Mode::Paced(rate) => pace(t0, rate, seq),
                    Mode::Window => {
                        let waiting = Instant::now();
                        while seq - received.load(Ordering::Acquire) >= window {
                            if waiting.elapsed() > READY_TIMEOUT {
                                stalled = true;
                                break 'publish;
                            }
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                }
                if pending.len() as u64 >= window {
                    if let Some(ack) = pending.pop_front() {
                        errors += u64::from(ack.await.is_err());
                    }
                }
                match js.publish(subject.clone(), payload(seq, size)).await {
                    Ok(ack) => pending.push_back(ack),
                    Err(_) => errors += 1,
                }
                sent += 1;
            }
            for ack in pending {
                errors += u64::from(ack.await.is_err());
            }
            (t0.elapsed(), sent, stalled, errors)
        })
    };
    let (publish_elapsed, sent, stalled, publish_errors) =
        tokio::time::timeout(RUN_DEADLINE, publish)
            .await
            .expect("publishing timed out")
            .expect("publisher thread failed");
    let mut out = tokio::time::timeout(RUN_DEADLINE + QUIET * 5, consume)
        .await
        .expect("consumer timed out")
        .expect("consumer task failed");
    out.sent = sent;
    out.timed_out |= stalled;
    out.publish_errors = publish_errors;
    out.publish_elapsed = publish_elapsed;
    out.latencies.sort_unstable();

    if stream.delete_consumer(&name).await.is_ok() {
        deleted_consumer(&route.receive_stream, &name);
    }
    // What arrived is not needed again: keep the disk use of long runs flat.
    if let Err(e) = stream.purge().await {
        eprintln!("could not purge {}: {e}", route.receive_stream);
    }
    out
}

/// The pid of the nats-server at [`nats_url`], if it runs here: the one
/// whose command line names the URL's port, or the only one.
fn nats_server_pid() -> Option<String> {
    let url = nats_url();
    let port = url
        .rsplit_once(':')
        .and_then(|(_, p)| p.split(['/', '?']).next())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty())
        .unwrap_or("4222")
        .to_owned();
    let pids = pids_named("nats-server");
    let listens_on_port = |pid: &String| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        args.windows(2)
            .any(|w| (w[0] == "-p" || w[0] == "--port") && w[1] == port)
            || args.iter().any(|a| *a == format!("--port={port}"))
    };
    match pids.iter().find(|p| listens_on_port(p)) {
        Some(pid) => Some(pid.clone()),
        None if pids.len() == 1 => pids.into_iter().next(),
        None => None,
    }
}

struct PathResult {
    name: &'static str,
    windows: Vec<Outcome>,
    latency: Outcome,
    /// CPU time over all the windowed runs.
    window_cpu: CpuUse,
}

impl PathResult {
    fn window_rates(&self) -> Vec<f64> {
        self.windows.iter().map(Outcome::rate).collect()
    }

    fn window_rate(&self) -> f64 {
        median(&self.window_rates())
    }
}

/// Runs every measurement on every path: a warm-up each, the windowed runs
/// interleaved across paths round by round (so drift hits all paths
/// alike), then the paced latency runs.
async fn run_all(
    publisher: &Client,
    js: &Context,
    paths: &[Route],
    config: &Config,
) -> Vec<PathResult> {
    let server = nats_server_pid();
    if server.is_none() {
        eprintln!("nats-server's process not found here: its CPU is not reported");
    }
    let mut results: Vec<PathResult> = paths
        .iter()
        .map(|p| PathResult {
            name: p.name,
            windows: Vec::new(),
            latency: Outcome::default(),
            window_cpu: CpuUse::default(),
        })
        .collect();
    for path in paths {
        eprintln!("[{}] warming up", path.name);
        let warm = measure(publisher, js, config, path, "warm", 2_000, Mode::Window).await;
        assert!(
            warm.received == warm.sent && warm.sent == 2_000 && warm.publish_errors == 0,
            "[{}] warm-up: {} published ({} not acked), {} received",
            path.name,
            warm.sent,
            warm.publish_errors,
            warm.received
        );
    }
    let pause = Duration::from_millis(300);
    for round in 0..config.rounds {
        for (path, result) in paths.iter().zip(&mut results) {
            eprintln!(
                "[{}] windowed {}/{}: {} messages, at most {} in flight",
                path.name,
                round + 1,
                config.rounds,
                config.messages,
                config.window
            );
            let probe = CpuProbe {
                hop: path.hop_pid.map(|p| p.to_string()),
                broker: server.clone(),
            };
            let before = probe.sample();
            let outcome = measure(
                publisher,
                js,
                config,
                path,
                &format!("win{round}"),
                config.messages,
                Mode::Window,
            )
            .await;
            let cpu = probe.since(before);
            result.window_cpu = if round == 0 {
                cpu
            } else {
                result.window_cpu.add(cpu)
            };
            eprintln!(
                "[{}]   {:.0} msg/s, {} lost",
                path.name,
                outcome.rate(),
                outcome.lost()
            );
            result.windows.push(outcome);
            tokio::time::sleep(pause).await;
        }
    }
    for (path, result) in paths.iter().zip(&mut results) {
        eprintln!(
            "[{}] latency: {} messages at {} msg/s",
            path.name, config.latency_messages, config.rate
        );
        result.latency = measure(
            publisher,
            js,
            config,
            path,
            "lat",
            config.latency_messages,
            Mode::Paced(config.rate),
        )
        .await;
        tokio::time::sleep(pause).await;
    }
    results
}

/// Creates the relay's two streams (as baker-mq would: a work-queue ingress
/// over `<prefix>.>`, an inbox stream over `_baker.<svc>.i1[.>]`, file
/// storage) and starts the relay; the relay's route.
async fn start_relay(js: &Context, run: &str, stamp: bool) -> Route {
    let variant = if stamp { "h" } else { "" };
    let prefix = format!("benchjsrelay{variant}_{run}");
    let service = format!("rjsvc{variant}_{run}");
    let inbox = format!("_baker.{service}.i1");
    let ingress_stream = format!("BENCHJS_{run}_RELAY{variant}_IN");
    let inbox_stream = format!("BENCHJS_{run}_RELAY{variant}_INBOX");
    let durable = format!("benchjs_{run}_relay{variant}");
    for (name, subjects, retention) in [
        (
            &ingress_stream,
            vec![format!("{prefix}.>")],
            RetentionPolicy::WorkQueue,
        ),
        (
            &inbox_stream,
            vec![inbox.clone(), format!("{inbox}.>")],
            RetentionPolicy::Limits,
        ),
    ] {
        will_delete_stream(name);
        js.create_stream(StreamConfig {
            name: name.clone(),
            subjects,
            retention,
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("creating stream {name}: {e}"));
    }
    will_delete_consumer(&ingress_stream, &durable);

    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    let pid = spawn_child(
        if stamp { "relay+hdr" } else { "relay" },
        command,
        &[
            (RELAY_ENV, "1".to_owned()),
            (RELAY_STREAM_ENV, ingress_stream),
            (RELAY_CONSUMER_ENV, durable),
            (RELAY_PREFIX_ENV, prefix.clone()),
            (RELAY_INSTANCE_ENV, "i1".to_owned()),
            (RELAY_STAMP_ENV, if stamp { "1" } else { "0" }.to_owned()),
            (NATS_URL_ENV, nats_url()),
            (
                RELAY_MAX_IN_FLIGHT_ENV,
                env_or(RELAY_MAX_IN_FLIGHT_ENV, DEFAULT_MAX_IN_FLIGHT).to_string(),
            ),
            (
                RELAY_RUNTIME_ENV,
                std::env::var(RELAY_RUNTIME_ENV).unwrap_or_else(|_| "current_thread".to_owned()),
            ),
        ],
    );
    // Wait for "ready" on its stdout.
    let stdout = with_child(pid, |child| child.stdout.take())
        .expect("relay child")
        .expect("relay stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(READY_TIMEOUT)
        .expect("relay did not report ready in time");
    assert_eq!(line.trim(), "ready", "relay failed to start");
    eprintln!("relay{} ready (pid {pid})", if stamp { "+hdr" } else { "" });
    Route {
        name: if stamp { "relay+hdr" } else { "relay" },
        publish_prefix: format!("{prefix}.{service}"),
        receive_stream: inbox_stream,
        receive_prefix: inbox,
        hop_pid: Some(pid),
    }
}

/// Starts a `baker-mq directory` and a `baker-mq` sidecar with a JetStream
/// ingress that registers instance `i1` with a durable inbox; the sidecar's
/// route and its admin address.
async fn start_baker(run: &str, logs: &Path) -> (Route, SocketAddr) {
    let Directory {
        addr: directory,
        log: dir_log,
        ..
    } = spawn_directory(logs);

    let http = http_client();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !responds_ok(&http, &format!("http://{directory}/healthz")).await {
        assert!(
            Instant::now() < deadline,
            "directory not up at {directory}; log:\n{}",
            log_tail(&dir_log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let admin = free_addr();
    let prefix = format!("benchjsbaker_{run}");
    let group = format!("benchjs_{run}");
    let service = format!("bjsvc_{run}");
    let inbox = format!("_baker.{service}.i1");
    // The names baker-mq gives them (adapters/nats/src/jetstream.rs).
    let ingress_stream = format!("BAKER_INGRESS_{}", stream_name(&prefix));
    let inbox_stream = format!("BAKER_INBOX_{}", stream_name(&inbox));
    will_delete_stream(&ingress_stream);
    will_delete_stream(&inbox_stream);
    will_delete_consumer(&ingress_stream, &stream_name(&group));

    let sidecar_log = logs.join("sidecar.log");
    let pid = spawn_baker_mq(
        "baker-mq sidecar",
        &[
            "--adapter",
            "nats",
            "--broker",
            &format!("{}?ingress=jetstream", nats_url()),
            "--directory",
            &format!("http://{directory}"),
            "--admin",
            &admin.to_string(),
            "--ingress-prefix",
            &prefix,
            "--queue-group",
            &group,
            "--register",
            &format!(
                "service={service},id=i1,broker={}?inbox=jetstream",
                nats_url()
            ),
        ],
        &sidecar_log,
    );

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let (ready, routed) = sidecar_state(&http, admin, &service).await;
        if ready && routed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "baker-mq not ready/routed (ready={ready}, routed={routed}); sidecar log:\n{}",
            log_tail(&sidecar_log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("baker-mq ready (pid {pid}, admin {admin}, directory {directory})");
    (
        Route {
            name: "baker-mq",
            publish_prefix: format!("{prefix}.{service}"),
            receive_stream: inbox_stream,
            receive_prefix: inbox,
            hop_pid: Some(pid),
        },
        admin,
    )
}

/// Creates the `direct` path's stream (as an inbox stream: limits
/// retention, file storage); its route.
async fn direct_route(js: &Context, run: &str) -> Route {
    let name = format!("BENCHJS_{run}_DIRECT");
    let prefix = format!("benchjsdirect_{run}");
    will_delete_stream(&name);
    js.create_stream(StreamConfig {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("creating stream {name}: {e}"));
    Route {
        name: "direct",
        publish_prefix: prefix.clone(),
        receive_stream: name,
        receive_prefix: prefix,
        hop_pid: None,
    }
}

fn print_report(config: &Config, results: &[PathResult]) {
    let flag = |outcomes: &[&Outcome]| {
        if outcomes.iter().any(|o| o.timed_out) {
            "  TIMED OUT"
        } else {
            ""
        }
    };
    println!();
    println!(
        "JetStream end-to-end: {} B payloads, file storage, {} round(s); broker {}; relay: at most {} in flight, runtime {}",
        config.size,
        config.rounds,
        nats_url(),
        env_or(RELAY_MAX_IN_FLIGHT_ENV, DEFAULT_MAX_IN_FLIGHT),
        std::env::var(RELAY_RUNTIME_ENV).unwrap_or_else(|_| "current_thread".to_owned())
    );

    println!();
    println!(
        "(i) throughput, windowed: {} msgs per round, at most {} awaiting a publish ack and at most {} published but not received",
        config.messages, config.window, config.window
    );
    println!(
        "{:<9} | {:>10} | {:>10} {:>19} | {:>5} {:>5} | {:>13} {:>13} {:>15}",
        "path",
        "publish/s",
        "received/s",
        "(min - max)",
        "lost",
        "dup",
        "CPU bench",
        "CPU hop",
        "CPU nats-server"
    );
    println!("{}", "-".repeat(119));
    for r in results {
        let rates = r.window_rates();
        let (lo, hi) = range(&rates);
        let lost: u64 = r.windows.iter().map(Outcome::lost).sum();
        let duplicates: u64 = r.windows.iter().map(|o| o.duplicates).sum();
        let received: u64 = r.windows.iter().map(|o| o.received).sum();
        let publish: Vec<f64> = r.windows.iter().map(Outcome::publish_rate).collect();
        let cpu = |d| cpu_per_msg(d, received);
        println!(
            "{:<9} | {:>10.0} | {:>10.0} {:>19} | {:>5} {:>5} | {:>13} {:>13} {:>15}{}",
            r.name,
            median(&publish),
            r.window_rate(),
            format!("({lo:.0} - {hi:.0})"),
            lost,
            duplicates,
            cpu(r.window_cpu.bench),
            cpu(r.window_cpu.hop),
            cpu(r.window_cpu.broker),
            flag(&r.windows.iter().collect::<Vec<_>>()),
        );
    }
    println!("   per round received/s:");
    for r in results {
        let rounds: Vec<String> = r
            .windows
            .iter()
            .map(|o| format!("{:.0}", o.rate()))
            .collect();
        println!("     {:<9} {}", r.name, rounds.join(", "));
    }
    let other: Vec<String> = results
        .iter()
        .filter_map(|r| {
            let received: u64 = r.windows.iter().map(|o| o.received).sum();
            r.window_cpu
                .other
                .map(|d| format!("{} {}", r.name, cpu_per_msg(Some(d), received)))
        })
        .collect();
    println!("   CPU = user+system time of the process over the windowed runs / messages received (10 ms ticks); bench = publisher + consumer");
    if !other.is_empty() {
        println!(
            "   CPU of every other process on the machine meanwhile: {}",
            other.join(", ")
        );
    }

    println!();
    println!(
        "(ii) latency: {} msgs paced at {} msg/s (publish to the consumer's receipt)",
        config.latency_messages, config.rate
    );
    println!(
        "{:<9} | {:>9} {:>9} {:>9} {:>9} | {:>5} {:>5}",
        "path", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "lost", "dup"
    );
    println!("{}", "-".repeat(68));
    for r in results {
        let l = &r.latency;
        println!(
            "{:<9} | {:>9.1} {:>9.1} {:>9.1} {:>9.1} | {:>5} {:>5}{}",
            r.name,
            l.percentile_us(0.50),
            l.percentile_us(0.99),
            l.percentile_us(0.999),
            l.percentile_us(1.0),
            l.lost(),
            l.duplicates,
            flag(&[l]),
        );
    }
    let publish_errors: u64 = results
        .iter()
        .flat_map(|r| r.windows.iter().chain([&r.latency]))
        .map(|o| o.publish_errors)
        .sum();
    if publish_errors > 0 {
        println!("publishes the stream did not ack: {publish_errors}");
    }

    let find = |name: &str| results.iter().find(|r| r.name == name);
    if let (Some(d), Some(r), Some(b)) = (find("direct"), find("relay"), find("baker-mq")) {
        let p = |o: &Outcome, q: f64| o.percentile_us(q);
        let vs_relay = ratio(b.window_rate(), r.window_rate());
        println!();
        println!("ratios (medians of the windowed rounds)");
        println!(
            "  baker-mq / relay    throughput {:>6.3}   (target >= 0.8: {})",
            vs_relay,
            if vs_relay >= 0.8 { "met" } else { "NOT met" }
        );
        println!(
            "  baker-mq / direct   throughput {:>6.3}",
            ratio(b.window_rate(), d.window_rate())
        );
        println!(
            "  relay    / direct   throughput {:>6.3}",
            ratio(r.window_rate(), d.window_rate())
        );
        if let Some(h) = find("relay+hdr") {
            println!(
                "  baker-mq / relay+hdr throughput {:>5.3}",
                ratio(b.window_rate(), h.window_rate())
            );
        }
        println!(
            "  latency p50: baker-mq / relay {:.2}, baker-mq / direct {:.2}; p99: baker-mq / relay {:.2}, baker-mq / direct {:.2}",
            ratio(p(&b.latency, 0.5), p(&r.latency, 0.5)),
            ratio(p(&b.latency, 0.5), p(&d.latency, 0.5)),
            ratio(p(&b.latency, 0.99), p(&r.latency, 0.99)),
            ratio(p(&b.latency, 0.99), p(&d.latency, 0.99)),
        );
        println!(
            "  latency added over direct: p50 relay {:+.1} µs, baker-mq {:+.1} µs; p99 relay {:+.1} µs, baker-mq {:+.1} µs",
            p(&r.latency, 0.5) - p(&d.latency, 0.5),
            p(&b.latency, 0.5) - p(&d.latency, 0.5),
            p(&r.latency, 0.99) - p(&d.latency, 0.99),
            p(&b.latency, 0.99) - p(&d.latency, 0.99),
        );
    }
}

fn bench_main() {
    let config = Config {
        run: common::run_id(),
        messages: env_or("BAKER_BENCH_MESSAGES", 200_000),
        latency_messages: env_or("BAKER_BENCH_LATENCY_MESSAGES", 20_000),
        rate: env_or("BAKER_BENCH_RATE", 5_000),
        size: env_or("BAKER_BENCH_PAYLOAD", 128usize).max(STAMP),
        rounds: env_or("BAKER_BENCH_ROUNDS", 3),
        window: env_or("BAKER_BENCH_WINDOW", 8_192),
    };
    assert!(
        config.messages > 0
            && config.latency_messages > 0
            && config.rate > 0
            && config.rounds > 0
            && config.window > 0,
        "message counts, rate, rounds and window must be positive"
    );
    let with_headers = env_or("BAKER_BENCH_RELAY_HDR", 0u8) == 1;
    let timeout = Duration::from_secs(env_or("BAKER_BENCH_TIMEOUT_SECS", 900));
    // Whatever happens, the bench ends, its children die and what it
    // created on the broker is deleted.
    common::watchdog("jetstream_e2e", timeout, || {
        cleanup();
        std::process::exit(2);
    });
    let _guard = CleanupGuard(cleanup);
    epoch();
    let run = config.run.clone();
    let logs = tempfile::tempdir().expect("temp dir");

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let results = runtime.block_on(async {
        let connect = |name: &'static str| async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                async_nats::ConnectOptions::new()
                    .name(name)
                    .connect(nats_url()),
            )
            .await
            .unwrap_or_else(|_| panic!("connecting to {} timed out", nats_url()))
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", nats_url()))
        };
        let publisher = connect("baker-bench-js-publisher").await;
        let consumer = connect("baker-bench-js-consumer").await;
        let js = ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .build(consumer);
        if let Err(e) = js.query_account().await {
            panic!(
                "no JetStream at {} ({e}); start the shared broker with `bash integration/brokers.sh`",
                nats_url()
            );
        }
        let dlq_existed = js.get_stream("BAKER_DLQ").await.is_ok();
        eprintln!("connected to {} (run {run})", nats_url());

        let mut paths = vec![direct_route(&js, &run).await];
        paths.push(start_relay(&js, &run, false).await);
        if with_headers {
            paths.push(start_relay(&js, &run, true).await);
        }
        let (baker, admin) = start_baker(&run, logs.path()).await;
        paths.push(baker);
        let results = run_all(&publisher, &js, &paths, &config).await;

        common::print_baker_counts(admin).await;
        // The hops first (the sidecar before its directory, which it would
        // otherwise log as lost), so that nothing recreates what is deleted.
        for path in paths.iter().rev() {
            if let Some(pid) = path.hop_pid {
                common::stop_child(pid);
            }
        }
        kill_children();
        let (streams, consumers) = delete_created(&js).await;
        eprintln!("deleted {streams} stream(s) and {consumers} consumer(s) of this run");
        let mut names = js.stream_names();
        let mut left = Vec::new();
        while let Some(Ok(name)) = names.next().await {
            if name.contains(&run) {
                left.push(name);
            }
        }
        if !left.is_empty() {
            eprintln!("streams of this run still on the server: {left:?}");
        }
        if !dlq_existed && js.get_stream("BAKER_DLQ").await.is_ok() {
            eprintln!("note: baker-mq created the shared stream BAKER_DLQ (left in place)");
        }
        results
    });
    let log = std::fs::read_to_string(logs.path().join("sidecar.log")).unwrap_or_default();
    common::print_log_warnings(&log);
    print_report(&config, &results);
}

fn main() {
    if std::env::var_os(RELAY_ENV).is_some() {
        relay_main();
        return;
    }
    if !common::invoked_as_bench() {
        println!(
            "jetstream_e2e: needs a NATS server with JetStream; run it with `cargo bench --bench jetstream_e2e`"
        );
        return;
    }
    bench_main();
}
