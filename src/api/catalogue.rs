//! The catalogue routes of the HTTP API: read versions, replace the document or change one
//! badge or XP rule, preview a change, and the backfill jobs a change starts.

use crate::backfill::{JobRecord, PreviewReport};
use crate::catalogues::{Change, StoredCatalogue};
use crate::protocol::rfc3339;
use crate::shared::Shared;
use super::{bad, not_found, internal, json_body, Tenant, ErrorBody, ApiError, change_error};
use crate::store::Kind;
use crate::clock::now_ms;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json_;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

// ---------------------------------------------------------------------------------------------
// Catalogue
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
pub struct VersionQuery {
    /// A stored version; the one in force when absent.
    pub version: Option<u64>,
}

/// A stored catalogue version.
#[derive(Serialize, ToSchema)]
pub struct CatalogueVersion {
    pub version: u64,
    /// `file` (the configured file, or a SIGHUP reload of it), `embedded` (the demo catalogue
    /// built into the binary, when no file is given) or `api`.
    pub origin: String,
    pub created_at: String,
    /// What the change was.
    pub change: String,
    /// Whether this is the version in force.
    pub current: bool,
    /// The document (absent in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub document: Option<Json_>,
}

fn version_view(s: StoredCatalogue, current: u64, with_document: bool) -> CatalogueVersion {
    CatalogueVersion {
        version: s.version,
        origin: s.origin,
        created_at: rfc3339(s.created_at),
        change: s.change,
        current: s.version == current,
        document: with_document.then(|| serde_json::from_str(&s.document).unwrap_or(Json_::Null)),
    }
}

fn current_version(shared: &Shared, tenant: &str) -> Result<u64, ApiError> {
    shared.catalogue(tenant).map(|c| c.version).ok_or_else(|| internal("the tenant has no catalogue"))
}

