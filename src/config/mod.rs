//! Configuration: the options given on the command line, in `BAKER_*`
//! variables and in the TOML file, resolved into the [`Settings`] the process
//! runs with.
//!
//! One type, [`Options`], is the shape of all three; the file is read once,
//! by [`Config::load`]. A key that is unknown or malformed is an error naming
//! the key and where it was set; nothing is silently ignored.

mod brokers;
mod check;
mod directory;
mod error;
mod options;
mod registration;
mod secret;
mod security;
mod shadow;
mod traces;
mod zones;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baker_adapter_api::{AccessBook, IngressOptions, Member, Secret};
use serde::Deserialize as _;

pub use brokers::BrokerSection;
pub use check::{CheckConfig, CheckKind};
pub use directory::DirectoryTarget;
pub use error::{ConfigError, Origin};
pub use options::{
    LogFormat, Options, ServicePolicy, ShadowEntry, ShadowSpec, VersionRoute, ZoneRoute,
};
pub use registration::{Registered, Registration};

use crate::adapters::{self, AdapterRegistry};
use crate::directory::interest::InterestConfig;
use crate::directory::record::{valid_name, DEFAULT_TTL_SECS};
use crate::directory::server::DirectoryRules;
use crate::directory::DEFAULT_LISTEN;
use crate::router::outlier::OutlierConfig;
use crate::router::shadow::ShadowRule;
use crate::router::zones::ZoneRouting;
use crate::router::{JourneyConfig, PolicyKind};
use crate::traces::TraceSettings;

/// The variable that may hold the admin API's token itself.
pub const ADMIN_TOKEN_VARIABLE: &str = "BAKER_ADMIN_TOKEN";
/// The variable that may hold the directory token itself.
pub const DIRECTORY_TOKEN_VARIABLE: &str = "BAKER_DIRECTORY_TOKEN";
/// Default admin address.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7071";
const DEFAULT_MAX_IN_FLIGHT: usize = 1024;
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
const DEFAULT_OUTLIER_FAILURES: u32 = 5;
const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 30;
const DEFAULT_OUTLIER_EJECTION_SECS: u64 = 5;
const DEFAULT_PREFIX: &str = "baker";
const DEFAULT_QUEUE_GROUP: &str = "baker";

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
    /// The admin API's token, if any.
    pub admin_token: Option<Secret>,
    /// Instances to register.
    pub registrations: Vec<Registered>,
    /// Policy per service.
    pub policies: HashMap<String, PolicyKind>,
    /// Header naming the version, per service routed by version.
    pub version_routing: HashMap<String, String>,
    /// The router's zone and the services routed by it.
    pub zones: ZoneRouting,
    /// Shadow rules by service.
    pub shadows: HashMap<String, ShadowRule>,
    /// Where traces of routed messages go, if anywhere.
    pub traces: Option<TraceSettings>,
    /// Whether to route.
    pub router: bool,
    /// Whether registered instances are shown in their broker's discovery.
    pub announce: bool,
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
    /// Credentials and TLS per broker.
    pub access: AccessBook,
    /// Brokers the router may connect to besides its own; empty: any.
    pub allowed_brokers: Vec<String>,
    /// The token this sidecar gives the directory.
    pub directory_token: Option<Secret>,
    /// What a directory served here enforces.
    pub directory_rules: DirectoryRules,
    /// The services the router follows in the directory.
    pub interest: InterestConfig,
}

/// The configuration as given: the command line's options (flags and
/// variables) over the file's.
#[derive(Debug)]
pub struct Config {
    cli: Options,
    file: Options,
    file_origin: Origin,
}

/// Reads and parses a config file.
pub fn read_file(path: &Path) -> Result<Options, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    };
    let table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
    if let Some(moved) = adapters::MOVED_SETTINGS
        .iter()
        .find(|m| table.contains_key(m.key))
    {
        return Err(ConfigError::Invalid {
            origin: Origin::File(path.to_owned()),
            key: moved.key.to_owned(),
            reason: moved.instead.to_owned(),
        });
    }
    Options::deserialize(table).map_err(parse_error)
}

