//! End-to-end throughput and latency over a real NATS server, four paths on
//! the same broker, in one run:
//!
//! * `direct`:   publisher → subject → subscriber;
//! * `relay`:    publisher → `<prefix>.<svc>.<topic>` → a minimal
//!   subscribe-and-republish relay (this binary re-executed with
//!   `BAKER_BENCH_RELAY=1`, a separate process) → `_baker.<svc>.i1.<topic>`;
//! * `relay+hdr`: the same relay, also stamping three headers
//!   (`baker-msg-id`, `baker-origin`, `baker-attempt`), what baker-mq added
//!   to every message before it stamped only headers something reads: the
//!   cost of headers on a hop;
//! * `baker-mq`: publisher → `<prefix>.<svc>.<topic>` → a `baker-mq` sidecar
//!   (with its own `baker-mq directory`) → `_baker.<svc>.i1.<topic>`.
//!
//! For each path, interleaved across paths round by round:
//!
//! * burst: `BAKER_BENCH_MESSAGES` messages published as fast as possible,
//!   counted until quiet for 1 s: received msgs/s and how many were lost
//!   (core NATS drops for slow consumers);
//! * windowed: the same count with at most `BAKER_BENCH_WINDOW` in flight,
//!   the rate the path sustains without drops;
//!
//! both with the CPU time each process spent per message (Linux /proc),
//! `BAKER_BENCH_ROUNDS` times each, then a paced run of
//! `BAKER_BENCH_LATENCY_MESSAGES` at `BAKER_BENCH_RATE` msg/s for p50/p99.
//! Last, baker-mq's memory under overload (`common::overload`): publishing
//! at 20,000 msg/s for a minute to an instance taking 2,000.
//! Each payload starts with its send time, a sequence number and the run's
//! tag (see `common::stamp`). `BAKER_BENCH_PAYLOAD` sets the payload size,
//! `BAKER_BENCH_TIMEOUT_SECS` the overall limit, `BAKER_BENCH_RELAY_RUNTIME`
//! the relays' tokio runtime (`current_thread`, the default and what
//! baker-mq uses, or `multi_thread`). The harness in `common` measures and
//! reports; this file holds what is NATS's own: the relay, the paths and the
//! sidecar's arguments.
//!
//! Needs a NATS server (`BAKER_BENCH_NATS_URL`, default
//! nats://127.0.0.1:4222). Run with `cargo bench --bench nats_e2e`; quick run:
//! `BAKER_BENCH_MESSAGES=20000 BAKER_BENCH_LATENCY_MESSAGES=2000 BAKER_BENCH_ROUNDS=1 cargo bench --bench nats_e2e`.
//! Without `--bench` on its command line (e.g. `cargo test --benches`) it
//! does nothing, so test runs need no broker.

mod common;

use std::path::Path as FsPath;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Subject, Subscriber};
use futures::StreamExt;

use common::baker::{start_directory, start_sidecar, Sidecar};
use common::measure::{Closed, Consumer, Mode, Next, Path, Published, Publisher, Route, Timing};
use common::nats::{
    connect, inbox_subject, nats_server_pid, nats_url, relay_env, relay_runtime, run_relay,
    RELAY_RATIOS,
};
use common::overload::{self, rss_kib, Overload};
use common::procs::{bench_main, spawn_self};
use common::report::Report;
use common::rounds::{self, Load, Plan, Sizes};
use common::stamp::now_ns;
use common::{env_or, run_id};

/// Selects relay mode when this binary re-executes itself.
const RELAY_ENV: &str = "BAKER_BENCH_RELAY";
const RELAY_PREFIX_ENV: &str = "BAKER_BENCH_RELAY_PREFIX";
const RELAY_GROUP_ENV: &str = "BAKER_BENCH_RELAY_GROUP";
const RELAY_INSTANCE_ENV: &str = "BAKER_BENCH_RELAY_INSTANCE";
/// When set, the relay also stamps three headers (`baker-msg-id`,
/// `baker-origin`, `baker-attempt`): the cost of headers on a hop.
const RELAY_STAMP_ENV: &str = "BAKER_BENCH_RELAY_STAMP";

// ---------------------------------------------------------------------------
// Relay mode.

