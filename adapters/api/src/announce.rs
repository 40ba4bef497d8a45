//! Showing a registered instance in a broker's own service discovery (the
//! NATS Services API, for instance), so that the broker's tools list what
//! Baker routes to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::{AdapterError, Endpoint, IngressOptions};

/// An instance an agent registered, as its broker's discovery shows it.
#[derive(Clone)]
pub struct Announced {
    /// Its service.
    pub service: String,
    /// Its id, unique within the service.
    pub id: String,
    /// Its version, as registered (free-form).
    pub version: String,
    /// Its record's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Its weight.
    pub weight: u32,
    /// Its zone, if its record names one.
    pub zone: Option<String>,
    /// Its inbox.
    pub endpoint: Endpoint,
    /// The ingress applications publish to for it: its prefix and the queue
    /// group of the routers consuming it.
    pub ingress: IngressOptions,
    /// When the agent started announcing it.
    pub started: SystemTime,
    /// Its directory status now (`passing`, `critical`, `draining`).
    pub status: Arc<dyn Fn() -> &'static str + Send + Sync>,
}

/// A task kept for an instance while it is registered (answering for it,
/// following its inbox): it ends when this is dropped.
pub struct Announcement(tokio::task::JoinHandle<()>);

impl Announcement {
    /// The announcement `task` makes: it ends when this is dropped.
    pub fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(task)
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Announcing instances in the broker's discovery.
#[async_trait]
pub trait Announcing: Send + Sync {
    /// Starts answering the broker's discovery requests for `instance`, on
    /// its inbox's broker, until the returned value is dropped.
    async fn announce(&self, instance: Announced) -> Result<Announcement, AdapterError>;
}
