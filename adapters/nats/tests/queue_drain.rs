//! The NATS ingress stops with `Subscriber::drain`, and the graceful handover
//! between routers relies on it losing nothing: every message the server sent
//! to the drained member before it read the UNSUB must still come out of the
//! subscription. async-nats 0.51 closed the subscription one poll after
//! writing the UNSUB, dropping what was still on the wire; the workspace
//! patches it (vendor/README.md). This test fails without that patch.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baker_adapter_nats::async_nats;
use futures::StreamExt;

const TOTAL: u64 = 40_000;

async fn connect() -> async_nats::Client {
    let url =
        std::env::var("BAKER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    async_nats::connect(&url).await.unwrap_or_else(|e| {
        panic!("NATS at {url} does not answer ({e}); integration/run.sh starts it")
    })
}

fn sequence(message: &async_nats::Message) -> u64 {
    std::str::from_utf8(&message.payload[..8])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("the payload starts with a sequence number")
}

/// Records every sequence number `subscriber` yields until it ends.
fn record(
    mut subscriber: async_nats::Subscriber,
    seen: Arc<Mutex<Vec<u64>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            seen.lock().unwrap().push(sequence(&message));
        }
    })
}

/// Publishes `TOTAL` numbered messages at full speed from a thread of its own,
/// so that it goes on while the test's runtime is blocked.
fn publish_from_another_thread(subject: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let publisher = connect().await;
            let filler = vec![b'x'; 512];
            for n in 0..TOTAL {
                let mut body = format!("{n:08}").into_bytes();
                body.extend_from_slice(&filler);
                publisher
                    .publish(subject.clone(), body.into())
                    .await
                    .unwrap();
            }
            publisher.flush().await.unwrap();
        })
    })
}

// One thread: blocking it stands for a router too busy to read its socket.
#[tokio::test(flavor = "current_thread")]
async fn a_drained_queue_member_hands_over_every_message_it_was_sent() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let subject = format!("_baker_test.drain.{}.{nanos}", std::process::id());
    let leaving = connect().await;
    let staying = connect().await;
    let mut leaving_sub = leaving
        .queue_subscribe(subject.clone(), "q".into())
        .await
        .unwrap();
    let staying_sub = staying
        .queue_subscribe(subject.clone(), "q".into())
        .await
        .unwrap();
    leaving.flush().await.unwrap();
    staying.flush().await.unwrap();
    let staying_seen = Arc::new(Mutex::new(Vec::new()));
    let staying_task = record(staying_sub, staying_seen.clone());
    let publishing = publish_from_another_thread(subject);

    let mut leaving_seen = Vec::new();
    while leaving_seen.len() < TOTAL as usize / 8 {
        let message = tokio::time::timeout(Duration::from_secs(20), leaving_sub.next())
            .await
            .expect("the leaving member receives its share")
            .unwrap();
        leaving_seen.push(sequence(&message));
    }
    // Busy: the server's backlog for this member grows past what the socket
    // holds, so that messages it sent before the UNSUB arrive well after it.
    std::thread::sleep(Duration::from_millis(100));
    leaving_sub.drain().await.unwrap();
    leaving.flush().await.unwrap();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(20), leaving_sub.next())
        .await
        .expect("the drained subscription ends")
    {
        leaving_seen.push(sequence(&message));
    }
    publishing.join().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while staying_seen.lock().unwrap().len() + leaving_seen.len() < TOTAL as usize
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    staying_task.abort();

    let staying_seen = staying_seen.lock().unwrap();
    let seen: HashSet<u64> = leaving_seen
        .iter()
        .chain(staying_seen.iter())
        .copied()
        .collect();
    let missing: Vec<u64> = (0..TOTAL).filter(|n| !seen.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {TOTAL} lost (the drained member got {}, the other {}); first missing {:?}",
        missing.len(),
        leaving_seen.len(),
        staying_seen.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        leaving_seen.len() + staying_seen.len(),
        TOTAL as usize,
        "each message once"
    );
}
