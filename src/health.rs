//! Active health checks: the agent probes each instance that has a check and
//! turns the results into the status it registers (`passing` or
//! `critical`).
//!
//! An instance with a check starts `critical` and becomes `passing` at its
//! first successful probe. From then on `fall` failed probes in a row make
//! it `critical`, and `rise` successful ones in a row make it `passing`
//! again. Each check runs in a task of its own with a timeout per probe, so
//! a hung probe delays neither other checks nor routing.

use std::time::Duration;

use tokio::sync::watch;

use crate::directory::Status;
use crate::shutdown::Shutdown;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// An HTTP request whose response status is one of `statuses` (any 2xx
    /// or 3xx when empty).
    Http {
        /// Request method.
        method: reqwest::Method,
        /// URL to request.
        url: String,
        /// Accepted statuses.
        statuses: Vec<u16>,
    },
    /// A TCP connection to `HOST:PORT`.
    Tcp {
        /// Where to connect.
        address: String,
    },
    /// A program that exits 0.
    Exec {
        /// The program, then its arguments.
        command: Vec<String>,
    },
}

/// One instance's health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What each probe does.
    pub probe: Probe,
    /// Time between the start of one probe and the next.
    pub interval: Duration,
    /// Longest a probe may take; past it, the probe failed.
    pub timeout: Duration,
    /// Successful probes in a row that make a critical instance passing.
    pub rise: u32,
    /// Failed probes in a row that make a passing instance critical.
    pub fall: u32,
}

/// Default time between probes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default probe timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `rise`.
pub const DEFAULT_RISE: u32 = 2;
/// Default `fall`.
pub const DEFAULT_FALL: u32 = 3;

/// Tracks consecutive probe results and decides the status.
#[derive(Debug)]
struct Verdicts {
    rise: u32,
    fall: u32,
    status: Status,
    ever_passed: bool,
    successes: u32,
    failures: u32,
}

impl Verdicts {
    fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise,
            fall,
            status: Status::Critical,
            ever_passed: false,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one probe; returns the new status when it changed.
    fn record(&mut self, passed: bool) -> Option<Status> {
        let next = if passed {
            self.successes += 1;
            self.failures = 0;
            // The first success admits a starting instance at once; later,
            // recovery takes `rise` successes in a row.
            (!self.ever_passed || self.successes >= self.rise).then_some(Status::Passing)
        } else {
            self.failures += 1;
            self.successes = 0;
            (self.failures >= self.fall).then_some(Status::Critical)
        };
        if passed {
            self.ever_passed = true;
        }
        match next {
            Some(status) if status != self.status => {
                self.status = status;
                Some(status)
            }
            _ => None,
        }
    }
}

impl HealthCheck {
    /// Runs one probe.
    pub async fn probe(&self, http: &reqwest::Client) -> Result<(), String> {
        let attempt = async {
            match &self.probe {
                Probe::Http {
                    method,
                    url,
                    statuses,
                } => {
                    let response = http
                        .request(method.clone(), url)
                        .send()
                        .await
                        .map_err(|e| {
                            format!("{method} {url}: {}", crate::http_tls::describe(&e))
                        })?;
                    let code = response.status();
                    let accepted = if statuses.is_empty() {
                        code.is_success() || code.is_redirection()
                    } else {
                        statuses.contains(&code.as_u16())
                    };
                    if accepted {
                        Ok(())
                    } else {
                        Err(format!("{method} {url}: status {code}"))
                    }
                }
                Probe::Tcp { address } => tokio::net::TcpStream::connect(address)
                    .await
                    .map(drop)
                    .map_err(|e| format!("connecting to {address}: {e}")),
                Probe::Exec { command } => {
                    let status = tokio::process::Command::new(&command[0])
                        .args(&command[1..])
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .status()
                        .await
                        .map_err(|e| format!("running {}: {e}", command[0]))?;
                    if status.success() {
                        Ok(())
                    } else {
                        Err(format!("{} exited with {status}", command[0]))
                    }
                }
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", self.timeout.as_millis())))
    }

    /// Probes every `interval` until shutdown, publishing each status change
    /// of the instance `service`/`id` on `status`.
    pub async fn run(
        self,
        service: String,
        id: String,
        status: watch::Sender<Status>,
        shutdown: Shutdown,
    ) {
        let http = crate::http_tls::client()
            .timeout(self.timeout)
            .build()
            .unwrap_or_default();
        let gauge = metrics::gauge!("baker_health_check_passing", "service" => service.clone(), "instance" => id.clone());
        let failures = metrics::counter!("baker_health_check_failures_total", "service" => service.clone(), "instance" => id.clone());
        let mut verdicts = Verdicts::new(self.rise, self.fall);
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        loop {
            if shutdown.run_until(ticks.tick()).await.is_none() {
                return;
            }
            let Some(result) = shutdown.run_until(self.probe(&http)).await else {
                return;
            };
            if let Err(error) = &result {
                failures.increment(1);
                last_error.clone_from(error);
            }
            if let Some(changed) = verdicts.record(result.is_ok()) {
                match changed {
                    Status::Passing => {
                        tracing::info!(%service, %id, "health check passing");
                        gauge.set(1.0);
                    }
                    _ => {
                        tracing::warn!(%service, %id, error = %last_error, fall = self.fall,
                            "health check failing; instance marked critical");
                        gauge.set(0.0);
                    }
                }
                status.send_replace(changed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_success_admits_then_fall_and_rise_apply() {
        let mut v = Verdicts::new(2, 3);
        assert_eq!(v.record(false), None, "starts critical");
        assert_eq!(
            v.record(true),
            Some(Status::Passing),
            "first success admits"
        );
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(true), None, "a success breaks the run of failures");
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(false), Some(Status::Critical), "3 in a row");
        assert_eq!(v.record(true), None, "recovery needs 2 in a row");
        assert_eq!(v.record(false), None);
        assert_eq!(v.record(true), None);
        assert_eq!(v.record(true), Some(Status::Passing));
    }

    #[tokio::test]
    async fn probes_report_what_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let check = |probe| HealthCheck {
            probe,
            interval: DEFAULT_INTERVAL,
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
        };
        let http = reqwest::Client::new();
        assert_eq!(
            check(Probe::Tcp {
                address: open.clone()
            })
            .probe(&http)
            .await,
            Ok(())
        );
        drop(listener);
        assert!(check(Probe::Tcp { address: open })
            .probe(&http)
            .await
            .unwrap_err()
            .contains("connecting to"));
        let exec = |args: &[&str]| Probe::Exec {
            command: args.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(check(exec(&["true"])).probe(&http).await, Ok(()));
        assert!(check(exec(&["false"]))
            .probe(&http)
            .await
            .unwrap_err()
            .contains("exited"));
        assert!(check(exec(&["sleep", "5"]))
            .probe(&http)
            .await
            .unwrap_err()
            .contains("no answer within 500 ms"));
    }
}
