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
use tokio::sync::{mpsc, oneshot};

/// How one delivery is to be settled toward the broker.
pub struct Verdict {
    pub tag: u64,
    pub acker: Acker,
    /// Hand it back for redelivery instead of acknowledging it.
    pub requeue: bool,
}

enum Command {
    Settle(Verdict),
    /// Reply once every verdict sent before has gone to the broker.
    Flush(oneshot::Sender<()>),
}

/// Sends verdicts to a channel's ack task. Unbounded, but never holds more
/// than the channel's prefetch: each delivery is settled once.
#[derive(Clone)]
pub struct Acks(mpsc::UnboundedSender<Command>);

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
        let _ = self.0.send(Command::Settle(verdict));
    }

    /// Waits until every verdict settled so far has been sent to the broker
    /// (as far as their tags form a contiguous run).
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.0.send(Command::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

async fn run(mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut next_tag = 1u64;
    let mut waiting: BTreeMap<u64, Verdict> = BTreeMap::new();
    while let Some(first) = commands.recv().await {
        let mut flushes = Vec::new();
        let mut take = |command| match command {
            Command::Settle(verdict) => {
                waiting.insert(verdict.tag, verdict);
            }
            Command::Flush(done) => flushes.push(done),
        };
        take(first);
        while let Ok(more) = commands.try_recv() {
            take(more);
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
        for done in flushes {
            let _ = done.send(());
        }
    }
}
