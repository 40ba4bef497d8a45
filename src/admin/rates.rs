//! Per-instance rates for `/v1/status` and the dashboard: every second the
//! router's counters are read, and each instance's rates are what changed
//! since the reading before, per second of real time. So any one read of
//! the status shows rates over the last second, whoever polls and however
//! often.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::router::RoutingTable;
use crate::shutdown::Shutdown;

/// How often the counters are read.
const EVERY: Duration = Duration::from_secs(1);

/// An instance's rates: messages delivered and failed sends, per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Messages delivered per second.
    pub delivered: f64,
    /// Failed sends per second.
    pub errors: f64,
}

type Key = (String, String);

/// The rates of the last second, by service and instance.
#[derive(Clone, Default)]
pub struct Rates(Arc<Mutex<HashMap<Key, Rate>>>);

impl Rates {
    /// The rates of `id` of `service` over the last second, once two
    /// readings were taken.
    pub fn of(&self, service: &str, id: &str) -> Option<Rate> {
        let rates = self.0.lock().unwrap_or_else(|e| e.into_inner());
        rates.get(&(service.to_owned(), id.to_owned())).copied()
    }

    /// Reads `table`'s counters every second until `shutdown`.
    pub async fn follow(self, table: Arc<ArcSwap<RoutingTable>>, shutdown: Shutdown) {
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut before: HashMap<Key, (u64, u64)> = HashMap::new();
        let mut then = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = Instant::now();
            let seconds = now.duration_since(then).as_secs_f64();
            let table = table.load();
            let mut rates = HashMap::new();
            let mut counts = HashMap::new();
            for (service, id, delivered, errors) in table.counts() {
                let key = (service.to_owned(), id.to_owned());
                if let Some(&(d0, e0)) = before.get(&key).filter(|_| seconds > 0.0) {
                    let per_second =
                        |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
                    let rate = Rate {
                        delivered: per_second(delivered, d0),
                        errors: per_second(errors, e0),
                    };
                    rates.insert(key.clone(), rate);
                }
                counts.insert(key, (delivered, errors));
            }
            // Instances gone from the table go from the rates too.
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = rates;
            before = counts;
            then = now;
        }
    }
}
