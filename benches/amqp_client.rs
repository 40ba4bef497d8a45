//! Which AMQP 0.9.1 client Baker keeps, lapin or amqprs, by measurement: the
//! same minimal relay written on each (see `amqp_client/relays.rs`),
//! each a separate process (this binary re-executed), over a real RabbitMQ
//! broker, in one run, interleaved round by round:
//!
//! * load generator (lapin, the same for every path) → durable queue A →
//!   the relay under test (consume with prefetch
//!   `BAKER_BENCH_AMQP_RELAY_PREFETCH` and manual acks, publish persistent
//!   with publisher confirms to queue B, ack the original once the confirm
//!   is in: the hop baker-mq does) → durable queue B → consumer (lapin, the
//!   same for every path).
//!
//! The paths differ only in the relay: `amqprs`; `lapin`, which hands each
//! publish to lapin and goes on; `lapin-await`, which waits for lapin to
//! have written each publish before the next, as baker-mq's AMQP adapter
//! does. Per path and round:
//!
//! * throughput: `BAKER_BENCH_AMQP_MESSAGES` messages published to A as fast
//!   as publisher confirms allow (at most `BAKER_BENCH_AMQP_CONFIRM_WINDOW`
//!   unconfirmed), consumed from B with manual acks (prefetch
//!   `BAKER_BENCH_AMQP_PREFETCH`, batched): msgs/s delivered to B, and the
//!   CPU time (user + system, from /proc/<pid>/stat) the relay's process,
//!   the bench and the broker spent per message. Every confirmed message
//!   must arrive (losses fail the bench); duplicates are counted;
//! * latency: `BAKER_BENCH_AMQP_LATENCY_MESSAGES` paced at
//!   `BAKER_BENCH_AMQP_RATE` msg/s, p50/p99 from publish to receipt.
//!
//! `BAKER_BENCH_ROUNDS` rounds (default 3), medians, and the ratios
//! amqprs / lapin and lapin-await / lapin of throughput, latency and relay
//! CPU per message. The paths run in the order lapin, lapin-await, amqprs in
//! every round; `BAKER_BENCH_AMQP_CLIENT_FIRST=amqprs` turns it round, to
//! check that the order does not decide. The relays run on a current-thread tokio runtime,
//! as baker-mq does by default (`BAKER_BENCH_RELAY_RUNTIME=multi_thread`
//! for the other). `BAKER_BENCH_PAYLOAD` sets the payload size (128 bytes),
//! `BAKER_BENCH_TIMEOUT_SECS` the overall limit, `BAKER_BENCH_AMQP_URL` the
//! broker without vhost (default `amqp://guest:guest@127.0.0.1:5672`); the
//! queues are in the default vhost `/`, named after the run, and deleted at
//! the end (with `rabbitmqctl delete_queue` on panic, timeout and Ctrl-C).
//!
//! Run with `cargo bench --bench amqp_client`; quick run:
//! `BAKER_BENCH_AMQP_MESSAGES=5000 BAKER_BENCH_AMQP_LATENCY_MESSAGES=1000 BAKER_BENCH_ROUNDS=1 cargo bench --bench amqp_client`.
//! Without `--bench` on its command line (e.g. `cargo test --all-targets`)
//! it does nothing, so test runs need no broker.

mod common;

#[path = "amqp_client/relays.rs"]
mod relays;

use lapin::options::QueueDeleteOptions;

use common::amqp::{
    attempt, burst_plan, connect, declare_queues, open_path, queue_depth, rabbit_ctl, shown_broker,
    vhost_uri, AmqpRoute,
};
use common::measure::Path;
use common::procs::{bench_main, spawn_self, stop_child, Created, RELAY_RUNTIME_ENV};
use common::report::{self, Report};
use common::rounds::{self, Results, Sizes};
use common::{env_or, run_id};
use relays::{
    relay_main, DEFAULT_PREFETCH, RELAY_DST_ENV, RELAY_ENV, RELAY_PREFETCH_ENV, RELAY_SRC_ENV,
    RELAY_URL_ENV,
};

/// The vhost the queues are in.
const VHOST: &str = "/";
const CLIENTS: [&str; 3] = ["lapin", "lapin-await", "amqprs"];

// ---------------------------------------------------------------------------
// Queues: deleted at the end of the run, or by the harness's cleanup hook
// (also on panic, timeout and signal).

