//! Where traces of routed messages go: `otlp_endpoint`, checked.

use super::{invalid, Config, ConfigError};
use crate::traces::TraceSettings;

impl Config {
    /// The trace settings, when `otlp_endpoint` is set.
    pub(super) fn traces(&self) -> Result<Option<TraceSettings>, ConfigError> {
        let percent = self.get(|o| &o.trace_sample_percent);
        let Some((endpoint, origin)) = self.get(|o| &o.otlp_endpoint) else {
            if let Some((_, origin)) = percent {
                let reason = "sampling traces needs otlp_endpoint, where they go";
                return Err(invalid(origin, "trace_sample_percent", reason));
            }
            return Ok(None);
        };
        let authority = endpoint
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or(""));
        match authority {
            Some(host) if !host.is_empty() && !host.contains('@') => {}
            _ if endpoint.starts_with("https://") => {
                let reason =
                    "this build exports traces over plain HTTP only: point it at a collector \
                              on the host or in the pod (http://127.0.0.1:4318)";
                return Err(invalid(origin, "otlp_endpoint", reason));
            }
            _ => {
                // Not repeated: it may hold a password.
                let reason = "must be an http://HOST:PORT URL without credentials";
                return Err(invalid(origin, "otlp_endpoint", reason));
            }
        }
        let sample_ratio = match percent {
            None => 1.0,
            Some((p, _)) if (0.0..=100.0).contains(&p) => p / 100.0,
            Some((p, origin)) => {
                let reason = format!("{p} is not between 0 and 100");
                return Err(invalid(origin, "trace_sample_percent", reason));
            }
        };
        Ok(Some(TraceSettings {
            endpoint,
            sample_ratio,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::resolve_with;

    #[test]
    fn traces_are_off_unless_an_endpoint_is_given_and_a_bad_one_is_refused() {
        assert_eq!(resolve_with("", &[]).unwrap().traces, None);
        let on = resolve_with(
            "otlp_endpoint = \"http://127.0.0.1:4318\"\ntrace_sample_percent = 5\n",
            &[],
        )
        .unwrap()
        .traces
        .unwrap();
        assert_eq!(
            (on.endpoint.as_str(), on.sample_ratio),
            ("http://127.0.0.1:4318", 0.05)
        );
        for (file, says) in [
            ("otlp_endpoint = \"https://collector:4318\"\n", "plain HTTP"),
            ("otlp_endpoint = \"collector:4318\"\n", "http://HOST:PORT"),
            (
                "otlp_endpoint = \"http://user:pw@collector:4318\"\n",
                "without credentials",
            ),
            (
                "otlp_endpoint = \"http://c:4318\"\ntrace_sample_percent = 120\n",
                "between 0 and 100",
            ),
            ("trace_sample_percent = 5\n", "needs otlp_endpoint"),
        ] {
            let err = resolve_with(file, &[]).unwrap_err();
            assert!(err.contains(says), "{file}: {err}");
        }
    }
}
