//! The team routes of the HTTP API (docs/teams.md): create or change a team (its name, time
//! zone and attributes, as a profile event through the team's actor), read it (its XP, level,
//! badges, stats and members), and add or remove members. A membership is written on both
//! sides, each by its own actor: the team's list of members, then the member's list of teams,
//! which her contributions follow.
//!
//! In cluster mode a team's routes are answered by the node serving the team, and a member's
//! side of a membership is changed by the node serving her.

use super::users::{ask_entity, user_doc, OwnedBadge, StatView};
use super::{bad, internal, json_body, not_found, ApiError, ErrorBody, Tenant};
use crate::clock::now_ms;
use crate::core::catalogue::{team_entity, valid_team_id, valid_user_id, PROFILE_EVENT};
use crate::core::{Event, Value};
use crate::shared::Shared;
use crate::user::{LinkError, Origin, UserMsg};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use utoipa::ToSchema;

/// Members a team document lists (`member_count` counts them all).
const LISTED_MEMBERS: usize = 1_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamChange {
    /// The team's name, 1 to 200 bytes.
    pub name: String,
    /// An IANA time zone (e.g. `Europe/Paris`): the team's days and weeks for calendar rules.
    pub timezone: Option<String>,
    /// Attributes (strings, numbers or booleans), as for a user's profile.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct TeamDoc {
    pub team_id: String,
    pub name: String,
    pub xp: u64,
    pub level: u32,
    pub badges: Vec<OwnedBadge>,
    pub stats: Vec<StatView>,
    #[schema(value_type = Object)]
    pub attributes: serde_json::Value,
    /// Contributions counted (and profile changes).
    pub events: u64,
    pub member_count: usize,
    /// The members, in id order (the first 1,000).
    pub members: Vec<String>,
    /// Where the team stands on each board of teams with an open period it has a score in.
    pub standings: Vec<TeamStanding>,
    pub catalogue_version: u64,
}

