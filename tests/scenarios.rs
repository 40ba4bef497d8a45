//! The scenario suite: each behaviour written once against
//! [`Protocol`](common::protocols::Protocol), and run for every protocol
//! that has it. A test is named `<scenario>::<protocol>`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::protocols::mosquitto::Mqtt;
use common::protocols::nats::{JetStream, NatsCore};
use common::protocols::rabbitmq::Amqp;
use common::protocols::{Pace, Protocol};
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

scenario!(three_instances_split_the_load_evenly_with_none_lost_or_duplicated:
    nats => NatsCore, jetstream => JetStream, amqp => Amqp, mqtt => Mqtt);

/// Three instances of a service share 30,000 messages evenly (each within 5%
/// of a third), none lost, none duplicated.
async fn three_instances_split_the_load_evenly_with_none_lost_or_duplicated<P: Protocol>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("split");
    let ids = ["a", "b", "c"];
    let mut inboxes = Vec::new();
    for id in ids {
        inboxes.push(protocol.inbox(&service, id).await);
    }
    let _agents: Vec<_> = ids
        .iter()
        .map(|id| protocol.agent(&dir.url(), &service, id))
        .collect();
    let router = start_router(&dir.url(), &protocol, 1, &service).await;
    router
        .wait_routed(&service, &ids, Duration::from_secs(15))
        .await;

    let total = 30_000u64;
    protocol
        .publish(&service, "work", 0..total, Pace::Fast)
        .await;
    let inboxes: Vec<&Inbox> = inboxes.iter().collect();
    assert_every_message_once(&protocol, &inboxes, total).await;
    for inbox in &inboxes {
        let share = inbox.count() as f64 / total as f64;
        assert!((share - 1.0 / 3.0).abs() <= 0.05 / 3.0, "share {share}");
    }
    protocol.teardown().await;
}

scenario!(a_router_killed_mid_stream_loses_nothing_once_restarted:
    jetstream => JetStream, amqp => Amqp, mqtt => Mqtt);

/// A router killed with SIGKILL while it routes, then started again, loses
/// nothing: what it held unsettled is delivered again (duplicates allowed,
/// and reported).
async fn a_router_killed_mid_stream_loses_nothing_once_restarted<P: Protocol>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("crash");
    let a = protocol.inbox(&service, "a").await;
    let _agent = protocol.agent(&dir.url(), &service, "a");
    let mut router = start_router(&dir.url(), &protocol, 1, &service).await;
    router
        .wait_routed(&service, &["a"], Duration::from_secs(15))
        .await;

    let total = 20_000u64;
    let publishing = protocol.publish(&service, "t", 0..total, Pace::Steady);
    let killing = async {
        wait_until("some delivered", Duration::from_secs(30), || async {
            a.count() >= 3000
        })
        .await;
        router.proc.kill();
        let killed_at = a.count();
        assert!(
            killed_at < total as usize,
            "killed mid-stream, but all {total} were delivered already"
        );
        let router = start_router(&dir.url(), &protocol, 1, &service).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;
        (router, killed_at)
    };
    let ((), (_router, killed_at)) = tokio::join!(publishing, killing);
    wait_until(
        "every message delivered",
        Duration::from_secs(90),
        || async { tally(&[&a]).1.len() >= total as usize },
    )
    .await;
    tokio::time::sleep(protocol.settle()).await;
    let (duplicates, seen) = tally(&[&a]);
    assert_eq!(
        seen.len(),
        total as usize,
        "every message delivered at least once"
    );
    eprintln!(
        "router SIGKILL mid-stream (after {killed_at} delivered): {total} sent, {duplicates} duplicates delivered"
    );
    protocol.teardown().await;
}

scenario!(a_router_stopped_with_sigterm_mid_stream_hands_over_with_none_lost_or_duplicated:
    nats => NatsCore, jetstream => JetStream, amqp => Amqp, mqtt => Mqtt);

/// Of two routers sharing an ingress, one is stopped with SIGTERM while
/// traffic flows, with a backlog of its own: it exits 0, and the other
/// takes over with nothing lost or duplicated.
async fn a_router_stopped_with_sigterm_mid_stream_hands_over_with_none_lost_or_duplicated<
    P: Protocol,
