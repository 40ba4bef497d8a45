//! The router's reply queue on one broker: where instances on this broker
//! answer requests whose requester is on another broker or protocol, for the
//! router to forward.

use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::{Message, Native, Reply, ReplyInbox};
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
use tokio::sync::mpsc;

use crate::convert;
use crate::link::Link;
use crate::AmqpError;

/// How long the reply queue outlives its last consumer (`x-expires`): a
/// router that reconnects within it finds the replies that came meanwhile,
/// and a router that is gone leaves nothing behind for long.
const QUEUE_EXPIRES_MS: u32 = 300_000;

/// Stamps requests with the reply queue, and the token as correlation id:
/// AMQP responders copy the correlation id into their reply, and the queue
/// name must stay a queue name (replies go through the default exchange).
pub struct AmqpReplyInbox {
    queue: String,
}

impl ReplyInbox for AmqpReplyInbox {
    fn stamp(&self, token: &str, message: &mut Message) {
        message.reply_to = Some(self.queue.clone());
        message.properties.correlation_id = Some(token.to_owned());
    }
}

/// Declares the reply queue `queue` on `link`'s broker and forwards what
/// arrives there to `replies`, reconnecting when the connection is lost.
pub async fn open(
    link: Arc<Link>,
    queue: String,
    replies: mpsc::Sender<Reply>,
) -> Result<AmqpReplyInbox, AmqpError> {
    let consumer = consume(&link, &queue).await?;
    tokio::spawn(forward(link, queue.clone(), consumer, replies));
    Ok(AmqpReplyInbox { queue })
}

async fn consume(link: &Link, queue: &str) -> Result<(Channel, Consumer), AmqpError> {
    let channel = link.open_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongUInt(QUEUE_EXPIRES_MS));
    let setup = async {
        channel
            .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
            .await?;
        channel
            .basic_consume(
                queue.into(),
                "baker-replies".into(),
                // Replies are at most once: the requester's side gives no
                // acknowledgement to wait for.
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    };
    match setup.await {
        Ok(consumer) => Ok((channel, consumer)),
        Err(error) => {
            link.reset();
            Err(AmqpError::Setup {
                role: "reply",
                queue: queue.to_owned(),
                source: error,
            })
        }
    }
}

async fn forward(
    link: Arc<Link>,
    queue: String,
    mut current: (Channel, Consumer),
    replies: mpsc::Sender<Reply>,
) {
    loop {
        while let Some(Ok(delivery)) = current.1.next().await {
            // A reply without the token is passed on all the same, for the
            // router to count as unmatched.
            let token = delivery
                .properties
                .correlation_id()
                .as_ref()
                .map_or_else(String::new, |t| t.as_str().to_owned());
            let (headers, reply_to, properties) = convert::from_amqp(&delivery.properties);
            let reply = Reply {
                token,
                message: Message {
                    payload: Bytes::from(delivery.data),
                    headers,
                    reply_to,
                    properties,
                    native: Some(Native::new(crate::NAME, Arc::new(delivery.properties))),
                },
            };
            if replies.send(reply).await.is_err() {
                return;
            }
        }
        tracing::warn!(%queue, "reply queue consumer lost; reconnecting");
        let mut retry = Duration::from_millis(200);
        current = loop {
            if replies.is_closed() {
                return;
            }
            tokio::time::sleep(retry).await;
            match consume(&link, &queue).await {
                Ok(consumer) => break consumer,
                Err(error) => {
                    tracing::debug!(%error, "reply queue not back yet");
                    retry = (retry * 2).min(Duration::from_secs(10));
                }
            }
        };
    }
}
