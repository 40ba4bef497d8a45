//! Zone-aware routing: a router that knows its zone sends a service's
//! messages to the instances in that zone, and to the others only while
//! none there can take them.
//!
//! The choice is made per message from the table built for the catalog: a
//! service routed by zone keeps, beside all its instances, the group of
//! those in the router's zone. A message goes to that group while one of
//! its instances is admitted (not ejected, and not of weight 0 under the
//! weighted policy); otherwise to every routable instance, all zones
//! together. Strict, as the first cut: no share spills over while the
//! local zone has an admitted instance, however few it has (Envoy spills
//! a share when the local zone is short of healthy hosts; Baker does not,
//! so a zone never gets traffic it was not sized for while its own is up).
//! The broadcast policy ignores zones: it is a copy to every instance.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether a service's messages prefer the router's zone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ZoneMode {
    /// Only instances in the router's zone while one of them is admitted;
    /// every zone once none is.
    #[default]
    Strict,
    /// Every instance, whatever its zone.
    Off,
}

impl std::str::FromStr for ZoneMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" => Ok(Self::Strict),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown zone routing {other:?} (expected strict or off)"
            )),
        }
    }
}

/// The key in the zone routing settings that applies to every service not
/// named on its own.
pub const EVERY_SERVICE: &str = "*";

/// The router's zone and which services prefer it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneRouting {
    /// The router's zone; nothing is routed by zone without one.
    pub zone: Option<String>,
    /// Per service, or for every service under [`EVERY_SERVICE`].
    pub modes: HashMap<String, ZoneMode>,
}

impl ZoneRouting {
    /// The zone `service`'s messages prefer, if they prefer one.
    pub fn zone_for(&self, service: &str) -> Option<&str> {
        let zone = self.zone.as_deref()?;
        let mode = (self.modes.get(service))
            .or_else(|| self.modes.get(EVERY_SERVICE))
            .copied()
            .unwrap_or(ZoneMode::Off);
        (mode == ZoneMode::Strict).then_some(zone)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use baker_adapter_api::Message;
    use baker_directory_api::testing::record;

    use super::*;
    use crate::adapters::AdapterRegistry;
    use crate::directory::{Catalog, InstanceRecord};
    use crate::router::outlier::OutlierConfig;
    use crate::router::table::RoutingTable;
    use crate::router::PolicyKind;
    use crate::router::TableBuilder;

    /// `s` with instances `z1a`, `z1b` in zone z1, `z2` in z2 and `z3` in z3
    /// (and those of `extra`), routed by a router in z1 with `policy`.
    async fn table(policy: PolicyKind, mode: ZoneMode, extra: &[&str]) -> RoutingTable {
        let zoned = |id: &str, zone: &str| InstanceRecord {
            zone: Some(zone.to_owned()),
            ..record("s", id, 5)
        };
        let mut records = vec![zoned("z1a", "z1"), zoned("z1b", "z1"), zoned("z2", "z2")];
        records.push(zoned("z3", "z3"));
        records.extend(extra.iter().map(|id| record("s", id, 5)));
        let zones = ZoneRouting {
            zone: Some("z1".into()),
            modes: HashMap::from([("s".to_owned(), mode)]),
        };
        let policies = HashMap::from([("s".to_owned(), policy)]);
        TableBuilder::new(Arc::new(AdapterRegistry::builtin()), policies)
            .with_zone_routing(zones)
            .build(Arc::new(Catalog {
                epoch: 1,
                index: 1,
                instances: records,
            }))
            .await
    }

    /// The ids of the instances a message may go to.
    fn candidates(table: &RoutingTable) -> Vec<String> {
        let service = table.service("s").unwrap();
        let group = service.for_message(&Message::default()).unwrap();
        group
            .instances
            .iter()
            .map(|i| i.record.id.clone())
            .collect()
    }

    fn eject(table: &RoutingTable, id: &str) {
        let config = OutlierConfig {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(60),
        };
        table.stats("s", id).unwrap().outlier.failed(&config);
    }

    #[tokio::test]
    async fn messages_stay_in_the_routers_zone_until_none_there_can_take_them() {
        let table = table(PolicyKind::RoundRobin, ZoneMode::Strict, &["nozone"]).await;
        let service = table.service("s").unwrap();
        assert_eq!(candidates(&table), ["z1a", "z1b"]);
        eject(&table, "z1a");
        assert_eq!(candidates(&table), ["z1a", "z1b"], "z1b still takes them");
        assert!(!service.failing_over());
        eject(&table, "z1b");
        assert!(service.failing_over());
        assert_eq!(
            candidates(&table),
            ["z1a", "z1b", "z2", "z3", "nozone"],
            "every zone once none in z1 can"
        );
    }

    #[tokio::test]
    async fn a_zone_emptied_of_instances_fails_over_to_every_other() {
        let zones = ZoneRouting {
            zone: Some("z9".into()),
            modes: HashMap::from([(EVERY_SERVICE.to_owned(), ZoneMode::Strict)]),
        };
        let mut builder = TableBuilder::new(Arc::new(AdapterRegistry::builtin()), HashMap::new())
            .with_zone_routing(zones);
        let mut in_z2 = record("s", "b", 5);
        in_z2.zone = Some("z2".into());
        let table = builder
            .build(Arc::new(Catalog {
                epoch: 1,
                index: 1,
                instances: vec![record("s", "a", 5), in_z2],
            }))
            .await;
        assert_eq!(candidates(&table), ["a", "b"]);
        assert!(table.service("s").unwrap().failing_over());
    }

    #[tokio::test]
    async fn off_and_broadcast_ignore_zones() {
        let all = ["z1a", "z1b", "z2", "z3"];
        let off = table(PolicyKind::RoundRobin, ZoneMode::Off, &[]).await;
        assert_eq!(candidates(&off), all);
        let broadcast = table(PolicyKind::Broadcast, ZoneMode::Strict, &[]).await;
        assert_eq!(candidates(&broadcast), all, "a copy to every instance");
    }

    #[tokio::test]
    async fn deliveries_are_counted_as_crossing_zones_only_outside_the_routers() {
        let table = table(PolicyKind::RoundRobin, ZoneMode::Strict, &[]).await;
        let instances = &table.service("s").unwrap().instances;
        let crossing: Vec<&str> = (instances.iter())
            .filter(|i| i.crossed.is_some())
            .map(|i| i.record.id.as_str())
            .collect();
        assert_eq!(crossing, ["z2", "z3"]);
        let off = self::table(PolicyKind::RoundRobin, ZoneMode::Off, &[]).await;
        assert!(off
            .service("s")
            .unwrap()
            .instances
            .iter()
            .all(|i| i.crossed.is_none()));
    }

    #[test]
    fn a_service_prefers_the_zone_only_when_it_or_every_service_is_routed_by_zone() {
        let mut routing = ZoneRouting {
            zone: Some("z1".into()),
            modes: HashMap::from([("orders".to_owned(), ZoneMode::Strict)]),
        };
        assert_eq!(routing.zone_for("orders"), Some("z1"));
        assert_eq!(routing.zone_for("billing"), None);
        routing.modes.insert(EVERY_SERVICE.into(), ZoneMode::Strict);
        routing.modes.insert("billing".into(), ZoneMode::Off);
        assert_eq!(
            routing.zone_for("billing"),
            None,
            "a service's own entry wins"
        );
        assert_eq!(routing.zone_for("audit"), Some("z1"));
        routing.zone = None;
        assert_eq!(
            routing.zone_for("orders"),
            None,
            "no zone, nothing to prefer"
        );
    }
}
