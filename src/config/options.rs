//! The options of the sidecar, in one type read from three places: flags,
//! `BAKER_*` variables (both by clap) and the config file (by serde). The
//! file's keys are the long flags' names with `_` for `-`; the flag wins over
//! the variable, the variable over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, ValueEnum};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use super::registration::Registration;
use crate::router::zones::ZoneMode;
use crate::router::PolicyKind;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The options of baker-mq. Every one is optional; what is unset takes its
/// default when the settings are resolved.
#[derive(Debug, Clone, Default, Args, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Broker adapter for the ingress and for registered instances [default: nats]
    #[arg(long, env = "BAKER_ADAPTER", value_name = "NAME")]
    pub adapter: Option<String>,

    /// Broker URL; its query holds the adapter's own settings (see docs/protocols.md)
    /// [default: the adapter's local default, e.g. nats://127.0.0.1:4222]
    #[arg(long, env = "BAKER_BROKER", value_name = "URL")]
    pub broker: Option<String>,

    /// Directory URL: http://HOST:PORT (embedded directory) or
    /// nats://HOST:PORT[,HOST:PORT...] (JetStream key-value bucket). Without
    /// it, baker-mq uses the directory at http://127.0.0.1:7070 and serves it
    /// there itself when nothing answers.
    #[arg(long, env = "BAKER_DIRECTORY", value_name = "URL")]
    pub directory: Option<String>,

    /// File holding the token this sidecar gives the directory
    /// (`Authorization: Bearer`); BAKER_DIRECTORY_TOKEN may hold the token
    /// itself [default: none]
    #[arg(
        long,
        env = "BAKER_DIRECTORY_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub directory_token_file: Option<PathBuf>,

    /// Admin HTTP address (/healthz, /readyz, /metrics, /v1/status)
    /// [default: 127.0.0.1:7071, or a free port if that is taken]
    #[arg(long, env = "BAKER_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// File holding the admin API's token: requests that change state
    /// (drain) must carry `Authorization: Bearer TOKEN`. BAKER_ADMIN_TOKEN
    /// may hold the token itself. Needed when the admin address is not
    /// loopback [default: none]
    #[arg(
        long,
        env = "BAKER_ADMIN_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// Instances to register. On the command line:
    /// `service=NAME,id=ID[,version=V][,weight=W][,zone=Z][,ttl=SECS][,adapter=A][,broker=URL][,inbox=ADDR][,check=URL][,check_interval_ms=N][,rise=N][,fall=N]`;
    /// repeatable, and in BAKER_REGISTER separated by ';'. In the file: `[[register]]` tables.
    #[arg(
        long = "register",
        env = "BAKER_REGISTER",
        value_delimiter = ';',
        value_name = "SPEC"
    )]
    #[serde(default)]
    pub register: Vec<Registration>,

    /// Routing policy per service: SERVICE=POLICY on the command line
    /// (repeatable; ';' between several in BAKER_POLICY), `orders =
    /// "consistent_hash"` in a `[policy]` table. POLICY is one of round_robin,
    /// random, least_outstanding, weighted, consistent_hash, broadcast.
    #[arg(
        long = "policy",
        env = "BAKER_POLICY",
        value_delimiter = ';',
        value_name = "SERVICE=POLICY"
    )]
    #[serde(default, deserialize_with = "service_map")]
    #[schemars(with = "BTreeMap<String, PolicyKind>")]
    pub policy: Vec<ServicePolicy>,

    /// Services routed by version: a message carrying the header (default
    /// baker-version) goes only to instances of the version it names.
    /// SERVICE[=HEADER] on the command line (repeatable), `orders =
    /// "baker-version"` in a `[version_routing]` table.
    #[arg(
        long = "version-routing",
        env = "BAKER_VERSION_ROUTING",
        value_name = "SERVICE[=HEADER]",
        value_delimiter = ';'
    )]
    #[serde(default, deserialize_with = "service_map")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub version_routing: Vec<VersionRoute>,

    /// This sidecar's zone (an availability zone or any other locality):
    /// the zone its router prefers for the services in zone_routing, and the
    /// zone of the instances it registers that name none [default: none]
    #[arg(long, env = "BAKER_ZONE", value_name = "ZONE")]
    pub zone: Option<String>,

    /// Services whose messages go to instances in this router's zone while
    /// one there can take them, and to every zone only while none can.
    /// SERVICE[=MODE] on the command line (repeatable; ';' between several
    /// in BAKER_ZONE_ROUTING), `orders = "strict"` in a `[zone_routing]`
    /// table; `*` names every service not named on its own. MODE is strict
    /// (the default) or off. Needs zone [default: none]
    #[arg(
        long = "zone-routing",
        env = "BAKER_ZONE_ROUTING",
        value_name = "SERVICE[=MODE]",
        value_delimiter = ';'
    )]
    #[serde(default, deserialize_with = "service_map")]
    #[schemars(with = "BTreeMap<String, ZoneMode>")]
    pub zone_routing: Vec<ZoneRoute>,

    /// Shadow traffic: a copy of a share of a service's messages goes to its
    /// instances of a version, which get nothing else.
    /// `SERVICE=VERSION:PERCENT[:MAX_IN_FLIGHT]` on the command line
    /// (repeatable; ';' between several in BAKER_SHADOW), `orders = {
    /// version = "2.4.0", percent = 10 }` in a `[shadow]` table. PERCENT is
    /// more than 0 and at most 100 (to a tenth); MAX_IN_FLIGHT, the most
    /// copies under way at once (more are dropped), defaults to 100
    #[arg(
        long = "shadow",
        env = "BAKER_SHADOW",
        value_name = "SERVICE=VERSION:PERCENT[:MAX_IN_FLIGHT]",
        value_delimiter = ';'
    )]
    #[serde(default, deserialize_with = "service_map")]
    #[schemars(with = "BTreeMap<String, ShadowSpec>")]
    pub shadow: Vec<ShadowEntry>,

    /// Brokers this router may connect to for an instance, besides its own
    /// (`--broker`): a record naming any other broker is not routed to.
    /// URLs without credentials; repeatable, ';' between several in
    /// BAKER_ALLOWED_BROKERS [default: any broker]
    #[arg(
        long = "allowed-broker",
        env = "BAKER_ALLOWED_BROKERS",
        value_delimiter = ';',
        value_name = "URL"
    )]
    #[serde(default)]
    pub allowed_brokers: Vec<String>,

    /// Services this router follows in the directory from the start; `*`
    /// follows every service. Others are followed from their first message
    /// on. Repeatable, ';' between several in BAKER_WATCH [default: none]
    #[arg(
        long,
        env = "BAKER_WATCH",
        value_delimiter = ';',
        value_name = "SERVICE"
    )]
    #[serde(default)]
    pub watch: Vec<String>,

    /// A service followed from its messages (not in `watch`) is followed no
    /// more after this many seconds without one [default: 600]
    #[arg(long, env = "BAKER_WATCH_IDLE_SECS", value_name = "SECS")]
    pub watch_idle_secs: Option<u64>,

    /// Do not route: only register instances (agent only).
    #[arg(long, env = "BAKER_NO_ROUTER")]
    #[serde(default)]
    pub no_router: bool,

    /// Do not show registered instances in their broker's own service
    /// discovery (on NATS, the Services API: `$SRV.PING`, `$SRV.INFO`,
    /// `$SRV.STATS`, which `nats micro ls` reads).
    #[arg(long, env = "BAKER_NO_ANNOUNCE")]
    #[serde(default)]
    pub no_announce: bool,

    /// Lease TTL of registered instances, in seconds [default: 10]
    #[arg(long, env = "BAKER_TTL", value_name = "SECS")]
    pub ttl: Option<u64>,

    /// Most messages between ingress and settlement at once [default: 1024]
    #[arg(long, env = "BAKER_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,

    /// Send attempts per message before it is dead-lettered [default: 3]
    #[arg(long, env = "BAKER_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<u32>,

    /// Failed sends in a row that eject an instance from routing for a while;
    /// 0 never ejects [default: 5]
    #[arg(long, env = "BAKER_OUTLIER_FAILURES", value_name = "N")]
    pub outlier_failures: Option<u32>,

    /// Seconds a first ejection lasts; each further one doubles it, up to 300 [default: 5]
    #[arg(long, env = "BAKER_OUTLIER_EJECTION_SECS", value_name = "SECS")]
    pub outlier_ejection_secs: Option<u64>,

    /// Longest a leaving instance waits for its inbox to empty before it is
    /// deregistered anyway, in seconds [default: 30]
    #[arg(long, env = "BAKER_DRAIN_TIMEOUT_SECS", value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,

    /// Directory where the router saves its view of the directory, to route
    /// from it when it starts while the directory is unreachable [default: none]
    #[arg(long, env = "BAKER_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Largest payload routed, in bytes; larger ones are dead-lettered [default: 1048576]
    #[arg(long, env = "BAKER_MAX_PAYLOAD", value_name = "BYTES")]
    pub max_payload: Option<usize>,

    /// Address prefix apps publish under [default: baker]
    #[arg(long, env = "BAKER_INGRESS_PREFIX", value_name = "PREFIX")]
    pub ingress_prefix: Option<String>,

    /// Queue group shared by routers splitting one ingress [default: baker]
    #[arg(long, env = "BAKER_QUEUE_GROUP", value_name = "NAME")]
    pub queue_group: Option<String>,

    /// OpenTelemetry collector to export traces of routed messages to, over
    /// OTLP/HTTP (protobuf): its base URL, `http://HOST:4318`, to whose
    /// `/v1/traces` spans are posted. One span per routed message, a child
    /// of the publisher's `traceparent` [default: none, no traces]
    #[arg(long, env = "BAKER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// Percent of the messages that arrive without a sampled parent span
    /// that are traced; those whose publisher's span was sampled always are
    /// [default: 100]
    #[arg(long, env = "BAKER_TRACE_SAMPLE_PERCENT", value_name = "PERCENT")]
    pub trace_sample_percent: Option<f64>,

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

    /// Credentials and TLS per broker, in the file only: `[[brokers]]`
    /// tables (see docs/security.md).
    #[arg(skip)]
    #[serde(default)]
    pub brokers: Vec<super::BrokerSection>,

    /// The tokens a directory served here accepts, in the file only:
    /// `[[directory_tokens]]` tables (name, sha256, services, read). With
    /// none, the directory is open (see docs/security.md).
    #[arg(skip)]
    #[serde(default)]
    pub directory_tokens: Vec<crate::directory::auth::TokenGrant>,

    /// PEM certificate chain a directory served here presents: it serves
    /// HTTPS (with directory_tls_key_file) [default: plain HTTP]
    #[arg(
        long,
        env = "BAKER_DIRECTORY_TLS_CERT_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub directory_tls_cert_file: Option<PathBuf>,

    /// PEM private key of directory_tls_cert_file.
    #[arg(
        long,
        env = "BAKER_DIRECTORY_TLS_KEY_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub directory_tls_key_file: Option<PathBuf>,

    /// PEM CA certificates Baker's HTTP clients trust for https:// URLs
    /// (the directory, http health checks) [default: the system's roots]
    #[arg(long, env = "BAKER_HTTP_CA_FILE", global = true, value_name = "FILE")]
    pub http_ca_file: Option<PathBuf>,

    /// With directory tokens: let requests without a token read the
    /// catalog (writes still need one).
    #[arg(long, env = "BAKER_DIRECTORY_OPEN_READS", global = true)]
    #[serde(default)]
    pub directory_open_reads: bool,

    /// Let `baker-mq directory` listen off loopback without tokens: anyone
    /// who reaches it can then register instances and take a service's
    /// traffic.
    #[arg(long, env = "BAKER_ALLOW_UNAUTHENTICATED_DIRECTORY", global = true)]
    #[serde(default)]
    pub allow_unauthenticated_directory: bool,

    /// Listen address of `baker-mq directory` (on the command line:
    /// `baker-mq directory --listen`) [default: 127.0.0.1:7070]
    #[arg(skip)]
    pub listen: Option<SocketAddr>,
}

