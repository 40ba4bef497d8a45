//! MQTT 5 adapter (rumqttc), at least once with QoS 1.
//!
//! Ingress (`ingress`): routers share the subscription
//! `$share/<group>/<prefix>/+/#` at QoS 1 on a persistent session, and
//! acknowledge each message (in arrival order, as MQTT requires) only after
//! its egress was acknowledged. Egress (`egress`, over `link`): a QoS 1
//! publish to the instance's inbox topic `_baker/<service>/<instance>/<topic
//! levels...>`, resolved by the PUBACK, with headers as MQTT 5 user
//! properties and content type, response topic and correlation data kept.
//! A message that cannot be delivered is republished to
//! `_baker-dlq/<original topic>` with `baker-error` and `baker-attempts`.
//!
//! The ingress and each broker's egress are separate connections, each with
//! its event loop polled by a task of its own: the ingress's event loop
//! never waits for an egress PUBACK, so neither can stall the other. Every
//! connection reaches its broker the same way (`connect`): credentials and
//! TLS from the configuration's `[[brokers]]` section, else from the URL
//! (`mqtts://` for TLS).

/// The adapter's name, in configuration and instance records.
pub const NAME: &str = "mqtt";

mod acks;
mod connect;
mod convert;
mod egress;
mod error;
mod inbox;
mod ingress;
mod link;
mod reply;
mod url;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use baker_adapter_api::{
    redact_url, AccessBook, AccessError, Adapter, AdapterError, AppClient, BrokerAccess,
    BrokerHealth, Cause, Destination, Endpoint, InboxConsumer, Ingress, IngressOptions, Message,
    Replies, Reply, ReplyInbox, Roles, SendError, Target,
};

pub use error::{MqttError, UrlError};
pub use ingress::DEAD_LETTER_PREFIX;
pub use url::BrokerUrl;

use connect::Brokers;
use egress::MqttTarget;
use ingress::{IngressSpec, IngressState, MqttIngress};
use link::Link;

/// Default broker URL.
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";

/// The MQTT adapter: one egress connection per broker URL (shared by every
/// target on it and by the dead letters of an ingress on it), plus one
/// connection per ingress.
#[derive(Default)]
pub struct MqttAdapter {
    links: Mutex<HashMap<String, Arc<Link>>>,
    ingresses: Mutex<Vec<IngressState>>,
    brokers: Brokers,
}

impl MqttAdapter {
    /// An adapter that connects with the credentials and TLS `access` holds
    /// for each broker.
    pub fn new(access: AccessBook) -> Self {
        Self {
            links: Mutex::default(),
            ingresses: Mutex::default(),
            brokers: Brokers::new(access),
        }
    }

    /// The egress link to the broker of `url`. The query (the ingress
    /// session's settings) does not matter to egress, so a router's ingress
    /// broker and an instance endpoint on the same broker share one link.
    fn link(&self, url: &str) -> Result<Arc<Link>, AdapterError> {
        let key = baker_adapter_api::split_query(url).0;
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.get(key) {
            return Ok(link.clone());
        }
        let link = Link::start(self.brokers.get(url)?);
        links.insert(key.to_owned(), link.clone());
        Ok(link)
    }
}

/// Whether `name` can be one level of a topic filter (a queue group or
/// prefix): non-empty, no separators or wildcards.
fn valid_level(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '+', '#', '\0']) && !name.starts_with('$')
}

