//! Baker: a service discovery and routing sidecar for asynchronous messaging.
//!
//! The routing core and the process around it. The core ([`router`]) sees
//! only the adapter traits of `baker-adapter-api`; protocols live in the
//! adapter crates, registered in [`adapters`].

pub mod adapters;
pub mod admin;
pub mod agent;
pub mod cli;
pub mod config;
pub mod demo;
pub mod directory;
pub mod drain;
pub mod health;
pub mod http_tls;
pub mod member;
pub mod router;
pub mod schemas;
pub mod shutdown;
pub mod sidecar;
pub mod status;
pub mod traces;
