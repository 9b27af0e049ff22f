//! The log records the server makes for a user itself, beside the user's own events: goal
//! operations, notices to a goal's assigner, leaderboard period awards, backfill steps,
//! duplicates by fingerprint, a team's unlocks told to its members, revocations, expiries seen
//! on connecting and retractions.
//! Their event types (which no catalogue can declare, so no client can send them) and their
//! payloads, written by the plan (`plan.rs`) and read back by every rebuild (`replay.rs`).

use crate::core::Value;
use crate::store::StoredEvent;

/// A goal operation, logged as an `accolade.goal` record so every rebuild repeats it.
#[derive(Debug, Clone)]
pub enum GoalOp {
    Assign(crate::core::goal::GoalSpec),
    Due(String),
    Cancel(String),
}

/// The event type of a backfill's log record. Catalogues cannot declare it and clients cannot
/// send it: the core refuses unknown event types.
pub const BACKFILL_EVENT: &str = "accolade.backfill";

/// The event type of a goal operation's log record (`payload`: op = assign | due | cancel,
/// and the goal as JSON or its id).
pub const GOAL_EVENT: &str = "accolade.goal";
/// The event type of a notice's log record (a goal's assigner told how it ended). It only
/// carries pushes; it changes no state.
pub const NOTICE_EVENT: &str = "accolade.notice";

/// The event type of the record of a duplicate by fingerprint: a new event id whose action was
/// already counted (`payload`: of = the event's type, by = "fingerprint"). The id is its own,
/// with its dedup key, so a resend stays a duplicate for as long as the log keeps it; every
/// rebuild remembers the id as the live state did (`core::remember_id`).
pub const DUPLICATE_EVENT: &str = "accolade.duplicate";

pub fn duplicate_payload(event_type: &str) -> Vec<(String, Value)> {
    vec![("of".into(), Value::Str(event_type.into())), ("by".into(), Value::Str("fingerprint".into()))]
}

/// The event type of the record of a team's unlock told to a member (`payload`: team, badge,
/// count; `occurred_at`: when the team earned it). Its id (`team_unlock_id`) is the member's
/// dedup key, so a second delivery tells her nothing twice. It only carries its push; it
/// changes no state.
pub const TEAM_UNLOCK_EVENT: &str = "accolade.team_unlock";

/// The event type of a member's retraction as mailed to each of her teams (docs/teams.md):
/// never a log record, only a mail row, delivered to the team's actor as a retraction of the
/// contribution (`contribution_id`) her event made there. Its payload is a `TakeRecord`'s.
pub const TEAM_RETRACT_EVENT: &str = "accolade.team_retract";

/// The retraction a `TEAM_RETRACT_EVENT` row asks of its team.
pub fn team_retract_args(ev: &crate::core::Event) -> Option<TakeRecord> {
    let text = |k: &str| ev.payload.iter().find(|(n, _)| n == k).and_then(|(_, v)| if let Value::Str(s) = v { Some(s.to_string()) } else { None });
    Some(TakeRecord { target: text("event")?, reason: text("reason").unwrap_or_default(), claw_back: text("xp").as_deref() == Some("claw_back") })
}

/// The event type of the record of a community goal's outcome told to a participant
/// (docs/teams.md): it only carries its push (`community_outcome`); it changes no state.
pub const COMMUNITY_EVENT: &str = "accolade.community";

/// The id under which a participant is told how the community goal kept under `goal` (its
/// key, `id@ends`) ended: reserved, and one per goal, so she is told once.
pub fn community_id(goal: &str) -> String {
    format!("{}community:{goal}", crate::protocol::RESERVED_ID_PREFIX)
}

/// The id under which a team counts `member`'s event `event_id`: reserved (no client may send
/// an id with the prefix, so none can take it first), and one per team, since ids are unique
/// in the tenant and a member's event goes to each of her teams.
pub fn contribution_id(team: &str, member: &str, event_id: &str) -> String {
    format!("{}team:{}\u{1}{member}\u{1}{event_id}", crate::protocol::RESERVED_ID_PREFIX, team.trim_start_matches(crate::core::catalogue::TEAM_PREFIX))
}

/// The id under which `member` is told `team`'s unlock of `badge` (its `count`th, made by the
/// team's log record `seq`): reserved, and one per member. The count alone would not do: a
/// team badge that expired and is earned again counts from 1 again (core/revoke.rs).
pub fn team_unlock_id(team: &str, badge: &str, count: u32, seq: u64, member: &str) -> String {
    format!("{}team_unlock:{}\u{1}{badge}\u{1}{count}\u{1}{seq}\u{1}{member}", crate::protocol::RESERVED_ID_PREFIX, team.trim_start_matches(crate::core::catalogue::TEAM_PREFIX))
}

