//! The admin HTTP API (loopback by default): `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text) and `/v1/status` (the routing table as JSON,
//! read by `baker-mq status`), open to read; and the drains, which only
//! [`guard`] lets through.

mod dashboard;
pub mod guard;
mod rates;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use baker_adapter_api::IngressStatus;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::adapters::AdapterRegistry;
use crate::agent::{DrainRequests, Lifecycle};
use crate::directory::{DirectoryHealth, DirectoryStatus};
use crate::router::table::ServiceRoute;
use crate::router::{PolicyKind, RoutingTable};
use crate::shutdown::Shutdown;

/// What the admin API reads.
#[derive(Clone)]
pub struct AdminState {
    /// The router's table, when this process routes.
    pub table: Option<Arc<ArcSwap<RoutingTable>>>,
    /// Policies per service, for services with no routable instance.
    pub policies: HashMap<String, PolicyKind>,
    /// The directory watcher's health.
    pub directory: Arc<DirectoryHealth>,
    /// Adapters, for broker connection state.
    pub adapters: AdapterRegistry,
    /// Renders `/metrics`; `None` when no recorder is installed.
    pub prometheus: Option<PrometheusHandle>,
    /// The router's ingress: subscribed, and connected.
    pub ingress: IngressState,
    /// Registration state of each instance this process registers.
    pub registered: Arc<Vec<AtomicBool>>,
    /// Drains single instances this process registers.
    pub drains: DrainRequests,
    /// Triggered to stop the whole process gracefully, as SIGTERM does.
    pub stop_requested: Shutdown,
    /// Who may change state (drain).
    pub guard: guard::AdminGuard,
    /// Each instance's rates over the last second.
    pub rates: rates::Rates,
}

/// The router's ingress as the health endpoints see it. The router task owns
/// the ingress; this is what it shares.
#[derive(Clone, Default)]
pub struct IngressState {
    subscribed: Arc<AtomicBool>,
    status: Arc<std::sync::Mutex<Option<IngressStatus>>>,
    /// Why the last attempt to subscribe failed, until one succeeds.
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl IngressState {
    /// The router has subscribed; `status` follows the ingress's connection.
    pub fn started(&self, status: IngressStatus) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.subscribed.store(true, Ordering::Relaxed);
    }

    /// An attempt to subscribe failed, with `reason`.
    pub fn failed(&self, reason: &str) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
    }

    /// The router has stopped consuming.
    pub fn stopped(&self) {
        self.subscribed.store(false, Ordering::Relaxed);
    }

    /// Whether the router consumes its ingress.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
    }

    /// Whether the ingress's broker connection is up now.
    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|s| s.is_connected())
    }

    /// What the ingress says the operator must fix, if anything.
    pub fn problem(&self) -> Option<String> {
        self.current().and_then(|s| s.problem())
    }

    /// Why the router could not subscribe, while it cannot.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn current(&self) -> Option<IngressStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One instance in `/v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Instance id.
    pub id: String,
    /// Version.
    pub version: String,
    /// Directory status.
    pub status: String,
    /// `adapter broker inbox`.
    pub endpoint: String,
    /// Weight.
    pub weight: u32,
    /// Whether this router sends to it.
    pub routed: bool,
    /// Messages delivered by this router.
    pub delivered: u64,
    /// Failed sends by this router.
    pub errors: u64,
    /// Sends in flight.
    pub in_flight: usize,
    /// Whether this router has ejected it for failing sends.
    #[serde(default)]
    pub ejected: bool,
    /// Ejections since it last took a message.
    #[serde(default)]
    pub ejections: u32,
    /// Its zone, if its record names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Whether it takes this router's shadow copies (and no original).
    #[serde(default)]
    pub shadow: bool,
    /// Messages delivered per second by this router, over the last second
    /// (none until two readings were taken).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Failed sends per second, over the last second.
    #[serde(default)]
    pub error_rate: Option<f64>,
}

