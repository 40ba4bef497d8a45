//! The ack handle: a finalizer that settles an ingress message exactly once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
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
        /// The failure's kind as an HTTP-like status ([`code`]), for the
        /// protocols whose error replies carry one.
        code: u16,
    },
    /// Not delivered, but another try may succeed: hand it back to the broker
    /// for redelivery where the protocol allows.
    Requeue {
        /// Why the delivery was handed back.
        reason: String,
    },
}

/// What is left of a settlement once [`Settle::settle`] returns: nothing
/// (an ack passed to the connection), or work to finish (a dead letter to
/// publish, a pause before a message is handed back). The router awaits it
/// inside its window of messages in flight, so a burst of failures holds no
/// more than the window, and a graceful stop finishes it.
#[must_use = "a settlement may have work left: await it, or detach it"]
pub struct Settling(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Settling {
    /// Nothing left to do.
    pub fn done() -> Self {
        Self(None)
    }

    /// `work` is left to do.
    pub fn later(work: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(Box::pin(work)))
    }

    /// Whether work is left.
    pub fn is_pending(&self) -> bool {
        self.0.is_some()
    }

    /// Lets the work finish on its own, for a settlement made where nothing
    /// can wait for it (an adapter's event loop): a task of its own, on the
    /// current runtime.
    pub fn detach(self) {
        if let Some(work) = self.0 {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(work);
            }
        }
    }
}

/// Awaiting a settlement with nothing left allocates nothing: the common
/// case, once per message.
impl Future for Settling {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(work) => work.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// The adapter side of an [`AckHandle`]: what settling means for one protocol.
pub trait Settle: Send + 'static {
    /// Settles the original message, returning what is left to finish
    /// (no task of its own: the caller awaits it). Called at most once.
    fn settle(self: Box<Self>, outcome: Settlement) -> Settling;

    /// How often a message held unsettled must tell the broker it is still
    /// being worked on, where the broker redelivers a message held too long
    /// (JetStream's ack wait); `None` where it does not.
    fn progress_interval(&self) -> Option<Duration> {
        None
    }

    /// Tells the broker the message is still being worked on.
    fn progress(&self) {}

    /// Whether a message no instance's broker could take is routed again by
    /// the router itself, after a pause: an at-least-once ingress whose
    /// broker has no hand-back (MQTT). Otherwise it is settled as
    /// [`Settlement::Requeue`]: handed back to a broker that redelivers it
    /// (AMQP, JetStream), or, at most once, answered or dropped.
    fn routes_again(&self) -> bool {
        false
    }
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
    pub fn settle(mut self, outcome: Settlement) -> Settling {
        match self.settle.take() {
            Some(settle) => settle.settle(outcome),
            None => Settling::done(),
        }
    }

    /// See [`Settle::progress_interval`].
    pub fn progress_interval(&self) -> Option<Duration> {
        self.settle.as_ref().and_then(|s| s.progress_interval())
    }

    /// See [`Settle::routes_again`].
    pub fn routes_again(&self) -> bool {
        self.settle.as_ref().is_some_and(|s| s.routes_again())
    }

    /// See [`Settle::progress`].
    pub fn progress(&self) {
        if let Some(settle) = &self.settle {
            settle.progress();
        }
    }

    /// The message is safe at its destination.
    pub fn ack(self) -> Settling {
        self.settle(Settlement::Delivered)
    }

    /// The message cannot be delivered after `attempts` tries; `reason`
    /// says why, `code` ([`code`]) what kind of failure it is.
    pub fn dead_letter(self, reason: impl Into<String>, attempts: u32, code: u16) -> Settling {
        self.settle(Settlement::DeadLetter {
            reason: reason.into(),
            attempts,
            code,
        })
    }
}

/// The kinds of undeliverable message as HTTP-like statuses: what Baker
/// answers a requester with where the protocol's error replies carry a code
/// (the NATS Services API's `Nats-Service-Error-Code`).
pub mod code {
    /// The message cannot be read (malformed headers, no service in its
    /// address) or its instance's broker refused it.
    pub const BAD_MESSAGE: u16 = 400;
    /// No routable instance of the service (or of the version it names).
    pub const NO_ROUTE: u16 = 404;
    /// The payload is larger than `max_payload`.
    pub const TOO_LARGE: u16 = 413;
    /// Every attempt failed; another try later may succeed.
    pub const UNAVAILABLE: u16 = 503;
    /// The message went through more Bakers than a route needs.
    pub const LOOP: u16 = 508;
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            // Nothing can wait here: the rest goes on by itself.
            settle
                .settle(Settlement::Requeue {
                    reason: "dropped without settlement".to_owned(),
                })
                .detach();
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
        fn settle(self: Box<Self>, outcome: Settlement) -> Settling {
            self.0.lock().unwrap().push(outcome);
            Settling::done()
        }
    }

    #[test]
    fn settles_exactly_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        AckHandle::new(Record(seen.clone())).ack().detach();
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
