//! Memory under overload: the hop's resident memory while publishers send
//! ten times what the instance consumes, for a minute.
//!
//! One run on one path: a consumer takes the run's messages at a tenth of
//! the publishing rate (its broker's flow control holds back the rest: an
//! AMQP prefetch, an MQTT session's queue, a JetStream consumer's pending
//! acks, a core NATS client that drops what it cannot hold), while the
//! publisher sends at the full rate for the whole time. The hop's resident
//! set (`VmRSS` in `/proc/<pid>/status`) is sampled every 100 ms; the report
//! compares its peak with the hop's idle size, taken by the bench right
//! after the hop started (before any message), and prints whether it stayed
//! within 2×. `BAKER_BENCH_OVERLOAD_SECS` sets the time (default 60; 0 skips
//! the run), `BAKER_BENCH_OVERLOAD_RATE` the publishing rate (each bench has
//! its own default, one its path takes without the hop being the
//! bottleneck).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::env_or;
use super::measure::{next_tag, publish, Consumer, Mode, Next, Path, Route};
use super::report::{self, Report};
use super::rounds::{Plan, Results};
use super::stamp::{publish_on_own_thread, read_tag};
use super::RUN_DEADLINE;

/// The peak resident set may be at most this many times the idle one.
pub const TARGET: f64 = 2.0;

/// How often the hop's resident set is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The consumer's pace: it takes its share of messages in slices this long.
const SLICE: Duration = Duration::from_millis(10);

/// The resident set of process `pid` in KiB (`VmRSS`); `None` where it
/// cannot be read (no /proc, or no such process).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The overload run's settings, from the environment.
pub struct Overload {
    pub duration: Duration,
    /// Messages per second published; the consumer takes a tenth.
    pub rate: u64,
}

impl Overload {
    /// `BAKER_BENCH_OVERLOAD_SECS` (default 60) and
    /// `BAKER_BENCH_OVERLOAD_RATE` (default `default_rate`); `None` when the
    /// time is 0 (no overload run).
    pub fn from_env(default_rate: u64) -> Option<Overload> {
        let secs: u64 = env_or("BAKER_BENCH_OVERLOAD_SECS", 60);
        let rate: u64 = env_or("BAKER_BENCH_OVERLOAD_RATE", default_rate);
        assert!(rate >= 10, "BAKER_BENCH_OVERLOAD_RATE must be at least 10");
        (secs > 0).then(|| Overload {
            duration: Duration::from_secs(secs),
            rate,
        })
    }

    /// What the consumer takes per second.
    pub fn consume_rate(&self) -> u64 {
        self.rate / 10
    }
}

/// What an overload run measured.
pub struct Memory {
    pub name: String,
    /// Resident KiB right after the hop started.
    pub idle: Option<u64>,
    /// Resident KiB when the overload began (after the bench's other runs).
    pub before: Option<u64>,
    /// The largest sample during the overload.
    pub peak: Option<u64>,
    /// The last sample, as publishing ended.
    pub end: Option<u64>,
    /// Publishes handed to the broker, and confirmed by it.
    pub sent: u64,
    pub confirmed: u64,
    /// Messages of the run the consumer took.
    pub consumed: u64,
    /// How long publishing took (to the last confirm).
    pub elapsed: Duration,
    pub error: Option<String>,
}

impl Memory {
    /// Peak over idle.
    pub fn growth(&self) -> Option<f64> {
        Some(self.peak? as f64 / self.idle?.max(1) as f64)
    }
}

/// Runs the overload on `path` (its hop's idle size `idle`, in KiB) with
/// `size`-byte messages.
pub async fn run<R: Route>(
    path: &Path<R>,
    idle: Option<u64>,
    size: usize,
    overload: &Overload,
) -> Memory {
    let hop = path.hop.expect("an overload run measures a hop process");
    let tag = next_tag();
    let consumer = path.route.consume(tag).await;
    let publisher = path.route.publisher(tag);
    let count = overload.rate * overload.duration.as_secs();
    let before = rss_kib(hop);
    eprintln!(
        "[{}] overload: {count} messages at {} msg/s for {:?}, the consumer taking {} msg/s",
        path.name,
        overload.rate,
        overload.duration,
        overload.consume_rate()
    );

    let done = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicU64::new(0));
    let consuming = tokio::spawn(consume_slowly(
        consumer,
        tag,
        overload.consume_rate(),
        done.clone(),
        consumed.clone(),
    ));
    let sampling = tokio::spawn(sample(hop, done.clone()));
    let unused = Arc::new(AtomicU64::new(0));
    let rate = overload.rate;
    let publishing = publish_on_own_thread(done.clone(), move || {
        publish(publisher, tag, count, size, Mode::Paced(rate), unused)
    });
    let (published, elapsed) = tokio::time::timeout(overload.duration + RUN_DEADLINE, publishing)
        .await
        .expect("overload publishing timed out")
        .expect("publisher thread failed");
    let (peak, end) = sampling.await.expect("sampler task failed");
    let consumer = consuming.await.expect("consumer task failed");
    let closed = consumer.close().await;
    Memory {
        name: path.name.to_owned(),
        idle,
        before,
        peak,
        end,
        sent: published.sent,
        confirmed: published.confirmed,
        consumed: consumed.load(Ordering::Relaxed),
        elapsed,
        error: published.first_error.or(closed.error),
    }
}

