//! The HTTP API for the app's backend, next to the socket on the same port: ingest, dead
//! letters, catalogue changes (preview, backfill jobs), user queries, leaderboards
//! (`leaderboards.rs`), assigned goals (`goals.rs`). Every route takes the
//! tenant from its API key (`Authorization: Bearer <key>`), so a key can only ever name its own
//! tenant's users, versions, jobs and dead letters. The OpenAPI document at
//! `/v1/openapi.json` is generated from the handlers and types below.

use crate::backfill::{self, JobRecord, PreviewReport};
use crate::catalogues::{Change, ChangeError, StoredCatalogue};
use crate::core::{CatalogueError, Event, Millis};
use crate::protocol::{self, rfc3339};
use crate::shared::Shared;
use crate::store::{self, Kind};
use crate::clock::now_ms;
use crate::user::{IngestOutcome, Origin, UserMsg, UserView};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json_};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// Events one `POST /v1/events` may carry.
pub const MAX_BATCH: usize = 1000;

mod goals;
mod leaderboards;
mod operations;
mod webhooks;

pub use operations::{healthz, metrics, readyz};
/// The largest request body, in bytes (a full batch of ordinary events fits many times over).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/events", post(ingest))
        .route("/v1/dead-letters", get(list_dead_letters))
        .route("/v1/dead-letters/{id}", get(get_dead_letter).delete(delete_dead_letter))
        .route("/v1/dead-letters/{id}/retry", post(retry_dead_letter))
        .route("/v1/catalogue", get(get_catalogue).put(replace_catalogue))
        .route("/v1/catalogue/versions", get(catalogue_versions))
        .route("/v1/catalogue/badges/{id}", put(put_badge).delete(retire_badge))
        .route("/v1/catalogue/xp/{id}", put(put_xp).delete(remove_xp))
        .route("/v1/catalogue/preview", post(preview))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/v1/users/{id}", get(get_user))
        .route("/v1/users/{id}/progress", get(get_progress))
        .route("/v1/users/{id}/badges/{badge}", get(get_badge))
        .route("/v1/users/{id}/events", get(get_events))
        .route("/v1/leaderboards", get(leaderboards::list))
        .route("/v1/leaderboards/{id}", get(leaderboards::standings))
        .route("/v1/leaderboards/{id}/users/{user}", get(leaderboards::user_rank))
        .route("/v1/leaderboards/{id}/standings", post(leaderboards::friends))
        .route("/v1/leaderboards/{id}/periods", get(leaderboards::periods))
        .route("/v1/goals", get(goals::list).post(goals::create))
        .route("/v1/goals/{id}", get(goals::get).delete(goals::cancel))
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/v1/webhooks/{id}", get(webhooks::get).delete(webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/deliveries/{delivery}/retry", post(webhooks::retry))
        .route("/v1/openapi.json", get(openapi))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

// ---------------------------------------------------------------------------------------------
// Authentication and errors
// ---------------------------------------------------------------------------------------------

/// A JSON error body with a status, for every HTTP error a client can cause.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1, "message": self.2 }))).into_response()
    }
}


/// The tenant an API key belongs to.
pub struct Tenant(pub String);

impl FromRequestParts<Arc<Shared>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Tenant, ApiError> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|h| h.to_str().ok());
        let key = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
        match key.and_then(|k| shared.api_keys.tenant_of(k)) {
            Some(t) => Ok(Tenant(t.to_string())),
            None if key.is_none() => Err(ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "send the tenant's API key as `Authorization: Bearer <key>`".into())),
            None => Err(ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "the API key is not valid".into())),
        }
    }
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code to branch on (`unauthorized`, `invalid_body`, `invalid_catalogue`, ...).
    pub error: String,
    /// A sentence for a human.
    pub message: String,
    /// For `invalid_catalogue`: the badge, if the error is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub badge: Option<String>,
    /// For `invalid_catalogue`: the field, as a path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, code, message.into())
}

fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, code, message.into())
}

fn internal<E: std::fmt::Display + 'static>(e: E) -> ApiError {
    // A store that has failed closed is the server's state, not this request's fault: every
    // route that reads or writes it answers 503 `storage_failed`, and the client retries once
    // the server has restarted.
    if let Some(crate::store::StoreError::Failed(_)) = (&e as &dyn std::any::Any).downcast_ref::<crate::store::StoreError>() {
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, "storage_failed", e.to_string());
    }
    tracing::error!(error = %e, "request failed");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// A catalogue validation error, with the badge and field it names.
struct InvalidCatalogue(CatalogueError);

impl IntoResponse for InvalidCatalogue {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = ErrorBody { error: "invalid_catalogue".into(), message: e.to_string(), badge: e.badge.clone(), field: Some(e.field.clone()) };
        (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
    }
}

fn change_error(e: ChangeError) -> Response {
    match e {
        ChangeError::Invalid(e) => InvalidCatalogue(e).into_response(),
        ChangeError::NotFound(m) => not_found("not_found", m).into_response(),
        ChangeError::BadRequest(m) => bad("invalid_body", m).into_response(),
        ChangeError::Store(e) => internal(e).into_response(),
    }
}

