//! End-to-end throughput and latency over real Mosquitto brokers, five
//! paths with the same guarantee (QoS 1 publishes and subscriptions), in one
//! run:
//!
//! * `direct`:   publisher → Mosquitto A → subscriber;
//! * `bridge B→A`: publisher → Mosquitto B → B's own bridge to A (topic
//!   `bench/bridge/#` out, QoS 1, MQTT 5) → A → subscriber: the broker's own
//!   answer to the same forwarding job;
//! * `baker-mq B→A`: publisher → B, topic `baker/<svc>/work` → a `baker-mq
//!   --adapter mqtt` sidecar → A, topic `_baker/<svc>/i1/work` → subscriber:
//!   the bridge's topology, with Baker as the hop;
//! * `baker-mq A→A`: the same with ingress and inbox both on A;
//! * `relay B→A`: a minimal rumqttc relay (this binary re-executed with
//!   `BAKER_BENCH_MQTT_RELAY` set): one client subscribed on B with manual
//!   acks, one publishing on A at QoS 1, each message acknowledged on B once
//!   A's PUBACK for its copy came (the same guarantee as baker-mq's hop):
//!   what the MQTT client costs a hop with nothing else in it.
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
//!   the last arrival, with the CPU time the bench, the hop (the sidecar)
//!   and the brokers (both Mosquittos) spent per message (Linux /proc).
//!   Every published message must arrive: losses fail the bench (after the
//!   report), duplicates are reported;
//! * latency: `BAKER_BENCH_MQTT_LATENCY_MESSAGES` paced at
//!   `BAKER_BENCH_MQTT_RATE` msg/s, p50/p99 from the send time each payload
//!   carries.
//!
//! Last, the B→A sidecar's memory under overload (`common::overload`):
//! publishing at 5,000 msg/s for a minute to an instance taking 500.
//!
//! `BAKER_BENCH_ROUNDS` rounds (default 3), medians; `BAKER_BENCH_PAYLOAD`
//! bytes per payload (default 128); `BAKER_BENCH_TIMEOUT_SECS` the overall
//! limit. The harness in `common` measures and reports; this file holds
//! what is MQTT's own: the brokers and their bridge, the paths and the
//! sidecars' arguments. Run with `cargo bench --bench mqtt_e2e`; quick run:
//! `BAKER_BENCH_MQTT_MESSAGES=5000 BAKER_BENCH_MQTT_LATENCY_MESSAGES=500 BAKER_BENCH_ROUNDS=1 cargo bench --bench mqtt_e2e`.
//! Without `--bench` on its command line (e.g. `cargo test --benches`) it
//! does nothing, so test runs need no broker.

mod common;

use std::net::TcpStream;
use std::path::Path as FsPath;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot, watch};

use common::baker::{free_addr, start_directory, start_sidecar};
use common::measure::{Closed, Consumer, Mode, Next, Path, Published, Publisher, Route, Timing};
use common::overload::{self, rss_kib, Overload};
use common::procs::{bench_main, run_relay, spawn_child, spawn_self};
use common::report::Report;
use common::rounds::{self, Load, Plan, Sizes};
use common::stamp::now_ns;
use common::{run_id, READY_TIMEOUT, RUN_DEADLINE};

/// Unacknowledged QoS 1 messages a client or broker may have in flight.
const IN_FLIGHT: u16 = 1000;

/// Selects relay mode when this binary re-executes itself: the ingress
/// broker's port, the egress broker's port, the filter and the topic to
/// publish to, separated by spaces.
const RELAY_ENV: &str = "BAKER_BENCH_MQTT_RELAY";

// ---------------------------------------------------------------------------
// Relay mode.

/// The minimal relay: subscribe on one broker, republish on the other,
/// acknowledge the original once the copy's PUBACK came. Mosquitto answers a
/// connection's QoS 1 publishes in order, so the PUBACKs match the
/// originals first in, first out.
fn relay_main(spec: &str) {
    let spec: Vec<&str> = spec.split(' ').collect();
    let [from, to, filter, topic] = spec[..] else {
        panic!("{RELAY_ENV}={spec:?}: expected `<from port> <to port> <filter> <topic>`");
    };
    let port = |p: &str| p.parse::<u16>().expect("relay port");
    let (from, to, filter, topic) = (port(from), port(to), filter.to_owned(), topic.to_owned());
    run_relay(async move {
        let mut ingress = options(format!("relay-in-{}", run_id()), from);
        ingress.set_manual_acks(true);
        let (source, mut source_loop) = AsyncClient::new(ingress, 1000);
        let mut egress = options(format!("relay-out-{}", run_id()), to);
        egress.set_outgoing_inflight_upper_limit(IN_FLIGHT);
        let (sink, mut sink_loop) = AsyncClient::new(egress, 1000);
        source
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("relay subscribes");
        // Each event loop runs in a task of its own (as baker-mq's do), so
        // neither waits on the other's requests.
        let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match source_loop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => println!("ready"),
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let _ = arrived_tx.send(publish);
                    }
                    Ok(_) => {}
                    Err(e) => return eprintln!("relay: ingress connection ended: {e}"),
                }
            }
        });
        let (acked_tx, mut acked) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match sink_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = acked_tx.send(());
                    }
                    Ok(_) => {}
                    Err(e) => return eprintln!("relay: egress connection ended: {e}"),
                }
            }
        });
        let mut unacked = std::collections::VecDeque::new();
        loop {
            tokio::select! {
                Some(publish) = arrived.recv() => {
                    let payload = publish.payload.clone();
                    if sink.publish_bytes(topic.as_str(), QoS::AtLeastOnce, false, payload).await.is_err() {
                        return;
                    }
                    unacked.push_back(publish);
                }
                Some(()) = acked.recv() => {
                    let original = unacked.pop_front().expect("a PUBACK for a relayed message");
                    if source.ack(&original).await.is_err() {
                        return;
                    }
                }
                else => return,
            }
        }
    });
}

