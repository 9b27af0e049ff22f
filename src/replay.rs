//! Rebuilding a user's state from the event log: how an actor starts (snapshot, then the log
//! after it), how a backfill sees what a user would have under a new catalogue (the whole log
//! from scratch), and the `replay` check, which rebuilds every user from nothing but the log and
//! compares with the stored snapshot.
//!
//! Each logged event is replayed with the catalogue version it was judged by, and a backfill's
//! log record is replayed by running the same backfill again (a retraction's, by replaying the
//! facts before it with and without the retracted event again), so a rebuild repeats history
//! exactly.

use crate::catalogues::Catalogues;
use crate::core::{self, Catalogue, UserState};
use crate::records::{award_args, goal_op, retracted, system_record, BackfillRecord, GoalOp, TakeRecord, BACKFILL_EVENT, COMMUNITY_EVENT, DUPLICATE_EVENT, EXPIRE_EVENT, GOAL_EVENT, LEADERBOARD_EVENT, NOTICE_EVENT, RETRACT_EVENT, REVOKE_EVENT, TEAM_UNLOCK_EVENT};
use crate::store::{EventLog, Store, StoreError, StoredEvent};
use serde::Serialize;
use std::sync::Arc;

/// Applies a goal operation to a state, as the actor does (and as every rebuild repeats).
pub fn apply_goal(st: &mut UserState, op: GoalOp, now: crate::core::Millis, cat: &Catalogue) -> Result<Vec<core::Effect>, String> {
    match op {
        GoalOp::Assign(spec) => core::goal::assign(st, spec, now, cat),
        GoalOp::Due(id) => Ok(core::goal::expire(st, &id, now)),
        GoalOp::Cancel(id) => Ok(core::goal::cancel(st, &id, now)),
    }
}

/// The catalogue an event of entity `user` was judged by (a team's is its version's team
/// catalogue), or the current one's if that version is gone; none for a team whose catalogue
/// has no teams section in either.
fn judged_by(cats: &Catalogues, tenant: &str, user: &str, version: u64, current: &Arc<Catalogue>) -> Option<Arc<Catalogue>> {
    if version == current.version {
        return current.for_entity(user);
    }
    cats.version(tenant, version).and_then(|c| c.for_entity(user)).or_else(|| current.for_entity(user))
}

/// The state a user would have if `cat` had always been in force: the log replayed from
/// scratch under it. The events retracted by a record in `log` are left out; revocations
/// through the API are repeated (a badge taken is earned again only on new facts, and that
/// must hold here too); the server's other records are skipped, since they only repeat what
/// this computes or are not the user's facts.
pub fn from_scratch(tenant: &str, user: &str, log: &[StoredEvent], cat: &Catalogue) -> UserState {
    let gone = retracted(log);
    let mut st = UserState::new(tenant, user);
    for e in log {
        if e.event.event_type == REVOKE_EVENT {
            if let Some(rec) = TakeRecord::parse(e) {
                let _ = core::revoke::revoke(&mut st, &rec.target, &rec.reason, rec.claw_back, e.received_at, &e.event.event_id, cat);
            }
        } else if !system_record(&e.event.event_type) && !gone.contains(&e.event.event_id) {
            core::apply(&mut st, &e.event, e.received_at, cat);
        }
    }
    st
}

/// The user's facts with and without the event `event_id`, replayed from scratch under `cat`
/// (`history` is the whole log before the retraction): what a retraction compares.
pub fn with_and_without(tenant: &str, user: &str, history: &[StoredEvent], event_id: &str, cat: &Catalogue) -> (UserState, UserState) {
    let with = from_scratch(tenant, user, history, cat);
    let rest: Vec<StoredEvent> = history.iter().filter(|e| e.event.event_id != event_id || system_record(&e.event.event_type)).cloned().collect();
    (with, from_scratch(tenant, user, &rest, cat))
}

