//! End-to-end throughput and latency over a real NATS server, four paths on
//! the same broker, in one run:
//!
//! * `direct`:   publisher → subject → subscriber;
//! * `relay`:    publisher → `<prefix>.<svc>.<topic>` → a minimal
//!   subscribe-and-republish relay (this binary re-executed with
//!   `BAKER_BENCH_RELAY=1`, a separate process) → `_baker.<svc>.i1.<topic>`;
//! * `relay+hdr`: the same relay, also stamping the three headers baker-mq
//!   adds to every message (`baker-msg-id`, `baker-origin`, `baker-attempt`):
//!   the floor for a hop doing the same job;
//! * `baker-mq`: publisher → `<prefix>.<svc>.<topic>` → a `baker-mq` sidecar
//!   (with its own `baker-mq directory`) → `_baker.<svc>.i1.<topic>`.
//!
//! For each path, interleaved across paths round by round:
//!
//! * burst: `BAKER_BENCH_MESSAGES` messages published as fast as possible,
//!   counted until quiet for 1 s: received msgs/s and how many were lost
//!   (core NATS drops for slow consumers);
//! * windowed: the same count with at most `BAKER_BENCH_WINDOW` in flight,
//!   the rate the path sustains without drops, with the CPU time each
//!   process spent per message (Linux /proc);
//!
//! `BAKER_BENCH_ROUNDS` times each, then a paced run of
//! `BAKER_BENCH_LATENCY_MESSAGES` at `BAKER_BENCH_RATE` msg/s for p50/p99.
//! Each payload starts with its send time (ns since a process-wide `Instant`,
//! u64 LE) and a sequence number (u64 LE). `BAKER_BENCH_PAYLOAD` sets the
//! payload size, `BAKER_BENCH_TIMEOUT_SECS` the overall limit,
//! `BAKER_BENCH_RELAY_RUNTIME` the relays' tokio runtime (`current_thread`,
//! the default and what baker-mq uses, or `multi_thread`).
//!
//! Needs a NATS server (`BAKER_BENCH_NATS_URL`, default
//! nats://127.0.0.1:4222). Run with `cargo bench --bench nats_e2e`; quick run:
//! `BAKER_BENCH_MESSAGES=20000 BAKER_BENCH_LATENCY_MESSAGES=2000 BAKER_BENCH_ROUNDS=1 cargo bench --bench nats_e2e`.
//! Without `--bench` on its command line (e.g. `cargo test --benches`) it
//! does nothing, so test runs need no broker.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use async_nats::Client;
use futures::StreamExt;

use common::{
    cpu_per_msg, env_or, epoch, free_addr, http_client, kill_children, log_tail, median, now_ns,
    pace, payload, pids_named, publish_on_own_thread, range, ratio, read_stamp, responds_ok,
    sidecar_state, spawn_baker_mq, spawn_child, spawn_directory, with_child, CleanupGuard,
    CpuProbe, CpuUse, Directory, Outcome, READY_TIMEOUT, RUN_DEADLINE, STAMP,
};

/// Selects relay mode when this binary re-executes itself.
const RELAY_ENV: &str = "BAKER_BENCH_RELAY";
const RELAY_PREFIX_ENV: &str = "BAKER_BENCH_RELAY_PREFIX";
const RELAY_GROUP_ENV: &str = "BAKER_BENCH_RELAY_GROUP";
const RELAY_INSTANCE_ENV: &str = "BAKER_BENCH_RELAY_INSTANCE";
const NATS_URL_ENV: &str = "BAKER_BENCH_NATS_URL";
/// The relay's tokio runtime: `current_thread` (default, as baker-mq's) or
/// `multi_thread`.
const RELAY_RUNTIME_ENV: &str = "BAKER_BENCH_RELAY_RUNTIME";
/// When set, the relay also stamps the three headers baker-mq adds
/// (`baker-msg-id`, `baker-origin`, `baker-attempt`): the floor for a hop
/// that does the same job, not just the hop.
const RELAY_STAMP_ENV: &str = "BAKER_BENCH_RELAY_STAMP";

/// Time with no message, once publishing is done, after which a run ends.
const QUIET: Duration = Duration::from_secs(1);

