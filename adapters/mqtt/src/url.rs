//! Broker URLs: `mqtt://[USER:PASSWORD@]HOST[:PORT][?KEY=VALUE&...]`, or
//! `mqtts://` for TLS (`tcp://` and `ssl://` are synonyms).
//!
//! The MQTT-specific settings live in the URL's query, so that a router's
//! `--broker` and an instance's endpoint say everything about the connection
//! without new configuration keys:
//!
//! * `client_id`: the ingress session's client id. The session (and the
//!   messages the broker keeps for it while the router is down) belongs to
//!   this id, so it must be stable across restarts and unique per router.
//!   Default `baker-<queue group>-<host name>-<member id>` (the member id is
//!   the core's: unique per sidecar on a host).
//! * `session_expiry`: seconds the broker keeps the ingress session after a
//!   disconnect (default 86400, one day).
//! * `keep_alive`: seconds between pings (default 30).
//! * `protocol`: `5` (default) or `3.1.1`, on an instance's endpoint: its
//!   consumer subscribes with MQTT 3.1.1, so the broker hands it payload and
//!   topic only. Baker still publishes MQTT 5; this only makes it say, once,
//!   what that instance does not get. The ingress needs MQTT 5.

use baker_adapter_api::Secret;

use crate::error::UrlError;

/// Default MQTT port.
pub const DEFAULT_PORT: u16 = 1883;
/// Default MQTT over TLS port (`mqtts://`, `ssl://`).
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// Default session expiry of the ingress session, in seconds.
pub const DEFAULT_SESSION_EXPIRY: u32 = 86_400;
/// Default keep-alive, in seconds.
pub const DEFAULT_KEEP_ALIVE: u16 = 30;

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// The scheme asks for TLS (`mqtts://`, `ssl://`).
    pub tls: bool,
    /// User name and password (printed `<redacted>`).
    pub credentials: Option<(String, Secret)>,
    pub client_id: Option<String>,
    pub session_expiry: u32,
    pub keep_alive: u16,
    /// The instance consumes with MQTT 3.1.1 (`protocol=3.1.1`).
    pub consumer_v311: bool,
}

impl BrokerUrl {
    /// Parses `url`.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::Scheme)?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(UrlError::Scheme),
        };
        // Where the credentials end as every part of Baker reads it: at the
        // last `@` (a password may hold `?`).
        let (authority, _) = baker_adapter_api::access::split_authority(rest);
        let query = baker_adapter_api::split_query(url).1.unwrap_or_default();
        let query = query.split('#').next().unwrap_or(query);
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((creds, host)) => {
                let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
                (Some((user.to_owned(), Secret::new(password))), host)
            }
            None => (None, authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse().map_err(|_| UrlError::Port(port.to_owned()))?,
            ),
            None if tls => (host_port, DEFAULT_TLS_PORT),
            None => (host_port, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(UrlError::Scheme);
        }
        let mut parsed = BrokerUrl {
            host: host.to_owned(),
            port,
            tls,
            credentials,
            client_id: None,
            session_expiry: DEFAULT_SESSION_EXPIRY,
            keep_alive: DEFAULT_KEEP_ALIVE,
            consumer_v311: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let bad = || UrlError::Query(pair.to_owned());
            let (key, value) = pair.split_once('=').ok_or_else(bad)?;
            match key {
                "client_id" if !value.is_empty() => parsed.client_id = Some(value.to_owned()),
                "session_expiry" => parsed.session_expiry = value.parse().map_err(|_| bad())?,
                "keep_alive" => {
                    parsed.keep_alive = value.parse().ok().filter(|k| *k >= 5).ok_or_else(bad)?
                }
                "protocol" => {
                    parsed.consumer_v311 = match value {
                        "5" => false,
                        "3.1.1" | "4" => true,
                        _ => return Err(bad()),
                    }
                }
                _ => return Err(bad()),
            }
        }
        Ok(parsed)
    }
}

/// This machine's host name, for the default client id.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_credentials_and_query() {
        let url =
            BrokerUrl::parse("mqtt://u:p@broker:1884?client_id=r1&session_expiry=60").unwrap();
        assert_eq!(url.host, "broker");
        assert_eq!(url.port, 1884);
        assert_eq!(url.credentials, Some(("u".into(), Secret::new("p"))));
        assert_eq!(url.client_id.as_deref(), Some("r1"));
        assert_eq!(url.session_expiry, 60);
        assert!(
            BrokerUrl::parse("mqtt://h?protocol=3.1.1")
                .unwrap()
                .consumer_v311
        );
        let plain = BrokerUrl::parse("mqtt://127.0.0.1").unwrap();
        assert_eq!(
            (plain.port, plain.session_expiry),
            (1883, DEFAULT_SESSION_EXPIRY)
        );
    }

    #[test]
    fn tls_schemes_default_to_port_8883() {
        for url in ["mqtts://broker", "ssl://broker/", "MQTTS://u:p@broker"] {
            let parsed = BrokerUrl::parse(url).unwrap();
            assert_eq!(
                (parsed.host.as_str(), parsed.port, parsed.tls),
                ("broker", 8883, true),
                "{url}"
            );
        }
        let parsed = BrokerUrl::parse("mqtts://broker:18883?client_id=r1").unwrap();
        assert_eq!((parsed.port, parsed.tls), (18883, true));
        assert_eq!(parsed.client_id.as_deref(), Some("r1"));
        let plain = BrokerUrl::parse("tcp://broker").unwrap();
        assert_eq!((plain.port, plain.tls), (1883, false));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert_eq!(BrokerUrl::parse("nats://x:4222"), Err(UrlError::Scheme));
        assert_eq!(
            BrokerUrl::parse("mqtt://x:abc"),
            Err(UrlError::Port("abc".into()))
        );
        assert!(matches!(
            BrokerUrl::parse("mqtt://x?colour=red"),
            Err(UrlError::Query(_))
        ));
    }
}
