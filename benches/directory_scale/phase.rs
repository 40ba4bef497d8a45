//! One measured phase: watchers following the directory one way (the new
//! `/v1/watch` or the whole `/v1/catalog`), a series of changes paced 100 ms
//! apart, and when each watcher first saw each change.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::common::cpu::cpu_time;
use crate::wire::Conn;
use crate::{rss_kib, service_name};

/// Time between two changes.
pub const CHANGE_EVERY: Duration = Duration::from_millis(100);
/// Longest wait, after the last change, for every watcher to see it.
const SETTLE: Duration = Duration::from_secs(60);
/// Longest wait for every watcher's first answer.
const FIRST_ANSWERS: Duration = Duration::from_secs(300);
/// Watchers connecting (and reading their first answer) at once: more would
/// overflow the directory's listen backlog and wait for SYN retries.
const CONNECTING: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST /v1/watch` over the watcher's services.
    Watch,
    /// `GET /v1/catalog`: every record on every change.
    Catalog,
}

/// What a phase's watchers share with its driver.
struct Shared {
    mode: Mode,
    /// The first marker of the phase (`c<first>`), and the service of each
    /// of its changes, by marker - first.
    first: usize,
    change_service: Vec<usize>,
    ready: AtomicUsize,
    first_bytes: AtomicU64,
    bytes: AtomicU64,
    answers: AtomicU64,
    errors: AtomicU64,
    /// Records of services the watcher did not name (a watch answers only
    /// its own).
    foreign: AtomicU64,
    /// (change, watcher of its service) pairs seen, and (change, any
    /// watcher) pairs seen.
    pairs_seen: AtomicUsize,
    markers_seen: AtomicUsize,
    stop: CancellationToken,
}

/// The part of a watch answer a watcher reads.
#[derive(Deserialize)]
struct WatchAnswer {
    epoch: u64,
    index: u64,
    instances: Vec<Seen>,
}

#[derive(Deserialize)]
struct Seen {
    service: String,
    version: String,
}

/// The marker number in a version `c<n>` (what follows the digits, say
/// the closing quote in a catalog's bytes, is left out).
fn marker(version: &[u8]) -> Option<usize> {
    let digits = version.strip_prefix(b"c")?;
    let end = (digits.iter().position(|b| !b.is_ascii_digit())).unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// The epoch and index a catalog starts with (`{"epoch":E,"index":N,...`).
fn catalog_position(body: &[u8]) -> Option<(u64, u64)> {
    let head = std::str::from_utf8(&body[..body.len().min(128)]).ok()?;
    let number = |key: &str| -> Option<u64> {
        let rest = &head[head.find(key)? + key.len()..];
        rest[..rest.find(|c: char| !c.is_ascii_digit())?]
            .parse()
            .ok()
    };
    Some((number("\"epoch\":")?, number("\"index\":")?))
}

/// One watcher: follows the directory until stopped; when it first saw
/// each of the phase's changes.
async fn watcher(
    addr: SocketAddr,
    services: Vec<usize>,
    shared: Arc<Shared>,
    connecting: Arc<Semaphore>,
) -> Vec<Option<Instant>> {
    let mut conn = Conn::new(addr);
    let mut seen = vec![None; shared.change_service.len()];
    let own: Vec<String> = services.iter().map(|&s| service_name(s)).collect();
    let names = serde_json::to_string(&own).expect("names serialise");
    let finder = memmem::Finder::new(b"\"version\":\"c");
    let mut position: Option<(u64, u64)> = None;
    let mut markers = Vec::new();
    loop {
        let (method, path, body) = match (shared.mode, position) {
            (Mode::Watch, None) => (
                "POST",
                "/v1/watch".to_owned(),
                format!(r#"{{"services":{names}}}"#),
            ),
            (Mode::Watch, Some((e, i))) => (
                "POST",
                "/v1/watch".to_owned(),
                format!(r#"{{"services":{names},"epoch":{e},"index":{i},"wait":30}}"#),
            ),
            (Mode::Catalog, None) => ("GET", "/v1/catalog".to_owned(), String::new()),
            (Mode::Catalog, Some((e, i))) => (
                "GET",
                format!("/v1/catalog?epoch={e}&index={i}&wait=30"),
                String::new(),
            ),
        };
        let permit = match position {
            None => Some(connecting.acquire().await.expect("semaphore open")),
            Some(_) => None,
        };
        let answer = tokio::select! {
            answer = conn.request(method, &path, body.as_bytes()) => answer,
            _ = shared.stop.cancelled() => break,
        };
        let at = Instant::now();
        drop(permit);
        let answered = match answer {
            Ok(200) => Ok(()),
            Ok(status) => Err(format!("{status} {}", String::from_utf8_lossy(conn.body()))),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = answered {
            if shared.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                eprintln!("watcher: {method} {path}: {e}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let body = conn.body();
        markers.clear();
        let now_at = match shared.mode {
            Mode::Watch => {
                let answer: WatchAnswer = serde_json::from_slice(body).expect("a watch answer");
                for record in &answer.instances {
                    if !own.contains(&record.service) {
                        shared.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                    markers.extend(marker(record.version.as_bytes()));
                }
                (answer.epoch, answer.index)
            }
            Mode::Catalog => {
                let found = finder
                    .find_iter(body)
                    .map(|at| &body[at + finder.needle().len() - 1..]);
                markers.extend(found.filter_map(marker));
                catalog_position(body).expect("a catalog starts with its position")
            }
        };
        let received = conn.received() as u64;
        for local in markers.iter().filter_map(|m| m.checked_sub(shared.first)) {
            let Some(first) = seen.get_mut(local) else {
                continue;
            };
            if first.is_none() {
                *first = Some(at);
                shared.markers_seen.fetch_add(1, Ordering::Relaxed);
                if services.contains(&shared.change_service[local]) {
                    shared.pairs_seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if position.replace(now_at).is_none() {
            shared.first_bytes.fetch_add(received, Ordering::Relaxed);
            shared.ready.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.bytes.fetch_add(received, Ordering::Relaxed);
            shared.answers.fetch_add(1, Ordering::Relaxed);
        }
        conn.shrink();
    }
    seen
}

/// What one phase measured.
pub struct Outcome {
    pub watchers: usize,
    pub changes: usize,
    /// Until every watcher had its first answer, and their bytes.
    pub first_answers: Duration,
    pub first_bytes: u64,
    /// Propagation of each (change, watcher of its service) pair seen, ns,
    /// sorted; how many pairs there were; the first few missing.
    pub delays: Vec<u64>,
    pub expected: usize,
    /// The same over every (change, watcher) pair whose watcher saw it (a
    /// catalog watcher sees every change).
    pub all_delays: Vec<u64>,
    pub missing: Vec<String>,
    /// During the changes (first write to the last answer they caused).
    pub dir_cpu: Option<Duration>,
    pub bench_cpu: Option<Duration>,
    pub bytes: u64,
    pub answers: u64,
    pub took: Duration,
    pub errors: u64,
    pub foreign: u64,
    pub rss_end_kib: Option<u64>,
}

/// Runs a phase against the directory at `addr` (process `pid`):
/// `watchers` watchers, each of `watched` services (of `services`) drawn
/// from `rng`, then the `writes` (path, body, service), the first writing
/// marker `first`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mode: Mode,
    addr: SocketAddr,
    pid: &str,
    watchers: usize,
    services: usize,
    watched: usize,
    writes: Vec<(String, String, usize)>,
    first: usize,
    rng: &mut fastrand::Rng,
) -> Outcome {
    let shared = Arc::new(Shared {
        mode,
        first,
        change_service: writes.iter().map(|w| w.2).collect(),
        ready: AtomicUsize::new(0),
        first_bytes: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        answers: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        foreign: AtomicU64::new(0),
        pairs_seen: AtomicUsize::new(0),
        markers_seen: AtomicUsize::new(0),
        stop: CancellationToken::new(),
    });
    let followed: Vec<Vec<usize>> = (0..watchers)
        .map(|_| {
            let mut set = HashSet::new();
            while set.len() < watched {
                set.insert(rng.usize(..services));
            }
            let mut list: Vec<usize> = set.into_iter().collect();
            list.sort_unstable();
            list
        })
        .collect();
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let started = Instant::now();
    let tasks: Vec<_> = (followed.iter().cloned())
        .map(|list| tokio::spawn(watcher(addr, list, shared.clone(), connecting.clone())))
        .collect();
    while shared.ready.load(Ordering::Relaxed) < watchers {
        assert!(
            started.elapsed() < FIRST_ANSWERS,
            "only {} of {watchers} watchers had their first answer after {FIRST_ANSWERS:?}",
            shared.ready.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_answers = started.elapsed();
    eprintln!("  {watchers} watchers have their first answer after {first_answers:.1?}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let watching = |service: usize| followed.iter().filter(|f| f.contains(&service)).count();
    let expected: usize = writes.iter().map(|w| watching(w.2)).sum();
    let (bytes0, answers0) = (
        shared.bytes.load(Ordering::Relaxed),
        shared.answers.load(Ordering::Relaxed),
    );
    let (dir0, bench0) = (cpu_time(pid), cpu_time("self"));
    let mut conn = Conn::new(addr);
    let mut starts = Vec::with_capacity(writes.len());
    let t0 = Instant::now();
    for (k, (path, body, _)) in writes.iter().enumerate() {
        tokio::time::sleep_until((t0 + CHANGE_EVERY * k as u32).into()).await;
        starts.push(Instant::now());
        let status = conn.request("PUT", path, body.as_bytes()).await;
        assert!(
            matches!(status, Ok(200)),
            "change {k}: PUT {path}: {status:?}"
        );
    }
    let settled = |s: &Shared| match mode {
        Mode::Watch => s.pairs_seen.load(Ordering::Relaxed) >= expected,
        Mode::Catalog => s.markers_seen.load(Ordering::Relaxed) >= watchers * writes.len(),
    };
    let last_write = Instant::now();
    while !settled(&shared) && last_write.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = t0.elapsed();
    let sub = |a: Option<Duration>, b: Option<Duration>| Some(a?.saturating_sub(b?));
    let dir_cpu = sub(cpu_time(pid), dir0);
    let bench_cpu = sub(cpu_time("self"), bench0);
    let bytes = shared.bytes.load(Ordering::Relaxed) - bytes0;
    let answers = shared.answers.load(Ordering::Relaxed) - answers0;
    shared.stop.cancel();
    let mut delays = Vec::with_capacity(expected);
    let mut all_delays = Vec::new();
    let mut missing = Vec::new();
    for (w, task) in tasks.into_iter().enumerate() {
        let seen = task.await.expect("a watcher failed");
        for (k, write) in writes.iter().enumerate() {
            let delay = seen[k].map(|at| at.saturating_duration_since(starts[k]).as_nanos() as u64);
            all_delays.extend(delay);
            if !followed[w].contains(&write.2) {
                continue;
            }
            match delay {
                Some(delay) => delays.push(delay),
                None => missing.push(format!(
                    "change c{} ({}) not seen by watcher {w}",
                    first + k,
                    write.0
                )),
            }
        }
    }
    delays.sort_unstable();
    all_delays.sort_unstable();
    Outcome {
        watchers,
        changes: writes.len(),
        first_answers,
        first_bytes: shared.first_bytes.load(Ordering::Relaxed),
        delays,
        expected,
        all_delays,
        missing,
        dir_cpu,
        bench_cpu,
        bytes,
        answers,
        took,
        errors: shared.errors.load(Ordering::Relaxed),
        foreign: shared.foreign.load(Ordering::Relaxed),
        rss_end_kib: rss_kib(pid),
    }
}
