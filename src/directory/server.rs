//! The embedded directory's HTTP/JSON API.
//!
//! | method | path | does |
//! | --- | --- | --- |
//! | PUT | `/v1/services/{service}/instances/{id}` | register (or replace) a record, starting its lease |
//! | POST | `/v1/services/{service}/instances/{id}/renew` | extend the lease; 404 when unknown |
//! | DELETE | `/v1/services/{service}/instances/{id}` | deregister |
//! | GET | `/v1/services/{service}` | the service's records |
//! | GET | `/v1/catalog?epoch=E&index=N&wait=S` | every record; waits up to S seconds while the directory is still at epoch E, index N (the watch) |
//! | GET | `/healthz` | liveness |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;

use baker_adapter_api::Every;

use super::record::InstanceRecord;
use super::store::Store;
use crate::shutdown::Shutdown;

/// How often expired leases are swept. Bounds how late an expiry is seen.
const EXPIRY_SWEEP: Duration = Duration::from_millis(200);
/// Longest watch wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Serves the directory on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, epoch = store.epoch(), "serving the directory");
    let sweeper = {
        let store = store.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_SWEEP);
            while shutdown.run_until(tick.tick()).await.is_some() {
                store.expire(Instant::now());
            }
        })
    };
    let result = axum::serve(listener, routes(store))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    sweeper.abort();
    result
}

/// Binds `addr` and serves the directory there.
pub async fn bind_and_serve(addr: SocketAddr, shutdown: Shutdown) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve(listener, Arc::new(Store::new()), shutdown).await
}

fn routes(store: Arc<Store>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/catalog", get(catalog))
        .route("/v1/services/{service}", get(service))
        .route(
            "/v1/services/{service}/instances/{id}",
            put(register).delete(deregister),
        )
        .route("/v1/services/{service}/instances/{id}/renew", post(renew))
        .with_state(store)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn register(
    State(store): State<Arc<Store>>,
    Path((service, id)): Path<(String, String)>,
    Json(mut record): Json<InstanceRecord>,
) -> Response {
    if record.service != service || record.id != id {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "record names {}/{} but the path names {service}/{id}",
                record.service, record.id
            ),
        );
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
    match store.register(record, Instant::now()) {
        Ok(index) => Json(serde_json::json!({ "index": index })).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn renew(
    State(store): State<Arc<Store>>,
    Path((service, id)): Path<(String, String)>,
) -> Response {
    if store.renew(&service, &id, Instant::now()) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("no lease for {service}/{id}"),
        )
    }
}

async fn deregister(
    State(store): State<Arc<Store>>,
    Path((service, id)): Path<(String, String)>,
) -> Response {
    if store.deregister(&service, &id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("no lease for {service}/{id}"),
        )
    }
}

async fn service(State(store): State<Arc<Store>>, Path(service): Path<String>) -> Response {
    let instances = store.service(&service);
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

async fn catalog(State(store): State<Arc<Store>>, Query(query): Query<WatchQuery>) -> Response {
    if query.wait > 0 && query.epoch == store.epoch() {
        let wait = Duration::from_secs(query.wait).min(MAX_WAIT);
        store.wait_for_change(query.index, wait).await;
    }
    Json(store.catalog()).into_response()
}
