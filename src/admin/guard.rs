//! Who may change state through the admin API.
//!
//! Reads (`GET`: health, readiness, metrics, status) are open: they hold no
//! secret, and probes and scrapers need them. A request that changes state
//! (`POST`: drain) needs, with a token configured, `Authorization: Bearer
//! TOKEN`; without one (only allowed on loopback), the header
//! `X-Baker-Request: true` and a loopback `Host`. A browser cannot send
//! either header to another site without that site's consent (CORS), and the
//! `Host` check stops a page whose name was pointed at 127.0.0.1 (DNS
//! rebinding). A request whose `Origin` is not loopback is refused whatever
//! it carries.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use baker_adapter_api::Secret;

/// The header a state-changing request carries when no token is set.
pub const REQUEST_HEADER: &str = "x-baker-request";

/// The admin API's rule for requests that change state.
#[derive(Debug, Clone, Default)]
pub struct AdminGuard {
    token: Option<Secret>,
}

impl AdminGuard {
    /// Requests that change state need `token` when given.
    pub fn new(token: Option<Secret>) -> Self {
        Self { token }
    }

    /// Why `headers` may not change state, or nothing.
    fn refusal(&self, headers: &HeaderMap) -> Option<(StatusCode, String)> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(origin) = text(header::ORIGIN.as_str()) {
            if !loopback_authority(origin.split_once("://").map_or(origin, |(_, a)| a)) {
                let reason = format!("cross-site request from {origin} refused");
                return Some((StatusCode::FORBIDDEN, reason));
            }
        }
        match &self.token {
            Some(token) => {
                let given = text(header::AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer "));
                match given {
                    Some(given) if same(given.trim().as_bytes(), token.expose().as_bytes()) => None,
                    Some(_) => Some((StatusCode::UNAUTHORIZED, "wrong token".to_owned())),
                    None => Some((
                        StatusCode::UNAUTHORIZED,
                        "this admin API needs a token: Authorization: Bearer TOKEN".to_owned(),
                    )),
                }
            }
            None if text(REQUEST_HEADER) != Some("true") => Some((
                StatusCode::FORBIDDEN,
                format!("a request that changes state needs the header {REQUEST_HEADER}: true (baker-mq drain sends it)"),
            )),
            None => match text(header::HOST.as_str()) {
                Some(host) if loopback_authority(host) => None,
                host => Some((
                    StatusCode::FORBIDDEN,
                    format!("Host {host:?} is not a loopback address; an admin API without a token answers only loopback names"),
                )),
            },
        }
    }
}

/// Whether `authority` (`host[:port]`) names this host's loopback.
fn loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares in time that does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: reads pass, other requests must satisfy the guard.
pub async fn check(State(guard): State<Arc<AdminGuard>>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    match guard.refusal(request.headers()) {
        None => next.run(request).await,
        Some((status, reason)) => {
            (status, Json(serde_json::json!({ "error": reason }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn without_a_token_only_a_loopback_request_with_the_header_passes() {
        let guard = AdminGuard::new(None);
        let ok = headers(&[("host", "127.0.0.1:7071"), (REQUEST_HEADER, "true")]);
        assert_eq!(guard.refusal(&ok), None);
        for (pairs, status) in [
            (&[("host", "127.0.0.1:7071")][..], StatusCode::FORBIDDEN),
            (
                &[("host", "evil.example:7071"), (REQUEST_HEADER, "true")][..],
                StatusCode::FORBIDDEN,
            ),
            (
                &[
                    ("host", "127.0.0.1:7071"),
                    (REQUEST_HEADER, "true"),
                    ("origin", "http://evil.example"),
                ][..],
                StatusCode::FORBIDDEN,
            ),
        ] {
            assert_eq!(
                guard.refusal(&headers(pairs)).map(|r| r.0),
                Some(status),
                "{pairs:?}"
            );
        }
        let v6 = headers(&[
            ("host", "[::1]:7071"),
            (REQUEST_HEADER, "true"),
            ("origin", "http://localhost:3000"),
        ]);
        assert_eq!(guard.refusal(&v6), None);
    }

    #[test]
    fn with_a_token_the_bearer_must_match() {
        let guard = AdminGuard::new(Some(Secret::new("s3cret")));
        let right = headers(&[
            ("host", "10.0.0.5:7071"),
            ("authorization", "Bearer s3cret"),
        ]);
        assert_eq!(guard.refusal(&right), None);
        let wrong = headers(&[("authorization", "Bearer s3cres")]);
        assert_eq!(
            guard.refusal(&wrong).map(|r| r.0),
            Some(StatusCode::UNAUTHORIZED)
        );
        let none = headers(&[(REQUEST_HEADER, "true")]);
        assert_eq!(
            guard.refusal(&none).map(|r| r.0),
            Some(StatusCode::UNAUTHORIZED)
        );
    }
}
