//! The event log as a user's actor needs it, and sled's implementation of it: append one
//! user's records and hear when they are durable, load her snapshot, tail and id index, read
//! her records and pushes after a point, read back the id of one record; and the retention
//! sweep that removes her old records.
//!
//! The actor and the rebuild from the log (`replay.rs`) reach the log only through
//! `EventLog`, so a second log (JetStream, in cluster mode) can stand beside this one without
//! touching the actor or the rule core. Everything else the server stores (catalogues, jobs,
//! endpoints, archives) stays on `Store` itself.

pub use super::persister::Done;
use super::keys::{decode, decode_user, dedup_key, seq_key, UserRecord};
use super::{fnv, user_key, Job, Loaded, Millis, Store, StoreError, StoredEvent, Swept, Write};
use std::future::Future;
use std::pin::Pin;

/// What a user's actor needs of the event log. Reads marked blocking may touch the disk: call
/// them from a blocking task.
pub trait EventLog: Send + Sync {
    /// The id of `user`'s record `seq`, if the log still holds it: how the actor makes sure of
    /// a match in her id index (`IdIndex`). Refuses (`StoreError::Failed`) once a write
    /// failed: a record whose write the disk refused must not make a resend a duplicate.
    /// Blocking.
    fn event_id_at(&self, tenant: &str, user: &str, seq: u64) -> Result<Option<String>, StoreError>;

    /// Appends one user's writes (their records, snapshot and the index entries that go with
    /// them). A user's appends become durable in the order they were made; `done` runs once
    /// this one is, or has failed.
    fn append(&self, tenant: &str, user: &str, writes: Vec<Write>, done: Done) -> Result<(), StoreError>;

    /// Whether this log takes `user`'s writes here: always for one node alone; on a cluster
    /// node, whether it serves her partition. What is stored here about a user it does not
    /// take (her outbox rows, say) is another node's to act on.
    fn serves(&self, _tenant: &str, _user: &str) -> bool {
        true
    }

    /// The entities `user` is linked to (a user's teams, a team's members), in id order: read
    /// where her writes are complete. Blocking.
    fn links(&self, tenant: &str, user: &str) -> Result<Vec<String>, StoreError>;

    /// A fresh id for a webhook notification about `user`: never given before across the
    /// deployment (every node of a cluster included), and above every id given before for
    /// one of her notifications, so that an endpoint's outbox, read in id order, holds each
    /// user's notifications in the order they were made.
    fn delivery_id(&self, tenant: &str, user: &str) -> Result<u64, StoreError>;

    /// Resolves once everything appended before is durable.
    fn sync(&self) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>>;

    /// Why the log refuses all work, once a write or flush failed.
    fn failure(&self) -> Option<&str>;

    /// The user's snapshot and the records after it. Blocking.
    fn load_user(&self, tenant: &str, user: &str) -> Result<Loaded, StoreError>;

