//! Allocations and CPU per routed message on the hot path, counted by a
//! global allocator, against a real NATS server.
//!
//! The hop under test runs in this process on a thread of its own (a
//! `current_thread` runtime, what baker-mq runs by default): only that
//! thread's allocations are counted. The publisher and the consumer run on
//! another thread, on connections of their own, and are not counted. Paths,
//! each measured the same way in the same run:
//!
//! * `relay`: a minimal subscribe-and-republish relay on async-nats, the same
//!   client baker-mq uses: what any hop built on that client pays;
//! * `baker-mq`: baker-mq's router (`sidecar::start_router` with the builtin
//!   adapters, one NATS instance in a fixed directory view);
//! * `relay, 3 headers` and `baker-mq, 3 headers`: the same with three
//!   publisher headers on every message, which both pass on.
//!
//! Baker's own allocations per message are `baker-mq` minus `relay`: what
//! the client library allocates to receive and publish a message is paid by
//! any hop. The budget for a routed message without publisher headers is
//! `BUDGET` (a handful); the report says whether it is met.
//!
//! Messages are published in windows of `BAKER_BENCH_WINDOW` (1,000) and
//! each window is received whole before the next, so core NATS drops
//! nothing. `BAKER_BENCH_ALLOC_MESSAGES` (100,000) messages are counted per
//! path and round after a warm-up, `BAKER_BENCH_ROUNDS` (3) rounds, medians.
//! CPU per message is the hop threads' CPU time (`/proc/self/task/*/schedstat`).
//! `BAKER_BENCH_HOP_WORKERS=N` runs the hop on a runtime of N worker threads
//! instead (all counted), as `--worker-threads N` runs baker-mq.
//! `BAKER_BENCH_ALLOC_ONLY=<path name>` measures one path alone (for a
//! profiler: the hop threads are named `hop-relay`, `hop-baker`, ...).
//!
//! Needs a NATS server (`BAKER_BENCH_NATS_URL`, default
//! nats://127.0.0.1:4222). Run with `cargo bench --bench allocations`.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, HeaderMap, Subscriber};
use baker_adapter_api::{IngressOptions, Member};
use baker_mq::adapters::AdapterRegistry;
use baker_mq::directory::interest::InterestConfig;
use baker_mq::directory::{Catalog, EndpointRecord, InstanceRecord, Interest, Status, View};
use baker_mq::router::outlier::OutlierConfig;
use baker_mq::router::JourneyConfig;
use baker_mq::shutdown::Shutdown;
use baker_mq::sidecar::{start_router, RouterSpec};
use futures::StreamExt;

use common::env_or;
use common::nats::{connect, nats_url};
use common::procs::bench_main;

/// Most allocations per routed message without publisher headers that
/// baker-mq's own code may make, on top of the client library's.
const BUDGET: f64 = 5.0;

/// Counts the allocations of threads that ask for it, and serves them all
/// from mimalloc, baker-mq's allocator (`src/main.rs`).
struct Counting;

