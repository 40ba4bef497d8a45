//! The NATS Services API (ADR-32) for the instances an agent registers, so
//! that `nats micro ls` and the client libraries' service clients list what
//! Baker routes to.
//!
//! For each instance, the agent that registers it (never a router, so that
//! an instance is listed once however many routers there are) answers
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`, each alone, with the service's
//! name and with its name and id, on the broker of the instance's inbox:
//!
//! * name, id and metadata are the record's; the version too when it is
//!   SemVer, as ADR-32 requires, else `0.0.0` with the record's version in
//!   the metadata key `baker.version`;
//! * the one endpoint is the service's ingress, `<prefix>.<service>.>`, with
//!   the routers' queue group: where applications send to it;
//! * the counts of STATS are zero: routers deliver to the instance's inbox,
//!   and the agent sees none of it (each router's `/metrics` counts them).
//!   What Baker knows goes in the endpoint's `data`: the instance's status
//!   in the directory (`passing`, `critical`, `draining`), weight, zone and
//!   inbox.

use std::collections::BTreeMap;

use async_nats::Client;
use baker_adapter_api::{AdapterError, Announced, Announcement};
use futures::StreamExt;
use serde_json::{json, Value};

/// The verbs of ADR-32, as in their subjects.
const VERBS: [&str; 3] = ["PING", "INFO", "STATS"];

/// Subscribes to the instance's discovery subjects on `client` and answers
/// them until the announcement is dropped.
pub(crate) async fn announce(
    client: Client,
    broker: &str,
    instance: Announced,
) -> Result<Announcement, AdapterError> {
    let broker_error = |e: &dyn std::fmt::Display| AdapterError::Broker {
        url: baker_adapter_api::redact_url(broker),
        reason: format!("services API: {e}"),
    };
    let (name, id) = (&instance.service, &instance.id);
    let mut subscriptions = Vec::new();
    for verb in VERBS {
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.{name}"),
            format!("$SRV.{verb}.{name}.{id}"),
        ] {
            let subscription = client.subscribe(subject).await;
            subscriptions.push(subscription.map_err(|e| broker_error(&e))?);
        }
    }
    // Answering from the moment this returns.
    client.flush().await.map_err(|e| broker_error(&e))?;
    let responder = Responder::new(instance);
    let task = tokio::spawn(async move {
        let mut requests = futures::stream::select_all(subscriptions);
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else {
                continue;
            };
            let verb = request.subject.split('.').nth(1).unwrap_or_default();
            let Some(answer) = responder.answer(verb) else {
                continue;
            };
            if let Err(error) = client.publish(reply, answer.to_string().into()).await {
                tracing::debug!(%error, "could not answer a services API request");
            }
        }
    });
    Ok(Announcement::new(task))
}

/// What an instance answers.
struct Responder {
    instance: Announced,
    /// The version as ADR-32 wants it (SemVer).
    version: String,
    /// The record's metadata, with `baker.version` when the version is not
    /// SemVer.
    metadata: BTreeMap<String, String>,
    /// RFC 3339 time the announcement started.
    started: String,
}

impl Responder {
    fn new(instance: Announced) -> Self {
        let mut metadata = instance.metadata.clone();
        let version = match semver::Version::parse(&instance.version) {
            Ok(_) => instance.version.clone(),
            Err(_) => {
                metadata.insert("baker.version".to_owned(), instance.version.clone());
                "0.0.0".to_owned()
            }
        };
        let started = time::OffsetDateTime::from(instance.started)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            instance,
            version,
            metadata,
            started,
        }
    }

    /// The answer to `verb`, if it is one of ADR-32's.
    fn answer(&self, verb: &str) -> Option<Value> {
        let kind = match verb {
            "PING" => "ping",
            "INFO" => "info",
            "STATS" => "stats",
            _ => return None,
        };
        let mut answer = json!({
            "type": format!("io.nats.micro.v1.{kind}_response"),
            "name": self.instance.service,
            "id": self.instance.id,
            "version": self.version,
            "metadata": self.metadata,
        });
        let service = &self.instance.service;
        let ingress = &self.instance.ingress;
        let endpoint = json!({
            "name": service,
            "subject": format!("{}.{service}.>", ingress.prefix),
            "queue_group": ingress.queue_group,
        });
        let fields = match verb {
            "INFO" => json!({
                "description": format!(
                    "routed by baker-mq: messages to {}.{service}.> reach this instance's inbox {}",
                    ingress.prefix, self.instance.endpoint.inbox
                ),
                "endpoints": [with(endpoint, json!({ "metadata": null }))],
            }),
            "STATS" => json!({
                "started": self.started,
                "endpoints": [with(endpoint, json!({
                    "num_requests": 0,
                    "num_errors": 0,
                    "last_error": "",
                    "processing_time": 0,
                    "average_processing_time": 0,
                    "data": {
                        "status": (self.instance.status)(),
                        "weight": self.instance.weight,
                        "zone": self.instance.zone,
                        "inbox": self.instance.endpoint.inbox,
                    },
                }))],
            }),
            _ => json!({}),
        };
        Some(with(answer.take(), fields))
    }
}

/// `base` with the fields of `more` added.
fn with(mut base: Value, more: Value) -> Value {
    if let (Value::Object(base), Value::Object(more)) = (&mut base, more) {
        base.extend(more);
    }
    base
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use baker_adapter_api::{Endpoint, IngressOptions, Member};

    use super::*;

    fn responder(version: &str) -> Responder {
        Responder::new(Announced {
            service: "orders".into(),
            id: "o1".into(),
            version: version.into(),
            metadata: BTreeMap::from([("team".to_owned(), "checkout".to_owned())]),
            weight: 100,
            zone: Some("z1".into()),
            endpoint: Endpoint {
                adapter: "nats".into(),
                broker: "nats://127.0.0.1:4222".into(),
                inbox: "_baker.orders.o1".into(),
            },
            ingress: IngressOptions {
                prefix: "baker".into(),
                queue_group: "baker".into(),
                buffer: 1,
                member: Member::this_run(),
            },
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
            status: Arc::new(|| "draining"),
        })
    }

    #[test]
    fn each_verb_answers_with_its_type_and_the_records_identity() {
        let responder = responder("2.3.0");
        for (verb, kind) in [("PING", "ping"), ("INFO", "info"), ("STATS", "stats")] {
            let answer = responder.answer(verb).unwrap();
            assert_eq!(answer["type"], format!("io.nats.micro.v1.{kind}_response"));
            assert_eq!(answer["name"], "orders");
            assert_eq!(answer["id"], "o1");
            assert_eq!(answer["version"], "2.3.0");
            assert_eq!(answer["metadata"]["team"], "checkout");
        }
        let info = responder.answer("INFO").unwrap();
        assert_eq!(info["endpoints"][0]["subject"], "baker.orders.>");
        assert_eq!(info["endpoints"][0]["queue_group"], "baker");
        let stats = responder.answer("STATS").unwrap();
        assert_eq!(stats["started"], "1970-01-02T00:00:00Z");
        assert_eq!(stats["endpoints"][0]["data"]["status"], "draining");
        assert_eq!(stats["endpoints"][0]["num_requests"], 0);
        assert!(responder.answer("KILL").is_none());
    }

    #[test]
    fn a_version_that_is_not_semver_is_kept_in_the_metadata() {
        let answer = responder("v2").answer("PING").unwrap();
        assert_eq!(answer["version"], "0.0.0");
        assert_eq!(answer["metadata"]["baker.version"], "v2");
    }
}