// ---------------------------------------------------------------------------
// The paths.

fn mosquitto_bin() -> String {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .find(|p| FsPath::new(p).exists())
        .map_or_else(|| "mosquitto".to_owned(), |p| (*p).to_owned())
}

/// Starts a Mosquitto on a free port with `extra` settings; its port and
/// pid.
fn start_mosquitto(name: &str, dir: &FsPath, extra: &str) -> (u16, u32) {
    let port = free_addr().port();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n\
             max_queued_messages 0\nmax_inflight_messages {IN_FLIGHT}\npersistence false\nlog_dest none\n{extra}"
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
    let pid = spawn_child(name, command, &[]);
    let deadline = Instant::now() + READY_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (port, pid)
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

/// One path: where to publish and where to subscribe.
struct MqttRoute {
    publish_port: u16,
    topic: String,
    subscribe_port: u16,
    filter: String,
}

impl Route for MqttRoute {
    type Consumer = MqttConsumer;
    type Publisher = MqttPublisher;

    /// A new subscriber connection; returns once the SUBACK arrived. Its
    /// event loop hands each message on with its arrival time.
    async fn consume(&self, _tag: u64) -> MqttConsumer {
        let options = options(format!("sub-{}", run_id()), self.subscribe_port);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        client
            .subscribe(&self.filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (tx, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = oneshot::channel();
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            while let Ok(event) = eventloop.poll().await {
                match event {
                    // Until the consumer closes and disconnects.
                    Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send((now_ns(), p.payload));
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
        tokio::time::timeout(READY_TIMEOUT, subscribed)
            .await
            .expect("SUBACK")
            .expect("the subscriber's event loop");
        MqttConsumer { client, messages }
    }

    /// A new publisher connection. Its event loop runs on the bench's
    /// runtime, so the publishing thread's pacing sleeps never hold it up.
    fn publisher(&self, _tag: u64) -> MqttPublisher {
        let mut options = options(format!("pub-{}", run_id()), self.publish_port);
        options.set_outgoing_inflight_upper_limit(IN_FLIGHT);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (acked_tx, acked) = watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = event {
                    acked_tx.send_modify(|n| *n += 1);
                }
            }
        });
        MqttPublisher {
            client,
            topic: self.topic.clone(),
            acked,
        }
    }
}

struct MqttConsumer {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<(u64, Bytes)>,
}

impl Consumer for MqttConsumer {
    async fn receive(&mut self, wait: Duration) -> Next {
        match tokio::time::timeout(wait, self.messages.recv()).await {
            Ok(Some((at, payload))) => Next::Message {
                at,
                payload,
                redelivered: false,
            },
            Ok(None) => Next::Ended("the subscriber's connection ended".to_owned()),
            Err(_) => Next::Idle,
        }
    }

    async fn close(self) -> Closed {
        let _ = self.client.disconnect().await;
        Closed::default()
    }
}

/// QoS 1 publishes; confirmed by the broker's PUBACKs.
struct MqttPublisher {
    client: AsyncClient,
    topic: String,
    /// PUBACKs so far.
    acked: watch::Receiver<u64>,
}

impl Publisher for MqttPublisher {
    async fn publish(&mut self, payload: Vec<u8>, out: &mut Published) -> bool {
        let topic = self.topic.as_str();
        match self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                out.error(e);
                false
            }
        }
    }

    async fn finish(mut self, out: &mut Published) {
        let handed = out.sent - out.errors;
        let all_acked = self.acked.wait_for(|n| *n >= handed);
        if !matches!(
            tokio::time::timeout(RUN_DEADLINE, all_acked).await,
            Ok(Ok(_))
        ) {
            out.error("not every PUBACK arrived");
        }
        out.confirmed = (*self.acked.borrow()).min(handed);
        let _ = self.client.disconnect().await;
    }
}

