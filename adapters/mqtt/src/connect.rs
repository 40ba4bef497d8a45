//! How every connection of the adapter reaches its broker, written once: the
//! ingress, each broker's egress link, the reply topics and an instance's
//! inbox all start from [`Broker::options`].
//!
//! Credentials are the configuration's `[[brokers]]` section's for the
//! broker when it names a user, else the URL's. TLS is used when the scheme
//! says so (`mqtts://`, `ssl://`) or the section does (`tls`, `ca_file`,
//! `cert_file`, `key_file`), with the section's CA and client certificate,
//! else the system's trusted roots. Connection failures go through the
//! broker's [`ErrorLog`]: each says its cause, and the same one again is
//! logged at most every 30 s.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baker_adapter_api::{redact_url, AccessBook, AdapterError, Secret, TlsFiles};
use rumqttc::tokio_rustls::rustls::ClientConfig;
use rumqttc::v5::MqttOptions;
use rumqttc::{TlsConfiguration, Transport};

use crate::url::BrokerUrl;

/// How long the same connection error stays out of the log.
const REPEAT_QUIET: Duration = Duration::from_secs(30);

/// One broker as a connection reaches it: the URL's settings, credentials,
/// TLS, and where its connection errors are logged.
#[derive(Clone)]
pub struct Broker {
    /// The URL's address and settings.
    pub url: BrokerUrl,
    /// The URL without credentials or query, for logs and health.
    pub shown: String,
    credentials: Option<(String, Secret)>,
    tls: Option<Arc<ClientConfig>>,
    /// Where every connection to this broker reports its failures.
    pub errors: Arc<ErrorLog>,
}

impl Broker {
    /// Options for a connection to this broker as `client_id`: its address,
    /// keep-alive, credentials and TLS. Each connection adds its own
    /// session settings.
    pub fn options(&self, client_id: String) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.url.host.clone(), self.url.port);
        options.set_keep_alive(Duration::from_secs(self.url.keep_alive.into()));
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.expose().to_owned());
        }
        if let Some(config) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                config.clone(),
            )));
        }
        options
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// What every connection to one broker shares: the TLS configuration (read
/// once) and the error log.
#[derive(Clone)]
struct Shared {
    tls: Option<Arc<ClientConfig>>,
    errors: Arc<ErrorLog>,
}

/// The brokers the adapter has reached, by [`baker_adapter_api::broker_key`],
/// with the access settings of the configuration.
#[derive(Default)]
pub struct Brokers {
    access: AccessBook,
    known: Mutex<HashMap<String, Shared>>,
}

impl Brokers {
    pub fn new(access: AccessBook) -> Self {
        Self {
            access,
            known: Mutex::default(),
        }
    }

    /// The broker of `url`, or why it cannot be reached: a URL that does
    /// not parse, TLS files that cannot be used.
    pub fn get(&self, url: &str) -> Result<Broker, AdapterError> {
        let parsed = BrokerUrl::parse(url).map_err(|e| e.for_url(url))?;
        let access = self.access.get(url);
        let credentials = match access.and_then(|a| a.username.as_ref()) {
            Some(user) => {
                let password = access.and_then(|a| a.password.as_ref());
                Some((
                    user.clone(),
                    password.cloned().unwrap_or_else(|| Secret::new("")),
                ))
            }
            None => parsed.credentials.clone(),
        };
        let key = baker_adapter_api::broker_key(url);
        let shown = redact_url(url);
        let shared = {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            known.get(&key).cloned()
        };
        let shared = match shared {
            Some(shared) => shared,
            None => {
                let files = access
                    .and_then(|a| a.tls.clone())
                    .or_else(|| parsed.tls.then(TlsFiles::default));
                let tls = match files {
                    Some(files) => {
                        // Before any configuration is built: the one crypto
                        // provider of the process.
                        baker_adapter_api::tls::install_crypto_provider();
                        let config =
                            files
                                .client_config()
                                .map_err(|e| AdapterError::InvalidBroker {
                                    url: shown.clone(),
                                    reason: e.to_string(),
                                })?;
                        Some(Arc::new(config))
                    }
                    None => None,
                };
                let shared = Shared {
                    tls,
                    errors: Arc::new(ErrorLog::new(&shown)),
                };
                let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
                known.entry(key).or_insert(shared).clone()
            }
        };
        Ok(Broker {
            url: parsed,
            shown,
            credentials,
            tls: shared.tls,
            errors: shared.errors,
        })
    }
}

