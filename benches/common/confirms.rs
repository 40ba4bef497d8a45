//! The window of publishes awaiting their confirm, the flow control of the
//! protocols whose broker confirms each publish (JetStream's acks, AMQP's
//! publisher confirms): at most `window` unconfirmed, each confirm counted
//! in the run's [`Published`] as it comes. A protocol's publisher maps its
//! client's confirm to a [`Confirm`]; the counting is the same for all.

use std::future::Future;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

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
    in_flight: FuturesUnordered<BoxFuture<'static, Confirm>>,
    window: usize,
}

impl Confirms {
    pub fn new(window: usize) -> Confirms {
        Confirms {
            in_flight: FuturesUnordered::new(),
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
            match tokio::time::timeout(READY_TIMEOUT, self.in_flight.next()).await {
                Ok(Some(confirm)) => Self::count(out, confirm),
                Ok(None) => break,
                Err(_) => {
                    out.stalled = true;
                    return false;
                }
            }
        }
        true
    }

    /// Adds a publish's confirm, then counts those already in without
    /// waiting (polling the new one also hands its publish to the
    /// connection at once).
    pub fn push(
        &mut self,
        confirm: impl Future<Output = Confirm> + Send + 'static,
        out: &mut Published,
    ) {
        self.in_flight.push(confirm.boxed());
        while let Some(Some(confirm)) = self.in_flight.next().now_or_never() {
            Self::count(out, confirm);
        }
    }

    /// Waits for every confirm still due, at most [`RUN_DEADLINE`] (then
    /// the run stalled).
    pub async fn drain(&mut self, out: &mut Published) {
        let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.in_flight.next()).await {
                Ok(Some(confirm)) => Self::count(out, confirm),
                Ok(None) => break,
                Err(_) => {
                    out.stalled = true;
                    break;
                }
            }
        }
    }
}
