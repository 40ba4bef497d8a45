//! The protocols the scenario suite runs each scenario on: what differs
//! between them (how a router is started, how an instance's inbox is
//! consumed, how an application publishes) behind one small trait, so that a
//! scenario is written once.

use std::ops::Range;
use std::time::Duration;

use super::{amqp, Inbox, Proc};

pub mod mosquitto;
pub mod nats;
pub mod rabbitmq;

/// How fast a publisher goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Steady traffic over a few seconds (20,000 messages take about 4 s),
    /// below anything the broker drops: long enough for a fault to land
    /// mid-stream.
    Steady,
    /// As fast as the broker takes it without dropping any, sustained.
    Fast,
    /// As fast as the client publishes, for a backlog at the router (at most
    /// 20,000 messages: within what core NATS buffers for a subscriber).
    Burst,
}

/// A reply as the requester got it.
#[derive(Debug)]
pub struct Reply {
    pub payload: String,
    /// Its `baker-error` header: why the request was not delivered.
    pub error: Option<String>,
}

/// A dead letter as an operator reads it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    /// Its `baker-error` header: why it was not delivered.
    pub reason: Option<String>,
    /// Its `baker-attempts` header.
    pub attempts: Option<String>,
}

/// The dead letters collected so far, as they arrive.
pub type DeadLetters = std::sync::Arc<std::sync::Mutex<Vec<DeadLetter>>>;

/// One protocol, set up for one test (its own vhost, broker, or names).
/// The suite runs on one thread per test and never sends these futures
/// elsewhere, so no `Send` bound is asked of them.
#[allow(async_fn_in_trait)]
pub trait Protocol: Sized {
    /// The adapter's name in instance records.
    const ADAPTER: &'static str;

    /// Sets up what one test needs on this protocol.
    async fn setup() -> Self;

    /// The URL of a broker of this protocol at `127.0.0.1:port`.
    fn broker_at(&self, port: u16) -> String;

    /// The default inbox address of `service`/`id`.
    fn inbox_address(&self, service: &str, id: &str) -> String {
        format!("_baker.{service}.{id}")
    }

    /// The arguments of router number `router` on this protocol's ingress
    /// (without the directory and admin address). Routers share the
    /// ingress; a router started again with the same number is the same
    /// router (on MQTT: the same session).
    fn router_args(&self, router: usize) -> Vec<String>;

    /// An agent registering `spec` (a whole `--register` value) with its
    /// inbox on this protocol.
    fn agent_registering(&self, directory: &str, spec: &str) -> Proc;

    /// An agent registering `service`/`id` with its inbox on this protocol.
    fn agent(&self, directory: &str, service: &str, id: &str) -> Proc {
        self.agent_registering(directory, &format!("service={service},id={id}"))
    }

    /// Consumes the inbox of `service`/`id` as the instance would, counting
    /// the sequence numbers that arrive.
    async fn inbox(&self, service: &str, id: &str) -> Inbox;

    /// Publishes payloads `seqs` (each its sequence number) to `topic` of
    /// `service` as an application would; returns once the broker has them
    /// all (as far as the protocol says). `Send`, so that traffic can run in
    /// a task of its own while a test changes things.
    fn publish(
        &self,
        service: &str,
        topic: &str,
        seqs: Range<u64>,
        pace: Pace,
    ) -> impl std::future::Future<Output = ()> + Send;

    /// Answers every request that reaches the inbox of `service`/`id` with
    /// `pong:<payload>`, as the instance would, until the task is aborted.
    /// `None` where the protocol's ingress takes no requests.
    async fn responder(&self, _service: &str, _id: &str) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    /// Sends a request with `payload` to `topic` of `service` as an
    /// application would, and waits up to 10 s for the reply: its payload
    /// and its `baker-error` header.
    async fn request(&self, _service: &str, _topic: &str, _payload: &str) -> Reply {
        unimplemented!("this protocol's ingress takes no requests")
    }

    /// Publishes one message with `payload` to `topic` of `service`.
    async fn publish_payload(&self, service: &str, topic: &str, payload: Vec<u8>);

    /// Starts reading the dead letters of `services` as an operator would;
    /// `None` where the ingress keeps none (core NATS).
    async fn dead_letters(&self, _services: &[&str]) -> Option<DeadLetters> {
        None
    }

    /// How long a late copy of a message may still be on its way once every
    /// message arrived.
    fn settle(&self) -> Duration {
        amqp::SETTLE
    }

    /// Removes what the test left on a shared broker.
    async fn teardown(self) {}
}
