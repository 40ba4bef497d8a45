//! One instance's running counts, kept across table rebuilds, and how they
//! are written as metric series.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::outlier::OutlierState;

/// Running counts for one instance, kept across table rebuilds. They are its
/// metric series too (`baker_messages_routed_total`, ...): rendered from
/// here, rather than registered with the metrics recorder, which can never
/// forget a series, so that a departed instance's series go with it.
#[derive(Default)]
pub struct InstanceStats {
    /// Messages the instance's broker accepted.
    pub delivered: AtomicU64,
    /// Failed sends.
    pub errors: AtomicU64,
    /// Ejections by this router.
    pub ejections: AtomicU64,
    /// Sends in flight.
    pub outstanding: AtomicUsize,
    /// Passive health: whether the instance is ejected for failing.
    pub outlier: OutlierState,
}

impl InstanceStats {
    /// Counts a delivery accepted by the instance's broker.
    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed send.
    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an ejection.
    pub fn ejected(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }
}

/// `text` as a Prometheus label value: backslash, quote and line feed
/// escaped.
pub(super) fn label_value(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\\', '"', '\n']) {
        text.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        text.into()
    }
}
