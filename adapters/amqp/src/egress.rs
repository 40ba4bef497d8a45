//! Publishing to an instance's inbox queue, resolved by the publisher
//! confirm.

use async_trait::async_trait;
use baker_adapter_api::{Cause, Destination, Message, SendError, Target};
use lapin::types::ShortString;

use crate::convert;
use crate::publisher::{Publish, Publisher};

/// Sends to one inbox queue.
pub struct AmqpTarget {
    publisher: Publisher,
    inbox: ShortString,
}

impl AmqpTarget {
    pub fn new(publisher: Publisher, inbox: &str) -> Self {
        Self {
            publisher,
            inbox: inbox.into(),
        }
    }
}

#[async_trait]
impl Target for AmqpTarget {
    async fn send(&self, destination: &Destination, message: &Message) -> Result<(), SendError> {
        self.publisher
            .publish(Publish {
                exchange: ShortString::from(""),
                routing_key: self.inbox.clone(),
                // A missing inbox queue comes back, and the core reroutes.
                mandatory: true,
                payload: message.payload.clone(),
                properties: convert::to_amqp(message, destination)
                    .map_err(|e| SendError::rejected(Cause::new(e)))?,
            })
            .await
            .map_err(|error| match error {
                SendError::Unavailable(reason) => {
                    SendError::unavailable(format!("inbox queue {}: {reason}", self.inbox))
                }
                other => other,
            })
    }
}
