//! Configuration: the TOML file, merged with flags and `BAKER_*` variables
//! into the settings the process runs with.
//!
//! The file's keys mirror the long flags. A key that is unknown or malformed
//! is an error naming the key and the file; nothing is silently ignored.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use baker_adapter_api::{header, IngressOptions};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::adapters::AdapterRegistry;
use crate::cli::{Cli, LogFormat, NatsIngress};
use crate::directory::record::{valid_name, DEFAULT_TTL_SECS, DEFAULT_WEIGHT};
use crate::directory::{EndpointRecord, InstanceRecord, Status, DEFAULT_LISTEN};
use crate::health::{self, HealthCheck, Probe};
use crate::router::outlier::OutlierConfig;
use crate::router::{JourneyConfig, PolicyKind};

/// Default admin address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7071";
const DEFAULT_ADAPTER: &str = "nats";
const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
const DEFAULT_OUTLIER_FAILURES: u32 = 5;
const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
const DEFAULT_OUTLIER_EJECTION_SECS: u64 = 5;
const DEFAULT_PREFIX: &str = "baker";
const DEFAULT_QUEUE_GROUP: &str = "baker";
/// Default log filter: Baker's own events, and only warnings from libraries
/// (lapin warns once per returned message, which Baker handles and counts).
const DEFAULT_LOG: &str =
    "warn,lapin::returned_messages=error,baker_mq=info,baker_adapter_api=info,baker_adapter_amqp=info,baker_adapter_nats=info,baker_adapter_mqtt=info,baker_adapter_memory=info";

/// The config file. Every key is optional; flags and `BAKER_*` variables
/// override it.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Broker adapter for the ingress and registered instances (`nats`, `memory`).
    pub adapter: Option<String>,
    /// Broker URL, e.g. `nats://127.0.0.1:4222`.
    pub broker: Option<String>,
    /// Directory URL, e.g. `http://10.0.0.5:7070`. Unset: use
    /// `http://127.0.0.1:7070`, serving it locally when nothing answers.
    pub directory: Option<String>,
    /// Admin HTTP address.
    pub admin: Option<SocketAddr>,
    /// Instances to register.
    #[serde(default)]
    pub register: Vec<Registration>,
    /// Routing policy per service, e.g. `orders = "consistent_hash"`.
    #[serde(default)]
    pub policy: BTreeMap<String, PolicyKind>,
    /// Services routed by version, with the header that names the version,
    /// e.g. `orders = "baker-version"`: a message carrying the header goes
    /// only to instances of the version it names.
    #[serde(default)]
    pub version_routing: BTreeMap<String, String>,
    /// Only register instances; do not route.
    pub no_router: Option<bool>,
    /// Default lease TTL of registered instances, in seconds.
    pub ttl: Option<u64>,
    /// Most messages between ingress and settlement at once.
    pub max_in_flight: Option<usize>,
    /// Send attempts per message before it is dead-lettered.
    pub max_attempts: Option<u32>,
    /// Failed sends in a row that eject an instance from routing for a
    /// while; 0 never ejects.
    pub outlier_failures: Option<u32>,
    /// Seconds a first ejection lasts; each further one doubles it, up to 300.
    pub outlier_ejection_secs: Option<u64>,
    /// Longest a leaving instance waits for its inbox to empty before it is
    /// deregistered anyway, in seconds.
    pub drain_timeout_secs: Option<u64>,
    /// NATS ingress: `core` (at most once) or `jetstream` (at least once).
    pub nats_ingress: Option<NatsIngress>,
    /// Directory where the router saves its view of the directory, to route
    /// from it when it starts while the directory is unreachable.
    pub state_dir: Option<PathBuf>,
    /// Largest payload routed, in bytes.
    pub max_payload: Option<usize>,
    /// Address prefix apps publish under.
    pub ingress_prefix: Option<String>,
    /// Queue group shared by routers splitting one ingress.
    pub queue_group: Option<String>,
    /// Log filter.
    pub log: Option<String>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Listen address of `baker-mq directory`.
    pub listen: Option<SocketAddr>,
    /// Runtime threads (1: everything on one thread).
    pub worker_threads: Option<usize>,
}

