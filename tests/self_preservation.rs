//! Self-preservation: when half or more of a service's instances lapse at
//! once (their agents cut off from the directory, the instances alive), a
//! router keeps them where a send to a gone instance would fail, and keeps
//! routing to them; on core NATS, where such a send succeeds silently, it
//! does not.

mod common;

use std::time::Duration;

use common::protocols::mosquitto::Mqtt;
use common::protocols::nats::{JetStream, NatsCore};
use common::protocols::rabbitmq::Amqp;
use common::protocols::{Pace, Protocol};
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

scenario!(a_burst_of_lapsed_leases_is_held_back_and_routed_to: amqp => Amqp, mqtt => Mqtt);

async fn a_burst_of_lapsed_leases_is_held_back_and_routed_to<P: Protocol>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    held_back(&protocol, &dir.url()).await;
    protocol.teardown().await;
}

/// The same on the JetStream KV directory (a bucket of the test's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_lapsed_leases_on_the_kv_directory_is_held_back_too() {
    bounded(TEST_TIMEOUT, async {
        let protocol = Amqp::setup().await;
        let bucket = unique("dir-");
        held_back(&protocol, &format!("{}?bucket={bucket}", nats_url())).await;
        protocol.teardown().await;
        let js = async_nats::jetstream::new(connect().await);
        let _ = js.delete_key_value(&bucket).await;
    })
    .await;
}

/// Four instances whose agents freeze lapse within one lease: the router
/// keeps them, says so, and delivers to them (they are alive); once the
/// agents register again, nothing is held.
async fn held_back<P: Protocol>(protocol: &P, directory: &str) {
    let service = unique("blip");
    let ids = ["a", "b", "c", "d"];
    let mut inboxes = Vec::new();
    for id in ids {
        inboxes.push(protocol.inbox(&service, id).await);
    }
    let agents: Vec<Proc> = (ids.iter())
        .map(|id| {
            let spec = format!("service={service},id={id},ttl=2");
            protocol.agent_registering(directory, &spec)
        })
        .collect();
    let router = start_router(directory, protocol, 1, &service).await;
    router
        .wait_routed(&service, &ids, Duration::from_secs(15))
        .await;

    // The agents freeze: every lease lapses within one TTL.
    for agent in &agents {
        agent.pause();
    }
    wait_until("held back", Duration::from_secs(15), || async {
        router.status().await["directory"]["preserved_instances"] == 4
    })
    .await;
    assert_eq!(router.routed(&service).await, ids);
    let health = router.healthz().await;
    assert_eq!(health["directory"]["preserved_instances"], 4, "{health}");
    assert!(router
        .metrics()
        .await
        .contains("baker_directory_preserved_instances 4"));

    // The instances are alive: they get everything sent meanwhile.
    let total = 2_000;
    protocol.publish(&service, "t", 0..total, Pace::Fast).await;
    let all: Vec<&Inbox> = inboxes.iter().collect();
    assert_every_message_once(protocol, &all, total).await;

    // The agents come back and register again: nothing held any more.
    for agent in &agents {
        agent.resume();
    }
    wait_until("released", Duration::from_secs(20), || async {
        router.status().await["directory"]["preserved_instances"] == 0
    })
    .await;
    router
        .wait_routed(&service, &ids, Duration::from_secs(15))
        .await;
}

scenario!(lapsed_core_nats_inboxes_are_not_held: nats => NatsCore, jetstream => JetStream);

/// On a core NATS inbox (whichever the ingress) a send to a gone instance
/// succeeds for no one, so lapsed instances leave at once, whatever their
/// number.
async fn lapsed_core_nats_inboxes_are_not_held<P: Protocol>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("blip");
    let ids = ["a", "b", "c"];
    let agents: Vec<Proc> = (ids.iter())
        .map(|id| {
            let spec = format!("service={service},id={id},ttl=2");
            protocol.agent_registering(&dir.url(), &spec)
        })
        .collect();
    let router = start_router(&dir.url(), &protocol, 1, &service).await;
    router
        .wait_routed(&service, &ids, Duration::from_secs(15))
        .await;
    for agent in &agents {
        agent.pause();
    }
    router
        .wait_routed(&service, &[], Duration::from_secs(15))
        .await;
    assert_eq!(router.status().await["directory"]["preserved_instances"], 0);
    protocol.teardown().await;
}
