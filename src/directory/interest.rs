//! Which services a router follows in the directory: those it routes to,
//! not the whole fleet.
//!
//! A service is followed from the configuration (`watch`) or from the first
//! message for it: that message waits up to [`FIRST_VIEW_WAIT`] for the
//! service's first view and goes on once the routing table has it. A learned
//! service not routed to for the idle time is followed no more (a message
//! for it later learns it again). A router may instead follow everything
//! (`watch = ["*"]`), as releases before this one did.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::record::valid_name;
use crate::shutdown::Shutdown;

/// How long the first message for a service waits for its view.
pub const FIRST_VIEW_WAIT: Duration = Duration::from_secs(5);
/// A learned service unused for this long is followed no more.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);
/// Most services a router follows; one more makes it stop following the
/// learned service routed to least recently.
pub const DEFAULT_LIMIT: usize = 1024;

/// When a service was last routed to.
#[derive(Debug, Default)]
pub struct Use(AtomicU64);

/// Seconds since the first call, a clock for [`Use`].
fn coarse_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

impl Use {
    fn new() -> Self {
        Self(AtomicU64::new(coarse_now()))
    }

    /// Notes a message routed to the service now; writes at most once a
    /// second.
    pub fn touch(&self) {
        let now = coarse_now();
        if self.0.load(Ordering::Relaxed) != now {
            self.0.store(now, Ordering::Relaxed);
        }
    }

