//! The goal routes of the HTTP API: assign a goal (checked against the tenant's catalogue
//! first), list goals by assignee or assigner, read one with its progress, cancel one. Every
//! change goes through the assignee's actor, which owns the goal.
//!
//! In cluster mode a goal lives with its assignee, on the node serving her: the cluster's
//! goal-id bucket names each id's assignee (claimed before a goal is assigned, so an id names
//! one goal in the tenant), a request about one goal or one assignee's goals is relayed to the
//! node serving her, and an assigner's goals are gathered from every node.

use super::{bad, internal, json_body, not_found, ErrorBody, Tenant};
use crate::core::goal::{self, GoalSpec, GoalStatus};
use crate::protocol::rfc3339;
use crate::api::ApiError;
use crate::shared::Shared;
use crate::store::GoalRecord;
use crate::records::GoalOp;
use crate::clock::now_ms;
use crate::user::UserMsg;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGoal {
    /// Your id for the goal (letters, digits, `-`, `_`, `.`; up to 64); generated when absent.
    /// Sending the same goal again with the same id is answered with the stored goal.
    pub id: Option<String>,
    /// Who gets the goal.
    pub assignee: String,
    /// Who gives it (a teacher, a manager): told how it ends.
    pub assigner: String,
    pub title: String,
    /// The criterion, in the badge rule language, e.g.
    /// `{"kind": "count", "event": "article.read", "distinct": "article", "target": 3}`.
    #[schema(value_type = Object)]
    pub criterion: serde_json::Value,
    /// RFC 3339; in the future. Absent: no due date.
    pub due_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GoalDoc {
    pub id: String,
    pub title: String,
    pub assignee: String,
    pub assigner: String,
    #[schema(value_type = Object)]
    pub criterion: serde_json::Value,
    pub due_at: Option<String>,
    pub assigned_at: String,
    /// `open`, `completed`, `missed` or `cancelled`.
    pub status: String,
    pub closed_at: Option<String>,
    /// Whether the assigner has been told how it ended (a `notice` push in their history).
    pub assigner_notified: bool,
    /// For a goal read by id: how far the assignee is, part by part (as for badges).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub progress: Option<crate::core::explain::BadgeProgress>,
}

fn doc(g: GoalRecord) -> GoalDoc {
    GoalDoc {
        criterion: serde_json::from_str(&g.spec.criterion).unwrap_or(serde_json::Value::Null),
        id: g.spec.id,
        title: g.spec.title,
        assignee: g.assignee,
        assigner: g.spec.assigner,
        due_at: g.spec.due.map(rfc3339),
        assigned_at: rfc3339(g.assigned_at),
        status: g.status.as_str().into(),
        closed_at: g.closed_at.map(rfc3339),
        assigner_notified: g.notified,
        progress: None,
    }
}

fn valid_user(field: &str, v: &str) -> Result<(), ApiError> {
    if !crate::core::catalogue::valid_user_id(v) {
        return Err(bad("invalid_body", format!("`{field}` must be 1 to 128 bytes with no NUL, not beginning with U+0001")));
    }
    Ok(())
}

/// Cluster mode: the answer of the node serving `assignee` to this request, rebuilt from its
/// parts (with `body`), when that is another node; `None` when this node serves her (or there
/// is no cluster) and answers itself.
async fn at_assignees_node(shared: &Shared, tenant: &str, assignee: &str, method: axum::http::Method, uri: &axum::http::Uri, headers: &axum::http::HeaderMap, body: Bytes) -> Option<Response> {
    let m = shared.cluster.as_ref()?;
    if m.serves(tenant, assignee) {
        return None;
    }
    let unavailable = |why: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why).into_response();
    // A relayed request is answered by the node it was sent to, never relayed again.
    if headers.contains_key(crate::remote::RELAYED) {
        return Some(unavailable("this node no longer serves the goal's assignee; try again".into()));
    }
    let mut req = axum::http::Request::builder().method(method).uri(uri.clone());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = match req.body(body) {
        Ok(r) => r,
        Err(e) => return Some(internal(e).into_response()),
    };
    Some(match m.relay(tenant, assignee, req).await {
        Ok(res) => res.map(axum::body::Body::from).into_response(),
        Err(e) => unavailable(format!("{e}; try again")),
    })
}

/// Cluster mode: the assignee goal `id` of `tenant` was given to, from the goal-id bucket;
/// standalone, from the store. `None` for an id that names no goal.
async fn assignee_of(shared: &Shared, tenant: &str, id: &str) -> Result<Option<String>, ApiError> {
    match &shared.cluster {
        Some(m) => m.goal_assignee(tenant, id).await.map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e}; try again"))),
        None => Ok(shared.store.goal(tenant, id).map_err(internal)?.map(|g| g.assignee)),
    }
}

