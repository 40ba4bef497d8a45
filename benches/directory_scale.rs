//! The embedded directory at fleet scale: what registrations, renewals and
//! changes cost it, and how fast a change reaches the routers that need it,
//! with the new watch (`POST /v1/watch`: only the watcher's services, only
//! what changed) against today's (`GET /v1/catalog`: the whole catalog on
//! every change), against one `baker-mq directory` of this build.
//!
//! 1. `BAKER_BENCH_INSTANCES` (20,000) records spread evenly over
//!    `BAKER_BENCH_SERVICES` (instances / 100) services register over 64
//!    keep-alive connections, then each renews once: the directory's CPU
//!    (utime + stime from /proc) per registration and per renewal, and what
//!    renewals would take at a 10 s TTL (agents renew every TTL/3). Then its
//!    CPU when idle (the lease sweeps) and its RSS.
//! 2. Watch: `BAKER_BENCH_WATCHERS` (2,000) watchers, each a task with one
//!    raw HTTP/1.1 keep-alive connection, loop on `/v1/watch` (wait 30 s)
//!    over `BAKER_BENCH_WATCHED` (5) random services. Once all have their
//!    first (full) answer, `BAKER_BENCH_CHANGES` (50) changes, one every
//!    100 ms, each re-registering a random instance with version `c<n>`.
//!    Propagation = first answer holding `c<n>` − start of its write, over
//!    every (change, watcher of the changed service) pair; a pair never seen
//!    is a failure. Also the directory's CPU and the bytes answered per
//!    change.
//! 3. Catalog (the baseline, same directory and records):
//!    `BAKER_BENCH_BASELINE_WATCHERS` (100) watchers loop on `/v1/catalog`
//!    (wait 30 s), finding markers with memmem rather than parsing the whole
//!    catalog; `BAKER_BENCH_BASELINE_CHANGES` (10) changes as above. Pairs
//!    are counted for the same kind of random services per watcher, though
//!    each gets everything.
//!
//! 4. KV (`BAKER_BENCH_KV=0` skips it): the directory on a JetStream KV
//!    bucket of the run's own (`baker-directory-kv`, NATS at
//!    `BAKER_BENCH_NATS_URL`, nats://127.0.0.1:4222), deleted at the end.
//!    One writer registers `BAKER_BENCH_KV_INSTANCES` (20,000) in
//!    `BAKER_BENCH_KV_SERVICES` (instances / 100) services, 64 at a time;
//!    `BAKER_BENCH_KV_READERS` (300) readers, each a `KvDirectory` of its
//!    own, watch `BAKER_BENCH_WATCHED` random services (only their keys),
//!    `BAKER_BENCH_KV_BASELINE_READERS` (30) read the whole bucket
//!    (`catalog`, today's); `BAKER_BENCH_KV_CHANGES` (30) changes, one every
//!    200 ms, propagation as above. Then renewals at a 10 s TTL's rate for
//!    `BAKER_BENCH_KV_RENEWALS_SECS` (10) s, and the entries the server
//!    delivered to each reader's consumer then (`kv.rs` says how).
//!
//! `BAKER_BENCH_SEED` (42) seeds the choices, `BAKER_BENCH_TIMEOUT_SECS`
//! (3000) bounds the run. Run with `cargo bench --bench directory_scale`;
//! without `--bench` it does nothing. Phases 1-3 need no broker.
//!
//! Limits: the soft RLIMIT_NOFILE is raised to the hard limit (the
//! directory, a child, inherits it); with a hard limit below watchers +
//! 1,000 the watchers are reduced and the report says so. Bench and
//! directory share the machine (two cores here): the bench's own CPU is
//! printed, and the directory runs its default single-threaded runtime.
//! CPU is read in 10 ms ticks, so a phase's per-change figure is exact to
//! 10 ms / changes. Figures at 100,000 instances or 10,000 watchers are
//! linear extrapolations and say so.

mod common;

#[path = "directory_scale/kv.rs"]
mod kv;
#[path = "directory_scale/phase.rs"]
mod phase;
#[path = "directory_scale/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use baker_directory_api::MAX_WATCHED_SERVICES;
use common::baker::start_directory;
use common::cpu::{cpu_time, load_average};
use common::procs::{bench_main, stop_child};
use common::{env_or, percentile_us};
use phase::{Mode, Outcome};

/// Keep-alive connections registrations and renewals go over.
const POOL: usize = 64;

pub fn service_name(s: usize) -> String {
    format!("s{s:04}")
}

fn instance_path(i: usize, services: usize) -> String {
    format!(
        "/v1/services/{}/instances/i{i:06}",
        service_name(i % services)
    )
}

