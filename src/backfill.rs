//! Catalogue backfills and previews: after a change that adds or changes badges (or stats), every
//! stored user is re-evaluated in the background by replaying their stored events, and what they
//! would have earned is awarded. A preview runs the same evaluation without awarding anything.
//!
//! A job walks the tenant's users in key order at a bounded rate, one user at a time, and asks
//! each user's actor to do the work: the actor is the only writer of its user's state, so live
//! events that arrive meanwhile wait in its mailbox and are counted exactly once. The job record
//! (with the last user done) is stored as it goes; after a restart the job resumes from there,
//! and a user visited twice gets nothing twice, because a backfill never re-awards a badge the
//! user owns.

use crate::catalogues::Candidate;
use crate::core::{Catalogue, UserState};
use crate::replay;
use crate::server::Shared;
use crate::store::{self, Kind, StoreError};
use crate::clock::now_ms;
use crate::user::UserMsg;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What one backfill asks of each user's actor.
#[derive(Debug, Clone)]
pub struct BackfillSpec {
    pub job: u64,
    pub badges: Vec<String>,
    pub new_stats: Vec<u64>,
    /// Push the awards to the user's open sockets (and recovery history) like live ones.
    pub notify: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Done,
    Cancelled,
}

/// A backfill job as stored and as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: u64,
    pub catalogue_version: u64,
    pub badges: Vec<String>,
    /// Stat ids (hex) the job fills in from the stored events.
    pub new_stats: Vec<String>,
    pub notify: bool,
    pub status: JobStatus,
    /// Users stored when the job started (users added meanwhile are visited too, so `done`
    /// may end above it).
    pub total: u64,
    pub done: u64,
    pub awards: u64,
    /// The last user done, where a restarted job resumes.
    pub cursor: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// Starts a backfill for a change just applied; returns the stored job.
pub async fn start(shared: &Arc<Shared>, tenant: &str, cand: &Candidate, notify: bool) -> Result<JobRecord, StoreError> {
    let store = shared.store.clone();
    let t = tenant.to_string();
    let total = tokio::task::spawn_blocking(move || store.count_users(&t)).await.map_err(|e| StoreError::Corrupt { key: "count".into(), why: e.to_string() })??;
    let job = JobRecord {
        id: shared.store.next_id()?,
        catalogue_version: cand.catalogue.version,
        badges: cand.changed_badges.clone(),
        new_stats: cand.new_stats.iter().map(|s| format!("{s:016x}")).collect(),
        notify,
        status: JobStatus::Running,
        total,
        done: 0,
        awards: 0,
        cursor: None,
        created_at: crate::protocol::rfc3339(now_ms()),
        finished_at: None,
    };
    save(shared, tenant, &job).await?;
    spawn(shared.clone(), tenant.to_string(), job.clone());
    Ok(job)
}

