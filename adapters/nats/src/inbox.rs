//! An instance's side of an inbox (for the demo and tests), and a router's
//! reply inbox: the subjects `_baker.reply.<router>.<token>` where the replies
//! to requests it proxies arrive.

use async_nats::Client;
use async_trait::async_trait;
use baker_adapter_api::{AdapterError, InboxConsumer, Message, Reply, ReplyInbox};
use futures::StreamExt;

use crate::convert::message_from_nats;

/// Subscribes to `<inbox>.>`, confirmed by the server before it returns: the
/// subscription must be there before the instance is registered, or the
/// first messages routed to it go nowhere.
pub(crate) async fn consume(
    client: Client,
    broker: &str,
    inbox: &str,
) -> Result<NatsInboxConsumer, AdapterError> {
    let broker_error = |e: &dyn std::fmt::Display| AdapterError::Broker {
        url: baker_adapter_api::redact_url(broker),
        reason: e.to_string(),
    };
    let subscriber = client
        .subscribe(format!("{inbox}.>"))
        .await
        .map_err(|e| broker_error(&e))?;
    client.flush().await.map_err(|e| broker_error(&e))?;
    Ok(NatsInboxConsumer(subscriber))
}

/// An instance's subscription to its inbox subjects.
pub(crate) struct NatsInboxConsumer(async_nats::Subscriber);

#[async_trait]
impl InboxConsumer for NatsInboxConsumer {
    async fn next(&mut self) -> Option<Message> {
        self.0.next().await.map(message_from_nats)
    }

    async fn close(&mut self) {
        if let Err(error) = self.0.drain().await {
            tracing::debug!(%error, "could not drain an inbox subscription");
        }
    }
}

/// Subscribes to the reply subjects of `router_id` and forwards each reply
/// to `replies` until its receiver is gone.
pub(crate) async fn reply_inbox(
    client: Client,
    broker: &str,
    router_id: &str,
    replies: tokio::sync::mpsc::Sender<Reply>,
) -> Result<NatsReplyInbox, AdapterError> {
    let prefix = format!("_baker.reply.{router_id}.");
    let mut subscriber =
        client
            .subscribe(format!("{prefix}*"))
            .await
            .map_err(|e| AdapterError::Broker {
                url: baker_adapter_api::redact_url(broker),
                reason: e.to_string(),
            })?;
    let tokens_from = prefix.len();
    tokio::spawn(async move {
        while let Some(msg) = subscriber.next().await {
            let token = msg.subject[tokens_from..].to_owned();
            let reply = Reply {
                token,
                message: message_from_nats(msg),
            };
            if replies.send(reply).await.is_err() {
                return;
            }
        }
    });
    Ok(NatsReplyInbox { prefix })
}

/// A router's reply inbox on a NATS broker: the subjects
/// `_baker.reply.<router>.<token>`.
pub(crate) struct NatsReplyInbox {
    prefix: String,
}

impl ReplyInbox for NatsReplyInbox {
    fn stamp(&self, token: &str, message: &mut Message) {
        message.reply_to = Some(format!("{}{token}", self.prefix));
    }
}
