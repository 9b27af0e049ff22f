//! The server as a function of (listener, config, shutdown): builds the shared parts, the axum
//! router (WebSocket, demo page, metrics), and runs until shutdown, then drains.

use crate::api::ApiError;
use crate::auth::{ApiKeys, Keys};
use crate::backfill::Backfills;
use crate::boards::Boards;
use crate::catalogues::Catalogues;
use crate::config::Config;
use crate::leaderboard::Closer;
use crate::store::Store;
use crate::user::Users;
use crate::webhooks::Webhooks;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::metrics::Metrics;
pub use crate::shared::Shared;

/// Builds the server's parts, each given only the handles it uses: opens the store, loads each
/// tenant's catalogue and the open leaderboards, starts the user actors' supervisor. The one
/// place where the whole server is assembled.
pub async fn build(config: Config) -> anyhow::Result<Arc<Shared>> {
    let demo = config.demo_enabled()?;
    let secrets = config.tenant_secrets()?;
    let keys = Keys::new(&secrets);
    let api_keys = ApiKeys::new(&config.api_keys()?);
    std::fs::create_dir_all(&config.data_dir).map_err(|e| anyhow::anyhow!("creating data dir {}: {e}", config.data_dir.display()))?;
    let store = Store::open(&config.data_dir).map_err(|e| anyhow::anyhow!("opening data dir {}: {e}", config.data_dir.display()))?;
    let tenants: Vec<String> = secrets.iter().map(|(t, _)| t.clone()).collect();
    let catalogues = Arc::new(Catalogues::open(store.clone(), config.catalogue.clone(), &tenants, crate::clock::now_ms(), config.cluster.is_some()).await?);
    let boards = Arc::new(Boards::default());
    // A blocking scan, run once before any traffic is served: the scores of open periods. In
    // cluster mode the rankings hold the users of the partitions this node serves, put in as
    // each is rebuilt (the local store may hold others', from partitions served before).
    if config.cluster.is_none() {
        let loaded = boards.load(&store).map_err(|e| anyhow::anyhow!("loading leaderboards: {e}"))?;
        if loaded > 0 {
            tracing::info!(scores = loaded, "leaderboards loaded");
        }
    }
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let (shutdown, _) = watch::channel(false);
    // Cluster mode: the actors' event log is the partitions' changelog, then the local sled.
    let cluster = match &config.cluster {
        Some(_) => Some(Arc::new(crate::ownership::Membership::join(&config, &store).await?)),
        None => None,
    };
    // The catalogues are the cluster's before any event is judged by them.
    if let Some(m) = &cluster {
        // A stream created a moment ago may still be electing its leader: its reads time out
        // for a while (on a loaded machine, a fresh cluster's elections have outlasted 30 s),
        // so the join is tried again for as long as the streams' own setup waits.
        let deadline = tokio::time::Instant::now() + crate::cluster::SETUP;
        while let Err(e) = catalogues.join_cluster(m.catalog.clone(), &tenants).await {
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("joining the cluster's catalogue history: {e}");
            }
            tracing::warn!(error = %e, "joining the cluster's catalogue history failed; trying again");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::spawn(catalogues.clone().follow(shutdown.subscribe()));
    }
    let log: Arc<dyn crate::store::EventLog> = match &cluster {
        Some(m) => m.log.clone(),
        None => Arc::new(store.clone()),
    };
    let webhooks = Arc::new(Webhooks::new(store.clone(), log.clone(), metrics.clone(), config.clone(), shutdown.subscribe())?);
    let mail = Arc::new(tokio::sync::Notify::new());
    // Like the rankings, the analytics figures are an index over stored records, rebuilt by
    // one blocking scan before any traffic (in cluster mode, not yet: docs/analytics.md).
    let analytics = Arc::new(crate::analytics::Analytics::default());
    if config.cluster.is_none() {
        let read = analytics.rebuild(&store, &catalogues).map_err(|e| anyhow::anyhow!("rebuilding analytics: {e}"))?;
        if read > 0 {
            tracing::info!(users = read, "analytics rebuilt");
        }
    }
    // Community goals are served standalone (docs/teams.md): their totals are an index over
    // the users' shares, rebuilt by one scan before any traffic.
    let community = Arc::new(crate::community::Community::default());
    if config.cluster.is_none() {
        let read = community.load(&store).map_err(|e| anyhow::anyhow!("loading community goals: {e}"))?;
        if read > 0 {
            tracing::info!(shares = read, "community goals loaded");
        }
    }
    let env = crate::user::Env {
        community: config.cluster.is_none().then(|| community.clone()),
        config: config.clone(),
        log: log.clone(),
        catalogues: catalogues.clone(),
        metrics: metrics.clone(),
        boards: boards.clone(),
        webhooks: webhooks.clone(),
        mail: mail.clone(),
        analytics: analytics.clone(),
        relay: cluster.clone().map(|m| -> crate::user::Relay {
            Arc::new(move |tenant, user, frames| {
                let (m, tenant, user) = (m.clone(), tenant.to_string(), user.to_string());
                tokio::spawn(async move {
                    if let Err(e) = m.told(&tenant, &user, &frames).await {
                        tracing::debug!(tenant, user, error = %e, "a team's progress was not relayed");
                    }
                });
            })
        }),
    };
    let users = Users::start(env, shutdown.subscribe()).await?;
    // Mail between teams and their members is delivered by one worker per node.
    tokio::spawn(crate::teams::run(store.clone(), log, users.clone(), cluster.clone(), mail, shutdown.subscribe()));
    if let Some(m) = &cluster {
        tokio::spawn(m.clone().run(store.clone(), users.clone(), boards.clone(), catalogues.clone(), webhooks.clone(), metrics.clone(), shutdown.subscribe()));
    }
    let backfills = Backfills::new(store.clone(), catalogues.clone(), users.clone(), metrics.clone(), config.backfill_users_per_sec, shutdown.subscribe());
    Ok(Arc::new(Shared {
        store,
        keys,
        users,
        metrics,
        shutdown,
        demo,
        api_keys,
        catalogues,
        ready: AtomicBool::new(false),
        ingest_permits: Arc::new(tokio::sync::Semaphore::new((config.ingest_inflight_events as usize).max(crate::api::MAX_BATCH))),
        socket_permits: Arc::new(tokio::sync::Semaphore::new((config.socket_inflight_events as usize).max(1))),
        backfills,
        boards,
        webhooks,
        analytics,
        community,
        cluster,
        config,
    }))
}

