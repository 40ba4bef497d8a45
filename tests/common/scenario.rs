//! The scenario suite's frame: each behaviour written once against
//! [`Protocol`], run for every protocol that has it (a test is named
//! `<scenario>::<protocol>`), and the checks they share.

use std::time::Duration;

use super::protocols::Protocol;
use super::{scaled, tally, Inbox, Router};

/// Runs `scenario` on each protocol listed, one test each.
#[macro_export]
macro_rules! scenario {
    ($scenario:ident: $($test:ident => $protocol:ident),+ $(,)?) => {
        mod $scenario {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    tokio::time::timeout(
                        super::scaled(super::TEST_TIMEOUT),
                        super::$scenario::<super::$protocol>(),
                    )
                    .await
                    .expect("test timed out");
                }
            )+
        }
    };
}

/// Router number `number` on `protocol`'s ingress, once it is ready.
/// A router following only `service` (declared, as an operator would to
/// see it routed before the first message).
pub async fn start_router<P: Protocol>(
    directory: &str,
    protocol: &P,
    number: usize,
    service: &str,
) -> Router {
    let mut args = protocol.router_args(number);
    args.extend(["--watch".to_owned(), service.to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Router::spawn(directory, &args).await
}

/// Waits until `total` distinct messages arrived across `inboxes`, lets late
/// copies land, then checks that none is missing and none came twice.
pub async fn assert_every_message_once<P: Protocol>(protocol: &P, inboxes: &[&Inbox], total: u64) {
    // Not `wait_until`: a shortfall is reported with its numbers below.
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(90));
    while tally(inboxes).1.len() < total as usize && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(protocol.settle()).await;
    let (duplicates, seen) = tally(inboxes);
    // Which ones, if any: the ranges of missing sequence numbers.
    let mut missing: Vec<(u64, u64)> = Vec::new();
    for seq in (0..total).filter(|seq| !seen.contains_key(seq)) {
        match missing.last_mut() {
            Some((_, end)) if *end + 1 == seq => *end = seq,
            _ => missing.push((seq, seq)),
        }
    }
    let counts: Vec<usize> = inboxes.iter().map(|i| i.count()).collect();
    assert_eq!(
        seen.len(),
        total as usize,
        "none lost; missing {missing:?}; per inbox {counts:?}"
    );
    assert_eq!(duplicates, 0, "none duplicated");
}
