//! What the end-to-end benches (`nats_e2e`, `amqp_e2e`) share: settings
//! from the environment, the clock and the stamp every payload starts with,
//! the registry of child processes (killed on exit, panic and timeout), the
//! `baker-mq` processes under test and the HTTP probes that tell when they
//! are ready, CPU accounting from Linux /proc, and the statistics the reports
//! print.
//!
//! Each bench includes it with `mod common;`; Cargo takes only
//! `benches/*.rs` and `benches/*/main.rs` for bench targets, so this file is
//! not one of its own. What is specific to one broker stays in that bench.

// Each bench uses a different part of this module; what one does not use
// would otherwise warn in its build.
#![allow(dead_code)]

// The harness the benches move onto, split by concern; the helpers below
// serve the benches not moved yet.
pub mod baker;
pub mod confirms;
pub mod cpu;
pub mod measure;
pub mod nats;
pub mod procs;
pub mod report;
pub mod rounds;
pub mod stamp;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Longest any one measured run may take.
pub const RUN_DEADLINE: Duration = Duration::from_secs(180);
/// Longest wait for a process or path to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Settings.

/// The value of environment variable `name` parsed as a `T`, or `default`
/// when it is not set; panics on a value that does not parse, so a typo
/// never silently measures something else.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}

/// Whether this binary was started by `cargo bench` (which passes
/// `--bench`). `cargo test --benches` does not pass it, and the benches then
/// only print a note, so test runs need no broker.
pub fn invoked_as_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A tag for the names this run creates on the broker (subjects, services,
/// vhosts): the pid and 24 random bits, so that runs never share them.
pub fn run_id() -> String {
    format!("{:x}{:06x}", std::process::id(), fastrand::u32(..1 << 24))
}

// ---------------------------------------------------------------------------
// Clock and payloads.

/// Bytes of the stamp every payload starts with: its send time (ns since
/// [`epoch`], u64 LE) and its sequence number (u64 LE).
pub const STAMP: usize = 16;

/// The process-wide instant send and receive times count from. Called once
/// early, so it is set before the first measurement.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`]; one clock for publisher and consumer, which
/// run in this one process.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// A payload of `size` bytes (at least the stamp and `extra`): the stamp
/// for message `seq`, then `extra`, then zeros.
pub fn stamped_payload(seq: u64, extra: &[u8], size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size.max(STAMP + extra.len())];
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    p[STAMP..STAMP + extra.len()].copy_from_slice(extra);
    // The send time last, as close to the actual send as this gets.
    p[..8].copy_from_slice(&now_ns().to_le_bytes());
    p
}

/// The send time and sequence number a payload starts with; `None` when it
/// is too short to carry them (not one of ours).
pub fn read_stamp(p: &[u8]) -> Option<(u64, u64)> {
    let sent = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(8..STAMP)?.try_into().ok()?);
    Some((sent, seq))
}

/// Sleeps until message `seq` of a run paced at `rate` msg/s from `t0` is
/// due. A thread sleep, as tokio's timer is too coarse (1 ms) for the rates
/// the benches pace at.
pub fn pace(t0: Instant, rate: u64, seq: u64) {
    let due = t0 + Duration::from_nanos(1_000_000_000 / rate * seq);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Runs `publish` on a thread of its own (with a current-thread runtime),
/// then sets `done`; the receiver gets its result.
///
/// Its own thread, so pacing can sleep finer than tokio's 1 ms timer without
/// holding up the consumer; the broker clients do their I/O on tasks or
/// threads of their own, so publishing only hands them the messages.
pub fn publish_on_own_thread<T, F, Fut>(
    done: Arc<AtomicBool>,
    publish: F,
) -> tokio::sync::oneshot::Receiver<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("publisher runtime");
        let result = runtime.block_on(publish());
        done.store(true, Ordering::Release);
        let _ = tx.send(result);
    });
    rx
}

// ---------------------------------------------------------------------------
// Child processes: every one the bench starts is registered here, so that
// the cleanup guard's Drop (also on panic) and the watchdog on overall
// timeout can kill them all; none outlives the bench.

static CHILDREN: Mutex<Vec<(String, Child)>> = Mutex::new(Vec::new());

