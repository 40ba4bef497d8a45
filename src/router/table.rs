//! The routing table: per service, the routable instances with their bound
//! egress targets and the service's built policy.
//!
//! A table is immutable once built. A new one is built off the message path
//! whenever the directory's catalog changes, then swapped in atomically; the
//! per-instance counters carry over from one table to the next.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baker_adapter_api::{broker_key, redact_url, Endpoint, IngressOptions, Message, Target};

use super::attempts::admits;
use super::policy::{Candidate, Policy, PolicyKind};
use super::stats::label_value;
pub use super::stats::InstanceStats;
use super::zones::ZoneRouting;
use crate::adapters::{AdapterRegistry, EndpointRefusal};
use crate::directory::interest::{Interest, Use};
use crate::directory::{Catalog, EndpointRecord, InstanceRecord};

/// How long a departed instance's counters stay in `/metrics`, so that the
/// scrapes after it left still see its last increments.
pub const DEPARTED_GRACE: Duration = Duration::from_secs(300);

/// An instance's counters, by service and instance id.
type StatsByInstance = HashMap<(String, String), Arc<InstanceStats>>;

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
    fn build(kind: PolicyKind, instances: Vec<InstanceRoute>, latency: metrics::Histogram) -> Self {
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
        }
    }

    /// Keeps, beside every instance, the group of those in `zone` (when
    /// some, not all, are there and the policy is not broadcast).
    fn prefer_zone(mut self, zone: Option<&str>) -> Self {
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
            Some(local) => !local.instances.iter().any(|i| admits(local, i)),
            None => !(self.instances.iter()).any(|i| i.record.zone.as_ref() == Some(zone)),
        }
    }

    /// The instances in the router's zone while one of them is admitted,
    /// else all of them (see [`super::zones`]).
    fn in_zone(&self) -> &ServiceRoute {
        match &self.local {
            Some(local) if local.instances.iter().any(|i| admits(local, i)) => local,
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
    services: HashMap<String, ServiceRoute>,
    /// Counters of every instance in the catalog that was ever routed to,
    /// including those no longer routable (draining, critical).
    stats: StatsByInstance,
    /// Counters of instances that left the catalog, with when they left:
    /// shown for [`DEPARTED_GRACE`], then dropped.
    departed: Arc<Departed>,
    /// How long departed counters are shown.
    grace: Duration,
    /// The catalog this table reflects (every record, routable or not).
    pub catalog: Arc<Catalog>,
}

impl RoutingTable {
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

/// Builds tables from catalogs, reusing bound targets and counters.
pub struct TableBuilder {
    adapters: Arc<AdapterRegistry>,
    policies: HashMap<String, PolicyKind>,
    version_headers: HashMap<String, String>,
    targets: HashMap<EndpointRecord, Arc<dyn Target>>,
    stats: StatsByInstance,
    /// Counters of instances that left the catalog, since when.
    departed: HashMap<(String, String), (Arc<InstanceStats>, Instant)>,
    /// How long departed counters are kept.
    grace: Duration,
    unbindable: HashSet<EndpointRecord>,
    /// The router's own ingress: inboxes in its namespace are loops.
    ingress: Option<IngressOptions>,
    /// The key of the ingress's broker: its connections always stay.
    own_broker: Option<String>,
    /// Keys of the brokers this router may connect to (its own besides);
    /// empty: any.
    allowed_brokers: Vec<String>,
    /// The services followed, whose use the table notes.
    interest: Option<Arc<Interest>>,
    /// The router's zone and the services that prefer it.
    zones: ZoneRouting,
}

impl TableBuilder {
    /// A builder using `adapters` to bind targets and `policies` per service
    /// (round robin where none is given).
    pub fn new(adapters: Arc<AdapterRegistry>, policies: HashMap<String, PolicyKind>) -> Self {
        Self {
            adapters,
            policies,
            version_headers: HashMap::new(),
            targets: HashMap::new(),
            stats: HashMap::new(),
            departed: HashMap::new(),
            grace: DEPARTED_GRACE,
            unbindable: HashSet::new(),
            ingress: None,
            own_broker: None,
            allowed_brokers: Vec::new(),
            interest: None,
            zones: ZoneRouting::default(),
        }
    }

    /// Routes the services `zones` names to the router's zone first.
    pub fn with_zone_routing(mut self, zones: ZoneRouting) -> Self {
        self.zones = zones;
        self
    }

    /// Notes each message's service in `interest`, so that services not
    /// routed to for a while are followed no more.
    pub fn with_interest(mut self, interest: Arc<Interest>) -> Self {
        self.interest = Some(interest);
        self
    }

    /// Keeps a departed instance's counters for `grace` instead of
    /// [`DEPARTED_GRACE`].
    pub fn with_departed_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Refuses endpoints whose inbox lies in `ingress`'s namespace (routing
    /// loops), and with `allowed` brokers (URLs; the ingress's `broker`
    /// besides), endpoints on any other broker.
    pub fn with_ingress(
        mut self,
        broker: &str,
        ingress: IngressOptions,
        allowed: &[String],
    ) -> Self {
        self.ingress = Some(ingress);
        self.own_broker = Some(broker_key(broker));
        if !allowed.is_empty() {
            self.allowed_brokers = allowed.iter().map(|url| broker_key(url)).collect();
            self.allowed_brokers.push(broker_key(broker));
        }
        self
    }

    /// Whether this router may route to `endpoint`, before binding it.
    fn admit(&self, endpoint: &EndpointRecord) -> Result<(), EndpointRefusal> {
        if !self.allowed_brokers.is_empty()
            && !self.allowed_brokers.contains(&broker_key(&endpoint.broker))
        {
            return Err(EndpointRefusal::NotAllowed(format!(
                "broker {} is not in this router's allowed_brokers",
                redact_url(&endpoint.broker)
            )));
        }
        match &self.ingress {
            Some(ingress) => self.adapters.check_endpoint(
                &endpoint.adapter,
                &endpoint.broker,
                &endpoint.inbox,
                ingress,
            ),
            None => Ok(()),
        }
    }

    /// Routes each service of `headers` by version: a message whose header
    /// (the map's value) names a version goes only to that version.
    pub fn with_version_routing(mut self, headers: HashMap<String, String>) -> Self {
        self.version_headers = headers;
        self
    }

    /// The policy `service` uses.
    pub fn policy_of(&self, service: &str) -> PolicyKind {
        self.policies.get(service).copied().unwrap_or_default()
    }

    async fn bind(&mut self, endpoint: &EndpointRecord) -> Option<Arc<dyn Target>> {
        if let Some(target) = self.targets.get(endpoint) {
            return Some(target.clone());
        }
        let result = match (self.admit(endpoint), self.adapters.get(&endpoint.adapter)) {
            (Err(refusal), _) => Err(refusal),
            (Ok(()), Some(adapter)) => adapter
                .target(&Endpoint {
                    adapter: endpoint.adapter.clone(),
                    broker: endpoint.broker.clone(),
                    inbox: endpoint.inbox.clone(),
                })
                .await
                .map_err(|e| EndpointRefusal::Bind(e.to_string())),
            (Ok(()), None) => Err(EndpointRefusal::UnknownAdapter(format!(
                "adapter {:?} is not built into this baker-mq (available: {})",
                endpoint.adapter,
                self.adapters.names().join(", ")
            ))),
        };
        match result {
            Ok(target) => {
                self.targets.insert(endpoint.clone(), target.clone());
                Some(target)
            }
            Err(refusal) => {
                // Said once per endpoint while it stays in the catalog, not
                // per message or per catalog change.
                if self.unbindable.insert(endpoint.clone()) {
                    metrics::counter!("baker_records_refused_total", "reason" => refusal.label())
                        .increment(1);
                    tracing::warn!(adapter = %endpoint.adapter, broker = %redact_url(&endpoint.broker),
                        inbox = %endpoint.inbox, reason = %refusal, "not routing to this endpoint; skipping its instances");
                }
                None
            }
        }
    }

    /// A table for `catalog`.
    pub async fn build(&mut self, catalog: Arc<Catalog>) -> RoutingTable {
        let mut grouped: HashMap<String, Vec<InstanceRoute>> = HashMap::new();
        let mut live_endpoints = HashSet::new();
        let in_catalog: HashSet<(String, String)> = catalog
            .instances
            .iter()
            .map(|r| (r.service.clone(), r.id.clone()))
            .collect();
        for record in catalog.instances.iter().filter(|r| r.routable()) {
            let Some(target) = self.bind(&record.endpoint).await else {
                continue;
            };
            live_endpoints.insert(record.endpoint.clone());
            let key = (record.service.clone(), record.id.clone());
            // An instance back within the grace period keeps its counts.
            let back = self.departed.remove(&key).map(|(stats, _)| stats);
            let stats = self
                .stats
                .entry(key)
                .or_insert_with(|| back.unwrap_or_default())
                .clone();
            let crossed = (self.zones.zone_for(&record.service))
                .filter(|zone| record.zone.as_deref() != Some(*zone))
                .map(|_| {
                    let service = record.service.clone();
                    metrics::counter!("baker_zone_crossed_total", "service" => service)
                });
            grouped
                .entry(record.service.clone())
                .or_default()
                .push(InstanceRoute {
                    into_baker: !record.endpoint.inbox.starts_with('_'),
                    record: record.clone(),
                    target,
                    stats,
                    crossed,
                });
        }
        self.targets.retain(|e, _| live_endpoints.contains(e));
        // Refused endpoints are remembered (to say so once) only while a
        // record names them: the set stays as small as the catalog.
        let named: HashSet<&EndpointRecord> =
            catalog.instances.iter().map(|r| &r.endpoint).collect();
        self.unbindable.retain(|e| named.contains(e));
        // Connections to brokers no record names any more close, with their
        // reconnection loops (a router's own ingress broker stays).
        if let Some(own) = &self.own_broker {
            let in_use: HashSet<String> = std::iter::once(own.clone())
                .chain(named.iter().map(|e| broker_key(&e.broker)))
                .collect();
            for name in self.adapters.names() {
                if let Some(adapter) = self.adapters.get(name) {
                    adapter.forget_brokers(&in_use);
                }
            }
        }
        // A draining instance keeps its counts; a departed one keeps them
        // for the grace period (for the scrapes after it left), then drops
        // them.
        let now = Instant::now();
        let stats = std::mem::take(&mut self.stats);
        for (key, stats) in stats {
            if in_catalog.contains(&key) {
                self.stats.insert(key, stats);
            } else {
                self.departed.insert(key, (stats, now));
            }
        }
        let grace = self.grace;
        self.departed
            .retain(|key, (_, since)| since.elapsed() < grace && !in_catalog.contains(key));
        let services = grouped
            .into_iter()
            .map(|(service, instances)| {
                let kind = self.policy_of(&service);
                let zone = self.zones.zone_for(&service);
                let latency =
                    metrics::histogram!("baker_routing_seconds", "service" => service.clone());
                let versions = self.version_headers.get(&service).map(|header| {
                    let mut by_version: HashMap<String, Vec<InstanceRoute>> = HashMap::new();
                    for instance in &instances {
                        by_version
                            .entry(instance.record.version.clone())
                            .or_default()
                            .push(instance.clone());
                    }
                    VersionRoutes {
                        header: header.clone(),
                        groups: by_version
                            .into_iter()
                            .map(|(version, group)| {
                                let group = ServiceRoute::build(kind, group, latency.clone());
                                (version, group.prefer_zone(zone))
                            })
                            .collect(),
                    }
                });
                let mut route = ServiceRoute::build(kind, instances, latency).prefer_zone(zone);
                route.versions = versions;
                route.used = (self.interest.as_ref()).and_then(|i| i.use_of(&service));
                (service, route)
            })
            .collect();
        RoutingTable {
            services,
            stats: self.stats.clone(),
            departed: Arc::new(
                (self.departed.iter())
                    .map(|(key, (stats, since))| (key.clone(), stats.clone(), *since))
                    .collect(),
            ),
            grace: self.grace,
            catalog,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Status;
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