async fn bench() -> bool {
    let sizes = Sizes::from_env(
        ("BAKER_BENCH_MQTT_MESSAGES", 50_000),
        ("BAKER_BENCH_MQTT_LATENCY_MESSAGES", 5_000),
        ("BAKER_BENCH_MQTT_RATE", 2_000),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, a_pid) = start_mosquitto("mosquitto A", dir.path(), "");
    let (b, b_pid) = start_mosquitto(
        "mosquitto B (bridge to A)",
        dir.path(),
        &format!(
            "connection bench-bridge\naddress 127.0.0.1:{a}\ntopic bench/bridge/# out 1\n\
             bridge_protocol_version mqttv50\ncleansession true\n"
        ),
    );
    let id = run_id();
    let directory = start_directory(dir.path())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Two sidecars: one consuming A's ingress and delivering on A, one
    // consuming B's ingress and delivering to an inbox on A (the bridge's
    // topology: the forwarding hop between two brokers).
    let mut sidecars = Vec::new();
    for (name, ingress, inbox_broker) in [("a2a", a, a), ("b2a", b, a)] {
        let service = format!("bench{name}{id}");
        let broker = format!("mqtt://127.0.0.1:{ingress}?client_id=bench-{name}-{id}");
        let register = format!("service={service},id=i1,broker=mqtt://127.0.0.1:{inbox_broker}");
        let args = [
            "--adapter",
            "mqtt",
            "--broker",
            &broker,
            "--register",
            &register,
        ];
        let log = dir.path().join(format!("baker-mq-{name}.log"));
        let sidecar = start_sidecar(
            &format!("baker-mq {name}"),
            &directory,
            &args,
            &service,
            log,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        sidecars.push((service, sidecar));
    }

    let path = |name, (publish_port, topic), (subscribe_port, filter), hop| Path {
        name,
        hop,
        route: MqttRoute {
            publish_port,
            topic,
            subscribe_port,
            filter,
        },
    };
    let relay_filter = format!("benchrelay/{id}/#");
    let relay_topic = format!("relayed/{id}/work");
    let relay = spawn_self(
        "relay B→A",
        &[(RELAY_ENV, format!("{b} {a} {relay_filter} {relay_topic}"))],
    );
    let ((same, a2a), (across, b2a)) = (&sidecars[0], &sidecars[1]);
    let idle = rss_kib(b2a.pid);
    // The bridge is up once a message crosses it: the warm-up waits for one.
    let paths = [
        path(
            "direct",
            (a, "bench/direct/work".to_owned()),
            (a, "bench/direct/#".to_owned()),
            None,
        ),
        path(
            "bridge B→A",
            (b, "bench/bridge/work".to_owned()),
            (a, "bench/bridge/#".to_owned()),
            None,
        ),
        path(
            "baker-mq B→A",
            (b, format!("baker/{across}/work")),
            (a, format!("_baker/{across}/i1/#")),
            Some(b2a.pid),
        ),
        path(
            "baker-mq A→A",
            (a, format!("baker/{same}/work")),
            (a, format!("_baker/{same}/i1/#")),
            Some(a2a.pid),
        ),
        path(
            "relay B→A",
            (b, format!("benchrelay/{id}/work")),
            (a, relay_topic.clone()),
            Some(relay),
        ),
    ];
    let plan = Plan {
        loads: vec![Load {
            label: "throughput",
            mode: Mode::Burst,
            about: format!("QoS 1, published as fast as the broker's PUBACKs allow (at most {IN_FLIGHT} in flight)"),
            loss_ok: false,
        }],
        latency_each_round: true,
        timing: Timing {
            // As long as a stalled path is given to make progress again.
            quiet: Duration::from_secs(10),
            // For duplicates that come late.
            linger: Duration::from_millis(200),
        },
        pause: Duration::from_millis(200),
        broker: vec![a_pid.to_string(), b_pid.to_string()],
        strict: true,
        sizes,
    };
    let results = rounds::run(&plan, &paths, Vec::new()).await;
    let overload = Overload::from_env(5_000);
    let mut memory = Vec::new();
    if let Some(overload) = &overload {
        let path = &paths[2];
        memory.push(overload::run(path, idle, plan.sizes.size, overload).await);
    }

    // The last PUBACKs to the sidecars may still be on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, sidecar) in &sidecars {
        sidecar.print_record().await;
    }
    let report = Report {
        title: format!(
            "MQTT end-to-end: two Mosquittos started by the bench (max_queued_messages 0, max_inflight_messages {IN_FLIGHT}, no persistence); {} B QoS 1 messages; {} round(s)",
            plan.sizes.size, plan.sizes.rounds
        ),
        notes: vec![
            "the bridge runs inside Mosquitto B, so its cost is in CPU broker (both Mosquittos added up); CPU hop is the sidecar's process".to_owned(),
        ],
        ratios: vec![
            ("baker-mq B→A", "bridge B→A"),
            ("baker-mq B→A", "relay B→A"),
            ("relay B→A", "bridge B→A"),
            ("bridge B→A", "direct"),
            ("baker-mq B→A", "direct"),
            ("baker-mq A→A", "direct"),
        ],
        target: Some(("baker-mq B→A", "bridge B→A", 1.0)),
    };
    overload::print_report(&plan, &report, &results, overload.as_ref(), &memory)
}

fn main() {
    if let Ok(spec) = std::env::var(RELAY_ENV) {
        relay_main(&spec);
        return;
    }
    bench_main("mqtt_e2e", "Mosquitto", 900, || {}, bench);
}
