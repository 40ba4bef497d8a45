//! How a router's ingress loop ends: the stop closes the ingress, and what
//! it had received has until the drain deadline to finish.

use std::pin::Pin;
use std::time::Duration;

use baker_adapter_api::Ingress;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::shutdown::Shutdown;

/// How long closing the ingress may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long in-flight messages may take to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What comes to a router's loop from its stopping.
pub(super) enum Turn {
    /// The stop: close the ingress ([`Stopping::close`]).
    Stop,
    /// The drain deadline passed.
    Deadline,
}

/// The stop signal, then the drain deadline.
pub(super) struct Stopping {
    /// Made once: creating a cancellation future takes the token's lock,
    /// which must not happen once per message.
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    deadline: Pin<Box<Sleep>>,
    closing: bool,
}

impl Stopping {
    pub(super) fn new(shutdown: &Shutdown) -> Self {
        Self {
            cancelled: Box::pin(shutdown.clone().cancelled_owned()),
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(u32::MAX as u64))),
            closing: false,
        }
    }

    /// Whether the stop has come.
    pub(super) fn closing(&self) -> bool {
        self.closing
    }

    /// The stop (once), then the drain deadline.
    pub(super) async fn next(&mut self) -> Turn {
        if self.closing {
            self.deadline.as_mut().await;
            Turn::Deadline
        } else {
            self.cancelled.as_mut().await;
            self.closing = true;
            Turn::Stop
        }
    }

    /// The drain deadline; never before the stop.
    pub(super) async fn deadline(&mut self) {
        self.deadline.as_mut().await
    }

    /// Starts the drain deadline and closes the ingress, whose stream then
    /// ends after what the broker had already sent.
    pub(super) async fn close(&mut self, ingress: &mut dyn Ingress, in_flight: usize) {
        (self.deadline.as_mut()).reset(tokio::time::Instant::now() + DRAIN_TIMEOUT);
        tracing::info!(
            in_flight,
            "closing the ingress and finishing received messages"
        );
        // Bounded: a broker that blocks the connection never answers.
        if tokio::time::timeout(CLOSE_TIMEOUT, ingress.close())
            .await
            .is_err()
        {
            tracing::warn!("the broker did not confirm closing the ingress in time");
        }
    }

    /// Passes the ingress's last settlements to its broker, once every
    /// journey has ended or been dropped.
    pub(super) async fn finish(ingress: &mut dyn Ingress) {
        if tokio::time::timeout(CLOSE_TIMEOUT, ingress.finish())
            .await
            .is_err()
        {
            tracing::warn!(
                "the broker did not take the last acknowledgements in time; it redelivers those messages"
            );
        }
    }
}
