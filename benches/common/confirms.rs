//! The window of publishes awaiting their confirm, the flow control of the
//! protocols whose broker confirms each publish (JetStream's acks, AMQP's
//! publisher confirms): at most `window` unconfirmed, each confirm counted
//! in the run's [`Published`]. A protocol's publisher maps its client's
//! confirm to a [`Confirm`]; the counting is the same for all.
//!
//! The window is first in, first out, and a confirm is polled only once it
//! is the oldest (brokers confirm in order): by then it has mostly come, so
//! it is polled once, and a confirm that registers a timer when it waits
//! (JetStream's) costs nothing while it is young.

use std::collections::VecDeque;
use std::future::Future;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::measure::Published;
use super::{READY_TIMEOUT, RUN_DEADLINE};

/// What the broker said about one publish.
pub enum Confirm {
    /// Kept: it must arrive.
    Kept,
    /// Kept but returned as unroutable (AMQP's mandatory publish).
    Returned,
    /// Refused.
    Nacked,
    /// The publish or its confirm failed: why.
    Failed(String),
}

/// Publishes awaiting their confirm.
pub struct Confirms {
    in_flight: VecDeque<BoxFuture<'static, Confirm>>,
    window: usize,
}

impl Confirms {
    pub fn new(window: usize) -> Confirms {
        Confirms {
            in_flight: VecDeque::new(),
            window: window.max(1),
        }
    }

    fn count(out: &mut Published, confirm: Confirm) {
        match confirm {
            Confirm::Kept => out.confirmed += 1,
            Confirm::Returned => out.returned += 1,
            Confirm::Nacked => out.nacked += 1,
            Confirm::Failed(e) => out.error(e),
        }
    }

    /// Waits until fewer than `window` publishes await their confirm;
    /// `false` (and the run stalled) when no confirm came for
    /// [`READY_TIMEOUT`].
    pub async fn room(&mut self, out: &mut Published) -> bool {
        while self.in_flight.len() >= self.window {
            let Some(oldest) = self.in_flight.front_mut() else {
                break;
            };
            match tokio::time::timeout(READY_TIMEOUT, oldest).await {
                Ok(confirm) => self.settle(confirm, out),
                Err(_) => {
                    out.stalled = true;
                    return false;
                }
            }
        }
        true
    }

    fn settle(&mut self, confirm: Confirm, out: &mut Published) {
        self.in_flight.pop_front();
        Self::count(out, confirm);
    }

    /// Adds a publish's confirm.
    pub fn push(&mut self, confirm: impl Future<Output = Confirm> + Send + 'static) {
        self.in_flight.push_back(confirm.boxed());
    }

    /// Adds a publish's confirm and polls it once now, where polling is what
    /// hands the publish to the connection (lapin); then counts the oldest
    /// confirms already in, without waiting.
    pub fn push_now(
        &mut self,
        confirm: impl Future<Output = Confirm> + Send + 'static,
        out: &mut Published,
    ) {
        let mut confirm = confirm.boxed();
        match (&mut confirm).now_or_never() {
            Some(confirm) => Self::count(out, confirm),
            None => self.in_flight.push_back(confirm),
        }
        while let Some(oldest) = self.in_flight.front_mut() {
            match oldest.now_or_never() {
                Some(confirm) => self.settle(confirm, out),
                None => break,
            }
        }
    }

    /// Waits for every confirm still due, at most [`RUN_DEADLINE`] (then
    /// the run stalled).
    pub async fn drain(&mut self, out: &mut Published) {
        let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
        while let Some(oldest) = self.in_flight.front_mut() {
            match tokio::time::timeout_at(deadline, oldest).await {
                Ok(confirm) => self.settle(confirm, out),
                Err(_) => {
                    out.stalled = true;
                    break;
                }
            }
        }
    }
}
