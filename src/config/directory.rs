//! Where the directory is: the embedded directory's URL, or a JetStream
//! key-value bucket.

use std::net::SocketAddr;

use crate::directory::record::valid_name;

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
    /// Parses a `--directory` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(DirectoryTarget::Url(url.trim_end_matches('/').to_owned()))
        } else if url.starts_with("nats://") || url.starts_with("tls://") {
            Ok(DirectoryTarget::Kv(KvSettings::parse(url)?))
        } else {
            Err(format!(
                "{url:?} is not a directory URL; expected http://HOST:PORT (embedded \
                 directory) or nats://HOST:PORT[,HOST:PORT...] (JetStream key-value bucket)"
            ))
        }
    }

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
        baker_adapter_nats::server_addrs(servers).map_err(|e| e.to_string())?;
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
