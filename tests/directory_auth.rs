//! An authenticated directory: tokens name the services they may register,
//! an agent owns the leases it registers, and a rogue cannot take a live
//! instance's traffic by any of the ways in: no token, another service's
//! token, or the right token with another owner.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes `token` to a file and returns its path and its config entry.
fn token(dir: &std::path::Path, name: &str, services: &str, token: &str) -> (String, String) {
    let path = dir.join(format!("{name}.token"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    let entry = format!(
        "[[directory_tokens]]\nname = {name:?}\nsha256 = {digest:?}\nservices = [{services}]\n"
    );
    (path.to_str().unwrap().to_owned(), entry)
}

/// A NATS agent registering `service`/`id` with its admin API at `admin`.
async fn send(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_registration_is_refused_every_way_and_the_owner_re_takes_its_instance() {
    bounded(TEST_TIMEOUT, async {
        let files = tempfile::tempdir().unwrap();
        let service = unique("orders");
        let other = unique("payments");
        let (orders_file, orders_entry) = token(files.path(), "orders", &format!("{service:?}"), "tok-orders");
        let (_, payments_entry) = token(files.path(), "payments", &format!("{other:?}"), "tok-payments");
        let (router_file, router_entry) = token(files.path(), "router", "", "tok-router");
        let config = files.path().join("directory.toml");
        std::fs::write(&config, format!("{orders_entry}{payments_entry}{router_entry}")).unwrap();
        let dir = Directory::start_with(&["--config", config.to_str().unwrap()]).await;

        let nats = connect().await;
        let mut real = subscribe_inbox(&nats, &service, "o1").await;
        let mut rogue = subscribe_inbox(&nats, &service, "rogue").await;
        let state = files.path().join("agent-state");
        let state = state.to_str().unwrap();
        let agent_args = ["--directory-token-file", &orders_file, "--state-dir", state, "--ttl", "60"];
        let mut owner = agent(&dir.url(), &service, "o1", &agent_args);
        let ingress = Ingress::new();
        let router = Router::start(&dir.url(), &ingress, &["--directory-token-file", &router_file]).await;
        router.wait_routed(&service, &["o1"], Duration::from_secs(15)).await;

        // Reads need a token too.
        let catalog = format!("{}/v1/catalog", dir.url());
        assert_eq!(send(reqwest::Method::GET, &catalog, &[], None).await.0, 401);

        // A rogue record sending the service's traffic to another inbox.
        let instance = format!("{}/v1/services/{service}/instances/o1", dir.url());
        let record = serde_json::json!({"service": service, "id": "o1", "ttl_secs": 60,
            "endpoint": {"adapter": "nats", "broker": nats_url(), "inbox": format!("_baker.{service}.rogue")}});
        let put = reqwest::Method::PUT;
        let (status, body) = send(put.clone(), &instance, &[], Some(&record)).await;
        assert_eq!(status, 401, "no token: {body}");
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        let payments = [("authorization", "Bearer tok-payments")];
        let (status, body) = send(put.clone(), &instance, &payments, Some(&record)).await;
        assert_eq!(status, 403, "another service's token: {body}");
        let stolen = [("authorization", "Bearer tok-orders"), ("x-baker-owner", "rogue")];
        let (status, body) = send(put.clone(), &instance, &stolen, Some(&record)).await;
        assert_eq!(status, 409, "the right token, another owner: {body}");
        let (status, _) = send(reqwest::Method::DELETE, &instance, &stolen, None).await;
        assert_eq!(status, 409, "nor can it deregister the instance");
        let no_owner = [("authorization", "Bearer tok-orders")];
        assert_eq!(send(put, &instance, &no_owner, Some(&record)).await.0, 409);

        for seq in 0..200u64 {
            nats.publish(ingress.subject(&service, "x"), seq.to_string().into()).await.unwrap();
        }
        nats.flush().await.unwrap();
        for _ in 0..200 {
            tokio::time::timeout(Duration::from_secs(10), real.next()).await.expect("the real instance gets every message");
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rogue.next()).await.is_err(),
            "nothing reaches the rogue inbox"
        );

        // A second sidecar registering the same id (its own owner) is
        // refused, says why, and is not ready.
        let twin = agent(&dir.url(), &service, "o1", &["--directory-token-file", &orders_file]);
        let twin_admin = twin.admin_addr().await;
        wait_until("the twin says another owner holds the instance", Duration::from_secs(15), || async {
            twin.log_text().contains("another owner")
        })
        .await;
        assert!(!http_ok(&format!("http://{twin_admin}/readyz")).await);
        drop(twin);

        // The owner's own restart (same state directory) re-takes its
        // instance at once, well within the 60 s lease.
        owner.kill();
        let restarted = agent(&dir.url(), &service, "o1", &agent_args);
        let restarted_admin = restarted.admin_addr().await;
        let ready = format!("http://{restarted_admin}/readyz");
        wait_until("the restarted owner registers again", Duration::from_secs(15), || http_ok(&ready)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_directory_needs_tokens_unless_told_otherwise() {
    bounded(TEST_TIMEOUT, async {
        let mut refused = Proc::spawn("directory", &["directory", "--listen", "0.0.0.0:0"]);
        wait_until(
            "the directory refuses to start",
            Duration::from_secs(10),
            || {
                let exited = refused.exited().is_some();
                async move { exited }
            },
        )
        .await;
        let log = refused.log_text();
        assert!(
            log.contains("key `listen`") && log.contains("needs tokens"),
            "{log}"
        );
        let open = Proc::spawn(
            "directory",
            &[
                "directory",
                "--listen",
                "0.0.0.0:0",
                "--allow-unauthenticated-directory",
            ],
        );
        let port = open.logged_port("serving the directory").await;
        let health = format!("http://127.0.0.1:{port}/healthz");
        wait_until(
            "the waived directory serves",
            Duration::from_secs(10),
            || http_ok(&health),
        )
        .await;
    })
    .await;
}
