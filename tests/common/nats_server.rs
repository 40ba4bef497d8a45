//! nats-server processes of a test's own: one server to stop and start
//! again, or a 3-node JetStream cluster on loopback ports.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{free_port, log_dir, unique, wait_until};

/// The nats-server binary, looked for once: `BAKER_TEST_NATS_SERVER` (set
/// by `integration/run.sh`), else where `integration/brokers.sh` installs it,
/// else on PATH.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        super::broker_binary(
            "nats-server",
            "BAKER_TEST_NATS_SERVER",
            &["/var/tmp/baker-brokers/nats-venv/bin/nats-server"],
            "install nats-server 2.15.1 (2.11 or later) and set BAKER_TEST_NATS_SERVER to it, \
             or run integration/brokers.sh, which installs one (integration/run.sh then sets \
             BAKER_TEST_NATS_SERVER)",
        )
    })
}

/// One nats-server with JetStream, killed when dropped. Its store outlives
/// a stop, so a restarted node keeps its streams.
pub struct NatsNode {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    store: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl NatsNode {
    fn new(name: &str, extra: Vec<String>) -> NatsNode {
        NatsNode {
            name: name.to_owned(),
            port: free_port(),
            cluster_port: free_port(),
            store: tempfile::tempdir().unwrap(),
            extra,
            child: None,
            log: log_dir().join(format!("{}.log", unique(&format!("nats-{name}-")))),
        }
    }

    /// A single server with `extra` arguments (TLS, a config file), started.
    pub async fn with_args(extra: &[&str]) -> NatsNode {
        let extra = extra.iter().map(|a| a.to_string()).collect();
        let mut node = NatsNode::new("single", extra);
        node.start().await;
        node
    }

    /// A single server, started.
    pub async fn single() -> NatsNode {
        let mut node = NatsNode::new("single", Vec::new());
        node.start().await;
        node
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits for its port.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let port = self.port.to_string();
        let child = Command::new(bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port,
                "-js",
                "-n",
                &self.name,
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin().display()));
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(
            &format!("nats-server {} on {addr}", self.name),
            Duration::from_secs(20),
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
            },
        )
        .await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three nodes clustered on loopback ports, JetStream on each.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream answers on the cluster.
    pub async fn start() -> NatsCluster {
        let cluster_name = unique("baker-test-");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes: Vec<NatsNode> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, cluster_port))| {
                let mut node = NatsNode::new(
                    &format!("{cluster_name}-n{i}"),
                    vec![
                        "--cluster_name".into(),
                        cluster_name.clone(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{cluster_port}"),
                        "--routes".into(),
                        routes.clone(),
                    ],
                );
                node.port = *port;
                node.cluster_port = *cluster_port;
                node
            })
            .collect();
        for node in &mut nodes {
            node.start().await;
        }
        let cluster = NatsCluster { nodes };
        // JetStream answers once the nodes have elected a meta leader.
        let client = async_nats::connect(cluster.addrs()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        wait_until(
            "JetStream on the 3-node cluster",
            Duration::from_secs(30),
            || {
                let js = js.clone();
                async move { js.query_account().await.is_ok() }
            },
        )
        .await;
        cluster
    }

    /// Every node's address.
    pub fn addrs(&self) -> Vec<async_nats::ServerAddr> {
        self.nodes
            .iter()
            .map(|n| n.url().parse().unwrap())
            .collect()
    }

    /// Every node's URL, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