/// Resumes every job a previous run left running.
pub fn resume_all(shared: &Arc<Shared>) -> Result<usize, StoreError> {
    let mut n = 0;
    for tenant in shared.store.tenants_with(Kind::Job)? {
        for (_, job) in shared.store.list::<JobRecord>(Kind::Job, &tenant, None, usize::MAX)? {
            if job.status == JobStatus::Running {
                tracing::info!(tenant = %tenant, job = job.id, done = job.done, "resuming backfill");
                spawn(shared.clone(), tenant.clone(), job);
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Stops a running job and marks it cancelled. Awards already made stay.
pub async fn cancel(shared: &Arc<Shared>, tenant: &str, id: u64) -> Result<Option<JobRecord>, StoreError> {
    if let Some((_, h)) = shared.jobs.remove(&(tenant.to_string(), id)) {
        h.abort();
        shared.metrics.backfill_running.fetch_sub(1, Ordering::Relaxed);
        shared.jobs_left.notify_waiters();
    }
    let Some(mut job) = shared.store.get::<JobRecord>(Kind::Job, tenant, id)? else { return Ok(None) };
    if job.status == JobStatus::Running {
        job.status = JobStatus::Cancelled;
        job.finished_at = Some(crate::protocol::rfc3339(now_ms()));
        save(shared, tenant, &job).await?;
    }
    Ok(Some(job))
}

async fn save(shared: &Shared, tenant: &str, job: &JobRecord) -> Result<(), StoreError> {
    shared.store.write(vec![store::writes::put(Kind::Job, tenant, job.id, job)]).await
}

fn spawn(shared: Arc<Shared>, tenant: String, job: JobRecord) {
    let key = (tenant.clone(), job.id);
    shared.metrics.backfill_running.fetch_add(1, Ordering::Relaxed);
    let s = shared.clone();
    let handle = tokio::spawn(async move {
        let id = job.id;
        if let Err(e) = run(&s, &tenant, job).await {
            tracing::error!(tenant = %tenant, job = id, error = %e, "backfill stopped; it resumes at the next start");
        }
        if s.jobs.remove(&(tenant, id)).is_some() {
            s.metrics.backfill_running.fetch_sub(1, Ordering::Relaxed);
        }
        s.jobs_left.notify_waiters();
    });
    shared.jobs.insert(key, handle.abort_handle());
}

async fn run(shared: &Arc<Shared>, tenant: &str, mut job: JobRecord) -> anyhow::Result<()> {
    let spec = Arc::new(BackfillSpec {
        job: job.id,
        badges: job.badges.clone(),
        new_stats: job.new_stats.iter().filter_map(|h| u64::from_str_radix(h, 16).ok()).collect(),
        notify: job.notify,
    });
    // The rate bound: at most `per_sec` users per second, paced in tenths of a second so a
    // backfill is a steady trickle next to live traffic, never a burst.
    let per_sec = shared.config.backfill_users_per_sec.max(1);
    let per_tick = per_sec.div_ceil(10);
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut budget = 0u64;
    let mut shutdown = shared.shutdown.subscribe();
    let mut saved_at = tokio::time::Instant::now();
    loop {
        let store = shared.store.clone();
        let (t, after) = (tenant.to_string(), job.cursor.clone());
        let page = tokio::task::spawn_blocking(move || store.users_page(&t, after.as_deref(), 256)).await??;
        if page.is_empty() {
            break;
        }
        for user in page {
            if budget == 0 {
                tokio::select! {
                    _ = pace.tick() => budget = per_tick,
                    _ = shutdown.changed() => return save_progress(shared, tenant, &job).await,
                }
            }
            budget -= 1;
            if *shutdown.borrow() {
                return save_progress(shared, tenant, &job).await;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            shared.registry.send(shared, tenant, &user, UserMsg::Backfill { spec: spec.clone(), reply: tx })?;
            // On shutdown the job stores where it is without waiting for this user: the award,
            // if it lands, is counted when the next start visits the user again.
            let answer = tokio::select! {
                answer = rx => answer,
                _ = shutdown.changed() => return save_progress(shared, tenant, &job).await,
            };
            let awarded = answer.map_err(|_| anyhow::anyhow!("user `{user}`'s actor stopped during backfill"))?.map_err(|e| anyhow::anyhow!("user `{user}`: {e}"))?;
            job.done += 1;
            job.awards += u64::from(awarded);
            job.cursor = Some(user);
            shared.metrics.backfill_users.fetch_add(1, Ordering::Relaxed);
            shared.metrics.backfill_awards.fetch_add(u64::from(awarded), Ordering::Relaxed);
            if saved_at.elapsed() >= Duration::from_millis(500) {
                save_progress(shared, tenant, &job).await?;
                saved_at = tokio::time::Instant::now();
            }
        }
    }
    job.status = JobStatus::Done;
    job.total = job.total.max(job.done);
    job.finished_at = Some(crate::protocol::rfc3339(now_ms()));
    save(shared, tenant, &job).await?;
    tracing::info!(tenant = %tenant, job = job.id, users = job.done, awards = job.awards, "backfill done");
    Ok(())
}

/// Resolves once no job runs in this process (each stores its progress as shutdown begins).
pub async fn stopped(shared: &Shared) {
    loop {
        // Created before the check, so a job leaving in between still wakes it.
        let left = shared.jobs_left.notified();
        if shared.jobs.is_empty() {
            return;
        }
        left.await;
    }
}

async fn save_progress(shared: &Shared, tenant: &str, job: &JobRecord) -> anyhow::Result<()> {
    save(shared, tenant, job).await?;
    Ok(())
}

/// How many users would earn one badge.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BadgePreview {
    pub badge: String,
    /// Users who would earn it now and do not own it yet.
    pub would_earn: u64,
    /// Up to ten of them.
    pub sample: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PreviewReport {
    /// The version the change would create.
    pub version: u64,
    pub users_scanned: u64,
    pub badges: Vec<BadgePreview>,
    pub new_stats: usize,
}

/// Evaluates `cand` against every stored user of `tenant` without changing anything: each
/// user's log is replayed from scratch under the candidate, and compared with what the user
/// owns. Blocking.
pub fn preview(shared: &Shared, tenant: &str, cand: &Candidate) -> Result<PreviewReport, StoreError> {
    let mut counts: BTreeMap<&str, (u64, Vec<String>)> = cand.changed_badges.iter().map(|b| (b.as_str(), (0, vec![]))).collect();
    let mut scanned = 0;
    let mut after: Option<String> = None;
    loop {
        let page = shared.store.users_page(tenant, after.as_deref(), 512)?;
        if page.is_empty() {
            break;
        }
        for user in &page {
            scanned += 1;
            let owned = current_state(shared, tenant, user)?;
            let log: Vec<_> = shared.store.events_after(tenant, user, 0, usize::MAX)?.into_iter().map(|(_, e)| e).collect();
            let would = replay::from_scratch(tenant, user, &log, &cand.catalogue);
            for (badge, (n, sample)) in counts.iter_mut() {
                if would.badges.contains_key(*badge) && !owned.badges.contains_key(*badge) {
                    *n += 1;
                    if sample.len() < 10 {
                        sample.push(user.clone());
                    }
                }
            }
        }
        after = page.last().cloned();
    }
    Ok(PreviewReport {
        version: cand.catalogue.version,
        users_scanned: scanned,
        badges: counts.into_iter().map(|(b, (n, sample))| BadgePreview { badge: b.to_string(), would_earn: n, sample }).collect(),
        new_stats: cand.new_stats.len(),
    })
}

/// A user's durable state: the snapshot and the log after it. Blocking.
pub fn current_state(shared: &Shared, tenant: &str, user: &str) -> Result<UserState, StoreError> {
    Ok(replay::restore(&shared.store, &shared.catalogues, tenant, user)?.state)
}

/// The catalogue's badges a state owns, for tests and reports.
pub fn owned<'a>(st: &'a UserState, cat: &'a Catalogue) -> impl Iterator<Item = &'a str> {
    cat.badges.iter().filter(|b| st.badges.contains_key(&*b.id)).map(|b| &*b.id)
}