impl Config {
    /// The command line's options (flags and variables), over those of the
    /// config file at `file` if there is one.
    pub fn load(command_line: Options, file: Option<&Path>) -> Result<Self, ConfigError> {
        let (file, file_origin) = match file {
            Some(path) => (read_file(path)?, Origin::File(path.to_owned())),
            None => (Options::default(), Origin::CommandLine),
        };
        let mut moved = adapters::MOVED_SETTINGS.iter();
        if let Some(moved) = moved.find(|m| std::env::var_os(m.variable).is_some()) {
            return Err(ConfigError::Invalid {
                origin: Origin::CommandLine,
                key: moved.variable.to_owned(),
                reason: moved.instead.to_owned(),
            });
        }
        Ok(Self {
            cli: command_line,
            file,
            file_origin,
        })
    }

    /// A setting's value and where it was set: the command line's, else the
    /// file's.
    fn get<T: Clone>(&self, field: impl Fn(&Options) -> &Option<T>) -> Option<(T, Origin)> {
        match field(&self.cli) {
            Some(value) => Some((value.clone(), Origin::CommandLine)),
            None => field(&self.file)
                .clone()
                .map(|value| (value, self.file_origin.clone())),
        }
    }

    /// A setting's value, or `default`, and where to say it was set.
    fn get_or<T: Clone>(&self, field: impl Fn(&Options) -> &Option<T>, default: T) -> (T, Origin) {
        self.get(field)
            .unwrap_or_else(|| (default, self.file_origin.clone()))
    }

    /// Runtime threads: at least 1; 1 unless set.
    pub fn worker_threads(&self) -> Result<usize, ConfigError> {
        match self.get_or(|o| &o.worker_threads, 1) {
            (0, origin) => Err(invalid(origin, "worker_threads", "must be at least 1")),
            (threads, _) => Ok(threads),
        }
    }

    /// The log filter and format.
    pub fn logging(&self) -> (String, LogFormat) {
        (
            self.get_or(|o| &o.log, adapters::DEFAULT_LOG.to_owned()).0,
            self.get_or(|o| &o.log_format, LogFormat::Text).0,
        )
    }

    /// Whether a log filter was given.
    pub fn log_given(&self) -> bool {
        self.get(|o| &o.log).is_some()
    }

    /// The admin address: the one set, else the default.
    pub fn admin(&self) -> SocketAddr {
        self.get(|o| &o.admin)
            .map_or_else(|| DEFAULT_ADMIN.parse().expect("valid default"), |(a, _)| a)
    }

