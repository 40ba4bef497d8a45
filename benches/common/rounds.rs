//! The measurement plan every end-to-end bench follows, and running it.
//!
//! Each path is warmed up first (a path that does not work is left out and
//! fails the bench). Then, round by round and interleaved across paths (so
//! that drift hits all paths alike), each throughput load of the plan (core
//! NATS has two: a burst that may drop, and a windowed run that may not),
//! with the CPU time each process spent; then the paced latency runs, every
//! round or once after all rounds, as the bench asks. The figures are kept
//! per round; the report takes medians.

use std::time::Duration;

use super::cpu::{load_average, CpuProbe, CpuUse};
use super::env_or;
use super::measure::{measure, warm_up, Mode, Outcome, Path, Route, Timing};
use super::stamp::HEADER;

/// The sizes of a run, from the environment: the variables named for
/// message counts and rate (they differ between benches), and the common
/// `BAKER_BENCH_PAYLOAD` (bytes, at least the header) and
/// `BAKER_BENCH_ROUNDS`.
pub struct Sizes {
    /// Messages per throughput run.
    pub messages: u64,
    /// Messages per latency run.
    pub latency_messages: u64,
    /// Rate of the latency runs, msg/s.
    pub rate: u64,
    /// Payload bytes.
    pub size: usize,
    pub rounds: usize,
}

impl Sizes {
    /// Reads the variables named with their defaults: messages per
    /// throughput run, per latency run, and the latency runs' rate; panics
    /// on a value that is not positive.
    pub fn from_env(messages: (&str, u64), latency: (&str, u64), rate: (&str, u64)) -> Sizes {
        let sizes = Sizes {
            messages: env_or(messages.0, messages.1),
            latency_messages: env_or(latency.0, latency.1),
            rate: env_or(rate.0, rate.1),
            size: env_or("BAKER_BENCH_PAYLOAD", 128usize).max(HEADER),
            rounds: env_or("BAKER_BENCH_ROUNDS", 3),
        };
        assert!(
            sizes.messages > 0 && sizes.latency_messages > 0 && sizes.rate > 0 && sizes.rounds > 0,
            "message counts, rate and rounds must be positive"
        );
        sizes
    }
}

/// One kind of throughput run.
pub struct Load {
    /// Its name in the report ("burst", "windowed", "throughput").
    pub label: &'static str,
    pub mode: Mode,
    /// What it does, for the report's heading.
    pub about: String,
    /// Losses are what the path does under this load, not a failure (core
    /// NATS drops what a slow consumer cannot take).
    pub loss_ok: bool,
}

/// What a bench measures.
pub struct Plan {
    pub sizes: Sizes,
    /// The throughput runs of each round, in order.
    pub loads: Vec<Load>,
    /// Latency runs every round (the report gives medians of each round's
    /// percentiles), or one after all rounds.
    pub latency_each_round: bool,
    pub timing: Timing,
    /// Pause after each run, for what it left queued to drain.
    pub pause: Duration,
    /// The pids of the broker's processes, for their CPU time.
    pub broker: Vec<String>,
    /// Whether a run that lost or broke anything fails the bench (the
    /// at-least-once benches), or is only flagged in the report.
    pub strict: bool,
}

/// Everything measured on one path.
pub struct PathResult {
    pub name: String,
    /// Per load of the plan: each round's outcome.
    pub loads: Vec<Vec<Outcome>>,
    /// Per load: the CPU time over all its rounds.
    pub cpu: Vec<Option<CpuUse>>,
    /// Each latency run's outcome.
    pub latency: Vec<Outcome>,
}

impl PathResult {
    /// Each round's received msg/s under load `i`.
    pub fn rates(&self, i: usize) -> Vec<f64> {
        self.loads[i].iter().map(Outcome::rate).collect()
    }

    pub fn outcomes(&self) -> impl Iterator<Item = &Outcome> {
        self.loads.iter().flatten().chain(&self.latency)
    }
}