/// Applies a retraction record to `st` (see `core::revoke::retract`).
pub fn apply_retract(st: &mut UserState, history: &[StoredEvent], rec: &TakeRecord, now: crate::core::Millis, record_id: &str, cat: &Catalogue) -> Vec<core::Effect> {
    let (with, without) = with_and_without(&st.tenant_id, &st.user_id, history, &rec.target, cat);
    core::revoke::retract(st, &with, &without, &rec.reason, rec.claw_back, now, record_id, cat)
}

/// Replays `log` onto `st` the way it happened. `before` is the whole log before `log`'s first
/// record, needed only if a backfill record must be replayed (it replays everything before it).
pub fn replay_onto(st: &mut UserState, cats: &Catalogues, tenant: &str, user: &str, log: &[StoredEvent], before: &[StoredEvent]) {
    let Some(current) = cats.current(tenant) else { return };
    for (i, e) in log.iter().enumerate() {
        let Some(cat) = judged_by(cats, tenant, user, e.catalogue_version, &current) else { continue };
        replay_record(st, log, i, before, &cat);
    }
}

/// Replays record `i` of `log` onto `st` under `cat`, the catalogue it was judged by: a
/// client event through `apply`, each of the server's own records through what made it.
pub fn replay_record(st: &mut UserState, log: &[StoredEvent], i: usize, before: &[StoredEvent], cat: &Catalogue) {
    let e = &log[i];
    let (tenant, user) = (&e.event.tenant_id, &e.event.user_id);
    if e.event.event_type == BACKFILL_EVENT {
        let rec = BackfillRecord::parse(e);
        let history: Vec<StoredEvent> = before.iter().chain(&log[..i]).cloned().collect();
        let replayed = from_scratch(tenant, user, &history, cat);
        core::backfill(st, &replayed, &rec.badges, &rec.new_stats, e.received_at, &e.event.event_id, cat);
    } else if e.event.event_type == LEADERBOARD_EVENT {
        let (board, period, rank) = award_args(e);
        core::award_rank(st, &board, &period, rank, e.received_at, &e.event.event_id, cat);
    } else if e.event.event_type == GOAL_EVENT {
        if let Some(op) = goal_op(e) {
            let _ = apply_goal(st, op, e.received_at, cat);
        }
    } else if e.event.event_type == TEAM_UNLOCK_EVENT {
        // A push, and the badge of her own the team gave her with it, if any.
        if let (Some(badge), Some((team, _, _))) = (crate::records::given(&e.event), crate::records::team_unlock_args(&e.event)) {
            core::give(st, &badge, &team, &e.event.event_id, e.received_at, &e.event.event_id, cat);
        }
    } else if e.event.event_type == NOTICE_EVENT || e.event.event_type == COMMUNITY_EVENT {
        // Pushes only.
    } else if e.event.event_type == DUPLICATE_EVENT {
        core::remember_id(st, &e.event.event_id, cat);
    } else if e.event.event_type == REVOKE_EVENT {
        if let Some(rec) = TakeRecord::parse(e) {
            let _ = core::revoke::revoke(st, &rec.target, &rec.reason, rec.claw_back, e.received_at, &e.event.event_id, cat);
        }
    } else if e.event.event_type == EXPIRE_EVENT {
        core::look(st, e.received_at, &e.event.event_id, cat);
    } else if e.event.event_type == RETRACT_EVENT {
        if let Some(rec) = TakeRecord::parse(e) {
            let history: Vec<StoredEvent> = before.iter().chain(&log[..i]).cloned().collect();
            apply_retract(st, &history, &rec, e.received_at, &e.event.event_id, cat);
        }
    } else {
        core::apply(st, &e.event, e.received_at, cat);
    }
}

/// A user's durable state as an actor starts from it.
pub struct Restored {
    pub state: UserState,
    /// The push epoch of the snapshot, if there is one.
    pub epoch: Option<String>,
    pub snap_seq: u64,
    pub last_seq: u64,
    pub last_offset: u64,
    /// The ids of the user's retained records found by id.
    pub ids: crate::store::IdIndex,
}

