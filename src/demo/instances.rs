//! The demo's instances of one service: each consumes its inbox as an
//! application would, and has its own agent that registers it (with an HTTP
//! health check the demo can fail) and drains it when it leaves.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baker_adapter_api::{Adapter, AppClient, Endpoint, IngressOptions, Message};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::DemoError;
use crate::adapters::AdapterRegistry;
use crate::agent::Agent;
use crate::config::Registered;
use crate::directory::{DirectoryClient, EndpointRecord, InstanceRecord, Status};
use crate::health::{HealthCheck, Probe};
use crate::shutdown::Shutdown;

/// Each instance's health, by id, as its check endpoint answers it.
type HealthFlags = Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>;

/// One instance: its inbox consumer, its agent and its health.
pub(super) struct Instance {
    pub(super) id: String,
    pub(super) version: &'static str,
    pub(super) weight: u32,
    pub(super) received: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    /// Stops the agent, which then drains and deregisters the instance.
    agent_stop: Shutdown,
    agent: Option<JoinHandle<()>>,
    /// Stops the consumer, as the instance's process exits.
    consumer_stop: Shutdown,
    consumer: Option<JoinHandle<()>>,
    pub(super) gone: bool,
    /// Count and time at the last rate reading.
    pub(super) last: (u64, Instant),
    pub(super) rate: f64,
}

/// The instances of the demo's service, on one broker.
pub(super) struct Fleet {
    client: DirectoryClient,
    adapter: Arc<dyn Adapter>,
    broker_url: String,
    service: String,
    /// The routers' ingress prefix: where the instances' rejects go.
    prefix: String,
    /// Distinct sequence numbers received by any instance.
    seen: Arc<Mutex<HashSet<u64>>>,
    health_url: String,
    health: HealthFlags,
    pub(super) instances: Vec<Instance>,
}

impl Fleet {
    /// A fleet with no instance yet, and the health endpoint its checks ask.
    pub(super) async fn new(
        client: DirectoryClient,
        adapter: Arc<dyn Adapter>,
        broker_url: String,
        (service, prefix): (String, String),
        shutdown: Shutdown,
    ) -> Result<Self, DemoError> {
        let health = HealthFlags::default();
        let health_url = serve_health(health.clone(), shutdown).await?;
        Ok(Self {
            client,
            adapter,
            broker_url,
            service,
            prefix,
            seen: Arc::default(),
            health_url,
            health,
            instances: Vec::new(),
        })
    }

    fn app(&self) -> Result<&dyn AppClient, DemoError> {
        self.adapter.app_client().ok_or_else(|| {
            DemoError::Adapter(format!(
                "the {} adapter cannot play the applications",
                self.adapter.name()
            ))
        })
    }

    fn endpoint(&self, id: &str) -> Endpoint {
        Endpoint {
            adapter: self.adapter.name().to_owned(),
            broker: self.broker_url.clone(),
            inbox: self.adapter.default_inbox(&self.service, id),
        }
    }

