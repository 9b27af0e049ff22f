//! The leaderboard routes of the HTTP API: the boards a tenant has, the standings of the open
//! period (or of a closed one, from its archive), a user's rank and neighbours, the standings
//! of a list of users (friends), and the closed periods.

use super::{bad, internal, json_body, not_found, ErrorBody, Tenant};
use crate::core::catalogue::{BoardDef, BoardMetric};
use crate::core::Catalogue;
use crate::ranking::{Row, MAX_TOP};
use crate::protocol::rfc3339;
use crate::api::ApiError;
use crate::shared::Shared;
use crate::standings::{self, Entry, Question, Reply};
use crate::store::BoardKey;
use crate::clock::now_ms;
use axum::http::StatusCode;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// A leaderboard as the catalogue defines it, with its open period.
#[derive(Serialize, ToSchema)]
pub struct BoardDoc {
    pub id: String,
    pub name: String,
    /// `xp`, `count of <event type>` or `sum of <event type> <field>`.
    pub metric: String,
    /// `all_time`, `daily`, `weekly`, `monthly` or `custom`.
    pub period: String,
    /// The open period: its label (`2026-11-22`, `2026-W47`, `2026-11`, `all`, `custom`) and
    /// bounds; absent for a custom period that has not started or has ended.
    pub current: Option<PeriodDoc>,
    pub segment_by: Option<String>,
    pub size: Option<usize>,
    /// The badge given to the top N when a period closes.
    pub award: Option<AwardDoc>,
    /// What it ranks: `users`, or `teams` for a board of the catalogue's `[teams]` section
    /// (its rows name `team_id` instead of `user_id`).
    pub ranks: String,
}

#[derive(Serialize, ToSchema)]
pub struct PeriodDoc {
    pub label: String,
    pub starts: Option<String>,
    pub ends: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AwardDoc {
    pub badge: String,
    pub top: usize,
}

/// `cat` is the catalogue the board belongs to (the team catalogue for a board of teams).
fn board_doc(def: &BoardDef, cat: &Catalogue, now: i64) -> BoardDoc {
    let current = def.period.span(cat.settings.default_timezone, now).map(|s| PeriodDoc {
        label: s.label,
        starts: (s.start != i64::MIN).then(|| rfc3339(s.start)),
        ends: (s.end != i64::MAX).then(|| rfc3339(s.end)),
    });
    let metric = match def.metric {
        BoardMetric::Xp => "xp".to_string(),
        _ => def.describe.clone(),
    };
    BoardDoc {
        id: def.id.to_string(),
        name: def.name.clone(),
        metric,
        period: def.period.as_str().into(),
        current,
        segment_by: def.segment_by.clone(),
        size: def.size,
        award: def.award.map(|(b, top)| AwardDoc { badge: cat.badges[b].id.to_string(), top }),
        ranks: if def.ranks_teams { "teams" } else { "users" }.into(),
    }
}

fn board<'a>(cat: &'a Catalogue, id: &str) -> Result<&'a BoardDef, ApiError> {
    cat.board(id).map(|(d, _)| d).ok_or_else(|| not_found("not_found", format!("there is no leaderboard `{id}`")))
}

/// A board of users for the routes that name users; a board of teams is refused with the route
/// to ask instead.
fn users_board<'a>(cat: &'a Catalogue, id: &str) -> Result<&'a BoardDef, ApiError> {
    let def = board(cat, id)?;
    if def.ranks_teams {
        return Err(bad("ranks_teams", format!("leaderboard `{id}` ranks teams, not users; ask /v1/leaderboards/{id}/teams/{{team}}, or a user's teams at /v1/teams/{{team}}")));
    }
    Ok(def)
}

fn catalogue(shared: &Shared, tenant: &str) -> Result<Arc<Catalogue>, ApiError> {
    shared.catalogue(tenant).ok_or_else(|| internal("the tenant has no catalogue"))
}

/// The open period's label, or 404 when a custom period is not open.
pub(super) fn open_period(def: &BoardDef, cat: &Catalogue) -> Result<String, ApiError> {
    def.period
        .span(cat.settings.default_timezone, now_ms())
        .map(|s| s.label)
        .ok_or_else(|| not_found("no_open_period", format!("leaderboard `{}` has no open period now; ask for a closed one with ?period=", def.id)))
}

