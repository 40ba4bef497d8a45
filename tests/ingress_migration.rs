//! Moving a fleet from core NATS to JetStream ingress, one sidecar at a time,
//! under traffic: the JetStream routers take another prefix, each app moves
//! to it with its sidecar, and a core and a JetStream ingress on one prefix
//! (where both would take every message) are refused whichever comes
//! second.

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::watch;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// A JetStream router on `ingress`, not waited for (but for its admin
/// address).
async fn jetstream_router(directory: &str, ingress: &Ingress) -> (Proc, String) {
    let broker = format!("{}?ingress=jetstream", nats_url());
    let proc = Proc::spawn(
        "router-js",
        &[
            "--directory",
            directory,
            "--admin",
            "127.0.0.1:0",
            "--broker",
            &broker,
            "--ingress-prefix",
            &ingress.prefix,
            "--queue-group",
            &ingress.group,
        ],
    );
    let admin = proc.logged_addr("admin API listening").await;
    (proc, admin)
}

/// Waits until `/readyz` at `admin` is ready (`None`) or says `problem`.
async fn wait_readyz(admin: &str, problem: Option<&str>) {
    let url = format!("http://{admin}/readyz");
    wait_until(
        &format!("/readyz at {admin}: {problem:?}"),
        Duration::from_secs(20),
        || async {
            let Ok(response) = reqwest::get(&url).await else {
                return false;
            };
            let ready = response.status().is_success();
            let body = response.text().await.unwrap_or_default();
            match problem {
                None => ready,
                Some(problem) => !ready && body.contains(problem),
            }
        },
    )
    .await;
}

/// An app publishing steadily to `baker.<service>.t` under the prefix its
/// sidecar takes (`prefix`), payloads from `base` on.
fn app(
    client: &async_nats::Client,
    service: &str,
    base: u64,
    prefix: watch::Receiver<String>,
) -> SteadyTraffic {
    let (client, service) = (client.clone(), service.to_owned());
    SteadyTraffic::start(move |start, count| {
        let (client, service) = (client.clone(), service.clone());
        let subject = format!("{}.{service}.t", *prefix.borrow());
        async move {
            for seq in start..start + count {
                client
                    .publish(subject.clone(), (base + seq).to_string().into())
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_moves_from_core_to_jetstream_one_sidecar_at_a_time_losing_and_duplicating_nothing()
{
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let service = unique("move");
        let client = connect().await;
        let inboxes = [
            consume_inbox(&client, &service, "a").await,
            consume_inbox(&client, &service, "b").await,
        ];
        let _agents = [
            agent(&dir.url(), &service, "a", &[]),
            agent(&dir.url(), &service, "b", &[]),
        ];
        let (core, js) = (Ingress::new(), Ingress::new());
        let mut core_routers = Vec::new();
        for _ in 0..3 {
            let router = Router::start(&dir.url(), &core, &[]).await;
            router
                .wait_routed(&service, &["a", "b"], Duration::from_secs(10))
                .await;
            core_routers.push(router);
        }

        // A JetStream router on the core routers' prefix would take every
        // message they take: it does not start.
        let (_overlapping, admin) = jetstream_router(&dir.url(), &core).await;
        wait_readyz(&admin, Some("core NATS routers consume")).await;

        let mut prefixes = Vec::new();
        let mut apps = Vec::new();
        for i in 0..3u64 {
            let (prefix, follows) = watch::channel(core.prefix.clone());
            apps.push(app(&client, &service, i * 1_000_000, follows));
            prefixes.push(prefix);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        // One sidecar at a time: its router on JetStream (another prefix),
        // its app publishing there, its core router stopped.
        let mut js_routers = Vec::new();
        for (i, mut core_router) in core_routers.drain(..).enumerate() {
            let (router, admin) = jetstream_router(&dir.url(), &js).await;
            wait_readyz(&admin, None).await;
            js_routers.push(router);
            prefixes[i].send_replace(js.prefix.clone());
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                core_router.proc.terminate(Duration::from_secs(10)),
                Some(0),
                "a core router stops gracefully"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // A core router on the JetStream prefix would take every message
        // the stream takes: it does not subscribe.
        let late = Proc::spawn(
            "router-core-late",
            &[
                "--directory",
                &dir.url(),
                "--admin",
                "127.0.0.1:0",
                "--ingress-prefix",
                &js.prefix,
                "--queue-group",
                &js.group,
            ],
        );
        let admin = late.logged_addr("admin API listening").await;
        wait_readyz(&admin, Some("captures")).await;

        let mut total = 0;
        for app in apps {
            total += app.stop().await;
        }
        let all: Vec<&Inbox> = inboxes.iter().collect();
        wait_until("every message arrives", Duration::from_secs(60), || async {
            tally(&all).1.len() as u64 >= total
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (duplicates, seen) = tally(&all);
        assert_eq!(seen.len() as u64, total, "none lost");
        assert_eq!(duplicates, 0, "none twice");

        let js_client = async_nats::jetstream::new(client.clone());
        let _ = js_client
            .delete_stream(format!("BAKER_INGRESS_{}", js.prefix))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_core_router_stops_consuming_once_a_stream_captures_its_prefix() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let core = Ingress::new();
        let router = Router::start(&dir.url(), &core, &[]).await;
        let js = async_nats::jetstream::new(connect().await);
        let name = format!("BAKER_INGRESS_{}", core.prefix);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.>", core.prefix)],
            ..Default::default()
        })
        .await
        .unwrap();
        wait_readyz(&router.admin, Some("captures")).await;
        let log = router.proc.log_text();
        assert!(log.contains("stopping the core NATS ingress"), "{log}");
        let _ = js.delete_stream(name).await;
    })
    .await;
}