    /// The settings the sidecar runs with, or the first setting that is
    /// wrong.
    pub fn resolve(&self, adapters: &AdapterRegistry) -> Result<Settings, ConfigError> {
        let (adapter, origin) = self.get_or(|o| &o.adapter, adapters::DEFAULT_ADAPTER.to_owned());
        let Some(ingress_adapter) = adapters.get(&adapter) else {
            let reason = format!(
                "unknown adapter {adapter:?}; this build has: {}",
                adapters.names().join(", ")
            );
            return Err(invalid(origin, "adapter", reason));
        };
        let broker = match self.get(|o| &o.broker) {
            None => ingress_adapter.default_broker().to_owned(),
            Some((broker, origin)) => {
                // A URL the adapter cannot use stops the start: retrying it
                // would look like a broker that is down.
                ingress_adapter
                    .validate_broker(&broker)
                    .map_err(|e| invalid(origin, "broker", e.to_string()))?;
                broker
            }
        };
        let directory = match self.get(|o| &o.directory) {
            None => DirectoryTarget::Auto(DEFAULT_LISTEN.parse().expect("valid default")),
            Some((url, origin)) => {
                DirectoryTarget::parse(&url).map_err(|r| invalid(origin, "directory", r))?
            }
        };
        let admin = match self.get(|o| &o.admin) {
            Some((addr, _)) => (addr, true),
            None => (DEFAULT_ADMIN.parse().expect("valid default"), false),
        };
        let admin_token = self.admin_token()?;
        if !admin.0.ip().is_loopback() && admin_token.is_none() {
            let origin = self
                .get(|o| &o.admin)
                .map_or(Origin::CommandLine, |(_, o)| o);
            let reason = format!(
                "{} is not a loopback address: an admin API others can reach needs a token \
                 (admin_token_file, or the variable {ADMIN_TOKEN_VARIABLE})",
                admin.0
            );
            return Err(invalid(origin, "admin", reason));
        }
        let (ttl, origin) = self.get_or(|o| &o.ttl, DEFAULT_TTL_SECS);
        if !(1..=3600).contains(&ttl) {
            let reason = format!("{ttl} is not between 1 and 3600 seconds");
            return Err(invalid(origin, "ttl", reason));
        }
        let (max_in_flight, origin) = self.get_or(|o| &o.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(invalid(origin, "max_in_flight", "must be at least 1"));
        }
        let ingress = self.ingress(max_in_flight)?;
        let zones = self.zone_routing()?;
        let defaults = registration::Defaults {
            adapter: &adapter,
            broker: &broker,
            ttl_secs: ttl,
            ingress: &ingress,
            zone: zones.zone.as_deref(),
        };
        let mut registrations = self.registrations(&defaults, adapters)?;
        // Credentials in the configured URLs are kept in the book of broker
        // access, by broker; the URLs themselves (which records, logs and
        // status show) go without them.
        let mut access = brokers::resolve(&self.file.brokers, &self.file_origin, adapters)?;
        access.add_url_credentials(&broker);
        if let Some((url, _)) = self.get(|o| &o.directory) {
            // A KV directory's servers (credentials in its URL).
            access.add_url_credentials(baker_adapter_api::split_query(&url).0);
        }
        let broker = baker_adapter_api::without_credentials(&broker);
        for registered in &mut registrations {
            let endpoint = &mut registered.record.endpoint;
            access.add_url_credentials(&endpoint.broker);
            endpoint.broker = baker_adapter_api::without_credentials(&endpoint.broker);
        }
        let (max_attempts, origin) = self.get_or(|o| &o.max_attempts, DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            return Err(invalid(origin, "max_attempts", "must be at least 1"));
        }
        let (ejection_secs, origin) =
            self.get_or(|o| &o.outlier_ejection_secs, DEFAULT_OUTLIER_EJECTION_SECS);
        if !(1..=300).contains(&ejection_secs) {
            let reason = format!("{ejection_secs} is not between 1 and 300 seconds");
            return Err(invalid(origin, "outlier_ejection_secs", reason));
        }
        let outlier = OutlierConfig {
            consecutive_failures: self
                .get_or(|o| &o.outlier_failures, DEFAULT_OUTLIER_FAILURES)
                .0,
            base_ejection: std::time::Duration::from_secs(ejection_secs),
        };
        let (drain_secs, origin) =
            self.get_or(|o| &o.drain_timeout_secs, DEFAULT_DRAIN_TIMEOUT_SECS);
        if drain_secs > 3600 {
            let reason = format!("{drain_secs} is more than 3600 seconds");
            return Err(invalid(origin, "drain_timeout_secs", reason));
        }
        let listen = self.get(|o| &o.listen).map_or_else(
            || DEFAULT_LISTEN.parse().expect("valid default"),
            |(a, _)| a,
        );
        let directory_rules = DirectoryRules {
            auth: Arc::new(self.directory_auth(listen)?),
            endpoints: Some(Arc::new((adapters.clone(), ingress.clone()))),
            tls: self.directory_tls()?,
        };
        let directory_token = self.token(
            |o| &o.directory_token_file,
            "directory_token_file",
            DIRECTORY_TOKEN_VARIABLE,
        )?;
        let allowed_brokers = self.allowed_brokers(adapters)?;
        Ok(Settings {
            adapter,
            broker,
            directory,
            admin,
            admin_token,
            registrations,
            policies: self.policies()?,
            version_routing: self.version_routing()?,
            zones,
            shadows: self.shadows()?,
            traces: self.traces()?,
            router: !(self.cli.no_router || self.file.no_router),
            announce: !(self.cli.no_announce || self.file.no_announce),
            journey: JourneyConfig {
                max_attempts,
                max_payload: self.max_payload()?,
                outlier,
            },
            max_in_flight,
            ingress,
            listen,
            state_dir: self.get(|o| &o.state_dir).map(|(dir, _)| dir),
            drain_timeout: std::time::Duration::from_secs(drain_secs),
            access,
            directory_token,
            directory_rules,
            allowed_brokers,
            interest: self.interest()?,
        })
    }