/// The router: the WebSocket, the operations routes, the HTTP API and (when on) the demo.
pub fn app(shared: Arc<Shared>) -> Router {
    let mut r = Router::new()
        .route("/v1/ws", get(crate::session::upgrade))
        .route("/metrics", get(crate::api::metrics))
        .route("/healthz", get(crate::api::healthz))
        .route("/readyz", get(crate::api::readyz))
        .merge(crate::api::routes(shared.clone()))
        .merge(crate::dashboard::routes());
    if shared.demo {
        r = r.merge(crate::demo::routes());
    }
    let cluster = shared.cluster.clone();
    let router = r
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no_route", "no such route; the API is described at /v1/openapi.json".into()) })
        .layer(axum::middleware::from_fn(request_id))
        .with_state(shared);
    if let Some(m) = cluster {
        m.set_router(router.clone());
    }
    router
}

/// Gives every request an id (the caller's `x-request-id`, or a fresh one), puts it on every
/// log line written while handling the request, and returns it in the response.
async fn request_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:x}-{:x}", crate::clock::now_ms(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut res = next.run(req).instrument(span).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// Sweeps events older than the retention, now and then, on a blocking thread.
async fn retention(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let hours = shared.config.event_retention_hours;
    if hours == 0 {
        return;
    }
    let period = Duration::from_secs(shared.config.retention_sweep_secs.max(1));
    // The first sweep waits a period: a server just started has better things to do.
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        // Checked, not only awaited: a shutdown that came before this task first ran would
        // otherwise go unnoticed until the next sweep, an hour away.
        if *stop.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let store = shared.store.clone();
        let cutoff = crate::clock::now_ms() - (hours * 3_600_000) as i64;
        match tokio::task::spawn_blocking(move || store.sweep(cutoff)).await {
            Ok(Ok(s)) if s.events > 0 => tracing::info!(events = s.events, users = s.users, "retention sweep"),
            Ok(Err(e)) => tracing::error!(error = %e, "retention sweep failed"),
            _ => {}
        }
    }
}

