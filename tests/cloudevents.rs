//! CloudEvents across protocols, on the shared brokers: a binary-mode event
//! published in one protocol's binding arrives in the other protocol's
//! binding (NATS `ce-` headers, AMQP `cloudEvents_` headers, MQTT 5 user
//! properties; `datacontenttype` as the content type where the binding says
//! so); a structured-mode event and a message that is no CloudEvent pass
//! untouched.

mod common;

use std::time::Duration;

use common::amqp::{self, Vhost};
use common::mqtt::{self, Client, MqttIngress};
use common::*;
use futures::StreamExt;
use lapin::types::{AMQPValue, FieldTable};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

const TEST_TIMEOUT: Duration = Duration::from_secs(150);

/// The next message on `inbox`, within 15 s.
async fn next(inbox: &mut async_nats::Subscriber) -> async_nats::Message {
    let next = tokio::time::timeout(Duration::from_secs(15), inbox.next());
    next.await.expect("a message on the NATS inbox").unwrap()
}

/// A NATS binary-mode event: attributes as `ce-` headers, percent-encoded.
fn nats_event() -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "e-1"),
        ("ce-type", "com.example.order.created"),
        ("ce-source", "/orders/eu%20west"),
        ("ce-datacontenttype", "application/json"),
        ("ce-tenant", "acme"),
        ("trace", "t-1"),
    ] {
        headers.insert(name, value);
    }
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_event_arrives_in_the_amqp_and_mqtt_bindings() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let nats = connect().await;
        let mqtt_url = mqtt::mqtt_url();
        let (service_a, service_m) = (unique("ce2a"), unique("ce2m"));
        let (amqp_inbox, received) =
            amqp::consume(&channel, &format!("_baker.{service_a}.a")).await;
        let _agent_a = amqp::agent(&dir.url(), &vhost, &service_a, "a");
        let (mqtt_inbox, published) =
            mqtt::consume_inbox_full(&mqtt_url, &service_m, "m", false).await;
        let _agent_m = mqtt::agent(&dir.url(), &mqtt_url, &service_m, "m");
        let ingress = Ingress::new();
        let router = Router::start(&dir.url(), &ingress, &[]).await;
        router
            .wait_routed(&service_a, &["a"], Duration::from_secs(15))
            .await;
        router
            .wait_routed(&service_m, &["m"], Duration::from_secs(15))
            .await;

        for service in [&service_a, &service_m] {
            let subject = ingress.subject(service, "created");
            nats.publish_with_headers(subject, nats_event(), "{}".into())
                .await
                .unwrap();
        }
        // No `ce-specversion`: not a CloudEvent, not touched.
        let mut plain = async_nats::HeaderMap::new();
        plain.insert("ce-id", "x%20y");
        nats.publish_with_headers(ingress.subject(&service_a, "plain"), plain, "{}".into())
            .await
            .unwrap();
        nats.flush().await.unwrap();

        wait_until(
            "both on the AMQP inbox",
            Duration::from_secs(15),
            || async { amqp_inbox.count() >= 2 },
        )
        .await;
        let received = received.lock().unwrap().clone();
        let event = (received.iter())
            .find(|m| m.header("cloudEvents_id").is_some())
            .expect("the event");
        assert_eq!(event.header("cloudEvents_specversion"), Some("1.0"));
        assert_eq!(
            event.header("cloudEvents_source"),
            Some("/orders/eu west"),
            "decoded"
        );
        assert_eq!(
            event.header("cloudEvents_tenant"),
            Some("acme"),
            "extensions too"
        );
        assert_eq!(
            event.header("cloudEvents_datacontenttype"),
            None,
            "it is the content type"
        );
        assert_eq!(event.header("ce-id"), None);
        assert_eq!(event.header("trace"), Some("t-1"));
        assert_eq!(
            event.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        let plain = (received.iter())
            .find(|m| m.header("ce-id").is_some())
            .expect("the plain one");
        assert_eq!(plain.header("ce-id"), Some("x%20y"));

        let got = mqtt::first_received(&mqtt_inbox, &published).await;
        assert_eq!(mqtt::user_property(&got, "specversion"), Some("1.0"));
        assert_eq!(mqtt::user_property(&got, "source"), Some("/orders/eu west"));
        assert_eq!(mqtt::user_property(&got, "tenant"), Some("acme"));
        assert_eq!(mqtt::user_property(&got, "ce-id"), None);
        assert_eq!(mqtt::user_property(&got, "datacontenttype"), None);
        let content_type = got
            .properties
            .as_ref()
            .and_then(|p| p.content_type.as_deref());
        assert_eq!(content_type, Some("application/json"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_and_mqtt_events_arrive_in_the_nats_binding_and_structured_ones_untouched() {
    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let nats = connect().await;
        let url = nats_url();
        let service = unique("ce2n");
        let mut inbox = subscribe_inbox(&nats, &service, "n").await;
        let _agent =
            agent_registering("nats", &url, &dir.url(), &format!("service={service},id=n"));
        let amqp_router = amqp::router(&dir.url(), &vhost, &[]).await;
        amqp_router
            .wait_routed(&service, &["n"], Duration::from_secs(15))
            .await;

        let header =
            |msg: &async_nats::Message, name: &str| header_text(msg.headers.as_ref(), name);

        // AMQP → NATS, with the binding's other separator and a typed value.
        let mut table = FieldTable::default();
        table.insert(
            "cloudEvents:specversion".into(),
            AMQPValue::LongString("1.0".into()),
        );
        table.insert("cloudEvents:id".into(), AMQPValue::LongString("a-1".into()));
        table.insert(
            "cloudEvents:source".into(),
            AMQPValue::LongString("/a b".into()),
        );
        table.insert("cloudEvents:sequence".into(), AMQPValue::LongLongInt(42));
        let properties = lapin::BasicProperties::default()
            .with_headers(table)
            .with_content_type("text/plain".into());
        amqp::publish_one(&channel, &format!("{service}.made"), b"hello", properties).await;
        let msg = next(&mut inbox).await;
        assert_eq!(header(&msg, "ce-specversion"), "1.0");
        assert_eq!(header(&msg, "ce-id"), "a-1");
        assert_eq!(header(&msg, "ce-source"), "/a%20b", "percent-encoded");
        assert_eq!(header(&msg, "ce-sequence"), "42");
        assert_eq!(header(&msg, "ce-datacontenttype"), "text/plain");
        let names: Vec<String> = (msg.headers.iter().flat_map(|h| h.iter()))
            .map(|(name, _)| name.to_string())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("cloudEvents")),
            "{names:?}"
        );

        // MQTT → NATS: binary mode, then structured mode.
        let mqtt_url = mqtt::mqtt_url();
        let mqtt_ingress = MqttIngress::new(&mqtt_url);
        let _mqtt_router = mqtt_ingress
            .router_routing(&dir.url(), &[], &service, &["n"])
            .await;
        let publisher = Client::connect(&mqtt_url, &unique("pub-"), false).await;
        let topic = mqtt_ingress.topic(&service, "made");
        let user = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        let binary = PublishProperties {
            user_properties: user(&[
                ("specversion", "1.0"),
                ("id", "m-1"),
                ("source", "/m"),
                ("x-Trace", "t"),
            ]),
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        publisher
            .publish_with(&topic, QoS::AtLeastOnce, "{}", binary)
            .await;
        let msg = next(&mut inbox).await;
        assert_eq!(header(&msg, "ce-specversion"), "1.0");
        assert_eq!(header(&msg, "ce-id"), "m-1");
        assert_eq!(header(&msg, "ce-datacontenttype"), "application/json");
        assert_eq!(
            header(&msg, "x-Trace"),
            "t",
            "not an attribute name: as it was"
        );
        assert_eq!(header(&msg, "id"), "");
        let structured = PublishProperties {
            user_properties: user(&[("specversion", "1.0")]),
            content_type: Some("application/cloudevents+json".into()),
            ..Default::default()
        };
        let event = r#"{"specversion":"1.0","id":"s-1","source":"/s","type":"t"}"#;
        publisher
            .publish_with(&topic, QoS::AtLeastOnce, event, structured)
            .await;
        let msg = next(&mut inbox).await;
        assert_eq!(msg.payload.as_ref(), event.as_bytes());
        assert_eq!(header(&msg, "specversion"), "1.0", "structured: untouched");
        assert_eq!(header(&msg, "ce-specversion"), "");
        assert_eq!(header(&msg, "content-type"), "application/cloudevents+json");
    })
    .await;
}
