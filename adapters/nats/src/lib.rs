//! NATS adapter (async-nats): core NATS and JetStream.
//!
//! - `url`: broker URLs (several servers; Baker's settings in the query)
//! - `link`: one connection per server list, its events and state
//! - `convert`: headers and properties between NATS messages and Baker's
//! - `ingress`: the core NATS ingress (queue group, at most once)
//! - `settings`: Baker's settings in the broker URL's query
//! - `jetstream`: the JetStream ingress (`?ingress=jetstream`, at least
//!   once) and its dead letters
//! - `durable`: durable inboxes (`?inbox=jetstream`)
//! - `egress`: publishing to an instance's inbox
//! - `inbox`: an instance's inbox subscription and a router's reply inbox
//! - `services`: the NATS Services API for the instances an agent registers
//! - `terminated`: what consumers of durable inboxes terminate, to the dead
//!   letters

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_nats::Client;
use async_trait::async_trait;
use baker_adapter_api::{
    AccessBook, AccessError, Adapter, AdapterError, Announced, Announcement, Announcing, AppClient,
    BrokerAccess, BrokerHealth, Cause, Destination, Endpoint, InboxConsumer, Ingress,
    IngressOptions, Message, Provisioning, Replies, Reply, ReplyInbox, Roles, SendError, Target,
};

mod convert;
mod durable;
mod egress;
mod error;
mod inbox;
mod ingress;
mod jetstream;
mod link;
mod overlap;
mod services;
mod settings;
mod terminated;
mod url;

pub use async_nats;
pub use convert::{headers_from_nats, headers_to_nats, properties_from_headers};
pub use error::UrlError;
pub use jetstream::{DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM};
pub use link::connect_options;
pub use settings::stream_name;
pub use url::{server_addrs, DEFAULT_BROKER};

/// The NATS adapter. Keeps one connection per broker URL, opened on first use
/// and reconnected by async-nats itself.
#[derive(Default)]
pub struct NatsAdapter {
    clients: Mutex<HashMap<String, Client>>,
    /// Each connection's last error, by the same key as `clients`.
    errors: Mutex<HashMap<String, Arc<Mutex<link::RepeatedError>>>>,
    access: AccessBook,
}

impl NatsAdapter {
    /// An adapter that connects with the credentials and TLS `access` holds
    /// for each broker.
    pub fn new(access: AccessBook) -> Self {
        Self {
            clients: Mutex::default(),
            errors: Mutex::default(),
            access,
        }
    }
}

