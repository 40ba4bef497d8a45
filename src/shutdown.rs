//! One shutdown signal shared by every task of the process.

use std::future::Future;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A cloneable shutdown signal: triggered once, observed by every task.
#[derive(Clone, Default, Debug)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every task to stop.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves when triggered.
    pub async fn cancelled(&self) {
        self.0.cancelled().await
    }

    /// Resolves when triggered, owning its clone of the signal.
    pub fn cancelled_owned(self) -> WaitForCancellationFutureOwned {
        self.0.cancelled_owned()
    }

    /// Runs `future` unless shutdown comes first, in which case `None`.
    pub async fn run_until<F: Future>(&self, future: F) -> Option<F::Output> {
        self.0.run_until_cancelled(future).await
    }

    /// A signal triggered with this one, or on its own.
    pub fn child(&self) -> Shutdown {
        Shutdown(self.0.child_token())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
