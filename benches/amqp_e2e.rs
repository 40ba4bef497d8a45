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
//! Last, baker-mq's memory under overload (`common::overload`): publishing
//! at 3,000 msg/s for a minute to an instance taking 300.
//!
//! `BAKER_BENCH_ROUNDS` rounds (default 3), medians. `BAKER_BENCH_PAYLOAD`
//! sets the payload size, `BAKER_BENCH_TIMEOUT_SECS` the overall limit,
//! `BAKER_BENCH_AMQP_URL` the broker without vhost (default
//! `amqp://guest:guest@127.0.0.1:5672`). Vhosts are created and deleted
//! with `rabbitmqctl` (also on panic, timeout and Ctrl-C), and
//! `rabbitmq-plugins enable rabbitmq_shovel` is run at the start. The
//! harness in `common` measures and reports; this file holds what is
//! RabbitMQ's own: vhosts, the Shovel and the sidecar's arguments; the
//! load generator is `common::amqp`'s, shared with `amqp_client`.
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

use std::path::Path as FsPath;

use common::amqp::{
    attempt, burst_plan, declare_queues, open_path, queue_depth, rabbit_ctl, shown_broker,
    urlencode, vhost_uri,
};
use common::baker::{start_directory, start_sidecar, Sidecar};
use common::measure::Path;
use common::overload::{self, rss_kib, Overload};
use common::procs::{bench_main, stop_child, Created};
use common::report::Report;
use common::rounds::{self, Sizes};
use common::{env_or, run_id};

const SHOVEL_SRC: &str = "bench.src";
const SHOVEL_DST: &str = "bench.dst";

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
    let mut idle = None;
    match start_baker(&run, &vhost("baker"), logs.path()).await {
        Ok((sidecar, service)) => {
            idle = rss_kib(sidecar.pid);
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

    let plan = burst_plan(window, sizes);
    let results = rounds::run(&plan, &paths, skipped).await;
    let overload = Overload::from_env(3_000);
    let mut memory = Vec::new();
    if let (Some(overload), Some(path)) = (&overload, paths.iter().find(|p| p.name == "baker-mq")) {
        memory.push(overload::run(path, idle, plan.sizes.size, overload).await);
    }

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
    overload::print_report(&plan, &report, &results, overload.as_ref(), &memory)
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
