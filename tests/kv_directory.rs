//! The directory on a JetStream key-value bucket (`--directory nats://...`),
//! with real `baker-mq` processes: on the machine's nats-server (a bucket of
//! each test's own), or on a nats-server of the test's own when it is
//! stopped.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use common::nats_server::NatsNode;
use common::*;
use futures::StreamExt;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A bucket of the test's own on `nats`, deleted when dropped.
struct Bucket {
    name: String,
    url: String,
    js: jetstream::Context,
}

impl Bucket {
    async fn new(nats: &str) -> Bucket {
        let name = unique("dir-");
        let js = jetstream::new(async_nats::connect(nats).await.unwrap());
        Bucket {
            url: format!("{nats}?bucket={name}"),
            name,
            js,
        }
    }

    async fn store(&self) -> kv::Store {
        self.js.get_key_value(&self.name).await.unwrap()
    }

    /// Writes a record the way an agent does: the record as JSON under
    /// `<service>.<id>`.
    async fn put(&self, service: &str, id: &str, ttl_secs: u64) {
        let record = serde_json::json!({
            "service": service,
            "id": id,
            "endpoint": {
                "adapter": "nats",
                "broker": nats_url(),
                "inbox": format!("_baker.{service}.{id}"),
            },
            "ttl_secs": ttl_secs,
        });
        self.store()
            .await
            .put(
                format!("{service}.{id}"),
                serde_json::to_vec(&record).unwrap().into(),
            )
            .await
            .unwrap();
    }
}

impl Drop for Bucket {
    fn drop(&mut self) {
        let js = self.js.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), js.delete_key_value(name)).await;
            });
        })
        .join();
    }
}

