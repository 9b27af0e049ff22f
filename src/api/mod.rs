//! The HTTP API for the app's backend, next to the socket on the same port: ingest, dead
//! letters, catalogue changes (preview, backfill jobs), user queries, leaderboards
//! (`leaderboards.rs`), assigned goals (`goals.rs`), teams (`teams.rs`), analytics and the export
//! (`analytics.rs`). Every route takes the
//! tenant from its API key (`Authorization: Bearer <key>`), so a key can only ever name its own
//! tenant's users, versions, jobs and dead letters. The OpenAPI document at
//! `/v1/openapi.json` is generated from the handlers and types below.

use crate::backfill;
use crate::catalogues::{Change, ChangeError};
use crate::core::CatalogueError;
use crate::shared::Shared;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};

/// Events one `POST /v1/events` may carry.
pub const MAX_BATCH: usize = 1000;

pub mod analytics;
mod catalogue;
mod community;
mod events;
mod goals;
mod leaderboards;
mod operations;
mod teams;
mod users;
mod webhooks;

pub use operations::{healthz, metrics, readyz};
/// The largest request body, in bytes (a full batch of ordinary events fits many times over).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

pub fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    // A user's routes are answered by her actor; in cluster mode, on the node serving her.
    let users = Router::new()
        .route("/v1/users/{id}", get(users::get_user))
        .route("/v1/users/{id}/progress", get(users::get_progress))
        .route("/v1/users/{id}/badges/{badge}", get(users::get_badge))
        .route("/v1/users/{id}/badges/{badge}/revoke", post(users::revoke))
        .route("/v1/users/{id}/retractions", post(users::retract))
        .route("/v1/users/{id}/events", get(users::get_events))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), users::to_owner));
    // A board's standings (closed periods from its archive) and its closed periods: in
    // cluster mode answered by the node serving the board's partition.
    let boards = Router::new()
        .route("/v1/leaderboards/{id}", get(leaderboards::standings))
        .route("/v1/leaderboards/{id}/periods", get(leaderboards::periods))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), leaderboards::to_board_owner));
    let hooks = Router::new()
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/v1/webhooks/{id}", get(webhooks::get).delete(webhooks::delete))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/set-aside", get(webhooks::set_aside))
        .route("/v1/webhooks/{id}/deliveries/{delivery}/retry", post(webhooks::retry));
    // A team's routes are answered by the node serving the team.
    let teams = Router::new()
        .route("/v1/teams/{id}", get(teams::get_team).put(teams::put_team))
        .route("/v1/teams/{id}/members", post(teams::add_member))
        .route("/v1/teams/{id}/members/{user}", axum::routing::delete(teams::remove_member))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), teams::to_team_owner));
    Router::new()
        .merge(users)
        .merge(teams)
        .merge(boards)
        .merge(hooks)
        // Goals live with their assignees: in cluster mode answered by the node serving her.
        .route("/v1/goals", get(goals::list).post(goals::create))
        .route("/v1/goals/{id}", get(goals::get).delete(goals::cancel))
        .route("/v1/events", post(events::ingest))
        .route("/v1/dead-letters", get(events::list_dead_letters))
        .route("/v1/dead-letters/{id}", get(events::get_dead_letter).delete(events::delete_dead_letter))
        .route("/v1/dead-letters/{id}/retry", post(events::retry_dead_letter))
        .route("/v1/catalogue", get(catalogue::get_catalogue).put(catalogue::replace_catalogue))
        .route("/v1/catalogue/versions", get(catalogue::catalogue_versions))
        .route("/v1/catalogue/badges/{id}", put(catalogue::put_badge).delete(catalogue::retire_badge))
        .route("/v1/catalogue/xp/{id}", put(catalogue::put_xp).delete(catalogue::remove_xp))
        .route("/v1/catalogue/preview", post(catalogue::preview))
        .route("/v1/jobs", get(catalogue::list_jobs))
        .route("/v1/jobs/{id}", get(catalogue::get_job).delete(catalogue::cancel_job))
        .route("/v1/leaderboards", get(leaderboards::list))
        .route("/v1/community-goals", get(community::list))
        .route("/v1/community-goals/{id}", get(community::get))
        // Open periods' standings are gathered from every node in cluster mode.
        .route("/v1/leaderboards/{id}/users/{user}", get(leaderboards::user_rank))
        .route("/v1/leaderboards/{id}/teams/{team}", get(leaderboards::team_rank))
        .route("/v1/leaderboards/{id}/standings", post(leaderboards::friends))
        .route("/v1/analytics/rarity", get(analytics::rarity))
        .route("/v1/analytics/activity", get(analytics::activity))
        .route("/v1/analytics/funnel", get(analytics::funnel))
        .route("/v1/analytics/time-to-unlock", get(analytics::time_to_unlock))
        .route("/v1/analytics/health", get(analytics::health))
        .route("/v1/analytics/export", get(analytics::export))
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
        let mut res = (self.0, Json(serde_json::json!({ "error": self.1, "message": self.2 }))).into_response();
        // A 408 says the server will not wait for the rest of the request: the connection
        // closes once the answer is out, rather than reading a slow body to its end.
        if self.0 == StatusCode::REQUEST_TIMEOUT {
            res.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        res
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
    /// For `revoked` and `expired` (the entitlement check of a badge no longer held): when it
    /// was taken, why, and what went with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation: Option<users::RevocationDoc>,
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
        let body = ErrorBody { error: "invalid_catalogue".into(), message: e.to_string(), badge: e.badge.clone(), field: Some(e.field.clone()), revocation: None };
        (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
    }
}

