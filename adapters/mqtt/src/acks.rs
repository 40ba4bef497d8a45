//! The in-order acknowledgement window of one ingress connection.
//!
//! MQTT requires PUBACKs in the order the PUBLISHes arrived, but deliveries
//! settle in any order. The event loop records each QoS 1 arrival here, and
//! each settlement marks its place; a PUBACK leaves only once every earlier
//! arrival has settled too (a completed later message waits for earlier
//! ones). A window belongs to one connection: when that connection drops,
//! the broker redelivers what was unacknowledged, and late settlements of
//! the old connection fall into a closed channel.

use std::collections::VecDeque;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::mpsc;

enum AckMsg {
    /// A QoS 1 publish with this packet id arrived (next place in order).
    Arrived(u16),
    /// The publish at this place (0 for the connection's first) settled.
    Done(u64),
    /// Send what can be sent, then disconnect.
    Shutdown,
    /// Answer once every arrival so far has been acknowledged.
    WhenSettled(tokio::sync::oneshot::Sender<()>),
}

/// Sends to one connection's window. Unbounded, but never holds more than
/// two messages per unacknowledged publish, which the broker bounds by the
/// Receive Maximum.
#[derive(Clone)]
pub struct Acks(mpsc::UnboundedSender<AckMsg>);

impl Acks {
    /// Starts the window of a new connection whose acks go through `client`.
    pub fn start(client: AsyncClient) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(client, receiver));
        Self(sender)
    }

    /// Records the next QoS 1 arrival.
    pub fn arrived(&self, pkid: u16) {
        let _ = self.0.send(AckMsg::Arrived(pkid));
    }

    /// Marks the arrival at `place` settled.
    pub fn done(&self, place: u64) {
        let _ = self.0.send(AckMsg::Done(place));
    }

    /// Sends the acks that are due, then disconnects the client.
    pub fn shutdown(&self) {
        let _ = self.0.send(AckMsg::Shutdown);
    }

    /// True once every arrival recorded so far has been acknowledged; false
    /// if the connection is gone first.
    pub async fn settled(&self) -> bool {
        let (done, settled) = tokio::sync::oneshot::channel();
        self.0.send(AckMsg::WhenSettled(done)).is_ok() && settled.await.is_ok()
    }
}

fn puback_for(pkid: u16) -> Publish {
    let mut publish = Publish::new("", QoS::AtLeastOnce, Bytes::new(), None);
    publish.pkid = pkid;
    publish
}

async fn run(client: AsyncClient, mut messages: mpsc::UnboundedReceiver<AckMsg>) {
    // Place of the window's front, and (pkid, settled) from there on.
    let mut base = 0u64;
    let mut window: VecDeque<(u16, bool)> = VecDeque::new();
    let mut shutdown = false;
    let mut waiting: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
    while let Some(first) = messages.recv().await {
        let mut apply = |msg| match msg {
            AckMsg::Arrived(pkid) => window.push_back((pkid, false)),
            AckMsg::Done(place) => {
                if let Some(slot) = place
                    .checked_sub(base)
                    .and_then(|i| window.get_mut(i as usize))
                {
                    slot.1 = true;
                }
            }
            AckMsg::Shutdown => shutdown = true,
            AckMsg::WhenSettled(done) => waiting.push(done),
        };
        apply(first);
        while let Ok(more) = messages.try_recv() {
            apply(more);
        }
        while window.front().is_some_and(|(_, done)| *done) {
            let (pkid, _) = window.pop_front().expect("checked");
            base += 1;
            if client.ack(&puback_for(pkid)).await.is_err() {
                // The connection is gone; the broker redelivers the rest.
                return;
            }
        }
        if window.is_empty() {
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
        if shutdown {
            let _ = client.disconnect().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::PubAck;
    use rumqttc::v5::{MqttOptions, Request};

    #[tokio::test]
    async fn acks_leave_in_arrival_order_whatever_order_they_settle_in() {
        let (requests, received) = flume_pair();
        let acks = Acks::start(AsyncClient::from_senders(requests));
        for pkid in [7, 8, 9] {
            acks.arrived(pkid);
        }
        acks.done(2);
        acks.done(1);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            received.try_recv().is_err(),
            "nothing before the first settles"
        );
        acks.done(0);
        let mut order = Vec::new();
        for _ in 0..3 {
            match received.recv_async().await.unwrap() {
                Request::PubAck(PubAck { pkid, .. }) => order.push(pkid),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(order, vec![7, 8, 9]);
        let _ = MqttOptions::new("x", "h", 1);
    }

    fn flume_pair() -> (flume::Sender<Request>, flume::Receiver<Request>) {
        flume::unbounded()
    }
}
