//! What a router's watch of the directory returns: the changes of the
//! services it routes to since its last position, or all of their records
//! when it starts over.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::record::{Catalog, InstanceRecord};

/// Most services one watch may name: a router routes to a handful; a list
/// longer than this is a router that should watch everything instead.
pub const MAX_WATCHED_SERVICES: usize = 4096;

/// Why a record left the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemovalCause {
    /// Its agent removed it (the instance left on purpose).
    Deregistered,
    /// Its lease ran out without a renewal: the instance, or only the path
    /// between its agent and the directory, is gone.
    Lapsed,
}

/// A record that left the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Removal {
    /// Its service.
    pub service: String,
    /// Its instance id.
    pub id: String,
    /// Why it left.
    pub cause: RemovalCause,
}

/// The answer to a watch: a position and what changed up to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// The directory's epoch (see [`Catalog::epoch`]).
    pub epoch: u64,
    /// The directory's index at this answer: the next watch starts from it.
    pub index: u64,
    /// True: `instances` is every live record of the watched services, and
    /// the watcher's view of them starts over (a new watcher, a restarted
    /// directory, or one too far behind). False: `instances` are the records
    /// added or changed since the watcher's index, `removed` those that left.
    pub full: bool,
    /// Records (see `full`).
    #[serde(default)]
    pub instances: Vec<InstanceRecord>,
    /// Records that left since the watcher's index (never with `full`).
    #[serde(default)]
    pub removed: Vec<Removal>,
}

impl Changes {
    /// Every record of `services` in `catalog`, as a full answer.
    pub fn full_from(catalog: Catalog, services: &BTreeSet<String>) -> Self {
        Self {
            epoch: catalog.epoch,
            index: catalog.index,
            full: true,
            instances: (catalog.instances.into_iter())
                .filter(|record| services.contains(&record.service))
                .collect(),
            removed: Vec::new(),
        }
    }

    /// True when nothing changed (a watch that waited in vain).
    pub fn is_empty(&self) -> bool {
        !self.full && self.instances.is_empty() && self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EndpointRecord, Status};

    fn record(service: &str, id: &str) -> InstanceRecord {
        InstanceRecord {
            service: service.into(),
            id: id.into(),
            version: String::new(),
            endpoint: EndpointRecord {
                adapter: "memory".into(),
                broker: "memory://t".into(),
                inbox: "i".into(),
            },
            weight: 1,
            zone: None,
            metadata: Default::default(),
            status: Status::Passing,
            ttl_secs: 10,
        }
    }

    #[test]
    fn a_full_answer_keeps_only_the_watched_services() {
        let catalog = Catalog {
            epoch: 3,
            index: 9,
            instances: vec![record("a", "1"), record("b", "1"), record("c", "1")],
        };
        let watched = ["a", "c"].map(String::from).into_iter().collect();
        let changes = Changes::full_from(catalog, &watched);
        let kept: Vec<_> = changes.instances.iter().map(|r| &r.service).collect();
        assert_eq!(kept, ["a", "c"]);
        assert!(changes.full && !changes.is_empty());
        assert_eq!((changes.epoch, changes.index), (3, 9));
        let json = serde_json::to_string(&changes).unwrap();
        assert_eq!(serde_json::from_str::<Changes>(&json).unwrap(), changes);
    }
}
