//! A child process of a test: its log, signals, and its end with the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let log = log_dir().join(format!("{}.log", unique(&format!("{name}-"))));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env(
                "BAKER_LOG",
                std::env::var("BAKER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn baker-mq");
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status();
    }

    /// SIGSTOP: the process stays, frozen (a host cut off, as the
    /// directory sees it).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit (SIGKILL after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal("-TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// Whether the process has exited, and with what code.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|status| status.code())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of the admin API of a `baker-mq` started with `--admin`
    /// on port 0, once it listens.
    pub async fn admin_addr(&self) -> String {
        self.logged_addr("admin API listening").await
    }

    /// The port of the address the process logged on its line saying `what`
    /// ([`Proc::logged_addr`]).
    pub async fn logged_port(&self, what: &str) -> u16 {
        let addr = self.logged_addr(what).await;
        let port = addr.rsplit(':').next().and_then(|port| port.parse().ok());
        port.unwrap_or_else(|| panic!("{} logged {addr:?}, not HOST:PORT", self.name))
    }

    /// The address (`addr=HOST:PORT`) the process logged on its line saying
    /// `what`, once it has: a process given port 0 says which port it got,
    /// which no other process can take in between (as a port picked free
    /// beforehand can be).
    pub async fn logged_addr(&self, what: &str) -> String {
        let deadline = Instant::now() + super::scaled(Duration::from_secs(20));
        loop {
            let text = self.log_text();
            let found = text
                .lines()
                .filter(|l| l.contains(what))
                .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")));
            if let Some(addr) = found {
                return addr.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{} never said {what:?}:\n{text}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what its processes said (the harness
        // captures this with the test's output).
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "--- last {} lines of {} ({}) ---\n{}",
                tail.len(),
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}
