//! Durable storage in sled, and the group-commit persister. The only module that imports sled.
//!
//! Trees (every key of a user starts with `tenant \0 user \0`, so one user's data is one key
//! range and can be partitioned later):
//! - `users`:  user key -> snapshot of the user's state (versioned bincode).
//! - `events`: user key + seq (big-endian u64) -> the accepted event, when it was received,
//!   and the pushes it caused (as sent), which recovery reads back. Keeping the pushes in the
//!   event's own record makes an accepted event two writes (this and its dedup key).
//! - `dedup`:  `tenant \0 event_id` -> user key + seq: an id counts once per tenant for as
//!   long as its event is retained.
//! - `snapseq`: user key -> the sequence number of its snapshot (read by the retention sweep
//!   without decoding whole snapshots).
//! - `catalogues`: `tenant \0` + version (big-endian u64) -> that catalogue version's document.
//! - `dead`: `tenant \0` + id -> a dead letter (an ingested event that was refused).
//! - `jobs`: `tenant \0` + id -> a backfill job and how far it got.
//! - `boards`: user key -> the user's leaderboard scores (each board's current period, and the
//!   one before until it is closed): one record per user, rewritten with the event that changed
//!   it, and read back into the in-memory rankings at start.
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
//!
//! Every value starts with a format version byte so the encoding can evolve. Writes go through
//! the persister, which takes whatever has queued up as one batch, inserts it on two threads
//! (each user's jobs always on the same one) and then flushes once, so sled is flushed per
//! batch, never per event.

use crate::core::{Event, Millis, UserState};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

/// The format byte in front of every stored value.
pub const FORMAT_V1: u8 = 1;

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

/// The snapshot of one user: state plus the stream positions it corresponds to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserRecord {
    pub state: UserState,
    /// The last event sequence number folded into `state`.
    pub seq: u64,
    /// The last push offset at the time of the snapshot.
    pub offset: u64,
    /// Changes whenever the user's push history had to start over.
    pub epoch: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event: Event,
    pub received_at: Millis,
    pub catalogue_version: u64,
    /// The pushes this event caused: (offset, the message as sent).
    pub pushes: Vec<(u64, String)>,
}

/// A user's score on an open leaderboard period, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardEntry {
    pub score: f64,
    pub reached: Millis,
    /// When the period ends (exclusive).
    pub end: Millis,
}

/// Which leaderboard period: tenant, board, period label, segment ("" when not segmented).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoardKey {
    pub tenant: String,
    pub board: String,
    pub period: String,
    pub segment: String,
}

/// One row of a closed period's final standings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Archived {
    pub user: String,
    pub score: f64,
    pub reached: Millis,
}

/// That a period was closed: archived, and its awards made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedPeriod {
    pub period: String,
    pub end: Millis,
    pub closed_at: Millis,
    /// (segment, standings archived) for each segment.
    pub segments: Vec<(String, u64)>,
    /// How many awards were made.
    pub awarded: u64,
}

fn board_prefix(tenant: &str, board: &str, period: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + board.len() + period.len() + 3);
    for part in [tenant, board, period] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k
}

fn archive_key(b: &BoardKey, rank: u32) -> Vec<u8> {
    let mut k = board_prefix(&b.tenant, &b.board, &b.period);
    k.extend_from_slice(b.segment.as_bytes());
    k.push(0);
    k.extend_from_slice(&rank.to_be_bytes());
    k
}

fn closed_key(tenant: &str, board: &str, period: &str) -> Vec<u8> {
    let mut k = board_prefix(tenant, board, period);
    k.pop();
    k
}

/// An assigned goal, as listed and queried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalRecord {
    pub spec: crate::core::goal::GoalSpec,
    pub assignee: String,
    pub assigned_at: Millis,
    pub status: crate::core::goal::GoalStatus,
    pub closed_at: Option<Millis>,
    /// Whether the assigner was told how it ended (a `notice` in their history).
    pub notified: bool,
}

fn goal_key(tenant: &str, id: &str) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.extend_from_slice(id.as_bytes());
    k
}