/// Reads a JSON body, answering a clear error (with the path of a bad field) when it is not.
fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    json_bytes(&body_bytes(body)?)
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the body is over the limit of {MAX_BODY} bytes")),
        other => bad("invalid_body", other.body_text()),
    })
}

fn json_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { String::new() } else { format!(" at `{path}`") };
        bad("invalid_body", format!("the body is not valid{at}: {}", e.into_inner()))
    })
}

// ---------------------------------------------------------------------------------------------
// Ingest and dead letters
// ---------------------------------------------------------------------------------------------

/// A batch of events from the app's backend.
#[derive(Deserialize, ToSchema)]
pub struct IngestRequest {
    /// Up to 1,000 events in the event contract: `event_id`, `event_type`, `user_id`,
    /// `occurred_at` (RFC 3339), optional `source`, `payload` and `tenant_id` (which, if given,
    /// must be the key's tenant).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Json_>,
}

/// What happened to one event.
#[derive(Serialize, ToSchema)]
pub struct EventResult {
    pub event_id: Option<String>,
    /// `accepted`, `duplicate` or `rejected`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// XP the event earned (badges included).
    pub xp: u64,
    /// Badges it unlocked.
    pub unlocks: Vec<String>,
    /// Where a rejected event was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct IngestResponse {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// One result per event, in the order sent.
    pub results: Vec<EventResult>,
}

/// A refused ingested event, kept with its reason and the raw body so it can be fixed and
/// re-submitted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub id: u64,
    pub received_at: String,
    pub code: String,
    pub reason: String,
    pub user_id: Option<String>,
    pub event_id: Option<String>,
    /// The event exactly as it was sent.
    pub raw: String,
    /// How many times it was re-submitted.
    pub retries: u32,
}

impl From<IngestOutcome> for EventResult {
    fn from(o: IngestOutcome) -> Self {
        EventResult { event_id: Some(o.event_id), status: o.status.into(), code: o.code.map(Into::into), reason: o.reason, xp: o.xp, unlocks: o.unlocks, dead_letter: None }
    }
}

/// Turns one element of a batch into an event of `tenant`, or says why it cannot be one.
fn decode(tenant: &str, raw: &Json_, received_at: Millis) -> Result<Event, (Option<String>, Option<String>, &'static str, String)> {
    let Some(obj) = raw.as_object() else { return Err((None, None, "invalid_event", "an event must be a JSON object".into())) };
    let str_of = |k: &str| obj.get(k).and_then(Json_::as_str).map(str::to_string);
    let (event_id, user) = (str_of("event_id"), str_of("user_id"));
    let fail = |code, m: String| Err((event_id.clone(), user.clone(), code, m));
    let ev = match protocol::decode_event(obj) {
        Ok(ev) => ev,
        Err(e) => return fail("invalid_event", e.to_string()),
    };
    let Some(user_id) = user.clone() else { return fail("invalid_event", "missing string field `user_id`".into()) };
    if user_id.is_empty() || user_id.len() > 128 || user_id.contains('\0') {
        return fail("invalid_event", "user_id must be 1 to 128 bytes with no NUL".into());
    }
    if let Some(t) = obj.get("tenant_id")
        && t.as_str() != Some(tenant)
    {
        return fail("wrong_tenant", "tenant_id names another tenant than the API key's".into());
    }
    let source = str_of("source").unwrap_or_else(|| "api".into());
    let _ = received_at;
    Ok(Event { event_id: ev.event_id, event_type: ev.event_type, user_id, tenant_id: tenant.to_string(), occurred_at: ev.occurred_at, source, payload: ev.payload })
}

/// Sends one event through the user's actor (the same path as socket events) and waits for
/// its outcome, which comes once the event is durable.
async fn submit(shared: &Arc<Shared>, tenant: &str, event: Event) -> tokio::sync::oneshot::Receiver<IngestOutcome> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let user = event.user_id.clone();
    let msg = UserMsg::Event { event, received_at: now_ms(), arrived: tokio::time::Instant::now(), origin: Origin::Http(tx), permit: None };
    if let Err(e) = shared.users.send(tenant, &user, msg) {
        tracing::warn!(error = %e, "ingest could not reach the user's actor");
    }
    rx
}

async fn dead_letter(shared: &Arc<Shared>, tenant: &str, code: &str, reason: &str, raw: String, event_id: Option<String>, user_id: Option<String>) -> Result<u64, ApiError> {
    let id = shared.store.next_id().map_err(internal)?;
    let d = DeadLetter { id, received_at: rfc3339(now_ms()), code: code.into(), reason: reason.into(), user_id, event_id, raw, retries: 0 };
    shared.store.write(vec![store::writes::put(Kind::DeadLetter, tenant, id, &d)]).await.map_err(internal)?;
    shared.metrics.dead_letters.fetch_add(1, Ordering::Relaxed);
    tracing::info!(tenant, dead_letter = id, code, "event kept as a dead letter");
    Ok(id)
}

