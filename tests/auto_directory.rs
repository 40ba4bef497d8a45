//! The zero-configuration directory: sidecars with no --directory share the
//! one at 127.0.0.1:7070, serve it themselves when nothing answers there, and
//! another sidecar takes over when the one serving it dies.

mod common;

use std::time::Duration;

use common::*;

const DEFAULT_DIRECTORY: &str = "127.0.0.1:7070";

fn sidecar(service: &str, id: &str, ingress: &Ingress) -> Proc {
    let admin = "127.0.0.1:0";
    let spec = format!("service={service},id={id},ttl=2");
    let url = nats_url();
    Proc::spawn(
        &format!("sidecar-{id}"),
        &[
            "--broker",
            &url,
            "--admin",
            admin,
            "--register",
            &spec,
            "--ingress-prefix",
            &ingress.prefix,
            "--queue-group",
            &ingress.group,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_share_a_default_directory_and_take_it_over_when_its_host_dies() {
    tokio::time::timeout(Duration::from_secs(60), async {
        assert!(
            std::net::TcpListener::bind(DEFAULT_DIRECTORY).is_ok(),
            "this test needs {DEFAULT_DIRECTORY} free: stop any baker-mq running with the default directory"
        );
        let service = unique("auto");
        let ingress = Ingress::new();
        let list = || async {
            let url = format!("http://{DEFAULT_DIRECTORY}/v1/services/{service}");
            let mut ids: Vec<String> = match reqwest::get(&url).await {
                Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default()["instances"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|i| i["id"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
                Err(_) => vec![],
            };
            ids.sort();
            ids
        };

        let mut first = sidecar(&service, "a", &ingress);
        wait_until("a serves the directory and registers", Duration::from_secs(10), || async {
            list().await == ["a"]
        })
        .await;
        let _second = sidecar(&service, "b", &ingress);
        wait_until("b joins the same directory", Duration::from_secs(10), || async {
            list().await == ["a", "b"]
        })
        .await;

        first.kill();
        wait_until("b takes the directory over and re-registers", Duration::from_secs(10), || async {
            list().await == ["b"]
        })
        .await;
        assert!(first.log_text().contains("serving it from this process"));
    })
    .await
    .expect("test timed out");
}