/// One instance to register (a `[[register]]` table, or a `--register` spec).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Service name.
    pub service: String,
    /// Instance id, unique within the service.
    pub id: String,
    /// Software version.
    pub version: Option<String>,
    /// Relative share of traffic under the `weighted` policy (default 100).
    pub weight: Option<u32>,
    /// Zone label.
    pub zone: Option<String>,
    /// Lease TTL in seconds (default: the `ttl` setting).
    pub ttl: Option<u64>,
    /// Adapter of the instance's inbox (default: the `adapter` setting).
    pub adapter: Option<String>,
    /// Broker of the instance's inbox (default: the `broker` setting).
    pub broker: Option<String>,
    /// Inbox address (default: the adapter's convention, `_baker.<service>.<id>`).
    pub inbox: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Active health check of the instance.
    pub check: Option<CheckConfig>,
}

/// Kinds of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// An HTTP request whose status is accepted.
    Http,
    /// A TCP connection that opens.
    Tcp,
    /// A program that exits 0.
    Exec,
}

/// An instance's active health check (`[register.check]`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// `http`, `tcp` or `exec`.
    pub kind: CheckKind,
    /// http: URL to request.
    pub url: Option<String>,
    /// http: request method (default `GET`).
    pub method: Option<String>,
    /// http: accepted response statuses (default: any 2xx or 3xx).
    pub statuses: Option<Vec<u16>>,
    /// tcp: `HOST:PORT` to connect to.
    pub address: Option<String>,
    /// exec: the program and its arguments; exit code 0 passes.
    pub command: Option<Vec<String>>,
    /// Milliseconds between probes (default 1000).
    pub interval_ms: Option<u64>,
    /// Milliseconds a probe may take (default 1000).
    pub timeout_ms: Option<u64>,
    /// Successful probes in a row that make a critical instance passing
    /// again (default 2).
    pub rise: Option<u32>,
    /// Failed probes in a row that make a passing instance critical
    /// (default 3).
    pub fall: Option<u32>,
}

impl CheckConfig {
    /// The check to run, or why this configuration is not one.
    pub fn resolve(&self) -> Result<HealthCheck, String> {
        let probe = match self.kind {
            CheckKind::Http => {
                let url = self.url.clone().ok_or("kind http needs url")?;
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    return Err(format!("url {url:?} is not an http:// or https:// URL"));
                }
                let method = self.method.as_deref().unwrap_or("GET");
                let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("method {method:?} is not an HTTP method"))?;
                let statuses = self.statuses.clone().unwrap_or_default();
                if let Some(bad) = statuses.iter().find(|s| !(100..=599).contains(*s)) {
                    return Err(format!("status {bad} is not an HTTP status"));
                }
                Probe::Http {
                    method,
                    url,
                    statuses,
                }
            }
            CheckKind::Tcp => {
                let address = self.address.clone().ok_or("kind tcp needs address")?;
                if !address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                {
                    return Err(format!("address {address:?} is not HOST:PORT"));
                }
                Probe::Tcp { address }
            }
            CheckKind::Exec => {
                let command = self.command.clone().unwrap_or_default();
                if command.first().is_none_or(|p| p.is_empty()) {
                    return Err("kind exec needs command, a program and its arguments".into());
                }
                Probe::Exec { command }
            }
        };
        let millis = |value: Option<u64>, default: std::time::Duration, key: &str| {
            let ms = value.unwrap_or(default.as_millis() as u64);
            if (10..=3_600_000).contains(&ms) {
                Ok(std::time::Duration::from_millis(ms))
            } else {
                Err(format!("{key} {ms} is not between 10 and 3600000"))
            }
        };
        let count = |value: Option<u32>, default: u32, key: &str| match value.unwrap_or(default) {
            0 => Err(format!("{key} must be at least 1")),
            n => Ok(n),
        };
        Ok(HealthCheck {
            probe,
            interval: millis(self.interval_ms, health::DEFAULT_INTERVAL, "interval_ms")?,
            timeout: millis(self.timeout_ms, health::DEFAULT_TIMEOUT, "timeout_ms")?,
            rise: count(self.rise, health::DEFAULT_RISE, "rise")?,
            fall: count(self.fall, health::DEFAULT_FALL, "fall")?,
        })
    }

    /// A check from the `check=` value of a `--register` spec: an
    /// `http://`/`https://` URL, or `tcp://HOST:PORT`.
    fn from_spec(target: &str) -> Result<Self, String> {
        let blank = |kind| CheckConfig {
            kind,
            url: None,
            method: None,
            statuses: None,
            address: None,
            command: None,
            interval_ms: None,
            timeout_ms: None,
            rise: None,
            fall: None,
        };
        if target.starts_with("http://") || target.starts_with("https://") {
            Ok(CheckConfig {
                url: Some(target.to_owned()),
                ..blank(CheckKind::Http)
            })
        } else if let Some(address) = target.strip_prefix("tcp://") {
            Ok(CheckConfig {
                address: Some(address.to_owned()),
                ..blank(CheckKind::Tcp)
            })
        } else {
            Err(format!(
                "check={target:?}: expected http://..., https://... or tcp://HOST:PORT (exec checks go in the config file)"
            ))
        }
    }
}

