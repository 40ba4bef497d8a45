//! The KV phase (`baker-directory-kv`): readers following only their
//! services' keys (`Directory::watch`, a consumer filtered on `<service>.>`)
//! against readers of the whole bucket (`catalog`, today's): how fast a
//! change reaches them, and the renewal entries the server delivers to each.
//! Every `KvDirectory` runs on a runtime of the phase's own, shut down before
//! the bucket is deleted: a dropped `KvDirectory` goes on following its
//! bucket (its tasks hold it), and creates it again once deleted.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use baker_directory_api::{testing, MAX_WATCHED_SERVICES};
use baker_directory_kv::{KvDirectory, KvSettings};
use baker_mq::directory::{Directory, InstanceRecord};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::common::cpu::cpu_time;
use crate::common::nats::{nats_server_pid, nats_url};
use crate::common::procs::Created;
use crate::common::{env_or, percentile_us, run_id};
use crate::service_name;

const CHANGE_EVERY: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(10);
const FIRST_ANSWERS: Duration = Duration::from_secs(300);
/// Longest wait for every reader to see every change, then for the
/// consumers to have nothing pending.
const SETTLE: Duration = Duration::from_secs(60);
const DRAINED: Duration = Duration::from_secs(30);
/// Writes in flight at once.
const IN_FLIGHT: usize = 64;

/// The run's bucket, until deleted (by the run, or the cleanup hook), and
/// the runtime every `KvDirectory` of the phase runs on.
static BUCKET: Created = Created::new();
static RUNTIME: Mutex<Option<tokio::runtime::Runtime>> = Mutex::new(None);

/// Instance `i`'s record: its service `s<i % services>`, `version`.
fn record(i: usize, services: usize, version: &str) -> InstanceRecord {
    let mut r = testing::record(&service_name(i % services), &format!("i{i:06}"), 3600);
    (r.endpoint.adapter, r.endpoint.broker) = ("nats".into(), "nats://127.0.0.1:4222".into());
    r.version = version.to_owned();
    r
}

/// What the readers share with the phase; pairs of counters are [watch
/// readers, catalog readers].
#[derive(Default)]
struct Shared {
    ready: AtomicUsize,
    held: [AtomicUsize; 2],  // records at the first answer
    retries: [AtomicU64; 2], // failed reads before the first answer, after
    foreign: AtomicU64,      // records of services a watch reader does not follow
    seen: [AtomicUsize; 2],  // (change, reader) pairs seen
    stop: CancellationToken,
}

struct Reader {
    /// Its services (a catalog reader's, to count its pairs).
    own: Vec<usize>,
    /// Reads the whole bucket (`catalog`) rather than its services'.
    whole: bool,
    /// When it first held each change.
    seen: Mutex<Vec<Option<Instant>>>,
}

