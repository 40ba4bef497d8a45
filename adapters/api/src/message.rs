//! A message as the core sees it, and the addresses it travels between.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// A header name or value: borrowed when it is a constant (Baker's own
/// names, small attempt numbers), so the common case allocates nothing.
pub type HeaderText = Cow<'static, str>;

/// An ordered list of header name/value pairs.
///
/// Kept as a small vector rather than a map: messages carry a handful of
/// headers, and a linear scan over them is cheaper than hashing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(HeaderText, HeaderText)>);

impl Headers {
    /// An empty header list with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// The first value of `name`, compared ASCII case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// Sets `name` to `value`, replacing every earlier value of it.
    pub fn insert(&mut self, name: impl Into<HeaderText>, value: impl Into<HeaderText>) {
        let name = name.into();
        let value = value.into();
        let mut matching = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| n.eq_ignore_ascii_case(&name))
            .map(|(i, _)| i);
        match (matching.next(), matching.next()) {
            (Some(first), None) => self.0[first].1 = value,
            (None, _) => self.0.push((name, value)),
            (Some(_), Some(_)) => {
                self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                self.0.push((name, value));
            }
        }
    }

    /// Removes every value of `name`; returns the first.
    pub fn remove(&mut self, name: &str) -> Option<HeaderText> {
        let index = self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))?;
        let (_, first) = self.0.remove(index);
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        Some(first)
    }

    /// Adds a value for `name`, keeping earlier ones.
    pub fn append(&mut self, name: impl Into<HeaderText>, value: impl Into<HeaderText>) {
        self.0.push((name.into(), value.into()));
    }

    /// Every name/value pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }

    /// Number of name/value pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the ingress adapter kept of a message that the common fields cannot
/// carry (typed AMQP headers, say), for an egress of the same adapter: the
/// one same-protocol fast path. It is tagged with the adapter that made it,
/// and only that adapter reads it back ([`Native::get`]); to every other
/// egress a message is its common fields, whatever its ingress.
#[derive(Clone)]
pub struct Native {
    adapter: &'static str,
    data: Arc<dyn Any + Send + Sync>,
}

impl Native {
    /// `data`, kept by the adapter called `adapter`.
    pub fn new<T: Any + Send + Sync>(adapter: &'static str, data: Arc<T>) -> Self {
        Self { adapter, data }
    }

    /// The data, when the adapter called `adapter` kept it as a `T`.
    pub fn get<T: Any + Send + Sync>(&self, adapter: &str) -> Option<Arc<T>> {
        if self.adapter != adapter {
            return None;
        }
        self.data.clone().downcast::<T>().ok()
    }

    /// The adapter that kept it.
    pub fn adapter(&self) -> &'static str {
        self.adapter
    }
}

/// A message travelling through Baker: opaque payload plus metadata.
#[derive(Clone, Default)]
pub struct Message {
    /// The payload, never inspected by Baker.
    pub payload: Bytes,
    /// Protocol headers (NATS headers, AMQP headers, MQTT 5 user properties).
    pub headers: Headers,
    /// Where the receiver should send its reply, if the publisher expects one.
    pub reply_to: Option<String>,
    /// Standard properties, kept across hops and mapped between protocols.
    pub properties: Properties,
    /// What the ingress adapter kept for an egress of its own (see
    /// [`Native`]).
    pub native: Option<Native>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("payload_len", &self.payload.len())
            .field("headers", &self.headers)
            .field("reply_to", &self.reply_to)
            .field("properties", &self.properties)
            .field("native", &self.native.as_ref().map(Native::adapter))
            .finish()
    }
}

/// Message properties most protocols have in some form. Each adapter maps
/// them to its native fields and back; what a protocol cannot carry is
/// dropped at its egress (and documented there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    /// MIME type of the payload.
    pub content_type: Option<String>,
    /// Encoding of the payload, e.g. `gzip`.
    pub content_encoding: Option<String>,
    /// Correlates a reply with its request.
    pub correlation_id: Option<String>,
    /// Correlation data that is not text (MQTT 5 allows any bytes), exactly
    /// as published; `correlation_id` is then `None`. Adapters whose
    /// correlation ids are text leave it out.
    pub correlation_data: Option<Bytes>,
    /// The publisher's own message id.
    pub message_id: Option<String>,
    /// Whether the broker should keep the message on disk (AMQP delivery
    /// mode 2). `None` when the ingress protocol has no such notion.
    pub persistent: Option<bool>,
    /// Time to live, in milliseconds.
    pub expiration_ms: Option<u64>,
    /// Priority, 0-255.
    pub priority: Option<u8>,
    /// Seconds since the Unix epoch, as set by the publisher.
    pub timestamp: Option<u64>,
}

/// The service a message is addressed to, and the topic within it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Service name, the first token after the ingress prefix.
    pub service: String,
    /// The rest of the address: the topic's levels (may be none).
    pub topic: Topic,
}

impl Destination {
    /// The destination of an address below the ingress prefix: the service
    /// up to the first `separator`, the topic after it (none without one).
    pub fn from_address(rest: &str, separator: char) -> Self {
        match rest.split_once(separator) {
            Some((service, topic)) => Self {
                service: service.to_owned(),
                topic: Topic::new(topic, separator),
            },
            None => Self {
                service: rest.to_owned(),
                topic: Topic::default(),
            },
        }
    }
}

/// A topic as its levels, kept as the ingress protocol wrote them (its text
/// and its level separator): a level holding another protocol's separator
/// (the MQTT level `v1.2`) is never split, and levels are never joined by
/// a separator that was not theirs. No topic (the default) differs from one
/// empty level (`baker/orders/` in MQTT).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topic {
    text: Option<String>,
    separator: char,
}

