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
//!
//! In cluster mode a job is the cluster's (`cluster/jobs.rs`: the backfill of one catalogue
//! version): every node walks the users of the partitions it serves, each partition's part of
//! the job moving forward in the cluster's bucket as it goes, so a partition that moves to
//! another node is walked on from where it was (`run_cluster`).

use crate::catalogues::{Candidate, Catalogues};
use crate::core::{Catalogue, UserState};
use crate::metrics::Metrics;
use crate::replay;
use crate::store::{self, Kind, Store, StoreError};
use crate::clock::now_ms;
use crate::user::{BackfillSpec, UserMsg, Users};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

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

/// How many users would earn one badge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BadgePreview {
    pub badge: String,
    /// Users who would earn it now and do not own it yet.
    pub would_earn: u64,
    /// Up to ten of them.
    pub sample: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PreviewReport {
    /// The version the change would create.
    pub version: u64,
    pub users_scanned: u64,
    pub badges: Vec<BadgePreview>,
    pub new_stats: usize,
}

/// The backfill jobs of this process, and what they work with.
pub struct Backfills {
    store: Store,
    catalogues: Arc<Catalogues>,
    users: Users,
    metrics: Arc<Metrics>,
    /// At most this many users a second (`--backfill-users-per-sec`).
    per_sec: u64,
    /// Jobs store their progress and stop when this turns true.
    stop: tokio::sync::watch::Receiver<bool>,
    /// The jobs running, by (tenant, id), to cancel them.
    jobs: DashMap<(String, u64), tokio::task::AbortHandle>,
    /// Woken whenever a job leaves `jobs`, so the drain can wait for them.
    jobs_left: tokio::sync::Notify,
}

impl Backfills {
    pub fn new(store: Store, catalogues: Arc<Catalogues>, users: Users, metrics: Arc<Metrics>, per_sec: u64, stop: tokio::sync::watch::Receiver<bool>) -> Arc<Backfills> {
        Arc::new(Backfills { store, catalogues, users, metrics, per_sec: per_sec.max(1), stop, jobs: DashMap::new(), jobs_left: tokio::sync::Notify::new() })
    }