fn record_json(i: usize, services: usize, version: &str) -> String {
    let s = service_name(i % services);
    format!(
        r#"{{"service":"{s}","id":"i{i:06}","version":"{version}","endpoint":{{"adapter":"nats","broker":"nats://127.0.0.1:4222","inbox":"_baker.{s}.i{i:06}"}},"weight":100,"status":"passing","ttl_secs":3600}}"#
    )
}

/// VmRSS of process `pid`, KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// Raises the soft limit on open files to the hard one; (soft before, soft
/// now, hard), `None` when it cannot be read.
fn raise_nofile() -> Option<(u64, u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            limit.rlim_cur = before;
        }
        Some((before, limit.rlim_cur, limit.rlim_max))
    }
}

/// The directory's CPU between two readings.
fn spent(before: Option<Duration>, after: Option<Duration>) -> Option<Duration> {
    Some(after?.saturating_sub(before?))
}

fn micros(cpu: Option<Duration>, per: usize) -> f64 {
    cpu.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6 / per.max(1) as f64)
}

/// Runs `count` pool requests and prints their rate and the directory's CPU
/// for each; the CPU per request, µs.
async fn timed_pool(
    what: &str,
    addr: std::net::SocketAddr,
    pid: &str,
    count: usize,
    make: impl Fn(usize) -> wire::Request + Send + Sync + 'static,
) -> f64 {
    let (cpu0, started) = (cpu_time(pid), Instant::now());
    wire::run_pool(addr, count, POOL, make).await;
    let took = started.elapsed();
    let per = micros(spent(cpu0, cpu_time(pid)), count);
    let line = format!(
        "{what:<13} {count} in {took:.2?} ({:.0}/s over {POOL} keep-alive connections); directory CPU {per:.1} µs each",
        count as f64 / took.as_secs_f64()
    );
    eprintln!("  {line}");
    println!("{line}");
    per
}

fn main() {
    bench_main(
        "directory_scale",
        "this build's baker-mq (it starts its own directory), and NATS with JetStream for the KV phase",
        3000,
        kv::cleanup,
        run,
    );
}