static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    /// This thread runs the hop under test.
    static HOP_THREAD: Cell<bool> = const { Cell::new(false) };
}
/// Between `Start` and `Stop`.
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// The hop's threads, for their CPU time.
static HOP_THREADS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn count(size: usize) {
    if COUNTING.load(Ordering::Relaxed) && HOP_THREAD.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to mimalloc unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        INNER.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        INNER.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        INNER.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        INNER.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Marks this thread as one of the hop's.
fn hop_thread() {
    HOP_THREAD.set(true);
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    HOP_THREADS.lock().expect("hop threads").push(tid);
}

/// The CPU time the hop's threads have used (`/proc/self/task/*/schedstat`,
/// in nanoseconds).
fn hop_cpu() -> Duration {
    let threads = HOP_THREADS.lock().expect("hop threads").clone();
    let nanos = threads
        .iter()
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hop {
    Relay,
    Baker,
}

#[derive(Clone, Copy, Debug)]
struct PathSpec {
    name: &'static str,
    hop: Hop,
    headers: usize,
}

const PATHS: [PathSpec; 4] = [
    PathSpec {
        name: "relay",
        hop: Hop::Relay,
        headers: 0,
    },
    PathSpec {
        name: "baker-mq",
        hop: Hop::Baker,
        headers: 0,
    },
    PathSpec {
        name: "relay, 3 headers",
        hop: Hop::Relay,
        headers: 3,
    },
    PathSpec {
        name: "baker-mq, 3 headers",
        hop: Hop::Baker,
        headers: 3,
    },
];

/// What the hop thread measured over the counted messages.
#[derive(Clone, Copy, Debug, Default)]
struct Counted {
    allocations: f64,
    bytes: f64,
    cpu_ns: f64,
}

/// Commands from the load thread to the hop thread.
enum Command {
    /// Reset the counters and note the thread's CPU time.
    Start,
    /// Report what was counted since `Start` for this many messages.
    Stop(u64, std::sync::mpsc::Sender<Counted>),
}

/// Runs the hop of `path` on a thread of its own, counting its allocations
/// between `Start` and `Stop`. Returns once it is ready.
fn start_hop(
    path: PathSpec,
    tag: &str,
) -> (
    tokio::sync::mpsc::UnboundedSender<Command>,
    std::thread::JoinHandle<()>,
) {
    let (commands, mut received) = tokio::sync::mpsc::unbounded_channel();
    let (ready, is_ready) = std::sync::mpsc::channel();
    let tag = tag.to_owned();
    // Named for profilers: `perf report --sort comm` tells the hops apart.
    let name = match (path.hop, path.headers) {
        (Hop::Relay, 0) => "hop-relay",
        (Hop::Relay, _) => "hop-relay-hdr",
        (Hop::Baker, 0) => "hop-baker",
        (Hop::Baker, _) => "hop-baker-hdr",
    };
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            HOP_THREADS.lock().expect("hop threads").clear();
            hop_thread();
            let workers: usize = env_or("BAKER_BENCH_HOP_WORKERS", 1);
            let mut builder = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder
                    .worker_threads(workers)
                    .thread_name(name)
                    .on_thread_start(hop_thread);
                builder
            };
            let runtime = builder.enable_all().build().expect("hop runtime");
            runtime.block_on(async move {
                let shutdown = Shutdown::new();
                let (tasks, _views) = match path.hop {
                    Hop::Relay => (vec![tokio::spawn(relay(tag.clone()))], None),
                    Hop::Baker => {
                        let (tasks, views) = baker(&tag, shutdown.clone());
                        (tasks, Some(views))
                    }
                };
                ready.send(()).expect("load thread waits");
                let mut started = Duration::ZERO;
                while let Some(command) = received.recv().await {
                    match command {
                        Command::Start => {
                            ALLOCATIONS.store(0, Ordering::Relaxed);
                            BYTES.store(0, Ordering::Relaxed);
                            started = hop_cpu();
                            COUNTING.store(true, Ordering::Relaxed);
                        }
                        Command::Stop(messages, answer) => {
                            COUNTING.store(false, Ordering::Relaxed);
                            let per = |n: f64| n / messages as f64;
                            let _ = answer.send(Counted {
                                allocations: per(ALLOCATIONS.load(Ordering::Relaxed) as f64),
                                bytes: per(BYTES.load(Ordering::Relaxed) as f64),
                                cpu_ns: per((hop_cpu() - started).as_nanos() as f64),
                            });
                        }
                    }
                }
                shutdown.trigger();
                for task in tasks {
                    let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
                }
            });
        })
        .expect("hop thread starts");
    is_ready
        .recv_timeout(Duration::from_secs(30))
        .expect("the hop starts within 30 s");
    (commands, thread)
}

fn prefix(tag: &str) -> String {
    format!("balloc{tag}")
}

fn inbox(tag: &str) -> String {
    format!("_balloc{tag}.svc.i1")
}

/// A minimal relay on async-nats: what any hop on that client pays.
async fn relay(tag: String) {
    let client = connect("baker-bench-alloc-relay", Default::default()).await;
    let prefix = prefix(&tag);
    let inbox = inbox(&tag);
    let mut subscriber = client
        .queue_subscribe(format!("{prefix}.>"), "relay".to_owned())
        .await
        .expect("relay subscribes");
    client.flush().await.expect("relay flush");
    let skip = prefix.len() + 1 + "svc.".len();
    while let Some(msg) = subscriber.next().await {
        let Some(topic) = msg.subject.get(skip..) else {
            continue;
        };
        let subject = format!("{inbox}.{topic}");
        let sent = match msg.headers {
            Some(headers) => {
                client
                    .publish_with_headers(subject, headers, msg.payload)
                    .await
            }
            None => client.publish(subject, msg.payload).await,
        };
        if sent.is_err() {
            break;
        }
    }
}

