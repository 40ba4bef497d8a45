//! The embedded directory's HTTP/JSON API.
//!
//! | method | path | does |
//! | --- | --- | --- |
//! | PUT | `/v1/services/{service}/instances/{id}` | register (or replace) a record, starting its lease |
//! | POST | `/v1/services/{service}/instances/{id}/renew` | extend the lease; 404 when unknown |
//! | DELETE | `/v1/services/{service}/instances/{id}` | deregister |
//! | GET | `/v1/services/{service}` | the service's records |
//! | POST | `/v1/watch` | a router's watch: body `{"services": [...], "epoch": E, "index": N, "wait": S}`; answers what changed in those services since (E, N), waiting up to S seconds for a change of one of them; everything of those services without a position |
//! | GET | `/v1/catalog?epoch=E&index=N&wait=S` | every record; waits up to S seconds while the directory is still at epoch E, index N (the watch of releases before `/v1/watch`, and whole-fleet views) |
//! | GET | `/healthz` | liveness |
//!
//! With tokens configured ([`DirectoryAuth`]), each request carries
//! `Authorization: Bearer TOKEN`: 401 without a known token, 403 outside
//! its grant. A write carries the agent's owner id in `X-Baker-Owner`: a
//! live lease is its owner's (409 for anyone else) until it runs out.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;

use baker_adapter_api::Every;

use baker_adapter_api::IngressOptions;

use super::auth::{Action, DirectoryAuth, Refusal};
use super::record::{valid_name, InstanceRecord};
use super::store::{LeaseOutcome, Store, StoreError};
use crate::adapters::AdapterRegistry;
use crate::shutdown::Shutdown;
use baker_directory_api::MAX_WATCHED_SERVICES;

/// How often expired leases are swept. Bounds how late an expiry is seen.
const EXPIRY_SWEEP: Duration = Duration::from_millis(200);
/// Largest request body: a record with every field at its longest fits.
const MAX_BODY: usize = 64 * 1024;
/// Largest watch request: the most services a watch may name, each at its
/// longest.
const MAX_WATCH_BODY: usize = 1024 * 1024;
/// Longest watch wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The header naming the agent that owns a registration.
pub const OWNER_HEADER: &str = "x-baker-owner";

/// What the directory enforces: who may do what, and what a record's
/// endpoint may name.
#[derive(Clone, Default, Debug)]
pub struct DirectoryRules {
    /// Tokens and their grants (none: open).
    pub auth: Arc<DirectoryAuth>,
    /// The adapters and the ingress namespace records are checked against
    /// (none: not checked).
    pub endpoints: Option<Arc<(AdapterRegistry, IngressOptions)>>,
    /// Serve HTTPS with this certificate (none: plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What the handlers share.
#[derive(Clone)]
struct Shared {
    store: Arc<Store>,
    rules: DirectoryRules,
}

/// Serves the directory on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    rules: DirectoryRules,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, epoch = store.epoch(), tokens = rules.auth.is_enforced(), "serving the directory");
    let sweeper = {
        let store = store.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_SWEEP);
            let mut sweeps = 0u32;
            while shutdown.run_until(tick.tick()).await.is_some() {
                store.expire(Instant::now());
                sweeps = sweeps.wrapping_add(1);
                if sweeps.is_multiple_of(50) {
                    store.forget_idle_services();
                }
            }
        })
    };
    let tls = rules.tls.clone();
    let app = routes(Shared { store, rules }).into_make_service();
    let handle = axum_server::Handle::new();
    let stop = handle.clone();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        stop.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let listener = listener.into_std()?;
    let result = match tls {
        None => {
            let mut server = axum_server::from_tcp(listener).handle(handle);
            bound_slow_clients(server.http_builder());
            server.serve(app).await
        }
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
            let mut server = axum_server::from_tcp_rustls(listener, config).handle(handle);
            bound_slow_clients(server.http_builder());
            server.serve(app).await
        }
    };
    sweeper.abort();
    result
}

/// A client that sends its request headers slower than this loses its
/// connection: half-sent requests cannot hold the directory's connections
/// (and file descriptors) for long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn bound_slow_clients(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
}

/// Binds `addr` and serves the directory there.
pub async fn bind_and_serve(
    addr: SocketAddr,
    rules: DirectoryRules,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve(listener, Arc::new(Store::new()), rules, shutdown).await
}

