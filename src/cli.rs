//! Command-line interface: the subcommands, and the sidecar's options
//! ([`Options`], shared with the config file).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use crate::config::{LogFormat, Options};

/// Service discovery and routing sidecar for asynchronous messaging.
///
/// Run with no subcommand, baker-mq is a sidecar: it routes what local apps
/// publish to `baker.<service>.<topic>` to a healthy instance of the service,
/// registers the instances given with --register, and joins (or serves) the
/// directory.
#[derive(Debug, Parser)]
#[command(
    name = "baker-mq",
    version,
    propagate_version = true,
    allow_negative_numbers = true
)]
pub struct Cli {
    /// TOML config file; its keys mirror the long flags (docs/configuration.md).
    #[arg(
        long,
        short = 'c',
        env = "BAKER_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// The sidecar's options; each also a file key and a `BAKER_*` variable.
    #[command(flatten)]
    pub options: Options,

    #[command(subcommand)]
    pub command: Option<Command>,
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
        #[arg(long = "adapter", id = "demo_adapter", default_value = crate::adapters::IN_PROCESS_ADAPTER)]
        adapter: String,
        /// Broker URL [default: the adapter's]
        #[arg(long = "broker", id = "demo_broker", value_name = "URL")]
        broker: Option<String>,
    },
    /// Make a directory token: prints the token on standard output (for the
    /// sidecars' directory_token_file) and the directory's
    /// `[[directory_tokens]]` entry, which holds only its SHA-256, on
    /// standard error.
    Token {
        /// A name for the directory's logs, e.g. orders-agents.
        #[arg(long)]
        name: String,
        /// Services the token may register (comma-separated; * for every
        /// one). None for a router's token.
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
        /// The token may not read the catalog.
        #[arg(long)]
        no_read: bool,
    },
    /// Check the configuration (file, flags, variables, and the files they
    /// name: secrets, certificates) without starting anything: exits 0 and
    /// says what would run, or non-zero naming the key that is wrong.
    Validate,
    /// Write the JSON Schemas of the instance record, config file and
    /// baker-* headers into a directory.
    Schemas {
        /// Output directory.
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
}
