//! The sidecar process: wires the roles (directory watcher, router, agent,
//! admin) together from the settings, and runs them until a signal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use baker_adapter_api::IngressOptions;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::adapters::AdapterRegistry;
use crate::admin::{self, AdminState, IngressState};
use crate::agent::Agent;
use crate::config::{DirectoryTarget, Settings};
use crate::directory::http::Identity;
use crate::directory::owner::owner_id;
use crate::directory::snapshot::Snapshot;
use crate::directory::{DirectoryClient, Interest, View, Watcher};
use crate::member::member;
use crate::router::reply::ReplyProxy;
use crate::router::shadow::ShadowRule;
use crate::router::undelivered::UndeliveredReporter;
use crate::router::zones::ZoneRouting;
use crate::router::{self, Journey, JourneyConfig, PolicyKind, RoutingTable, TableBuilder};
use crate::shutdown::{self, Shutdown};
use crate::traces::{TraceSettings, Traces};
use baker_adapter_api::Backoff;

/// Errors that stop the sidecar from starting.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The owner id cannot be read from or saved in the state directory.
    #[error("cannot keep the owner id in the state directory: {0}")]
    OwnerId(#[source] std::io::Error),
    /// The member id cannot be read from or saved in the state directory.
    #[error("cannot keep the member id in the state directory: {0}")]
    MemberId(#[source] std::io::Error),
    /// The admin address cannot be bound.
    #[error("cannot listen on admin address {addr}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The directory cannot be used.
    #[error("{0}")]
    Directory(#[source] crate::directory::ClientError),
    /// The ingress adapter is not in this build.
    #[error("adapter {0:?} is not built into this baker-mq")]
    UnknownAdapter(String),
    /// Traces cannot be exported.
    #[error(transparent)]
    Traces(#[from] crate::traces::TracesError),
}

/// What a running router exposes.
pub struct RouterParts {
    /// The live routing table.
    pub table: Arc<ArcSwap<RoutingTable>>,
    /// The ingress's state, for the health endpoints.
    pub ingress: IngressState,
    /// The router's tasks.
    pub tasks: Vec<JoinHandle<()>>,
    /// Its traces, when on: to flush once the tasks ended.
    pub traces: Option<Arc<Traces>>,
}

/// What a router needs to know.
pub struct RouterSpec {
    /// Ingress adapter.
    pub adapter: String,
    /// Ingress broker URL.
    pub broker: String,
    /// Ingress subscription.
    pub ingress: IngressOptions,
    /// Journey tunables.
    pub journey: JourneyConfig,
    /// In-flight window.
    pub max_in_flight: usize,
    /// Policy per service.
    pub policies: HashMap<String, PolicyKind>,
    /// Header naming the version, per service routed by version.
    pub version_routing: HashMap<String, String>,
    /// The router's zone and the services routed by it.
    pub zones: ZoneRouting,
    /// Shadow rules by service.
    pub shadows: HashMap<String, ShadowRule>,
    /// Where traces of routed messages go, if anywhere.
    pub traces: Option<TraceSettings>,
    /// Brokers the router may connect to besides its own; empty: any.
    pub allowed_brokers: Vec<String>,
    /// The services the router follows.
    pub interest: Arc<Interest>,
}

/// Starts a router following `catalogs`: the table follower, the ingress
/// (retried with backoff until the broker takes the subscription) and the
/// undelivered-message reporter.
pub fn start_router(
    spec: RouterSpec,
    adapters: AdapterRegistry,
    views: watch::Receiver<Arc<View>>,
    shutdown: Shutdown,
) -> Result<RouterParts, SidecarError> {
    let Some(adapter) = adapters.get(&spec.adapter).cloned() else {
        return Err(SidecarError::UnknownAdapter(spec.adapter));
    };
    let table = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let builder = TableBuilder::new(Arc::new(adapters.clone()), spec.policies)
        .with_version_routing(spec.version_routing)
        .with_zone_routing(spec.zones)
        .with_shadows(spec.shadows)
        .with_ingress(&spec.broker, spec.ingress.clone(), &spec.allowed_brokers)
        .with_interest(spec.interest.clone());
    let undelivered = Arc::new(UndeliveredReporter::default());
    let replies = Arc::new(ReplyProxy::new(
        adapter.clone(),
        &spec.broker,
        adapters.clone(),
    ));
    let traces = match &spec.traces {
        Some(settings) => {
            let traces = Traces::start(settings, adapter.messaging_system())?;
            tracing::info!(endpoint = %settings.endpoint, "exporting traces of routed messages");
            Some(Arc::new(traces))
        }
        None => None,
    };
    let mut journey = Journey::new(
        table.clone(),
        spec.journey,
        undelivered.clone(),
        Some(replies.clone()),
    )
    .with_interest(spec.interest.clone());
    if let Some(traces) = &traces {
        journey = journey.with_traces(traces.clone());
    }
    let journey = Arc::new(journey);
    let ingress_state = IngressState::default();
    let mut tasks = vec![
        tokio::spawn(router::follow_catalog(
            views,
            builder,
            table.clone(),
            spec.interest.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(spec.interest.clone().run(shutdown.clone())),
    ];
    {
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move { undelivered.run(shutdown).await }));
    }
    tasks.push(tokio::spawn(replies.run(shutdown.clone())));
    tasks.push(tokio::spawn(consume(
        Consuming {
            adapter,
            broker: spec.broker,
            ingress: spec.ingress,
            max_in_flight: spec.max_in_flight,
            journey,
            state: ingress_state.clone(),
        },
        table.clone(),
        shutdown,
    )));
    Ok(RouterParts {
        table,
        ingress: ingress_state,
        tasks,
        traces,
    })
}

/// What the router's consuming task needs.
struct Consuming {
    adapter: Arc<dyn baker_adapter_api::Adapter>,
    broker: String,
    ingress: IngressOptions,
    max_in_flight: usize,
    journey: Arc<Journey>,
    state: IngressState,
}

/// Consumes the ingress once the directory has answered, until `shutdown`:
/// an ingress that ends without a stop (closed from the broker's side) is
/// subscribed again.
async fn consume(c: Consuming, table: Arc<ArcSwap<RoutingTable>>, shutdown: Shutdown) {
    // No view yet means every message would be undeliverable: leave them in
    // the broker (or to routers that have a view) until the directory has
    // answered once.
    let first_view = async {
        let mut logged = false;
        while table.load().catalog.epoch == 0 {
            if !logged {
                tracing::info!("waiting for a first directory view before consuming");
                logged = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if shutdown.run_until(first_view).await.is_none() {
        return;
    }
    while let Some(ingress) = subscribe(&c, &shutdown).await {
        tracing::info!(adapter = c.adapter.name(), broker = %baker_adapter_api::redact_url(&c.broker),
            prefix = %c.ingress.prefix, group = %c.ingress.queue_group, "routing");
        c.state.started(ingress.status());
        router::run(
            c.journey.clone(),
            ingress,
            c.max_in_flight,
            shutdown.clone(),
        )
        .await;
        c.state.stopped();
    }
}

/// The ingress, once the broker takes the subscription (retried with
/// backoff, 200 ms doubling to 10 s); `None` once `shutdown` comes. The same
/// failure again is logged at most every 30 s (and `/readyz` says it
/// meanwhile).
async fn subscribe(
    c: &Consuming,
    shutdown: &Shutdown,
) -> Option<Box<dyn baker_adapter_api::Ingress>> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut last_error: Option<(String, std::time::Instant)> = None;
    let mut held_back = 0u64;
    loop {
        match shutdown
            .run_until(c.adapter.ingress(&c.broker, &c.ingress))
            .await?
        {
            Ok(ingress) => return Some(ingress),
            Err(error) => {
                let text = error.to_string();
                c.state.failed(&text);
                let repeat = last_error.as_ref().is_some_and(|(last, at)| {
                    *last == text && at.elapsed() < Duration::from_secs(30)
                });
                if repeat {
                    held_back += 1;
                } else {
                    let repeated = std::mem::take(&mut held_back);
                    tracing::warn!(%error, repeated, "cannot subscribe to the ingress; retrying");
                    last_error = Some((text, std::time::Instant::now()));
                }
                shutdown
                    .run_until(tokio::time::sleep(backoff.next_delay()))
                    .await?;
            }
        }
    }
}

async fn bind_admin((addr, explicit): (SocketAddr, bool)) -> Result<TcpListener, SidecarError> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(source) if explicit => Err(SidecarError::Admin { addr, source }),
        Err(error) => {
            // The default port is taken, most likely by another sidecar of
            // this host: take any free loopback port and say which.
            let fallback = SocketAddr::new(addr.ip(), 0);
            let listener =
                TcpListener::bind(fallback)
                    .await
                    .map_err(|source| SidecarError::Admin {
                        addr: fallback,
                        source,
                    })?;
            tracing::warn!(%addr, %error, actual = %listener.local_addr().map_err(|source| SidecarError::Admin { addr: fallback, source })?,
                "default admin address taken; serving admin elsewhere");
            Ok(listener)
        }
    }
}

/// Runs the sidecar until SIGINT/SIGTERM.
pub async fn run(
    settings: Settings,
    prometheus: Option<PrometheusHandle>,
) -> Result<(), SidecarError> {
    let shutdown = Shutdown::new();
    let adapters = AdapterRegistry::with_access(&settings.access);
    let identity = Identity {
        token: settings.directory_token.clone(),
        owner: owner_id(settings.state_dir.as_deref()).map_err(SidecarError::OwnerId)?,
    };
    let client = match &settings.directory {
        DirectoryTarget::Auto(_) | DirectoryTarget::Url(_) => {
            DirectoryClient::http(&settings.directory.url(), &identity)
        }
        DirectoryTarget::Engine(engine) => (engine.open(&settings.access, &identity.owner))
            .await
            .map_err(SidecarError::Directory)?,
    };
    let takeover = match settings.directory {
        DirectoryTarget::Auto(addr) => Some((addr, settings.directory_rules.clone())),
        DirectoryTarget::Url(_) | DirectoryTarget::Engine(_) => None,
    };
    let can_take_over = takeover.is_some();
    let interest = Arc::new(Interest::new(settings.interest.clone()));
    let judge = adapters.clone();
    let mut watcher = Watcher::new(client.clone(), takeover)
        .with_interest(interest.clone())
        .with_self_preservation(Arc::new(move |record| judge.send_fails_when_gone(record)));
    if let (true, Some(dir)) = (settings.router, &settings.state_dir) {
        watcher = watcher.with_snapshot(Snapshot::in_dir(dir));
    }
    if can_take_over && !client.ping().await {
        watcher.try_takeover(&shutdown).await;
    }
    let directory_health = watcher.health();
    let catalogs = watcher.subscribe();
    let admin_listener = bind_admin(settings.admin).await?;
    if let Ok(addr) = admin_listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }

    let mut tasks = Vec::new();
    {
        let shutdown = shutdown.clone();
        // An agent alone needs no view, only takeover duty in auto mode.
        tasks.push(if settings.router || can_take_over {
            tokio::spawn(watcher.run(shutdown))
        } else {
            tokio::spawn(watcher.report_reachability(shutdown))
        });
    }

    let mut traces = None;
    let (table, ingress) = if settings.router {
        let instances: Vec<(&str, &str)> = (settings.registrations.iter())
            .map(|r| (r.record.service.as_str(), r.record.id.as_str()))
            .collect();
        let ingress = IngressOptions {
            member: member(settings.state_dir.as_deref(), &instances)
                .map_err(SidecarError::MemberId)?,
            ..settings.ingress.clone()
        };
        let parts = start_router(
            RouterSpec {
                adapter: settings.adapter.clone(),
                broker: settings.broker.clone(),
                ingress,
                journey: settings.journey.clone(),
                max_in_flight: settings.max_in_flight,
                policies: settings.policies.clone(),
                version_routing: settings.version_routing.clone(),
                zones: settings.zones.clone(),
                shadows: settings.shadows.clone(),
                traces: settings.traces.clone(),
                allowed_brokers: settings.allowed_brokers.clone(),
                interest,
            },
            adapters.clone(),
            catalogs,
            shutdown.clone(),
        )?;
        tasks.extend(parts.tasks);
        traces = parts.traces;
        (Some(parts.table), parts.ingress)
    } else {
        (None, IngressState::default())
    };

    // The agent stops first: its instances leave the directory (which this
    // process may be serving) while the router still routes.
    let mut agent = Agent::new(
        client,
        adapters.clone(),
        settings.registrations.clone(),
        settings.drain_timeout,
    );
    agent = agent.with_prefix(&settings.ingress.prefix);
    if settings.announce {
        agent = agent.with_announcing(settings.ingress.clone());
    }
    let registered = agent.ready_flag();
    let drains = agent.drain_requests();
    let stop_requested = Shutdown::new();
    let agent_shutdown = Shutdown::new();
    let agent_task = tokio::spawn(agent.run(agent_shutdown.clone()));

    let state = AdminState {
        table,
        policies: settings.policies.clone(),
        directory: directory_health,
        adapters: adapters.clone(),
        prometheus,
        ingress,
        registered,
        drains,
        stop_requested: stop_requested.clone(),
        guard: admin::guard::AdminGuard::new(settings.admin_token.clone()),
        rates: Default::default(),
    };
    {
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(error) = admin::serve(admin_listener, state, shutdown).await {
                tracing::error!(%error, "admin API stopped");
            }
        }));
    }

    tokio::select! {
        _ = shutdown::signal() => {}
        _ = stop_requested.cancelled() => tracing::info!("drain requested through the admin API"),
    }
    tracing::info!("shutting down");
    agent_shutdown.trigger();
    let _ = agent_task.await;
    shutdown.trigger();
    for task in tasks {
        let _ = task.await;
    }
    if let Some(traces) = traces {
        // The last spans, then the exporter's thread.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    adapters.flush(Duration::from_secs(5)).await;
    Ok(())
}
