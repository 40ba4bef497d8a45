//! Broker URLs: the servers to connect to; the query holds Baker's settings
//! (read by [`crate::jetstream::StreamSettings`]), not the connection's.

use crate::UrlError;

/// The servers of a broker URL: `nats://HOST:PORT`, or several separated by
/// commas (`nats://a:4222,b:4222`; the scheme may be given once), query
/// removed.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, UrlError> {
    let url = baker_adapter_api::split_query(url).0;
    let scheme = url.split_once("://").map_or("nats", |(scheme, _)| scheme);
    if scheme != "nats" && scheme != "tls" {
        return Err(UrlError::Scheme);
    }
    url.split(',')
        .map(|server| {
            let server = server.trim();
            let full = if server.contains("://") {
                server.to_owned()
            } else {
                format!("{scheme}://{server}")
            };
            full.parse::<async_nats::ServerAddr>()
                .map_err(|e| UrlError::Server {
                    server: baker_adapter_api::redact_url(server),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Default broker URL.
pub const DEFAULT_BROKER: &str = "nats://127.0.0.1:4222";

/// The URL without its query: what identifies a connection.
pub(crate) fn connection_url(url: &str) -> &str {
    baker_adapter_api::split_query(url).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_url_may_list_several_servers() {
        let servers = server_addrs("nats://a:4222,b:4223,tls://c:4224?inbox=jetstream").unwrap();
        let hosts: Vec<_> = servers
            .iter()
            .map(|s| format!("{}:{}", s.host(), s.port()))
            .collect();
        assert_eq!(hosts, ["a:4222", "b:4223", "c:4224"]);
        assert!(server_addrs("amqp://a:5672").is_err());
        assert_eq!(server_addrs("127.0.0.1:4222").unwrap().len(), 1);
    }
}
