//! A RabbitMQ node of a test's own, beside the shared one, with settings
//! the shared node does not have (a TLS listener): its own node name,
//! ports, config, database and logs, in a directory the `rabbitmq` user
//! owns. Stopped (`rabbitmqctl stop`) when dropped. About 10-20 s to start:
//! start one per test binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{free_port, unique, wait_until};

/// A RabbitMQ node with a TLS listener only.
pub struct RabbitNode {
    pub name: String,
    pub tls_port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
}

fn sbin(program: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/lib/rabbitmq/bin", "/usr/bin"] {
        let path = Path::new(dir).join(program);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "{program} not found: this test starts a RabbitMQ node of its own; install RabbitMQ \
         (Debian 12: apt-get install rabbitmq-server, or run integration/brokers.sh)"
    )
}

impl RabbitNode {
    /// Starts a node whose only listener is TLS on a free port, with
    /// `cert`, `key` and `ca` (PEM), requiring a client certificate
    /// signed by `ca`; waits until it has booted.
    pub async fn start_tls(ca: &Path, cert: &Path, key: &Path) -> RabbitNode {
        let dir = tempfile::tempdir().unwrap();
        let host =
            String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap();
        let name = format!("{}@{}", unique("bakertls"), host.trim());
        let tls_port = free_port();
        let copy = |from: &Path, to: &str| {
            let path = dir.path().join(to);
            std::fs::copy(from, &path).unwrap();
            path
        };
        let (ca, cert, key) = (
            copy(ca, "ca.pem"),
            copy(cert, "server.pem"),
            copy(key, "server.key"),
        );
        let config = format!(
            "listeners.tcp = none\nlisteners.ssl.default = {tls_port}\n\
             ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n\
             loopback_users = none\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        std::fs::write(dir.path().join("rabbitmq.conf"), config).unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status();
        let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
        let node = RabbitNode {
            name,
            tls_port,
            dist_port: free_port(),
            dir,
        };
        let status = node
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached failed");
        // `-detached` returns at once; the node registers with epmd a few
        // seconds later, and `await_startup` fails until it has.
        let mut last = String::new();
        let booted = (0..60).any(|_| {
            let attempt = node
                .command("rabbitmqctl")
                .args(["-n", &node.name, "--timeout", "60", "await_startup"])
                .output()
                .unwrap();
            last = String::from_utf8_lossy(&attempt.stderr).into_owned();
            if !attempt.status.success() {
                std::thread::sleep(Duration::from_secs(1));
            }
            attempt.status.success()
        });
        assert!(
            booted,
            "RabbitMQ node {} did not boot: {last}\n{}",
            node.name,
            node.log()
        );
        let addr = format!("127.0.0.1:{tls_port}");
        wait_until("the TLS listener", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
        })
        .await;
        node
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(sbin(program));
        let path = |p: &str| self.dir.path().join(p);
        command
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", path("node.pid"));
        command
    }

    /// The node's log, for failure messages.
    pub fn log(&self) -> String {
        let dir = self.dir.path().join("log");
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `amqps://` URL of the default vhost (without credentials).
    pub fn url(&self) -> String {
        format!("amqps://127.0.0.1:{}/%2f", self.tls_port)
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = self
            .command("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .output();
    }
}
