//! End-to-end throughput and latency over real Mosquitto brokers, three
//! paths with the same guarantee (QoS 1 publishes and subscriptions), in one
//! run:
//!
//! * `direct`:   publisher → Mosquitto A → subscriber;
//! * `bridge`:   publisher → Mosquitto B → B's own bridge to A (topic
//!   `bench/bridge/#` out, QoS 1, MQTT 5) → A → subscriber: the broker's own
//!   answer to the same forwarding job;
//! * `baker-mq B→A`: publisher → B, topic `baker/<svc>/work` → a `baker-mq
//!   --adapter mqtt` sidecar → A, topic `_baker/<svc>/i1/work` → subscriber:
//!   the bridge's topology, with Baker as the hop;
//! * `baker-mq A→A`: the same with ingress and inbox both on A.
//!
//! The sidecars share a `baker-mq directory` of their own.
//!
//! Both brokers are started by the bench on free ports, with
//! `max_queued_messages 0` (Baker's setting: nothing dropped),
//! `max_inflight_messages 1000` (the README's: Mosquitto's default window of
//! 20 unacknowledged messages per connection, not the paths, would set the
//! pace) and no persistence. Per path and round, interleaved across paths:
//!
//! * throughput: `BAKER_BENCH_MQTT_MESSAGES` messages published as fast as
//!   the broker's PUBACKs allow; received msgs/s from the first publish to
//!   the last arrival. Every published message must arrive: losses fail the
//!   bench (after the report), duplicates are reported;
//! * latency: `BAKER_BENCH_MQTT_LATENCY_MESSAGES` paced at
//!   `BAKER_BENCH_MQTT_RATE` msg/s, p50/p99 from the send time each payload
//!   carries.
//!
//! `BAKER_BENCH_ROUNDS` rounds (default 3), medians; `BAKER_BENCH_PAYLOAD`
//! bytes per payload (default 128); `BAKER_BENCH_TIMEOUT_SECS` the overall
//! limit. Run with `cargo bench --bench mqtt_e2e`; quick run:
//! `BAKER_BENCH_MQTT_MESSAGES=5000 BAKER_BENCH_MQTT_LATENCY_MESSAGES=500 BAKER_BENCH_ROUNDS=1 cargo bench --bench mqtt_e2e`.
//! Without `--bench` on its command line (e.g. `cargo test --benches`) it
//! does nothing, so test runs need no broker.

mod common;

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use common::*;

const BENCH: &str = "mqtt_e2e";

struct Settings {
    messages: u64,
    latency_messages: u64,
    rate: u64,
    payload: usize,
    rounds: usize,
}

/// One path: where to publish and where to subscribe.
struct PathSpec {
    name: &'static str,
    publish_port: u16,
    topic: String,
    subscribe_port: u16,
    filter: String,
}

/// What one run measured.
#[derive(Default, Clone)]
struct Run {
    per_sec: f64,
    lost: u64,
    duplicated: u64,
    p50_us: f64,
    p99_us: f64,
}

fn mosquitto_bin() -> String {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .find(|p| Path::new(p).exists())
        .map_or_else(|| "mosquitto".to_owned(), |p| (*p).to_owned())
}

/// Starts a Mosquitto on a free port with `extra` settings; its port.
fn start_mosquitto(name: &str, dir: &Path, extra: &str) -> u16 {
    let port = free_addr().port();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n\
             max_queued_messages 0\nmax_inflight_messages 1000\npersistence false\nlog_dest none\n{extra}"
        ),
    )
    .expect("mosquitto config");
    let mut command = Command::new(mosquitto_bin());
    command
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn_child(name, command, &[]);
    let deadline = Instant::now() + READY_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    port
}

fn options(id: String, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options
        .set_clean_start(true)
        .set_receive_maximum(Some(u16::MAX))
        .set_max_packet_size(Some(16 * 1024 * 1024))
        .set_keep_alive(Duration::from_secs(30));
    options
}

/// A subscriber recording, per sequence number, how often it arrived, and
/// every latency; returns once the SUBACK arrived.
struct Subscriber {
    seen: Arc<Mutex<HashMap<u64, u32>>>,
    latencies: Arc<Mutex<Vec<u64>>>,
    last_arrival: Arc<Mutex<Option<Instant>>>,
    client: AsyncClient,
}

