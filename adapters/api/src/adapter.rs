//! The traits an adapter implements: its egress targets, the factory that
//! makes them and its ingress (`ingress.rs`), and the roles some adapters
//! have besides.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use tokio::sync::mpsc;

use crate::{
    AccessError, AdapterError, BrokerAccess, Destination, Endpoint, Ingress, IngressOptions,
    Message, SendError,
};

/// A bound egress: sends to one instance's endpoint.
///
/// Bound once when the routing view changes, so the per-message path does no
/// lookup or connection setup.
#[async_trait]
pub trait Target: Send + Sync {
    /// Sends `message` for `destination` to the instance, resolving only when
    /// the broker has taken responsibility for it (for at-most-once
    /// protocols, when it is written).
    async fn send(&self, destination: &Destination, message: &Message) -> Result<(), SendError>;

    /// Sends `message` as [`Target::send`] would, if that completes at once
    /// and succeeds: `true` when the broker's client took it. `false` leaves
    /// nothing done (a send that would wait, or fail), and the caller
    /// awaits [`Target::send`] instead. Lets the router send without a
    /// future where the protocol's client only buffers a publish (core
    /// NATS); the default never does.
    fn try_send(&self, destination: &Destination, message: &Message) -> bool {
        let _ = (destination, message);
        false
    }
}

/// An instance's side of an inbox: the messages routed to it, each
/// acknowledged as it is taken.
#[async_trait]
pub trait InboxConsumer: Send {
    /// The next message; `None` once closed and drained.
    async fn next(&mut self) -> Option<Message>;

    /// Stops taking new messages; `next` still yields what had arrived,
    /// then `None`.
    async fn close(&mut self);
}

/// A reply that arrived at a router's reply inbox.
#[derive(Debug)]
pub struct Reply {
    /// The token the router stamped on the request (see [`ReplyInbox::stamp`]).
    pub token: String,
    /// The reply as the instance sent it.
    pub message: Message,
}

/// A router's own reply address on one broker.
///
/// An instance answers a request at the request's reply address, on the
/// instance's own broker. When the requester is on another broker or another
/// protocol, that address means nothing there, so the router points the
/// request's reply address at its reply inbox on the instance's broker
/// instead, and forwards what arrives to the requester.
pub trait ReplyInbox: Send + Sync {
    /// Points `message`'s reply address at this inbox, tagged with `token`,
    /// so that the instance's reply arrives as a [`Reply`] carrying it.
    fn stamp(&self, token: &str, message: &mut Message);
}

/// Connection state of one broker an adapter talks to.
#[derive(Debug, Clone)]
pub struct BrokerHealth {
    /// Adapter name.
    pub adapter: &'static str,
    /// Broker URL.
    pub broker: String,
    /// Whether the connection is currently up.
    pub connected: bool,
    /// While the broker refuses this sidecar (its credentials, its TLS
    /// identity, or a certificate it does not trust), why: retrying cannot
    /// help until the configuration changes, unlike an outage.
    pub refused: Option<String>,
}

/// Whether a connection error (its text, causes included) says the broker
/// refused this client, or TLS failed on a certificate, rather than that the
/// broker is unreachable.
pub fn is_refusal(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "authorization violation",
        "authentication",
        "notauthorized",
        "badusernamepassword",
        "not authorized",
        "access_refused",
        "access refused",
        "certificate",
        "unknownissuer",
    ]
    .iter()
    .any(|word| error.contains(word))
}

