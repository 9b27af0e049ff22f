//! The ingest routes of the HTTP API: `POST /v1/events` (a batch of server-side events, each
//! through its user's actor) and the dead letters of events that could not be taken.

use crate::core::{Event, Millis};
use crate::protocol::{self, rfc3339};
use crate::shared::Shared;
use super::{not_found, internal, body_bytes, json_bytes, Tenant, ErrorBody, ApiError, Page, MAX_BATCH};
use crate::store::{self, Kind};
use crate::clock::now_ms;
use crate::user::{IngestOutcome, Origin, UserMsg};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json_;
use std::sync::Arc;
use utoipa::ToSchema;

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
    if !crate::core::catalogue::valid_user_id(&user_id) {
        return fail("invalid_event", "user_id must be 1 to 128 bytes with no NUL, not beginning with U+0001".into());
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
    // In cluster mode, a user another node serves has her event sent there.
    if let Some(m) = &shared.cluster
        && !m.serves(tenant, &user)
    {
        let (m, tenant) = (m.clone(), tenant.to_string());
        tokio::spawn(async move {
            let _ = tx.send(m.forward(&tenant, event, now_ms()).await);
        });
        return rx;
    }
    let msg = UserMsg::Event { event, received_at: now_ms(), arrived: tokio::time::Instant::now(), origin: Origin::Http(tx), permit: None };
    if let Err(e) = shared.users.send(tenant, &user, msg) {
        tracing::warn!(error = %e, "ingest could not reach the user's actor");
    }
    rx
}

async fn dead_letter(shared: &Arc<Shared>, tenant: &str, code: &str, reason: &str, raw: String, event_id: Option<String>, user_id: Option<String>) -> Result<u64, ApiError> {
    let id = shared.store.next_id(crate::store::IdKind::DeadLetter).map_err(internal)?;
    let d = DeadLetter { id, received_at: rfc3339(now_ms()), code: code.into(), reason: reason.into(), user_id, event_id, raw, retries: 0 };
    shared.store.write(vec![store::writes::put(Kind::DeadLetter, tenant, id, &d)]).await.map_err(internal)?;
    shared.metrics.dead_letters.inc();
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
pub async fn ingest(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, body: Result<Bytes, BytesRejection>) -> Result<Json<IngestResponse>, ApiError> {
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
    shared.metrics.http_events.inc_by(req.events.len() as u64);
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
                Ok(o) if o.status == "rejected" && o.code.as_deref() != Some("unavailable") => {
                    let mut r = EventResult::from(o.clone());
                    let (code, reason) = (o.code.unwrap_or("invalid_event".into()), o.reason.unwrap_or_default());
                    let user = raw.get("user_id").and_then(Json_::as_str).map(str::to_string);
                    r.dead_letter = Some(dead_letter(&shared, &tenant, &code, &reason, raw.to_string(), Some(o.event_id), user).await?);
                    r
                }
                Ok(o) => EventResult::from(o),
                Err(_) => {
                    // Not kept as a dead letter: the event is fine, the server could not take it
                    // now (storage failing, say); the sender retries.
                    let user = raw.get("user_id").and_then(Json_::as_str).unwrap_or_default();
                    let why = super::users::why_down(&shared, &tenant, user).await;
                    // A store that failed is, for one event, the same advice as any pause:
                    // `unavailable`, send it again (here, once the server has restarted).
                    let code = if why.1 == "storage_failed" { "unavailable" } else { why.1 };
                    shared.metrics.refused(code);
                    // Dropped unread from the mailbox of an actor that failed with the store:
                    // refused because of the store, and counted nowhere else.
                    if why.1 == "storage_failed" {
                        shared.metrics.storage_failed.inc();
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
                // Refused before any actor saw it, so counted here.
                shared.metrics.rejected.inc();
                shared.metrics.refused(code);
                shared.analytics.tenant(&tenant).health.rejected(code);
                let id = dead_letter(&shared, &tenant, code, &reason, raw.to_string(), event_id.clone(), user_id).await?;
                EventResult { event_id, status: "rejected".into(), code: Some(code.into()), reason: Some(reason), xp: 0, unlocks: vec![], dead_letter: Some(id) }
            }
        };
        results.push(r);
    }
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    Ok(Json(IngestResponse { accepted: count("accepted"), duplicates: count("duplicate"), rejected: count("rejected"), results }))
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
pub async fn list_dead_letters(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(page): Query<Page>) -> Result<Json<DeadLetterList>, ApiError> {
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
pub async fn get_dead_letter(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<DeadLetter>, ApiError> {
    find_dead_letter(&shared, &tenant, id).map(Json)
}

/// Discard a dead letter
#[utoipa::path(delete, path = "/v1/dead-letters/{id}", tag = "ingest", params(("id" = u64, Path, description = "Dead letter id")),
    responses((status = 204, description = "Discarded"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn delete_dead_letter(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<StatusCode, ApiError> {
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
pub async fn retry_dead_letter(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<RetryResult>, ApiError> {
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