async fn to_assignee(shared: &Arc<Shared>, tenant: &str, assignee: &str, op: GoalOp) -> Result<Result<Option<GoalRecord>, String>, ApiError> {
    let (tx, rx) = oneshot::channel();
    shared.users.send(tenant, assignee, UserMsg::Goal { op, reply: tx }).map_err(internal)?;
    rx.await.map_err(|_| internal("the assignee's actor stopped"))
}

/// Assign a goal
///
/// The criterion is compiled against the tenant's catalogue first (422 `invalid_goal` names
/// the field). The assignee gets a `goal_assigned` push; when the criterion is met they get a
/// `goal_completed` push and the assigner a `notice`; past `due_at` the goal closes as missed
/// and both are told.
#[utoipa::path(post, path = "/v1/goals", tag = "goals", request_body = NewGoal,
    responses((status = 201, body = GoalDoc), (status = 200, description = "The same goal was already assigned", body = GoalDoc),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: the node serving the assignee could not be reached; try again", body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn create(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let g: NewGoal = json_body(body)?;
    valid_user("assignee", &g.assignee)?;
    valid_user("assigner", &g.assigner)?;
    if g.title.trim().is_empty() || g.title.len() > 200 {
        return Err(bad("invalid_body", "`title` must be 1 to 200 bytes"));
    }
    if !g.criterion.is_object() {
        return Err(bad("invalid_body", "`criterion` must be a rule object, e.g. {\"kind\": \"count\", ...}"));
    }
    // A made-up id names this node in cluster mode: two nodes counting from 1 in the same
    // millisecond would otherwise make the same one.
    let node = shared.cluster.as_ref().map(|m| format!("{}-", m.id.chars().take(24).collect::<String>())).unwrap_or_default();
    let id = g.id.clone().unwrap_or_else(|| format!("g-{node}{:x}-{:x}", now_ms(), NEXT.fetch_add(1, Ordering::Relaxed)));
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(bad("invalid_body", "`id` must be 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    let due = match &g.due_at {
        None => None,
        Some(t) => {
            let at = chrono::DateTime::parse_from_rfc3339(t).map_err(|_| bad("invalid_body", format!("due_at `{t}` is not an RFC 3339 time")))?.timestamp_millis();
            if at <= now_ms() {
                return Err(bad("invalid_body", "due_at is in the past"));
            }
            Some(at)
        }
    };
    let spec = GoalSpec { id: id.clone(), title: g.title.trim().to_string(), assigner: g.assigner, criterion: g.criterion.to_string(), due };
    let cat = shared.catalogue(&tenant).ok_or_else(|| internal("the tenant has no catalogue"))?;
    if let Err(e) = goal::catalogue_for(&spec, &cat) {
        let body = ErrorBody { error: "invalid_goal".into(), message: e.to_string(), badge: None, field: Some(e.field), revocation: None };
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response());
    }
    // Cluster mode: a goal id names one goal in the tenant, whoever it was given to, across
    // nodes; the goal itself is assigned on the node serving its assignee, with the id chosen
    // here (a retry that chose none gets a new one, as standalone).
    if let Some(m) = &shared.cluster {
        let named = m.claim_goal_id(&tenant, &id, &g.assignee).await.map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e}; try again")))?;
        if named != g.assignee {
            return Err(ApiError(StatusCode::CONFLICT, "goal_exists", format!("goal `{id}` already exists with other content")));
        }
        let body = serde_json::json!({ "id": id, "assignee": g.assignee, "assigner": spec.assigner, "title": g.title, "criterion": g.criterion, "due_at": g.due_at });
        if let Some(res) = at_assignees_node(&shared, &tenant, &g.assignee, method, &uri, &headers, Bytes::from(body.to_string())).await {
            return Ok(res);
        }
    }
    // A goal id names one goal in the tenant, whoever it was given to.
    let existing = shared.store.goal(&tenant, &id).map_err(internal)?;
    if let Some(e) = &existing
        && (e.assignee != g.assignee || e.spec != spec)
    {
        return Err(ApiError(StatusCode::CONFLICT, "goal_exists", format!("goal `{id}` already exists with other content")));
    }
    match to_assignee(&shared, &tenant, &g.assignee, GoalOp::Assign(spec)).await? {
        Ok(Some(r)) => {
            let status = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
            let notified = existing.is_some_and(|e| e.notified);
            Ok((status, Json(doc(GoalRecord { notified, ..r }))).into_response())
        }
        Ok(None) => Err(internal("the goal was not recorded")),
        Err(e) => Err(ApiError(StatusCode::CONFLICT, "goal_exists", e)),
    }
}

