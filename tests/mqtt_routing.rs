//! End to end on real Mosquitto brokers, with real `baker-mq` processes: a
//! directory, routers and agents, and the test as publisher and instances.
//! Tests that need Baker's broker settings (no cap on queued messages) or
//! kill a broker start a Mosquitto of their own on a free port.

mod common;

use std::time::Duration;

use common::mqtt::{self, Client, Mosquitto, MqttIngress};
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(150);

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out");
}

fn mqtt_agent(directory: &str, broker: &str, service: &str, id: &str) -> Proc {
    agent_on("mqtt", broker, directory, service, id, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_split_30000_qos1_messages_evenly_with_none_lost() {
    bounded(async {
        let broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let url = broker.url();
        let dir = Directory::start().await;
        let service = unique("split");
        let mut inboxes = Vec::new();
        for id in ["a", "b", "c"] {
            inboxes.push(mqtt::consume_inbox(&url, &service, id, false).await);
        }
        let _agents: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| mqtt_agent(&dir.url(), &url, &service, id))
            .collect();
        let ingress = MqttIngress::new(&url);
        let router = ingress.router(&dir.url(), &[]).await;
        router
            .wait_routed(&service, &["a", "b", "c"], Duration::from_secs(15))
            .await;

        let total = 30_000u64;
        let mut publisher = Client::connect(&url, &unique("pub-"), false).await;
        let started = std::time::Instant::now();
        publisher
            .publish_seq(&ingress.topic(&service, "work"), 0, total)
            .await;
        wait_until("all delivered", Duration::from_secs(90), || async {
            inboxes.iter().map(Inbox::count).sum::<usize>() >= total as usize
        })
        .await;
        eprintln!("{total} QoS 1 messages routed in {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
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
async fn a_router_killed_mid_stream_loses_nothing_once_restarted() {
    bounded(async {
        let broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let url = broker.url();
        let dir = Directory::start().await;
        let service = unique("crash");
        let a = mqtt::consume_inbox(&url, &service, "a", false).await;
        let _agent = mqtt_agent(&dir.url(), &url, &service, "a");
        let ingress = MqttIngress::new(&url);
        let mut router = ingress.router(&dir.url(), &[]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;

        let total = 20_000u64;
        let topic = ingress.topic(&service, "t");
        let publisher = {
            let url = url.clone();
            tokio::spawn(async move {
                let mut client = Client::connect(&url, &unique("pub-"), false).await;
                // Paced over about 4 s, so the kill lands mid-stream.
                for batch in 0..(total / 500) {
                    client.publish_seq(&topic, batch * 500, 500).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        wait_until("some delivered", Duration::from_secs(30), || async {
            a.count() >= 3000
        })
        .await;
        router.proc.kill();
        let killed_at = a.count();
        assert!(!publisher.is_finished(), "killed mid-stream");
        // Same client id: the restarted router resumes the session the
        // broker kept, with its unacknowledged and queued messages.
        let router = ingress.router(&dir.url(), &[]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;
        publisher.await.unwrap();
        wait_until(
            "every message delivered",
            Duration::from_secs(90),
            || async { tally(&[&a]).1.len() >= total as usize },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (duplicates, seen) = tally(&[&a]);
        assert_eq!(seen.len(), total as usize, "every message delivered at least once");
        eprintln!(
            "router SIGKILL mid-stream (after {killed_at} delivered): {total} sent, {duplicates} duplicates delivered"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_broker_sends_its_share_to_the_others_and_it_receives_again_once_back() {
    bounded(async {
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
            mqtt_agent(&dir.url(), &url, &service, "a"),
            mqtt_agent(&dir.url(), &b_url, &service, "b"),
            mqtt_agent(&dir.url(), &url, &service, "c"),
        ];
        let ingress = MqttIngress::new(&url);
        let router = ingress.router(&dir.url(), &[]).await;
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

fn user_property<'a>(
    publish: &'a rumqttc::v5::mqttbytes::v5::Publish,
    name: &str,
) -> Option<&'a str> {
    publish
        .properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_topics_and_oversized_payloads_are_dead_lettered_counted_and_stall_nothing() {
    bounded(async {
        let url = mqtt::mqtt_url();
        let dir = Directory::start().await;
        let service = unique("bad");
        let a = mqtt::consume_inbox(&url, &service, "a", false).await;
        let _agent = mqtt_agent(&dir.url(), &url, &service, "a");
        let ingress = MqttIngress::new(&url);
        let router = ingress.router(&dir.url(), &["--max-payload", "1000"]).await;
        router
            .wait_routed(&service, &["a"], Duration::from_secs(15))
            .await;
        let mut dead = dead_letters(&ingress).await;

        let mut publisher = Client::connect(&url, &unique("pub-"), false).await;
        let topic = ingress.topic(&service, "t");
        publisher.publish_seq(&topic, 0, 100).await;
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
                user_property(l, "baker-error")
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
        assert_eq!(user_property(large, "baker-attempts"), Some("0"));
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
