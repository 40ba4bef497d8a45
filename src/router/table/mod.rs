//! The routing table: per service, the routable instances with their bound
//! egress targets and the service's built policy.
//!
//! A table is immutable once built. A new one is built off the message path
//! whenever the directory's catalog changes, then swapped in atomically; the
//! per-instance counters carry over from one table to the next.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baker_adapter_api::{Message, Target};

use super::policy::{Candidate, Policy, PolicyKind};
use super::stats::label_value;
pub use super::stats::InstanceStats;
use crate::directory::interest::Use;
use crate::directory::{Catalog, InstanceRecord};
use shadow::ShadowRoute;

pub mod shadow;

/// How long a departed instance's counters stay in `/metrics`, so that the
/// scrapes after it left still see its last increments.
pub const DEPARTED_GRACE: Duration = Duration::from_secs(300);

/// An instance's counters, by service and instance id.
pub(super) type StatsByInstance = HashMap<(String, String), Arc<InstanceStats>>;

/// Counters of instances that left the catalog, with when they left.
type Departed = Vec<((String, String), Arc<InstanceStats>, Instant)>;

/// One routable instance.
#[derive(Clone)]
pub struct InstanceRoute {
    /// Its directory record.
    pub record: InstanceRecord,
    /// Where its messages go.
    pub target: Arc<dyn Target>,
    /// Its counters.
    pub stats: Arc<InstanceStats>,
    /// Its inbox may be another Baker's ingress (it is not under `_`, where
    /// Baker's inboxes live and no ingress prefix may): what is sent there
    /// carries a hop count.
    pub into_baker: bool,
    /// Counts deliveries to it when its service prefers the router's zone
    /// and it is in another: what fails over across zones.
    pub crossed: Option<metrics::Counter>,
}

impl Candidate for InstanceRoute {
    fn id(&self) -> &str {
        &self.record.id
    }
    fn weight(&self) -> u32 {
        self.record.weight
    }
    fn outstanding(&self) -> usize {
        self.stats.outstanding.load(Ordering::Relaxed)
    }
}

/// One service's routing state.
pub struct ServiceRoute {
    /// The policy kind in force.
    pub kind: PolicyKind,
    /// The built policy.
    pub policy: Policy,
    /// Routable instances, ordered by id.
    pub instances: Vec<InstanceRoute>,
    /// Time from ingress to delivered, per message.
    pub latency: metrics::Histogram,
    /// Routing by version, when the service has it.
    pub versions: Option<VersionRoutes>,
    /// Some instance's inbox may be another Baker's ingress: messages to
    /// the service carry a hop count (worked out once per table, not per
    /// message).
    pub into_baker: bool,
    /// Where its use is noted, when the router follows only the services it
    /// routes to.
    pub used: Option<Arc<Use>>,
    /// The zone the service's messages prefer, if any.
    pub zone: Option<String>,
    /// When the service prefers the router's zone and only some of its
    /// instances are there: the routing state of those.
    pub local: Option<Box<ServiceRoute>>,
    /// Its shadow rule, with the instances that get the copies (who are not
    /// among `instances`).
    pub shadow: Option<ShadowRoute>,
}

/// A service routed by version: a message whose `header` names a version
/// goes only to instances of that version (by the service's policy among
/// them); messages without the header go to any instance.
pub struct VersionRoutes {
    /// The header naming the version.
    pub header: String,
    /// The routing state of each version's instances.
    pub groups: HashMap<String, ServiceRoute>,
}

impl ServiceRoute {
    pub(super) fn build(
        kind: PolicyKind,
        instances: Vec<InstanceRoute>,
        latency: metrics::Histogram,
    ) -> Self {
        Self {
            kind,
            policy: Policy::build(kind, &instances),
            into_baker: instances.iter().any(|i| i.into_baker),
            instances,
            latency,
            versions: None,
            used: None,
            zone: None,
            local: None,
            shadow: None,
        }
    }

    /// Keeps, beside every instance, the group of those in `zone` (when
    /// some, not all, are there and the policy is not broadcast).
    pub(super) fn prefer_zone(mut self, zone: Option<&str>) -> Self {
        let Some(zone) = zone.filter(|_| self.kind != PolicyKind::Broadcast) else {
            return self;
        };
        self.zone = Some(zone.to_owned());
        let local: Vec<InstanceRoute> = (self.instances.iter())
            .filter(|i| i.record.zone.as_deref() == Some(zone))
            .cloned()
            .collect();
        if !local.is_empty() && local.len() < self.instances.len() {
            let group = ServiceRoute::build(self.kind, local, self.latency.clone());
            self.local = Some(Box::new(group));
        }
        self
    }

    /// Whether the service prefers a zone where no instance can take its
    /// messages now, so that they go to every zone.
    pub fn failing_over(&self) -> bool {
        let Some(zone) = &self.zone else {
            return false;
        };
        match &self.local {
            Some(local) => !local.instances.iter().any(|i| local.admits(i)),
            None => !(self.instances.iter()).any(|i| i.record.zone.as_ref() == Some(zone)),
        }
    }

