//! RabbitMQ helpers: a vhost per test (made, changed and deleted through the
//! management HTTP API), a confirming publisher and inbox consumers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use reqwest::Method;
use serde_json::{json, Value};

use super::{unique, Inbox};

/// RabbitMQ's management API (the `rabbitmq_management` plugin, which
/// `integration/brokers.sh` enables and the compose file's image has).
pub fn management_url() -> String {
    std::env::var("BAKER_TEST_AMQP_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned())
}

/// `value` as one segment of a management API path (vhost and connection
/// names may hold `/`, spaces and `>`).
fn segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One management API request as guest/guest: the status and the body, or
/// why there was no answer. Runs on a thread and runtime of its own, so
/// plain tests, async tests and `Drop` can all call it.
fn request(method: Method, path: &str, body: Option<Value>) -> Result<(u16, String), String> {
    let url = format!("{}/api/{path}", management_url().trim_end_matches('/'));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?;
            let mut request = client
                .request(method.clone(), &url)
                .basic_auth("guest", Some("guest"));
            if let Some(body) = body {
                request = request.json(&body);
            }
            let no_answer = |e: reqwest::Error| {
                format!(
                    "{method} {url}: {e}; the AMQP tests manage RabbitMQ through its management \
                     API: enable it with `rabbitmq-plugins enable rabbitmq_management` \
                     (integration/brokers.sh does) or set BAKER_TEST_AMQP_MANAGEMENT_URL"
                )
            };
            let response = request.send().await.map_err(no_answer)?;
            let status = response.status().as_u16();
            let text = response.text().await.map_err(no_answer)?;
            Ok((status, text))
        })
    })
    .join()
    .expect("management API thread")
}

/// [`request`] that must succeed (2xx); the body.
fn management(method: Method, path: &str, body: Option<Value>) -> String {
    let what = format!("{method} /api/{path}");
    match request(method, path, body) {
        Ok((status, text)) if (200..300).contains(&status) => text,
        Ok((status, text)) => panic!("RabbitMQ management API: {what} answered {status}: {text}"),
        Err(e) => panic!("RabbitMQ management API: {e}"),
    }
}

/// A GET of a JSON list.
fn list(path: &str) -> Result<Vec<Value>, String> {
    match request(Method::GET, path, None)? {
        (200, text) => {
            serde_json::from_str(&text).map_err(|e| format!("GET /api/{path}: {e}: {text}"))
        }
        (status, text) => Err(format!("GET /api/{path} answered {status}: {text}")),
    }
}

/// A RabbitMQ vhost of the test's own, deleted when dropped.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create() -> Vhost {
        let vhost = Vhost {
            name: unique("baker-test-"),
        };
        management(
            Method::PUT,
            &format!("vhosts/{}", segment(&vhost.name)),
            None,
        );
        vhost.grant_guest();
        vhost
    }

    /// Sets policy `name` on the vhost (`rabbitmqctl set_policy -p VHOST
    /// NAME PATTERN DEFINITION --apply-to queues`).
    #[allow(dead_code)]
    pub fn set_policy(&self, name: &str, pattern: &str, definition: Value) {
        let body = json!({"pattern": pattern, "definition": definition, "apply-to": "queues"});
        let path = format!("policies/{}/{name}", segment(&self.name));
        management(Method::PUT, &path, Some(body));
    }

    /// Gives guest every permission on the vhost (`rabbitmqctl
    /// set_permissions -p VHOST guest '.*' '.*' '.*'`).
    pub fn grant_guest(&self) {
        let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
        management(Method::PUT, &self.guest_permissions(), Some(all));
    }

    /// Takes guest's permissions on the vhost away (`rabbitmqctl
    /// clear_permissions`): new connections are refused, open ones stay.
    pub fn revoke_guest(&self) {
        management(Method::DELETE, &self.guest_permissions(), None);
    }

    fn guest_permissions(&self) -> String {
        format!("permissions/{}/guest", segment(&self.name))
    }

    /// The vhost's queues as the management API lists them, with `columns`
    /// (e.g. `name,messages_ready`).
    pub fn queues(&self, columns: &str) -> Result<Vec<Value>, String> {
        list(&format!("queues/{}?columns={columns}", segment(&self.name)))
    }

    /// The vhost's channels, with `columns`; the management API lists them
    /// from its statistics, up to a few seconds late.
    pub fn channels(&self, columns: &str) -> Result<Vec<Value>, String> {
        list(&format!(
            "vhosts/{}/channels?columns={columns}",
            segment(&self.name)
        ))
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
        let _ = request(
            Method::DELETE,
            &format!("vhosts/{}", segment(&self.name)),
            None,
        );
    }
}

/// A RabbitMQ user of the test's own with every permission on `vhost`,
/// deleted when dropped.
pub struct User {
    pub name: String,
}

impl User {
    pub fn create(vhost: &Vhost, password: &str) -> User {
        let user = User {
            name: unique("baker-user-"),
        };
        let path = format!("users/{}", segment(&user.name));
        management(
            Method::PUT,
            &path,
            Some(json!({"password": password, "tags": ""})),
        );
        let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
        let permissions = format!(
            "permissions/{}/{}",
            segment(&vhost.name),
            segment(&user.name)
        );
        management(Method::PUT, &permissions, Some(all));
        user
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = request(
            Method::DELETE,
            &format!("users/{}", segment(&self.name)),
            None,
        );
    }
}