/// A topic level that another protocol cannot carry as one level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic level {level:?} holds {separator:?}, the level separator here: it would become two levels")]
pub struct TopicError {
    /// The level.
    pub level: String,
    /// The separator it holds.
    pub separator: char,
}

impl Topic {
    /// The topic written `text`, its levels split by `separator` (`""` is
    /// one empty level).
    pub fn new(text: impl Into<String>, separator: char) -> Self {
        Self {
            text: Some(text.into()),
            separator,
        }
    }

    /// True when there is no topic (not even an empty level).
    pub fn is_empty(&self) -> bool {
        self.text.is_none()
    }

    /// The topic as its ingress wrote it (`""` for none).
    pub fn as_str(&self) -> &str {
        self.text.as_deref().unwrap_or("")
    }

    /// Its levels, in order.
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.text.iter().flat_map(|text| text.split(self.separator))
    }

    /// The levels joined by `separator`, or the first level that holds
    /// `separator` (it cannot be carried as one level). Borrowed when the
    /// topic already uses `separator`.
    pub fn joined(&self, separator: char) -> Result<Cow<'_, str>, TopicError> {
        let Some(text) = &self.text else {
            return Ok(Cow::Borrowed(""));
        };
        if separator == self.separator {
            return Ok(Cow::Borrowed(text));
        }
        if let Some(level) = self.levels().find(|l| l.contains(separator)) {
            return Err(TopicError {
                level: level.to_owned(),
                separator,
            });
        }
        Ok(Cow::Owned(text.replace(
            self.separator,
            separator.encode_utf8(&mut [0; 4]),
        )))
    }

    /// `address`, then each level after `separator` (the address alone
    /// when there is no level); fails as [`Topic::joined`] does.
    pub fn under(&self, address: &str, separator: char) -> Result<String, TopicError> {
        let joined = self.joined(separator)?;
        let mut out = String::with_capacity(address.len() + 1 + joined.len());
        out.push_str(address);
        if !self.is_empty() {
            out.push(separator);
            out.push_str(&joined);
        }
        Ok(out)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an instance consumes its messages: which adapter, which broker, and
/// the inbox address on that broker.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Adapter name, e.g. `nats`.
    pub adapter: String,
    /// Broker URL, e.g. `nats://127.0.0.1:4222`.
    pub broker: String,
    /// Inbox address; the adapter appends the topic as its protocol allows.
    pub inbox: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_data_is_read_back_only_by_the_adapter_that_kept_it() {
        let native = Native::new("a", Arc::new(7u32));
        assert_eq!(native.get::<u32>("a").as_deref(), Some(&7));
        assert!(native.get::<u32>("b").is_none(), "another adapter");
        assert!(native.get::<u64>("a").is_none(), "another type");
    }

    #[test]
    fn a_topic_keeps_its_levels_across_separators() {
        let mqtt = Topic::new("v1.2/eu", '/');
        assert_eq!(mqtt.levels().collect::<Vec<_>>(), ["v1.2", "eu"]);
        assert_eq!(mqtt.joined('/').unwrap(), "v1.2/eu");
        let error = mqtt.joined('.').unwrap_err();
        assert_eq!(error.level, "v1.2");
        let nats = Topic::new("eu.created", '.');
        assert_eq!(nats.joined('/').unwrap(), "eu/created");
        assert_eq!(Topic::new("", '/').levels().collect::<Vec<_>>(), [""]);
        assert_eq!(Topic::new("", '/').under("i", '/').unwrap(), "i/");
        assert!(Topic::default().is_empty());
        assert_eq!(Topic::default().under("i", '/').unwrap(), "i");
        let d = Destination::from_address("orders", '.');
        assert!(d.topic.is_empty());
        let d = Destination::from_address("orders.", '.');
        assert_eq!(d.topic.levels().collect::<Vec<_>>(), [""]);
    }

    proptest::proptest! {
        /// Levels written with one separator come out as the same levels
        /// with another, unless a level holds that separator, which is then
        /// named; and back again unchanged.
        #[test]
        fn a_topic_survives_a_change_of_separator_or_says_which_level_cannot(
            levels in proptest::collection::vec("[a-z0-9._ -]{0,6}", 1..5),
        ) {
            let mqtt = Topic::new(levels.join("/"), '/');
            match mqtt.joined('.') {
                Ok(dotted) => {
                    proptest::prop_assert!(levels.iter().all(|l| !l.contains('.')));
                    let nats = Topic::new(dotted.into_owned(), '.');
                    proptest::prop_assert_eq!(nats.levels().count(), mqtt.levels().count());
                    proptest::prop_assert_eq!(nats.joined('/').unwrap(), mqtt.as_str());
                }
                Err(error) => {
                    proptest::prop_assert!(error.level.contains('.'));
                    proptest::prop_assert!(levels.contains(&error.level));
                }
            }
        }

        #[test]
        fn any_text_makes_a_topic_without_panicking(text in ".*", to in proptest::char::any()) {
            let d = Destination::from_address(&text, '.');
            let _ = d.topic.joined(to);
            let _ = d.topic.under("inbox", to);
            let rebuilt = d.topic.under(&d.service, '.').unwrap();
            proptest::prop_assert_eq!(rebuilt, text);
        }
    }

    #[test]
    fn insert_replaces_all_earlier_values_case_insensitively() {
        let mut headers = Headers::default();
        headers.append("Baker-Attempt", "1");
        headers.append("x", "y");
        headers.append("baker-attempt", "2");
        headers.insert("baker-attempt", "3");
        assert_eq!(headers.get("BAKER-ATTEMPT"), Some("3"));
        assert_eq!(headers.len(), 2);
        headers.insert("baker-attempt", "4");
        assert_eq!(headers.get("baker-attempt"), Some("4"));
        assert_eq!(headers.len(), 2);
    }
}
