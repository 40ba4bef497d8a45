//! CloudEvents in binary content mode, carried across protocols.
//!
//! Inside Baker a binary-mode CloudEvent looks as the NATS binding (1.0.3)
//! writes it: each attribute a header named `ce-<attribute>` (including
//! `ce-datacontenttype`), its value percent-encoded. The NATS adapter
//! therefore passes them as they are; an adapter whose binding differs
//! translates at its edges with the functions here: [`import`] what
//! arrives in its binding (AMQP `cloudEvents_<attribute>` headers, MQTT 5
//! user properties named as the attributes, the content type as
//! `datacontenttype`), [`exported`] what leaves. A message is a binary-mode
//! CloudEvent when it carries the `specversion` attribute in its protocol's
//! binding; any other message (structured mode, whose content type is
//! `application/cloudevents…` and whose payload holds the event, included)
//! is not touched.

use std::borrow::Cow;

use crate::Headers;

/// Prefix of an attribute's header inside Baker (the NATS binding's).
pub const PREFIX: &str = "ce-";
/// The attribute that makes a message a CloudEvent.
pub const SPECVERSION: &str = "specversion";
/// The attribute a binding may carry as the protocol's content type.
pub const DATACONTENTTYPE: &str = "datacontenttype";

/// Whether `name` is a CloudEvents attribute name: lower-case letters and
/// digits (the specification asks for at most 20 of them; longer ones are
/// taken too).
pub fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `headers` (Baker's) hold a binary-mode CloudEvent.
pub fn is_binary(headers: &Headers) -> bool {
    headers.get("ce-specversion").is_some()
}

/// The attribute `name` (a Baker header) carries, if it is one.
pub fn attribute(name: &str) -> Option<&str> {
    let prefix = name.get(..PREFIX.len())?;
    (prefix.eq_ignore_ascii_case(PREFIX)).then(|| &name[PREFIX.len()..])
}

/// Turns the attributes of a binary-mode CloudEvent in a binding's form into
/// Baker's: each header for which `attribute_of` names an attribute becomes
/// `ce-<attribute>` with its value percent-encoded, and `content_type`
/// becomes `ce-datacontenttype`. Nothing changes unless the binding's
/// headers carry `specversion`.
pub fn import(
    headers: &mut Headers,
    content_type: Option<&str>,
    attribute_of: impl Fn(&str) -> Option<&str>,
) {
    let binary = headers
        .iter()
        .any(|(name, _)| attribute_of(name) == Some(SPECVERSION));
    if !binary {
        return;
    }
    let mut imported = Headers::default();
    for (name, value) in headers.iter() {
        match attribute_of(name) {
            Some(attribute) => {
                imported.append(format!("{PREFIX}{attribute}"), encode(value).into_owned())
            }
            None => imported.append(name.to_owned(), value.to_owned()),
        }
    }
    if let Some(content_type) = content_type {
        imported.insert(
            format!("{PREFIX}{DATACONTENTTYPE}"),
            encode(content_type).into_owned(),
        );
    }
    *headers = imported;
}

/// A Baker header as a binding carries it: for a binary-mode CloudEvent's
/// attribute, the attribute's name and its decoded value (`None` for
/// `datacontenttype`, which the binding carries as its content type: see
/// [`content_type`]); any other header as it is.
pub fn exported<'a>(binary: bool, name: &'a str, value: &'a str) -> Exported<'a> {
    match attribute(name).filter(|_| binary) {
        None => Exported::Header(name, Cow::Borrowed(value)),
        Some(attribute) if attribute.eq_ignore_ascii_case(DATACONTENTTYPE) => Exported::ContentType,
        Some(attribute) => Exported::Attribute(attribute, decode(value)),
    }
}

/// What [`exported`] made of one header.
#[derive(Debug, PartialEq, Eq)]
pub enum Exported<'a> {
    /// Not an attribute (or not a CloudEvent): the header as it was.
    Header(&'a str, Cow<'a, str>),
    /// An attribute: its name and value.
    Attribute(&'a str, Cow<'a, str>),
    /// `datacontenttype`, which goes in the content type.
    ContentType,
}

