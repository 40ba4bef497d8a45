//! Records are checked where they are used: the directory refuses an
//! endpoint no adapter can use or whose inbox would loop back into the
//! ingress; a router does not route to an endpoint outside its allow-list or
//! inside its own ingress namespace, and says why once; a registration that
//! would loop stops the sidecar at start.

mod common;

use std::time::Duration;

use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn record(service: &str, id: &str, adapter: &str, broker: &str, inbox: &str) -> serde_json::Value {
    serde_json::json!({"service": service, "id": id,
        "endpoint": {"adapter": adapter, "broker": broker, "inbox": inbox}})
}

async fn put(dir: &Directory, record: &serde_json::Value) -> (u16, String) {
    let url = format!(
        "{}/v1/services/{}/instances/{}",
        dir.url(),
        record["service"].as_str().unwrap(),
        record["id"].as_str().unwrap()
    );
    let response = reqwest::Client::new()
        .put(url)
        .json(record)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_refuses_endpoints_that_cannot_work_or_would_loop() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let service = unique("checked");
        let nats = nats_url();
        for (adapter, broker, inbox, reason) in [
            (
                "kafka",
                nats.as_str(),
                "_baker.s.a",
                "adapter \"kafka\" is not built into",
            ),
            (
                "nats",
                "file:///etc/passwd",
                "_baker.s.a",
                "invalid broker URL",
            ),
            ("nats", nats.as_str(), "baker.>", "invalid inbox"),
            (
                "nats",
                nats.as_str(),
                "baker.orders.loop",
                "lies in the ingress namespace",
            ),
        ] {
            let (status, body) = put(&dir, &record(&service, "a", adapter, broker, inbox)).await;
            assert_eq!(status, 400, "{adapter} {broker} {inbox}: {body}");
            let error: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(error["error"].as_str().unwrap().contains(reason), "{body}");
        }
        assert!(dir.instances(&service).await.is_empty());
        let (status, body) = put(&dir, &record(&service, "a", "nats", &nats, "_baker.s.a")).await;
        assert_eq!(status, 200, "{body}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_skips_brokers_outside_its_allow_list_and_inboxes_in_its_own_namespace() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("guarded");
        let nats = nats_url();
        let router = Router::start(
            &dir.url(),
            &ingress,
            &["--allowed-broker", "nats://127.0.0.1:1"],
        )
        .await;
        // Accepted by the directory (which checks the default prefix only),
        // refused by this router.
        let elsewhere = "nats://127.0.0.1:14222";
        let looping = format!("{}.{service}.x", ingress.prefix);
        let good = format!("_baker.{service}.ok");
        for (id, broker, inbox) in [
            ("away", elsewhere, good.as_str()),
            ("loop", nats.as_str(), looping.as_str()),
            ("ok", nats.as_str(), good.as_str()),
        ] {
            let (status, body) = put(&dir, &record(&service, id, "nats", broker, inbox)).await;
            assert_eq!(status, 200, "{body}");
        }
        router
            .wait_routed(&service, &["ok"], Duration::from_secs(15))
            .await;
        let metrics = router.metrics().await;
        for reason in ["broker_not_allowed", "loop"] {
            let line = format!("baker_records_refused_total{{reason=\"{reason}\"}} 1");
            assert!(metrics.contains(&line), "{reason}: {metrics}");
        }
        let log = router.proc.log_text();
        assert!(
            log.contains("is not in this router's allowed_brokers"),
            "{log}"
        );
        assert!(log.contains("lies in the ingress namespace"), "{log}");
        assert_eq!(
            log.matches("not routing to this endpoint").count(),
            2,
            "said once each: {log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_inbox_would_loop_stops_the_start() {
    bounded(TEST_TIMEOUT, async {
        let mut sidecar = Proc::spawn(
            "looping",
            &[
                "--no-router",
                "--register",
                "service=loopcfg,id=l1,inbox=baker.loopcfg.l1",
            ],
        );
        wait_until(
            "the sidecar refuses to start",
            Duration::from_secs(10),
            || {
                let exited = sidecar.exited().is_some();
                async move { exited }
            },
        )
        .await;
        let log = sidecar.log_text();
        assert!(
            log.contains("register.inbox") && log.contains("lies in the ingress namespace"),
            "{log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_larger_than_a_record_needs_are_refused() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let service = unique("big");
        let nats = nats_url();
        let mut huge = record(&service, "a", "nats", &nats, "_baker.s.a");
        huge["metadata"] = serde_json::json!({ "blob": "x".repeat(2 * 1024 * 1024) });
        let (status, _) = put(&dir, &huge).await;
        assert_eq!(
            status, 413,
            "a 2 MiB record is refused before it is read whole"
        );
        let mut labels = record(&service, "a", "nats", &nats, "_baker.s.a");
        labels["metadata"] = (0..33)
            .map(|i| (format!("k{i}"), serde_json::json!("v")))
            .collect();
        let (status, body) = put(&dir, &labels).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("metadata has 33 entries"), "{body}");
        let long = record(&service, "a", "nats", &nats, &"i".repeat(2000));
        let (status, body) = put(&dir, &long).await;
        assert_eq!(status, 400, "{body}");
        assert!(dir.instances(&service).await.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_block_no_registration_and_lose_their_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let addr = format!("127.0.0.1:{}", dir.port);
        let mut slow = Vec::new();
        for _ in 0..200 {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            stream
                .write_all(b"PUT /v1/services/s/instances/a HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            slow.push(stream);
        }
        let service = unique("fast");
        let started = std::time::Instant::now();
        let (status, body) = put(
            &dir,
            &record(&service, "a", "nats", &nats_url(), "_baker.s.a"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "registered at once"
        );
        // Each half-sent request is cut off once its headers take too long.
        for stream in &mut slow {
            let mut buffer = [0u8; 256];
            let closed =
                tokio::time::timeout(scaled(Duration::from_secs(30)), stream.read(&mut buffer))
                    .await;
            assert!(
                closed.is_ok(),
                "the directory closes a connection whose headers never end"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_another_bakers_ingress_stops_after_a_bounded_number_of_hops() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let service = unique("hops");
        // Two routers, each with an instance whose inbox is the other's
        // ingress: no record shows the loop (each inbox is outside the
        // namespace of the router that routes to it).
        let (a, b) = (Ingress::new(), Ingress::new());
        for (id, to) in [("to-b", &b), ("to-a", &a)] {
            let inbox = format!("{}.{service}", to.prefix);
            let record = record(&service, id, "nats", &nats_url(), &inbox);
            assert_eq!(put(&dir, &record).await.0, 200);
        }
        let routers = [
            Router::start(&dir.url(), &a, &[]).await,
            Router::start(&dir.url(), &b, &[]).await,
        ];
        routers[0]
            .wait_routed(&service, &["to-b"], Duration::from_secs(10))
            .await;
        routers[1]
            .wait_routed(&service, &["to-a"], Duration::from_secs(10))
            .await;

        // Before, one message went round until the records were deleted
        // (119,364 times in 5 s).
        let client = connect().await;
        client
            .publish(a.subject(&service, "t"), "loop".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let looped = |text: &str| {
            text.lines().any(|l| {
                l.starts_with("baker_undelivered_total{")
                    && l.contains("cause=\"loop\"")
                    && l.contains(&service)
                    && l.ends_with(" 1")
            })
        };
        wait_until(
            "one of the routers stops the loop",
            Duration::from_secs(10),
            || async {
                for router in &routers {
                    if looped(&router.metrics().await) {
                        return true;
                    }
                }
                false
            },
        )
        .await;
        let routed = |text: String| -> u64 {
            text.lines()
                .filter(|l| l.starts_with("baker_messages_routed_total") && l.contains(&service))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        let mut total = 0;
        for router in &routers {
            total += routed(router.metrics().await);
        }
        assert_eq!(
            total,
            u64::from(baker_mq::router::journey::MAX_HOPS),
            "one hop per Baker up to the bound"
        );
    })
    .await;
}
