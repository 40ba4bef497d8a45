//! Keeps a router's view of the directory current, and keeps the last known
//! view when the directory is unreachable.
//!
//! The watch follows the services the router routes to ([`Interest`]): a
//! long poll answered with what changed in them since the watcher's index
//! (records added or changed, records removed and why), as soon as one of
//! them changes, or empty after [`RESYNC`]; in full when the watcher starts,
//! when its services change, and after a directory restart. A router that
//! follows everything (`watch = ["*"]`) reads the whole catalog instead.
//! Lapses of half a service or more at once are held back
//! ([`super::preserve`]).
//! When the directory does not answer, the last catalog stays in force, the
//! watcher retries with jittered backoff, and [`DirectoryHealth`] reports the
//! outage and the view's age. In auto mode (no directory configured) a
//! watcher whose directory is gone tries to serve it itself on the same
//! address, so another sidecar of the host takes over from one that died.
//!
//! A restarted directory (a new epoch) starts empty and fills up as agents
//! register again, within one lease. Adopting its first, empty catalog would
//! leave routers with nowhere to send for that long, so the records of the
//! previous epoch stay in the view until their agent registers again or one
//! lease (the record's TTL) has passed (`Carryover`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::client::DirectoryClient;
use super::interest::Interest;
use super::preserve::{Preservation, SendFailsWhenGone};
use super::record::Catalog;
use super::server::{self, DirectoryRules};
use super::snapshot::Snapshot;
use super::store::Store;
use super::view::{Carryover, Records};
use super::{Changes, ClientError};
use crate::shutdown::Shutdown;
use baker_adapter_api::Backoff;

/// How long a watcher waits after the services it follows changed before it
/// asks for them, so that a burst of new services makes one request.
const NEW_SERVICES_PAUSE: Duration = Duration::from_millis(10);

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
    /// Milliseconds since the Unix epoch when the view in force was saved,
    /// while it comes from the snapshot; 0 otherwise.
    snapshot_saved_ms: AtomicU64,
    /// Instances kept by self-preservation.
    preserved: AtomicUsize,
    /// The services the view holds; `None`: every service.
    following: std::sync::Mutex<Option<Arc<BTreeSet<String>>>>,
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
    /// Where the view in force comes from: `directory`, or `snapshot` (the
    /// view saved by an earlier run, used while the directory has not
    /// answered since this process started).
    pub source: &'static str,
    /// Instances whose lease lapsed that the view keeps (self-preservation:
    /// half or more of their service lapsed within one lease).
    pub preserved_instances: usize,
    /// The services the view holds (those the router routes to, and those
    /// it is told to watch); `None`: every service.
    pub following: Option<Vec<String>>,
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
            snapshot_saved_ms: AtomicU64::new(0),
            preserved: AtomicUsize::new(0),
            following: std::sync::Mutex::new(Some(Arc::default())),
        }
    }

    fn follows(&self, services: Option<Arc<BTreeSet<String>>>) {
        *self.following.lock().unwrap_or_else(|e| e.into_inner()) = services;
    }

    fn preserving(&self, instances: usize) {
        self.preserved.store(instances, Ordering::Relaxed);
        metrics::gauge!("baker_directory_preserved_instances").set(instances as f64);
    }

    fn synced(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_sync_ms.store(ms.max(1), Ordering::Relaxed);
        self.reachable.store(true, Ordering::Relaxed);
        self.snapshot_saved_ms.store(0, Ordering::Relaxed);
    }

    fn routing_from_snapshot(&self, saved_at: SystemTime) {
        let ms = saved_at
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        self.snapshot_saved_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// True once there is a view to route from: a catalog received, or the
    /// saved one.
    pub fn has_view(&self) -> bool {
        self.last_sync_ms.load(Ordering::Relaxed) > 0
            || self.snapshot_saved_ms.load(Ordering::Relaxed) > 0
    }

    /// The current state.
    pub fn status(&self) -> DirectoryStatus {
        let last = self.last_sync_ms.load(Ordering::Relaxed);
        let saved = self.snapshot_saved_ms.load(Ordering::Relaxed);
        let view_age_secs = if saved > 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            Some(now.saturating_sub(saved) as f64 / 1000.0)
        } else {
            (last > 0).then(|| {
                let now = self.started.elapsed().as_millis() as u64;
                now.saturating_sub(last) as f64 / 1000.0
            })
        };
        DirectoryStatus {
            url: self.url.clone(),
            reachable: self.reachable.load(Ordering::Relaxed),
            view_age_secs,
            serving: self.serving.load(Ordering::Relaxed),
            source: if saved > 0 { "snapshot" } else { "directory" },
            preserved_instances: self.preserved.load(Ordering::Relaxed),
            following: (self.following.lock().unwrap_or_else(|e| e.into_inner()))
                .as_ref()
                .map(|services| services.iter().cloned().collect()),
        }
    }
}

