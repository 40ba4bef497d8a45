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

/// Subscribes to instance `id`'s inbox `_baker.<service>.<id>.>` on NATS,
/// the subscription in place on the server when it returns.
pub async fn subscribe_inbox(
    client: &async_nats::Client,
    service: &str,
    id: &str,
) -> async_nats::Subscriber {
    let sub = client
        .subscribe(format!("_baker.{service}.{id}.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    sub
}

/// Consumes `_baker.<service>.<id>.>` on NATS, like an instance would.
pub async fn consume_inbox(client: &async_nats::Client, service: &str, id: &str) -> Inbox {
    let mut sub = subscribe_inbox(client, service, id).await;
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

/// A NATS client for the test's publishers and instances. Its subscriptions
/// hold up to a million messages: on a loaded machine the test's own
/// consumers must not be where core NATS drops (a slow consumer).
pub async fn connect() -> async_nats::Client {
    (async_nats::ConnectOptions::new().subscription_capacity(1 << 20))
        .connect(nats_url())
        .await
        .unwrap_or_else(|e| {
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

/// A NATS protocol frame publishing `payload` to `subject`, with `headers`
/// (a raw header block after `NATS/1.0\r\n`, which may be malformed) and a
/// reply subject when given: what a careless or hostile publisher can send.
pub fn raw_frame(
    subject: &str,
    reply: Option<&str>,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
    let mut frame = Vec::new();
    match headers {
        None => {
            frame.extend_from_slice(
                format!("PUB {subject}{reply} {}\r\n", payload.len()).as_bytes(),
            );
        }
        Some(block) => {
            let header = [b"NATS/1.0\r\n".as_slice(), block, b"\r\n"].concat();
            frame.extend_from_slice(
                format!(
                    "HPUB {subject}{reply} {} {}\r\n",
                    header.len(),
                    header.len() + payload.len()
                )
                .as_bytes(),
            );
            frame.extend_from_slice(&header);
        }
    }
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\n");
    frame
}

/// Sends `frames` over a raw connection to the test NATS server, then waits
/// until the server has read them all (the PONG of a PING sent after them).
pub async fn raw_publish(frames: &[Vec<u8>]) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let address = nats_url().trim_start_matches("nats://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let info = lines.next_line().await.unwrap().unwrap_or_default();
    assert!(info.starts_with("INFO"), "{info}");
    write
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\n")
        .await
        .unwrap();
    for frame in frames {
        write.write_all(frame).await.unwrap();
    }
    write.write_all(b"PING\r\n").await.unwrap();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the server answers");
        assert!(!line.starts_with("-ERR"), "{line}");
        if line == "PONG" {
            break;
        }
    }
}

/// Header blocks the NATS client library could not parse: a value that is
/// not UTF-8, a name that is not ASCII, a line without a colon, a space in a
/// name.
pub const BAD_HEADER_BLOCKS: [&[u8]; 4] = [
    b"X-Bad: \xff\xfe\r\n",
    "N\u{e4}me: v\r\n".as_bytes(),
    b"NoColonHere\r\n",
    b"Bad Name: v\r\n",
];

/// `good` messages (payloads `0..good`) to `subject`, with `bad` messages
/// with malformed headers spread among them (payload `bad-<n>`), the first
/// of them a request replied to at `bad_reply`.
pub fn mixed_frames(subject: &str, good: u64, bad: u64, bad_reply: &str) -> Vec<Vec<u8>> {
    let spacing = good / bad.max(1);
    let mut frames = Vec::new();
    let mut sent_bad = 0;
    for seq in 0..good {
        if sent_bad < bad && seq % spacing == spacing / 2 {
            let block = BAD_HEADER_BLOCKS[sent_bad as usize % BAD_HEADER_BLOCKS.len()];
            let reply = (sent_bad == 0).then_some(bad_reply);
            frames.push(raw_frame(
                subject,
                reply,
                Some(block),
                format!("bad-{sent_bad}").as_bytes(),
            ));
            sent_bad += 1;
        }
        frames.push(raw_frame(subject, None, None, seq.to_string().as_bytes()));
    }
    frames
}

/// Waits until `inbox` holds `count` messages, then checks they are
/// `0..count`, each once.
pub async fn assert_each_once(inbox: &Inbox, count: u64, timeout: Duration) {
    wait_until(&format!("the {count} messages arrive"), timeout, || async {
        inbox.count() as u64 >= count
    })
    .await;
    let mut seqs = inbox.seqs();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..count).collect::<Vec<u64>>(),
        "each message once, nothing else"
    );
}

/// The value of header `name` in `headers`, or "".
pub fn header_text(headers: Option<&async_nats::HeaderMap>, name: &str) -> String {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.to_string())
        .unwrap_or_default()
}
