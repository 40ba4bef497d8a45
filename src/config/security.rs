//! The settings that protect: tokens (the admin API's, the directory's),
//! the directory's grants and HTTPS certificate, the CA Baker's HTTP clients
//! trust, and the brokers a router may reach.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use baker_adapter_api::Secret;

use super::ADMIN_TOKEN_VARIABLE;
use super::{invalid, secret, Config, ConfigError, Options, Origin};
use crate::adapters::AdapterRegistry;
use crate::directory::auth::DirectoryAuth;

impl Config {
    /// The admin API's token: from `admin_token_file`, else the variable
    /// `BAKER_ADMIN_TOKEN`, else none.
    pub fn admin_token(&self) -> Result<Option<Secret>, ConfigError> {
        self.token(
            |o| &o.admin_token_file,
            "admin_token_file",
            ADMIN_TOKEN_VARIABLE,
        )
    }

    /// A token from the file a setting names (`key`), else from `variable`,
    /// else none.
    pub(super) fn token(
        &self,
        file: impl Fn(&Options) -> &Option<PathBuf>,
        key: &str,
        variable: &str,
    ) -> Result<Option<Secret>, ConfigError> {
        match self.get(file) {
            Some((path, origin)) => secret::read_secret(&path)
                .map(Some)
                .map_err(|reason| invalid(origin, key, reason)),
            None if std::env::var_os(variable).is_some() => secret::read_env(variable)
                .map(Some)
                .map_err(|reason| invalid(Origin::CommandLine, variable, reason)),
            None => Ok(None),
        }
    }

    /// The allow-list of brokers, the file's then the command line's: URLs
    /// an adapter takes, without credentials.
    pub(super) fn allowed_brokers(
        &self,
        adapters: &AdapterRegistry,
    ) -> Result<Vec<String>, ConfigError> {
        let layers = [
            (&self.file.allowed_brokers, self.file_origin.clone()),
            (&self.cli.allowed_brokers, Origin::CommandLine),
        ];
        let mut allowed = Vec::new();
        for (urls, origin) in layers {
            for url in urls {
                let fail = |reason: String| invalid(origin.clone(), "allowed_brokers", reason);
                if baker_adapter_api::has_credentials(url) {
                    return Err(fail(format!(
                        "{} must not carry credentials",
                        baker_adapter_api::redact_url(url)
                    )));
                }
                let adapter = adapters.for_url(url).ok_or_else(|| {
                    fail(format!(
                        "{url:?} has a scheme no adapter of this build takes"
                    ))
                })?;
                adapter
                    .validate_broker(url)
                    .map_err(|e| fail(e.to_string()))?;
                allowed.push(url.clone());
            }
        }
        Ok(allowed)
    }

    /// The HTTPS certificate of a directory served here, if any.
    pub(super) fn directory_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        let cert = self.get(|o| &o.directory_tls_cert_file);
        let key = self.get(|o| &o.directory_tls_key_file);
        let ((cert, origin), (key, _)) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some((_, origin)), None) | (None, Some((_, origin))) => {
                let reason = "needs both directory_tls_cert_file and directory_tls_key_file";
                return Err(invalid(origin, "directory_tls_cert_file", reason));
            }
        };
        let fail = |e: baker_adapter_api::AccessError| {
            invalid(origin.clone(), "directory_tls_cert_file", e.to_string())
        };
        baker_adapter_api::tls::install_crypto_provider();
        let chain =
            baker_adapter_api::access::read_certificates("cert_file", &cert).map_err(fail)?;
        let key = baker_adapter_api::access::read_private_key(&key).map_err(fail)?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| invalid(origin.clone(), "directory_tls_key_file", e.to_string()))?;
        Ok(Some(Arc::new(config)))
    }

    /// The CA file Baker's HTTP clients trust, if one is set, checked.
    pub fn http_ca_file(&self) -> Result<Option<PathBuf>, ConfigError> {
        match self.get(|o| &o.http_ca_file) {
            None => Ok(None),
            Some((path, origin)) => {
                baker_adapter_api::access::read_certificates("http_ca_file", &path)
                    .map_err(|e| invalid(origin, "http_ca_file", e.to_string()))?;
                Ok(Some(path))
            }
        }
    }

    /// Who may do what in a directory served by this process, checked:
    /// off loopback, tokens are required unless explicitly waived.
    pub(super) fn directory_auth(&self, listen: SocketAddr) -> Result<DirectoryAuth, ConfigError> {
        let open_reads = self.cli.directory_open_reads || self.file.directory_open_reads;
        let auth = DirectoryAuth::new(&self.file.directory_tokens, open_reads)
            .map_err(|reason| invalid(self.file_origin.clone(), "directory_tokens", reason))?;
        let waived =
            self.cli.allow_unauthenticated_directory || self.file.allow_unauthenticated_directory;
        if !listen.ip().is_loopback() && !auth.is_enforced() && !waived {
            let origin = self
                .get(|o| &o.listen)
                .map_or(Origin::CommandLine, |(_, o)| o);
            let reason = format!(
                "{listen} is not a loopback address: a directory others can reach needs tokens \
                 ([[directory_tokens]] in the config file; see docs/security.md), or \
                 --allow-unauthenticated-directory to let anyone who reaches it register \
                 instances"
            );
            return Err(invalid(origin, "listen", reason));
        }
        Ok(auth)
    }
}
