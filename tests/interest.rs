//! A router follows only the services it routes to: learned from the first
//! message, kept up to date through registrations, drains and expiries, and
//! dropped when idle. End to end with real `baker-mq` processes on the
//! machine's NATS and an embedded directory.

mod common;

use std::time::Duration;

use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A router following only what its messages name (`--watch-idle-secs`
/// names no service to follow from the start).
async fn learning_router(dir: &Directory, ingress: &Ingress, idle_secs: &str) -> Router {
    Router::start(&dir.url(), ingress, &["--watch-idle-secs", idle_secs]).await
}

/// One instance `a` of a new service, registered, its inbox consumed, and a
/// router learning services, idle after `idle_secs`.
struct OneService {
    _dir: Directory,
    ingress: Ingress,
    service: String,
    client: async_nats::Client,
    inbox: Inbox,
    _agent: Proc,
    router: Router,
}

impl OneService {
    async fn start(name: &str, idle_secs: &str) -> OneService {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique(name);
        let client = connect().await;
        let inbox = consume_inbox(&client, &service, "a").await;
        let agent = agent(&dir.url(), &service, "a", &[]);
        wait_until("registered", Duration::from_secs(15), || async {
            dir.instances(&service).await.len() == 1
        })
        .await;
        let router = learning_router(&dir, &ingress, idle_secs).await;
        OneService {
            _dir: dir,
            ingress,
            service,
            client,
            inbox,
            _agent: agent,
            router,
        }
    }
}

fn followed(status: &serde_json::Value) -> Vec<String> {
    let mut services: Vec<String> = (status["services"].as_object())
        .map(|services| services.keys().cloned().collect())
        .unwrap_or_default();
    services.sort();
    services
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_follows_a_service_from_its_first_message_through_registrations_drains_and_expiries(
) {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("learned");
        let other = unique("unrouted");
        let client = connect().await;
        let inboxes = [
            consume_inbox(&client, &service, "a").await,
            consume_inbox(&client, &service, "b").await,
            consume_inbox(&client, &service, "c").await,
        ];
        let mut a = agent(&dir.url(), &service, "a", &["--ttl", "2"]);
        let mut b = agent(&dir.url(), &service, "b", &[]);
        let _other = agent(&dir.url(), &other, "x", &[]);
        wait_until("both registered", Duration::from_secs(15), || async {
            dir.instances(&service).await.len() == 2 && dir.instances(&other).await.len() == 1
        })
        .await;
        let router = learning_router(&dir, &ingress, "600").await;
        let status = router.status().await;
        assert_eq!(followed(&status), Vec::<String>::new());
        assert_eq!(status["directory"]["following"], serde_json::json!([]));

        // The first message waits for the service's view, then goes on; the
        // router follows that service, not the other one.
        let subject = ingress.subject(&service, "t");
        publish_paced(&client, &subject, 0, 1, 1, Duration::ZERO).await;
        wait_until("the first message", Duration::from_secs(10), || async {
            inboxes.iter().map(Inbox::count).sum::<usize>() == 1
        })
        .await;
        let status = router.status().await;
        assert_eq!(followed(&status), [service.as_str()]);
        assert_eq!(
            status["directory"]["following"],
            serde_json::json!([service])
        );
        router
            .wait_routed(&service, &["a", "b"], Duration::from_secs(5))
            .await;

        // A registration, a drain, an expiry: each reaches the router.
        let _c = agent(&dir.url(), &service, "c", &[]);
        router
            .wait_routed(&service, &["a", "b", "c"], Duration::from_secs(15))
            .await;
        assert_eq!(b.terminate(Duration::from_secs(15)), Some(0));
        router
            .wait_routed(&service, &["a", "c"], Duration::from_secs(15))
            .await;
        a.kill();
        router
            .wait_routed(&service, &["c"], Duration::from_secs(15))
            .await;

        publish_paced(&client, &subject, 1, 999, 100, Duration::from_millis(10)).await;
        wait_until("all delivered", Duration::from_secs(30), || async {
            inboxes.iter().map(Inbox::count).sum::<usize>() == 1000
        })
        .await;
        let (duplicates, seen) = tally(&inboxes.iter().collect::<Vec<_>>());
        assert_eq!((duplicates, seen.len()), (0, 1000));
        assert_eq!(followed(&router.status().await), [service.as_str()]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_not_routed_to_is_dropped_and_learned_again_by_its_next_message() {
    bounded(TEST_TIMEOUT, async {
        let one = OneService::start("idle", "1").await;
        let (ingress, service, client) = (&one.ingress, &one.service, &one.client);
        let (inbox, router) = (&one.inbox, &one.router);
        let subject = ingress.subject(service, "t");
        publish_paced(client, &subject, 0, 1, 1, Duration::ZERO).await;
        wait_until("delivered", Duration::from_secs(10), || async {
            inbox.count() == 1
        })
        .await;
        wait_until("dropped when idle", Duration::from_secs(15), || async {
            let status = router.status().await;
            followed(&status).is_empty()
                && status["directory"]["following"] == serde_json::json!([])
        })
        .await;
        publish_paced(client, &subject, 1, 1, 1, Duration::ZERO).await;
        wait_until("learned again", Duration::from_secs(10), || async {
            inbox.count() == 2
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_service_without_instances_is_answered_with_the_reason() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let _router = learning_router(&dir, &ingress, "600").await;
        let client = connect().await;
        let started = std::time::Instant::now();
        let reply = client
            .request(ingress.subject(&unique("nobody"), "t"), "x".into())
            .await
            .unwrap();
        let error = (reply.headers.as_ref())
            .and_then(|h| h.get("baker-error"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert!(error.contains("no routable instance"), "{error}");
        // Its view came at once (empty): no wait for the view's timeout.
        assert!(started.elapsed() < Duration::from_secs(3));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_of_an_older_release_still_follows_the_whole_catalog() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let http = reqwest::Client::new();
        let catalog = |query: String| {
            let (http, url) = (http.clone(), format!("{}/v1/catalog{query}", dir.url()));
            async move {
                let answer: serde_json::Value =
                    http.get(url).send().await.unwrap().json().await.unwrap();
                answer
            }
        };
        let first = catalog(String::new()).await;
        let (epoch, index) = (first["epoch"].clone(), first["index"].clone());
        let service = unique("old");
        let waiting = tokio::spawn(catalog(format!("?epoch={epoch}&index={index}&wait=20")));
        let _a = agent(&dir.url(), &service, "a", &[]);
        let answer = tokio::time::timeout(Duration::from_secs(15), waiting)
            .await
            .expect("the long poll ends at the change")
            .unwrap();
        let ids: Vec<&str> = (answer["instances"].as_array().unwrap().iter())
            .filter(|r| r["service"] == service.as_str())
            .filter_map(|r| r["id"].as_str())
            .collect();
        assert_eq!(ids, ["a"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_for_thousands_of_unknown_services_lose_nothing_of_a_real_one() {
    bounded(TEST_TIMEOUT, async {
        let one = OneService::start("real", "600").await;
        let (ingress, service, client) = (&one.ingress, &one.service, &one.client);
        let (inbox, router) = (&one.inbox, &one.router);
        // 1,500 distinct names no instance has (more than the 1,024 services a
        // router follows), between 1,000 messages for the real service.
        let junk = unique("junk");
        for seq in 0..1_000u64 {
            for k in 0..3 {
                let name = format!("{junk}{}", seq * 3 / 2 + k);
                client
                    .publish(ingress.subject(&name, "t"), "x".into())
                    .await
                    .unwrap();
            }
            client
                .publish(ingress.subject(service, "t"), seq.to_string().into())
                .await
                .unwrap();
            if seq % 50 == 49 {
                client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        client.flush().await.unwrap();
        wait_until("all 1,000 delivered", Duration::from_secs(60), || async {
            inbox.count() >= 1_000
        })
        .await;
        let (duplicates, seen) = tally(&[inbox]);
        assert_eq!((duplicates, seen.len()), (0, 1_000));
        let following = router.status().await["directory"]["following"].clone();
        let following = following.as_array().map_or(0, Vec::len);
        assert!(following <= 1_024, "following {following} services");
    })
    .await;
}
