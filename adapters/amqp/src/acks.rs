//! Acknowledging one consumer channel's deliveries in contiguous runs.
//!
//! Deliveries on a channel carry delivery tags 1, 2, 3... Settlements arrive
//! in any order; this task keeps them until every tag below is settled too,
//! then acks the whole run with one `multiple` ack (nacks stay one per
//! message). Fewer frames, and fewer wake-ups of lapin's I/O thread, than
//! one ack per message. A run is held back only by a delivery still being
//! routed, whose time is bounded by the router's retries.

use std::collections::BTreeMap;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Acker;
use tokio::sync::mpsc;

/// How one delivery is to be settled toward the broker.
pub struct Verdict {
    pub tag: u64,
    pub acker: Acker,
    /// Hand it back for redelivery instead of acknowledging it.
    pub requeue: bool,
}

/// Sends verdicts to a channel's ack task. Unbounded, but never holds more
/// than the channel's prefetch: each delivery is settled once.
#[derive(Clone)]
pub struct Acks(mpsc::UnboundedSender<Verdict>);

impl Acks {
    /// Starts the ack task of a fresh channel (first delivery tag 1).
    pub fn start() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(receiver));
        Self(sender)
    }

    /// Queues a verdict. If the task is gone the channel is too, and the
    /// broker redelivers the message.
    pub fn settle(&self, verdict: Verdict) {
        let _ = self.0.send(verdict);
    }
}

async fn run(mut verdicts: mpsc::UnboundedReceiver<Verdict>) {
    let mut next_tag = 1u64;
    let mut waiting: BTreeMap<u64, Verdict> = BTreeMap::new();
    while let Some(first) = verdicts.recv().await {
        waiting.insert(first.tag, first);
        while let Ok(more) = verdicts.try_recv() {
            waiting.insert(more.tag, more);
        }
        let mut last_ack: Option<Acker> = None;
        while let Some(verdict) = waiting.remove(&next_tag) {
            next_tag += 1;
            if verdict.requeue {
                let nack = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                if let Err(error) = verdict.acker.nack(nack).await {
                    tracing::debug!(%error, "could not requeue an AMQP delivery");
                }
            } else {
                last_ack = Some(verdict.acker);
            }
        }
        if let Some(acker) = last_ack {
            let ack = BasicAckOptions { multiple: true };
            if let Err(error) = acker.ack(ack).await {
                // The channel is gone; the broker redelivers what it held.
                tracing::debug!(%error, "could not acknowledge AMQP deliveries");
                return;
            }
        }
    }
}
