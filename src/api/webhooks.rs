//! The webhook routes of the HTTP API: register an endpoint (its signing secret is shown once,
//! at creation), list, read and delete endpoints, read an endpoint's deliveries (waiting, set
//! aside and finished), list the set-aside ones, and send a given-up or set-aside delivery
//! again.

use super::{bad, internal, json_body, not_found, ErrorBody, Tenant};
use crate::protocol::rfc3339;
use crate::api::ApiError;
use crate::shared::Shared;
use crate::store::{self, Kind};
use crate::clock::now_ms;
use crate::webhooks::{new_secret, Attempt, Finished, Hook, Pending, Policy, KINDS, MAX_HOOKS, SCAN_DEPTH};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where to POST: an `http` or `https` URL (up to 2,048 bytes).
    pub url: String,
    /// Which notifications: any of `unlock`, `level_up`, `goal_completed`, `goal_missed`.
    /// Absent: all of them.
    pub events: Option<Vec<String>>,
    /// For you (up to 200 bytes).
    pub description: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookDoc {
    pub id: u64,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub created_at: String,
    /// Notifications waiting to be delivered, counted up to 100,000.
    pub pending: usize,
    /// Only in the answer to the creation: the key of the `accolade-signature` HMAC. Keep it;
    /// it is not shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookDoc>,
}

fn doc(shared: &Shared, tenant: &str, id: u64, h: Hook) -> Result<WebhookDoc, ApiError> {
    Ok(WebhookDoc {
        id,
        pending: shared.store.outbox_len(tenant, id, 100_000).map_err(internal)?,
        url: h.url,
        events: h.events,
        description: h.description,
        created_at: rfc3339(h.created_at),
        secret: None,
    })
}

fn find(shared: &Shared, tenant: &str, id: u64) -> Result<Hook, ApiError> {
    shared.store.get::<Hook>(Kind::Webhook, tenant, id).map_err(internal)?.ok_or_else(|| not_found("not_found", format!("there is no webhook {id}")))
}

fn valid_url(url: &str) -> Result<(), ApiError> {
    if url.len() > 2048 {
        return Err(bad("invalid_body", "`url` is longer than 2,048 bytes"));
    }
    let u = reqwest::Url::parse(url).map_err(|e| bad("invalid_body", format!("`url` is not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("invalid_body", format!("`url` must be http or https, not {}", u.scheme())));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("invalid_body", "`url` has no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("invalid_body", "`url` must not carry credentials; verify deliveries with the signature instead"));
    }
    Ok(())
}

/// Register a webhook endpoint
///
/// From now on, each notification it subscribes to is written to its outbox in the same batch
/// as the push that announces it, and POSTed to `url` with an `accolade-signature` header
/// (`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>`). Failed
/// attempts (no 2xx answer in time) are retried with exponential backoff and jitter. The
/// answer carries the secret, once.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses((status = 201, body = WebhookDoc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 501, description = "Cluster mode: webhooks are not built for it yet", body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn create(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, body: Result<Bytes, BytesRejection>) -> Result<(StatusCode, Json<WebhookDoc>), ApiError> {
    let w: NewWebhook = json_body(body)?;
    valid_url(&w.url)?;
    let mut events = w.events.unwrap_or_else(|| KINDS.iter().map(|k| k.to_string()).collect());
    if events.is_empty() {
        return Err(bad("invalid_body", "`events` is empty; leave it out to receive every kind"));
    }
    if let Some(e) = events.iter().find(|e| !KINDS.contains(&e.as_str())) {
        return Err(bad("invalid_body", format!("`events` has `{e}`; the kinds are {}", KINDS.join(", "))));
    }
    events.sort();
    events.dedup();
    let description = w.description.unwrap_or_default();
    if description.len() > 200 {
        return Err(bad("invalid_body", "`description` is longer than 200 bytes"));
    }
    // One change at a time per process, so two creations cannot both pass the count check.
    let _one = shared.webhooks.changes.lock().await;
    if shared.store.list::<Hook>(Kind::Webhook, &tenant, None, MAX_HOOKS + 1).map_err(internal)?.len() >= MAX_HOOKS {
        return Err(ApiError(StatusCode::CONFLICT, "too_many_webhooks", format!("a tenant has at most {MAX_HOOKS} webhook endpoints; delete one first")));
    }
    let id = shared.store.next_id(crate::store::IdKind::Webhook).map_err(internal)?;
    let hook = Hook { url: w.url, events, secret: new_secret().map_err(internal)?, description, created_at: now_ms() };
    shared.store.write(vec![store::writes::put(Kind::Webhook, &tenant, id, &hook)]).await.map_err(internal)?;
    shared.webhooks.add(&tenant, id, &hook);
    tracing::info!(tenant, webhook = id, url = %hook.url, "webhook endpoint registered");
    let secret = hook.secret.clone();
    Ok((StatusCode::CREATED, Json(WebhookDoc { secret: Some(secret), ..doc(&shared, &tenant, id, hook)? })))
}

