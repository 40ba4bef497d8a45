//! AMQP 0.9.1 adapter (lapin), at least once.
//!
//! Ingress: apps publish to the durable topic exchange `<prefix>` (`baker`)
//! with routing key `<service>.<topic...>`; every router consumes the one
//! durable queue `<group>.ingress` bound to it with `#` (competing consumers)
//! with manual acks and a prefetch of the router's in-flight window. A
//! delivery is acked only after its egress publish is confirmed; a message
//! that cannot be delivered is republished to the dead-letter exchange
//! `<prefix>.dlx` (kept in the queue `<prefix>.dead-letters`) with
//! `baker-error` and `baker-attempts` headers, and acked once that publish
//! is confirmed.
//!
//! Egress: publish to the instance's inbox queue (`_baker.<service>.<id>`)
//! through the default exchange, with publisher confirms and `mandatory`, so
//! a missing queue comes back and the core tries another instance. The
//! topic travels in the `baker-topic` header; properties and headers
//! (including typed ones, from an AMQP ingress) are kept.

/// The adapter's name, in configuration and instance records.
pub const NAME: &str = "amqp";

mod acks;
mod convert;
mod egress;
mod error;
mod inbox;
mod ingress;
mod link;
mod provisioning;
mod publisher;
mod reply;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use baker_adapter_api::{
    AccessBook, AccessError, Adapter, AdapterError, AppClient, BrokerAccess, BrokerHealth, Cause,
    Destination, Endpoint, InboxConsumer, Ingress, IngressOptions, Message, Replies, Reply,
    ReplyInbox, Roles, SendError, Target, Topic,
};
use lapin::types::ShortString;

use egress::AmqpTarget;
pub use error::AmqpError;
use ingress::{AmqpIngress, Names};
use link::{redact, Link};

use publisher::{Publish, Publisher};

/// Default broker URL.
pub const DEFAULT_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The AMQP adapter: one connection per broker URL, whose confirm channel
/// (its confirms settled in publish order by one task) serves egress targets
/// and dead-lettering, and which the ingress consumes on with a channel of
/// its own. One connection
/// means one lapin I/O thread per broker instead of two, which measured 17%
/// less CPU per routed message (`cargo bench --bench amqp_e2e`). The cost:
/// while RabbitMQ blocks the connection for a resource alarm, the ingress's
/// acks wait too; nothing is lost, and nothing could be published then
/// anyway.
#[derive(Default)]
pub struct AmqpAdapter {
    links: Mutex<HashMap<String, (Arc<Link>, Publisher)>>,
    access: AccessBook,
}

impl AmqpAdapter {
    /// An adapter that connects with the credentials `access` holds for
    /// each broker (else the URL's own, else lapin's default guest/guest).
    pub fn new(access: AccessBook) -> Self {
        Self {
            links: Mutex::default(),
            access,
        }
    }

    fn link(&self, url: &str) -> (Arc<Link>, Publisher) {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(url.to_owned())
            .or_insert_with(|| {
                let access = self.access.get(url).cloned();
                let link = Arc::new(Link::new(url, "baker-mq", access));
                let publisher = Publisher::start(link.clone());
                (link, publisher)
            })
            .clone()
    }
}

fn broker_error(broker: &str, reason: impl std::fmt::Display) -> AdapterError {
    AdapterError::Broker {
        url: redact(broker),
        reason: reason.to_string(),
    }
}

fn check_url(url: &str) -> Result<(), AdapterError> {
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        Ok(())
    } else {
        Err(AdapterError::InvalidBroker {
            url: redact(url),
            reason: "expected amqp://USER:PASSWORD@HOST:PORT/VHOST".to_owned(),
        })
    }
}

