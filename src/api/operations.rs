//! The operations routes: liveness (`/healthz`), readiness (`/readyz`) and Prometheus
//! metrics (`/metrics`), for supervisors and scrapers rather than apps.

use crate::shared::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// Prometheus metrics, as OpenMetrics text: connections, actors, events by outcome, latency
/// histograms, persister batches, dead letters, backfill progress.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "OpenMetrics text format", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
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
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], s.metrics.render(&figures))
}
