//! Health checks and instance lifecycle, end to end with real `baker-mq`
//! processes on the machine's NATS.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out");
}

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

/// An agent registering `spec` (a full `--register` value) on NATS.
fn agent_with_spec(directory: &str, name: &str, spec: &str) -> Proc {
    let admin = format!("127.0.0.1:{}", free_port());
    let nats = nats_url();
    Proc::spawn(
        name,
        &[
            "--no-router",
            "--adapter",
            "nats",
            "--broker",
            &nats,
            "--directory",
            directory,
            "--admin",
            &admin,
            "--register",
            spec,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_http_check_moves_the_share_away_and_recovery_brings_it_back() {
    bounded(async {
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
        let _agent_b = agent_with_spec(
            &dir.url(),
            "agent-b",
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
    bounded(async {
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
            Duration::from_secs(10),
            || async { a.count() >= 500 },
        )
        .await;

        // Without a saved view, the same start waits for the directory.
        let empty = tempfile::tempdir().unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let url = dir.url();
        let _third = Proc::spawn(
            "router-no-view",
            &[
                "--directory",
                &url,
                "--admin",
                &admin,
                "--ingress-prefix",
                &ingress.prefix,
                "--queue-group",
                &unique("g"),
                "--state-dir",
                empty.path().to_str().unwrap(),
            ],
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ready = reqwest::get(format!("http://{admin}/readyz"))
            .await
            .unwrap();
        assert_eq!(ready.status().as_u16(), 503, "no view: not ready");
    })
    .await;
}
