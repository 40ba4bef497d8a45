//! The JetStream relay `jetstream_e2e` compares baker-mq against: this
//! bench's binary re-executed with `BAKER_BENCH_JS_RELAY=1`, a separate
//! process doing baker-mq's forwarding job at least once and nothing else.
//! It pulls from a durable consumer on its ingress stream (as baker-mq's
//! ingress does), publishes each message with ack to its inbox subject, and
//! acks the original only once that publish is acked (naks it for
//! redelivery when it failed), with at most `BAKER_BENCH_RELAY_MAX_IN_FLIGHT`
//! messages in flight. With `BAKER_BENCH_JS_RELAY_STAMP=1` it also stamps the
//! headers baker-mq adds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::AckPolicy;
use async_nats::jetstream::{self, AckKind, Context};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use crate::common::env_or;
use crate::common::nats::{inbox_subject, nats_url, run_relay};
use crate::ACK_WAIT;

/// Selects relay mode when this binary re-executes itself.
pub const RELAY_ENV: &str = "BAKER_BENCH_JS_RELAY";
pub const RELAY_STREAM_ENV: &str = "BAKER_BENCH_JS_RELAY_STREAM";
pub const RELAY_CONSUMER_ENV: &str = "BAKER_BENCH_JS_RELAY_CONSUMER";
pub const RELAY_PREFIX_ENV: &str = "BAKER_BENCH_JS_RELAY_PREFIX";
pub const RELAY_INSTANCE_ENV: &str = "BAKER_BENCH_JS_RELAY_INSTANCE";
/// Set to `1`: the relay stamps the headers baker-mq adds.
pub const RELAY_STAMP_ENV: &str = "BAKER_BENCH_JS_RELAY_STAMP";
/// The relay's bound on messages pulled but not yet settled.
pub const RELAY_MAX_IN_FLIGHT_ENV: &str = "BAKER_BENCH_RELAY_MAX_IN_FLIGHT";
/// baker-mq's default `max_in_flight`, the relay's default bound.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Counts the relay's failures; it reports the first few, never one line
/// per message.
static RELAY_ERRORS: AtomicUsize = AtomicUsize::new(0);

fn relay_error(what: &str, error: impl std::fmt::Display) {
    if RELAY_ERRORS.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("relay: {what}: {error}");
    }
}

/// What the relay needs for each message.
struct RelayConfig {
    js: Context,
    prefix_len: usize,
    instance: String,
    stamp: bool,
    /// For `baker-msg-id` when the stream sequence is not known.
    id_prefix: String,
}

/// Forwards one message: publishes it to its inbox subject, waits for the
/// inbox stream's ack, then acks the original (or naks it, for redelivery,
/// when the publish failed).
async fn forward(config: Arc<RelayConfig>, message: jetstream::Message, count: u64) {
    // As baker-mq: `<stream>:<stream sequence>`, the same on a redelivery.
    let stable_id = config.stamp.then(|| {
        message.info().map_or_else(
            |_| format!("{}-{count:x}", config.id_prefix),
            |info| format!("{}:{}", info.stream, info.stream_sequence),
        )
    });
    let (message, acker) = message.split();
    let Some(rest) = message.subject.get(config.prefix_len..) else {
        relay_error("subject outside the prefix", &message.subject);
        let _ = acker.ack_with(AckKind::Term).await;
        return;
    };
    let subject = inbox_subject(rest, &config.instance);
    let published = match stable_id {
        Some(id) => {
            let mut headers = message.headers.unwrap_or_default();
            headers.insert("baker-msg-id", id.as_str());
            headers.insert("baker-origin", message.subject.as_str());
            headers.insert("baker-attempt", "1");
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            config
                .js
                .publish_with_headers(subject, headers, message.payload)
                .await
        }
        None => match message.headers {
            Some(headers) => {
                config
                    .js
                    .publish_with_headers(subject, headers, message.payload)
                    .await
            }
            None => config.js.publish(subject, message.payload).await,
        },
    };
    let kept = match published {
        Ok(ack) => match ack.await {
            Ok(_) => true,
            Err(e) => {
                relay_error("publish ack", e);
                false
            }
        },
        Err(e) => {
            relay_error("publish", e);
            false
        }
    };
    let kind = if kept {
        AckKind::Ack
    } else {
        AckKind::Nak(Some(Duration::from_secs(1)))
    };
    if let Err(e) = acker.ack_with(kind).await {
        relay_error("ack", e);
    }
}

pub fn relay_main() {
    let stream = std::env::var(RELAY_STREAM_ENV).expect("relay stream");
    let durable = std::env::var(RELAY_CONSUMER_ENV).expect("relay consumer");
    let prefix = std::env::var(RELAY_PREFIX_ENV).expect("relay prefix");
    let instance = std::env::var(RELAY_INSTANCE_ENV).expect("relay instance");
    let stamp = std::env::var(RELAY_STAMP_ENV).is_ok_and(|v| v == "1");
    let max_in_flight: usize = env_or(RELAY_MAX_IN_FLIGHT_ENV, DEFAULT_MAX_IN_FLIGHT).max(1);
    run_relay(async move {
        let client = async_nats::ConnectOptions::new()
            .name("baker-bench-js-relay")
            .connect(nats_url())
            .await
            .expect("relay connects to NATS");
        // The context's defaults, as baker-mq's egress uses them.
        let js = jetstream::new(client);
        let consumer = js
            .get_stream(&stream)
            .await
            .expect("relay finds its ingress stream")
            // As baker-mq's ingress consumer.
            .get_or_create_consumer(
                &durable,
                PullConfig {
                    durable_name: Some(durable.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: max_in_flight as i64,
                    ..Default::default()
                },
            )
            .await
            .expect("relay creates its durable consumer");
        // Pull requests as baker-mq's ingress makes them (the defaults).
        let mut messages = consumer.messages().await.expect("relay pulls");
        println!("ready");
        let config = Arc::new(RelayConfig {
            js,
            prefix_len: prefix.len() + 1,
            instance,
            stamp,
            id_prefix: format!("{:016x}", fastrand::u64(..)),
        });
        let mut in_flight = FuturesUnordered::new();
        let mut count = 0u64;
        loop {
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                next = messages.next(), if in_flight.len() < max_in_flight => match next {
                    Some(Ok(message)) => {
                        count += 1;
                        in_flight.push(forward(config.clone(), message, count));
                        // Take what has already arrived without a round
                        // through the select for each, as baker-mq does.
                        while in_flight.len() < max_in_flight {
                            match messages.next().now_or_never() {
                                Some(Some(Ok(message))) => {
                                    count += 1;
                                    in_flight.push(forward(config.clone(), message, count));
                                }
                                _ => break,
                            }
                        }
                    }
                    // Missed heartbeats and the like: the stream goes on.
                    Some(Err(e)) => relay_error("pull", e),
                    None => break,
                },
            }
        }
    });
}
