//! Shadow traffic against the real brokers: a version under a shadow rule
//! gets a copy of the rule's share of the messages and nothing else, while
//! the other instances get every original once; on NATS, what a copy and an
//! original look like to their consumers.

mod common;

use std::time::Duration;

use common::protocols::mosquitto::Mqtt;
use common::protocols::nats::{JetStream, NatsCore};
use common::protocols::rabbitmq::Amqp;
use common::protocols::{Pace, Protocol};
use common::*;
use futures::StreamExt;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Waits until the router's view of `service` holds instance `id`.
async fn wait_known(router: &Router, service: &str, id: &str) {
    wait_until(
        &format!("the router to know {service}/{id}"),
        Duration::from_secs(15),
        || async {
            let status = router.status().await;
            (status["services"][service]["instances"].as_array())
                .is_some_and(|all| all.iter().any(|i| i["id"] == id))
        },
    )
    .await;
}

scenario!(a_shadow_version_gets_copies_of_its_share_and_the_originals_lose_nothing:
    nats => NatsCore, jetstream => JetStream, amqp => Amqp, mqtt => Mqtt);

/// Two v1 instances and a v2 one under a 25% shadow rule: the v1 instances
/// share every one of 2,000 messages, once each; v2 gets a copy of exactly
/// a quarter of them (every fourth), counted as sent, and no original.
async fn a_shadow_version_gets_copies_of_its_share_and_the_originals_lose_nothing<P: Protocol>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("shadow");
    let mut inboxes = Vec::new();
    let mut agents = Vec::new();
    for (id, version) in [("a", "1"), ("b", "1"), ("next", "2")] {
        inboxes.push(protocol.inbox(&service, id).await);
        let spec = format!("service={service},id={id},version={version}");
        agents.push(protocol.agent_registering(&dir.url(), &spec));
    }
    let mut args = protocol.router_args(1);
    let rule = format!("{service}=2:25:100000");
    args.extend(["--watch", &service, "--shadow", &rule].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let router = Router::spawn(&dir.url(), &args).await;
    router
        .wait_routed(&service, &["a", "b"], Duration::from_secs(15))
        .await;
    wait_known(&router, &service, "next").await;
    let status = router.status().await;
    let next = (status["services"][&service]["instances"]
        .as_array()
        .unwrap()
        .iter())
    .find(|i| i["id"] == "next")
    .cloned()
    .unwrap();
    assert_eq!(
        (next["shadow"].as_bool(), next["routed"].as_bool()),
        (Some(true), Some(false))
    );

    let total = 2_000;
    protocol
        .publish(&service, "work", 0..total, Pace::Fast)
        .await;
    assert_every_message_once(&protocol, &[&inboxes[0], &inboxes[1]], total).await;
    let copies = &inboxes[2];
    wait_until("every copy arrives", Duration::from_secs(30), || async {
        copies.count() >= 500
    })
    .await;
    tokio::time::sleep(protocol.settle()).await;
    let (duplicates, seen) = tally(&[copies]);
    assert_eq!((seen.len(), duplicates), (500, 0), "a quarter, once each");
    assert!(seen.keys().all(|seq| *seq < total));
    let sent = format!("baker_shadow_copies_total{{service=\"{service}\",outcome=\"sent\"}} 500");
    assert!(router.metrics().await.contains(&sent), "{sent}");
    protocol.teardown().await;
}

/// On NATS, a copy carries `baker-shadow: true` and no reply address; the
/// original keeps its reply address and carries no mark, even when its
/// publisher set one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_marked_and_never_answered_and_an_original_is_not_marked() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("mark");
        let client = connect().await;
        let mut original = subscribe_inbox(&client, &service, "a").await;
        let mut copy = subscribe_inbox(&client, &service, "next").await;
        let url = nats_url();
        let spec = |id: &str, v: &str| format!("service={service},id={id},version={v}");
        let _a = agent_registering("nats", &url, &dir.url(), &spec("a", "1"));
        let _next = agent_registering("nats", &url, &dir.url(), &spec("next", "2"));
        let rule = format!("{service}=2:100");
        let router = Router::start(&dir.url(), &ingress, &["--shadow", &rule]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;
        wait_known(&router, &service, "next").await;

        let mut headers = async_nats::HeaderMap::new();
        headers.insert("baker-shadow", "true");
        let subject = ingress.subject(&service, "get");
        client
            .publish_with_reply_and_headers(subject, "requester.inbox", headers, "x".into())
            .await
            .unwrap();
        let wait = Duration::from_secs(10);
        let original = tokio::time::timeout(wait, original.next())
            .await
            .unwrap()
            .unwrap();
        let copy = tokio::time::timeout(wait, copy.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(header_text(original.headers.as_ref(), "baker-shadow"), "");
        assert_eq!(original.reply.as_deref(), Some("requester.inbox"));
        assert_eq!(header_text(copy.headers.as_ref(), "baker-shadow"), "true");
        assert_eq!(copy.reply, None);
        assert_eq!(&copy.payload[..], b"x");
    })
    .await;
}
