//! Backfill jobs in cluster mode: each job, with how far the users of each partition have been
//! walked, as one entry of the key-value bucket `accolade-jobs`, changed by compare-and-set.
//!
//! A job is the backfill of one catalogue version (its id is that version: one history for the
//! cluster, so one id). The node serving a partition walks its users (`backfill.rs`) and moves
//! the partition's part of the job forward; a part only ever moves forward (`Job::advance`), so
//! a node that lost the partition and writes late cannot set it back, and the node that serves
//! it next goes on from where the part says. The job is done once every partition's part is.

use super::partition::PARTITIONS;
use super::{patiently, ClusterError};
use crate::core::Millis;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The bucket of backfill jobs.
pub const BUCKET: &str = "accolade-jobs";

/// One backfill job, as the bucket holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub tenant: String,
    /// The catalogue version it backfills.
    pub id: u64,
    pub badges: Vec<String>,
    /// Stat ids (hex) it fills in.
    pub new_stats: Vec<String>,
    pub notify: bool,
    pub created_at: Millis,
    pub cancelled_at: Option<Millis>,
    /// How far each partition's users have been walked; a partition not yet begun is absent.
    pub parts: BTreeMap<u16, Part>,
}

/// How far one partition's users have been walked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The partition's users when its walk began.
    pub total: u64,
    /// The last user done (users are walked in key order).
    pub cursor: Option<String>,
    pub done: u64,
    pub awards: u64,
    pub finished_at: Option<Millis>,
}

impl Job {
    /// Whether every partition's users have been walked.
    pub fn finished(&self) -> bool {
        (0..PARTITIONS).all(|p| self.parts.get(&p).is_some_and(|part| part.finished_at.is_some()))
    }

    /// When the last partition finished, once all have.
    pub fn finished_at(&self) -> Option<Millis> {
        self.finished().then(|| self.parts.values().filter_map(|p| p.finished_at).max().unwrap_or(self.created_at))
    }

    /// Takes a walker's view of partition `p`'s part if it is further on than the stored one
    /// (a later cursor, or finished where the stored one is not); true when it was taken.
    pub fn advance(&mut self, p: u16, part: &Part) -> bool {
        let further = match self.parts.get(&p) {
            None => true,
            Some(old) if old.finished_at.is_some() => false,
            Some(old) => part.finished_at.is_some() || part.cursor > old.cursor,
        };
        if further {
            self.parts.insert(p, part.clone());
        }
        further
    }
}