/// What a router routes from: the directory's records of the services it
/// follows, and which services those are.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The records.
    pub catalog: Arc<Catalog>,
    /// The services the records are complete for; `None`: every service.
    pub covers: Option<Arc<BTreeSet<String>>>,
}

/// Follows the directory and publishes each new view.
pub struct Watcher {
    client: DirectoryClient,
    /// Address to serve the directory on when nothing answers (auto mode).
    takeover: Option<(SocketAddr, DirectoryRules)>,
    health: Arc<DirectoryHealth>,
    views: watch::Sender<Arc<View>>,
    snapshot: Option<Snapshot>,
    interest: Arc<Interest>,
    /// Self-preservation, off unless set.
    preservation: Option<SendFailsWhenGone>,
}

impl Watcher {
    /// A watcher of `client`'s directory, following every service. With
    /// `takeover`, the watcher serves the directory on that address
    /// whenever nothing answers there.
    pub fn new(client: DirectoryClient, takeover: Option<(SocketAddr, DirectoryRules)>) -> Self {
        let health = Arc::new(DirectoryHealth::new(client.url()));
        Self {
            client,
            takeover,
            health,
            views: watch::Sender::new(Arc::default()),
            snapshot: None,
            interest: Arc::new(Interest::all()),
            preservation: None,
        }
    }

    /// Follows only the services `interest` names.
    pub fn with_interest(mut self, interest: Arc<Interest>) -> Self {
        self.interest = interest;
        self
    }

    /// Keeps instances whose lease lapsed with half or more of their service
    /// within one lease, where `judge` says a send to them fails once they
    /// are gone (see [`super::preserve`]).
    pub fn with_self_preservation(mut self, judge: SendFailsWhenGone) -> Self {
        self.preservation = Some(judge);
        self
    }

    /// Saves every new view to `snapshot`, and routes from the saved one
    /// when the directory does not answer at start.
    pub fn with_snapshot(mut self, snapshot: Snapshot) -> Self {
        self.snapshot = Some(snapshot);
        self
    }

    /// The services a view of `catalog` covers when the directory answered
    /// for `services`.
    fn covers(&self, services: &Arc<BTreeSet<String>>) -> Option<Arc<BTreeSet<String>>> {
        (!self.interest.is_all()).then(|| services.clone())
    }

    /// Publishes `catalog` as the view of `covers`, and saves it.
    async fn publish(&self, catalog: Catalog, covers: Option<Arc<BTreeSet<String>>>) {
        self.health.follows(covers.clone());
        let catalog = Arc::new(catalog);
        self.views.send_replace(Arc::new(View {
            catalog: catalog.clone(),
            covers,
        }));
        if let Some(snapshot) = &self.snapshot {
            if let Err(error) = snapshot.save(&catalog).await {
                tracing::warn!(path = %snapshot.path().display(), %error, "cannot save the view");
            }
        }
    }

    /// The health this watcher reports.
    pub fn health(&self) -> Arc<DirectoryHealth> {
        self.health.clone()
    }

