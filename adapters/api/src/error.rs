//! Errors adapters report to the core.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// What went wrong underneath a [`SendError`]: the adapter's own error (or
/// its client library's), kept whole so that its sources stay reachable, or
/// a message where there is no error value.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync + 'static>);

impl Cause {
    /// The cause `error`.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// The error itself, e.g. to downcast it to the adapter's error type.
    pub fn error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

/// A cause that is only a message.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Message {}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self(Arc::new(Message(message)))
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Why a send to an instance failed, and so what the core does next. Its
/// text says why (the cause's text); [`Error::source`] is what lies under
/// the cause, and [`SendError::cause`] the cause itself.
#[derive(Debug, Clone)]
pub enum SendError {
    /// The instance or its broker cannot take the message now: try another
    /// instance.
    Unavailable(Cause),
    /// The instance's broker cannot be reached at all (connection down):
    /// try another instance, and if none takes the message, hand it back to
    /// the ingress for redelivery rather than dead-lettering it, since the
    /// message itself is fine.
    Unreachable(Cause),
    /// The message itself is unacceptable (too large, malformed): retrying
    /// elsewhere would fail the same way, so it is dead-lettered.
    Rejected(Cause),
}

impl SendError {
    /// [`SendError::Unavailable`] for `cause`.
    pub fn unavailable(cause: impl Into<Cause>) -> Self {
        Self::Unavailable(cause.into())
    }

    /// [`SendError::Unreachable`] for `cause`.
    pub fn unreachable(cause: impl Into<Cause>) -> Self {
        Self::Unreachable(cause.into())
    }

    /// [`SendError::Rejected`] for `cause`.
    pub fn rejected(cause: impl Into<Cause>) -> Self {
        Self::Rejected(cause.into())
    }

    /// Why the send failed.
    pub fn cause(&self) -> &Cause {
        match self {
            Self::Unavailable(cause) | Self::Unreachable(cause) | Self::Rejected(cause) => cause,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Self::Unavailable(_) => "instance unavailable",
            Self::Unreachable(_) => "broker unreachable",
            Self::Rejected(_) => "message rejected",
        };
        write!(f, "{what}: {}", self.cause())
    }
}

impl Error for SendError {
    /// What lies under the cause: the cause's own text is already in this
    /// error's.
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause().0.source()
    }
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
    /// The broker refused or failed an operation.
    #[error("broker {url}: {reason}")]
    Broker { url: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("publish failed")]
    struct Publish(#[source] std::io::Error);

    #[test]
    fn a_send_error_keeps_its_cause_and_what_lies_under_it() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let error = SendError::unreachable(Cause::new(Publish(io)));
        assert_eq!(error.to_string(), "broker unreachable: publish failed");
        assert!(error.cause().error().downcast_ref::<Publish>().is_some());
        assert_eq!(error.source().unwrap().to_string(), "reset by peer");
        let plain = SendError::rejected("too large");
        assert_eq!(plain.to_string(), "message rejected: too large");
        assert!(plain.source().is_none());
    }
}
