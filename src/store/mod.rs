//! Durable storage in sled, and the group-commit persister. The only module that imports sled.
//!
//! Trees (every key of a user starts with `tenant \0 user \0`, so one user's data is one key
//! range and can be partitioned later):
//! - `users`:  user key -> snapshot of the user's state (versioned bincode).
//! - `events`: user key + seq (big-endian u64) -> the accepted event, when it was received,
//!   and the pushes it caused (as sent), which recovery reads back, behind a flags byte that
//!   says whether the record is found by its id (format 3). Keeping the pushes in the event's
//!   own record makes an accepted event one write.
//! - `ids`: user key + seq (big-endian u64) -> the ids (hash, seq) of the user's records found
//!   by id, after the previous chunk and up to that seq: one chunk per snapshot (`ids.rs`).
//!   An id counts once per user for as long as its event is retained.
//! - `dedup`: only in a store of format 1 (before `ids`), `tenant \0 event_id` -> user key +
//!   seq: read beside their types to classify that store's old records at each user's first
//!   load, never written, emptied by retention.
//! - `snapseq`: user key -> the sequence number of its snapshot (read by the retention sweep
//!   without decoding whole snapshots).
//! - `catalogues`: `tenant \0` + version (big-endian u64) -> that catalogue version's document.
//! - `dead`: `tenant \0` + id -> a dead letter (an ingested event that was refused).
//! - `jobs`: `tenant \0` + id -> a backfill job and how far it got.
//! - `boards`: user key -> the user's leaderboard scores (each board's current period, and the
//!   one before until it is closed): one record per user, rewritten with the event that changed
//!   it (once per group commit, `persister::coalesce_boards`), and read back into the in-memory
//!   rankings at start.
//! - `archive`: `tenant \0 board \0 period \0 segment \0` + rank (big-endian u32) -> the final
//!   standing at that rank of a closed period.
//! - `goals`: `tenant \0 goal id` -> an assigned goal as the API lists it (the assignee's actor
//!   writes it with each change of status; the goal sweeper marks the assigner notified).
//! - `closed`: `tenant \0 board \0 period` -> the record that the period was archived and its
//!   awards made (written last, so a restart mid-close finishes the close).
//! - `hooks`: `tenant \0` + id -> a webhook endpoint (URL, events, secret).
//! - `outbox`: `tenant \0` + hook id + delivery id (both big-endian u64) -> a notification
//!   still to be delivered to that endpoint. The user's actor writes it in the same batch as
//!   the event that caused it; the endpoint's worker removes it once delivered or given up.
//! - `hooklog`: same key -> how a delivery ended (delivered or failed), the newest kept.
//! - `links`: entity key + the other entity's id -> since when: a user's teams under her key,
//!   a team's members under the team's (docs/teams.md), each written through its own log.
//! - `mail`: sender's user key + her event's seq (big-endian u64) + the team's entity id -> the
//!   event as the team counts it, written in the batch of her event and removed once the team
//!   has it (docs/teams.md).
//! - `expiries`: user key -> the user's earliest badge expiry (big-endian i64), for the expiry
//!   sweep; only users holding a badge with `valid_for` have one. Written by the actor before
//!   the log record of the change that moved it.
//! - `community`: user key + goal id -> the user's share of a community goal (written with the
//!   event that changed it); under the key of entity U+0001 `community`, each closed goal's
//!   outcome (`community.rs`, docs/teams.md).
//!
//! Every value starts with a format version byte so the encoding can evolve (the expiry
//! index's bare number, read only here, aside). User snapshots are format 2; format 1 is read
//! through `legacy.rs`. Writes go through
//! the persister, which takes whatever has queued up as one batch, inserts it (a large batch
//! on two threads, each user's jobs always on the same one) and then flushes once, so sled is
//! flushed per batch, never per event. sled is a patched 0.34.7 (`vendor/sled`): its flush
//! writes on the flushing thread and its IO pool wakes one thread per piece of work, which
//! changes how many threads wake per flush, not what is on disk.

mod community;
mod hooks;
mod ids;
mod keys;
mod legacy;
mod log;
mod partitions;
mod persister;
mod teams;
/// Builders for the writes an accepted event causes, so callers never see key layouts.
pub mod writes;

