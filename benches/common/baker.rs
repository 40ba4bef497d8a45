//! The `baker-mq` processes under test: a `baker-mq directory` and the
//! sidecars, started from this build's binary, and the HTTP probes that tell
//! when they are ready. Ready alone is not enough: a sidecar routes only once
//! the directory has told it the route, and messages published before that
//! would not arrive, so a sidecar counts as started once it is also routed.
//! Also what the sidecars counted themselves, printed next to the bench's
//! own counts.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::procs::{child_exited, spawn_child, stop_child};
use super::READY_TIMEOUT;

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

/// Starts a `baker-mq directory` on a free port, logging to `logs`, and
/// waits until it answers; `Err` (it stopped) with its log when it does not
/// in time.
pub async fn start_directory(logs: &Path) -> Result<Directory, String> {
    let addr = free_addr();
    let log = logs.join("directory.log");
    let pid = spawn_baker_mq(
        "baker-mq directory",
        &["directory", "--listen", &addr.to_string()],
        &log,
    );
    let http = http_client();
    let deadline = Instant::now() + READY_TIMEOUT;
    while !responds_ok(&http, &format!("http://{addr}/healthz")).await {
        if Instant::now() > deadline || child_exited(pid).is_some() {
            stop_child(pid);
            return Err(format!(
                "baker-mq directory not up at {addr}; log:\n{}",
                log_tail(&log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Directory { addr, pid, log })
}

/// A `baker-mq` sidecar this bench started, ready and routed.
pub struct Sidecar {
    pub pid: u32,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// Starts a `baker-mq` sidecar named `name` with `args`, its admin API on a
/// free port and `directory` for its directory, following `service` unless
/// `args` say `--watch`, logging to `log`, and waits until it is ready and
/// routes to `service`; `Err` (it stopped) with its
/// log when it exits early or is not ready and routed in time.
pub async fn start_sidecar(
    name: &str,
    directory: &Directory,
    args: &[&str],
    service: &str,
    log: PathBuf,
) -> Result<Sidecar, String> {
    let admin = free_addr();
    let (directory_url, admin_addr) = (format!("http://{}", directory.addr), admin.to_string());
    let mut all = args.to_vec();
    all.extend(["--directory", &directory_url, "--admin", &admin_addr]);
    // A router follows the services it is told of (or learns from a first
    // message): the bench's service, so that it routes before the first one.
    if !args.contains(&"--watch") {
        all.extend(["--watch", service]);
    }
    let pid = spawn_baker_mq(name, &all, &log);
    let http = http_client();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child_exited(pid) {
            stop_child(pid);
            return Err(format!(
                "{name} exited early ({status}); its log:\n{}",
                log_tail(&log)
            ));
        }
        let (ready, routed) = sidecar_state(&http, admin, service).await;
        if ready && routed {
            break;
        }
        if Instant::now() > deadline {
            stop_child(pid);
            return Err(format!(
                "{name} not ready/routed within {READY_TIMEOUT:?} (ready={ready}, routed={routed}); its log:\n{}",
                log_tail(&log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{name} ready (pid {pid}, admin {admin}, directory {directory_url})");
    Ok(Sidecar { pid, admin, log })
}

impl Sidecar {
    /// Prints (to stderr) what the sidecar counted itself, for the record
    /// next to the bench's own counts: its services from `/v1/status`, the
    /// metrics for routed, undeliverable and dead-lettered messages and
    /// errors, and the first ten warnings and errors in its log.
    pub async fn print_record(&self) {
        let http = http_client();
        let admin = self.admin;
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
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let warnings: Vec<_> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(10)
            .collect();
        if !warnings.is_empty() {
            eprintln!("baker-mq warnings:\n{}", warnings.join("\n"));
        }
    }
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
/// `/v1/status`).
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
