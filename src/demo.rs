//! `baker-mq demo`: the whole story in one process, with no broker (the
//! in-process memory broker) or against a real one (`--adapter nats|amqp|mqtt`).
//!
//! The embedded directory, a router, and instances of one service, each with
//! its own agent (and, for v1, an HTTP health check); the publisher and the
//! instances use the adapter as applications would. While messages flow at a steady rate the demo walks
//! through discovery and load balancing, a failing health check, a v2
//! canary, the full rollout and the drain of v1, showing a live table of
//! each instance's counts and rates, and ends with a summary: sent,
//! delivered, lost, per version.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baker_adapter_api::{Adapter, Destination, Endpoint, IngressOptions, Message};
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::adapters::AdapterRegistry;
use crate::agent::Agent;
use crate::config::Registered;
use crate::directory::{
    server, store::Store, DirectoryClient, EndpointRecord, InstanceRecord, Status, Watcher,
};
use crate::health::{HealthCheck, Probe};
use crate::router::{JourneyConfig, PolicyKind, RoutingTable};
use crate::shutdown::Shutdown;
use crate::sidecar::{start_router, RouterParts, RouterSpec};

/// Errors that stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Local setup failed.
    #[error("demo setup failed: {0}")]
    Setup(String),
    /// Some messages were lost.
    #[error("{lost} of {sent} messages were lost")]
    Lost { lost: u64, sent: u64 },
    /// The adapter is not in this build, or cannot play applications.
    #[error("{0}")]
    Adapter(String),
}

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Messages published per second.
    pub rate: u64,
    /// How long each step of the story lasts.
    pub phase: Duration,
    /// Adapter of the broker the story runs on (`memory`: in-process).
    pub adapter: String,
    /// Broker URL; `None` for the adapter's default.
    pub broker: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            rate: 2000,
            phase: Duration::from_secs(2),
            adapter: "memory".to_owned(),
            broker: None,
        }
    }
}

/// What the demo measured.
#[derive(Debug)]
pub struct Summary {
    /// Messages the router took from the publisher.
    pub sent: u64,
    /// Messages the instances received.
    pub delivered: u64,
    /// Received per version.
    pub per_version: Vec<(String, u64)>,
    /// Messages received more than once (at-least-once brokers).
    pub duplicates: u64,
}

/// One instance: its inbox consumer, its agent and its health.
struct Instance {
    id: String,
    version: &'static str,
    weight: u32,
    received: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    /// Stops the agent, which then drains and deregisters the instance.
    agent_stop: Shutdown,
    agent: Option<JoinHandle<()>>,
    /// Stops the consumer, as the instance's process exits.
    consumer_stop: Shutdown,
    consumer: Option<JoinHandle<()>>,
    gone: bool,
    /// Count and time at the last rate reading.
    last: (u64, Instant),
    rate: f64,
}

/// Everything the story acts on.
struct Demo {
    client: DirectoryClient,
    adapter: Arc<dyn Adapter>,
    broker_url: String,
    service: String,
    /// Distinct sequence numbers received by any instance.
    seen: Arc<std::sync::Mutex<HashSet<u64>>>,
    health_url: String,
    health: Arc<std::sync::Mutex<HashMap<String, Arc<AtomicBool>>>>,
    instances: Vec<Instance>,
    router: RouterParts,
    sent: Arc<AtomicU64>,
    display: Display,
}

/// Prints the live table: redrawn in place on a terminal, once per step in a
/// log.
struct Display {
    terminal: bool,
    drawn_lines: usize,
}

impl Display {
    fn show(&mut self, text: &str, step_done: bool) {
        if self.terminal {
            let mut out = std::io::stdout().lock();
            if self.drawn_lines > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn_lines);
            }
            for line in text.lines() {
                let _ = writeln!(out, "\x1b[2K{line}");
            }
            let _ = out.flush();
            self.drawn_lines = if step_done { 0 } else { text.lines().count() };
        } else if step_done {
            println!("{text}");
        }
    }
}