    /// Starts an instance: its consumer, then its agent, which registers it
    /// (with a health check the demo can fail when `checked`).
    pub(super) async fn add(
        &mut self,
        id: &str,
        version: &'static str,
        weight: u32,
        checked: bool,
    ) -> Result<(), DemoError> {
        let endpoint = self.endpoint(id);
        let consumer = self
            .app()?
            .consume_inbox(&endpoint)
            .await
            .map_err(|e| DemoError::Setup(format!("consuming {}: {e}", endpoint.inbox)))?;
        let received = Arc::new(AtomicU64::new(0));
        let consumer_stop = Shutdown::new();
        let consumer = consume(
            consumer,
            received.clone(),
            self.seen.clone(),
            consumer_stop.clone(),
        );
        let healthy = Arc::new(AtomicBool::new(true));
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), healthy.clone());
        let check = checked.then(|| HealthCheck {
            probe: Probe::Http {
                method: reqwest::Method::GET,
                url: format!("{}/{id}", self.health_url),
                statuses: Vec::new(),
            },
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
        });
        let record = InstanceRecord {
            service: self.service.clone(),
            id: id.to_owned(),
            version: version.to_owned(),
            endpoint: EndpointRecord {
                adapter: endpoint.adapter,
                broker: endpoint.broker,
                inbox: endpoint.inbox,
            },
            weight,
            zone: None,
            metadata: Default::default(),
            status: if check.is_some() {
                Status::Critical
            } else {
                Status::Passing
            },
            ttl_secs: 10,
        };
        let agent = Agent::new(
            self.client.clone(),
            AdapterRegistry::builtin(),
            vec![Registered { record, check }],
            Duration::from_secs(10),
        )
        .with_prefix(&self.prefix);
        let agent_stop = Shutdown::new();
        let agent = tokio::spawn(agent.run(agent_stop.clone()));
        self.instances.push(Instance {
            id: id.to_owned(),
            version,
            weight,
            received,
            healthy,
            agent_stop,
            agent: Some(agent),
            consumer_stop,
            consumer: Some(consumer),
            gone: false,
            last: (0, Instant::now()),
            rate: 0.0,
        });
        Ok(())
    }

    fn instance(&mut self, id: &str) -> &mut Instance {
        self.instances
            .iter_mut()
            .find(|i| i.id == id)
            .expect("a demo instance")
    }

    /// Makes the instance's health check pass or fail.
    pub(super) fn set_healthy(&mut self, id: &str, healthy: bool) {
        self.instance(id).healthy.store(healthy, Ordering::Relaxed);
    }

    /// Tells the instance's agent to leave: it marks the instance draining,
    /// waits for its inbox to empty, and deregisters it. Returns the agent's
    /// task, done once it has.
    pub(super) fn begin_drain(&mut self, id: &str) -> Option<JoinHandle<()>> {
        let instance = self.instance(id);
        instance.agent_stop.trigger();
        instance.agent.take()
    }

    /// Stops a drained instance's consumer, as its process exits.
    pub(super) async fn finish_drain(&mut self, id: &str) {
        let instance = self.instance(id);
        instance.consumer_stop.trigger();
        if let Some(consumer) = instance.consumer.take() {
            let _ = consumer.await;
        }
        instance.gone = true;
        instance.rate = 0.0;
    }

    /// Stops the consumers still running.
    pub(super) async fn stop(&mut self) {
        for instance in &mut self.instances {
            instance.consumer_stop.trigger();
            if let Some(consumer) = instance.consumer.take() {
                let _ = consumer.await;
            }
        }
    }

    /// Removes what the run made on a real broker (its inboxes and its
    /// ingress), so that a demo leaves nothing behind. Only empty ones go: a
    /// message is never thrown away.
    pub(super) async fn clean_up(&self, ingress: &IngressOptions) {
        let Some(provisioning) = self.adapter.provisioning() else {
            return;
        };
        for instance in &self.instances {
            if let Err(error) = provisioning
                .remove_inbox(&self.endpoint(&instance.id))
                .await
            {
                tracing::warn!(%error, "could not remove a demo inbox");
            }
        }
        if let Err(error) = provisioning.remove_ingress(&self.broker_url, ingress).await {
            tracing::warn!(%error, "could not remove the demo's ingress");
        }
    }

    /// Messages received, counting each once.
    pub(super) fn distinct(&self) -> u64 {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// Messages received, duplicates included.
    pub(super) fn received(&self) -> u64 {
        self.instances
            .iter()
            .map(|i| i.received.load(Ordering::Relaxed))
            .sum()
    }
}

/// Counts what the consumer receives (each payload is a sequence number)
/// until `stop`, then exits as a well-behaved consumer does: it takes nothing
/// new and finishes what it already has.
fn consume(
    mut consumer: Box<dyn baker_adapter_api::InboxConsumer>,
    received: Arc<AtomicU64>,
    seen: Arc<Mutex<HashSet<u64>>>,
    stop: Shutdown,
) -> JoinHandle<()> {
    let count = move |message: Message| {
        received.fetch_add(1, Ordering::Relaxed);
        if let Some(seq) = std::str::from_utf8(&message.payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            seen.lock().unwrap_or_else(|e| e.into_inner()).insert(seq);
        }
    };
    tokio::spawn(async move {
        while let Some(Some(message)) = stop.run_until(consumer.next()).await {
            count(message);
        }
        consumer.close().await;
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
        {
            count(message);
        }
    })
}

/// An HTTP endpoint answering `/health/{id}` with 200 or 503, as each
/// instance's flag says. Returns its URL.
async fn serve_health(flags: HealthFlags, shutdown: Shutdown) -> Result<String, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Setup(format!("cannot bind the health endpoint: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let app = axum::Router::new().route(
        "/health/{id}",
        axum::routing::get(
            move |axum::extract::Path(id): axum::extract::Path<String>| {
                let healthy = flags
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)
                    .is_some_and(|f| f.load(Ordering::Relaxed));
                async move {
                    if healthy {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            },
        ),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(format!("http://{addr}/health"))
}
