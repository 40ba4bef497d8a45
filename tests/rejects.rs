//! Consumer-signalled dead letters, for the protocols whose consumers can
//! refuse a message for good:
//!
//! * AMQP: what an instance rejects (`basic.reject` or `basic.nack` without
//!   requeue) lands in the routers' dead letters with RabbitMQ's own reason
//!   (`x-death`), instead of vanishing; an inbox queue declared before Baker
//!   gave inboxes a dead-letter exchange still registers, and a RabbitMQ
//!   policy gives it one on a running fleet;
//! * JetStream durable inboxes: what an instance's consumer terminates lands
//!   in Baker's dead letters (`BAKER_DLQ`) with `baker-error` naming the
//!   consumer.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::AckKind;
use common::amqp::{self, Vhost};
use common::*;
use futures::StreamExt;
use lapin::options::BasicRejectOptions;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Rejects, without requeue, the next message on `queue`; its payload.
async fn reject_next(channel: &lapin::Channel, queue: &str) -> Vec<u8> {
    let mut consumer = amqp::consumer(channel, queue).await;
    let delivery = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .expect("a message for the instance")
        .unwrap()
        .unwrap();
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    delivery.data
}

/// The reason, queue and payload of the `n`th dead letter in `received`,
/// once it arrived.
async fn dead_letter(received: &Mutex<Vec<amqp::Received>>, n: usize) -> (String, String, Vec<u8>) {
    wait_until("the dead letter", Duration::from_secs(15), || async {
        received.lock().unwrap().len() > n
    })
    .await;
    let m = received.lock().unwrap()[n].clone();
    let header = |name: &str| m.header(name).unwrap_or_default().to_owned();
    (
        header("x-first-death-reason"),
        header("x-first-death-queue"),
        m.payload.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_instance_rejects_lands_in_the_dead_letters_and_old_queues_get_there_by_policy() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let service = unique("rej");
        // `old` predates dead-letter exchanges on inboxes: declared bare.
        let old_queue = format!("_baker.{service}.old");
        amqp::declare_bare_queue(&channel, &old_queue).await;
        let _new = amqp::agent(&dir.url(), &vhost, &service, "new");
        let _old = amqp::agent(&dir.url(), &vhost, &service, "old");
        let router = amqp::router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed(&service, &["new", "old"], Duration::from_secs(15))
            .await;
        let (_dl_conn, dl_channel) = vhost.channel().await;
        let (_, dead) = amqp::consume(&dl_channel, "baker.dead-letters").await;

        // The new queue dead-letters what its consumer rejects.
        let properties = lapin::BasicProperties::default;
        amqp::publish_one(&channel, &format!("{service}.a"), b"first", properties()).await;
        let rejected = reject_next(&channel, &format!("_baker.{service}.new")).await;
        assert_eq!(rejected, b"first");
        let first = (
            "rejected".into(),
            format!("_baker.{service}.new"),
            b"first".to_vec(),
        );
        assert_eq!(dead_letter(&dead, 0).await, first);

        // The old one, once a policy gives it the dead-letter exchange.
        vhost.set_policy(
            "baker-dead-letters",
            "^_baker\\.",
            serde_json::json!({"dead-letter-exchange": "baker.dlx"}),
        );
        wait_until(
            "the policy on the old queue",
            Duration::from_secs(15),
            || async {
                let queues = vhost
                    .queues("name,effective_policy_definition")
                    .unwrap_or_default();
                queues.iter().any(|q| {
                    q["name"] == old_queue.as_str()
                        && q["effective_policy_definition"]["dead-letter-exchange"] == "baker.dlx"
                })
            },
        )
        .await;
        amqp::publish_one(&channel, &format!("{service}.a"), b"second", properties()).await;
        let rejected = reject_next(&channel, &old_queue).await;
        assert_eq!(rejected, b"second");
        let second = ("rejected".into(), old_queue.clone(), b"second".to_vec());
        assert_eq!(dead_letter(&dead, 1).await, second);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_durable_inbox_consumer_terminates_lands_in_the_dead_letters() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("term");
        let client = connect().await;
        let js = async_nats::jetstream::new(client.clone());
        let broker = format!("{}?inbox=jetstream", nats_url());
        let spec = format!("service={service},id=d");
        let _agent = agent_registering("nats", &broker, &dir.url(), &spec);
        let router = Router::start(&dir.url(), &ingress, &[]).await;
        router
            .wait_routed(&service, &["d"], Duration::from_secs(15))
            .await;
        // Baker's dead letters of this service.
        let mut dead = client
            .subscribe(format!("_baker.dlq.{service}"))
            .await
            .unwrap();
        client.flush().await.unwrap();

        client
            .publish(ingress.subject(&service, "made"), "refused".into())
            .await
            .unwrap();
        // The instance: a consumer of its inbox stream that terminates it.
        let inbox = format!("_baker.{service}.d");
        let stream = format!("BAKER_INBOX_{}", baker_adapter_nats::stream_name(&inbox));
        let inbox = js.get_stream(&stream).await.expect("the inbox stream");
        let consumer = inbox
            .create_consumer(PullConfig {
                durable_name: Some("app".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let message = tokio::time::timeout(Duration::from_secs(15), messages.next())
            .await
            .expect("the message in the inbox")
            .unwrap()
            .unwrap();
        assert_eq!(message.payload.as_ref(), b"refused");
        message.ack_with(AckKind::Term).await.unwrap();

        let dead = tokio::time::timeout(Duration::from_secs(15), dead.next())
            .await
            .expect("a dead letter")
            .unwrap();
        assert_eq!(dead.payload.as_ref(), b"refused");
        let error = header_text(dead.headers.as_ref(), "baker-error");
        assert!(error.contains("terminated by its consumer app"), "{error}");
        assert_eq!(header_text(dead.headers.as_ref(), "baker-attempts"), "1");
    })
    .await;
}