#[async_trait]
impl Adapter for MqttAdapter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn default_broker(&self) -> &'static str {
        DEFAULT_BROKER
    }

    fn tls_scheme(&self, url: &str) -> bool {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        matches!(scheme.as_deref(), Some("mqtts" | "ssl"))
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["mqtt", "tcp", "mqtts", "ssl"]
    }

    /// A user name and password, and TLS; MQTT has no token, NKey or
    /// credentials file.
    fn check_access(&self, access: &BrokerAccess) -> Result<(), AccessError> {
        access.refuse(NAME, &["token", "nkey_seed", "credentials"])
    }

    fn default_inbox(&self, service: &str, instance: &str) -> String {
        format!("_baker/{service}/{instance}")
    }

    fn validate_inbox(&self, inbox: &str) -> Result<(), AdapterError> {
        let reason = if !convert::valid_topic_name(inbox) {
            "must be a non-empty MQTT topic name without wildcards (+, #)"
        } else if inbox.starts_with('$') {
            "topics starting with '$' are reserved by the broker"
        } else if inbox.ends_with('/') {
            "must not end with '/' (the topic levels are appended after one)"
        } else {
            return Ok(());
        };
        Err(AdapterError::InvalidInbox {
            inbox: inbox.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// Same host and port: the query holds per-connection settings.
    fn validate_broker(&self, url: &str) -> Result<(), AdapterError> {
        BrokerUrl::parse(url)
            .map(drop)
            .map_err(|e| AdapterError::InvalidBroker {
                url: redact_url(url),
                reason: e.to_string(),
            })
    }

    /// The ingress subscribes to `PREFIX/#`.
    fn inbox_in_ingress(&self, inbox: &str, ingress: &IngressOptions) -> bool {
        baker_adapter_api::address_under(inbox, &ingress.prefix, '/')
    }

    fn same_broker(&self, a: &str, b: &str) -> bool {
        match (BrokerUrl::parse(a), BrokerUrl::parse(b)) {
            (Ok(a), Ok(b)) => a.host == b.host && a.port == b.port,
            _ => a == b,
        }
    }

    async fn ingress(
        &self,
        broker: &str,
        options: &IngressOptions,
    ) -> Result<Box<dyn Ingress>, AdapterError> {
        let reach = self.brokers.get(broker)?;
        let parsed = &reach.url;
        if parsed.consumer_v311 {
            return Err(AdapterError::InvalidBroker {
                url: redact_url(broker),
                reason: "the ingress needs MQTT 5 (drop protocol=3.1.1)".to_owned(),
            });
        }
        for (what, value) in [
            ("queue group", &options.queue_group),
            ("ingress prefix", &options.prefix),
        ] {
            if !valid_level(value) {
                return Err(AdapterError::Broker {
                    url: redact_url(broker),
                    reason: format!(
                        "{what} {value:?} cannot be an MQTT topic level (no '/', '+', '#', leading '$')"
                    ),
                });
            }
        }
        // The default is unique per sidecar on a host (several routers on
        // one host must not share a session) and kept across restarts when
        // the member id is; it replaced `baker-<group>-<host>`, whose
        // session a router upgraded from it takes over once.
        let (client_id, previous) = match &parsed.client_id {
            Some(id) => (id.clone(), None),
            None => {
                let previous = format!("baker-{}-{}", options.queue_group, url::host_name());
                let id = format!("{previous}-{}", options.member.id);
                if !options.member.is_stable() {
                    tracing::warn!(broker = %redact_url(broker), client_id = %id,
                        "the MQTT ingress's client id is this run's only (no --state-dir, no registered instance): what the broker keeps for it while the router is down is not taken by the next run; give the sidecar a --state-dir, or a client_id= in the broker URL");
                }
                (id, Some(previous))
            }
        };
        let spec = IngressSpec {
            previous,
            client_id,
            prefix: options.prefix.clone(),
            filter: format!("$share/{}/{}/+/#", options.queue_group, options.prefix),
            receive_max: u16::try_from(options.buffer.max(1)).unwrap_or(u16::MAX),
            broker: reach,
        };
        let dlq = self.link(broker)?;
        let filter = spec.filter.clone();
        let (ingress, state) = MqttIngress::start(spec, dlq)
            .await
            .map_err(|error| error.for_url(broker))?;
        if state.connected.load(Ordering::Relaxed) {
            tracing::info!(broker = %redact_url(broker), %filter, "consuming MQTT ingress");
        } else {
            tracing::warn!(broker = %redact_url(broker), %filter,
                "MQTT ingress not connected; it subscribes once the broker takes its connection");
        }
        let mut ingresses = self.ingresses.lock().unwrap_or_else(|e| e.into_inner());
        ingresses.retain(|i| !*i.finished.borrow());
        ingresses.push(state);
        Ok(Box::new(ingress))
    }

    async fn target(&self, endpoint: &Endpoint) -> Result<Arc<dyn Target>, AdapterError> {
        self.validate_inbox(&endpoint.inbox)?;
        let consumer_v311 = BrokerUrl::parse(&endpoint.broker)
            .map_err(|e| e.for_url(&endpoint.broker))?
            .consumer_v311;
        Ok(Arc::new(MqttTarget::new(
            self.link(&endpoint.broker)?,
            &endpoint.inbox,
            consumer_v311,
        )))
    }

    fn forget_brokers(&self, in_use: &std::collections::HashSet<String>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|url, link| {
            let used = in_use.contains(&baker_adapter_api::broker_key(url));
            if !used {
                tracing::info!(broker = %link.url(), "no endpoint uses this broker any more; connection closed");
                link.close();
            }
            used
        });
    }

    /// With no subscriber left on its inbox, the broker answers "no
    /// matching subscribers": the send fails.
    fn send_fails_when_gone(&self, _endpoint: &Endpoint) -> bool {
        true
    }

    fn health(&self) -> Vec<BrokerHealth> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let ingresses = self.ingresses.lock().unwrap_or_else(|e| e.into_inner());
        links
            .values()
            .map(|link| BrokerHealth {
                adapter: "mqtt",
                broker: link.url().to_owned(),
                connected: link.connected(),
                refused: link.refused(),
            })
            .chain(
                ingresses
                    .iter()
                    .filter(|i| !*i.finished.borrow())
                    .map(|i| BrokerHealth {
                        adapter: "mqtt",
                        broker: format!("{} (ingress)", i.url),
                        connected: i.connected.load(Ordering::Relaxed),
                        refused: i.errors.refused(),
                    }),
            )
            .collect()
    }

    /// Every egress publish already waited for its PUBACK; this waits for
    /// closed ingresses to send their last acks and disconnect.
    async fn flush(&self) {
        let pending: Vec<IngressState> = self
            .ingresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for mut ingress in pending {
            let _ = ingress.finished.wait_for(|f| *f).await;
        }
    }

    fn roles(&self) -> Roles<'_> {
        Roles {
            replies: Some(self),
            app_client: Some(self),
            ..Roles::default()
        }
    }
}

