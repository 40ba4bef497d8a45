//! JSON Schemas generated from the types, written to `schemas/` and checked
//! against it by a test so the two cannot drift.

use schemars::JsonSchema;
use serde::Serialize;

use crate::config::Options;
use crate::directory::InstanceRecord;

/// The `baker-*` headers Baker sets on or reads from routed messages. Every
/// header value is a string. Baker sets a header only where something reads
/// it: none of them is on every message.
#[derive(Serialize, JsonSchema)]
#[allow(dead_code)]
pub struct BakerHeaders {
    /// Baker's id of a message from an at-least-once ingress (JetStream,
    /// AMQP, MQTT QoS 1), kept across retries; on a JetStream ingress the same
    /// on every redelivery (`<stream>:<sequence>`). A value the publisher set
    /// is replaced (or, on an at-most-once ingress, removed): deduplicate on
    /// your own header, or ask a durable inbox to with `Nats-Msg-Id`.
    #[serde(rename = "baker-msg-id", skip_serializing_if = "Option::is_none")]
    msg_id: Option<String>,
    /// On a retry only: "2" for the first retry, "3" for the next, and so on.
    #[serde(rename = "baker-attempt", skip_serializing_if = "Option::is_none")]
    attempt: Option<String>,
    /// On a message to a service with an inbox not under `_` (possibly
    /// another Baker's ingress): how many Bakers have routed it; at 8 a
    /// router refuses it as a loop.
    #[serde(rename = "baker-hops", skip_serializing_if = "Option::is_none")]
    hops: Option<String>,
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
    /// On a shadow copy only: "true". The message is a copy of one delivered
    /// to another instance, sent to an instance of the version a shadow rule
    /// tries; it carries no reply address. A publisher's own value is
    /// removed.
    #[serde(rename = "baker-shadow", skip_serializing_if = "Option::is_none")]
    shadow: Option<String>,
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
            "watch-changes.schema.json",
            render(schemars::schema_for!(baker_directory_api::Changes)),
        ),
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