/// The field of a team's unlock as told to a member that names the badge of her own the team
/// gives her with it (`Give`); absent when it gives her none.
pub const GIVE_FIELD: &str = "give";

/// The badge of her own a team's unlock gives the member it is told to, if any.
pub fn given(ev: &crate::core::Event) -> Option<String> {
    ev.payload.iter().find(|(n, _)| n == GIVE_FIELD).and_then(|(_, v)| if let Value::Str(s) = v { Some(s.to_string()) } else { None })
}

/// The id under which `member` is told that `team` lost `badge` (its record `seq` took it
/// away, `count` the awards it held): reserved, one per member, and apart from the unlocks' ids, since one
/// record may take a badge away and give it again.
pub fn team_revoked_id(team: &str, badge: &str, count: u32, seq: u64, member: &str) -> String {
    format!("{}team_revoked:{}\u{1}{badge}\u{1}{count}\u{1}{seq}\u{1}{member}", crate::protocol::RESERVED_ID_PREFIX, team.trim_start_matches(crate::core::catalogue::TEAM_PREFIX))
}

/// The field of a team's record told to a member that says the team lost the badge (its
/// value: the cause), rather than earned it.
pub const REVOKED_FIELD: &str = "revoked";

/// The cause, when a team's record told to a member is of a badge the team lost.
pub fn team_revoked_cause(ev: &crate::core::Event) -> Option<String> {
    ev.payload.iter().find(|(n, _)| n == REVOKED_FIELD).and_then(|(_, v)| if let Value::Str(s) = v { Some(s.to_string()) } else { None })
}

/// A team's unlock as a member is told it: the team's id, the badge and its count.
pub fn team_unlock_args(ev: &crate::core::Event) -> Option<(String, String, u32)> {
    let text = |k: &str| ev.payload.iter().find(|(n, _)| n == k).and_then(|(_, v)| if let Value::Str(s) = v { Some(s.to_string()) } else { None });
    let count = ev.payload.iter().find(|(n, _)| n == "count").and_then(|(_, v)| v.as_f64())? as u32;
    Some((text("team")?, text("badge")?, count))
}

pub fn goal_payload(op: &GoalOp) -> Vec<(String, Value)> {
    let (name, arg) = match op {
        GoalOp::Assign(spec) => ("assign", serde_json::to_string(spec).unwrap_or_default()),
        GoalOp::Due(id) => ("due", id.clone()),
        GoalOp::Cancel(id) => ("cancel", id.clone()),
    };
    vec![("op".into(), Value::Str(name.into())), ("arg".into(), Value::Str(arg.into()))]
}

pub fn goal_op(ev: &StoredEvent) -> Option<GoalOp> {
    let text = |k: &str| {
        ev.event.payload.iter().find(|(n, _)| n == k).and_then(|(_, v)| if let Value::Str(s) = v { Some(s.to_string()) } else { None })
    };
    let arg = text("arg")?;
    match text("op")?.as_str() {
        "assign" => serde_json::from_str(&arg).ok().map(GoalOp::Assign),
        "due" => Some(GoalOp::Due(arg)),
        "cancel" => Some(GoalOp::Cancel(arg)),
        _ => None,
    }
}

/// Log records that are not the user's own events, which a from-scratch replay leaves out.
pub fn system_record(t: &str) -> bool {
    t == BACKFILL_EVENT || t == LEADERBOARD_EVENT || t == GOAL_EVENT || t == NOTICE_EVENT || t == DUPLICATE_EVENT || t == TEAM_UNLOCK_EVENT || t == COMMUNITY_EVENT || t == REVOKE_EVENT || t == RETRACT_EVENT || t == EXPIRE_EVENT
}

/// The event type of the record of expiries taken when the user connected or the expiry sweep
/// visited (no payload: every badge run out by the record's receive time goes). Its id is
/// `expire:<seq>`.
pub const EXPIRE_EVENT: &str = "accolade.expire";

/// The event type of a revocation through the API (`payload`: badge, reason, xp = claw_back
/// or keep). Its id is `revoke:<badge>:<seq>`, found by its place in the log.
pub const REVOKE_EVENT: &str = "accolade.revoke";
/// The event type of a retraction (`payload`: event = the retracted event's id, reason, xp).
/// Its id is `retract:<event>:<seq>`. Every from-scratch replay after it leaves that event out.
pub const RETRACT_EVENT: &str = "accolade.retract";

/// What a revocation or retraction record says. `target` is the badge or the event id.
#[derive(Debug, Clone, PartialEq)]
pub struct TakeRecord {
    pub target: String,
    pub reason: String,
    pub claw_back: bool,
}