async fn run() -> bool {
    let instances: usize = env_or("BAKER_BENCH_INSTANCES", 20_000).max(1);
    let services: usize =
        env_or("BAKER_BENCH_SERVICES", (instances / 100).max(1)).clamp(1, instances);
    let asked_watchers: usize = env_or("BAKER_BENCH_WATCHERS", 2_000);
    let watched: usize =
        env_or("BAKER_BENCH_WATCHED", 5).clamp(1, services.min(MAX_WATCHED_SERVICES));
    let changes: usize = env_or("BAKER_BENCH_CHANGES", 50);
    let base_watchers: usize = env_or("BAKER_BENCH_BASELINE_WATCHERS", 100);
    let base_changes: usize = env_or("BAKER_BENCH_BASELINE_CHANGES", 10);
    let seed: u64 = env_or("BAKER_BENCH_SEED", 42);
    assert!(
        changes + base_changes <= instances,
        "each change re-registers another instance: at most {instances} changes"
    );

    println!();
    let (soft_before, soft, hard) = raise_nofile().unwrap_or_else(|| {
        println!("open files: getrlimit failed; going on with the limit as it is");
        (0, 0, u64::MAX)
    });
    println!("open files (RLIMIT_NOFILE): soft {soft} (was {soft_before}), hard {hard}");
    let need = asked_watchers.max(base_watchers) as u64 + 1_000;
    let watchers = if hard < need {
        let w = hard.saturating_sub(1_000).max(1) as usize;
        println!(
            "LIMIT: hard open-files limit {hard} < watchers + 1000: watchers reduced from {asked_watchers} to {w}"
        );
        w
    } else {
        asked_watchers
    };
    let base_watchers = base_watchers.min(watchers.max(1));

    let logs = tempfile::tempdir().expect("temp dir");
    let directory = match start_directory(logs.path()).await {
        Ok(directory) => directory,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    let (addr, pid) = (directory.addr, directory.pid.to_string());
    let rss_start = rss_kib(&pid);
    let load_start = load_average();
    eprintln!("directory_scale: baker-mq directory pid {pid} at {addr}; {instances} instances in {services} services");

    let register = timed_pool("registration:", addr, &pid, instances, move |i| {
        (
            "PUT",
            instance_path(i, services),
            record_json(i, services, "1"),
            200,
        )
    })
    .await;
    let renew = timed_pool("renewal:", addr, &pid, instances, move |i| {
        (
            "POST",
            format!("{}/renew", instance_path(i, services)),
            String::new(),
            204,
        )
    })
    .await;
    let idle_cpu0 = cpu_time(&pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = micros(spent(idle_cpu0, cpu_time(&pid)), 3) / 1e3;
    let rss_registered = rss_kib(&pid);

    // Every change re-registers another instance, so none hides another.
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut picked = std::collections::HashSet::new();
    let mut plan = Vec::new();
    while plan.len() < changes + base_changes {
        let i = rng.usize(..instances);
        if picked.insert(i) {
            let marker = format!("c{}", plan.len());
            plan.push((
                instance_path(i, services),
                record_json(i, services, &marker),
                i % services,
            ));
        }
    }
    let base_plan = plan.split_off(changes);

    eprintln!("watch phase: {watchers} watchers of {watched} services each, {changes} changes");
    let new = phase::run(
        Mode::Watch,
        addr,
        &pid,
        watchers,
        services,
        watched,
        plan,
        0,
        &mut rng,
    )
    .await;
    eprintln!(
        "catalog phase: {base_watchers} watchers of the whole catalog, {base_changes} changes"
    );
    let old = phase::run(
        Mode::Catalog,
        addr,
        &pid,
        base_watchers,
        services,
        watched,
        base_plan,
        changes,
        &mut rng,
    )
    .await;
    let load_end = load_average();
    stop_child(directory.pid);

    // The report.
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let shown = |l: Option<f64>| l.map_or("?".to_owned(), |l| format!("{l:.2}"));
    println!(
        "\ndirectory_scale: {instances} instances in {services} services, one baker-mq directory (default runtime: one thread); \
         machine: {cores} cores, 1-min load {} at the start, {} at the end",
        shown(load_start),
        shown(load_end)
    );
    let at_100k = |per_us: f64| per_us * 30_000.0 / 1e6;
    println!(
        "renewals at a 10 s TTL (every TTL/3): {instances} instances = {:.0}/s -> {:.3} cores; \
         100,000 instances = 30,000/s -> {:.3} cores (linear extrapolation)",
        instances as f64 * 0.3,
        renew * instances as f64 * 0.3 / 1e6,
        at_100k(renew)
    );
    println!("directory idle with {instances} records (lease sweeps every 200 ms): {idle:.1} ms CPU per s");
    let per_instance = rss_registered
        .zip(rss_start)
        .map(|(r, s)| r.saturating_sub(s) as f64 / instances as f64);
    let rss_100k = per_instance
        .zip(rss_start)
        .map(|(p, s)| (s as f64 + p * 100_000.0) as u64);
    println!(
        "directory RSS: {} at start, {} after registering ({:.2} KiB per record), {} after the watch phase, {} after the catalog phase",
        mib(rss_start),
        mib(rss_registered),
        per_instance.unwrap_or(f64::NAN),
        mib(new.rss_end_kib),
        mib(old.rss_end_kib)
    );
    for (name, o) in [("watch", &new), ("catalog", &old)] {
        println!(
            "{name} phase: {} watchers had their first answer after {:.2?}, {:.1} MB in all ({:.1} kB each); \
             changes written and seen in {:.2?}; bench CPU {:.2?}; failed requests {}",
            o.watchers,
            o.first_answers,
            o.first_bytes as f64 / 1e6,
            o.first_bytes as f64 / 1e3 / o.watchers.max(1) as f64,
            o.took,
            o.bench_cpu.unwrap_or_default(),
            o.errors
        );
    }

    println!();
    let w = 49;
    println!(
        "{:<w$} | {:>8} {:>7} | {:>8} {:>8} {:>8} | {:>15} | {:>11} {:>12} {:>11} | {:>16} {:>16}",
        "propagation of a change to its watchers",
        "watchers",
        "changes",
        "p50 ms",
        "p99 ms",
        "max ms",
        "pairs seen/exp",
        "dir CPU/chg",
        "bytes/change",
        "answers/chg",
        "CPU/chg/watcher",
        "bytes/chg/watcher"
    );
    println!("{}", "-".repeat(w + 140));
    let row = |name: &str, o: &Outcome| {
        let per_change = micros(o.dir_cpu, o.changes) / 1e3;
        println!(
            "{name:<w$} | {:>8} {:>7} | {:>8.1} {:>8.1} {:>8.1} | {:>15} | {:>8.2} ms {:>12.0} {:>11.1} | {:>13.1} µs {:>16.0}",
            o.watchers,
            o.changes,
            percentile_us(&o.delays, 0.50) / 1e3,
            percentile_us(&o.delays, 0.99) / 1e3,
            percentile_us(&o.delays, 1.0) / 1e3,
            format!("{}/{}", o.delays.len(), o.expected),
            per_change,
            o.bytes as f64 / o.changes.max(1) as f64,
            o.answers as f64 / o.changes.max(1) as f64,
            per_change * 1e3 / o.watchers.max(1) as f64,
            o.bytes as f64 / (o.changes * o.watchers).max(1) as f64,
        );
    };
    row("watch (only its services, changes only)", &new);
    row("catalog (whole catalog on every change, today's)", &old);
    println!(
        "   pair = (change, watcher following the changed service); propagation = the watcher's receipt of the answer \
         holding the change - the start of its write; dir CPU = the directory's utime+stime from the first write until \
         every pair was seen (catalog: until every watcher had every change), per change; bytes = HTTP responses (head + body) \
         the watchers received in that time"
    );
    let ms = |d: &[u64], p: f64| percentile_us(d, p) / 1e3;
    println!(
        "   catalog over every (change, watcher) pair, as each watcher gets every change: {} pairs, p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms",
        old.all_delays.len(),
        ms(&old.all_delays, 0.5),
        ms(&old.all_delays, 0.99),
        ms(&old.all_delays, 1.0)
    );
    println!(
        "   of the directory CPU per change, about {:.2} ms (watch) and {:.2} ms (catalog) is its idle work over \
         the phase (lease sweeps, {idle:.1} ms/s); CPU is read in 10 ms ticks",
        idle * new.took.as_secs_f64() / new.changes.max(1) as f64,
        idle * old.took.as_secs_f64() / old.changes.max(1) as f64,
    );
    // A catalog answer costs about the same whatever the change: scale it.
    let per_answer = |o: &Outcome| {
        (
            micros(o.dir_cpu, o.answers as usize),
            o.bytes as f64 / o.answers.max(1) as f64,
        )
    };
    let (cpu_answer, bytes_answer) = per_answer(&old);
    let scale = 100_000.0 / instances as f64;
    println!(
        "   catalog at 10,000 watchers and 100,000 instances (EXTRAPOLATION, linear in watchers and in catalog size, one \
         catalog per watcher per change): {:.1} s of directory CPU and {:.2} GB sent per change \
         (measured per catalog answer: {:.2} ms, {:.2} MB at {instances} instances)",
        cpu_answer * 10_000.0 * scale / 1e6,
        bytes_answer * 10_000.0 * scale / 1e9,
        cpu_answer / 1e3,
        bytes_answer / 1e6
    );

    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let p99 = percentile_us(&new.delays, 0.99) / 1e3;
    let change_ms = micros(new.dir_cpu, new.changes) / 1e3;
    let cores_30k = at_100k(renew);
    println!("targets (for reference):");
    println!(
        "  watch propagation p99 < 1 s:                  {p99:.1} ms  {}",
        verdict(p99 < 1_000.0)
    );
    println!(
        "  directory CPU per change <= 10 ms (watch):    {change_ms:.2} ms  {}",
        verdict(change_ms <= 10.0)
    );
    println!(
        "  RSS < 1 GiB at 100,000 instances:             ~{} (EXTRAPOLATED from {instances}; plus {} the watch phase added)  {}",
        mib(rss_100k),
        mib(new.rss_end_kib.zip(rss_registered).map(|(a, b)| a.saturating_sub(b))),
        verdict(rss_100k.is_some_and(|r| r < 1 << 20))
    );
    println!(
        "  renewals at 30,000/s < 1 core:                {cores_30k:.3} cores (EXTRAPOLATED from {renew:.1} µs each)  {}",
        verdict(cores_30k < 1.0)
    );
    println!("  (registration: {register:.1} µs of directory CPU each)");

    let mut ok = true;
    for (name, o) in [("watch", &new), ("catalog", &old)] {
        if !o.missing.is_empty() {
            ok = false;
            println!(
                "FAILED ({name}): {} of {} pairs never seen, e.g.:",
                o.missing.len(),
                o.expected
            );
            for m in o.missing.iter().take(10) {
                println!("    {m}");
            }
        }
        if o.foreign > 0 {
            ok = false;
            println!(
                "FAILED ({name}): {} records of services the watcher did not name",
                o.foreign
            );
        }
        if o.errors > 0 {
            println!(
                "PROBLEM ({name}): {} watch requests failed (see stderr)",
                o.errors
            );
        }
    }
    let log = std::fs::read_to_string(&directory.log).unwrap_or_default();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    if !warnings.is_empty() {
        println!(
            "directory log: {} warnings/errors, the first:",
            warnings.len()
        );
        for line in warnings.iter().take(10) {
            println!("    {line}");
        }
    }
    if env_or("BAKER_BENCH_KV", 1) != 0 {
        ok &= kv::run(seed).await;
    }
    ok
}