#[async_trait]
impl Adapter for NatsAdapter {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn default_broker(&self) -> &'static str {
        DEFAULT_BROKER
    }

    fn tls_scheme(&self, url: &str) -> bool {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        matches!(scheme.as_deref(), Some("tls"))
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["nats", "tls"]
    }

    /// Every credential NATS has, and TLS; an NKey seed and a credentials
    /// file must parse.
    fn check_access(&self, access: &BrokerAccess) -> Result<(), AccessError> {
        if let Some(seed) = &access.nkey_seed {
            nkeys::KeyPair::from_seed(seed.expose().trim()).map_err(|e| AccessError::Invalid {
                field: "nkey_seed_file".to_owned(),
                reason: format!("not an NKey seed: {e}"),
            })?;
        }
        if let Some(credentials) = &access.credentials {
            async_nats::ConnectOptions::new()
                .credentials(credentials.expose())
                .map_err(|e| AccessError::Invalid {
                    field: "credentials_file".to_owned(),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    fn default_inbox(&self, service: &str, instance: &str) -> String {
        format!("_baker.{service}.{instance}")
    }

    fn validate_inbox(&self, inbox: &str) -> Result<(), AdapterError> {
        if egress::valid_subject(inbox) {
            Ok(())
        } else {
            Err(AdapterError::InvalidInbox {
                inbox: inbox.to_owned(),
                reason: "must be a NATS subject of non-empty tokens without wildcards".to_owned(),
            })
        }
    }

    async fn ingress(
        &self,
        broker: &str,
        options: &IngressOptions,
    ) -> Result<Box<dyn Ingress>, AdapterError> {
        // The query's settings are checked whichever ingress they choose: a
        // misspelt `ingress=` must not quietly fall back to core NATS.
        settings::StreamSettings::from_url(broker).map_err(|e| e.for_url(broker))?;
        let client = self.client(broker).await?;
        if settings::jetstream_ingress(broker) {
            let ingress = jetstream::start(
                client,
                broker,
                &options.prefix,
                &options.queue_group,
                options.buffer,
            )
            .await?;
            return Ok(Box::new(ingress));
        }
        Ok(Box::new(ingress::subscribe(client, broker, options).await?))
    }

    fn forget_brokers(&self, in_use: &std::collections::HashSet<String>) {
        let gone = |url: &String| !in_use.contains(&baker_adapter_api::broker_key(url));
        // Dropping the last handle of a client closes its connection; the
        // targets that held the others went with the records.
        let forgotten: Vec<String> = self
            .lock_clients()
            .keys()
            .filter(|u| gone(u))
            .cloned()
            .collect();
        if forgotten.is_empty() {
            return;
        }
        self.lock_clients().retain(|url, _| !gone(url));
        (self.errors.lock().unwrap_or_else(|e| e.into_inner())).retain(|url, _| !gone(url));
        for url in forgotten {
            tracing::info!(broker = %baker_adapter_api::redact_url(&url), "no endpoint uses this broker any more; connection closed");
        }
    }

    fn validate_broker(&self, url: &str) -> Result<(), AdapterError> {
        server_addrs(url).map_err(|e| e.for_url(url))?;
        settings::StreamSettings::from_url(url).map_err(|e| e.for_url(url))?;
        Ok(())
    }

    /// The ingress subscribes to `PREFIX.>` (core and JetStream alike).
    fn inbox_in_ingress(&self, inbox: &str, ingress: &IngressOptions) -> bool {
        baker_adapter_api::address_under(inbox, &ingress.prefix, '.')
    }

    /// The query holds Baker's settings, not the server's address.
    fn same_broker(&self, a: &str, b: &str) -> bool {
        baker_adapter_api::split_query(a).0 == baker_adapter_api::split_query(b).0
    }

    async fn target(&self, endpoint: &Endpoint) -> Result<Arc<dyn Target>, AdapterError> {
        self.validate_inbox(&endpoint.inbox)?;
        if settings::durable_inbox(&endpoint.broker) {
            return Ok(Arc::new(durable::DurableTarget::new(
                self.client(&endpoint.broker).await?,
                &endpoint.inbox,
            )));
        }
        Ok(Arc::new(egress::NatsTarget::new(
            self.client(&endpoint.broker).await?,
            &endpoint.broker,
            &endpoint.inbox,
        )))
    }

    async fn flush(&self) {
        self.flush_all().await;
    }

    /// A durable inbox's stream removed, nothing answers the publish: the
    /// send fails. A core inbox takes a message with no subscriber in
    /// silence.
    fn send_fails_when_gone(&self, endpoint: &Endpoint) -> bool {
        settings::durable_inbox(&endpoint.broker)
    }

    fn health(&self) -> Vec<BrokerHealth> {
        self.connections()
    }

    fn roles(&self) -> Roles<'_> {
        Roles {
            announcing: Some(self),
            ..Roles::all(self)
        }
    }
}

#[async_trait]
impl Announcing for NatsAdapter {
    /// Answers the NATS Services API for the instance (see `services`).
    async fn announce(&self, instance: Announced) -> Result<Announcement, AdapterError> {
        let broker = instance.endpoint.broker.clone();
        let client = self.client(&broker).await?;
        services::announce(client, &broker, instance).await
    }
}

#[async_trait]
impl Replies for NatsAdapter {
    async fn reply_inbox(
        &self,
        broker: &str,
        router_id: &str,
        replies: tokio::sync::mpsc::Sender<Reply>,
    ) -> Result<Arc<dyn ReplyInbox>, AdapterError> {
        let client = self.client(broker).await?;
        let inbox = inbox::reply_inbox(client, broker, router_id, replies).await?;
        Ok(Arc::new(inbox))
    }

    async fn send_reply(
        &self,
        broker: &str,
        reply_to: &str,
        message: &Message,
    ) -> Result<(), SendError> {
        let client = self
            .client(broker)
            .await
            .map_err(|e| SendError::unreachable(Cause::new(e)))?;
        egress::publish(&client, reply_to.to_owned(), message).await
    }
}

#[async_trait]
impl Provisioning for NatsAdapter {
    /// With `inbox=jetstream` in the broker URL, creates the stream that
    /// keeps the inbox (`BAKER_INBOX_<inbox>`, capturing `<inbox>.>`).
    async fn prepare_inbox(
        &self,
        endpoint: &Endpoint,
        _options: &BTreeMap<String, String>,
        _prefix: &str,
    ) -> Result<(), AdapterError> {
        if !settings::durable_inbox(&endpoint.broker) {
            return Ok(());
        }
        self.validate_inbox(&endpoint.inbox)?;
        let client = self.client(&endpoint.broker).await?;
        durable::create_inbox_stream(client, &endpoint.broker, &endpoint.inbox).await
    }

    /// For a durable inbox: forwards what its consumers terminate to the
    /// dead letters (see `terminated`).
    async fn follow_inbox(
        &self,
        endpoint: &Endpoint,
        service: &str,
    ) -> Result<Option<Announcement>, AdapterError> {
        if !settings::durable_inbox(&endpoint.broker) {
            return Ok(None);
        }
        let client = self.client(&endpoint.broker).await?;
        terminated::follow(client, &endpoint.broker, &endpoint.inbox, service)
            .await
            .map(Some)
    }
}

#[async_trait]
impl AppClient for NatsAdapter {
    async fn publish_to_ingress(
        &self,
        broker: &str,
        prefix: &str,
        destination: &Destination,
        message: &Message,
    ) -> Result<(), SendError> {
        let client = self
            .client(broker)
            .await
            .map_err(|e| SendError::unreachable(Cause::new(e)))?;
        let subject = (destination.topic)
            .under(&format!("{prefix}.{}", destination.service), '.')
            .map_err(|e| SendError::rejected(Cause::new(e)))?;
        egress::publish(&client, subject, message).await
    }

    async fn consume_inbox(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Box<dyn InboxConsumer>, AdapterError> {
        let client = self.client(&endpoint.broker).await?;
        let consumer = inbox::consume(client, &endpoint.broker, &endpoint.inbox).await?;
        Ok(Box::new(consumer))
    }

    fn describe_ingress(&self, prefix: &str, destination: &Destination) -> String {
        format!(
            "subject {prefix}.{}.{}",
            destination.service, destination.topic
        )
    }
}
