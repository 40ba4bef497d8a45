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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::Endpoint;
use tokio::sync::watch;

use crate::adapters::AdapterRegistry;
use crate::backoff::Backoff;
use crate::config::Registered;
use crate::directory::{ClientError, DirectoryClient, InstanceRecord};
use crate::shutdown::Shutdown;

/// Keeps a set of instances registered.
pub struct Agent {
    client: DirectoryClient,
    adapters: AdapterRegistry,
    instances: Vec<Registered>,
    registered: Arc<Vec<AtomicBool>>,
}

/// How long deregistration may take at shutdown.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

impl Agent {
    /// An agent registering `instances` in `client`'s directory, preparing
    /// their inboxes with `adapters` first.
    pub fn new(
        client: DirectoryClient,
        adapters: AdapterRegistry,
        instances: Vec<Registered>,
    ) -> Self {
        let registered = Arc::new(instances.iter().map(|_| AtomicBool::new(false)).collect());
        Self {
            client,
            adapters,
            instances,
            registered,
        }
    }

    /// True when every instance is currently registered.
    pub fn ready_flag(&self) -> Arc<Vec<AtomicBool>> {
        self.registered.clone()
    }

    /// Registers and renews until shutdown, then deregisters.
    pub async fn run(self, shutdown: Shutdown) {
        let mut tasks = Vec::new();
        for (i, instance) in self.instances.iter().enumerate() {
            let record = instance.record.clone();
            let (status, statuses) = watch::channel(record.status);
            if let Some(check) = instance.check.clone() {
                tasks.push(tokio::spawn(check.run(
                    record.service.clone(),
                    record.id.clone(),
                    status,
                    shutdown.clone(),
                )));
            }
            let client = self.client.clone();
            let adapters = self.adapters.clone();
            let registered = self.registered.clone();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                shutdown
                    .run_until(async {
                        prepare_inbox(&adapters, &record).await;
                        keep_registered(&client, record, &registered[i], statuses).await
                    })
                    .await;
            }));
        }
        shutdown.cancelled().await;
        for task in tasks {
            let _ = task.await;
        }
        for record in self.instances.iter().map(|i| &i.record) {
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
}

/// Creates what the instance's inbox needs on its broker (an AMQP queue, for
/// instance), retrying until it succeeds: registering an instance whose inbox
/// does not exist would send its messages nowhere.
async fn prepare_inbox(adapters: &AdapterRegistry, record: &InstanceRecord) {
    let Some(adapter) = adapters.get(&record.endpoint.adapter) else {
        // Config validation refuses unknown adapters; nothing to prepare.
        return;
    };
    let endpoint = Endpoint {
        adapter: record.endpoint.adapter.clone(),
        broker: record.endpoint.broker.clone(),
        inbox: record.endpoint.inbox.clone(),
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut reported = false;
    while let Err(error) = adapter.prepare_inbox(&endpoint, &record.metadata).await {
        if !reported {
            tracing::warn!(service = %record.service, id = %record.id, %error,
                "cannot prepare the instance's inbox; retrying before registering");
            reported = true;
        }
        tokio::time::sleep(backoff.next_delay()).await;
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
    mut record: InstanceRecord,
    registered: &AtomicBool,
    mut statuses: watch::Receiver<crate::directory::Status>,
) {
    record.status = *statuses.borrow_and_update();
    register_until_done(client, &record, registered).await;
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
                register_until_done(client, &record, registered).await;
                continue;
            }
            _ = tokio::time::sleep(period - jitter) => {}
        }
        match client.renew(&record.service, &record.id).await {
            Ok(()) => {
                if outage_reported {
                    tracing::info!(service = %record.service, id = %record.id, "renewal succeeded again");
                    outage_reported = false;
                }
                registered.store(true, Ordering::Relaxed);
            }
            Err(ClientError::LeaseUnknown) => {
                tracing::info!(service = %record.service, id = %record.id, "lease unknown to the directory; registering again");
                registered.store(false, Ordering::Relaxed);
                register_until_done(client, &record, registered).await;
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
