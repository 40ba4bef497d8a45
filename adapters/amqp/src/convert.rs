//! Mapping between AMQP 0.9.1 properties and Baker's message fields.
//!
//! String-valued AMQP headers become Baker headers; typed ones (numbers,
//! tables, arrays) stay in the message's native properties, so an AMQP egress
//! keeps them exactly while other protocols get the string headers only.

use baker_adapter_api::cloudevents::{self, Exported};
use baker_adapter_api::{header, new_message_id, Destination, Headers, Message, Properties};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::AmqpError;

/// AMQP delivery mode of a persistent message.
const PERSISTENT: u8 = 2;
const TRANSIENT: u8 = 1;

/// Text of a header value that is a string, if it is one.
fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The prefix of a CloudEvents attribute's header in the AMQP binding
/// (1.0.3, written for AMQP 1.0's application properties, which are 0.9.1's
/// headers); the binding allows `cloudEvents:` too, and Baker reads both.
const CLOUDEVENTS_PREFIX: &str = "cloudEvents_";

/// The CloudEvents attribute an AMQP header carries, if it is one.
fn cloudevents_attribute(name: &str) -> Option<&str> {
    (name.strip_prefix(CLOUDEVENTS_PREFIX))
        .or_else(|| name.strip_prefix("cloudEvents:"))
        .filter(|a| cloudevents::is_attribute_name(a))
}

/// A CloudEvents attribute's value that is not a string, in its canonical
/// string form (booleans and integers; the binding allows AMQP's own types).
fn canonical(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::Boolean(b) => Some(b.to_string()),
        AMQPValue::ShortShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::ShortShortUInt(n) => Some(n.to_string()),
        AMQPValue::ShortUInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Baker's view of an AMQP message's properties.
pub fn from_amqp(properties: &BasicProperties) -> (Headers, Option<String>, Properties) {
    let mut headers = Headers::default();
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            let name = name.as_str();
            let text = as_text(value)
                .or_else(|| cloudevents_attribute(name).and_then(|_| canonical(value)));
            if let Some(text) = text {
                headers.append(name.to_owned(), text);
            }
        }
    }
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    let props = Properties {
        content_type: text(properties.content_type()),
        content_encoding: text(properties.content_encoding()),
        correlation_id: text(properties.correlation_id()),
        correlation_data: None,
        message_id: text(properties.message_id()),
        persistent: properties.delivery_mode().map(|m| m == PERSISTENT),
        expiration_ms: properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse().ok()),
        priority: *properties.priority(),
        timestamp: *properties.timestamp(),
    };
    // A binary-mode CloudEvent's attributes, as Baker carries them.
    cloudevents::import(
        &mut headers,
        props.content_type.as_deref(),
        cloudevents_attribute,
    );
    (headers, text(properties.reply_to()), props)
}

/// An AMQP short string (at most 255 bytes), or why `value` is not one.
fn short(what: &'static str, value: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(value).map_err(|_| AmqpError::TooLong {
        what,
        len: value.len(),
    })
}

