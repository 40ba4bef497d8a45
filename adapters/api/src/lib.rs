//! The small interface every Baker broker adapter implements.
//!
//! The routing core sees only these types. An adapter turns what its broker
//! delivers into [`Delivery`] values (an [`Ingress`]), and sends messages to an
//! instance's inbox (a [`Target`], bound from an [`Endpoint`]). Each delivery
//! carries an [`AckHandle`]: the adapter's promise to settle the original
//! message exactly once, which counts as a failure if it is dropped unsettled,
//! so no code path can acknowledge a message by forgetting it.

pub mod access;
mod ack;
mod adapter;
mod announce;
mod backoff;
pub mod cloudevents;
mod error;
mod every;
mod ids;
mod ingress;
mod message;
pub mod tls;

pub use access::{
    broker_key, has_credentials, redact_url, split_query, without_credentials, AccessBook,
    AccessError, BrokerAccess, Secret, TlsFiles,
};
pub use ack::{code, AckHandle, Settle, Settlement, Settling};
pub use adapter::{
    is_refusal, Adapter, AppClient, BrokerHealth, InboxConsumer, Provisioning, Replies, Reply,
    ReplyInbox, Roles, Target,
};
pub use announce::{Announced, Announcement, Announcing};
pub use backoff::Backoff;
pub use error::{AdapterError, Cause, SendError};
pub use every::Every;
pub use ids::new_message_id;
pub use ingress::{Delivery, Ingress, IngressOptions, IngressStatus, Member, MemberKept};
pub use message::{
    Destination, Endpoint, HeaderText, Headers, Message, Native, Properties, Topic, TopicError,
};

/// Whether `address` is `prefix` or below it, its levels split by
/// `separator` (`baker.orders` is under `baker`; `bakery` is not).
pub fn address_under(address: &str, prefix: &str, separator: char) -> bool {
    address
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(separator))
}

/// Names of the headers Baker adds to, or reads from, messages it routes.
///
/// Baker stamps a header only where something reads it (`schemas/
/// headers.schema.json`): a message id only on messages from an ingress that
/// can deliver them again, an attempt number only on retries.
pub mod header {
    /// Baker's id of a message from an at-least-once ingress (the same on
    /// every redelivery where the ingress can say so), kept across retries.
    /// Baker's own: a value the publisher set is replaced, or, where Baker
    /// sets none, removed, so that no publisher's id is taken for a dedupe
    /// key unasked.
    pub const MSG_ID: &str = "baker-msg-id";
    /// On a retry: 2 for the first retry, 3 for the next, and so on (none on
    /// the first attempt).
    pub const ATTEMPT: &str = "baker-attempt";
    /// On a message delivered to an address that may be another Baker's
    /// ingress (an inbox not under `_`, where Baker's inboxes live and no
    /// ingress prefix may): how many Bakers have routed it.
    pub const HOPS: &str = "baker-hops";
    /// Routing key for the `consistent_hash` policy.
    pub const KEY: &str = "baker-key";
    /// The instance version a message must go to, for services routed by
    /// version.
    pub const VERSION: &str = "baker-version";
    /// Why a message was dead-lettered or answered with an error.
    pub const ERROR: &str = "baker-error";
    /// On a dead-lettered message: how many delivery attempts were made.
    pub const ATTEMPTS: &str = "baker-attempts";
    /// The topic the publisher addressed, for inboxes that cannot carry it in
    /// the address itself.
    pub const TOPIC: &str = "baker-topic";
    /// On a shadow copy (`true`): a copy of a message delivered elsewhere,
    /// sent to an instance of the version being tried. Baker's own: removed
    /// from what publishers send.
    pub const SHADOW: &str = "baker-shadow";
}
