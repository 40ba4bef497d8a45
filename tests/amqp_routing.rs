//! End to end on the machine's RabbitMQ, each test in a vhost of its own,
//! with real `baker-mq` processes.

mod common;

use std::time::Duration;

use common::amqp::{self, User, Vhost};
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_a_routable_instance_land_in_the_dead_letter_queue_with_the_reason() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let _router = amqp::router(&dir.url(), &vhost, &[]).await;
        let (dead, full) = amqp::consume(&channel, "baker.dead-letters").await;
        amqp::publish(&channel, "baker", "nosuch.created", 0, 200, 100).await;
        wait_until("dead letters", Duration::from_secs(20), || async {
            dead.count() >= 200
        })
        .await;
        let (duplicates, seen) = tally(&[&dead]);
        assert_eq!((seen.len(), duplicates), (200, 0));
        let first = full.lock().unwrap()[0].clone();
        assert!(
            first
                .header("baker-error")
                .is_some_and(|e| e.contains("no routable instance of service \"nosuch\"")),
            "{:?}",
            first.headers
        );
        assert_eq!(first.header("baker-attempts"), Some("0"));
        assert_eq!(
            first.properties.delivery_mode(),
            &Some(2),
            "still persistent"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_restart_under_traffic_dead_letters_nothing() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let port = free_port();
        let mut dir = Directory::start_on(port).await;
        let (_conn, channel) = vhost.channel().await;
        let (dead, _) = amqp::consume(&channel, "baker.dead-letters").await;
        let (inbox, _) = amqp::consume(&channel, "_baker.restart.a").await;
        // A 9 s lease renewed every ~3 s: after the restart, the agent is
        // back in the directory only at its next renewal, seconds later.
        let _agent = agent_on(
            "amqp",
            &vhost.url(),
            &dir.url(),
            "restart",
            "a",
            &["--ttl", "9"],
        );
        let router = amqp::router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed("restart", &["a"], Duration::from_secs(15))
            .await;

        dir.proc.kill();
        let _dir2 = Directory::start_on(port).await;
        // Publish through the gap before the agent's renewal: the router must
        // keep the instance it knew rather than adopt the new, empty view.
        let total = 4_000u64;
        for batch in 0..40 {
            amqp::publish(&channel, "baker", "restart.t", batch * 100, 100, 100).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_until(
            "every message delivered",
            Duration::from_secs(30),
            || async { inbox.count() as u64 >= total },
        )
        .await;
        tokio::time::sleep(amqp::SETTLE).await;
        assert_eq!(dead.count(), 0, "nothing dead-lettered");
        let (_, seen) = tally(&[&inbox]);
        assert_eq!(seen.len() as u64, total, "none lost");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_with_nowhere_to_go_is_redelivered_not_dropped() {
    bounded(TEST_TIMEOUT, async {
        use lapin::options::QueueBindOptions;
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let router = amqp::router(&dir.url(), &vhost, &[]).await;
        // Someone deleted the dead-letter queue: baker.dlx routes nowhere.
        channel
            .queue_delete("baker.dead-letters".into(), Default::default())
            .await
            .unwrap();
        amqp::publish(&channel, "baker", "nowhere.created", 0, 5, 5).await;
        // The router tried to dead-letter them, and the broker returned
        // them: they went back to the ingress.
        wait_until("a refused dead letter", Duration::from_secs(20), || async {
            router
                .proc
                .log_text()
                .contains("could not dead-letter messages")
        })
        .await;
        // Once a queue is bound again, the messages (still in the ingress,
        // redelivered) arrive there.
        let (dead, _) = amqp::consume(&channel, "baker.dead-letters").await;
        channel
            .queue_bind(
                "baker.dead-letters".into(),
                "baker.dlx".into(),
                "#".into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .unwrap();
        wait_until("dead letters", Duration::from_secs(20), || async {
            tally(&[&dead]).1.len() >= 5
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_inbox_queue_sends_its_share_to_the_other_instances() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let (a, _) = amqp::consume(&channel, "_baker.inv.a").await;
        let (b, _) = amqp::consume(&channel, "_baker.inv.b").await;
        let _agents = [
            amqp::agent(&dir.url(), &vhost, "inv", "a"),
            amqp::agent(&dir.url(), &vhost, "inv", "b"),
        ];
        let router = amqp::router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed("inv", &["a", "b"], Duration::from_secs(15))
            .await;

        amqp::publish(&channel, "baker", "inv.t", 0, 1000, 200).await;
        wait_until("first batch", Duration::from_secs(20), || async {
            a.count() + b.count() >= 1000
        })
        .await;
        let (_c2, admin_channel) = vhost.channel().await;
        admin_channel
            .queue_delete("_baker.inv.b".into(), Default::default())
            .await
            .unwrap();
        let b_before = b.count();
        amqp::publish(&channel, "baker", "inv.t", 1000, 1000, 200).await;
        wait_until(
            "second batch, all to a",
            Duration::from_secs(30),
            || async { a.count() + b_before >= 2000 },
        )
        .await;
        let (duplicates, seen) = tally(&[&a, &b]);
        assert_eq!(seen.len(), 2000, "none lost");
        assert_eq!(duplicates, 0);
        assert_eq!(b.count(), b_before, "nothing reached the deleted queue");
    })
    .await;
}

/// RabbitMQ checks a message's user id against the user of the connection
/// that publishes it: forwarded by the router's connection, a publisher's
/// user id would be refused and close the router's channel, over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_user_id_costs_the_router_nothing() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let password = unique("pw-");
        let user = User::create(&vhost, &password);
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let (inbox, received) = amqp::consume(&channel, "_baker.who.a").await;
        let _agent = amqp::agent(&dir.url(), &vhost, "who", "a");
        let router = amqp::router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed("who", &["a"], Duration::from_secs(15))
            .await;
        let as_user = vhost
            .url()
            .replace("guest:guest", &format!("{}:{password}", user.name));
        let publisher = lapin::Connection::connect(&as_user, Default::default())
            .await
            .unwrap();
        let publishing = publisher.create_channel().await.unwrap();
        for seq in 0..20u64 {
            let properties = if seq % 2 == 0 {
                lapin::BasicProperties::default().with_user_id(user.name.as_str().into())
            } else {
                lapin::BasicProperties::default()
            };
            amqp::publish_one(&publishing, "who.t", seq.to_string().as_bytes(), properties).await;
        }
        let (dead, _) = amqp::consume(&channel, "baker.dead-letters").await;
        for seq in 100..104u64 {
            let properties =
                lapin::BasicProperties::default().with_user_id(user.name.as_str().into());
            amqp::publish_one(
                &publishing,
                "nobody.t",
                seq.to_string().as_bytes(),
                properties,
            )
            .await;
        }
        wait_until("every message", Duration::from_secs(20), || async {
            inbox.count() >= 20 && dead.count() >= 4
        })
        .await;
        let (duplicates, seen) = tally(&[&inbox]);
        assert_eq!((seen.len(), duplicates), (20, 0));
        let forwarded = received.lock().unwrap();
        assert!(forwarded.iter().all(|m| m.properties.user_id().is_none()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_is_ejected_then_readmitted() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let (a, _) = amqp::consume(&channel, "_baker.eject.a").await;
        let _agents = [
            amqp::agent(&dir.url(), &vhost, "eject", "a"),
            amqp::agent(&dir.url(), &vhost, "eject", "b"),
        ];
        let router = amqp::router(
            &dir.url(),
            &vhost,
            &["--outlier-failures", "3", "--outlier-ejection-secs", "10"],
        )
        .await;
        router
            .wait_routed("eject", &["a", "b"], Duration::from_secs(15))
            .await;
        // b's inbox queue is gone: every send to b comes back.
        let (_c2, admin_channel) = vhost.channel().await;
        admin_channel
            .queue_delete("_baker.eject.b".into(), Default::default())
            .await
            .unwrap();
        amqp::publish(&channel, "baker", "eject.t", 0, 300, 50).await;
        wait_until("all at a", Duration::from_secs(20), || async {
            a.count() >= 300
        })
        .await;
        let b_status = |status: serde_json::Value| {
            status["services"]["eject"]["instances"]
                .as_array()
                .and_then(|all| all.iter().find(|i| i["id"] == "b").cloned())
                .unwrap_or_default()
        };
        let status = b_status(router.status().await);
        assert_eq!(status["ejected"], serde_json::json!(true), "{status}");
        // While b is ejected no message tries it: its failed sends stop
        // growing (those already in flight when it was ejected are counted).
        let errors = status["errors"].as_u64().unwrap();
        amqp::publish(&channel, "baker", "eject.t", 300, 300, 50).await;
        wait_until("second batch at a", Duration::from_secs(20), || async {
            a.count() >= 600
        })
        .await;
        let status = b_status(router.status().await);
        assert_eq!(status["ejected"], serde_json::json!(true), "{status}");
        assert_eq!(
            status["errors"].as_u64().unwrap(),
            errors,
            "no send tried b while it was ejected"
        );
        let metrics = router.metrics().await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("baker_instance_ejected{")
                    && l.contains("\"b\"")
                    && l.ends_with(" 1")),
            "{metrics}"
        );

        // b's queue comes back: once its ejection ends, b takes messages again.
        let (b, _) = amqp::consume(&channel, "_baker.eject.b").await;
        wait_until(
            "b re-admitted and receiving",
            Duration::from_secs(30),
            || async {
                amqp::publish(&channel, "baker", "eject.t", 10_000, 20, 20).await;
                b.count() > 0
            },
        )
        .await;
        wait_until("b no longer ejected", Duration::from_secs(10), || async {
            b_status(router.status().await)["ejected"] == serde_json::json!(false)
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_broker_connections_are_reestablished_and_nothing_is_lost() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let (a, _) = amqp::consume(&channel, "_baker.cut.a").await;
        let (dead, _) = amqp::consume(&channel, "baker.dead-letters").await;
        let _agent = amqp::agent(&dir.url(), &vhost, "cut", "a");
        let router = amqp::router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed("cut", &["a"], Duration::from_secs(15))
            .await;

        let total = 30_000u64;
        let publisher = {
            let channel = channel.clone();
            tokio::spawn(
                async move { amqp::publish(&channel, "baker", "cut.t", 0, total, 200).await },
            )
        };
        wait_until("some delivered", Duration::from_secs(30), || async {
            a.count() >= 2000
        })
        .await;
        // The agent's connection and the router's.
        let closed = amqp::close_baker_connections(&vhost, 2).await;
        assert!(closed >= 1, "closed the baker-mq connections ({closed})");
        publisher.await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while tally(&[&a]).1.len() < total as usize && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (duplicates, seen) = tally(&[&a]);
        if seen.len() < total as usize {
            let missing: Vec<u64> = (0..total).filter(|s| !seen.contains_key(s)).take(10).collect();
            let queues = vhost.queues("name,messages_ready,messages_unacknowledged,consumers");
            let channels =
                vhost.channels("name,consumer_count,messages_unacknowledged,prefetch_count");
            panic!(
                "after the reconnection only {} of {total} delivered (dead-lettered {}), first missing {missing:?}; queues:\n{queues:?}\nchannels:\n{channels:?}\nrouter metrics:\n{}",
                seen.len(),
                dead.count(),
                router.metrics().await
            );
        }
        eprintln!("connection loss: {total} sent, {duplicates} duplicates delivered");
        assert_eq!(
            dead.count(),
            0,
            "a broker outage sends messages back for redelivery, not to the dead letters"
        );
        let health_url = format!("http://{}/healthz", router.admin);
        wait_until(
            "every connection back up in /healthz",
            Duration::from_secs(15),
            || async {
                let health: serde_json::Value = match reqwest::get(&health_url).await {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => return false,
                };
                let brokers = health["brokers"].as_array().cloned().unwrap_or_default();
                assert!(
                    brokers
                        .iter()
                        .all(|b| !b["broker"].as_str().unwrap_or("").contains("guest:guest")),
                    "password redacted: {health}"
                );
                !brokers.is_empty()
                    && brokers
                        .iter()
                        .all(|b| b["connected"] == serde_json::json!(true))
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_works_through_the_router_with_direct_reply_to_and_a_reply_queue() {
    bounded(TEST_TIMEOUT, async {

        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        amqp::declare_queue(&channel, "_baker.rpc.r").await;
        let (_rconn, responder) = vhost.channel().await;
        amqp::respond(responder, "_baker.rpc.r").await;
        let _agent = amqp::agent(&dir.url(), &vhost, "rpc", "r");
        let router = amqp::router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed("rpc", &["r"], Duration::from_secs(15))
            .await;

        // Direct reply-to: the instance answers the requester's channel
        // directly, through the same broker.
        let reply = amqp::direct_request(&vhost, "rpc.get", b"1", "c-1").await;
        assert_eq!(reply.data, b"pong:1");
        assert_eq!(amqp::correlation_id(&reply), Some("c-1"));

        // A request that cannot be delivered is dead-lettered, and its
        // requester answered at once with the reason.
        let reply = amqp::direct_request(&vhost, "nosuch.get", b"0", "c-0").await;
        assert_eq!(amqp::correlation_id(&reply), Some("c-0"));
        let error = reply
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("baker-error").cloned());
        assert!(
            matches!(&error, Some(lapin::types::AMQPValue::LongString(s))
                if String::from_utf8_lossy(s.as_bytes()).contains("no routable instance of service \"nosuch\"")),
            "{error:?}"
        );

        // An ordinary reply queue.
        let (reply_queue, replies) = amqp::consume(&channel, "rpc-replies").await;
        amqp::publish_one(&channel, "rpc.get", b"2", lapin::BasicProperties::default().with_reply_to("rpc-replies".into()).with_correlation_id("c-2".into()),).await;
        wait_until(
            "reply on the reply queue",
            Duration::from_secs(10),
            || async { reply_queue.count() >= 1 },
        )
        .await;
        let reply = replies.lock().unwrap()[0].clone();
        assert_eq!(reply.payload, b"pong:2");
        assert_eq!(
            reply
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str()),
            Some("c-2")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_when_the_ingress_has_lost_its_broker() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let router = amqp::router(&dir.url(), &vhost, &[]).await;
        let readyz = format!("http://{}/readyz", router.admin);
        let healthz = format!("http://{}/healthz", router.admin);
        wait_until("ready", Duration::from_secs(15), || http_ok(&readyz)).await;

        // The broker refuses the router from now on, as an outage would.
        vhost.revoke_guest();
        assert!(amqp::close_baker_connections(&vhost, 1).await > 0);
        wait_until(
            "not ready, saying the ingress is disconnected",
            Duration::from_secs(15),
            || async {
                let response = reqwest::get(&readyz).await.unwrap();
                response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && response
                        .text()
                        .await
                        .unwrap()
                        .contains("ingress disconnected")
            },
        )
        .await;
        let health: serde_json::Value = reqwest::get(&healthz).await.unwrap().json().await.unwrap();
        assert_eq!(health["status"], "alive", "{health}");
        assert_eq!(health["ingress"]["connected"], false, "{health}");

        vhost.grant_guest();
        // The ingress retries with a backoff of at most 10 s.
        wait_until("ready again", Duration::from_secs(30), || http_ok(&readyz)).await;
        let health: serde_json::Value = reqwest::get(&healthz).await.unwrap().json().await.unwrap();
        assert_eq!(health["ingress"]["connected"], true, "{health}");
    })
    .await;
}
