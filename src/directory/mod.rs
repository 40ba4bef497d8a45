//! Service discovery: instance records, the embedded directory (store and
//! HTTP server) and its client, the directory on a JetStream key-value
//! bucket, and the watcher that keeps a router's last known view of either.

pub mod client;
pub mod http;
#[cfg(feature = "nats")]
pub mod kv;
pub mod record;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod watch;

pub use client::{ClientError, DirectoryClient};
pub use record::{Catalog, EndpointRecord, InstanceRecord, Status};
pub use watch::{DirectoryHealth, DirectoryStatus, Watcher};

/// Where the directory is when none is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