/// An HTTP endpoint answering `/health/{id}` with 200 or 503, as each
/// instance's flag says.
async fn serve_health(
    flags: Arc<std::sync::Mutex<HashMap<String, Arc<AtomicBool>>>>,
    shutdown: Shutdown,
) -> Result<String, DemoError> {
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

impl Demo {
    /// Starts an instance: its consumer, then its agent, which registers it.
    async fn add_instance(
        &mut self,
        id: &str,
        version: &'static str,
        weight: u32,
        checked: bool,
    ) -> Result<(), DemoError> {
        let inbox = self.adapter.default_inbox(&self.service, id);
        let endpoint = Endpoint {
            adapter: self.adapter.name().to_owned(),
            broker: self.broker_url.clone(),
            inbox: inbox.clone(),
        };
        let mut consumer = self
            .adapter
            .consume_inbox(&endpoint)
            .await
            .map_err(|e| DemoError::Setup(format!("consuming {inbox}: {e}")))?;
        let received = Arc::new(AtomicU64::new(0));
        let consumer_stop = Shutdown::new();
        let consumer = {
            let (received, stop, seen) =
                (received.clone(), consumer_stop.clone(), self.seen.clone());
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
                // The process exits as a well-behaved consumer does: it takes
                // nothing new and finishes what it already has.
                consumer.close().await;
                while let Ok(Some(message)) =
                    tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
                {
                    count(message);
                }
            })
        };
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
                inbox,
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
        );
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

    /// Waits until the router routes to exactly `ids`.
    async fn wait_routed(&mut self, ids: &[&str], title: &str) -> Result<(), DemoError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let table = self.router.table.load();
            let mut routed: Vec<String> = table
                .service(&self.service)
                .map(|s| s.instances.iter().map(|i| i.record.id.clone()).collect())
                .unwrap_or_default();
            routed.sort();
            let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            want.sort();
            if routed == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DemoError::Setup(format!(
                    "{title}: the router routes to {routed:?}, not {want:?}, after 10 s"
                )));
            }
            self.refresh(title, false);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lets traffic flow for `length`, redrawing the table.
    async fn run_for(&mut self, length: Duration, title: &str) {
        let end = Instant::now() + length;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.refresh(title, false);
        }
    }

    /// Drains an instance (its agent marks it draining, waits for its inbox
    /// to empty, deregisters it), then stops it.
    async fn drain(&mut self, id: &str, title: &str) {
        let instance = self.instance(id);
        instance.agent_stop.trigger();
        let mut agent = instance.agent.take();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.refresh(title, false);
            if agent.as_ref().is_none_or(JoinHandle::is_finished) {
                break;
            }
        }
        if let Some(agent) = agent.take() {
            let _ = agent.await;
        }
        let instance = self.instance(id);
        instance.consumer_stop.trigger();
        if let Some(consumer) = instance.consumer.take() {
            let _ = consumer.await;
        }
        instance.gone = true;
        instance.rate = 0.0;
    }

    /// Stops the consumers still running, then removes what the run made on
    /// a real broker (its inboxes and its ingress), so that a demo leaves
    /// nothing behind. Only empty ones go: a message is never thrown away.
    async fn clean_up(&mut self, ingress: &IngressOptions) {
        for instance in &mut self.instances {
            instance.consumer_stop.trigger();
            if let Some(consumer) = instance.consumer.take() {
                let _ = consumer.await;
            }
        }
        for instance in &self.instances {
            let endpoint = Endpoint {
                adapter: self.adapter.name().to_owned(),
                broker: self.broker_url.clone(),
                inbox: self.adapter.default_inbox(&self.service, &instance.id),
            };
            if let Err(error) = self.adapter.remove_inbox(&endpoint).await {
                tracing::warn!(%error, "could not remove a demo inbox");
            }
        }
        if let Err(error) = self.adapter.remove_ingress(&self.broker_url, ingress).await {
            tracing::warn!(%error, "could not remove the demo's ingress");
        }
    }

    /// Messages received, counting each once.
    fn distinct(&self) -> u64 {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// Messages received, duplicates included.
    fn received(&self) -> u64 {
        self.instances
            .iter()
            .map(|i| i.received.load(Ordering::Relaxed))
            .sum()
    }

    fn refresh(&mut self, title: &str, step_done: bool) {
        let table = self.router.table.load_full();
        let now = Instant::now();
        for instance in &mut self.instances {
            let count = instance.received.load(Ordering::Relaxed);
            let elapsed = now.duration_since(instance.last.1).as_secs_f64();
            if elapsed >= 0.5 {
                instance.rate = (count - instance.last.0) as f64 / elapsed;
                instance.last = (count, now);
            }
        }
        let text = self.render(title, &table);
        self.display.show(&text, step_done);
    }

    fn render(&self, title: &str, table: &RoutingTable) -> String {
        let mut text = format!("{title}\n");
        text.push_str(&format!(
            "  {:<14} {:>7} {:>6}  {:<10} {:>9} {:>8}\n",
            "INSTANCE", "VERSION", "WEIGHT", "STATUS", "RECEIVED", "MSG/S"
        ));
        for instance in &self.instances {
            let record = table
                .catalog
                .instances
                .iter()
                .find(|r| r.service == self.service && r.id == instance.id);
            let status = match (instance.gone, record) {
                (true, _) => "left",
                (false, Some(record)) => record.status.as_str(),
                (false, None) => "joining",
            };
            let weight = record.map_or(instance.weight, |r| r.weight);
            text.push_str(&format!(
                "  {:<14} {:>7} {:>6}  {:<10} {:>9} {:>8.0}\n",
                instance.id,
                instance.version,
                weight,
                status,
                instance.received.load(Ordering::Relaxed),
                instance.rate
            ));
        }
        text.push_str(&format!(
            "  sent {}  delivered {}\n",
            self.sent.load(Ordering::Relaxed),
            self.distinct()
        ));
        text
    }
}