    /// The user's records after sequence number `after`, oldest first, at most `limit`.
    /// Blocking.
    fn events_after(&self, tenant: &str, user: &str, after: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>, StoreError>;

    /// The pushes recorded after push offset `offset`, oldest first, each with the time its
    /// event was received, looking back at most `max_events` records. Blocking.
    fn pushes_after(&self, tenant: &str, user: &str, offset: u64, max_events: usize) -> Result<Vec<(u64, Millis, String)>, StoreError>;

    /// The user's analytics record as stored (with its snapshot), if any. Blocking.
    fn analytics_record(&self, tenant: &str, user: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// The user's shares of community goals as stored: (goal, share). Blocking.
    fn community_of(&self, tenant: &str, user: &str) -> Result<Vec<(String, super::community::Share)>, StoreError>;
}

impl EventLog for Store {
    fn links(&self, tenant: &str, user: &str) -> Result<Vec<String>, StoreError> {
        self.links_of(tenant, user)
    }

    fn event_id_at(&self, tenant: &str, user: &str, seq: u64) -> Result<Option<String>, StoreError> {
        Store::event_id_at(self, tenant, user, seq)
    }

    fn append(&self, tenant: &str, user: &str, writes: Vec<Write>, done: Done) -> Result<(), StoreError> {
        // Every job of a user is inserted by the same persister thread, so its writes keep
        // their order.
        self.readable()?;
        let h = fnv(&user_key(tenant, user));
        self.tx.send(Job { writes, done, lane: (h & 1) as u8, user: Some(h) }).map_err(|_| StoreError::Stopped)
    }

    fn delivery_id(&self, _tenant: &str, _user: &str) -> Result<u64, StoreError> {
        self.next_id(super::IdKind::Delivery)
    }

    fn sync(&self) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>> {
        Box::pin(Store::sync(self))
    }

    fn failure(&self) -> Option<&str> {
        Store::failure(self)
    }

    fn load_user(&self, tenant: &str, user: &str) -> Result<Loaded, StoreError> {
        Store::load_user(self, tenant, user)
    }

    fn events_after(&self, tenant: &str, user: &str, after: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        Store::events_after(self, tenant, user, after, limit)
    }

    fn pushes_after(&self, tenant: &str, user: &str, offset: u64, max_events: usize) -> Result<Vec<(u64, Millis, String)>, StoreError> {
        Store::pushes_after(self, tenant, user, offset, max_events)
    }

    fn analytics_record(&self, tenant: &str, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Store::analytics_record(self, tenant, user)
    }

    fn community_of(&self, tenant: &str, user: &str) -> Result<Vec<(String, super::community::Share)>, StoreError> {
        Store::community_of(self, tenant, user)
    }
}

/// sled's side of a user's log: her load at her actor's start, her records and pushes after a
/// point, and the retention sweep that removes old ones.
impl Store {
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
            Some(v) => Some(decode_user(&uk, &v)?),
            None => None,
        };
        let from = record.as_ref().map_or(0, |r| r.seq) + 1;
        // The log is read from the last id chunk on (normally the snapshot: the two are
        // written together), for the ids the chunks do not hold yet; the tail starts at `from`.
        let (mut ids, start) = self.load_ids(&uk, from)?;
        let mut tail: Vec<StoredEvent> = Vec::new();
        let mut last_seq = record.as_ref().map_or(0, |r| r.seq);
        for kv in self.events.range(seq_key(&uk, start)..seq_key(&uk, u64::MAX)) {
            let (k, v) = kv?;
            let seq = u64::from_be_bytes(k[uk.len()..].try_into().unwrap_or_default());
            let ev: StoredEvent = decode(&k, &v)?;
            self.index_record(&mut ids, tenant, &k, &v, &ev, seq)?;
            if seq >= from {
                last_seq = seq;
                tail.push(ev);
            }
        }
        // Pushes after the snapshot are all in the tail's records.
        let last_offset = tail.iter().flat_map(|e| e.pushes.iter().map(|p| p.0)).max().unwrap_or(0).max(record.as_ref().map_or(0, |r| r.offset));
        Ok(Loaded { record, tail, last_seq, last_offset, ids })
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
    /// snapshot, with the id chunks that covered only them (and a format 1 store's dedup keys):
    /// after this, such an id is only recognised by the user state's recent-id window. The log tail after a snapshot, which recovery replays, is
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
    pub(super) fn fail_on(&self, e: &StoreError) {
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
            let mut last = None;
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
                last = Some(k);
            }
            // An id chunk goes once every record it covers has gone.
            if let Some(last) = last {
                for c in self.ids.range(seq_key(&uk, 0)..=last.to_vec()) {
                    self.ids.remove(c?.0)?;
                }
            }
        }
        let _busy = self.stats.disk.begin("retention sweep flush", std::time::Instant::now());
        self.db.flush()?;
        Ok(swept)
    }
}
