//! What goes wrong in the AMQP adapter. Each message says what was being
//! done, and where; lapin's error stays reachable as the source.

/// An AMQP adapter error.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// The connection did not open in time.
    #[error("connecting to {broker} timed out")]
    ConnectTimeout { broker: String },
    /// The connection or its first channel could not be opened.
    #[error("connecting to {broker}: {source}")]
    Connect {
        broker: String,
        #[source]
        source: lapin::Error,
    },
    /// The broker URL does not parse as an AMQP URI.
    #[error("broker URL {broker}: {reason}")]
    Url { broker: String, reason: String },
    /// A further channel could not be opened.
    #[error("opening a channel on {broker}: {source}")]
    Channel {
        broker: String,
        #[source]
        source: lapin::Error,
    },
    /// The connection went away while it was being used.
    #[error("connection lost")]
    ConnectionLost,
    /// A queue (and what it is bound to) could not be declared or consumed.
    #[error("setting up the {role} queue {queue}: {source}")]
    Setup {
        role: &'static str,
        queue: String,
        #[source]
        source: lapin::Error,
    },
    /// The task making a connection attempt failed.
    #[error("connection attempt failed: {0}")]
    Attempt(#[source] tokio::task::JoinError),
    /// A value from another protocol does not fit an AMQP short string.
    #[error("{what} of {len} bytes does not fit AMQP's 255")]
    TooLong { what: &'static str, len: usize },
    /// A topic level from another protocol holds the `.` that separates
    /// AMQP's levels.
    #[error(transparent)]
    Topic(#[from] baker_adapter_api::TopicError),
}