/// A broker protocol, as routing sees it: its names and addresses, the
/// ingress, and egress targets for its URLs.
///
/// What some protocols do besides is in role traits an adapter hands out
/// when it has them: [`Replies`] (proxying replies across brokers),
/// [`Provisioning`] (broker state an inbox or ingress needs) and [`AppClient`]
/// (playing the applications, for the demo and tools).
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// Name used in config and instance records, e.g. `nats`.
    fn name(&self) -> &'static str;

    /// Broker URL used when none is configured.
    fn default_broker(&self) -> &'static str;

    /// The URL schemes this adapter's broker URLs use, e.g. `nats`, `tls`.
    fn schemes(&self) -> &'static [&'static str];

    /// Whether `url`'s scheme means TLS (`tls://`, `mqtts://`, ...).
    fn tls_scheme(&self, url: &str) -> bool {
        let _ = url;
        false
    }

    /// Checks that the adapter can use every setting in `access` (a
    /// `[[brokers]]` section): one it would ignore is an error, so nothing
    /// the configuration asks for is silently dropped. The default takes
    /// none.
    fn check_access(&self, access: &BrokerAccess) -> Result<(), AccessError> {
        access.refuse(
            self.name(),
            &[
                "username",
                "password",
                "token",
                "nkey_seed",
                "credentials",
                "tls",
            ],
        )
    }

    /// The conventional inbox address of an instance.
    fn default_inbox(&self, service: &str, instance: &str) -> String;

    /// Checks that `inbox` is a usable inbox address for this adapter.
    fn validate_inbox(&self, inbox: &str) -> Result<(), AdapterError>;

    /// Checks that `url` is a broker URL this adapter can connect to. The
    /// default checks its scheme.
    fn validate_broker(&self, url: &str) -> Result<(), AdapterError> {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme {
            Some(scheme) if self.schemes().contains(&scheme.as_str()) => Ok(()),
            _ => Err(AdapterError::InvalidBroker {
                url: crate::redact_url(url),
                reason: format!("expected a URL of scheme {}", self.schemes().join(", ")),
            }),
        }
    }

    /// Whether `inbox`, on the broker of an ingress subscribed with
    /// `ingress`, lies in that ingress's namespace: a message delivered there
    /// would come back to the routers (a routing loop). The default: never.
    fn inbox_in_ingress(&self, inbox: &str, ingress: &IngressOptions) -> bool {
        let _ = (inbox, ingress);
        false
    }

    /// Whether the URLs `a` and `b` name the same broker, so that an
    /// address on one is valid on the other. The default compares them as
    /// strings; adapters whose URLs carry per-connection settings compare
    /// what identifies the broker.
    fn same_broker(&self, a: &str, b: &str) -> bool {
        a == b
    }

    /// Starts consuming the ingress on `broker`.
    async fn ingress(
        &self,
        broker: &str,
        options: &IngressOptions,
    ) -> Result<Box<dyn Ingress>, AdapterError>;

    /// Binds a target for `endpoint`, connecting to its broker if needed.
    async fn target(&self, endpoint: &Endpoint) -> Result<Arc<dyn Target>, AdapterError>;

    /// Connection state of every broker this adapter has opened.
    fn health(&self) -> Vec<BrokerHealth>;

    /// Whether a send to `endpoint` fails once its instance is gone (queue
    /// deleted, no subscriber, stream removed) rather than being accepted
    /// for no one: only then may a router keep a lapsed instance for sends
    /// to judge (self-preservation). The default: it does not.
    fn send_fails_when_gone(&self, endpoint: &Endpoint) -> bool {
        let _ = endpoint;
        false
    }

    /// Closes the connections (and their reconnection loops) to every broker
    /// whose [`crate::broker_key`] `in_use` does not hold: no endpoint names
    /// it any more. A later use connects again. The default keeps them.
    fn forget_brokers(&self, in_use: &std::collections::HashSet<String>) {
        let _ = in_use;
    }

    /// Waits until everything sent so far is written to the brokers. Called
    /// before the process exits, so that a send that resolved is not lost in
    /// a client-side buffer.
    async fn flush(&self);

    /// The roles it has besides routing; none by default.
    fn roles(&self) -> Roles<'_> {
        Roles::default()
    }

    /// Its reply proxying, if it can: without it, requests that need a proxy
    /// to reach an instance on this adapter are not delivered there.
    fn replies(&self) -> Option<&dyn Replies> {
        self.roles().replies
    }

    /// Its broker-side setup, if inboxes or ingresses need any: without it,
    /// there is nothing to create or remove, and no backlog to see.
    fn provisioning(&self) -> Option<&dyn Provisioning> {
        self.roles().provisioning
    }

    /// Its protocol's name in OpenTelemetry's `messaging.system` attribute
    /// (the conventions' well-known value where there is one); the adapter's
    /// name by default.
    fn messaging_system(&self) -> &'static str {
        self.name()
    }

    /// Its application client, if it has one: for the demo and tools.
    fn app_client(&self) -> Option<&dyn AppClient> {
        self.roles().app_client
    }

    /// Its announcing of instances in the broker's own service discovery,
    /// if the broker has one.
    fn announcing(&self) -> Option<&dyn crate::Announcing> {
        self.roles().announcing
    }
}

/// The roles an adapter has besides routing.
#[derive(Default, Clone, Copy)]
pub struct Roles<'a> {
    /// Reply proxying.
    pub replies: Option<&'a dyn Replies>,
    /// Broker-side setup of inboxes and ingresses.
    pub provisioning: Option<&'a dyn Provisioning>,
    /// The applications' side.
    pub app_client: Option<&'a dyn AppClient>,
    /// Instances in the broker's own service discovery.
    pub announcing: Option<&'a dyn crate::Announcing>,
}

