//! The server as a function of (listener, config, shutdown): builds the shared parts, the axum
//! router (WebSocket, demo page, metrics), and runs until shutdown, then drains.

use crate::auth::{ApiKeys, Keys};
use crate::catalogues::Catalogues;
use crate::config::Config;
use crate::core::Catalogue;
use crate::store::Store;
use crate::user::Registry;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::metrics::Metrics;

/// What every part of the server shares. No globals: this is passed around as `Arc<Shared>`.
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    pub keys: Keys,
    pub registry: Arc<Registry>,
    pub supervisor: ractor::ActorCell,
    pub metrics: Metrics,
    pub shutdown: watch::Sender<bool>,
    pub demo: bool,
    pub api_keys: ApiKeys,
    pub catalogues: Catalogues,
    /// Set once the server accepts traffic; cleared when shutdown starts (`/readyz`).
    pub ready: AtomicBool,
    /// Room for HTTP-ingested events in flight: the HTTP path's backpressure (sockets have
    /// theirs per connection).
    pub ingest_permits: Arc<tokio::sync::Semaphore>,
    /// Socket events in flight across the server (`--socket-inflight-events`).
    pub socket_permits: Arc<tokio::sync::Semaphore>,
    /// The backfill jobs running in this process, by (tenant, id), to cancel them.
    pub jobs: dashmap::DashMap<(String, u64), tokio::task::AbortHandle>,
    /// Woken whenever a job leaves `jobs`, so the drain can wait for them.
    pub jobs_left: tokio::sync::Notify,
    /// The live rankings of open leaderboard periods, and their watchers.
    pub boards: crate::leaderboard::Boards,
    /// Each tenant's webhook endpoints and their delivery workers.
    pub webhooks: crate::webhooks::Webhooks,
}

impl Shared {
    /// The tenant's catalogue in force. Read once per message; a change swaps the whole `Arc`.
    /// Every caller has authenticated the tenant, and every configured tenant has a catalogue.
    pub fn catalogue(&self, tenant: &str) -> Option<Arc<Catalogue>> {
        self.catalogues.current(tenant)
    }
}

/// Builds the shared parts: opens the store, loads each tenant's catalogue, starts the
/// supervisor.
pub async fn build(config: Config) -> anyhow::Result<Arc<Shared>> {
    let demo = config.demo_enabled()?;
    let secrets = config.tenant_secrets()?;
    let keys = Keys::new(&secrets);
    let api_keys = ApiKeys::new(&config.api_keys()?);
    std::fs::create_dir_all(&config.data_dir).map_err(|e| anyhow::anyhow!("creating data dir {}: {e}", config.data_dir.display()))?;
    let store = Store::open(&config.data_dir).map_err(|e| anyhow::anyhow!("opening data dir {}: {e}", config.data_dir.display()))?;
    let tenants: Vec<String> = secrets.iter().map(|(t, _)| t.clone()).collect();
    let catalogues = Catalogues::open(store.clone(), config.catalogue.clone(), &tenants, crate::clock::now_ms()).await?;
    let boards = crate::leaderboard::Boards::default();
    // A blocking scan, run once before any traffic is served: the scores of open periods.
    let loaded = boards.load(&store).map_err(|e| anyhow::anyhow!("loading leaderboards: {e}"))?;
    if loaded > 0 {
        tracing::info!(scores = loaded, "leaderboards loaded");
    }
    let registry = Arc::new(Registry::default());
    let supervisor = crate::user::start_supervisor(registry.clone()).await?;
    let (shutdown, _) = watch::channel(false);
    let tick = (config.passivate_after() / 4).max(Duration::from_millis(250));
    tokio::spawn(crate::user::passivation_clock(registry.clone(), tick, shutdown.subscribe()));
    Ok(Arc::new(Shared {
        store,
        keys,
        registry,
        supervisor,
        metrics: Metrics::default(),
        shutdown,
        demo,
        api_keys,
        catalogues,
        ready: AtomicBool::new(false),
        ingest_permits: Arc::new(tokio::sync::Semaphore::new((config.ingest_inflight_events as usize).max(crate::api::MAX_BATCH))),
        socket_permits: Arc::new(tokio::sync::Semaphore::new((config.socket_inflight_events as usize).max(1))),
        jobs: dashmap::DashMap::new(),
        jobs_left: tokio::sync::Notify::new(),
        boards,
        webhooks: crate::webhooks::Webhooks::new(Duration::from_millis(config.webhook_timeout_ms.max(1)), config.webhook_ca_file.as_deref())?,
        config: Arc::new(config),
    }))
}

pub fn app(shared: Arc<Shared>) -> Router {
    let mut r = Router::new()
        .route("/v1/ws", get(ws))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::api::routes());
    if shared.demo {
        r = r.merge(crate::demo::routes());
    }
    r.fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no_route", "no such route; the API is described at /v1/openapi.json".into()) })
        .layer(axum::middleware::from_fn(request_id))
        .with_state(shared)
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

