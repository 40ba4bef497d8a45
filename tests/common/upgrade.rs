//! The steps and checks of a rolling upgrade under traffic.

use std::process::Command;
use std::time::Duration;

use super::*;

/// Starts draining the instance `id` of `agent` (SIGTERM) and waits until
/// `router` no longer routes to it. Returns the cutoff: no message from it
/// on may reach the instance.
pub async fn begin_drain(
    router: &Router,
    service: &str,
    id: &str,
    agent: &Proc,
    traffic: &SteadyTraffic,
) -> u64 {
    Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    wait_until(
        "the router stops routing to the draining instance",
        Duration::from_secs(10),
        || async { !router.routed(service).await.iter().any(|r| r == id) },
    )
    .await;
    traffic.cutoff()
}

/// The checks of a rolling upgrade once the traffic stopped at `total`:
/// every message delivered, and none published after an old instance's
/// drain began reached it (`old[i]` drained from `cutoffs[i]`). Returns the
/// duplicates.
pub async fn assert_rolling_upgrade(
    all: &[&Inbox],
    old: &[&Inbox],
    cutoffs: &[u64],
    total: u64,
) -> usize {
    wait_until(
        "every message delivered",
        Duration::from_secs(30),
        || async { tally(all).1.len() as u64 >= total },
    )
    .await;
    let (duplicates, seen) = tally(all);
    assert_eq!(seen.len() as u64, total, "none lost");
    for (i, (inbox, cutoff)) in old.iter().zip(cutoffs).enumerate() {
        let late = inbox.seqs().into_iter().filter(|s| s >= cutoff).count();
        assert_eq!(
            late, 0,
            "old instance {i} got messages published after its drain began"
        );
    }
    duplicates
}

/// The second half of a rolling upgrade whose old instances (`inboxes[..n]`,
/// `old_agents`) need nothing but their drain: drains and stops them one at
/// a time, stops the traffic, and checks what [`assert_rolling_upgrade`]
/// checks, and that everything after the last drain went to the new ones.
/// Returns the messages published and the duplicates.
pub async fn drain_old_instances(
    router: &Router,
    service: &str,
    old_agents: &mut [Proc],
    traffic: SteadyTraffic,
    inboxes: &[Inbox],
) -> (u64, usize) {
    let mut cutoffs = Vec::new();
    for (i, agent) in old_agents.iter_mut().enumerate() {
        let id = format!("v1-{i}");
        cutoffs.push(begin_drain(router, service, &id, agent, &traffic).await);
        assert_eq!(
            agent.terminate(Duration::from_secs(40)),
            Some(0),
            "{id}'s agent drains and exits 0: {}",
            agent.log_text()
        );
    }
    let after_old = traffic.published();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = traffic.stop().await;
    let all: Vec<&Inbox> = inboxes.iter().collect();
    let old = old_agents.len();
    let duplicates = assert_rolling_upgrade(&all, &all[..old], &cutoffs, total).await;
    let to_new_after: usize = inboxes[old..]
        .iter()
        .map(|inbox| inbox.seqs().iter().filter(|s| **s >= after_old).count())
        .sum();
    assert!(
        to_new_after as u64 >= total - after_old,
        "everything after the last drain went to the new instances"
    );
    (total, duplicates)
}
