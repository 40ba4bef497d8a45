//! An instance's side of its inbox topics, for demos and tools: a
//! clean-session connection subscribed to `<inbox>/#` at QoS 1.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baker_adapter_api::{InboxConsumer, Message};

use crate::MqttError;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::{mpsc, oneshot};

use crate::connect::Broker;
use crate::convert;
use crate::link::fastrand_u32;

pub struct MqttInboxConsumer {
    messages: mpsc::Receiver<Message>,
    client: AsyncClient,
}

#[async_trait]
impl InboxConsumer for MqttInboxConsumer {
    async fn next(&mut self) -> Option<Message> {
        self.messages.recv().await
    }

    async fn close(&mut self) {
        let _ = self.client.disconnect().await;
    }
}

/// Connects to `broker` and subscribes to `<inbox>/#`; resolves once the
/// subscription is acknowledged, so nothing routed afterwards is missed.
pub async fn consume(broker: Broker, inbox: &str) -> Result<MqttInboxConsumer, MqttError> {
    let id = format!("baker-inbox-{:x}-{:x}", std::process::id(), fastrand_u32());
    let mut options = broker.options(id);
    options.set_clean_start(true);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (sender, messages) = mpsc::channel(64);
    let (subscribed, ready) = oneshot::channel();
    let filter = format!("{inbox}/#");
    let (subscriber, wanted) = (client.clone(), filter.clone());
    tokio::spawn(async move {
        let mut subscribed = Some(subscribed);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    broker.errors.connected();
                    if let Err(error) = subscriber.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::warn!(%error, "cannot subscribe to the inbox");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(subscribed) = subscribed.take() {
                        let _ = subscribed.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if sender
                        .send(convert::from_mqtt(&Arc::new(publish)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) if sender.is_closed() => return,
                Err(error) => {
                    broker.errors.failed("inbox", &error);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .map_err(|_| MqttError::SubscribeTimeout {
            filter: wanted.clone(),
            secs: 10,
        })?
        .map_err(|_| MqttError::Ended { filter: wanted })?;
    Ok(MqttInboxConsumer { messages, client })
}