/// The content type a binding should carry for a binary-mode CloudEvent:
/// its `datacontenttype`, decoded, when the message has no content type of
/// its own.
pub fn content_type<'a>(headers: &'a Headers, own: Option<&'a str>) -> Option<Cow<'a, str>> {
    match own {
        Some(own) => Some(Cow::Borrowed(own)),
        None if is_binary(headers) => headers
            .get(&format!("{PREFIX}{DATACONTENTTYPE}"))
            .map(decode),
        None => None,
    }
}

/// Percent-encodes an attribute's value as the NATS binding does: space,
/// `"`, `%` and every character outside printable ASCII, byte by byte of
/// its UTF-8, upper-case hex.
pub fn encode(value: &str) -> Cow<'_, str> {
    let keep = |b: u8| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%';
    if value.bytes().all(keep) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// Decodes a header value of the NATS binding: a double-quoted string is
/// unquoted first (older versions of the binding wrote them), then one round
/// of percent-decoding. A value that does not decode to UTF-8 is kept as it
/// came.
pub fn decode(value: &str) -> Cow<'_, str> {
    let unquoted: Cow<'_, str> = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().unwrap_or('\\')
                } else {
                    c
                });
            }
            Cow::Owned(out)
        }
        None => Cow::Borrowed(value),
    };
    if !unquoted.contains('%') {
        return unquoted;
    }
    let bytes = unquoted.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(decoded) => Cow::Owned(decoded),
        Err(_) => Cow::Owned(unquoted.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_are_encoded_as_the_nats_binding_says() {
        assert_eq!(encode("1234-1234"), "1234-1234");
        assert_eq!(
            encode("Euro \u{20AC} \u{1F600}"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(encode("100% \"sure\""), "100%25%20%22sure%22");
        assert_eq!(decode("Euro%20%e2%82%ac"), "Euro \u{20AC}");
        assert_eq!(
            decode("\"quoted \\\"old\\\" style\""),
            "quoted \"old\" style"
        );
        assert_eq!(decode("%C0%A0"), "%C0%A0", "not UTF-8: kept as it came");
    }

    #[test]
    fn a_binding_that_is_not_a_cloudevent_is_not_imported() {
        let mut headers = Headers::default();
        headers.append("cloudEvents_id", "1");
        let before = headers.clone();
        import(&mut headers, Some("application/json"), |n| {
            n.strip_prefix("cloudEvents_")
        });
        assert_eq!(headers, before);
    }

    #[test]
    fn a_binary_event_is_imported_and_exported_back() {
        let mut headers = Headers::default();
        headers.append("cloudEvents_specversion", "1.0");
        headers.append("cloudEvents_source", "/orders/eu west");
        headers.append("x-other", "kept");
        import(&mut headers, Some("application/json"), |n| {
            n.strip_prefix("cloudEvents_")
        });
        assert_eq!(headers.get("ce-specversion"), Some("1.0"));
        assert_eq!(headers.get("ce-source"), Some("/orders/eu%20west"));
        assert_eq!(headers.get("ce-datacontenttype"), Some("application/json"));
        assert_eq!(headers.get("x-other"), Some("kept"));
        let binary = is_binary(&headers);
        let out: Vec<_> = headers
            .iter()
            .map(|(n, v)| exported(binary, n, v))
            .collect();
        assert!(out.contains(&Exported::Attribute(
            "source",
            Cow::Borrowed("/orders/eu west")
        )));
        assert!(out.contains(&Exported::ContentType));
        assert!(out.contains(&Exported::Header("x-other", Cow::Borrowed("kept"))));
        assert_eq!(
            content_type(&headers, None).as_deref(),
            Some("application/json")
        );
    }

    proptest! {
        #[test]
        fn any_value_survives_encoding(value in ".{0,40}") {
            let encoded = encode(&value);
            prop_assert!(encoded.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'));
            let decoded = decode(&encoded).into_owned();
            prop_assert_eq!(decoded, value.clone());
        }
    }
}
