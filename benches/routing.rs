//! Routing decision time: `table.service(..)` plus `policy.pick(..)` on a real
//! routing table, for every policy kind, with 10 and 1,000 instances.
//!
//! The table is built the way the router builds it (a `Catalog` of instance
//! records bound through the builtin adapters by `TableBuilder`), with memory
//! adapter endpoints so no broker is needed.
//!
//! Run with `cargo bench --bench routing`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::{header, Message};
use baker_mq::adapters::AdapterRegistry;
use baker_mq::directory::{Catalog, EndpointRecord, InstanceRecord, Status};
use baker_mq::router::policy::{Pick, PolicyKind};
use baker_mq::router::{RoutingTable, TableBuilder};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SERVICE: &str = "bench";
const SIZES: [usize; 2] = [10, 1_000];
/// Distinct messages cycled through (a power of two, so the index is a mask).
const MESSAGES: usize = 4_096;

fn catalog(instances: usize) -> Catalog {
    let instances = (0..instances)
        .map(|i| {
            let id = format!("i{i:05}");
            InstanceRecord {
                service: SERVICE.to_owned(),
                endpoint: EndpointRecord {
                    adapter: "memory".to_owned(),
                    broker: "memory://bench".to_owned(),
                    inbox: format!("_baker.bench.{id}"),
                },
                id,
                version: "1.0.0".to_owned(),
                // Uneven weights, so `weighted` has a real cumulative table.
                weight: 50 + (i as u32 % 5) * 25,
                zone: None,
                metadata: Default::default(),
                status: Status::Passing,
                ttl_secs: 10,
            }
        })
        .collect();
    Catalog {
        epoch: 1,
        index: 1,
        instances,
    }
}

fn table(runtime: &tokio::runtime::Runtime, kind: PolicyKind, instances: usize) -> RoutingTable {
    let policies = HashMap::from([(SERVICE.to_owned(), kind)]);
    let table = runtime.block_on(async {
        TableBuilder::new(Arc::new(AdapterRegistry::builtin()), policies)
            .build(Arc::new(catalog(instances)))
            .await
    });
    let service = table
        .service(SERVICE)
        .expect("the bench service has routing state");
    assert_eq!(service.kind, kind);
    assert_eq!(
        service.instances.len(),
        instances,
        "every instance is routable"
    );
    table
}

/// Messages with a distinct `baker-key` each (only `consistent_hash` reads
/// it; every policy gets the same messages so the loop costs the same).
fn messages() -> Vec<Message> {
    (0..MESSAGES)
        .map(|k| {
            let mut m = Message {
                payload: bytes::Bytes::from_static(&[0u8; 128]),
                ..Message::default()
            };
            m.headers.insert(header::KEY, format!("customer-{k}"));
            m
        })
        .collect()
}

fn routing(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let messages = messages();
    let mut group = c.benchmark_group("routing_decision");
    group
        .throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for kind in PolicyKind::ALL {
        for n in SIZES {
            let table = table(&runtime, kind, n);
            // Sanity: the decision is a valid one for this policy.
            let s = table.service(SERVICE).unwrap();
            match s.policy.pick(&s.instances, &messages[0]) {
                Pick::One(i) => assert!(i < n && kind != PolicyKind::Broadcast),
                Pick::All => assert_eq!(kind, PolicyKind::Broadcast),
                Pick::Nobody => panic!("{kind} picked nobody"),
            }
            let mut next = 0usize;
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &table, |b, table| {
                b.iter(|| {
                    let msg = &messages[next & (MESSAGES - 1)];
                    next = next.wrapping_add(1);
                    let s = black_box(table).service(SERVICE).unwrap();
                    black_box(s.policy.pick(&s.instances, black_box(msg)))
                })
            });
        }
    }
    group.finish();
}

/// Builds the table itself (off the message path, on every catalog change):
/// shown for scale next to the per-message decision.
fn table_build(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("table_build_1000");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for kind in [PolicyKind::RoundRobin, PolicyKind::ConsistentHash] {
        let catalog = Arc::new(catalog(1_000));
        let policies = HashMap::from([(SERVICE.to_owned(), kind)]);
        let mut builder = TableBuilder::new(Arc::new(AdapterRegistry::builtin()), policies);
        group.bench_function(kind.as_str(), |b| {
            b.iter(|| runtime.block_on(builder.build(catalog.clone())))
        });
    }
    group.finish();
}

criterion_group!(benches, routing, table_build);
criterion_main!(benches);
