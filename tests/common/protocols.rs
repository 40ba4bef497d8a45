//! The protocols the scenario suite runs each scenario on: what differs
//! between them (how a router is started, how an instance's inbox is
//! consumed, how an application publishes) behind one small trait, so that a
//! scenario is written once.

use std::ops::Range;
use std::time::Duration;

use async_nats::jetstream;

use super::amqp::{self, Vhost};
use super::mqtt::{self, Client, Mosquitto, MqttIngress};
use super::{agent_registering, connect, nats_url, publish_paced, unique, Inbox, Ingress, Proc};

/// How fast a publisher goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Steady traffic over a few seconds (20,000 messages take about 4 s),
    /// below anything the broker drops: long enough for a fault to land
    /// mid-stream.
    Steady,
    /// As fast as the broker takes it without dropping any, sustained.
    Fast,
    /// As fast as the client publishes, for a backlog at the router (at most
    /// 20,000 messages: within what core NATS buffers for a subscriber).
    Burst,
}

/// A reply as the requester got it.
#[derive(Debug)]
pub struct Reply {
    pub payload: String,
    /// Its `baker-error` header: why the request was not delivered.
    pub error: Option<String>,
}

/// A dead letter as an operator reads it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    /// Its `baker-error` header: why it was not delivered.
    pub reason: Option<String>,
    /// Its `baker-attempts` header.
    pub attempts: Option<String>,
}

/// The dead letters collected so far, as they arrive.
pub type DeadLetters = std::sync::Arc<std::sync::Mutex<Vec<DeadLetter>>>;

/// One protocol, set up for one test (its own vhost, broker, or names).
/// The suite runs on one thread per test and never sends these futures
/// elsewhere, so no `Send` bound is asked of them.
#[allow(async_fn_in_trait)]
pub trait Protocol: Sized {
    /// The adapter's name in instance records.
    const ADAPTER: &'static str;

    /// Sets up what one test needs on this protocol.
    async fn setup() -> Self;

    /// The URL of a broker of this protocol at `127.0.0.1:port`.
    fn broker_at(&self, port: u16) -> String;

    /// The default inbox address of `service`/`id`.
    fn inbox_address(&self, service: &str, id: &str) -> String {
        format!("_baker.{service}.{id}")
    }

    /// The arguments of router number `router` on this protocol's ingress
    /// (without the directory and admin address). Routers share the
    /// ingress; a router started again with the same number is the same
    /// router (on MQTT: the same session).
    fn router_args(&self, router: usize) -> Vec<String>;

    /// An agent registering `spec` (a whole `--register` value) with its
    /// inbox on this protocol.
    fn agent_registering(&self, directory: &str, spec: &str) -> Proc;

    /// An agent registering `service`/`id` with its inbox on this protocol.
    fn agent(&self, directory: &str, service: &str, id: &str) -> Proc {
        self.agent_registering(directory, &format!("service={service},id={id}"))
    }

    /// Consumes the inbox of `service`/`id` as the instance would, counting
    /// the sequence numbers that arrive.
    async fn inbox(&self, service: &str, id: &str) -> Inbox;

    /// Publishes payloads `seqs` (each its sequence number) to `topic` of
    /// `service` as an application would; returns once the broker has them
    /// all (as far as the protocol says). `Send`, so that traffic can run in
    /// a task of its own while a test changes things.
    fn publish(
        &self,
        service: &str,
        topic: &str,
        seqs: Range<u64>,
        pace: Pace,
    ) -> impl std::future::Future<Output = ()> + Send;

    /// Answers every request that reaches the inbox of `service`/`id` with
    /// `pong:<payload>`, as the instance would, until the task is aborted.
    /// `None` where the protocol's ingress takes no requests.
    async fn responder(&self, _service: &str, _id: &str) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// Sends a request with `payload` to `topic` of `service` as an
    /// application would, and waits up to 10 s for the reply: its payload
    /// and its `baker-error` header.
    async fn request(&self, _service: &str, _topic: &str, _payload: &str) -> Reply {
        unimplemented!("this protocol's ingress takes no requests")
    }

