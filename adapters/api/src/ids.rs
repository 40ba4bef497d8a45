//! Baker's own message ids: unique without coordination, cheap to make.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

/// A random per-process prefix, then a counter.
static IDS: LazyLock<(String, AtomicU64)> =
    LazyLock::new(|| (format!("{:016x}", fastrand::u64(..)), AtomicU64::new(1)));

/// A new message id, unique across processes (64 random bits per process)
/// and within one (a counter).
pub fn new_message_id() -> String {
    let (prefix, next) = &*IDS;
    format!("{prefix}-{:x}", next.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ() {
        let a = new_message_id();
        let b = new_message_id();
        assert_ne!(a, b);
        assert_eq!(
            a.split('-').next(),
            b.split('-').next(),
            "one prefix per process"
        );
    }
}
