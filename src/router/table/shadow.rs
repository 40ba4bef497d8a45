//! A service's shadow rule as the routing table holds it: which version's
//! instances get the copies, which messages are copied (the share) and how
//! many copies may be under way (the budget). Sending the copies is
//! [`crate::router::shadow`]'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::ServiceRoute;

/// Default of [`ShadowRule::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 100;

/// Which messages of a service are copied, and where to.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowRule {
    /// The version whose instances get the copies (and nothing else).
    pub version: String,
    /// Share of the messages copied, in thousandths (1 to 1000).
    pub per_mille: u64,
    /// Most copies in flight at once; more are dropped.
    pub max_in_flight: usize,
}

/// A rule's counters, kept across routing tables: the copies in flight and
/// the messages seen (for the share).
#[derive(Debug, Default)]
pub struct ShadowState {
    in_flight: AtomicUsize,
    seen: AtomicU64,
}

impl ShadowState {
    /// Copies under way now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A copy is over: its place in the budget is free again.
    pub(in crate::router) fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The states of the rules, by service, kept by the table builder.
pub type ShadowStates = HashMap<String, Arc<ShadowState>>;

/// A service's shadow routing in one table.
pub struct ShadowRoute {
    /// The rule.
    pub rule: ShadowRule,
    /// Its instances of the rule's version, if any is routable.
    pub group: Option<Box<ServiceRoute>>,
    state: Arc<ShadowState>,
    copies: ShadowCounters,
}

/// `baker_shadow_copies_total{service,outcome}`, per outcome.
struct ShadowCounters {
    sent: metrics::Counter,
    failed: metrics::Counter,
    dropped: metrics::Counter,
}

impl ShadowRoute {
    /// The shadow routing of `service` under `rule`, with `state` carried
    /// over from the table before, over `group` (its instances of the
    /// rule's version, if any).
    pub fn new(
        service: &str,
        rule: ShadowRule,
        state: Arc<ShadowState>,
        group: Option<ServiceRoute>,
    ) -> Self {
        let counter = |outcome: &'static str| {
            let service = service.to_owned();
            metrics::counter!("baker_shadow_copies_total", "service" => service, "outcome" => outcome)
        };
        Self {
            rule,
            group: group.map(Box::new),
            state,
            copies: ShadowCounters {
                sent: counter("sent"),
                failed: counter("failed"),
                dropped: counter("dropped"),
            },
        }
    }

    /// Whether the next message is one of the share copied: the rule's
    /// share of every run of 1,000 messages, spread evenly.
    fn due(&self) -> bool {
        let n = self.state.seen.fetch_add(1, Ordering::Relaxed);
        let per_mille = self.rule.per_mille;
        (n + 1) * per_mille / 1000 > n * per_mille / 1000
    }

    /// A place in the budget for a copy of the next message, when it is one
    /// of the share and an instance of the version can take it; a copy over
    /// the budget is counted as dropped. The caller [`ShadowState::release`]s
    /// the place once the copy is over.
    pub(in crate::router) fn admit_copy(&self) -> Option<Arc<ShadowState>> {
        if self.group.is_none() || !self.due() {
            return None;
        }
        let in_flight = self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        if in_flight >= self.rule.max_in_flight {
            self.state.release();
            self.copies.dropped.increment(1);
            return None;
        }
        Some(self.state.clone())
    }

    /// Counts what became of a copy that was sent.
    pub(in crate::router) fn count(&self, sent: bool) {
        let counter = match sent {
            true => &self.copies.sent,
            false => &self.copies.failed,
        };
        counter.increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_copied_is_exact_over_every_thousand_messages() {
        for per_mille in [1, 100, 333, 500, 1000] {
            let route = ShadowRoute::new(
                "s",
                ShadowRule {
                    version: "2".into(),
                    per_mille,
                    max_in_flight: 1,
                },
                Arc::default(),
                None,
            );
            let due = (0..3000).filter(|_| route.due()).count() as u64;
            assert_eq!(due, 3 * per_mille, "{per_mille}‰");
        }
    }
}
