//! The one TLS crypto provider of the process.
//!
//! The broker clients link rustls with different crypto back-ends (ring,
//! aws-lc-rs); with more than one linked, rustls cannot pick a default and
//! the first TLS connection panics. Everything that makes a TLS
//! configuration calls [`install_crypto_provider`] first.

/// Installs ring as the process's rustls crypto provider, once; a provider
/// installed before stays.
pub fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