#[async_trait]
impl Replies for MqttAdapter {
    /// The topics `_baker/reply/<router>/<token>`, subscribed at QoS 0 on a
    /// connection of their own.
    async fn reply_inbox(
        &self,
        broker: &str,
        router_id: &str,
        replies: tokio::sync::mpsc::Sender<Reply>,
    ) -> Result<Arc<dyn ReplyInbox>, AdapterError> {
        let broker = self.brokers.get(broker)?;
        Ok(Arc::new(reply::open(broker, router_id, replies)))
    }

    /// Publishes the reply at QoS 1 to the requester's response topic.
    async fn send_reply(
        &self,
        broker: &str,
        reply_to: &str,
        message: &Message,
    ) -> Result<(), SendError> {
        let link = self
            .link(broker)
            .map_err(|e| SendError::rejected(Cause::new(e)))?;
        let (properties, _) = convert::to_mqtt(message);
        match link
            .publish(reply_to.to_owned(), message.payload.clone(), properties)
            .await?
        {
            link::Accepted::Delivered => Ok(()),
            link::Accepted::NoSubscribers => Err(SendError::unavailable(format!(
                "nobody subscribes to the response topic {reply_to}"
            ))),
        }
    }
}

#[async_trait]
impl AppClient for MqttAdapter {
    /// Publishes at QoS 1 to `<prefix>/<service>/<topic levels>`.
    async fn publish_to_ingress(
        &self,
        broker: &str,
        prefix: &str,
        destination: &Destination,
        message: &Message,
    ) -> Result<(), SendError> {
        let link = self
            .link(broker)
            .map_err(|e| SendError::rejected(Cause::new(e)))?;
        let topic = (destination.topic)
            .under(&format!("{prefix}/{}", destination.service), '/')
            .map_err(|e| SendError::rejected(Cause::new(e)))?;
        let (properties, _) = convert::to_mqtt(message);
        match link
            .publish(topic, message.payload.clone(), properties)
            .await?
        {
            link::Accepted::Delivered => Ok(()),
            link::Accepted::NoSubscribers => Err(SendError::unavailable(
                "no router subscribes to the ingress".to_owned(),
            )),
        }
    }

    /// Subscribes to `<inbox>/#` at QoS 1 on a connection of its own.
    async fn consume_inbox(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Box<dyn InboxConsumer>, AdapterError> {
        self.validate_inbox(&endpoint.inbox)?;
        let broker = self.brokers.get(&endpoint.broker)?;
        let consumer = inbox::consume(broker, &endpoint.inbox)
            .await
            .map_err(|error| error.for_url(&endpoint.broker))?;
        Ok(Box::new(consumer))
    }

    fn describe_ingress(&self, prefix: &str, destination: &Destination) -> String {
        format!(
            "topic {prefix}/{}/{}",
            destination.service, destination.topic
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baker_adapter_api::{Secret, TlsFiles};

    #[test]
    fn access_takes_a_user_password_and_tls_and_refuses_nats_credentials() {
        let adapter = MqttAdapter::default();
        let usable = BrokerAccess {
            username: Some("router".into()),
            password: Some(Secret::new("pw")),
            tls: Some(TlsFiles::default()),
            ..Default::default()
        };
        assert!(adapter.check_access(&usable).is_ok());
        for (field, access) in [
            (
                "token",
                BrokerAccess {
                    token: Some(Secret::new("t")),
                    ..usable.clone()
                },
            ),
            (
                "nkey_seed",
                BrokerAccess {
                    nkey_seed: Some(Secret::new("SU")),
                    ..usable.clone()
                },
            ),
            (
                "credentials",
                BrokerAccess {
                    credentials: Some(Secret::new("jwt")),
                    ..usable.clone()
                },
            ),
        ] {
            let error = adapter.check_access(&access).unwrap_err().to_string();
            assert_eq!(error, format!("the mqtt adapter has no use for `{field}`"));
        }
    }
}
