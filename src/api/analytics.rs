//! The analytics routes (`/v1/analytics/...`, docs/analytics.md): badge rarity, unlock funnels,
//! activity per day, time to unlock and health, each answered from the tenant's figures in
//! memory (never by reading users), and the export of the tenant's log as NDJSON or CSV,
//! streamed a page at a time.

use super::{bad, internal, not_found, ApiError, ErrorBody, Tenant};
use crate::analytics::export::{self, Layer};
use crate::analytics::figures::{self, date_of, day_of, ActivityDay, Figures, Quantile};
use crate::backfill::JobRecord;
use crate::clock::now_ms;
use crate::core::{Catalogue, Millis};
use crate::shared::Shared;
use crate::store::Kind;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// The longest range a query or an export's time range may cover, in days.
pub const MAX_DAYS: i32 = 366;
/// Days a query covers when it names no range: the 30 days ending today.
const DEFAULT_DAYS: i32 = 30;

/// A range of local days in the tenant's time zone.
#[derive(Deserialize, IntoParams)]
pub struct Range {
    /// The first local date, `YYYY-MM-DD` (default: 29 days before `to`).
    pub from: Option<String>,
    /// The last local date, inclusive (default: today in the tenant's time zone).
    pub to: Option<String>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    bad("invalid_query", message)
}

/// The tenant's catalogue in force (every tenant with a key has one).
fn catalogue(shared: &Shared, tenant: &str) -> Result<Arc<Catalogue>, ApiError> {
    shared.catalogue(tenant).ok_or_else(|| not_found("not_found", "the tenant has no catalogue"))
}

/// Today's local day number in the catalogue's zone.
fn today(cat: &Catalogue) -> i32 {
    crate::core::calendar::local_day(now_ms(), cat.settings.default_timezone).0
}