/// In cluster mode, the routes that read a board's closed periods are answered by the node
/// serving the board's partition, whose store holds them (their records are in that
/// partition's changelog); other nodes relay them there.
pub(super) async fn to_board_owner(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(params): Path<std::collections::HashMap<String, String>>, req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    match params.get("id") {
        Some(board) => super::users::relay_unless_served(&shared, &tenant, &standings::board_partition_key(board), req, next).await,
        None => next.run(req).await,
    }
}

/// The deepest rank a page of standings reaches in cluster mode: each node sends its first
/// that many, and an answer must fit one NATS message.
pub const DEEPEST_IN_CLUSTER: usize = 5000;

/// Asks about standings: this node's rankings, or in cluster mode every node's, merged.
async fn ask(shared: &Shared, q: Question) -> Result<Reply, ApiError> {
    match &shared.cluster {
        None => Ok(standings::answer(&shared.boards, &q, &|_, _| true)),
        Some(m) => m.gather(&q).await.map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e)),
    }
}

fn mismatch() -> ApiError {
    internal("a question about standings got an answer of another kind")
}

/// Standings from rank `from` (1-based), at most `n`, within the board's size, and how many
/// the league has within it.
async fn top(shared: &Shared, key: &BoardKey, size: Option<usize>, from: usize, n: usize) -> Result<(usize, Vec<Row>), ApiError> {
    if shared.cluster.is_none() {
        return Ok(shared.boards.top(key, size, from, n));
    }
    let cap = size.unwrap_or(usize::MAX);
    let last = from.saturating_sub(1).saturating_add(n).min(cap);
    if last > DEEPEST_IN_CLUSTER {
        return Err(bad("invalid_query", format!("in cluster mode standings are given down to rank {DEEPEST_IN_CLUSTER}; ask for a page above it")));
    }
    let Reply::Top { total, rows } = ask(shared, Question::Top { key: key.clone(), after: None, limit: last }).await? else { return Err(mismatch()) };
    let rows = rows.into_iter().enumerate().skip(from.saturating_sub(1)).map(|(i, e)| Row::new(i + 1, e.user, e.score)).collect();
    Ok((total.min(cap), rows))
}

/// Where each of `users` stands in an open period: league, rank (None past the board's size)
/// and standing; None for a user with no score in it.
pub(super) async fn find(shared: &Shared, tenant: &str, def: &BoardDef, period: &str, users: Vec<String>) -> Result<Vec<(String, Option<(String, Option<usize>, Entry)>)>, ApiError> {
    let q = Question::Find { tenant: tenant.into(), board: def.id.to_string(), period: period.into(), users: users.clone() };
    let Reply::Found(found) = ask(shared, q).await? else { return Err(mismatch()) };
    // One count of who is ahead per league.
    let mut by_segment: std::collections::BTreeMap<String, Vec<Entry>> = Default::default();
    for (segment, e) in &found {
        by_segment.entry(segment.clone()).or_default().push(e.clone());
    }
    let mut ranked: std::collections::HashMap<String, (String, Option<usize>, Entry)> = Default::default();
    for (segment, of) in by_segment {
        let key = BoardKey { tenant: tenant.into(), board: def.id.to_string(), period: period.into(), segment: segment.clone() };
        let Reply::Ahead(ahead) = ask(shared, Question::Ahead { key, of: of.clone() }).await? else { return Err(mismatch()) };
        for (e, n) in of.into_iter().zip(ahead) {
            let rank = (n < def.size.unwrap_or(usize::MAX)).then_some(n + 1);
            ranked.insert(e.user.clone(), (segment.clone(), rank, e));
        }
    }
    Ok(users.into_iter().map(|u| {
        let found = ranked.get(&u).cloned();
        (u, found)
    }).collect())
}

#[derive(Serialize, ToSchema)]
pub struct BoardList {
    pub leaderboards: Vec<BoardDoc>,
}

