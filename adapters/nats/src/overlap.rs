//! A core and a JetStream ingress must not share a prefix: the stream
//! captures every message published under it, and the core routers' queue
//! group takes each one as well, so both would route it. Moving a fleet from
//! core to JetStream therefore goes through another prefix
//! (`docs/protocols.md`), and an overlap is refused whichever side comes
//! second:
//!
//! * core routers answer on a presence subject of their prefix; a JetStream
//!   router asks there before it creates its stream, and does not start
//!   while any answers;
//! * a core router does not subscribe while a stream captures its prefix,
//!   and one that is running stops consuming (the stream has every message)
//!   as soon as it sees one appear.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;
use futures::StreamExt;
use tokio::sync::watch;

/// How often a running core router looks for a stream over its prefix.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How long a JetStream router waits for core routers to answer.
const ASK_FOR: Duration = Duration::from_secs(2);

/// Where the core routers of `prefix` answer.
fn presence_subject(prefix: &str) -> String {
    format!("_baker.routers.{prefix}")
}

/// Why a core ingress on `prefix` cannot run, if a stream captures it.
pub(crate) async fn stream_over(client: &Client, prefix: &str) -> Option<String> {
    let js = jetstream::new(client.clone());
    let name = tokio::time::timeout(ASK_FOR, js.stream_by_subject(format!("{prefix}.>")))
        .await
        .ok()?
        .ok()?;
    Some(format!(
        "the JetStream stream {name} captures {prefix}.>: a core and a JetStream ingress on one \
         prefix would both take every message; give this router ?ingress=jetstream, or the \
         JetStream routers another --ingress-prefix (docs/protocols.md, from core to JetStream)"
    ))
}

/// Why a JetStream ingress on `prefix` cannot start, if core routers
/// consume it.
pub(crate) async fn core_routers_on(client: &Client, prefix: &str) -> Option<String> {
    let answer = tokio::time::timeout(ASK_FOR, client.request(presence_subject(prefix), "".into()))
        .await
        .ok()?;
    answer.ok().map(|_| {
        format!(
            "core NATS routers consume {prefix}.>: a JetStream ingress on the same prefix would \
             take every message they take; give the JetStream routers another --ingress-prefix \
             and move publishers to it with their sidecars (docs/protocols.md, from core to \
             JetStream)"
        )
    })
}

/// What a core router runs beside its ingress: it answers on the presence
/// subject, and watches for a stream over its prefix (the reason, once one
/// appears).
pub(crate) struct Presence {
    tasks: [tokio::task::JoinHandle<()>; 2],
    pub(crate) overlap: watch::Receiver<Option<String>>,
}

impl Presence {
    pub(crate) async fn start(client: &Client, prefix: &str) -> Result<Self, async_nats::Error> {
        let mut asked = client.subscribe(presence_subject(prefix)).await?;
        let answering = {
            let client = client.clone();
            tokio::spawn(async move {
                while let Some(request) = asked.next().await {
                    if let Some(reply) = request.reply {
                        let _ = client.publish(reply, "core".into()).await;
                    }
                }
            })
        };
        let (found, overlap) = watch::channel(None);
        let watching = {
            let (client, prefix) = (client.clone(), prefix.to_owned());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(WATCH_EVERY).await;
                    if let Some(reason) = stream_over(&client, &prefix).await {
                        tracing::error!(%reason, "stopping the core NATS ingress: the stream has every message");
                        found.send_replace(Some(reason));
                        return;
                    }
                }
            })
        };
        Ok(Self {
            tasks: [answering, watching],
            overlap,
        })
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