/// Get the catalogue (any version)
#[utoipa::path(get, path = "/v1/catalogue", tag = "catalogue", params(VersionQuery),
    responses((status = 200, body = CatalogueVersion), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get_catalogue(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(q): Query<VersionQuery>) -> Result<Json<CatalogueVersion>, ApiError> {
    let current = current_version(&shared, &tenant)?;
    let v = q.version.unwrap_or(current);
    let s = shared.catalogues.stored(&tenant, v).map_err(internal)?.ok_or_else(|| not_found("not_found", format!("no catalogue version {v}")))?;
    Ok(Json(version_view(s, current, true)))
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<CatalogueVersion>,
}

/// List catalogue versions
#[utoipa::path(get, path = "/v1/catalogue/versions", tag = "catalogue",
    responses((status = 200, body = VersionList), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
pub async fn catalogue_versions(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant) -> Result<Json<VersionList>, ApiError> {
    let current = current_version(&shared, &tenant)?;
    let versions = shared.catalogues.history(&tenant).map_err(internal)?.into_iter().map(|s| version_view(s, current, false)).collect();
    Ok(Json(VersionList { versions }))
}

#[derive(Deserialize, IntoParams)]
pub struct ChangeQuery {
    /// Re-evaluate stored users for new or changed badges and new stats (default true).
    pub backfill: Option<bool>,
    /// Push backfilled awards to the users as toasts (default false: they arrive silently).
    pub notify: Option<bool>,
}

/// What a catalogue change did.
#[derive(Serialize, ToSchema)]
pub struct ChangeResult {
    pub version: u64,
    /// Badges new or changed in this version.
    pub changed_badges: Vec<String>,
    /// Stats the engine did not track before.
    pub new_stats: usize,
    /// The backfill job, when one was started.
    pub job: Option<JobRecord>,
    /// Why no backfill was started although one was due (cluster mode: its job could not be
    /// stored), so stored users earn the change's badges by their next events only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill_skipped: Option<String>,
}

async fn change(shared: Arc<Shared>, tenant: String, change: Change, q: ChangeQuery) -> Response {
    let cand = match shared.catalogues.apply(&tenant, &change, now_ms()).await {
        Ok(c) => c,
        Err(e) => return change_error(e),
    };
    tracing::info!(tenant = %tenant, version = cand.catalogue.version, changed = cand.changed_badges.len(), "catalogue changed");
    let wants = !cand.changed_badges.is_empty() || !cand.new_stats.is_empty();
    let due = wants && q.backfill.unwrap_or(true);
    let job = match (due, &shared.cluster) {
        (false, _) => None,
        (true, None) => match shared.backfills.start(&tenant, &cand, q.notify.unwrap_or(false)).await {
            Ok(j) => Some(j),
            Err(e) => return internal(e).into_response(),
        },
        // The cluster's job for this version, which every node walks for the users it serves.
        (true, Some(m)) => {
            let job = crate::cluster::jobs::Job {
                tenant: tenant.clone(),
                id: cand.catalogue.version,
                badges: cand.changed_badges.clone(),
                new_stats: cand.new_stats.iter().map(|s| format!("{s:016x}")).collect(),
                notify: q.notify.unwrap_or(false),
                created_at: now_ms(),
                cancelled_at: None,
                parts: Default::default(),
            };
            if let Err(e) = m.jobs.create(&job).await {
                // The version is in force; its backfill could not be stored. Said, not hidden:
                // the change stands and its users earn its badges from their next events.
                tracing::error!(tenant = %tenant, version = job.id, error = %e, "storing a cluster backfill failed");
                let body = ChangeResult { version: cand.catalogue.version, changed_badges: cand.changed_badges, new_stats: cand.new_stats.len(), job: None, backfill_skipped: Some(format!("the backfill could not be stored ({e}); stored users are judged by this version from their next event on")) };
                return (StatusCode::CREATED, Json(body)).into_response();
            }
            Some(cluster_record(&job))
        }
    };
    let body = ChangeResult { version: cand.catalogue.version, changed_badges: cand.changed_badges, new_stats: cand.new_stats.len(), job, backfill_skipped: None };
    (StatusCode::CREATED, Json(body)).into_response()
}

/// Replace the whole catalogue
///
/// Validates the document, stores it as a new version (its `version` is set by the server)
/// and puts it in force at once.
#[utoipa::path(put, path = "/v1/catalogue", tag = "catalogue", params(ChangeQuery), request_body(content = Object, description = "A catalogue document (docs/catalogue.md), as JSON"),
    responses((status = 201, body = ChangeResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, description = "Cluster mode: another node changed the catalogue at the same moment; nothing changed", body = ErrorBody), (status = 422, description = "The catalogue is not valid", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn replace_catalogue(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Query(q): Query<ChangeQuery>, body: Result<Bytes, BytesRejection>) -> Response {
    match json_body::<Json_>(body) {
        Ok(document) => change(shared, tenant, Change::ReplaceDocument { document }, q).await,
        Err(e) => e.into_response(),
    }
}

fn with_id(mut v: Json_, id: &str, what: &str) -> Result<Json_, ApiError> {
    let Some(o) = v.as_object_mut() else { return Err(bad("invalid_body", format!("the {what} must be a JSON object"))) };
    match o.get("id").map(|x| x.as_str()) {
        None => {
            o.insert("id".into(), id.into());
        }
        Some(Some(x)) if x == id => {}
        _ => return Err(bad("invalid_body", format!("the {what}'s `id` must match the path (`{id}`)"))),
    }
    Ok(v)
}

/// Create or replace a badge
#[utoipa::path(put, path = "/v1/catalogue/badges/{id}", tag = "catalogue", params(("id" = String, Path, description = "Badge id"), ChangeQuery),
    request_body(content = Object, description = "A badge definition (docs/catalogue.md)"),
    responses((status = 201, body = ChangeResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, description = "Cluster mode: another node changed the catalogue at the same moment; nothing changed", body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn put_badge(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, Query(q): Query<ChangeQuery>, body: Result<Bytes, BytesRejection>) -> Response {
    match json_body::<Json_>(body).and_then(|b| with_id(b, &id, "badge")) {
        Ok(badge) => change(shared, tenant, Change::PutBadge { badge }, q).await,
        Err(e) => e.into_response(),
    }
}

/// Retire a badge
///
/// Nobody earns it any more; users who own it keep it.
#[utoipa::path(delete, path = "/v1/catalogue/badges/{id}", tag = "catalogue", params(("id" = String, Path, description = "Badge id")),
    responses((status = 201, body = ChangeResult), (status = 401, body = ErrorBody), (status = 409, description = "Cluster mode: another node changed the catalogue at the same moment; nothing changed", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn retire_badge(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Response {
    change(shared, tenant, Change::RetireBadge { id }, ChangeQuery { backfill: Some(false), notify: None }).await
}

/// Create or replace an XP rule
#[utoipa::path(put, path = "/v1/catalogue/xp/{id}", tag = "catalogue", params(("id" = String, Path, description = "XP rule id")),
    request_body(content = Object, description = "An XP rule (docs/catalogue.md)"),
    responses((status = 201, body = ChangeResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, description = "Cluster mode: another node changed the catalogue at the same moment; nothing changed", body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn put_xp(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>, body: Result<Bytes, BytesRejection>) -> Response {
    match json_body::<Json_>(body).and_then(|b| with_id(b, &id, "XP rule")) {
        Ok(rule) => change(shared, tenant, Change::PutXp { rule }, ChangeQuery { backfill: Some(false), notify: None }).await,
        Err(e) => e.into_response(),
    }
}

/// Remove an XP rule
///
/// XP already granted stays; the rule grants no more.
#[utoipa::path(delete, path = "/v1/catalogue/xp/{id}", tag = "catalogue", params(("id" = String, Path, description = "XP rule id")),
    responses((status = 201, body = ChangeResult), (status = 401, body = ErrorBody), (status = 409, description = "Cluster mode: another node changed the catalogue at the same moment; nothing changed", body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn remove_xp(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<String>) -> Response {
    change(shared, tenant, Change::RemoveXp { id }, ChangeQuery { backfill: Some(false), notify: None }).await
}

/// Dry-run a catalogue change
///
/// Says, without changing anything, how many stored users would earn each new or changed
/// badge right now (their stored events replayed under the changed catalogue), with a sample.
#[utoipa::path(post, path = "/v1/catalogue/preview", tag = "catalogue", request_body = Change,
    responses((status = 200, body = PreviewReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, description = "Cluster mode: some partition was not answered for in time (being moved between nodes); try again", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn preview(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, body: Result<Bytes, BytesRejection>) -> Response {
    let change: Change = match json_body(body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let cand = match shared.catalogues.candidate(&tenant, &change) {
        Ok(c) => c,
        Err(e) => return change_error(e),
    };
    // Cluster mode: every node previews the users it serves, and the answers are added up.
    if let Some(m) = &shared.cluster {
        return match m.preview(&tenant, &change, cand.catalogue.version).await {
            Ok(reports) => Json(crate::backfill::merge_previews(cand.catalogue.version, cand.new_stats.len(), reports)).into_response(),
            Err(e) => cluster_unavailable(e).into_response(),
        };
    }
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || s.backfills.preview(&tenant, &cand)).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => internal(e).into_response(),
        Err(e) => internal(e).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobRecord>,
}

/// List backfill jobs
#[utoipa::path(get, path = "/v1/jobs", tag = "catalogue",
    responses((status = 200, body = JobList), (status = 401, body = ErrorBody)), security(("api_key" = [])))]
pub async fn list_jobs(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant) -> Result<Json<JobList>, ApiError> {
    if let Some(m) = &shared.cluster {
        let jobs = m.jobs.list(Some(&tenant)).await.map_err(cluster_unavailable)?;
        return Ok(Json(JobList { jobs: jobs.iter().map(cluster_record).collect() }));
    }
    let jobs = shared.store.list::<JobRecord>(Kind::Job, &tenant, None, usize::MAX).map_err(internal)?.into_iter().map(|(_, j)| j).collect();
    Ok(Json(JobList { jobs }))
}

/// Get a backfill job's progress
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "catalogue", params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn get_job(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<JobRecord>, ApiError> {
    if let Some(m) = &shared.cluster {
        let job = m.jobs.get(&tenant, id).await.map_err(cluster_unavailable)?;
        return job.map(|j| Json(cluster_record(&j))).ok_or_else(|| not_found("not_found", format!("no job {id}")));
    }
    shared.store.get::<JobRecord>(Kind::Job, &tenant, id).map_err(internal)?.map(Json).ok_or_else(|| not_found("not_found", format!("no job {id}")))
}

/// Cancel a backfill job
///
/// Awards already made stay.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "catalogue", params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = JobRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("api_key" = [])))]
pub async fn cancel_job(State(shared): State<Arc<Shared>>, Tenant(tenant): Tenant, Path(id): Path<u64>) -> Result<Json<JobRecord>, ApiError> {
    if let Some(m) = &shared.cluster {
        // Every node's walk stops at its next save; a finished job stays done.
        let now = now_ms();
        let job = m
            .jobs
            .change(&tenant, id, |j| {
                let cancel = j.cancelled_at.is_none() && !j.finished();
                if cancel {
                    j.cancelled_at = Some(now);
                }
                cancel
            })
            .await
            .map_err(cluster_unavailable)?;
        return job.map(|j| Json(cluster_record(&j))).ok_or_else(|| not_found("not_found", format!("no job {id}")));
    }
    shared.backfills.cancel(&tenant, id).await.map_err(internal)?.map(Json).ok_or_else(|| not_found("not_found", format!("no job {id}")))
}

/// A cluster job as the API shows a job: its id is the catalogue version it backfills, and its
/// counts are the sums of its partitions' parts.
fn cluster_record(j: &crate::cluster::jobs::Job) -> JobRecord {
    use crate::backfill::JobStatus;
    let status = match (j.cancelled_at, j.finished()) {
        (_, true) => JobStatus::Done,
        (Some(_), false) => JobStatus::Cancelled,
        (None, false) => JobStatus::Running,
    };
    let sum = |f: fn(&crate::cluster::jobs::Part) -> u64| j.parts.values().map(f).sum::<u64>();
    JobRecord {
        id: j.id,
        catalogue_version: j.id,
        badges: j.badges.clone(),
        new_stats: j.new_stats.clone(),
        notify: j.notify,
        status,
        total: sum(|p| p.total).max(sum(|p| p.done)),
        done: sum(|p| p.done),
        awards: sum(|p| p.awards),
        // Each partition has its own; there is no one place a cluster job resumes from.
        cursor: None,
        created_at: crate::protocol::rfc3339(j.created_at),
        finished_at: j.finished_at().or(j.cancelled_at.filter(|_| status == JobStatus::Cancelled)).map(crate::protocol::rfc3339),
    }
}

fn cluster_unavailable(e: String) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e}; try again"))
}