async fn subscribe(port: u16, filter: &str, tag: u64) -> Subscriber {
    let (client, mut eventloop) =
        AsyncClient::new(options(format!("sub-{}", run_id()), port), 1000);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let last_arrival = Arc::new(Mutex::new(None));
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    {
        let (seen, latencies, last_arrival) =
            (seen.clone(), latencies.clone(), last_arrival.clone());
        let mut subscribed_tx = Some(subscribed_tx);
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::Publish(p)) => {
                        let now = now_ns();
                        let Some((sent, seq)) = read_stamp(&p.payload) else {
                            continue;
                        };
                        let run = p
                            .payload
                            .get(STAMP..STAMP + 8)
                            .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                        if run != Some(tag) {
                            continue;
                        }
                        *seen.lock().unwrap().entry(seq).or_insert(0) += 1;
                        latencies.lock().unwrap().push(now.saturating_sub(sent));
                        *last_arrival.lock().unwrap() = Some(Instant::now());
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
        });
    }
    tokio::time::timeout(READY_TIMEOUT, subscribed)
        .await
        .expect("SUBACK")
        .unwrap();
    Subscriber {
        seen,
        latencies,
        last_arrival,
        client,
    }
}

/// Publishes `count` stamped QoS 1 messages from a thread of its own, paced
/// at `rate` msg/s when given; returns when every PUBACK arrived, with the
/// time of the first publish. The client's event loop runs on the bench's
/// runtime, so the publishing thread's pacing sleeps never hold it up.
async fn publish(
    port: u16,
    topic: String,
    count: u64,
    rate: Option<u64>,
    size: usize,
    tag: u64,
) -> Instant {
    let mut opts = options(format!("pub-{}", run_id()), port);
    opts.set_outgoing_inflight_upper_limit(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let (acked_tx, mut acked) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = event {
                acked_tx.send_modify(|n| *n += 1);
            }
        }
    });
    let done = Arc::new(AtomicBool::new(false));
    let publisher = client.clone();
    let rx = publish_on_own_thread(done, move || async move {
        let t0 = Instant::now();
        for seq in 0..count {
            if let Some(rate) = rate {
                pace(t0, rate, seq);
            }
            let payload = stamped_payload(seq, &tag.to_le_bytes(), size);
            publisher
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        t0
    });
    let t0 = rx.await.expect("publisher thread");
    tokio::time::timeout(RUN_DEADLINE, acked.wait_for(|n| *n >= count))
        .await
        .expect("every PUBACK")
        .unwrap();
    let _ = client.disconnect().await;
    t0
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn wait_arrived(sub: &Subscriber, count: u64) -> bool {
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut last_len = 0;
    let mut stalled_since = Instant::now();
    loop {
        let len = sub.seen.lock().unwrap().len() as u64;
        if len >= count {
            return true;
        }
        if len != last_len as u64 {
            last_len = len as usize;
            stalled_since = Instant::now();
        } else if stalled_since.elapsed() > Duration::from_secs(10) || Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn measure(path: &PathSpec, s: &Settings) -> Run {
    let tag = fastrand::u64(..);
    // Throughput.
    let sub = subscribe(path.subscribe_port, &path.filter, tag).await;
    let t0 = publish(
        path.publish_port,
        path.topic.clone(),
        s.messages,
        None,
        s.payload,
        tag,
    )
    .await;
    let complete = wait_arrived(&sub, s.messages).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let end = sub
        .last_arrival
        .lock()
        .unwrap()
        .unwrap_or_else(Instant::now);
    let (received, duplicated) = {
        let seen = sub.seen.lock().unwrap();
        (
            seen.len() as u64,
            seen.values().map(|c| u64::from(*c) - 1).sum(),
        )
    };
    if !complete {
        eprintln!("{}: only {received} of {} arrived", path.name, s.messages);
    }
    let per_sec = received as f64 / end.duration_since(t0).as_secs_f64();
    let _ = sub.client.disconnect().await;
    // Latency.
    let tag = fastrand::u64(..);
    let sub = subscribe(path.subscribe_port, &path.filter, tag).await;
    publish(
        path.publish_port,
        path.topic.clone(),
        s.latency_messages,
        Some(s.rate),
        s.payload,
        tag,
    )
    .await;
    wait_arrived(&sub, s.latency_messages).await;
    let mut latencies = sub.latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    let _ = sub.client.disconnect().await;
    Run {
        per_sec,
        lost: s.messages - received,
        duplicated,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn run() {
    let settings = Settings {
        messages: env_or("BAKER_BENCH_MQTT_MESSAGES", 50_000),
        latency_messages: env_or("BAKER_BENCH_MQTT_LATENCY_MESSAGES", 5_000),
        rate: env_or("BAKER_BENCH_MQTT_RATE", 2_000),
        payload: env_or("BAKER_BENCH_PAYLOAD", 128),
        rounds: env_or("BAKER_BENCH_ROUNDS", 3),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let a = start_mosquitto("mosquitto A", dir.path(), "");
    let b = start_mosquitto(
        "mosquitto B (bridge to A)",
        dir.path(),
        &format!(
            "connection bench-bridge\naddress 127.0.0.1:{a}\ntopic bench/bridge/# out 1\n\
             bridge_protocol_version mqttv50\ncleansession true\n"
        ),
    );
    let id = run_id();
    let directory = spawn_directory(dir.path());
    let directory_url = format!("http://{}", directory.addr);
    // Two sidecars: one consuming A's ingress and delivering on A, one
    // consuming B's ingress and delivering to an inbox on A (the bridge's
    // topology: the forwarding hop between two brokers).
    let mut sidecars = Vec::new();
    for (name, ingress, inbox_broker) in [("a2a", a, a), ("b2a", b, a)] {
        let service = format!("bench{name}{id}");
        let admin = free_addr();
        let broker = format!("mqtt://127.0.0.1:{ingress}?client_id=bench-{name}-{id}");
        let register = format!("service={service},id=i1,broker=mqtt://127.0.0.1:{inbox_broker}");
        let log = dir.path().join(format!("baker-mq-{name}.log"));
        spawn_baker_mq(
            &format!("baker-mq {name}"),
            &[
                "--adapter",
                "mqtt",
                "--broker",
                &broker,
                "--directory",
                &directory_url,
                "--admin",
                &admin.to_string(),
                "--register",
                &register,
            ],
            &log,
        );
        let http = http_client();
        let deadline = Instant::now() + READY_TIMEOUT;
        while sidecar_state(&http, admin, &service).await != (true, true) {
            assert!(
                Instant::now() < deadline,
                "baker-mq not ready: {}",
                log_tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sidecars.push((service, admin));
    }
    // The bridge is up once a message crosses it.
    let probe_deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let tag = fastrand::u64(..);
        let sub = subscribe(a, "bench/bridge/#", tag).await;
        publish(b, "bench/bridge/probe".into(), 1, None, 32, tag).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !sub.seen.lock().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < probe_deadline,
            "the bridge never forwarded"
        );
    }

    let (same, across) = (&sidecars[0].0, &sidecars[1].0);
    let paths = [
        PathSpec {
            name: "direct",
            publish_port: a,
            topic: "bench/direct/work".into(),
            subscribe_port: a,
            filter: "bench/direct/#".into(),
        },
        PathSpec {
            name: "bridge B→A",
            publish_port: b,
            topic: "bench/bridge/work".into(),
            subscribe_port: a,
            filter: "bench/bridge/#".into(),
        },
        PathSpec {
            name: "baker-mq B→A",
            publish_port: b,
            topic: format!("baker/{across}/work"),
            subscribe_port: a,
            filter: format!("_baker/{across}/i1/#"),
        },
        PathSpec {
            name: "baker-mq A→A",
            publish_port: a,
            topic: format!("baker/{same}/work"),
            subscribe_port: a,
            filter: format!("_baker/{same}/i1/#"),
        },
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); paths.len()];
    for round in 1..=settings.rounds {
        for (i, path) in paths.iter().enumerate() {
            let run = measure(path, &settings).await;
            eprintln!(
                "round {round} {:<13} {:>9.0} msg/s lost {} dup {} p50 {:.0} µs p99 {:.0} µs",
                path.name, run.per_sec, run.lost, run.duplicated, run.p50_us, run.p99_us
            );
            runs[i].push(run);
        }
    }
    println!(
        "\n{BENCH}: {} QoS 1 messages of {} bytes per round, latency at {} msg/s, {} rounds, medians\n",
        settings.messages, settings.payload, settings.rate, settings.rounds
    );
    println!("| path | msg/s | lost | duplicated | p50 latency | p99 latency |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut lost_any = false;
    for (path, runs) in paths.iter().zip(&runs) {
        let lost: u64 = runs.iter().map(|r| r.lost).sum();
        lost_any |= lost > 0;
        println!(
            "| {} | {:.0} | {} | {} | {:.0} µs | {:.0} µs |",
            path.name,
            median(runs.iter().map(|r| r.per_sec).collect()),
            lost,
            runs.iter().map(|r| r.duplicated).sum::<u64>(),
            median(runs.iter().map(|r| r.p50_us).collect()),
            median(runs.iter().map(|r| r.p99_us).collect()),
        );
    }
    let rate = |i: usize| median(runs[i].iter().map(|r| r.per_sec).collect());
    println!(
        "\nthroughput baker-mq B→A / bridge B→A: {:.2}",
        rate(2) / rate(1)
    );
    // The last PUBACKs to the sidecars may still be on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, admin) in &sidecars {
        print_baker_counts(*admin).await;
    }
    assert!(!lost_any, "messages were lost");
}

fn main() {
    if !invoked_as_bench() {
        eprintln!("{BENCH}: does nothing unless run by `cargo bench --bench {BENCH}`");
        return;
    }
    let _cleanup = CleanupGuard(kill_children);
    watchdog(
        BENCH,
        Duration::from_secs(env_or("BAKER_BENCH_TIMEOUT_SECS", 900)),
        || {
            kill_children();
            std::process::exit(2);
        },
    );
    epoch();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}
