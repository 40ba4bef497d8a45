//! How to reach a broker: the credentials and TLS files the configuration's
//! `[[broker]]` sections give, looked up by the broker's URL without
//! credentials, and the secrets themselves, which print as `<redacted>`.
//!
//! Credentials never travel in a directory record: a record names a broker
//! by its [`broker_key`], and each router connects with what its own
//! configuration holds for that key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A password, token or private key: its text is read only by the adapter
/// that hands it to a broker client; `Debug` and `Display` print
/// `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// The secret's text, to hand to a broker client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// TLS for a broker connection. Present means TLS is required, whatever
/// the URL's scheme says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA certificates that sign the broker's certificate;
    /// without it, the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate chain (mutual TLS), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
}

/// What a router or agent needs to connect to one broker besides its
/// address. Every field is optional; an adapter refuses the ones its
/// protocol has no use for ([`BrokerAccess::refuse`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerAccess {
    /// User name.
    pub username: Option<String>,
    /// Password, with `username`.
    pub password: Option<Secret>,
    /// Authentication token.
    pub token: Option<Secret>,
    /// An NKey seed (the private key of an NKey user).
    pub nkey_seed: Option<Secret>,
    /// A credentials file's text: a user JWT and its NKey seed.
    pub credentials: Option<Secret>,
    /// TLS, when the connection must use it.
    pub tls: Option<TlsFiles>,
}

impl BrokerAccess {
    /// The credentials `url` carries: `user:password@` as a user name and
    /// password, `name@` as a user name alone (NATS reads it as a token).
    pub fn from_url(url: &str) -> Option<Self> {
        let (username, password) = url_credentials(url)?;
        Some(Self {
            username: Some(username),
            password: password.map(Secret::new),
            ..Self::default()
        })
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// An error naming the first of `fields` (by their config keys:
    /// `token`, `nkey_seed`, `credentials`) that is set, for an adapter
    /// whose protocol has no use for them.
    pub fn refuse(&self, adapter: &str, fields: &[&str]) -> Result<(), AccessError> {
        for field in fields {
            let set = match *field {
                "username" => self.username.is_some(),
                "password" => self.password.is_some(),
                "token" => self.token.is_some(),
                "nkey_seed" => self.nkey_seed.is_some(),
                "credentials" => self.credentials.is_some(),
                "tls" => self.tls.is_some(),
                _ => false,
            };
            if set {
                return Err(AccessError::Unsupported {
                    adapter: adapter.to_owned(),
                    field: (*field).to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Why a broker's access settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The adapter's protocol has no such credential.
    #[error("the {adapter} adapter has no use for `{field}`")]
    Unsupported { adapter: String, field: String },
    /// A setting's value cannot be used.
    #[error("`{field}`: {reason}")]
    Invalid { field: String, reason: String },
    /// A TLS file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// Every broker's access settings, by [`broker_key`].
#[derive(Debug, Clone, Default)]
pub struct AccessBook {
    entries: Vec<(String, BrokerAccess)>,
}

impl AccessBook {
    /// A book of `entries` (URL, access); URLs are reduced to their keys.
    pub fn new(entries: impl IntoIterator<Item = (String, BrokerAccess)>) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(url, access)| (broker_key(&url), access))
                .collect(),
        }
    }

    /// Adds the credentials `url` carries, for its broker, unless the book
    /// has settings for that broker already (a `[[brokers]]` section wins).
    pub fn add_url_credentials(&mut self, url: &str) {
        if self.get(url).is_none() {
            if let Some(access) = BrokerAccess::from_url(url) {
                self.entries.push((broker_key(url), access));
            }
        }
    }

    /// The access settings for the broker at `url` (credentials and query
    /// ignored), or none.
    pub fn get(&self, url: &str) -> Option<&BrokerAccess> {
        let key = broker_key(url);
        self.entries.iter().find(|(k, _)| *k == key).map(|(_, a)| a)
    }

    /// The keys of every broker in the book.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }
}

/// What identifies a broker in a URL: the scheme, hosts, ports and path
/// (an AMQP vhost), lower-cased where case does not matter, without
/// credentials or query. `amqp://guest:pw@Rabbit:5672/%2f?heartbeat=5` and
/// `amqp://rabbit:5672/%2f` have the same key.
pub fn broker_key(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => (String::new(), url),
    };
    let (authority, tail) = split_authority(rest);
    let path = tail.split(['?', '#']).next().unwrap_or(tail);
    let hosts = servers(authority)
        .into_iter()
        .map(|(_, _, host)| host.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    let path = path.trim_end_matches('/');
    if scheme.is_empty() {
        format!("{hosts}{path}")
    } else {
        format!("{scheme}://{hosts}{path}")
    }
}

/// `url` without credentials (user name, password or token) and without
/// its query, for logs, health output, metrics and directory records.
/// Equal to [`broker_key`] but for case.
pub fn redact_url(url: &str) -> String {
    let redacted = without_credentials(url);
    match redacted.find(['?', '#']) {
        Some(at) => redacted[..at].to_owned(),
        None => redacted,
    }
}

/// `url` without credentials (user name, password or token) but with its
/// path and query: what a directory record names.
pub fn without_credentials(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, tail) = split_authority(rest);
    let hosts = servers(authority)
        .into_iter()
        .map(|(scheme, _, host)| match scheme {
            Some(scheme) => format!("{scheme}://{host}"),
            None => host.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",");
    match scheme {
        Some(scheme) => format!("{scheme}://{hosts}{tail}"),
        None => format!("{hosts}{tail}"),
    }
}

/// Whether `url` carries credentials (`user:password@` or `token@`).
pub fn has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority, _) = split_authority(rest);
    authority.contains('@')
}

/// The user name and password (or token, as a user name without password)
/// in `url`, percent-decoded.
pub fn url_credentials(url: &str) -> Option<(String, Option<String>)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority, _) = split_authority(rest);
    let userinfo = servers(authority)
        .into_iter()
        .find_map(|(_, userinfo, _)| userinfo)?;
    Some(match userinfo.split_once(':') {
        Some((user, password)) => (percent_decode(user), Some(percent_decode(password))),
        None => (percent_decode(userinfo), None),
    })
}

