//! Shadow rules: which services copy a share of their messages to the
//! instances of a version.

use std::collections::HashMap;

use super::{Config, ConfigError};
use crate::router::shadow::{ShadowRule, DEFAULT_MAX_IN_FLIGHT};

/// Most copies a rule may have under way.
const MAX_IN_FLIGHT_LIMIT: usize = 100_000;

impl Config {
    /// The shadow rules, checked.
    pub(super) fn shadows(&self) -> Result<HashMap<String, ShadowRule>, ConfigError> {
        self.per_service(
            |o| &o.shadow,
            ("shadow", false),
            |entry| {
                let spec = &entry.spec;
                if spec.version.is_empty() {
                    return Err("the version must not be empty".to_owned());
                }
                if !(spec.percent > 0.0 && spec.percent <= 100.0) {
                    return Err(format!(
                        "percent {} must be more than 0 and at most 100",
                        spec.percent
                    ));
                }
                let per_mille = ((spec.percent * 10.0).round() as u64).max(1);
                let max_in_flight = spec.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
                if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&max_in_flight) {
                    return Err(format!(
                        "max_in_flight {max_in_flight} must be 1 to {MAX_IN_FLIGHT_LIMIT}"
                    ));
                }
                let rule = ShadowRule {
                    version: spec.version.clone(),
                    per_mille,
                    max_in_flight,
                };
                Ok((&entry.service, rule))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::resolve_with;

    #[test]
    fn shadow_rules_are_read_from_the_file_and_the_command_line() {
        let s = resolve_with(
            "[shadow]\norders = { version = \"2.4.0\", percent = 12.5 }\n",
            &["--shadow", "billing=3:100:7"],
        )
        .unwrap();
        let rule = |service: &str| {
            let rule = &s.shadows[service];
            (rule.version.clone(), rule.per_mille, rule.max_in_flight)
        };
        assert_eq!(rule("orders"), ("2.4.0".to_owned(), 125, 100));
        assert_eq!(rule("billing"), ("3".to_owned(), 1000, 7));
    }

    #[test]
    fn a_shadow_rule_that_cannot_work_is_refused_with_the_key() {
        for (file, args, says) in [
            (
                "[shadow]\no = { version = \"2\", percent = 0 }\n",
                &[][..],
                "more than 0",
            ),
            (
                "[shadow]\no = { version = \"2\", percent = 101 }\n",
                &[],
                "at most 100",
            ),
            (
                "[shadow]\no = { version = \"\", percent = 5 }\n",
                &[],
                "version",
            ),
            (
                "[shadow]\no = { version = \"2\", percent = 5, max_in_flight = 0 }\n",
                &[],
                "max_in_flight",
            ),
            (
                "[shadow]\no = { version = \"2\", share = 5 }\n",
                &[],
                "share",
            ),
            ("", &["--shadow", "o=2"], "SERVICE=VERSION:PERCENT"),
            ("", &["--shadow", "o=2:ten"], "percentage"),
        ] {
            let err = resolve_with(file, args).unwrap_err();
            assert!(
                err.contains("shadow") && err.contains(says),
                "{file} {args:?}: {err}"
            );
        }
    }
}