>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("handover");
    let a = protocol.inbox(&service, "a").await;
    let _agent = protocol.agent(&dir.url(), &service, "a");
    let mut r1 = start_router(&dir.url(), &protocol, 1, &service).await;
    let r2 = start_router(&dir.url(), &protocol, 2, &service).await;
    for router in [&r1, &r2] {
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;
    }

    // Steady traffic, then a burst that leaves r1 with a backlog as it is
    // told to stop, then steady traffic again.
    protocol
        .publish(&service, "t", 0..2_000, Pace::Steady)
        .await;
    let stopping = async {
        let code = tokio::task::block_in_place(|| r1.proc.terminate(Duration::from_secs(20)));
        assert_eq!(code, Some(0), "r1 exits cleanly: {}", r1.proc.log_text());
    };
    let publishing = async {
        protocol
            .publish(&service, "t", 2_000..22_000, Pace::Burst)
            .await;
        protocol
            .publish(&service, "t", 22_000..24_000, Pace::Steady)
            .await;
    };
    tokio::join!(stopping, publishing);
    assert_every_message_once(&protocol, &[&a], 24_000).await;
    protocol.teardown().await;
}

scenario!(an_instance_whose_broker_never_answers_does_not_stall_the_others:
    nats => NatsCore, jetstream => JetStream, amqp => Amqp, mqtt => Mqtt);

/// Of two instances, one has a broker that accepts connections and then
/// says nothing (a network partition that drops packets): the messages
/// first tried there move on to the other instance, none lost, none twice.
async fn an_instance_whose_broker_never_answers_does_not_stall_the_others<P: Protocol>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("stuck");
    let a = protocol.inbox(&service, "a").await;
    let _agent = protocol.agent(&dir.url(), &service, "a");
    // b's agent could not prepare an inbox on a broker that never answers:
    // b is registered directly, with a lease that outlasts the test.
    let (port, _blackhole) = blackhole().await;
    let record = serde_json::json!({
        "service": service,
        "id": "b",
        "endpoint": {
            "adapter": P::ADAPTER,
            "broker": protocol.broker_at(port),
            "inbox": protocol.inbox_address(&service, "b"),
        },
        "ttl_secs": 600,
    });
    let registered = reqwest::Client::new()
        .put(format!("{}/v1/services/{service}/instances/b", dir.url()))
        .json(&record)
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{registered:?}");
    let router = start_router(&dir.url(), &protocol, 1, &service).await;
    router
        .wait_routed(&service, &["a", "b"], Duration::from_secs(15))
        .await;

    let total = 2_000u64;
    protocol.publish(&service, "t", 0..total, Pace::Fast).await;
    assert_every_message_once(&protocol, &[&a], total).await;
    protocol.teardown().await;
}

scenario!(requests_are_answered_through_the_router_and_unknown_services_get_an_error_reply:
    nats => NatsCore, amqp => Amqp, mqtt => Mqtt);

/// A request through the router reaches an instance, whose reply reaches
/// the requester; a request to a service with no instance is answered at
/// once with an error that says why; a plain message to such a service is
/// counted.
async fn requests_are_answered_through_the_router_and_unknown_services_get_an_error_reply<
    P: Protocol,
>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("rpc");
    let responder =
        (protocol.responder(&service, "r1").await).expect("the protocol takes requests");
    let _agent = protocol.agent(&dir.url(), &service, "r1");
    let router = start_router(&dir.url(), &protocol, 1, &service).await;
    router
        .wait_routed(&service, &["r1"], Duration::from_secs(15))
        .await;

    let reply = protocol.request(&service, "get", "42").await;
    assert_eq!(reply.payload, "pong:42", "{reply:?}");
    assert_eq!(reply.error, None);
    let reply = protocol.request(&unique("nosuch"), "get", "x").await;
    assert!(
        (reply.error.as_deref()).is_some_and(|e| e.contains("no routable instance")),
        "the error reply says why: {reply:?}"
    );

    let ghost = unique("ghost");
    protocol.publish(&ghost, "x", 0..1, Pace::Fast).await;
    let counted = format!("baker_no_route_total{{service=\"{ghost}\"}}");
    wait_until("the no-route counted", Duration::from_secs(10), || async {
        router.metrics().await.contains(&counted)
    })
    .await;
    responder.abort();
    protocol.teardown().await;
}

scenario!(a_rolling_upgrade_under_load_loses_nothing:
    nats => NatsCore, jetstream => JetStream, amqp => Amqp, mqtt => Mqtt);