fn nats_url() -> String {
    std::env::var(NATS_URL_ENV).unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

// ---------------------------------------------------------------------------
// Relay mode.

fn relay_main() {
    let prefix = std::env::var(RELAY_PREFIX_ENV).expect("relay prefix");
    let group = std::env::var(RELAY_GROUP_ENV).expect("relay queue group");
    let instance = std::env::var(RELAY_INSTANCE_ENV).expect("relay instance");
    // Exit when the parent goes away (its end of our stdin closes).
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let stamp = std::env::var(RELAY_STAMP_ENV).is_ok_and(|v| v == "1");
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
            let subject = match rest.split_once('.') {
                Some((service, topic)) => format!("_baker.{service}.{instance}.{topic}"),
                None => format!("_baker.{rest}.{instance}"),
            };
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
// Measurement.

/// How a run publishes.
#[derive(Clone, Copy)]
enum Mode {
    /// As fast as possible (open loop; whatever the path cannot absorb is
    /// dropped by core NATS).
    Burst,
    /// At this many messages per second.
    Paced(u64),
    /// As fast as possible with at most this many sent but not yet received
    /// (closed loop: the path's sustainable rate, without loss).
    Window(u64),
}

/// Publishes `count` messages to `publish_to` as `mode` says, and counts what
/// arrives on `receive_on` until all did, or nothing did for `QUIET` after
/// the last publish.
async fn measure(
    publisher: &Client,
    consumer: &Client,
    publish_to: String,
    receive_on: String,
    count: u64,
    size: usize,
    mode: Mode,
) -> Outcome {
    let mut subscriber = consumer
        .subscribe(receive_on)
        .await
        .expect("consumer subscribes");
    tokio::time::timeout(Duration::from_secs(10), consumer.flush())
        .await
        .expect("consumer flush timed out")
        .expect("consumer flush");
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
                match tokio::time::timeout(QUIET, subscriber.next()).await {
                    Ok(Some(msg)) => {
                        let at = now_ns();
                        let Some((sent, seq)) = read_stamp(&msg.payload) else {
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
        // Publishing only hands commands to the connection task.
        publish_on_own_thread(done.clone(), move || async move {
            let subject = async_nats::Subject::from(publish_to);
            let t0 = Instant::now();
            let mut sent = 0;
            let mut stalled = false;
            'publish: for seq in 0..count {
                match mode {
                    Mode::Burst => {}
                    Mode::Paced(rate) => pace(t0, rate, seq),
                    Mode::Window(window) => {
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
                publisher
                    .publish(subject.clone(), payload(seq, size))
                    .await
                    .expect("publish");
                sent += 1;
            }
            tokio::time::timeout(Duration::from_secs(30), publisher.flush())
                .await
                .expect("publisher flush timed out")
                .expect("publisher flush");
            (t0.elapsed(), sent, stalled)
        })
    };
    let (publish_elapsed, sent, stalled) = tokio::time::timeout(RUN_DEADLINE, publish)
        .await
        .expect("publishing timed out")
        .expect("publisher thread failed");
    let mut out = tokio::time::timeout(RUN_DEADLINE + QUIET * 5, consume)
        .await
        .expect("consumer timed out")
        .expect("consumer task failed");
    out.sent = sent;
    out.timed_out |= stalled;
    out.publish_elapsed = publish_elapsed;
    out.latencies.sort_unstable();
    out
}

/// Sends until one message makes it through `publish_to` → `receive_on`, then
/// pushes a small burst through to warm connections and caches.
async fn warm_up(publisher: &Client, consumer: &Client, publish_to: &str, receive_on: &str) {
    let flush = |client: &Client| {
        let client = client.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), client.flush())
                .await
                .expect("warm-up flush timed out")
                .expect("warm-up flush");
        }
    };
    let mut subscriber = consumer
        .subscribe(receive_on.to_owned())
        .await
        .expect("warm-up subscribe");
    flush(consumer).await;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        publisher
            .publish(publish_to.to_owned(), payload(0, 128))
            .await
            .expect("warm-up publish");
        flush(publisher).await;
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(200), subscriber.next()).await
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing arrives on {receive_on} when publishing to {publish_to}"
        );
    }
    let burst = 2_000u64;
    for seq in 0..burst {
        publisher
            .publish(publish_to.to_owned(), payload(seq, 128))
            .await
            .expect("warm-up publish");
    }
    flush(publisher).await;
    let mut got = 0;
    while got < burst {
        match tokio::time::timeout(QUIET, subscriber.next()).await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
}