/// An instance this process registers, with its health check.
#[derive(Debug, Clone)]
pub struct Registered {
    /// What goes into the directory.
    pub record: InstanceRecord,
    /// The active health check, if it has one.
    pub check: Option<HealthCheck>,
}

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file at this path.
    File(PathBuf),
    /// A flag or `BAKER_*` variable.
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::CommandLine => f.write_str("command line or environment"),
        }
    }
}

/// A configuration error; says which key, where, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A value is out of range or inconsistent.
    #[error("{origin}: key `{key}`: {reason}")]
    Invalid {
        origin: Origin,
        key: String,
        reason: String,
    },
}

/// Where the directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryTarget {
    /// None configured: the local default, served here when nothing answers.
    Auto(SocketAddr),
    /// An explicit embedded directory's URL.
    Url(String),
    /// A JetStream key-value bucket.
    Kv(KvSettings),
}

impl DirectoryTarget {
    /// The directory's URL.
    pub fn url(&self) -> String {
        match self {
            DirectoryTarget::Auto(addr) => format!("http://{addr}"),
            DirectoryTarget::Url(url) => url.clone(),
            DirectoryTarget::Kv(kv) => kv.display_url(),
        }
    }
}

/// Name of the directory's key-value bucket unless the URL says otherwise.
pub const DEFAULT_BUCKET: &str = "baker-directory";

/// A directory held in a JetStream key-value bucket
/// (`nats://HOST:PORT[,HOST:PORT...][?bucket=NAME&replicas=N]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSettings {
    /// The NATS servers, comma-separated.
    pub servers: String,
    /// Bucket name.
    pub bucket: String,
    /// Replicas of the bucket, when Baker creates it.
    pub replicas: usize,
}

impl KvSettings {
    /// Parses a `nats://` directory URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (servers, query) = url.split_once('?').unwrap_or((url, ""));
        let mut settings = KvSettings {
            servers: servers.to_owned(),
            bucket: DEFAULT_BUCKET.to_owned(),
            replicas: 1,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "bucket" if valid_name(value) => settings.bucket = value.to_owned(),
                "bucket" => {
                    return Err(format!(
                        "bucket {value:?} must be letters, digits, '-' or '_'"
                    ))
                }
                "replicas" => match value.parse() {
                    Ok(n @ 1..=5) => settings.replicas = n,
                    _ => return Err(format!("replicas {value:?} must be 1 to 5")),
                },
                other => {
                    return Err(format!(
                        "unknown setting {other:?} in the directory URL; known: bucket, replicas"
                    ))
                }
            }
        }
        #[cfg(feature = "nats")]
        baker_adapter_nats::server_addrs(servers)?;
        #[cfg(not(feature = "nats"))]
        return Err("this baker-mq is built without the nats feature".to_owned());
        #[cfg(feature = "nats")]
        Ok(settings)
    }

    /// The URL it was parsed from, in canonical form.
    pub fn display_url(&self) -> String {
        format!(
            "{}?bucket={}&replicas={}",
            self.servers, self.bucket, self.replicas
        )
    }
}