/// Three v1 instances, then three v2 join; each v1 instance is drained (its
/// agent marks it draining, waits, deregisters it) while traffic flows: none
/// lost, no v1 instance gets a message published after its drain began, and
/// everything after the last drain goes to v2.
async fn a_rolling_upgrade_under_load_loses_nothing<P: Protocol + Send + Sync + 'static>() {
    let protocol = Arc::new(P::setup().await);
    let dir = Directory::start().await;
    let service = unique("upgrade");
    let ids = ["v1-0", "v1-1", "v1-2", "v2-0", "v2-1", "v2-2"];
    let mut inboxes = Vec::new();
    for id in ids {
        inboxes.push(protocol.inbox(&service, id).await);
    }
    let spec = |id: &str| {
        let version = &id[1..2];
        format!("service={service},id={id},version={version}")
    };
    let mut v1_agents: Vec<Proc> = (ids[..3].iter())
        .map(|id| protocol.agent_registering(&dir.url(), &spec(id)))
        .collect();
    let router = start_router(&dir.url(), &*protocol, 1, &service).await;
    router
        .wait_routed(&service, &ids[..3], Duration::from_secs(15))
        .await;

    let traffic = {
        let (protocol, service) = (protocol.clone(), service.clone());
        SteadyTraffic::start(move |start, count| {
            let (protocol, service) = (protocol.clone(), service.clone());
            async move { (protocol.publish(&service, "work", start..start + count, Pace::Fast)).await }
        })
    };
    let _v2_agents: Vec<Proc> = (ids[3..].iter())
        .map(|id| protocol.agent_registering(&dir.url(), &spec(id)))
        .collect();
    router
        .wait_routed(&service, &ids, Duration::from_secs(15))
        .await;
    wait_until(
        "traffic reaches every v2 instance",
        Duration::from_secs(15),
        || async { inboxes[3..].iter().all(|inbox| inbox.count() > 0) },
    )
    .await;

    let (total, duplicates) =
        drain_old_instances(&router, &service, &mut v1_agents, traffic, &inboxes).await;
    eprintln!("rolling upgrade: {total} messages, none lost, {duplicates} delivered twice");
    if let Ok(protocol) = Arc::try_unwrap(protocol) {
        protocol.teardown().await;
    }
}

scenario!(two_routers_on_one_ingress_split_the_load_and_deliver_each_message_once:
    nats => NatsCore, jetstream => JetStream, amqp => Amqp, mqtt => Mqtt);

/// Two routers on one ingress (one queue group) share its messages: each
/// routes a part (more than a tenth), and every message is delivered once.
async fn two_routers_on_one_ingress_split_the_load_and_deliver_each_message_once<P: Protocol>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("pair");
    let ids = ["a", "b"];
    let a = protocol.inbox(&service, "a").await;
    let b = protocol.inbox(&service, "b").await;
    let _agents: Vec<_> = ids
        .iter()
        .map(|id| protocol.agent(&dir.url(), &service, id))
        .collect();
    let r1 = start_router(&dir.url(), &protocol, 1, &service).await;
    let r2 = start_router(&dir.url(), &protocol, 2, &service).await;
    for router in [&r1, &r2] {
        router
            .wait_routed(&service, &ids, Duration::from_secs(15))
            .await;
    }

    let total = 10_000u64;
    protocol
        .publish(&service, "once", 0..total, Pace::Fast)
        .await;
    assert_every_message_once(&protocol, &[&a, &b], total).await;
    let delivered = |status: serde_json::Value| -> u64 {
        (status["services"][&service]["instances"].as_array())
            .map(|a| a.iter().map(|i| i["delivered"].as_u64().unwrap_or(0)).sum())
            .unwrap_or(0)
    };
    let (one, two) = (delivered(r1.status().await), delivered(r2.status().await));
    assert_eq!(one + two, total);
    assert!(
        one > total / 10 && two > total / 10,
        "both routers share the load: {one} and {two}"
    );
    protocol.teardown().await;
}

scenario!(undeliverable_messages_are_dead_lettered_with_the_reason_and_stall_nothing:
    jetstream => JetStream, amqp => Amqp, mqtt => Mqtt);

