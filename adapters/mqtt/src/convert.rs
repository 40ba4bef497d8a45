//! Mapping between MQTT 5 publish properties and Baker's message fields.
//!
//! User properties are Baker's headers, both ways. Content type, response
//! topic (the reply-to) and correlation data are kept; correlation data that
//! is UTF-8 is also the message's correlation id, so it reaches AMQP and NATS
//! inboxes. From an MQTT ingress the original publish rides along as the
//! message's native metadata, so an MQTT egress keeps binary correlation
//! data, the payload format indicator and the message expiry exactly.
//!
//! A binary-mode CloudEvent (the MQTT binding 1.0.3: each attribute a user
//! property of its own name, `datacontenttype` the content type) is carried
//! as Baker carries CloudEvents (`adapters/api`'s `cloudevents`), both ways.

use std::sync::Arc;

use baker_adapter_api::cloudevents::{self, Exported};
use baker_adapter_api::{Destination, Headers, Message, Native, Properties};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

/// Splits an ingress topic `<prefix>/<service>/<topic...>` into the service
/// and the topic's levels. `None` when the topic is not under `prefix` or
/// names no service.
pub fn destination(prefix: &str, topic: &str) -> Option<Destination> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    Some(Destination::from_address(rest, '/')).filter(|d| !d.service.is_empty())
}

/// Baker's view of an MQTT publish: headers, reply-to and properties. The
/// publish itself is kept as the native metadata.
pub fn from_mqtt(publish: &Arc<Publish>) -> Message {
    let mut message = Message {
        payload: publish.payload.clone(),
        native: Some(Native::new(crate::NAME, publish.clone())),
        ..Default::default()
    };
    let Some(p) = &publish.properties else {
        return message;
    };
    let mut headers = Headers::with_capacity(p.user_properties.len() + 3);
    for (name, value) in &p.user_properties {
        headers.append(name.clone(), value.clone());
    }
    message.headers = headers;
    message.reply_to = p.response_topic.clone();
    // Text correlation data is also the correlation id other protocols
    // carry; the rest is kept as bytes.
    let (correlation_id, correlation_data) = match &p.correlation_data {
        Some(data) => match std::str::from_utf8(data) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(data.clone())),
        },
        None => (None, None),
    };
    message.properties = Properties {
        content_type: p.content_type.clone(),
        correlation_id,
        correlation_data,
        expiration_ms: p.message_expiry_interval.map(|s| u64::from(s) * 1000),
        ..Default::default()
    };
    // Structured mode (the event in the payload) passes as it is.
    let structured = (p.content_type.as_deref()).is_some_and(|c| {
        c.to_ascii_lowercase()
            .starts_with("application/cloudevents")
    });
    if !structured {
        let content_type = message.properties.content_type.clone();
        cloudevents::import(
            &mut message.headers,
            content_type.as_deref(),
            mqtt_attribute,
        );
    }
    message
}

/// The CloudEvents attribute a user property carries, if it is one: in the
/// MQTT binding, the property is named as the attribute.
fn mqtt_attribute(name: &str) -> Option<&str> {
    cloudevents::is_attribute_name(name).then_some(name)
}

/// Whether MQTT can carry `text` as a UTF-8 string: no NUL character (the
/// broker would close the connection over it).
fn valid_string(text: &str) -> bool {
    !text.contains('\0')
}

