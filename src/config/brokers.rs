//! The file's `[[brokers]]` tables: credentials and TLS per broker, keyed by
//! the broker's URL without credentials. Secrets come from files or
//! environment variables, never from the table itself, and are read once at
//! start-up: a file that is missing or empty stops the start, naming the key.

use std::path::PathBuf;

use baker_adapter_api::{AccessBook, BrokerAccess, TlsFiles};
use schemars::JsonSchema;
use serde::Deserialize;

use super::secret::{read_env, read_file, read_secret};
use super::{invalid, ConfigError, Origin};
use crate::adapters::AdapterRegistry;

/// How to connect to one broker besides its address.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// The broker's URL without credentials, as instances' records and the
    /// `broker` setting name it: matched by scheme, hosts, ports and path
    /// (an AMQP vhost), whatever the case and the query, e.g.
    /// `nats://nats-1.internal:4222` or `amqps://rabbit:5671/orders`.
    pub url: String,
    /// User name.
    pub username: Option<String>,
    /// File holding the password (a trailing newline is not part of it).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding an authentication token (NATS).
    pub token_file: Option<PathBuf>,
    /// Environment variable holding an authentication token (NATS).
    pub token_env: Option<String>,
    /// File holding an NKey seed, `SU…` (NATS).
    pub nkey_seed_file: Option<PathBuf>,
    /// A credentials file: a user JWT and its NKey seed (NATS, `.creds`).
    pub credentials_file: Option<PathBuf>,
    /// Require TLS. Implied by `ca_file`, `cert_file` and `key_file`, and by
    /// a TLS scheme in the URL (e.g. `tls://` for NATS).
    pub tls: Option<bool>,
    /// PEM file of the CA certificates that sign the broker's certificate
    /// [default: the system's trusted roots].
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (mutual TLS), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
}

impl BrokerSection {
    /// The section's settings, with every secret read.
    /// `tls_scheme`: whether the URL's scheme means TLS.
    fn access(
        &self,
        key: &str,
        origin: &Origin,
        tls_scheme: bool,
    ) -> Result<BrokerAccess, ConfigError> {
        let fail = |field: &str, reason: String| {
            invalid(origin.clone(), &format!("{key}.{field}"), reason)
        };
        let secret = |name: &str, file: &Option<PathBuf>, env: &Option<String>| match (file, env) {
            (Some(_), Some(_)) => Err(fail(
                &format!("{name}_file"),
                format!("give {name}_file or {name}_env, not both"),
            )),
            (Some(path), None) => read_secret(path)
                .map(Some)
                .map_err(|reason| fail(&format!("{name}_file"), reason)),
            (None, Some(variable)) => read_env(variable)
                .map(Some)
                .map_err(|reason| fail(&format!("{name}_env"), reason)),
            (None, None) => Ok(None),
        };
        let password = secret("password", &self.password_file, &self.password_env)?;
        if password.is_some() && self.username.is_none() {
            return Err(fail("username", "a password needs a username".to_owned()));
        }
        let nkey_seed = self
            .nkey_seed_file
            .as_ref()
            .map(|path| read_secret(path).map_err(|r| fail("nkey_seed_file", r)))
            .transpose()?;
        // A credentials file is kept whole: its parser wants the last line's
        // newline.
        let credentials = self
            .credentials_file
            .as_ref()
            .map(|path| read_file(path).map_err(|r| fail("credentials_file", r)))
            .transpose()?;
        let files = TlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        };
        let tls = match self.tls {
            Some(false) if files != TlsFiles::default() || tls_scheme => {
                return Err(fail(
                    "tls",
                    "is false, but the section names TLS files or a TLS scheme".to_owned(),
                ))
            }
            Some(false) => None,
            _ if self.tls == Some(true) || tls_scheme || files != TlsFiles::default() => {
                // Checked now, so a file that cannot work stops the start.
                files
                    .client_config()
                    .map_err(|e| fail("ca_file", e.to_string()))?;
                Some(files)
            }
            _ => None,
        };
        Ok(BrokerAccess {
            username: self.username.clone(),
            password,
            token: secret("token", &self.token_file, &self.token_env)?,
            nkey_seed,
            credentials,
            tls,
        })
    }
}

/// Every section's settings, checked: a URL the adapters know, without
/// credentials, named once, and settings its adapter can use.
pub fn resolve(
    sections: &[BrokerSection],
    origin: &Origin,
    adapters: &AdapterRegistry,
) -> Result<AccessBook, ConfigError> {
    let mut entries: Vec<(String, BrokerAccess)> = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let key = format!("brokers[{i}]");
        let fail = |reason: String| invalid(origin.clone(), &format!("{key}.url"), reason);
        if baker_adapter_api::has_credentials(&section.url) {
            return Err(fail(
                "must not carry credentials: give username with password_file or password_env (or token_file, nkey_seed_file, credentials_file)".to_owned(),
            ));
        }
        let Some(adapter) = adapters.for_url(&section.url) else {
            return Err(fail(format!(
                "{:?} has a scheme no adapter of this build takes ({})",
                section.url,
                adapters.schemes().join(", ")
            )));
        };
        let url_key = baker_adapter_api::broker_key(&section.url);
        if entries
            .iter()
            .any(|(url, _)| baker_adapter_api::broker_key(url) == url_key)
        {
            return Err(fail(format!("{url_key} has a section already")));
        }
        let access = section.access(&key, origin, adapter.tls_scheme(&section.url))?;
        adapter
            .check_access(&access)
            .map_err(|e| invalid(origin.clone(), &key, e.to_string()))?;
        entries.push((section.url.clone(), access));
    }
    Ok(AccessBook::new(entries))
}