/// What the store holds for a user when its actor starts.
#[derive(Debug, Default)]
pub struct Loaded {
    pub record: Option<UserRecord>,
    /// Events accepted after the snapshot, in order, to replay.
    pub tail: Vec<StoredEvent>,
    pub last_seq: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeId {
    Users,
    Events,
    Dedup,
    SnapSeq,
    Catalogues,
    Dead,
    Jobs,
    Boards,
    Archive,
    Closed,
    Goals,
    Hooks,
    Outbox,
    HookLog,
}

#[derive(Debug)]
pub enum Write {
    Put(TreeId, Vec<u8>, Vec<u8>),
    Del(TreeId, Vec<u8>),
}

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

struct Job {
    writes: Vec<Write>,
    done: Done,
    /// Which of the persister's two threads inserts it (see `run_persister`).
    lane: u8,
    /// The hash of the user whose job it is; `None` for a job of no user, which waits for
    /// everything submitted before it (see `fair_batch`).
    user: Option<u64>,
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
    // Declared before `persister`: dropping the last handle closes the channel first, then
    // waits for the persister thread to finish, so the database is closed (and its lock
    // released) when the last handle is gone, not some time later.
    tx: mpsc::Sender<Job>,
    pub stats: Arc<PersistStats>,
    persister: Arc<PersisterThread>,
}

struct PersisterThread(std::sync::Mutex<Option<std::thread::JoinHandle<()>>>);

impl Drop for PersisterThread {
    fn drop(&mut self) {
        if let Some(h) = self.0.lock().ok().and_then(|mut h| h.take())
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

pub fn user_key(tenant: &str, user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + user.len() + 2);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

fn seq_key(uk: &[u8], n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(uk.len() + 8);
    k.extend_from_slice(uk);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn dedup_key(tenant: &str, event_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + event_id.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(event_id.as_bytes());
    k
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(v, &mut out, bincode::config::standard()).expect("encoding into a Vec cannot fail");
    out
}

pub fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt { key: String::from_utf8_lossy(key).replace('\0', "/"), why };
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => bincode::serde::decode_from_slice(rest, bincode::config::standard()).map(|(v, _)| v).map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!("unknown format version {v}"))),
        None => Err(corrupt("empty value".into())),
    }
}

