//! Consumer-signalled dead letters on durable inboxes (`?inbox=jetstream`):
//! a message the instance's consumer terminates (`+TERM`) goes to Baker's
//! dead letters (`_baker.dlq.<service>` in the `BAKER_DLQ` stream), with
//! `baker-error` saying which consumer terminated it (and why, when the
//! server gives the reason) and `baker-attempts` its deliveries.
//!
//! The server tells of a termination with an advisory
//! (`$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.<stream>.<consumer>`), a
//! core NATS message: the agent registering the instance listens for those
//! of its inbox's stream while the instance is registered, reads the message
//! from the stream by its sequence (an inbox stream keeps what was acked,
//! within its limits) and publishes it to the dead letters, waiting for the
//! dead-letter stream's ack. A termination while no agent listens (the
//! agent restarting, say) is not seen: the message stays in the inbox
//! stream, where it can still be read.

use async_nats::jetstream::stream::Config as StreamConfig;
use async_nats::jetstream::{self, Context};
use async_nats::Client;
use baker_adapter_api::{header, AdapterError, Announcement};
use futures::StreamExt;

use crate::durable::inbox_stream;
use crate::jetstream::{DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM};

/// What a termination advisory says (the fields Baker reads).
#[derive(Debug, serde::Deserialize)]
struct Terminated {
    consumer: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
    #[serde(default)]
    reason: Option<String>,
}

/// Forwards what consumers of `inbox`'s stream terminate to the dead letters
/// of `service`, until the returned value is dropped.
pub(crate) async fn follow(
    client: Client,
    broker: &str,
    inbox: &str,
    service: &str,
) -> Result<Announcement, AdapterError> {
    let broker_error = |what: &str, e: &dyn std::fmt::Display| AdapterError::Broker {
        url: baker_adapter_api::redact_url(broker),
        reason: format!("{what}: {e}"),
    };
    let stream = inbox_stream(inbox);
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(StreamConfig {
        name: DEAD_LETTER_STREAM.to_owned(),
        subjects: vec![format!("{DEAD_LETTER_PREFIX}.>")],
        ..Default::default()
    })
    .await
    .map_err(|e| broker_error("creating the dead-letter stream", &e))?;
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.*");
    let mut advisories = (client.subscribe(subject).await)
        .map_err(|e| broker_error("listening for terminated messages", &e))?;
    client
        .flush()
        .await
        .map_err(|e| broker_error("listening for terminated messages", &e))?;
    let dead_letters = format!("{DEAD_LETTER_PREFIX}.{service}");
    let task = tokio::spawn(async move {
        while let Some(advisory) = advisories.next().await {
            let Ok(terminated) = serde_json::from_slice::<Terminated>(&advisory.payload) else {
                continue;
            };
            if let Err(error) = forward(&js, &stream, &dead_letters, &terminated).await {
                tracing::warn!(%stream, sequence = terminated.stream_seq, %error,
                    "could not dead-letter a message its consumer terminated; it stays in the inbox stream");
            }
        }
    });
    Ok(Announcement::new(task))
}

/// Reads the terminated message from `stream` and publishes it to
/// `dead_letters` with why.
async fn forward(
    js: &Context,
    stream: &str,
    dead_letters: &str,
    terminated: &Terminated,
) -> Result<(), async_nats::Error> {
    let stored = js
        .get_stream(stream)
        .await?
        .get_raw_message(terminated.stream_seq)
        .await?;
    let mut headers = stored.headers;
    let why = match &terminated.reason {
        Some(reason) if !reason.is_empty() => format!(
            "terminated by its consumer {}: {reason}",
            terminated.consumer
        ),
        _ => format!("terminated by its consumer {}", terminated.consumer),
    };
    headers.insert(header::ERROR, why.replace(['\r', '\n'], " ").as_str());
    headers.insert(header::ATTEMPTS, terminated.deliveries.to_string().as_str());
    js.publish_with_headers(dead_letters.to_owned(), headers, stored.payload)
        .await?
        .await?;
    Ok(())
}
