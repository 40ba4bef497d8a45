//! Test harness: real `baker-mq` processes against real brokers.
//!
//! - [`procs`]: child processes
//! - [`baker`]: the directory, routers and agents
//! - [`traffic`]: publishing, counting inboxes, tallies
//! - [`upgrade`]: rolling upgrades
//! - [`protocols`]: the scenario suite's protocols
//! - [`scenario`]: the scenario suite's frame (`scenario!`) and checks
//! - [`amqp`], [`mqtt`], [`nats_server`]: per-broker helpers
//! - [`pki`]: a CA and certificates of a test's own
#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_baker-mq");

pub fn nats_url() -> String {
    std::env::var("BAKER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:x}", fastrand::u64(..) & 0xffff_ffff)
}

/// A port for a process that must be told its port before it starts (a
/// broker, a directory that restarts on it): free now, never handed out
/// twice in one test binary, and outside the range the system takes ports
/// from for outgoing connections. A port picked with `bind(0)` comes from that
/// range, and an outgoing connection of any test could take it before the
/// process bound it. Processes that can, take port 0 and log what they got
/// ([`procs::Proc::logged_addr`]).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut ends = range.split_whitespace().map(|end| end.parse::<u16>().ok());
            Some((ends.next()??, ends.next()??))
        })
        .unwrap_or((32768, 60999));
    let below = 10_000..low.max(10_000);
    let above = high.saturating_add(1).max(10_000)..u16::MAX;
    let range = if below.len() >= above.len() {
        below
    } else {
        above
    };
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..1_000 {
        let port = fastrand::u16(range.clone());
        let free = ["127.0.0.1", "0.0.0.0"]
            .iter()
            .all(|host| TcpListener::bind((*host, port)).is_ok());
        if free && given.insert(port) {
            return port;
        }
    }
    panic!("no free port in {range:?} after 1,000 tries");
}

pub fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("baker-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `name` binary of a broker a test starts processes of its own: the
/// path in `var` when it is set, else the first of `places` that exists,
/// else `name` on PATH. Without one it panics with one message saying where
/// it looked and `how` to get one.
pub fn broker_binary(name: &str, var: &str, places: &[&str], how: &str) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        assert!(
            is_executable(Path::new(&path)),
            "this test starts {name} processes of its own, but {var}={path} is not an \
             executable file; {how}"
        );
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    places
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path).map(|dir| dir.join(name)))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!(
                "this test starts {name} processes of its own and found no {name} binary: \
                 {var} is unset, there is none at {}, and none on PATH ({}); {how}",
                places.join(" or "),
                path.to_string_lossy()
            )
        })
}

/// How much longer than on a quiet machine every bound of the suite may
/// take: `BAKER_TEST_TIME_FACTOR` (default 1), for slow or loaded machines.
pub fn time_factor() -> f64 {
    match std::env::var("BAKER_TEST_TIME_FACTOR") {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|f| *f >= 1.0)
            .unwrap_or_else(|| {
                panic!("BAKER_TEST_TIME_FACTOR={v:?} is not a number of at least 1")
            }),
        Err(_) => 1.0,
    }
}

/// `bound` scaled by [`time_factor`].
pub fn scaled(bound: Duration) -> Duration {
    bound.mul_f64(time_factor())
}

/// Runs `test`, failing it once `limit` (scaled by [`time_factor`]) has
/// passed.
pub async fn bounded<F: Future<Output = ()>>(limit: Duration, test: F) {
    tokio::time::timeout(scaled(limit), test)
        .await
        .expect("test timed out");
}

/// Waits until `check` holds, polling every 25 ms; fails the test after
/// `timeout` (scaled by [`time_factor`]).
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn http_ok(url: &str) -> bool {
    matches!(reqwest::get(url).await, Ok(r) if r.status().is_success())
}

pub mod amqp;
pub mod baker;
pub mod mqtt;
pub mod nats_server;
pub mod pki;
pub mod procs;
pub mod protocols;
pub mod rabbit_node;
pub mod scenario;
pub mod traffic;
pub mod upgrade;

// Each test binary uses its own part of the harness.
#[allow(unused_imports)]
pub use baker::*;
#[allow(unused_imports)]
pub use procs::*;
#[allow(unused_imports)]
pub use scenario::{assert_every_message_once, start_router};
#[allow(unused_imports)]
pub use traffic::*;
#[allow(unused_imports)]
pub use upgrade::*;