/// The tenant's leaderboards
#[utoipa::path(get, path = "/v1/leaderboards", tag = "leaderboards",
    responses((status = 200, body = BoardList), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
pub async fn list(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant) -> Result<Json<BoardList>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    let now = now_ms();
    Ok(Json(BoardList { leaderboards: cat.all_boards().map(|(b, owner)| board_doc(b, owner, now)).collect() }))
}

#[derive(Deserialize, IntoParams)]
pub struct StandingsQuery {
    /// A closed period's label (from `/periods`); the open period when absent.
    pub period: Option<String>,
    /// The league, for a board split by a user attribute (its value).
    pub segment: Option<String>,
    /// The first rank to return (default 1).
    pub from: Option<usize>,
    /// At most this many (default 10, at most 100).
    pub limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct Standings {
    pub board: String,
    pub period: String,
    pub segment: Option<String>,
    /// Whether this period is closed (read from its archive).
    pub closed: bool,
    /// Users ranked in this league (within the board's size).
    pub total: usize,
    /// Higher scores first; equal scores by who reached the score first, then by user id.
    pub entries: Vec<Row>,
}

/// Standings: the top of a board, or any page of it
///
/// Ranks are 1, 2, 3, ... with no shared ranks: of two equal scores, the one reached first
/// (by the server's receive time) ranks higher, then the lower user id.
#[utoipa::path(get, path = "/v1/leaderboards/{id}", tag = "leaderboards", params(("id" = String, Path, description = "Leaderboard id"), StandingsQuery),
    responses((status = 200, body = Standings), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "Cluster mode: part of the board is between nodes for a moment; ask again", body = ErrorBody)), security(("api_key" = [])))]
pub async fn standings(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, Query(q): Query<StandingsQuery>) -> Result<Json<Standings>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    let def = board(&cat, &id)?;
    let from = q.from.unwrap_or(1);
    let limit = q.limit.unwrap_or(10);
    if from == 0 || limit == 0 || limit > MAX_TOP {
        return Err(bad("invalid_query", format!("from must be at least 1 and limit from 1 to {MAX_TOP}")));
    }
    if def.segment_by.is_some() && q.segment.is_none() {
        return Err(bad("invalid_query", format!("leaderboard `{id}` has a league per `{}`; name one with ?segment=", def.segment_by.as_deref().unwrap_or_default())));
    }
    let segment = q.segment.clone().unwrap_or_default();
    let open = def.period.span(cat.settings.default_timezone, now_ms()).map(|s| s.label);
    let period = match (&q.period, &open) {
        (Some(p), _) => p.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => return Err(open_period(def, &cat).unwrap_err()),
    };
    let key = BoardKey { tenant: tenant.clone(), board: id.clone(), period: period.clone(), segment: segment.clone() };
    let closed = shared.store.closed(&tenant, &id, &period).map_err(internal)?;
    let (closed, total, entries) = match closed {
        Some(c) => {
            let total = c.segments.iter().find(|(s, _)| *s == segment).map_or(0, |(_, n)| *n as usize);
            let rows = shared.store.archived(&key, from.min(u32::MAX as usize) as u32, limit).map_err(internal)?;
            (true, total, rows.into_iter().map(|(rank, a)| Row::new(rank as usize, a.user, a.score)).collect())
        }
        None if Some(&period) == open.as_ref() || has_period(&shared, &tenant, &id, &period).await? => {
            let (total, rows) = top(&shared, &key, def.size, from, limit).await?;
            (false, total, rows)
        }
        None => return Err(not_found("not_found", format!("leaderboard `{id}` has no period `{period}`"))),
    };
    Ok(Json(Standings { board: id, period, segment: q.segment, closed, total, entries }))
}

/// Whether a period not open now still has standings (it ended and is not closed yet).
async fn has_period(shared: &Shared, tenant: &str, board: &str, period: &str) -> Result<bool, ApiError> {
    let Reply::Segments(s) = ask(shared, Question::Segments { tenant: tenant.into(), board: board.into(), period: period.into() }).await? else { return Err(mismatch()) };
    Ok(!s.is_empty())
}