/// Messages for a service with no instance, and one over `max_payload`,
/// are dead-lettered with the reason; the messages around them are
/// delivered.
async fn undeliverable_messages_are_dead_lettered_with_the_reason_and_stall_nothing<P: Protocol>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("dlq");
    let nobody = unique("nobody");
    let a = protocol.inbox(&service, "a").await;
    let _agent = protocol.agent(&dir.url(), &service, "a");
    let args = protocol.router_args(1);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--max-payload", "1000"]);
    let router = Router::spawn(&dir.url(), &args).await;
    router
        .wait_routed(&service, &["a"], Duration::from_secs(15))
        .await;
    let dead = (protocol.dead_letters(&[&service, &nobody]).await)
        .expect("the protocol keeps dead letters");

    protocol.publish(&service, "t", 0..100, Pace::Fast).await;
    protocol.publish(&nobody, "t", 1000..1020, Pace::Fast).await;
    protocol
        .publish_payload(&service, "t", vec![b'x'; 5000])
        .await;
    protocol.publish(&service, "t", 100..200, Pace::Fast).await;
    assert_every_message_once(&protocol, &[&a], 200).await;
    wait_until("21 dead letters", Duration::from_secs(20), || async {
        dead.lock().unwrap().len() >= 21
    })
    .await;
    let letters = dead.lock().unwrap().clone();
    assert_eq!(letters.len(), 21, "{letters:?}");
    let (large, unrouted): (Vec<_>, Vec<_>) = letters.iter().partition(|l| l.payload.len() == 5000);
    assert_eq!(large.len(), 1);
    assert!(
        (large[0].reason.as_deref()).is_some_and(|r| r.contains("exceeds max_payload 1000")),
        "{:?}",
        large[0].reason
    );
    for letter in unrouted {
        assert!(
            (letter.reason.as_deref()).is_some_and(|r| r.contains("no routable instance")),
            "{letter:?}"
        );
        assert_eq!(letter.attempts.as_deref(), Some("0"));
    }
    protocol.teardown().await;
}

/// A TCP port that accepts connections and never answers.
async fn blackhole() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

scenario!(a_router_keeps_messages_in_its_zone_and_fails_over_when_the_zone_empties:
    nats => NatsCore, jetstream => JetStream, amqp => Amqp, mqtt => Mqtt);

/// Instances in three zones, a router in the first routing the service by
/// zone: every message goes to the instance in its zone; once that one
/// leaves (its agent stops and drains it), the next messages are split
/// between the two other zones, counted as crossing zones, with none lost
/// or duplicated.
async fn a_router_keeps_messages_in_its_zone_and_fails_over_when_the_zone_empties<P: Protocol>() {
    let protocol = P::setup().await;
    let dir = Directory::start().await;
    let service = unique("zones");
    let zones = [("a", "z1"), ("b", "z2"), ("c", "z3")];
    let mut inboxes = Vec::new();
    let mut agents = Vec::new();
    for (id, zone) in zones {
        inboxes.push(protocol.inbox(&service, id).await);
        let spec = format!("service={service},id={id},zone={zone}");
        agents.push(protocol.agent_registering(&dir.url(), &spec));
    }
    let mut args = protocol.router_args(1);
    args.extend(
        [
            "--watch",
            &service,
            "--zone",
            "z1",
            "--zone-routing",
            &service,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let router = Router::spawn(&dir.url(), &args).await;
    router
        .wait_routed(&service, &["a", "b", "c"], Duration::from_secs(15))
        .await;
    let all: Vec<&Inbox> = inboxes.iter().collect();

    protocol.publish(&service, "work", 0..300, Pace::Fast).await;
    assert_every_message_once(&protocol, &all, 300).await;
    let counts: Vec<usize> = inboxes.iter().map(|i| i.count()).collect();
    assert_eq!(counts, [300, 0, 0], "every message stays in z1");
    assert_eq!(router.status().await["services"][&service]["zone"], "z1");

    // z1 empties: its only instance's agent stops (draining it first).
    let code = tokio::task::block_in_place(|| agents[0].terminate(Duration::from_secs(30)));
    assert_eq!(code, Some(0), "the agent drains and exits");
    router
        .wait_routed(&service, &["b", "c"], Duration::from_secs(15))
        .await;
    assert_eq!(
        router.status().await["services"][&service]["zone_failover"],
        true
    );
    protocol
        .publish(&service, "work", 300..900, Pace::Fast)
        .await;
    assert_every_message_once(&protocol, &all, 900).await;
    let counts: Vec<usize> = inboxes.iter().map(|i| i.count()).collect();
    assert_eq!(counts[0], 300, "nothing more for the emptied zone");
    assert_eq!(counts[1] + counts[2], 600);
    assert!(
        counts[1] >= 200 && counts[2] >= 200,
        "split between z2 and z3: {counts:?}"
    );
    let crossed = format!("baker_zone_crossed_total{{service=\"{service}\"}} 600");
    assert!(router.metrics().await.contains(&crossed), "{crossed}");
    protocol.teardown().await;
}