/// The kinds of record that take an id from the store. Each counts from 1 on its own, and
/// never gives an id twice, across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    DeadLetter,
    Job,
    Webhook,
    /// A webhook notification (the same id for every endpoint it goes to).
    Delivery,
}

impl IdKind {
    /// The counter's key in the default tree (not one of `TreeId`'s: node-local, never in a
    /// cluster changelog).
    fn key(self) -> &'static [u8] {
        match self {
            IdKind::DeadLetter => b"id/dead-letter",
            IdKind::Job => b"id/job",
            IdKind::Webhook => b"id/webhook",
            IdKind::Delivery => b"id/delivery",
        }
    }
}

/// The highest id among a tree's keys, each of which ends with its id (big-endian u64).
fn highest_id(tree: &sled::Tree) -> Result<u64, StoreError> {
    let mut highest = 0;
    for k in tree.iter().keys() {
        let k = k?;
        if let Some(tail) = k.len().checked_sub(8).and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok()) {
            highest = highest.max(u64::from_be_bytes(tail));
        }
    }
    Ok(highest)
}

pub use community::{Outcome, Share};
pub use ids::{id_hash, IdIndex};
pub use legacy::format1_found_by_place;
pub use keys::*;
pub use log::{Done, EventLog};
pub use teams::{link, mail, mail_done, unlink, Link, Mail, MailRow};
use persister::*;

use crate::core::Millis;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record {key}: {why}")]
    Corrupt { key: String, why: String },
    #[error("the persister has stopped")]
    Stopped,
    /// A write to the disk failed earlier (a full disk, say). sled's trees in memory may hold
    /// writes the disk refused, so nothing is read or written until the process restarts.
    #[error("storage failed ({0}); nothing is read or written until the server restarts from disk")]
    Failed(String),
}

/// What a retention sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub users: u64,
    pub events: u64,
}

/// Counters the persister keeps for `/metrics`.
#[derive(Default)]
pub struct PersistStats {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub writes: AtomicU64,
    /// Time in `apply_batch` (CPU in sled) and in `flush` (the disk), in microseconds.
    pub apply_micros_total: AtomicU64,
    pub flush_micros_total: AtomicU64,
    pub last_batch_jobs: AtomicU64,
    /// Disk operations in progress, for the watchdog (`/healthz`, `--stall-exit-secs`).
    pub disk: Arc<crate::watchdog::DiskWatch>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    events: sled::Tree,
    dedup: sled::Tree,
    snapseq: sled::Tree,
    catalogues: sled::Tree,
    dead: sled::Tree,
    jobs: sled::Tree,
    boards: sled::Tree,
    archive: sled::Tree,
    closed: sled::Tree,
    goals: sled::Tree,
    hooks: sled::Tree,
    outbox: sled::Tree,
    hooklog: sled::Tree,
    links: sled::Tree,
    mail: sled::Tree,
    expiries: sled::Tree,
    analytics: sled::Tree,
    ids: sled::Tree,
    community: sled::Tree,
    // Declared before `persister`: dropping the last handle closes the channel first, then
    // waits for the persister thread to finish, so the database is closed (and its lock
    // released) when the last handle is gone, not some time later.
    tx: mpsc::Sender<Job>,
    pub stats: Arc<PersistStats>,
    persister: Arc<PersisterThread>,
}

