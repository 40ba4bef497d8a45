//! Active health checks as configured: a `[register.check]` table or the
//! `check=` value of a `--register` spec, resolved into the check to run.

use schemars::JsonSchema;
use serde::Deserialize;

use crate::health::{self, HealthCheck, Probe};

/// Kinds of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// An HTTP request whose status is accepted.
    Http,
    /// A TCP connection that opens.
    Tcp,
    /// A program that exits 0.
    Exec,
}

/// An instance's active health check (`[register.check]`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// `http`, `tcp` or `exec`.
    pub kind: CheckKind,
    /// http: URL to request.
    pub url: Option<String>,
    /// http: request method (default `GET`).
    pub method: Option<String>,
    /// http: accepted response statuses (default: any 2xx or 3xx).
    pub statuses: Option<Vec<u16>>,
    /// tcp: `HOST:PORT` to connect to.
    pub address: Option<String>,
    /// exec: the program and its arguments; exit code 0 passes.
    pub command: Option<Vec<String>>,
    /// Milliseconds between probes (default 1000).
    pub interval_ms: Option<u64>,
    /// Milliseconds a probe may take (default 1000).
    pub timeout_ms: Option<u64>,
    /// Successful probes in a row that make a critical instance passing
    /// again (default 2).
    pub rise: Option<u32>,
    /// Failed probes in a row that make a passing instance critical
    /// (default 3).
    pub fall: Option<u32>,
}

impl CheckConfig {
    /// The check to run, or why this configuration is not one.
    pub fn resolve(&self) -> Result<HealthCheck, String> {
        let probe = match self.kind {
            CheckKind::Http => {
                let url = self.url.clone().ok_or("kind http needs url")?;
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    return Err(format!("url {url:?} is not an http:// or https:// URL"));
                }
                let method = self.method.as_deref().unwrap_or("GET");
                let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("method {method:?} is not an HTTP method"))?;
                let statuses = self.statuses.clone().unwrap_or_default();
                if let Some(bad) = statuses.iter().find(|s| !(100..=599).contains(*s)) {
                    return Err(format!("status {bad} is not an HTTP status"));
                }
                Probe::Http {
                    method,
                    url,
                    statuses,
                }
            }
            CheckKind::Tcp => {
                let address = self.address.clone().ok_or("kind tcp needs address")?;
                if !address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                {
                    return Err(format!("address {address:?} is not HOST:PORT"));
                }
                Probe::Tcp { address }
            }
            CheckKind::Exec => {
                let command = self.command.clone().unwrap_or_default();
                if command.first().is_none_or(|p| p.is_empty()) {
                    return Err("kind exec needs command, a program and its arguments".into());
                }
                Probe::Exec { command }
            }
        };
        let millis = |value: Option<u64>, default: std::time::Duration, key: &str| {
            let ms = value.unwrap_or(default.as_millis() as u64);
            if (10..=3_600_000).contains(&ms) {
                Ok(std::time::Duration::from_millis(ms))
            } else {
                Err(format!("{key} {ms} is not between 10 and 3600000"))
            }
        };
        let count = |value: Option<u32>, default: u32, key: &str| match value.unwrap_or(default) {
            0 => Err(format!("{key} must be at least 1")),
            n => Ok(n),
        };
        Ok(HealthCheck {
            probe,
            interval: millis(self.interval_ms, health::DEFAULT_INTERVAL, "interval_ms")?,
            timeout: millis(self.timeout_ms, health::DEFAULT_TIMEOUT, "timeout_ms")?,
            rise: count(self.rise, health::DEFAULT_RISE, "rise")?,
            fall: count(self.fall, health::DEFAULT_FALL, "fall")?,
        })
    }

    /// A check from the `check=` value of a `--register` spec: an
    /// `http://`/`https://` URL, or `tcp://HOST:PORT`.
    pub(super) fn from_spec(target: &str) -> Result<Self, String> {
        let blank = |kind| CheckConfig {
            kind,
            url: None,
            method: None,
            statuses: None,
            address: None,
            command: None,
            interval_ms: None,
            timeout_ms: None,
            rise: None,
            fall: None,
        };
        if target.starts_with("http://") || target.starts_with("https://") {
            Ok(CheckConfig {
                url: Some(target.to_owned()),
                ..blank(CheckKind::Http)
            })
        } else if let Some(address) = target.strip_prefix("tcp://") {
            Ok(CheckConfig {
                address: Some(address.to_owned()),
                ..blank(CheckKind::Tcp)
            })
        } else {
            Err(format!(
                "check={target:?}: expected http://..., https://... or tcp://HOST:PORT (exec checks go in the config file)"
            ))
        }
    }
}