/// Loads the snapshot and replays the log after it. Blocking.
pub fn restore(log: &dyn EventLog, cats: &Catalogues, tenant: &str, user: &str) -> Result<Restored, StoreError> {
    let loaded = log.load_user(tenant, user)?;
    let (mut state, epoch, snap_seq) = match loaded.record {
        Some(r) => (r.state, Some(r.epoch), r.seq),
        None => (UserState::new(tenant, user), None, 0),
    };
    // A backfill writes its snapshot with its record, so its record is normally not in the tail;
    // if it is, replaying it needs the log before it.
    let before: Vec<StoredEvent> = if loaded.tail.iter().any(|e| e.event.event_type == BACKFILL_EVENT || e.event.event_type == RETRACT_EVENT) {
        log.events_after(tenant, user, 0, usize::MAX)?.into_iter().take_while(|(seq, _)| *seq <= snap_seq).map(|(_, e)| e).collect()
    } else {
        Vec::new()
    };
    replay_onto(&mut state, cats, tenant, user, &loaded.tail, &before);
    Ok(Restored { state, epoch, snap_seq, last_seq: loaded.last_seq, last_offset: loaded.last_offset, ids: loaded.ids })
}

/// What the `replay` check found for one user.
#[derive(Debug, Serialize)]
pub struct Difference {
    pub tenant: String,
    pub user: String,
    pub what: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    pub users: u64,
    pub events: u64,
    /// Users whose log no longer starts at the beginning (swept by retention): not checkable.
    pub skipped: u64,
    pub differences: Vec<Difference>,
}

/// Rebuilds every stored user from its log alone and compares with the stored snapshot (the
/// state at the snapshot's sequence number). Blocking.
pub fn check_all(store: &Store, cats: &Catalogues) -> Result<ReplayReport, StoreError> {
    let mut report = ReplayReport::default();
    for (tenant, user) in store.all_users()? {
        report.users += 1;
        // An unreadable user is reported, and the check goes on with the others.
        let read = store.load_user(&tenant, &user).and_then(|l| Ok((l, store.events_after(&tenant, &user, 0, usize::MAX)?)));
        let (loaded, log) = match read {
            Ok(x) => x,
            Err(e) => {
                report.differences.push(Difference { tenant, user, what: format!("unreadable: {e}") });
                continue;
            }
        };
        let Some(record) = loaded.record else { continue };
        if log.first().is_some_and(|(seq, _)| *seq != 1) {
            report.skipped += 1;
            continue;
        }
        let upto: Vec<StoredEvent> = log.into_iter().take_while(|(seq, _)| *seq <= record.seq).map(|(_, e)| e).collect();
        report.events += upto.len() as u64;
        let mut st = UserState::new(&tenant, &user);
        replay_onto(&mut st, cats, &tenant, &user, &upto, &[]);
        if st != record.state {
            let what = describe_difference(&record.state, &st);
            report.differences.push(Difference { tenant, user, what });
        }
    }
    Ok(report)
}

fn describe_difference(stored: &UserState, rebuilt: &UserState) -> String {
    let mut parts = Vec::new();
    if stored.xp != rebuilt.xp {
        parts.push(format!("xp stored {} rebuilt {}", stored.xp, rebuilt.xp));
    }
    if stored.level != rebuilt.level {
        parts.push(format!("level stored {} rebuilt {}", stored.level, rebuilt.level));
    }
    if stored.badges != rebuilt.badges {
        parts.push(format!("badges stored {:?} rebuilt {:?}", stored.badges.keys().collect::<Vec<_>>(), rebuilt.badges.keys().collect::<Vec<_>>()));
    }
    if stored.stats != rebuilt.stats {
        parts.push("stats differ".into());
    }
    if stored.rings != rebuilt.rings {
        parts.push("action cache differs".into());
    }
    if stored.revoked != rebuilt.revoked {
        parts.push(format!("revocations stored {:?} rebuilt {:?}", stored.revoked.keys().collect::<Vec<_>>(), rebuilt.revoked.keys().collect::<Vec<_>>()));
    }
    if parts.is_empty() {
        parts.push("other fields differ".into());
    }
    parts.join("; ")
}