    /// Publishes one message with `payload` to `topic` of `service`.
    async fn publish_payload(&self, service: &str, topic: &str, payload: Vec<u8>);

    /// Starts reading the dead letters of `services` as an operator would;
    /// `None` where the ingress keeps none (core NATS).
    async fn dead_letters(&self, _services: &[&str]) -> Option<DeadLetters> {
        None
    }

    /// How long a late copy of a message may still be on its way once every
    /// message arrived.
    fn settle(&self) -> Duration {
        amqp::SETTLE
    }

    /// Removes what the test left on a shared broker.
    async fn teardown(self) {}
}

/// Core NATS: at most once; publishing is paced below what it drops.
pub struct NatsCore {
    client: async_nats::Client,
    ingress: Ingress,
}

impl Protocol for NatsCore {
    const ADAPTER: &'static str = "nats";

    fn broker_at(&self, port: u16) -> String {
        format!("nats://127.0.0.1:{port}")
    }

    async fn setup() -> Self {
        NatsCore {
            client: connect().await,
            ingress: Ingress::new(),
        }
    }

    fn router_args(&self, _router: usize) -> Vec<String> {
        nats_router_args(nats_url(), &self.ingress)
    }

    fn agent_registering(&self, directory: &str, spec: &str) -> Proc {
        agent_registering("nats", &nats_url(), directory, spec)
    }

    async fn inbox(&self, service: &str, id: &str) -> Inbox {
        super::consume_inbox(&self.client, service, id).await
    }

    async fn publish(&self, service: &str, topic: &str, seqs: Range<u64>, pace: Pace) {
        let subject = self.ingress.subject(service, topic);
        let count = seqs.end - seqs.start;
        let (batch, pause) = match pace {
            Pace::Steady => (20, Duration::from_millis(4)),
            Pace::Fast => (500, Duration::from_millis(25)),
            Pace::Burst => (count.max(1), Duration::ZERO),
        };
        publish_paced(&self.client, &subject, seqs.start, count, batch, pause).await;
    }

    fn settle(&self) -> Duration {
        Duration::from_millis(300)
    }

    async fn publish_payload(&self, service: &str, topic: &str, payload: Vec<u8>) {
        let subject = self.ingress.subject(service, topic);
        self.client.publish(subject, payload.into()).await.unwrap();
        self.client.flush().await.unwrap();
    }

    async fn responder(&self, service: &str, id: &str) -> Option<tokio::task::JoinHandle<()>> {
        use futures::StreamExt;
        let client = self.client.clone();
        let mut requests = (client.subscribe(format!("_baker.{service}.{id}.>")).await).unwrap();
        client.flush().await.unwrap();
        Some(tokio::spawn(async move {
            while let Some(msg) = requests.next().await {
                let body = format!("pong:{}", String::from_utf8_lossy(&msg.payload));
                if let Some(reply) = msg.reply {
                    client.publish(reply, body.into()).await.unwrap();
                }
            }
        }))
    }

    async fn request(&self, service: &str, topic: &str, payload: &str) -> Reply {
        let subject = self.ingress.subject(service, topic);
        let request = self.client.request(subject, payload.to_owned().into());
        let reply = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("a reply within 10 s")
            .expect("the request answered");
        Reply {
            payload: String::from_utf8_lossy(&reply.payload).into_owned(),
            error: (reply.headers.as_ref())
                .and_then(|h| h.get("baker-error"))
                .map(|v| v.to_string()),
        }
    }
}

fn nats_router_args(broker: String, ingress: &Ingress) -> Vec<String> {
    vec![
        "--adapter".into(),
        "nats".into(),
        "--broker".into(),
        broker,
        "--ingress-prefix".into(),
        ingress.prefix.clone(),
        "--queue-group".into(),
        ingress.group.clone(),
    ]
}

/// NATS with the JetStream ingress (a short ack wait, so redeliveries come
/// soon) and core NATS inboxes.
pub struct JetStream {
    core: NatsCore,
    js: jetstream::Context,
}

