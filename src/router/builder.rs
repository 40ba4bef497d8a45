//! Building routing tables from the directory's catalog: binding each
//! instance's endpoint to a target (once, reused across tables), carrying
//! counters over, and grouping instances by service, version, zone and
//! shadow rule.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baker_adapter_api::{broker_key, redact_url, Endpoint, IngressOptions, Target};

use super::policy::PolicyKind;
use super::shadow::{ShadowRoute, ShadowRule, ShadowStates};
use super::table::InstanceStats;
use super::table::{
    InstanceRoute, RoutingTable, ServiceRoute, StatsByInstance, VersionRoutes, DEPARTED_GRACE,
};
use super::zones::ZoneRouting;
use crate::adapters::{AdapterRegistry, EndpointRefusal};
use crate::directory::interest::Interest;
use crate::directory::{Catalog, EndpointRecord};

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
    /// Shadow rules by service, and their counters.
    shadows: HashMap<String, ShadowRule>,
    shadow_states: ShadowStates,
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
            shadows: HashMap::new(),
            shadow_states: HashMap::new(),
        }
    }

    /// Copies a share of each service's messages of `rules` to its
    /// instances of the rule's version, which get nothing else.
    pub fn with_shadows(mut self, rules: HashMap<String, ShadowRule>) -> Self {
        self.shadow_states = (rules.keys())
            .map(|service| (service.clone(), Arc::default()))
            .collect();
        self.shadows = rules;
        self
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

    /// The counters of `service`'s shadow rule, if it has one.
    #[cfg(test)]
    pub fn shadow_state(&self, service: &str) -> Option<Arc<super::shadow::ShadowState>> {
        self.shadow_states.get(service).cloned()
    }

    /// `instances` of `service` less those its shadow rule sends copies to,
    /// and its shadow routing over those, if it has a rule.
    fn shadow_of(
        &self,
        service: &str,
        kind: PolicyKind,
        instances: Vec<InstanceRoute>,
    ) -> (Vec<InstanceRoute>, Option<ShadowRoute>) {
        let (Some(rule), Some(state)) =
            (self.shadows.get(service), self.shadow_states.get(service))
        else {
            return (instances, None);
        };
        let (shadowed, regular): (Vec<_>, Vec<_>) =
            (instances.into_iter()).partition(|i| i.record.version == rule.version);
        // A copy goes to one instance, whatever the service's policy.
        let kind = match kind {
            PolicyKind::Broadcast => PolicyKind::RoundRobin,
            other => other,
        };
        let latency = metrics::histogram!("baker_routing_seconds", "service" => service.to_owned());
        let group = (!shadowed.is_empty()).then(|| ServiceRoute::build(kind, shadowed, latency));
        let route = ShadowRoute::new(service, rule.clone(), state.clone(), group);
        (regular, Some(route))
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
            .filter_map(|(service, instances)| {
                let kind = self.policy_of(&service);
                let (instances, shadow) = self.shadow_of(&service, kind, instances);
                if instances.is_empty() {
                    return None;
                }
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
                route.shadow = shadow;
                Some((service, route))
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