/// A service's routing policy (`SERVICE=POLICY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePolicy {
    /// The service.
    pub service: String,
    /// Its policy.
    pub policy: PolicyKind,
}

impl FromStr for ServicePolicy {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (service, policy) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?} is not SERVICE=POLICY"))?;
        Ok(Self {
            service: service.to_owned(),
            policy: policy.parse()?,
        })
    }
}

/// A service routed by version, and the header naming the version
/// (`SERVICE[=HEADER]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRoute {
    /// The service.
    pub service: String,
    /// The header that names the version.
    pub header: String,
}

impl FromStr for VersionRoute {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (service, header) = spec
            .split_once('=')
            .unwrap_or((spec, baker_adapter_api::header::VERSION));
        Ok(Self {
            service: service.to_owned(),
            header: header.to_owned(),
        })
    }
}

/// A service routed by zone, and how (`SERVICE[=MODE]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneRoute {
    /// The service, or `*` for every service.
    pub service: String,
    /// Whether it prefers the router's zone.
    pub mode: ZoneMode,
}

impl FromStr for ZoneRoute {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (service, mode) = match spec.split_once('=') {
            Some((service, mode)) => (service, mode.parse()?),
            None => (spec, ZoneMode::default()),
        };
        Ok(Self {
            service: service.to_owned(),
            mode,
        })
    }
}

