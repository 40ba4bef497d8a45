//! Fixtures for tests of the crates that use the records (feature
//! `testing`).

use crate::{EndpointRecord, InstanceRecord, Status};

/// A passing record of `service`/`id` on the in-process broker, with a lease
/// of `ttl_secs`.
pub fn record(service: &str, id: &str, ttl_secs: u64) -> InstanceRecord {
    InstanceRecord {
        service: service.into(),
        id: id.into(),
        version: "1".into(),
        endpoint: EndpointRecord {
            adapter: "memory".into(),
            broker: "memory://t".into(),
            inbox: format!("_baker.{service}.{id}"),
        },
        weight: 100,
        zone: None,
        metadata: Default::default(),
        status: Status::Passing,
        ttl_secs,
    }
}