/// Runs the server on `listener` until `shutdown` resolves, then drains: clients are told to
/// reconnect, every actor writes a snapshot, and sled is flushed.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let signal = shared.shutdown.clone();
    let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
    tokio::spawn(async move {
        shutdown.await;
        let _ = signal.send(true);
    });
    let sweeper = tokio::spawn(retention(shared.clone(), shared.shutdown.subscribe()));
    let c = &shared.config;
    let log: Arc<dyn crate::store::EventLog> = match &shared.cluster {
        Some(m) => m.log.clone(),
        None => Arc::new(shared.store.clone()),
    };
    let closer = Closer {
        store: shared.store.clone(),
        log,
        catalogues: shared.catalogues.clone(),
        boards: shared.boards.clone(),
        users: shared.users.clone(),
        metrics: shared.metrics.clone(),
        cluster: shared.cluster.clone(),
    };
    let closer = tokio::spawn(closer.run(Duration::from_millis(c.leaderboard_tick_ms.max(10)), c.leaderboard_close_grace_ms as crate::core::Millis, shared.shutdown.subscribe()));
    let community = match &shared.cluster {
        None => {
            let users = shared.users.clone();
            let tell = Box::new(move |tenant: &str| users.tell_tenant(tenant, || crate::user::UserMsg::CommunityClosed));
            let c = crate::community::Closer { community: shared.community.clone(), log: Arc::new(shared.store.clone()), catalogues: shared.catalogues.clone(), tell };
            Some(tokio::spawn(c.run(Duration::from_millis(shared.config.community_tick_ms.max(10)), shared.config.leaderboard_close_grace_ms as crate::core::Millis, shared.shutdown.subscribe())))
        }
        Some(_) => None,
    };
    let goals = tokio::spawn(crate::goals::run(shared.store.clone(), shared.users.clone(), shared.cluster.clone(), Duration::from_millis(c.goal_tick_ms.max(10)), shared.shutdown.subscribe()));
    let expiries = tokio::spawn(crate::expiries::run(shared.store.clone(), shared.users.clone(), shared.cluster.clone(), Duration::from_millis(c.expiry_tick_ms.max(10)), shared.shutdown.subscribe()));
    // A cluster node's endpoints are the cluster's, followed from its bucket (`ownership.rs`).
    let hooks = if shared.cluster.is_none() { shared.webhooks.start().await? } else { 0 };
    if hooks > 0 {
        tracing::info!(endpoints = hooks, "webhook endpoints started");
    }
    // Standalone, this process's jobs resume; in cluster mode every node walks the cluster's
    // jobs for the partitions it serves.
    let cluster_backfills = match &shared.cluster {
        None => {
            let resumed = shared.backfills.resume_all()?;
            if resumed > 0 {
                tracing::info!(jobs = resumed, "backfill jobs resumed");
            }
            None
        }
        Some(m) => {
            let m2 = m.clone();
            Some(tokio::spawn(shared.backfills.clone().run_cluster(m.jobs.clone(), Arc::new(move |p| m2.serves_partition(p)))))
        }
    };
    shared.ready.store(true, Ordering::Release);
    let body = crate::accept::BodyLimits { timeout: Duration::from_secs(c.body_timeout_secs.clamp(1, 86_400)), min_rate: c.min_body_bytes_per_sec };
    let limits = crate::accept::Limits { header_timeout: Duration::from_secs(c.header_timeout_secs.max(1)), total: c.max_connections, per_address: c.max_connections_per_address, full_wait: Duration::from_millis(c.accept_wait_ms), body };
    crate::accept::serve(listener, app(shared.clone()), limits, shared.metrics.clone(), shared.shutdown.subscribe(), grace).await;
    shared.ready.store(false, Ordering::Release);
    // A sweep in progress finishes (it runs on a blocking thread and holds the store).
    let _ = sweeper.await;
    let _ = closer.await;
    if let Some(c) = community {
        let _ = c.await;
    }
    let _ = goals.await;
    let _ = expiries.await;
    shared.webhooks.stop_all().await;
    // Backfill jobs store where they are; they need the actors, which stop next.
    let _ = tokio::time::timeout(grace, shared.backfills.stopped()).await;
    if let Some(walk) = cluster_backfills {
        let _ = tokio::time::timeout(grace, walk).await;
    }
    // Sessions were told to close; actors write their snapshots; then one last flush.
    let _ = tokio::time::timeout(grace, shared.users.stop_all()).await;
    // Then the partitions go to the other nodes at once, not after a lease.
    if let Some(m) = &shared.cluster {
        m.leave().await;
    }
    let _ = tokio::time::timeout(grace, shared.store.sync()).await;
    shared.store.flush_blocking()?;
    Ok(())
}
