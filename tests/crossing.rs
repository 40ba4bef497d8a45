//! Crossing protocols: messages from one protocol's ingress to another's
//! instances, with their headers and properties, and replies proxied back
//! across brokers and protocols. On the shared brokers: NATS, RabbitMQ
//! (a vhost of each test's own) and Mosquitto.

mod common;

use std::time::Duration;

use common::amqp::{self, Vhost};
use common::mqtt::{self, Client, MqttIngress};
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(150);

/// Starts a router on the MQTT ingress at `url`, waits until it routes to
/// `instance` (service, id), and publishes one message at QoS 1 to the
/// service's topic `eu/created`. Returns the router, to keep it running.
async fn publish_from_mqtt(
    url: &str,
    directory: &str,
    (service, id): (&str, &str),
    payload: &'static str,
    properties: rumqttc::v5::mqttbytes::v5::PublishProperties,
) -> Router {
    let ingress = MqttIngress::new(url);
    let router = ingress.router_routing(directory, &[], service, &[id]).await;
    let publisher = Client::connect(url, &unique("pub-"), false).await;
    let topic = ingress.topic(service, "eu/created");
    (publisher.publish_with(
        &topic,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        payload,
        properties,
    ))
    .await;
    router
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_ingress_reaches_a_nats_instance_and_nats_ingress_an_mqtt_instance_with_headers() {
    bounded(TEST_TIMEOUT, async {
        use futures::StreamExt;
        use rumqttc::v5::mqttbytes::v5::PublishProperties;

        let url = mqtt::mqtt_url();
        let dir = Directory::start().await;
        let nats = connect().await;

        // MQTT → NATS.
        let to_nats = unique("tonats");
        let mut nats_inbox = nats
            .subscribe(format!("_baker.{to_nats}.n1.>"))
            .await
            .unwrap();
        nats.flush().await.unwrap();
        let _nats_agent = agent(&dir.url(), &to_nats, "n1", &[]);
        let _mqtt_router = publish_from_mqtt(
            &url,
            &dir.url(),
            (&to_nats, "n1"),
            "from mqtt",
            PublishProperties {
                user_properties: vec![("trace".into(), "t-1".into())],
                content_type: Some("text/plain".into()),
                correlation_data: Some("c-1".into()),
                ..Default::default()
            },
        )
        .await;
        let got = tokio::time::timeout(Duration::from_secs(10), nats_inbox.next())
            .await
            .expect("NATS instance receives")
            .unwrap();
        assert_eq!(
            got.subject.as_str(),
            format!("_baker.{to_nats}.n1.eu.created")
        );
        assert_eq!(got.payload.as_ref(), b"from mqtt");
        let headers = got.headers.unwrap();
        assert_eq!(headers.get("trace").map(|v| v.as_str()), Some("t-1"));
        assert_eq!(
            headers.get("content-type").map(|v| v.as_str()),
            Some("text/plain")
        );
        assert_eq!(
            headers.get("correlation-id").map(|v| v.as_str()),
            Some("c-1")
        );
        assert!(headers.get("baker-msg-id").is_some());

        // NATS → MQTT.
        let to_mqtt = unique("tomqtt");
        let (inbox, all) = mqtt::consume_inbox_full(&url, &to_mqtt, "m1", false).await;
        let _mqtt_agent = mqtt::agent(&dir.url(), &url, &to_mqtt, "m1");
        let nats_ingress = Ingress::new();
        let nats_router = Router::start(&dir.url(), &nats_ingress, &[]).await;
        nats_router
            .wait_routed(&to_mqtt, &["m1"], Duration::from_secs(15))
            .await;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("trace", "t-2");
        headers.insert("content-type", "application/json");
        nats.publish_with_headers(
            nats_ingress.subject(&to_mqtt, "eu.updated"),
            headers,
            "7".into(),
        )
        .await
        .unwrap();
        nats.flush().await.unwrap();
        let got = mqtt::first_received(&inbox, &all).await;
        assert_eq!(
            std::str::from_utf8(&got.topic).unwrap(),
            format!("_baker/{to_mqtt}/m1/eu/updated")
        );
        assert_eq!(mqtt::user_property(&got, "trace"), Some("t-2"));
        // From an at-most-once ingress, no id of Baker's (nothing to dedupe).
        assert!(mqtt::user_property(&got, "baker-msg-id").is_none());
        assert_eq!(
            got.properties
                .as_ref()
                .and_then(|p| p.content_type.as_deref()),
            Some("application/json")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_ingress_reaches_an_amqp_instance_and_amqp_ingress_an_mqtt_instance_with_properties() {
    bounded(TEST_TIMEOUT, async {
        use common::amqp::{self, Vhost};
        use lapin::types::{AMQPValue, FieldTable};
        use rumqttc::v5::mqttbytes::v5::PublishProperties;

        let url = mqtt::mqtt_url();
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;

        // MQTT → AMQP.
        let to_amqp = unique("toamqp");
        let queue = format!("_baker.{to_amqp}.q1");
        let (inbox, received) = amqp::consume(&channel, &queue).await;
        let _amqp_agent = agent_on("amqp", &vhost.url(), &dir.url(), &to_amqp, "q1", &[]);
        let _mqtt_router = publish_from_mqtt(
            &url,
            &dir.url(),
            (&to_amqp, "q1"),
            "5",
            PublishProperties {
                user_properties: vec![("trace".into(), "t-9".into())],
                content_type: Some("text/plain".into()),
                correlation_data: Some("c-9".into()),
                message_expiry_interval: Some(60),
                ..Default::default()
            },
        )
        .await;
        wait_until(
            "AMQP instance receives",
            Duration::from_secs(10),
            || async { inbox.count() >= 1 },
        )
        .await;
        let got = received.lock().unwrap()[0].clone();
        assert_eq!(got.header("trace"), Some("t-9"));
        assert_eq!(got.header("baker-topic"), Some("eu.created"));
        assert!(got.header("baker-msg-id").is_some());
        let p = &got.properties;
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("text/plain")
        );
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("c-9"));
        assert_eq!(p.expiration().as_ref().map(|c| c.as_str()), Some("60000"));

        // AMQP → MQTT.
        let to_mqtt = unique("frommqtt");
        let (inbox, all) = mqtt::consume_inbox_full(&url, &to_mqtt, "m1", false).await;
        let _mqtt_agent = mqtt::agent(&dir.url(), &url, &to_mqtt, "m1");
        let amqp_url = vhost.url();
        let amqp_router =
            Router::spawn(&dir.url(), &["--adapter", "amqp", "--broker", &amqp_url]).await;
        amqp_router
            .wait_routed(&to_mqtt, &["m1"], Duration::from_secs(15))
            .await;
        let mut headers = FieldTable::default();
        headers.insert("trace".into(), AMQPValue::LongString("t-3".into()));
        amqp::publish_one(
            &channel,
            &format!("{to_mqtt}.eu.updated"),
            b"6",
            lapin::BasicProperties::default()
                .with_headers(headers)
                .with_correlation_id("c-3".into())
                .with_content_type("application/json".into()),
        )
        .await;
        let got = mqtt::first_received(&inbox, &all).await;
        assert_eq!(
            std::str::from_utf8(&got.topic).unwrap(),
            format!("_baker/{to_mqtt}/m1/eu/updated")
        );
        assert_eq!(mqtt::user_property(&got, "trace"), Some("t-3"));
        let props = got.properties.clone().unwrap_or_default();
        assert_eq!(props.correlation_data.as_deref(), Some(&b"c-3"[..]));
        assert_eq!(props.content_type.as_deref(), Some("application/json"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_ingress_reaches_an_amqp_instance_and_amqp_ingress_a_nats_instance() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let nats = connect().await;
        let amqp_url = vhost.url();
        let nats_url = nats_url();

        // NATS → AMQP: a NATS router, an instance whose inbox is an AMQP queue.
        let (to_amqp, received) = amqp::consume(&channel, "_baker.x2a.a").await;
        let spec = format!("service=x2a,id=a,adapter=amqp,broker={amqp_url}");
        let _agent_a = Proc::spawn(
            "agent-x2a",
            &[
                "--no-router",
                "--directory",
                &dir.url(),
                "--admin",
                "127.0.0.1:0",
                "--register",
                &spec,
            ],
        );
        let ingress = Ingress::new();
        let nats_router = Router::start(&dir.url(), &ingress, &[]).await;
        nats_router
            .wait_routed("x2a", &["a"], Duration::from_secs(15))
            .await;
        for seq in 0..100u64 {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("trace", "t-1");
            headers.insert("content-type", "application/json");
            nats.publish_with_headers(
                ingress.subject("x2a", "made"),
                headers,
                seq.to_string().into(),
            )
            .await
            .unwrap();
        }
        nats.flush().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while to_amqp.count() < 100 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to_amqp.count() < 100 {
            panic!(
                "only {} of 100 NATS messages reached the AMQP inbox; router metrics:\n{}\nlog:\n{}",
                to_amqp.count(),
                nats_router.metrics().await,
                nats_router.proc.log_text()
            );
        }
        let first = received.lock().unwrap()[0].clone();
        assert_eq!(
            first.header("trace"),
            Some("t-1"),
            "headers mapped: {:?}",
            first.headers
        );
        assert_eq!(first.header("baker-topic"), Some("made"));
        assert_eq!(
            first.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json"),
            "NATS content-type header becomes the AMQP property"
        );
        assert_eq!(first.header("content-type"), None);
        assert_eq!(
            first.properties.delivery_mode(),
            &Some(2),
            "published persistent"
        );

        // AMQP → NATS: an AMQP router, an instance whose inbox is a NATS subject.
        let to_nats = consume_inbox(&nats, "a2n", "n").await;
        let spec = format!("service=a2n,id=n,adapter=nats,broker={nats_url}");
        let _agent_n = Proc::spawn(
            "agent-a2n",
            &[
                "--no-router",
                "--directory",
                &dir.url(),
                "--admin",
                "127.0.0.1:0",
                "--register",
                &spec,
            ],
        );
        let amqp_router = amqp::router(&dir.url(), &vhost, &[]).await;
        amqp_router
            .wait_routed("a2n", &["n"], Duration::from_secs(15))
            .await;
        let mut sub = nats.subscribe("_baker.a2n.n.>").await.unwrap();
        nats.flush().await.unwrap();
        let mut table = lapin::types::FieldTable::default();
        table.insert(
            "trace".into(),
            lapin::types::AMQPValue::LongString("t-2".into()),
        );
        for seq in 0..100u64 {
            amqp::publish_one(&channel, "a2n.made", seq.to_string().as_bytes(), lapin::BasicProperties::default().with_headers(table.clone()).with_content_type("text/plain".into()).with_correlation_id("c-9".into()),).await;
        }
        wait_until(
            "AMQP messages on the NATS inbox",
            Duration::from_secs(20),
            || async { to_nats.count() >= 100 },
        )
        .await;
        let msg = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.subject.as_str(), "_baker.a2n.n.made");
        assert_eq!(
            msg.headers
                .as_ref()
                .and_then(|h| h.get("trace"))
                .map(|v| v.as_str()),
            Some("t-2")
        );
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.to_string())
        };
        assert_eq!(header("content-type").as_deref(), Some("text/plain"));
        assert_eq!(header("correlation-id").as_deref(), Some("c-9"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_levels_arrive_as_sent_and_one_another_protocol_cannot_carry_is_dead_lettered() {
    bounded(TEST_TIMEOUT, async {
        use futures::StreamExt;

        let url = mqtt::mqtt_url();
        let dir = Directory::start().await;
        let to_mqtt = unique("levm");
        let to_nats = unique("levn");
        let (inbox, all) = mqtt::consume_inbox_full(&url, &to_mqtt, "m1", false).await;
        let nats = connect().await;
        let mut nats_inbox = nats
            .subscribe(format!("_baker.{to_nats}.n1.>"))
            .await
            .unwrap();
        nats.flush().await.unwrap();
        let _agents = [
            mqtt::agent(&dir.url(), &url, &to_mqtt, "m1"),
            agent(&dir.url(), &to_nats, "n1", &[]),
        ];
        let ingress = MqttIngress::new(&url);
        let router = ingress
            .router_routing(&dir.url(), &[], &to_mqtt, &["m1"])
            .await;
        router
            .wait_routed(&to_nats, &["n1"], Duration::from_secs(15))
            .await;
        let mut dead = Client::connect(&url, &unique("dlq-"), false).await;
        dead.subscribe(&format!(
            "{}/{}/#",
            baker_adapter_mqtt::DEAD_LETTER_PREFIX,
            ingress.prefix
        ))
        .await;
        let mut publisher = Client::connect(&url, &unique("pub-"), false).await;

        // A level with a dot stays one level on MQTT (it became `v1/2`).
        publisher
            .publish_seq(&ingress.topic(&to_mqtt, "v1.2/eu"), 0, 1)
            .await;
        let got = mqtt::first_received(&inbox, &all).await;
        assert_eq!(
            std::str::from_utf8(&got.topic).unwrap(),
            format!("_baker/{to_mqtt}/m1/v1.2/eu")
        );

        // NATS cannot carry it as one token: dead-lettered with the reason,
        // not delivered as `v1.2.eu` (three levels).
        publisher
            .publish_seq(&ingress.topic(&to_nats, "v1.2/eu"), 1, 1)
            .await;
        let letter = tokio::time::timeout(Duration::from_secs(10), dead.incoming.recv())
            .await
            .expect("a dead letter")
            .unwrap();
        let reason = mqtt::user_property(&letter, "baker-error").unwrap_or_default();
        assert!(reason.contains("\"v1.2\""), "{reason}");
        assert!(
            tokio::time::timeout(Duration::from_millis(500), nats_inbox.next())
                .await
                .is_err(),
            "nothing reaches the NATS instance"
        );
    })
    .await;
}
