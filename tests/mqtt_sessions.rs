//! The MQTT ingress's session, on Mosquitto brokers of the tests' own:
//! sidecars on one host each keep their own, two routers given one client id
//! are told so, and a router upgraded from the old default client id takes
//! over what its old session kept.

mod common;

use std::time::Duration;

use common::mqtt::{self, Client, Mosquitto, MqttIngress};
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(150);

/// This machine's host name, as the adapter reads it for client ids.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// A sidecar on `ingress` with default MQTT settings (no client id given)
/// that routes and registers the instance `service`/`id`, as one sidecar
/// per application does.
async fn sidecar(directory: &str, ingress: &MqttIngress, service: &str, id: &str) -> Router {
    let register = format!("service={service},id={id}");
    Router::spawn(
        directory,
        &[
            "--adapter",
            "mqtt",
            "--broker",
            &ingress.url,
            "--ingress-prefix",
            &ingress.prefix,
            "--queue-group",
            &ingress.group,
            "--register",
            &register,
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_on_one_host_with_default_settings_deliver_nothing_twice() {
    bounded(TEST_TIMEOUT, async {
        let broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let url = broker.url();
        let dir = Directory::start().await;
        let service = unique("host");
        let ingress = MqttIngress::new(&url);
        let ids = ["o1", "o2", "o3"];
        let mut inboxes = Vec::new();
        for id in ids {
            inboxes.push(mqtt::consume_inbox(&url, &service, id, false).await);
        }
        let mut sidecars = Vec::new();
        for id in ids {
            sidecars.push(sidecar(&dir.url(), &ingress, &service, id).await);
        }
        for sidecar in &sidecars {
            sidecar
                .wait_routed(&service, &ids, Duration::from_secs(15))
                .await;
        }

        // 10,000 at about 2,000/s: before each sidecar had a client id of
        // its own, the three took one session from each other every few
        // hundred milliseconds and 2-3% arrived twice.
        let total = 10_000u64;
        let mut publisher = Client::connect(&url, &unique("pub-"), false).await;
        let topic = ingress.topic(&service, "t");
        for batch in 0..total / 100 {
            publisher.publish_seq(&topic, batch * 100, 100).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all: Vec<&Inbox> = inboxes.iter().collect();
        wait_until("every message arrives", Duration::from_secs(30), || async {
            tally(&all).1.len() as u64 >= total
        })
        .await;
        // Late duplicates would come within a redelivery.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (duplicates, seen) = tally(&all);
        assert_eq!(seen.len() as u64, total, "none lost");
        assert_eq!(duplicates, 0, "none twice");
        for sidecar in &sidecars {
            let log = sidecar.proc.log_text();
            assert!(!log.contains("connection lost"), "{log}");
            assert!(!log.contains("this run's only"), "{log}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_given_one_client_id_say_why_in_the_log_and_readyz() {
    bounded(TEST_TIMEOUT, async {
        let broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let dir = Directory::start().await;
        let ingress = MqttIngress::new(&broker.url());
        let first = ingress.router(&dir.url(), &[]).await;
        // The second is never ready for long: no waiting for it.
        let broker_url = format!("{}?client_id={}", ingress.url, ingress.client_id);
        let second = Proc::spawn(
            "router",
            &[
                "--directory",
                &dir.url(),
                "--admin",
                "127.0.0.1:0",
                "--adapter",
                "mqtt",
                "--broker",
                &broker_url,
                "--ingress-prefix",
                &ingress.prefix,
                "--queue-group",
                &ingress.group,
            ],
        );
        let admin = second.logged_addr("admin API listening").await;
        let readyz = |admin: String| async move {
            let response = reqwest::get(format!("http://{admin}/readyz")).await.ok()?;
            response.text().await.ok()
        };
        wait_until(
            "one of them reports the takeover in /readyz",
            Duration::from_secs(20),
            || async {
                for admin in [first.admin.clone(), admin.clone()] {
                    if readyz(admin)
                        .await
                        .is_some_and(|body| body.contains("0x8E") && body.contains("client_id="))
                    {
                        return true;
                    }
                }
                false
            },
        )
        .await;
        let logs = format!("{}{}", first.proc.log_text(), second.log_text());
        assert!(
            logs.contains("keeps taking this ingress's MQTT session over"),
            "{logs}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_upgraded_from_the_old_default_client_id_routes_what_its_old_session_kept() {
    bounded(TEST_TIMEOUT, async {
        let broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let url = broker.url();
        let dir = Directory::start().await;
        let service = unique("upgr");
        let ingress = MqttIngress::new(&url);
        // The session an earlier release's router left: the old default id,
        // the shared subscription, and messages queued while it was down.
        let old_id = format!("baker-{}-{}", ingress.group, host_name());
        let mut old = Client::connect(&url, &old_id, true).await;
        old.subscribe(&format!("$share/{}/{}/+/#", ingress.group, ingress.prefix))
            .await;
        old.close().await;
        let kept = 500u64;
        let mut publisher = Client::connect(&url, &unique("pub-"), false).await;
        let topic = ingress.topic(&service, "t");
        publisher.publish_seq(&topic, 0, kept).await;

        let inbox = mqtt::consume_inbox(&url, &service, "o1", false).await;
        let router = sidecar(&dir.url(), &ingress, &service, "o1").await;
        router
            .wait_routed(&service, &["o1"], Duration::from_secs(15))
            .await;
        // And traffic published from now on, to the new session.
        publisher.publish_seq(&topic, kept, 500).await;
        wait_until(
            "what the old session kept and the new traffic arrive",
            Duration::from_secs(30),
            || async { tally(&[&inbox]).1.len() as u64 >= kept + 500 },
        )
        .await;
        wait_until(
            "the old session is ended",
            Duration::from_secs(15),
            || async {
                router
                    .proc
                    .log_text()
                    .contains("previous client id's session is taken over and ended")
            },
        )
        .await;
        let (duplicates, seen) = tally(&[&inbox]);
        assert_eq!(seen.len() as u64, kept + 500, "none lost");
        assert_eq!(duplicates, 0, "none twice");
        // Nothing is left under the old id.
        let again = Client::connect(&url, &old_id, true).await;
        assert!(!again.session_present(), "the old session was ended");
    })
    .await;
}