/// The registry, also when a thread panicked holding it: cleanup must run
/// exactly then.
fn children() -> std::sync::MutexGuard<'static, Vec<(String, Child)>> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `command` with `env` set and none of the caller's other `BAKER_*`
/// variables (they would change the children's settings), and registers it
/// as `name`; its pid.
pub fn spawn_child(name: &str, mut command: Command, env: &[(&str, String)]) -> u32 {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BAKER_") {
            command.env_remove(&key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let pid = child.id();
    children().push((name.to_owned(), child));
    pid
}

/// Calls `f` on the registered child `pid`; `None` when there is none.
pub fn with_child<T>(pid: u32, f: impl FnOnce(&mut Child) -> T) -> Option<T> {
    let mut children = children();
    let (_, child) = children.iter_mut().find(|(_, c)| c.id() == pid)?;
    Some(f(child))
}

/// The exit status of child `pid` if it has exited.
pub fn child_exited(pid: u32) -> Option<ExitStatus> {
    with_child(pid, |c| c.try_wait().ok().flatten()).flatten()
}

/// Kills and reaps the child `pid`, if it is still ours.
pub fn stop_child(pid: u32) {
    let mut children = children();
    if let Some(i) = children.iter().position(|(_, c)| c.id() == pid) {
        let (name, mut child) = children.remove(i);
        let _ = child.kill();
        if let Ok(status) = child.wait() {
            eprintln!("stopped {name} ({status})");
        }
    }
}

/// Kills and reaps every registered child.
pub fn kill_children() {
    let mut children = children();
    for (name, child) in children.iter_mut() {
        let _ = child.kill();
        match child.wait() {
            Ok(status) => eprintln!("stopped {name} ({status})"),
            Err(e) => eprintln!("could not reap {name}: {e}"),
        }
    }
    children.clear();
}

/// Runs its cleanup function when dropped, also while unwinding from a
/// panic: held for the whole bench, it takes down what the bench set up.
pub struct CleanupGuard(pub fn());

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Calls `abort` from a thread of its own once `timeout` has passed, so the
/// bench ends (and its children die) however it got stuck. `abort` is
/// expected to exit the process.
pub fn watchdog(bench: &'static str, timeout: Duration, abort: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        std::thread::sleep(timeout);
        eprintln!("{bench}: overall timeout of {timeout:?} reached; aborting");
        abort();
    });
}

// ---------------------------------------------------------------------------
// The baker-mq processes under test.

/// A loopback address with a port that was free a moment ago, for a child
/// to listen on.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The last 30 lines of the log at `path`, for failure messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Starts the `baker-mq` binary of this build with `args`, registered as
/// `name`, its stderr (where it logs) to `log`; its pid.
pub fn spawn_baker_mq(name: &str, args: &[&str], log: &Path) -> u32 {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baker-mq"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    spawn_child(name, command, &[])
}

/// A `baker-mq directory` this bench started.
pub struct Directory {
    pub addr: SocketAddr,
    pub pid: u32,
    /// Its log, `directory.log` in the bench's log folder.
    pub log: PathBuf,
}

/// Starts a `baker-mq directory` on a free port, logging to `logs`.
pub fn spawn_directory(logs: &Path) -> Directory {
    let addr = free_addr();
    let log = logs.join("directory.log");
    let pid = spawn_baker_mq(
        "baker-mq directory",
        &["directory", "--listen", &addr.to_string()],
        &log,
    );
    Directory { addr, pid, log }
}

/// The client for the admin and directory APIs; a short timeout, as these
/// are local processes that either answer at once or are not up yet.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// GETs `url`: its status and its body as JSON (`Null` when it is not);
/// `None` when there is no answer.
pub async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, serde_json::Value)> {
    let response = http.get(url).send().await.ok()?;
    let code = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    Some((code, body))
}

/// Whether `url` answers 200.
pub async fn responds_ok(http: &reqwest::Client, url: &str) -> bool {
    matches!(get(http, url).await, Some((200, _)))
}

/// Whether the sidecar with its admin API at `admin` is ready (`/readyz`),
/// and whether it routes to `service` (its first instance `routed` in
/// `/v1/status`): ready alone does not mean the directory has told it the
/// route yet, and messages published before that would not arrive.
pub async fn sidecar_state(
    http: &reqwest::Client,
    admin: SocketAddr,
    service: &str,
) -> (bool, bool) {
    let ready = responds_ok(http, &format!("http://{admin}/readyz")).await;
    let routed = match get(http, &format!("http://{admin}/v1/status")).await {
        Some((200, doc)) => doc["services"][service]["instances"][0]["routed"] == true,
        _ => false,
    };
    (ready, routed)
}

/// Prints (to stderr) what the sidecar at `admin` counted itself, for the
/// record next to the bench's own counts: its services from `/v1/status`,
/// and the metrics for routed, undeliverable and dead-lettered messages and
/// errors.
pub async fn print_baker_counts(admin: SocketAddr) {
    let http = http_client();
    if let Some((_, doc)) = get(&http, &format!("http://{admin}/v1/status")).await {
        eprintln!(
            "baker-mq status: services = {}",
            serde_json::to_string(&doc["services"]).unwrap_or_default()
        );
    }
    if let Ok(resp) = http.get(format!("http://{admin}/metrics")).send().await {
        let text = resp.text().await.unwrap_or_default();
        for line in text.lines().filter(|l| {
            !l.starts_with('#')
                && (l.contains("undeliver")
                    || l.contains("dead")
                    || l.contains("errors_total")
                    || l.starts_with("baker_messages_routed_total"))
        }) {
            eprintln!("baker-mq metric: {line}");
        }
    }
}

