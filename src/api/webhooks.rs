//! The webhook routes of the HTTP API: register an endpoint (its signing secret is shown once,
//! at creation), list, read and delete endpoints, read an endpoint's deliveries (waiting, set
//! aside and finished), list the set-aside ones, and send a given-up or set-aside delivery
//! again. In cluster mode the endpoints are the cluster's (a key-value record per tenant), and
//! what is asked about deliveries is answered by every node for the users it serves, merged.

use super::{bad, internal, json_body, not_found, ErrorBody, Tenant};
use crate::protocol::rfc3339;
use crate::api::ApiError;
use crate::shared::Shared;
use crate::store::{self, Kind};
use crate::clock::now_ms;
use crate::webhooks::{new_secret, Ask, Attempt, Finished, Hook, Pending, Policy, Refusal, Told, KINDS, MAX_HOOKS};
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

/// An endpoint as the API shows it, with how many notifications wait for it.
async fn doc(shared: &Shared, tenant: &str, id: u64, h: Hook) -> Result<WebhookDoc, ApiError> {
    Ok(WebhookDoc {
        id,
        pending: ask(shared, tenant, id, Ask::Count).await?.count,
        url: h.url,
        events: h.events,
        description: h.description,
        created_at: rfc3339(h.created_at),
        secret: None,
    })
}

/// A tenant's endpoints: in its sled for one node, the cluster's record in cluster mode.
async fn endpoints(shared: &Shared, tenant: &str) -> Result<Vec<(u64, Hook)>, ApiError> {
    match &shared.cluster {
        Some(m) => Ok(m.endpoints(tenant).await.map_err(unavailable)?.hooks.into_iter().collect()),
        None => shared.store.list::<Hook>(Kind::Webhook, tenant, None, MAX_HOOKS * 2).map_err(internal),
    }
}

async fn find(shared: &Shared, tenant: &str, id: u64) -> Result<Hook, ApiError> {
    let found = match &shared.cluster {
        Some(m) => m.endpoints(tenant).await.map_err(unavailable)?.hooks.remove(&id),
        None => shared.store.get::<Hook>(Kind::Webhook, tenant, id).map_err(internal)?,
    };
    found.ok_or_else(|| not_found("not_found", format!("there is no webhook {id}")))
}

/// Asks about an endpoint's deliveries: this node for itself, or in cluster mode every node
/// for the users it serves.
async fn ask(shared: &Shared, tenant: &str, id: u64, q: Ask) -> Result<Told, ApiError> {
    match &shared.cluster {
        Some(m) => m.ask_hooks(tenant, id, q).await.map_err(unavailable),
        None => shared.webhooks.answer(tenant, id, &q).await.map_err(|e| internal(e)),
    }
}

/// A cluster that cannot answer now (NATS, or a partition between nodes): try again.
fn unavailable(why: String) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("the cluster could not answer: {why}; try again"))
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
/// answer carries the secret, once. In cluster mode the answer comes once every node has the
/// endpoint in force (or after a few seconds, if some node has not heard of it yet).
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses((status = 201, body = WebhookDoc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: some partition is between nodes, or NATS does not answer; try again", body = ErrorBody), (status = 409, body = ErrorBody)),
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
    let hook = Hook { url: w.url, events, secret: new_secret().map_err(internal)?, description, created_at: now_ms() };
    let too_many = || ApiError(StatusCode::CONFLICT, "too_many_webhooks", format!("a tenant has at most {MAX_HOOKS} webhook endpoints; delete one first"));
    let id = match &shared.cluster {
        // The cluster's record, changed by compare-and-set: two nodes cannot both take the
        // last place, nor give one id twice.
        Some(m) => m
            .change_endpoints(&tenant, |e| {
                if e.hooks.len() >= MAX_HOOKS {
                    return Err(too_many());
                }
                e.next += 1;
                e.hooks.insert(e.next, hook.clone());
                Ok(e.next)
            })
            .await
            .map_err(unavailable)??,
        None => {
            // One change at a time per process, so two creations cannot both pass the count check.
            let _one = shared.webhooks.changes.lock().await;
            if shared.store.list::<Hook>(Kind::Webhook, &tenant, None, MAX_HOOKS + 1).map_err(internal)?.len() >= MAX_HOOKS {
                return Err(too_many());
            }
            let id = shared.store.next_id(crate::store::IdKind::Webhook).map_err(internal)?;
            shared.store.write(vec![store::writes::put(Kind::Webhook, &tenant, id, &hook)]).await.map_err(internal)?;
            shared.webhooks.add(&tenant, id, &hook);
            id
        }
    };
    if let Some(m) = &shared.cluster
        && !m.endpoint_in_force(&tenant, id).await
    {
        // Registered all the same: the nodes that have not heard of it yet will, from the
        // bucket they watch, once NATS reaches them.
        tracing::warn!(tenant, webhook = id, "a new webhook endpoint is not yet in force on every node");
    }
    tracing::info!(tenant, webhook = id, url = %hook.url, "webhook endpoint registered");
    let secret = hook.secret.clone();
    // A new endpoint has nothing waiting yet (and in cluster mode the other nodes may not
    // have heard of it this very moment).
    let doc = WebhookDoc { id, pending: 0, url: hook.url, events: hook.events, description: hook.description, created_at: rfc3339(hook.created_at), secret: Some(secret) };
    Ok((StatusCode::CREATED, Json(doc)))
}

/// List webhook endpoints
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: some partition is between nodes, or NATS does not answer; try again", body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant) -> Result<Json<WebhookList>, ApiError> {
    let mut webhooks = Vec::new();
    for (id, h) in endpoints(&shared, &tenant).await? {
        webhooks.push(doc(&shared, &tenant, id, h).await?);
    }
    Ok(Json(WebhookList { webhooks }))
}

