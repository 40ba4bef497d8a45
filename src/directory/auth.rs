//! Who may do what in the embedded directory.
//!
//! A token (`Authorization: Bearer TOKEN`) names the services it may
//! register, renew and deregister, and whether it may read. The directory
//! keeps only each token's SHA-256, so its configuration holds no secret.
//! With no token configured the directory is open (the zero-configuration
//! directory on loopback); with tokens, a request without one is refused
//! (401), and one outside its token's grant too (403), except reads when
//! they are left open.

use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One token's grant, as the configuration gives it (`[[directory_tokens]]`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenGrant {
    /// A name for logs, e.g. `orders-agents`.
    pub name: String,
    /// The token's SHA-256, in hex (`printf %s "$TOKEN" | sha256sum`, or
    /// what `baker-mq token` prints).
    pub sha256: String,
    /// Services the token may register, renew and deregister; `*` for every
    /// service. Routers' tokens name none.
    #[serde(default)]
    pub services: Vec<String>,
    /// Whether the token may read the catalog [default: true].
    #[serde(default = "yes")]
    pub read: bool,
}

fn yes() -> bool {
    true
}

impl TokenGrant {
    /// The grant as a `[[directory_tokens]]` table.
    pub fn to_toml(&self) -> String {
        format!(
            "[[directory_tokens]]\nname = {:?}\nsha256 = {:?}\nservices = {:?}\nread = {}\n",
            self.name, self.sha256, self.services, self.read
        )
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token, or one the directory does not know: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token that may not do this: 403.
    #[error("{0}")]
    Forbidden(String),
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Read the catalog or a service.
    Read,
    /// Register, renew or deregister an instance of this service.
    Write(&'a str),
}

struct Grant {
    name: String,
    digest: [u8; 32],
    services: Vec<String>,
    read: bool,
}

/// The directory's tokens; empty means open.
#[derive(Default)]
pub struct DirectoryAuth {
    grants: Vec<Grant>,
    open_reads: bool,
}

impl DirectoryAuth {
    /// The grants of `tokens` (an error names the first one that is not
    /// valid); reads without a token when `open_reads`.
    pub fn new(tokens: &[TokenGrant], open_reads: bool) -> Result<Self, String> {
        let mut grants = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let digest = hex::decode(token.sha256.trim())
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| format!("[{i}].sha256 is not a SHA-256 in hex (64 characters)"))?;
            if let Some(bad) = (token.services.iter())
                .find(|s| *s != "*" && !crate::directory::record::valid_name(s))
            {
                return Err(format!(
                    "[{i}].services: {bad:?} is not a service name or *"
                ));
            }
            grants.push(Grant {
                name: token.name.clone(),
                digest,
                services: token.services.clone(),
                read: token.read,
            });
        }
        Ok(Self { grants, open_reads })
    }

    /// Whether any token is configured.
    pub fn is_enforced(&self) -> bool {
        !self.grants.is_empty()
    }

    /// Whether a request with `bearer` (the token it carries, if any) may
    /// do `action`; the name of its token when it has one.
    pub fn check(&self, bearer: Option<&str>, action: Action<'_>) -> Result<Option<&str>, Refusal> {
        if !self.is_enforced() {
            return Ok(None);
        }
        let Some(token) = bearer else {
            if matches!(action, Action::Read) && self.open_reads {
                return Ok(None);
            }
            return Err(Refusal::Unauthenticated(
                "this directory needs a token: Authorization: Bearer TOKEN".to_owned(),
            ));
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let Some(grant) = self.grants.iter().find(|g| same(&g.digest, &digest)) else {
            return Err(Refusal::Unauthenticated("unknown token".to_owned()));
        };
        let allowed = match action {
            Action::Read => grant.read || self.open_reads,
            Action::Write(service) => grant.services.iter().any(|s| s == "*" || s == service),
        };
        if !allowed {
            let what = match action {
                Action::Read => "read the directory".to_owned(),
                Action::Write(service) => format!("register instances of {service:?}"),
            };
            return Err(Refusal::Forbidden(format!(
                "token {:?} may not {what}",
                grant.name
            )));
        }
        Ok(Some(&grant.name))
    }
}

impl std::fmt::Debug for DirectoryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.grants.iter().map(|g| g.name.as_str()).collect();
        (f.debug_struct("DirectoryAuth").field("tokens", &names))
            .field("open_reads", &self.open_reads)
            .finish()
    }
}

/// 192 bits from the operating system's random source, in hex: a new
/// token or owner id.
pub fn new_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(hex::encode(bytes))
}

/// The SHA-256 of `token`, in hex: what a `[[directory_tokens]]` entry holds.
pub fn digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares in time that does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(name: &str, token: &str, services: &[&str], read: bool) -> TokenGrant {
        TokenGrant {
            name: name.to_owned(),
            sha256: digest_hex(token),
            services: services.iter().map(|s| s.to_string()).collect(),
            read,
        }
    }

    #[test]
    fn a_token_may_write_only_its_services() {
        let auth = DirectoryAuth::new(
            &[
                grant("orders", "t-orders", &["orders"], true),
                grant("ops", "t-ops", &["*"], true),
                grant("router", "t-router", &[], true),
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            auth.check(Some("t-orders"), Action::Write("orders")),
            Ok(Some("orders"))
        );
        assert!(matches!(
            auth.check(Some("t-orders"), Action::Write("payments")),
            Err(Refusal::Forbidden(_))
        ));
        assert!(auth.check(Some("t-ops"), Action::Write("payments")).is_ok());
        assert!(matches!(
            auth.check(Some("t-router"), Action::Write("orders")),
            Err(Refusal::Forbidden(_))
        ));
        assert!(auth.check(Some("t-router"), Action::Read).is_ok());
        assert!(matches!(
            auth.check(None, Action::Read),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.check(Some("t-nope"), Action::Read),
            Err(Refusal::Unauthenticated(_))
        ));
    }

    #[test]
    fn open_reads_and_no_tokens() {
        let auth = DirectoryAuth::new(&[grant("w", "t", &["a"], false)], true).unwrap();
        assert!(auth.check(None, Action::Read).is_ok());
        assert!(auth.check(None, Action::Write("a")).is_err());
        let open = DirectoryAuth::default();
        assert!(open.check(None, Action::Write("a")).is_ok());
    }

    #[test]
    fn a_grant_that_cannot_work_is_refused() {
        let mut bad = grant("x", "t", &["a"], true);
        bad.sha256 = "abc".into();
        assert!(DirectoryAuth::new(&[bad], false)
            .unwrap_err()
            .contains("sha256"));
        let bad = grant("x", "t", &["a.b"], true);
        assert!(DirectoryAuth::new(&[bad], false)
            .unwrap_err()
            .contains("a.b"));
    }
}