/// The pid of the local nats-server, if exactly one runs and is visible.
fn nats_server_pid() -> Option<String> {
    let mut found = pids_named("nats-server");
    (found.len() == 1).then(|| found.remove(0))
}

/// One way from the publisher to the consumer.
struct Route {
    name: &'static str,
    publish_prefix: String,
    receive_prefix: String,
    /// The process between publisher and consumer, if any.
    hop_pid: Option<u32>,
}

struct PathResult {
    name: &'static str,
    bursts: Vec<Outcome>,
    windows: Vec<Outcome>,
    latency: Outcome,
    /// CPU time over all the windowed runs.
    window_cpu: CpuUse,
}

impl PathResult {
    fn burst_rates(&self) -> Vec<f64> {
        self.bursts.iter().map(Outcome::rate).collect()
    }

    fn window_rates(&self) -> Vec<f64> {
        self.windows.iter().map(Outcome::rate).collect()
    }
}

struct Config {
    messages: u64,
    latency_messages: u64,
    rate: u64,
    size: usize,
    rounds: usize,
    window: u64,
}

/// Runs every measurement on every path: bursts and windowed runs
/// interleaved across paths round by round (so drift hits all paths alike),
/// then the paced latency runs.
async fn run_all(
    publisher: &Client,
    consumer: &Client,
    paths: &[Route],
    config: &Config,
) -> Vec<PathResult> {
    let server = nats_server_pid();
    let mut results: Vec<PathResult> = paths
        .iter()
        .map(|p| PathResult {
            name: p.name,
            bursts: Vec::new(),
            windows: Vec::new(),
            latency: Outcome::default(),
            window_cpu: CpuUse::default(),
        })
        .collect();
    for path in paths {
        eprintln!("[{}] warming up", path.name);
        warm_up(
            publisher,
            consumer,
            &format!("{}.warm", path.publish_prefix),
            &format!("{}.warm", path.receive_prefix),
        )
        .await;
    }
    let pause = Duration::from_millis(300);
    for round in 0..config.rounds {
        for (path, result) in paths.iter().zip(&mut results) {
            eprintln!(
                "[{}] burst {}/{}: {} messages",
                path.name,
                round + 1,
                config.rounds,
                config.messages
            );
            let outcome = measure(
                publisher,
                consumer,
                format!("{}.burst{round}", path.publish_prefix),
                format!("{}.burst{round}", path.receive_prefix),
                config.messages,
                config.size,
                Mode::Burst,
            )
            .await;
            result.bursts.push(outcome);
            // Let whatever the burst left queued drain.
            tokio::time::sleep(pause).await;
        }
    }
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
                consumer,
                format!("{}.win{round}", path.publish_prefix),
                format!("{}.win{round}", path.receive_prefix),
                config.messages,
                config.size,
                Mode::Window(config.window),
            )
            .await;
            let cpu = probe.since(before);
            result.window_cpu = if round == 0 {
                cpu
            } else {
                result.window_cpu.add(cpu)
            };
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
            consumer,
            format!("{}.lat", path.publish_prefix),
            format!("{}.lat", path.receive_prefix),
            config.latency_messages,
            config.size,
            Mode::Paced(config.rate),
        )
        .await;
        tokio::time::sleep(pause).await;
    }
    results
}