    /// The largest payload routed: at least 1 byte.
    fn max_payload(&self) -> Result<usize, ConfigError> {
        match self.get_or(|o| &o.max_payload, DEFAULT_MAX_PAYLOAD) {
            (0, origin) => Err(invalid(origin, "max_payload", "must be at least 1 byte")),
            (bytes, _) => Ok(bytes),
        }
    }

    /// The ingress subscription: its prefix (checked) and queue group.
    fn ingress(&self, buffer: usize) -> Result<IngressOptions, ConfigError> {
        let (prefix, origin) = self.get_or(|o| &o.ingress_prefix, DEFAULT_PREFIX.to_owned());
        if prefix.is_empty()
            || prefix.starts_with('_')
            || prefix.contains(['*', '>', '#', '+', ' '])
        {
            let reason = format!("{prefix:?} must be non-empty, without wildcards, and not start with '_' (inboxes live there)");
            return Err(invalid(origin, "ingress_prefix", reason));
        }
        let queue_group = self
            .get_or(|o| &o.queue_group, DEFAULT_QUEUE_GROUP.to_owned())
            .0;
        Ok(IngressOptions {
            prefix,
            queue_group,
            buffer,
            // Made from the state directory or the registrations when the
            // sidecar starts (crate::member): reading or making it is not
            // the configuration's business.
            member: Member::this_run(),
        })
    }

    /// The file's registrations (`register[i]`), then the command line's.
    fn registrations(
        &self,
        defaults: &registration::Defaults<'_>,
        adapters: &AdapterRegistry,
    ) -> Result<Vec<Registered>, ConfigError> {
        let from_file = self.file.register.iter().enumerate().map(|(i, r)| {
            let key = format!("register[{i}]");
            (key, self.file_origin.clone(), r)
        });
        let from_cli =
            (self.cli.register.iter()).map(|r| ("register".to_owned(), Origin::CommandLine, r));
        from_file
            .chain(from_cli)
            .map(|(key, origin, r)| {
                r.resolve(defaults, adapters).map_err(|(sub, reason)| {
                    let key = if sub.is_empty() {
                        key
                    } else {
                        format!("{key}.{sub}")
                    };
                    invalid(origin, &key, reason)
                })
            })
            .collect()
    }

    /// Policies from the file's `[policy]` table, then the command line's.
    fn policies(&self) -> Result<HashMap<String, PolicyKind>, ConfigError> {
        self.per_service(
            |o| &o.policy,
            ("policy", false),
            |p| Ok((&p.service, p.policy)),
        )
    }

    /// Services routed by version, from the file, then the command line.
    fn version_routing(&self) -> Result<HashMap<String, String>, ConfigError> {
        let valid_header =
            |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        self.per_service(
            |o| &o.version_routing,
            ("version_routing", false),
            |v| match valid_header(&v.header) {
                true => Ok((&v.service, v.header.clone())),
                false => Err(format!("{:?} is not a header name", v.header)),
            },
        )
    }

    /// A per-service setting: the file's table, overridden by the command
    /// line's `SERVICE=VALUE` entries. `split` gives an entry's service and
    /// value, or why the value is not valid. With `every`, `*` may stand for
    /// every service.
    fn per_service<T, V>(
        &self,
        field: impl Fn(&Options) -> &Vec<T>,
        (key, every): (&str, bool),
        split: impl Fn(&T) -> Result<(&String, V), String>,
    ) -> Result<HashMap<String, V>, ConfigError> {
        let mut map = HashMap::new();
        let layers = [
            (&self.file, self.file_origin.clone()),
            (&self.cli, Origin::CommandLine),
        ];
        for (options, origin) in layers {
            for entry in field(options) {
                let named =
                    |s: &str| valid_name(s) || (every && s == crate::router::zones::EVERY_SERVICE);
                let checked = split(entry).and_then(|(service, value)| match named(service) {
                    true => Ok((service, value)),
                    false => Err(format!("{service:?} is not a valid service name")),
                });
                match checked {
                    Ok((service, value)) => map.insert(service.clone(), value),
                    Err(reason) => return Err(invalid(origin, key, reason)),
                };
            }
        }
        Ok(map)
    }
}

