//! Replies across protocols: a request published on one protocol, answered
//! by an instance on another, comes back through the router's reply proxy.

mod common;

use std::time::Duration;

use common::amqp::{self, Vhost};
use common::mqtt::{self, Client, MqttIngress};
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_cross_between_mqtt_and_nats_through_the_routers_reply_proxy() {
    use futures::StreamExt;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;

    bounded(TEST_TIMEOUT, async {
        let url = mqtt::mqtt_url();
        let dir = Directory::start().await;
        let nats = connect().await;

        // An MQTT instance answering at the response topic its request names.
        let to_mqtt = unique("rpcm");
        mqtt::respond(&url, &format!("_baker/{to_mqtt}/m/#"), |request| {
            format!("pong:{}", String::from_utf8_lossy(&request.payload))
        })
        .await;
        let _mqtt_agent = mqtt::agent(&dir.url(), &url, &to_mqtt, "m");
        // A NATS instance answering at the reply subject.
        let to_nats = unique("rpcn");
        let _nats_agent = agent(&dir.url(), &to_nats, "n", &[]);
        let mut nats_requests = nats
            .subscribe(format!("_baker.{to_nats}.n.>"))
            .await
            .unwrap();
        nats.flush().await.unwrap();
        {
            let nats = nats.clone();
            tokio::spawn(async move {
                while let Some(request) = nats_requests.next().await {
                    let body = format!("pong:{}", String::from_utf8_lossy(&request.payload));
                    if let Some(reply) = request.reply {
                        nats.publish(reply, body.into()).await.unwrap();
                    }
                }
            });
        }

        // NATS requester → MQTT instance.
        let ingress = Ingress::new();
        let nats_router = Router::start(&dir.url(), &ingress, &[]).await;
        nats_router
            .wait_routed(&to_mqtt, &["m"], Duration::from_secs(15))
            .await;
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            nats.request(ingress.subject(&to_mqtt, "get"), "1".into()),
        )
        .await
        .expect("a reply from the MQTT instance within 10 s")
        .expect("a reply, not an error");
        assert_eq!(&reply.payload[..], b"pong:1");

        // MQTT requester → NATS instance, correlation data restored.
        let mqtt_ingress = MqttIngress::new(&url);
        let _mqtt_router = mqtt_ingress
            .router_routing(&dir.url(), &[], &to_nats, &["n"])
            .await;
        let mut requester = Client::connect(&url, &unique("requester-"), false).await;
        let replies = unique("replies/");
        requester.subscribe(&format!("{replies}/#")).await;
        // Text correlation data, then data that is not text: both restored
        // exactly.
        let topic = mqtt_ingress.topic(&to_nats, "get");
        for (n, correlation) in [
            (2, bytes::Bytes::from_static(b"c-7")),
            (3, bytes::Bytes::from_static(&[0xc7, 0x00, 0xff, 0x01])),
        ] {
            requester
                .publish_with(
                    &topic,
                    QoS::AtLeastOnce,
                    n.to_string(),
                    PublishProperties {
                        response_topic: Some(format!("{replies}/{n}")),
                        correlation_data: Some(correlation.clone()),
                        ..Default::default()
                    },
                )
                .await;
            let reply = tokio::time::timeout(Duration::from_secs(10), requester.incoming.recv())
                .await
                .expect("a reply from the NATS instance within 10 s")
                .unwrap();
            assert_eq!(reply.payload, format!("pong:{n}").as_bytes());
            assert_eq!(
                reply
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_data.clone()),
                Some(correlation),
                "correlation data restored exactly"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_cross_protocols_and_brokers_through_the_routers_reply_proxy() {
    bounded(TEST_TIMEOUT, async {
        use futures::StreamExt;
        // Requesters' broker (vhost `front`) and instances' broker (`back`):
        // separate namespaces, so a reply address on one means nothing on
        // the other.
        let front = Vhost::create();
        let back = Vhost::create();
        let dir = Directory::start().await;
        let nats = connect().await;

        // An AMQP instance on `back` and a NATS instance; both answer at
        // whatever reply address their request carries.
        let _amqp_agent = amqp::agent(&dir.url(), &back, "rpcx", "a");
        let (_bconn, back_channel) = back.channel().await;
        amqp::declare_queue(&back_channel, "_baker.rpcx.a").await;
        amqp::respond(back_channel, "_baker.rpcx.a").await;
        let _nats_agent = agent(&dir.url(), "rpcn", "n", &[]);
        let mut nats_requests = nats.subscribe("_baker.rpcn.n.>").await.unwrap();
        nats.flush().await.unwrap();
        {
            let nats = nats.clone();
            tokio::spawn(async move {
                while let Some(request) = nats_requests.next().await {
                    let body = format!("pong:{}", String::from_utf8_lossy(&request.payload));
                    let reply = request.reply.expect("a request has a reply subject");
                    nats.publish(reply, body.into()).await.unwrap();
                }
            });
        }

        // NATS requester → AMQP instance.
        let ingress = Ingress::new();
        let nats_router = Router::start(&dir.url(), &ingress, &[]).await;
        nats_router
            .wait_routed("rpcx", &["a"], Duration::from_secs(15))
            .await;
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            nats.request(ingress.subject("rpcx", "get"), "1".into()),
        )
        .await
        .expect("NATS reply from the AMQP instance within 10 s")
        .expect("a reply, not an error");
        assert_eq!(&reply.payload[..], b"pong:1");

        // AMQP requester on `front` → NATS instance, and → AMQP instance on
        // `back`.
        let amqp_router = amqp::router(&dir.url(), &front, &[]).await;
        amqp_router
            .wait_routed("rpcn", &["n"], Duration::from_secs(15))
            .await;
        let reply = amqp::direct_request(&front, "rpcn.get", b"2", "c-2").await;
        assert_eq!(reply.data, b"pong:2");
        assert_eq!(amqp::correlation_id(&reply), Some("c-2"));
        let reply = amqp::direct_request(&front, "rpcx.get", b"3", "c-3").await;
        assert_eq!(reply.data, b"pong:3");
        assert_eq!(
            amqp::correlation_id(&reply),
            Some("c-3"),
            "the requester's correlation id is restored"
        );

        // Counted once the requester's broker confirmed the reply, which can
        // be just after the requester got it.
        wait_until("both replies counted", Duration::from_secs(5), || async {
            amqp_router
                .metrics()
                .await
                .contains(r#"baker_replies_total{outcome="forwarded"} 2"#)
        })
        .await;
    })
    .await;
}
