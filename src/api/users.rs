//! The user routes of the HTTP API: what a user has, their progress towards badges, one owned
//! badge (the entitlement check), their stored events, and the two ways a backend takes
//! badges away: revoking one, and retracting an event behind them. Answered by the user's
//! actor, from durable state.

use crate::protocol::rfc3339;
use crate::shared::Shared;
use super::{bad, not_found, internal, json_body, Tenant, ErrorBody, ApiError, Page};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use crate::core::revoke::Holding;
use crate::user::{TakeError, Taken};
use serde::Deserialize;
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
    /// For a badge held for a period (`valid_for`): when it stops being held.
    pub expires_at: Option<String>,
}

/// A badge taken away: when, why, and what went with it.
#[derive(Serialize, ToSchema, Clone)]
pub struct RevocationDoc {
    pub badge: String,
    pub at: String,
    /// `api` (revoked through this API), `expired` (its `valid_for` ran out) or `retracted`
    /// (an event behind it was retracted).
    pub cause: String,
    pub reason: String,
    /// How many awards the user held.
    pub count: u32,
    /// The XP taken back with it.
    pub xp: u64,
    /// The record that took it (`revoke:…`, `retract:…`), or the event that saw it expire.
    pub event_id: String,
}

fn revocation_doc(badge: &str, r: &crate::core::Revocation) -> RevocationDoc {
    RevocationDoc { badge: badge.to_string(), at: rfc3339(r.at), cause: r.cause.as_str().into(), reason: r.reason.clone(), count: r.count, xp: r.xp, event_id: r.event_id.clone() }
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
    /// Badges taken away (the last revocation of each), including those earned again since.
    pub revoked: Vec<RevocationDoc>,
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
        expires_at: r.expires_at.map(rfc3339),
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
        S::Waits { open, lapsed } => json!({ "lapsed": lapsed, "waiting": open.iter().map(|(k, due)| json!({ "key": k, "due": rfc3339(*due) })).collect::<Vec<_>>() }),
    }
}

pub(super) fn user_doc(v: UserView<'_>, now: crate::core::Millis) -> UserDoc {
    let (st, cat) = (v.state, v.catalogue);
    // What is held at `now`: a badge whose `valid_for` ran out is gone even before an event
    // has seen it expire, and shown among the revocations.
    let mut revoked: Vec<RevocationDoc> = st.revoked.iter().filter(|(id, _)| !st.badges.contains_key(id.as_str())).map(|(id, r)| revocation_doc(id, r)).collect();
    let mut badges = Vec::new();
    for (id, r) in &st.badges {
        match crate::core::revoke::holding(st, id, now) {
            Holding::Expired { at, record } => revoked.push(expired_doc(id, at, record)),
            _ => badges.push(owned_badge(id, r, cat.badge(id))),
        }
    }
    for (id, r) in st.revoked.iter().filter(|(id, _)| st.badges.contains_key(id.as_str())) {
        revoked.push(revocation_doc(id, r));
    }
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
    UserDoc { user_id: st.user_id.clone(), xp: st.xp, level: st.level, badges, stats, attributes, revoked, events: st.events, offset: v.offset, catalogue_version: cat.version }
}