/// Runs the demo, printing the story to stdout.
pub async fn run(options: DemoOptions) -> Result<Summary, DemoError> {
    let adapters = AdapterRegistry::builtin();
    let adapter = adapters.get(&options.adapter).cloned().ok_or_else(|| {
        DemoError::Adapter(format!(
            "adapter {:?} is not built into this baker-mq; it has: {}",
            options.adapter,
            adapters.names().join(", ")
        ))
    })?;
    let shutdown = Shutdown::new();
    let run_id = format!("{:04x}", fastrand::u16(..));
    // In process, a broker of its own; on a real broker, names of this run's
    // own, so that it neither meets other traffic nor another demo.
    let in_process = options.adapter == "memory";
    let broker_url = match (&options.broker, in_process) {
        (Some(url), _) => url.clone(),
        (None, true) => format!("{}demo-{run_id}", baker_adapter_memory::SCHEME),
        (None, false) => adapter.default_broker().to_owned(),
    };
    let (service, prefix, group) = if in_process {
        ("greeter".to_owned(), "baker".to_owned(), "baker".to_owned())
    } else {
        (
            format!("greeter-{run_id}"),
            "baker-demo".to_owned(),
            format!("demo-{run_id}"),
        )
    };

    // The embedded directory, on a free loopback port.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Setup(format!("cannot bind the directory: {e}")))?;
    let directory_url = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| DemoError::Setup(e.to_string()))?
    );
    tokio::spawn(server::serve(
        listener,
        Arc::new(Store::new()),
        shutdown.clone(),
    ));
    let health = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let health_url = serve_health(health.clone(), shutdown.clone()).await?;
    let where_ = if in_process { " (in-process)" } else { "" };
    println!("directory  {directory_url} (embedded)");
    println!(
        "broker     {}{where_}",
        baker_adapter_api::redact_url(&broker_url)
    );
    let ingress_address = match options.adapter.as_str() {
        "amqp" => format!("exchange {prefix}, routing key {service}.hello"),
        "mqtt" => format!("{prefix}/{service}/hello"),
        _ => format!("{prefix}.{service}.hello"),
    };
    println!(
        "traffic    {} msg/s to {ingress_address}, policy weighted\n",
        options.rate
    );

    // The router, as a sidecar runs it.
    let ingress_options = IngressOptions {
        prefix: prefix.clone(),
        queue_group: group,
        buffer: 1024,
    };
    let client = DirectoryClient::http(&directory_url);
    let watcher = Watcher::new(client.clone(), None);
    let catalogs = watcher.subscribe();
    tokio::spawn(watcher.run(shutdown.clone()));
    let router = start_router(
        RouterSpec {
            adapter: options.adapter.clone(),
            broker: broker_url.clone(),
            ingress: ingress_options.clone(),
            journey: JourneyConfig {
                max_attempts: 3,
                outlier: Default::default(),
                max_payload: 1024 * 1024,
            },
            max_in_flight: 1024,
            policies: HashMap::from([(service.clone(), PolicyKind::Weighted)]),
            version_routing: HashMap::new(),
        },
        adapters,
        catalogs,
        shutdown.clone(),
    )
    .map_err(|e| DemoError::Setup(e.to_string()))?;

    let mut demo = Demo {
        client,
        adapter: adapter.clone(),
        broker_url: broker_url.clone(),
        service: service.clone(),
        seen: Arc::default(),
        health_url,
        health,
        instances: Vec::new(),
        router,
        sent: Arc::new(AtomicU64::new(0)),
        display: Display {
            terminal: std::io::stdout().is_terminal(),
            drawn_lines: 0,
        },
    };

    // 1. Discovery: three v1 instances register and share the load.
    let v1 = ["greeter-v1-a", "greeter-v1-b", "greeter-v1-c"];
    for id in v1 {
        demo.add_instance(id, "1", 30, true).await?;
    }
    let title = "1/6 discovery: three v1 instances register; the router finds them";
    demo.wait_routed(&v1, title).await?;
    let ready = Instant::now() + Duration::from_secs(20);
    while !demo.router.ingress.is_subscribed() {
        if Instant::now() > ready {
            return Err(DemoError::Setup(format!(
                "the router could not subscribe to the ingress on {} within 20 s",
                baker_adapter_api::redact_url(&broker_url)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Steady traffic from here to the end; each message's payload is its
    // sequence number, so the instances can tell what arrived.
    let publishing = Shutdown::new();
    let refused = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (adapter, broker_url, sent, refused, stop) = (
            adapter.clone(),
            broker_url.clone(),
            demo.sent.clone(),
            refused.clone(),
            publishing.clone(),
        );
        let destination = Destination {
            service: service.clone(),
            topic: "hello".to_owned(),
        };
        let rate = options.rate.max(10);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate / 100).max(1);
            let mut seq = 0u64;
            while stop.run_until(tick.tick()).await.is_some() {
                let batch = (seq..seq + per_tick).map(|n| {
                    let message = Message {
                        payload: Bytes::from(n.to_string()),
                        ..Default::default()
                    };
                    let (adapter, broker_url, prefix, destination) =
                        (&adapter, &broker_url, &prefix, &destination);
                    async move {
                        adapter
                            .publish_to_ingress(broker_url, prefix, destination, &message)
                            .await
                    }
                });
                seq += per_tick;
                for result in futures::future::join_all(batch).await {
                    match result {
                        Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        })
    };
    demo.run_for(options.phase, title).await;
    demo.refresh(title, true);

    // 2. Health: one v1 instance fails its check; its share moves.
    let title = "2/6 health: greeter-v1-b fails its health check; its share moves to the others";
    demo.instance("greeter-v1-b")
        .healthy
        .store(false, Ordering::Relaxed);
    demo.wait_routed(&["greeter-v1-a", "greeter-v1-c"], title)
        .await?;
    demo.run_for(options.phase, title).await;
    demo.refresh(title, true);
    demo.instance("greeter-v1-b")
        .healthy
        .store(true, Ordering::Relaxed);
    let title = "   greeter-v1-b passes again and takes its share back";
    demo.wait_routed(&v1, title).await?;
    demo.run_for(options.phase / 2, title).await;
    demo.refresh(title, true);

    // 3. Canary: v2 joins with a tenth of the weight.
    let title = "3/6 canary: greeter-v2-a (v2) joins with weight 10 against 3 x 30: 10% of traffic";
    demo.add_instance("greeter-v2-a", "2", 10, false).await?;
    demo.wait_routed(
        &[
            "greeter-v1-a",
            "greeter-v1-b",
            "greeter-v1-c",
            "greeter-v2-a",
        ],
        title,
    )
    .await?;
    let before: Vec<u64> = demo
        .instances
        .iter()
        .map(|i| i.received.load(Ordering::Relaxed))
        .collect();
    demo.run_for(options.phase * 2, title).await;
    let during: Vec<u64> = demo
        .instances
        .iter()
        .zip(&before)
        .map(|(i, b)| i.received.load(Ordering::Relaxed) - b)
        .collect();
    let canary_share = during[3] as f64 / during.iter().sum::<u64>().max(1) as f64;
    demo.refresh(title, true);
    println!(
        "   the canary took {:.1}% of this step's messages\n",
        100.0 * canary_share
    );

    // 4. Rollout: more v2, and the canary promoted to a full weight.
    let title = "4/6 rollout: greeter-v2-b and -c join; the canary is promoted to weight 30 in the directory";
    demo.add_instance("greeter-v2-b", "2", 30, false).await?;
    demo.add_instance("greeter-v2-c", "2", 30, false).await?;
    let all = [
        "greeter-v1-a",
        "greeter-v1-b",
        "greeter-v1-c",
        "greeter-v2-a",
        "greeter-v2-b",
        "greeter-v2-c",
    ];
    demo.wait_routed(&all, title).await?;
    if let Some(mut canary) = demo
        .router
        .table
        .load()
        .catalog
        .instances
        .iter()
        .find(|r| r.id == "greeter-v2-a")
        .cloned()
    {
        canary.weight = 30;
        if let Err(error) = demo.client.register(&canary).await {
            return Err(DemoError::Setup(format!("promoting the canary: {error}")));
        }
    }
    demo.run_for(options.phase, title).await;
    demo.refresh(title, true);

    // 5. Drain: v1 leaves one instance at a time, losing nothing.
    let title = "5/6 drain: each v1 instance is marked draining, empties its inbox, and leaves";
    for id in v1 {
        demo.drain(id, title).await;
    }
    demo.run_for(options.phase / 2, title).await;
    demo.refresh(title, true);

    // 6. Done: v2 alone; stop publishing and let the last messages land.
    let title = "6/6 done: v2 serves alone; publishing stops";
    demo.run_for(options.phase / 2, title).await;
    publishing.trigger();
    let _ = publisher.await;
    let sent = demo.sent.load(Ordering::Relaxed);
    let settle = Instant::now() + Duration::from_secs(10);
    while demo.distinct() < sent && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    demo.refresh(title, true);
    shutdown.trigger();
    let tasks = std::mem::take(&mut demo.router.tasks);
    for task in tasks {
        let _ = task.await;
    }
    if !in_process {
        demo.clean_up(&ingress_options).await;
    }

    let delivered = demo.distinct();
    let duplicates = demo.received().saturating_sub(delivered);
    let lost = sent.saturating_sub(delivered);
    let mut per_version: Vec<(String, u64)> = Vec::new();
    for instance in &demo.instances {
        let count = instance.received.load(Ordering::Relaxed);
        match per_version.iter_mut().find(|(v, _)| v == instance.version) {
            Some((_, total)) => *total += count,
            None => per_version.push((instance.version.to_owned(), count)),
        }
    }
    let versions: Vec<String> = per_version
        .iter()
        .map(|(v, c)| format!("v{v} {c}"))
        .collect();
    let refused = refused.load(Ordering::Relaxed);
    println!(
        "\nsummary: sent {sent}, delivered {delivered}, lost {lost}; per version: {}; duplicates {duplicates}; refused by the broker at publish {refused}",
        versions.join(", ")
    );
    if lost > 0 {
        return Err(DemoError::Lost { lost, sent });
    }
    Ok(Summary {
        sent,
        delivered,
        per_version,
        duplicates,
    })
}