/// Resolved settings of the sidecar.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Ingress adapter.
    pub adapter: String,
    /// Ingress broker URL.
    pub broker: String,
    /// The directory.
    pub directory: DirectoryTarget,
    /// Admin address, and whether it was chosen explicitly.
    pub admin: (SocketAddr, bool),
    /// Instances to register.
    pub registrations: Vec<Registered>,
    /// Policy per service.
    pub policies: HashMap<String, PolicyKind>,
    /// Header naming the version, per service routed by version.
    pub version_routing: HashMap<String, String>,
    /// Whether to route.
    pub router: bool,
    /// Journey tunables.
    pub journey: JourneyConfig,
    /// In-flight window.
    pub max_in_flight: usize,
    /// Ingress subscription.
    pub ingress: IngressOptions,
    /// Listen address of `baker-mq directory`.
    pub listen: SocketAddr,
    /// Where the router saves its view, if anywhere.
    pub state_dir: Option<PathBuf>,
    /// Longest drain of a leaving instance.
    pub drain_timeout: std::time::Duration,
}

/// Reads and parses a config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

impl Registration {
    /// Parses a `--register` spec: `service=NAME,id=ID[,key=value...]`.
    pub fn parse_spec(spec: &str) -> Result<Self, String> {
        let mut r = Registration::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let value = value.to_owned();
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{key}={v:?} is not a whole number"))
            };
            match key {
                "service" => r.service = value,
                "id" => r.id = value,
                "version" => r.version = Some(value),
                "weight" => {
                    r.weight = Some(
                        u32::try_from(number(&value)?).map_err(|_| format!("weight {value} is too large"))?,
                    )
                }
                "zone" => r.zone = Some(value),
                "ttl" => r.ttl = Some(number(&value)?),
                "adapter" => r.adapter = Some(value),
                "broker" => r.broker = Some(value),
                "inbox" => r.inbox = Some(value),
                "check" => r.check = Some(CheckConfig::from_spec(&value)?),
                "check_interval_ms" | "rise" | "fall" => {
                    let n = number(&value)?;
                    let check = r.check.as_mut().ok_or_else(|| format!("{key} needs check= before it"))?;
                    let small = || u32::try_from(n).map_err(|_| format!("{key} {n} is too large"));
                    match key {
                        "check_interval_ms" => check.interval_ms = Some(n),
                        "rise" => check.rise = Some(small()?),
                        _ => check.fall = Some(small()?),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?} (expected service, id, version, weight, zone, ttl, adapter, broker, inbox, check, check_interval_ms, rise, fall)"
                    ))
                }
            }
        }
        if r.service.is_empty() || r.id.is_empty() {
            return Err("service= and id= are required".to_owned());
        }
        Ok(r)
    }
}

fn parse_policy(spec: &str) -> Result<(String, PolicyKind), String> {
    let (service, policy) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not SERVICE=POLICY"))?;
    Ok((service.to_owned(), policy.parse()?))
}

