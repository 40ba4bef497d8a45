//! The agent role: keeps this host's instances registered in the directory.
//!
//! Each instance has a lease that the agent renews every third of its TTL.
//! A renewal that finds the lease unknown (expired, or the directory was
//! restarted and lost its soft state) registers the instance again, so a new
//! directory rebuilds itself within one TTL. At shutdown the agent
//! deregisters its instances before the process exits.
//!
//! An instance with a health check is registered with the status its check
//! gives (`critical` until the first passing probe), and registered again
//! whenever that status changes, so routers follow within a watch round
//! trip.
//!
//! Leaving is a drain: the instance is registered `draining` (routers send
//! it nothing new), the agent waits until its inbox is empty (as far as the
//! broker can tell) or the drain timeout passes, then deregisters it.
//!
//! While an instance is registered, the agent also shows it in its broker's
//! own service discovery where the adapter has one (the NATS Services API),
//! unless told not to: routers never do, so it is listed once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::{Announced, IngressOptions};
use tokio::sync::watch;

use crate::adapters::AdapterRegistry;
use crate::config::Registered;
use crate::directory::{ClientError, DirectoryClient, InstanceRecord, Status};
use crate::shutdown::Shutdown;
use baker_adapter_api::Backoff;
use broker::{announce, endpoint_of, follow_inbox, prepare_inbox};

mod broker;

/// Keeps a set of instances registered.
pub struct Agent {
    client: DirectoryClient,
    adapters: AdapterRegistry,
    instances: Vec<Registered>,
    registered: Arc<Vec<AtomicBool>>,
    drains: DrainRequests,
    drain_timeout: Duration,
    /// The ingress its instances are announced under, if they are.
    announce: Option<IngressOptions>,
    /// The ingress prefix of this sidecar: where its instances' rejects go.
    prefix: String,
}

/// The ingress prefix an agent assumes unless told.
const DEFAULT_PREFIX: &str = "baker";

/// How long deregistration may take at shutdown.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// Time for routers to see a `draining` status before the inbox's backlog
/// is trusted to only shrink: they follow the directory within a watch
/// round trip, and sends already under way still land.
const DRAIN_PROPAGATION: Duration = Duration::from_secs(1);

/// Pause between two readings of a draining inbox's backlog.
const BACKLOG_POLL: Duration = Duration::from_millis(200);

/// Where each instance of an agent stands, for the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Registered (or being registered) and taking messages.
    Serving,
    /// Marked `draining`, waiting for its inbox to empty.
    Draining,
    /// Drained and deregistered.
    Drained,
}

struct DrainEntry {
    service: String,
    id: String,
    requested: tokio::sync::Notify,
    state: std::sync::atomic::AtomicU8,
}

/// Drain requests for an agent's instances, made through the admin API.
#[derive(Clone, Default)]
pub struct DrainRequests(Arc<Vec<DrainEntry>>);

impl DrainRequests {
    fn new(instances: &[Registered]) -> Self {
        Self(Arc::new(
            instances
                .iter()
                .map(|i| DrainEntry {
                    service: i.record.service.clone(),
                    id: i.record.id.clone(),
                    requested: tokio::sync::Notify::new(),
                    state: std::sync::atomic::AtomicU8::new(Lifecycle::Serving as u8),
                })
                .collect(),
        ))
    }

    fn entry(&self, service: &str, id: &str) -> Option<&DrainEntry> {
        self.0.iter().find(|e| e.service == service && e.id == id)
    }

    /// Asks the agent to drain the instance; false when it registers no such
    /// instance.
    pub fn request(&self, service: &str, id: &str) -> bool {
        match self.entry(service, id) {
            Some(entry) => {
                entry.requested.notify_one();
                true
            }
            None => false,
        }
    }

    /// Where the instance stands, if the agent registers it.
    pub fn lifecycle(&self, service: &str, id: &str) -> Option<Lifecycle> {
        self.entry(service, id)
            .map(|e| match e.state.load(Ordering::Relaxed) {
                0 => Lifecycle::Serving,
                1 => Lifecycle::Draining,
                _ => Lifecycle::Drained,
            })
    }

    fn set(&self, index: usize, state: Lifecycle) {
        self.0[index].state.store(state as u8, Ordering::Relaxed);
    }
}

