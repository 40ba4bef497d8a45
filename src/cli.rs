//! Command-line interface. Every option of the sidecar can also be set by a
//! `BAKER_*` environment variable or a key of the config file; the flag wins
//! over the variable, the variable over the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Service discovery and routing sidecar for asynchronous messaging.
///
/// Run with no subcommand, baker-mq is a sidecar: it routes what local apps
/// publish to `baker.<service>.<topic>` to a healthy instance of the service,
/// registers the instances given with --register, and joins (or serves) the
/// directory.
#[derive(Debug, Parser)]
#[command(name = "baker-mq", version, propagate_version = true)]
pub struct Cli {
    /// TOML config file; its keys mirror the long flags (see README).
    #[arg(
        long,
        short = 'c',
        env = "BAKER_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Log filter, e.g. `debug` or `baker_mq=debug` [default: Baker at info, libraries at warn]
    #[arg(long, env = "BAKER_LOG", global = true, value_name = "FILTER")]
    pub log: Option<String>,

    /// Log format [default: text]
    #[arg(long, env = "BAKER_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Runtime threads; 1 runs everything on one thread, which is the most
    /// efficient for a sidecar routing one broker's ingress [default: 1]
    #[arg(long, env = "BAKER_WORKER_THREADS", global = true, value_name = "N")]
    pub worker_threads: Option<usize>,

    #[command(flatten)]
    pub sidecar: SidecarArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How the NATS adapter takes its ingress.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NatsIngress {
    /// A queue-group subscription: at most once.
    #[default]
    Core,
    /// A JetStream work-queue stream and durable consumer: at least once.
    Jetstream,
}

/// Log output format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Options of the sidecar (router and agent).
#[derive(Debug, Args, Default)]
pub struct SidecarArgs {
    /// Broker adapter for the ingress and for registered instances [default: nats]
    #[arg(long, env = "BAKER_ADAPTER", value_name = "NAME")]
    pub adapter: Option<String>,

    /// Broker URL [default: the adapter's local default, e.g. nats://127.0.0.1:4222]
    #[arg(long, env = "BAKER_BROKER", value_name = "URL")]
    pub broker: Option<String>,

    /// Directory URL. Without it, baker-mq uses the directory at
    /// http://127.0.0.1:7070 and serves it there itself when nothing answers.
    #[arg(long, env = "BAKER_DIRECTORY", value_name = "URL")]
    pub directory: Option<String>,