static QUEUES: Created = Created::new();

fn delete_queues() {
    for queue in QUEUES.take() {
        match rabbit_ctl("rabbitmqctl", &["delete_queue", &queue]) {
            Ok(_) => eprintln!("deleted queue {queue}"),
            Err(e) => eprintln!("could not delete queue {queue}: {e}"),
        }
    }
}

/// Deletes the run's queues over AMQP (quicker than `rabbitmqctl`); what
/// could not be deleted is left to the cleanup hook.
async fn delete_queues_now() {
    let connection = connect(VHOST, "baker-bench-cleanup").await;
    let channel = attempt(connection.create_channel()).await;
    for queue in QUEUES.take() {
        let deleted = match &channel {
            Ok(channel) => {
                let delete =
                    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default());
                attempt(delete).await.map(|_| ())
            }
            Err(e) => Err(e.clone()),
        };
        match deleted {
            Ok(()) => eprintln!("deleted queue {queue}"),
            Err(e) => {
                eprintln!("could not delete queue {queue} over AMQP ({e}); trying rabbitmqctl");
                QUEUES.add(&queue);
            }
        }
    }
    let _ = attempt(connection.close(200, "done".into())).await;
}

// ---------------------------------------------------------------------------
// The paths.

/// Declares the client's two queues and starts its relay between them; the
/// path and the relay's pid.
async fn open_relay_path(
    client: &'static str,
    run: &str,
    flow: (usize, u16),
    relay_prefetch: u16,
) -> Path<AmqpRoute> {
    let (a, b) = (
        format!("baker-bench-client-{run}-{client}-a"),
        format!("baker-bench-client-{run}-{client}-b"),
    );
    QUEUES.add(&a);
    QUEUES.add(&b);
    declare_queues(VHOST, &[&a, &b]).await;
    let env = [
        (RELAY_ENV, client.to_owned()),
        (RELAY_URL_ENV, vhost_uri(VHOST)),
        (RELAY_SRC_ENV, a.clone()),
        (RELAY_DST_ENV, b.clone()),
        (RELAY_PREFETCH_ENV, relay_prefetch.to_string()),
        (RELAY_RUNTIME_ENV, common::procs::relay_runtime()),
    ];
    let pid = spawn_self(&format!("{client} relay"), &env);
    open_path(client, VHOST, ("", &a, &b), Some(pid), flow).await
}

/// Context switches of process `pid` so far, voluntary and not, over
/// its threads (/proc/<pid>/task/*/status); `None` where they cannot be
/// read.
fn context_switches(pid: u32) -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        total.0 += field("voluntary_ctxt_switches:")?;
        total.1 += field("nonvoluntary_ctxt_switches:")?;
    }
    Some(total)
}

/// Messages that went through the relay of `path` in the measured runs
/// (throughput and latency) and the warm-up burst before them.
fn relayed(results: &Results, path: &str) -> u64 {
    let warm_up = 2_001;
    let measured = results
        .paths
        .iter()
        .find(|r| r.name == path)
        .map_or(0, |r| r.outcomes().map(|o| o.received).sum::<u64>());
    warm_up + measured
}

/// The relay's CPU time per message over the throughput rounds of `path`,
/// in µs; `None` where it could not be read.
fn relay_cpu_per_msg(results: &Results, path: &str) -> Option<f64> {
    let r = results.paths.iter().find(|r| r.name == path)?;
    let received: u64 = r.loads[0].iter().map(|o| o.received).sum();
    let hop = r.cpu[0]?.hop?;
    Some(hop.as_secs_f64() * 1e6 / received.max(1) as f64)
}

