//! Publishing to an instance's inbox topic, resolved by the broker's PUBACK.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use baker_adapter_api::{Cause, Destination, Message, SendError, Target};

use crate::convert;
use crate::link::{Accepted, Link};

/// Sends to one inbox (`_baker/<service>/<instance>` by default), with the
/// message's topic levels appended.
pub struct MqttTarget {
    link: Arc<Link>,
    inbox: String,
    reported_skipped: AtomicBool,
    /// The instance consumes with MQTT 3.1.1; said once, at the first send.
    consumer_v311: AtomicBool,
}

impl MqttTarget {
    pub fn new(link: Arc<Link>, inbox: &str, consumer_v311: bool) -> Self {
        Self {
            link,
            inbox: inbox.to_owned(),
            reported_skipped: AtomicBool::new(false),
            consumer_v311: AtomicBool::new(consumer_v311),
        }
    }
}

#[async_trait]
impl Target for MqttTarget {
    async fn send(&self, destination: &Destination, message: &Message) -> Result<(), SendError> {
        if self.consumer_v311.load(Ordering::Relaxed)
            && self.consumer_v311.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(inbox = %self.inbox,
                "this instance consumes with MQTT 3.1.1: the broker hands it payload and topic only; headers (baker-* included), content type, response topic and correlation data are lost (reported once)");
        }
        let topic = (destination.topic)
            .under(&self.inbox, '/')
            .map_err(|e| SendError::rejected(Cause::new(e)))?;
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
            Accepted::NoSubscribers => Err(SendError::unavailable(format!(
                "no subscriber on inbox {} (the broker would discard the message)",
                self.inbox
            ))),
        }
    }
}
