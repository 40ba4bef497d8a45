//! Publishing to an instance's inbox topic, resolved by the broker's PUBACK.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use baker_adapter_api::{Destination, Message, SendError, Target};

use crate::convert;
use crate::link::{Accepted, Link};

/// Sends to one inbox (`_baker/<service>/<instance>` by default), with the
/// message's topic levels appended.
pub struct MqttTarget {
    link: Arc<Link>,
    inbox: String,
    reported_skipped: AtomicBool,
}

impl MqttTarget {
    pub fn new(link: Arc<Link>, inbox: &str) -> Self {
        Self {
            link,
            inbox: inbox.to_owned(),
            reported_skipped: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Target for MqttTarget {
    async fn send(&self, destination: &Destination, message: &Message) -> Result<(), SendError> {
        let topic = convert::inbox_topic(&self.inbox, &destination.topic);
        let (properties, skipped) = convert::to_mqtt(message);
        if skipped > 0 && !self.reported_skipped.swap(true, Ordering::Relaxed) {
            tracing::warn!(inbox = %self.inbox, skipped,
                "headers that MQTT cannot carry (NUL characters) were left out (reported once per instance)");
        }
        match self
            .link
            .publish(topic, message.payload.clone(), properties)
            .await?
        {
            Accepted::Delivered => Ok(()),
            // The broker would discard it: nobody consumes this inbox now.
            Accepted::NoSubscribers => Err(SendError::Unavailable(format!(
                "no subscriber on inbox {} (the broker would discard the message)",
                self.inbox
            ))),
        }
    }
}