/// What a bench measured.
pub struct Results {
    /// The paths measured, in the bench's order.
    pub paths: Vec<PathResult>,
    /// Paths left out, with why; `true` where that fails the bench.
    pub skipped: Vec<(String, bool)>,
    /// The 1-minute load average at the start and at the end.
    pub load: [Option<f64>; 2],
}

/// Runs `plan` on `paths`, with `skipped` the paths the bench could not set
/// up.
pub async fn run<R: Route>(
    plan: &Plan,
    paths: &[Path<R>],
    skipped: Vec<(String, bool)>,
) -> Results {
    let load_start = load_average();
    if plan.broker.is_empty() {
        eprintln!("the broker's process is not found here: its CPU is not reported");
    }
    let mut results = Results {
        paths: Vec::new(),
        skipped,
        load: [load_start, None],
    };
    let size = plan.sizes.size;
    let mut working = Vec::new();
    for path in paths {
        eprintln!("[{}] warming up", path.name);
        match warm_up(path, size, plan.timing).await {
            Ok(()) => working.push(path),
            Err(e) => {
                eprintln!("\n*** [{}] does not work, left out: {e}\n", path.name);
                let why = format!("{}: FAILED: {e}", path.name);
                results.skipped.push((why, true));
            }
        }
    }
    results.paths = working
        .iter()
        .map(|path| PathResult {
            name: path.name.to_owned(),
            loads: plan.loads.iter().map(|_| Vec::new()).collect(),
            cpu: plan.loads.iter().map(|_| None).collect(),
            latency: Vec::new(),
        })
        .collect();
    let rounds = plan.sizes.rounds;
    for round in 0..rounds {
        for (i, load) in plan.loads.iter().enumerate() {
            for (path, result) in working.iter().zip(&mut results.paths) {
                let messages = plan.sizes.messages;
                eprintln!(
                    "[{}] {} {}/{rounds}: {messages} messages",
                    result.name,
                    load.label,
                    round + 1
                );
                let probe = CpuProbe {
                    hop: path.hop.map(|p| p.to_string()),
                    broker: plan.broker.clone(),
                };
                let before = probe.sample();
                let outcome = measure(&path.route, messages, size, load.mode, plan.timing).await;
                let cpu = probe.since(before);
                result.cpu[i] = Some(result.cpu[i].map_or(cpu, |sum| sum.add(cpu)));
                progress(&result.name, &outcome, load.loss_ok);
                result.loads[i].push(outcome);
                tokio::time::sleep(plan.pause).await;
            }
        }
        if plan.latency_each_round || round + 1 == rounds {
            for (path, result) in working.iter().zip(&mut results.paths) {
                let (messages, rate) = (plan.sizes.latency_messages, plan.sizes.rate);
                eprintln!(
                    "[{}] latency: {messages} messages at {rate} msg/s",
                    result.name
                );
                let outcome =
                    measure(&path.route, messages, size, Mode::Paced(rate), plan.timing).await;
                eprintln!(
                    "[{}]   p50 {:.0} µs, p99 {:.0} µs",
                    result.name,
                    outcome.percentile_us(0.5),
                    outcome.percentile_us(0.99)
                );
                result.latency.push(outcome);
                tokio::time::sleep(plan.pause).await;
            }
        }
    }
    results.load[1] = load_average();
    results
}

/// Prints (to stderr) what a throughput run gave, as it goes.
fn progress(name: &str, outcome: &Outcome, loss_ok: bool) {
    let problems = outcome.problems(loss_ok);
    eprintln!(
        "[{name}]   {:.0} msg/s received, {:.0} msg/s confirmed, {} lost{}",
        outcome.rate(),
        outcome.publish_rate(),
        outcome.lost(),
        if problems.is_empty() {
            String::new()
        } else {
            format!("; {}", problems.join(", "))
        }
    );
}