/// Get a user's XP, level, badges and stats
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = UserDoc), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get_user(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<Json<UserDoc>, ApiError> {
    let now = now_ms();
    ask(&shared, &tenant, &id, move |v| user_doc(v, now)).await.map(Json)
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

/// An expiry as a revocation shows it, for a badge whose `valid_for` ran out before any event
/// saw it (the next event records it, with the same time).
fn expired_doc(badge: &str, at: crate::core::Millis, r: &crate::core::BadgeRecord) -> RevocationDoc {
    RevocationDoc { badge: badge.to_string(), at: rfc3339(at), cause: "expired".into(), reason: crate::core::revoke::EXPIRED.into(), count: r.count, xp: 0, event_id: String::new() }
}

/// A 404 that says why a badge is not held: it was taken away (`revoked`) or ran out
/// (`expired`), with the revocation.
fn not_held(user: &str, r: RevocationDoc) -> Response {
    let (code, message) = if r.cause == "expired" {
        ("expired", format!("user `{user}` held `{}` until {}: its valid_for ran out", r.badge, r.at))
    } else {
        ("revoked", format!("`{}` was taken from user `{user}` at {} ({}): {}", r.badge, r.at, r.cause, r.reason))
    };
    let body = ErrorBody { error: code.into(), message, badge: None, field: None, revocation: Some(r) };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// Does the user hold this badge now? (entitlement check)
///
/// 200 with the award while it is held. 404 otherwise: `revoked` or `expired` (with the
/// `revocation`: when, why, what went with it) for a badge the user held, `not_owned` for one
/// never held, `unknown_badge` for a badge the catalogue does not have. An expiry is answered
/// as one from the moment it is due, whether or not an event has seen it yet.
#[utoipa::path(get, path = "/v1/users/{id}/badges/{badge}", tag = "users",
    params(("id" = String, Path, description = "User id"), ("badge" = String, Path, description = "Badge id")),
    responses((status = 200, body = OwnedBadge), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get_badge(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path((id, badge)): Path<(String, String)>) -> Result<Response, ApiError> {
    enum Found {
        Held(OwnedBadge),
        Gone(RevocationDoc),
        NotOwned,
        Unknown,
    }
    let b = badge.clone();
    let now = now_ms();
    let found = ask(&shared, &tenant, &id, move |v| {
        let def = v.catalogue.badge(&b);
        match crate::core::revoke::holding(v.state, &b, now) {
            Holding::Held(r) => Found::Held(owned_badge(&b, r, def)),
            Holding::Expired { at, record } => Found::Gone(expired_doc(&b, at, record)),
            Holding::Revoked(r) => Found::Gone(revocation_doc(&b, r)),
            Holding::Never if def.is_some() => Found::NotOwned,
            Holding::Never => Found::Unknown,
        }
    })
    .await?;
    match found {
        Found::Held(b) => Ok(Json(b).into_response()),
        Found::Gone(r) => Ok(not_held(&id, r)),
        Found::NotOwned => Err(not_found("not_owned", format!("user `{id}` does not own `{badge}`"))),
        Found::Unknown => Err(not_found("unknown_badge", format!("the catalogue has no badge `{badge}`"))),
    }
}

/// What to do with the XP a badge paid when it is taken away.
#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum XpChoice {
    /// Take it back (the level follows the XP down).
    ClawBack,
    /// Leave it with the user.
    Keep,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// Why, kept with the revocation and shown to the user (1 to 500 bytes).
    pub reason: String,
    /// `claw_back` or `keep`.
    pub xp: XpChoice,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetractBody {
    /// The id of the user's event to retract.
    pub event_id: String,
    /// Why, kept with the record and with each revocation it causes (1 to 500 bytes).
    pub reason: String,
    /// What to do with the XP of the badges that fall away: `claw_back` or `keep`. XP that XP
    /// rules paid for the event itself is kept.
    pub xp: XpChoice,
}

#[derive(Serialize, ToSchema)]
pub struct TakenDoc {
    pub user_id: String,
    /// `revoked`, `already_revoked` (sent again, or taken away before: nothing changed),
    /// `retracted` or `already_retracted`.
    pub status: String,
    /// For a revocation: the badge's revocation as it now stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationDoc>,
    /// Every badge taken by this request (with any expiry seen at the same moment).
    pub revoked: Vec<RevocationDoc>,
    /// The user's XP and level after it.
    pub xp: u64,
    pub level: u32,
}

fn valid_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() || reason.len() > 500 {
        return Err(bad("invalid_body", "`reason` must be 1 to 500 bytes of text"));
    }
    Ok(())
}

/// Sends a revocation or retraction to the user's actor (a user the tenant has never seen is
/// 404 `user_not_found`, as for every user route) and waits until it is durable.
async fn take(shared: &Arc<Shared>, tenant: &str, user: &str, msg: impl FnOnce(tokio::sync::oneshot::Sender<Result<Taken, TakeError>>) -> UserMsg) -> Result<Taken, ApiError> {
    // The same checks as a query's, and the user must exist: nothing is taken from nobody.
    ask(shared, tenant, user, |_| ()).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared.users.send(tenant, user, msg(tx)).map_err(internal)?;
    match rx.await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(TakeError::Failed(why))) => Err(internal(why)),
        Ok(Err(e)) => Err(match e {
            TakeError::UnknownBadge => not_found("unknown_badge", "the catalogue has no such badge, and the user never held one by that id"),
            TakeError::NotOwned => not_found("not_owned", format!("user `{user}` never held this badge")),
            TakeError::UnknownEvent => not_found("unknown_event", format!("user `{user}` has no event by that id (records the server made cannot be retracted)")),
            TakeError::LogIncomplete => ApiError(StatusCode::CONFLICT, "log_incomplete", "the user's oldest events are gone (retention), so the facts without this event cannot be recomputed".into()),
            TakeError::Failed(_) => unreachable!("matched above"),
        }),
        Err(_) => Err(why_down(shared, tenant, user).await),
    }
}

fn taken_docs(t: &Taken) -> Vec<RevocationDoc> {
    t.fx.iter()
        .filter_map(|e| match e {
            crate::core::Effect::Revoked { badge, cause, reason, count, xp, at, .. } => Some(RevocationDoc {
                badge: badge.to_string(),
                at: rfc3339(*at),
                cause: cause.as_str().into(),
                reason: reason.clone(),
                count: *count,
                xp: *xp,
                event_id: String::new(),
            }),
            _ => None,
        })
        .collect()
}

/// Revoke a user's badge
///
/// Takes the badge away now, with a reason, and the XP it paid if `xp` is `claw_back`. The user's
/// sockets get a `revoked` push and webhooks a `revoked` notification; the entitlement check
/// answers 404 `revoked` from then on. Sent again (or for a badge already taken away) it changes
/// nothing and answers `already_revoked`. The badge can be earned again on new facts only (see
/// docs/catalogue.md, "Revocation and expiry").
#[utoipa::path(post, path = "/v1/users/{id}/badges/{badge}/revoke", tag = "users", request_body = RevokeBody,
    params(("id" = String, Path, description = "User id"), ("badge" = String, Path, description = "Badge id")),
    responses((status = 200, body = TakenDoc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn revoke(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path((id, badge)): Path<(String, String)>, body: Result<Bytes, BytesRejection>) -> Result<Json<TakenDoc>, ApiError> {
    let b: RevokeBody = json_body(body)?;
    valid_reason(&b.reason)?;
    let claw_back = b.xp == XpChoice::ClawBack;
    let t = take(&shared, &tenant, &id, |reply| UserMsg::Revoke { badge: badge.clone(), reason: b.reason, claw_back, reply }).await?;
    let mut revoked = taken_docs(&t);
    let record = t.revocation.as_ref().map(|r| revocation_doc(&badge, r));
    for r in &mut revoked {
        r.event_id = record.as_ref().map(|x| x.event_id.clone()).unwrap_or_default();
    }
    let status = if t.changed { "revoked" } else { "already_revoked" };
    Ok(Json(TakenDoc { user_id: id, status: status.into(), revocation: record, revoked, xp: t.xp, level: t.level }))
}

/// Retract one of a user's events
///
/// For an event the backend sent earlier that turned out not to have happened (a refund, a
/// cheat): every stat and cached action it moved is recomputed without it (the user's log is
/// replayed from scratch with and without it), and each badge it earned that the facts left
/// no longer earn is taken away, pushed as `revoked` (cause `retracted`) and sent to webhooks.
/// Every later replay leaves the event out; its id stays used. Sent again it changes nothing
/// and answers `already_retracted`. Only the tenant's backend can retract: sockets cannot.
#[utoipa::path(post, path = "/v1/users/{id}/retractions", tag = "users", request_body = RetractBody,
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = TakenDoc), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("api_key" = [])))]
pub async fn retract(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> Result<Json<TakenDoc>, ApiError> {
    let b: RetractBody = json_body(body)?;
    valid_reason(&b.reason)?;
    if b.event_id.is_empty() || b.event_id.len() > crate::protocol::MAX_EVENT_ID {
        return Err(bad("invalid_body", format!("`event_id` must be 1 to {} bytes", crate::protocol::MAX_EVENT_ID)));
    }
    let claw_back = b.xp == XpChoice::ClawBack;
    let t = take(&shared, &tenant, &id, |reply| UserMsg::Retract { event_id: b.event_id, reason: b.reason, claw_back, reply }).await?;
    let revoked = taken_docs(&t);
    let status = if t.changed { "retracted" } else { "already_retracted" };
    Ok(Json(TakenDoc { user_id: id, status: status.into(), revocation: None, revoked, xp: t.xp, level: t.level }))
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