impl Protocol for JetStream {
    const ADAPTER: &'static str = "nats";

    fn broker_at(&self, port: u16) -> String {
        self.core.broker_at(port)
    }

    async fn setup() -> Self {
        let core = NatsCore::setup().await;
        let js = jetstream::new(core.client.clone());
        JetStream { core, js }
    }

    fn router_args(&self, _router: usize) -> Vec<String> {
        let broker = format!("{}?ingress=jetstream&ack_wait_secs=3", nats_url());
        nats_router_args(broker, &self.core.ingress)
    }

    fn agent_registering(&self, directory: &str, spec: &str) -> Proc {
        self.core.agent_registering(directory, spec)
    }

    async fn inbox(&self, service: &str, id: &str) -> Inbox {
        self.core.inbox(service, id).await
    }

    async fn publish(&self, service: &str, topic: &str, seqs: Range<u64>, pace: Pace) {
        let subject = self.core.ingress.subject(service, topic);
        let window = match pace {
            Pace::Steady => 100,
            Pace::Fast | Pace::Burst => 1000,
        };
        let mut pending = Vec::with_capacity(window);
        for seq in seqs {
            let ack = self.js.publish(subject.clone(), seq.to_string().into());
            pending.push(ack.await.expect("the ingress stream takes the message"));
            if pending.len() >= window {
                for ack in pending.drain(..) {
                    ack.await.expect("stream ack");
                }
                if pace == Pace::Steady {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        for ack in pending {
            ack.await.expect("stream ack");
        }
    }

    async fn publish_payload(&self, service: &str, topic: &str, payload: Vec<u8>) {
        let subject = self.core.ingress.subject(service, topic);
        let ack = self.js.publish(subject, payload.into()).await.unwrap();
        ack.await.expect("the ingress stream takes the message");
    }

    async fn dead_letters(&self, services: &[&str]) -> Option<DeadLetters> {
        use futures::StreamExt;
        let filters = services
            .iter()
            .map(|s| format!("{}.{s}", baker_adapter_nats::DEAD_LETTER_PREFIX))
            .collect();
        // The router creates the dead-letter stream as it starts.
        let stream = (self
            .js
            .get_stream(baker_adapter_nats::DEAD_LETTER_STREAM)
            .await)
            .expect("the dead-letter stream");
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subjects: filters,
                ..Default::default()
            })
            .await
            .unwrap();
        let letters = DeadLetters::default();
        let collected = letters.clone();
        tokio::spawn(async move {
            let Ok(mut messages) = consumer.messages().await else {
                return;
            };
            while let Some(Ok(message)) = messages.next().await {
                let header = |name: &str| {
                    (message.headers.as_ref())
                        .and_then(|h| h.get(name))
                        .map(|v| v.to_string())
                };
                collected.lock().unwrap().push(DeadLetter {
                    payload: message.payload.to_vec(),
                    reason: header("baker-error"),
                    attempts: header("baker-attempts"),
                });
                let _ = message.ack().await;
            }
        });
        Some(letters)
    }

    async fn teardown(self) {
        let name = format!(
            "BAKER_INGRESS_{}",
            baker_adapter_nats::stream_name(&self.core.ingress.prefix)
        );
        let _ = self.js.delete_stream(name).await;
    }
}

/// AMQP 0.9.1 on RabbitMQ, in a vhost of the test's own.
pub struct Amqp {
    vhost: Vhost,
    _connection: lapin::Connection,
    channel: lapin::Channel,
}

impl Protocol for Amqp {
    const ADAPTER: &'static str = "amqp";

    fn broker_at(&self, port: u16) -> String {
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    }

    async fn setup() -> Self {
        let vhost = Vhost::create();
        let (connection, channel) = vhost.channel().await;
        Amqp {
            vhost,
            _connection: connection,
            channel,
        }
    }

    fn router_args(&self, _router: usize) -> Vec<String> {
        vec![
            "--adapter".into(),
            "amqp".into(),
            "--broker".into(),
            self.vhost.url(),
        ]
    }

