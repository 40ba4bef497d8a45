//! An instance's side of its inbox queue, for demos and tools: consumes
//! with acknowledgements, reconnecting when the connection is lost.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baker_adapter_api::{InboxConsumer, Message};
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use tokio::sync::{mpsc, watch};

use crate::convert;
use crate::link::Link;

/// Messages taken from the queue ahead of `next`.
const PREFETCH: u16 = 64;

pub struct AmqpInboxConsumer {
    messages: mpsc::Receiver<Message>,
    closing: watch::Sender<bool>,
}

#[async_trait]
impl InboxConsumer for AmqpInboxConsumer {
    async fn next(&mut self) -> Option<Message> {
        self.messages.recv().await
    }

    async fn close(&mut self) {
        self.closing.send_replace(true);
    }
}

/// Starts consuming `queue` on `link`'s broker. The queue may not exist yet
/// (its agent declares it before registering the instance): the consumer
/// waits for it.
pub fn consume(link: Arc<Link>, queue: String) -> AmqpInboxConsumer {
    let (sender, messages) = mpsc::channel(usize::from(PREFETCH));
    let (closing, mut closed) = watch::channel(false);
    tokio::spawn(async move {
        let tag = format!("baker-inbox-{:x}", std::process::id());
        while !*closed.borrow() {
            let channel = match link.open_channel().await {
                Ok(channel) => channel,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let setup = async {
                channel
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await?;
                channel
                    .basic_qos(PREFETCH, BasicQosOptions::default())
                    .await?;
                channel
                    .basic_consume(
                        queue.as_str().into(),
                        tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            };
            let mut consumer = match setup.await {
                Ok(consumer) => consumer,
                Err(_) => {
                    // Not declared yet, most likely: a failed passive
                    // declare closes the channel, so try on a new one.
                    let _ = channel.close(200, "retrying".into()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    _ = closed.changed() => {
                        // Stop taking new messages; the consumer stream
                        // yields what had arrived, then ends.
                        let _ = channel
                            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                            .await;
                    }
                    delivery = consumer.next() => {
                        let Some(Ok(delivery)) = delivery else { break };
                        let (headers, reply_to, properties) = convert::from_amqp(&delivery.properties);
                        let message = Message {
                            payload: Bytes::from(delivery.data.clone()),
                            headers,
                            reply_to,
                            properties,
                            native: None,
                        };
                        if sender.send(message).await.is_err() {
                            return;
                        }
                        let _ = delivery.ack(Default::default()).await;
                    }
                }
            }
            let _ = channel.close(200, "inbox consumer done".into()).await;
        }
    });
    AmqpInboxConsumer { messages, closing }
}