    /// Whether `instance` of the service may take a message: not ejected,
    /// and under the weighted policy not of weight 0.
    pub(super) fn admits(&self, instance: &InstanceRoute) -> bool {
        let never_picked = self.kind == PolicyKind::Weighted && instance.record.weight == 0;
        !instance.stats.outlier.is_ejected() && !never_picked
    }

    /// The first instance from `from` on (in ring order) that may take the
    /// message ([`Self::admits`]: a retry must not reach an instance its
    /// policy never picks). If none may, `from` itself: an ejected instance
    /// is still a better chance than none.
    pub(super) fn admitted_from(&self, from: usize) -> usize {
        let n = self.instances.len();
        (0..n)
            .map(|k| (from + k) % n)
            .find(|&i| self.admits(&self.instances[i]))
            .unwrap_or(from % n)
    }

    /// The instances in the router's zone while one of them is admitted,
    /// else all of them (see [`super::zones`]).
    fn in_zone(&self) -> &ServiceRoute {
        match &self.local {
            Some(local) if local.instances.iter().any(|i| local.admits(i)) => local,
            _ => self,
        }
    }

    /// The instances `message` may go to: those of the version it names when
    /// the service is routed by version, else all of them; of those, the ones
    /// in the router's zone when the service prefers it and one there is
    /// admitted. `Err` with the version when no routable instance has it.
    pub fn for_message<'s, 'm>(
        &'s self,
        message: &'m Message,
    ) -> Result<&'s ServiceRoute, &'m str> {
        let Some(versions) = &self.versions else {
            return Ok(self.in_zone());
        };
        match message.headers.get(&versions.header) {
            None => Ok(self.in_zone()),
            Some(version) => (versions.groups.get(version))
                .map(ServiceRoute::in_zone)
                .ok_or(version),
        }
    }
}

/// Every service's routing state, plus the catalog it was built from.
#[derive(Default)]
pub struct RoutingTable {
    pub(super) services: HashMap<String, ServiceRoute>,
    /// Counters of every instance in the catalog that was ever routed to,
    /// including those no longer routable (draining, critical).
    pub(super) stats: StatsByInstance,
    /// Counters of instances that left the catalog, with when they left:
    /// shown for [`DEPARTED_GRACE`], then dropped.
    pub(super) departed: Arc<Departed>,
    /// How long departed counters are shown.
    pub(super) grace: Duration,
    /// The catalog this table reflects (every record, routable or not).
    pub catalog: Arc<Catalog>,
}

impl RoutingTable {
    /// Every instance's counters: service, id, and its counts of messages
    /// delivered and failed sends.
    pub fn counts(&self) -> impl Iterator<Item = (&str, &str, u64, u64)> {
        self.stats.iter().map(|((service, id), stats)| {
            let delivered = stats.delivered.load(Ordering::Relaxed);
            let errors = stats.errors.load(Ordering::Relaxed);
            (service.as_str(), id.as_str(), delivered, errors)
        })
    }

    /// The routing state of `service`, if it has any routable instance.
    pub fn service(&self, service: &str) -> Option<&ServiceRoute> {
        self.services.get(service)
    }

    /// Whether this table sends to the instance.
    pub fn routes_to(&self, service: &str, id: &str) -> bool {
        self.services
            .get(service)
            .is_some_and(|s| s.instances.iter().any(|i| i.record.id == id))
    }

    /// Whether `id` of `service` takes this router's shadow copies.
    pub fn shadows_to(&self, service: &str, id: &str) -> bool {
        let group = (self.services.get(service))
            .and_then(|s| s.shadow.as_ref())
            .and_then(|shadow| shadow.group.as_deref());
        group.is_some_and(|g| g.instances.iter().any(|i| i.record.id == id))
    }

    /// Counters of an instance this router has routed to, while it is in the
    /// catalog.
    pub fn stats(&self, service: &str, id: &str) -> Option<&InstanceStats> {
        self.stats
            .get(&(service.to_owned(), id.to_owned()))
            .map(|s| &**s)
    }

