//! NATS JetStream ingress, end to end with real `baker-mq` processes on the
//! machine's nats-server (JetStream enabled).

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use futures::StreamExt;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);
/// A short ack wait for the tests that wait for redeliveries (the default is
/// 30 s).
const ACK_WAIT_QUERY: &str = "&ack_wait_secs=3";

/// Publishes `start..start+count` to `subject` through JetStream, each
/// acknowledged by the stream, at most `window` unacknowledged.
async fn js_publish(js: &jetstream::Context, subject: &str, start: u64, count: u64, window: usize) {
    let mut pending = Vec::with_capacity(window);
    for seq in start..start + count {
        pending.push(
            js.publish(subject.to_owned(), seq.to_string().into())
                .await
                .expect("the ingress stream takes the message"),
        );
        if pending.len() >= window {
            for ack in pending.drain(..) {
                ack.await.expect("stream ack");
            }
        }
    }
    for ack in pending {
        ack.await.expect("stream ack");
    }
}

/// The dead letters of `service`, once `want` have come (or 20 s passed).
async fn dead_letters(
    js: &jetstream::Context,
    service: &str,
    want: usize,
) -> Vec<jetstream::Message> {
    let stream = js
        .get_stream("BAKER_DLQ")
        .await
        .expect("dead-letter stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: format!("_baker.dlq.{service}"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + scaled(Duration::from_secs(20));
    while dead.len() < want && tokio::time::Instant::now() < deadline {
        let mut batch = consumer
            .fetch()
            .max_messages(want)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        while let Some(Ok(message)) = batch.next().await {
            dead.push(message);
        }
    }
    dead
}

/// Waits until the ingress stream of `ingress` holds no message.
async fn wait_stream_empty(js: &jetstream::Context, ingress: &Ingress) {
    let name = format!("BAKER_INGRESS_{}", ingress.prefix);
    wait_until(
        "the ingress stream empties",
        Duration::from_secs(10),
        || async {
            let mut stream = js.get_stream(&name).await.unwrap();
            stream.info().await.map(|i| i.state.messages).unwrap_or(1) == 0
        },
    )
    .await;
}

/// A JetStream router on `ingress`, and the stream to delete afterwards.
async fn js_router(directory: &str, ingress: &Ingress) -> Router {
    js_router_with(directory, ingress, "").await
}

/// A JetStream router on `ingress` with more settings in its broker URL's
/// query (`&key=value...`).
async fn js_router_with(directory: &str, ingress: &Ingress, query: &str) -> Router {
    let broker = format!("{}?ingress=jetstream{query}", nats_url());
    Router::spawn(
        directory,
        &[
            "--adapter",
            "nats",
            "--broker",
            &broker,
            "--ingress-prefix",
            &ingress.prefix,
            "--queue-group",
            &ingress.group,
        ],
    )
    .await
}

/// Deletes the ingress stream of `ingress`.
async fn delete_stream(js: &jetstream::Context, ingress: &Ingress) {
    let name = format!(
        "BAKER_INGRESS_{}",
        ingress.prefix.replace(['.', '*', '>'], "_")
    );
    let _ = js.delete_stream(name).await;
}

/// A service with one instance, `a`, whose inbox is durable (kept by a
/// stream), consumed at most `per_ms` messages a millisecond when given; and
/// the ingress a JetStream router of the test takes.
struct DurableInbox {
    dir: Directory,
    ingress: Ingress,
    service: String,
    js: jetstream::Context,
    inbox_name: String,
    a: Inbox,
    _agent: Proc,
}

impl DurableInbox {
    async fn start(name: &str, per_ms: Option<u64>) -> Self {
        let dir = Directory::start().await;
        let service = unique(name);
        let js = jetstream::new(connect().await);
        let broker = format!("{}?inbox=jetstream", nats_url());
        let agent = agent_on("nats", &broker, &dir.url(), &service, "a", &[]);
        let inbox_name = format!("_baker.{service}.a");
        let a = consume_durable_inbox_paced(&js, &inbox_name, per_ms).await;
        DurableInbox {
            dir,
            ingress: Ingress::new(),
            service,
            js,
            inbox_name,
            a,
            _agent: agent,
        }
    }

    /// Deletes the ingress and inbox streams.
    async fn clean_up(&self) {
        delete_stream(&self.js, &self.ingress).await;
        let inbox = format!("BAKER_INBOX_{}", self.inbox_name.replace('.', "_"));
        let _ = self.js.delete_stream(inbox).await;
    }
}

/// Publishes 20,000 messages through the JetStream ingress to `service`,
/// kills `router` with SIGKILL once `mid_stream` says it is under way (before
/// it has routed everything), starts another router, and waits until
/// `inbox` has every message. Returns the total and the new router.
async fn kill_router_mid_stream<F, Fut>(
    js: &jetstream::Context,
    directory: &str,
    ingress: &Ingress,
    service: &str,
    mut router: Router,
    inbox: &Inbox,
    mid_stream: F,
) -> (u64, Router)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let total = 20_000u64;
    let publisher = {
        let (js, subject) = (js.clone(), ingress.subject(service, "t"));
        tokio::spawn(async move { js_publish(&js, &subject, 0, total, 500).await })
    };
    wait_until(
        "the router is under way",
        Duration::from_secs(30),
        mid_stream,
    )
    .await;
    router.proc.kill();
    // Mid-stream: the router had not routed everything yet (the publisher
    // may have finished first on a loaded machine; that is no matter).
    let routed = tally(&[inbox]).1.len();
    assert!(
        routed < total as usize,
        "killed mid-stream, but {routed} of {total} were already delivered"
    );
    let router = js_router(directory, ingress).await;
    publisher.await.unwrap();
    wait_until(
        "every message delivered",
        Duration::from_secs(90),
        || async { tally(&[inbox]).1.len() >= total as usize },
    )
    .await;
    (total, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_jetstream_messages_land_in_the_dead_letter_stream_with_the_reason() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("jsnone");
        let client = connect().await;
        let js = jetstream::new(client.clone());
        let _router = js_router(&dir.url(), &ingress).await;
        js_publish(&js, &ingress.subject(&service, "t"), 0, 20, 20).await;

        let dead = dead_letters(&js, &service, 20).await;
        assert_eq!(dead.len(), 20, "every undeliverable message kept");
        let headers = dead[0].headers.clone().unwrap_or_default();
        let reason = headers
            .get("baker-error")
            .map(|v| v.to_string())
            .unwrap_or_default();
        assert!(reason.contains("no routable instance"), "{reason}");
        assert_eq!(
            headers
                .get("baker-attempts")
                .map(|v| v.to_string())
                .as_deref(),
            Some("0")
        );
        // Dead-lettered means settled: the ingress stream is empty.
        wait_stream_empty(&js, &ingress).await;
        delete_stream(&js, &ingress).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_durable_inbox_a_killed_router_delivers_nothing_twice() {
    bounded(TEST_TIMEOUT, async {
        let setup = DurableInbox::start("jsdurable", None).await;
        let DurableInbox {
            dir,
            ingress,
            service,
            js,
            inbox_name,
            a,
            ..
        } = &setup;
        // A short ack wait, so that the killed router's messages come back
        // soon.
        let router = js_router_with(&dir.url(), ingress, ACK_WAIT_QUERY).await;
        router
            .wait_routed(service, &["a"], Duration::from_secs(15))
            .await;
        // Killed while it routes: the inbox stream has some, the publisher
        // is still going.
        let inbox_stream = format!("BAKER_INBOX_{}", inbox_name.replace('.', "_"));
        let (total, _router) =
            kill_router_mid_stream(js, &dir.url(), ingress, service, router, a, || async {
                let mut stream = js.get_stream(&inbox_stream).await.unwrap();
                stream.info().await.map_or(0, |i| i.state.messages) >= 3000
            })
            .await;
        // The killed router's unacked messages came back after the ack wait
        // and were routed again; once the consumer has nothing pending or
        // unacked, no copy can come any more.
        let ingress_stream = format!(
            "BAKER_INGRESS_{}",
            baker_adapter_nats::stream_name(&ingress.prefix)
        );
        wait_until(
            "the ingress consumer has nothing pending",
            Duration::from_secs(30),
            || async {
                let stream = js.get_stream(&ingress_stream).await.unwrap();
                stream
                    .consumer_info(baker_adapter_nats::stream_name(&ingress.group))
                    .await
                    .is_ok_and(|i| i.num_ack_pending == 0 && i.num_pending == 0)
            },
        )
        .await;
        let (duplicates, seen) = tally(&[a]);
        assert_eq!(seen.len(), total as usize, "every message delivered");
        assert_eq!(
            duplicates, 0,
            "the inbox stream drops the copies a redelivery sends again"
        );
        setup.clean_up().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_with_a_durable_inbox_loses_nothing_and_router_memory_stays_bounded() {
    bounded(TEST_TIMEOUT, async {
        // About 2,000 messages a second at most, far below what is published.
        let setup = DurableInbox::start("jsslow", Some(2)).await;
        let DurableInbox {
            dir,
            ingress,
            service,
            js,
            a,
            ..
        } = &setup;
        let router = js_router(&dir.url(), ingress).await;
        router
            .wait_routed(service, &["a"], Duration::from_secs(15))
            .await;
        let rss_before = rss_kib(router.proc.pid());

        let total = 20_000u64;
        js_publish(js, &ingress.subject(service, "t"), 0, total, 500).await;
        let backlog = total as usize - a.count();
        assert!(backlog > 5_000, "the instance is behind: {backlog} waiting");
        wait_until(
            "the slow instance gets every message",
            Duration::from_secs(90),
            || async { tally(&[a]).1.len() >= total as usize },
        )
        .await;
        let grown_kib = rss_kib(router.proc.pid()).saturating_sub(rss_before);
        let (duplicates, seen) = tally(&[a]);
        assert_eq!((seen.len() as u64, duplicates), (total, 0));
        assert!(
            grown_kib < 32 * 1024,
            "the backlog waits in the inbox stream, not the router: it grew by {grown_kib} KiB"
        );
        eprintln!("slow instance: {total} messages, backlog {backlog} at the end of publishing, router RSS +{grown_kib} KiB");
        setup.clean_up().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_malformed_headers_is_dead_lettered_and_holds_back_no_other() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("jsbadhdr");
        let client = connect().await;
        let js = jetstream::new(client.clone());
        let a = consume_inbox(&client, &service, "a").await;
        let _agent = agent(&dir.url(), &service, "a", &[]);
        let router = js_router(&dir.url(), &ingress).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(10))
            .await;

        // Before the fix, the first bad one made the router's client drop
        // its connection at each redelivery, forever, and the good ones
        // behind it waited.
        let frames = mixed_frames(
            &ingress.subject(&service, "t"),
            2_000,
            20,
            &unique("_INBOX.acks."),
        );
        raw_publish(&frames).await;

        assert_each_once(&a, 2_000, Duration::from_secs(30)).await;
        let dead = dead_letters(&js, &service, 20).await;
        assert_eq!(dead.len(), 20, "every bad message dead-lettered");
        for message in &dead {
            assert!(message.payload.starts_with(b"bad-"));
            let reason = header_text(message.headers.as_ref(), "baker-error");
            assert!(reason.contains("malformed header block"), "{reason}");
        }
        wait_stream_empty(&js, &ingress).await;
        assert!(router
            .metrics()
            .await
            .contains("baker_nats_malformed_total 20"));
        let log = router.proc.log_text();
        assert!(
            !log.contains("reconnect"),
            "the router kept its connection:\n{log}"
        );
        delete_stream(&js, &ingress).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_reusing_its_own_message_id_loses_nothing_and_nats_msg_id_still_dedupes() {
    bounded(TEST_TIMEOUT, async {
        let setup = DurableInbox::start("reuse", None).await;
        let DurableInbox {
            dir,
            ingress,
            service,
            js,
            a,
            ..
        } = &setup;
        let core_ingress = Ingress::new();
        let routers = [
            js_router(&dir.url(), ingress).await,
            Router::start(&dir.url(), &core_ingress, &[]).await,
        ];
        for router in &routers {
            router
                .wait_routed(service, &["a"], Duration::from_secs(10))
                .await;
        }
        // One id on every message, as a publisher using an order id for
        // each event of that order would: before, it became the durable
        // inbox's Nats-Msg-Id, and the inbox kept 1 of 100 (Baker acked all).
        let order = |seq: u64| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("baker-msg-id", "order-42");
            (headers, seq.to_string().into())
        };
        for seq in 0..50 {
            let (headers, payload) = order(seq);
            js.publish_with_headers(ingress.subject(service, "t"), headers, payload)
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let client = connect().await;
        for seq in 50..100 {
            let (headers, payload) = order(seq);
            client
                .publish_with_headers(core_ingress.subject(service, "t"), headers, payload)
                .await
                .unwrap();
        }
        // Asked for with the protocol's own header: the inbox keeps one.
        let dedupe = unique("dup-");
        for seq in [100u64, 101] {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", dedupe.as_str());
            client
                .publish_with_headers(
                    core_ingress.subject(service, "t"),
                    headers,
                    seq.to_string().into(),
                )
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        wait_until("101 messages arrive", Duration::from_secs(30), || async {
            a.count() >= 101
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut seqs = a.seqs();
        seqs.sort_unstable();
        // The core router routes concurrently: either copy may be first.
        let copy = seqs.pop().unwrap();
        assert!(copy == 100 || copy == 101, "{copy}");
        assert_eq!(
            seqs,
            (0..100).collect::<Vec<u64>>(),
            "every reused-id message once, one copy of {dedupe}"
        );
        setup.clean_up().await;
    })
    .await;
}
