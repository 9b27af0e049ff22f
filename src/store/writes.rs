//! The write builders, so callers never see key layouts: every record an actor, a sweeper or a route stores, as `Write`s that the
//! persister commits in one batch with the rest of its job.

use super::keys::*;
use crate::core::Millis;
use serde::Serialize;

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

/// A notification leaves an endpoint's outbox undelivered (its endpoint was deleted).
pub fn outbox_delete(tenant: &str, hook: u64, id: u64) -> Write {
    Write::Del(TreeId::Outbox, seq_key(&hook_prefix(tenant, hook), id))
}

/// A finished delivery leaves the endpoint's log (sent again, or its endpoint deleted).
pub fn hook_log_delete(tenant: &str, hook: u64, id: u64) -> Write {
    Write::Del(TreeId::HookLog, seq_key(&hook_prefix(tenant, hook), id))
}

/// A delivery finished: out of the outbox, into the endpoint's log.
pub fn delivery_done<T: Serialize>(tenant: &str, hook: u64, id: u64, log: &T) -> [Write; 2] {
    let k = seq_key(&hook_prefix(tenant, hook), id);
    [Write::Put(TreeId::HookLog, k.clone(), encode(log)), Write::Del(TreeId::Outbox, k)]
}

/// A log record, found again by its id (`by_id`: a client event, a notice) or only by its
/// place in the log (a record the server made for itself). One write either way: the id goes
/// into the user's index in memory, and to disk with her next id chunk (`ids.rs`).
pub fn event(tenant: &str, user: &str, seq: u64, ev: &StoredEvent, by_id: bool) -> Write {
    Write::Put(TreeId::Events, seq_key(&user_key(tenant, user), seq), encode_event(ev, by_id))
}

/// A user's earliest badge expiry in the expiry index (`None`: the user has none).
pub fn expiry(tenant: &str, user: &str, due: Option<Millis>) -> Write {
    match due {
        Some(at) => Write::Put(TreeId::Expiries, user_key(tenant, user), at.to_be_bytes().to_vec()),
        None => Write::Del(TreeId::Expiries, user_key(tenant, user)),
    }
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

/// A user's analytics record (`analytics::UserFacts`), written after the snapshot in its job.
pub fn analytics<T: Serialize>(tenant: &str, user: &str, facts: &T) -> Write {
    Write::Put(TreeId::Analytics, user_key(tenant, user), encode(facts))
}

pub use super::community::{outcome as community_outcome, share as community_share};
