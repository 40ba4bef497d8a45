//! The admin API: reads are open; a drain needs `X-Baker-Request: true` on
//! loopback, or the token; a cross-site request is refused; off loopback
//! the sidecar does not start without a token.

mod common;

use std::time::Duration;

use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An agent-only sidecar on the in-process adapter with `extra` arguments;
/// its admin address.
fn sidecar(directory: &str, admin: &str, extra: &[&str]) -> Proc {
    let spec = format!("service={},id=a1", unique("adm"));
    agent_at("memory", "memory://default", directory, &spec, admin, extra)
}

/// Runs `baker-mq drain` with `args`, and waits until `sidecar` exits.
async fn drain_until_it_exits(sidecar: &mut Proc, args: &[&str]) {
    let drained = std::process::Command::new(BIN)
        .arg("drain")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&drained.stderr);
    assert!(drained.status.success(), "{stderr}");
    wait_until("the sidecar exits", Duration::from_secs(30), || {
        let exited = sidecar.exited().is_some();
        async move { exited }
    })
    .await;
}

async fn post(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = reqwest::Client::new().post(url).body("stop");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_drain_is_refused_and_the_sidecar_keeps_running() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let mut sidecar = sidecar(&dir.url(), "127.0.0.1:0", &[]);
        let admin = sidecar.admin_addr().await;
        let ready = format!("http://{admin}/readyz");
        wait_until("sidecar ready", Duration::from_secs(10), || http_ok(&ready)).await;
        let drain = format!("http://{admin}/v1/drain");
        // What a web page can send: a text/plain POST from its own origin,
        // with or without the header (a page cannot add it without a CORS
        // preflight, which the API never grants).
        let from_page = [
            ("content-type", "text/plain"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(post(&drain, &from_page).await.0, 403);
        let forged = [
            ("origin", "http://evil.example"),
            ("x-baker-request", "true"),
        ];
        assert_eq!(post(&drain, &forged).await.0, 403);
        let (status, body) = post(&drain, &[("content-type", "text/plain")]).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("x-baker-request"), "{body}");
        // DNS rebinding: the page's own name, pointed at 127.0.0.1.
        let rebound = [("host", "evil.example"), ("x-baker-request", "true")];
        assert_eq!(post(&drain, &rebound).await.0, 403);
        assert!(http_ok(&ready).await, "still serving");
        assert_eq!(sidecar.exited(), None, "still running");

        // `baker-mq drain` sends the header: the sidecar drains and exits.
        drain_until_it_exits(&mut sidecar, &["--admin", &admin]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_admin_api_needs_a_token_and_a_drain_with_it_works() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let open = "0.0.0.0:0";
        let mut refused = sidecar(&dir.url(), open, &[]);
        wait_until(
            "the sidecar refuses to start",
            Duration::from_secs(10),
            || {
                let exited = refused.exited();
                async move { exited.is_some() }
            },
        )
        .await;
        assert_eq!(refused.exited(), Some(Some(1)));
        let log = refused.log_text();
        assert!(
            log.contains("key `admin`") && log.contains("needs a token"),
            "{log}"
        );

        let files = tempfile::tempdir().unwrap();
        let token_file = files.path().join("admin-token");
        let token = unique("tok-");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let token_file = token_file.to_str().unwrap();
        let mut sidecar = sidecar(&dir.url(), open, &["--admin-token-file", token_file]);
        let port = sidecar.logged_port("admin API listening").await;
        let ready = format!("http://127.0.0.1:{port}/readyz");
        wait_until("sidecar ready", Duration::from_secs(10), || http_ok(&ready)).await;
        let drain = format!("http://127.0.0.1:{port}/v1/drain");
        let (status, body) = post(&drain, &[("x-baker-request", "true")]).await;
        assert_eq!(status, 401, "{body}");
        let wrong = format!("Bearer {token}x");
        assert_eq!(post(&drain, &[("authorization", &wrong)]).await.0, 401);
        assert_eq!(sidecar.exited(), None, "still running");
        let admin = format!("127.0.0.1:{port}");
        drain_until_it_exits(
            &mut sidecar,
            &["--admin", &admin, "--admin-token-file", token_file],
        )
        .await;
        assert!(
            !sidecar.log_text().contains(&token),
            "the token is never logged"
        );
    })
    .await;
}
