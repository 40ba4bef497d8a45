//! Not tests of Baker: measurements of what the MQTT broker does, which
//! docs/protocols.md quotes. Ignored by default; run them with
//! `cargo test --test mqtt_broker -- --ignored --nocapture`.

mod common;

use std::time::Duration;

use common::mqtt::{self, Client, Mosquitto};
use common::*;

/// Not a test of Baker: how many QoS 1 messages a broker keeps for an
/// offline persistent session, with its default settings and with Baker's.
/// Run with `cargo test --test mqtt_broker -- --ignored --nocapture
/// offline_session`; the README quotes its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_what_the_broker_keeps_for_an_offline_session() {
    for settings in ["", mqtt::BAKER_SETTINGS] {
        let broker = Mosquitto::start(settings);
        let id = unique("offline-");
        let mut session = Client::connect(&broker.url(), &id, true).await;
        session.subscribe("o/#").await;
        session.close().await;
        let mut publisher = Client::connect(&broker.url(), &unique("pub-"), false).await;
        publisher.publish_seq("o/x", 0, 3000).await;
        let mut session = Client::connect(&broker.url(), &id, true).await;
        let mut received = 0;
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_secs(2), session.incoming.recv()).await
        {
            received += 1;
        }

        eprintln!("settings {settings:?}: 3000 published while the session was offline, {received} delivered on reconnect");
    }
}

/// Not a test of Baker: measures whether the broker holds to a subscriber's
/// Receive Maximum once the subscriber acknowledges slowly (Mosquitto 2.0.11
/// does not). Run with `cargo test --test mqtt_broker -- --ignored
/// --nocapture receive_maximum`; the README quotes its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_how_far_the_broker_exceeds_a_receive_maximum_of_8_with_slow_acks() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    for settings in ["", mqtt::BAKER_SETTINGS] {
        let broker = Mosquitto::start(settings);
        let mut options = MqttOptions::new(unique("probe-"), "127.0.0.1", broker.port);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(600))
            .set_manual_acks(true)
            .set_receive_maximum(Some(8));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe("$share/g/p/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let (received, acked, most) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let (received, acked, most) = (received.clone(), acked.clone(), most.clone());
            tokio::spawn(async move {
                while let Ok(event) = eventloop.poll().await {
                    if let Event::Incoming(Packet::Publish(p)) = event {
                        let r = received.fetch_add(1, Ordering::Relaxed) + 1;
                        most.fetch_max(r - acked.load(Ordering::Relaxed), Ordering::Relaxed);
                        let _ = tx.send(p);
                    }
                }
            });
        }
        {
            let (client, acked) = (client.clone(), acked.clone());
            tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                    if client.ack(&p).await.is_err() {
                        return;
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut publisher = Client::connect(&broker.url(), &unique("pub-"), false).await;
        publisher.publish_seq("p/x", 0, 3000).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        eprintln!(
            "settings {settings:?}: 3000 published, {} received, at most {} unacknowledged at once (Receive Maximum 8)",
            received.load(Ordering::Relaxed),
            most.load(Ordering::Relaxed)
        );
    }
}