impl<'a> Roles<'a> {
    /// Every role, played by `adapter`.
    pub fn all<T: Replies + Provisioning + AppClient>(adapter: &'a T) -> Self {
        Self {
            replies: Some(adapter),
            provisioning: Some(adapter),
            app_client: Some(adapter),
            announcing: None,
        }
    }
}

/// Proxying replies: for requests whose requester is on another broker or
/// protocol than the instance (see [`ReplyInbox`]).
#[async_trait]
pub trait Replies: Send + Sync {
    /// Opens the reply inbox of the router called `router_id` on `broker`,
    /// and keeps it open (across reconnections) for the life of the process.
    /// Replies that arrive there are sent to `replies`.
    async fn reply_inbox(
        &self,
        broker: &str,
        router_id: &str,
        replies: mpsc::Sender<Reply>,
    ) -> Result<Arc<dyn ReplyInbox>, AdapterError>;

    /// Sends `message` as the answer to a request that arrived on this
    /// adapter's ingress on `broker` asking for replies at `reply_to`.
    /// Resolves once the broker has taken the reply, as [`Target::send`].
    async fn send_reply(
        &self,
        broker: &str,
        reply_to: &str,
        message: &Message,
    ) -> Result<(), SendError>;
}

/// Broker state that inboxes and ingresses need (an AMQP queue, say), and
/// what can be seen of it.
#[async_trait]
pub trait Provisioning: Send + Sync {
    /// Creates what an instance's inbox needs on its broker before the
    /// instance is registered. `options` are the instance's metadata;
    /// adapters document the keys they read. `prefix` is the ingress prefix
    /// of the sidecar registering it: what the instance refuses goes to the
    /// dead letters of that prefix's routers, where the protocol lets a
    /// consumer refuse. The default needs nothing.
    async fn prepare_inbox(
        &self,
        _endpoint: &Endpoint,
        _options: &BTreeMap<String, String>,
        _prefix: &str,
    ) -> Result<(), AdapterError> {
        Ok(())
    }

    /// Keeps what the inbox at `endpoint` of an instance of `service` needs
    /// while the instance is registered, until the returned value is
    /// dropped: forwarding what its consumer refuses to the dead letters,
    /// where the broker only tells of it. `None` when there is nothing to
    /// keep (the default).
    async fn follow_inbox(
        &self,
        _endpoint: &Endpoint,
        _service: &str,
    ) -> Result<Option<crate::Announcement>, AdapterError> {
        Ok(None)
    }

    /// How many messages wait in the inbox at `endpoint`, not yet taken by
    /// the instance: what a draining instance still has to work through.
    /// `None` when the broker cannot tell (the default).
    async fn inbox_backlog(&self, _endpoint: &Endpoint) -> Result<Option<u64>, AdapterError> {
        Ok(None)
    }

    /// Removes what [`Provisioning::prepare_inbox`] created for `endpoint`,
    /// if it holds no message: for an instance that will not come back (the
    /// demo's own). The default has nothing to remove.
    async fn remove_inbox(&self, _endpoint: &Endpoint) -> Result<(), AdapterError> {
        Ok(())
    }

    /// Removes the ingress state the broker keeps for `options.queue_group`,
    /// if it holds no message: for a group that will not come back (the
    /// demo's own). The default has nothing to remove.
    async fn remove_ingress(
        &self,
        _broker: &str,
        _options: &IngressOptions,
    ) -> Result<(), AdapterError> {
        Ok(())
    }
}

/// The applications' side, for the demo and tools: publishing to a service
/// and consuming an instance's inbox as the applications would.
#[async_trait]
pub trait AppClient: Send + Sync {
    /// Publishes `message` for `destination` to the ingress address under
    /// `prefix` on `broker`. Resolves once the broker has it, as
    /// [`Target::send`].
    async fn publish_to_ingress(
        &self,
        broker: &str,
        prefix: &str,
        destination: &Destination,
        message: &Message,
    ) -> Result<(), SendError>;

    /// Consumes the inbox at `endpoint` as the instance would, every topic
    /// under it.
    async fn consume_inbox(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Box<dyn InboxConsumer>, AdapterError>;

    /// Where an application publishes for `destination` under `prefix`, in
    /// this protocol's words (e.g. a subject, or an exchange and routing
    /// key).
    fn describe_ingress(&self, prefix: &str, destination: &Destination) -> String;

    /// A broker of its own called `name`, where the adapter can make one (an
    /// in-process broker): a run on it meets no other traffic.
    fn private_broker(&self, _name: &str) -> Option<String> {
        None
    }
}
