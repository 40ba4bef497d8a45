//! Keeps a router's view of the directory current, and keeps the last known
//! view when the directory is unreachable.
//!
//! The watch is a long poll that returns the whole catalog as soon as it
//! changes, or after [`RESYNC`] otherwise, so every answer is also a full
//! resync: a change missed for any reason is repaired within that period.
//! When the directory does not answer, the last catalog stays in force, the
//! watcher retries with jittered backoff, and [`DirectoryHealth`] reports the
//! outage and the view's age. In auto mode (no directory configured) a
//! watcher whose directory is gone tries to serve it itself on the same
//! address, so another sidecar of the host takes over from one that died.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::client::DirectoryClient;
use super::record::Catalog;
use super::server;
use super::store::Store;
use crate::backoff::Backoff;
use crate::shutdown::Shutdown;

/// Longest time between two full catalogs while the directory is reachable.
pub const RESYNC: Duration = Duration::from_secs(10);

/// What the watcher knows about the directory's reachability.
#[derive(Debug)]
pub struct DirectoryHealth {
    url: String,
    started: Instant,
    reachable: AtomicBool,
    /// Milliseconds after `started` of the last successful sync; 0 = never.
    last_sync_ms: AtomicU64,
    serving: AtomicBool,
}

/// A snapshot of [`DirectoryHealth`] for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct DirectoryStatus {
    /// Directory URL.
    pub url: String,
    /// Whether the last call to it succeeded.
    pub reachable: bool,
    /// Seconds since the view was last confirmed; `None` before the first sync.
    pub view_age_secs: Option<f64>,
    /// Whether this process serves the directory itself.
    pub serving: bool,
}

impl DirectoryHealth {
    /// Health of the directory at `url`, not yet synced.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            started: Instant::now(),
            reachable: AtomicBool::new(false),
            last_sync_ms: AtomicU64::new(0),
            serving: AtomicBool::new(false),
        }
    }

    fn synced(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_sync_ms.store(ms.max(1), Ordering::Relaxed);
        self.reachable.store(true, Ordering::Relaxed);
    }

    /// True once a catalog has been received.
    pub fn has_view(&self) -> bool {
        self.last_sync_ms.load(Ordering::Relaxed) > 0
    }

    /// The current state.
    pub fn status(&self) -> DirectoryStatus {
        let last = self.last_sync_ms.load(Ordering::Relaxed);
        DirectoryStatus {
            url: self.url.clone(),
            reachable: self.reachable.load(Ordering::Relaxed),
            view_age_secs: (last > 0).then(|| {
                let now = self.started.elapsed().as_millis() as u64;
                now.saturating_sub(last) as f64 / 1000.0
            }),
            serving: self.serving.load(Ordering::Relaxed),
        }
    }
}

/// Follows the directory and publishes each new catalog.
pub struct Watcher {
    client: DirectoryClient,
    /// Address to serve the directory on when nothing answers (auto mode).
    takeover: Option<SocketAddr>,
    health: Arc<DirectoryHealth>,
    catalogs: watch::Sender<Arc<Catalog>>,
}

impl Watcher {
    /// A watcher of `client`'s directory. With `takeover`, the watcher serves
    /// the directory on that address whenever nothing answers there.
    pub fn new(client: DirectoryClient, takeover: Option<SocketAddr>) -> Self {
        let health = Arc::new(DirectoryHealth::new(client.url()));
        Self {
            client,
            takeover,
            health,
            catalogs: watch::Sender::new(Arc::new(Catalog::default())),
        }
    }

    /// The health this watcher reports.
    pub fn health(&self) -> Arc<DirectoryHealth> {
        self.health.clone()
    }

    /// A receiver of every new catalog.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Catalog>> {
        self.catalogs.subscribe()
    }

    /// Serves the directory here if nothing holds the takeover address.
    /// Returns true when this call started serving it.
    pub async fn try_takeover(&self, shutdown: &Shutdown) -> bool {
        let Some(addr) = self.takeover else {
            return false;
        };
        if self.health.serving.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(listener) = TcpListener::bind(addr).await else {
            return false;
        };
        tracing::info!(%addr, "no directory answered; serving it from this process");
        self.health.serving.store(true, Ordering::Relaxed);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) = server::serve(listener, Arc::new(Store::new()), shutdown).await {
                tracing::error!(%error, "embedded directory stopped");
            }
        });
        true
    }

    /// Follows the directory until shutdown.
    pub async fn run(self, shutdown: Shutdown) {
        let mut after: Option<(u64, u64)> = None;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut outage_reported = false;
        loop {
            let result = match shutdown.run_until(self.client.catalog(after, RESYNC)).await {
                Some(result) => result,
                None => return,
            };
            match result {
                Ok(catalog) => {
                    backoff.reset();
                    self.health.synced();
                    if outage_reported {
                        tracing::info!(url = self.client.url(), "directory reachable again");
                        outage_reported = false;
                    }
                    let position = (catalog.epoch, catalog.index);
                    if after != Some(position) {
                        after = Some(position);
                        self.catalogs.send_replace(Arc::new(catalog));
                    }
                }
                Err(error) => {
                    self.health.reachable.store(false, Ordering::Relaxed);
                    if !outage_reported {
                        tracing::warn!(%error, "directory unreachable; routing from the last known view");
                        outage_reported = true;
                    }
                    if self.try_takeover(&shutdown).await {
                        continue;
                    }
                    if shutdown
                        .run_until(tokio::time::sleep(backoff.next_delay()))
                        .await
                        .is_none()
                    {
                        return;
                    }
                }
            }
        }
    }
}