/// A webhook endpoint
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = u64, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookDoc), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: some partition is between nodes, or NATS does not answer; try again", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<WebhookDoc>, ApiError> {
    let h = find(&shared, &tenant, id).await?;
    Ok(Json(doc(&shared, &tenant, id, h).await?))
}

/// Delete a webhook endpoint
///
/// Its worker stops; notifications still waiting for it are dropped, with its log.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", params(("id" = u64, Path, description = "Webhook id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: some partition is between nodes, or NATS does not answer; try again", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn delete(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<StatusCode, ApiError> {
    if let Some(m) = &shared.cluster {
        // Out of the cluster's record; every node, this one too, then stops its worker and
        // removes the endpoint's rows about the users it serves (`Webhooks::follow`).
        let gone = m.change_endpoints(&tenant, |e| e.hooks.remove(&id).map(|_| ()).ok_or(())).await.map_err(unavailable)?;
        if gone.is_err() {
            return Err(not_found("not_found", format!("there is no webhook {id}")));
        }
        tracing::info!(tenant, webhook = id, "webhook endpoint deleted");
        return Ok(StatusCode::NO_CONTENT);
    }
    let _one = shared.webhooks.changes.lock().await;
    find(&shared, &tenant, id).await?;
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
    responses((status = 200, body = DeliveryLog), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: some partition is between nodes, or NATS does not answer; try again", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn deliveries(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>, Query(q): Query<DeliveryQuery>) -> Result<Json<DeliveryLog>, ApiError> {
    find(&shared, &tenant, id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let Told { pending, finished, finished_cut, .. } = ask(&shared, &tenant, id, Ask::Deliveries { before: q.before, limit }).await?;
    // A page cut short (a cluster's answers too large for one message) has more after it too.
    let next_before = (finished.len() == limit || finished_cut).then(|| finished.last().map(|(id, _)| *id)).flatten();
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
    responses((status = 200, body = SetAsideList), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: some partition is between nodes, or NATS does not answer; try again", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn set_aside(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>, Query(q): Query<SetAsideQuery>) -> Result<Json<SetAsideList>, ApiError> {
    find(&shared, &tenant, id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let policy = Policy::of(&shared.config);
    let told = ask(&shared, &tenant, id, Ask::SetAside { limit }).await?;
    Ok(Json(SetAsideList { set_aside: told.pending.into_iter().map(|(d, p)| pending_doc(d, p, &policy)).collect() }))
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
    responses((status = 202, body = DeliveryDoc), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: some partition is between nodes, or NATS does not answer; try again", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn retry(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path((id, delivery)): Path<(u64, u64)>) -> Result<(StatusCode, Json<DeliveryDoc>), ApiError> {
    find(&shared, &tenant, id).await?;
    let policy = Policy::of(&shared.config);
    match ask(&shared, &tenant, id, Ask::Retry { delivery }).await?.retried {
        Some(Ok((d, p))) => Ok((StatusCode::ACCEPTED, Json(pending_doc(d, p, &policy)))),
        Some(Err(Refusal::NotSetAside)) => Err(ApiError(StatusCode::CONFLICT, "not_set_aside", format!("delivery {delivery} waits in line and is sent in its turn; only a set-aside or failed one can be retried"))),
        Some(Err(Refusal::Delivered)) => Err(ApiError(StatusCode::CONFLICT, "already_delivered", format!("delivery {delivery} was delivered; nothing to retry"))),
        None => Err(not_found("not_found", format!("webhook {id} has no finished or set-aside delivery {delivery}"))),
    }
}
