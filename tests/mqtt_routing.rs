//! End to end on real Mosquitto brokers, with real `baker-mq` processes: a
//! directory, routers and agents, and the test as publisher and instances.
//! Tests that need Baker's broker settings (no cap on queued messages) or
//! kill a broker start a Mosquitto of their own on a free port.

mod common;

use std::time::Duration;

use common::mqtt::{self, Client, Mosquitto, MqttIngress};
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_broker_sends_its_share_to_the_others_and_it_receives_again_once_back() {
    bounded(TEST_TIMEOUT, async {
        let ingress_broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let url = ingress_broker.url();
        let mut b_broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let b_url = b_broker.url();
        let dir = Directory::start().await;
        let service = unique("fault");
        let a = mqtt::consume_inbox(&url, &service, "a", false).await;
        let c = mqtt::consume_inbox(&url, &service, "c", false).await;
        // b's consumer keeps a persistent session on its broker, which
        // persists it: what b's broker took before it stopped reaches b
        // after the restart.
        let b = mqtt::consume_inbox(&b_url, &service, "b", true).await;
        let _agents = [
            mqtt::agent(&dir.url(), &url, &service, "a"),
            mqtt::agent(&dir.url(), &b_url, &service, "b"),
            mqtt::agent(&dir.url(), &url, &service, "c"),
        ];
        let ingress = MqttIngress::new(&url);
        // b is ejected while its broker is down; a short ejection lets it
        // back soon after the broker is.
        let router = ingress
            .router(&dir.url(), &["--outlier-ejection-secs", "1"])
            .await;
        router
            .wait_routed(&service, &["a", "b", "c"], Duration::from_secs(15))
            .await;

        let total = 12_000u64;
        let topic = ingress.topic(&service, "t");
        let publisher = {
            let url = url.clone();
            tokio::spawn(async move {
                let mut client = Client::connect(&url, &unique("pub-"), false).await;
                // 100 every 100 ms: about 12 s of traffic.
                for batch in 0..(total / 100) {
                    client.publish_seq(&topic, batch * 100, 100).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        wait_until("b receives", Duration::from_secs(10), || async {
            b.count() >= 300
        })
        .await;
        b_broker.stop();
        let (a_at_stop, c_at_stop) = (a.count(), c.count());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let b_during = b.count();
        assert!(
            a.count() > a_at_stop + 300 && c.count() > c_at_stop + 300,
            "a and c take b's share while its broker is down"
        );
        b_broker.restart();
        wait_until(
            "b receives again once its broker is back",
            Duration::from_secs(20),
            || async { b.count() > b_during + 100 },
        )
        .await;
        assert!(!publisher.is_finished(), "b came back while traffic ran");
        publisher.await.unwrap();
        wait_until("every message delivered", Duration::from_secs(30), || async {
            tally(&[&a, &b, &c]).1.len() >= total as usize
        })
        .await;
        let (duplicates, seen) = tally(&[&a, &b, &c]);
        assert_eq!(seen.len(), total as usize, "none lost");
        eprintln!(
            "instance broker stopped for 3 s: {total} sent, none lost, {duplicates} duplicates; a {} b {} c {}",
            a.count(),
            b.count(),
            c.count()
        );
    })
    .await;
}

/// One instance `a` of a service consuming on `instance_url`, a router on
/// `url`'s ingress (with `extra` arguments) routing to it, the ingress's dead
/// letters, and a publisher that has sent it messages 0..100.
struct OneInstance {
    a: Inbox,
    _agent: Proc,
    _directory: Directory,
    ingress: MqttIngress,
    router: Router,
    dead: Client,
    publisher: Client,
    topic: String,
}

impl OneInstance {
    async fn start(url: &str, instance_url: &str, persistent: bool, extra: &[&str]) -> Self {
        let dir = Directory::start().await;
        let service = unique("one");
        let a = mqtt::consume_inbox(instance_url, &service, "a", persistent).await;
        let _agent = mqtt::agent(&dir.url(), instance_url, &service, "a");
        let ingress = MqttIngress::new(url);
        let router = ingress
            .router_routing(&dir.url(), extra, &service, &["a"])
            .await;
        let dead = dead_letters(&ingress).await;
        let mut publisher = Client::connect(url, &unique("pub-"), false).await;
        let topic = ingress.topic(&service, "t");
        publisher.publish_seq(&topic, 0, 100).await;
        OneInstance {
            a,
            _agent,
            _directory: dir,
            ingress,
            router,
            dead,
            publisher,
            topic,
        }
    }
}

/// Subscribes to the dead-letter topics of `ingress` and collects them.
async fn dead_letters(ingress: &MqttIngress) -> Client {
    let mut client = Client::connect(&ingress.url, &unique("dlq-"), false).await;
    client
        .subscribe(&format!(
            "{}/{}/#",
            baker_adapter_mqtt::DEAD_LETTER_PREFIX,
            ingress.prefix
        ))
        .await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_topics_and_oversized_payloads_are_dead_lettered_counted_and_stall_nothing() {
    bounded(TEST_TIMEOUT, async {
        let url = mqtt::mqtt_url();
        let OneInstance {
            a,
            ingress,
            router,
            mut dead,
            mut publisher,
            topic,
            ..
        } = OneInstance::start(&url, &url, false, &["--max-payload", "1000"]).await;
        let qos1 = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
        let none = Default::default;
        publisher
            .publish_with(&format!("{}/", ingress.prefix), qos1, "no service", none())
            .await;
        publisher
            .publish_with(
                &format!("{}//x", ingress.prefix),
                qos1,
                "empty service",
                none(),
            )
            .await;
        publisher
            .publish_with(&topic, qos1, vec![b'x'; 5000], none())
            .await;
        publisher.publish_seq(&topic, 100, 100).await;

        wait_until("the rest delivered", Duration::from_secs(20), || async {
            a.count() >= 200
        })
        .await;
        let mut letters = Vec::new();
        while letters.len() < 3 {
            let letter = tokio::time::timeout(Duration::from_secs(20), dead.incoming.recv())
                .await
                .expect("three dead letters")
                .unwrap();
            letters.push(letter);
        }
        let reasons: Vec<String> = letters
            .iter()
            .map(|l| {
                mqtt::user_property(l, "baker-error")
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            reasons
                .iter()
                .filter(|r| r.contains("names no service"))
                .count(),
            2,
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("exceeds max_payload 1000")),
            "{reasons:?}"
        );
        let large = letters.iter().find(|l| l.payload.len() == 5000).unwrap();
        assert_eq!(mqtt::user_property(large, "baker-attempts"), Some("0"));
        assert_eq!(
            std::str::from_utf8(&large.topic).unwrap(),
            format!("{}/{topic}", baker_adapter_mqtt::DEAD_LETTER_PREFIX)
        );
        let (duplicates, seen) = tally(&[&a]);
        assert_eq!((seen.len(), duplicates), (200, 0));

        let metrics = router.metrics().await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("baker_mqtt_malformed_total") && l.ends_with(" 2")),
            "{metrics}"
        );
        assert!(
            metrics
                .lines()
                .any(|l| l.contains("baker_undelivered_total")
                    && l.contains("too_large")
                    && l.ends_with(" 1")),
            "{metrics}"
        );
        let log = router.proc.log_text();
        assert!(log.contains("names no service"), "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_keeps_response_topic_and_binary_correlation_data_and_unknown_services_get_an_error_reply(
) {
    bounded(TEST_TIMEOUT, async {
        use rumqttc::v5::mqttbytes::v5::PublishProperties;
        use rumqttc::v5::mqttbytes::QoS;

        let url = mqtt::mqtt_url();
        let dir = Directory::start().await;
        let service = unique("rpc");
        // The instance: answers each request on its response topic, with
        // its correlation data and the topic it arrived on.
        let answer = |request: &rumqttc::v5::mqttbytes::v5::Publish| {
            format!(
                "pong:{}:{}",
                String::from_utf8_lossy(&request.payload),
                std::str::from_utf8(&request.topic).unwrap()
            )
        };
        let filter = format!("_baker/{service}/r1/#");
        let responder_task = mqtt::respond(&url, &filter, answer).await;
        let _agent = mqtt::agent(&dir.url(), &url, &service, "r1");
        let ingress = MqttIngress::new(&url);
        let _router = ingress
            .router_routing(&dir.url(), &[], &service, &["r1"])
            .await;

        let mut requester = Client::connect(&url, &unique("requester-"), false).await;
        let replies = unique("replies/");
        requester.subscribe(&format!("{replies}/#")).await;
        let correlation = bytes::Bytes::from_static(&[0xde, 0xad, 0x00, 0xbe, 0xef]);
        let topic = ingress.topic(&service, "get");
        requester
            .publish_with(
                &topic,
                QoS::AtLeastOnce,
                "42",
                PublishProperties {
                    response_topic: Some(format!("{replies}/1")),
                    correlation_data: Some(correlation.clone()),
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                },
            )
            .await;
        let reply = tokio::time::timeout(Duration::from_secs(10), requester.incoming.recv())
            .await
            .expect("reply in time")
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&reply.payload),
            format!("pong:42:_baker/{service}/r1/get")
        );
        assert_eq!(
            reply
                .properties
                .as_ref()
                .and_then(|p| p.correlation_data.clone()),
            Some(correlation.clone()),
            "binary correlation data kept exactly"
        );

        // A request for a service nobody serves is answered at once.
        requester
            .publish_with(
                &ingress.topic(&unique("nosuch"), "get"),
                QoS::AtLeastOnce,
                "x",
                PublishProperties {
                    response_topic: Some(format!("{replies}/2")),
                    correlation_data: Some(correlation.clone()),
                    ..Default::default()
                },
            )
            .await;
        let error = tokio::time::timeout(Duration::from_secs(10), requester.incoming.recv())
            .await
            .expect("error reply in time")
            .unwrap();
        assert!(
            mqtt::user_property(&error, "baker-error")
                .is_some_and(|e| e.contains("no routable instance")),
            "{error:?}"
        );
        assert_eq!(
            error
                .properties
                .as_ref()
                .and_then(|p| p.correlation_data.clone()),
            Some(correlation)
        );
        responder_task.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_reconnects_to_a_restarted_broker_and_resumes_its_session() {
    bounded(TEST_TIMEOUT, async {
        let mut broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let url = broker.url();
        let dir = Directory::start().await;
        let service = unique("resume");
        let a = mqtt::consume_inbox(&url, &service, "a", true).await;
        let _agent = mqtt::agent(&dir.url(), &url, &service, "a");
        let ingress = MqttIngress::new(&url);
        // A small window, so the router is still working through the burst
        // (held for its session in the broker) when the broker stops.
        let router = ingress
            .router_routing(&dir.url(), &["--max-in-flight", "8"], &service, &["a"])
            .await;

        let total = 30_000u64;
        let mut publisher = Client::connect(&url, &unique("pub-"), false).await;
        publisher
            .publish_seq(&ingress.topic(&service, "t"), 0, total)
            .await;
        let at_stop = a.count();
        broker.stop();
        assert!(at_stop < total as usize, "the broker stopped mid-stream");
        let brokers_down = |status: serde_json::Value| {
            status["brokers"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["connected"] == false))
        };
        wait_until("health shows the outage", Duration::from_secs(5), || async {
            brokers_down(router.status().await)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.restart();
        wait_until(
            "every message delivered after the restart",
            Duration::from_secs(60),
            || async { tally(&[&a]).1.len() >= total as usize },
        )
        .await;
        wait_until("health shows connected", Duration::from_secs(15), || async {
            !brokers_down(router.status().await)
        })
        .await;
        let (duplicates, seen) = tally(&[&a]);
        assert_eq!(seen.len(), total as usize, "none lost");
        eprintln!(
            "broker restarted after {at_stop} of {total} delivered: none lost, {duplicates} duplicates"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_311_instance_gets_payload_and_topic_and_the_router_says_once_what_it_loses() {
    bounded(TEST_TIMEOUT, async {
        let url = mqtt::mqtt_url();
        let dir = Directory::start().await;
        let service = unique("old");
        // The instance: an MQTT 3.1.1 client.
        let (host, port) = (
            "127.0.0.1",
            url.rsplit(':').next().unwrap().parse().unwrap(),
        );
        let mut options = rumqttc::MqttOptions::new(unique("v311-"), host, port);
        options.set_keep_alive(Duration::from_secs(10));
        let (v311, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        v311.subscribe(format!("_baker/{service}/o1/#"), rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let (tx, mut received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                match event {
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                        let _ = tx.send(p);
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                        let _ = tx.send(rumqttc::Publish::new(
                            "suback",
                            rumqttc::QoS::AtMostOnce,
                            "",
                        ));
                    }
                    _ => {}
                }
            }
        });
        assert_eq!(received.recv().await.unwrap().topic, "suback");
        let endpoint = format!("{url}?protocol=3.1.1");
        let _agent = mqtt::agent(&dir.url(), &endpoint, &service, "o1");
        let ingress = MqttIngress::new(&url);
        let router = ingress
            .router_routing(&dir.url(), &[], &service, &["o1"])
            .await;
        let mut publisher = Client::connect(&url, &unique("pub-"), false).await;
        publisher
            .publish_seq(&ingress.topic(&service, "t"), 0, 3)
            .await;
        for seq in 0..3 {
            let got = tokio::time::timeout(Duration::from_secs(10), received.recv())
                .await
                .expect("the 3.1.1 instance receives")
                .unwrap();
            assert_eq!(got.topic, format!("_baker/{service}/o1/t"));
            assert_eq!(got.payload.as_ref(), seq.to_string().as_bytes());
        }
        let log = router.proc.log_text();
        assert_eq!(log.matches("consumes with MQTT 3.1.1").count(), 1, "{log}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_only_instance_unreachable_the_router_holds_back_in_bounded_memory_and_loses_nothing(
) {
    bounded(TEST_TIMEOUT, async {
        let ingress_broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let url = ingress_broker.url();
        let mut instance_broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let instance_url = instance_broker.url();
        let OneInstance {
            a,
            router,
            mut dead,
            publisher,
            topic,
            ..
        } = OneInstance::start(&url, &instance_url, true, &["--max-in-flight", "16"]).await;
        wait_until("first messages", Duration::from_secs(10), || async {
            a.count() >= 100
        })
        .await;

        instance_broker.stop();
        let before = rss_kib(router.proc.pid());
        // 20,000 messages of 1 KiB (the sequence number, padded) while
        // nothing can take them.
        let payload = |seq: u64| format!("{seq:<1024}");
        let qos1 = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
        for seq in 100..20_100u64 {
            publisher
                .publish_with(&topic, qos1, payload(seq), Default::default())
                .await;
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        let during = rss_kib(router.proc.pid());
        eprintln!(
            "router RSS {before} KiB before, {during} KiB with 20 MiB held back by the broker"
        );
        assert!(
            during < before + 10 * 1024,
            "router memory grew from {before} KiB to {during} KiB"
        );
        instance_broker.restart();
        wait_until(
            "every message delivered once the instance's broker is back",
            Duration::from_secs(90),
            || async { tally(&[&a]).1.len() >= 20_100 },
        )
        .await;
        let (duplicates, seen) = tally(&[&a]);
        assert_eq!(seen.len(), 20_100, "none lost");
        assert!(
            dead.incoming.try_recv().is_err(),
            "nothing dead-lettered: an unreachable broker is not the message's fault"
        );
        eprintln!(
            "sole instance's broker down: 20,000 held back, none lost, {duplicates} duplicates"
        );
    })
    .await;
}
