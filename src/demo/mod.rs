//! `baker-mq demo`: the whole story in one process, on a broker of the run's
//! own where the adapter can make one (in-process), or against a real one.
//!
//! The embedded directory, a router, and instances of one service, each with
//! its own agent (and, for v1, an HTTP health check); the publisher and the
//! instances use the adapter's [`AppClient`] as applications would. While
//! messages flow at a steady rate the demo walks through discovery and load
//! balancing, a failing health check, a v2 canary, the full rollout and the
//! drain of v1, showing a live table of each instance's counts and rates, and
//! ends with a summary: sent, delivered, lost, per version.
//!
//! - `script`: the story, step by step
//! - `instances`: the instances, their consumers, agents and health
//! - `publisher`: the application publishing to the service
//! - `display`: the live table
//!
//! [`AppClient`]: baker_adapter_api::AppClient

mod display;
mod instances;
mod publisher;
mod script;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::{Destination, IngressOptions, Member, Topic};
use tokio::net::TcpListener;

use crate::adapters::AdapterRegistry;
use crate::directory::interest::InterestConfig;
use crate::directory::store::Store;
use crate::directory::{server, DirectoryClient, Interest, Watcher};
use crate::router::{JourneyConfig, PolicyKind};
use crate::shutdown::Shutdown;
use crate::sidecar::{start_router, RouterSpec};

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
            adapter: crate::adapters::IN_PROCESS_ADAPTER.to_owned(),
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
    let app = adapter.app_client().ok_or_else(|| {
        DemoError::Adapter(format!(
            "the {} adapter cannot play the applications",
            options.adapter
        ))
    })?;
    let shutdown = Shutdown::new();
    let run_id = format!("{:04x}", fastrand::u16(..));
    // On a broker of its own, the plain names; on a shared broker, names of
    // this run's own, so that it neither meets other traffic nor another demo.
    let private = app.private_broker(&format!("demo-{run_id}"));
    let broker_url = (options.broker.clone())
        .or(private.clone())
        .unwrap_or_else(|| adapter.default_broker().to_owned());
    let (service, prefix, group) = match private {
        Some(_) => ("greeter".to_owned(), "baker".to_owned(), "baker".to_owned()),
        None => (
            format!("greeter-{run_id}"),
            "baker-demo".to_owned(),
            format!("demo-{run_id}"),
        ),
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
        Default::default(),
        shutdown.clone(),
    ));
    let where_ = if private.is_some() {
        " (in-process)"
    } else {
        ""
    };
    println!("directory  {directory_url} (embedded)");
    println!(
        "broker     {}{where_}",
        baker_adapter_api::redact_url(&broker_url)
    );
    let destination = Destination {
        service: service.clone(),
        topic: Topic::new("hello", '.'),
    };
    println!(
        "traffic    {} msg/s to {}, policy weighted\n",
        options.rate,
        app.describe_ingress(&prefix, &destination)
    );

    // The router, as a sidecar runs it.
    let ingress_options = IngressOptions {
        prefix: prefix.clone(),
        queue_group: group,
        buffer: 1024,
        member: Member::this_run(),
    };
    let client = DirectoryClient::http(&directory_url, &Default::default());
    // The router follows the demo's service from the start (as `watch`
    // does), so the script can show its view before the first message.
    let interest = Arc::new(Interest::new(InterestConfig {
        declared: [service.clone()].into(),
        ..InterestConfig::default()
    }));
    let watcher = Watcher::new(client.clone(), None).with_interest(interest.clone());
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
            zones: Default::default(),
            shadows: HashMap::new(),
            traces: None,
            allowed_brokers: Vec::new(),
            interest,
        },
        adapters,
        catalogs,
        shutdown.clone(),
    )
    .map_err(|e| DemoError::Setup(e.to_string()))?;

    let fleet = instances::Fleet::new(
        client.clone(),
        adapter.clone(),
        broker_url.clone(),
        (service.clone(), prefix.clone()),
        shutdown.clone(),
    )
    .await?;
    let mut demo = script::Demo {
        fleet,
        client,
        router,
        service,
        sent: Arc::default(),
        display: display::Display::new(),
    };
    let traffic = script::Traffic {
        adapter: adapter.clone(),
        broker: broker_url.clone(),
        prefix,
    };
    let (sent, refused) = demo.tell(&options, traffic).await?;
    shutdown.trigger();
    for task in std::mem::take(&mut demo.router.tasks) {
        let _ = task.await;
    }
    demo.fleet.stop().await;
    if private.is_none() {
        demo.fleet.clean_up(&ingress_options).await;
    }
    summarize(&demo.fleet, sent, refused)
}

/// Prints the summary; an error if any message was lost.
fn summarize(fleet: &instances::Fleet, sent: u64, refused: u64) -> Result<Summary, DemoError> {
    let delivered = fleet.distinct();
    let duplicates = fleet.received().saturating_sub(delivered);
    let lost = sent.saturating_sub(delivered);
    let mut per_version: Vec<(String, u64)> = Vec::new();
    for instance in &fleet.instances {
        let count = instance.received.load(std::sync::atomic::Ordering::Relaxed);
        match per_version.iter_mut().find(|(v, _)| v == instance.version) {
            Some((_, total)) => *total += count,
            None => per_version.push((instance.version.to_owned(), count)),
        }
    }
    let versions: Vec<String> = per_version
        .iter()
        .map(|(v, c)| format!("v{v} {c}"))
        .collect();
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