/// One service in `/v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Policy in force.
    pub policy: String,
    /// The zone its messages prefer (this router's), when routed by zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Whether no instance in that zone can take its messages now, so that
    /// they go to every zone.
    #[serde(default)]
    pub zone_failover: bool,
    /// Its instances.
    pub instances: Vec<InstanceStatus>,
}

/// The `/v1/status` document.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusDocument {
    /// Directory reachability and view age.
    pub directory: serde_json::Value,
    /// Broker connections.
    pub brokers: Vec<serde_json::Value>,
    /// Services by name.
    pub services: BTreeMap<String, ServiceStatus>,
}

impl AdminState {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.table.is_some() {
            if !self.ingress.is_subscribed() {
                problems.push(match self.ingress.failure() {
                    Some(reason) => format!("ingress not subscribed: {reason}"),
                    None => "ingress not subscribed".to_owned(),
                });
            } else if let Some(problem) = self.ingress.problem() {
                problems.push(format!("ingress: {problem}"));
            } else if !self.ingress.is_connected() {
                problems.push("ingress disconnected from its broker; reconnecting".to_owned());
            }
            if !self.directory.has_view() {
                problems.push("no directory view yet".to_owned());
            }
        }
        if self.registered.iter().any(|r| !r.load(Ordering::Relaxed)) {
            problems.push("instances not yet registered".to_owned());
        }
        // Not an outage: retrying will not help until the configuration
        // changes.
        for broker in self.adapters.health() {
            if let Some(reason) = broker.refused {
                problems.push(format!(
                    "broker {} refuses this sidecar (credentials or TLS identity; check its \
                     [[brokers]] section): {reason}",
                    broker.broker
                ));
            }
        }
        problems
    }

    fn directory_json(&self) -> serde_json::Value {
        let DirectoryStatus {
            url,
            reachable,
            view_age_secs,
            serving,
            source,
            preserved_instances,
            following,
        } = self.directory.status();
        let following = following.map_or(serde_json::json!("*"), |services| services.into());
        serde_json::json!({ "url": url, "reachable": reachable, "view_age_secs": view_age_secs,
            "serving": serving, "view_source": source, "preserved_instances": preserved_instances,
            "following": following })
    }

    fn brokers_json(&self) -> Vec<serde_json::Value> {
        self.adapters
            .health()
            .into_iter()
            .map(|b| serde_json::json!({ "adapter": b.adapter, "broker": b.broker, "connected": b.connected, "refused": b.refused }))
            .collect()
    }

    /// The routing table as the status document.
    pub fn status(&self) -> StatusDocument {
        let mut services = BTreeMap::new();
        if let Some(table) = &self.table {
            let table = table.load();
            for record in &table.catalog.instances {
                let service =
                    services
                        .entry(record.service.clone())
                        .or_insert_with(|| ServiceStatus {
                            policy: table
                                .service(&record.service)
                                .map(|s| s.kind)
                                .or_else(|| self.policies.get(&record.service).copied())
                                .unwrap_or_default()
                                .to_string(),
                            zone: (table.service(&record.service)).and_then(|s| s.zone.clone()),
                            zone_failover: (table.service(&record.service))
                                .is_some_and(ServiceRoute::failing_over),
                            instances: Vec::new(),
                        });
                let stats = table.stats(&record.service, &record.id);
                let rate = self.rates.of(&record.service, &record.id);
                service.instances.push(InstanceStatus {
                    id: record.id.clone(),
                    version: record.version.clone(),
                    status: record.status.as_str().to_owned(),
                    endpoint: format!(
                        "{} {} {}",
                        record.endpoint.adapter, record.endpoint.broker, record.endpoint.inbox
                    ),
                    weight: record.weight,
                    routed: table.routes_to(&record.service, &record.id),
                    delivered: stats.map_or(0, |s| s.delivered.load(Ordering::Relaxed)),
                    errors: stats.map_or(0, |s| s.errors.load(Ordering::Relaxed)),
                    in_flight: stats.map_or(0, |s| s.outstanding.load(Ordering::Relaxed)),
                    ejected: stats.is_some_and(|s| s.outlier.is_ejected()),
                    ejections: stats.map_or(0, |s| s.outlier.ejections()),
                    zone: record.zone.clone(),
                    shadow: table.shadows_to(&record.service, &record.id),
                    rate: rate.map(|r| r.delivered),
                    error_rate: rate.map(|r| r.errors),
                });
            }
        }
        StatusDocument {
            directory: self.directory_json(),
            brokers: self.brokers_json(),
            services,
        }
    }
}

