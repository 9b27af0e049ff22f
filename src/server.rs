//! The server as a function of (listener, config, shutdown): builds the shared parts, the axum
//! router (WebSocket, demo page, metrics), and runs until shutdown, then drains.

use crate::auth::Keys;
use crate::config::Config;
use crate::core::{Catalogue, Format};
use crate::store::Store;
use crate::user::Registry;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Counters shown at `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub actors: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub rate_limited: AtomicU64,
    pub unlocks: AtomicU64,
    pub pushes: AtomicU64,
    pub slow_closed: AtomicU64,
    pub passivated: AtomicU64,
}

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
    catalogue: RwLock<Arc<Catalogue>>,
}

impl Shared {
    /// The catalogue in force. Read once per message; a change swaps the whole `Arc`.
    pub fn catalogue(&self) -> Arc<Catalogue> {
        self.catalogue.read().expect("catalogue lock poisoned").clone()
    }
}

/// Loads the configured catalogue, or the embedded demo one.
pub fn load_catalogue(cfg: &Config) -> anyhow::Result<Catalogue> {
    match &cfg.catalogue {
        None => Ok(Catalogue::demo()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading catalogue {}: {e}", path.display()))?;
            let format = if path.extension().is_some_and(|e| e == "json") { Format::Json } else { Format::Toml };
            Catalogue::parse(&text, format).map_err(|e| anyhow::anyhow!("catalogue {}: {e}", path.display()))
        }
    }
}

/// Builds the shared parts: opens the store, loads the catalogue, starts the supervisor.
pub async fn build(config: Config) -> anyhow::Result<Arc<Shared>> {
    let demo = config.demo_enabled()?;
    let keys = Keys::new(&config.tenant_secrets()?);
    let catalogue = load_catalogue(&config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| anyhow::anyhow!("creating data dir {}: {e}", config.data_dir.display()))?;
    let store = Store::open(&config.data_dir).map_err(|e| anyhow::anyhow!("opening data dir {}: {e}", config.data_dir.display()))?;
    let registry = Arc::new(Registry::default());
    let supervisor = crate::user::start_supervisor(registry.clone()).await?;
    let (shutdown, _) = watch::channel(false);
    Ok(Arc::new(Shared {
        config: Arc::new(config),
        store,
        keys,
        registry,
        supervisor,
        metrics: Metrics::default(),
        shutdown,
        demo,
        catalogue: RwLock::new(Arc::new(catalogue)),
    }))
}

pub fn app(shared: Arc<Shared>) -> Router {
    let mut r = Router::new().route("/v1/ws", get(ws)).route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok" }));
    if shared.demo {
        r = r.merge(crate::demo::routes());
    }
    r.with_state(shared)
}

async fn ws(State(shared): State<Arc<Shared>>, upgrade: WebSocketUpgrade) -> Response {
    // The application limit (`max_message_bytes`) answers with a `too_large` error and keeps
    // the connection; the protocol limit, four times larger, closes it (1009). Small buffers
    // keep ten thousand idle connections cheap.
    let hard = shared.config.max_message_bytes.saturating_mul(4).max(1024);
    upgrade
        .max_message_size(hard)
        .max_frame_size(hard)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .on_upgrade(move |socket| crate::session::run(socket, shared))
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let m = &s.metrics;
    let p = &s.store.stats;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let body = format!(
        "# TYPE accolade_connections gauge\naccolade_connections {}\n\
         # TYPE accolade_actors_active gauge\naccolade_actors_active {}\n\
         # TYPE accolade_events_total counter\naccolade_events_total{{outcome=\"accepted\"}} {}\naccolade_events_total{{outcome=\"duplicate\"}} {}\naccolade_events_total{{outcome=\"rejected\"}} {}\naccolade_events_total{{outcome=\"rate_limited\"}} {}\n\
         # TYPE accolade_unlocks_total counter\naccolade_unlocks_total {}\n\
         # TYPE accolade_pushes_total counter\naccolade_pushes_total {}\n\
         # TYPE accolade_slow_closed_total counter\naccolade_slow_closed_total {}\n\
         # TYPE accolade_passivated_total counter\naccolade_passivated_total {}\n\
         # TYPE accolade_persist_batches_total counter\naccolade_persist_batches_total {}\n\
         # TYPE accolade_persist_jobs_total counter\naccolade_persist_jobs_total {}\n\
         # TYPE accolade_persist_writes_total counter\naccolade_persist_writes_total {}\n\
         # TYPE accolade_persist_apply_seconds_total counter\naccolade_persist_apply_seconds_total {}\n\
         # TYPE accolade_persist_flush_seconds_total counter\naccolade_persist_flush_seconds_total {}\n\
         # TYPE accolade_persist_last_batch_jobs gauge\naccolade_persist_last_batch_jobs {}\n",
        g(&m.connections),
        g(&m.actors),
        g(&m.accepted),
        g(&m.duplicates),
        g(&m.rejected),
        g(&m.rate_limited),
        g(&m.unlocks),
        g(&m.pushes),
        g(&m.slow_closed),
        g(&m.passivated),
        g(&p.batches),
        g(&p.jobs),
        g(&p.writes),
        g(&p.apply_micros_total) as f64 / 1e6,
        g(&p.flush_micros_total) as f64 / 1e6,
        g(&p.last_batch_jobs),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// A JSON error body with a status, for every HTTP error a client can cause.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1, "message": self.2 }))).into_response()
    }
}

/// Sweeps events older than the retention, now and then, on a blocking thread.
async fn retention(shared: Arc<Shared>) {
    let hours = shared.config.event_retention_hours;
    if hours == 0 {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_secs(shared.config.retention_sweep_secs.max(1)));
    loop {
        every.tick().await;
        let store = shared.store.clone();
        let cutoff = crate::user::now_ms() - (hours * 3_600_000) as i64;
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
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // Pushes are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
    });
    let signal = shared.shutdown.clone();
    let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
    let stop = async move {
        shutdown.await;
        let _ = signal.send(true);
    };
    let sweeper = tokio::spawn(retention(shared.clone()));
    axum::serve(listener, app(shared.clone())).with_graceful_shutdown(stop).await?;
    sweeper.abort();
    // Sessions were told to close; actors write their snapshots; then one last flush.
    let _ = tokio::time::timeout(grace, shared.registry.stop_all()).await;
    let _ = tokio::time::timeout(grace, shared.store.sync()).await;
    shared.store.flush_blocking()?;
    Ok(())
}
