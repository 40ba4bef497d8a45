//! Connections: one async-nats client per server list, opened on first use
//! and reconnected by async-nats itself, whose connection events are logged
//! and counted here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::Client;
use baker_adapter_api::{AdapterError, BrokerHealth, IngressStatus};

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
        let broker = url.to_owned();
        // retry_on_initial_connect: an unreachable broker must not stall the
        // router; async-nats keeps reconnecting with backoff and buffers
        // publishes meanwhile (bounded by its client capacity).
        let client = async_nats::ConnectOptions::new()
            .name("baker-mq")
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let broker = broker.clone();
                async move { report_event(&broker, event) }
            })
            .connect(servers)
            .await
            .map_err(|e| AdapterError::Broker {
                url: url.to_owned(),
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
        self.lock_clients()
            .iter()
            .map(|(url, client)| BrokerHealth {
                adapter: "nats",
                broker: baker_adapter_api::redact_url(url),
                connected: client.connection_state() == async_nats::connection::State::Connected,
            })
            .collect()
    }
}

/// Seconds (since the Unix epoch) of the last slow-consumer warning.
static LAST_SLOW_CONSUMER_LOG: AtomicU64 = AtomicU64::new(0);

/// Logs connection events. Slow-consumer events (one per message NATS
/// dropped because this process fell behind) are counted in
/// `baker_nats_slow_consumer_total` and logged at most every 10 s.
fn report_event(broker: &str, event: async_nats::Event) {
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
        async_nats::Event::Connected => tracing::info!(%broker, "connected to NATS"),
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
