//! Egress: publishes to an instance's inbox subject with the topic appended
//! (`_baker.<service>.<instance>.<topic>`), keeping the publisher's headers and
//! reply subject, so a request is answered by the instance directly. A
//! publish resolves once it is handed to the connection.

use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::Client;
use async_trait::async_trait;
use baker_adapter_api::{Cause, Destination, Message, SendError, Target, Topic};
use futures::FutureExt;

use crate::convert::nats_headers;

/// Whether `subject` is a NATS subject of non-empty tokens without wildcards.
pub(crate) fn valid_subject(subject: &str) -> bool {
    // One pass over the bytes: this runs for every message sent.
    let mut token = 0usize;
    let mut wildcard = false;
    for &b in subject.as_bytes() {
        match b {
            b'.' => {
                if token == 0 || (token == 1 && wildcard) {
                    return false;
                }
                token = 0;
            }
            b'*' | b'>' => {
                wildcard = token == 0;
                token += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c => return false,
            _ if b >= 0x80 => return valid_unicode_subject(subject),
            _ => token += 1,
        }
        if token > 1 {
            wildcard = false;
        }
    }
    token != 0 && !(token == 1 && wildcard)
}

/// [`valid_subject`] for a subject with non-ASCII text, whose whitespace
/// may be Unicode's.
fn valid_unicode_subject(subject: &str) -> bool {
    subject
        .split('.')
        .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace))
}

/// The subject for `topic` under `inbox`, or why the message cannot be
/// published there: a level NATS cannot carry, an empty token or a wildcard
/// (`baker.orders.>` as a publisher's subject would go to the literal
/// `<inbox>.>`).
pub(crate) fn publishable(topic: &Topic, inbox: &str) -> Result<String, SendError> {
    let subject = topic
        .under(inbox, '.')
        .map_err(|e| SendError::rejected(Cause::new(e)))?;
    if !valid_subject(&subject) {
        return Err(SendError::rejected(format!(
            "{subject:?} is not a subject to publish to (an empty token, a wildcard or a space)"
        )));
    }
    Ok(subject)
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

/// How long a new target waits for its first connection before a send to
/// it fails: a broker met for the first time gets this long to answer.
const FIRST_CONNECT_GRACE: Duration = Duration::from_secs(5);

/// An instance's inbox.
pub(crate) struct NatsTarget {
    client: Client,
    inbox: String,
    /// The broker URL, password redacted, for errors.
    broker: String,
    created: Instant,
    /// Whether a message with headers NATS cannot carry was reported.
    reported_skipped: AtomicBool,
}

impl NatsTarget {
    pub(crate) fn new(client: Client, broker: &str, inbox: &str) -> Self {
        Self {
            client,
            inbox: inbox.to_owned(),
            broker: baker_adapter_api::redact_url(broker),
            created: Instant::now(),
            reported_skipped: AtomicBool::new(false),
        }
    }

    /// Whether the connection is up, giving a new target's first
    /// connection its grace. A publish on a connection that is down would
    /// only be buffered by the client: a broker that never answers would
    /// swallow the messages, so such a send fails instead, and the message
    /// goes to another instance (or back to an at-least-once ingress).
    async fn connected(&self) -> bool {
        loop {
            match self.client.connection_state() {
                State::Connected => return true,
                State::Pending if self.created.elapsed() < FIRST_CONNECT_GRACE => {
                    // Boxed: a rare wait, kept out of every send's future.
                    Box::pin(tokio::time::sleep(Duration::from_millis(20))).await;
                }
                _ => return false,
            }
        }
    }
}

impl NatsTarget {
    /// The subject and headers `message` is published with, or why it
    /// cannot be; reports once per instance the headers NATS cannot carry.
    fn outbound(
        &self,
        destination: &Destination,
        message: &Message,
    ) -> Result<(String, async_nats::HeaderMap), SendError> {
        if destination.topic.is_empty() {
            // Core NATS would take it and give it to nobody: an instance
            // subscribes to `<inbox>.>`, which needs a token after it.
            return Err(SendError::rejected(format!(
                "a message without a topic cannot reach the NATS inbox {} (its instance \
                 subscribes to {}.>): publish to <prefix>.<service>.<topic>",
                self.inbox, self.inbox
            )));
        }
        let subject = publishable(&destination.topic, &self.inbox)?;
        let (headers, skipped) = nats_headers(message);
        if skipped > 0 && !self.reported_skipped.swap(true, Ordering::Relaxed) {
            tracing::warn!(inbox = %self.inbox, skipped,
                "headers that NATS cannot carry were left out (reported once per instance)");
        }
        Ok((subject, headers))
    }

    /// Hands the publish to the connection.
    async fn publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        message: &Message,
    ) -> Result<(), SendError> {
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

#[async_trait]
impl Target for NatsTarget {
    async fn send(&self, destination: &Destination, message: &Message) -> Result<(), SendError> {
        let (subject, headers) = self.outbound(destination, message)?;
        if !self.connected().await {
            return Err(SendError::unreachable(format!(
                "not connected to {}",
                self.broker
            )));
        }
        self.publish(subject, headers, message).await
    }

    /// A publish only waits for room in the client's command channel: with
    /// room, and connected, it completes at its first poll. Dropping a
    /// publish that would wait leaves nothing sent (the channel's send is
    /// cancel-safe), and `send` then does it all again.
    fn try_send(&self, destination: &Destination, message: &Message) -> bool {
        if self.client.connection_state() != State::Connected {
            return false;
        }
        let Ok((subject, headers)) = self.outbound(destination, message) else {
            return false;
        };
        matches!(
            self.publish(subject, headers, message).now_or_never(),
            Some(Ok(()))
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_needs_non_empty_tokens_without_wildcards_or_spaces() {
        for good in ["a", "a.b", "_baker.s.i1.eu", "a*.b>", "*a.>b", "é.ü"] {
            assert!(valid_subject(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a.*",
            "*",
            ">",
            "a.>.b",
            "a b",
            "a.\tb",
            "a.b\u{a0}",
        ] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// The one-pass check says what splitting the subject into tokens
        /// says.
        #[test]
        fn the_fast_subject_check_agrees_with_the_plain_one(subject in "[a-c.*> \t\u{a0}é]{0,12}") {
            proptest::prop_assert_eq!(valid_subject(&subject), valid_unicode_subject(&subject));
        }
    }
}
