//! Health checks and instance lifecycle, end to end with real `baker-mq`
//! processes on the machine's NATS.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An HTTP health endpoint answering 200 while `healthy` is set, 503 otherwise.
async fn health_endpoint(healthy: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let status = if healthy.load(Ordering::Relaxed) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let response =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_http_check_moves_the_share_away_and_recovery_brings_it_back() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("health");
        let client = connect().await;
        let a = consume_inbox(&client, &service, "a").await;
        let b = consume_inbox(&client, &service, "b").await;
        let healthy = Arc::new(AtomicBool::new(true));
        let check = health_endpoint(healthy.clone()).await;
        let _agent_a = agent(&dir.url(), &service, "a", &[]);
        let (interval_ms, fall) = (200u64, 2u64);
        let _agent_b = agent_registering(
            "nats",
            &nats_url(),
            &dir.url(),
            &format!(
                "service={service},id=b,check={check},check_interval_ms={interval_ms},rise=2,fall={fall}"
            ),
        );
        let router = Router::start(&dir.url(), &ingress, &[]).await;
        router
            .wait_routed(&service, &["a", "b"], Duration::from_secs(15))
            .await;

        // Steady traffic throughout: 100 messages every 50 ms.
        let subject = ingress.subject(&service, "t");
        let publisher = spawn_publisher(&client, subject, 40_000, 100, Duration::from_millis(50));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(b.count() > 0, "b receives while healthy");

        healthy.store(false, Ordering::Relaxed);
        let failed_at = Instant::now();
        let bound = Duration::from_millis(fall * interval_ms) + Duration::from_secs(1);
        wait_until("b marked critical", Duration::from_secs(10), || async {
            router.routed(&service).await == ["a"]
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let last = b.last_arrival().expect("b received before");
        let moved_after = last.saturating_duration_since(failed_at);
        assert!(
            moved_after <= bound,
            "b's last message came {moved_after:?} after its check failed (bound {bound:?})"
        );
        let a_before = a.count();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(a.count() > a_before, "a takes the whole load meanwhile");

        healthy.store(true, Ordering::Relaxed);
        let recovered_at = Instant::now();
        wait_until("b receives again", Duration::from_secs(10), || async {
            b.first_arrival_after(recovered_at).is_some()
        })
        .await;
        publisher.abort();
        let status = router.status().await;
        let b_status = status["services"][&service]["instances"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["id"] == "b").cloned())
            .unwrap_or_default();
        assert_eq!(b_status["status"], serde_json::json!("passing"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_started_while_the_directory_is_down_routes_from_its_saved_view() {
    bounded(TEST_TIMEOUT, async {
        let mut dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("snapshot");
        let client = connect().await;
        let a = consume_inbox(&client, &service, "a").await;
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().to_str().unwrap().to_owned();
        let _agent_a = agent(&dir.url(), &service, "a", &[]);
        let mut first = Router::start(&dir.url(), &ingress, &["--state-dir", &state_dir]).await;
        first
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;
        assert!(state.path().join("view.json").exists(), "view saved");
        assert_eq!(first.proc.terminate(Duration::from_secs(15)), Some(0));

        // The directory goes away; a router starting now has only the file.
        dir.proc.kill();
        let second = Router::start(&dir.url(), &ingress, &["--state-dir", &state_dir]).await;
        let status = second.status().await;
        assert_eq!(status["directory"]["reachable"], serde_json::json!(false));
        assert_eq!(
            status["directory"]["view_source"],
            serde_json::json!("snapshot"),
            "{status}"
        );
        assert_eq!(second.routed(&service).await, ["a"]);
        publish_paced(
            &client,
            &ingress.subject(&service, "t"),
            0,
            500,
            100,
            Duration::from_millis(10),
        )
        .await;
        wait_until(
            "routed from the saved view",
            Duration::from_secs(30),
            || async { a.count() >= 500 },
        )
        .await;

        // Without a saved view, the same start waits for the directory.
        let empty = tempfile::tempdir().unwrap();
        let url = dir.url();
        let third = Proc::spawn(
            "router-no-view",
            &[
                "--directory",
                &url,
                "--admin",
                "127.0.0.1:0",
                "--ingress-prefix",
                &ingress.prefix,
                "--queue-group",
                &unique("g"),
                "--state-dir",
                empty.path().to_str().unwrap(),
            ],
        );
        let admin = third.admin_addr().await;
        wait_until(
            "the router waits for a view",
            Duration::from_secs(10),
            || async {
                third
                    .log_text()
                    .contains("waiting for a first directory view")
            },
        )
        .await;
        let ready = reqwest::get(format!("http://{admin}/readyz"))
            .await
            .unwrap();
        assert_eq!(ready.status().as_u16(), 503, "no view: not ready");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baker_mq_drain_drains_one_instance_then_the_whole_process() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let service = unique("drain");
        let nats = nats_url();
        let spec_a = format!("service={service},id=a");
        let spec_b = format!("service={service},id=b");
        let url = dir.url();
        let mut sidecar = Proc::spawn(
            "agent-two",
            &[
                "--no-router",
                "--broker",
                &nats,
                "--directory",
                &url,
                "--admin",
                "127.0.0.1:0",
                "--register",
                &spec_a,
                "--register",
                &spec_b,
            ],
        );
        let admin = sidecar.admin_addr().await;
        wait_until("both registered", Duration::from_secs(15), || async {
            dir.instances(&service).await.len() == 2
        })
        .await;

        let drain = |args: Vec<String>| {
            let mut command = std::process::Command::new(BIN);
            command.arg("drain").args(args);
            tokio::task::spawn_blocking(move || command.output().unwrap())
        };
        let one = drain(vec![
            format!("{service}/a"),
            "--admin".into(),
            admin.clone(),
        ])
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&one.stdout);
        assert!(
            one.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&one.stderr)
        );
        assert!(stdout.contains("drained and deregistered"), "{stdout}");
        assert_eq!(dir.instances(&service).await, ["b"]);

        let unknown = drain(vec![
            format!("{service}/zz"),
            "--admin".into(),
            admin.clone(),
        ])
        .await
        .unwrap();
        assert!(!unknown.status.success());
        assert!(
            String::from_utf8_lossy(&unknown.stderr).contains("registers no instance"),
            "{}",
            String::from_utf8_lossy(&unknown.stderr)
        );

        let all = drain(vec!["--admin".into(), admin.clone()]).await.unwrap();
        assert!(
            all.status.success(),
            "{}",
            String::from_utf8_lossy(&all.stderr)
        );
        assert_eq!(sidecar.terminate(Duration::from_secs(10)), Some(0));
        assert!(dir.instances(&service).await.is_empty());
    })
    .await;
}

/// Publishes `count` persistent messages (payload: the sequence number from
/// `start`) to `baker` / `routing_key`, with `headers`, confirmed.
async fn publish_with_headers(
    channel: &lapin::Channel,
    routing_key: &str,
    start: u64,
    count: u64,
    headers: &[(&str, &str)],
) {
    let mut table = lapin::types::FieldTable::default();
    for (name, value) in headers {
        table.insert(
            (*name).into(),
            lapin::types::AMQPValue::LongString((*value).into()),
        );
    }
    let mut confirms = Vec::new();
    for seq in start..start + count {
        let confirm = channel
            .basic_publish(
                "baker".into(),
                routing_key.into(),
                Default::default(),
                seq.to_string().as_bytes(),
                lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(table.clone()),
            )
            .await
            .unwrap();
        confirms.push(confirm);
        if confirms.len() >= 500 {
            for c in confirms.drain(..) {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_weight_and_version_rules_route_as_configured_and_change_live() {
    use common::amqp::{self, Vhost};

    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let url = vhost.url();
        let ids = ["v1-0", "v1-1", "v1-2", "v2-0"];
        let mut inboxes = Vec::new();
        for id in ids {
            inboxes.push(
                amqp::consume(&channel, &format!("_baker.canary.{id}"))
                    .await
                    .0,
            );
        }
        // The canary's agent keeps its owner id in a state directory: the
        // operator changes its weight live on the owner's behalf.
        let canary_state = tempfile::tempdir().unwrap();
        let state = canary_state.path().to_str().unwrap();
        let _agents: Vec<Proc> = ids
            .iter()
            .map(|id| {
                let (version, weight, extra) = if id.starts_with("v1") {
                    (1, 30, vec![])
                } else {
                    (2, 10, vec!["--state-dir", state])
                };
                let spec = format!("service=canary,id={id},version={version},weight={weight}");
                spawn_agent("amqp", &url, &dir.url(), &spec, &extra)
            })
            .collect();
        let router = Router::spawn(
            &dir.url(),
            &[
                "--adapter",
                "amqp",
                "--broker",
                &url,
                "--policy",
                "canary=weighted",
                "--version-routing",
                "canary",
            ],
        )
        .await;
        router
            .wait_routed("canary", &ids, Duration::from_secs(15))
            .await;
        let counts = || inboxes.iter().map(Inbox::count).collect::<Vec<_>>();
        let wait_total = |total: usize| {
            let inboxes = &inboxes;
            async move {
                wait_until("all delivered", Duration::from_secs(60), || async {
                    inboxes.iter().map(Inbox::count).sum::<usize>() >= total
                })
                .await
            }
        };

        // The canary: weight 10 against 3 × 30 takes 10% of 20,000.
        amqp::publish(&channel, "baker", "canary.t", 0, 20_000, 500).await;
        wait_total(20_000).await;
        let canary_share = counts()[3] as f64 / 20_000.0;
        assert!(
            (canary_share - 0.10).abs() <= 0.02,
            "canary share {canary_share:.4}"
        );

        // The version rule: every message naming version 2 goes to v2.
        let before = counts();
        publish_with_headers(
            &channel,
            "canary.t",
            100_000,
            1_000,
            &[("baker-version", "2")],
        )
        .await;
        wait_total(21_000).await;
        let after = counts();
        assert_eq!(
            after[3] - before[3],
            1_000,
            "all to v2: {before:?} -> {after:?}"
        );
        assert_eq!(&after[..3], &before[..3]);
        publish_with_headers(
            &channel,
            "canary.t",
            200_000,
            300,
            &[("baker-version", "1")],
        )
        .await;
        wait_total(21_300).await;
        assert_eq!(counts()[3], after[3], "version 1 messages avoid v2");

        // A version nobody runs is dead-lettered with the reason.
        let (dead, full) = amqp::consume(&channel, "baker.dead-letters").await;
        publish_with_headers(&channel, "canary.t", 300_000, 5, &[("baker-version", "3")]).await;
        wait_until("dead letters", Duration::from_secs(10), || async {
            dead.count() >= 5
        })
        .await;
        let reason = full.lock().unwrap()[0]
            .header("baker-error")
            .unwrap_or_default()
            .to_owned();
        assert!(reason.contains("at version \"3\""), "{reason}");

        // Weights change live, from the directory: the canary goes to half.
        let client = reqwest::Client::new();
        let record: serde_json::Value = client
            .get(format!("{}/v1/services/canary", dir.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut v2 = record["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == "v2-0")
            .unwrap()
            .clone();
        v2["weight"] = serde_json::json!(90);
        let owner = std::fs::read_to_string(canary_state.path().join("owner-id")).unwrap();
        let put = client
            .put(format!("{}/v1/services/canary/instances/v2-0", dir.url()))
            .header("x-baker-owner", owner.trim())
            .json(&v2)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
        wait_until(
            "router sees the new weight",
            Duration::from_secs(10),
            || async {
                router.status().await["services"]["canary"]["instances"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|i| i["id"] == "v2-0" && i["weight"] == 90))
            },
        )
        .await;
        let before = counts();
        amqp::publish(&channel, "baker", "canary.t", 400_000, 10_000, 500).await;
        wait_total(31_300).await;
        let share = (counts()[3] - before[3]) as f64 / 10_000.0;
        assert!(
            (share - 0.5).abs() <= 0.03,
            "canary share after the change {share:.4}"
        );
    })
    .await;
}