/// A service's shadow rule as given.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// The version whose instances get the copies (and nothing else).
    pub version: String,
    /// Share of the messages copied, more than 0 and at most 100.
    pub percent: f64,
    /// Most copies under way at once; more are dropped (default 100).
    pub max_in_flight: Option<usize>,
}

/// A service's shadow rule (`SERVICE=VERSION:PERCENT[:MAX_IN_FLIGHT]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowEntry {
    /// The service.
    pub service: String,
    /// Its rule.
    pub spec: ShadowSpec,
}

impl FromStr for ShadowEntry {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let expected = || format!("{spec:?} is not SERVICE=VERSION:PERCENT[:MAX_IN_FLIGHT]");
        let (service, rule) = spec.split_once('=').ok_or_else(expected)?;
        let mut parts = rule.split(':');
        let (Some(version), Some(percent)) = (parts.next(), parts.next()) else {
            return Err(expected());
        };
        let percent = percent
            .parse()
            .map_err(|_| format!("{percent:?} is not a percentage"))?;
        let max_in_flight = match parts.next() {
            Some(n) => Some(
                n.parse()
                    .map_err(|_| format!("{n:?} is not a whole number"))?,
            ),
            None => None,
        };
        if parts.next().is_some() {
            return Err(expected());
        }
        Ok(Self {
            service: service.to_owned(),
            spec: ShadowSpec {
                version: version.to_owned(),
                percent,
                max_in_flight,
            },
        })
    }
}

/// A per-service setting: a `SERVICE=VALUE` pair on the command line, a
/// `service = value` entry of a table in the file.
trait PerService: Sized {
    type Value: serde::de::DeserializeOwned;
    fn new(service: String, value: Self::Value) -> Self;
}

impl PerService for ServicePolicy {
    type Value = PolicyKind;
    fn new(service: String, policy: PolicyKind) -> Self {
        Self { service, policy }
    }
}

impl PerService for VersionRoute {
    type Value = String;
    fn new(service: String, header: String) -> Self {
        Self { service, header }
    }
}

impl PerService for ZoneRoute {
    type Value = ZoneMode;
    fn new(service: String, mode: ZoneMode) -> Self {
        Self { service, mode }
    }
}

impl PerService for ShadowEntry {
    type Value = ShadowSpec;
    fn new(service: String, spec: ShadowSpec) -> Self {
        Self { service, spec }
    }
}

/// Reads a `[table]` of per-service values, in the order of its keys.
fn service_map<'de, D: Deserializer<'de>, T: PerService>(de: D) -> Result<Vec<T>, D::Error> {
    let map = BTreeMap::<String, T::Value>::deserialize(de)?;
    Ok(map.into_iter().map(|(s, v)| T::new(s, v)).collect())
}
