//! What the two NATS benches (core NATS and JetStream) share: the server's
//! URL, connecting, finding the server's process for its CPU time, and the
//! environment of the relay process each compares baker-mq against (this
//! binary re-executed, on the runtime `BAKER_BENCH_RELAY_RUNTIME` names, see
//! `procs::run_relay`).

use std::time::Duration;

use async_nats::{Client, ConnectOptions};

use super::cpu::{cmdline, pids_named};
pub use super::procs::{relay_runtime, run_relay, RELAY_RUNTIME_ENV};

/// The ratios both NATS benches report: baker-mq against the relay (the
/// target) and the direct path, and the relay's own cost.
pub const RELAY_RATIOS: [(&str, &str); 4] = [
    ("baker-mq", "relay"),
    ("baker-mq", "direct"),
    ("relay", "direct"),
    ("baker-mq", "relay+hdr"),
];

pub const NATS_URL_ENV: &str = "BAKER_BENCH_NATS_URL";

pub fn nats_url() -> String {
    std::env::var(NATS_URL_ENV).unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Connects as `name` with `options`, within 10 s; panics otherwise.
pub async fn connect(name: &str, options: ConnectOptions) -> Client {
    tokio::time::timeout(
        Duration::from_secs(10),
        options.name(name).connect(nats_url()),
    )
    .await
    .unwrap_or_else(|_| panic!("connecting to {} timed out", nats_url()))
    .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", nats_url()))
}

/// What every relay process is started with: the URL and the runtime.
pub fn relay_env() -> Vec<(&'static str, String)> {
    vec![
        (NATS_URL_ENV, nats_url()),
        (RELAY_RUNTIME_ENV, relay_runtime()),
    ]
}

/// The subject a relay forwards `<svc>.<topic>` (what follows its prefix)
/// to, as baker-mq does: `_baker.<svc>.<instance>.<topic>`.
pub fn inbox_subject(rest: &str, instance: &str) -> String {
    match rest.split_once('.') {
        Some((service, topic)) => format!("_baker.{service}.{instance}.{topic}"),
        None => format!("_baker.{rest}.{instance}"),
    }
}

/// The pid of the nats-server at [`nats_url`], if it runs here: the one
/// whose command line names the URL's port, or the only one.
pub fn nats_server_pid() -> Option<String> {
    let url = nats_url();
    let port = url
        .rsplit_once(':')
        .and_then(|(_, p)| p.split(['/', '?']).next())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty())
        .unwrap_or("4222")
        .to_owned();
    let pids = pids_named("nats-server");
    let listens_on_port = |pid: &String| {
        let args = cmdline(pid);
        let args: Vec<&str> = args.split(' ').collect();
        args.windows(2)
            .any(|w| (w[0] == "-p" || w[0] == "--port") && w[1] == port)
            || args.iter().any(|a| *a == format!("--port={port}"))
    };
    match pids.iter().find(|p| listens_on_port(p)) {
        Some(pid) => Some(pid.clone()),
        None if pids.len() == 1 => pids.into_iter().next(),
        None => None,
    }
}
