//! The router's reply topics on one broker: where instances on this broker
//! answer requests whose requester is on another broker or protocol, for
//! the router to forward.
//!
//! One clean-session connection per broker subscribes to
//! `_baker/reply/<router>/+` at QoS 0 (proxied replies are at most once) and
//! subscribes again on every reconnection.

use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::{Message, Reply, ReplyInbox};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::mpsc;

use crate::connect::Broker;
use crate::convert;
use crate::link::fastrand_u32;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Stamps a request with the reply topic `<prefix><token>`.
pub struct MqttReplyInbox {
    prefix: String,
}

impl ReplyInbox for MqttReplyInbox {
    fn stamp(&self, token: &str, message: &mut Message) {
        message.reply_to = Some(format!("{}{token}", self.prefix));
    }
}

/// Subscribes to the reply topics of `router_id` on `broker` and forwards
/// what arrives to `replies`, for as long as `replies` is open.
pub fn open(broker: Broker, router_id: &str, replies: mpsc::Sender<Reply>) -> MqttReplyInbox {
    let prefix = format!("_baker/reply/{router_id}/");
    let id = format!("baker-reply-{:x}-{:x}", std::process::id(), fastrand_u32());
    let mut options = broker.options(id);
    options.set_clean_start(true);
    let filter = format!("{prefix}+");
    let tokens_from = prefix.len();
    tokio::spawn(async move {
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let mut backoff = BACKOFF_START;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = BACKOFF_START;
                    broker.errors.connected();
                    // A clean session forgets subscriptions: make it again.
                    // try_: this task is the event loop the request waits on.
                    if let Err(error) = client.try_subscribe(filter.clone(), QoS::AtMostOnce) {
                        tracing::warn!(%error, "cannot subscribe to the MQTT reply topics");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let token = std::str::from_utf8(&publish.topic)
                        .ok()
                        .and_then(|t| t.get(tokens_from..))
                        .unwrap_or_default()
                        .to_owned();
                    let reply = Reply {
                        token,
                        message: convert::from_mqtt(&Arc::new(publish)),
                    };
                    if replies.send(reply).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    if replies.is_closed() {
                        return;
                    }
                    broker.errors.failed("replies", &error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    });
    MqttReplyInbox { prefix }
}
