//! Service discovery in the core: the embedded directory (store and HTTP
//! server) and its client, the client every engine is used through, and the
//! watcher that keeps a router's last known view. The records and the
//! [`Directory`] trait are `baker-directory-api`'s; other engines are crates
//! of their own, listed in `src/adapters.rs`.

pub mod auth;
pub mod client;
pub mod http;
pub mod interest;
pub mod owner;
pub mod preserve;
pub mod server;
pub mod snapshot;
pub mod store;
mod view;
pub mod watch;

pub use baker_directory_api::record;
pub use baker_directory_api::{
    Catalog, Changes, ClientError, Directory, EndpointRecord, InstanceRecord, Removal,
    RemovalCause, Status,
};
pub use client::DirectoryClient;
pub use interest::Interest;
pub use watch::{DirectoryHealth, DirectoryStatus, View, Watcher};

/// Where the directory is when none is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
