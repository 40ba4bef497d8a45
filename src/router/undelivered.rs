//! Counts messages that could not be delivered (no routable instance, too
//! large, refused, every attempt failed) and reports them once per interval,
//! never once per message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use metrics::Counter;

use crate::shutdown::Shutdown;

/// Why a message could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Cause {
    /// The service has no routable instance.
    NoRoute,
    /// The payload exceeds `max_payload`.
    TooLarge,
    /// An instance's broker refused the message itself.
    Rejected,
    /// Every attempt failed on an unavailable instance.
    Unavailable,
    /// Every attempt failed because the instances' brokers were unreachable:
    /// the message goes back to the ingress for redelivery.
    Unreachable,
    /// The message went through more Bakers than a route needs: a loop.
    Loop,
}

/// Why a delivery failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The kind of failure.
    pub cause: Cause,
    /// The reason given to the ingress (the `baker-error` header).
    pub reason: String,
    /// Send attempts made.
    pub attempts: u32,
}

impl Failure {
    pub(super) fn new(cause: Cause, reason: String, attempts: u32) -> Self {
        Self {
            cause,
            reason,
            attempts,
        }
    }
}

/// How many [`Cause`]s there are.
const CAUSES: usize = 6;
const _: () = assert!(
    Cause::Loop as usize + 1 == CAUSES,
    "CAUSES counts every cause"
);

impl Cause {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NoRoute => "no_route",
            Cause::TooLarge => "too_large",
            Cause::Rejected => "rejected",
            Cause::Unavailable => "unavailable",
            Cause::Unreachable => "unreachable",
            Cause::Loop => "loop",
        }
    }

    /// Its HTTP-like status (see [`baker_adapter_api::code`]).
    pub fn code(self) -> u16 {
        use baker_adapter_api::code;
        match self {
            Cause::NoRoute => code::NO_ROUTE,
            Cause::TooLarge => code::TOO_LARGE,
            Cause::Rejected => code::BAD_MESSAGE,
            Cause::Unavailable | Cause::Unreachable => code::UNAVAILABLE,
            Cause::Loop => code::LOOP,
        }
    }
}

/// Most distinct services named in the metrics and logs over the process's
/// life; the rest are summed under [`OTHER`], so that publishers addressing
/// random names cannot grow memory (metric series are never dropped).
const MAX_TRACKED: usize = 1024;
/// Label for services beyond [`MAX_TRACKED`].
const OTHER: &str = "_other";
/// How often the summary is logged.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Tally of undeliverable messages by service, with the latest reason.
#[derive(Default)]
pub struct UndeliveredReporter {
    // Taken only on the failure path, never for a routed message.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Services that have a metric series of their own (at most
    /// [`MAX_TRACKED`], then [`OTHER`]), with their counters.
    named: HashMap<String, Tally>,
}

/// One service's counters, made once: a failed message costs no metric
/// registry lookup and no label allocation.
struct Tally {
    no_route: Counter,
    /// By [`Cause`], made at the cause's first message.
    by_cause: [Option<Counter>; CAUSES],
    /// Messages since the last report, and the latest reason.
    pending: u64,
    reason: String,
}

impl Tally {
    fn new(service: &str) -> Self {
        Self {
            no_route: metrics::counter!("baker_no_route_total", "service" => service.to_owned()),
            by_cause: Default::default(),
            pending: 0,
            reason: String::new(),
        }
    }
}

impl UndeliveredReporter {
    /// Counts one message for `service` that could not be delivered.
    pub fn record(&self, service: &str, cause: Cause, reason: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let key = if state.named.contains_key(service) || state.named.len() < MAX_TRACKED {
            service
        } else {
            OTHER
        };
        if !state.named.contains_key(key) {
            state.named.insert(key.to_owned(), Tally::new(key));
        }
        let tally = state.named.get_mut(key).expect("inserted above");
        if cause == Cause::NoRoute {
            tally.no_route.increment(1);
        }
        tally.by_cause[cause as usize]
            .get_or_insert_with(|| {
                metrics::counter!("baker_undelivered_total", "service" => key.to_owned(), "cause" => cause.as_str())
            })
            .increment(1);
        tally.pending += 1;
        if tally.reason != reason {
            tally.reason.clear();
            tally.reason.push_str(reason);
        }
    }

    /// Logs and clears the tally.
    pub fn flush(&self) {
        for (service, count, reason) in self.take_pending() {
            tracing::warn!(%service, count, %reason, "messages not delivered in the last interval");
        }
    }

    /// Each service's count and latest reason since the last call.
    fn take_pending(&self) -> Vec<(String, u64, String)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.named.iter_mut())
            .filter(|(_, tally)| tally.pending > 0)
            .map(|(service, tally)| {
                let count = std::mem::take(&mut tally.pending);
                (service.clone(), count, std::mem::take(&mut tally.reason))
            })
            .collect()
    }

    /// Flushes every [`REPORT_INTERVAL`] until shutdown.
    pub async fn run(&self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(REPORT_INTERVAL);
        tick.tick().await;
        while shutdown.run_until(tick.tick()).await.is_some() {
            self.flush();
        }
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_tallied_per_service_and_unknown_names_beyond_the_limit_share_one() {
        let reporter = UndeliveredReporter::default();
        reporter.record("a", Cause::NoRoute, "first");
        reporter.record("a", Cause::Rejected, "second");
        reporter.record("b", Cause::TooLarge, "big");
        let mut pending = reporter.take_pending();
        pending.sort();
        assert_eq!(
            pending,
            [
                ("a".to_owned(), 2, "second".to_owned()),
                ("b".to_owned(), 1, "big".to_owned())
            ]
        );
        assert!(reporter.take_pending().is_empty(), "cleared once reported");
        for i in 0..MAX_TRACKED + 10 {
            reporter.record(&format!("s{i}"), Cause::NoRoute, "none");
        }
        let pending = reporter.take_pending();
        // a and b had nothing new; 1,022 more up to the limit, then one for
        // the rest.
        assert_eq!(pending.len(), MAX_TRACKED - 2 + 1);
        let other = pending
            .iter()
            .find(|(s, _, _)| s == OTHER)
            .expect("the rest");
        assert_eq!(other.1, 12);
    }
}