/// Whether `topic` can be published to: non-empty, no wildcards, no NUL.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// The MQTT 5 properties for `message`. Returns them with the number of
/// headers left out because MQTT cannot carry them.
pub fn to_mqtt(message: &Message) -> (PublishProperties, usize) {
    let native = (message.native.as_ref()).and_then(|n| n.get::<Publish>(crate::NAME));
    let native = native.as_deref().and_then(|p| p.properties.as_ref());
    let mut skipped = 0;
    let mut user_properties = Vec::with_capacity(message.headers.len());
    let event = cloudevents::is_binary(&message.headers);
    for (name, value) in message.headers.iter() {
        let (name, value) = match cloudevents::exported(event, name, value) {
            Exported::Header(name, value) | Exported::Attribute(name, value) => (name, value),
            // Carried as the content type (below).
            Exported::ContentType => continue,
        };
        if valid_string(name) && valid_string(&value) {
            user_properties.push((name.to_owned(), value.into_owned()));
        } else {
            skipped += 1;
        }
    }
    let p = &message.properties;
    let correlation_data = native
        .and_then(|n| n.correlation_data.clone())
        .or_else(|| p.correlation_data.clone())
        .or_else(|| {
            p.correlation_id
                .as_ref()
                .map(|c| bytes::Bytes::copy_from_slice(c.as_bytes()))
        });
    let message_expiry_interval = native.and_then(|n| n.message_expiry_interval).or_else(|| {
        p.expiration_ms
            .map(|ms| u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX))
    });
    let properties = PublishProperties {
        payload_format_indicator: native.and_then(|n| n.payload_format_indicator),
        message_expiry_interval,
        response_topic: message.reply_to.clone().filter(|r| valid_topic_name(r)),
        correlation_data,
        user_properties,
        content_type: cloudevents::content_type(&message.headers, p.content_type.as_deref())
            .map(|c| c.into_owned())
            .filter(|c| valid_string(c)),
        ..Default::default()
    };
    (properties, skipped)
}