    /// Starts a backfill for a change just applied; returns the stored job.
    pub async fn start(self: &Arc<Self>, tenant: &str, cand: &Candidate, notify: bool) -> Result<JobRecord, StoreError> {
        let store = self.store.clone();
        let t = tenant.to_string();
        let total = tokio::task::spawn_blocking(move || store.count_users(&t)).await.map_err(|e| StoreError::Corrupt { key: "count".into(), why: e.to_string() })??;
        let job = JobRecord {
            id: self.store.next_id(crate::store::IdKind::Job)?,
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
        self.save(tenant, &job).await?;
        self.spawn(tenant.to_string(), job.clone());
        Ok(job)
    }

    /// Resumes every job a previous run left running.
    pub fn resume_all(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut n = 0;
        for tenant in self.store.tenants_with(Kind::Job)? {
            for (_, job) in self.store.list::<JobRecord>(Kind::Job, &tenant, None, usize::MAX)? {
                if job.status == JobStatus::Running {
                    tracing::info!(tenant = %tenant, job = job.id, done = job.done, "resuming backfill");
                    self.spawn(tenant.clone(), job);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Stops a running job and marks it cancelled. Awards already made stay.
    pub async fn cancel(&self, tenant: &str, id: u64) -> Result<Option<JobRecord>, StoreError> {
        if let Some((_, h)) = self.jobs.remove(&(tenant.to_string(), id)) {
            h.abort();
            self.metrics.backfill_running.dec();
            self.jobs_left.notify_waiters();
        }
        let Some(mut job) = self.store.get::<JobRecord>(Kind::Job, tenant, id)? else { return Ok(None) };
        if job.status == JobStatus::Running {
            job.status = JobStatus::Cancelled;
            job.finished_at = Some(crate::protocol::rfc3339(now_ms()));
            self.save(tenant, &job).await?;
        }
        Ok(Some(job))
    }

    async fn save(&self, tenant: &str, job: &JobRecord) -> Result<(), StoreError> {
        self.store.write(vec![store::writes::put(Kind::Job, tenant, job.id, job)]).await
    }

    fn spawn(self: &Arc<Self>, tenant: String, job: JobRecord) {
        let key = (tenant.clone(), job.id);
        self.metrics.backfill_running.inc();
        let s = self.clone();
        let handle = tokio::spawn(async move {
            let id = job.id;
            if let Err(e) = s.run(&tenant, job).await {
                tracing::error!(tenant = %tenant, job = id, error = %e, "backfill stopped; it resumes at the next start");
            }
            if s.jobs.remove(&(tenant, id)).is_some() {
                s.metrics.backfill_running.dec();
            }
            s.jobs_left.notify_waiters();
        });
        self.jobs.insert(key, handle.abort_handle());
    }

    async fn run(&self, tenant: &str, mut job: JobRecord) -> anyhow::Result<()> {
        let spec = Arc::new(BackfillSpec {
            job: job.id,
            badges: job.badges.clone(),
            new_stats: job.new_stats.iter().filter_map(|h| u64::from_str_radix(h, 16).ok()).collect(),
            notify: job.notify,
        });
        // The rate bound: at most `per_sec` users per second, paced in tenths of a second so a
        // backfill is a steady trickle next to live traffic, never a burst.
        let per_sec = self.per_sec;
        let per_tick = per_sec.div_ceil(10);
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut budget = 0u64;
        let mut shutdown = self.stop.clone();
        let mut saved_at = tokio::time::Instant::now();
        loop {
            let store = self.store.clone();
            let (t, after) = (tenant.to_string(), job.cursor.clone());
            let page = tokio::task::spawn_blocking(move || store.users_page(&t, after.as_deref(), 256)).await??;
            if page.is_empty() {
                break;
            }
            for user in page {
                if budget == 0 {
                    tokio::select! {
                        _ = pace.tick() => budget = per_tick,
                        _ = shutdown.changed() => return self.save_progress(tenant, &job).await,
                    }
                }
                budget -= 1;
                if *shutdown.borrow() {
                    return self.save_progress(tenant, &job).await;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.users.send(tenant, &user, UserMsg::Backfill { spec: spec.clone(), reply: tx })?;
                // On shutdown the job stores where it is without waiting for this user: the award,
                // if it lands, is counted when the next start visits the user again.
                let answer = tokio::select! {
                    answer = rx => answer,
                    _ = shutdown.changed() => return self.save_progress(tenant, &job).await,
                };
                let awarded = answer.map_err(|_| anyhow::anyhow!("user `{user}`'s actor stopped during backfill"))?.map_err(|e| anyhow::anyhow!("user `{user}`: {e}"))?;
                job.done += 1;
                job.awards += u64::from(awarded);
                job.cursor = Some(user);
                self.metrics.backfill_users.inc();
                self.metrics.backfill_awards.inc_by(u64::from(awarded));
                if saved_at.elapsed() >= Duration::from_millis(500) {
                    self.save_progress(tenant, &job).await?;
                    saved_at = tokio::time::Instant::now();
                }
            }
        }
        job.status = JobStatus::Done;
        job.total = job.total.max(job.done);
        job.finished_at = Some(crate::protocol::rfc3339(now_ms()));
        self.save(tenant, &job).await?;
        tracing::info!(tenant = %tenant, job = job.id, users = job.done, awards = job.awards, "backfill done");
        Ok(())
    }

    /// Cluster mode: walks, for every job still running, the users of the partitions this node
    /// serves that the job has not finished, until shutdown. A partition gained later is
    /// walked on the next round; one lost meanwhile is left to the node serving it next.
    pub async fn run_cluster(self: Arc<Self>, jobs: Arc<crate::cluster::jobs::Jobs>, serves: Arc<dyn Fn(u16) -> bool + Send + Sync>) {
        let mut shutdown = self.stop.clone();
        // The jobs, as the bucket's watch brings them (listing the bucket every second made a
        // consumer each time, on every node, and timed out over and over while JetStream
        // recovered from a lost server).
        let mut changes = jobs.follow();
        let mut known: BTreeMap<(String, u64), bool> = BTreeMap::new();
        loop {
            while let Ok(job) = changes.try_recv() {
                known.insert((job.tenant.clone(), job.id), job.cancelled_at.is_none() && !job.finished());
            }
            let running: Vec<(String, u64)> = known.iter().filter(|(_, running)| **running).map(|(k, _)| k.clone()).collect();
            for (tenant, id) in running {
                // Read anew from the bucket's leader: where each partition's part got to.
                let job = match jobs.get(&tenant, id).await {
                    Ok(Some(job)) if job.cancelled_at.is_none() && !job.finished() => job,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a cluster backfill failed; trying again");
                        continue;
                    }
                };
                if let Err(e) = self.walk_served(&jobs, job, &*serves).await {
                    tracing::warn!(error = %e, "a cluster backfill stopped; it goes on in the next round");
                }
                if *shutdown.borrow() {
                    return;
                }
            }
            tokio::select! {
                job = changes.recv() => match job {
                    Some(job) => {
                        known.insert((job.tenant.clone(), job.id), job.cancelled_at.is_none() && !job.finished());
                    }
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One pass over `job`'s tenant's users, doing those of the served partitions the job has
    /// not finished, after each partition's cursor; each partition's part is stored every half
    /// second and when the pass ends (finished, for those still served).
    async fn walk_served(&self, jobs: &crate::cluster::jobs::Jobs, job: crate::cluster::jobs::Job, serves: &(dyn Fn(u16) -> bool + Send + Sync)) -> anyhow::Result<()> {
        use crate::cluster::partition::partition_of;
        let tenant = job.tenant.clone();
        // The actors judge by the catalogue in force on this node: one that has not yet taken
        // in the job's version (it follows the cluster's history) would find the new badges
        // missing and mark its users done without them. Such a job waits for the next round.
        if self.catalogues.current(&tenant).is_none_or(|c| c.version < job.id) {
            return Ok(());
        }
        let mut parts: BTreeMap<u16, crate::cluster::jobs::Part> =
            (0..crate::cluster::partition::PARTITIONS).filter(|&p| serves(p) && job.parts.get(&p).is_none_or(|x| x.finished_at.is_none())).map(|p| (p, job.parts.get(&p).cloned().unwrap_or_default())).collect();
        if parts.is_empty() {
            return Ok(());
        }
        // A partition begun here counts its users first, for the job's total.
        let fresh: Vec<u16> = parts.keys().copied().filter(|p| !job.parts.contains_key(p)).collect();
        if !fresh.is_empty() {
            let mut after: Option<String> = None;
            loop {
                let store = self.store.clone();
                let (t, a) = (tenant.clone(), after.clone());
                let page = tokio::task::spawn_blocking(move || store.users_page(&t, a.as_deref(), 1024)).await??;
                let Some(last) = page.last().cloned() else { break };
                for u in &page {
                    if let Some(part) = parts.get_mut(&partition_of(&tenant, u)).filter(|_| fresh.contains(&partition_of(&tenant, u))) {
                        part.total += 1;
                    }
                }
                after = Some(last);
            }
        }
        let spec = Arc::new(BackfillSpec { job: job.id, badges: job.badges.clone(), new_stats: job.new_stats.iter().filter_map(|h| u64::from_str_radix(h, 16).ok()).collect(), notify: job.notify });
        let per_tick = self.per_sec.div_ceil(10);
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut budget = 0u64;
        let mut shutdown = self.stop.clone();
        let mut saved_at = tokio::time::Instant::now();
        let mut after: Option<String> = None;
        'pass: loop {
            let store = self.store.clone();
            let (t, a) = (tenant.clone(), after.clone());
            let page = tokio::task::spawn_blocking(move || store.users_page(&t, a.as_deref(), 256)).await??;
            let Some(last) = page.last().cloned() else { break };
            after = Some(last);
            for user in page {
                let p = partition_of(&tenant, &user);
                let Some(part) = parts.get(&p) else { continue };
                if part.cursor.as_ref().is_some_and(|c| *c >= user) {
                    continue;
                }
                if budget == 0 {
                    tokio::select! {
                        _ = pace.tick() => budget = per_tick,
                        _ = shutdown.changed() => break 'pass,
                    }
                }
                budget -= 1;
                let (tx, rx) = tokio::sync::oneshot::channel();
                let answer = match self.users.send(&tenant, &user, UserMsg::Backfill { spec: spec.clone(), reply: tx }) {
                    Ok(()) => tokio::select! {
                        a = rx => a.unwrap_or_else(|_| Err("the user's actor stopped".into())),
                        _ = shutdown.changed() => break 'pass,
                    },
                    Err(e) => Err(e.to_string()),
                };
                match answer {
                    Ok(awarded) => {
                        let part = parts.get_mut(&p).expect("looked up above");
                        part.done += 1;
                        part.awards += u64::from(awarded);
                        part.cursor = Some(user);
                        self.metrics.backfill_users.inc();
                        self.metrics.backfill_awards.inc_by(u64::from(awarded));
                    }
                    // Not served here any more (or failing): left to the node serving it next,
                    // from the part as last stored.
                    Err(e) => {
                        if serves(p) {
                            tracing::warn!(tenant = %tenant, job = job.id, partition = p, user = %user, error = %e, "a user's backfill failed; the partition's walk goes on from this user in the next round");
                        } else {
                            tracing::debug!(tenant = %tenant, partition = p, user = %user, error = %e, "a backfill's partition is left to its next node");
                        }
                        parts.remove(&p);
                    }
                }
                if saved_at.elapsed() >= Duration::from_millis(500) {
                    saved_at = tokio::time::Instant::now();
                    if !self.save_parts(jobs, &job, &parts).await? {
                        return Ok(());
                    }
                }
            }
        }
        if !*shutdown.borrow() {
            let now = now_ms();
            parts.retain(|&p, _| serves(p));
            for part in parts.values_mut() {
                part.finished_at = Some(now);
            }
        }
        self.save_parts(jobs, &job, &parts).await?;
        Ok(())
    }

    /// Stores the parts walked; false when the job was cancelled meanwhile (the walk stops).
    async fn save_parts(&self, jobs: &crate::cluster::jobs::Jobs, job: &crate::cluster::jobs::Job, parts: &BTreeMap<u16, crate::cluster::jobs::Part>) -> anyhow::Result<bool> {
        // A cancelled job's parts stay as they were when it was cancelled, so that it never
        // shows as done afterwards.
        let stored = jobs.change(&job.tenant, job.id, |j| j.cancelled_at.is_none() && parts.iter().fold(false, |changed, (&p, part)| j.advance(p, part) | changed)).await.map_err(|e| anyhow::anyhow!(e))?;
        Ok(stored.is_some_and(|j| j.cancelled_at.is_none()))
    }

    /// Resolves once no job runs in this process (each stores its progress as shutdown begins).
    pub async fn stopped(&self) {
        loop {
            // Created before the check, so a job leaving in between still wakes it.
            let left = self.jobs_left.notified();
            if self.jobs.is_empty() {
                return;
            }
            left.await;
        }
    }

    async fn save_progress(&self, tenant: &str, job: &JobRecord) -> anyhow::Result<()> {
        self.save(tenant, job).await?;
        Ok(())
    }

    /// Evaluates `cand` against every stored user of `tenant` without changing anything: each
    /// user's log is replayed from scratch under the candidate, and compared with what the user
    /// owns. Blocking.
    pub fn preview(&self, tenant: &str, cand: &Candidate) -> Result<PreviewReport, StoreError> {
        preview_users(&self.store, &self.catalogues, tenant, cand, &|_| true)
    }

    /// A user's durable state: the snapshot and the log after it. Blocking.
    pub fn current_state(&self, tenant: &str, user: &str) -> Result<UserState, StoreError> {
        current_state(&self.store, &self.catalogues, tenant, user)
    }
}

/// `Backfills::preview` over the stored users `keep` says (in cluster mode: those of the
/// partitions this node serves). Blocking.
pub fn preview_users(store: &Store, catalogues: &Catalogues, tenant: &str, cand: &Candidate, keep: &dyn Fn(&str) -> bool) -> Result<PreviewReport, StoreError> {
    let mut counts: BTreeMap<&str, (u64, Vec<String>)> = cand.changed_badges.iter().map(|b| (b.as_str(), (0, vec![]))).collect();
    let mut scanned = 0;
    let mut after: Option<String> = None;
    loop {
        let page = store.users_page(tenant, after.as_deref(), 512)?;
        if page.is_empty() {
            break;
        }
        for user in page.iter().filter(|u| keep(u)) {
            scanned += 1;
            let owned = current_state(store, catalogues, tenant, user)?;
            let log: Vec<_> = store.events_after(tenant, user, 0, usize::MAX)?.into_iter().map(|(_, e)| e).collect();
            let would = replay::from_scratch(tenant, user, &log, &cand.catalogue);
            for (badge, (n, sample)) in counts.iter_mut() {
                if would.badges.contains_key(badge) && !owned.badges.contains_key(badge) {
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

/// Previews made by several nodes, each for the users it serves, as one: counts summed, each
/// badge's sample the first ten users in key order.
pub fn merge_previews(version: u64, new_stats: usize, reports: impl IntoIterator<Item = PreviewReport>) -> PreviewReport {
    let mut scanned = 0;
    let mut badges: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    for r in reports {
        scanned += r.users_scanned;
        for b in r.badges {
            let e = badges.entry(b.badge).or_default();
            e.0 += b.would_earn;
            e.1.extend(b.sample);
        }
    }
    let badges = badges
        .into_iter()
        .map(|(badge, (would_earn, mut sample))| {
            sample.sort();
            sample.truncate(10);
            BadgePreview { badge, would_earn, sample }
        })
        .collect();
    PreviewReport { version, users_scanned: scanned, badges, new_stats }
}

/// A user's durable state: the snapshot and the log after it. Blocking.
pub fn current_state(store: &Store, catalogues: &Catalogues, tenant: &str, user: &str) -> Result<UserState, StoreError> {
    Ok(replay::restore(store, catalogues, tenant, user)?.state)
}

/// The catalogue's badges a state owns, for tests and reports.
pub fn owned<'a>(st: &'a UserState, cat: &'a Catalogue) -> impl Iterator<Item = &'a str> {
    cat.badges.iter().filter(|b| st.badges.contains_key(&b.id)).map(|b| &*b.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes' previews, each of the users it serves, add up to one node's of them all.
    #[test]
    fn previews_of_several_nodes_add_up_with_the_first_ten_users_as_the_sample() {
        let report = |scanned, badges: Vec<(&str, u64, Vec<&str>)>| PreviewReport {
            version: 7,
            users_scanned: scanned,
            badges: badges.into_iter().map(|(b, n, s)| BadgePreview { badge: b.into(), would_earn: n, sample: s.into_iter().map(String::from).collect() }).collect(),
            new_stats: 1,
        };
        let a = report(30, vec![("x", 12, vec!["u01", "u03", "u05", "u07", "u09", "u11", "u13", "u15", "u17", "u19"]), ("y", 0, vec![])]);
        let b = report(25, vec![("x", 3, vec!["u02", "u04", "u06"]), ("y", 1, vec!["u08"])]);
        let merged = merge_previews(7, 1, [a, b]);
        assert_eq!(merged.users_scanned, 55);
        assert_eq!(merged.badges[0], BadgePreview { badge: "x".into(), would_earn: 15, sample: ["u01", "u02", "u03", "u04", "u05", "u06", "u07", "u09", "u11", "u13"].map(String::from).to_vec() });
        assert_eq!(merged.badges[1], BadgePreview { badge: "y".into(), would_earn: 1, sample: vec!["u08".into()] });
        assert_eq!(merge_previews(7, 1, []), report(0, vec![]), "no node: nothing scanned");
    }
}

