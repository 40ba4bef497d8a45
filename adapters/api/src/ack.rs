//! The ack handle: a finalizer that settles an ingress message exactly once.

use std::fmt;
use std::time::Duration;

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Delivered and safe at the destination: acknowledge the original.
    Delivered,
    /// Undeliverable for good: move it to the dead-letter address with the
    /// reason (or, where the protocol has none, report it to the publisher).
    DeadLetter {
        /// Human-readable reason, sent in the `baker-error` header.
        reason: String,
        /// Delivery attempts made, sent in the `baker-attempts` header.
        attempts: u32,
    },
    /// Not delivered, but another try may succeed: hand it back to the broker
    /// for redelivery where the protocol allows.
    Requeue {
        /// Why the delivery was handed back.
        reason: String,
    },
}

/// The adapter side of an [`AckHandle`]: what settling means for one protocol.
pub trait Settle: Send + 'static {
    /// Settles the original message. Called at most once.
    fn settle(self: Box<Self>, outcome: Settlement);

    /// How often a message held unsettled must tell the broker it is still
    /// being worked on, where the broker redelivers a message held too long
    /// (JetStream's ack wait); `None` where it does not.
    fn progress_interval(&self) -> Option<Duration> {
        None
    }

    /// Tells the broker the message is still being worked on.
    fn progress(&self) {}
}

/// Settles one ingress message exactly once.
///
/// Dropping a handle without settling it counts as
/// [`Settlement::Requeue`], so a message that a bug forgets about is
/// redelivered rather than acknowledged.
#[must_use = "an ack handle must be settled; dropping it requeues the message"]
pub struct AckHandle {
    settle: Option<Box<dyn Settle>>,
}

impl AckHandle {
    /// A handle whose settlement does nothing (at-most-once ingress).
    pub fn noop() -> Self {
        Self { settle: None }
    }

    /// A handle backed by an adapter's settlement.
    pub fn new(settle: impl Settle) -> Self {
        Self {
            settle: Some(Box::new(settle)),
        }
    }

    /// Settles with `outcome`.
    pub fn settle(mut self, outcome: Settlement) {
        if let Some(settle) = self.settle.take() {
            settle.settle(outcome);
        }
    }

    /// See [`Settle::progress_interval`].
    pub fn progress_interval(&self) -> Option<Duration> {
        self.settle.as_ref().and_then(|s| s.progress_interval())
    }

    /// See [`Settle::progress`].
    pub fn progress(&self) {
        if let Some(settle) = &self.settle {
            settle.progress();
        }
    }

    /// The message is safe at its destination.
    pub fn ack(self) {
        self.settle(Settlement::Delivered);
    }

    /// The message cannot be delivered after `attempts` tries; `reason`
    /// says why.
    pub fn dead_letter(self, reason: impl Into<String>, attempts: u32) {
        self.settle(Settlement::DeadLetter {
            reason: reason.into(),
            attempts,
        });
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle.settle(Settlement::Requeue {
                reason: "dropped without settlement".to_owned(),
            });
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle")
            .field("pending", &self.settle.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Record(Arc<Mutex<Vec<Settlement>>>);

    impl Settle for Record {
        fn settle(self: Box<Self>, outcome: Settlement) {
            self.0.lock().unwrap().push(outcome);
        }
    }

    #[test]
    fn settles_exactly_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        AckHandle::new(Record(seen.clone())).ack();
        assert_eq!(*seen.lock().unwrap(), vec![Settlement::Delivered]);
    }

    #[test]
    fn dropped_handle_requeues() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        drop(AckHandle::new(Record(seen.clone())));
        assert!(matches!(
            seen.lock().unwrap().as_slice(),
            [Settlement::Requeue { .. }]
        ));
    }
}
