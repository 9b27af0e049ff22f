//! The community-goal routes of the HTTP API (docs/teams.md, "Community goals"): the tenant's
//! goals with where each stands, and one goal. Standalone only: in cluster mode they answer
//! 501 `not_in_cluster`, since each node holds only its own users' shares.

use super::{internal, not_found, ErrorBody, Tenant};
use crate::api::ApiError;
use crate::clock::now_ms;
use crate::core::catalogue::CommunityGoalDef;
use crate::protocol::rfc3339;
use crate::shared::Shared;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// A community goal and where it stands.
#[derive(Serialize, ToSchema)]
pub struct CommunityGoalDoc {
    pub id: String,
    pub name: String,
    pub description: String,
    /// `count of <event type>` or `sum of <event type> <field>`.
    pub metric: String,
    pub target: f64,
    /// The total so far (the final one once it is closed).
    pub current: f64,
    /// Users with a share in it.
    pub participants: u64,
    pub starts: Option<String>,
    pub ends: String,
    /// `upcoming`, `open`, `closing` (ended, its outcome not written yet), `reached` or
    /// `missed`.
    pub status: String,
    pub closed_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CommunityGoalList {
    pub goals: Vec<CommunityGoalDoc>,
}

fn doc(shared: &Shared, tenant: &str, d: &CommunityGoalDef, now: i64) -> CommunityGoalDoc {
    let s = shared.community.standing(tenant, &d.key);
    let (current, participants, status, closed_at) = match &s.outcome {
        Some(o) => (o.total, o.participants, if o.reached { "reached" } else { "missed" }, Some(rfc3339(o.closed_at))),
        None if d.starts.is_some_and(|st| now < st) => (s.total, s.participants, "upcoming", None),
        None if now < d.ends => (s.total, s.participants, "open", None),
        None => (s.total, s.participants, "closing", None),
    };
    CommunityGoalDoc {
        id: d.id.to_string(),
        name: d.name.clone(),
        description: d.description.clone(),
        metric: d.describe.clone(),
        target: d.target,
        current,
        participants,
        starts: d.starts.map(rfc3339),
        ends: rfc3339(d.ends),
        status: status.into(),
        closed_at,
    }
}

fn served(shared: &Shared) -> Result<(), ApiError> {
    match shared.cluster {
        None => Ok(()),
        Some(_) => Err(ApiError(StatusCode::NOT_IMPLEMENTED, "not_in_cluster", "community goals are served by a standalone server only, for now (docs/teams.md)".into())),
    }
}

/// The tenant's community goals
#[utoipa::path(get, path = "/v1/community-goals", tag = "teams",
    responses((status = 200, body = CommunityGoalList), (status = 401, body = ErrorBody), (status = 501, body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant) -> Result<Json<CommunityGoalList>, ApiError> {
    served(&shared)?;
    let cat = shared.catalogue(&tenant).ok_or_else(|| internal("the tenant has no catalogue"))?;
    let now = now_ms();
    Ok(Json(CommunityGoalList { goals: cat.community.iter().map(|d| doc(&shared, &tenant, d, now)).collect() }))
}

/// A community goal
#[utoipa::path(get, path = "/v1/community-goals/{id}", tag = "teams", params(("id" = String, Path, description = "Community goal id")),
    responses((status = 200, body = CommunityGoalDoc), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 501, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<Json<CommunityGoalDoc>, ApiError> {
    served(&shared)?;
    let cat = shared.catalogue(&tenant).ok_or_else(|| internal("the tenant has no catalogue"))?;
    let d = cat.community.iter().find(|d| *d.id == *id).ok_or_else(|| not_found("not_found", format!("there is no community goal `{id}`")))?;
    Ok(Json(doc(&shared, &tenant, d, now_ms())))
}
