//! AMQP 0.9.1 on the shared RabbitMQ.

use std::ops::Range;
use std::time::Duration;

use super::{DeadLetter, DeadLetters, Pace, Protocol, Reply};
use crate::common::amqp::{self, Vhost};
use crate::common::{agent_registering, Inbox, Proc};

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