fn routes(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/catalog", get(catalog))
        .route(
            "/v1/watch",
            post(watch).layer(axum::extract::DefaultBodyLimit::max(MAX_WATCH_BODY)),
        )
        .route("/v1/services/{service}", get(service))
        .route(
            "/v1/services/{service}/instances/{id}",
            put(register).delete(deregister),
        )
        .route("/v1/services/{service}/instances/{id}/renew", post(renew))
        // A record is at most a few KiB (see RecordError::TooLong); a larger
        // body is refused (413) before it is read whole.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// The refusal, as a response, when the request's token does not allow
/// `action`.
fn refused(shared: &Shared, headers: &HeaderMap, action: Action<'_>) -> Option<Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refusal = shared.rules.auth.check(bearer, action).err()?;
    static REFUSED: Every = Every::new(Duration::from_secs(10));
    let reason = match refusal {
        Refusal::Unauthenticated(_) => "unauthenticated",
        Refusal::Forbidden(_) => "forbidden",
    };
    metrics::counter!("baker_directory_refused_total", "reason" => reason).increment(1);
    if let Some(more) = REFUSED.check() {
        tracing::warn!(reason = %refusal, more, "directory request refused");
    }
    Some(match refusal {
        Refusal::Unauthenticated(reason) => error(StatusCode::UNAUTHORIZED, reason),
        Refusal::Forbidden(reason) => error(StatusCode::FORBIDDEN, reason),
    })
}

/// The owner id a write names (empty for agents without one).
fn owner(headers: &HeaderMap) -> &str {
    headers
        .get(OWNER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn owned(service: &str, id: &str) -> Response {
    error(
        StatusCode::CONFLICT,
        format!("{service}/{id} is registered by another owner until its lease ends"),
    )
}

async fn register(
    State(shared): State<Shared>,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(mut record): Json<InstanceRecord>,
) -> Response {
    if let Some(refused) = refused(&shared, &headers, Action::Write(&service)) {
        return refused;
    }
    if record.service != service || record.id != id {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "record names {}/{} but the path names {service}/{id}",
                record.service, record.id
            ),
        );
    }
    if let Some(endpoints) = &shared.rules.endpoints {
        let (adapters, ingress) = &**endpoints;
        let endpoint = &record.endpoint;
        let checked = adapters.check_endpoint(
            &endpoint.adapter,
            &endpoint.broker,
            &endpoint.inbox,
            ingress,
        );
        if let Err(refusal) = checked {
            metrics::counter!("baker_records_refused_total", "reason" => refusal.label())
                .increment(1);
            return error(
                StatusCode::BAD_REQUEST,
                format!("endpoint refused: {refusal}"),
            );
        }
    }
    if record.strip_credentials() {
        static STRIPPED: Every = Every::new(Duration::from_secs(60));
        metrics::counter!("baker_directory_credentials_stripped_total").increment(1);
        if let Some(more) = STRIPPED.check() {
            tracing::warn!(%service, %id, more, "a registration named its broker with credentials; \
                stored without them (routers connect with their own: see [[brokers]] in \
                docs/configuration.md); counted in baker_directory_credentials_stripped_total");
        }
    }
    match shared
        .store
        .register(record, owner(&headers), Instant::now())
    {
        Ok(index) => Json(serde_json::json!({ "index": index })).into_response(),
        Err(StoreError::Owned { .. }) => owned(&service, &id),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn renew(
    State(shared): State<Shared>,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&shared, &headers, Action::Write(&service)) {
        return refused;
    }
    let outcome = shared
        .store
        .renew(&service, &id, owner(&headers), Instant::now());
    lease_response(outcome, &service, &id)
}

async fn deregister(
    State(shared): State<Shared>,
    Path((service, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&shared, &headers, Action::Write(&service)) {
        return refused;
    }
    let outcome = (shared.store).deregister(&service, &id, owner(&headers), Instant::now());
    lease_response(outcome, &service, &id)
}

fn lease_response(outcome: LeaseOutcome, service: &str, id: &str) -> Response {
    match outcome {
        LeaseOutcome::Done => StatusCode::NO_CONTENT.into_response(),
        LeaseOutcome::Unknown => error(
            StatusCode::NOT_FOUND,
            format!("no lease for {service}/{id}"),
        ),
        LeaseOutcome::Owned => owned(service, id),
    }
}

async fn service(
    State(shared): State<Shared>,
    Path(service): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&shared, &headers, Action::Read) {
        return refused;
    }
    let instances = shared.store.service(&service);
    Json(serde_json::json!({ "service": service, "instances": instances })).into_response()
}

#[derive(Deserialize)]
struct WatchQuery {
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    index: u64,
    #[serde(default)]
    wait: u64,
}

async fn catalog(
    State(shared): State<Shared>,
    Query(query): Query<WatchQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&shared, &headers, Action::Read) {
        return refused;
    }
    let store = &shared.store;
    if query.wait > 0 && query.epoch == store.epoch() {
        let wait = Duration::from_secs(query.wait).min(MAX_WAIT);
        store.wait_for_change(query.index, wait).await;
    }
    Json(store.catalog()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchRequest {
    services: BTreeSet<String>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    wait: u64,
}

async fn watch(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(request): Json<WatchRequest>,
) -> Response {
    if let Some(refused) = refused(&shared, &headers, Action::Read) {
        return refused;
    }
    if request.services.len() > MAX_WATCHED_SERVICES {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "a watch names at most {MAX_WATCHED_SERVICES} services, this one {}; \
                 watch the whole catalog instead (GET /v1/catalog)",
                request.services.len()
            ),
        );
    }
    if let Some(bad) = request.services.iter().find(|s| !valid_name(s)) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("service {bad:?} is not a service name"),
        );
    }
    let after = request.epoch.zip(request.index);
    let wait = Duration::from_secs(request.wait).min(MAX_WAIT);
    let body = shared.store.watch(&request.services, after, wait).await;
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