/// AMQP properties for `message`, sent for `destination`: Baker's headers
/// and fields, with what only the ingress's own AMQP properties held (typed
/// headers, type, app id, cluster id; not the user id, see [`republished`])
/// when it was AMQP. One header
/// table is built per message; nothing of the ingress's is copied twice.
/// Fails when a value from another protocol cannot be carried (over 255
/// bytes where AMQP allows no more).
pub fn to_amqp(message: &Message, destination: &Destination) -> Result<BasicProperties, AmqpError> {
    let native = (message.native.as_ref()).and_then(|n| n.get::<BasicProperties>(crate::NAME));
    let mut table = FieldTable::default();
    let mut out = BasicProperties::default();
    if let Some(native) = native.as_deref() {
        // String headers are the message's own (which the core may have
        // changed); typed ones only the ingress had.
        if let Some(headers) = native.headers() {
            for (name, value) in headers.inner() {
                if as_text(value).is_none() {
                    table.insert(name.clone(), value.clone());
                }
            }
        }
        if let Some(v) = native.kind() {
            out = out.with_type(v.clone());
        }
        if let Some(v) = native.app_id() {
            out = out.with_app_id(v.clone());
        }
        if let Some(v) = native.cluster_id() {
            out = out.with_cluster_id(v.clone());
        }
    }
    let event = cloudevents::is_binary(&message.headers);
    for (name, value) in message.headers.iter() {
        let (name, value) = match cloudevents::exported(event, name, value) {
            Exported::Header(name, value) => (short("header name", name)?, value),
            Exported::Attribute(attribute, value) => (
                short("header name", &format!("{CLOUDEVENTS_PREFIX}{attribute}"))?,
                value,
            ),
            // Carried as the content type (below).
            Exported::ContentType => continue,
        };
        table.insert(
            name,
            AMQPValue::LongString(LongString::from(value.as_ref())),
        );
    }
    if !table.inner().contains_key(header::MSG_ID) {
        // The publisher task tells a message the broker returned by it.
        table.insert(
            header::MSG_ID.into(),
            AMQPValue::LongString(LongString::from(new_message_id())),
        );
    }
    if !destination.topic.is_empty() {
        let topic = destination.topic.joined('.')?;
        table.insert(
            header::TOPIC.into(),
            AMQPValue::LongString(LongString::from(topic.as_ref())),
        );
    }
    out = out.with_headers(table);
    let p = &message.properties;
    if let Some(v) = cloudevents::content_type(&message.headers, p.content_type.as_deref()) {
        out = out.with_content_type(short("content type", &v)?);
    }
    if let Some(v) = &p.content_encoding {
        out = out.with_content_encoding(short("content encoding", v)?);
    }
    if let Some(v) = &p.correlation_id {
        out = out.with_correlation_id(short("correlation id", v)?);
    }
    if let Some(v) = &p.message_id {
        out = out.with_message_id(short("message id", v)?);
    }
    // A protocol without a delivery mode (NATS, say) is published persistent:
    // the inbox is durable, and the cost is the broker's, not the sender's.
    out = out.with_delivery_mode(if p.persistent == Some(false) {
        TRANSIENT
    } else {
        PERSISTENT
    });
    if let Some(v) = p.expiration_ms {
        out = out.with_expiration(v.to_string().into());
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = &message.reply_to {
        out = out.with_reply_to(short("reply-to", v)?);
    }
    Ok(out)
}

/// `properties` with the dead-letter headers added.
/// Also sets `baker-msg-id` when the message has none: the publisher task
/// recognizes a returned message by it, and a dead letter with no queue to
/// take it must come back rather than count as safe.
pub fn dead_lettered(properties: &BasicProperties, reason: &str, attempts: u32) -> BasicProperties {
    let mut table: FieldTable = properties.headers().clone().unwrap_or_default();
    if !table.inner().contains_key(header::MSG_ID) {
        table.insert(
            header::MSG_ID.into(),
            AMQPValue::LongString(LongString::from(new_message_id())),
        );
    }
    table.insert(
        header::ERROR.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    table.insert(header::ATTEMPTS.into(), AMQPValue::LongUInt(attempts));
    republished(properties).with_headers(table)
}

/// `properties` for a message the router publishes again on its own
/// connection: all but the headers (set by the caller) and the user id,
/// which RabbitMQ checks against the publishing connection's user. Forwarded
/// by the router, a publisher's user id would be refused and close the
/// router's channel.
fn republished(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    macro_rules! copy {
        ($($get:ident => $set:ident),*) => {$(
            if let Some(v) = p.$get() {
                out = out.$set(v.clone());
            }
        )*};
    }
    copy!(
        content_type => with_content_type,
        content_encoding => with_content_encoding,
        delivery_mode => with_delivery_mode,
        priority => with_priority,
        correlation_id => with_correlation_id,
        reply_to => with_reply_to,
        expiration => with_expiration,
        message_id => with_message_id,
        timestamp => with_timestamp,
        kind => with_type,
        app_id => with_app_id,
        cluster_id => with_cluster_id
    );
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use baker_adapter_api::Topic;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 500,
            failure_persistence: None,
            ..Default::default()
        })]

        /// A header table is a map: each name once, any text as its value,
        /// a name of at most 255 bytes. What fits arrives exactly; what
        /// does not is refused with the reason, never cut.
        #[test]
        fn headers_arrive_exactly_or_are_refused(
            headers in proptest::collection::btree_map(".{1,8}|.{250,260}", ".{0,12}", 0..5),
        ) {
            let mut message = Message::default();
            for (name, value) in &headers {
                message.headers.append(name.clone(), value.clone());
            }
            let destination = Destination {
                service: "s".into(),
                topic: Topic::default(),
            };
            match to_amqp(&message, &destination) {
                Ok(properties) => {
                    let (arrived, _, _) = from_amqp(&properties);
                    for (name, value) in &headers {
                        let got = arrived.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                        proptest::prop_assert_eq!(got, Some(value.as_str()));
                    }
                }
                Err(error) => {
                    proptest::prop_assert!(headers.keys().any(|n| n.len() > 255), "{error}");
                }
            }
        }
    }

    #[test]
    fn amqp_properties_survive_a_round_trip_with_typed_headers() {
        let mut table = FieldTable::default();
        table.insert("trace".into(), AMQPValue::LongString("abc".into()));
        table.insert("count".into(), AMQPValue::LongInt(7));
        table.insert(header::ATTEMPT.into(), AMQPValue::LongString("3".into()));
        let original = BasicProperties::default()
            .with_headers(table)
            .with_app_id("billing".into())
            .with_type("invoice.created".into())
            .with_content_type("application/json".into())
            .with_correlation_id("c-1".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_delivery_mode(PERSISTENT)
            .with_priority(5)
            .with_timestamp(1_700_000_000)
            .with_expiration("60000".into());
        let (mut headers, reply_to, properties) = from_amqp(&original);
        assert_eq!(headers.get("trace"), Some("abc"));
        // What the core takes off stays off.
        assert!(headers.remove(header::ATTEMPT).is_some());
        assert_eq!(headers.get("count"), None, "typed headers stay native");
        let message = Message {
            headers,
            reply_to,
            properties,
            native: Some(baker_adapter_api::Native::new(
                crate::NAME,
                Arc::new(original.clone()),
            )),
            ..Default::default()
        };
        let destination = Destination {
            service: "s".into(),
            topic: Topic::new("created", '.'),
        };
        let sent = to_amqp(&message, &destination).unwrap();
        let table = sent.headers().clone().unwrap();
        assert_eq!(table.inner().get("count"), Some(&AMQPValue::LongInt(7)));
        assert_eq!(
            table.inner().get("trace"),
            Some(&AMQPValue::LongString("abc".into()))
        );
        assert_eq!(table.inner().get(header::ATTEMPT), None);
        assert_eq!(sent.app_id(), original.app_id());
        assert_eq!(sent.kind(), original.kind());
        let dead = dead_lettered(&original.clone().with_user_id("alice".into()), "why", 3);
        assert_eq!(dead.user_id(), &None, "the router cannot vouch for it");
        assert_eq!(dead.app_id(), original.app_id());
        assert_eq!(dead.expiration(), original.expiration());
        assert_eq!(dead.priority(), original.priority());
        assert_eq!(
            table.inner().get(header::TOPIC),
            Some(&AMQPValue::LongString("created".into()))
        );
        assert_eq!(sent.content_type(), original.content_type());
        assert_eq!(sent.correlation_id(), original.correlation_id());
        assert_eq!(sent.reply_to(), original.reply_to());
        assert_eq!(sent.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(sent.priority(), &Some(5));
        assert_eq!(sent.timestamp(), &Some(1_700_000_000));
        assert_eq!(sent.expiration(), original.expiration());
    }

    #[test]
    fn transient_stays_transient_and_foreign_messages_become_persistent() {
        let mut message = Message::default();
        let d = Destination {
            service: "s".into(),
            topic: Topic::default(),
        };
        assert_eq!(
            to_amqp(&message, &d).unwrap().delivery_mode(),
            &Some(PERSISTENT)
        );
        message.properties.persistent = Some(false);
        assert_eq!(
            to_amqp(&message, &d).unwrap().delivery_mode(),
            &Some(TRANSIENT)
        );
    }

    #[test]
    fn values_too_long_for_amqp_are_refused_not_panicked_on() {
        let mut message = Message::default();
        message.properties.correlation_id = Some("x".repeat(300));
        let d = Destination {
            service: "s".into(),
            topic: Topic::default(),
        };
        let error = to_amqp(&message, &d).unwrap_err();
        assert!(
            error.to_string().contains("correlation id of 300 bytes"),
            "{error}"
        );
        message.properties.correlation_id = None;
        message.headers.append("y".repeat(256), "v");
        assert!(to_amqp(&message, &d).is_err());
    }
}
