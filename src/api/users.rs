//! The user routes of the HTTP API: what a user has, their progress towards badges, one owned
//! badge, and their stored events. Answered by the user's actor, from durable state.

use crate::protocol::rfc3339;
use crate::shared::Shared;
use super::{bad, not_found, internal, Tenant, ErrorBody, ApiError, Page};
use crate::clock::now_ms;
use crate::user::{UserMsg, UserView};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value as Json_};
use std::sync::Arc;
use utoipa::ToSchema;

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

/// In cluster mode, a request about a user another node serves is relayed there whole and
/// answered by that node's router; one relayed here for a user this node no longer serves is
/// `unavailable` (try again) rather than answered from a disk that may not hold her.
pub(super) async fn to_owner(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(params): Path<std::collections::HashMap<String, String>>, req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    match params.get("id") {
        Some(user) => relay_unless_served(&shared, &tenant, user, req, next).await,
        None => next.run(req).await,
    }
}

/// Answers `req` here when this node serves `key`'s partition (or there is no cluster), and
/// otherwise relays it to the node that does.
pub(super) async fn relay_unless_served(shared: &Shared, tenant: &str, key: &str, req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(m) = &shared.cluster else { return next.run(req).await };
    if m.serves(tenant, key) {
        return next.run(req).await;
    }
    let unavailable = |why: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why).into_response();
    if req.headers().contains_key(crate::remote::RELAYED) {
        return unavailable("this node no longer serves what was asked; try again".into());
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, super::MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return bad("invalid_body", format!("the body could not be read: {e}")).into_response(),
    };
    match m.relay(tenant, key, axum::http::Request::from_parts(parts, body)).await {
        Ok(res) => res.map(axum::body::Body::from).into_response(),
        Err(e) => unavailable(format!("{e}; try again")),
    }
}

/// Asks a user's actor a question; 404 for a user the tenant has never seen.
pub(super) async fn ask<T: Send + 'static>(shared: &Arc<Shared>, tenant: &str, user: &str, f: impl FnOnce(UserView<'_>) -> T + Send + 'static) -> Result<T, ApiError> {
    if !crate::core::catalogue::valid_user_id(user) {
        return Err(bad("invalid_user", "a user id is 1 to 128 bytes with no NUL, not beginning with U+0001"));
    }
    ask_entity(shared, tenant, user, f).await
}

/// `ask` for any entity of the tenant: a user, or a team (`core::catalogue::team_entity`).
pub(super) async fn ask_entity<T: Send + 'static>(shared: &Arc<Shared>, tenant: &str, user: &str, f: impl FnOnce(UserView<'_>) -> T + Send + 'static) -> Result<T, ApiError> {
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
pub(super) async fn why_down(shared: &Arc<Shared>, tenant: &str, user: &str) -> ApiError {
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
        S::Calendar(b) => json!({ "reached": b.count(), "totals": b.open.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>() }),
    }
}

pub(super) fn user_doc(v: UserView<'_>) -> UserDoc {
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
pub async fn get_user(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<Json<UserDoc>, ApiError> {
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
pub async fn get_progress(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<Json<ProgressDoc>, ApiError> {
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
pub async fn get_badge(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path((id, badge)): Path<(String, String)>) -> Result<Json<OwnedBadge>, ApiError> {
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
/// The accepted events, oldest first, with what each pushed, and the records the server made
/// for the user (`accolade.backfill`, `accolade.goal`, `accolade.notice`,
/// `accolade.leaderboard`, and `accolade.duplicate` for an id acknowledged as a duplicate by
/// fingerprint). Events older than the retention period are gone.
#[utoipa::path(get, path = "/v1/users/{id}/events", tag = "users", params(("id" = String, Path, description = "User id"), Page),
    responses((status = 200, body = EventLog), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get_events(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, Query(page): Query<Page>) -> Result<Json<EventLog>, ApiError> {
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