fn relay_main() {
    let prefix = std::env::var(RELAY_PREFIX_ENV).expect("relay prefix");
    let group = std::env::var(RELAY_GROUP_ENV).expect("relay queue group");
    let instance = std::env::var(RELAY_INSTANCE_ENV).expect("relay instance");
    let stamp = std::env::var(RELAY_STAMP_ENV).is_ok_and(|v| v == "1");
    run_relay(async move {
        let client = ConnectOptions::new()
            .name("baker-bench-relay")
            .connect(nats_url())
            .await
            .expect("relay connects to NATS");
        let mut subscriber = client
            .queue_subscribe(format!("{prefix}.>"), group)
            .await
            .expect("relay subscribes");
        client.flush().await.expect("relay flush");
        println!("ready");
        let skip = prefix.len() + 1;
        let id_prefix = format!("{:016x}", fastrand::u64(..));
        let mut count = 0u64;
        while let Some(msg) = subscriber.next().await {
            let Some(rest) = msg.subject.get(skip..) else {
                continue;
            };
            let subject = inbox_subject(rest, &instance);
            let headers = if stamp {
                count += 1;
                let mut headers = msg.headers.unwrap_or_default();
                headers.insert("baker-msg-id", format!("{id_prefix}-{count:x}"));
                headers.insert("baker-origin", msg.subject.as_str());
                headers.insert("baker-attempt", "1");
                Some(headers)
            } else {
                msg.headers
            };
            let result = match headers {
                Some(headers) => {
                    client
                        .publish_with_headers(subject, headers, msg.payload)
                        .await
                }
                None => client.publish(subject, msg.payload).await,
            };
            if let Err(e) = result {
                eprintln!("relay publish failed: {e}");
            }
        }
    });
}

// ---------------------------------------------------------------------------
// The paths.

/// One way from the publisher to the consumer: each run publishes to
/// `<publish_prefix>.r<tag>` and receives on `<receive_prefix>.r<tag>`.
struct NatsRoute {
    publish_prefix: String,
    receive_prefix: String,
    publisher: Client,
    consumer: Client,
}

impl Route for NatsRoute {
    type Consumer = Subscriber;
    type Publisher = NatsPublisher;

    async fn consume(&self, tag: u64) -> Subscriber {
        let subject = format!("{}.r{tag}", self.receive_prefix);
        let subscriber = self
            .consumer
            .subscribe(subject)
            .await
            .expect("consumer subscribes");
        tokio::time::timeout(Duration::from_secs(10), self.consumer.flush())
            .await
            .expect("consumer flush timed out")
            .expect("consumer flush");
        subscriber
    }

    fn publisher(&self, tag: u64) -> NatsPublisher {
        NatsPublisher {
            client: self.publisher.clone(),
            subject: Subject::from(format!("{}.r{tag}", self.publish_prefix)),
        }
    }
}

impl Consumer for Subscriber {
    async fn receive(&mut self, wait: Duration) -> Next {
        match tokio::time::timeout(wait, self.next()).await {
            Ok(Some(msg)) => Next::Message {
                at: now_ns(),
                payload: msg.payload,
                redelivered: false,
            },
            Ok(None) => Next::Ended("subscription closed".to_owned()),
            Err(_) => Next::Idle,
        }
    }

    async fn close(self) -> Closed {
        Closed::default()
    }
}

/// Publishing only hands commands to the connection task; the final flush
/// is the only confirm core NATS gives.
struct NatsPublisher {
    client: Client,
    subject: Subject,
}

impl Publisher for NatsPublisher {
    async fn publish(&mut self, payload: Vec<u8>, out: &mut Published) -> bool {
        let published = self.client.publish(self.subject.clone(), payload.into());
        match published.await {
            Ok(()) => true,
            Err(e) => {
                out.error(e);
                false
            }
        }
    }

    async fn finish(self, out: &mut Published) {
        match tokio::time::timeout(Duration::from_secs(30), self.client.flush()).await {
            Ok(Ok(())) => out.confirmed = out.sent - out.errors,
            Ok(Err(e)) => out.error(format!("flush: {e}")),
            Err(_) => out.error("flush timed out"),
        }
    }
}

/// Starts a relay (stamping headers when `stamp`); its prefixes and pid.
fn start_relay(run: &str, stamp: bool) -> (String, String, u32) {
    let variant = if stamp { "s" } else { "" };
    let prefix = format!("benchrelay{variant}_{run}");
    let service = format!("rsvc{variant}_{run}");
    let mut env = relay_env();
    env.extend([
        (RELAY_ENV, "1".to_owned()),
        (RELAY_PREFIX_ENV, prefix.clone()),
        (RELAY_GROUP_ENV, format!("bench_{run}")),
        (RELAY_INSTANCE_ENV, "i1".to_owned()),
        (RELAY_STAMP_ENV, if stamp { "1" } else { "0" }.to_owned()),
    ]);
    let pid = spawn_self(if stamp { "relay+hdr" } else { "relay" }, &env);
    (
        format!("{prefix}.{service}"),
        format!("_baker.{service}.i1"),
        pid,
    )
}

