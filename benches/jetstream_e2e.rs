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
//! relay also stamping `baker-msg-id` and `Nats-Msg-Id` (what baker-mq stamps
//! on this path, for the inbox stream's de-duplication) and `baker-origin`
//! and `baker-attempt` (which it stamped before it stamped only headers
//! something reads).
//!
//! For each path, interleaved across paths round by round,
//! `BAKER_BENCH_ROUNDS` windowed runs of `BAKER_BENCH_MESSAGES` messages: at
//! most `BAKER_BENCH_WINDOW` publishes awaiting their stream ack and at most
//! as many messages published but not yet received, giving received msgs/s
//! end to end and the CPU time each process spent per message (Linux
//! /proc); then a paced run of `BAKER_BENCH_LATENCY_MESSAGES` at
//! `BAKER_BENCH_RATE` msg/s for p50/p99. Each payload starts with its send
//! time, a sequence number and the run's tag (see `common::stamp`). Last,
//! baker-mq's memory under overload (`common::overload`): publishing at
//! 5,000 msg/s for a minute to an instance taking 500.
//! `BAKER_BENCH_PAYLOAD` sets the payload size, `BAKER_BENCH_TIMEOUT_SECS`
//! the overall limit, `BAKER_BENCH_RELAY_RUNTIME` the relay's tokio runtime
//! (`current_thread`, the default and what baker-mq uses, or
//! `multi_thread`). The harness in `common` measures and reports; this file
//! holds what is JetStream's own: the streams, the relay (in `relay.rs`
//! beside it), the paths and the sidecar's arguments.
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
// The relay process, a program of its own; beside this file, as Cargo takes
// every `benches/*.rs` for a bench target.
#[path = "jetstream_e2e/relay.rs"]
mod relay;

use std::path::Path as FsPath;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Config as PullConfig, Stream as Messages};
use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType, Stream};
use async_nats::jetstream::{self, Context, ContextBuilder};
use async_nats::{Client, ConnectOptions, Subject};
use futures::StreamExt;

use baker_adapter_nats::stream_name;
use common::baker::{start_directory, start_sidecar, Sidecar};
use common::confirms::{Confirm, Confirms};
use common::measure::{Closed, Consumer, Mode, Next, Path, Published, Publisher, Route, Timing};
use common::nats::{connect, nats_server_pid, nats_url, relay_env, relay_runtime, RELAY_RATIOS};
use common::overload::{self, rss_kib, Overload};
use common::procs::{bench_main, kill_children, spawn_self, stop_child, Created};
use common::report::Report;
use common::rounds::{self, Load, Plan, Sizes};
use common::stamp::now_ns;
use common::{env_or, run_id};
use relay::{
    relay_main, DEFAULT_MAX_IN_FLIGHT, RELAY_CONSUMER_ENV, RELAY_ENV, RELAY_INSTANCE_ENV,
    RELAY_MAX_IN_FLIGHT_ENV, RELAY_PREFIX_ENV, RELAY_STAMP_ENV, RELAY_STREAM_ENV,
};

/// As baker-mq's ingress consumer: how long the server waits for an ack.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Time with no message, once publishing is done, after which a run ends.
/// Longer than for core NATS: a hop may still be working through the
/// backlog its ingress stream holds when the last publish is acked.
const QUIET: Duration = Duration::from_secs(3);
/// Messages per pull request of the bench's consumer, which must not be what
/// limits a path.
const CONSUMER_BATCH: usize = 1_000;

// ---------------------------------------------------------------------------
// What this run created on the broker, deleted at the end, also by the
// harness's cleanup (on panic, timeout and signal).

/// Streams to delete (with every consumer on them: every stream is the
/// run's own).
static STREAMS: Created = Created::new();

/// Deletes every recorded stream; how many the server confirmed deleted.
/// Each at most once, whoever calls this first (the end of the run, or the
/// cleanup).
async fn delete_streams(js: &Context) -> usize {
    let mut deleted = 0;
    for stream in &STREAMS.take() {
        match js.delete_stream(stream).await {
            Ok(_) => deleted += 1,
            Err(e) => eprintln!("could not delete stream {stream}: {e}"),
        }
    }
    deleted
}

