//! Egress: publishes to an instance's inbox subject with the topic appended
//! (`_baker.<service>.<instance>.<topic>`), keeping the publisher's headers and
//! reply subject, so a request is answered by the instance directly. A
//! publish resolves once it is handed to the connection.

use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::Client;
use async_trait::async_trait;
use baker_adapter_api::{Cause, Destination, Message, SendError, Target};

use crate::convert::nats_headers;

/// Whether `subject` is a NATS subject of non-empty tokens without wildcards.
pub(crate) fn valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace))
}

/// A publish error as a send error: the message itself, or the connection.
pub(crate) fn publish_error(error: async_nats::client::PublishError) -> SendError {
    match error.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded
        | async_nats::client::PublishErrorKind::InvalidSubject => {
            SendError::rejected(Cause::new(error))
        }
        _ => SendError::unreachable(Cause::new(error)),
    }
}

/// An instance's inbox.
pub(crate) struct NatsTarget {
    pub(crate) client: Client,
    pub(crate) inbox: String,
    /// Whether a message with headers NATS cannot carry was reported.
    pub(crate) reported_skipped: AtomicBool,
}

#[async_trait]
impl Target for NatsTarget {
    async fn send(&self, destination: &Destination, message: &Message) -> Result<(), SendError> {
        let subject = if destination.topic.is_empty() {
            self.inbox.clone()
        } else {
            let mut s = String::with_capacity(self.inbox.len() + 1 + destination.topic.len());
            s.push_str(&self.inbox);
            s.push('.');
            s.push_str(&destination.topic);
            s
        };
        let (headers, skipped) = nats_headers(message);
        if skipped > 0 && !self.reported_skipped.swap(true, Ordering::Relaxed) {
            tracing::warn!(inbox = %self.inbox, skipped,
                "headers that NATS cannot carry were left out (reported once per instance)");
        }
        let payload = message.payload.clone();
        let result = match &message.reply_to {
            Some(reply) => {
                (self.client)
                    .publish_with_reply_and_headers(subject, reply.clone(), headers, payload)
                    .await
            }
            None => {
                (self.client)
                    .publish_with_headers(subject, headers, payload)
                    .await
            }
        };
        result.map_err(publish_error)
    }
}

/// Publishes `message` to `subject` with its headers, without a reply
/// subject: a reply, or what the demo and tests publish to an ingress.
pub(crate) async fn publish(
    client: &Client,
    subject: String,
    message: &Message,
) -> Result<(), SendError> {
    let (headers, _) = nats_headers(message);
    client
        .publish_with_headers(subject, headers, message.payload.clone())
        .await
        .map_err(publish_error)
}