/// Starts a `baker-mq directory` and a `baker-mq` sidecar; the sidecar and
/// its prefixes.
async fn start_baker(run: &str, logs: &FsPath) -> (Sidecar, String, String) {
    let directory = start_directory(logs)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!("benchbaker_{run}");
    let service = format!("bsvc_{run}");
    let args = [
        "--broker",
        &nats_url(),
        "--ingress-prefix",
        &prefix,
        "--queue-group",
        &format!("bench_{run}"),
        "--register",
        &format!("service={service},id=i1"),
    ];
    let log = logs.join("sidecar.log");
    let sidecar = start_sidecar("baker-mq sidecar", &directory, &args, &service, log)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (
        sidecar,
        format!("{prefix}.{service}"),
        format!("_baker.{service}.i1"),
    )
}

async fn bench() -> bool {
    let sizes = Sizes::from_env(
        ("BAKER_BENCH_MESSAGES", 200_000),
        ("BAKER_BENCH_LATENCY_MESSAGES", 20_000),
        ("BAKER_BENCH_RATE", 5_000),
    );
    let window: u64 = env_or("BAKER_BENCH_WINDOW", 8_192);
    assert!(window > 0, "BAKER_BENCH_WINDOW must be positive");
    let run = run_id();
    let logs = tempfile::tempdir().expect("temp dir");
    // The bench's own consumer must not be what drops.
    let options = || ConnectOptions::new().subscription_capacity(1 << 21);
    let publisher = connect("baker-bench-publisher", options()).await;
    let consumer = connect("baker-bench-consumer", options()).await;
    eprintln!("connected to {} (run {run})", nats_url());

    let path = |name, (publish_prefix, receive_prefix, hop)| Path {
        name,
        hop,
        route: NatsRoute {
            publish_prefix,
            receive_prefix,
            publisher: publisher.clone(),
            consumer: consumer.clone(),
        },
    };
    let direct = format!("benchdirect_{run}");
    let (relay_pub, relay_recv, relay) = start_relay(&run, false);
    let (stamp_pub, stamp_recv, stamp) = start_relay(&run, true);
    let (baker, baker_pub, baker_recv) = start_baker(&run, logs.path()).await;
    let idle = rss_kib(baker.pid);
    let overload_route = NatsRoute {
        publish_prefix: baker_pub.clone(),
        receive_prefix: baker_recv.clone(),
        publisher: publisher.clone(),
        // The instance under overload: a client that holds what it has not
        // taken up to async-nats's default, then drops.
        consumer: connect("baker-bench-slow-consumer", ConnectOptions::new()).await,
    };
    let paths = [
        path("direct", (direct.clone(), direct, None)),
        path("relay", (relay_pub, relay_recv, Some(relay))),
        path("relay+hdr", (stamp_pub, stamp_recv, Some(stamp))),
        path("baker-mq", (baker_pub, baker_recv, Some(baker.pid))),
    ];
    let plan = Plan {
        loads: vec![
            Load {
                label: "burst",
                mode: Mode::Burst,
                about:
                    "published as fast as possible (core NATS drops what a subscriber cannot take)"
                        .to_owned(),
                loss_ok: true,
            },
            Load {
                label: "windowed",
                mode: Mode::Window(window),
                about: format!(
                    "at most {window} in flight (the rate sustained, no drops expected)"
                ),
                loss_ok: false,
            },
        ],
        latency_each_round: false,
        timing: Timing {
            quiet: Duration::from_secs(1),
            linger: Duration::ZERO,
        },
        pause: Duration::from_millis(300),
        broker: nats_server_pid().into_iter().collect(),
        strict: false,
        sizes,
    };
    let results = rounds::run(&plan, &paths, Vec::new()).await;
    let overload = Overload::from_env(20_000);
    let memory = match &overload {
        Some(overload) => {
            let path = Path {
                name: "baker-mq",
                hop: Some(baker.pid),
                route: overload_route,
            };
            vec![overload::run(&path, idle, plan.sizes.size, overload).await]
        }
        None => Vec::new(),
    };

    baker.print_record().await;
    let log = std::fs::read_to_string(&baker.log).unwrap_or_default();
    let slow = log.lines().filter(|l| l.contains("slow consumer")).count();
    eprintln!(
        "baker-mq log: {slow} slow-consumer events (its NATS client dropping ingress messages)"
    );
    let report = Report {
        title: format!(
            "NATS end-to-end: {} B payloads, {} round(s); broker {}; relay runtime {}",
            plan.sizes.size,
            plan.sizes.rounds,
            nats_url(),
            relay_runtime()
        ),
        notes: vec![
            "CPU hop is the relay's or baker-mq's process; CPU broker is nats-server's".to_owned(),
        ],
        ratios: RELAY_RATIOS.to_vec(),
        target: Some(("baker-mq", "relay", 0.8)),
    };
    overload::print_report(&plan, &report, &results, overload.as_ref(), &memory)
}

fn main() {
    if std::env::var_os(RELAY_ENV).is_some() {
        relay_main();
        return;
    }
    bench_main("nats_e2e", "a NATS server", 900, || {}, bench);
}