impl Store {
    /// Opens (or creates) the database and starts the persister thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(sled::Config::new().path(dir).cache_capacity(256 * 1024 * 1024).flush_every_ms(None))
    }

    /// A store that lives only as long as it is open (its files are removed when it is
    /// dropped): for working on records away from the served store, as compacting a
    /// partition's changelog does.
    pub fn open_temporary() -> Result<Store, StoreError> {
        Store::open_with(sled::Config::new().temporary(true).cache_capacity(64 * 1024 * 1024).flush_every_ms(None))
    }

    fn open_with(config: sled::Config) -> Result<Store, StoreError> {
        let db = config.open()?;
        let (tx, rx) = mpsc::channel::<Job>();
        let store = Store {
            users: db.open_tree("users")?,
            events: db.open_tree("events")?,
            dedup: db.open_tree("dedup")?,
            snapseq: db.open_tree("snapseq")?,
            catalogues: db.open_tree("catalogues")?,
            dead: db.open_tree("dead")?,
            jobs: db.open_tree("jobs")?,
            boards: db.open_tree("boards")?,
            archive: db.open_tree("archive")?,
            closed: db.open_tree("closed")?,
            goals: db.open_tree("goals")?,
            hooks: db.open_tree("hooks")?,
            outbox: db.open_tree("outbox")?,
            hooklog: db.open_tree("hooklog")?,
            links: db.open_tree("links")?,
            mail: db.open_tree("mail")?,
            expiries: db.open_tree("expiries")?,
            analytics: db.open_tree("analytics")?,
            ids: db.open_tree("ids")?,
            community: db.open_tree("community")?,
            db,
            tx,
            stats: Arc::new(PersistStats::default()),
            persister: Arc::new(PersisterThread(std::sync::Mutex::new(None))),
        };
        let worker = store.clone_without_sender();
        let handle = std::thread::Builder::new().name("accolade-persister".into()).spawn(move || worker.run_persister(rx)).map_err(|e| {
            StoreError::Corrupt { key: "persister".into(), why: e.to_string() }
        })?;
        *store.persister.0.lock().expect("fresh mutex") = Some(handle);
        store.seed_ids()?;
        store.mark_format()?;
        Ok(store)
    }

    fn clone_without_sender(&self) -> PersisterSide {
        PersisterSide {
            db: self.db.clone(),
            trees: [
                self.users.clone(),
                self.events.clone(),
                self.dedup.clone(),
                self.snapseq.clone(),
                self.catalogues.clone(),
                self.dead.clone(),
                self.jobs.clone(),
                self.boards.clone(),
                self.archive.clone(),
                self.closed.clone(),
                self.goals.clone(),
                self.hooks.clone(),
                self.outbox.clone(),
                self.hooklog.clone(),
                self.links.clone(),
                self.mail.clone(),
                self.expiries.clone(),
                self.analytics.clone(),
                self.ids.clone(),
                self.community.clone(),
            ],
            stats: self.stats.clone(),
        }
    }

    /// How many handles on this store are open (it and its clones). The database closes when
    /// the last one goes, which a restart in the same process waits for.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.persister)
    }

    /// Queues writes; `done` runs on the persister thread once they are flushed to disk (or
    /// failed), after the completions of everything submitted before (see `fair_batch`).
    pub fn submit(&self, writes: Vec<Write>, done: impl FnOnce(Result<(), String>) + Send + 'static) -> Result<(), StoreError> {
        self.readable()?;
        self.tx.send(Job { writes, done: Box::new(done), lane: 0, user: None }).map_err(|_| StoreError::Stopped)
    }

    /// `submit` for one user's writes: every job of a user is inserted by the same persister
    /// thread, so the user's writes keep their order.
    pub fn submit_user(&self, tenant: &str, user: &str, writes: Vec<Write>, done: impl FnOnce(Result<(), String>) + Send + 'static) -> Result<(), StoreError> {
        EventLog::append(self, tenant, user, writes, Box::new(done))
    }

    /// Waits until everything queued so far is durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(vec![], move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| StoreError::Stopped)?.map_err(|e| self.flush_error(e))
    }

    /// The error for a job the persister failed: the store's failure, once it has failed.
    fn flush_error(&self, why: String) -> StoreError {
        match self.failure() {
            Some(f) => StoreError::Failed(f.to_string()),
            None => StoreError::Corrupt { key: "flush".into(), why },
        }
    }

    /// Why the store failed closed, if a write or flush has failed (see `readable`).
    pub fn failure(&self) -> Option<&str> {
        self.stats.disk.failure()
    }

    /// Every read starts here. Once a write or flush has failed, sled's trees in memory may
    /// hold what the disk refused (the failed batch's inserts stay in them), and sled refuses
    /// every later write; so from then on nothing is read, and the process is restarted from
    /// the disk (`watchdog`). Reads that must not see a failed batch's writes (reading back a matched id's record,
    /// a user's rebuild) look again after reading, so that one that raced the failure is not
    /// taken either.
    pub(super) fn readable(&self) -> Result<(), StoreError> {
        match self.failure() {
            Some(why) => Err(StoreError::Failed(why.to_string())),
            None => Ok(()),
        }
    }

    /// Marks the store as of this release's format, refusing one of a later format. A store of
    /// format 1 needs no rewriting: each user's ids are read from her log at her first load
    /// (`ids.rs`), and the legacy `dedup` tree is only read for that, and emptied by retention.
    fn mark_format(&self) -> Result<(), StoreError> {
        let found = self.db.get(STORE_FORMAT_KEY)?.and_then(|v| v.first().copied()).unwrap_or(1);
        if found > STORE_FORMAT {
            return Err(StoreError::Corrupt { key: String::from_utf8_lossy(STORE_FORMAT_KEY).into_owned(), why: format!("the store is of format {found}, written by a later release; this one reads up to format {STORE_FORMAT}") });
        }
        if found < STORE_FORMAT {
            self.db.insert(STORE_FORMAT_KEY, &[STORE_FORMAT])?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// Submits writes and waits until they are durable.
    pub async fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(writes, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.map_err(|_| StoreError::Stopped)?.map_err(|e| self.flush_error(e))
    }

    /// A fresh id, unique in this database across restarts.
    pub fn next_id(&self, kind: IdKind) -> Result<u64, StoreError> {
        self.readable()?;
        let key = kind.key();
        // The counter is in the default tree, flushed with every batch: by the time a record
        // with this id is durable, so is the counter past it, and no id is given twice.
        let next = self.db.update_and_fetch(key, |old| {
            let n = old.and_then(|v| <[u8; 8]>::try_from(v).ok()).map_or(0, u64::from_be_bytes);
            Some(n.saturating_add(1).to_be_bytes().to_vec())
        })?;
        next.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes).ok_or_else(|| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), why: "an id counter is not 8 bytes".into() })
    }

    /// Once per store: a store written before ids were counted per kind (by sled's one
    /// generator, which jumps by a million at each start) counts every kind on from above any
    /// id that generator gave, so that no id is given twice, even one whose record is gone (a
    /// discarded dead letter, a delivered notification). A new store counts each kind from 1.
    fn seed_ids(&self) -> Result<(), StoreError> {
        const SEEDED: &[u8] = b"id/per-kind";
        if self.db.get(SEEDED)?.is_some() {
            return Ok(());
        }
        if self.db.was_recovered() {
            let floor = self.db.generate_id()?;
            for (kind, highest) in [
                (IdKind::DeadLetter, highest_id(&self.dead)?),
                (IdKind::Job, highest_id(&self.jobs)?),
                (IdKind::Webhook, highest_id(&self.hooks)?),
                (IdKind::Delivery, highest_id(&self.outbox)?.max(highest_id(&self.hooklog)?)),
            ] {
                let _ = self.db.compare_and_swap(kind.key(), None as Option<&[u8]>, Some(&highest.max(floor).to_be_bytes()[..]))?;
            }
        }
        self.db.insert(SEEDED, &b"1"[..])?;
        Ok(())
    }

    /// Whether anything is stored for a user.
    pub fn has_user(&self, tenant: &str, user: &str) -> Result<bool, StoreError> {
        self.readable()?;
        let uk = user_key(tenant, user);
        Ok(self.users.contains_key(&uk)? || self.events.scan_prefix(&uk).next().transpose()?.is_some())
    }

    /// Up to `limit` user ids of a tenant in key order, after `after` (exclusive).
    pub fn users_page(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, StoreError> {
        self.readable()?;
        let prefix = tenant_prefix(tenant);
        let start = match after {
            Some(u) => {
                let mut k = user_key(tenant, u);
                k.push(0); // just past `after`
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for kv in self.users.range(start..) {
            let (k, _) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let user = &k[prefix.len()..k.len() - 1];
            // Teams are entities beside the users (their ids begin with U+0001), not users.
            if user.first() == Some(&1) {
                continue;
            }
            out.push(String::from_utf8_lossy(user).into_owned());
        }
        Ok(out)
    }

    /// How many users of a tenant have a snapshot (every user who ever had an event does).
    pub fn count_users(&self, tenant: &str) -> Result<u64, StoreError> {
        self.readable()?;
        let prefix = tenant_prefix(tenant);
        let mut n = 0;
        for k in self.users.scan_prefix(&prefix).keys() {
            // Teams (ids beginning with U+0001) are not users.
            n += u64::from(k?.get(prefix.len()) != Some(&1));
        }
        Ok(n)
    }

    /// A user's analytics record (`analytics::UserFacts`, stored with the snapshot), as stored.
    pub fn analytics_record(&self, tenant: &str, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.readable()?;
        Ok(self.analytics.get(user_key(tenant, user))?.map(|v| v.to_vec()))
    }

    /// Up to `limit` stored log records of a tenant's users in key order (user, then sequence number),
    /// from the record keyed `from` (included when `inclusive`, else just after it), each with
    /// its key: an export's page. A short page means the end.
    #[allow(clippy::type_complexity)]
    pub fn tenant_events_page(&self, tenant: &str, from: Option<&[u8]>, inclusive: bool, limit: usize) -> Result<Vec<(Vec<u8>, String, u64, StoredEvent)>, StoreError> {
        self.readable()?;
        let prefix = tenant_prefix(tenant);
        let start = match from {
            Some(k) if k.starts_with(&prefix) => {
                let mut k = k.to_vec();
                if !inclusive {
                    k.push(0); // just past it
                }
                k
            }
            _ => prefix.clone(),
        };
        // Teams' logs (entity ids beginning with U+0001, docs/teams.md) are not users' and
        // are stepped over whole: they repeat the members' events.
        let (mut teams_from, mut teams_to) = (prefix.clone(), prefix.clone());
        teams_from.push(1);
        teams_to.push(2);
        let users = self.events.range(start.clone()..teams_from.clone().max(start.clone())).chain(self.events.range(teams_to.max(start)..));
        let mut out = Vec::new();
        for kv in users {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let rest = &k[prefix.len()..];
            let Some(nul) = rest.iter().position(|&b| b == 0) else { continue };
            let user = String::from_utf8_lossy(&rest[..nul]).into_owned();
            let seq = u64::from_be_bytes(rest[nul + 1..].try_into().unwrap_or_default());
            out.push((k.to_vec(), user, seq, decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Every (tenant, user) with a snapshot, for the `replay` check.
    pub fn all_users(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for kv in self.users.iter() {
            let (k, _) = kv?;
            let mut parts = k[..k.len().saturating_sub(1)].splitn(2, |&b| b == 0);
            let t = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let u = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            out.push((t, u));
        }
        Ok(out)
    }

    /// Every stored value of one kind for a tenant (catalogue versions, dead letters, jobs),
    /// oldest first, after id `after` (from the first when `None`), at most `limit`.
    pub fn list<T: serde::de::DeserializeOwned>(&self, kind: Kind, tenant: &str, after: Option<u64>, limit: usize) -> Result<Vec<(u64, T)>, StoreError> {
        self.readable()?;
        let tree = self.kind_tree(kind);
        let prefix = tenant_prefix(tenant);
        let mut out = Vec::new();
        let from = after.map_or(0, |a| a.saturating_add(1));
        for kv in tree.range(seq_key(&prefix, from)..=seq_key(&prefix, u64::MAX)).take(limit) {
            let (k, v) = kv?;
            out.push((u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or_default()), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// The newest stored value of one kind for a tenant.
    pub fn last<T: serde::de::DeserializeOwned>(&self, kind: Kind, tenant: &str) -> Result<Option<(u64, T)>, StoreError> {
        self.readable()?;
        let prefix = tenant_prefix(tenant);
        match self.kind_tree(kind).range(seq_key(&prefix, 0)..=seq_key(&prefix, u64::MAX)).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some((u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or_default()), decode(&k, &v)?)))
            }
            None => Ok(None),
        }
    }

    pub fn get<T: serde::de::DeserializeOwned>(&self, kind: Kind, tenant: &str, id: u64) -> Result<Option<T>, StoreError> {
        self.readable()?;
        let k = seq_key(&tenant_prefix(tenant), id);
        match self.kind_tree(kind).get(&k)? {
            Some(v) => Ok(Some(decode(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// Every tenant that has a value of this kind (to resume jobs at start).
    pub fn tenants_with(&self, kind: Kind) -> Result<Vec<String>, StoreError> {
        self.readable()?;
        let mut out: Vec<String> = Vec::new();
        for kv in self.kind_tree(kind).iter() {
            let (k, _) = kv?;
            let t = String::from_utf8_lossy(k.split(|&b| b == 0).next().unwrap_or_default()).into_owned();
            if out.last() != Some(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Every stored leaderboard score, of every user (rebuilt into rankings at start; the
    /// caller skips periods already closed).
    pub fn board_entries(&self) -> Result<Vec<(BoardKey, String, BoardEntry)>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for kv in self.boards.iter() {
            let (k, v) = kv?;
            board_record(&k, &v, &mut out)?;
        }
        Ok(out)
    }

    /// Every record the store holds, tree by tree, as the writes that would make it.
    pub fn contents(&self) -> Result<Vec<Write>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for (id, tree) in TreeId::ALL.iter().zip(self.trees()) {
            for kv in tree.iter() {
                let (k, v) = kv?;
                out.push(Write::Put(*id, k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }

    /// The trees, in the order of `TreeId::ALL`.
    fn trees(&self) -> [&sled::Tree; 20] {
        [
            &self.users, &self.events, &self.dedup, &self.snapseq, &self.catalogues, &self.dead, &self.jobs, &self.boards, &self.archive, &self.closed, &self.goals, &self.hooks,
            &self.outbox, &self.hooklog, &self.links, &self.mail, &self.expiries, &self.analytics, &self.ids, &self.community,
        ]
    }

    /// The users with a badge expiry due by `now`, from the expiry index: (tenant, user).
    pub fn expiries_due(&self, now: crate::core::Millis) -> Result<Vec<(String, String)>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for kv in self.expiries.iter() {
            let (k, v) = kv?;
            let due = i64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
            if due <= now {
                // `tenant \0 user \0` (see `user_key`).
                let mut parts = k.split(|&b| b == 0);
                let tenant = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let user = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                out.push((tenant, user));
            }
        }
        Ok(out)
    }

    /// The scores in the leaderboard records at `keys` (keys of the boards tree, as a
    /// partition's changelog names them); keys with no record are skipped.
    pub fn board_entries_at<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<(BoardKey, String, BoardEntry)>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for k in keys {
            if let Some(v) = self.boards.get(k)? {
                board_record(k, &v, &mut out)?;
            }
        }
        Ok(out)
    }

    /// A closed period's final standings in one segment, from 1-based rank `from`.
    pub fn archived(&self, b: &BoardKey, from: u32, limit: usize) -> Result<Vec<(u32, Archived)>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for kv in self.archive.range(archive_key(b, from)..=archive_key(b, u32::MAX)).take(limit) {
            let (k, v) = kv?;
            let rank = u32::from_be_bytes(k[k.len() - 4..].try_into().unwrap_or_default());
            out.push((rank, decode(&k, &v)?));
        }
        Ok(out)
    }

    /// The record of a closed period, if it was closed.
    pub fn closed(&self, tenant: &str, board: &str, period: &str) -> Result<Option<ClosedPeriod>, StoreError> {
        self.readable()?;
        let k = closed_key(tenant, board, period);
        match self.closed.get(&k)? {
            Some(v) => Ok(Some(decode(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// Every closed period of a board, oldest label first.
    pub fn closed_periods(&self, tenant: &str, board: &str) -> Result<Vec<ClosedPeriod>, StoreError> {
        self.readable()?;
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        prefix.extend_from_slice(board.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.closed.scan_prefix(&prefix) {
            let (k, v) = kv?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    pub fn goal(&self, tenant: &str, id: &str) -> Result<Option<GoalRecord>, StoreError> {
        self.readable()?;
        let k = goal_key(tenant, id);
        match self.goals.get(&k)? {
            Some(v) => Ok(Some(decode(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// Every goal of a tenant, by id. A scan: fine for the goals of a tenant, and the next step
    /// at scale is an index by assignee and assigner.
    pub fn goals(&self, tenant: &str) -> Result<Vec<GoalRecord>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for kv in self.goals.scan_prefix(tenant_prefix(tenant)) {
            let (k, v) = kv?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Every goal still needing work from the sweeper: open with a due date, or ended and its
    /// assigner not yet told. (tenant, record)
    pub fn goals_to_sweep(&self) -> Result<Vec<(String, GoalRecord)>, StoreError> {
        self.readable()?;
        use crate::core::goal::GoalStatus;
        let mut out = Vec::new();
        for kv in self.goals.iter() {
            let (k, v) = kv?;
            let g: GoalRecord = decode(&k, &v)?;
            let pending = match g.status {
                GoalStatus::Open => g.spec.due.is_some(),
                GoalStatus::Completed | GoalStatus::Missed => !g.notified,
                GoalStatus::Cancelled => false,
            };
            if pending {
                let tenant = String::from_utf8_lossy(k.split(|&b| b == 0).next().unwrap_or_default()).into_owned();
                out.push((tenant, g));
            }
        }
        Ok(out)
    }

    fn kind_tree(&self, kind: Kind) -> &sled::Tree {
        match kind {
            Kind::Catalogue => &self.catalogues,
            Kind::DeadLetter => &self.dead,
            Kind::Job => &self.jobs,
            Kind::Webhook => &self.hooks,
        }
    }

    /// Every stored value of one kind, of every tenant: (tenant, id, value).
    pub fn all_of<T: serde::de::DeserializeOwned>(&self, kind: Kind) -> Result<Vec<(String, u64, T)>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for kv in self.kind_tree(kind).iter() {
            let (k, v) = kv?;
            let Some(split) = k.iter().position(|&b| b == 0) else { continue };
            let id = u64::from_be_bytes(k[split + 1..].try_into().unwrap_or_default());
            out.push((String::from_utf8_lossy(&k[..split]).into_owned(), id, decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Flushes synchronously (shutdown). After a failure it does not touch sled: what sled
    /// holds in memory is not to be written now, and sled can hang in a flush after an error.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.readable()?;
        let _busy = self.stats.disk.begin("final flush", std::time::Instant::now());
        let flushed = self.db.flush().map(|_| ()).map_err(StoreError::from);
        if let Err(e) = &flushed {
            self.fail_on(e);
        }
        flushed
    }
}


/// Decodes one user's leaderboard record (key `tenant \0 user \0`) into `out`.
fn board_record(k: &[u8], v: &[u8], out: &mut Vec<(BoardKey, String, BoardEntry)>) -> Result<(), StoreError> {
    let mut parts = k[..k.len().saturating_sub(1)].splitn(2, |&b| b == 0);
    let tenant = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let user = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let scores: Vec<(String, String, String, BoardEntry)> = decode(k, v)?;
    for (board, period, segment, e) in scores {
        out.push((BoardKey { tenant: tenant.clone(), board, period, segment }, user.clone(), e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written before ids were counted per kind never gives an id its old generator
    /// gave (a record kept, or one gone since, such as a discarded dead letter); a new store
    /// counts each kind from 1.
    #[test]
    fn ids_per_kind_start_above_every_old_id_and_at_one_in_a_new_store() {
        let old = tempfile::tempdir().unwrap();
        {
            let db = sled::open(old.path()).unwrap();
            let mut k = tenant_prefix("demo");
            k.extend_from_slice(&7u64.to_be_bytes());
            db.open_tree("dead").unwrap().insert(k, vec![1u8]).unwrap();
            // Ids 0 to 11 given, 11 to a webhook endpoint deleted since.
            for _ in 0..12 {
                db.generate_id().unwrap();
            }
            db.flush().unwrap();
        }
        let store = Store::open(old.path()).unwrap();
        assert!(store.next_id(IdKind::DeadLetter).unwrap() > 11);
        assert!(store.next_id(IdKind::Webhook).unwrap() > 11);
        let job = store.next_id(IdKind::Job).unwrap();
        drop(store);
        // Seeded once: reopened, each kind goes on by one.
        let store = Store::open(old.path()).unwrap();
        assert_eq!(store.next_id(IdKind::Job).unwrap(), job + 1);
        drop(store);

        let new = tempfile::tempdir().unwrap();
        let store = Store::open(new.path()).unwrap();
        assert_eq!([IdKind::DeadLetter, IdKind::Job, IdKind::Webhook, IdKind::Delivery].map(|k| store.next_id(k).unwrap()), [1, 1, 1, 1]);
    }
}
