//! An adapter's ingress: the deliveries it takes from its broker, what it
//! subscribes to, and its connection state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::{AckHandle, Destination, Message};

/// One message taken from the ingress, with the promise to settle it.
#[derive(Debug)]
pub struct Delivery {
    /// The message as published.
    pub message: Message,
    /// The service and topic it is addressed to.
    pub destination: Destination,
    /// Settles the original message once the core is done with it.
    pub ack: AckHandle,
}

/// What an ingress subscribes to.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// Address prefix under which apps publish (`baker` by default).
    pub prefix: String,
    /// Name shared by every router consuming the same ingress, so they split
    /// the messages instead of each getting a copy.
    pub queue_group: String,
    /// How many deliveries the adapter may buffer ahead of the core.
    pub buffer: usize,
    /// This router among the others of its queue group.
    pub member: Member,
}

/// A router's own name among the routers of its queue group, for protocols
/// where each consumer needs one (an MQTT session's client id): unique per
/// sidecar on a host, and, when [`Member::kept`] says so, the same across
/// the sidecar's restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Short, and made of ASCII letters and digits only.
    pub id: String,
    /// How the id was made, which says whether the next run has it too.
    pub kept: MemberKept,
}

/// How a [`Member`] id was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKept {
    /// Made once and saved in the state directory.
    StateDir,
    /// Derived from the instances the sidecar registers.
    Registrations,
    /// Made for this run only: the next run gets another.
    ThisRun,
}

impl Member {
    /// A member id made for this run only.
    pub fn this_run() -> Self {
        Self {
            id: format!("{:08x}", fastrand::u32(..)),
            kept: MemberKept::ThisRun,
        }
    }

    /// Whether the next run of this sidecar gets the same id.
    pub fn is_stable(&self) -> bool {
        self.kept != MemberKept::ThisRun
    }
}

/// Whether an ingress is connected to its broker right now, and what is
/// wrong with it when something the operator must fix is, readable by the
/// health endpoints while the router owns the ingress.
#[derive(Clone)]
pub struct IngressStatus {
    connected: Arc<dyn Fn() -> bool + Send + Sync>,
    problem: Option<Arc<dyn Fn() -> Option<String> + Send + Sync>>,
}

impl IngressStatus {
    /// Reads the connection state with `connected`.
    pub fn new(connected: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            connected: Arc::new(connected),
            problem: None,
        }
    }

    /// Follows a flag the ingress sets as its connection comes and goes.
    pub fn flag(connected: Arc<AtomicBool>) -> Self {
        Self::new(move || connected.load(Ordering::Relaxed))
    }

    /// For an ingress with no connection to lose (in-process).
    pub fn always_connected() -> Self {
        Self::new(|| true)
    }

    /// Also reads, with `problem`, a fault that retrying will not mend (a
    /// session another client takes over, say), with its cause and fix.
    pub fn with_problem(
        mut self,
        problem: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.problem = Some(Arc::new(problem));
        self
    }

    /// Whether the ingress is connected now.
    pub fn is_connected(&self) -> bool {
        (self.connected)()
    }

    /// A fault the operator must fix, if there is one now.
    pub fn problem(&self) -> Option<String> {
        self.problem.as_ref().and_then(|problem| problem())
    }
}

impl std::fmt::Debug for IngressStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressStatus")
            .field("connected", &self.is_connected())
            .field("problem", &self.problem())
            .finish()
    }
}

/// A stream of deliveries from one broker.
#[async_trait]
pub trait Ingress: Send {
    /// The next delivery, waiting for one if needed. `None` once the ingress
    /// is closed and drained. Must be cancel-safe: the router polls it in a
    /// `select!`, and a dropped call must not lose a message.
    async fn next(&mut self) -> Option<Delivery>;

    /// A delivery that has already arrived, without waiting; `None` when
    /// there is none right now.
    fn try_next(&mut self) -> Option<Delivery>;

    /// Stops taking new messages from the broker (they go to other routers
    /// of the queue group, or stay in the broker); `next` still yields what
    /// was already received, then `None`. Used for a graceful stop.
    async fn close(&mut self);

    /// Called at a graceful stop once every delivery taken has been settled
    /// (or the drain timed out): waits until the settlements have reached the
    /// broker, so that nothing already delivered is redelivered after the
    /// process exits. The default has nothing to wait for.
    async fn finish(&mut self) {}

    /// Its connection state, for `/healthz` and `/readyz`: an ingress that
    /// lost its broker and is reconnecting is not ready.
    fn status(&self) -> IngressStatus;
}