impl Agent {
    /// An agent registering `instances` in `client`'s directory, preparing
    /// their inboxes with `adapters` first. At shutdown each instance is
    /// drained for at most `drain_timeout`.
    pub fn new(
        client: DirectoryClient,
        adapters: AdapterRegistry,
        instances: Vec<Registered>,
        drain_timeout: Duration,
    ) -> Self {
        let registered = Arc::new(instances.iter().map(|_| AtomicBool::new(false)).collect());
        let drains = DrainRequests::new(&instances);
        Self {
            client,
            adapters,
            instances,
            registered,
            drains,
            drain_timeout,
            announce: None,
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }

    /// Sends what its instances' consumers reject to the dead letters of the
    /// routers under ingress `prefix` (default `baker`).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// Shows each instance in its broker's own service discovery (where its
    /// adapter has one) while it is registered, with `ingress` as where
    /// applications send to it.
    pub fn with_announcing(mut self, ingress: IngressOptions) -> Self {
        self.announce = Some(ingress);
        self
    }

    /// True when every instance is currently registered.
    pub fn ready_flag(&self) -> Arc<Vec<AtomicBool>> {
        self.registered.clone()
    }

    /// Drains single instances on request.
    pub fn drain_requests(&self) -> DrainRequests {
        self.drains.clone()
    }

    /// Registers and renews until shutdown, or until an instance is asked to
    /// drain; then drains (marks it `draining`, waits for its inbox to
    /// empty, at most the drain timeout) and deregisters.
    pub async fn run(self, shutdown: Shutdown) {
        let agent = Arc::new(self);
        let tasks: Vec<_> = (0..agent.instances.len())
            .map(|i| tokio::spawn(agent.clone().serve(i, shutdown.clone())))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn serve(self: Arc<Self>, index: usize, shutdown: Shutdown) {
        let instance = &self.instances[index];
        let mut record = instance.record.clone();
        let (status, statuses) = watch::channel(record.status);
        let checks = shutdown.child();
        if let Some(check) = instance.check.clone() {
            tokio::spawn(check.run(
                record.service.clone(),
                record.id.clone(),
                status,
                checks.clone(),
            ));
        }
        let following = tokio::spawn(follow_inbox(self.adapters.clone(), record.clone()));
        let announcing = self.announce.as_ref().map(|ingress| {
            let announced = self.announced(&record, ingress, statuses.clone());
            tokio::spawn(announce(self.adapters.clone(), announced))
        });
        let registered = &self.registered[index];
        let serving = async {
            prepare_inbox(&self.adapters, &record, &self.prefix).await;
            keep_registered(&self.client, &mut record, registered, statuses).await
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.drains.0[index].requested.notified() => {}
            _ = serving => {}
        }
        // The check must not turn a draining instance back to passing.
        checks.trigger();
        if registered.load(Ordering::Relaxed) {
            self.drains.set(index, Lifecycle::Draining);
            self.drain(&mut record).await;
        }
        self.deregister(&record).await;
        if let Some(task) = announcing {
            task.abort();
        }
        following.abort();
        self.drains.set(index, Lifecycle::Drained);
        // Drained on purpose: no longer a reason for the process not to be
        // ready.
        registered.store(true, Ordering::Relaxed);
    }

    /// The instance of `record` as its broker's discovery shows it, its status read
    /// from `statuses` (its check's) and its drain.
    fn announced(
        &self,
        record: &InstanceRecord,
        ingress: &IngressOptions,
        statuses: watch::Receiver<Status>,
    ) -> Announced {
        let drains = self.drains.clone();
        let (service, id) = (record.service.clone(), record.id.clone());
        Announced {
            service: record.service.clone(),
            id: record.id.clone(),
            version: record.version.clone(),
            metadata: record.metadata.clone(),
            weight: record.weight,
            zone: record.zone.clone(),
            endpoint: endpoint_of(record),
            ingress: ingress.clone(),
            started: std::time::SystemTime::now(),
            status: Arc::new(move || match drains.lifecycle(&service, &id) {
                Some(Lifecycle::Serving) | None => statuses.borrow().as_str(),
                Some(_) => Status::Draining.as_str(),
            }),
        }
    }

    /// Marks the instance draining and waits until its inbox is empty, or
    /// the drain timeout.
    async fn drain(&self, record: &mut InstanceRecord) {
        let started = tokio::time::Instant::now();
        let deadline = started + self.drain_timeout;
        record.status = Status::Draining;
        let marked = tokio::time::timeout(DEREGISTER_TIMEOUT, self.client.register(record)).await;
        if !matches!(marked, Ok(Ok(()))) {
            tracing::warn!(service = %record.service, id = %record.id,
                "could not mark the instance draining; routers learn it leaves when it is deregistered");
        }
        tracing::info!(service = %record.service, id = %record.id,
            timeout_secs = self.drain_timeout.as_secs(), "draining");
        tokio::time::sleep_until(deadline.min(started + DRAIN_PROPAGATION)).await;
        let endpoint = endpoint_of(record);
        // An adapter with nothing provisioned has no backlog to see: the
        // propagation pause is all.
        let Some(adapter) = self
            .adapters
            .get(&endpoint.adapter)
            .and_then(|a| a.provisioning())
        else {
            return;
        };
        let mut empty_readings = 0;
        let mut backlog = None;
        while tokio::time::Instant::now() < deadline {
            match adapter.inbox_backlog(&endpoint).await {
                // The broker cannot tell: the propagation pause is all.
                Ok(None) => return,
                Ok(Some(0)) => {
                    empty_readings += 1;
                    // Twice in a row: a send still under way when the
                    // first reading was taken has landed by the second.
                    if empty_readings >= 2 {
                        tracing::info!(service = %record.service, id = %record.id,
                            secs = started.elapsed().as_secs_f64(), "drained: the inbox is empty");
                        return;
                    }
                }
                Ok(Some(n)) => {
                    empty_readings = 0;
                    backlog = Some(n);
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot read the inbox's backlog");
                    empty_readings = 0;
                }
            }
            tokio::time::sleep(BACKLOG_POLL).await;
        }
        tracing::warn!(service = %record.service, id = %record.id, backlog = ?backlog,
            "drain timeout: deregistering with messages still in the inbox");
    }

    async fn deregister(&self, record: &InstanceRecord) {
        let result = tokio::time::timeout(
            DEREGISTER_TIMEOUT,
            self.client.deregister(&record.service, &record.id),
        )
        .await;
        match result {
            Ok(Ok(())) => {
                tracing::info!(service = %record.service, id = %record.id, "deregistered")
            }
            Ok(Err(error)) => {
                tracing::warn!(service = %record.service, id = %record.id, %error,
                    "could not deregister; the lease will expire")
            }
            Err(_) => tracing::warn!(service = %record.service, id = %record.id,
                "deregistration timed out; the lease will expire"),
        }
    }
}

async fn register_until_done(
    client: &DirectoryClient,
    record: &InstanceRecord,
    registered: &AtomicBool,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut reported = false;
    loop {
        match client.register(record).await {
            Ok(()) => {
                registered.store(true, Ordering::Relaxed);
                tracing::info!(service = %record.service, id = %record.id, "registered");
                return;
            }
            Err(error) => {
                if !reported {
                    tracing::warn!(service = %record.service, id = %record.id, %error, "registration failed; retrying");
                    reported = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

async fn keep_registered(
    client: &DirectoryClient,
    record: &mut InstanceRecord,
    registered: &AtomicBool,
    mut statuses: watch::Receiver<Status>,
) {
    record.status = *statuses.borrow_and_update();
    register_until_done(client, record, registered).await;
    let period = Duration::from_secs(record.ttl_secs) / 3;
    let mut outage_reported = false;
    loop {
        // Jitter spreads the renewals of many agents started together.
        let jitter = period.mul_f64(fastrand::f64() * 0.1);
        tokio::select! {
            changed = statuses.changed() => {
                if changed.is_err() {
                    // The check stopped (shutdown): keep renewing meanwhile.
                    statuses = watch::channel(record.status).1;
                    continue;
                }
                record.status = *statuses.borrow_and_update();
                tracing::info!(service = %record.service, id = %record.id, status = record.status.as_str(),
                    "status changed; registering it");
                register_until_done(client, record, registered).await;
                continue;
            }
            _ = tokio::time::sleep(period - jitter) => {}
        }
        match client.renew(record).await {
            Ok(()) => {
                if outage_reported {
                    tracing::info!(service = %record.service, id = %record.id, "renewal succeeded again");
                    outage_reported = false;
                }
                registered.store(true, Ordering::Relaxed);
            }
            Err(ClientError::Owned(reason)) => {
                tracing::error!(service = %record.service, id = %record.id, %reason,
                    "another owner holds this instance; registering again once its lease ends");
                registered.store(false, Ordering::Relaxed);
                register_until_done(client, record, registered).await;
            }
            Err(ClientError::LeaseUnknown) => {
                tracing::info!(service = %record.service, id = %record.id, "lease unknown to the directory; registering again");
                registered.store(false, Ordering::Relaxed);
                register_until_done(client, record, registered).await;
            }
            Err(error) => {
                if !outage_reported {
                    tracing::warn!(service = %record.service, id = %record.id, %error, "lease renewal failed; retrying");
                    outage_reported = true;
                }
            }
        }
    }
}