fn start_relay(run: &str, stamp: bool) -> (String, String, u32) {
    let variant = if stamp { "s" } else { "" };
    let prefix = format!("benchrelay{variant}_{run}");
    let service = format!("rsvc{variant}_{run}");
    let mut command = Command::new(std::env::current_exe().expect("current exe"));
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    let pid = spawn_child(
        "relay",
        command,
        &[
            (RELAY_ENV, "1".to_owned()),
            (RELAY_PREFIX_ENV, prefix.clone()),
            (RELAY_GROUP_ENV, format!("bench_{run}")),
            (RELAY_INSTANCE_ENV, "i1".to_owned()),
            (RELAY_STAMP_ENV, if stamp { "1" } else { "0" }.to_owned()),
            (NATS_URL_ENV, nats_url()),
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
    eprintln!("relay ready (pid {pid})");
    (
        format!("{prefix}.{service}"),
        format!("_baker.{service}.i1"),
        pid,
    )
}

struct Baker {
    publish_prefix: String,
    receive_prefix: String,
    admin: SocketAddr,
    pid: u32,
}

async fn start_baker(run: &str, logs: &Path) -> Baker {
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
    let prefix = format!("benchbaker_{run}");
    let service = format!("bsvc_{run}");
    let sidecar_log = logs.join("sidecar.log");
    let pid = spawn_baker_mq(
        "baker-mq sidecar",
        &[
            "--broker",
            &nats_url(),
            "--directory",
            &format!("http://{directory}"),
            "--admin",
            &admin.to_string(),
            "--ingress-prefix",
            &prefix,
            "--queue-group",
            &format!("bench_{run}"),
            "--register",
            &format!("service={service},id=i1"),
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
    eprintln!("baker-mq ready (admin {admin}, directory {directory})");
    Baker {
        publish_prefix: format!("{prefix}.{service}"),
        receive_prefix: format!("_baker.{service}.i1"),
        admin,
        pid,
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
        "NATS end-to-end: {} B payloads, {} round(s); broker {}; relay runtime {}",
        config.size,
        config.rounds,
        nats_url(),
        std::env::var(RELAY_RUNTIME_ENV).unwrap_or_else(|_| "current_thread".to_owned())
    );

    println!();
    println!(
        "(i) throughput, burst: {} msgs published as fast as possible per round; received/s = received / (last receive - first publish)",
        config.messages
    );
    println!(
        "{:<9} | {:>11} | {:>11} {:>23} | {:>9} {:>8}",
        "path", "publish/s", "received/s", "(min - max)", "lost", "lost %"
    );
    println!("{}", "-".repeat(84));
    for r in results {
        let rates = r.burst_rates();
        let (lo, hi) = range(&rates);
        let sent: u64 = r.bursts.iter().map(|o| o.sent).sum();
        let lost: u64 = r.bursts.iter().map(Outcome::lost).sum();
        let publish: Vec<f64> = r.bursts.iter().map(Outcome::publish_rate).collect();
        println!(
            "{:<9} | {:>11.0} | {:>11.0} {:>23} | {:>9} {:>7.2}%{}",
            r.name,
            median(&publish),
            median(&rates),
            format!("({lo:.0} - {hi:.0})"),
            lost,
            100.0 * lost as f64 / sent.max(1) as f64,
            flag(&r.bursts.iter().collect::<Vec<_>>()),
        );
    }
    println!("   per round received/s (lost):");
    for r in results {
        let rounds: Vec<String> = r
            .bursts
            .iter()
            .map(|o| format!("{:.0} ({})", o.rate(), o.lost()))
            .collect();
        println!("     {:<9} {}", r.name, rounds.join(", "));
    }

    println!();
    println!(
        "(i') throughput, windowed: {} msgs per round, at most {} in flight (sustainable rate, no drops expected)",
        config.messages, config.window
    );
    println!(
        "{:<9} | {:>11} {:>23} | {:>7} | {:>19} {:>19} {:>19}",
        "path", "received/s", "(min - max)", "lost", "CPU bench", "CPU hop", "CPU nats-server"
    );
    println!("{}", "-".repeat(120));
    for r in results {
        let rates = r.window_rates();
        let (lo, hi) = range(&rates);
        let lost: u64 = r.windows.iter().map(Outcome::lost).sum();
        let received: u64 = r.windows.iter().map(|o| o.received).sum();
        let cpu = |d| cpu_per_msg(d, received);
        println!(
            "{:<9} | {:>11.0} {:>23} | {:>7} | {:>19} {:>19} {:>19}{}",
            r.name,
            median(&rates),
            format!("({lo:.0} - {hi:.0})"),
            lost,
            cpu(r.window_cpu.bench),
            cpu(r.window_cpu.hop),
            cpu(r.window_cpu.broker),
            flag(&r.windows.iter().collect::<Vec<_>>()),
        );
    }
    println!("   CPU = user+system time of the process over the windowed runs / messages received (10 ms tick resolution)");

    println!();
    println!(
        "(ii) latency: {} msgs paced at {} msg/s",
        config.latency_messages, config.rate
    );
    println!(
        "{:<9} | {:>9} {:>9} {:>9} {:>9} | {:>7}",
        "path", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "lost"
    );
    println!("{}", "-".repeat(64));
    for r in results {
        let l = &r.latency;
        println!(
            "{:<9} | {:>9.1} {:>9.1} {:>9.1} {:>9.1} | {:>7}{}",
            r.name,
            l.percentile_us(0.50),
            l.percentile_us(0.99),
            l.percentile_us(0.999),
            l.percentile_us(1.0),
            l.lost(),
            flag(&[l]),
        );
    }
    let duplicates: u64 = results
        .iter()
        .flat_map(|r| r.bursts.iter().chain(&r.windows).chain([&r.latency]))
        .map(|o| o.duplicates)
        .sum();
    if duplicates > 0 {
        println!("duplicates received: {duplicates}");
    }

    let find = |name: &str| results.iter().find(|r| r.name == name);
    if let (Some(d), Some(r), Some(b)) = (find("direct"), find("relay"), find("baker-mq")) {
        let burst = |p: &PathResult| median(&p.burst_rates());
        let window = |p: &PathResult| median(&p.window_rates());
        println!();
        println!("ratios (medians)                 burst   windowed");
        println!(
            "  baker-mq / relay  throughput   {:>6.3}   {:>8.3}",
            ratio(burst(b), burst(r)),
            ratio(window(b), window(r))
        );
        println!(
            "  baker-mq / direct throughput   {:>6.3}   {:>8.3}",
            ratio(burst(b), burst(d)),
            ratio(window(b), window(d))
        );
        println!(
            "  relay    / direct throughput   {:>6.3}   {:>8.3}",
            ratio(burst(r), burst(d)),
            ratio(window(r), window(d))
        );
        if let Some(h) = find("relay+hdr") {
            println!(
                "  baker-mq / relay+hdr throughput {:>5.3}   {:>8.3}",
                ratio(burst(b), burst(h)),
                ratio(window(b), window(h))
            );
        }
        let p = |o: &Outcome, q: f64| o.percentile_us(q);
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
    let timeout = Duration::from_secs(env_or("BAKER_BENCH_TIMEOUT_SECS", 900));
    // Whatever happens, the bench ends and its children die.
    common::watchdog("nats_e2e", timeout, || {
        kill_children();
        std::process::exit(2);
    });
    let _guard = CleanupGuard(kill_children);
    epoch();
    let run = common::run_id();
    let logs = tempfile::tempdir().expect("temp dir");

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let results = runtime.block_on(async {
        let connect = |name: &'static str| async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                async_nats::ConnectOptions::new()
                    .name(name)
                    // The bench's own consumer must not be what drops.
                    .subscription_capacity(1 << 21)
                    .connect(nats_url()),
            )
            .await
            .unwrap_or_else(|_| panic!("connecting to {} timed out", nats_url()))
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", nats_url()))
        };
        let publisher = connect("baker-bench-publisher").await;
        let consumer = connect("baker-bench-consumer").await;
        eprintln!("connected to {} (run {run})", nats_url());

        let (relay_pub, relay_recv, relay_pid) = start_relay(&run, false);
        let (stamp_pub, stamp_recv, stamp_pid) = start_relay(&run, true);
        let baker = start_baker(&run, logs.path()).await;
        let direct = format!("benchdirect_{run}");
        let paths = [
            Route {
                name: "direct",
                publish_prefix: direct.clone(),
                receive_prefix: direct,
                hop_pid: None,
            },
            Route {
                name: "relay",
                publish_prefix: relay_pub,
                receive_prefix: relay_recv,
                hop_pid: Some(relay_pid),
            },
            Route {
                name: "relay+hdr",
                publish_prefix: stamp_pub,
                receive_prefix: stamp_recv,
                hop_pid: Some(stamp_pid),
            },
            Route {
                name: "baker-mq",
                publish_prefix: baker.publish_prefix.clone(),
                receive_prefix: baker.receive_prefix.clone(),
                hop_pid: Some(baker.pid),
            },
        ];
        let results = run_all(&publisher, &consumer, &paths, &config).await;

        common::print_baker_counts(baker.admin).await;
        results
    });
    let log = std::fs::read_to_string(logs.path().join("sidecar.log")).unwrap_or_default();
    let slow = log.lines().filter(|l| l.contains("slow consumer")).count();
    eprintln!(
        "baker-mq log: {slow} slow-consumer events (its NATS client dropping ingress messages)"
    );
    common::print_log_warnings(&log);
    print_report(&config, &results);
}

fn main() {
    if std::env::var_os(RELAY_ENV).is_some() {
        relay_main();
        return;
    }
    if !common::invoked_as_bench() {
        println!("nats_e2e: needs a NATS server; run it with `cargo bench --bench nats_e2e`");
        return;
    }
    bench_main();
}