/// `original` with the dead-letter user properties added.
pub fn dead_lettered(original: &Publish, reason: &str, attempts: u32) -> PublishProperties {
    let mut properties = original.properties.clone().unwrap_or_default();
    // Not for the dead-letter topic: aliases belong to the ingress connection.
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    properties.user_properties.retain(|(n, _)| {
        n != baker_adapter_api::header::ERROR && n != baker_adapter_api::header::ATTEMPTS
    });
    properties.user_properties.push((
        baker_adapter_api::header::ERROR.to_owned(),
        reason.replace('\0', " "),
    ));
    properties.user_properties.push((
        baker_adapter_api::header::ATTEMPTS.to_owned(),
        attempts.to_string(),
    ));
    properties
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::QoS;

    /// `message` as its MQTT 5 publish, encoded and decoded as on the wire,
    /// back in Baker's form.
    fn through_the_wire(message: &Message, topic: &str) -> (Message, usize) {
        use rumqttc::v5::mqttbytes::v5::Packet;
        let (properties, skipped) = to_mqtt(message);
        let mut publish = Publish::new(
            topic,
            QoS::AtLeastOnce,
            message.payload.clone(),
            Some(properties),
        );
        publish.pkid = 1;
        let mut wire = bytes::BytesMut::new();
        publish.write(&mut wire).unwrap();
        let Packet::Publish(read) = Packet::read(&mut wire, None).unwrap() else {
            panic!("a publish reads back as a publish");
        };
        (from_mqtt(&Arc::new(read)), skipped)
    }

    fn no_proptest_files(cases: u32) -> proptest::test_runner::Config {
        proptest::test_runner::Config {
            cases,
            failure_persistence: None,
            ..Default::default()
        }
    }

    proptest::proptest! {
        #![proptest_config(no_proptest_files(500))]

        #[test]
        fn a_header_arrives_exactly_or_is_left_out_and_counted(
            pairs in proptest::collection::vec((".{0,8}", "\\PC{0,8}|.{0,8}"), 0..6),
        ) {
            let mut message = Message::default();
            for (name, value) in &pairs {
                message.headers.append(name.clone(), value.clone());
            }
            let (arrived, skipped) = through_the_wire(&message, "_baker/s/i/t");
            let kept: Vec<_> = message
                .headers
                .iter()
                .filter(|(n, v)| !n.contains('\0') && !v.contains('\0'))
                .collect();
            proptest::prop_assert_eq!(skipped, message.headers.len() - kept.len());
            proptest::prop_assert_eq!(arrived.headers.iter().collect::<Vec<_>>(), kept);
        }

        #[test]
        fn an_ingress_topic_keeps_its_levels(
            levels in proptest::collection::vec("[^/+#\\x00]{0,6}", 0..5),
            any_topic in ".{0,20}",
        ) {
            let _ = destination("baker", &any_topic);
            let topic = if levels.is_empty() {
                "baker/orders".to_owned()
            } else {
                format!("baker/orders/{}", levels.join("/"))
            };
            let d = destination("baker", &topic).unwrap();
            proptest::prop_assert_eq!(&d.service, "orders");
            proptest::prop_assert_eq!(d.topic.levels().collect::<Vec<_>>(), levels.iter().map(String::as_str).collect::<Vec<_>>());
            // Through an MQTT egress, the same levels under the inbox.
            let inbox = d.topic.under("_baker/orders/o1", '/').unwrap();
            proptest::prop_assert_eq!(
                inbox.strip_prefix("_baker/orders/o1").unwrap(),
                topic.strip_prefix("baker/orders").unwrap()
            );
        }
    }

    #[test]
    fn topics_split_into_service_and_levels() {
        let d = destination("baker", "baker/orders/v1.2/created").unwrap();
        assert_eq!(d.service, "orders");
        assert_eq!(d.topic.levels().collect::<Vec<_>>(), ["v1.2", "created"]);
        let d = destination("baker", "baker/orders").unwrap();
        assert!(d.topic.is_empty());
        assert_eq!(destination("baker", "baker/"), None);
        assert_eq!(destination("baker", "baker//x"), None);
        assert_eq!(destination("baker", "bakery/x"), None);
    }

    #[test]
    fn properties_survive_an_mqtt_round_trip_binary_correlation_included() {
        let properties = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(30),
            response_topic: Some("replies/me".into()),
            correlation_data: Some(Bytes::from_static(&[0xff, 0x00, 0x01])),
            user_properties: vec![("trace".into(), "abc".into())],
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let publish = Arc::new(Publish::new(
            "baker/s/t",
            QoS::AtLeastOnce,
            "x",
            Some(properties.clone()),
        ));
        let mut message = from_mqtt(&publish);
        assert_eq!(message.headers.get("trace"), Some("abc"));
        assert_eq!(message.reply_to.as_deref(), Some("replies/me"));
        assert_eq!(message.properties.correlation_id, None, "not UTF-8");
        assert_eq!(
            message.properties.correlation_data, properties.correlation_data,
            "kept as bytes"
        );
        message.headers.insert("baker-attempt", "1");
        let (sent, skipped) = to_mqtt(&message);
        assert_eq!(skipped, 0);
        assert_eq!(sent.correlation_data, properties.correlation_data);
        assert_eq!(sent.response_topic, properties.response_topic);
        assert_eq!(sent.content_type, properties.content_type);
        assert_eq!(sent.payload_format_indicator, Some(1));
        assert_eq!(sent.message_expiry_interval, Some(30));
        assert!(sent
            .user_properties
            .contains(&("baker-attempt".to_owned(), "1".to_owned())));
    }

    #[test]
    fn foreign_messages_map_correlation_id_and_expiry_and_skip_what_mqtt_cannot_carry() {
        let mut message = Message::default();
        message.properties.correlation_id = Some("c-1".into());
        message.properties.expiration_ms = Some(1500);
        message.reply_to = Some("_INBOX.+".into());
        message.headers.append("ok", "v");
        message.headers.append("bad", "a\0b");
        let (sent, skipped) = to_mqtt(&message);
        assert_eq!(sent.correlation_data, Some(Bytes::from_static(b"c-1")));
        assert_eq!(sent.message_expiry_interval, Some(2));
        assert_eq!(sent.response_topic, None, "a wildcard is no topic name");
        assert_eq!(skipped, 1);
    }

    #[test]
    fn dead_letters_carry_the_reason_and_attempts() {
        let publish = Publish::new("baker/s", QoS::AtLeastOnce, "x", None);
        let p = dead_lettered(&publish, "no route", 3);
        assert!(p
            .user_properties
            .contains(&("baker-error".to_owned(), "no route".to_owned())));
        assert!(p
            .user_properties
            .contains(&("baker-attempts".to_owned(), "3".to_owned())));
    }
}
