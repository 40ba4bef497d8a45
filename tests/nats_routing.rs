//! End to end on a real NATS server, with real `baker-mq` processes: a
//! directory, routers and agents, and the test as publisher and instances.

mod common;

use futures::StreamExt;
use std::time::{Duration, Instant};

use common::nats_server::NatsNode;
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// A router on a core NATS ingress of its own, routing `service` to one
/// instance `a` whose inbox the test consumes.
struct OneInstance {
    _dir: Directory,
    ingress: Ingress,
    service: String,
    client: async_nats::Client,
    a: Inbox,
    _agent: Proc,
    router: Router,
}

impl OneInstance {
    async fn start(name: &str) -> Self {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique(name);
        let client = connect().await;
        let a = consume_inbox(&client, &service, "a").await;
        let agent = agent(&dir.url(), &service, "a", &[]);
        let router = Router::start(&dir.url(), &ingress, &[]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(10))
            .await;
        OneInstance {
            _dir: dir,
            ingress,
            service,
            client,
            a,
            _agent: agent,
            router,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistered_instance_gets_nothing_and_new_instance_gets_traffic_within_a_second() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("churn");
        let client = connect().await;
        let a = consume_inbox(&client, &service, "a").await;
        let b = consume_inbox(&client, &service, "b").await;
        let c = consume_inbox(&client, &service, "c").await;
        let _agent_a = agent(&dir.url(), &service, "a", &[]);
        let mut agent_b = agent(&dir.url(), &service, "b", &[]);
        let router = Router::start(&dir.url(), &ingress, &[]).await;
        router
            .wait_routed(&service, &["a", "b"], Duration::from_secs(10))
            .await;

        // Steady traffic for the whole test.
        let publisher = spawn_publisher(
            &client,
            ingress.subject(&service, "tick"),
            12_000,
            10,
            Duration::from_millis(5),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(b.count() > 0, "b received before leaving");

        // b leaves: SIGTERM deregisters it.
        assert_eq!(
            agent_b.terminate(Duration::from_secs(5)),
            Some(0),
            "agent exits 0 on SIGTERM"
        );
        wait_until(
            "b gone from the directory",
            Duration::from_secs(2),
            || async { !dir.instances(&service).await.contains(&"b".to_owned()) },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b_after_propagation = b.count();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            b.count(),
            b_after_propagation,
            "a deregistered instance receives nothing"
        );

        // c joins: it receives within 1 s of being registered.
        let _agent_c = agent(&dir.url(), &service, "c", &[]);
        wait_until("c registered", Duration::from_secs(5), || async {
            dir.instances(&service).await.contains(&"c".to_owned())
        })
        .await;
        let registered_at = Instant::now();
        wait_until("c receives", Duration::from_secs(3), || async {
            c.count() > 0
        })
        .await;
        let first = c
            .first_arrival_after(registered_at - Duration::from_millis(100))
            .unwrap();
        let delay = first.saturating_duration_since(registered_at);
        assert!(
            delay <= scaled(Duration::from_secs(1)),
            "new instance first received after {delay:?}"
        );
        assert!(a.count() > 0);
        publisher.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_stops_receiving_within_ttl_plus_one_second() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("lease");
        let client = connect().await;
        let a = consume_inbox(&client, &service, "a").await;
        let b = consume_inbox(&client, &service, "b").await;
        let _agent_a = agent(&dir.url(), &service, "a", &[]);
        let mut agent_b = agent(&dir.url(), &service, "b", &["--ttl", "2"]);
        let router = Router::start(&dir.url(), &ingress, &[]).await;
        router
            .wait_routed(&service, &["a", "b"], Duration::from_secs(10))
            .await;

        let publisher = spawn_publisher(
            &client,
            ingress.subject(&service, "tick"),
            10_000,
            5,
            Duration::from_millis(5),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed_at = Instant::now();
        agent_b.kill();
        tokio::time::sleep(Duration::from_secs(4)).await;
        publisher.abort();
        let last = b.last_arrival().expect("b received before the kill");
        let after_kill = last.saturating_duration_since(killed_at);
        assert!(
            after_kill <= scaled(Duration::from_secs(3)),
            "b still received {after_kill:?} after its agent died (ttl 2 s)"
        );
        assert!(
            a.last_arrival().unwrap() > killed_at + Duration::from_secs(3),
            "a keeps receiving"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_survive_a_directory_outage_and_registrations_rebuild_after_restart() {
    bounded(TEST_TIMEOUT, async {
        let port = free_port();
        let mut dir = Directory::start_on(port).await;
        let url = dir.url();
        let ingress = Ingress::new();
        let service = unique("outage");
        let client = connect().await;
        let a = consume_inbox(&client, &service, "a").await;
        let b = consume_inbox(&client, &service, "b").await;
        let _agent_a = agent(&url, &service, "a", &["--ttl", "2"]);
        let router = Router::start(&url, &ingress, &[]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(10))
            .await;
        let subject = ingress.subject(&service, "t");

        // The directory dies: the router keeps routing from its last view.
        dir.proc.kill();
        wait_until(
            "router notices the outage",
            Duration::from_secs(15),
            || async {
                router.status().await["directory"]["reachable"] == serde_json::json!(false)
            },
        )
        .await;
        publish_paced(&client, &subject, 0, 1000, 100, Duration::from_millis(10)).await;
        wait_until(
            "routed during the outage",
            Duration::from_secs(10),
            || async { a.count() >= 1000 },
        )
        .await;
        let health = router.healthz().await;
        assert_eq!(health["directory"]["reachable"], serde_json::json!(false));
        assert!(health["directory"]["view_age_secs"].as_f64().unwrap() > 0.0);

        // A new directory on the same address: a re-registers on its own,
        // and an instance registered after the restart is routed to.
        let dir2 = Directory::start_on(port).await;
        let _agent_b = agent(&url, &service, "b", &["--ttl", "2"]);
        wait_until("a re-registered", Duration::from_secs(5), || async {
            dir2.instances(&service).await.contains(&"a".to_owned())
        })
        .await;
        router
            .wait_routed(&service, &["a", "b"], Duration::from_secs(15))
            .await;
        publish_paced(
            &client,
            &subject,
            1000,
            1000,
            100,
            Duration::from_millis(10),
        )
        .await;
        wait_until(
            "both receive after the restart",
            Duration::from_secs(10),
            || async { a.count() + b.count() >= 2000 },
        )
        .await;
        assert!(b.count() >= 400, "b got its share: {}", b.count());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_malformed_headers_are_counted_and_cost_no_good_message() {
    bounded(TEST_TIMEOUT, async {
        let setup = OneInstance::start("badhdr").await;
        let OneInstance {
            ingress,
            service,
            client,
            a,
            router,
            ..
        } = &setup;
        let reply = unique("_INBOX.bad.");
        let mut replies = client.subscribe(reply.clone()).await.unwrap();
        client.flush().await.unwrap();

        // 20 bad among 5,000 good, in one connection's order: before the
        // fix the router's client dropped its connection at the first bad
        // one, and with it the good ones in flight.
        let frames = mixed_frames(&ingress.subject(service, "t"), 5_000, 20, &reply);
        raw_publish(&frames).await;

        assert_each_once(a, 5_000, Duration::from_secs(20)).await;
        wait_until(
            "the bad ones are counted",
            Duration::from_secs(10),
            || async {
                router
                    .metrics()
                    .await
                    .contains("baker_nats_malformed_total 20")
            },
        )
        .await;
        // The requester among them learns why.
        let answer = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("an error reply")
            .unwrap();
        let error = header_text(answer.headers.as_ref(), "baker-error");
        assert!(error.contains("malformed header block"), "{error}");
        let log = router.proc.log_text();
        assert!(
            !log.contains("reconnect"),
            "the router kept its connection:\n{log}"
        );
        assert_eq!(
            log.matches("malformed headers").count(),
            1,
            "logged once:\n{log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_headers_is_routed_without_a_header_block() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("plain");
        let client = connect().await;
        let mut inbox = subscribe_inbox(&client, &service, "a").await;
        let _agent = agent(&dir.url(), &service, "a", &[]);
        let router = Router::start(&dir.url(), &ingress, &[]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(10))
            .await;
        // A publisher's own baker-msg-id is Baker's to give: not kept on an
        // at-most-once ingress.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("baker-msg-id", "mine");
        client
            .publish_with_headers(ingress.subject(&service, "t"), headers, "0".into())
            .await
            .unwrap();
        client
            .publish(ingress.subject(&service, "t"), "1".into())
            .await
            .unwrap();
        for _ in 0..2 {
            let got = tokio::time::timeout(Duration::from_secs(5), inbox.next())
                .await
                .expect("the instance receives")
                .unwrap();
            // Core NATS is at most once: Baker adds nothing to read.
            assert!(
                got.headers.as_ref().is_none_or(|h| h.is_empty()),
                "{:?}",
                got.headers
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_or_missing_topic_gets_a_reason_instead_of_vanishing() {
    bounded(TEST_TIMEOUT, async {
        let setup = OneInstance::start("wild").await;
        let OneInstance {
            ingress,
            service,
            client,
            a,
            ..
        } = &setup;
        let reply = unique("_INBOX.wild.");
        let mut replies = client.subscribe(format!("{reply}.*")).await.unwrap();
        client.flush().await.unwrap();

        // Before: the first went to the literal subject `_baker.<s>.a.>`,
        // the second to `_baker.<s>.a`, which no instance subscribes to;
        // both counted as routed.
        let subject = ingress.subject(service, "t");
        let base = subject.trim_end_matches(".t");
        let frames = [
            raw_frame(
                &format!("{base}.>"),
                Some(&format!("{reply}.1")),
                None,
                b"wild",
            ),
            raw_frame(base, Some(&format!("{reply}.2")), None, b"bare"),
            raw_frame(&subject, None, None, b"0"),
        ];
        raw_publish(&frames).await;
        let mut reasons = Vec::new();
        for _ in 0..2 {
            let answer = tokio::time::timeout(Duration::from_secs(5), replies.next())
                .await
                .expect("an error reply")
                .unwrap();
            reasons.push(header_text(answer.headers.as_ref(), "baker-error"));
        }
        for why in ["without a topic", "wildcard"] {
            assert!(reasons.iter().any(|r| r.contains(why)), "{reasons:?}");
        }
        assert_each_once(a, 1, Duration::from_secs(5)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_no_record_names_any_more_is_disconnected_and_not_retried() {
    bounded(TEST_TIMEOUT, async {
        let mut node = NatsNode::with_args(&[]).await;
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("gone");
        let instance_client = async_nats::connect(node.url()).await.unwrap();
        let a = consume_inbox(&instance_client, &service, "a").await;
        let mut agent = agent_on("nats", &node.url(), &dir.url(), &service, "a", &[]);
        let router = Router::start(&dir.url(), &ingress, &[]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(10))
            .await;
        let client = connect().await;
        client
            .publish(ingress.subject(&service, "t"), "0".into())
            .await
            .unwrap();
        assert_each_once(&a, 1, Duration::from_secs(5)).await;
        let port = format!(":{}", node.port);
        assert!(router.status().await["brokers"].to_string().contains(&port));

        // The instance leaves: its broker is named by no record any more.
        agent.terminate(Duration::from_secs(10));
        wait_until(
            "the router closes the connection",
            Duration::from_secs(10),
            || async {
                router
                    .proc
                    .log_text()
                    .contains("no endpoint uses this broker any more")
            },
        )
        .await;
        assert!(!router.status().await["brokers"].to_string().contains(&port));
        // Before, it went on reconnecting to the stopped broker for ever.
        node.kill();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = router.proc.log_text();
        let after = log
            .split("no endpoint uses this broker any more")
            .nth(1)
            .unwrap_or_default();
        assert!(!after.contains("cannot connect to NATS"), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_undeliverable_requests_stays_bounded_in_memory() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let router = Router::start(&dir.url(), &ingress, &[]).await;
        let before = rss_kib(router.proc.pid());
        let client = connect().await;
        let reply = unique("_INBOX.burst.");
        let mut replies = client.subscribe(reply.clone()).await.unwrap();
        client.flush().await.unwrap();
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        {
            let counted = counted.clone();
            tokio::spawn(async move {
                while replies.next().await.is_some() {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }

        // Each gets an error reply (no instance): before, one task per
        // reply, outside the router's window.
        let subject = ingress.subject(&unique("nobody"), "t");
        let total = 100_000u64;
        for _ in 0..total {
            client
                .publish_with_reply(subject.clone(), reply.clone(), "x".into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        let mut peak = before;
        let mut last = (0, Instant::now());
        while last.1.elapsed() < Duration::from_secs(2) && last.0 < total {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = peak.max(rss_kib(router.proc.pid()));
            let now = counted.load(std::sync::atomic::Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        assert!(last.0 > 0, "error replies arrive");
        let grown = peak.saturating_sub(before);
        eprintln!(
            "the router grew by {grown} KiB at most; {} error replies",
            last.0
        );
        assert!(
            grown < 50 * 1024,
            "the router grew by {grown} KiB for {total} failed requests"
        );
    })
    .await;
}