/// Prints (to stderr) the first ten warnings and errors in the sidecar's
/// `log`, if there are any.
pub fn print_log_warnings(log: &str) {
    let warnings: Vec<_> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(10)
        .collect();
    if !warnings.is_empty() {
        eprintln!("baker-mq warnings:\n{}", warnings.join("\n"));
    }
}

// ---------------------------------------------------------------------------
// CPU accounting (Linux /proc; in clock ticks of 1/100 s, the USER_HZ of
// every Linux ABI).

/// CPU time (user + system) of the processes involved; `None` where it
/// cannot be read (no /proc, or no such process).
#[derive(Default, Clone, Copy)]
pub struct CpuUse {
    pub bench: Option<Duration>,
    pub hop: Option<Duration>,
    pub broker: Option<Duration>,
    /// Every other process on the machine (busy time in /proc/stat less the
    /// three above): how much else competed for the CPU.
    pub other: Option<Duration>,
}

impl CpuUse {
    /// Both added up; `None` where either is.
    pub fn add(self, other: CpuUse) -> CpuUse {
        let sum = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        CpuUse {
            bench: sum(self.bench, other.bench),
            hop: sum(self.hop, other.hop),
            broker: sum(self.broker, other.broker),
            other: sum(self.other, other.other),
        }
    }
}

/// CPU time the whole machine spent busy (all CPUs, everything but idle and
/// iowait), from /proc/stat.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is within user).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Some(Duration::from_millis(busy * 10))
}

/// User + system CPU time of process `pid` ("self" for this one).
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start with field 3.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The pids of the visible processes whose command name (`comm`) is `comm`,
/// to find the broker's process; empty without /proc.
pub fn pids_named(comm: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.bytes().all(|b| b.is_ascii_digit())
                && std::fs::read_to_string(format!("/proc/{name}/comm"))
                    .is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// Samples the CPU time of this process, a path's hop, the broker and the
/// whole machine.
pub struct CpuProbe {
    /// The pid of the process between publisher and consumer, if any.
    pub hop: Option<String>,
    /// The pid of the broker, if found.
    pub broker: Option<String>,
}

impl CpuProbe {
    pub fn sample(&self) -> [Option<Duration>; 4] {
        [
            cpu_time("self"),
            self.hop.as_deref().and_then(cpu_time),
            self.broker.as_deref().and_then(cpu_time),
            machine_busy(),
        ]
    }

    /// What was used since `before` (an earlier [`CpuProbe::sample`]).
    pub fn since(&self, before: [Option<Duration>; 4]) -> CpuUse {
        let after = self.sample();
        let delta = |i: usize| Some(after[i]?.saturating_sub(before[i]?));
        let (bench, hop, broker) = (delta(0), delta(1), delta(2));
        let other = delta(3).map(|all| {
            all.saturating_sub(bench.unwrap_or_default())
                .saturating_sub(hop.unwrap_or_default())
                .saturating_sub(broker.unwrap_or_default())
        });
        CpuUse {
            bench,
            hop,
            broker,
            other,
        }
    }
}

/// `cpu` per message over `received` messages, as the reports print it;
/// "-" where it could not be read.
pub fn cpu_per_msg(cpu: Option<Duration>, received: u64) -> String {
    match cpu {
        Some(d) => format!(
            "{:.2} µs/msg",
            d.as_secs_f64() * 1e6 / received.max(1) as f64
        ),
        None => "-".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Statistics.

/// `count` per second of `elapsed`; 0 for no time at all (nothing arrived).
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

/// The `p` quantile (0 to 1, nearest rank) of `sorted` latencies in ns, in
/// µs; NaN for none.
pub fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1] as f64 / 1_000.0
}

/// The median of `values`, leaving out NaNs (a percentile of a run where
/// nothing arrived); NaN when nothing is left.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The smallest and the largest of `values`.
pub fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// `a / b`, or NaN where `b` is not positive (a path that measured nothing).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// What one measured run of one path gave.
#[derive(Default)]
pub struct Outcome {
    pub sent: u64,
    pub received: u64,
    pub duplicates: u64,
    /// Publishes the broker did not acknowledge (JetStream; 0 elsewhere).
    pub publish_errors: u64,
    /// From the first publish to the last message received.
    pub elapsed: Duration,
    /// From the first publish to the last publish ack (or final flush).
    pub publish_elapsed: Duration,
    /// Latencies in ns, sorted.
    pub latencies: Vec<u64>,
    /// The run hit a deadline (or a window that never reopened).
    pub timed_out: bool,
}

impl Outcome {
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    pub fn rate(&self) -> f64 {
        per_second(self.received, self.elapsed)
    }

    pub fn publish_rate(&self) -> f64 {
        self.sent as f64 / self.publish_elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_us(&self, p: f64) -> f64 {
        percentile_us(&self.latencies, p)
    }
}

/// A payload for message `seq`: just the stamp, padded to `size`.
pub fn payload(seq: u64, size: usize) -> bytes::Bytes {
    bytes::Bytes::from(stamped_payload(seq, &[], size))
}