async fn healthz(State(state): State<AdminState>) -> Response {
    Json(serde_json::json!({
        "status": "alive",
        "directory": state.directory_json(),
        "brokers": state.brokers_json(),
        "ingress": state.table.as_ref().map(|_| serde_json::json!({
            "subscribed": state.ingress.is_subscribed(),
            "connected": state.ingress.is_connected(),
            "problem": state.ingress.problem(),
        })),
    }))
    .into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let problems = state.problems();
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({ "ready": problems.is_empty(), "problems": problems })),
    )
        .into_response()
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    let directory = state.directory.status();
    metrics::gauge!("baker_directory_reachable").set(if directory.reachable { 1.0 } else { 0.0 });
    if let Some(age) = directory.view_age_secs {
        metrics::gauge!("baker_directory_view_age_seconds").set(age);
    }
    for broker in state.adapters.health() {
        metrics::gauge!("baker_broker_connected", "adapter" => broker.adapter, "broker" => broker.broker)
            .set(if broker.connected { 1.0 } else { 0.0 });
    }
    match &state.prometheus {
        Some(handle) => {
            let mut text = handle.render();
            if let Some(table) = &state.table {
                text.push_str(&table.load().render_instance_metrics());
            }
            text.into_response()
        }
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

async fn status(State(state): State<AdminState>) -> Response {
    Json(state.status()).into_response()
}

/// Stops the whole process gracefully, as SIGTERM does: its instances drain
/// and deregister, then the router finishes what it holds.
async fn drain_process(State(state): State<AdminState>) -> Response {
    state.stop_requested.trigger();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "stopping": true })),
    )
        .into_response()
}

fn lifecycle_json(service: &str, id: &str, lifecycle: Lifecycle) -> serde_json::Value {
    let state = match lifecycle {
        Lifecycle::Serving => "serving",
        Lifecycle::Draining => "draining",
        Lifecycle::Drained => "drained",
    };
    serde_json::json!({ "service": service, "id": id, "state": state })
}

fn unknown_instance(service: &str, id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": format!("this process registers no instance {service}/{id}") })),
    )
        .into_response()
}

/// Drains one instance this process registers, then deregisters it.
async fn drain_instance(
    State(state): State<AdminState>,
    axum::extract::Path((service, id)): axum::extract::Path<(String, String)>,
) -> Response {
    if !state.drains.request(&service, &id) {
        return unknown_instance(&service, &id);
    }
    let lifecycle = state
        .drains
        .lifecycle(&service, &id)
        .unwrap_or(Lifecycle::Serving);
    (
        StatusCode::ACCEPTED,
        Json(lifecycle_json(&service, &id, lifecycle)),
    )
        .into_response()
}

/// Where a drain of one instance stands.
async fn drain_state(
    State(state): State<AdminState>,
    axum::extract::Path((service, id)): axum::extract::Path<(String, String)>,
) -> Response {
    match state.drains.lifecycle(&service, &id) {
        Some(lifecycle) => Json(lifecycle_json(&service, &id, lifecycle)).into_response(),
        None => unknown_instance(&service, &id),
    }
}

/// Serves the admin API on `listener` until shutdown.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    if let Some(table) = &state.table {
        let rates = state.rates.clone().follow(table.clone(), shutdown.clone());
        tokio::spawn(rates);
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/status", get(status))
        .merge(dashboard::routes())
        .route("/v1/drain", axum::routing::post(drain_process))
        .route(
            "/v1/drain/{service}/{id}",
            axum::routing::post(drain_instance).get(drain_state),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(state.guard.clone()),
            guard::check,
        ))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
