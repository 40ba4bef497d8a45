//! MQTT 5 on a Mosquitto of the test's own.

use std::ops::Range;
use std::time::Duration;

use super::{DeadLetter, DeadLetters, Pace, Protocol, Reply};
use crate::common::mqtt::{self, Client, Mosquitto, MqttIngress};
use crate::common::{agent_registering, unique, Inbox, Proc};

/// MQTT 5 on a Mosquitto of the test's own, with the settings Baker's
/// guarantees need.
pub struct Mqtt {
    broker: Mosquitto,
    ingress: MqttIngress,
    /// The application's connection, made at its first publish.
    publisher: tokio::sync::Mutex<Option<Client>>,
}

impl Protocol for Mqtt {
    const ADAPTER: &'static str = "mqtt";

    fn broker_at(&self, port: u16) -> String {
        format!("mqtt://127.0.0.1:{port}")
    }

    fn inbox_address(&self, service: &str, id: &str) -> String {
        format!("_baker/{service}/{id}")
    }

    async fn setup() -> Self {
        let broker = Mosquitto::start(mqtt::BAKER_SETTINGS);
        let ingress = MqttIngress::new(&broker.url());
        Mqtt {
            broker,
            ingress,
            publisher: tokio::sync::Mutex::new(None),
        }
    }

    fn router_args(&self, router: usize) -> Vec<String> {
        // A client id per router, the same every time it starts: a
        // restarted router resumes the session the broker kept.
        let broker = format!(
            "{}?client_id={}-{router}",
            self.ingress.url, self.ingress.client_id
        );
        vec![
            "--adapter".into(),
            "mqtt".into(),
            "--broker".into(),
            broker,
            "--ingress-prefix".into(),
            self.ingress.prefix.clone(),
            "--queue-group".into(),
            self.ingress.group.clone(),
        ]
    }

    fn agent_registering(&self, directory: &str, spec: &str) -> Proc {
        agent_registering("mqtt", &self.broker.url(), directory, spec)
    }

    async fn inbox(&self, service: &str, id: &str) -> Inbox {
        mqtt::consume_inbox(&self.broker.url(), service, id, false).await
    }

    async fn publish(&self, service: &str, topic: &str, seqs: Range<u64>, pace: Pace) {
        let topic = self.ingress.topic(service, topic);
        let mut publisher = self.publisher.lock().await;
        if publisher.is_none() {
            *publisher = Some(Client::connect(&self.broker.url(), &unique("pub-"), false).await);
        }
        let client = publisher.as_mut().expect("connected above");
        match pace {
            Pace::Fast | Pace::Burst => {
                client
                    .publish_seq(&topic, seqs.start, seqs.end - seqs.start)
                    .await
            }
            Pace::Steady => {
                let mut start = seqs.start;
                while start < seqs.end {
                    let count = (seqs.end - start).min(500);
                    client.publish_seq(&topic, start, count).await;
                    start += count;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn publish_payload(&self, service: &str, topic: &str, payload: Vec<u8>) {
        use rumqttc::v5::mqttbytes::QoS;
        let topic = self.ingress.topic(service, topic);
        let mut publisher = self.publisher.lock().await;
        if publisher.is_none() {
            *publisher = Some(Client::connect(&self.broker.url(), &unique("pub-"), false).await);
        }
        let client = publisher.as_mut().expect("connected above");
        (client.publish_with(&topic, QoS::AtLeastOnce, payload, Default::default())).await;
    }

    async fn dead_letters(&self, _services: &[&str]) -> Option<DeadLetters> {
        // MQTT keeps a dead letter only for a subscriber present when it is
        // published: subscribe first. The broker is the test's own.
        let mut client = Client::connect(&self.broker.url(), &unique("dlq-"), false).await;
        let filter = format!("{}/#", baker_adapter_mqtt::DEAD_LETTER_PREFIX);
        client.subscribe(&filter).await;
        let letters = DeadLetters::default();
        let collected = letters.clone();
        tokio::spawn(async move {
            while let Some(letter) = client.incoming.recv().await {
                collected.lock().unwrap().push(DeadLetter {
                    payload: letter.payload.to_vec(),
                    reason: mqtt::user_property(&letter, "baker-error").map(str::to_owned),
                    attempts: mqtt::user_property(&letter, "baker-attempts").map(str::to_owned),
                });
            }
        });
        Some(letters)
    }

    async fn responder(&self, service: &str, id: &str) -> Option<tokio::task::JoinHandle<()>> {
        use rumqttc::v5::mqttbytes::v5::Publish;
        let filter = format!("_baker/{service}/{id}/#");
        let pong =
            |request: &Publish| format!("pong:{}", String::from_utf8_lossy(&request.payload));
        Some(mqtt::respond(&self.broker.url(), &filter, pong).await)
    }

    async fn request(&self, service: &str, topic: &str, payload: &str) -> Reply {
        use rumqttc::v5::mqttbytes::v5::PublishProperties;
        use rumqttc::v5::mqttbytes::QoS;
        let mut requester = Client::connect(&self.broker.url(), &unique("requester-"), false).await;
        let replies = unique("replies/");
        requester.subscribe(&format!("{replies}/#")).await;
        let properties = PublishProperties {
            response_topic: Some(format!("{replies}/1")),
            correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
            ..Default::default()
        };
        let topic = self.ingress.topic(service, topic);
        (requester.publish_with(&topic, QoS::AtLeastOnce, payload.to_owned(), properties)).await;
        let reply = tokio::time::timeout(Duration::from_secs(10), requester.incoming.recv())
            .await
            .expect("a reply within 10 s")
            .expect("the requester's connection stays up");
        requester.close().await;
        Reply {
            payload: String::from_utf8_lossy(&reply.payload).into_owned(),
            error: mqtt::user_property(&reply, "baker-error").map(str::to_owned),
        }
    }
}