/// baker-mq's router on a fixed view: one NATS instance of `svc`; its tasks
/// and the view's sender, to hold while it runs.
fn baker(
    tag: &str,
    shutdown: Shutdown,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    tokio::sync::watch::Sender<Arc<View>>,
) {
    let record = InstanceRecord {
        service: "svc".to_owned(),
        id: "i1".to_owned(),
        version: "1.0.0".to_owned(),
        endpoint: EndpointRecord {
            adapter: "nats".to_owned(),
            broker: nats_url(),
            inbox: inbox(tag),
        },
        weight: 100,
        zone: None,
        metadata: Default::default(),
        status: Status::Passing,
        ttl_secs: 3600,
    };
    let view = View {
        catalog: Arc::new(Catalog {
            epoch: 1,
            index: 1,
            instances: vec![record],
        }),
        covers: None,
    };
    let (views_sender, views) = tokio::sync::watch::channel(Arc::new(view));
    let interest = Arc::new(Interest::new(InterestConfig {
        all: true,
        declared: BTreeSet::new(),
        ..Default::default()
    }));
    let spec = RouterSpec {
        adapter: "nats".to_owned(),
        broker: nats_url(),
        ingress: IngressOptions {
            prefix: prefix(tag),
            queue_group: format!("balloc{tag}"),
            buffer: 8_192,
            member: Member::this_run(),
        },
        journey: JourneyConfig {
            max_attempts: 3,
            max_payload: 1 << 20,
            outlier: OutlierConfig::default(),
        },
        max_in_flight: 8_192,
        policies: HashMap::new(),
        version_routing: HashMap::new(),
        zones: Default::default(),
        shadows: HashMap::new(),
        traces: None,
        allowed_brokers: Vec::new(),
        interest,
    };
    let parts =
        start_router(spec, AdapterRegistry::builtin(), views, shutdown).expect("router starts");
    (parts.tasks, views_sender)
}

/// The publisher and the consumer, on connections the hop does not share.
struct Load {
    publisher: Client,
    inbox: Subscriber,
    subject: String,
    headers: HeaderMap,
}

impl Load {
    async fn new(tag: &str, headers: usize) -> Load {
        let publisher = connect("baker-bench-alloc-publisher", Default::default()).await;
        let consumer = connect("baker-bench-alloc-consumer", Default::default()).await;
        let inbox = consumer
            .subscribe(format!("{}.>", inbox(tag)))
            .await
            .expect("consumer subscribes");
        consumer.flush().await.expect("consumer flush");
        let mut map = HeaderMap::new();
        for i in 0..headers {
            map.insert(format!("x-bench-{i}").as_str(), "some value of a header");
        }
        Load {
            publisher,
            inbox,
            subject: format!("{}.svc.orders.created", prefix(tag)),
            headers: map,
        }
    }

    /// Publishes `count` messages in windows, each received whole before
    /// the next; false if one was not.
    async fn run(&mut self, count: u64, window: u64) -> bool {
        let payload = bytes::Bytes::from(vec![b'x'; 128]);
        let mut sent = 0;
        while sent < count {
            let n = window.min(count - sent);
            for _ in 0..n {
                let subject = self.subject.clone();
                let published = if self.headers.is_empty() {
                    self.publisher.publish(subject, payload.clone()).await
                } else {
                    (self.publisher)
                        .publish_with_headers(subject, self.headers.clone(), payload.clone())
                        .await
                };
                published.expect("publish");
            }
            self.publisher.flush().await.expect("publisher flush");
            for _ in 0..n {
                match tokio::time::timeout(Duration::from_secs(5), self.inbox.next()).await {
                    Ok(Some(_)) => {}
                    _ => return false,
                }
            }
            sent += n;
        }
        true
    }