/// List webhook endpoints
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody), (status = 501, description = "Cluster mode: webhooks are not built for it yet", body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant) -> Result<Json<WebhookList>, ApiError> {
    let hooks = shared.store.list::<Hook>(Kind::Webhook, &tenant, None, MAX_HOOKS * 2).map_err(internal)?;
    Ok(Json(WebhookList { webhooks: hooks.into_iter().map(|(id, h)| doc(&shared, &tenant, id, h)).collect::<Result<_, _>>()? }))
}

/// A webhook endpoint
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = u64, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookDoc), (status = 401, body = ErrorBody), (status = 501, description = "Cluster mode: webhooks are not built for it yet", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<WebhookDoc>, ApiError> {
    let h = find(&shared, &tenant, id)?;
    Ok(Json(doc(&shared, &tenant, id, h)?))
}

/// Delete a webhook endpoint
///
/// Its worker stops; notifications still waiting for it are dropped, with its log.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = u64, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 501, description = "Cluster mode: webhooks are not built for it yet", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn delete(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<StatusCode, ApiError> {
    let _one = shared.webhooks.changes.lock().await;
    find(&shared, &tenant, id)?;
    shared.webhooks.remove(&tenant, id).await;
    // Whatever the worker or an actor had queued for the persister lands first, so the scan
    // below sees every row there is.
    shared.store.sync().await.map_err(internal)?;
    let writes = shared.store.drop_hook(&tenant, id).map_err(internal)?;
    shared.store.write(writes).await.map_err(internal)?;
    tracing::info!(tenant, webhook = id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
pub struct DeliveryQuery {
    /// Finished deliveries with ids below this (the previous page's `next_before`).
    pub before: Option<u64>,
    /// At most this many of each list (default 100, at most 1,000).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct AttemptDoc {
    pub at: String,
    /// The endpoint's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    pub millis: u64,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryDoc {
    /// The notification's id (the body's `id`; the same on every endpoint).
    pub id: u64,
    /// `unlock`, `level_up`, `goal_completed` or `goal_missed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending` (waiting in line, or behind an older one of the same user), `set_aside`
    /// (failed `--webhook-hold-attempts` times: retried on its own backoff, out of the line),
    /// `delivered` or `failed` (given up after its last attempt).
    pub state: &'static str,
    pub attempts: u32,
    pub created_at: String,
    /// For a pending delivery: not before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub last_attempt: Option<AttemptDoc>,
    /// The body as sent.
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryLog {
    /// Waiting (`pending` or `set_aside`), oldest first.
    pub pending: Vec<DeliveryDoc>,
    /// Delivered or given up, newest first.
    pub finished: Vec<DeliveryDoc>,
    /// Pass as `before` for the next page of `finished`; absent at the end.
    pub next_before: Option<u64>,
}

fn attempt_doc(a: Attempt) -> AttemptDoc {
    AttemptDoc { at: rfc3339(a.at), status: a.status, error: a.error, millis: a.millis }
}

fn pending_doc(id: u64, p: Pending, policy: &Policy) -> DeliveryDoc {
    DeliveryDoc {
        id,
        state: if policy.set_aside(&p) { "set_aside" } else { "pending" },
        kind: p.kind,
        attempts: p.attempts,
        created_at: rfc3339(p.created_at),
        next_attempt_at: Some(rfc3339(p.next_at)),
        finished_at: None,
        last_attempt: p.last.map(attempt_doc),
        body: serde_json::from_str(&p.body).unwrap_or_default(),
    }
}

fn finished_doc(id: u64, f: Finished) -> DeliveryDoc {
    DeliveryDoc {
        id,
        kind: f.kind,
        state: if f.delivered { "delivered" } else { "failed" },
        attempts: f.attempts,
        created_at: rfc3339(f.created_at),
        next_attempt_at: None,
        finished_at: Some(rfc3339(f.finished_at)),
        last_attempt: Some(attempt_doc(f.last)),
        body: serde_json::from_str(&f.body).unwrap_or_default(),
    }
}

/// A webhook endpoint's deliveries
///
/// What waits in its outbox (with the last failed attempt, if any) and how the last deliveries
/// ended (`--webhook-log-keep` are kept).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = u64, Path, description = "Webhook id"), DeliveryQuery),
    responses((status = 200, body = DeliveryLog), (status = 401, body = ErrorBody), (status = 501, description = "Cluster mode: webhooks are not built for it yet", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn deliveries(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>, Query(q): Query<DeliveryQuery>) -> Result<Json<DeliveryLog>, ApiError> {
    find(&shared, &tenant, id)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let pending = shared.store.outbox::<Pending>(&tenant, id, limit).map_err(internal)?;
    let finished = shared.store.hook_log::<Finished>(&tenant, id, q.before, limit).map_err(internal)?;
    let next_before = (finished.len() == limit).then(|| finished.last().map(|(id, _)| *id)).flatten();
    let policy = Policy::of(&shared.config);
    Ok(Json(DeliveryLog {
        pending: pending.into_iter().map(|(id, p)| pending_doc(id, p, &policy)).collect(),
        finished: finished.into_iter().map(|(id, f)| finished_doc(id, f)).collect(),
        next_before,
    }))
}

#[derive(Deserialize, IntoParams)]
pub struct SetAsideQuery {
    /// At most this many (default 100, at most 1,000).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct SetAsideList {
    /// Set-aside deliveries, oldest first, each `set_aside`.
    pub set_aside: Vec<DeliveryDoc>,
}

/// A webhook endpoint's set-aside deliveries
///
/// The notifications that failed `--webhook-hold-attempts` times and were set aside so that
/// the endpoint's notifications about other users could go on. Each is still retried on its
/// own backoff until `--webhook-max-attempts` (then it is `failed`), and can be redriven at
/// once with `POST /v1/webhooks/{id}/deliveries/{delivery}/retry`. The same user's later
/// notifications wait behind it (`pending`). Read from the oldest 10,000 waiting.
#[utoipa::path(get, path = "/v1/webhooks/{id}/set-aside", tag = "webhooks", params(("id" = u64, Path, description = "Webhook id"), SetAsideQuery),
    responses((status = 200, body = SetAsideList), (status = 401, body = ErrorBody), (status = 501, description = "Cluster mode: webhooks are not built for it yet", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn set_aside(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>, Query(q): Query<SetAsideQuery>) -> Result<Json<SetAsideList>, ApiError> {
    find(&shared, &tenant, id)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let policy = Policy::of(&shared.config);
    let mut out = Vec::new();
    shared
        .store
        .outbox_scan::<Pending>(&tenant, id, SCAN_DEPTH, |d, p| {
            if policy.set_aside(&p) {
                out.push(pending_doc(d, p, &policy));
            }
            out.len() < limit
        })
        .map_err(internal)?;
    Ok(Json(SetAsideList { set_aside: out }))
}

/// Send a given-up or set-aside delivery again
///
/// A `failed` delivery goes back into the outbox with a fresh count of attempts. Its id is
/// older than anything waiting, so it is the next one sent. A `set_aside` one is put back at
/// the head of the line the same way, and tried without waiting out the endpoint's backoff
/// (the endpoint's worker does it, at once). Either way it holds the line again for up to
/// `--webhook-hold-attempts` attempts if it still fails.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery}/retry", tag = "webhooks",
    params(("id" = u64, Path, description = "Webhook id"), ("delivery" = u64, Path, description = "Delivery id")),
    responses((status = 202, body = DeliveryDoc), (status = 401, body = ErrorBody), (status = 501, description = "Cluster mode: webhooks are not built for it yet", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn retry(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path((id, delivery)): Path<(u64, u64)>) -> Result<(StatusCode, Json<DeliveryDoc>), ApiError> {
    let _one = shared.webhooks.changes.lock().await;
    find(&shared, &tenant, id)?;
    let policy = Policy::of(&shared.config);
    let now = now_ms();
    if let Some(p) = shared.store.outbox_get::<Pending>(&tenant, id, delivery).map_err(internal)? {
        let Some(p) = crate::webhooks::redriven(p, now, &policy) else {
            return Err(ApiError(StatusCode::CONFLICT, "not_set_aside", format!("delivery {delivery} waits in line and is sent in its turn; only a set-aside or failed one can be retried")));
        };
        shared.webhooks.redrive(&tenant, id, delivery);
        return Ok((StatusCode::ACCEPTED, Json(pending_doc(delivery, p, &policy))));
    }
    let found = shared.store.hook_log::<Finished>(&tenant, id, delivery.checked_add(1), 1).map_err(internal)?;
    let Some((_, f)) = found.into_iter().find(|(d, _)| *d == delivery) else {
        return Err(not_found("not_found", format!("webhook {id} has no finished or set-aside delivery {delivery}")));
    };
    if f.delivered {
        return Err(ApiError(StatusCode::CONFLICT, "already_delivered", format!("delivery {delivery} was delivered; nothing to retry")));
    }
    let p = Pending { kind: f.kind, body: f.body, created_at: f.created_at, attempts: 0, next_at: now, last: Some(f.last) };
    shared.store.write(vec![store::writes::outbox(&tenant, id, delivery, &p), store::writes::hook_log_delete(&tenant, id, delivery)]).await.map_err(internal)?;
    shared.webhooks.wake(&tenant, id);
    Ok((StatusCode::ACCEPTED, Json(pending_doc(delivery, p, &policy))))
}