async fn bench() -> bool {
    let sizes = Sizes::from_env(
        ("BAKER_BENCH_AMQP_MESSAGES", 20_000),
        ("BAKER_BENCH_AMQP_LATENCY_MESSAGES", 4_000),
        ("BAKER_BENCH_AMQP_RATE", 2_000),
    );
    let window: usize = env_or("BAKER_BENCH_AMQP_CONFIRM_WINDOW", 1_000);
    let prefetch: u16 = env_or("BAKER_BENCH_AMQP_PREFETCH", 1_000);
    let relay_prefetch: u16 = env_or(RELAY_PREFETCH_ENV, DEFAULT_PREFETCH);
    assert!(
        window > 0 && prefetch > 0 && relay_prefetch > 0,
        "the confirm window and prefetches must be positive"
    );
    let first: String = env_or("BAKER_BENCH_AMQP_CLIENT_FIRST", "lapin".to_owned());
    let mut clients = CLIENTS;
    match first.as_str() {
        "lapin" => {}
        "amqprs" => clients.reverse(),
        other => panic!("BAKER_BENCH_AMQP_CLIENT_FIRST={other:?}: expected lapin or amqprs"),
    }
    let run = run_id();
    let version = rabbit_ctl("rabbitmqctl", &["version"])
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());

    let flow = (window, prefetch);
    let mut paths = Vec::new();
    for client in clients {
        paths.push(open_relay_path(client, &run, flow, relay_prefetch).await);
    }

    let plan = burst_plan(window, sizes);
    let results = rounds::run(&plan, &paths, Vec::new()).await;

    // What is left in the queues (late duplicates would be in B).
    let mut depths = Vec::new();
    for Path { route, .. } in &paths {
        let a = route.routing_key.clone();
        for queue in [a, route.queue.clone()] {
            let depth = queue_depth(&route.consumer, &queue).await;
            let depth = depth.map_or_else(|e| format!("? ({e})"), |d| d.to_string());
            depths.push(format!("{queue}: {depth}"));
        }
    }
    eprintln!("messages left in the queues: {}", depths.join(", "));
    let mut switches = Vec::new();
    for Path { name, hop, .. } in &paths {
        let Some(pid) = *hop else { continue };
        let messages = relayed(&results, name) as f64;
        if let Some((voluntary, forced)) = context_switches(pid) {
            let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |t| t.count());
            switches.push(format!(
                "{name} {:.2} voluntary, {:.2} involuntary ({threads} threads)",
                voluntary as f64 / messages,
                forced as f64 / messages
            ));
        }
    }
    for Path { route, hop, .. } in &paths {
        for connection in [&route.consumer, &route.publisher_conn] {
            let _ = attempt(connection.close(200, "done".into())).await;
        }
        if let Some(pid) = hop {
            stop_child(*pid);
        }
    }
    delete_queues_now().await;

    let cpu = |client: &str| relay_cpu_per_msg(&results, client);
    let shown = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} µs"));
    let cpu_ratio = |a: &str, b: &str| match (cpu(a), cpu(b)) {
        (Some(x), Some(y)) if y > 0.0 => format!("{a} / {b} {:.3}", x / y),
        _ => format!("{a} / {b} n/a"),
    };
    let report = Report {
        title: format!(
            "AMQP client: lapin or amqprs, the same relay on each (lapin-await: lapin waiting for each publish's write); RabbitMQ {version} at {}; {} B persistent messages, publisher confirms (at most {window} unconfirmed) into A, relay prefetch {relay_prefetch}, consumer of B prefetch {prefetch} (batched acks); relays on a {} runtime; {} round(s), order {}",
            shown_broker(),
            plan.sizes.size,
            common::procs::relay_runtime(),
            plan.sizes.rounds,
            clients.join(", "),
        ),
        notes: vec![
            "CPU hop is the relay's process (all its threads); the load generator and the consumer of B (CPU bench) are the same lapin code on every path".to_owned(),
            format!(
                "relay CPU per message over the throughput rounds: lapin {}, lapin-await {}, amqprs {}; {}, {}",
                shown(cpu("lapin")),
                shown(cpu("lapin-await")),
                shown(cpu("amqprs")),
                cpu_ratio("amqprs", "lapin"),
                cpu_ratio("lapin-await", "lapin"),
            ),
            format!(
                "relay context switches per message over the whole run, warm-up included (/proc/<pid>/task/*/status): {}",
                if switches.is_empty() { "-".to_owned() } else { switches.join("; ") },
            ),
        ],
        ratios: vec![("amqprs", "lapin"), ("lapin-await", "lapin")],
        target: None,
    };
    report::print(&plan, &report, &results)
}

fn main() {
    if std::env::var_os(RELAY_ENV).is_some() {
        relay_main();
        return;
    }
    bench_main(
        "amqp_client",
        "RabbitMQ and rabbitmqctl",
        1_200,
        delete_queues,
        bench,
    );
}