/// The connection errors of one broker, from any of its connections: each
/// logged with its cause (e.g. `invalid peer certificate: UnknownIssuer`),
/// the same one again at most every 30 s, with how many times it came
/// meanwhile.
pub struct ErrorLog {
    broker: String,
    last: Mutex<Repeated>,
    /// The last error, while it says the broker refuses this client.
    refused: Mutex<Option<String>>,
}

#[derive(Default)]
struct Repeated {
    text: String,
    logged: Option<Instant>,
    since: u64,
}

impl ErrorLog {
    fn new(broker: &str) -> Self {
        Self {
            broker: broker.to_owned(),
            last: Mutex::default(),
            refused: Mutex::default(),
        }
    }

    /// A connection (`connection`: ingress, egress, replies, inbox) could
    /// not be made, or was lost, with `error`; it is retried.
    pub fn failed(&self, connection: &'static str, error: &dyn Display) {
        let text = error.to_string();
        let refused = baker_adapter_api::is_refusal(&text);
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = refused.then(|| text.clone());
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.text == text && last.logged.is_some_and(|at| at.elapsed() < REPEAT_QUIET) {
            last.since += 1;
            return;
        }
        let repeated = std::mem::take(&mut last.since);
        last.text = text;
        last.logged = Some(Instant::now());
        if refused {
            tracing::warn!(broker = %self.broker, connection, error = %last.text, repeated,
                "cannot connect to MQTT broker: it refuses this sidecar (credentials or TLS identity; check its [[brokers]] section); retrying (the same error is logged at most every 30 s)");
        } else {
            tracing::warn!(broker = %self.broker, connection, error = %last.text, repeated,
                "cannot connect to MQTT broker; retrying (the same error is logged at most every 30 s)");
        }
    }

    /// A connection was made: the next error is logged whatever it is.
    pub fn connected(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Repeated::default();
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Why the broker refuses this client, while it does.
    pub fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `text` would be logged now (for tests).
    #[cfg(test)]
    fn due(&self, text: &str) -> bool {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.text != text || last.logged.is_none_or(|at| at.elapsed() >= REPEAT_QUIET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baker_adapter_api::BrokerAccess;

    #[test]
    fn the_section_s_credentials_override_the_url_s() {
        let access = BrokerAccess {
            username: Some("router".into()),
            password: Some(Secret::new("pw-section")),
            ..Default::default()
        };
        let brokers = Brokers::new(AccessBook::new([("mqtt://h:1883".to_owned(), access)]));
        let broker = brokers.get("mqtt://u:pw-url@h:1883?client_id=r1").unwrap();
        assert_eq!(
            broker.credentials,
            Some(("router".to_owned(), Secret::new("pw-section")))
        );
        assert_eq!(broker.shown, "mqtt://h:1883");
        assert!(!broker.tls());
        let other = brokers.get("mqtt://u:pw-url@other:1883").unwrap();
        assert_eq!(
            other.credentials,
            Some(("u".to_owned(), Secret::new("pw-url")))
        );
    }

    #[test]
    fn tls_comes_from_the_scheme_or_the_section() {
        let access = BrokerAccess {
            tls: Some(TlsFiles::default()),
            ..Default::default()
        };
        let brokers = Brokers::new(AccessBook::new([("mqtt://h:8883".to_owned(), access)]));
        assert!(brokers.get("mqtt://h:8883").unwrap().tls());
        assert!(brokers.get("mqtts://other").unwrap().tls());
        assert!(!brokers.get("mqtt://other").unwrap().tls());
        let unreadable = BrokerAccess {
            tls: Some(TlsFiles {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let brokers = Brokers::new(AccessBook::new([("mqtts://h".to_owned(), unreadable)]));
        let error = brokers.get("mqtts://h").err().unwrap().to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn the_same_error_is_logged_at_most_every_30_s() {
        let log = ErrorLog::new("mqtts://h:8883");
        log.failed("ingress", &"TLS: invalid peer certificate: UnknownIssuer");
        assert!(!log.due("TLS: invalid peer certificate: UnknownIssuer"));
        log.failed("egress", &"TLS: invalid peer certificate: UnknownIssuer");
        assert_eq!(log.last.lock().unwrap().since, 1);
        assert!(log.due("I/O: connection refused"));
        log.connected();
        assert!(log.due("TLS: invalid peer certificate: UnknownIssuer"));
    }
}