#[derive(Deserialize, IntoParams)]
pub struct AroundQuery {
    /// How many users above and below to include (default 2, at most 50).
    pub around: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct UserRank {
    pub board: String,
    pub period: String,
    pub user_id: String,
    /// The user's league on a segmented board.
    pub segment: Option<String>,
    /// Absent when the user has no score this period, or is outside the board's size.
    pub rank: Option<usize>,
    pub score: f64,
    /// The users around them, in rank order (the user included).
    pub around: Vec<Row>,
}

/// A user's rank, and the users around them
#[utoipa::path(get, path = "/v1/leaderboards/{id}/users/{user}", tag = "leaderboards",
    params(("id" = String, Path, description = "Leaderboard id"), ("user" = String, Path, description = "User id"), AroundQuery),
    responses((status = 200, body = UserRank), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "Cluster mode: part of the board is between nodes for a moment; ask again", body = ErrorBody)), security(("api_key" = [])))]
pub async fn user_rank(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path((id, user)): Path<(String, String)>, Query(q): Query<AroundQuery>) -> Result<Json<UserRank>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    let def = users_board(&cat, &id)?;
    let (period, segment, rank, score, around) = rank_of(&shared, &tenant, &cat, def, &user, q.around).await?;
    Ok(Json(UserRank { board: id, period, user_id: user, segment, rank, score, around }))
}

#[derive(Serialize, ToSchema)]
pub struct TeamRank {
    pub board: String,
    pub period: String,
    pub team_id: String,
    /// The team's league on a segmented board (by a team attribute).
    pub segment: Option<String>,
    /// Absent when the team has no score this period, or is outside the board's size.
    pub rank: Option<usize>,
    pub score: f64,
    /// The teams around it, in rank order (the team included).
    pub around: Vec<Row>,
}

/// A team's rank on a board of teams, and the teams around it
#[utoipa::path(get, path = "/v1/leaderboards/{id}/teams/{team}", tag = "leaderboards",
    params(("id" = String, Path, description = "Leaderboard id (a board of teams)"), ("team" = String, Path, description = "Team id"), AroundQuery),
    responses((status = 200, body = TeamRank), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "Cluster mode: part of the board is between nodes for a moment; ask again", body = ErrorBody)), security(("api_key" = [])))]
pub async fn team_rank(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path((id, team)): Path<(String, String)>, Query(q): Query<AroundQuery>) -> Result<Json<TeamRank>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    let def = board(&cat, &id)?;
    if !def.ranks_teams {
        return Err(bad("ranks_users", format!("leaderboard `{id}` ranks users, not teams; ask /v1/leaderboards/{id}/users/{{user}}")));
    }
    if !crate::core::catalogue::valid_team_id(&team) {
        return Err(bad("invalid_team", "a team id is 1 to 64 letters, digits, '-', '_' or '.'"));
    }
    let entity = crate::core::catalogue::team_entity(&team);
    let (period, segment, rank, score, around) = rank_of(&shared, &tenant, &cat, def, &entity, q.around).await?;
    Ok(Json(TeamRank { board: id, period, team_id: team, segment, rank, score, around }))
}

/// Where entity `who` (a user, or a team's entity id) stands in the open period, and who is
/// around it: (period, league, rank, score, rows).
async fn rank_of(shared: &Shared, tenant: &str, cat: &Catalogue, def: &BoardDef, who: &str, around: Option<usize>) -> Result<(String, Option<String>, Option<usize>, f64, Vec<Row>), ApiError> {
    let around = around.unwrap_or(2);
    if around > 50 {
        return Err(bad("invalid_query", "around must be at most 50"));
    }
    let period = open_period(def, cat)?;
    let found = find(shared, tenant, def, &period, vec![who.to_string()]).await?.pop().and_then(|(_, f)| f);
    let (segment, rank, score) = match &found {
        Some((s, r, e)) => (s.clone(), *r, e.score),
        None => (String::new(), None, 0.0),
    };
    let (rank, rows) = match (rank, found) {
        (Some(_), Some((_, _, me))) => {
            let key = BoardKey { tenant: tenant.into(), board: def.id.to_string(), period: period.clone(), segment: segment.clone() };
            let Reply::Around { ahead, before, after } = ask(shared, Question::Around { key, of: me.clone(), before: around, after: around }).await? else { return Err(mismatch()) };
            // The rank and the neighbours from one answer, so they agree even when scores
            // moved since it was found.
            let r = ahead + 1;
            let first = r.saturating_sub(before.len()).max(1);
            let size = def.size.unwrap_or(usize::MAX);
            let rows: Vec<Row> = before.into_iter().chain([me]).chain(after).enumerate().map(|(i, e)| Row::new(first + i, e.user, e.score)).filter(|row| row.rank <= size).collect();
            ((r <= size).then_some(r), rows)
        }
        (rank, _) => (rank, vec![]),
    };
    let segment = def.segment_by.as_ref().and(found_segment(&segment));
    Ok((period, segment, rank, score, rows))
}