#[derive(Deserialize, IntoParams)]
pub struct GoalFilter {
    /// Goals given to this user.
    pub assignee: Option<String>,
    /// Goals given by this user.
    pub assigner: Option<String>,
    /// Only goals with this status.
    pub status: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GoalList {
    pub goals: Vec<GoalDoc>,
}

/// List goals by assignee or by assigner
#[utoipa::path(get, path = "/v1/goals", tag = "goals", params(GoalFilter),
    responses((status = 200, body = GoalList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: the node serving the assignee could not be reached; try again", body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap, Query(q): Query<GoalFilter>) -> Result<Response, ApiError> {
    if q.assignee.is_none() && q.assigner.is_none() {
        return Err(bad("invalid_query", "give `assignee` or `assigner`"));
    }
    if let Some(s) = &q.status
        && !["open", "completed", "missed", "cancelled"].contains(&s.as_str())
    {
        return Err(bad("invalid_query", "status must be open, completed, missed or cancelled"));
    }
    let all = match (&shared.cluster, &q.assignee) {
        // One assignee's goals live on the node serving her.
        (Some(_), Some(a)) => match at_assignees_node(&shared, &tenant, a, method, &uri, &headers, Bytes::new()).await {
            Some(res) => return Ok(res),
            None => local_goals(&shared, &tenant).await?,
        },
        // An assigner's are wherever their assignees are served.
        (Some(m), None) => m.goals_given_by(&tenant, q.assigner.as_deref().unwrap_or_default()).await.map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e}; try again")))?,
        (None, _) => local_goals(&shared, &tenant).await?,
    };
    let goals = all
        .into_iter()
        .filter(|g| q.assignee.as_ref().is_none_or(|a| *a == g.assignee))
        .filter(|g| q.assigner.as_ref().is_none_or(|a| *a == g.spec.assigner))
        .filter(|g| q.status.as_ref().is_none_or(|s| s == g.status.as_str()))
        .map(doc)
        .collect();
    Ok(Json(GoalList { goals }).into_response())
}

/// The tenant's goals in this node's store.
async fn local_goals(shared: &Shared, tenant: &str) -> Result<Vec<GoalRecord>, ApiError> {
    let store = shared.store.clone();
    let t = tenant.to_string();
    tokio::task::spawn_blocking(move || store.goals(&t)).await.map_err(internal)?.map_err(internal)
}

/// A goal, with the assignee's progress towards it
#[utoipa::path(get, path = "/v1/goals/{id}", tag = "goals", params(("id" = String, Path, description = "Goal id")),
    responses((status = 200, body = GoalDoc), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: the node serving the assignee could not be reached; try again", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    if let Some(res) = at_goals_node(&shared, &tenant, &id, method, &uri, &headers).await? {
        return Ok(res);
    }
    let g = shared.store.goal(&tenant, &id).map_err(internal)?.ok_or_else(|| not_found("not_found", format!("there is no goal `{id}`")))?;
    let open = g.status == GoalStatus::Open;
    let assignee = g.assignee.clone();
    let mut d = doc(g);
    if open {
        let now = now_ms();
        let gid = id.clone();
        d.progress = super::users::ask(&shared, &tenant, &assignee, move |v| goal::progress(v.state, &gid, now, v.catalogue)).await?;
    }
    Ok(Json(d).into_response())
}

/// Cluster mode: the answer of the node serving goal `id`'s assignee, when that is another
/// node; 404 for an id that names no goal.
async fn at_goals_node(shared: &Shared, tenant: &str, id: &str, method: axum::http::Method, uri: &axum::http::Uri, headers: &axum::http::HeaderMap) -> Result<Option<Response>, ApiError> {
    if shared.cluster.is_none() {
        return Ok(None);
    }
    let assignee = assignee_of(shared, tenant, id).await?.ok_or_else(|| not_found("not_found", format!("there is no goal `{id}`")))?;
    Ok(at_assignees_node(shared, tenant, &assignee, method, uri, headers, Bytes::new()).await)
}

/// Cancel a goal
///
/// An open goal becomes `cancelled`; a goal that already ended is returned as it is.
#[utoipa::path(delete, path = "/v1/goals/{id}", tag = "goals", params(("id" = String, Path, description = "Goal id")),
    responses((status = 200, body = GoalDoc), (status = 401, body = ErrorBody), (status = 503, description = "Cluster mode: the node serving the assignee could not be reached; try again", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn cancel(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    if let Some(res) = at_goals_node(&shared, &tenant, &id, method, &uri, &headers).await? {
        return Ok(res);
    }
    let g = shared.store.goal(&tenant, &id).map_err(internal)?.ok_or_else(|| not_found("not_found", format!("there is no goal `{id}`")))?;
    match to_assignee(&shared, &tenant, &g.assignee, GoalOp::Cancel(id)).await? {
        Ok(Some(r)) => Ok(Json(doc(GoalRecord { notified: g.notified, ..r })).into_response()),
        Ok(None) => Ok(Json(doc(g)).into_response()),
        Err(e) => Err(internal(e)),
    }
}
