//! Core NATS ingress: a queue-group subscription to `<prefix>.>`, so routers
//! sharing a group split the messages. At most once: the ack handle only
//! matters for requests, which get an error reply when they cannot be
//! delivered.

use async_nats::{Client, HeaderMap, Subject};
use async_trait::async_trait;
use baker_adapter_api::{
    code, header, AckHandle, AdapterError, Delivery, Destination, Ingress, IngressOptions,
    IngressStatus, Settle, Settlement, Settling,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::convert::{malformed_headers, message_from_nats, report_malformed};
use crate::link::connection_status;
use crate::overlap;

/// How long the server may take to confirm the ingress subscription.
const SUBSCRIBE_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Subscribes to the ingress of `options` on `client`, once the server
/// confirms the subscription.
pub(crate) async fn subscribe(
    client: Client,
    broker: &str,
    options: &IngressOptions,
) -> Result<NatsIngress, AdapterError> {
    let refused = |reason: String| AdapterError::Broker {
        url: baker_adapter_api::redact_url(broker),
        reason,
    };
    if let Some(reason) = overlap::stream_over(&client, &options.prefix).await {
        return Err(refused(reason));
    }
    let presence = overlap::Presence::start(&client, &options.prefix)
        .await
        .map_err(|e| refused(format!("answering on the presence subject: {e}")))?;
    let subscriber = client
        .queue_subscribe(format!("{}.>", options.prefix), options.queue_group.clone())
        .await
        .map_err(|e| AdapterError::Broker {
            url: broker.to_owned(),
            reason: e.to_string(),
        })?;
    // The subscription counts once the server has it (the PONG of a
    // flush follows the SUB): until then the router is not ready, and
    // core NATS would give what is published meanwhile to nobody.
    match tokio::time::timeout(SUBSCRIBE_CONFIRM_TIMEOUT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            return Err(AdapterError::Broker {
                url: baker_adapter_api::redact_url(broker),
                reason: format!("subscription not confirmed: {error}"),
            })
        }
        Err(_) => {
            return Err(AdapterError::Broker {
                url: baker_adapter_api::redact_url(broker),
                reason: "subscription not confirmed: the server did not answer".to_owned(),
            })
        }
    }
    Ok(NatsIngress {
        subscriber,
        client,
        prefix_len: options.prefix.len() + 1,
        presence: Some(presence),
        draining: false,
    })
}

pub(crate) struct NatsIngress {
    subscriber: async_nats::Subscriber,
    client: Client,
    prefix_len: usize,
    /// Answers JetStream routers asking whether core routers consume this
    /// prefix, and watches for a stream over it; gone once closing.
    presence: Option<overlap::Presence>,
    /// The subscription is being drained: no more `drain()`.
    draining: bool,
}

/// The NATS Services API's error headers (ADR-32), on Baker's error replies.
const SERVICE_ERROR: &str = "Nats-Service-Error";
const SERVICE_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// Answers a request that could not be delivered, so the requester learns why
/// instead of waiting for its timeout.
struct ErrorReply {
    client: Client,
    reply: Subject,
}

impl Settle for ErrorReply {
    fn settle(self: Box<Self>, outcome: Settlement) -> Settling {
        let (reason, status) = match outcome {
            Settlement::Delivered => return Settling::done(),
            Settlement::DeadLetter { reason, code, .. } => (reason, code),
            // Core NATS cannot hand a message back: it is lost, for now.
            Settlement::Requeue { reason } => (reason, code::UNAVAILABLE),
        };
        let mut headers = HeaderMap::new();
        // A header value may not hold line breaks; reasons can quote names
        // that came from elsewhere.
        let reason = reason.replace(['\r', '\n'], " ");
        headers.insert(header::ERROR, reason.as_str());
        // As a NATS Services API endpoint answers an error (ADR-32).
        headers.insert(SERVICE_ERROR, reason.as_str());
        headers.insert(SERVICE_ERROR_CODE, status.to_string().as_str());
        Settling::later(async move {
            if let Err(error) = self
                .client
                .publish_with_headers(self.reply, headers, Bytes::new())
                .await
            {
                tracing::debug!(%error, "could not send error reply");
            }
        })
    }
}

impl NatsIngress {
    fn delivery(&self, msg: async_nats::Message) -> Option<Delivery> {
        if let Some(reason) = malformed_headers(&msg) {
            // At most once: counted and dropped; a requester learns why.
            report_malformed(reason, "dropped");
            if let Some(reply) = msg.reply.clone() {
                // Hands the publish to the connection (bounded), as the
                // router's own error replies do.
                AckHandle::new(ErrorReply {
                    client: self.client.clone(),
                    reply,
                })
                .dead_letter(reason, 0, code::BAD_MESSAGE)
                .detach();
            }
            return None;
        }
        let rest = msg.subject.get(self.prefix_len..)?;
        let destination = Destination::from_address(rest, '.');
        let ack = match &msg.reply {
            Some(reply) => AckHandle::new(ErrorReply {
                client: self.client.clone(),
                reply: reply.clone(),
            }),
            None => AckHandle::noop(),
        };
        // At most once: Baker stamps no id, and a publisher's is not kept,
        // so that nothing downstream takes it for a dedupe key.
        let mut message = message_from_nats(msg);
        message.headers.remove(header::MSG_ID);
        Some(Delivery {
            message,
            destination,
            ack,
        })
    }
}

#[async_trait]
impl Ingress for NatsIngress {
    fn status(&self) -> IngressStatus {
        let overlap = self.presence.as_ref().map(|p| p.overlap.clone());
        connection_status(&self.client)
            .with_problem(move || overlap.as_ref().and_then(|o| o.borrow().clone()))
    }

    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let overlap = async {
                match self.presence.as_mut() {
                    Some(presence) if !self.draining => {
                        let _ = presence.overlap.wait_for(Option::is_some).await;
                    }
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                msg = self.subscriber.next() => {
                    if let Some(delivery) = self.delivery(msg?) {
                        return Some(delivery);
                    }
                }
                () = overlap => {
                    // A stream took the prefix over: it has every message
                    // from now on. What was received is still routed; then
                    // the ingress ends.
                    self.draining = true;
                    if let Err(error) = self.subscriber.drain().await {
                        tracing::warn!(%error, "could not drain the ingress subscription");
                    }
                }
            }
        }
    }

    fn try_next(&mut self) -> Option<Delivery> {
        loop {
            let msg = self.subscriber.next().now_or_never()??;
            if let Some(delivery) = self.delivery(msg) {
                return Some(delivery);
            }
        }
    }

    async fn close(&mut self) {
        self.presence = None;
        if std::mem::replace(&mut self.draining, true) {
            return;
        }
        // Drain: the server stops sending to this member of the queue group,
        // and the stream ends after the messages already on the wire.
        if let Err(error) = self.subscriber.drain().await {
            tracing::warn!(%error, "could not drain the ingress subscription");
        }
    }
}