fn found_segment(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FriendsBody {
    /// Up to 1,000 user ids (a friends list).
    pub users: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FriendStanding {
    pub user_id: String,
    /// The rank on the whole board (in the user's league); absent when unranked.
    pub rank: Option<usize>,
    pub score: f64,
    pub segment: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FriendsStandings {
    pub board: String,
    pub period: String,
    /// The listed users, ranked ones first by rank, then the unranked in the order given.
    pub entries: Vec<FriendStanding>,
}

/// The standings of a list of users (friends)
#[utoipa::path(post, path = "/v1/leaderboards/{id}/standings", tag = "leaderboards", params(("id" = String, Path, description = "Leaderboard id")),
    request_body = FriendsBody,
    responses((status = 200, body = FriendsStandings), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "Cluster mode: part of the board is between nodes for a moment; ask again", body = ErrorBody)), security(("api_key" = [])))]
pub async fn friends(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> Result<Json<FriendsStandings>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    let def = users_board(&cat, &id)?;
    let body: FriendsBody = json_body(body)?;
    if body.users.len() > 1000 {
        return Err(bad("invalid_body", format!("at most 1000 users; got {}", body.users.len())));
    }
    let period = open_period(def, &cat)?;
    let mut entries: Vec<FriendStanding> = find(&shared, &tenant, def, &period, body.users)
        .await?
        .into_iter()
        .map(|(u, found)| match found {
            Some((segment, rank, e)) => FriendStanding { user_id: u, rank, score: e.score, segment: def.segment_by.as_ref().and(found_segment(&segment)) },
            None => FriendStanding { user_id: u, rank: None, score: 0.0, segment: None },
        })
        .collect();
    // Stable: unranked users keep the order they were given in.
    entries.sort_by_key(|e| e.rank.unwrap_or(usize::MAX));
    Ok(Json(FriendsStandings { board: id, period, entries }))
}

#[derive(Serialize, ToSchema)]
pub struct ClosedDoc {
    pub period: String,
    pub ended: String,
    pub closed_at: String,
    /// Standings archived per league ("" when the board has no leagues).
    pub segments: Vec<(String, u64)>,
    pub awarded: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ClosedList {
    pub board: String,
    pub periods: Vec<ClosedDoc>,
}

/// The closed periods of a board, whose standings are archived
#[utoipa::path(get, path = "/v1/leaderboards/{id}/periods", tag = "leaderboards", params(("id" = String, Path, description = "Leaderboard id")),
    responses((status = 200, body = ClosedList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "Cluster mode: part of the board is between nodes for a moment; ask again", body = ErrorBody)), security(("api_key" = [])))]
pub async fn periods(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Result<Json<ClosedList>, ApiError> {
    let cat = catalogue(&shared, &tenant)?;
    // A board removed from the catalogue keeps its archive, so the id is only checked when
    // nothing is archived either.
    let periods = shared.store.closed_periods(&tenant, &id).map_err(internal)?;
    if periods.is_empty() {
        board(&cat, &id)?;
    }
    let periods = periods
        .into_iter()
        .map(|c| ClosedDoc { period: c.period, ended: rfc3339(c.end), closed_at: rfc3339(c.closed_at), segments: c.segments, awarded: c.awarded })
        .collect();
    Ok(Json(ClosedList { board: id, periods }))
}
