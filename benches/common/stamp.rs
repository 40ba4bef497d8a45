//! The clock and the header every payload starts with: its send time and
//! sequence number (the stamp), then the tag of the run it belongs to, so
//! that one clock in this process gives every latency and a message of one
//! run is never counted in another. Also pacing and the publishing thread,
//! which need a finer clock than tokio's timer.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Bytes of the stamp every payload starts with: its send time (ns since
/// [`epoch`], u64 LE) and its sequence number (u64 LE).
pub const STAMP: usize = 16;

/// Bytes of the whole header: the stamp, then the run's tag (u64 LE).
pub const HEADER: usize = STAMP + 8;

/// The process-wide instant send and receive times count from. Called once
/// early, so it is set before the first measurement.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`]; one clock for publisher and consumer, which
/// run in this one process.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// A payload of `size` bytes (at least the stamp and `extra`): the stamp
/// for message `seq`, then `extra`, then zeros.
pub fn stamped_payload(seq: u64, extra: &[u8], size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size.max(STAMP + extra.len())];
    p[8..16].copy_from_slice(&seq.to_le_bytes());
    p[STAMP..STAMP + extra.len()].copy_from_slice(extra);
    // The send time last, as close to the actual send as this gets.
    p[..8].copy_from_slice(&now_ns().to_le_bytes());
    p
}

/// The send time and sequence number a payload starts with; `None` when it
/// is too short to carry them (not one of ours).
pub fn read_stamp(p: &[u8]) -> Option<(u64, u64)> {
    let sent = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(8..STAMP)?.try_into().ok()?);
    Some((sent, seq))
}

/// The run tag a payload carries after the stamp, if it is long enough.
pub fn read_tag(p: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(STAMP..HEADER)?.try_into().ok()?))
}

/// Sleeps until message `seq` of a run paced at `rate` msg/s from `t0` is
/// due. A thread sleep, as tokio's timer is too coarse (1 ms) for the rates
/// the benches pace at.
pub fn pace(t0: Instant, rate: u64, seq: u64) {
    let due = t0 + Duration::from_nanos(1_000_000_000 / rate * seq);
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Runs `publish` on a thread of its own (with a current-thread runtime),
/// then sets `done`; the receiver gets its result.
///
/// Its own thread, so pacing can sleep finer than tokio's 1 ms timer without
/// holding up the consumer; the broker clients do their I/O on tasks or
/// threads of their own, so publishing only hands them the messages.
pub fn publish_on_own_thread<T, F, Fut>(
    done: Arc<AtomicBool>,
    publish: F,
) -> tokio::sync::oneshot::Receiver<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("publisher runtime");
        let result = runtime.block_on(publish());
        done.store(true, Ordering::Release);
        let _ = tx.send(result);
    });
    rx
}
