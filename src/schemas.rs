//! JSON Schemas generated from the types, written to `schemas/` and checked
//! against it by a test so the two cannot drift.

use schemars::JsonSchema;
use serde::Serialize;

use crate::config::Options;
use crate::directory::InstanceRecord;

/// The `baker-*` headers Baker sets on or reads from routed messages. Every
/// header value is a string.
#[derive(Serialize, JsonSchema)]
#[allow(dead_code)]
pub struct BakerHeaders {
    /// Unique id of the message, set by the first router that sees it when the
    /// publisher did not; kept across retries and hops.
    #[serde(rename = "baker-msg-id")]
    msg_id: String,
    /// Delivery attempt: "1" for the first, "2" for the first retry, and so on.
    #[serde(rename = "baker-attempt")]
    attempt: String,
    /// The ingress address the publisher sent to, e.g. `baker.orders.get`.
    #[serde(rename = "baker-origin")]
    origin: String,
    /// Set by the publisher: the key the `consistent_hash` policy hashes.
    #[serde(rename = "baker-key", skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// Set by the publisher, for a service routed by version: the message goes
    /// only to instances of this version.
    #[serde(rename = "baker-version", skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// On an error reply or a dead-lettered message: why it was not delivered.
    #[serde(rename = "baker-error", skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// On a dead-lettered message: how many delivery attempts were made (an
    /// AMQP integer header; an MQTT user property, as text).
    #[serde(rename = "baker-attempts", skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
    /// On a message in an inbox whose address cannot carry the topic (an AMQP
    /// queue): the topic the publisher addressed, e.g. `created`.
    #[serde(rename = "baker-topic", skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
}

/// Every schema, as (file name, pretty JSON text ending in a newline).
pub fn all() -> Vec<(&'static str, String)> {
    let render = |schema: schemars::Schema| {
        let mut text = serde_json::to_string_pretty(&schema).expect("schemas serialize");
        text.push('\n');
        text
    };
    vec![
        (
            "instance-record.schema.json",
            render(schemars::schema_for!(InstanceRecord)),
        ),
        ("config.schema.json", render(schemars::schema_for!(Options))),
        (
            "headers.schema.json",
            render(schemars::schema_for!(BakerHeaders)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    /// Fails when a type changed without `cargo run -- schemas` being run.
    #[test]
    fn schemas_match_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        for (name, generated) in super::all() {
            let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                on_disk == generated,
                "schemas/{name} is out of date with the Rust types; run `cargo run -- schemas` and commit the result"
            );
        }
    }
}