async fn reader(settings: KvSettings, me: Arc<Reader>, shared: Arc<Shared>) {
    let owner = format!("bench-reader-{}", fastrand::u64(..));
    let d = (KvDirectory::new(settings, None, &owner).await).expect("a KvDirectory");
    let set: BTreeSet<String> = me.own.iter().map(|&s| service_name(s)).collect();
    let mut after = None;
    loop {
        let read = async {
            let answer = match me.whole {
                false => {
                    (d.watch(&set, after, WAIT).await).map(|c| (c.epoch, c.index, c.instances))
                }
                true => (d.catalog(after, WAIT).await).map(|c| (c.epoch, c.index, c.instances)),
            };
            (answer, Instant::now())
        };
        let (answer, at) = tokio::select! {
            answer = read => answer,
            _ = shared.stop.cancelled() => return,
        };
        let (epoch, index, records) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                if shared.retries[after.is_some() as usize].fetch_add(1, Relaxed) < 3 {
                    eprintln!("  KV reader (first read: {}): {e}", after.is_none());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut seen = me.seen.lock().unwrap();
        for r in &records {
            if !me.whole && !set.contains(&r.service) {
                shared.foreign.fetch_add(1, Relaxed);
            }
            let n = r.version.strip_prefix('k').and_then(|n| n.parse().ok());
            // A watch reader holds changes of its services only.
            if let Some(slot @ None) = seen.get_mut(n.unwrap_or(usize::MAX)) {
                *slot = Some(at);
                shared.seen[me.whole as usize].fetch_add(1, Relaxed);
            }
        }
        drop(seen);
        if after.replace((epoch, index)).is_none() {
            shared.held[me.whole as usize].fetch_add(records.len(), Relaxed);
            shared.ready.fetch_add(1, Relaxed);
        }
    }
}

/// Each consumer of the bucket's stream: entries delivered so far
/// (`delivered.consumer_seq`) and the services of its `filter_subjects`, or
/// `filter_subject` (`None`: the whole bucket); listed once none has anything
/// pending (or after [`DRAINED`]), with what was still pending.
type Consumers = HashMap<String, (u64, Option<Vec<String>>)>;

async fn consumers(js: &jetstream::Context, bucket: &str) -> Result<(Consumers, u64), String> {
    let (name, prefix) = (format!("KV_{bucket}"), format!("$KV.{bucket}."));
    let deadline = Instant::now() + DRAINED;
    loop {
        let stream = (js.get_stream(&name).await).map_err(|e| format!("stream {name}: {e}"))?;
        let mut list = stream.consumers();
        let (mut all, mut pending) = (HashMap::new(), 0);
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| format!("consumers of {name}: {e}"))?;
            pending += info.num_pending;
            let service = |s: &String| Some(s.strip_prefix(&prefix)?.strip_suffix(".>")?.into());
            let c = &info.config;
            let subjects = match c.filter_subjects.is_empty() {
                true => std::slice::from_ref(&c.filter_subject),
                false => &c.filter_subjects[..],
            };
            let services = subjects.iter().map(service).collect();
            all.insert(info.name, (info.delivered.consumer_sequence, services));
        }
        if pending == 0 || Instant::now() > deadline {
            return Ok((all, pending));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[derive(Default)]
struct Pairs {
    /// Propagation, ns, sorted.
    delays: Vec<u64>,
    expected: usize,
    missing: Vec<String>,
}

impl Pairs {
    fn add(&mut self, delay: Option<u64>, what: impl FnOnce() -> String) {
        self.expected += 1;
        match delay {
            Some(d) => self.delays.push(d),
            None => self.missing.push(what()),
        }
    }

    fn ms(&self, p: f64) -> f64 {
        percentile_us(&self.delays, p) / 1e3
    }
}

/// The CPU `pid` spent since `before`, per `n`.
fn cpu_per(pid: Option<&str>, before: Option<Duration>, n: u64) -> String {
    let each = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6 / n.max(1) as f64);
    let spent = pid.and_then(cpu_time).zip(before).map(|(a, b)| a - b);
    spent.map_or("?".into(), each)
}

/// Writes instance `n % instances`'s record (at its version in `versions`)
/// for each n below `count`, [`IN_FLIGHT`] at once; with `pace` (rate per
/// s, seconds) the n-th not before n / rate s, and none after the seconds.
/// The writes made by service, how many failed and the last error.
async fn write_all(
    writer: &KvDirectory,
    (count, instances, services): (usize, usize, usize),
    pace: Option<(f64, u64)>,
    versions: &HashMap<usize, String>,
) -> (HashMap<String, u64>, u64, String) {
    let t0 = Instant::now();
    let mut writes = futures::stream::iter(0..count)
        .map(|n| async move {
            if let Some((rate, secs)) = pace {
                let due = t0 + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                if t0.elapsed() >= Duration::from_secs(secs) {
                    return None;
                }
            }
            let i = n % instances;
            let version = versions.get(&i).map_or("1", String::as_str);
            Some((i, writer.renew(&record(i, services, version)).await))
        })
        .buffer_unordered(IN_FLIGHT);
    let (mut done, mut failed, mut error) = (HashMap::new(), 0, String::new());
    while let Some(write) = writes.next().await {
        match write {
            Some((i, Ok(()))) => *done.entry(service_name(i % services)).or_default() += 1,
            Some((_, Err(e))) => (failed, error) = (failed + 1, format!(", e.g. {e}")),
            None => {}
        }
    }
    (done, failed, error)
}

/// The phase, printing its report as it goes; whether it passed.
async fn phase(seed: u64, bucket: String) -> Result<bool, String> {
    let instances: usize = env_or("BAKER_BENCH_KV_INSTANCES", 20_000).max(1);
    let services = env_or("BAKER_BENCH_KV_SERVICES", (instances / 100).max(1));
    let services: usize = services.clamp(1, instances);
    let readers: usize = env_or("BAKER_BENCH_KV_READERS", 300);
    let base_readers: usize = env_or("BAKER_BENCH_KV_BASELINE_READERS", 30);
    let watched = env_or("BAKER_BENCH_WATCHED", 5);
    let watched: usize = watched.clamp(1, services.min(MAX_WATCHED_SERVICES));
    let changes: usize = env_or("BAKER_BENCH_KV_CHANGES", 30).min(instances);
    let renewal_secs: u64 = env_or("BAKER_BENCH_KV_RENEWALS_SECS", 10);
    let url = nats_url();
    let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(&url)).await;
    let client = (client.map_err(|_| format!("no answer from NATS at {url} in 10 s"))?)
        .map_err(|e| format!("cannot connect to NATS at {url}: {e}"))?;
    let js = jetstream::new(client);
    BUCKET.add(&bucket);
    let settings = KvSettings::parse(&format!("{url}?bucket={bucket}"));
    let settings = settings.map_err(|e| e.to_string())?;
    let writer = KvDirectory::new(settings.clone(), None, "bench-writer").await;
    let writer = writer.map_err(|e| e.to_string())?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let pid = nats_server_pid();
    let server = pid.as_deref().unwrap_or("not found, or none on its port");
    println!("\nKV directory: {instances} instances in {services} services, bucket {bucket} at {url}; nats-server pid (the one on the URL's port, or the only one): {server}");

    // 1. Registrations, 64 at a time.
    eprintln!("KV phase: registering {instances} instances in bucket {bucket}");
    let mut versions = HashMap::new();
    let (cpu0, t0) = (pid.as_deref().and_then(cpu_time), Instant::now());
    let sizes = (instances, instances, services);
    let (done, failed, error) = write_all(&writer, sizes, None, &versions).await;
    let (took, n) = (t0.elapsed(), done.values().sum::<u64>());
    let rate = n as f64 / took.as_secs_f64();
    let cpu = cpu_per(pid.as_deref(), cpu0, n);
    println!("KV registration: {n} of {instances} in {took:.2?} ({rate:.0}/s, {IN_FLIGHT} at a time on one writer connection; failed {failed}{error}); nats-server CPU {cpu} each");
    let mut ok = failed == 0;

    // 2. The readers, each a `KvDirectory` of its own.
    let mut draw = |of: usize, count: usize| {
        let mut all: Vec<usize> = (0..of).collect();
        rng.shuffle(&mut all);
        all.truncate(count);
        all
    };
    let plan = draw(instances, changes);
    let shared = Arc::new(Shared::default());
    let total = readers + base_readers;
    let all: Vec<Arc<Reader>> = (0..total)
        .map(|r| {
            let mut own = draw(services, watched);
            own.sort_unstable();
            let (whole, seen) = (r >= readers, Mutex::new(vec![None; changes]));
            Arc::new(Reader { own, whole, seen })
        })
        .collect();
    eprintln!("KV phase: {readers} watch readers, {base_readers} catalog readers");
    let started = Instant::now();
    let tasks: Vec<_> = (all.iter())
        .map(|r| tokio::spawn(reader(settings.clone(), r.clone(), shared.clone())))
        .collect();
    while shared.ready.load(Relaxed) < total {
        if started.elapsed() > FIRST_ANSWERS {
            let ready = shared.ready.load(Relaxed);
            return Err(format!("{ready} of {total} readers answered in 300 s"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let [w, c] = [0, 1].map(|i| shared.held[i].load(Relaxed));
    let (we, ce) = (w / readers.max(1), c / base_readers.max(1));
    let retried = shared.retries[0].load(Relaxed);
    println!("KV readers: {readers} watch readers ({watched} services each) and {base_readers} catalog readers had their first answer after {took:.2?}; instances held: {w} by the watch readers (~{we} each), {c} by the catalog readers (~{ce} each); first reads failed and retried {retried} times");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3. Changes: each re-registers another instance with version k<n>.
    let follows = |r: &Reader, n: usize| r.own.contains(&(plan[n] % services));
    let expected: usize = (0..changes)
        .map(|n| all.iter().filter(|r| !r.whole && follows(r, n)).count())
        .sum();
    let (mut starts, bench0, t0) = (Vec::new(), cpu_time("self"), Instant::now());
    for (n, &i) in plan.iter().enumerate() {
        tokio::time::sleep_until((t0 + CHANGE_EVERY * n as u32).into()).await;
        let version = format!("k{n}");
        starts.push(Instant::now());
        (writer.register(&record(i, services, &version)).await)
            .map_err(|e| format!("change k{n} (i{i:06}): {e}"))?;
        versions.insert(i, version);
    }
    let last_write = Instant::now();
    let all_seen = [expected, base_readers * changes];
    let settled = |s: &Shared| (0..2).all(|i| s.seen[i].load(Relaxed) >= all_seen[i]);
    while !settled(&shared) && last_write.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t0.elapsed();
    let bench_cpu = cpu_time("self")
        .zip(bench0)
        .map(|(a, b)| a - b)
        .unwrap_or_default();
    println!("KV changes: {changes}, one every {CHANGE_EVERY:?}, written and seen in {took:.2?}; bench CPU (the readers, sharing the machine's cores) {bench_cpu:.2?}");
    let [mut watch, mut catalog, mut every] = [0; 3].map(|_| Pairs::default());
    for (r, reader) in all.iter().enumerate() {
        let seen = reader.seen.lock().unwrap();
        for (n, &i) in plan.iter().enumerate() {
            let delay = seen[n].map(|at| at.saturating_duration_since(starts[n]).as_nanos() as u64);
            let what = || format!("change k{n} (i{i:06}) not seen by reader {r}");
            if reader.whole {
                every.add(delay, what);
            }
            if follows(reader, n) {
                [&mut watch, &mut catalog][reader.whole as usize].add(delay, what);
            }
        }
    }
    for pairs in [&mut watch, &mut catalog, &mut every] {
        pairs.delays.sort_unstable();
    }

    // 4. Renewals at the rate a 10 s TTL gives, round-robin; the entries
    // each consumer was delivered meanwhile.
    let rate = instances as f64 * 0.3;
    let target = (rate * renewal_secs as f64) as usize;
    eprintln!("KV phase: {target} renewals over {renewal_secs} s");
    let (before, pending0) = consumers(&js, &bucket).await?;
    let (cpu0, bench0) = (pid.as_deref().and_then(cpu_time), cpu_time("self"));
    let t0 = Instant::now();
    let sizes = (target, instances, services);
    let pace = Some((rate, renewal_secs));
    let (per_service, failed, error) = write_all(&writer, sizes, pace, &versions).await;
    let (took, written) = (t0.elapsed(), per_service.values().sum::<u64>());
    let bench_cpu = cpu_time("self").zip(bench0).map(|(a, b)| a - b);
    let nats_cpu = cpu_per(pid.as_deref(), cpu0, written);
    let (after, pending1) = consumers(&js, &bucket).await?;
    // [consumers, delivered, expected, consumers with delivered != expected,
    // sum of max(0, delivered - expected)] of filtered, whole-bucket ones.
    let (mut filtered, mut whole, mut unmatched) = ([0u64; 5], [0u64; 5], 0);
    for (name, (now, services)) in &after {
        let Some((then, _)) = before.get(name) else {
            unmatched += 1;
            continue;
        };
        let delivered = now.saturating_sub(*then);
        let of_its = |list: &Vec<String>| list.iter().filter_map(|s| per_service.get(s)).sum();
        let (kind, expected) = match services {
            Some(list) => (&mut filtered, of_its(list)),
            None => (&mut whole, written),
        };
        let unequal = (delivered != expected) as u64;
        let outside = delivered.saturating_sub(expected);
        let add = [1, delivered, expected, unequal, outside];
        (0..5).for_each(|i| kind[i] += add[i]);
    }
    unmatched += before.keys().filter(|n| !after.contains_key(*n)).count();
    let w_rate = written as f64 / took.as_secs_f64();
    println!("KV renewals: {written} of {target} written in {took:.2?} ({w_rate:.0}/s; a 10 s TTL's rate for {instances} instances: {rate:.0}/s; failed {failed}{error}); nats-server CPU {nats_cpu} per renewal, bench CPU (writer and readers) {:.2?}", bench_cpu.unwrap_or_default());

    // 5. The readers stop (their directories' tasks end with the runtime).
    shared.stop.cancel();
    for task in tasks {
        let _ = task.await;
    }

    let per_reader = |d: [u64; 5]| d[1] as f64 / d[0].max(1) as f64 / took.as_secs_f64();
    let (fr, wr) = (per_reader(filtered), per_reader(whole));
    let (width, title) = (44, "propagation of a change to its readers (KV)");
    println!("\n{title:<width$} |  readers changes |   p50 ms   p99 ms   max ms |  pairs seen/exp | renewal entries/reader/s");
    println!("{}", "-".repeat(width + 86));
    let watch_row = ("KV watch (its services' keys only)", readers, &watch);
    let catalog_row = ("KV catalog (whole bucket, today's)", base_readers, &catalog);
    for ((name, n, p), per) in [watch_row, catalog_row].into_iter().zip([fr, wr]) {
        let pairs = format!("{}/{}", p.delays.len(), p.expected);
        let [p50, p99, max] = [0.5, 0.99, 1.0].map(|q| p.ms(q));
        println!("{name:<width$} | {n:>8} {changes:>7} | {p50:>8.1} {p99:>8.1} {max:>8.1} | {pairs:>15} | {per:>24.1}");
    }
    println!("   pair = (change, reader following the changed service); propagation = the reader's receipt of the answer holding the change - the start of its write; the readers run in the bench process");
    let (seen, e) = (every.delays.len(), every.expected);
    let [p50, p99, max] = [0.5, 0.99, 1.0].map(|p| every.ms(p));
    println!("   catalog over every (change, reader) pair: {seen}/{e} pairs, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
    println!("   renewal entries delivered while renewing: each consumer's delivered.consumer_seq after - before, each listing taken once nothing was pending ({pending0} pending before, {pending1} after)");
    let [fc, fd, fe, fu, fo] = filtered;
    println!("     filtered consumers (watch readers): {fc}, delivered {fd}, expected {fe} (the renewals written for the services in each one's filter), {fu} unequal; delivered for services NOT in its filter: {fo} (sum over consumers of max(0, delivered - expected for its services))");
    let [wc, wd, we, wu, _] = whole;
    println!("     whole-bucket consumers (catalog readers): {wc}, delivered {wd}, expected {we} (every renewal, to each), {wu} unequal; the writer has none; consumers in only one listing: {unmatched}");
    let per_service = instances as f64 / services as f64;
    let each = 30_000.0 * watched as f64 * per_service / 100_000.0;
    let (fleet, ratio, share) = (each * 1e4 / 1e6, fr / wr, watched as f64 / services as f64);
    println!("   at 10,000 readers and 100,000 instances (30,000 renewals/s), EXTRAPOLATED: whole bucket 30,000 entries/s per reader, 300 M deliveries/s in all; filtered ({watched} services of {per_service:.0} instances each) {each:.0} per reader, {fleet:.2} M/s in all (measured here: {fr:.1} vs {wr:.1} per reader per second, ratio {ratio:.4}; {watched} of {services} services: {share:.4})");

    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let (p99, quiet) = (watch.ms(0.99), fo == 0 && fc > 0);
    let (met, quiet_met) = (verdict(p99 < 1_000.0), verdict(quiet));
    println!("\ntargets (KV, for reference):");
    println!("  KV watch propagation p99 < 1 s:               {p99:.1} ms  {met}");
    println!("  a renewal reaches no router that does not route to its service: {fo} entries outside the filters of {fc} consumers  {quiet_met}");
    ok &= quiet;
    for (name, p) in [("watch", &watch), ("catalog", &catalog), ("all", &every)] {
        if !p.missing.is_empty() {
            ok = false;
            let (missing, expected) = (p.missing.len(), p.expected);
            println!("FAILED (KV {name}): {missing} of {expected} pairs never seen, e.g.:");
            p.missing.iter().take(10).for_each(|m| println!("    {m}"));
        }
    }
    let (foreign, errors) = (
        shared.foreign.load(Relaxed),
        shared.retries[1].load(Relaxed),
    );
    if foreign > 0 {
        ok = false;
        println!("FAILED (KV): {foreign} records of services a watch reader does not follow");
    }
    if fc != readers as u64 || wc != base_readers as u64 || unmatched > 0 || errors > 0 {
        println!("PROBLEM (KV): {fc} filtered and {wc} whole-bucket consumers in both listings for {readers} watch and {base_readers} catalog readers; {errors} reads failed after a first answer");
    }
    Ok(ok)
}

/// Stops every `KvDirectory` of the phase (their tasks go with their
/// runtime), then deletes the run's bucket if it is not deleted yet.
fn stop_and_delete() -> Result<bool, String> {
    if let Some(runtime) = RUNTIME.lock().unwrap().take() {
        runtime.shutdown_background();
        std::thread::sleep(Duration::from_millis(500));
    }
    if BUCKET.is_empty() {
        return Ok(false);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = runtime.map_err(|e| format!("no runtime to delete the bucket: {e}"))?;
    let buckets = BUCKET.take();
    let work = async {
        let client = async_nats::connect(nats_url()).await;
        let js = jetstream::new(client.map_err(|e| e.to_string())?);
        for bucket in &buckets {
            (js.delete_key_value(bucket).await).map_err(|e| format!("deleting {bucket}: {e}"))?;
        }
        Ok(true)
    };
    let deleted =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(20), work).await });
    deleted.unwrap_or_else(|_| Err(format!("deleting {buckets:?}: no answer in 20 s")))
}

/// The harness's cleanup hook (panic, timeout, signal).
pub fn cleanup() {
    if let Err(e) = stop_and_delete() {
        eprintln!("cleanup: {e}");
    }
}

/// Runs the KV phase on a runtime of its own, then stops it and deletes the
/// bucket, whatever happened; whether it passed.
pub async fn run(seed: u64) -> bool {
    let bucket = format!("bench-scale-{}", run_id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kv-phase")
        .enable_all()
        .build()
        .expect("a runtime");
    let phase = runtime.spawn(phase(seed, bucket.clone()));
    *RUNTIME.lock().unwrap() = Some(runtime);
    let outcome = phase.await;
    // On a thread of its own: it blocks, and runs a runtime.
    let deleted = std::thread::spawn(stop_and_delete).join();
    let deleted = deleted.unwrap_or_else(|_| Err("deleting it panicked".into()));
    match &deleted {
        Ok(true) => println!("   KV bucket {bucket} deleted"),
        Ok(false) => {}
        Err(e) => println!("PROBLEM (KV): bucket {bucket} not deleted: {e}"),
    }
    let failure = match outcome {
        Ok(Ok(ok)) => return ok && deleted.is_ok(),
        Ok(Err(e)) => e,
        Err(e) => format!("it panicked: {e}"),
    };
    println!("FAILED (KV phase): {failure}");
    false
}