/// `rest` (a URL after its scheme) split where its authority (credentials,
/// hosts and ports) ends: at the first `/`, `?` or `#` after the last `@`,
/// that is not part of a later server's `scheme://`. Everything before the
/// last `@` counts as credentials, so a password holding an unencoded `/`,
/// `?` or `#` is still taken for one and kept out of records and logs (the
/// price: an `@` in a path or query must be written `%40`).
pub fn split_authority(rest: &str) -> (&str, &str) {
    let mut i = rest.rfind('@').map_or(0, |at| at + 1);
    while i < rest.len() {
        if rest.as_bytes()[i..].starts_with(b"://") {
            i += 3;
        } else if matches!(rest.as_bytes()[i], b'/' | b'?' | b'#') {
            return rest.split_at(i);
        } else {
            i += 1;
        }
    }
    (rest, "")
}

/// `url` split at the `?` of its query (which a password's `?` is not, see
/// [`split_authority`]): what comes before, and the query, if any.
pub fn split_query(url: &str) -> (&str, Option<&str>) {
    let start = url.find("://").map_or(0, |at| at + 3);
    let (_, tail) = split_authority(&url[start..]);
    let tail_at = url.len() - tail.len();
    match tail.find('?') {
        Some(at) => (&url[..tail_at + at], Some(&url[tail_at + at + 1..])),
        None => (url, None),
    }
}