/// Merges the command line (flags and variables) with the file.
pub fn resolve(cli: &Cli, adapters: &AdapterRegistry) -> Result<Settings, ConfigError> {
    let (file, file_origin) = match &cli.config {
        Some(path) => (read_file(path)?, Origin::File(path.clone())),
        None => (FileConfig::default(), Origin::CommandLine),
    };
    let args = &cli.sidecar;
    // The origin of a value: the command line when it set it, else the file.
    let origin_of = |from_cli: bool| {
        if from_cli {
            Origin::CommandLine
        } else {
            file_origin.clone()
        }
    };
    let invalid = |from_cli: bool, key: &str, reason: String| ConfigError::Invalid {
        origin: origin_of(from_cli),
        key: key.to_owned(),
        reason,
    };

    let adapter = args.adapter.clone().or(file.adapter.clone());
    let adapter_from_cli = args.adapter.is_some();
    let adapter = adapter.unwrap_or_else(|| DEFAULT_ADAPTER.to_owned());
    let Some(ingress_adapter) = adapters.get(&adapter) else {
        return Err(invalid(
            adapter_from_cli,
            "adapter",
            format!(
                "unknown adapter {adapter:?}; this build has: {}",
                adapters.names().join(", ")
            ),
        ));
    };
    let broker = args
        .broker
        .clone()
        .or(file.broker.clone())
        .unwrap_or_else(|| ingress_adapter.default_broker().to_owned());

    let directory = match args.directory.clone().or(file.directory.clone()) {
        None => DirectoryTarget::Auto(DEFAULT_LISTEN.parse().expect("valid default")),
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            DirectoryTarget::Url(url.trim_end_matches('/').to_owned())
        }
        Some(url) if url.starts_with("nats://") || url.starts_with("tls://") => {
            DirectoryTarget::Kv(
                KvSettings::parse(&url)
                    .map_err(|reason| invalid(args.directory.is_some(), "directory", reason))?,
            )
        }
        Some(url) => {
            return Err(invalid(
                args.directory.is_some(),
                "directory",
                format!(
                    "{url:?} is not a directory URL; expected http://HOST:PORT (embedded \
                     directory) or nats://HOST:PORT[,HOST:PORT...] (JetStream key-value bucket)"
                ),
            ))
        }
    };

    let admin = match args.admin.or(file.admin) {
        Some(addr) => (addr, true),
        None => (DEFAULT_ADMIN.parse().expect("valid default"), false),
    };

    let mut policies = HashMap::new();
    for (service, kind) in &file.policy {
        if !valid_name(service) {
            return Err(invalid(
                false,
                &format!("policy.{service}"),
                "not a valid service name".into(),
            ));
        }
        policies.insert(service.clone(), *kind);
    }
    for spec in &args.policy {
        let (service, kind) = parse_policy(spec).map_err(|r| invalid(true, "policy", r))?;
        policies.insert(service, kind);
    }

    let mut version_routing = HashMap::new();
    let valid_header =
        |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    for (service, header) in &file.version_routing {
        if !valid_name(service) || !valid_header(header) {
            return Err(invalid(
                false,
                &format!("version_routing.{service}"),
                format!("needs a valid service name and header name, got {header:?}"),
            ));
        }
        version_routing.insert(service.clone(), header.clone());
    }
    for spec in &args.version_routing {
        let (service, header) = spec.split_once('=').unwrap_or((spec, header::VERSION));
        if !valid_name(service) || !valid_header(header) {
            return Err(invalid(
                true,
                "version_routing",
                format!("{spec:?} is not SERVICE or SERVICE=HEADER"),
            ));
        }
        version_routing.insert(service.to_owned(), header.to_owned());
    }

    let ttl = args.ttl.or(file.ttl).unwrap_or(DEFAULT_TTL_SECS);
    if !(1..=3600).contains(&ttl) {
        return Err(invalid(
            args.ttl.is_some(),
            "ttl",
            format!("{ttl} is not between 1 and 3600 seconds"),
        ));
    }

    let mut registrations = Vec::new();
    let from_file = file
        .register
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, r)| (format!("register[{i}]"), false, r));
    let mut from_cli = Vec::new();
    for spec in &args.register {
        let r = Registration::parse_spec(spec)
            .map_err(|reason| invalid(true, "register", format!("{spec:?}: {reason}")))?;
        from_cli.push(("register".to_owned(), true, r));
    }
    for (key, cli_set, r) in from_file.chain(from_cli) {
        let adapter_name = r.adapter.clone().unwrap_or_else(|| adapter.clone());
        let Some(instance_adapter) = adapters.get(&adapter_name) else {
            return Err(invalid(
                cli_set,
                &format!("{key}.adapter"),
                format!("unknown adapter {adapter_name:?}"),
            ));
        };
        let inbox = r
            .inbox
            .clone()
            .unwrap_or_else(|| instance_adapter.default_inbox(&r.service, &r.id));
        instance_adapter
            .validate_inbox(&inbox)
            .map_err(|e| invalid(cli_set, &format!("{key}.inbox"), e.to_string()))?;
        let check = r
            .check
            .as_ref()
            .map(CheckConfig::resolve)
            .transpose()
            .map_err(|reason| invalid(cli_set, &format!("{key}.check"), reason))?;
        let record = InstanceRecord {
            service: r.service.clone(),
            id: r.id.clone(),
            version: r.version.clone().unwrap_or_default(),
            endpoint: EndpointRecord {
                adapter: adapter_name,
                broker: r.broker.clone().unwrap_or_else(|| broker.clone()),
                inbox,
            },
            weight: r.weight.unwrap_or(DEFAULT_WEIGHT),
            zone: r.zone.clone(),
            metadata: r.metadata.clone(),
            // An instance with a check is admitted by its first passing probe.
            status: if check.is_some() {
                Status::Critical
            } else {
                Status::Passing
            },
            ttl_secs: r.ttl.unwrap_or(ttl),
        };
        record
            .validate()
            .map_err(|e| invalid(cli_set, &key, e.to_string()))?;
        registrations.push(Registered { record, check });
    }

    let max_in_flight = args
        .max_in_flight
        .or(file.max_in_flight)
        .unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if max_in_flight == 0 {
        return Err(invalid(
            args.max_in_flight.is_some(),
            "max_in_flight",
            "must be at least 1".into(),
        ));
    }
    let max_attempts = args
        .max_attempts
        .or(file.max_attempts)
        .unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if max_attempts == 0 {
        return Err(invalid(
            args.max_attempts.is_some(),
            "max_attempts",
            "must be at least 1".into(),
        ));
    }
    let outlier_ejection_secs = args
        .outlier_ejection_secs
        .or(file.outlier_ejection_secs)
        .unwrap_or(DEFAULT_OUTLIER_EJECTION_SECS);
    if !(1..=300).contains(&outlier_ejection_secs) {
        return Err(invalid(
            args.outlier_ejection_secs.is_some(),
            "outlier_ejection_secs",
            format!("{outlier_ejection_secs} is not between 1 and 300 seconds"),
        ));
    }
    let outlier = OutlierConfig {
        consecutive_failures: args
            .outlier_failures
            .or(file.outlier_failures)
            .unwrap_or(DEFAULT_OUTLIER_FAILURES),
        base_ejection: std::time::Duration::from_secs(outlier_ejection_secs),
    };
    let nats_ingress = args.nats_ingress.or(file.nats_ingress).unwrap_or_default();
    let at_least_once = nats_ingress == NatsIngress::Jetstream;
    if at_least_once && adapter != "nats" {
        return Err(invalid(
            args.nats_ingress.is_some(),
            "nats_ingress",
            format!("jetstream applies to the nats adapter, not {adapter:?}"),
        ));
    }
    let drain_timeout_secs = args
        .drain_timeout_secs
        .or(file.drain_timeout_secs)
        .unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECS);
    if drain_timeout_secs > 3600 {
        return Err(invalid(
            args.drain_timeout_secs.is_some(),
            "drain_timeout_secs",
            format!("{drain_timeout_secs} is more than 3600 seconds"),
        ));
    }
    let max_payload = args
        .max_payload
        .or(file.max_payload)
        .unwrap_or(DEFAULT_MAX_PAYLOAD);
    let prefix = args
        .ingress_prefix
        .clone()
        .or(file.ingress_prefix.clone())
        .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    if prefix.is_empty() || prefix.starts_with('_') || prefix.contains(['*', '>', '#', '+', ' ']) {
        return Err(invalid(
            args.ingress_prefix.is_some(),
            "ingress_prefix",
            format!("{prefix:?} must be non-empty, without wildcards, and not start with '_' (inboxes live there)"),
        ));
    }
    let queue_group = args
        .queue_group
        .clone()
        .or(file.queue_group.clone())
        .unwrap_or_else(|| DEFAULT_QUEUE_GROUP.to_owned());

    let listen = match &cli.command {
        Some(crate::cli::Command::Directory { listen: Some(addr) }) => *addr,
        _ => file
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default")),
    };

    Ok(Settings {
        adapter,
        broker,
        directory,
        admin,
        registrations,
        policies,
        version_routing,
        router: !(args.no_router || file.no_router.unwrap_or(false)),
        journey: JourneyConfig {
            max_attempts,
            max_payload,
            outlier,
        },
        max_in_flight,
        ingress: IngressOptions {
            prefix,
            queue_group,
            buffer: max_in_flight,
            at_least_once,
        },
        listen,
        state_dir: args.state_dir.clone().or(file.state_dir.clone()),
        drain_timeout: std::time::Duration::from_secs(drain_timeout_secs),
    })
}

