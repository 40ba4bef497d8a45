//! Errors adapters report to the core.

/// Why a send to an instance failed, and so what the core does next.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The instance or its broker cannot take the message now: try another
    /// instance.
    #[error("instance unavailable: {0}")]
    Unavailable(String),
    /// The instance's broker cannot be reached at all (connection down):
    /// try another instance, and if none takes the message, hand it back to
    /// the ingress for redelivery rather than dead-lettering it, since the
    /// message itself is fine.
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The message itself is unacceptable (too large, malformed): retrying
    /// elsewhere would fail the same way, so it is dead-lettered.
    #[error("message rejected: {0}")]
    Rejected(String),
}

/// Failure to set up an ingress or bind an egress target.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The broker URL cannot be used by this adapter.
    #[error("invalid broker URL {url:?}: {reason}")]
    InvalidBroker { url: String, reason: String },
    /// The inbox address is not valid for this adapter.
    #[error("invalid inbox {inbox:?}: {reason}")]
    InvalidInbox { inbox: String, reason: String },
    /// The adapter does not offer this operation.
    #[error("the {adapter} adapter does not support {what}")]
    Unsupported { adapter: &'static str, what: String },
    /// The broker refused or failed an operation.
    #[error("broker {url}: {reason}")]
    Broker { url: String, reason: String },
}