/// Ingest a batch of events
///
/// Each event goes through its user's actor exactly like a socket event: idempotent by
/// `event_id`, server-only event types allowed, pushes sent to the user's open sockets at once.
/// The response comes when every accepted event is durable. Refused events are kept as dead
/// letters.
#[utoipa::path(post, path = "/v1/events", tag = "ingest", request_body = IngestRequest,
    responses(
        (status = 200, description = "Per-event results", body = IngestResponse),
        (status = 400, description = "The body is not a batch of events", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "More than 1,000 events or over the body limit", body = ErrorBody),
        (status = 503, description = "Too many events in flight (`overloaded`): retry the batch", body = ErrorBody)),
    security(("api_key" = [])))]
async fn ingest(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, body: Result<Bytes, BytesRejection>) -> Result<Json<IngestResponse>, ApiError> {
    let bytes = body_bytes(body)?;
    let req: IngestRequest = match json_bytes(&bytes) {
        Ok(r) => r,
        Err(e) => {
            // A body that is not a batch is kept too, so nothing sent is lost.
            dead_letter(&shared, &tenant, "invalid_body", &e.2, String::from_utf8_lossy(&bytes).into_owned(), None, None).await?;
            return Err(e);
        }
    };
    if req.events.len() > MAX_BATCH {
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, "too_many_events", format!("{} events; a batch holds at most {MAX_BATCH}", req.events.len())));
    }
    // A store that has failed takes nothing: the whole batch is refused, to be sent again.
    if let Some(why) = shared.store.failure() {
        return Err(internal(crate::store::StoreError::Failed(why.to_string())));
    }
    // Backpressure: the batch waits for room among the events in flight, then is refused with
    // a retry hint, so a flood of batches cannot pile up without bound in the actors' mailboxes.
    let wait = std::time::Duration::from_millis(shared.config.ingest_wait_ms);
    let _room = match tokio::time::timeout(wait, shared.ingest_permits.clone().acquire_many_owned(req.events.len().max(1) as u32)).await {
        Ok(Ok(permit)) => permit,
        _ => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("more than {} events are in flight; retry this batch in a moment", shared.config.ingest_inflight_events),
            ));
        }
    };
    shared.metrics.http_events.fetch_add(req.events.len() as u64, Ordering::Relaxed);
    let now = now_ms();
    // Everything is sent first (events of one user keep their order in its mailbox), then the
    // outcomes are collected, so a batch costs about one group commit, not one per event.
    let mut waits = Vec::with_capacity(req.events.len());
    for raw in &req.events {
        waits.push(match decode(&tenant, raw, now) {
            Ok(ev) => Ok((submit(&shared, &tenant, ev).await, raw)),
            Err(e) => Err((e, raw)),
        });
    }
    let mut results = Vec::with_capacity(waits.len());
    for w in waits {
        let r = match w {
            Ok((rx, raw)) => match rx.await {
                // Refused because the store failed: the event is fine, so it is no dead letter.
                Ok(o) if o.status == "rejected" && o.code != Some("unavailable") => {
                    let mut r = EventResult::from(o.clone());
                    let (code, reason) = (o.code.unwrap_or("invalid_event"), o.reason.unwrap_or_default());
                    let user = raw.get("user_id").and_then(Json_::as_str).map(str::to_string);
                    r.dead_letter = Some(dead_letter(&shared, &tenant, code, &reason, raw.to_string(), Some(o.event_id), user).await?);
                    r
                }
                Ok(o) => EventResult::from(o),
                Err(_) => {
                    // Not kept as a dead letter: the event is fine, the server could not take it
                    // now (storage failing, say); the sender retries.
                    let user = raw.get("user_id").and_then(Json_::as_str).unwrap_or_default();
                    let why = why_down(&shared, &tenant, user).await;
                    // A store that failed is, for one event, the same advice as any pause:
                    // `unavailable`, send it again (here, once the server has restarted).
                    let code = if why.1 == "storage_failed" { "unavailable" } else { why.1 };
                    // Dropped unread from the mailbox of an actor that failed with the store:
                    // refused because of the store, and counted nowhere else.
                    if why.1 == "storage_failed" {
                        shared.metrics.storage_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    EventResult {
                        event_id: raw.get("event_id").and_then(Json_::as_str).map(str::to_string),
                        status: "rejected".into(),
                        code: Some(code.into()),
                        reason: Some(match why.1 {
                            "unavailable" => "the event could not be made durable; send it again".into(),
                            "storage_failed" => format!("{}; send it again", why.2),
                            _ => why.2,
                        }),
                        xp: 0,
                        unlocks: vec![],
                        dead_letter: None,
                    }
                }
            },
            Err(((event_id, user_id, code, reason), raw)) => {
                let id = dead_letter(&shared, &tenant, code, &reason, raw.to_string(), event_id.clone(), user_id).await?;
                EventResult { event_id, status: "rejected".into(), code: Some(code.into()), reason: Some(reason), xp: 0, unlocks: vec![], dead_letter: Some(id) }
            }
        };
        results.push(r);
    }
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    Ok(Json(IngestResponse { accepted: count("accepted"), duplicates: count("duplicate"), rejected: count("rejected"), results }))
}

