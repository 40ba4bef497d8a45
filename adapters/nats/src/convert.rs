//! Conversion between NATS messages and Baker's: headers, and the message
//! properties NATS carries as headers.

use async_nats::header::HeaderName;
use async_nats::HeaderMap;
use baker_adapter_api::{header, Every, Headers, Message, Properties};
use bytes::Bytes;

/// Converts NATS headers to Baker's.
pub fn headers_from_nats(map: Option<&HeaderMap>) -> Headers {
    let Some(map) = map else {
        return Headers::default();
    };
    let mut headers = Headers::with_capacity(map.len() + 3);
    for (name, values) in map.iter() {
        for value in values {
            headers.append(
                AsRef::<str>::as_ref(name).to_owned(),
                value.as_str().to_owned(),
            );
        }
    }
    headers
}

/// Baker's own header names, made once: a custom NATS header name built from
/// a `&str` is an allocation, and these are on many messages.
static BAKER_HEADER_NAMES: [(&str, HeaderName); 5] = [
    (header::MSG_ID, HeaderName::from_static(header::MSG_ID)),
    (header::ATTEMPT, HeaderName::from_static(header::ATTEMPT)),
    (header::KEY, HeaderName::from_static(header::KEY)),
    (header::ERROR, HeaderName::from_static(header::ERROR)),
    (header::TOPIC, HeaderName::from_static(header::TOPIC)),
];

/// NATS headers that carry the common message properties, so that they
/// survive a hop between NATS and a protocol with native properties (AMQP).
const CONTENT_TYPE: &str = "content-type";
const CONTENT_ENCODING: &str = "content-encoding";
const CORRELATION_ID: &str = "correlation-id";
const MESSAGE_ID: &str = "message-id";

/// Moves the property headers out of `headers` into [`Properties`].
pub fn properties_from_headers(headers: &mut Headers) -> Properties {
    if headers.is_empty() {
        return Properties::default();
    }
    let mut take = |name| headers.remove(name).map(|v| v.into_owned());
    Properties {
        content_type: take(CONTENT_TYPE),
        content_encoding: take(CONTENT_ENCODING),
        correlation_id: take(CORRELATION_ID),
        message_id: take(MESSAGE_ID),
        ..Default::default()
    }
}

/// Adds the properties NATS can carry as headers. Persistence, expiration,
/// priority and timestamp have no NATS equivalent and are dropped.
fn properties_to_headers(properties: &Properties, headers: &mut HeaderMap) {
    for (name, value) in [
        (CONTENT_TYPE, &properties.content_type),
        (CONTENT_ENCODING, &properties.content_encoding),
        (CORRELATION_ID, &properties.correlation_id),
        (MESSAGE_ID, &properties.message_id),
    ] {
        if let Some(value) = value.as_deref().filter(|v| valid_header_value(v)) {
            headers.insert(name, value);
        }
    }
}

/// What NATS accepts as a header name: printable ASCII without ':'.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// What a NATS header value carries unchanged: no line breaks, and no
/// whitespace at either end (the client's parser trims it).
pub(crate) fn valid_header_value(value: &str) -> bool {
    !value.contains(['\r', '\n']) && value.trim() == value
}

/// Converts Baker's headers to NATS headers. Headers NATS cannot carry (from
/// another protocol's ingress) are left out and counted in the result.
pub fn headers_to_nats(headers: &Headers) -> (HeaderMap, usize) {
    let mut map = HeaderMap::new();
    let mut skipped = 0;
    for (name, value) in headers.iter() {
        if !valid_header_name(name) || !valid_header_value(value) {
            skipped += 1;
            continue;
        }
        match BAKER_HEADER_NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, known)) => map.append(known.clone(), value),
            None => map.append(name, value),
        }
    }
    (map, skipped)
}

/// Why a received message's header block could not be read, when it could
/// not: the client delivers such a message without headers (see
/// `vendor/README.md`) rather than dropping its connection.
pub(crate) fn malformed_headers(msg: &async_nats::Message) -> Option<&str> {
    match (&msg.status, &msg.description) {
        (None, Some(description))
            if description.starts_with(async_nats::connection::MALFORMED_HEADERS) =>
        {
            Some(description)
        }
        _ => None,
    }
}

/// Counts and (at most every 10 s) logs a message whose headers could not
/// be read; `fate` says what became of it.
pub(crate) fn report_malformed(reason: &str, fate: &str) {
    static LOGGED: Every = Every::new(std::time::Duration::from_secs(10));
    metrics::counter!("baker_nats_malformed_total").increment(1);
    if let Some(held_back) = LOGGED.check() {
        tracing::warn!(%reason, fate, held_back,
            "NATS ingress message with malformed headers cannot be routed; counted in baker_nats_malformed_total; logged at most every 10 s");
    }
}

/// Baker's form of a message received from NATS.
pub(crate) fn message_from_nats(msg: async_nats::Message) -> Message {
    message_from_parts(
        msg.headers.as_ref(),
        msg.reply.map(|r| r.to_string()),
        msg.payload,
    )
}

/// Baker's form of a NATS message given as its parts.
pub(crate) fn message_from_parts(
    headers: Option<&HeaderMap>,
    reply_to: Option<String>,
    payload: Bytes,
) -> Message {
    let mut headers = headers_from_nats(headers);
    let properties = properties_from_headers(&mut headers);
    Message {
        headers,
        reply_to,
        payload,
        properties,
        native: None,
    }
}

/// NATS headers for `message`: its headers and the properties NATS carries.
/// Returns how many headers NATS could not carry.
pub(crate) fn nats_headers(message: &Message) -> (HeaderMap, usize) {
    let (mut headers, skipped) = headers_to_nats(&message.headers);
    properties_to_headers(&message.properties, &mut headers);
    (headers, skipped)
}
