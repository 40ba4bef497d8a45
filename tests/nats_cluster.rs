//! Several hosts, simulated: a 3-node NATS cluster on loopback ports, with
//! the JetStream ingress, the durable inboxes and the directory's bucket all
//! replicated three times, routers and agents attached to different nodes,
//! and one node killed in the middle of the stream.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::nats_server::NatsCluster;
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(240);

/// Publishes `0..total` through JetStream, each with a `Nats-Msg-Id`, so a
/// publish retried after a lost ack (a node killed under it) is stored once.
async fn publish_with_retries(js: jetstream::Context, subject: String, total: u64) -> u64 {
    let mut retries = 0;
    for seq in 0..total {
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", seq.to_string().as_str());
            let sent = async {
                js.publish_with_headers(subject.clone(), headers, seq.to_string().into())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            };
            match tokio::time::timeout(Duration::from_secs(5), sent).await {
                Ok(Ok(_)) => break,
                _ => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if seq % 50 == 49 {
            // Paced, so the node is killed with the stream under way.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    retries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_loses_a_node_mid_stream_and_routing_and_the_directory_go_on() {
    bounded(TEST_TIMEOUT, async {
        let mut cluster = NatsCluster::start().await;
        let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
        let node = |i: usize| urls[i].clone();
        // Each process is given one node; async-nats learns the others from
        // the cluster and fails over to them.
        let directory = |i: usize| format!("{}?replicas=3", node(i));
        let service = unique("cluster");
        let ingress = Ingress::new();
        let ids = ["a", "b", "c"];
        let mut agents: Vec<Proc> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                agent_on(
                    "nats",
                    &format!("{}?inbox=jetstream&replicas=3", node(i)),
                    &directory(i),
                    &service,
                    id,
                    &[],
                )
            })
            .collect();
        let router_on = |i: usize| {
            let broker = format!("{}?replicas=3&ingress=jetstream", node(i));
            let prefix = ingress.prefix.clone();
            let group = ingress.group.clone();
            let dir = directory(i);
            // One router reads only its service's keys, the other the whole
            // bucket: both ways of following it live through the node loss.
            let watch = if i == 0 { service.clone() } else { "*".to_owned() };
            async move {
                Router::spawn(
                    &dir,
                    &[
                        "--adapter",
                        "nats",
                        "--broker",
                        &broker,
                        "--ingress-prefix",
                        &prefix,
                        "--queue-group",
                        &group,
                        "--watch",
                        &watch,
                    ],
                )
                .await
            }
        };
        let routers = [router_on(0).await, router_on(1).await];
        for router in &routers {
            router
                .wait_routed(&service, &ids, Duration::from_secs(30))
                .await;
        }

        let client = async_nats::connect(cluster.addrs()).await.unwrap();
        let js = jetstream::new(client);
        let mut inboxes = Vec::new();
        for id in ids {
            inboxes.push(consume_durable_inbox(&js, &format!("_baker.{service}.{id}")).await);
        }
        let total = 15_000u64;
        let publisher = tokio::spawn(publish_with_retries(
            js.clone(),
            ingress.subject(&service, "t"),
            total,
        ));

        // Node 1 holds router 1's and agent b's connections.
        wait_until("the stream under way", Duration::from_secs(60), || async {
            inboxes.iter().map(Inbox::count).sum::<usize>() >= 3000
        })
        .await;
        assert!(!publisher.is_finished(), "killed mid-stream");
        cluster.nodes[1].kill();

        // The directory goes on: a new instance registered through node 2
        // reaches both routers.
        let _d_inbox_agent = agent_on(
            "nats",
            &format!("{}?inbox=jetstream&replicas=3", node(2)),
            &directory(2),
            &service,
            "d",
            &[],
        );
        for router in &routers {
            router
                .wait_routed(&service, &["a", "b", "c", "d"], Duration::from_secs(30))
                .await;
        }
        inboxes.push(consume_durable_inbox(&js, &format!("_baker.{service}.d")).await);

        let retries = publisher.await.unwrap();
        let inbox_refs: Vec<&Inbox> = inboxes.iter().collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while tally(&inbox_refs).1.len() < total as usize {
            if std::time::Instant::now() > deadline {
                let seen = tally(&inbox_refs).1;
                let missing: Vec<u64> = (0..total).filter(|s| !seen.contains_key(s)).take(20).collect();
                let counts: Vec<usize> = inboxes.iter().map(Inbox::count).collect();
                panic!("not every message delivered: {} of {total}, per instance {counts:?}, first missing {missing:?}", seen.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (duplicates, seen) = tally(&inbox_refs);
        let counts: Vec<usize> = inboxes.iter().map(Inbox::count).collect();
        eprintln!(
            "3-node cluster, node killed mid-stream: {total} sent ({retries} publishes retried), \
             {} delivered, {duplicates} twice; per instance {counts:?}",
            seen.len()
        );
        assert_eq!(seen.len(), total as usize, "every message at least once");

        // The node comes back and rejoins: the directory's bucket has all
        // three replicas current again.
        cluster.nodes[1].start().await;
        wait_until("node 1 current in the bucket's group", Duration::from_secs(60), || {
            let js = js.clone();
            async move {
                let Ok(mut stream) = js.get_stream("KV_baker-directory").await else {
                    return false;
                };
                let Ok(info) = stream.info().await else {
                    return false;
                };
                info.cluster.as_ref().is_some_and(|c| {
                    c.leader.is_some()
                        && c.replicas.len() == 2
                        && c.replicas.iter().all(|r| r.current)
                })
            }
        })
        .await;
        for router in &routers {
            router
                .wait_routed(&service, &["a", "b", "c", "d"], Duration::from_secs(30))
                .await;
        }
        for agent in &mut agents {
            agent.kill();
        }
    })
    .await;
}