/// Takes run `tag`'s messages at `rate` per second until `done`, counting
/// them in `consumed`.
async fn consume_slowly<C: Consumer>(
    mut consumer: C,
    tag: u64,
    rate: u64,
    done: Arc<AtomicBool>,
    consumed: Arc<AtomicU64>,
) -> C {
    let started = Instant::now();
    let mut taken = 0u64;
    let mut slices = tokio::time::interval(SLICE);
    slices.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !done.load(Ordering::Acquire) {
        slices.tick().await;
        // What is due by now at `rate`, so the pace holds over the minute
        // whatever the timer's granularity.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while taken < due && !done.load(Ordering::Acquire) {
            match consumer.receive(SLICE).await {
                Next::Message { payload, .. } => {
                    taken += 1;
                    if read_tag(&payload) == Some(tag) {
                        consumed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Next::Idle => break,
                Next::Ended(why) => {
                    eprintln!("overload consumer ended: {why}");
                    return consumer;
                }
            }
        }
    }
    consumer
}

/// Samples `pid`'s resident set until `done`: the peak and the last
/// sample.
async fn sample(pid: u32, done: Arc<AtomicBool>) -> (Option<u64>, Option<u64>) {
    let (mut peak, mut last) = (None::<u64>, None);
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    while !done.load(Ordering::Acquire) {
        ticks.tick().await;
        last = rss_kib(pid);
        peak = peak.max(last);
    }
    (peak, last)
}

/// Prints the overload table for `runs`; whether each stayed within
/// [`TARGET`] (a run whose memory could not be read counts as not).
pub fn print(overload: &Overload, runs: &[Memory]) -> bool {
    let mib =
        |kib: Option<u64>| kib.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
    println!();
    println!(
        "Memory under overload: {:?} of publishing at {} msg/s, the instance consuming {} msg/s \
         (BAKER_BENCH_OVERLOAD_SECS, BAKER_BENCH_OVERLOAD_RATE); resident MiB of the hop",
        overload.duration,
        overload.rate,
        overload.consume_rate()
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} | {:>8} {:>10} {:>9} | {:>9}",
        "path", "idle", "before", "peak", "end", "sent", "confirmed", "consumed", "peak/idle"
    );
    let mut ok = true;
    for run in runs {
        let growth = run.growth();
        println!(
            "{:<10} {:>9} {:>9} {:>9} {:>9} | {:>8} {:>10} {:>9} | {:>9}",
            run.name,
            mib(run.idle),
            mib(run.before),
            mib(run.peak),
            mib(run.end),
            run.sent,
            run.confirmed,
            run.consumed,
            growth.map_or("-".to_owned(), |g| format!("{g:.2}")),
        );
        if let Some(error) = &run.error {
            println!("  {}: {error}", run.name);
        }
        let met = growth.is_some_and(|g| g <= TARGET);
        println!(
            "  target: {} peak resident <= {TARGET}x idle: {} (published at {:.0} msg/s)",
            run.name,
            if met { "met" } else { "NOT met" },
            run.confirmed as f64 / run.elapsed.as_secs_f64().max(1e-9),
        );
        ok &= met;
    }
    ok
}

/// Prints the bench's report, then the overload table when it ran; whether
/// the bench passed (the overload table informs, it does not fail a bench).
pub fn print_report(
    plan: &Plan,
    report: &Report,
    results: &Results,
    overload: Option<&Overload>,
    memory: &[Memory],
) -> bool {
    let passed = report::print(plan, report, results);
    if let Some(overload) = overload {
        print(overload, memory);
    }
    passed
}
