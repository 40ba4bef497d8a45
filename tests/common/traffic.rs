//! Traffic on NATS as applications and instances make it: publishers,
//! inboxes that count what arrives, and the tally of a run.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::*;

/// What one instance's inbox received: sequence numbers with arrival times.
#[derive(Clone, Default)]
pub struct Inbox {
    pub received: Arc<Mutex<Vec<(u64, Instant)>>>,
}

impl Inbox {
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn last_arrival(&self) -> Option<Instant> {
        self.received.lock().unwrap().last().map(|(_, t)| *t)
    }

    pub fn first_arrival_after(&self, t: Instant) -> Option<Instant> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, a)| *a)
            .find(|a| *a >= t)
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect()
    }
}

/// Consumes `_baker.<service>.<id>.>` on NATS, like an instance would.
pub async fn consume_inbox(client: &async_nats::Client, service: &str, id: &str) -> Inbox {
    let mut sub = client
        .subscribe(format!("_baker.{service}.{id}.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let inbox = Inbox::default();
    let received = inbox.received.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let seq = std::str::from_utf8(&msg.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            received.lock().unwrap().push((seq, Instant::now()));
        }
    });
    inbox
}

pub async fn connect() -> async_nats::Client {
    async_nats::connect(nats_url()).await.unwrap_or_else(|e| {
        panic!(
            "NATS must answer at {} (integration/run.sh starts it): {e}",
            nats_url()
        )
    })
}

/// Publishes `count` messages with payloads `start..start+count`, `per_batch`
/// then a pause of `pause`, so the rate stays below what NATS core drops.
pub async fn publish_paced(
    client: &async_nats::Client,
    subject: &str,
    start: u64,
    count: u64,
    per_batch: u64,
    pause: Duration,
) {
    for seq in start..start + count {
        client
            .publish(subject.to_owned(), seq.to_string().into())
            .await
            .unwrap();
        if (seq - start + 1).is_multiple_of(per_batch) {
            client.flush().await.unwrap();
            tokio::time::sleep(pause).await;
        }
    }
    client.flush().await.unwrap();
}

/// Every sequence number received across inboxes, with duplicates counted.
pub fn tally(inboxes: &[&Inbox]) -> (usize, HashMap<u64, usize>) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for inbox in inboxes {
        for seq in inbox.seqs() {
            *seen.entry(seq).or_default() += 1;
        }
    }
    let duplicates = seen.values().map(|c| c - 1).sum();
    (duplicates, seen)
}

/// [`publish_paced`] in the background, for traffic that runs while the test
/// changes things.
pub fn spawn_publisher(
    client: &async_nats::Client,
    subject: String,
    count: u64,
    per_batch: u64,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move { publish_paced(&client, &subject, 0, count, per_batch, pause).await })
}

/// Steady traffic for the rolling-upgrade tests: a batch of [`BATCH`]
/// sequence numbers every 20 ms, published by `publish(start, count)` (which
/// returns once the broker has the batch), until stopped.
pub struct SteadyTraffic {
    published: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Messages per batch of [`SteadyTraffic`].
pub const BATCH: u64 = 50;

impl SteadyTraffic {
    pub fn start<F, Fut>(mut publish: F) -> SteadyTraffic
    where
        F: FnMut(u64, u64) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        use std::sync::atomic::Ordering;
        let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (published, stop) = (published.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let start = published.load(Ordering::Relaxed);
                    publish(start, BATCH).await;
                    published.store(start + BATCH, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        SteadyTraffic {
            published,
            stop,
            task,
        }
    }

    /// Messages published so far.
    pub fn published(&self) -> u64 {
        self.published.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A sequence number no message published before this call reaches:
    /// the batch going out now may be out already, the next one is not.
    pub fn cutoff(&self) -> u64 {
        self.published() + BATCH
    }

    /// Stops after the current batch; returns how many were published.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let published = self.published.clone();
        self.task.await.unwrap();
        published.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Consumes a durable inbox's stream (`BAKER_INBOX_<inbox>`) as its
/// instance would, acking each message, into an [`Inbox`].
pub async fn consume_durable_inbox(js: &async_nats::jetstream::Context, inbox: &str) -> Inbox {
    consume_durable_inbox_paced(js, inbox, None).await
}

/// [`consume_durable_inbox`], pausing 1 ms after every `pace` messages
/// (a slow instance) when given.
pub async fn consume_durable_inbox_paced(
    js: &async_nats::jetstream::Context,
    inbox: &str,
    pace: Option<u64>,
) -> Inbox {
    let name = format!("BAKER_INBOX_{}", inbox.replace('.', "_"));
    let stream = loop {
        match js.get_stream(&name).await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // Durable, so the consumer has the stream's replicas and outlives the
    // loss of a cluster node; a failed pull is made again.
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(unique("inbox-")),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let inbox = Inbox::default();
    let received = inbox.received.clone();
    tokio::spawn(async move {
        let mut taken = 0u64;
        loop {
            let Ok(mut messages) = consumer.messages().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            while let Some(next) = messages.next().await {
                let Ok(message) = next else { continue };
                taken += 1;
                if pace.is_some_and(|every| taken.is_multiple_of(every)) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let seq = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                received
                    .lock()
                    .unwrap()
                    .push((seq, std::time::Instant::now()));
                let _ = message.ack().await;
            }
        }
    });
    inbox
}