/// The harness's cleanup hook, after the children are gone: deletes what
/// the run created on the broker, on a connection and runtime of its own,
/// bounded in time.
fn cleanup() {
    if STREAMS.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cleanup: no runtime; streams left: {:?}", STREAMS.take());
        return;
    };
    runtime.block_on(async {
        let work = async {
            let client = async_nats::connect(nats_url()).await.ok()?;
            Some(delete_streams(&jetstream::new(client)).await)
        };
        match tokio::time::timeout(Duration::from_secs(20), work).await {
            Ok(Some(deleted)) => eprintln!("cleanup: deleted {deleted} stream(s)"),
            _ => eprintln!(
                "cleanup: could not reach {}; streams left: {:?}",
                nats_url(),
                STREAMS.take()
            ),
        }
    });
}

// ---------------------------------------------------------------------------
// The paths.

/// One way from the publisher to the consumer: each run publishes to
/// `<publish_prefix>.r<tag>` and pulls `<receive_prefix>.r<tag>` from
/// `receive_stream`.
struct JsRoute {
    publish_prefix: String,
    receive_stream: String,
    receive_prefix: String,
    publisher: Client,
    js: Context,
    run: String,
    /// At most this many publishes awaiting their ack.
    window: usize,
}

impl Route for JsRoute {
    type Consumer = JsConsumer;
    type Publisher = JsPublisher;

    /// A new pull consumer on the path's receiving stream, acking each
    /// message; deleted (and the stream purged) when the run ends.
    async fn consume(&self, tag: u64) -> JsConsumer {
        let name = format!("benchjs_{}_c{tag}", self.run);
        let stream = self
            .js
            .get_stream(&self.receive_stream)
            .await
            .unwrap_or_else(|e| panic!("stream {}: {e}", self.receive_stream));
        let consumer = stream
            .create_consumer(PullConfig {
                durable_name: Some(name.clone()),
                filter_subject: format!("{}.r{tag}", self.receive_prefix),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("consumer on {}: {e}", self.receive_stream));
        let messages = consumer
            .stream()
            .max_messages_per_batch(CONSUMER_BATCH)
            .messages()
            .await
            .expect("the bench's consumer pulls");
        JsConsumer {
            stream,
            stream_name: self.receive_stream.clone(),
            name,
            messages,
        }
    }

    fn publisher(&self, tag: u64) -> JsPublisher {
        JsPublisher {
            client: self.publisher.clone(),
            subject: Subject::from(format!("{}.r{tag}", self.publish_prefix)),
            window: self.window,
            js: None,
            confirms: Confirms::new(self.window),
        }
    }
}

struct JsConsumer {
    stream: Stream,
    stream_name: String,
    name: String,
    messages: Messages,
}

impl Consumer for JsConsumer {
    async fn receive(&mut self, wait: Duration) -> Next {
        match tokio::time::timeout(wait, self.messages.next()).await {
            Ok(Some(Ok(message))) => {
                let at = now_ns();
                let (message, acker) = message.split();
                let _ = acker.ack().await;
                Next::Message {
                    at,
                    payload: message.payload,
                    redelivered: false,
                }
            }
            // Missed heartbeats and the like: the stream goes on.
            Ok(Some(Err(_))) | Err(_) => Next::Idle,
            Ok(None) => Next::Ended("the pull consumer's stream ended".to_owned()),
        }
    }

    async fn close(self) -> Closed {
        if let Err(e) = self.stream.delete_consumer(&self.name).await {
            eprintln!("could not delete consumer {}: {e}", self.name);
        }
        // What arrived is not needed again: keep the disk use of long runs
        // flat.
        if let Err(e) = self.stream.purge().await {
            eprintln!("could not purge {}: {e}", self.stream_name);
        }
        Closed::default()
    }
}

/// JetStream publishes with at most `window` awaiting their ack.
struct JsPublisher {
    client: Client,
    subject: Subject,
    window: usize,
    js: Option<Context>,
    confirms: Confirms,
}

impl Publisher for JsPublisher {
    async fn start(&mut self) {
        // Built here, as its ack task runs on this thread's runtime.
        let js = ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .max_ack_inflight(self.window + 1)
            .build(self.client.clone());
        self.js = Some(js);
    }