    /// Waits until a message gets through the hop (it is subscribed).
    async fn wait_through(&mut self) {
        for _ in 0..300 {
            self.publisher
                .publish(self.subject.clone(), "probe".into())
                .await
                .expect("publish probe");
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(100), self.inbox.next()).await
            {
                // Let other probes in flight arrive before counting.
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(300), self.inbox.next()).await
                {
                }
                return;
            }
        }
        panic!("nothing got through the hop within 30 s");
    }
}

async fn measure(path: PathSpec, messages: u64, window: u64) -> Counted {
    let tag = format!("{:08x}", fastrand::u32(..));
    let (commands, thread) = start_hop(path, &tag);
    let mut load = Load::new(&tag, path.headers).await;
    load.wait_through().await;
    assert!(
        load.run(messages / 10 + 1_000, window).await,
        "{}: warm-up lost messages",
        path.name
    );
    commands.send(Command::Start).expect("hop runs");
    assert!(
        load.run(messages, window).await,
        "{}: messages lost",
        path.name
    );
    let (answer, counted) = std::sync::mpsc::channel();
    commands
        .send(Command::Stop(messages, answer))
        .expect("hop runs");
    let counted = tokio::task::spawn_blocking(move || counted.recv().expect("hop answers"))
        .await
        .expect("join");
    drop(commands);
    tokio::task::spawn_blocking(move || thread.join().expect("hop thread"))
        .await
        .expect("join");
    counted
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    bench_main(
        "allocations",
        "a NATS server",
        600,
        || {},
        || async {
            let messages: u64 = env_or("BAKER_BENCH_ALLOC_MESSAGES", 100_000);
            let window: u64 = env_or("BAKER_BENCH_WINDOW", 1_000);
            let rounds: usize = env_or("BAKER_BENCH_ROUNDS", 3);
            // One path alone, for a profiler.
            let only = std::env::var("BAKER_BENCH_ALLOC_ONLY").ok();
            println!(
                "allocations: {messages} messages of 128 bytes per path and round, windows of \
             {window}, {rounds} rounds, medians; NATS at {}",
                nats_url()
            );
            let mut results: Vec<Vec<Counted>> = vec![Vec::new(); PATHS.len()];
            for round in 1..=rounds {
                for (i, path) in PATHS.iter().enumerate() {
                    if only.as_deref().is_some_and(|only| only != path.name) {
                        results[i].push(Counted::default());
                        continue;
                    }
                    let counted = measure(*path, messages, window).await;
                    println!(
                    "round {round} {:<20} {:>6.2} allocations, {:>7.0} bytes, {:>6.2} µs CPU per message",
                    path.name,
                    counted.allocations,
                    counted.bytes,
                    counted.cpu_ns / 1_000.0
                );
                    results[i].push(counted);
                }
            }
            let medians: Vec<Counted> = results
                .iter()
                .map(|r| Counted {
                    allocations: median(r.iter().map(|c| c.allocations).collect()),
                    bytes: median(r.iter().map(|c| c.bytes).collect()),
                    cpu_ns: median(r.iter().map(|c| c.cpu_ns).collect()),
                })
                .collect();
            println!();
            println!("| path | allocations per message | bytes allocated per message | hop CPU per message |");
            println!("| --- | --- | --- | --- |");
            for (path, m) in PATHS.iter().zip(&medians) {
                println!(
                    "| {} | {:.2} | {:.0} | {:.2} µs |",
                    path.name,
                    m.allocations,
                    m.bytes,
                    m.cpu_ns / 1_000.0
                );
            }
            let own = medians[1].allocations - medians[0].allocations;
            let own_headers = medians[3].allocations - medians[2].allocations;
            println!();
            println!(
                "baker-mq's own allocations per message (baker-mq − relay): {own:.2} without \
             publisher headers (budget {BUDGET}: {}), {own_headers:.2} with 3",
                if own <= BUDGET { "met" } else { "NOT met" }
            );
            println!(
                "hop CPU ratio baker-mq / relay: {:.2} without headers, {:.2} with 3",
                medians[1].cpu_ns / medians[0].cpu_ns,
                medians[3].cpu_ns / medians[2].cpu_ns
            );
            true
        },
    );
}