/// A team's place on one board of teams, in its open period.
#[derive(Serialize, ToSchema)]
pub struct TeamStanding {
    pub board: String,
    pub period: String,
    /// The team's league on a segmented board.
    pub segment: Option<String>,
    /// Absent past the board's size.
    pub rank: Option<usize>,
    pub score: f64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub user_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct Membership {
    pub team_id: String,
    pub user_id: String,
    /// False when she was a member already.
    pub joined: bool,
}

/// Membership changes of one team, one at a time in this process (in cluster mode all of a
/// team's routes come to the node serving it): an add and a remove of the same member cannot
/// interleave their two steps and leave one side without the other.
fn changing(tenant: &str, team: &str) -> Arc<tokio::sync::Mutex<()>> {
    static CHANGING: std::sync::LazyLock<dashmap::DashMap<(String, String), Arc<tokio::sync::Mutex<()>>>> = std::sync::LazyLock::new(Default::default);
    CHANGING.entry((tenant.to_string(), team.to_string())).or_default().clone()
}

/// In cluster mode a team's routes are answered by the node serving the team (as a user's by
/// hers); a member's side of a membership is changed on the node serving her (`link`).
pub(super) async fn to_team_owner(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(params): Path<std::collections::HashMap<String, String>>, req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    match params.get("id").filter(|id| valid_team_id(id)) {
        Some(id) => super::users::relay_unless_served(&shared, &tenant, &team_entity(id), req, next).await,
        None => next.run(req).await,
    }
}

fn team_id(id: &str) -> Result<String, ApiError> {
    if !valid_team_id(id) {
        return Err(bad("invalid_team", "a team id is 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    Ok(team_entity(id))
}

/// The tenant's team limits, or 409 when its catalogue has no `[teams]` section.
fn limits(shared: &Shared, tenant: &str) -> Result<(usize, usize), ApiError> {
    let cat = shared.catalogue(tenant).ok_or_else(|| internal("the tenant has no catalogue"))?;
    match &cat.teams {
        Some(t) => Ok((t.max_members, t.max_teams_per_user)),
        None => Err(ApiError(StatusCode::CONFLICT, "no_teams", "the tenant's catalogue has no [teams] section: add one to count teams (docs/teams.md)".into())),
    }
}

/// The team's document, or 404 for a team never created.
async fn team_doc(shared: &Arc<Shared>, tenant: &str, id: &str) -> Result<TeamDoc, ApiError> {
    let entity = team_id(id)?;
    let missing = || not_found("unknown_team", format!("no team `{id}`; create it with PUT /v1/teams/{id}"));
    let now = crate::clock::now_ms();
    let doc = ask_entity(shared, tenant, &entity, move |v| {
        let name = match v.state.attributes.get("name") {
            Some(Value::Str(n)) => Some(n.to_string()),
            _ => None,
        };
        (name, user_doc(v, now))
    })
    .await
    .map_err(|e| if e.1 == "user_not_found" { missing() } else { e })?;
    let (Some(name), d) = doc else { return Err(missing()) };
    let (store, t, e) = (shared.store.clone(), tenant.to_string(), entity.clone());
    let members = tokio::task::spawn_blocking(move || store.links_of(&t, &e)).await.map_err(internal)?.map_err(internal)?;
    let mut standings = Vec::new();
    if let Some(cat) = shared.catalogue(tenant) {
        for (def, owner) in cat.all_boards().filter(|(d, _)| d.ranks_teams) {
            let Ok(period) = super::leaderboards::open_period(def, owner) else { continue };
            let found = super::leaderboards::find(shared, tenant, def, &period, vec![entity.clone()]).await?.pop().and_then(|(_, f)| f);
            if let Some((segment, rank, e)) = found {
                let segment = def.segment_by.as_ref().and((!segment.is_empty()).then_some(segment));
                standings.push(TeamStanding { board: def.id.to_string(), period, segment, rank, score: e.score });
            }
        }
    }
    Ok(TeamDoc {
        team_id: id.to_string(),
        name,
        xp: d.xp,
        level: d.level,
        badges: d.badges,
        stats: d.stats,
        attributes: d.attributes,
        events: d.events,
        member_count: members.len(),
        members: members.into_iter().take(LISTED_MEMBERS).collect(),
        standings,
        catalogue_version: d.catalogue_version,
    })
}

/// Create or change a team
///
/// The name, time zone and attributes go to the team as a profile change; the team is created
/// by its first one. 409 `no_teams` when the catalogue has no `[teams]` section.
#[utoipa::path(put, path = "/v1/teams/{id}", tag = "teams", params(("id" = String, Path, description = "Team id")), request_body = TeamChange,
    responses((status = 200, body = TeamDoc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)), security(("api_key" = [])))]
pub async fn put_team(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> Result<Json<TeamDoc>, ApiError> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let entity = team_id(&id)?;
    limits(&shared, &tenant)?;
    let c: TeamChange = json_body(body)?;
    if c.name.trim().is_empty() || c.name.len() > 200 {
        return Err(bad("invalid_body", "`name` must be 1 to 200 bytes"));
    }
    let mut payload = vec![("name".to_string(), Value::Str(c.name.trim().into()))];
    if let Some(tz) = c.timezone {
        payload.push(("timezone".into(), Value::Str(tz.as_str().into())));
    }
    for (k, v) in c.attributes {
        if k == "name" || k == "timezone" {
            return Err(bad("invalid_body", format!("`{k}` is a field of its own, not an attribute")));
        }
        payload.push((k, Value::from_json(&v)));
    }
    let now = now_ms();
    let event = Event {
        // Reserved, so no client's event can hold the id first.
        event_id: format!("{}team-profile:{now:x}-{:x}", crate::protocol::RESERVED_ID_PREFIX, NEXT.fetch_add(1, Ordering::Relaxed)),
        event_type: PROFILE_EVENT.into(),
        user_id: entity.clone(),
        tenant_id: tenant.clone(),
        occurred_at: now,
        source: "api".into(),
        payload,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let msg = UserMsg::Event { event, received_at: now, arrived: tokio::time::Instant::now(), origin: Origin::Http(tx), permit: None };
    shared.users.send(&tenant, &entity, msg).map_err(internal)?;
    let outcome = rx.await.map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the team's actor stopped; try again".into()))?;
    match outcome.code.as_deref() {
        None => {}
        Some("unavailable") => return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", outcome.reason.unwrap_or_default())),
        Some(_) => return Err(bad("invalid_body", outcome.reason.unwrap_or_default())),
    }
    team_doc(&shared, &tenant, &id).await.map(Json)
}

/// Get a team: its XP, level, badges, stats and members
#[utoipa::path(get, path = "/v1/teams/{id}", tag = "teams", params(("id" = String, Path, description = "Team id")),
    responses((status = 200, body = TeamDoc), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get_team(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<Json<TeamDoc>, ApiError> {
    limits(&shared, &tenant)?;
    team_doc(&shared, &tenant, &id).await.map(Json)
}

/// One side of a membership, through its entity's actor (on the node serving it).
async fn link(shared: &Shared, tenant: &str, entity: &str, other: &str, join: bool, limit: usize) -> Result<Result<bool, LinkError>, ApiError> {
    if let Some(m) = &shared.cluster
        && !m.serves(tenant, entity)
    {
        return m.link(tenant, entity, other, join, limit).await.map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e}; try again")));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared.users.send(tenant, entity, UserMsg::Link { other: other.into(), join, limit, reply: tx }).map_err(internal)?;
    rx.await.map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "an actor stopped; try again".into()))
}

fn failed(e: LinkError) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e}; try again"))
}

/// Add a member
///
/// Her events count toward the team from now on (not those before). 409 `team_full` past the
/// catalogue's `max_members`, 409 `too_many_teams` past its `max_teams_per_user`.
#[utoipa::path(post, path = "/v1/teams/{id}/members", tag = "teams", params(("id" = String, Path, description = "Team id")), request_body = NewMember,
    responses((status = 200, body = Membership), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("api_key" = [])))]
