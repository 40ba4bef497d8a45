//! The directory URL: `nats://HOST:PORT[,HOST:PORT...][?bucket=NAME&replicas=N]`.

use baker_directory_api::valid_name;

/// Name of the directory's key-value bucket unless the URL says otherwise.
pub const DEFAULT_BUCKET: &str = "baker-directory";

/// Why a directory URL cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    /// The servers are not NATS servers.
    #[error(transparent)]
    Servers(#[from] baker_adapter_nats::UrlError),
    /// The bucket name is not one.
    #[error("bucket {0:?} must be letters, digits, '-' or '_'")]
    Bucket(String),
    /// The replica count is out of range.
    #[error("replicas {0:?} must be 1 to 5")]
    Replicas(String),
    /// A setting Baker does not know.
    #[error("unknown setting {0:?} in the directory URL; known: bucket, replicas")]
    Unknown(String),
}

/// A directory held in a JetStream key-value bucket.
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
    /// Whether `url` is for this engine (its scheme is NATS's).
    pub fn claims(url: &str) -> bool {
        url.starts_with("nats://") || url.starts_with("tls://")
    }

    /// Parses a `nats://` directory URL.
    pub fn parse(url: &str) -> Result<Self, SettingsError> {
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
                "bucket" => return Err(SettingsError::Bucket(value.to_owned())),
                "replicas" => match value.parse() {
                    Ok(n @ 1..=5) => settings.replicas = n,
                    _ => return Err(SettingsError::Replicas(value.to_owned())),
                },
                other => return Err(SettingsError::Unknown(other.to_owned())),
            }
        }
        baker_adapter_nats::server_addrs(servers)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_url_names_servers_a_bucket_and_its_replicas() {
        assert_eq!(
            KvSettings::parse("nats://a:4222,b:4222?bucket=dir-1&replicas=3"),
            Ok(KvSettings {
                servers: "nats://a:4222,b:4222".into(),
                bucket: "dir-1".into(),
                replicas: 3,
            })
        );
        assert_eq!(
            KvSettings::parse("nats://127.0.0.1:4222"),
            Ok(KvSettings {
                servers: "nats://127.0.0.1:4222".into(),
                bucket: DEFAULT_BUCKET.into(),
                replicas: 1,
            })
        );
        for (url, says) in [
            ("nats://a:4222?replicas=7", "replicas"),
            ("nats://a:4222?bucket=a.b", "bucket"),
            ("nats://a:4222?colour=red", "colour"),
            ("amqp://a:5672", "nats://"),
        ] {
            let err = KvSettings::parse(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