    async fn publish(&mut self, payload: Vec<u8>, out: &mut Published) -> bool {
        if !self.confirms.room(out).await {
            return false;
        }
        let js = self.js.as_ref().expect("publisher started");
        match js.publish(self.subject.clone(), payload.into()).await {
            Ok(ack) => {
                let confirm = async move {
                    match ack.await {
                        Ok(_) => Confirm::Kept,
                        Err(e) => Confirm::Failed(e.to_string()),
                    }
                };
                self.confirms.push(confirm);
            }
            Err(e) => out.error(e),
        }
        true
    }

    async fn finish(mut self, out: &mut Published) {
        self.confirms.drain(out).await;
    }
}

/// Creates the relay's two streams (as baker-mq would: a work-queue ingress
/// over `<prefix>.>`, an inbox stream over `_baker.<svc>.i1[.>]`, file
/// storage) and starts the relay; its publish prefix, receiving stream and
/// prefix, and pid.
async fn start_relay(js: &Context, run: &str, stamp: bool) -> (String, String, String, u32) {
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
        STREAMS.add(name);
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
    let mut env = relay_env();
    env.extend([
        (RELAY_ENV, "1".to_owned()),
        (RELAY_STREAM_ENV, ingress_stream),
        (RELAY_CONSUMER_ENV, durable),
        (RELAY_PREFIX_ENV, prefix.clone()),
        (RELAY_INSTANCE_ENV, "i1".to_owned()),
        (RELAY_STAMP_ENV, if stamp { "1" } else { "0" }.to_owned()),
        (RELAY_MAX_IN_FLIGHT_ENV, max_in_flight().to_string()),
    ]);
    let pid = spawn_self(if stamp { "relay+hdr" } else { "relay" }, &env);
    (format!("{prefix}.{service}"), inbox_stream, inbox, pid)
}

/// The relay's bound on messages in flight, as set or by default.
fn max_in_flight() -> usize {
    env_or(RELAY_MAX_IN_FLIGHT_ENV, DEFAULT_MAX_IN_FLIGHT)
}

/// Starts a `baker-mq directory` and a `baker-mq` sidecar with a JetStream
/// ingress that registers instance `i1` with a durable inbox; the sidecar,
/// its publish prefix, and its receiving stream and prefix.
async fn start_baker(run: &str, logs: &FsPath) -> (Sidecar, String, String, String) {
    let directory = start_directory(logs)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!("benchjsbaker_{run}");
    let group = format!("benchjs_{run}");
    let service = format!("bjsvc_{run}");
    let inbox = format!("_baker.{service}.i1");
    // The names baker-mq gives them (adapters/nats/src/jetstream.rs).
    let ingress_stream = format!("BAKER_INGRESS_{}", stream_name(&prefix));
    let inbox_stream = format!("BAKER_INBOX_{}", stream_name(&inbox));
    STREAMS.add(&ingress_stream);
    STREAMS.add(&inbox_stream);
    let args = [
        "--adapter",
        "nats",
        "--broker",
        &format!("{}?ingress=jetstream", nats_url()),
        "--ingress-prefix",
        &prefix,
        "--queue-group",
        &group,
        "--register",
        &format!(
            "service={service},id=i1,broker={}?inbox=jetstream",
            nats_url()
        ),
    ];
    let log = logs.join("sidecar.log");
    let sidecar = start_sidecar("baker-mq sidecar", &directory, &args, &service, log)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (sidecar, format!("{prefix}.{service}"), inbox_stream, inbox)
}

/// Creates the `direct` path's stream (as an inbox stream: limits
/// retention, file storage); its prefix and name.
async fn direct_stream(js: &Context, run: &str) -> (String, String) {
    let name = format!("BENCHJS_{run}_DIRECT");
    let prefix = format!("benchjsdirect_{run}");
    STREAMS.add(&name);
    js.create_stream(StreamConfig {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("creating stream {name}: {e}"));
    (prefix, name)
}

async fn bench() -> bool {
    let sizes = Sizes::from_env(
        ("BAKER_BENCH_MESSAGES", 200_000),
        ("BAKER_BENCH_LATENCY_MESSAGES", 20_000),
        ("BAKER_BENCH_RATE", 5_000),
    );
    let window: u64 = env_or("BAKER_BENCH_WINDOW", 8_192);
    assert!(window > 0, "BAKER_BENCH_WINDOW must be positive");
    let with_headers = env_or("BAKER_BENCH_RELAY_HDR", 0u8) == 1;
    let run = run_id();
    let logs = tempfile::tempdir().expect("temp dir");

    let publisher = connect("baker-bench-js-publisher", ConnectOptions::new()).await;
    let consumer = connect("baker-bench-js-consumer", ConnectOptions::new()).await;
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

    let path = |name, (publish_prefix, receive_stream, receive_prefix, hop)| Path {
        name,
        hop,
        route: JsRoute {
            publish_prefix,
            receive_stream,
            receive_prefix,
            publisher: publisher.clone(),
            js: js.clone(),
            run: run.clone(),
            window: window as usize,
        },
    };
    let (prefix, stream) = direct_stream(&js, &run).await;
    let mut paths = vec![path("direct", (prefix.clone(), stream, prefix, None))];
    for (name, stamp) in [("relay", false), ("relay+hdr", true)] {
        if stamp && !with_headers {
            continue;
        }
        let (prefix, stream, inbox, pid) = start_relay(&js, &run, stamp).await;
        paths.push(path(name, (prefix, stream, inbox, Some(pid))));
    }
    let (baker, prefix, stream, inbox) = start_baker(&run, logs.path()).await;
    let idle = rss_kib(baker.pid);
    paths.push(path("baker-mq", (prefix, stream, inbox, Some(baker.pid))));
    let plan = Plan {
        loads: vec![Load {
            label: "windowed",
            mode: Mode::Window(window),
            about: format!("at most {window} awaiting a publish ack and at most {window} published but not received"),
            loss_ok: false,
        }],
        latency_each_round: false,
        timing: Timing {
            quiet: QUIET,
            linger: Duration::ZERO,
        },
        pause: Duration::from_millis(300),
        broker: nats_server_pid().into_iter().collect(),
        strict: false,
        sizes,
    };
    let results = rounds::run(&plan, &paths, Vec::new()).await;
    let overload = Overload::from_env(5_000);
    let mut memory = Vec::new();
    if let (Some(overload), Some(path)) = (&overload, paths.last()) {
        memory.push(overload::run(path, idle, plan.sizes.size, overload).await);
    }

    baker.print_record().await;
    // The hops first (the sidecar before its directory, which it would
    // otherwise log as lost), so that nothing recreates what is deleted.
    for path in paths.iter().rev() {
        if let Some(pid) = path.hop {
            stop_child(pid);
        }
    }
    kill_children();
    let deleted = delete_streams(&js).await;
    eprintln!("deleted {deleted} stream(s) of this run, with their consumers");
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

    let report = Report {
        title: format!(
            "JetStream end-to-end: {} B payloads, file storage, {} round(s); broker {}; relay: at most {} in flight, runtime {}",
            plan.sizes.size,
            plan.sizes.rounds,
            nats_url(),
            max_in_flight(),
            relay_runtime()
        ),
        notes: vec!["CPU hop is the relay's or baker-mq's process; CPU broker is nats-server's; confirmed = acked by the stream".to_owned()],
        ratios: RELAY_RATIOS.to_vec(),
        target: Some(("baker-mq", "relay", 0.9)),
    };
    overload::print_report(&plan, &report, &results, overload.as_ref(), &memory)
}

fn main() {
    if std::env::var_os(RELAY_ENV).is_some() {
        relay_main();
        return;
    }
    bench_main(
        "jetstream_e2e",
        "a NATS server with JetStream",
        900,
        cleanup,
        bench,
    );
}