/// The servers of an authority, each as its repeated scheme (`nats://a,
/// nats://b`), credentials and host. With one `@`, everything before it is
/// the credentials (a password may hold a `,`) of the hosts after it; with
/// several, each `,`-separated server has its own.
fn servers(authority: &str) -> Vec<(Option<&str>, Option<&str>, &str)> {
    fn scheme_off(server: &str) -> (Option<&str>, &str) {
        match server.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, server),
        }
    }
    if authority.matches('@').count() <= 1 {
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        return hosts
            .split(',')
            .enumerate()
            .map(|(i, server)| {
                let (scheme, host) = scheme_off(server);
                (scheme, userinfo.filter(|_| i == 0), host)
            })
            .collect();
    }
    authority
        .split(',')
        .map(|server| {
            let (scheme, server) = scheme_off(server);
            match server.rsplit_once('@') {
                Some((userinfo, host)) => (scheme, Some(userinfo), host),
                None => (scheme, None, server),
            }
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let Some(byte) = escaped {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a PEM file of certificates.
pub fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, AccessError> {
    use rustls_pki_types::pem::PemObject;
    let error = |reason: String| AccessError::TlsFile {
        what,
        path: path.to_owned(),
        reason,
    };
    let certificates = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("holds no PEM certificate".to_owned()));
    }
    Ok(certificates)
}

/// Reads a PEM file's private key.
pub fn read_private_key(
    path: &Path,
) -> Result<rustls_pki_types::PrivateKeyDer<'static>, AccessError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_file(path).map_err(|e| AccessError::TlsFile {
        what: "key_file",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl TlsFiles {
    /// A rustls client configuration: the CA file's certificates as roots
    /// (else the system's), and the client certificate when given.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, AccessError> {
        crate::tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for certificate in read_certificates("ca_file", path)? {
                    roots.add(certificate).map_err(|e| AccessError::TlsFile {
                        what: "ca_file",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates("cert_file", cert)?;
                let key = read_private_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| AccessError::TlsFile {
                        what: "cert_file",
                        path: cert.clone(),
                        reason: e.to_string(),
                    })
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), None) => Err(AccessError::TlsFile {
                what: "cert_file",
                path: cert.clone(),
                reason: "needs key_file too".to_owned(),
            }),
            (None, Some(key)) => Err(AccessError::TlsFile {
                what: "key_file",
                path: key.clone(),
                reason: "needs cert_file too".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 500,
            failure_persistence: None,
            ..Default::default()
        })]

        #[test]
        fn any_text_is_read_as_a_url_without_panicking(url in ".{0,60}") {
            let _ = broker_key(&url);
            let _ = without_credentials(&url);
            let _ = has_credentials(&url);
            let _ = url_credentials(&url);
            proptest::prop_assert!(!redact_url(&url).contains('?'));
        }

        /// Whatever a password holds (an `@` must be written `%40`, and a
        /// `,` too in a list of servers each with its own credentials), no
        /// form of the URL shown or keyed shows it, on one server or many.
        #[test]
        fn no_shown_form_of_a_url_holds_its_password(
            password in "[^@]{1,12}",
            hosts in proptest::collection::vec("[a-z0-9]{1,8}:[0-9]{2,4}", 1..4),
            many in proptest::bool::ANY,
        ) {
            // Each server with its own credentials: `,` splits servers and
            // `://` starts one, so neither can be in a password as it is.
            let many = many && !password.contains(',') && !format!("u:{password}").contains("://");
            let authority = if many {
                hosts.iter().map(|h| format!("u:{password}@{h}")).collect::<Vec<_>>().join(",")
            } else {
                format!("u:{password}@{}", hosts.join(","))
            };
            let url = format!("nats://{authority}/v?x=1");
            proptest::prop_assert!(has_credentials(&url));
            proptest::prop_assert_eq!(
                url_credentials(&url).and_then(|(_, p)| p),
                Some(percent_decode(&password))
            );
            let expected = format!("nats://{}", hosts.join(","));
            proptest::prop_assert_eq!(redact_url(&url), format!("{expected}/v"));
            proptest::prop_assert_eq!(without_credentials(&url), format!("{expected}/v?x=1"));
            proptest::prop_assert_eq!(broker_key(&url), format!("{expected}/v"));
        }
    }

    #[test]
    fn a_broker_key_ignores_credentials_query_and_case() {
        assert_eq!(
            broker_key("amqp://guest:pw@Rabbit:5672/%2f?heartbeat=5"),
            "amqp://rabbit:5672/%2f"
        );
        assert_eq!(
            broker_key("NATS://tok@a:4222,nats://u:p@b:4222"),
            "nats://a:4222,b:4222"
        );
        assert_eq!(broker_key("mqtt://h:1883/"), "mqtt://h:1883");
    }

    #[test]
    fn credentials_of_every_form_are_redacted() {
        for (url, shown) in [
            ("amqp://guest:secret@host:5672/%2f", "amqp://host:5672/%2f"),
            (
                "nats://s3cr3t-token@127.0.0.1:4222",
                "nats://127.0.0.1:4222",
            ),
            ("nats://u:p@a:1,u:p@b:2?ingress=jetstream", "nats://a:1,b:2"),
            ("tls://u:p@a:1,tls://u:p@b:2", "tls://a:1,tls://b:2"),
            ("mqtt://h:1883?client_id=x", "mqtt://h:1883"),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert_eq!(has_credentials(url), url.contains('@'), "{url}");
        }
    }

    #[test]
    fn without_credentials_keeps_path_and_query() {
        for (url, bare) in [
            (
                "amqp://guest:pw@host:5672/%2f?heartbeat=5",
                "amqp://host:5672/%2f?heartbeat=5",
            ),
            (
                "nats://tok@a:1,u:p@b:2?inbox=jetstream",
                "nats://a:1,b:2?inbox=jetstream",
            ),
            ("mqtt://u:p@h?client_id=x", "mqtt://h?client_id=x"),
            ("mqtt://h:1883", "mqtt://h:1883"),
        ] {
            assert_eq!(without_credentials(url), bare, "{url}");
        }
    }

    #[test]
    fn url_credentials_are_kept_in_the_book_unless_a_section_says_otherwise() {
        let section = BrokerAccess {
            username: Some("section".into()),
            ..Default::default()
        };
        let mut book = AccessBook::new([("amqp://a:5672/v".to_owned(), section.clone())]);
        book.add_url_credentials("amqp://url:pw@a:5672/v");
        book.add_url_credentials("amqp://other:pw2@b:5672/v?x=1");
        book.add_url_credentials("nats://c:4222");
        assert_eq!(book.get("amqp://a:5672/v"), Some(&section));
        let b = book.get("amqp://b:5672/v").unwrap();
        assert_eq!(b.username.as_deref(), Some("other"));
        assert_eq!(b.password.as_ref().map(Secret::expose), Some("pw2"));
        assert_eq!(book.get("nats://c:4222"), None);
    }

    #[test]
    fn url_credentials_are_decoded() {
        assert_eq!(
            url_credentials("amqp://us%40r:p%3Aw@h:5672/v"),
            Some(("us@r".to_owned(), Some("p:w".to_owned())))
        );
        assert_eq!(
            url_credentials("nats://tok@h:4222"),
            Some(("tok".to_owned(), None))
        );
        assert_eq!(url_credentials("nats://h:4222"), None);
    }

    #[test]
    fn the_book_finds_a_broker_by_its_key() {
        let access = BrokerAccess {
            username: Some("router".into()),
            password: Some(Secret::new("pw")),
            ..Default::default()
        };
        let book = AccessBook::new([("nats://N1:4222".to_owned(), access.clone())]);
        assert_eq!(
            book.get("nats://x:y@n1:4222?ingress=jetstream"),
            Some(&access)
        );
        assert_eq!(book.get("nats://n2:4222"), None);
        assert!(!format!("{access:?}").contains("pw"));
    }

    #[test]
    fn an_adapter_refuses_what_it_has_no_use_for() {
        let access = BrokerAccess {
            token: Some(Secret::new("t")),
            ..Default::default()
        };
        let error = access.refuse("amqp", &["token", "nkey_seed"]).unwrap_err();
        assert_eq!(error.to_string(), "the amqp adapter has no use for `token`");
        assert!(access.refuse("nats", &["nkey_seed"]).is_ok());
    }
}
