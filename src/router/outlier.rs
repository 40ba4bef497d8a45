//! Passive outlier detection: an instance whose sends keep failing is
//! ejected from routing for a while, so messages stop paying for its
//! retries, then given traffic again.
//!
//! After `consecutive_failures` failed sends in a row, the instance is
//! ejected for `base_ejection`, doubled on each further ejection (up to
//! [`MAX_EJECTION`]) until a send to it succeeds again. An ejected instance
//! is skipped by every policy; if every instance of a service is ejected,
//! none is skipped, since an ejected instance is still the best chance.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Longest ejection, however often an instance was ejected.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// When to eject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failed sends in a row that eject an instance; 0 never ejects.
    pub consecutive_failures: u32,
    /// Length of a first ejection.
    pub base_ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
        }
    }
}

/// Milliseconds on a process-wide monotonic clock, never 0.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Ejection state of one instance, shared by every table that routes to it.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_failures: AtomicU32,
    /// `now_ms()` at which the current ejection ends; 0 when never ejected
    /// or recovered since.
    ejected_until_ms: AtomicU64,
    /// Ejections since the last successful send.
    ejections: AtomicU32,
}

/// What a send outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing worth reporting.
    None,
    /// The instance was just ejected, for this long.
    Ejected(Duration),
    /// The first success after an ejection.
    Recovered,
}

impl OutlierState {
    /// Whether the instance is ejected now. Reads no clock unless it was
    /// ejected since its last success.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Ejections since the instance last took a message.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records a successful send.
    pub fn succeeded(&self) -> Transition {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejected_until_ms.load(Ordering::Relaxed) != 0
            && self.ejected_until_ms.swap(0, Ordering::Relaxed) != 0
        {
            self.ejections.store(0, Ordering::Relaxed);
            return Transition::Recovered;
        }
        Transition::None
    }

    /// Records a failed send (one that says nothing about the message
    /// itself), ejecting the instance when it is one too many.
    pub fn failed(&self, config: &OutlierConfig) -> Transition {
        // Sends that were under way when the instance was ejected fail too;
        // they say nothing new and must not extend the ejection.
        if self.is_ejected() {
            return Transition::None;
        }
        let threshold = config.consecutive_failures;
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        // Only the send that reaches the threshold ejects, once.
        if threshold == 0
            || failures < threshold
            || self
                .consecutive_failures
                .compare_exchange(failures, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Transition::None;
        }
        let repeat = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let length = config
            .base_ejection
            .saturating_mul(1 << repeat)
            .min(MAX_EJECTION);
        self.ejected_until_ms
            .store(now_ms() + length.as_millis() as u64, Ordering::Relaxed);
        Transition::Ejected(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base_ms: u64) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_millis(base_ms),
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let state = OutlierState::default();
        let config = config(60_000);
        assert_eq!(state.failed(&config), Transition::None);
        assert_eq!(state.failed(&config), Transition::None);
        assert_eq!(
            state.succeeded(),
            Transition::None,
            "a success resets the run"
        );
        assert_eq!(state.failed(&config), Transition::None);
        assert_eq!(state.failed(&config), Transition::None);
        assert!(!state.is_ejected());
        assert_eq!(
            state.failed(&config),
            Transition::Ejected(Duration::from_secs(60))
        );
        assert!(state.is_ejected());
        assert_eq!(state.ejections(), 1);
        for _ in 0..10 {
            assert_eq!(
                state.failed(&config),
                Transition::None,
                "failures of sends already under way do not eject again"
            );
        }
        assert_eq!(state.ejections(), 1);
    }

    #[test]
    fn ejections_grow_on_repeat_and_reset_on_recovery() {
        let state = OutlierState::default();
        let config = config(20);
        let eject = |state: &OutlierState| {
            (0..3)
                .map(|_| state.failed(&config))
                .find(|t| *t != Transition::None)
        };
        assert_eq!(
            eject(&state),
            Some(Transition::Ejected(Duration::from_millis(20)))
        );
        std::thread::sleep(Duration::from_millis(30));
        assert!(!state.is_ejected(), "re-admitted once the ejection ends");
        assert_eq!(
            eject(&state),
            Some(Transition::Ejected(Duration::from_millis(40)))
        );
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(state.succeeded(), Transition::Recovered);
        assert_eq!(state.ejections(), 0);
        assert_eq!(
            eject(&state),
            Some(Transition::Ejected(Duration::from_millis(20)))
        );
    }

    #[test]
    fn zero_threshold_never_ejects() {
        let state = OutlierState::default();
        let config = OutlierConfig {
            consecutive_failures: 0,
            ..config(10)
        };
        for _ in 0..100 {
            assert_eq!(state.failed(&config), Transition::None);
        }
        assert!(!state.is_ejected());
    }
}