    /// A receiver of every new view.
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.views.subscribe()
    }

    /// Serves the directory here if nothing holds the takeover address.
    /// Returns true when this call started serving it.
    pub async fn try_takeover(&self, shutdown: &Shutdown) -> bool {
        let Some((addr, rules)) = self.takeover.clone() else {
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
            if let Err(error) =
                server::serve(listener, Arc::new(Store::new()), rules, shutdown).await
            {
                tracing::error!(%error, "embedded directory stopped");
            }
        });
        true
    }

    /// For a process that needs no view (an agent without a router, with no
    /// directory to take over): only says whether the directory answers,
    /// once a second, until shutdown. Following it would have every such
    /// process fetch every change; on the KV directory, each would be one
    /// more watcher of the whole bucket on the servers.
    pub async fn report_reachability(self, shutdown: Shutdown) {
        let mut outage_reported = false;
        loop {
            let Some(answered) = shutdown.run_until(self.client.ping()).await else {
                return;
            };
            self.health.reachable.store(answered, Ordering::Relaxed);
            if answered && outage_reported {
                tracing::info!(url = self.client.url(), "directory reachable again");
                outage_reported = false;
            } else if !answered && !outage_reported {
                tracing::warn!(url = self.client.url(), "directory unreachable");
                outage_reported = true;
            }
            if shutdown
                .run_until(tokio::time::sleep(Duration::from_secs(1)))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// One watch: the changes of `services` (everything when the whole
    /// directory is followed).
    async fn fetch(
        &self,
        services: &BTreeSet<String>,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Changes, ClientError> {
        if self.interest.is_all() {
            let catalog = self.client.catalog(after, wait).await?;
            Ok(Changes {
                epoch: catalog.epoch,
                index: catalog.index,
                full: true,
                instances: catalog.instances,
                removed: Vec::new(),
            })
        } else {
            self.client.watch(services, after, wait).await
        }
    }

    /// Follows the directory until shutdown.
    pub async fn run(self, shutdown: Shutdown) {
        let mut after: Option<(u64, u64)> = None;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut outage_reported = false;
        let mut carryover = Carryover::default();
        // The directory's records of the services followed.
        let mut records = Records::default();
        let mut preservation = match &self.preservation {
            Some(judge) => Preservation::new(judge.clone()),
            None => Preservation::default(),
        };
        let mut saved = self.snapshot.as_ref().and_then(Snapshot::load);
        let mut wanted = self.interest.wanted();
        // The services the last answer was for.
        let mut following: Option<Arc<BTreeSet<String>>> = None;
        loop {
            let services = wanted.borrow_and_update().clone();
            if following.as_ref() != Some(&services) && !self.interest.is_all() {
                // A new set of services is read in full.
                after = None;
            }
            // Held records must leave the view when their lease runs out, even
            // if the directory has nothing new to say by then.
            let next = [carryover.next_expiry(), preservation.next_release()];
            let wait = (next.into_iter().flatten().min())
                .map_or(RESYNC, |until| {
                    until.saturating_duration_since(Instant::now()).min(RESYNC)
                })
                .max(Duration::from_secs(1));
            let result = tokio::select! {
                result = self.fetch(&services, after, wait) => result,
                _ = wanted.changed() => {
                    // A burst of new services (a router starting under
                    // traffic) makes one request, not one each.
                    tokio::time::sleep(NEW_SERVICES_PAUSE).await;
                    continue;
                }
                _ = shutdown.cancelled() => return,
            };
            match result {
                Ok(changes) => {
                    backoff.reset();
                    self.health.synced();
                    if outage_reported {
                        tracing::info!(url = self.client.url(), "directory reachable again");
                        outage_reported = false;
                    }
                    let position = (changes.epoch, changes.index);
                    let now = Instant::now();
                    let covers = self.covers(&services);
                    if after.is_none() && self.health.serving.load(Ordering::Relaxed) {
                        if let Some(view) = saved.take() {
                            // This process has just started serving a new,
                            // empty directory: the saved view stands in for
                            // the one it replaces, for one lease.
                            tracing::info!(instances = view.catalog.instances.len(),
                                "serving a new directory; keeping the saved view's instances until they register again");
                            let catalog = carryover.view(view.catalog, &Catalog::default(), now);
                            self.views.send_replace(Arc::new(View {
                                catalog: Arc::new(catalog),
                                covers: covers.clone(),
                            }));
                        }
                    }
                    let changed = match after {
                        None => true,
                        Some(before) if changes.full => before != position,
                        Some(_) => !changes.is_empty(),
                    };
                    if after.is_some_and(|(epoch, _)| epoch != changes.epoch) {
                        tracing::info!(url = self.client.url(),
                            "the directory restarted; keeping the instances it does not know yet for one lease");
                    }
                    after = Some(position);
                    let followed =
                        |service: &str| self.interest.is_all() || services.contains(service);
                    let released = if changed {
                        preservation.hold_back(&changes, &records.0, now);
                        let removed = changes.removed.clone();
                        records.apply(changes);
                        preservation.release(&removed, &records.0, followed, now);
                        true
                    } else {
                        preservation.release(&[], &records.0, followed, now)
                    };
                    self.health.preserving(preservation.len());
                    let catalog = records.catalog(position, preservation.held());
                    if changed || released || carryover.expire(&catalog, now) {
                        let previous = self.views.borrow().catalog.clone();
                        let view = carryover.view(catalog, &previous, now);
                        self.publish(view, covers).await;
                    }
                    following = Some(services);
                }
                Err(error) => {
                    self.health.reachable.store(false, Ordering::Relaxed);
                    // Unreachable before it ever answered: the view saved by
                    // an earlier run is better than none. It is treated as
                    // the directory's last view, so a directory that comes
                    // back restarted keeps its instances for one lease.
                    if let Some(view) = saved.take().filter(|_| after.is_none()) {
                        tracing::warn!(%error, path = %self.snapshot.as_ref().map(|s| s.path().display().to_string()).unwrap_or_default(),
                            instances = view.catalog.instances.len(),
                            age_secs = view.saved_at.elapsed().map_or(0, |d| d.as_secs()),
                            "directory unreachable at start; routing from the saved view until it answers");
                        self.health.routing_from_snapshot(view.saved_at);
                        let covers = (!self.interest.is_all()).then(|| {
                            let mut saved: BTreeSet<String> = (view.catalog.instances.iter())
                                .map(|record| record.service.clone())
                                .collect();
                            saved.extend(services.iter().cloned());
                            Arc::new(saved)
                        });
                        let catalog =
                            carryover.view(view.catalog, &Catalog::default(), Instant::now());
                        self.views.send_replace(Arc::new(View {
                            catalog: Arc::new(catalog),
                            covers,
                        }));
                        outage_reported = true;
                    }
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
