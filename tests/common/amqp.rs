//! RabbitMQ helpers: a vhost per test, a confirming publisher and inbox
//! consumers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::{unique, Inbox};

pub fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be installed (integration/run.sh installs RabbitMQ)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A RabbitMQ vhost of the test's own, deleted when dropped.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create() -> Vhost {
        let name = unique("baker-test-");
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost { name }
    }

    pub fn url(&self) -> String {
        let host =
            std::env::var("BAKER_TEST_AMQP_HOST").unwrap_or_else(|_| "127.0.0.1:5672".to_owned());
        format!("amqp://guest:guest@{host}/{}", self.name)
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let connection = Connection::connect(&self.url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must answer (integration/run.sh starts it)");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        (connection, channel)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

pub async fn declare_queue(channel: &Channel, queue: &str) {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Publishes persistent messages `start..start+count` (payload = the
/// number) to `exchange` with `routing_key`, keeping at most `window`
/// unconfirmed; panics on a nack.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    start: u64,
    count: u64,
    window: usize,
) {
    let mut pending = Vec::with_capacity(window);
    for seq in start..start + count {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                seq.to_string().as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() >= window {
            for c in pending.drain(..) {
                assert!(c.await.unwrap().is_ack(), "publish nacked");
            }
        }
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack(), "publish nacked");
    }
}

/// A message as an inbox or dead-letter consumer saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub properties: BasicProperties,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// Consumes `queue` (acking each message) into an [`Inbox`] of sequence
/// numbers, and keeps every message in full.
pub async fn consume(channel: &Channel, queue: &str) -> (Inbox, Arc<Mutex<Vec<Received>>>) {
    declare_queue(channel, queue).await;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            unique("test-").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let inbox = Inbox::default();
    let all = Arc::new(Mutex::new(Vec::new()));
    let (seqs, full) = (inbox.received.clone(), all.clone());
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let seq = std::str::from_utf8(&delivery.data)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            seqs.lock().unwrap().push((seq, Instant::now()));
            let headers = delivery
                .properties
                .headers()
                .as_ref()
                .map(|t| {
                    t.inner()
                        .iter()
                        .map(|(k, v)| (k.as_str().to_owned(), text(v)))
                        .collect()
                })
                .unwrap_or_default();
            full.lock().unwrap().push(Received {
                payload: delivery.data.clone(),
                headers,
                properties: delivery.properties.clone(),
            });
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    });
    (inbox, all)
}

pub const SETTLE: Duration = Duration::from_millis(500);

/// Closes every connection baker-mq processes hold in `vhost`, as a broker
/// restart or a network cut would, without touching other tests' vhosts.
pub fn close_baker_connections(vhost: &Vhost) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "--no-table-headers",
            "list_connections",
            "pid",
            "vhost",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in listing.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        if let [pid, vhost_name, client_properties] = fields.as_slice() {
            // baker-mq names its connections "baker-mq".
            if *vhost_name == vhost.name && client_properties.contains("baker-mq") {
                let status = std::process::Command::new("rabbitmqctl")
                    .args(["close_connection", pid, "test: simulated connection loss"])
                    .output()
                    .expect("rabbitmqctl");
                if status.status.success() {
                    closed += 1;
                }
            }
        }
    }
    closed
}