#[derive(Deserialize, IntoParams)]
pub struct Page {
    /// Return items after this id (or sequence number); absent starts at the beginning.
    pub after: Option<u64>,
    /// At most this many items (default 100, at most 1,000).
    pub limit: Option<usize>,
}

impl Page {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent at the end.
    pub next_after: Option<u64>,
}

/// List dead letters
#[utoipa::path(get, path = "/v1/dead-letters", tag = "ingest", params(Page),
    responses((status = 200, body = DeadLetterList), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
async fn list_dead_letters(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(page): Query<Page>) -> Result<Json<DeadLetterList>, ApiError> {
    let items = shared.store.list::<DeadLetter>(Kind::DeadLetter, &tenant, page.after, page.limit()).map_err(internal)?;
    let next_after = (items.len() == page.limit()).then(|| items.last().map(|(id, _)| *id)).flatten();
    Ok(Json(DeadLetterList { dead_letters: items.into_iter().map(|(_, d)| d).collect(), next_after }))
}

fn find_dead_letter(shared: &Shared, tenant: &str, id: u64) -> Result<DeadLetter, ApiError> {
    shared.store.get::<DeadLetter>(Kind::DeadLetter, tenant, id).map_err(internal)?.ok_or_else(|| not_found("not_found", format!("no dead letter {id}")))
}

/// Get one dead letter
#[utoipa::path(get, path = "/v1/dead-letters/{id}", tag = "ingest", params(("id" = u64, Path, description = "Dead letter id")),
    responses((status = 200, body = DeadLetter), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn get_dead_letter(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<DeadLetter>, ApiError> {
    find_dead_letter(&shared, &tenant, id).map(Json)
}

/// Discard a dead letter
#[utoipa::path(delete, path = "/v1/dead-letters/{id}", tag = "ingest", params(("id" = u64, Path, description = "Dead letter id")),
    responses((status = 204, description = "Discarded"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn delete_dead_letter(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<StatusCode, ApiError> {
    find_dead_letter(&shared, &tenant, id)?;
    shared.store.write(vec![store::writes::delete(Kind::DeadLetter, &tenant, id)]).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct RetryResult {
    /// Whether the event now counts (accepted, or already counted): the dead letter is gone.
    pub resolved: bool,
    pub result: EventResult,
}

/// Re-submit a dead letter
///
/// Sends the stored raw event again (after the catalogue or the app was fixed). If it is
/// accepted, or was meanwhile counted, the dead letter is removed; otherwise it stays with the
/// new reason.
#[utoipa::path(post, path = "/v1/dead-letters/{id}/retry", tag = "ingest", params(("id" = u64, Path, description = "Dead letter id")),
    responses((status = 200, body = RetryResult), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn retry_dead_letter(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<RetryResult>, ApiError> {
    let mut d = find_dead_letter(&shared, &tenant, id)?;
    let raw: Json_ = serde_json::from_str(&d.raw).unwrap_or(Json_::Null);
    let result = match decode(&tenant, &raw, now_ms()) {
        Ok(ev) => match submit(&shared, &tenant, ev).await.await {
            Ok(o) => EventResult::from(o),
            Err(_) => return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the user's actor stopped; try again".into())),
        },
        Err((event_id, _, code, reason)) => EventResult { event_id, status: "rejected".into(), code: Some(code.into()), reason: Some(reason), xp: 0, unlocks: vec![], dead_letter: Some(id) },
    };
    let resolved = result.status != "rejected";
    if resolved {
        shared.store.write(vec![store::writes::delete(Kind::DeadLetter, &tenant, id)]).await.map_err(internal)?;
    } else {
        d.retries += 1;
        d.code = result.code.clone().unwrap_or_default();
        d.reason = result.reason.clone().unwrap_or_default();
        shared.store.write(vec![store::writes::put(Kind::DeadLetter, &tenant, id, &d)]).await.map_err(internal)?;
    }
    let mut result = result;
    result.dead_letter = (!resolved).then_some(id);
    Ok(Json(RetryResult { resolved, result }))
}

// ---------------------------------------------------------------------------------------------
// Catalogue
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
pub struct VersionQuery {
    /// A stored version; the one in force when absent.
    pub version: Option<u64>,
}

/// A stored catalogue version.
#[derive(Serialize, ToSchema)]
pub struct CatalogueVersion {
    pub version: u64,
    /// `file` (the configured file, or a SIGHUP reload of it) or `api`.
    pub origin: String,
    pub created_at: String,
    /// What the change was.
    pub change: String,
    /// Whether this is the version in force.
    pub current: bool,
    /// The document (absent in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub document: Option<Json_>,
}

fn version_view(s: StoredCatalogue, current: u64, with_document: bool) -> CatalogueVersion {
    CatalogueVersion {
        version: s.version,
        origin: s.origin,
        created_at: rfc3339(s.created_at),
        change: s.change,
        current: s.version == current,
        document: with_document.then(|| serde_json::from_str(&s.document).unwrap_or(Json_::Null)),
    }
}

fn current_version(shared: &Shared, tenant: &str) -> Result<u64, ApiError> {
    shared.catalogue(tenant).map(|c| c.version).ok_or_else(|| internal("the tenant has no catalogue"))
}

/// Get the catalogue (any version)
#[utoipa::path(get, path = "/v1/catalogue", tag = "catalogue", params(VersionQuery),
    responses((status = 200, body = CatalogueVersion), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn get_catalogue(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(q): Query<VersionQuery>) -> Result<Json<CatalogueVersion>, ApiError> {
    let current = current_version(&shared, &tenant)?;
    let v = q.version.unwrap_or(current);
    let s = shared.catalogues.stored(&tenant, v).map_err(internal)?.ok_or_else(|| not_found("not_found", format!("no catalogue version {v}")))?;
    Ok(Json(version_view(s, current, true)))
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<CatalogueVersion>,
}

/// List catalogue versions
#[utoipa::path(get, path = "/v1/catalogue/versions", tag = "catalogue",
    responses((status = 200, body = VersionList), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
async fn catalogue_versions(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant) -> Result<Json<VersionList>, ApiError> {
    let current = current_version(&shared, &tenant)?;
    let versions = shared.catalogues.history(&tenant).map_err(internal)?.into_iter().map(|s| version_view(s, current, false)).collect();
    Ok(Json(VersionList { versions }))
}

#[derive(Deserialize, IntoParams)]
pub struct ChangeQuery {
    /// Re-evaluate stored users for new or changed badges and new stats (default true).
    pub backfill: Option<bool>,
    /// Push backfilled awards to the users as toasts (default false: they arrive silently).
    pub notify: Option<bool>,
}

/// What a catalogue change did.
#[derive(Serialize, ToSchema)]
pub struct ChangeResult {
    pub version: u64,
    /// Badges new or changed in this version.
    pub changed_badges: Vec<String>,
    /// Stats the engine did not track before.
    pub new_stats: usize,
    /// The backfill job, when one was started.
    pub job: Option<JobRecord>,
}

async fn change(shared: Arc<Shared>, tenant: String, change: Change, q: ChangeQuery) -> Response {
    let cand = match shared.catalogues.apply(&tenant, &change, now_ms()).await {
        Ok(c) => c,
        Err(e) => return change_error(e),
    };
    tracing::info!(tenant = %tenant, version = cand.catalogue.version, changed = cand.changed_badges.len(), "catalogue changed");
    let wants = !cand.changed_badges.is_empty() || !cand.new_stats.is_empty();
    let job = if wants && q.backfill.unwrap_or(true) {
        match shared.backfills.start(&tenant, &cand, q.notify.unwrap_or(false)).await {
            Ok(j) => Some(j),
            Err(e) => return internal(e).into_response(),
        }
    } else {
        None
    };
    let body = ChangeResult { version: cand.catalogue.version, changed_badges: cand.changed_badges, new_stats: cand.new_stats.len(), job };
    (StatusCode::CREATED, Json(body)).into_response()
}

/// Replace the whole catalogue
///
/// Validates the document, stores it as a new version (its `version` is set by the server)
/// and puts it in force at once.
#[utoipa::path(put, path = "/v1/catalogue", tag = "catalogue", params(ChangeQuery), request_body(content = Object, description = "A catalogue document (docs/catalogue.md), as JSON"),
    responses((status = 201, body = ChangeResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, description = "The catalogue is not valid", body = ErrorBody)),
    security(("api_key" = [])))]
async fn replace_catalogue(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(q): Query<ChangeQuery>, body: Result<Bytes, BytesRejection>) -> Response {
    match json_body::<Json_>(body) {
        Ok(document) => change(shared, tenant, Change::ReplaceDocument { document }, q).await,
        Err(e) => e.into_response(),
    }
}

fn with_id(mut v: Json_, id: &str, what: &str) -> Result<Json_, ApiError> {
    let Some(o) = v.as_object_mut() else { return Err(bad("invalid_body", format!("the {what} must be a JSON object"))) };
    match o.get("id").map(|x| x.as_str()) {
        None => {
            o.insert("id".into(), id.into());
        }
        Some(Some(x)) if x == id => {}
        _ => return Err(bad("invalid_body", format!("the {what}'s `id` must match the path (`{id}`)"))),
    }
    Ok(v)
}

/// Create or replace a badge
#[utoipa::path(put, path = "/v1/catalogue/badges/{id}", tag = "catalogue", params(("id" = String, Path, description = "Badge id"), ChangeQuery),
    request_body(content = Object, description = "A badge definition (docs/catalogue.md)"),
    responses((status = 201, body = ChangeResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = [])))]
async fn put_badge(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, Query(q): Query<ChangeQuery>, body: Result<Bytes, BytesRejection>) -> Response {
    match json_body::<Json_>(body).and_then(|b| with_id(b, &id, "badge")) {
        Ok(badge) => change(shared, tenant, Change::PutBadge { badge }, q).await,
        Err(e) => e.into_response(),
    }
}

/// Retire a badge
///
/// Nobody earns it any more; users who own it keep it.
#[utoipa::path(delete, path = "/v1/catalogue/badges/{id}", tag = "catalogue", params(("id" = String, Path, description = "Badge id")),
    responses((status = 201, body = ChangeResult), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn retire_badge(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Response {
    change(shared, tenant, Change::RetireBadge { id }, ChangeQuery { backfill: Some(false), notify: None }).await
}

/// Create or replace an XP rule
#[utoipa::path(put, path = "/v1/catalogue/xp/{id}", tag = "catalogue", params(("id" = String, Path, description = "XP rule id")),
    request_body(content = Object, description = "An XP rule (docs/catalogue.md)"),
    responses((status = 201, body = ChangeResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = [])))]
async fn put_xp(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> Response {
    match json_body::<Json_>(body).and_then(|b| with_id(b, &id, "XP rule")) {
        Ok(rule) => change(shared, tenant, Change::PutXp { rule }, ChangeQuery { backfill: Some(false), notify: None }).await,
        Err(e) => e.into_response(),
    }
}

/// Remove an XP rule
///
/// XP already granted stays; the rule grants no more.
#[utoipa::path(delete, path = "/v1/catalogue/xp/{id}", tag = "catalogue", params(("id" = String, Path, description = "XP rule id")),
    responses((status = 201, body = ChangeResult), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn remove_xp(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Response {
    change(shared, tenant, Change::RemoveXp { id }, ChangeQuery { backfill: Some(false), notify: None }).await
}

/// Dry-run a catalogue change
///
/// Says, without changing anything, how many stored users would earn each new or changed
/// badge right now (their stored events replayed under the changed catalogue), with a sample.
#[utoipa::path(post, path = "/v1/catalogue/preview", tag = "catalogue", request_body = Change,
    responses((status = 200, body = PreviewReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = [])))]
async fn preview(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, body: Result<Bytes, BytesRejection>) -> Response {
    let change: Change = match json_body(body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let cand = match shared.catalogues.candidate(&tenant, &change) {
        Ok(c) => c,
        Err(e) => return change_error(e),
    };
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || s.backfills.preview(&tenant, &cand)).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => internal(e).into_response(),
        Err(e) => internal(e).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobRecord>,
}

/// List backfill jobs
#[utoipa::path(get, path = "/v1/jobs", tag = "catalogue",
    responses((status = 200, body = JobList), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
async fn list_jobs(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant) -> Result<Json<JobList>, ApiError> {
    let jobs = shared.store.list::<JobRecord>(Kind::Job, &tenant, None, usize::MAX).map_err(internal)?.into_iter().map(|(_, j)| j).collect();
    Ok(Json(JobList { jobs }))
}

/// Get a backfill job's progress
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "catalogue", params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn get_job(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<JobRecord>, ApiError> {
    shared.store.get::<JobRecord>(Kind::Job, &tenant, id).map_err(internal)?.map(Json).ok_or_else(|| not_found("not_found", format!("no job {id}")))
}

/// Cancel a backfill job
///
/// Awards already made stay.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "catalogue", params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn cancel_job(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<JobRecord>, ApiError> {
    shared.backfills.cancel(&tenant, id).await.map_err(internal)?.map(Json).ok_or_else(|| not_found("not_found", format!("no job {id}")))
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

/// Asks a user's actor a question; 404 for a user the tenant has never seen.
async fn ask<T: Send + 'static>(shared: &Arc<Shared>, tenant: &str, user: &str, f: impl FnOnce(UserView<'_>) -> T + Send + 'static) -> Result<T, ApiError> {
    if user.is_empty() || user.len() > 128 || user.contains('\0') {
        return Err(bad("invalid_user", "a user id is 1 to 128 bytes with no NUL"));
    }
    // A store that has failed serves nothing, not even a user whose actor is still in memory
    // (its state is durable, but the answer must not depend on which users happened to be
    // caught by the failed commit): every query says the same, until the restart.
    if let Some(why) = shared.store.failure() {
        return Err(internal(crate::store::StoreError::Failed(why.to_string())));
    }
    if !shared.users.is_active(tenant, user) {
        let (store, t, u) = (shared.store.clone(), tenant.to_string(), user.to_string());
        let known = tokio::task::spawn_blocking(move || store.has_user(&t, &u)).await.map_err(internal)?.map_err(internal)?;
        if !known {
            return Err(not_found("user_not_found", format!("no user `{user}`")));
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let q: crate::user::Query = Box::new(move |view| {
        let _ = tx.send(f(view));
    });
    shared.users.send(tenant, user, UserMsg::Query(q)).map_err(internal)?;
    match rx.await {
        Ok(v) => Ok(v),
        Err(_) => Err(why_down(shared, tenant, user).await),
    }
}

/// Why a user's actor could not answer: its stored record is unreadable (a lasting problem,
/// which other users do not share), or it stopped for a moment (retry).
async fn why_down(shared: &Arc<Shared>, tenant: &str, user: &str) -> ApiError {
    let (store, t, u) = (shared.store.clone(), tenant.to_string(), user.to_string());
    match tokio::task::spawn_blocking(move || store.load_user(&t, &u)).await {
        Ok(Err(e @ crate::store::StoreError::Failed(_))) => internal(e),
        Ok(Err(e @ crate::store::StoreError::Corrupt { .. })) => {
            tracing::error!(tenant, user, error = %e, "user record unreadable");
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "corrupt_user", format!("this user's stored state cannot be read ({e}); other users are unaffected"))
        }
        _ => ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the user's actor stopped; try again".into()),
    }
}

#[derive(Serialize, ToSchema)]
pub struct OwnedBadge {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub awarded_at: String,
    pub count: u32,
    /// The catalogue version whose rule awarded it.
    pub rule_version: u64,
    /// For per-key badges: the keys it was earned for.
    pub keys: Vec<String>,
    /// The event (or `backfill:<job>`) that awarded it.
    pub event_id: String,
    pub retired: bool,
}

#[derive(Serialize, ToSchema)]
pub struct StatView {
    /// The stat's stable id.
    pub id: String,
    /// What it counts, in words.
    pub describe: String,
    #[schema(value_type = Object)]
    pub value: Json_,
}

#[derive(Serialize, ToSchema)]
pub struct UserDoc {
    pub user_id: String,
    pub xp: u64,
    pub level: u32,
    pub badges: Vec<OwnedBadge>,
    pub stats: Vec<StatView>,
    #[schema(value_type = Object)]
    pub attributes: Json_,
    /// Events accepted.
    pub events: u64,
    /// The last push offset (what a socket's `since` counts).
    pub offset: u64,
    pub catalogue_version: u64,
}

/// An owned badge as the API shows it; `def` is absent for a badge no longer in the catalogue.
fn owned_badge(id: &str, r: &crate::core::BadgeRecord, def: Option<&crate::core::catalogue::BadgeDef>) -> OwnedBadge {
    OwnedBadge {
        id: id.to_string(),
        name: def.map_or_else(|| id.to_string(), |d| d.name.clone()),
        tier: def.map_or("", |d| d.tier.as_str()).to_string(),
        awarded_at: rfc3339(r.awarded_at),
        count: r.count,
        rule_version: r.version,
        keys: r.keys.clone(),
        event_id: r.event_id.clone(),
        retired: def.is_none_or(|d| d.retired),
    }
}

fn stat_json(v: &crate::core::state::StatValue) -> Json_ {
    use crate::core::state::StatValue as S;
    match v {
        S::Num(x) => json!(x),
        S::Keyed(m) => json!(m),
        S::Set(s) => json!({ "distinct": s.len() }),
        S::KeyedSet(m) => json!(m.iter().map(|(k, s)| (k.clone(), s.len())).collect::<std::collections::BTreeMap<_, _>>()),
        S::Daily { len, last_day, freezes, .. } => json!({ "days": len, "last_day": last_day, "freezes": freezes }),
        S::Seq { step, done, .. } => json!({ "step": step, "done": done }),
    }
}

fn user_doc(v: UserView<'_>) -> UserDoc {
    let (st, cat) = (v.state, v.catalogue);
    let badges = st
        .badges
        .iter()
        .map(|(id, r)| owned_badge(id, r, cat.badge(id)))
        .collect();
    // Stats are read by their stable id, so a state not yet aligned to a new version still
    // shows what it has.
    let stats = cat
        .stats
        .iter()
        .map(|d| {
            let value = st.stats.iter().find(|(id, _)| *id == d.id).map_or(Json_::Null, |(_, v)| stat_json(v));
            StatView { id: format!("{:016x}", d.id), describe: d.describe.clone(), value }
        })
        .collect();
    let attributes = Json_::Object(st.attributes.iter().map(|(k, v)| (k.clone(), v.to_json())).collect());
    UserDoc { user_id: st.user_id.clone(), xp: st.xp, level: st.level, badges, stats, attributes, events: st.events, offset: v.offset, catalogue_version: cat.version }
}

/// Get a user's XP, level, badges and stats
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = UserDoc), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn get_user(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<Json<UserDoc>, ApiError> {
    ask(&shared, &tenant, &id, user_doc).await.map(Json)
}

#[derive(Serialize, ToSchema)]
pub struct ProgressDoc {
    pub user_id: String,
    /// Every badge the user can still earn, with how far they are, part by part.
    #[schema(value_type = Vec<Object>)]
    pub badges: Vec<crate::core::explain::BadgeProgress>,
}

/// Why didn't I get this badge?
///
/// For every badge not yet owned (or repeatable): `current`/`target`, and for composite rules
/// which parts hold and which do not.
#[utoipa::path(get, path = "/v1/users/{id}/progress", tag = "users", params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = ProgressDoc), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn get_progress(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<Json<ProgressDoc>, ApiError> {
    let now = now_ms();
    let badges = ask(&shared, &tenant, &id, move |v| {
        let mut st = v.state.clone();
        st.sync(v.catalogue);
        crate::core::explain::progress(&st, v.catalogue, now)
    })
    .await?;
    Ok(Json(ProgressDoc { user_id: id, badges }))
}

/// Does the user own this badge? (entitlement check)
///
/// 200 with the award, or 404 (`not_owned`, or `unknown_badge` for a badge the catalogue does
/// not have).
#[utoipa::path(get, path = "/v1/users/{id}/badges/{badge}", tag = "users",
    params(("id" = String, Path, description = "User id"), ("badge" = String, Path, description = "Badge id")),
    responses((status = 200, body = OwnedBadge), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn get_badge(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path((id, badge)): Path<(String, String)>) -> Result<Json<OwnedBadge>, ApiError> {
    let b = badge.clone();
    let found = ask(&shared, &tenant, &id, move |v| {
        let def = v.catalogue.badge(&b);
        match (v.state.badges.get(&b), def) {
            (Some(r), _) => Ok(owned_badge(&b, r, def)),
            (None, Some(_)) => Err(false),
            (None, None) => Err(true),
        }
    })
    .await?;
    match found {
        Ok(b) => Ok(Json(b)),
        Err(false) => Err(not_found("not_owned", format!("user `{id}` does not own `{badge}`"))),
        Err(true) => Err(not_found("unknown_badge", format!("the catalogue has no badge `{badge}`"))),
    }
}

#[derive(Serialize, ToSchema)]
pub struct LoggedEvent {
    /// The user's sequence number of this event (pass as `after` to page).
    pub seq: u64,
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: String,
    pub received_at: String,
    pub source: String,
    #[schema(value_type = Object)]
    pub payload: Json_,
    pub catalogue_version: u64,
    /// The messages the event pushed, as sent.
    #[schema(value_type = Vec<Object>)]
    pub pushes: Vec<Json_>,
}

#[derive(Serialize, ToSchema)]
pub struct EventLog {
    pub events: Vec<LoggedEvent>,
    pub next_after: Option<u64>,
}

/// Export a user's event log
///
/// The accepted events (and backfill records), oldest first, with what each pushed. Events
/// older than the retention period are gone.
#[utoipa::path(get, path = "/v1/users/{id}/events", tag = "users", params(("id" = String, Path, description = "User id"), Page),
    responses((status = 200, body = EventLog), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
async fn get_events(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, Query(page): Query<Page>) -> Result<Json<EventLog>, ApiError> {
    // Through the actor first, so everything it accepted is durable and the user exists.
    ask(&shared, &tenant, &id, |_| ()).await?;
    let limit = page.limit();
    let (store, t, u, after) = (shared.store.clone(), tenant.clone(), id.clone(), page.after.unwrap_or(0));
    let items = tokio::task::spawn_blocking(move || store.events_after(&t, &u, after, limit)).await.map_err(internal)?.map_err(internal)?;
    let next_after = (items.len() == limit).then(|| items.last().map(|(s, _)| *s)).flatten();
    let events = items
        .into_iter()
        .map(|(seq, e)| LoggedEvent {
            seq,
            event_id: e.event.event_id,
            event_type: e.event.event_type,
            occurred_at: rfc3339(e.event.occurred_at),
            received_at: rfc3339(e.received_at),
            source: e.event.source,
            payload: Json_::Object(e.event.payload.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            catalogue_version: e.catalogue_version,
            pushes: e.pushes.iter().map(|(_, text)| serde_json::from_str(text).unwrap_or(Json_::Null)).collect(),
        })
        .collect();
    Ok(Json(EventLog { events, next_after }))
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document
// ---------------------------------------------------------------------------------------------

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("The tenant's API key")).build()));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Accolade HTTP API", description = "Ingest, catalogue changes, queries and operations. The WebSocket protocol is in docs/protocol.md."),
    paths(
        ingest, list_dead_letters, get_dead_letter, delete_dead_letter, retry_dead_letter,
        get_catalogue, catalogue_versions, replace_catalogue, put_badge, retire_badge, put_xp, remove_xp, preview,
        list_jobs, get_job, cancel_job,
        get_user, get_progress, get_badge, get_events,
        leaderboards::list, leaderboards::standings, leaderboards::user_rank, leaderboards::friends, leaderboards::periods,
        goals::create, goals::list, goals::get, goals::cancel,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete, webhooks::deliveries, webhooks::retry,
        operations::healthz, operations::readyz, operations::metrics
    ),
    components(schemas(ErrorBody, Change, backfill::JobStatus, backfill::BadgePreview)),
    modifiers(&Security),
    tags(
        (name = "ingest", description = "Server-side events and dead letters"),
        (name = "catalogue", description = "Catalogue versions, changes, previews and backfill jobs"),
        (name = "users", description = "What a user has, and how far they are"),
        (name = "leaderboards", description = "Standings, ranks, friends and closed periods"),
        (name = "goals", description = "Goals one user assigns another"),
        (name = "webhooks", description = "Endpoints notified of unlocks, level-ups and goals, and their deliveries"),
        (name = "operations", description = "Health, readiness, metrics")
    )
)]
pub struct ApiDoc;

/// The OpenAPI 3 document of this API.
async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
