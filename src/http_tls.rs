//! TLS for Baker's own HTTP clients (the embedded directory's client, `http`
//! health checks, `status` and `drain`): `https://` URLs are checked against
//! the CA file the configuration gives (`http_ca_file`), else the system's
//! trusted roots. Set once at start-up.

use std::path::Path;
use std::sync::OnceLock;

use baker_adapter_api::{AccessError, TlsFiles};

static CONFIG: OnceLock<rustls::ClientConfig> = OnceLock::new();

/// Trusts `ca_file` (else the system's roots) for every HTTP client made
/// after it; the first call wins.
pub fn configure(ca_file: Option<&Path>) -> Result<(), AccessError> {
    let files = TlsFiles {
        ca_file: ca_file.map(Path::to_path_buf),
        ..TlsFiles::default()
    };
    let config = files.client_config()?;
    let _ = CONFIG.set(config);
    Ok(())
}

/// A client builder with Baker's TLS trust: the configured roots, else the
/// system's.
pub fn client() -> reqwest::ClientBuilder {
    let config = match CONFIG.get() {
        Some(config) => config.clone(),
        None => {
            let _ = configure(None);
            CONFIG.get().cloned().unwrap_or_else(|| {
                baker_adapter_api::tls::install_crypto_provider();
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
        }
    };
    reqwest::Client::builder().use_preconfigured_tls(config)
}

/// `error` with every error under it (`error sending request: … : invalid
/// peer certificate: UnknownIssuer`): reqwest's own message names only the
/// outermost.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