/// The range asked for as day numbers, checked: dates that parse, `from` not after `to`, at
/// most `MAX_DAYS` days.
fn days(r: &Range, cat: &Catalogue) -> Result<(i32, i32), ApiError> {
    let parse = |name: &str, v: &Option<String>| -> Result<Option<i32>, ApiError> {
        v.as_deref().map(|s| day_of(s).ok_or_else(|| invalid(format!("`{name}` must be a date as YYYY-MM-DD, not `{s}`")))).transpose()
    };
    let to = parse("to", &r.to)?.unwrap_or_else(|| today(cat));
    let from = parse("from", &r.from)?.unwrap_or(to - (DEFAULT_DAYS - 1));
    if from > to {
        return Err(invalid(format!("the range is inverted: `from` ({}) is after `to` ({})", date_of(from), date_of(to))));
    }
    if to - from + 1 > MAX_DAYS {
        return Err(invalid(format!("the range is {} days long; at most {MAX_DAYS} are allowed", to - from + 1)));
    }
    Ok((from, to))
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

// ---------------------------------------------------------------------------------------------
// Rarity
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct RarityDoc {
    /// Users with at least one event, all time.
    pub users: u64,
    pub from: String,
    pub to: String,
    /// Distinct users active in the period (estimated: docs/analytics.md).
    pub active_users: u64,
    /// Every badge of the catalogue in force, rarest first (by share of users, then id).
    pub badges: Vec<RarityRow>,
}

#[derive(Serialize, ToSchema)]
pub struct RarityRow {
    pub badge: String,
    pub name: String,
    pub tier: String,
    pub retired: bool,
    /// Users holding it, all time; of them, those a backfill gave it to.
    pub holders: u64,
    pub backfilled: u64,
    /// `holders` / `users`.
    pub share: f64,
    /// Users who first earned it in the period, and their share of the period's active users.
    pub period_holders: u64,
    pub period_share: f64,
}

/// Badge rarity
///
/// For every badge: how many users hold it and their share of the tenant's users, all time
/// and for a period of local days.
#[utoipa::path(get, path = "/v1/analytics/rarity", tag = "analytics", params(Range),
    responses((status = 200, body = RarityDoc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
pub async fn rarity(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(r): Query<Range>) -> Result<Json<RarityDoc>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    let (from, to) = days(&r, &cat)?;
    // What the answer reads is copied under the lock (the period's days, the badges), and
    // the unions computed after it.
    let part = shared.analytics.tenant(&tenant).read(|f| Figures { users: f.users, days: f.days_for(from, to), badges: f.badges.clone(), pairs: Default::default() });
    Ok(Json(rarity_doc(&part, &cat, from, to)))
}

/// The rarity answer from the figures (only `users`, the period's days and the badges are read).
pub fn rarity_doc(f: &Figures, cat: &Catalogue, from: i32, to: i32) -> RarityDoc {
    let active = f.active(from, to);
    let mut badges: Vec<RarityRow> = cat
        .badges
        .iter()
        .map(|b| {
            let fig = f.badges.get(&*b.id);
            let holders = fig.map_or(0, |x| x.holders);
            let period_holders = f.earned(&b.id, from, to);
            RarityRow {
                badge: b.id.to_string(),
                name: b.name.clone(),
                tier: b.tier.as_str().into(),
                retired: b.retired,
                holders,
                backfilled: fig.map_or(0, |x| x.backfilled),
                share: share(holders, f.users),
                period_holders,
                period_share: share(period_holders, active),
            }
        })
        .collect();
    badges.sort_by(|a, b| a.share.total_cmp(&b.share).then_with(|| a.badge.cmp(&b.badge)));
    RarityDoc { users: f.users, from: date_of(from), to: date_of(to), active_users: active, badges }
}

// ---------------------------------------------------------------------------------------------
// Activity
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct ActivityDoc {
    /// The tenant's time zone, which days are cut in.
    pub timezone: String,
    pub days: Vec<ActivityDay>,
}

/// Activity per day
///
/// Daily, weekly and monthly active users, events, unlocks and new users for each local day
/// of the range, in the tenant's time zone.
#[utoipa::path(get, path = "/v1/analytics/activity", tag = "analytics", params(Range),
    responses((status = 200, body = ActivityDoc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
pub async fn activity(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(r): Query<Range>) -> Result<Json<ActivityDoc>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    let (from, to) = days(&r, &cat)?;
    // The days are copied under the lock and the windows computed after it, so a query never
    // holds up the actors adding to the figures.
    let copied = shared.analytics.tenant(&tenant).read(|f| f.days_for(from - 29, to));
    let days = figures::activity(&copied, from, to);
    Ok(Json(ActivityDoc { timezone: cat.settings.default_timezone.name().into(), days }))
}

// ---------------------------------------------------------------------------------------------
// Funnels
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
pub struct FunnelQuery {
    /// The steps: badge ids, comma-separated, in order (2 to 20).
    pub badges: Option<String>,
    /// Or a ladder: every badge whose id starts with this prefix, in catalogue order.
    pub ladder: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FunnelDoc {
    pub steps: Vec<FunnelStep>,
}

#[derive(Serialize, ToSchema)]
pub struct FunnelStep {
    pub badge: String,
    pub name: String,
    /// Step 1: the badge's holders. Step k: users holding this badge and the one before.
    pub users: u64,
    /// `users` / the previous step's `users` (1 for the first step).
    pub conversion: f64,
    /// The bucket of the median time from the previous step's badge to this one, for users
    /// who earned them in that order (null for the first step, or when nobody did).
    pub median_from_previous: Option<Quantile>,
}

/// Unlock funnel
///
/// For a list of badges or a ladder, how many users reached each step and the median time
/// between steps.
#[utoipa::path(get, path = "/v1/analytics/funnel", tag = "analytics", params(FunnelQuery),
    responses((status = 200, body = FunnelDoc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn funnel(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(q): Query<FunnelQuery>) -> Result<Json<FunnelDoc>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    let ids: Vec<String> = match (&q.badges, &q.ladder) {
        (Some(list), None) => list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        (None, Some(prefix)) if !prefix.is_empty() => cat.badges.iter().filter(|b| b.id.starts_with(prefix.as_str())).map(|b| b.id.to_string()).collect(),
        _ => return Err(invalid("give the steps as `badges` (ids, comma-separated) or `ladder` (an id prefix), not both")),
    };
    if !(2..=20).contains(&ids.len()) {
        return Err(invalid(format!("a funnel has 2 to 20 steps; this one has {}", ids.len())));
    }
    for id in &ids {
        if cat.badge(id).is_none() {
            return Err(not_found("unknown_badge", format!("no badge `{id}` in the catalogue in force")));
        }
    }
    let steps = shared.analytics.tenant(&tenant).read(|f| funnel_steps(f, &cat, &ids));
    Ok(Json(FunnelDoc { steps }))
}

/// A funnel's steps from the figures (`ids` are badges of `cat`): a few map reads per step.
pub fn funnel_steps(f: &Figures, cat: &Catalogue, ids: &[String]) -> Vec<FunnelStep> {
    let mut out: Vec<FunnelStep> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let name = cat.badge(id).map(|b| b.name.clone()).unwrap_or_default();
        let (users, median) = if i == 0 {
            (f.badges.get(id.as_str()).map_or(0, |b| b.holders), None)
        } else {
            let prev = &ids[i - 1];
            (f.both(prev, id), f.between(prev, id).and_then(|h| h.quantile(0.5)))
        };
        let conversion = out.last().map_or(1.0, |p| share(users, p.users));
        out.push(FunnelStep { badge: id.clone(), name, users, conversion, median_from_previous: median });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Time to unlock
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
pub struct UnlockTimeQuery {
    /// One badge, with its whole distribution; absent: every badge's median and 90th percentile.
    pub badge: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UnlockTimes {
    pub badges: Vec<UnlockTime>,
}

#[derive(Serialize, ToSchema)]
pub struct UnlockTime {
    pub badge: String,
    /// Holders whose first event is known (every holder who had a client event).
    pub count: u64,
    pub median: Option<Quantile>,
    pub p90: Option<Quantile>,
    /// The distribution, one bucket per row (only when one badge is asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<Bucket>>,
}

#[derive(Serialize, ToSchema)]
pub struct Bucket {
    pub low_ms: u64,
    pub high_ms: u64,
    pub count: u64,
}

/// Time to unlock
///
/// The distribution of the time from a user's first event to each badge.
#[utoipa::path(get, path = "/v1/analytics/time-to-unlock", tag = "analytics", params(UnlockTimeQuery),
    responses((status = 200, body = UnlockTimes), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn time_to_unlock(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(q): Query<UnlockTimeQuery>) -> Result<Json<UnlockTimes>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    if let Some(id) = &q.badge
        && cat.badge(id).is_none()
    {
        return Err(not_found("unknown_badge", format!("no badge `{id}` in the catalogue in force")));
    }
    let badges = shared.analytics.tenant(&tenant).read(|f| unlock_times(f, &cat, q.badge.as_deref()));
    Ok(Json(UnlockTimes { badges }))
}

/// Time to unlock from the figures: one badge with its buckets, or every badge's summary.
pub fn unlock_times(f: &Figures, cat: &Catalogue, badge: Option<&str>) -> Vec<UnlockTime> {
    let one = |id: &str, whole: bool| {
        let h = f.badges.get(id).map(|b| &b.time_to_unlock);
        UnlockTime {
            badge: id.to_string(),
            count: h.map_or(0, |h| h.count()),
            median: h.and_then(|h| h.quantile(0.5)),
            p90: h.and_then(|h| h.quantile(0.9)),
            buckets: whole.then(|| h.map(|h| h.rows()).unwrap_or_default().into_iter().map(|(low_ms, high_ms, count)| Bucket { low_ms, high_ms, count }).collect()),
        }
    };
    match badge {
        Some(id) => vec![one(id, true)],
        None => cat.badges.iter().map(|b| one(&b.id, false)).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct HealthDoc {
    /// Events accepted in each of the last 15 minutes, oldest first, the minute in progress last.
    pub events_per_minute: Vec<u64>,
    /// Since this process started: events accepted, duplicates, and their share of both.
    pub accepted: u64,
    pub duplicates: u64,
    pub duplicate_rate: f64,
    /// Events refused since start, by error code.
    pub rejected: BTreeMap<String, u64>,
    /// Dead letters kept now (counted up to 10,000).
    pub dead_letters: u64,
    /// From an event's arrival to its pushes leaving the actor: the buckets (ms) of the median
    /// and the 99th percentile.
    pub unlock_latency_ms: LatencyDoc,
    pub catalogue_version: u64,
    /// The tenant's backfill jobs, newest first (at most 10).
    pub backfill_jobs: Vec<JobRecord>,
}

#[derive(Serialize, ToSchema)]
pub struct LatencyDoc {
    pub p50: Option<[f64; 2]>,
    pub p99: Option<[f64; 2]>,
}

/// Health
///
/// Events per minute, duplicates, refusals by code, dead letters, event-to-push latency, the
/// catalogue version in force and the backfill jobs.
#[utoipa::path(get, path = "/v1/analytics/health", tag = "analytics",
    responses((status = 200, body = HealthDoc), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
pub async fn health(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant) -> Result<Json<HealthDoc>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    let t = shared.analytics.tenant(&tenant);
    let h = &t.health;
    let accepted = h.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let duplicates = h.duplicates.load(std::sync::atomic::Ordering::Relaxed);
    let store = shared.store.clone();
    let tn = tenant.clone();
    // Two small prefix reads, off the async workers like every store read.
    let (dead, jobs) = tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
        let dead = store.list::<super::events::DeadLetter>(Kind::DeadLetter, &tn, None, 10_000)?.len() as u64;
        let mut jobs: Vec<JobRecord> = store.list::<JobRecord>(Kind::Job, &tn, None, usize::MAX)?.into_iter().map(|(_, j)| j).collect();
        jobs.reverse();
        jobs.truncate(10);
        Ok((dead, jobs))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let q = |x: f64| h.latency_quantile(x).map(|(a, b)| [a, b]);
    Ok(Json(HealthDoc {
        events_per_minute: h.per_minute(now_ms(), 14),
        accepted,
        duplicates,
        duplicate_rate: share(duplicates, accepted + duplicates),
        rejected: h.rejected_by_code(),
        dead_letters: dead,
        unlock_latency_ms: LatencyDoc { p50: q(0.5), p99: q(0.99) },
        catalogue_version: cat.version,
        backfill_jobs: jobs,
    }))
}

// ---------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
pub struct ExportQuery {
    /// `events` (the records as received), `outcomes` (each record's evaluation) or `unlocks`.
    pub layer: Option<String>,
    /// `ndjson` (default) or `csv`.
    pub format: Option<String>,
    /// Records received at or after this instant (RFC 3339).
    pub from: Option<String>,
    /// Records received before this instant (RFC 3339); at most 366 days after `from`.
    pub to: Option<String>,
    /// Resume after the row that carried this cursor.
    pub cursor: Option<String>,
    /// Stop after this many log records (default: to the end).
    pub limit: Option<usize>,
}

/// Log records read per page: a page is all an export holds in memory.
const PAGE: usize = 500;

/// Export the log
///
/// Streams the tenant's events, evaluation outcomes or unlocks as NDJSON or CSV, in log order
/// (user, then sequence number). Every row carries the cursor that resumes after it.
#[utoipa::path(get, path = "/v1/analytics/export", tag = "analytics", params(ExportQuery),
    responses((status = 200, description = "NDJSON (`application/x-ndjson`) or CSV (`text/csv`) rows", content_type = "application/x-ndjson"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
pub async fn export(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(q): Query<ExportQuery>) -> Result<Response, ApiError> {
    let layer = match q.layer.as_deref() {
        None => Layer::Events,
        Some(l) => Layer::parse(l).ok_or_else(|| invalid(format!("`layer` is `events`, `outcomes` or `unlocks`, not `{l}`")))?,
    };
    let csv = match q.format.as_deref() {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(f) => return Err(invalid(format!("`format` is `ndjson` or `csv`, not `{f}`"))),
    };
    let instant = |name: &str, v: &Option<String>| -> Result<Option<Millis>, ApiError> {
        v.as_deref()
            .map(|s| chrono::DateTime::parse_from_rfc3339(s).map(|d| d.timestamp_millis()).map_err(|_| invalid(format!("`{name}` must be an RFC 3339 instant, not `{s}`"))))
            .transpose()
    };
    let (from, to) = (instant("from", &q.from)?, instant("to", &q.to)?);
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(invalid("the range is inverted: `from` is after `to`"));
        }
        if t - f > Millis::from(MAX_DAYS) * 86_400_000 {
            return Err(invalid(format!("the range is longer than {MAX_DAYS} days")));
        }
    }
    let after = match q.cursor.as_deref() {
        None => None,
        // A cursor names a key of this tenant only: another tenant's is refused like garbage.
        Some(c) => Some(export::key_of(c).filter(|(k, _)| k.starts_with(format!("{tenant}\0").as_bytes())).ok_or_else(|| invalid("`cursor` is not a cursor this export gave"))?),
    };
    let limit = q.limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Err(invalid("`limit` must be at least 1"));
    }
    // Two pages in flight at most: a reader slower than the disk holds the export's reading,
    // not the server's memory. Each page is read on the blocking pool, away from the workers
    // that serve live traffic, and no store iterator is held between pages.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let store = shared.store.clone();
    tokio::spawn(async move {
        if csv && tx.send(Bytes::from(export::csv_header(layer))).await.is_err() {
            return;
        }
        // The cursor's own record is read again, its rows up to the cursor's skipped.
        let (mut at, mut skip) = match after {
            Some((k, row)) => (Some(k), Some(row)),
            None => (None, None),
        };
        let mut left = limit;
        while left > 0 {
            let (s, t, a, inclusive) = (store.clone(), tenant.clone(), at.clone(), skip.is_some());
            let want = PAGE.min(left);
            let page = match tokio::task::spawn_blocking(move || s.tenant_events_page(&t, a.as_deref(), inclusive, want)).await {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "export stopped: reading the log failed");
                    return;
                }
                Err(_) => return,
            };
            let done = page.len() < want;
            let mut chunk = String::new();
            for (i, (key, user, seq, e)) in page.iter().enumerate() {
                if !export::in_range(e.received_at, from, to) {
                    continue;
                }
                // The cursor's record: only its rows after the cursor's.
                let first = match skip {
                    Some(row) if i == 0 && at.as_deref() == Some(key.as_slice()) => row + 1,
                    _ => 0,
                };
                for row in export::rows(layer, key, user, *seq, e).iter().skip(first) {
                    chunk.push_str(&if csv { export::csv(layer, row) } else { export::ndjson(row) });
                }
            }
            left = left.saturating_sub(page.len());
            at = page.last().map(|(k, ..)| k.clone()).or(at);
            skip = None;
            if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                return; // the client went away
            }
            if done {
                return;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx)) });
    let mime = if csv { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    Ok(([(header::CONTENT_TYPE, mime)], Body::from_stream(body)).into_response())
}
