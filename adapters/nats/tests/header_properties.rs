//! Property tests of what Baker's NATS headers go through, on the wire of a
//! real nats-server: every header either arrives exactly as it was or is
//! left out and counted (never altered, never a lost connection), and any
//! header block a publisher sends, however malformed, costs no message.

use std::sync::LazyLock;
use std::time::Duration;

use baker_adapter_api::Headers;
use baker_adapter_nats::{async_nats, headers_from_nats, headers_to_nats};
use futures::StreamExt;
use proptest::prelude::*;
use tokio::runtime::Runtime;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| Runtime::new().unwrap());

fn url() -> String {
    std::env::var("BAKER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// One connection for every case: a publisher and its own subscription.
struct Wire {
    client: async_nats::Client,
    subject: String,
    received: tokio::sync::Mutex<async_nats::Subscriber>,
}

/// A connection and a subscription of its own for `test`.
fn wire(test: &str) -> Wire {
    RUNTIME.block_on(async {
        let client = async_nats::connect(url()).await.unwrap_or_else(|e| {
            panic!(
                "NATS at {} does not answer ({e}); integration/run.sh starts it",
                url()
            )
        });
        let subject = format!("headers.{test}.{}", std::process::id());
        let received = client.subscribe(subject.clone()).await.unwrap();
        client.flush().await.unwrap();
        Wire {
            client,
            subject,
            received: tokio::sync::Mutex::new(received),
        }
    })
}

static CONVERTED: LazyLock<Wire> = LazyLock::new(|| wire("converted"));
static RAW: LazyLock<Wire> = LazyLock::new(|| wire("raw"));

/// Few cases, each a round trip through the server; failures are printed,
/// not saved into the source tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Sends `headers` through the server and back.
fn through_the_wire(headers: &Headers) -> (Headers, usize) {
    let wire = &*CONVERTED;
    RUNTIME.block_on(async {
        let (map, skipped) = headers_to_nats(headers);
        wire.client
            .publish_with_headers(wire.subject.clone(), map, "x".into())
            .await
            .unwrap();
        let mut received = wire.received.lock().await;
        let message = tokio::time::timeout(Duration::from_secs(5), received.next())
            .await
            .expect("the message comes back: the connection survived")
            .unwrap();
        (headers_from_nats(message.headers.as_ref()), skipped)
    })
}

/// Header names and values as other protocols (MQTT user properties, AMQP
/// headers) may bring them: any text, weighted towards the edges.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9-]{1,12}",
        " ?[a-z]{0,5}[ :\t]?[a-z]{0,5} ?",
        "\\PC{0,8}",
        ".{0,8}",
    ]
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn a_header_arrives_exactly_or_is_left_out_and_counted(
        pairs in proptest::collection::vec((text(), text()), 0..6),
    ) {
        let mut headers = Headers::default();
        for (name, value) in &pairs {
            headers.append(name.clone(), value.clone());
        }
        let (arrived, skipped) = through_the_wire(&headers);
        prop_assert_eq!(arrived.len() + skipped, headers.len());
        // What arrived is what was sent, minus what was left out: the values
        // of one name in their order (NATS keeps no order between names).
        let values = |h: &Headers, name: &str| -> Vec<String> {
            h.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.to_owned()).collect()
        };
        for (name, _) in arrived.iter() {
            let sent = values(&headers, name);
            let mut sent = sent.iter();
            for value in values(&arrived, name) {
                prop_assert!(
                    sent.any(|v| *v == value),
                    "{name:?}: {value:?} was not sent as such: {headers:?}"
                );
            }
        }
    }
}

/// Publishes `payload` with the header block `block` (after `NATS/1.0`)
/// over a raw connection, as any publisher may.
async fn publish_raw(subject: &str, block: &[u8], payload: &[u8]) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let address = url().trim_start_matches("nats://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _info = lines.next_line().await.unwrap();
    let header = [b"NATS/1.0\r\n".as_slice(), block, b"\r\n\r\n"].concat();
    let mut frame = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nHPUB {subject} {} {}\r\n",
        header.len(),
        header.len() + payload.len()
    )
    .into_bytes();
    frame.extend_from_slice(&header);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&frame).await.unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        if line == "PONG" {
            break;
        }
    }
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn any_header_block_a_publisher_sends_costs_the_receiver_nothing(
        block in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let wire = &*RAW;
        let delivered = RUNTIME.block_on(async {
            publish_raw(&wire.subject, &block, b"raw").await;
            // And a good one behind it, on the receiver's own connection.
            wire.client
                .publish(wire.subject.clone(), "good".into())
                .await
                .unwrap();
            let mut received = wire.received.lock().await;
            let mut payloads = Vec::new();
            while payloads.len() < 2 {
                match tokio::time::timeout(Duration::from_secs(5), received.next()).await {
                    Ok(Some(message)) => payloads.push(message.payload),
                    _ => break,
                }
            }
            payloads
        });
        prop_assert_eq!(delivered.len(), 2, "the receiver's connection survived");
        prop_assert_eq!(delivered[1].as_ref(), b"good");
    }
}