/// Liveness: the process answers, and its disk does too. A group commit or flush waiting
/// longer than `--stall-unhealthy-secs` makes it 503: such a server acknowledges nothing, and
/// restarting it loses nothing acknowledged (src/watchdog.rs). So does a write that failed (a
/// full disk), at once: the store then serves nothing until the process restarts from disk,
/// which it does by itself after `--write-failure-exit-secs`.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = String), (status = 503, description = "A write to the disk failed, or the disk has not answered for `--stall-unhealthy-secs`", body = String)))]
pub async fn healthz(State(s): State<Arc<Shared>>) -> (StatusCode, String) {
    let limits = crate::watchdog::Limits::from_secs(s.config.stall_unhealthy_secs, s.config.stall_exit_secs, Some(s.config.write_failure_exit_secs));
    let r = s.store.stats.disk.reading(std::time::Instant::now());
    if let Some(why) = s.store.failure() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("storage failed: {why}; nothing is served until the server restarts"));
    }
    match crate::watchdog::judge(r, limits) {
        crate::watchdog::Verdict::Healthy => (StatusCode::OK, "ok".into()),
        _ => {
            let (waited, what) = r.oldest.unwrap_or_default();
            (StatusCode::SERVICE_UNAVAILABLE, format!("stalled: a {what} has waited {} s for the disk", waited.as_secs()))
        }
    }
}

/// Readiness: storage open and not failed, catalogues loaded, accepting traffic, not shutting
/// down.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = String), (status = 503, description = "Starting, shutting down, or storage failed", body = String)))]
pub async fn readyz(State(s): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    if s.store.failure().is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "storage failed")
    } else if s.ready.load(Ordering::Acquire) && !*s.shutdown.borrow() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Prometheus metrics: connections, actors, events by outcome, latency histograms, persister
/// batches, dead letters, backfill progress.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics_doc() {}

async fn ws(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    // The application limit (`max_message_bytes`) answers with a `too_large` error and keeps
    // the connection; the protocol limit, four times larger, closes it (1009). Small buffers
    // keep ten thousand idle connections cheap: the read buffer is allocated whole for every
    // connection (heaptrack: it was 4 KiB of each connection's heap at 4 KiB) and tungstenite
    // zero-fills it before each read, while a client's event frame is about 250 bytes. A larger
    // frame still arrives whole: tungstenite reserves a frame's full length once its header is
    // read. Outgoing frames collect in the write buffer
    // until the session flushes, which it does once per batch of queued pushes: one send
    // system call per batch instead of one per frame (an event's ack and xp are two frames).
    let hard = shared.config.max_message_bytes.saturating_mul(4).max(1024);
    upgrade
        .max_message_size(hard)
        .max_frame_size(hard)
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .on_upgrade(move |socket| crate::session::run(socket, shared))
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let p = &s.store.stats;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let figures = crate::metrics::Sampled {
        batches: g(&p.batches),
        jobs: g(&p.jobs),
        writes: g(&p.writes),
        apply_seconds: g(&p.apply_micros_total) as f64 / 1e6,
        flush_seconds: g(&p.flush_micros_total) as f64 / 1e6,
        last_batch_jobs: g(&p.last_batch_jobs),
        disk_wait_seconds: p.disk.oldest(std::time::Instant::now()).map_or(0.0, |(w, _)| w.as_secs_f64()),
        socket_events_in_flight: (s.config.socket_inflight_events.max(1) as u64).saturating_sub(s.socket_permits.available_permits() as u64),
        storage_failed: s.store.failure().is_some(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render(&figures))
}

/// A JSON error body with a status, for every HTTP error a client can cause.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1, "message": self.2 }))).into_response()
    }
}

/// Runs `turn` every `every` until shutdown. A turn in progress is dropped when shutdown comes
/// (turns wait on actors and the disk, and the drain must not wait on them); a shutdown that
/// came before the first turn is seen at once.
pub async fn every<F, Fut>(every: Duration, mut stop: watch::Receiver<bool>, mut turn: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = turn() => {}
            _ = stop.changed() => return,
        }
    }
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
    let closer = tokio::spawn(crate::leaderboard::run(shared.clone(), shared.shutdown.subscribe()));
    let goals = tokio::spawn(crate::goals::run(shared.clone(), shared.shutdown.subscribe()));
    let hooks = crate::webhooks::Webhooks::start(&shared).await?;
    if hooks > 0 {
        tracing::info!(endpoints = hooks, "webhook endpoints started");
    }
    let resumed = crate::backfill::resume_all(&shared)?;
    if resumed > 0 {
        tracing::info!(jobs = resumed, "backfill jobs resumed");
    }
    shared.ready.store(true, Ordering::Release);
    let c = &shared.config;
    let limits = crate::accept::Limits { header_timeout: Duration::from_secs(c.header_timeout_secs.max(1)), total: c.max_connections, per_address: c.max_connections_per_address, full_wait: Duration::from_millis(c.accept_wait_ms) };
    crate::accept::serve(listener, app(shared.clone()), limits, shared.shutdown.subscribe(), grace).await;
    shared.ready.store(false, Ordering::Release);
    // A sweep in progress finishes (it runs on a blocking thread and holds the store).
    let _ = sweeper.await;
    let _ = closer.await;
    let _ = goals.await;
    shared.webhooks.stop_all().await;
    // Backfill jobs store where they are; they need the actors, which stop next.
    let _ = tokio::time::timeout(grace, crate::backfill::stopped(&shared)).await;
    // Sessions were told to close; actors write their snapshots; then one last flush.
    let _ = tokio::time::timeout(grace, shared.registry.stop_all()).await;
    let _ = tokio::time::timeout(grace, shared.store.sync()).await;
    shared.store.flush_blocking()?;
    Ok(())
}