    fn agent_registering(&self, directory: &str, spec: &str) -> Proc {
        agent_registering("amqp", &self.vhost.url(), directory, spec)
    }

    async fn inbox(&self, service: &str, id: &str) -> Inbox {
        amqp::consume(&self.channel, &format!("_baker.{service}.{id}"))
            .await
            .0
    }

    async fn publish(&self, service: &str, topic: &str, seqs: Range<u64>, pace: Pace) {
        let key = format!("{service}.{topic}");
        let window = match pace {
            Pace::Steady => 500,
            Pace::Fast | Pace::Burst => 1000,
        };
        let count = seqs.end - seqs.start;
        amqp::publish(&self.channel, "baker", &key, seqs.start, count, window).await;
    }

    async fn publish_payload(&self, service: &str, topic: &str, payload: Vec<u8>) {
        let key = format!("{service}.{topic}");
        let confirm = self
            .channel
            .basic_publish(
                "baker".into(),
                key.as_str().into(),
                Default::default(),
                &payload,
                Default::default(),
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack(), "publish nacked");
    }

    async fn dead_letters(&self, _services: &[&str]) -> Option<DeadLetters> {
        // The vhost is the test's own: every dead letter in it is the test's.
        let (_, received) = amqp::consume(&self.channel, "baker.dead-letters").await;
        let letters = DeadLetters::default();
        let collected = letters.clone();
        tokio::spawn(async move {
            let mut copied = 0;
            loop {
                let new: Vec<DeadLetter> = received.lock().unwrap()[copied..]
                    .iter()
                    .map(|r| DeadLetter {
                        payload: r.payload.clone(),
                        reason: r.header("baker-error").map(str::to_owned),
                        attempts: r.header("baker-attempts").map(str::to_owned),
                    })
                    .collect();
                copied += new.len();
                collected.lock().unwrap().extend(new);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Some(letters)
    }

    async fn responder(&self, service: &str, id: &str) -> Option<tokio::task::JoinHandle<()>> {
        let queue = format!("_baker.{service}.{id}");
        amqp::declare_queue(&self.channel, &queue).await;
        let (_, channel) = self.vhost.channel().await;
        Some(amqp::respond(channel, &queue).await)
    }

    async fn request(&self, service: &str, topic: &str, payload: &str) -> Reply {
        let key = format!("{service}.{topic}");
        let reply = amqp::direct_request(&self.vhost, &key, payload.as_bytes(), "c-1").await;
        let error = amqp::header(&reply.properties, "baker-error");
        Reply {
            payload: String::from_utf8_lossy(&reply.data).into_owned(),
            error,
        }
    }
}

/// MQTT 5 on a Mosquitto of the test's own, with the settings Baker's
/// guarantees need.
pub struct Mqtt {
    broker: Mosquitto,
    ingress: MqttIngress,
    /// The application's connection, made at its first publish.
    publisher: tokio::sync::Mutex<Option<Client>>,
}

impl Protocol for Mqtt {
    const ADAPTER: &'static str = "mqtt";

    fn broker_at(&self, port: u16) -> String {
        format!("mqtt://127.0.0.1:{port}")
    }

    fn inbox_address(&self, service: &str, id: &str) -> String {
        format!("_baker/{service}/{id}")
    }

    async fn setup() -> Self {
        let broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let ingress = MqttIngress::new(&broker.url());
        Mqtt {
            broker,
            ingress,
            publisher: tokio::sync::Mutex::new(None),
        }
    }

    fn router_args(&self, router: usize) -> Vec<String> {
        // A client id per router, the same every time it starts: a
        // restarted router resumes the session the broker kept.
        let broker = format!(
            "{}?client_id={}-{router}",
            self.ingress.url, self.ingress.client_id
        );
        vec![
            "--adapter".into(),
            "mqtt".into(),
            "--broker".into(),
            broker,
            "--ingress-prefix".into(),
            self.ingress.prefix.clone(),
            "--queue-group".into(),
            self.ingress.group.clone(),
        ]
    }

    fn agent_registering(&self, directory: &str, spec: &str) -> Proc {
        agent_registering("mqtt", &self.broker.url(), directory, spec)
    }

    async fn inbox(&self, service: &str, id: &str) -> Inbox {
        mqtt::consume_inbox(&self.broker.url(), service, id, false).await
    }

    async fn publish(&self, service: &str, topic: &str, seqs: Range<u64>, pace: Pace) {
        let topic = self.ingress.topic(service, topic);
        let mut publisher = self.publisher.lock().await;
        if publisher.is_none() {
            *publisher = Some(Client::connect(&self.broker.url(), &unique("pub-"), false).await);
        }
        let client = publisher.as_mut().expect("connected above");
        match pace {
            Pace::Fast | Pace::Burst => {
                client
                    .publish_seq(&topic, seqs.start, seqs.end - seqs.start)
                    .await
            }
            Pace::Steady => {
                let mut start = seqs.start;
                while start < seqs.end {
                    let count = (seqs.end - start).min(500);
                    client.publish_seq(&topic, start, count).await;
                    start += count;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn publish_payload(&self, service: &str, topic: &str, payload: Vec<u8>) {
        use rumqttc::v5::mqttbytes::QoS;
        let topic = self.ingress.topic(service, topic);
        let mut publisher = self.publisher.lock().await;
        if publisher.is_none() {
            *publisher = Some(Client::connect(&self.broker.url(), &unique("pub-"), false).await);
        }
        let client = publisher.as_mut().expect("connected above");
        (client.publish_with(&topic, QoS::AtLeastOnce, payload, Default::default())).await;
    }

    async fn dead_letters(&self, _services: &[&str]) -> Option<DeadLetters> {
        // MQTT keeps a dead letter only for a subscriber present when it is
        // published: subscribe first. The broker is the test's own.
        let mut client = Client::connect(&self.broker.url(), &unique("dlq-"), false).await;
        let filter = format!("{}/#", baker_adapter_mqtt::DEAD_LETTER_PREFIX);
        client.subscribe(&filter).await;
        let letters = DeadLetters::default();
        let collected = letters.clone();
        tokio::spawn(async move {
            while let Some(letter) = client.incoming.recv().await {
                collected.lock().unwrap().push(DeadLetter {
                    payload: letter.payload.to_vec(),
                    reason: mqtt::user_property(&letter, "baker-error").map(str::to_owned),
                    attempts: mqtt::user_property(&letter, "baker-attempts").map(str::to_owned),
                });
            }
        });
        Some(letters)
    }

    async fn responder(&self, service: &str, id: &str) -> Option<tokio::task::JoinHandle<()>> {
        use rumqttc::v5::mqttbytes::v5::Publish;
        let filter = format!("_baker/{service}/{id}/#");
        let pong =
            |request: &Publish| format!("pong:{}", String::from_utf8_lossy(&request.payload));
        Some(mqtt::respond(&self.broker.url(), &filter, pong).await)
    }

    async fn request(&self, service: &str, topic: &str, payload: &str) -> Reply {
        use rumqttc::v5::mqttbytes::v5::PublishProperties;
        use rumqttc::v5::mqttbytes::QoS;
        let mut requester = Client::connect(&self.broker.url(), &unique("requester-"), false).await;
        let replies = unique("replies/");
        requester.subscribe(&format!("{replies}/#")).await;
        let properties = PublishProperties {
            response_topic: Some(format!("{replies}/1")),
            correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
            ..Default::default()
        };
        let topic = self.ingress.topic(service, topic);
        (requester.publish_with(&topic, QoS::AtLeastOnce, payload.to_owned(), properties)).await;
        let reply = tokio::time::timeout(Duration::from_secs(10), requester.incoming.recv())
            .await
            .expect("a reply within 10 s")
            .expect("the requester's connection stays up");
        requester.close().await;
        Reply {
            payload: String::from_utf8_lossy(&reply.payload).into_owned(),
            error: mqtt::user_property(&reply, "baker-error").map(str::to_owned),
        }
    }
}