fn invalid(origin: Origin, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin,
        key: key.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::directory::Status;
    use crate::health::Probe;
    use clap::Parser;
    use std::io::Write;

    /// The settings from `file` and `args`, or the error the process would
    /// print (clap's for a flag it refuses).
    pub(super) fn resolve_with(file: &str, args: &[&str]) -> Result<Settings, String> {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(file.as_bytes()).unwrap();
        let path = tmp.path().to_str().unwrap().to_owned();
        let mut argv = vec!["baker-mq", "--config", &path];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::load(cli.options, cli.config.as_deref())
            .and_then(|config| config.resolve(&AdapterRegistry::builtin()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = resolve_with("adapter = \"memory\"\nmax_inflight = 5\n", &[])
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
    fn settings_that_cannot_work_stop_the_start_naming_the_key() {
        for (args, expected) in [
            (
                &["--broker", "garbage"][..],
                "key `broker`: invalid broker URL",
            ),
            (
                &["--max-payload", "0"][..],
                "key `max_payload`: must be at least 1 byte",
            ),
            (
                &["--directory", "http://"][..],
                "key `directory`: \"http://\" names no host",
            ),
            (
                &["--register", "service=a,id=b,id=c"][..],
                "id= is given twice",
            ),
            (
                &["--policy", "ord.ers=random"][..],
                "\"ord.ers\" is not a valid service name",
            ),
        ] {
            let error = resolve_with("adapter = \"memory\"\n", args).unwrap_err();
            assert!(error.contains(expected), "{args:?}: {error}");
        }
        let missing = Config::load(
            Options::default(),
            Some(Path::new("/nonexistent/baker.toml")),
        );
        let error = format!("{:#}", anyhow::Error::from(missing.unwrap_err()));
        assert_eq!(
            error.matches("No such file").count(),
            1,
            "said once: {error}"
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
    fn a_directory_url_errors_name_the_key() {
        for url in ["ftp://a:1", "a:7070"] {
            let err = resolve_with("", &["--directory", url]).unwrap_err();
            assert!(
                err.contains("key `directory`") && err.contains("http://HOST:PORT"),
                "{err}"
            );
        }
        let s = resolve_with("directory = \"http://10.0.0.5:7070/\"\n", &[]).unwrap();
        assert_eq!(
            s.directory,
            DirectoryTarget::Url("http://10.0.0.5:7070".into())
        );
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
        let spec = "service=a,id=b,colour=red"
            .parse::<Registration>()
            .unwrap_err();
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
    fn a_setting_moved_into_an_adapter_says_where_it_went() {
        for moved in adapters::MOVED_SETTINGS {
            let err = resolve_with(&format!("{} = \"x\"\n", moved.key), &[]).unwrap_err();
            assert!(
                err.contains(moved.key) && err.contains(moved.instead),
                "{err}"
            );
            let flag = format!("--{}", moved.key.replace('_', "-"));
            let err = Cli::try_parse_from(["baker-mq", &flag, "x"]).unwrap_err();
            assert!(err.to_string().contains(&flag), "{err}");
        }
    }

    #[test]
    fn one_options_type_reads_the_file_and_the_command_line() {
        let s = resolve_with(
            "[policy]\norders = \"broadcast\"\nbilling = \"random\"\n[version_routing]\norders = \"x-v\"\n",
            &["--policy", "orders=weighted", "--version-routing", "billing"],
        )
        .unwrap();
        assert_eq!(s.policies["orders"], PolicyKind::Weighted);
        assert_eq!(s.policies["billing"], PolicyKind::Random);
        assert_eq!(s.version_routing["orders"], "x-v");
        assert_eq!(s.version_routing["billing"], "baker-version");
        let err = resolve_with("[policy]\n\"a.b\" = \"random\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `policy`") && err.contains("a.b"), "{err}");
    }
}
