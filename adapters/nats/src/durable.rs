//! Durable inboxes (`?inbox=jetstream`): an instance's inbox kept by a
//! stream of its own, sent to with the stream's publish ack.

use async_nats::jetstream::stream::Config as StreamConfig;
use async_nats::jetstream::{self, Context};
use async_trait::async_trait;
use baker_adapter_api::{header, AdapterError, Cause, Destination};

use crate::convert::nats_headers;
use crate::settings::{stream_name, StreamSettings};

/// The stream that keeps a durable inbox.
pub fn inbox_stream(inbox: &str) -> String {
    format!("BAKER_INBOX_{}", stream_name(inbox))
}

/// Creates (if absent) the stream keeping `inbox` and its topics.
pub async fn create_inbox_stream(
    client: async_nats::Client,
    url: &str,
    inbox: &str,
) -> Result<(), AdapterError> {
    let settings = StreamSettings::from_url(url).map_err(|e| e.for_url(url))?;
    jetstream::new(client)
        .get_or_create_stream(settings.apply(StreamConfig {
            name: inbox_stream(inbox),
            subjects: vec![inbox.to_owned(), format!("{inbox}.>")],
            ..Default::default()
        }))
        .await
        .map(drop)
        .map_err(|e| AdapterError::Broker {
            url: baker_adapter_api::redact_url(url),
            reason: format!("creating the inbox stream of {inbox}: {e}"),
        })
}

/// Sends to a durable inbox: resolves on the inbox stream's publish ack,
/// with `Nats-Msg-Id` (the publisher's own, else Baker's `baker-msg-id`) so
/// that the stream drops a redelivered copy within its duplicate window.
pub struct DurableTarget {
    js: Context,
    inbox: String,
}

impl DurableTarget {
    pub fn new(client: async_nats::Client, inbox: &str) -> Self {
        Self {
            js: jetstream::new(client),
            inbox: inbox.to_owned(),
        }
    }
}

#[async_trait]
impl baker_adapter_api::Target for DurableTarget {
    async fn send(
        &self,
        destination: &Destination,
        message: &baker_adapter_api::Message,
    ) -> Result<(), baker_adapter_api::SendError> {
        use baker_adapter_api::SendError;
        let subject = crate::egress::publishable(&destination.topic, &self.inbox)?;
        let (mut headers, _) = nats_headers(message);
        // The stream drops a copy of an id it has seen within its duplicate
        // window. A publisher's own `Nats-Msg-Id` asked for that and is
        // kept; otherwise Baker's id, where Baker gave one (at-least-once
        // ingresses), never an id the publisher set for its own use.
        if message.headers.get("Nats-Msg-Id").is_none() {
            if let Some(id) = message.headers.get(header::MSG_ID) {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
            }
        }
        let ack = self
            .js
            .publish_with_headers(subject, headers, message.payload.clone())
            .await
            .map_err(|e| SendError::unreachable(Cause::new(e)))?;
        ack.await.map(drop).map_err(|error| {
            use async_nats::jetstream::context::PublishErrorKind;
            match error.kind() {
                // Also what a cluster answers while the stream's leader is
                // being elected again (a node lost): hand the message back
                // for a later try rather than dead-letter it.
                PublishErrorKind::StreamNotFound => SendError::unreachable(format!(
                    "no stream answers for the inbox {} (its agent creates it; in a cluster, \
                     its leader may be moving)",
                    self.inbox
                )),
                PublishErrorKind::MaxPayloadExceeded => SendError::rejected(Cause::new(error)),
                _ => SendError::unreachable(Cause::new(error)),
            }
        })
    }
}