    /// The per-instance metric families, in Prometheus' text format: every
    /// instance in the catalog, and those that left it less than
    /// [`DEPARTED_GRACE`] ago.
    pub fn render_instance_metrics(&self) -> String {
        use std::fmt::Write;
        let departed = (self.departed.iter())
            .filter(|(_, _, since)| since.elapsed() < self.grace)
            .map(|(key, stats, _)| (key, stats, false));
        let current = (self.stats.iter()).map(|(key, stats)| (key, stats, true));
        let all: Vec<_> = current.chain(departed).collect();
        let mut out = String::new();
        type Read = fn(&InstanceStats) -> u64;
        let families: [(&str, &str, Read); 4] = [
            ("baker_messages_routed_total", "counter", |s| {
                s.delivered.load(Ordering::Relaxed)
            }),
            ("baker_egress_errors_total", "counter", |s| {
                s.errors.load(Ordering::Relaxed)
            }),
            ("baker_outlier_ejections_total", "counter", |s| {
                s.ejections.load(Ordering::Relaxed)
            }),
            ("baker_instance_ejected", "gauge", |s| {
                u64::from(s.outlier.is_ejected())
            }),
        ];
        for (name, kind, value) in families {
            if all.is_empty() {
                break;
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for ((service, id), stats, in_catalog) in &all {
                if kind == "gauge" && !in_catalog {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\",instance=\"{}\"}} {}",
                    label_value(service),
                    label_value(id),
                    value(stats)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::AdapterRegistry;
    use crate::directory::Status;
    use crate::router::TableBuilder;
    use baker_directory_api::testing::record;

    fn catalog(index: u64, records: Vec<InstanceRecord>) -> Arc<Catalog> {
        Arc::new(Catalog {
            epoch: 1,
            index,
            instances: records,
        })
    }

    fn builder() -> TableBuilder {
        TableBuilder::new(Arc::new(AdapterRegistry::builtin()), HashMap::new())
    }

    fn ids(table: &RoutingTable, service: &str) -> Vec<String> {
        table
            .service(service)
            .map(|s| s.instances.iter().map(|i| i.record.id.clone()).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_departed_instances_series_stay_for_the_grace_period_then_go() {
        let series = |table: &RoutingTable, id: &str| {
            table
                .render_instance_metrics()
                .lines()
                .filter(|l| l.contains(&format!("instance=\"{id}\"")))
                .count()
        };
        for (grace, kept) in [(Duration::from_secs(60), true), (Duration::ZERO, false)] {
            let mut builder = builder().with_departed_grace(grace);
            let table = builder
                .build(catalog(1, vec![record("s", "a", 5), record("s", "b", 5)]))
                .await;
            table.stats("s", "a").unwrap().delivered();
            assert_eq!(series(&table, "a"), 4, "routed, errors, ejections, ejected");
            assert!(table
                .render_instance_metrics()
                .contains("baker_messages_routed_total{service=\"s\",instance=\"a\"} 1"));
            let table = builder.build(catalog(2, vec![record("s", "b", 5)])).await;
            // Counters only: a departed instance is ejected from nothing.
            assert_eq!(
                series(&table, "a"),
                if kept { 3 } else { 0 },
                "grace {grace:?}"
            );
            assert_eq!(series(&table, "b"), 4);
        }
        // Back within the grace period: the same counters go on.
        let mut builder = builder();
        let table = builder.build(catalog(1, vec![record("s", "a", 5)])).await;
        table.stats("s", "a").unwrap().delivered();
        builder.build(catalog(2, vec![])).await;
        let table = builder.build(catalog(3, vec![record("s", "a", 5)])).await;
        assert_eq!(
            table
                .stats("s", "a")
                .unwrap()
                .delivered
                .load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn only_passing_instances_are_routed() {
        let mut draining = record("s", "b", 5);
        draining.status = Status::Draining;
        let mut critical = record("s", "c", 5);
        critical.status = Status::Critical;
        let table = builder()
            .build(catalog(1, vec![record("s", "a", 5), draining, critical]))
            .await;
        assert_eq!(ids(&table, "s"), ["a"]);
    }

    #[tokio::test]
    async fn rebuilt_view_keeps_counters_and_drops_departed_instances() {
        let mut builder = builder();
        let first = builder
            .build(catalog(1, vec![record("s", "a", 5), record("s", "b", 5)]))
            .await;
        first.stats("s", "a").unwrap().delivered();
        let second = builder
            .build(catalog(2, vec![record("s", "a", 5), record("s", "c", 5)]))
            .await;
        assert_eq!(ids(&second, "s"), ["a", "c"]);
        let a = second.stats("s", "a").unwrap();
        assert_eq!(
            a.delivered.load(Ordering::Relaxed),
            1,
            "counters survive the swap"
        );
        assert!(second.stats("s", "b").is_none());
        let mut draining = record("s", "a", 5);
        draining.status = Status::Draining;
        let third = builder.build(catalog(3, vec![draining])).await;
        assert!(!third.routes_to("s", "a"));
        assert_eq!(
            third
                .stats("s", "a")
                .unwrap()
                .delivered
                .load(Ordering::Relaxed),
            1,
            "a draining instance keeps its counts"
        );
        // The old view is untouched: a swap never mutates a view in use.
        assert_eq!(ids(&first, "s"), ["a", "b"]);
    }

    #[tokio::test]
    async fn endpoints_of_unknown_adapters_are_skipped() {
        let mut odd = record("s", "b", 5);
        odd.endpoint.adapter = "carrier-pigeon".to_owned();
        let table = builder()
            .build(catalog(1, vec![record("s", "a", 5), odd]))
            .await;
        assert_eq!(ids(&table, "s"), ["a"]);
    }
}
