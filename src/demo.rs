//! `baker-mq demo`: discovery and load balancing in one process, with no
//! broker. Runs the embedded directory, the in-process memory broker, a
//! router, and instances of one service registered by an agent; publishes
//! messages; shows per-instance counts as they arrive; ends with a summary.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baker_adapter_api::{IngressOptions, Message};
use bytes::Bytes;
use tokio::net::TcpListener;

use crate::adapters::AdapterRegistry;
use crate::agent::Agent;
use crate::config::Registered;
use crate::directory::{
    server, store::Store, DirectoryClient, EndpointRecord, InstanceRecord, Status, Watcher,
};
use crate::router::JourneyConfig;
use crate::shutdown::Shutdown;
use crate::sidecar::{start_router, RouterSpec};

const SERVICE: &str = "greeter";

/// Errors that stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Local setup failed.
    #[error("demo setup failed: {0}")]
    Setup(String),
    /// Some messages were lost.
    #[error("{lost} of {sent} messages were lost")]
    Lost { lost: u64, sent: u64 },
}

/// What the demo measured.
#[derive(Debug)]
pub struct Summary {
    /// Messages the broker accepted from the publisher.
    pub sent: u64,
    /// Messages the instances received.
    pub delivered: u64,
    /// Received per instance, by id.
    pub per_instance: Vec<(String, u64)>,
}

fn progress_line(sent: u64, counts: &[(String, Arc<AtomicU64>)]) -> String {
    let delivered: u64 = counts.iter().map(|(_, c)| c.load(Ordering::Relaxed)).sum();
    let mut line = format!("sent {sent:>6}  delivered {delivered:>6} |");
    for (id, count) in counts {
        line.push_str(&format!("  {id} {:>5}", count.load(Ordering::Relaxed)));
    }
    line
}

/// Runs the demo, printing progress to stdout.
pub async fn run(messages: u64, instances: usize) -> Result<Summary, DemoError> {
    let instances = instances.clamp(1, 26);
    let shutdown = Shutdown::new();
    let broker_name = format!("demo-{:x}", fastrand::u32(..));
    let broker_url = format!("{}{broker_name}", baker_adapter_memory::SCHEME);
    let broker = baker_adapter_memory::broker(&broker_name);

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
    println!("directory   {directory_url} (embedded)");
    println!("broker      {broker_url} (in-process)");

    // The instances: each consumes its inbox and counts.
    let mut counts = Vec::new();
    let mut records = Vec::new();
    for i in 0..instances {
        let id = format!("{SERVICE}-{}", (b'a' + i as u8) as char);
        let inbox = format!("_baker.{SERVICE}.{id}");
        let mut subscriber = broker.subscribe(&format!("{inbox}.>"), None, 1024);
        let count = Arc::new(AtomicU64::new(0));
        {
            let count = count.clone();
            tokio::spawn(async move {
                while subscriber.recv().await.is_some() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        counts.push((id.clone(), count));
        records.push(Registered {
            check: None,
            record: InstanceRecord {
                service: SERVICE.to_owned(),
                id,
                version: "1".to_owned(),
                endpoint: EndpointRecord {
                    adapter: "memory".to_owned(),
                    broker: broker_url.clone(),
                    inbox,
                },
                weight: 100,
                zone: None,
                metadata: Default::default(),
                status: Status::Passing,
                ttl_secs: 10,
            },
        });
    }

    // Agent and router, as a sidecar would run them.
    let client = DirectoryClient::new(&directory_url);
    let agent = Agent::new(
        client.clone(),
        AdapterRegistry::builtin(),
        records,
        Duration::from_secs(10),
    );
    tokio::spawn(agent.run(shutdown.clone()));
    let watcher = Watcher::new(client, None);
    let catalogs = watcher.subscribe();
    tokio::spawn(watcher.run(shutdown.clone()));
    let router = start_router(
        RouterSpec {
            adapter: "memory".to_owned(),
            broker: broker_url.clone(),
            ingress: IngressOptions {
                prefix: "baker".to_owned(),
                queue_group: "baker".to_owned(),
                buffer: 1024,
            },
            journey: JourneyConfig {
                max_attempts: 3,
                outlier: Default::default(),
                max_payload: 1024 * 1024,
            },
            max_in_flight: 1024,
            policies: HashMap::new(),
            version_routing: HashMap::new(),
        },
        AdapterRegistry::builtin(),
        catalogs,
        shutdown.clone(),
    )
    .map_err(|e| DemoError::Setup(e.to_string()))?;

    // Wait for discovery: every instance registered and in the router's view.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let routable = router
            .table
            .load()
            .service(SERVICE)
            .map_or(0, |s| s.instances.len());
        if routable == instances && router.ingress_up.load(Ordering::Relaxed) {
            break;
        }
        if Instant::now() > deadline {
            return Err(DemoError::Setup(format!(
                "only {routable} of {instances} instances discovered within 10 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<&str> = counts.iter().map(|(id, _)| id.as_str()).collect();
    println!(
        "discovered  {instances} instances of {SERVICE:?}: {}",
        ids.join(", ")
    );
    println!("publishing  {messages} messages to baker.{SERVICE}.hello (round robin)\n");

    // Publish, showing progress.
    let mut sent = 0u64;
    let mut last_print = Instant::now();
    // On a terminal the progress line rewrites itself; in a log, one line per tick.
    let rewrite = std::io::stdout().is_terminal();
    let payload = Bytes::from_static(b"hello");
    let subject = format!("baker.{SERVICE}.hello");
    for n in 0..messages {
        let message = Message {
            payload: payload.clone(),
            ..Default::default()
        };
        if broker.publish(&subject, message).await > 0 {
            sent += 1;
        }
        if last_print.elapsed() >= Duration::from_millis(200) {
            if rewrite {
                print!("\r{}", progress_line(sent, &counts));
                let _ = std::io::stdout().flush();
            } else {
                println!("{}", progress_line(sent, &counts));
            }
            last_print = Instant::now();
        }
        // Pace the publisher so the progress is visible.
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let settle_deadline = Instant::now() + Duration::from_secs(5);
    while counts
        .iter()
        .map(|(_, c)| c.load(Ordering::Relaxed))
        .sum::<u64>()
        < sent
        && Instant::now() < settle_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if rewrite {
        print!("\r");
    }
    println!("{}", progress_line(sent, &counts));
    shutdown.trigger();
    for task in router.tasks {
        let _ = task.await;
    }

    let per_instance: Vec<(String, u64)> = counts
        .iter()
        .map(|(id, c)| (id.clone(), c.load(Ordering::Relaxed)))
        .collect();
    let delivered: u64 = per_instance.iter().map(|(_, c)| c).sum();
    let lost = sent.saturating_sub(delivered);
    let split: Vec<String> = per_instance
        .iter()
        .map(|(id, c)| {
            format!(
                "{id} {c} ({:.1}%)",
                100.0 * *c as f64 / delivered.max(1) as f64
            )
        })
        .collect();
    println!(
        "\nsummary: sent {sent}, delivered {delivered}, lost {lost}; split: {}",
        split.join(", ")
    );
    if lost > 0 {
        return Err(DemoError::Lost { lost, sent });
    }
    Ok(Summary {
        sent,
        delivered,
        per_instance,
    })
}