pub async fn add_member(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> Result<Json<Membership>, ApiError> {
    let entity = team_id(&id)?;
    let (max_members, max_teams) = limits(&shared, &tenant)?;
    let m: NewMember = json_body(body)?;
    if !valid_user_id(&m.user_id) {
        return Err(bad("invalid_user", "a user id is 1 to 128 bytes with no NUL, not beginning with U+0001"));
    }
    team_doc(&shared, &tenant, &id).await?;
    let _one = changing(&tenant, &entity).lock_owned().await;
    // The team's side first, where its limit is kept; then hers, which her events follow. Her
    // side refused (her limit), the team's is taken back.
    let on_team = match link(&shared, &tenant, &entity, &m.user_id, true, max_members).await? {
        Ok(added) => added,
        Err(LinkError::Full(n)) => return Err(ApiError(StatusCode::CONFLICT, "team_full", format!("team `{id}` has {n} members, the most the catalogue allows (teams.max_members)"))),
        Err(e) => return Err(failed(e)),
    };
    match link(&shared, &tenant, &m.user_id, &entity, true, max_teams).await? {
        Ok(added) => Ok(Json(Membership { team_id: id, user_id: m.user_id, joined: added || on_team })),
        Err(e) => {
            if on_team && !matches!(link(&shared, &tenant, &entity, &m.user_id, false, max_members).await, Ok(Ok(_))) {
                tracing::error!(tenant, team = id, user = m.user_id, "a member refused by her own limit is still on the team's list; remove her (DELETE) to set it right");
            }
            match e {
                LinkError::Full(n) => Err(ApiError(StatusCode::CONFLICT, "too_many_teams", format!("`{}` belongs to {n} teams, the most the catalogue allows (teams.max_teams_per_user)", m.user_id))),
                e => Err(failed(e)),
            }
        }
    }
}

/// Remove a member
///
/// Her events stop counting toward the team; what they counted stays.
#[utoipa::path(delete, path = "/v1/teams/{id}/members/{user}", tag = "teams", params(("id" = String, Path, description = "Team id"), ("user" = String, Path, description = "User id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn remove_member(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path((id, user)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    let entity = team_id(&id)?;
    let (max_members, max_teams) = limits(&shared, &tenant)?;
    if !valid_user_id(&user) {
        return Err(bad("invalid_user", "a user id is 1 to 128 bytes with no NUL, not beginning with U+0001"));
    }
    team_doc(&shared, &tenant, &id).await?;
    let _one = changing(&tenant, &entity).lock_owned().await;
    // Hers first: her events stop counting at once. A failure of the second step is answered
    // 503; sent again, the removal finishes it.
    let hers = link(&shared, &tenant, &user, &entity, false, max_teams).await?.map_err(failed)?;
    let team = link(&shared, &tenant, &entity, &user, false, max_members).await?.map_err(failed)?;
    if !hers && !team {
        return Err(not_found("not_a_member", format!("`{user}` is not a member of team `{id}`")));
    }
    Ok(StatusCode::NO_CONTENT)
}
