//! The community-goal records in sled (docs/teams.md, "Community goals"): each user's share of
//! each goal under her user key (written with the event that changed it, so it is durable
//! exactly when the event is), and each goal's outcome once it is closed, under a key of the
//! tenant's no user can have.

use super::*;
use serde::{Deserialize, Serialize};

/// The entity the closed goals' outcomes are kept under: no user id starts with U+0001.
const OUTCOMES: &str = "\u{1}community";

/// How a community goal ended, written once when it closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub total: f64,
    pub target: f64,
    pub reached: bool,
    /// Users with a share in it.
    pub participants: u64,
    pub ends: Millis,
    pub closed_at: Millis,
}

/// A user's share of a goal as stored: her total after the event numbered `seq` in her log, and
/// her total before it. The persister's writes are not one atomic batch, so a crash can leave
/// the share on disk without its event (which is then not in the log, and is accepted again
/// when resent); the share is written before the event's record, and a reader takes `prev`
/// when the log does not reach `seq` (`Share::at`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub total: f64,
    pub prev: f64,
    pub seq: u64,
}

impl Share {
    /// The share as of a log whose last record (or snapshot) is `last_seq`.
    pub fn at(&self, last_seq: u64) -> f64 {
        if self.seq <= last_seq { self.total } else { self.prev }
    }
}

fn share_key(tenant: &str, user: &str, goal: &str) -> Vec<u8> {
    let mut k = user_key(tenant, user);
    k.extend_from_slice(goal.as_bytes());
    k
}

/// A user's share of a goal, as it is after her event.
pub fn share(tenant: &str, user: &str, goal: &str, s: &Share) -> Write {
    Write::Put(TreeId::Community, share_key(tenant, user, goal), encode(s))
}

/// A goal's outcome, once it is closed.
pub fn outcome(tenant: &str, goal: &str, o: &Outcome) -> Write {
    Write::Put(TreeId::Community, share_key(tenant, OUTCOMES, goal), encode(o))
}

impl Store {
    /// Every user's share of every goal, as her log has it: (tenant, user, goal, share). Read
    /// once at start.
    pub fn community_shares(&self) -> Result<Vec<(String, String, String, f64)>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        let mut last: Option<(String, String, u64)> = None;
        for kv in self.community.iter() {
            let (k, v) = kv?;
            let mut parts = k.splitn(3, |&b| b == 0);
            let (Some(tenant), Some(user), Some(goal)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if user == OUTCOMES.as_bytes() {
                continue;
            }
            let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let (tenant, user) = (s(tenant), s(user));
            let share: Share = decode(&k, &v)?;
            // Rows are in user order: one look at each user's log end.
            let end = match &last {
                Some((t, u, n)) if *t == tenant && *u == user => *n,
                _ => self.last_seq(&tenant, &user)?,
            };
            out.push((tenant.clone(), user.clone(), s(goal), share.at(end)));
            last = Some((tenant, user, end));
        }
        Ok(out)
    }

    /// The last sequence number a user's log reaches: her last record's, or her snapshot's.
    pub fn last_seq(&self, tenant: &str, user: &str) -> Result<u64, StoreError> {
        let uk = user_key(tenant, user);
        let record = match self.events.range(seq_key(&uk, 0)..seq_key(&uk, u64::MAX)).next_back() {
            Some(kv) => u64::from_be_bytes(kv?.0[uk.len()..].try_into().unwrap_or_default()),
            None => 0,
        };
        let snap = self.snapseq.get(&uk)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map_or(0, u64::from_be_bytes);
        Ok(record.max(snap))
    }

    /// A user's shares as stored: (goal, share).
    pub fn community_of(&self, tenant: &str, user: &str) -> Result<Vec<(String, Share)>, StoreError> {
        self.readable()?;
        let p = user_key(tenant, user);
        let mut out = Vec::new();
        for kv in self.community.scan_prefix(&p) {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k[p.len()..]).into_owned(), decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Every closed goal's outcome: (tenant, goal, outcome).
    pub fn community_outcomes(&self) -> Result<Vec<(String, String, Outcome)>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for kv in self.community.iter() {
            let (k, v) = kv?;
            let mut parts = k.splitn(3, |&b| b == 0);
            let (Some(tenant), Some(user), Some(goal)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if user == OUTCOMES.as_bytes() {
                out.push((String::from_utf8_lossy(tenant).into_owned(), String::from_utf8_lossy(goal).into_owned(), decode(&k, &v)?));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A share written without its event (a crash between the two writes) reads as the share
    /// before it, at start and for the actor, until an event of hers reaches its number.
    #[tokio::test]
    async fn a_share_whose_event_is_not_in_the_log_reads_as_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let write = |writes: Vec<Write>| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            EventLog::append(&store, "t", "ann", writes, Box::new(move |r| drop(tx.send(r)))).unwrap();
            rx
        };
        let ev = |seq: u64| {
            let e = crate::core::Event::new(&format!("e{seq}"), "login", 0, &[]);
            writes::event("t", "ann", seq, &StoredEvent { event: e, received_at: 0, catalogue_version: 1, pushes: vec![] }, true)
        };
        // Her first event and its share (3), durable together.
        write(vec![share("t", "ann", "g@1", &Share { total: 3.0, prev: 0.0, seq: 1 }), ev(1)]).await.unwrap().unwrap();
        assert_eq!(store.community_shares().unwrap(), vec![("t".into(), "ann".into(), "g@1".into(), 3.0)]);
        // Her second share reached the disk, its event did not.
        write(vec![share("t", "ann", "g@1", &Share { total: 5.0, prev: 3.0, seq: 2 })]).await.unwrap().unwrap();
        assert_eq!(store.last_seq("t", "ann").unwrap(), 1);
        assert_eq!(store.community_shares().unwrap(), vec![("t".into(), "ann".into(), "g@1".into(), 3.0)], "the share before it");
        let mine = store.community_of("t", "ann").unwrap();
        assert_eq!(mine[0].1.at(1), 3.0);
        // The event resent is number 2 again, and its share counts once.
        write(vec![share("t", "ann", "g@1", &Share { total: 5.0, prev: 3.0, seq: 2 }), ev(2)]).await.unwrap().unwrap();
        assert_eq!(store.community_shares().unwrap(), vec![("t".into(), "ann".into(), "g@1".into(), 5.0)]);
        // An outcome is not a share.
        write(vec![outcome("t", "g@1", &Outcome { total: 5.0, target: 4.0, reached: true, participants: 1, ends: 1, closed_at: 2 })]).await.unwrap().unwrap();
        assert_eq!(store.community_shares().unwrap().len(), 1);
        assert_eq!(store.community_outcomes().unwrap().len(), 1);
    }
}