fn file_of(cli: &Cli) -> Result<FileConfig, ConfigError> {
    match &cli.config {
        Some(path) => read_file(path),
        None => Ok(FileConfig::default()),
    }
}

/// Runtime threads: flag or variable, else file, else 1.
pub fn worker_threads(cli: &Cli) -> Result<usize, ConfigError> {
    let threads = cli
        .worker_threads
        .or(file_of(cli)?.worker_threads)
        .unwrap_or(1);
    if threads == 0 {
        return Err(ConfigError::Invalid {
            origin: match cli.worker_threads {
                Some(_) => Origin::CommandLine,
                None => Origin::File(cli.config.clone().unwrap_or_default()),
            },
            key: "worker_threads".to_owned(),
            reason: "must be at least 1".to_owned(),
        });
    }
    Ok(threads)
}

/// The log filter and format: flag or variable, else file, else defaults.
pub fn logging(cli: &Cli) -> Result<(String, LogFormat), ConfigError> {
    let file = file_of(cli)?;
    Ok((
        cli.log
            .clone()
            .or(file.log)
            .unwrap_or_else(|| DEFAULT_LOG.to_owned()),
        cli.log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    fn resolve_with(file: &str, args: &[&str]) -> Result<Settings, ConfigError> {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(file.as_bytes()).unwrap();
        let path = tmp.path().to_str().unwrap().to_owned();
        let mut argv = vec!["baker-mq", "--config", &path];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        resolve(&cli, &AdapterRegistry::builtin())
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = resolve_with("adapter = \"nats\"\nmax_inflight = 5\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("config file"), "{err}");
        assert!(err.contains("max_inflight"), "{err}");
    }

    #[test]
    fn malformed_value_names_key_and_file() {
        let err = resolve_with("max_attempts = \"three\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_attempts") && err.contains("config file"),
            "{err}"
        );
    }

    #[test]
    fn unknown_policy_is_refused() {
        let err = resolve_with("[policy]\norders = \"fastest\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("fastest"), "{err}");
    }

    #[test]
    fn flag_overrides_file_and_registration_defaults_follow_adapter() {
        let s = resolve_with(
            "adapter = \"memory\"\nbroker = \"memory://x\"\nmax_in_flight = 10\n[[register]]\nservice = \"orders\"\nid = \"o1\"\n",
            &["--max-in-flight", "20", "--register", "service=orders,id=o2,weight=5,version=2"],
        )
        .unwrap();
        assert_eq!(s.max_in_flight, 20);
        assert_eq!(s.registrations.len(), 2);
        assert_eq!(s.registrations[0].record.endpoint.inbox, "_baker.orders.o1");
        assert_eq!(s.registrations[0].record.endpoint.broker, "memory://x");
        assert_eq!(s.registrations[1].record.weight, 5);
        assert_eq!(s.registrations[1].record.version, "2");
        assert_eq!(
            s.directory,
            DirectoryTarget::Auto(DEFAULT_LISTEN.parse().unwrap())
        );
    }

    #[test]
    fn a_nats_directory_url_names_a_bucket_and_its_errors_name_the_key() {
        let s = resolve_with(
            "",
            &[
                "--directory",
                "nats://a:4222,b:4222?bucket=dir-1&replicas=3",
            ],
        )
        .unwrap();
        assert_eq!(
            s.directory,
            DirectoryTarget::Kv(KvSettings {
                servers: "nats://a:4222,b:4222".into(),
                bucket: "dir-1".into(),
                replicas: 3,
            })
        );
        let s = resolve_with("directory = \"nats://127.0.0.1:4222\"\n", &[]).unwrap();
        assert_eq!(
            s.directory,
            DirectoryTarget::Kv(KvSettings {
                servers: "nats://127.0.0.1:4222".into(),
                bucket: DEFAULT_BUCKET.into(),
                replicas: 1,
            })
        );
        for (url, says) in [
            ("nats://a:4222?replicas=7", "replicas"),
            ("nats://a:4222?bucket=a.b", "bucket"),
            ("nats://a:4222?colour=red", "colour"),
        ] {
            let err = resolve_with("", &["--directory", url])
                .unwrap_err()
                .to_string();
            assert!(err.contains("directory") && err.contains(says), "{err}");
        }
    }

    #[test]
    fn invalid_registration_names_key() {
        let err = resolve_with("[[register]]\nservice = \"orders.eu\"\nid = \"o1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("register[0]") && err.contains("orders.eu"),
            "{err}"
        );
        let spec = Registration::parse_spec("service=a,id=b,colour=red").unwrap_err();
        assert!(spec.contains("colour"), "{spec}");
    }

    #[test]
    fn health_checks_resolve_from_file_and_spec_with_clear_errors() {
        let file = r#"
[[register]]
service = "orders"
id = "o1"
[register.check]
kind = "exec"
command = ["/bin/true"]
interval_ms = 200
fall = 2
"#;
        let s = resolve_with(
            file,
            &[
                "--register",
                "service=orders,id=o2,check=tcp://127.0.0.1:9,rise=4",
            ],
        )
        .unwrap();
        let check = s.registrations[0].check.as_ref().unwrap();
        assert_eq!(
            check.probe,
            Probe::Exec {
                command: vec!["/bin/true".to_owned()]
            }
        );
        assert_eq!(check.interval, std::time::Duration::from_millis(200));
        assert_eq!((check.rise, check.fall), (2, 2));
        assert_eq!(s.registrations[0].record.status, Status::Critical);
        let check = s.registrations[1].check.as_ref().unwrap();
        assert_eq!(
            check.probe,
            Probe::Tcp {
                address: "127.0.0.1:9".to_owned()
            }
        );
        assert_eq!(check.rise, 4);

        let err = resolve_with(
            "[[register]]\nservice = \"a\"\nid = \"b\"\n[register.check]\nkind = \"http\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("register[0].check") && err.contains("needs url"),
            "{err}"
        );
        let err = resolve_with("", &["--register", "service=a,id=b,check=ftp://x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("check=\"ftp://x\""), "{err}");
        let err = resolve_with("", &["--register", "service=a,id=b,rise=2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rise needs check="), "{err}");
    }

    #[test]
    fn jetstream_ingress_is_for_the_nats_adapter_only() {
        let s = resolve_with("nats_ingress = \"jetstream\"\n", &[]).unwrap();
        assert!(s.ingress.at_least_once);
        let err = resolve_with("", &["--adapter", "amqp", "--nats-ingress", "jetstream"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nats_ingress") && err.contains("amqp"),
            "{err}"
        );
    }
}