    /// Admin HTTP address (/healthz, /readyz, /metrics, /v1/status)
    /// [default: 127.0.0.1:7071, or a free port if that is taken]
    #[arg(long, env = "BAKER_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// Register a local instance:
    /// service=NAME,id=ID[,version=V][,weight=W][,zone=Z][,ttl=SECS][,adapter=A][,broker=URL][,inbox=ADDR].
    /// Repeatable; in BAKER_REGISTER separate several with ';'.
    #[arg(
        long = "register",
        env = "BAKER_REGISTER",
        value_delimiter = ';',
        value_name = "SPEC"
    )]
    pub register: Vec<String>,

    /// Routing policy of a service: SERVICE=POLICY, POLICY one of round_robin,
    /// random, least_outstanding, weighted, consistent_hash, broadcast.
    /// Repeatable; in BAKER_POLICY separate several with ';'.
    #[arg(
        long = "policy",
        env = "BAKER_POLICY",
        value_delimiter = ';',
        value_name = "SERVICE=POLICY"
    )]
    pub policy: Vec<String>,

    /// Route SERVICE by version: a message with header HEADER (default
    /// baker-version) goes only to instances of the version it names (repeatable)
    #[arg(
        long = "version-routing",
        env = "BAKER_VERSION_ROUTING",
        value_name = "SERVICE[=HEADER]",
        value_delimiter = ';'
    )]
    pub version_routing: Vec<String>,

    /// Do not route: only register instances (agent only).
    #[arg(long, env = "BAKER_NO_ROUTER")]
    pub no_router: bool,

    /// Lease TTL of registered instances, in seconds [default: 10]
    #[arg(long, env = "BAKER_TTL", value_name = "SECS")]
    pub ttl: Option<u64>,

    /// Most messages between ingress and settlement at once [default: 1024]
    #[arg(long, env = "BAKER_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,

    /// Send attempts per message before it is dead-lettered [default: 3]
    #[arg(long, env = "BAKER_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,

    /// Failed sends in a row that eject an instance from routing for a while; 0 never ejects [default: 5]
    #[arg(long, env = "BAKER_OUTLIER_FAILURES", value_name = "N")]
    pub outlier_failures: Option<u32>,

    /// Seconds a first ejection lasts; each further one doubles it, up to 300 [default: 5]
    #[arg(long, env = "BAKER_OUTLIER_EJECTION_SECS", value_name = "SECS")]
    pub outlier_ejection_secs: Option<u64>,

    /// NATS ingress: core (at most once) or jetstream (at least once, through
    /// a work-queue stream and a shared durable consumer) [default: core]
    #[arg(long, env = "BAKER_NATS_INGRESS", value_name = "core|jetstream")]
    pub nats_ingress: Option<NatsIngress>,

    /// Longest a leaving instance waits for its inbox to empty before it is
    /// deregistered anyway [default: 30]
    #[arg(long, env = "BAKER_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,

    /// Directory where the router saves its view of the directory, to route
    /// from it when it starts while the directory is unreachable [default: none]
    #[arg(long, env = "BAKER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,

    /// Largest payload routed, in bytes; larger ones are dead-lettered [default: 1048576]
    #[arg(long, env = "BAKER_MAX_PAYLOAD", value_name = "BYTES")]
    pub max_payload: Option<usize>,

    /// Address prefix apps publish under [default: baker]
    #[arg(long, env = "BAKER_INGRESS_PREFIX", value_name = "PREFIX")]
    pub ingress_prefix: Option<String>,

    /// Queue group shared by routers splitting one ingress [default: baker]
    #[arg(long, env = "BAKER_QUEUE_GROUP", value_name = "NAME")]
    pub queue_group: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the embedded directory (HTTP/JSON) and nothing else.
    Directory {
        /// Address to listen on [default: 127.0.0.1:7070]
        #[arg(long, env = "BAKER_LISTEN", value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Print the routing table of a running baker-mq.
    Status {
        /// Admin address of the baker-mq to ask [default: 127.0.0.1:7071]
        #[arg(long, env = "BAKER_ADMIN", value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drain instances of a running baker-mq: each is marked draining (routers
    /// send it nothing new), waits for its inbox to empty, and is deregistered.
    /// With no INSTANCE, every instance of that baker-mq, which then exits.
    Drain {
        /// The instance to drain, as SERVICE/ID.
        instance: Option<String>,
        /// Admin address of the baker-mq [default: 127.0.0.1:7071]
        #[arg(long, env = "BAKER_ADMIN", value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// Longest wait, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// The whole story in one process, with no broker: discovery, load
    /// balancing, a failing health check, a canary, a rollout and a drain,
    /// with messages flowing throughout and none lost.
    Demo {
        /// Messages published per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds each step of the story lasts.
        #[arg(long, default_value_t = 2.0)]
        phase_secs: f64,
        /// Broker adapter the story runs on: memory (in-process, no broker),
        /// nats, amqp or mqtt.
        #[arg(long = "adapter", id = "demo_adapter", default_value = "memory")]
        adapter: String,
        /// Broker URL [default: the adapter's]
        #[arg(long = "broker", id = "demo_broker", value_name = "URL")]
        broker: Option<String>,
    },
    /// Write the JSON Schemas of the instance record, config file and
    /// baker-* headers into a directory.
    Schemas {
        /// Output directory.
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
}