/// Declares `queue`, durable. An instance's inbox (`_baker.…`) is declared
/// as Baker's agents declare it, with the routers' dead-letter exchange, so
/// the test and an agent may declare it in either order: RabbitMQ refuses a
/// second declaration whose arguments differ.
pub async fn declare_queue(channel: &Channel, queue: &str) {
    let mut arguments = FieldTable::default();
    if queue.starts_with("_baker.") {
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("baker.dlx".into()),
        );
    }
    declare_with(channel, queue, arguments).await;
}

/// Declares `queue`, durable, with no arguments: an inbox as Baker declared
/// them before inboxes had a dead-letter exchange.
pub async fn declare_bare_queue(channel: &Channel, queue: &str) {
    declare_with(channel, queue, FieldTable::default()).await;
}

async fn declare_with(channel: &Channel, queue: &str, arguments: FieldTable) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    if let Err(error) = channel
        .queue_declare(queue.into(), durable, arguments)
        .await
    {
        panic!("declaring queue {queue}: {error}");
    }
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

/// Publishes one message to the `baker` exchange with `routing_key` and
/// `properties`, and waits for the broker's confirm.
pub async fn publish_one(
    channel: &Channel,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) {
    channel
        .basic_publish(
            "baker".into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            payload,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
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

/// A consumer of `queue` with manual acks, under a tag of its own.
pub async fn consumer(channel: &Channel, queue: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            queue.into(),
            unique("test-").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap()
}

/// Consumes `queue` (acking each message) into an [`Inbox`] of sequence
/// numbers, and keeps every message in full.
pub async fn consume(channel: &Channel, queue: &str) -> (Inbox, Arc<Mutex<Vec<Received>>>) {
    declare_queue(channel, queue).await;
    let mut consumer = consumer(channel, queue).await;
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
/// restart or a network cut would, without touching other tests' vhosts;
/// returns how many it closed. The management API lists connections from
/// its statistics, which it collects every 5 s by default, so a connection
/// opened moments ago may not be listed yet: this waits (at most 15 s) until
/// at least `expected` baker-mq connections are listed.
pub async fn close_baker_connections(vhost: &Vhost, expected: usize) -> usize {
    let path = format!("vhosts/{}/connections", segment(&vhost.name));
    let deadline = Instant::now() + Duration::from_secs(15);
    let names = loop {
        let names: Vec<String> = list(&path)
            .unwrap_or_else(|e| panic!("RabbitMQ management API: {e}"))
            .iter()
            // baker-mq names its connections "baker-mq".
            .filter(|c| c["client_properties"]["connection_name"] == "baker-mq")
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect();
        if names.len() >= expected {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "the management API lists {} baker-mq connections in {} after 15 s, not {expected}",
            names.len(),
            vhost.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut closed = 0;
    for name in names {
        // A connection closed since its listing answers 404.
        let path = format!("connections/{}", segment(&name));
        if let Ok((status, _)) = request(Method::DELETE, &path, None) {
            if (200..300).contains(&status) {
                closed += 1;
            }
        }
    }
    closed
}

/// Answers each request on `queue` at its reply_to, through the default
/// exchange, with the request's correlation id and `pong:<payload>`, until
/// the task is aborted.
pub async fn respond(responder: lapin::Channel, queue: &str) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    let mut requests = consumer(&responder, queue).await;
    tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let reply_to = request
                .properties
                .reply_to()
                .clone()
                .expect("reply_to kept");
            let mut props = lapin::BasicProperties::default();
            if let Some(id) = request.properties.correlation_id() {
                props = props.with_correlation_id(id.clone());
            }
            let body = format!("pong:{}", String::from_utf8_lossy(&request.data));
            responder
                .basic_publish(
                    "".into(),
                    reply_to,
                    Default::default(),
                    body.as_bytes(),
                    props,
                )
                .await
                .unwrap();
            request.ack(Default::default()).await.unwrap();
        }
    })
}

/// A requester on RabbitMQ's direct reply-to: publishes `payload` to
/// `baker` / `routing_key` with `correlation_id`, and returns the reply.
pub async fn direct_request(
    vhost: &Vhost,
    routing_key: &str,
    payload: &[u8],
    correlation_id: &str,
) -> lapin::message::Delivery {
    use futures::StreamExt;
    use lapin::options::BasicConsumeOptions;
    let (_conn, requester) = vhost.channel().await;
    let mut replies = requester
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "requester".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    requester
        .basic_publish(
            "baker".into(),
            routing_key.into(),
            Default::default(),
            payload,
            lapin::BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id(correlation_id.into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .unwrap_or_else(|_| panic!("no reply to {routing_key} within 10 s"))
        .unwrap()
        .unwrap()
}

/// The header `name` of `properties`, as text.
pub fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    headers
        .inner()
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| text(v))
}

/// The correlation id of `delivery`.
pub fn correlation_id(delivery: &lapin::message::Delivery) -> Option<&str> {
    delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str())
}

/// An agent registering `service`/`id` with its inbox in `vhost`.
pub fn agent(directory: &str, vhost: &Vhost, service: &str, id: &str) -> super::Proc {
    super::agent_on("amqp", &vhost.url(), directory, service, id, &[])
}

/// A router on `vhost`'s ingress, with `extra` arguments, once it is ready.
pub async fn router(directory: &str, vhost: &Vhost, extra: &[&str]) -> super::Router {
    let url = vhost.url();
    let mut args = vec!["--adapter", "amqp", "--broker", &url];
    args.extend_from_slice(extra);
    super::Router::spawn(directory, &args).await
}
