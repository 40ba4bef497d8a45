//! End to end on the machine's RabbitMQ, each test in a vhost of its own,
//! with real `baker-mq` processes.

mod common;

use std::time::Duration;

use common::amqp::{self, Vhost};
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(150);

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out");
}

fn amqp_agent(directory: &str, vhost: &Vhost, service: &str, id: &str) -> Proc {
    let admin = format!("127.0.0.1:{}", free_port());
    let spec = format!("service={service},id={id}");
    let url = vhost.url();
    Proc::spawn(
        &format!("amqp-agent-{id}"),
        &[
            "--no-router",
            "--adapter",
            "amqp",
            "--broker",
            &url,
            "--directory",
            directory,
            "--admin",
            &admin,
            "--register",
            &spec,
        ],
    )
}

async fn amqp_router(directory: &str, vhost: &Vhost, extra: &[&str]) -> Router {
    let admin = format!("127.0.0.1:{}", free_port());
    let url = vhost.url();
    let mut args = vec![
        "--adapter",
        "amqp",
        "--broker",
        &url,
        "--directory",
        directory,
        "--admin",
        &admin,
    ];
    args.extend_from_slice(extra);
    let proc = Proc::spawn("amqp-router", &args);
    let router = Router { admin, proc };
    let ready = format!("http://{}/readyz", router.admin);
    wait_until("amqp router ready", Duration::from_secs(20), || {
        http_ok(&ready)
    })
    .await;
    router
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_split_30000_persistent_messages_with_none_lost_or_duplicated() {
    bounded(async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let service = "orders";
        let mut inboxes = Vec::new();
        for id in ["a", "b", "c"] {
            inboxes.push(
                amqp::consume(&channel, &format!("_baker.{service}.{id}"))
                    .await
                    .0,
            );
        }
        let _agents: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| amqp_agent(&dir.url(), &vhost, service, id))
            .collect();
        let router = amqp_router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed(service, &["a", "b", "c"], Duration::from_secs(15))
            .await;

        let total = 30_000u64;
        amqp::publish(&channel, "baker", "orders.created", 0, total, 1000).await;
        wait_until("all delivered", Duration::from_secs(90), || async {
            inboxes.iter().map(Inbox::count).sum::<usize>() >= total as usize
        })
        .await;
        tokio::time::sleep(amqp::SETTLE).await;
        let (duplicates, seen) = tally(&inboxes.iter().collect::<Vec<_>>());
        assert_eq!(seen.len(), total as usize, "none lost");
        assert_eq!(duplicates, 0, "none duplicated");
        for inbox in &inboxes {
            let share = inbox.count() as f64 / total as f64;
            assert!((share - 1.0 / 3.0).abs() <= 0.05 / 3.0, "share {share}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_a_routable_instance_land_in_the_dead_letter_queue_with_the_reason() {
    bounded(async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let _router = amqp_router(&dir.url(), &vhost, &[]).await;
        let (dead, full) = amqp::consume(&channel, "baker.dead-letters").await;
        amqp::publish(&channel, "baker", "nosuch.created", 0, 200, 100).await;
        wait_until("dead letters", Duration::from_secs(20), || async {
            dead.count() >= 200
        })
        .await;
        let (duplicates, seen) = tally(&[&dead]);
        assert_eq!((seen.len(), duplicates), (200, 0));
        let first = full.lock().unwrap()[0].clone();
        assert!(
            first
                .header("baker-error")
                .is_some_and(|e| e.contains("no routable instance of service \"nosuch\"")),
            "{:?}",
            first.headers
        );
        assert_eq!(first.header("baker-attempts"), Some("0"));
        assert_eq!(
            first.properties.delivery_mode(),
            &Some(2),
            "still persistent"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_dead_lettered_and_does_not_stall_the_rest() {
    bounded(async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let (inbox, _) = amqp::consume(&channel, "_baker.big.a").await;
        let (dead, full) = amqp::consume(&channel, "baker.dead-letters").await;
        let _agent = amqp_agent(&dir.url(), &vhost, "big", "a");
        let router = amqp_router(&dir.url(), &vhost, &["--max-payload", "1000"]).await;
        router
            .wait_routed("big", &["a"], Duration::from_secs(15))
            .await;

        amqp::publish(&channel, "baker", "big.t", 0, 100, 100).await;
        let large = vec![b'x'; 5000];
        channel
            .basic_publish(
                "baker".into(),
                "big.t".into(),
                Default::default(),
                &large,
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        amqp::publish(&channel, "baker", "big.t", 100, 100, 100).await;
        wait_until("small ones delivered", Duration::from_secs(20), || async {
            inbox.count() >= 200
        })
        .await;
        wait_until(
            "large one dead-lettered",
            Duration::from_secs(20),
            || async { dead.count() >= 1 },
        )
        .await;
        let letter = full.lock().unwrap()[0].clone();
        assert_eq!(letter.payload.len(), 5000);
        assert!(letter
            .header("baker-error")
            .is_some_and(|e| e.contains("exceeds max_payload 1000")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_inbox_queue_sends_its_share_to_the_other_instances() {
    bounded(async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let (a, _) = amqp::consume(&channel, "_baker.inv.a").await;
        let (b, _) = amqp::consume(&channel, "_baker.inv.b").await;
        let _agents = [
            amqp_agent(&dir.url(), &vhost, "inv", "a"),
            amqp_agent(&dir.url(), &vhost, "inv", "b"),
        ];
        let router = amqp_router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed("inv", &["a", "b"], Duration::from_secs(15))
            .await;

        amqp::publish(&channel, "baker", "inv.t", 0, 1000, 200).await;
        wait_until("first batch", Duration::from_secs(20), || async {
            a.count() + b.count() >= 1000
        })
        .await;
        let (_c2, admin_channel) = vhost.channel().await;
        admin_channel
            .queue_delete("_baker.inv.b".into(), Default::default())
            .await
            .unwrap();
        let b_before = b.count();
        amqp::publish(&channel, "baker", "inv.t", 1000, 1000, 200).await;
        wait_until(
            "second batch, all to a",
            Duration::from_secs(30),
            || async { a.count() + b_before >= 2000 },
        )
        .await;
        let (duplicates, seen) = tally(&[&a, &b]);
        assert_eq!(seen.len(), 2000, "none lost");
        assert_eq!(duplicates, 0);
        assert_eq!(b.count(), b_before, "nothing reached the deleted queue");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_mid_stream_loses_nothing_once_restarted() {
    bounded(async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let (a, _) = amqp::consume(&channel, "_baker.crash.a").await;
        let _agent = amqp_agent(&dir.url(), &vhost, "crash", "a");
        let mut router = amqp_router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed("crash", &["a"], Duration::from_secs(15))
            .await;

        let total = 20_000u64;
        let publisher = {
            let channel = channel.clone();
            tokio::spawn(
                async move { amqp::publish(&channel, "baker", "crash.t", 0, total, 500).await },
            )
        };
        wait_until("some delivered", Duration::from_secs(30), || async {
            a.count() >= 3000
        })
        .await;
        router.proc.kill();
        let router = amqp_router(&dir.url(), &vhost, &[]).await;
        router
            .wait_routed("crash", &["a"], Duration::from_secs(15))
            .await;
        publisher.await.unwrap();
        wait_until(
            "every message delivered",
            Duration::from_secs(90),
            || async { tally(&[&a]).1.len() >= total as usize },
        )
        .await;
        tokio::time::sleep(amqp::SETTLE).await;
        let (duplicates, seen) = tally(&[&a]);
        assert_eq!(
            seen.len(),
            total as usize,
            "every message delivered at least once"
        );
        eprintln!(
            "router SIGKILL mid-stream: {total} sent, {} duplicates delivered",
            duplicates
        );
    })
    .await;
}
