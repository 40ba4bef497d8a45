//! The live dashboard in a real browser (Debian's Chromium, headless,
//! installed by `integration/tools.sh`): with traffic flowing, the page
//! shows the service, its instances with version, zone and status, a
//! delivery rate, and the directory's state; and it can be photographed
//! (the screenshot lands in `target/tmp/dashboard.png`; docs/dashboard.png
//! is one of them).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Chromium, headless, on `url`, with `args`; what it printed.
fn chromium(url: &str, args: &[&str]) -> String {
    let browser = std::env::var("BAKER_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Time for the page's first poll and a few more.
        .arg("--virtual-time-budget=3000")
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("{browser}: {e} (integration/tools.sh installs chromium)"));
    assert!(
        out.status.success(),
        "{browser}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_services_instances_and_rates_live_in_a_browser() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("dash");
        let client = connect().await;
        let _a_inbox = consume_inbox(&client, &service, "a").await;
        let _b_inbox = consume_inbox(&client, &service, "b").await;
        let url = nats_url();
        let spec = |id: &str, v: &str, zone: &str| {
            format!("service={service},id={id},version={v},zone={zone}")
        };
        let _a = agent_registering("nats", &url, &dir.url(), &spec("a", "1.4.0", "eu-1a"));
        let _b = agent_registering("nats", &url, &dir.url(), &spec("b", "2.0.0", "eu-1b"));
        let router = Router::start(
            &dir.url(),
            &ingress,
            &["--policy", &format!("{service}=weighted")],
        )
        .await;
        router
            .wait_routed(&service, &["a", "b"], Duration::from_secs(15))
            .await;
        let traffic = {
            let (client, subject) = (client.clone(), ingress.subject(&service, "work"));
            SteadyTraffic::start(move |start, count| {
                let (client, subject) = (client.clone(), subject.clone());
                async move {
                    publish_paced(&client, &subject, start, count, count, Duration::ZERO).await
                }
            })
        };
        let page = format!("http://{}/dashboard", router.admin);
        wait_until(
            "a rate for each instance",
            Duration::from_secs(10),
            || async {
                let status = router.status().await;
                (status["services"][&service]["instances"].as_array()).is_some_and(|all| {
                    all.iter()
                        .all(|i| i["rate"].as_f64().is_some_and(|r| r > 0.0))
                })
            },
        )
        .await;

        let dom = tokio::task::block_in_place(|| chromium(&page, &["--dump-dom"]));
        assert!(
            dom.contains(&format!("data-service=\"{service}\"")),
            "{dom}"
        );
        for (id, version, zone) in [("a", "1.4.0", "eu-1a"), ("b", "2.0.0", "eu-1b")] {
            let row = dom
                .split(&format!("data-instance=\"{service}/{id}\""))
                .nth(1)
                .and_then(|rest| rest.split("</tr>").next())
                .unwrap_or_else(|| panic!("no row for {id}: {dom}"));
            assert!(row.contains(version) && row.contains(zone), "{row}");
            assert!(row.contains("passing"), "{row}");
            let rate: f64 = row
                .split("class=\"num rate\">")
                .nth(1)
                .and_then(|r| r.split('<').next())
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("no rate in {row}"));
            assert!(rate > 0.0, "a rate for {id}: {row}");
        }
        assert!(dom.contains("weighted") && dom.contains(">live<"), "{dom}");
        assert!(dom.contains(&dir.url()), "the directory: {dom}");

        let shot = log_dir().join("dashboard.png");
        let _ = std::fs::remove_file(&shot);
        let screenshot = format!("--screenshot={}", shot.display());
        tokio::task::block_in_place(|| chromium(&page, &[&screenshot, "--window-size=1280,520"]));
        let png = std::fs::read(&shot).expect("a screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{} bytes",
            png.len()
        );
        eprintln!("screenshot: {}", shot.display());
        traffic.stop().await;
    })
    .await;
}
