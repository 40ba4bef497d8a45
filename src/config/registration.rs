//! Instances to register: a `[[register]]` table or a `--register` spec,
//! resolved into the record that goes into the directory.

use std::collections::BTreeMap;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::Deserialize;

use super::check::CheckConfig;
use baker_adapter_api::IngressOptions;

use crate::adapters::{AdapterRegistry, EndpointRefusal};
use crate::directory::record::DEFAULT_WEIGHT;
use crate::directory::{EndpointRecord, InstanceRecord, Status};
use crate::health::HealthCheck;

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

/// An instance this process registers, with its health check.
#[derive(Debug, Clone)]
pub struct Registered {
    /// What goes into the directory.
    pub record: InstanceRecord,
    /// The active health check, if it has one.
    pub check: Option<HealthCheck>,
}

impl FromStr for Registration {
    type Err = String;

    /// Parses a `--register` spec: `service=NAME,id=ID[,key=value...]`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let mut r = Registration::default();
        let mut seen = std::collections::HashSet::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            if !seen.insert(key) {
                return Err(format!("{key}= is given twice"));
            }
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

/// What a registration takes from the sidecar's settings when it does not
/// say.
pub(super) struct Defaults<'a> {
    pub adapter: &'a str,
    pub broker: &'a str,
    pub ttl_secs: u64,
    /// The sidecar's ingress: an inbox in its namespace would loop.
    pub ingress: &'a IngressOptions,
    /// The sidecar's zone, for instances that name none.
    pub zone: Option<&'a str>,
}

impl Registration {
    /// The record and check of this registration, or the key (relative to
    /// the registration: `""`, `"adapter"`, `"inbox"`, `"check"`) that is
    /// wrong and why.
    pub(super) fn resolve(
        &self,
        defaults: &Defaults<'_>,
        adapters: &AdapterRegistry,
    ) -> Result<Registered, (&'static str, String)> {
        let adapter_name = self.adapter.as_deref().unwrap_or(defaults.adapter);
        let adapter = adapters
            .get(adapter_name)
            .ok_or_else(|| ("adapter", format!("unknown adapter {adapter_name:?}")))?;
        let inbox = self
            .inbox
            .clone()
            .unwrap_or_else(|| adapter.default_inbox(&self.service, &self.id));
        let broker = self.broker.as_deref().unwrap_or(defaults.broker);
        adapters
            .check_endpoint(adapter_name, broker, &inbox, defaults.ingress)
            .map_err(|refusal| match refusal {
                EndpointRefusal::InvalidBroker(reason) => ("broker", reason),
                other => ("inbox", other.to_string()),
            })?;
        let check = self
            .check
            .as_ref()
            .map(CheckConfig::resolve)
            .transpose()
            .map_err(|reason| ("check", reason))?;
        let record = InstanceRecord {
            service: self.service.clone(),
            id: self.id.clone(),
            version: self.version.clone().unwrap_or_default(),
            endpoint: EndpointRecord {
                adapter: adapter_name.to_owned(),
                broker: broker.to_owned(),
                inbox,
            },
            weight: self.weight.unwrap_or(DEFAULT_WEIGHT),
            zone: (self.zone.as_deref()).or(defaults.zone).map(str::to_owned),
            metadata: self.metadata.clone(),
            // An instance with a check is admitted by its first passing probe.
            status: if check.is_some() {
                Status::Critical
            } else {
                Status::Passing
            },
            ttl_secs: self.ttl.unwrap_or(defaults.ttl_secs),
        };
        record.validate().map_err(|e| ("", e.to_string()))?;
        Ok(Registered { record, check })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 500,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_spec_is_read_or_refused_with_a_reason(spec in ".{0,80}") {
            if let Err(reason) = spec.parse::<Registration>() {
                prop_assert!(!reason.is_empty());
            }
        }

        #[test]
        fn a_spec_says_what_it_was_written_with(
            service in "[a-z0-9_-]{1,10}",
            id in "[a-z0-9_-]{1,10}",
            version in proptest::option::of("[a-z0-9.]{1,6}"),
            weight in proptest::option::of(any::<u32>()),
            zone in proptest::option::of("[a-z0-9-]{1,6}"),
            ttl in proptest::option::of(1u64..3600),
        ) {
            let mut spec = format!("service={service},id={id}");
            for (key, value) in [
                ("version", version.clone()),
                ("weight", weight.map(|w| w.to_string())),
                ("zone", zone.clone()),
                ("ttl", ttl.map(|t| t.to_string())),
            ] {
                if let Some(value) = value {
                    spec.push_str(&format!(",{key}={value}"));
                }
            }
            let r: Registration = spec.parse().unwrap();
            prop_assert_eq!(r.service, service);
            prop_assert_eq!(r.id, id);
            prop_assert_eq!(r.version, version);
            prop_assert_eq!(r.weight, weight);
            prop_assert_eq!(r.zone, zone);
            prop_assert_eq!(r.ttl, ttl);
        }
    }
}