impl Store {
    /// Opens (or creates) the database and starts the persister thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir).cache_capacity(256 * 1024 * 1024).flush_every_ms(None).open()?;
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
            ],
            stats: self.stats.clone(),
        }
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
        self.readable()?;
        let h = fnv(&user_key(tenant, user));
        self.tx.send(Job { writes, done: Box::new(done), lane: (h & 1) as u8, user: Some(h) }).map_err(|_| StoreError::Stopped)
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
    /// the disk (`watchdog`). Reads that must not see a failed batch's writes (the dedup check,
    /// a user's rebuild) look again after reading, so that one that raced the failure is not
    /// taken either.
    fn readable(&self) -> Result<(), StoreError> {
        match self.failure() {
            Some(why) => Err(StoreError::Failed(why.to_string())),
            None => Ok(()),
        }
    }

    /// Loads a user's snapshot and the events after it. Blocking: call from a blocking task.
    pub fn load_user(&self, tenant: &str, user: &str) -> Result<Loaded, StoreError> {
        self.readable()?;
        let loaded = self.load_user_unchecked(tenant, user)?;
        self.readable()?;
        Ok(loaded)
    }

    fn load_user_unchecked(&self, tenant: &str, user: &str) -> Result<Loaded, StoreError> {
        let uk = user_key(tenant, user);
        let record: Option<UserRecord> = match self.users.get(&uk)? {
            Some(v) => Some(decode(&uk, &v)?),
            None => None,
        };
        let from = record.as_ref().map_or(0, |r| r.seq) + 1;
        let mut tail: Vec<StoredEvent> = Vec::new();
        let mut last_seq = record.as_ref().map_or(0, |r| r.seq);
        for kv in self.events.range(seq_key(&uk, from)..seq_key(&uk, u64::MAX)) {
            let (k, v) = kv?;
            last_seq = u64::from_be_bytes(k[uk.len()..].try_into().unwrap_or_default());
            tail.push(decode(&k, &v)?);
        }
        // Pushes after the snapshot are all in the tail's records.
        let last_offset = tail.iter().flat_map(|e| e.pushes.iter().map(|p| p.0)).max().unwrap_or(0).max(record.as_ref().map_or(0, |r| r.offset));
        Ok(Loaded { record, tail, last_seq, last_offset })
    }

    /// Which user and sequence number an event id was accepted under, if it still is retained.
    pub fn seen(&self, tenant: &str, event_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.readable()?;
        let found = self.dedup.get(dedup_key(tenant, event_id))?.map(|v| v.to_vec());
        self.readable()?;
        Ok(found)
    }

    /// The stored pushes of a user after `offset`, oldest first, each with the time its event
    /// was received. Reads the log backwards and stops at the first event whose pushes are all
    /// at or before `offset`, or after `max_events` events.
    pub fn pushes_after(&self, tenant: &str, user: &str, offset: u64, max_events: usize) -> Result<Vec<(u64, Millis, String)>, StoreError> {
        self.readable()?;
        let uk = user_key(tenant, user);
        let mut out = Vec::new();
        for kv in self.events.scan_prefix(&uk).rev().take(max_events) {
            let (k, v) = kv?;
            let e: StoredEvent = decode(&k, &v)?;
            if e.pushes.first().is_some_and(|p| p.0 <= offset) {
                out.extend(e.pushes.into_iter().rev().filter(|p| p.0 > offset).map(|(o, t)| (o, e.received_at, t)));
                break;
            }
            out.extend(e.pushes.into_iter().rev().map(|(o, t)| (o, e.received_at, t)));
        }
        out.reverse();
        Ok(out)
    }

    /// A user's accepted events, oldest first, after sequence number `after`.
    pub fn events_after(&self, tenant: &str, user: &str, after: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        self.readable()?;
        let uk = user_key(tenant, user);
        let mut out = Vec::new();
        for kv in self.events.range(seq_key(&uk, after.saturating_add(1))..seq_key(&uk, u64::MAX)).take(limit) {
            let (k, v) = kv?;
            out.push((u64::from_be_bytes(k[uk.len()..].try_into().unwrap_or_default()), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Removes events received before `cutoff` that are already folded into their user's
    /// snapshot, with their dedup keys: after this, such an id is only recognised by the user
    /// state's recent-id window. The log tail after a snapshot, which recovery replays, is
    /// never touched. Blocking: run it on a blocking thread.
    pub fn sweep(&self, cutoff: Millis) -> Result<Swept, StoreError> {
        self.readable()?;
        let swept = self.sweep_unchecked(cutoff);
        // Its removals are writes too: when they fail, memory is ahead of the disk.
        if let Err(e) = &swept {
            self.fail_on(e);
        }
        swept
    }

    /// Fails the store closed for a sled error from a write or a flush.
    fn fail_on(&self, e: &StoreError) {
        if let StoreError::Sled(e) = e {
            tracing::error!(error = %e, "a write to the disk failed; the store fails closed until the server restarts");
            self.stats.disk.fail(e.to_string(), std::time::Instant::now());
        }
    }

    fn sweep_unchecked(&self, cutoff: Millis) -> Result<Swept, StoreError> {
        let mut swept = Swept::default();
        for kv in self.snapseq.iter() {
            let (uk, seq) = kv?;
            let snap = u64::from_be_bytes(seq.as_ref().try_into().unwrap_or_default());
            swept.users += 1;
            for ev in self.events.range(seq_key(&uk, 0)..=seq_key(&uk, snap)) {
                let (k, v) = ev?;
                let stored: StoredEvent = decode(&k, &v)?;
                if stored.received_at >= cutoff {
                    break;
                }
                let tenant = uk.split(|&b| b == 0).next().unwrap_or_default();
                let dk = dedup_key(std::str::from_utf8(tenant).unwrap_or_default(), &stored.event.event_id);
                // The dedup key goes only if it still points at this event.
                if self.dedup.get(&dk)?.is_some_and(|w| w.as_ref() == k.as_ref()) {
                    self.dedup.remove(&dk)?;
                }
                self.events.remove(&k)?;
                swept.events += 1;
            }
        }
        let _busy = self.stats.disk.begin("retention sweep flush", std::time::Instant::now());
        self.db.flush()?;
        Ok(swept)
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
    pub fn next_id(&self) -> Result<u64, StoreError> {
        self.readable()?;
        Ok(self.db.generate_id()?)
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
            out.push(String::from_utf8_lossy(user).into_owned());
        }
        Ok(out)
    }

    /// How many users of a tenant have a snapshot (every user who ever had an event does).
    pub fn count_users(&self, tenant: &str) -> Result<u64, StoreError> {
        self.readable()?;
        let mut n = 0;
        for kv in self.users.scan_prefix(tenant_prefix(tenant)) {
            kv?;
            n += 1;
        }
        Ok(n)
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
            let mut parts = k[..k.len().saturating_sub(1)].splitn(2, |&b| b == 0);
            let tenant = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let user = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let scores: Vec<(String, String, String, BoardEntry)> = decode(&k, &v)?;
            for (board, period, segment, e) in scores {
                out.push((BoardKey { tenant: tenant.clone(), board, period, segment }, user.clone(), e));
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

    /// The first `limit` notifications waiting for a webhook endpoint, oldest first.
    pub fn outbox<T: serde::de::DeserializeOwned>(&self, tenant: &str, hook: u64, limit: usize) -> Result<Vec<(u64, T)>, StoreError> {
        self.readable()?;
        hook_range(&self.outbox, tenant, hook, None, limit, false)
    }

    /// How many notifications wait for a webhook endpoint, counted up to `cap` (an endpoint
    /// that has been down for days can have a long outbox, and this is read per API call).
    pub fn outbox_len(&self, tenant: &str, hook: u64, cap: usize) -> Result<usize, StoreError> {
        self.readable()?;
        let p = hook_prefix(tenant, hook);
        Ok(self.outbox.scan_prefix(&p).keys().take(cap).count())
    }

    /// An endpoint's finished deliveries, newest first, with ids below `before`.
    pub fn hook_log<T: serde::de::DeserializeOwned>(&self, tenant: &str, hook: u64, before: Option<u64>, limit: usize) -> Result<Vec<(u64, T)>, StoreError> {
        self.readable()?;
        hook_range(&self.hooklog, tenant, hook, before, limit, true)
    }

    /// The writes that forget an endpoint's finished deliveries but the newest `keep`.
    pub fn hook_log_trim(&self, tenant: &str, hook: u64, keep: usize) -> Result<Vec<Write>, StoreError> {
        self.readable()?;
        let p = hook_prefix(tenant, hook);
        let mut out = Vec::new();
        for k in self.hooklog.scan_prefix(&p).keys().rev().skip(keep) {
            out.push(Write::Del(TreeId::HookLog, k?.to_vec()));
        }
        Ok(out)
    }

    /// The writes that remove outbox rows whose endpoint `exists` says is gone.
    pub fn outbox_orphans(&self, exists: impl Fn(&str, u64) -> bool) -> Result<Vec<Write>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for k in self.outbox.iter().keys() {
            let k = k?;
            let Some(split) = k.iter().position(|&b| b == 0) else { continue };
            let Some(hook) = k.get(split + 1..split + 9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else { continue };
            if !exists(&String::from_utf8_lossy(&k[..split]), hook) {
                out.push(Write::Del(TreeId::Outbox, k.to_vec()));
            }
        }
        Ok(out)
    }

    /// The writes that remove everything of an endpoint: its record, outbox and log.
    pub fn drop_hook(&self, tenant: &str, hook: u64) -> Result<Vec<Write>, StoreError> {
        self.readable()?;
        let p = hook_prefix(tenant, hook);
        let mut out = vec![writes::delete(Kind::Webhook, tenant, hook)];
        for (tree, id) in [(&self.outbox, TreeId::Outbox), (&self.hooklog, TreeId::HookLog)] {
            for k in tree.scan_prefix(&p).keys() {
                out.push(Write::Del(id, k?.to_vec()));
            }
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

/// The per-tenant records kept by id: catalogue versions, dead letters, backfill jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Catalogue,
    DeadLetter,
    Job,
    Webhook,
}

fn hook_prefix(tenant: &str, hook: u64) -> Vec<u8> {
    seq_key(&tenant_prefix(tenant), hook)
}

fn hook_range<T: serde::de::DeserializeOwned>(tree: &sled::Tree, tenant: &str, hook: u64, before: Option<u64>, limit: usize, newest_first: bool) -> Result<Vec<(u64, T)>, StoreError> {
    let p = hook_prefix(tenant, hook);
    let range = tree.range(seq_key(&p, 0)..seq_key(&p, before.unwrap_or(u64::MAX)));
    let rows: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if newest_first { Box::new(range.rev()) } else { Box::new(range) };
    let mut out = Vec::new();
    for kv in rows.take(limit) {
        let (k, v) = kv?;
        out.push((u64::from_be_bytes(k[p.len()..].try_into().unwrap_or_default()), decode(&k, &v)?));
    }
    Ok(out)
}

fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k
}

/// Builders for the writes an accepted event causes, so callers never see key layouts.
pub mod writes {
    use super::*;

    /// Stores (or replaces) a per-tenant record.
    pub fn put<T: Serialize>(kind: Kind, tenant: &str, id: u64, value: &T) -> Write {
        Write::Put(tree_of(kind), seq_key(&tenant_prefix(tenant), id), encode(value))
    }

    pub fn delete(kind: Kind, tenant: &str, id: u64) -> Write {
        Write::Del(tree_of(kind), seq_key(&tenant_prefix(tenant), id))
    }

    fn tree_of(kind: Kind) -> TreeId {
        match kind {
            Kind::Catalogue => TreeId::Catalogues,
            Kind::DeadLetter => TreeId::Dead,
            Kind::Job => TreeId::Jobs,
            Kind::Webhook => TreeId::Hooks,
        }
    }

    /// A notification waiting for a webhook endpoint (or its next attempt).
    pub fn outbox<T: Serialize>(tenant: &str, hook: u64, id: u64, value: &T) -> Write {
        Write::Put(TreeId::Outbox, seq_key(&hook_prefix(tenant, hook), id), encode(value))
    }

    /// A finished delivery leaves the endpoint's log (sent again).
    pub fn hook_log_delete(tenant: &str, hook: u64, id: u64) -> Write {
        Write::Del(TreeId::HookLog, seq_key(&hook_prefix(tenant, hook), id))
    }

    /// A delivery finished: out of the outbox, into the endpoint's log.
    pub fn delivery_done<T: Serialize>(tenant: &str, hook: u64, id: u64, log: &T) -> [Write; 2] {
        let k = seq_key(&hook_prefix(tenant, hook), id);
        [Write::Put(TreeId::HookLog, k.clone(), encode(log)), Write::Del(TreeId::Outbox, k)]
    }

    /// A log record that is not a client event (a backfill's awards): no dedup key.
    pub fn system_event(tenant: &str, user: &str, seq: u64, ev: &StoredEvent) -> Write {
        Write::Put(TreeId::Events, seq_key(&user_key(tenant, user), seq), encode(ev))
    }

    pub fn event(tenant: &str, user: &str, seq: u64, ev: &StoredEvent) -> [Write; 2] {
        let uk = user_key(tenant, user);
        let mut where_ = uk.clone();
        where_.extend_from_slice(&seq.to_be_bytes());
        [Write::Put(TreeId::Events, seq_key(&uk, seq), encode(ev)), Write::Put(TreeId::Dedup, dedup_key(tenant, &ev.event.event_id), where_)]
    }

    pub fn goal(tenant: &str, g: &GoalRecord) -> Write {
        Write::Put(TreeId::Goals, goal_key(tenant, &g.spec.id), encode(g))
    }

    /// A user's leaderboard scores: (board, period, segment, score), the whole set.
    pub fn board_scores(tenant: &str, user: &str, scores: &[(String, String, String, BoardEntry)]) -> Write {
        Write::Put(TreeId::Boards, user_key(tenant, user), encode(&scores))
    }

    /// One row of a closed period's final standings.
    pub fn archived(b: &BoardKey, rank: u32, a: &Archived) -> Write {
        Write::Put(TreeId::Archive, archive_key(b, rank), encode(a))
    }

    pub fn closed(tenant: &str, board: &str, c: &ClosedPeriod) -> Write {
        Write::Put(TreeId::Closed, closed_key(tenant, board, &c.period), encode(c))
    }

    /// The snapshot and its sequence number (for the retention sweep), written together.
    pub fn snapshot(tenant: &str, user: &str, seq: u64, encoded: Vec<u8>) -> [Write; 2] {
        let uk = user_key(tenant, user);
        [Write::Put(TreeId::Users, uk.clone(), encoded), Write::Put(TreeId::SnapSeq, uk, seq.to_be_bytes().to_vec())]
    }

}

#[derive(Clone)]
struct PersisterSide {
    db: sled::Db,
    trees: [sled::Tree; 14],
    stats: Arc<PersistStats>,
}

/// FNV-1a, to split jobs between the persister's two threads by user.
fn fnv(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Fault injection for the watchdog's tests, in debug builds only (release builds ignore the
/// variable): while the file named by `ACCOLADE_FAULT_STALL_PERSIST` exists, the persister's
/// batch waits instead of writing, the way sled 0.34 can hang in `flush` (which no test can
/// bring about on purpose, docs/reliability.md), or as a disk far slower than the load would.
fn fault_stall_file() -> Option<std::path::PathBuf> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var_os("ACCOLADE_FAULT_STALL_PERSIST").map(Into::into)
}

/// Fault injection for the full-disk tests, in debug builds only (release builds ignore the
/// variable): while the file named by `ACCOLADE_FAULT_FAIL_PERSIST` exists, a batch's inserts
/// are made and its flush then fails, which is what a full disk does to sled: the trees in
/// memory hold the batch, the disk does not. Unlike a file-size limit, it fails the batch the
/// test chooses, so a test can put several users' events in it.
fn fault_fail_file() -> Option<std::path::PathBuf> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var_os("ACCOLADE_FAULT_FAIL_PERSIST").map(Into::into)
}

/// Jobs taken into one batch at most; past that the next batch starts.
const MAX_BATCH_JOBS: usize = 8192;

/// Jobs of one user a batch takes; the rest of that user's wait for the next batch.
const MAX_USER_JOBS_PER_BATCH: usize = 32;

/// Picks the next batch from `queued` (oldest first) and leaves the rest, in order, in
/// `carry`. A user with a burst queued (hundreds of events at once) would otherwise fill the
/// batch, and every other user's event in it would wait for all of the burst's inserts; now a
/// batch takes at most `MAX_USER_JOBS_PER_BATCH` jobs of each user (bench/README.md, fix 23).
/// Order is kept where anything depends on it: a user's jobs never pass each other, since
/// once one is left the user's later ones are left too; and a job of no user (`sync`, API and
/// leaderboard writes, which mean "after everything before me") never passes a job left
/// behind, nor does anything after it.
fn fair_batch<J>(queued: Vec<J>, carry: &mut VecDeque<J>, user_of: impl Fn(&J) -> Option<u64>) -> Vec<J> {
    let mut taken: HashMap<u64, usize> = HashMap::new();
    let mut jobs = Vec::with_capacity(queued.len());
    let mut blocked = false;
    for job in queued {
        let user = user_of(&job);
        let take = !blocked
            && match user {
                Some(u) => {
                    let n = taken.entry(u).or_insert(0);
                    *n += 1;
                    *n <= MAX_USER_JOBS_PER_BATCH
                }
                None => carry.is_empty(),
            };
        if take {
            jobs.push(job);
        } else {
            blocked |= user.is_none();
            carry.push_back(job);
        }
    }
    jobs
}

impl PersisterSide {
    fn tree(&self, t: TreeId) -> usize {
        match t {
            TreeId::Users => 0,
            TreeId::Events => 1,
            TreeId::Dedup => 2,
            TreeId::SnapSeq => 3,
            TreeId::Catalogues => 4,
            TreeId::Dead => 5,
            TreeId::Jobs => 6,
            TreeId::Boards => 7,
            TreeId::Archive => 8,
            TreeId::Closed => 9,
            TreeId::Goals => 10,
            TreeId::Hooks => 11,
            TreeId::Outbox => 12,
            TreeId::HookLog => 13,
        }
    }

    /// Applies writes in order; returns how many.
    fn apply(&self, writes: Vec<Write>) -> Result<u64, sled::Error> {
        let mut n = 0;
        for w in writes {
            n += 1;
            match w {
                Write::Put(t, k, v) => {
                    self.trees[self.tree(t)].insert(k, v)?;
                }
                Write::Del(t, k) => {
                    self.trees[self.tree(t)].remove(k)?;
                }
            }
        }
        Ok(n)
    }

    fn run_persister(self, rx: mpsc::Receiver<Job>) {
        // A second thread inserts about half of every batch. Inserting is CPU work in sled (a
        // tree walk, and a node copied on most inserts), and one thread doing all of it got
        // only its fair share of the cores while the runtime's workers, with events queued,
        // took the rest: it was busy 93% of the time and acks waited behind it. Two threads get
        // two shares, and run in parallel when a core is free (bench/README.md, fix 19).
        //
        // Jobs are split whole, by user, never write by write. After a crash sled recovers a
        // prefix of its log, so the order of a job's writes is what makes a recovered dedup key
        // imply its log entry: split by key, a dedup key could land before its event, and the
        // client's resend of the unacknowledged event would be taken for a duplicate and never
        // counted (tests/crash_loop.rs caught exactly that). Every job of a user goes to the
        // same thread (`submit_user`), so a user's snapshot and board scores keep their order
        // too. Between users nothing depends on order, because nothing is acknowledged before
        // the flush that covers both threads.
        let (to_helper, helper_rx) = mpsc::channel::<Vec<Write>>();
        let (helper_tx, from_helper) = mpsc::channel::<Result<u64, sled::Error>>();
        let helper = self.clone();
        let spawned = std::thread::Builder::new().name("accolade-persist2".into()).spawn(move || {
            while let Ok(writes) = helper_rx.recv() {
                if helper_tx.send(helper.apply(writes)).is_err() {
                    break;
                }
            }
        });
        // Without the helper (the thread could not start), this thread does it all.
        let (to_helper, helper) = match spawned {
            Ok(h) => (Some(to_helper), Some(h)),
            Err(_) => (None, None),
        };
        // Jobs a batch left for the next one (see `fair_batch`), oldest first.
        let mut carry: VecDeque<Job> = VecDeque::new();
        let stall_file = fault_stall_file();
        let fail_file = fault_fail_file();
        loop {
            let mut queued: Vec<Job> = carry.drain(..).collect();
            if queued.is_empty() {
                match rx.recv() {
                    Ok(j) => queued.push(j),
                    Err(_) => break,
                }
            }
            while queued.len() < MAX_BATCH_JOBS {
                match rx.try_recv() {
                    Ok(j) => queued.push(j),
                    Err(_) => break,
                }
            }
            let jobs = fair_batch(queued, &mut carry, |j| j.user);
            let mut n = 0u64;
            let mut dones = Vec::with_capacity(jobs.len());
            let started = std::time::Instant::now();
            let mut applied = started;
            // Plain inserts, not `apply_batch`: sled's batches take a global write lock that
            // stalls every concurrent reader (the actors' dedup lookups), which made them ten
            // times slower here. Atomicity across one event's writes is not needed, because
            // nothing is acknowledged before the flush below; a crash in between loses the
            // unacknowledged event, which the client resends.
            // Every job's completion is taken out first: when a write fails part way through
            // the batch, every job of it (written or not) is told, so no actor waits for ever.
            let mut mine = Vec::new();
            let mut theirs = Vec::new();
            for job in jobs {
                dones.push(job.done);
                if to_helper.is_some() && job.lane == 1 { theirs.extend(job.writes) } else { mine.extend(job.writes) }
            }
            // Once a batch has failed, sled refuses every write (its error is sticky) and its
            // trees hold what the disk refused: nothing more is written, and every job is told
            // at once that it failed, so no actor waits and nothing is acknowledged.
            if let Some(why) = self.stats.disk.failure() {
                let failed = Err(why.to_string());
                for done in dones {
                    done(failed.clone());
                }
                continue;
            }
            let busy = self.stats.disk.begin("persist batch", started);
            // The injected fault: this batch waits, as in sled's hang, until the file is gone.
            while stall_file.as_ref().is_some_and(|f| f.exists()) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let fail_now = fail_file.as_ref().is_some_and(|f| f.exists());
            let result = (|| -> Result<(), sled::Error> {
                let helped = match &to_helper {
                    Some(tx) if !theirs.is_empty() => match tx.send(theirs) {
                        Ok(()) => true,
                        // The helper is gone: its half is written here.
                        Err(mpsc::SendError(back)) => {
                            mine.extend(back);
                            false
                        }
                    },
                    _ => false,
                };
                let here = self.apply(mine);
                // Wait for the helper even when this half failed: the batch is over only when
                // both are, and a half that cannot be confirmed fails the batch.
                let there = if helped { from_helper.recv().unwrap_or_else(|_| Err(sled::Error::ReportableBug("the persister's helper thread stopped".into()))) } else { Ok(0) };
                n += here? + there?;
                applied = std::time::Instant::now();
                if fail_now {
                    // The injected fault fails the flush after the inserts, as a full disk does.
                    return Err(sled::Error::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (injected)")));
                }
                self.db.flush()?;
                Ok(())
            })()
            .map_err(|e| e.to_string());
            drop(busy);
            if let Err(e) = &result {
                // Recorded before any job is told: an actor that fails on this rebuilds from the
                // store, and by then the store must refuse to be read.
                self.stats.disk.fail(e.clone(), std::time::Instant::now());
                tracing::error!(error = %e, "persist batch failed; its events are not acknowledged, and the store fails closed until the server restarts");
            }
            let s = &self.stats;
            s.batches.fetch_add(1, Ordering::Relaxed);
            s.jobs.fetch_add(dones.len() as u64, Ordering::Relaxed);
            s.last_batch_jobs.store(dones.len() as u64, Ordering::Relaxed);
            s.writes.fetch_add(n, Ordering::Relaxed);
            s.apply_micros_total.fetch_add(applied.duration_since(started).as_micros() as u64, Ordering::Relaxed);
            s.flush_micros_total.fetch_add(applied.elapsed().as_micros() as u64, Ordering::Relaxed);
            for done in dones {
                done(result.clone());
            }
        }
        // The helper holds the database too: it must be gone before the database counts as
        // closed (see `PersisterThread`).
        drop(to_helper);
        if let Some(h) = helper {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job for `fair_batch`: its submission index and its user (`None`: a job of no user).
    type J = (usize, Option<u64>);

    #[test]
    fn a_burst_does_not_fill_the_batch_of_a_user_behind_it() {
        let mut queued: Vec<J> = (0..100).map(|i| (i, Some(1))).collect();
        queued.push((100, Some(2)));
        let mut carry = VecDeque::new();
        let batch = fair_batch(queued, &mut carry, |j| j.1);
        assert_eq!(batch.len(), MAX_USER_JOBS_PER_BATCH + 1);
        assert_eq!(batch.last(), Some(&(100, Some(2))), "the other user's job goes in this batch");
        assert_eq!(carry.len(), 100 - MAX_USER_JOBS_PER_BATCH);
        assert_eq!(carry.front(), Some(&(MAX_USER_JOBS_PER_BATCH, Some(1))), "the burst goes on, in order, in the next batch");
    }

    /// Random streams of jobs (a few users with bursts, many with one or two jobs, and jobs of
    /// no user) arriving between the persister's rounds: every job is written exactly once,
    /// no batch holds more than the cap of one user, a user's jobs complete in the order they
    /// were submitted, and a job of no user completes after everything submitted before it
    /// and before everything submitted after it.
    #[test]
    fn fair_batches_keep_every_order_that_matters() {
        let mut rnd = crate::testing::rng(0x9e37_79b9_7f4a_7c15);
        let mut carried = 0;
        for _ in 0..300 {
            let n = 1 + rnd(600) as usize;
            let jobs: Vec<J> = (0..n)
                .map(|i| {
                    let user = match rnd(100) {
                        0..=2 => None,
                        3..=59 => Some(rnd(3)),
                        _ => Some(3 + rnd(500)),
                    };
                    (i, user)
                })
                .collect();
            let (mut arrived, mut carry) = (0, VecDeque::new());
            // For each job: (batch, position in the order completions are reported).
            let mut done: Vec<Option<(usize, usize)>> = vec![None; n];
            let (mut batches, mut reported) = (0, 0);
            while reported < n {
                let mut queued: Vec<J> = carry.drain(..).collect();
                let upto = (arrived + rnd(250) as usize).min(n);
                queued.extend_from_slice(&jobs[arrived..upto]);
                arrived = upto;
                if queued.is_empty() {
                    continue;
                }
                let batch = fair_batch(queued, &mut carry, |j| j.1);
                assert!(!batch.is_empty(), "every round writes something");
                carried += carry.len();
                let mut per_user: HashMap<u64, usize> = HashMap::new();
                for &(i, user) in &batch {
                    if let Some(u) = user {
                        *per_user.entry(u).or_default() += 1;
                    }
                    assert!(done[i].replace((batches, reported)).is_none(), "job {i} written twice");
                    reported += 1;
                }
                assert!(per_user.values().all(|&c| c <= MAX_USER_JOBS_PER_BATCH), "a batch over the cap: {per_user:?}");
                batches += 1;
            }
            let done: Vec<(usize, usize)> = done.into_iter().map(|d| d.expect("every job is written")).collect();
            for (i, &(_, user)) in jobs.iter().enumerate() {
                for (j, &(_, other)) in jobs.iter().enumerate().skip(i + 1) {
                    if user.is_some() && user == other {
                        assert!(done[i].1 < done[j].1, "user {user:?}: job {i} reported after job {j}");
                    }
                    if user.is_none() {
                        assert!(done[j].0 >= done[i].0, "job {j} written in a batch before the earlier job {i} of no user");
                    }
                    if other.is_none() {
                        assert!(done[i].0 <= done[j].0, "job {i} written after the later job {j} of no user");
                    }
                }
            }
        }
        assert!(carried > 1000, "the streams must make batches leave jobs behind ({carried})");
    }
}
