//! Connections: one async-nats client per server list, opened on first use
//! and reconnected by async-nats itself, whose connection events are logged
//! and counted here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use baker_adapter_api::{AdapterError, BrokerAccess, BrokerHealth, IngressStatus};

use crate::url::{connection_url, server_addrs};
use crate::NatsAdapter;

impl NatsAdapter {
    pub(crate) async fn client(&self, url: &str) -> Result<Client, AdapterError> {
        // The query holds Baker's settings (`inbox=jetstream`), not the
        // connection's: one connection per server.
        let url = connection_url(url);
        if let Some(client) = self.lock_clients().get(url) {
            return Ok(client.clone());
        }
        let servers = server_addrs(url).map_err(|e| e.for_url(url))?;
        let broker = baker_adapter_api::redact_url(url);
        let options = connect_options(self.access.get(url), url)?;
        let errors = Arc::new(Mutex::new(RepeatedError::default()));
        (self.errors.lock().unwrap_or_else(|e| e.into_inner()))
            .entry(url.to_owned())
            .or_insert_with(|| errors.clone());
        // retry_on_initial_connect: an unreachable broker must not stall the
        // router; async-nats keeps reconnecting with backoff and buffers
        // publishes meanwhile (bounded by its client capacity).
        let client = options
            .name("baker-mq")
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let (broker, errors) = (broker.clone(), errors.clone());
                async move { report_event(&broker, &errors, event) }
            })
            .connect(servers)
            .await
            .map_err(|e| AdapterError::Broker {
                url: baker_adapter_api::redact_url(url),
                reason: e.to_string(),
            })?;
        Ok(self
            .lock_clients()
            .entry(url.to_owned())
            .or_insert(client)
            .clone())
    }

    pub(crate) fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl NatsAdapter {
    /// Flushes every connection.
    pub(crate) async fn flush_all(&self) {
        let clients: Vec<(String, Client)> = self
            .lock_clients()
            .iter()
            .map(|(url, client)| (url.clone(), client.clone()))
            .collect();
        for (url, client) in clients {
            if let Err(error) = client.flush().await {
                tracing::warn!(broker = %url, %error, "could not flush before exit");
            }
        }
    }

    /// The state of every connection.
    pub(crate) fn connections(&self) -> Vec<BrokerHealth> {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        self.lock_clients()
            .iter()
            .map(|(url, client)| BrokerHealth {
                adapter: "nats",
                broker: baker_adapter_api::redact_url(url),
                connected: client.connection_state() == async_nats::connection::State::Connected,
                refused: errors.get(url).and_then(|e| {
                    (e.lock().unwrap_or_else(|e| e.into_inner()))
                        .refused
                        .clone()
                }),
            })
            .collect()
    }
}

/// A connection's options with the credentials and TLS of `access` (the
/// configuration's section for the broker at `url`, else the credentials
/// a configured URL carried: `user:password@`, `token@`; see
/// [`baker_adapter_api::AccessBook`]).
pub fn connect_options(
    access: Option<&BrokerAccess>,
    url: &str,
) -> Result<async_nats::ConnectOptions, AdapterError> {
    let mut options = async_nats::ConnectOptions::new();
    let Some(access) = access else {
        if url.starts_with("tls://") {
            baker_adapter_api::tls::install_crypto_provider();
        }
        return Ok(options);
    };
    let invalid = |reason: String| AdapterError::InvalidBroker {
        url: baker_adapter_api::redact_url(url),
        reason,
    };
    match (&access.username, &access.password) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        // `nats://TOKEN@host`, as async-nats reads a URL.
        (Some(token), None) => options = options.token(token.clone()),
        (None, Some(_)) => return Err(invalid("a password needs a username".to_owned())),
        (None, None) => {}
    }
    if let Some(token) = &access.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(seed) = &access.nkey_seed {
        options = options.nkey(seed.expose().trim().to_owned());
    }
    if let Some(credentials) = &access.credentials {
        options = options
            .credentials(credentials.expose())
            .map_err(|e| invalid(format!("credentials: {e}")))?;
    }
    if let Some(tls) = &access.tls {
        let config = tls.client_config().map_err(|e| invalid(e.to_string()))?;
        options = options.require_tls(true).tls_client_config(config);
    } else if url.starts_with("tls://") {
        baker_adapter_api::tls::install_crypto_provider();
    }
    Ok(options)
}

/// Seconds (since the Unix epoch) of the last slow-consumer warning.
static LAST_SLOW_CONSUMER_LOG: AtomicU64 = AtomicU64::new(0);

/// The last connection error logged, to log a failure that repeats (each
/// reconnection attempt while the broker refuses) at most every 30 s.
#[derive(Default)]
pub(crate) struct RepeatedError {
    text: String,
    logged: Option<Instant>,
    since: u64,
    /// The last error, while it says the broker refuses this client.
    refused: Option<String>,
}

/// Logs connection events. Slow-consumer events (one per message NATS
/// dropped because this process fell behind) are counted in
/// `baker_nats_slow_consumer_total` and logged at most every 10 s; the same
/// connection error again is logged at most every 30 s, with how many times
/// it came meanwhile.
fn report_event(broker: &str, errors: &Mutex<RepeatedError>, event: async_nats::Event) {
    match event {
        async_nats::Event::SlowConsumer(_) => {
            metrics::counter!("baker_nats_slow_consumer_total", "broker" => broker.to_owned())
                .increment(1);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = LAST_SLOW_CONSUMER_LOG.load(Ordering::Relaxed);
            if now >= last + 10
                && LAST_SLOW_CONSUMER_LOG
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(%broker, "NATS dropped messages for this slow consumer (see baker_nats_slow_consumer_total)");
            }
        }
        async_nats::Event::Connected => {
            *errors.lock().unwrap_or_else(|e| e.into_inner()) = RepeatedError::default();
            tracing::info!(%broker, "connected to NATS");
        }
        async_nats::Event::ClientError(error) => {
            let text = error.to_string();
            let mut last = errors.lock().unwrap_or_else(|e| e.into_inner());
            let refused = baker_adapter_api::is_refusal(&text);
            last.refused = refused.then(|| text.clone());
            let quiet = last.text == text
                && last
                    .logged
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(30));
            if quiet {
                last.since += 1;
                return;
            }
            let repeated = std::mem::take(&mut last.since);
            last.text.clone_from(&text);
            last.logged = Some(Instant::now());
            if refused {
                tracing::warn!(%broker, error = %text, repeated,
                    "cannot connect to NATS: the broker refuses this sidecar (credentials or TLS identity; check its [[brokers]] section); retrying");
            } else {
                tracing::warn!(%broker, error = %text, repeated, "cannot connect to NATS; retrying");
            }
        }
        other => tracing::warn!(%broker, event = %other, "NATS connection event"),
    }
}

/// Follows `client`'s connection: async-nats reconnects by itself and
/// resubscribes, so the connection is the ingress's state.
pub(crate) fn connection_status(client: &Client) -> IngressStatus {
    let client = client.clone();
    IngressStatus::new(move || {
        client.connection_state() == async_nats::connection::State::Connected
    })
}
