//! The `baker-mq` processes a test runs: a directory, routers and agents.

use std::time::Duration;

use super::*;

/// A `baker-mq directory` on a free port.
pub struct Directory {
    pub port: u16,
    pub proc: Proc,
}

impl Directory {
    /// A directory on a port the system picks (and the directory logs).
    pub async fn start() -> Directory {
        Self::start_with(&[]).await
    }

    /// A directory with `extra` arguments (a config file with tokens), on a
    /// port the system picks: no other test can take it in between.
    pub async fn start_with(extra: &[&str]) -> Directory {
        let mut args = vec!["directory", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let proc = Proc::spawn("directory", &args);
        let port = proc.logged_port("serving the directory").await;
        Self::up(Directory { port, proc }).await
    }

    /// A directory on `port`, for a test that restarts it there: a port
    /// from [`free_port`], outside the range outgoing connections take theirs
    /// from, so no other test's connection holds it in between.
    pub async fn start_on(port: u16) -> Directory {
        let listen = format!("127.0.0.1:{port}");
        let proc = Proc::spawn("directory", &["directory", "--listen", &listen]);
        Self::up(Directory { port, proc }).await
    }

    async fn up(dir: Directory) -> Directory {
        let health = format!("{}/healthz", dir.url());
        wait_until("directory up", Duration::from_secs(10), || http_ok(&health)).await;
        dir
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn instances(&self, service: &str) -> Vec<String> {
        let url = format!("{}/v1/services/{service}", self.url());
        let Ok(resp) = reqwest::get(&url).await else {
            return vec![];
        };
        let Ok(doc) = resp.json::<serde_json::Value>().await else {
            return vec![];
        };
        doc["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One test's isolated ingress: a unique prefix and queue group.
#[derive(Clone)]
pub struct Ingress {
    pub prefix: String,
    pub group: String,
}

impl Ingress {
    pub fn new() -> Self {
        Ingress {
            prefix: unique("t"),
            group: unique("g"),
        }
    }

    pub fn subject(&self, service: &str, topic: &str) -> String {
        format!("{}.{service}.{topic}", self.prefix)
    }
}

/// A `baker-mq` router process.
pub struct Router {
    pub admin: String,
    pub proc: Proc,
}

impl Router {
    /// A NATS router on `ingress`.
    pub async fn start(directory: &str, ingress: &Ingress, extra: &[&str]) -> Router {
        let url = nats_url();
        let mut args = vec![
            "--adapter",
            "nats",
            "--broker",
            &url,
            "--ingress-prefix",
            &ingress.prefix,
            "--queue-group",
            &ingress.group,
        ];
        args.extend_from_slice(extra);
        Self::spawn(directory, &args).await
    }

    /// A router with `args`, on its own admin port, once it is ready. Unless
    /// `args` say which services it follows, it follows every service, so
    /// that a test can wait for its view before the first message (as
    /// `--watch SERVICE` lets an operator do).
    pub async fn spawn(directory: &str, args: &[&str]) -> Router {
        let mut all = vec!["--directory", directory, "--admin", "127.0.0.1:0"];
        if !args.iter().any(|arg| arg.starts_with("--watch")) {
            all.extend(["--watch", "*"]);
        }
        all.extend_from_slice(args);
        let proc = Proc::spawn("router", &all);
        let admin = proc.admin_addr().await;
        let router = Router { admin, proc };
        let ready = format!("http://{}/readyz", router.admin);
        wait_until("router ready", Duration::from_secs(20), || http_ok(&ready)).await;
        router
    }

    pub async fn status(&self) -> serde_json::Value {
        let url = format!("http://{}/v1/status", self.admin);
        match reqwest::get(&url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Ids of the instances of `service` this router sends to.
    pub async fn routed(&self, service: &str) -> Vec<String> {
        let status = self.status().await;
        let mut ids: Vec<String> = status["services"][service]["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["routed"].as_bool() == Some(true))
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub async fn wait_routed(&self, service: &str, ids: &[&str], timeout: Duration) {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_until(
            &format!("router to route {service} to {want:?}"),
            timeout,
            || {
                let want = want.clone();
                async move { self.routed(service).await == want }
            },
        )
        .await;
    }

    /// Its `/healthz` document.
    pub async fn healthz(&self) -> serde_json::Value {
        let url = format!("http://{}/healthz", self.admin);
        reqwest::get(&url).await.unwrap().json().await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        reqwest::get(&url).await.unwrap().text().await.unwrap()
    }
}

/// A `baker-mq --no-router` agent registering one instance on NATS.
pub fn agent(directory: &str, service: &str, id: &str, extra: &[&str]) -> Proc {
    agent_on("nats", &nats_url(), directory, service, id, extra)
}

/// A `baker-mq --no-router` agent registering one instance whose inbox is on
/// `broker`, through `adapter`.
pub fn agent_on(
    adapter: &str,
    broker: &str,
    directory: &str,
    service: &str,
    id: &str,
    extra: &[&str],
) -> Proc {
    let spec = format!("service={service},id={id}");
    spawn_agent(adapter, broker, directory, &spec, extra)
}

/// An agent registering `spec` (a full `--register` value) through `adapter`
/// on `broker`.
pub fn agent_registering(adapter: &str, broker: &str, directory: &str, spec: &str) -> Proc {
    spawn_agent(adapter, broker, directory, spec, &[])
}

/// An agent registering `spec` through `adapter` on `broker`, with `extra`
/// arguments.
pub fn spawn_agent(
    adapter: &str,
    broker: &str,
    directory: &str,
    spec: &str,
    extra: &[&str],
) -> Proc {
    // Port 0: the system picks a free port when the agent binds it, so no
    // other test can take it in between (the test needs no admin address).
    agent_at(adapter, broker, directory, spec, "127.0.0.1:0", extra)
}

/// [`spawn_agent`] with its admin API at `admin`.
pub fn agent_at(
    adapter: &str,
    broker: &str,
    directory: &str,
    spec: &str,
    admin: &str,
    extra: &[&str],
) -> Proc {
    let mut args = vec![
        "--no-router",
        "--adapter",
        adapter,
        "--broker",
        broker,
        "--directory",
        directory,
        "--admin",
        admin,
        "--register",
        spec,
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&format!("agent-{adapter}"), &args)
}

/// Resident memory of process `pid`, in KiB (0 when unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
