//! The directory on JetStream KV: how fast registrations reach routers.
//!
//! `BAKER_BENCH_INSTANCES` (10,000) instances register, paced at
//! `BAKER_BENCH_RATE` (2,000) a second, in a bucket of the run's own, while
//! `BAKER_BENCH_ROUTERS` (10) readers follow it. Each reader is a
//! `KvDirectory` on its own connection, read the way a router's watcher reads
//! it (`catalog(after, wait)` in a loop), so the figure includes building the
//! whole catalog after each change. The baseline, in the same run, is a bare
//! async-nats watch of the same bucket. Propagation of one registration to
//! one reader is the time from the start of its write to the first catalog
//! (or watch entry) that has it; p50/p99/max over every pair.
//!
//! Needs a NATS server with JetStream (`BAKER_BENCH_NATS_URL`, default
//! nats://127.0.0.1:4222). Run with `cargo bench --bench kv_directory`.
//! Without `--bench` on its command line it does nothing.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baker_directory_kv::{KvDirectory, KvSettings, KV_EPOCH};
use baker_mq::directory::{Directory, EndpointRecord, InstanceRecord, Status};
use common::{env_or, invoked_as_bench, percentile_us, run_id};
use futures::StreamExt;

const SERVICE: &str = "bench";

fn record(i: usize) -> InstanceRecord {
    let id = format!("i{i:05}");
    InstanceRecord {
        service: SERVICE.to_owned(),
        endpoint: EndpointRecord {
            adapter: "nats".to_owned(),
            broker: "nats://127.0.0.1:4222".to_owned(),
            inbox: format!("_baker.{SERVICE}.{id}"),
        },
        id,
        version: "1".to_owned(),
        weight: 100,
        zone: None,
        metadata: Default::default(),
        status: Status::Passing,
        // Longer than the run: nothing expires, nothing renews.
        ttl_secs: 3600,
    }
}

/// When each instance was first seen by one reader, by instance number.
type Seen = Arc<Mutex<HashMap<usize, Instant>>>;

fn instance_number(id: &str) -> Option<usize> {
    id.strip_prefix('i')?.parse().ok()
}

fn main() {
    if !invoked_as_bench() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let url: String = env_or("BAKER_BENCH_NATS_URL", "nats://127.0.0.1:4222".to_owned());
    let instances: usize = env_or("BAKER_BENCH_INSTANCES", 10_000);
    let routers: usize = env_or("BAKER_BENCH_ROUTERS", 10);
    let rate: u64 = env_or("BAKER_BENCH_RATE", 2_000);
    let bucket = format!("bench-dir-{}", run_id());
    let settings = KvSettings {
        servers: url.clone(),
        bucket: bucket.clone(),
        replicas: 1,
    };
    let js = async_nats::jetstream::new(
        async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("NATS must answer at {url}: {e}")),
    );

    let writer = KvDirectory::new(
        settings.clone(),
        None,
        &format!("bench-{}", fastrand::u64(..)),
    )
    .await
    .unwrap();
    // The first write opens (creates) the bucket.
    let mut first = record(0);
    first.id = "warmup".to_owned();
    writer.register(&first).await.expect("bucket writable");
    writer.deregister(SERVICE, "warmup").await.unwrap();

    let mut readers = Vec::new();
    for _ in 0..routers {
        let reader = KvDirectory::new(
            settings.clone(),
            None,
            &format!("bench-{}", fastrand::u64(..)),
        )
        .await
        .unwrap();
        let seen: Seen = Arc::default();
        let record_seen = seen.clone();
        let task = tokio::spawn(async move {
            let mut after = None;
            loop {
                let Ok(catalog) = reader.catalog(after, Duration::from_secs(10)).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                after = Some((KV_EPOCH, catalog.index));
                let now = Instant::now();
                let mut seen = record_seen.lock().unwrap();
                for r in &catalog.instances {
                    if let Some(n) = instance_number(&r.id) {
                        seen.entry(n).or_insert(now);
                    }
                }
            }
        });
        readers.push((seen, task));
    }
    let baseline: Seen = Arc::default();
    let baseline_task = {
        let store = js.get_key_value(&bucket).await.unwrap();
        let mut watch = store.watch_all().await.unwrap();
        let seen = baseline.clone();
        tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                let now = Instant::now();
                if let Some(n) = entry.key.rsplit('.').next().and_then(instance_number) {
                    seen.lock().unwrap().entry(n).or_insert(now);
                }
            }
        })
    };
    // Let every reader finish its first read of the (empty) bucket.
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("registering {instances} instances at {rate}/s, {routers} routers following");
    let started = Instant::now();
    // Registrations run as agents do, each waiting for its write's ack, up
    // to 64 at once so the pace does not depend on one round trip.
    let written: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; instances]));
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..instances {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let slot = slots.clone().acquire_owned().await.unwrap();
        let (writer, written) = (writer.clone(), written.clone());
        tokio::spawn(async move {
            written.lock().unwrap()[i] = Some(Instant::now());
            writer.register(&record(i)).await.expect("registered");
            drop(slot);
        });
        if (i + 1) % 2_000 == 0 {
            eprintln!("  {} registered", i + 1);
        }
    }
    let _ = slots.acquire_many(64).await.unwrap();
    let writes_done = started.elapsed();
    let written: Vec<Instant> = written.lock().unwrap().iter().map(|t| t.unwrap()).collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    let complete = |seen: &Seen| seen.lock().unwrap().len() >= instances;
    while !(readers.iter().all(|(s, _)| complete(s)) && complete(&baseline)) {
        assert!(
            Instant::now() < deadline,
            "not every reader saw every instance within 60 s of the last write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_seen = started.elapsed();

    let delays = |seen: &Seen| -> Vec<u64> {
        let seen = seen.lock().unwrap();
        let mut d: Vec<u64> = (0..instances)
            .map(|i| seen[&i].saturating_duration_since(written[i]).as_micros() as u64)
            .collect();
        d.sort_unstable();
        d
    };
    let mut routers_delays: Vec<u64> = readers.iter().flat_map(|(s, _)| delays(s)).collect();
    routers_delays.sort_unstable();
    let base = delays(&baseline);
    let row = |name: &str, d: &[u64]| {
        println!(
            "{name:<28} {:>10.1} {:>10.1} {:>10.1}",
            percentile_us(d, 0.50),
            percentile_us(d, 0.99),
            *d.last().unwrap_or(&0) as f64 / 1000.0
        );
    };
    println!();
    println!(
        "{instances} registrations at {rate}/s (written in {writes_done:.1?}; every reader complete after {all_seen:.1?})"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "propagation (ms)", "p50", "p99", "max"
    );
    row("bare KV watch (baseline)", &base);
    row(&format!("baker-mq readers (x{routers})"), &routers_delays);
    println!(
        "ratio p50 {:.2}, p99 {:.2} (baker-mq / baseline)",
        percentile_us(&routers_delays, 0.50) / percentile_us(&base, 0.50),
        percentile_us(&routers_delays, 0.99) / percentile_us(&base, 0.99)
    );

    for (_, task) in readers {
        task.abort();
    }
    baseline_task.abort();
    let _ = js.delete_key_value(&bucket).await;
}