#[async_trait]
impl Adapter for AmqpAdapter {
    fn name(&self) -> &'static str {
        NAME
    }

    /// OpenTelemetry's well-known value for RabbitMQ.
    fn messaging_system(&self) -> &'static str {
        "rabbitmq"
    }

    fn default_broker(&self) -> &'static str {
        DEFAULT_BROKER
    }

    fn tls_scheme(&self, url: &str) -> bool {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        matches!(scheme.as_deref(), Some("amqps"))
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["amqp", "amqps"]
    }

    /// A user name and password, and TLS.
    fn check_access(&self, access: &BrokerAccess) -> Result<(), AccessError> {
        access.refuse(NAME, &["token", "nkey_seed", "credentials"])
    }

    fn default_inbox(&self, service: &str, instance: &str) -> String {
        format!("_baker.{service}.{instance}")
    }

    fn validate_broker(&self, url: &str) -> Result<(), AdapterError> {
        check_url(url)?;
        url.parse::<lapin::uri::AMQPUri>()
            .map(drop)
            .map_err(|reason| AdapterError::InvalidBroker {
                url: redact(url),
                reason,
            })
    }

    /// The ingress consumes its queue (`GROUP.ingress`) and dead-letters to
    /// `PREFIX.dead-letters`: an inbox of either name would loop.
    fn inbox_in_ingress(&self, inbox: &str, ingress: &IngressOptions) -> bool {
        let names = ingress::Names::new(&ingress.prefix, &ingress.queue_group);
        inbox == names.queue.as_str() || inbox == names.dead_letters.as_str()
    }

    fn validate_inbox(&self, inbox: &str) -> Result<(), AdapterError> {
        let reason = if inbox.is_empty() || inbox.len() > 255 {
            "a queue name must be 1-255 bytes"
        } else if inbox.starts_with("amq.") {
            "queue names starting with 'amq.' are reserved by the broker"
        } else {
            return Ok(());
        };
        Err(AdapterError::InvalidInbox {
            inbox: inbox.to_owned(),
            reason: reason.to_owned(),
        })
    }

    async fn ingress(
        &self,
        broker: &str,
        options: &IngressOptions,
    ) -> Result<Box<dyn Ingress>, AdapterError> {
        check_url(broker)?;
        let (link, publisher) = self.link(broker);
        let mut ingress = AmqpIngress::new(
            link,
            publisher,
            Names::new(&options.prefix, &options.queue_group),
            u16::try_from(options.buffer).unwrap_or(u16::MAX),
        );
        ingress
            .connect()
            .await
            .map_err(|reason| broker_error(broker, reason))?;
        Ok(Box::new(ingress))
    }

    async fn target(&self, endpoint: &Endpoint) -> Result<Arc<dyn Target>, AdapterError> {
        check_url(&endpoint.broker)?;
        self.validate_inbox(&endpoint.inbox)?;
        Ok(Arc::new(AmqpTarget::new(
            self.link(&endpoint.broker).1,
            &endpoint.inbox,
        )))
    }

    fn forget_brokers(&self, in_use: &std::collections::HashSet<String>) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|url, (link, _)| {
            let used = in_use.contains(&baker_adapter_api::broker_key(url));
            if !used {
                tracing::info!(broker = %redact(url), "no endpoint uses this broker any more; connection closed");
                // Its publisher task ends with the last sender, when the
                // targets that held it are gone.
                link.abandon();
            }
            used
        });
    }

    /// A message to a deleted inbox queue comes back (it is published
    /// mandatory): the send fails.
    fn send_fails_when_gone(&self, _endpoint: &Endpoint) -> bool {
        true
    }

    fn health(&self) -> Vec<BrokerHealth> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .values()
            .map(|(link, _)| BrokerHealth {
                adapter: "amqp",
                broker: redact(link.url()),
                connected: link.connected(),
                refused: link.refused(),
            })
            .collect()
    }

    async fn flush(&self) {
        // Every publish already waited for its confirm.
    }

    fn roles(&self) -> Roles<'_> {
        Roles::all(self)
    }
}

#[async_trait]
impl Replies for AmqpAdapter {
    /// The reply queue `_baker.reply.<router>`, auto-deleted 5 minutes
    /// after its router last consumed from it.
    async fn reply_inbox(
        &self,
        broker: &str,
        router_id: &str,
        replies: tokio::sync::mpsc::Sender<Reply>,
    ) -> Result<Arc<dyn ReplyInbox>, AdapterError> {
        check_url(broker)?;
        let (link, _) = self.link(broker);
        let inbox = reply::open(link, format!("_baker.reply.{router_id}"), replies)
            .await
            .map_err(|reason| broker_error(broker, reason))?;
        Ok(Arc::new(inbox))
    }

    /// Publishes the reply through the default exchange to the queue named
    /// `reply_to` (RabbitMQ's direct reply-to names included), confirmed.
    async fn send_reply(
        &self,
        broker: &str,
        reply_to: &str,
        message: &Message,
    ) -> Result<(), SendError> {
        check_url(broker).map_err(|e| SendError::rejected(Cause::new(e)))?;
        let routing_key = ShortString::try_new(reply_to).map_err(|_| {
            SendError::rejected(format!(
                "reply-to of {} bytes does not fit AMQP's 255",
                reply_to.len()
            ))
        })?;
        let no_topic = Destination {
            service: String::new(),
            topic: Topic::default(),
        };
        let properties =
            convert::to_amqp(message, &no_topic).map_err(|e| SendError::rejected(Cause::new(e)))?;
        self.link(broker)
            .1
            .publish(Publish {
                exchange: ShortString::from(""),
                routing_key,
                mandatory: false,
                payload: message.payload.clone(),
                properties,
            })
            .await
    }
}

#[async_trait]
impl AppClient for AmqpAdapter {
    /// Publishes, confirmed, to the topic exchange `prefix` with routing
    /// key `<service>.<topic>`.
    async fn publish_to_ingress(
        &self,
        broker: &str,
        prefix: &str,
        destination: &Destination,
        message: &Message,
    ) -> Result<(), SendError> {
        check_url(broker).map_err(|e| SendError::rejected(Cause::new(e)))?;
        let routing_key = (destination.topic)
            .under(&destination.service, '.')
            .map_err(|e| SendError::rejected(Cause::new(e)))?;
        let to_app = |value: &str, what: &str| {
            ShortString::try_new(value)
                .map_err(|_| SendError::rejected(format!("{what} {value:?} is too long for AMQP")))
        };
        let no_topic = Destination {
            service: destination.service.clone(),
            topic: Topic::default(),
        };
        self.link(broker)
            .1
            .publish(Publish {
                exchange: to_app(prefix, "exchange")?,
                routing_key: to_app(&routing_key, "routing key")?,
                mandatory: false,
                payload: message.payload.clone(),
                properties: convert::to_amqp(message, &no_topic)
                    .map_err(|e| SendError::rejected(Cause::new(e)))?,
            })
            .await
    }

    /// Consumes the inbox queue with acknowledgements (prefetch 64), once
    /// it exists.
    async fn consume_inbox(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Box<dyn InboxConsumer>, AdapterError> {
        check_url(&endpoint.broker)?;
        self.validate_inbox(&endpoint.inbox)?;
        let (link, _) = self.link(&endpoint.broker);
        Ok(Box::new(inbox::consume(link, endpoint.inbox.clone())))
    }

    fn describe_ingress(&self, prefix: &str, destination: &Destination) -> String {
        format!(
            "exchange {prefix}, routing key {}.{}",
            destination.service, destination.topic
        )
    }
}