fn change_error(e: ChangeError) -> Response {
    match e {
        ChangeError::Invalid(e) => InvalidCatalogue(e).into_response(),
        ChangeError::NotFound(m) => not_found("not_found", m).into_response(),
        ChangeError::BadRequest(m) => bad("invalid_body", m).into_response(),
        ChangeError::Store(e) => internal(e).into_response(),
        ChangeError::Conflict(m) => ApiError(StatusCode::CONFLICT, "catalogue_conflict", m).into_response(),
        ChangeError::Cluster(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m).into_response(),
    }
}

/// Reads a JSON body, answering a clear error (with the path of a bad field) when it is not.
fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    json_bytes(&body_bytes(body)?)
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(f) if crate::accept::CutOff::of(&f).is_some() => {
            let cut = crate::accept::CutOff::of(&f).expect("checked");
            ApiError(StatusCode::REQUEST_TIMEOUT, cut.code(), format!("{cut}; send it again, faster"))
        }
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

/// A page of a list: items after an id, at most `limit` of them.
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
        events::ingest, events::list_dead_letters, events::get_dead_letter, events::delete_dead_letter, events::retry_dead_letter,
        catalogue::get_catalogue, catalogue::catalogue_versions, catalogue::replace_catalogue, catalogue::put_badge, catalogue::retire_badge, catalogue::put_xp, catalogue::remove_xp, catalogue::preview,
        catalogue::list_jobs, catalogue::get_job, catalogue::cancel_job,
        users::get_user, users::get_progress, users::get_badge, users::revoke, users::retract, users::get_events,
        leaderboards::list, leaderboards::standings, leaderboards::user_rank, leaderboards::team_rank, community::list, community::get, leaderboards::friends, leaderboards::periods,
        goals::create, goals::list, goals::get, goals::cancel,
        teams::put_team, teams::get_team, teams::add_member, teams::remove_member,
        webhooks::create, webhooks::list, webhooks::get, webhooks::delete, webhooks::deliveries, webhooks::set_aside, webhooks::retry,
        analytics::rarity, analytics::activity, analytics::funnel, analytics::time_to_unlock, analytics::health, analytics::export,
        operations::healthz, operations::readyz, operations::metrics
    ),
    components(schemas(ErrorBody, Change, backfill::JobStatus, backfill::BadgePreview)),
    modifiers(&Security),
    tags(
        (name = "ingest", description = "Server-side events and dead letters"),
        (name = "catalogue", description = "Catalogue versions, changes, previews and backfill jobs"),
        (name = "users", description = "What a user has, how far they are, and badges taken away"),
        (name = "leaderboards", description = "Standings, ranks, friends and closed periods"),
        (name = "goals", description = "Goals one user assigns another"),
        (name = "teams", description = "Teams, their members, and what they earn together"),
        (name = "webhooks", description = "Endpoints notified of unlocks, level-ups, goals, team unlocks and revocations, and their deliveries"),
        (name = "analytics", description = "Badge rarity, funnels, activity, time to unlock, health, and the export of the log"),
        (name = "operations", description = "Health, readiness, metrics")
    )
)]
pub struct ApiDoc;

/// The OpenAPI 3 document of this API.
async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
