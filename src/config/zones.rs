//! The sidecar's zone and the services its router routes by zone.

use super::{invalid, Config, ConfigError, Origin};
use crate::router::zones::{ZoneMode, ZoneRouting};

/// Longest zone, as in a directory record.
const MAX_ZONE_LEN: usize = 128;

impl Config {
    /// The zone (checked) and the services routed by it; routing by zone
    /// without a zone of one's own is refused.
    pub(super) fn zone_routing(&self) -> Result<ZoneRouting, ConfigError> {
        let zone = match self.get(|o| &o.zone) {
            None => None,
            Some((zone, origin)) => {
                if zone.is_empty()
                    || zone.len() > MAX_ZONE_LEN
                    || zone.chars().any(|c| c.is_control())
                {
                    let reason = format!(
                        "{zone:?} must be 1 to {MAX_ZONE_LEN} bytes without control characters"
                    );
                    return Err(invalid(origin, "zone", reason));
                }
                Some(zone)
            }
        };
        let modes = self.per_service(
            |o| &o.zone_routing,
            ("zone_routing", true),
            |z| Ok((&z.service, z.mode)),
        )?;
        if zone.is_none() && modes.values().any(|m| *m == ZoneMode::Strict) {
            let origin = match self.cli.zone_routing.is_empty() {
                true => self.file_origin.clone(),
                false => Origin::CommandLine,
            };
            let reason = "routing by zone needs this router's own zone: set zone too";
            return Err(invalid(origin, "zone_routing", reason));
        }
        Ok(ZoneRouting { zone, modes })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::resolve_with;
    use crate::router::zones::ZoneMode;

    #[test]
    fn zone_routing_is_read_from_the_file_and_the_command_line() {
        let s = resolve_with(
            "zone = \"eu-1a\"\n[zone_routing]\n\"*\" = \"strict\"\nbilling = \"off\"\n",
            &["--zone-routing", "billing", "--zone-routing", "audit=off"],
        )
        .unwrap();
        assert_eq!(s.zones.zone.as_deref(), Some("eu-1a"));
        assert_eq!(s.zones.modes["*"], ZoneMode::Strict);
        assert_eq!(s.zones.modes["billing"], ZoneMode::Strict, "the flag wins");
        assert_eq!(s.zones.zone_for("audit"), None);
        assert_eq!(s.zones.zone_for("orders"), Some("eu-1a"));
    }

    #[test]
    fn routing_by_zone_without_a_zone_or_with_a_bad_one_is_refused() {
        let err = resolve_with("", &["--zone-routing", "orders"]).unwrap_err();
        assert!(
            err.contains("zone_routing") && err.contains("set zone"),
            "{err}"
        );
        let err = resolve_with("zone = \"\"\n", &[]).unwrap_err();
        assert!(err.contains("key `zone`"), "{err}");
        let err =
            resolve_with("zone = \"a\"\n[zone_routing]\norders = \"lax\"\n", &[]).unwrap_err();
        assert!(err.contains("zone_routing") && err.contains("lax"), "{err}");
        let err = resolve_with("", &["--zone", "a", "--zone-routing", "orders=lax"]).unwrap_err();
        assert!(err.contains("strict or off"), "{err}");
        let err =
            resolve_with("zone = \"a\"\n[zone_routing]\n\"a.b\" = \"off\"\n", &[]).unwrap_err();
        assert!(err.contains("a.b"), "{err}");
    }

    #[test]
    fn instances_registered_without_a_zone_are_in_the_sidecars() {
        let s = resolve_with(
            "adapter = \"memory\"\nzone = \"z1\"\n",
            &[
                "--register",
                "service=s,id=a",
                "--register",
                "service=s,id=b,zone=z2",
            ],
        )
        .unwrap();
        let zones: Vec<_> = (s.registrations.iter())
            .map(|r| r.record.zone.as_deref())
            .collect();
        assert_eq!(zones, [Some("z1"), Some("z2")]);
    }
}