impl TakeRecord {
    /// The payload of a record of type `t` (`REVOKE_EVENT` names a badge, `RETRACT_EVENT` an
    /// event).
    pub fn payload(&self, t: &str) -> Vec<(String, Value)> {
        let name = if t == RETRACT_EVENT { "event" } else { "badge" };
        let xp = if self.claw_back { "claw_back" } else { "keep" };
        vec![(name.into(), Value::Str(self.target.as_str().into())), ("reason".into(), Value::Str(self.reason.as_str().into())), ("xp".into(), Value::Str(xp.into()))]
    }

    pub fn parse(ev: &StoredEvent) -> Option<TakeRecord> {
        let text = |k: &str| ev.event.payload.iter().find(|(n, _)| n == k).and_then(|(_, v)| if let Value::Str(s) = v { Some(s.to_string()) } else { None });
        let name = if ev.event.event_type == RETRACT_EVENT { "event" } else { "badge" };
        Some(TakeRecord { target: text(name)?, reason: text("reason").unwrap_or_default(), claw_back: text("xp").as_deref() == Some("claw_back") })
    }
}

/// The ids of the events retracted by the records in `log`.
pub fn retracted(log: &[StoredEvent]) -> std::collections::HashSet<String> {
    log.iter().filter(|e| e.event.event_type == RETRACT_EVENT).filter_map(TakeRecord::parse).map(|r| r.target).collect()
}

/// The event type of a leaderboard award's log record (`payload`: board, period, rank).
pub const LEADERBOARD_EVENT: &str = "accolade.leaderboard";

pub fn award_payload(board: &str, period: &str, rank: usize) -> Vec<(String, Value)> {
    vec![("board".into(), Value::Str(board.into())), ("period".into(), Value::Str(period.into())), ("rank".into(), Value::Num(rank as f64))]
}

pub fn award_args(ev: &StoredEvent) -> (String, String, usize) {
    let get = |k: &str| ev.event.payload.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let text = |k: &str| match get(k) {
        Some(Value::Str(s)) => s.to_string(),
        _ => String::new(),
    };
    let rank = get("rank").and_then(|v| v.as_f64()).unwrap_or(0.0) as usize;
    (text("board"), text("period"), rank)
}

/// What a backfill record says: which badges the job awards and which stats it fills in.
pub struct BackfillRecord {
    pub badges: Vec<String>,
    pub new_stats: Vec<u64>,
}

impl BackfillRecord {
    pub fn payload(&self, job: u64) -> Vec<(String, Value)> {
        let stats: Vec<String> = self.new_stats.iter().map(|s| format!("{s:016x}")).collect();
        vec![
            ("job".into(), Value::Num(job as f64)),
            ("badges".into(), Value::Str(self.badges.join(",").into())),
            ("new_stats".into(), Value::Str(stats.join(",").into())),
        ]
    }

    pub fn parse(ev: &StoredEvent) -> BackfillRecord {
        let text = |k: &str| -> String {
            ev.event.payload.iter().find(|(n, _)| n == k).and_then(|(_, v)| if let Value::Str(s) = v { Some(s.to_string()) } else { None }).unwrap_or_default()
        };
        let list = |s: String| -> Vec<String> { s.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect() };
        BackfillRecord {
            badges: list(text("badges")),
            new_stats: list(text("new_stats")).iter().filter_map(|h| u64::from_str_radix(h, 16).ok()).collect(),
        }
    }
}

/// The id of a backfill job's log record for a user (also the `event_id` of its awards).
pub fn backfill_id(job: u64) -> String {
    format!("backfill:{job}")
}

/// The id of a leaderboard period award's log record (also the `event_id` of its awards).
pub fn award_id(board: &str, period: &str) -> String {
    format!("leaderboard:{board}:{period}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids the server gives mail between teams and members: event ids are unique in the
    /// tenant, so a member's event has one per team it counts for, and a team's unlock one per
    /// member told; all reserved, so no client's event can hold one first.
    #[test]
    fn mail_ids_are_one_per_team_and_per_member_and_reserved() {
        let (a, b) = (crate::core::catalogue::team_entity("a"), crate::core::catalogue::team_entity("b"));
        let ids = [
            contribution_id(&a, "ann", "e1"),
            contribution_id(&b, "ann", "e1"),
            contribution_id(&a, "bob", "e1"),
            team_unlock_id(&a, "five", 1, 7, "ann"),
            team_unlock_id(&a, "five", 1, 7, "bob"),
            team_unlock_id(&a, "five", 2, 9, "ann"),
            team_unlock_id(&b, "five", 1, 7, "ann"),
            // Earned again after it expired: counted from 1 again, by a later record.
            team_unlock_id(&a, "five", 1, 12, "ann"),
        ];
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
        assert!(ids.iter().all(|id| id.starts_with(crate::protocol::RESERVED_ID_PREFIX)), "{ids:?}");
    }
}
