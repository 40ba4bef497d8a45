//! Core NATS and JetStream, on the shared nats-server.

use std::ops::Range;
use std::time::Duration;

use async_nats::jetstream;

use super::{DeadLetter, DeadLetters, Pace, Protocol, Reply};
use crate::common::{agent_registering, connect, nats_url, publish_paced, Inbox, Ingress, Proc};

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
        crate::common::consume_inbox(&self.client, service, id).await
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
