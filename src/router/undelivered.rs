//! Counts messages that could not be delivered (no routable instance, too
//! large, refused, every attempt failed) and reports them once per interval,
//! never once per message.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::shutdown::Shutdown;

/// Why a message could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Services that have a metric series of their own.
    named: HashSet<String>,
    /// Counts and latest reason since the last report.
    pending: HashMap<String, (u64, String)>,
}

impl UndeliveredReporter {
    /// Counts one message for `service` that could not be delivered.
    pub fn record(&self, service: &str, cause: Cause, reason: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let key = if state.named.contains(service) {
            service
        } else if state.named.len() < MAX_TRACKED {
            state.named.insert(service.to_owned());
            service
        } else {
            OTHER
        };
        if cause == Cause::NoRoute {
            metrics::counter!("baker_no_route_total", "service" => key.to_owned()).increment(1);
        }
        metrics::counter!("baker_undelivered_total", "service" => key.to_owned(), "cause" => cause.as_str())
            .increment(1);
        let entry = state
            .pending
            .entry(key.to_owned())
            .or_insert_with(|| (0, String::new()));
        entry.0 += 1;
        if entry.1 != reason {
            entry.1 = reason.to_owned();
        }
    }

    /// Logs and clears the tally.
    pub fn flush(&self) {
        let pending =
            std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).pending);
        for (service, (count, reason)) in pending {
            tracing::warn!(%service, count, %reason, "messages not delivered in the last interval");
        }
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