fn key(tenant: &str, id: u64) -> String {
    format!("{}.{id}", hex(tenant))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The cluster's backfill jobs.
pub struct Jobs {
    kv: kv::Store,
}

impl Jobs {
    /// `open` on the JetStream of `client`.
    pub async fn for_client(client: async_nats::Client, replicas: usize) -> Result<Jobs, ClusterError> {
        Jobs::open(&jetstream::new(client), replicas).await
    }

    /// Opens (or creates) the bucket.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Jobs, ClusterError> {
        let kv = patiently(&format!("opening bucket {BUCKET}"), || async {
            if let Ok(s) = js.get_key_value(BUCKET).await {
                return Ok(s);
            }
            js.create_key_value(kv::Config { bucket: BUCKET.into(), history: 1, num_replicas: replicas, storage: jetstream::stream::StorageType::File, ..Default::default() }).await
        })
        .await?;
        Ok(Jobs { kv })
    }

    /// Every job as it is now, then each one as it changes, for as long as the receiver is
    /// kept (one watch, caught up again after any reconnect).
    pub fn follow(&self) -> tokio::sync::mpsc::UnboundedReceiver<Job> {
        let mut changes = super::node::follow_bucket(self.kv.clone());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((key, value)) = changes.recv().await {
                let Some(value) = value else { continue };
                match serde_json::from_slice::<Job>(&value) {
                    Ok(job) => {
                        if tx.send(job).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(key, error = %e, "a backfill job does not decode; it is skipped"),
                }
            }
        });
        rx
    }

    /// The bucket's state, once its stream has a leader.
    pub async fn status(&self) -> Result<kv::bucket::Status, kv::StatusError> {
        self.kv.status().await
    }

    /// Stores a new job; an error if one with its id is there already.
    pub async fn create(&self, job: &Job) -> Result<(), String> {
        let body = Bytes::from(serde_json::to_vec(job).expect("a job encodes"));
        self.kv.create(key(&job.tenant, job.id), body).await.map(|_| ()).map_err(|e| format!("storing the job failed: {e}"))
    }

    async fn entry(&self, k: &str) -> Result<Option<(Job, u64)>, String> {
        match super::node::fresh_entry(&self.kv, k).await {
            Ok(Some((value, revision))) => {
                let job = serde_json::from_slice(&value).map_err(|err| format!("job {k} does not decode: {err}"))?;
                Ok(Some((job, revision)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading job {k} failed: {e}")),
        }
    }

    /// One job of `tenant`.
    pub async fn get(&self, tenant: &str, id: u64) -> Result<Option<Job>, String> {
        Ok(self.entry(&key(tenant, id)).await?.map(|(j, _)| j))
    }

    /// Every job, of `tenant` or (`None`) of every tenant, oldest first.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<Job>, String> {
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(k) => k.try_collect().await.map_err(|e| format!("listing jobs failed: {e}"))?,
            Err(e) => return Err(format!("listing jobs failed: {e}")),
        };
        let prefix = tenant.map(|t| format!("{}.", hex(t)));
        let mut jobs = Vec::new();
        for k in keys.iter().filter(|k| prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str()))) {
            if let Some((j, _)) = self.entry(k).await? {
                jobs.push(j);
            }
        }
        jobs.sort_by_key(|j| (j.tenant.clone(), j.id));
        Ok(jobs)
    }

    /// Changes a job by `f` (which says whether it changed anything), retried against the
    /// newest value until the compare-and-set takes; the job as stored after, `None` if there
    /// is no such job.
    pub async fn change(&self, tenant: &str, id: u64, mut f: impl FnMut(&mut Job) -> bool) -> Result<Option<Job>, String> {
        let k = key(tenant, id);
        for _ in 0..100 {
            let Some((mut job, revision)) = self.entry(&k).await? else { return Ok(None) };
            if !f(&mut job) {
                return Ok(Some(job));
            }
            let body = Bytes::from(serde_json::to_vec(&job).expect("a job encodes"));
            match self.kv.update(&k, body, revision).await {
                Ok(_) => return Ok(Some(job)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(format!("storing job {k} failed: {e}")),
            }
        }
        Err(format!("job {k} kept changing under this node; try again"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(cursor: &str, done: u64, finished: bool) -> Part {
        Part { total: 10, cursor: Some(cursor.into()), done, awards: 0, finished_at: finished.then_some(5) }
    }

    /// A partition's part only moves forward, so a node that lost the partition and writes
    /// late sets nothing back, and a finished part stays finished.
    #[test]
    fn a_part_only_moves_forward() {
        let mut j = Job { tenant: "t".into(), id: 2, badges: vec![], new_stats: vec![], notify: false, created_at: 1, cancelled_at: None, parts: BTreeMap::new() };
        assert!(j.advance(7, &part("b", 2, false)));
        assert!(!j.advance(7, &part("a", 1, false)), "an earlier cursor, written late");
        assert!(!j.advance(7, &part("b", 2, false)), "the same again");
        assert!(j.advance(7, &part("c", 3, false)));
        assert!(j.advance(7, &part("c", 3, true)), "finished at the same cursor");
        assert!(!j.advance(7, &part("d", 4, false)), "finished stays finished");
        assert_eq!(j.parts[&7], part("c", 3, true));
        assert!(!j.finished(), "one partition of all");
        for p in 0..PARTITIONS {
            j.advance(p, &part("z", 1, true));
        }
        assert!(j.finished());
        assert_eq!(j.finished_at(), Some(5));
    }
}