/// How long until `router` routes `service` to exactly `ids`.
async fn time_to_route(router: &Router, service: &str, ids: &[&str]) -> Duration {
    let started = Instant::now();
    router
        .wait_routed(service, ids, Duration::from_secs(15))
        .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_renew_and_leave_through_the_bucket_and_routers_follow_within_a_second() {
    bounded(TEST_TIMEOUT, async {
        let bucket = Bucket::new(&nats_url()).await;
        let ingress = Ingress::new();
        let service = unique("kv");
        let nats = connect().await;
        let a_inbox = consume_inbox(&nats, &service, "a").await;
        let mut a = agent(&bucket.url, &service, "a", &["--ttl", "3"]);
        let router = Router::start(&bucket.url, &ingress, &[]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;

        // Messages flow on the bucket's view.
        publish_paced(
            &nats,
            &ingress.subject(&service, "t"),
            0,
            200,
            50,
            Duration::from_millis(10),
        )
        .await;
        wait_until("a has 200", Duration::from_secs(10), || async {
            a_inbox.count() >= 200
        })
        .await;

        // Leases outlive their TTL while renewed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(router.routed(&service).await, ["a"]);

        // Written from outside, the way an agent does: the watch brings it
        // within a second, and a delete takes it away as fast.
        bucket.put(&service, "b", 30).await;
        let appeared = time_to_route(&router, &service, &["a", "b"]).await;
        bucket
            .store()
            .await
            .delete(format!("{service}.b"))
            .await
            .unwrap();
        let left = time_to_route(&router, &service, &["a"]).await;
        eprintln!("watch propagation: put {appeared:?}, delete {left:?}");
        assert!(
            appeared < scaled(Duration::from_secs(1)),
            "put took {appeared:?}"
        );
        assert!(
            left < scaled(Duration::from_secs(1)),
            "delete took {left:?}"
        );

        // A stopped agent deregisters its instance.
        assert_eq!(a.terminate(Duration::from_secs(20)), Some(0));
        router
            .wait_routed(&service, &[], Duration::from_secs(2))
            .await;
        let entry = bucket
            .store()
            .await
            .get(format!("{service}.a"))
            .await
            .unwrap();
        assert_eq!(entry, None, "the deregistered key is gone");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_instance_leaves_within_its_ttl_plus_a_second() {
    bounded(TEST_TIMEOUT, async {
        let bucket = Bucket::new(&nats_url()).await;
        let ingress = Ingress::new();
        let service = unique("kvkill");
        let mut doomed = agent(&bucket.url, &service, "k", &["--ttl", "2"]);
        let _stays = agent(&bucket.url, &service, "s", &["--ttl", "2"]);
        let router = Router::start(&bucket.url, &ingress, &[]).await;
        router
            .wait_routed(&service, &["k", "s"], Duration::from_secs(15))
            .await;
        doomed.kill();
        let gone = time_to_route(&router, &service, &["s"]).await;
        eprintln!("killed agent's instance left the view after {gone:?} (ttl 2 s)");
        assert!(gone <= scaled(Duration::from_secs(3)), "took {gone:?}");
        // The other one keeps renewing.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(router.routed(&service).await, ["s"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_runs_out_on_a_bucket_that_sends_no_event_for_it() {
    bounded(TEST_TIMEOUT, async {
        // A bucket without per-key TTLs or markers, as an older server (or
        // an operator) would have made it: nothing removes an expired key
        // and no watcher hears of it.
        let bucket = Bucket::new(&nats_url()).await;
        bucket
            .js
            .create_key_value(kv::Config {
                bucket: bucket.name.clone(),
                history: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let store = bucket.store().await;
        let mut events = store.watch_all().await.unwrap();
        let ingress = Ingress::new();
        let service = unique("kvquiet");
        let router = Router::start(&bucket.url, &ingress, &[]).await;
        bucket.put(&service, "q", 2).await;
        let written = Instant::now();
        let put = events.next().await.unwrap().unwrap();
        assert_eq!(put.operation, kv::Operation::Put);
        router
            .wait_routed(&service, &["q"], Duration::from_secs(5))
            .await;
        router
            .wait_routed(&service, &[], Duration::from_secs(5))
            .await;
        let gone = written.elapsed();
        eprintln!("unrenewed lease left the view {gone:?} after its write (ttl 2 s)");
        assert!(gone <= scaled(Duration::from_secs(3)), "took {gone:?}");
        let event = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
        assert!(
            event.is_err(),
            "the bucket sent an event after all: {event:?}"
        );
        assert!(
            store.get(format!("{service}.q")).await.unwrap().is_some(),
            "the key is still in the bucket"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_routers_keep_their_view_and_a_new_router_starts_from_its_snapshot() {
    bounded(TEST_TIMEOUT, async {
        let mut nats = NatsNode::single().await;
        let directory = format!("{}?bucket=baker-directory", nats.url());
        let service = unique("kvdown");
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().to_str().unwrap().to_owned();
        let _agent = agent(&directory, &service, "a", &["--ttl", "3"]);
        let ingress = Ingress::new();
        let router = Router::start(&directory, &ingress, &["--state-dir", &state_dir]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;

        nats.kill();
        wait_until(
            "router reports the directory unreachable",
            Duration::from_secs(15),
            || async { router.status().await["directory"]["reachable"] == false },
        )
        .await;
        // Well past the lease: the last known view stands.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(router.routed(&service).await, ["a"]);

        // A router started now routes from the snapshot the first one saved.
        let second = Router::start(&directory, &Ingress::new(), &["--state-dir", &state_dir]).await;
        second
            .wait_routed(&service, &["a"], Duration::from_secs(10))
            .await;
        let status = second.status().await;
        assert_eq!(status["directory"]["view_source"], "snapshot", "{status}");

        // NATS back (its store kept the bucket): both follow it again.
        nats.start().await;
        for router in [&router, &second] {
            wait_until(
                "directory reachable again",
                Duration::from_secs(20),
                || async {
                    let status = router.status().await;
                    status["directory"]["reachable"] == true
                        && status["directory"]["view_source"] == "directory"
                },
            )
            .await;
            router
                .wait_routed(&service, &["a"], Duration::from_secs(10))
                .await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_without_a_router_do_not_watch_the_bucket() {
    bounded(TEST_TIMEOUT, async {
        let bucket = Bucket::new(&nats_url()).await;
        let service = unique("kvquiet");
        let _agents: Vec<Proc> = ["a", "b"]
            .iter()
            .map(|id| agent(&bucket.url, &service, id, &[]))
            .collect();
        wait_until("both registered", Duration::from_secs(15), || async {
            let Ok(store) = bucket.js.get_key_value(&bucket.name).await else {
                return false;
            };
            let (a, b) = (
                store.get(format!("{service}.a")).await,
                store.get(format!("{service}.b")).await,
            );
            matches!((a, b), (Ok(Some(_)), Ok(Some(_))))
        })
        .await;
        let consumers = || async {
            let mut stream = bucket.store().await.stream;
            stream.info().await.unwrap().state.consumer_count
        };
        // Long enough for a watch to have been made had they started one.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(consumers().await, 0, "agents alone watch nothing");

        // A router does watch: the count above can tell.
        let router = Router::start(&bucket.url, &Ingress::new(), &[]).await;
        router
            .wait_routed(&service, &["a", "b"], Duration::from_secs(15))
            .await;
        assert!(consumers().await >= 1, "the router watches the bucket");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_bucket_is_created_again_and_routing_goes_on() {
    bounded(TEST_TIMEOUT, async {
        let bucket = Bucket::new(&nats_url()).await;
        let ingress = Ingress::new();
        let service = unique("kvgone");
        let nats = connect().await;
        let inbox = consume_inbox(&nats, &service, "a").await;
        // Renewals every 10 s: the router reads the new bucket before the
        // agent writes its record there again.
        let _agent = agent(&bucket.url, &service, "a", &["--ttl", "30"]);
        let router = Router::start(&bucket.url, &ingress, &[]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;

        bucket.js.delete_key_value(&bucket.name).await.unwrap();
        // Traffic for 12 s across the deletion: routed from the last view,
        // then from the new bucket, with no gap between the two.
        let total = 600;
        publish_paced(
            &nats,
            &ingress.subject(&service, "t"),
            0,
            total,
            10,
            Duration::from_millis(200),
        )
        .await;
        wait_until(
            "the bucket is back, with the agent's record",
            Duration::from_secs(30),
            || async {
                match bucket.js.get_key_value(&bucket.name).await {
                    Ok(store) => matches!(store.get(format!("{service}.a")).await, Ok(Some(_))),
                    Err(_) => false,
                }
            },
        )
        .await;
        wait_until(
            "every message delivered",
            Duration::from_secs(10),
            || async { inbox.count() >= total as usize },
        )
        .await;
        assert_eq!(router.routed(&service).await, ["a"]);
        assert!(
            router.proc.log_text().contains("is a new one"),
            "the router saw the new bucket: {}",
            router.proc.log_text()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_write_to_a_bucket_replaced_by_one_without_per_key_ttl() {
    bounded(TEST_TIMEOUT, async {
        let bucket = Bucket::new(&nats_url()).await;
        let service = unique("kvswap");
        let _agent = agent(&bucket.url, &service, "a", &["--ttl", "3"]);
        let key = format!("{service}.a");
        let has_record = || async {
            match bucket.js.get_key_value(&bucket.name).await {
                Ok(store) => matches!(store.get(&key).await, Ok(Some(_))),
                Err(_) => false,
            }
        };
        wait_until("registered", Duration::from_secs(15), has_record).await;
        let ttl_allowed = || async {
            let mut stream = bucket.store().await.stream;
            stream.info().await.unwrap().config.allow_message_ttl
        };
        assert!(ttl_allowed().await, "Baker's bucket takes per-key TTLs");

        // Someone replaces the bucket with one of default settings (again,
        // should the agent re-create it in between).
        loop {
            let _ = bucket.js.delete_key_value(&bucket.name).await;
            let config = kv::Config {
                bucket: bucket.name.clone(),
                ..Default::default()
            };
            if bucket.js.create_key_value(config).await.is_ok() && !ttl_allowed().await {
                break;
            }
        }
        wait_until(
            "the agent's record in the replaced bucket",
            Duration::from_secs(15),
            has_record,
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_reads_only_the_keys_of_the_services_it_routes_to() {
    bounded(TEST_TIMEOUT, async {
        let bucket = Bucket::new(&nats_url()).await;
        let ingress = Ingress::new();
        let (routed, other) = (unique("kv"), unique("kvother"));
        let _a = agent(&bucket.url, &routed, "a", &[]);
        let _b = agent(&bucket.url, &other, "b", &["--ttl", "1"]);
        let router = Router::start(&bucket.url, &ingress, &["--watch", &routed]).await;
        router
            .wait_routed(&routed, &["a"], Duration::from_secs(15))
            .await;
        assert_eq!(router.routed(&other).await, Vec::<String>::new());
        // The router's watch of the bucket (the only one: agents make none)
        // is filtered on the keys of its service: a renewal of the other
        // service, written every third of a second, never reaches it.
        let store = bucket.store().await;
        let mut consumers = store.stream.consumers();
        let mut filters = Vec::new();
        while let Some(info) = consumers.next().await {
            let config = info.unwrap().config;
            filters.push((config.filter_subject, config.filter_subjects));
        }
        let prefix = format!("$KV.{}.", bucket.name);
        assert_eq!(
            filters,
            [(String::new(), vec![format!("{prefix}{routed}.>")])],
            "one consumer, on the routed service's keys"
        );

        // A first message for the other service: the router follows it too.
        let nats = connect().await;
        let inbox = consume_inbox(&nats, &other, "b").await;
        publish_paced(
            &nats,
            &ingress.subject(&other, "t"),
            0,
            1,
            1,
            Duration::ZERO,
        )
        .await;
        wait_until("learned and delivered", Duration::from_secs(10), || async {
            inbox.count() == 1
        })
        .await;
        assert_eq!(router.routed(&other).await, ["b"]);
    })
    .await;
}