    fn idle_for(&self) -> Duration {
        Duration::from_secs(coarse_now().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// How a router's interest is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestConfig {
    /// Follow the whole directory.
    pub all: bool,
    /// Services followed from the start, and never dropped.
    pub declared: BTreeSet<String>,
    /// A learned service unused for this long is dropped.
    pub idle: Duration,
    /// Most services followed.
    pub limit: usize,
}

impl Default for InterestConfig {
    fn default() -> Self {
        Self {
            all: false,
            declared: BTreeSet::new(),
            idle: DEFAULT_IDLE,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// Why a message's service has no view.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoView {
    /// The name cannot be a service's.
    #[error("{0:?} is not a service name")]
    NotAName(String),
    /// The router follows as many services as it may.
    #[error(
        "this router follows {0} services already (its watch limit); service {1:?} is not followed"
    )]
    Limit(usize, String),
    /// The directory sent no view in time.
    #[error("no view of service {1:?} from the directory within {0:?}")]
    Timeout(Duration, String),
}

/// The services a router follows, shared by its watcher (which follows
/// them), its routing table (which notes their use) and its journeys (which
/// learn new ones).
#[derive(Debug)]
pub struct Interest {
    config: InterestConfig,
    used: Mutex<BTreeMap<String, Arc<Use>>>,
    /// The services to follow, for the watcher.
    wanted: watch::Sender<Arc<BTreeSet<String>>>,
    /// The services the routing table has a view of.
    covered: watch::Sender<Arc<BTreeSet<String>>>,
}

impl Interest {
    /// An interest in the declared services (or in everything).
    pub fn new(config: InterestConfig) -> Self {
        let used = (config.declared.iter())
            .map(|service| (service.clone(), Arc::new(Use::new())))
            .collect();
        Self {
            wanted: watch::Sender::new(Arc::new(config.declared.clone())),
            covered: watch::Sender::new(Arc::default()),
            used: Mutex::new(used),
            config,
        }
    }

    /// An interest in everything (the demo, tests, small deployments).
    pub fn all() -> Self {
        Self::new(InterestConfig {
            all: true,
            ..InterestConfig::default()
        })
    }

    /// True when the whole directory is followed.
    pub fn is_all(&self) -> bool {
        self.config.all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Use>>> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The services to follow, as they change.
    pub fn wanted(&self) -> watch::Receiver<Arc<BTreeSet<String>>> {
        self.wanted.subscribe()
    }

    /// The use marker of `service` for its table entry, when it is followed.
    pub fn use_of(&self, service: &str) -> Option<Arc<Use>> {
        self.lock().get(service).cloned()
    }

    /// Called once the routing table has a view of `services`.
    pub fn covered(&self, services: Arc<BTreeSet<String>>) {
        self.covered.send_replace(services);
    }

    /// Waits until the routing table has a view of `service`, following it
    /// from now on if it is not yet.
    pub async fn view_of(&self, service: &str) -> Result<(), NoView> {
        if self.config.all {
            return Ok(());
        }
        let mut covered = self.covered.subscribe();
        // Followed, with no routable instance: nothing to wait for (and no
        // lock taken, however many such messages come).
        if covered.borrow().contains(service) {
            return Ok(());
        }
        if !valid_name(service) {
            return Err(NoView::NotAName(service.to_owned()));
        }
        {
            let mut used = self.lock();
            if let Some(known) = used.get(service) {
                known.touch();
            } else {
                if used.len() >= self.config.limit && !self.evict_one(&mut used) {
                    return Err(NoView::Limit(self.config.limit, service.to_owned()));
                }
                used.insert(service.to_owned(), Arc::new(Use::new()));
                tracing::debug!(service, "following a new service");
                self.wanted
                    .send_replace(Arc::new(used.keys().cloned().collect()));
            }
        }
        let viewed =
            async { (covered.wait_for(|covered| covered.contains(service)).await).is_ok() };
        match tokio::time::timeout(FIRST_VIEW_WAIT, viewed).await {
            Ok(true) => Ok(()),
            _ => Err(NoView::Timeout(FIRST_VIEW_WAIT, service.to_owned())),
        }
    }

    /// Makes room for one more service: stops following the learned one
    /// routed to least recently (its next message learns it again). False
    /// when every service followed is declared.
    fn evict_one(&self, used: &mut BTreeMap<String, Arc<Use>>) -> bool {
        let oldest = (used.iter())
            .filter(|(service, _)| !self.config.declared.contains(*service))
            .min_by_key(|(_, last)| last.0.load(Ordering::Relaxed))
            .map(|(service, _)| service.clone());
        match oldest {
            Some(service) => {
                used.remove(&service);
                static EVICTED: baker_adapter_api::Every =
                    baker_adapter_api::Every::new(Duration::from_secs(60));
                if let Some(more) = EVICTED.check() {
                    tracing::warn!(limit = self.config.limit, %service, more,
                        "following as many services as allowed; no longer following the one routed to least recently \
                         (a router that routes to this many services should watch every service: watch = [\"*\"])");
                }
                true
            }
            None => false,
        }
    }

    /// Stops following the learned services unused for the idle time.
    /// Returns those dropped.
    pub fn drop_idle(&self) -> Vec<String> {
        let mut used = self.lock();
        let idle: Vec<String> = (used.iter())
            .filter(|(service, last)| {
                !self.config.declared.contains(*service) && last.idle_for() >= self.config.idle
            })
            .map(|(service, _)| service.clone())
            .collect();
        if !idle.is_empty() {
            for service in &idle {
                used.remove(service);
            }
            self.wanted
                .send_replace(Arc::new(used.keys().cloned().collect()));
        }
        idle
    }

    /// Drops idle services until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        if self.config.all {
            return;
        }
        let every = (self.config.idle / 4).max(Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        while shutdown.run_until(tick.tick()).await.is_some() {
            let dropped = self.drop_idle();
            if !dropped.is_empty() {
                tracing::info!(services = ?dropped, idle_secs = self.config.idle.as_secs(),
                    "no longer following services not routed to for a while");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(declared: &[&str], limit: usize) -> Arc<Interest> {
        Arc::new(Interest::new(InterestConfig {
            declared: declared.iter().map(|s| s.to_string()).collect(),
            idle: Duration::ZERO,
            limit,
            ..InterestConfig::default()
        }))
    }

    #[tokio::test]
    async fn a_first_message_waits_for_its_service_and_goes_on_once_covered() {
        let interest = interest(&["orders"], 10);
        let mut wanted = interest.wanted();
        assert_eq!(
            *wanted.borrow_and_update().clone(),
            ["orders".to_owned()].into()
        );
        let waiting = tokio::spawn({
            let interest = interest.clone();
            async move { interest.view_of("billing").await }
        });
        tokio::time::timeout(Duration::from_secs(1), wanted.changed())
            .await
            .unwrap()
            .unwrap();
        let services = wanted.borrow().clone();
        assert!(services.contains("billing") && services.contains("orders"));
        interest.covered(services);
        assert_eq!(waiting.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn bad_names_and_names_over_a_limit_of_declared_services_are_refused_at_once() {
        let interest = interest(&["orders"], 1);
        assert!(matches!(
            interest.view_of("no.such").await,
            Err(NoView::NotAName(_))
        ));
        assert!(matches!(
            interest.view_of("billing").await,
            Err(NoView::Limit(1, _))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_the_service_routed_to_least_recently_makes_room() {
        let interest = interest(&["orders"], 3);
        let (old, recent) = (
            Arc::new(Use(AtomicU64::new(0))),
            Arc::new(Use(AtomicU64::new(5))),
        );
        interest.lock().insert("old".into(), old);
        interest.lock().insert("recent".into(), recent);
        // Not answered here (no watcher): only the set followed matters.
        let _ = interest.view_of("billing").await;
        let followed: Vec<String> = interest.wanted().borrow().iter().cloned().collect();
        assert_eq!(followed, ["billing", "orders", "recent"]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_view_in_time_the_message_is_told_why() {
        let interest = interest(&[], 10);
        let err = interest.view_of("billing").await.unwrap_err();
        assert!(err.to_string().contains("no view of service \"billing\""));
    }

    #[test]
    fn idle_learned_services_are_dropped_declared_ones_kept() {
        let interest = interest(&["orders"], 10);
        interest
            .lock()
            .insert("billing".into(), Arc::new(Use::default()));
        assert_eq!(interest.drop_idle(), ["billing"]);
        assert_eq!(
            *interest.wanted().borrow().clone(),
            ["orders".to_owned()].into()
        );
    }
}
