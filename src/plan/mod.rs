//! The plan: the one pure step from the rule core's effects to what the shell performs for a
//! user (the log record and the other writes, the pushes with their offsets, the leaderboard
//! updates, the ingest outcome). No IO and no clock: time comes in as arguments, so the same
//! inputs always give the same plan, and tests drive it from tables with no runtime.
//!
//! Every path that changes a user goes through here: client events ([`event`]) and duplicates
//! by fingerprint ([`duplicate`]), goal operations ([`goal`]), notices ([`notice`]), leaderboard
//! awards ([`award`]) and backfill steps ([`backfill`]), each ending in the one log-record helper, [`Planner::record`]. The
//! user actor only executes a plan: it sends `writes` to the persister and releases `pushes`
//! and `boards` once they are durable.

use crate::core::{Catalogue, Effect, Event, Millis, UserState};
use crate::protocol::{self, Frame};
use crate::records::{self, BackfillRecord, GoalOp};
use crate::store::{self, StoredEvent, Write};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A push as planned: its wire `type` (so webhooks need not parse the frame again), its offset
/// in the user's push stream, and the frame as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub kind: &'static str,
    pub offset: u64,
    pub frame: Frame,
}

/// A leaderboard score to put in the live ranking once the writes are durable; `left` is the
/// league the user moved out of, to be removed from.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardUpdate {
    pub key: store::BoardKey,
    pub entry: store::BoardEntry,
    pub left: Option<store::BoardKey>,
}

/// What the shell does for one change of a user, in order: `writes` go to the persister as
/// one job; once it is durable, `pushes` go to the user's sockets (and webhook outboxes, in
/// the same job), and `boards` to the live rankings.
#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub pushes: Vec<Push>,
    pub boards: Vec<BoardUpdate>,
    /// The XP the change gave, and the badges it unlocked (the ingest outcome's fields).
    pub xp: u64,
    pub unlocks: Vec<String>,
    /// Contributions to teams among the writes (the mail worker is woken once they are
    /// durable).
    pub mailed: usize,
    /// The badges it took away.
    pub revoked: Vec<String>,
    /// The ids of its records found by id, (id hash, seq): the actor adds them to the user's
    /// id index, which writes them with her next snapshot (`store::IdIndex`).
    pub ids: Vec<(u64, u64)>,
    /// A team's progress for its members' open sockets, once the change is durable
    /// (`team_progress`, no offset, not in anyone's history).
    pub told: Vec<Frame>,
    /// Community goals the change adds to: (goal, amount, the user's first share of it). Her
    /// new share is among the writes; the tenant's total takes the amount once it is durable.
    pub contributed: Vec<(Arc<str>, f64, bool)>,
}

/// The user's positions, advanced by every plan: the last log sequence number and push offset
/// given out, and the sequence number the last snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub seq: u64,
    pub offset: u64,
    pub snap_seq: u64,
}

/// Progress pushes are hints for a progress bar: one is due when a badge crosses a tenth of its
/// target (or falls back, or completes), and not more often than `every` per badge otherwise.
/// Every push is a durable write, so this keeps the stream to what a user can see move.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: Duration,
    /// For each badge: when progress was last pushed, and at which tenth of the target.
    sent: HashMap<Arc<str>, (Instant, u8)>,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle { every, sent: HashMap::new() }
    }

    /// Whether progress `current` of `target` on `badge` is pushed at `now`; if so, it is
    /// remembered as the last one pushed.
    pub fn due(&mut self, badge: &Arc<str>, current: f64, target: f64, now: Instant) -> bool {
        let step = ((current / target).clamp(0.0, 1.0) * 10.0).floor() as u8;
        let due = match self.sent.get(badge) {
            None => step > 0,
            Some((at, last)) => step != *last && (now.duration_since(*at) >= self.every || step < *last || current >= target),
        };
        if due {
            self.sent.insert(badge.clone(), (now, step));
        }
        due
    }
}

/// Whose plan it is and under which catalogue: everything a plan reads besides the state.
pub struct Planner<'a> {
    pub tenant: &'a str,
    pub user: &'a str,
    /// The push epoch, kept in snapshots.
    pub epoch: &'a str,
    pub cat: &'a Catalogue,
    /// A snapshot is written with an event once the log has moved this far past the last one.
    pub snapshot_every: u64,
    /// What the entity is linked to (docs/teams.md): a user's team entities, to which her
    /// accepted events are mailed, or a team's members, who are told its unlocks.
    pub linked: &'a [String],
    /// The user's shares of community goals before this change (docs/teams.md); None where
    /// community goals are not served (cluster mode), so nothing is written for them.
    pub shares: Option<&'a std::collections::BTreeMap<String, f64>>,
}

/// How a log record is found again: client events and notices by their id (a resend is a
/// duplicate), the records the server makes for itself (goal operations, awards, backfills)
/// by their place in the user's log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    ById,
    ByPlace,
}

impl Planner<'_> {
    /// The one log-record helper: takes the next sequence number and stores `event` there with
    /// the plan's pushes so far (for recovery), its id in the plan's `ids` when it is
    /// `Keyed::ById`.
    pub fn record(&self, plan: &mut Plan, cur: &mut Cursor, event: Event, received_at: Millis, keyed: Keyed) -> Write {
        cur.seq += 1;
        self.record_at(plan, cur.seq, event, received_at, keyed)
    }

    fn record_at(&self, plan: &mut Plan, seq: u64, event: Event, received_at: Millis, keyed: Keyed) -> Write {
        let pushes = plan.pushes.iter().map(|p| (p.offset, p.frame.to_string())).collect();
        let by_id = keyed == Keyed::ById;
        if by_id {
            plan.ids.push((store::id_hash(&event.event_id), seq));
        }
        let stored = StoredEvent { event, received_at, catalogue_version: self.cat.version, pushes };
        store::writes::event(self.tenant, self.user, seq, &stored, by_id)
    }

    /// The contributions of the member's accepted event number `seq` to her teams: one mail
    /// row for each team whose catalogue counts its type, in the event's own batch, so that it
    /// is durable exactly when the event is. The team counts it under an id of its own
    /// (`records::contribution_id`), so a second delivery is a duplicate there.
    fn contributions(&self, plan: &mut Plan, seq: u64, event: &Event, received_at: Millis) {
        let Some(teams) = self.cat.teams.as_ref() else { return };
        let counted = teams.catalogue.type_of(&event.event_type).map(|t| &teams.catalogue.types[t]).is_some_and(|ty| {
            ty.name != crate::core::catalogue::PROFILE_EVENT && !(ty.stats.is_empty() && ty.xp_rules.is_empty() && ty.badges.is_empty() && ty.checks.is_empty())
        });
        if !counted {
            return;
        }
        for team in self.linked {
            let mut payload = event.payload.clone();
            payload.push((crate::core::catalogue::MEMBER_FIELD.into(), crate::core::Value::Str(self.user.into())));
            let contribution = Event {
                event_id: records::contribution_id(team, self.user, &event.event_id),
                event_type: event.event_type.clone(),
                user_id: team.clone(),
                tenant_id: self.tenant.into(),
                occurred_at: event.occurred_at,
                source: "team".into(),
                payload,
            };
            plan.writes.push(store::mail(self.tenant, self.user, seq, team, &store::MailRow { event: contribution, received_at }));
            plan.mailed += 1;
        }
    }

    /// A team's unlocks in `fx`, mailed to each member in the team's batch: each member's actor
    /// pushes it as `team_unlock` and logs it under an id of her own
    /// (`records::team_unlock_id`), so a second delivery tells her nothing twice. When the badge
    /// gives the members a badge of their own (`Give`), the rows of those it goes to (every
    /// member, or the contributors in the team's state `st`) name it, and her actor awards it.
    /// A badge the team lost (`Effect::Revoked`) is told the same way, as `team_revoked`.
    fn tell_members(&self, plan: &mut Plan, seq: u64, st: &UserState, fx: &[Effect], received_at: Millis) {
        let Some(team) = crate::core::catalogue::team_of(self.user) else { return };
        for e in fx {
            // An unlock, or a badge the team lost (told the same way, under ids of its own,
            // since one record may take a badge away and give it again).
            let (badge, count, at, lost) = match e {
                Effect::Unlock { badge, count, at, .. } => (badge, *count, *at, None),
                Effect::Revoked { badge, cause, count, at, .. } => (badge, *count, *at, Some(cause.as_str())),
                _ => continue,
            };
            let give = lost.is_none().then(|| self.cat.badge(badge).and_then(|b| b.give.as_ref())).flatten();
            let contributors = give.and_then(|g| g.contributors).map(|s| match st.stats.get(s).map(|v| &v.1) {
                Some(crate::core::state::StatValue::Set(members)) => members.clone(),
                _ => Default::default(),
            });
            for member in self.linked {
                let mut payload = vec![
                    ("team".to_string(), crate::core::Value::Str(team.into())),
                    ("badge".to_string(), crate::core::Value::Str(badge.to_string().into())),
                    ("count".to_string(), crate::core::Value::Num(f64::from(count))),
                ];
                if let Some(cause) = lost {
                    payload.push((records::REVOKED_FIELD.to_string(), crate::core::Value::Str(cause.into())));
                }
                if let Some(g) = give
                    && contributors.as_ref().is_none_or(|c| c.contains(member))
                {
                    payload.push((records::GIVE_FIELD.to_string(), crate::core::Value::Str(g.badge.to_string().into())));
                }
                let (event_id, key_end) = match lost {
                    None => (records::team_unlock_id(self.user, badge, count, seq, member), format!("{member}\u{1}{badge}")),
                    Some(_) => (records::team_revoked_id(self.user, badge, count, seq, member), format!("{member}\u{1}{badge}\u{1}revoked")),
                };
                let told = Event { event_id, event_type: records::TEAM_UNLOCK_EVENT.into(), user_id: member.clone(), tenant_id: self.tenant.into(), occurred_at: at, source: "team".into(), payload };
                plan.writes.push(store::mail(self.tenant, self.user, seq, &key_end, &store::MailRow { event: told, received_at }));
                plan.mailed += 1;
            }
        }
    }

    /// The state as stored in a snapshot (see [`snapshot`]).
    pub fn snapshot(&self, cur: &mut Cursor, st: &UserState) -> [Write; 2] {
        snapshot(self.tenant, self.user, self.epoch, cur, st)
    }

    /// A system record's event: the user's own, made by the server.
    fn system(&self, event_id: String, event_type: &str, source: &str, now: Millis, payload: Vec<(String, crate::core::Value)>) -> Event {
        Event { event_id, event_type: event_type.into(), user_id: self.user.into(), tenant_id: self.tenant.into(), occurred_at: now, source: source.into(), payload }
    }

    /// The xp, unlock and level-up pushes for `fx`, numbered from the next offset: one xp
    /// summing the change's XP, then the unlocks, then one level-up.
    fn awards(&self, plan: &mut Plan, cur: &mut Cursor, st: &UserState, fx: &[Effect], event_id: &str) {
        let gained: u64 = fx.iter().map(|e| if let Effect::Xp { delta, .. } = e { *delta } else { 0 }).sum();
        if gained > 0 {
            push(plan, cur, "xp", |o| protocol::xp(o, gained, st.xp, st.level, event_id));
            plan.xp = gained;
        }
        for e in fx {
            if let Effect::Unlock { badge, count, key, xp, at } = e
                && let Some(def) = self.cat.badge(badge)
            {
                push(plan, cur, "unlock", |o| protocol::unlock(o, def, *count, key.as_deref(), *xp, *at, event_id));
                plan.unlocks.push(badge.to_string());
            }
        }
        if let Some(level) = fx.iter().filter_map(|e| if let Effect::LevelUp { level } = e { Some(*level) } else { None }).max() {
            push(plan, cur, "level_up", |o| protocol::level_up(o, level, event_id));
        }
    }

    /// A `revoked` push for each badge `fx` takes away, numbered from the next offset.
    fn revocations(&self, plan: &mut Plan, cur: &mut Cursor, fx: &[Effect], event_id: &str) {
        for e in fx {
            if let Effect::Revoked { badge, cause, reason, count, xp, total, level, at } = e {
                let def = self.cat.badge(badge);
                push(plan, cur, "revoked", |o| protocol::revoked(o, badge, def, cause.as_str(), reason, *count, *xp, *total, *level, *at, event_id));
                plan.revoked.push(badge.to_string());
            }
        }
    }

    /// The goal pushes for `fx`, and the goal records they change.
    fn goals(&self, plan: &mut Plan, cur: &mut Cursor, st: &UserState, fx: &[Effect], event_id: &str) {
        for e in fx {
            let id = match e {
                Effect::GoalAssigned { goal, title, assigner, due } => {
                    push(plan, cur, "goal_assigned", |o| protocol::goal_assigned(o, goal, title, assigner, *due, event_id));
                    goal
                }
                Effect::GoalCompleted { goal, title, assigner, at } => {
                    push(plan, cur, "goal_completed", |o| protocol::goal_completed(o, goal, title, assigner, *at, event_id));
                    goal
                }
                Effect::GoalMissed { goal, title, assigner, at } => {
                    push(plan, cur, "goal_missed", |o| protocol::goal_missed(o, goal, title, assigner, *at, event_id));
                    goal
                }
                Effect::GoalCancelled { goal } => goal,
                _ => continue,
            };
            if let Some(r) = goal_record(st, self.user, id) {
                plan.writes.push(store::writes::goal(self.tenant, &r));
            }
        }
    }
}

/// The state as stored in a snapshot, at the cursor's positions; the cursor then counts the
/// snapshot as the last one. Needs no catalogue, so a stopping user is snapshotted even when
/// its tenant's catalogue is gone.
pub fn snapshot(tenant: &str, user: &str, epoch: &str, cur: &mut Cursor, st: &UserState) -> [Write; 2] {
    #[derive(Serialize)]
    struct RecordRef<'a> {
        state: &'a UserState,
        seq: u64,
        offset: u64,
        epoch: &'a str,
    }
    // Serializes exactly like `store::UserRecord` (same fields, same order) without cloning
    // the state.
    let rec = RecordRef { state: st, seq: cur.seq, offset: cur.offset, epoch };
    cur.snap_seq = cur.seq;
    store::writes::snapshot(tenant, user, cur.seq, store::encode_user(&rec))
}

/// Adds the push that `frame` builds at the next offset.
fn push(plan: &mut Plan, cur: &mut Cursor, kind: &'static str, frame: impl FnOnce(u64) -> Frame) {
    cur.offset += 1;
    plan.pushes.push(Push { kind, offset: cur.offset, frame: frame(cur.offset) });
}

/// A goal as the API lists it, from its assignee's state.
pub fn goal_record(st: &UserState, assignee: &str, id: &str) -> Option<store::GoalRecord> {
    let g = st.goals.get(id)?;
    Some(store::GoalRecord { spec: g.spec.clone(), assignee: assignee.to_string(), assigned_at: g.assigned_at, status: g.status, closed_at: g.closed_at, notified: false })
}

/// Every leaderboard score the user's state holds (each board's current period and the one
/// before), as stored.
pub fn board_scores(st: &UserState) -> Vec<(String, String, String, store::BoardEntry)> {
    let mut out = Vec::new();
    for (board, b) in &st.boards {
        for s in std::iter::once(b).chain(b.previous.as_deref()) {
            let entry = store::BoardEntry { score: s.score, reached: s.reached, end: s.end };
            out.push((board.clone(), s.period.to_string(), s.segment.clone().unwrap_or_default(), entry));
        }
    }
    out
}

/// A client event that is a duplicate by fingerprint (`core::apply` remembered its id, and
/// nothing else): its `accolade.duplicate` record under its own id, so a resend stays a
/// duplicate and every rebuild remembers the id too, and a snapshot when one is due. No push.
pub fn duplicate(p: &Planner, cur: &mut Cursor, st: &UserState, event: Event, received_at: Millis) -> Plan {
    let mut plan = Plan::default();
    let payload = records::duplicate_payload(&event.event_type);
    let record = Event { event_type: records::DUPLICATE_EVENT.into(), payload, ..event };
    let w = p.record(&mut plan, cur, record, received_at, Keyed::ById);
    plan.writes.push(w);
    if cur.snap_seq == 0 || cur.seq - cur.snap_seq >= p.snapshot_every {
        plan.writes.extend(p.snapshot(cur, st));
    }
    plan
}

/// An accepted client event, `fx` being what `core::apply` returned for it and `st` the state
/// after it. Pushes in the order the client sees them: xp, unlocks, level-up, throttled
/// progress, goal outcomes. Writes in the order a crash between them leaves harmless: the
/// leaderboard scores (one record per user; a crash before the event leaves scores whose event
/// is not acknowledged, and the resent event writes the same scores), the event with its dedup
/// key, the goal records, and a snapshot when one is due.
#[allow(clippy::too_many_arguments)]
pub fn event(p: &Planner, cur: &mut Cursor, st: &UserState, fx: &[Effect], event: Event, received_at: Millis, progress: &mut Throttle, now: Instant) -> Plan {
    let mut plan = Plan::default();
    let event_id = event.event_id.clone();
    cur.seq += 1;
    // Expiries the event saw come first: the event may earn the same badge again.
    p.revocations(&mut plan, cur, fx, &event_id);
    p.awards(&mut plan, cur, st, fx, &event_id);
    // A team's progress goes to its members as well, throttled as a user's is.
    let team = if p.linked.is_empty() { None } else { crate::core::catalogue::team_of(p.user) };
    for e in fx {
        if let Effect::Progress { badge, current, target } = e
            && progress.due(badge, *current, *target, now)
        {
            push(&mut plan, cur, "progress", |o| protocol::progress(o, badge, *current, *target));
            if let Some(team) = team {
                plan.told.push(protocol::team_progress(team, badge, *current, *target));
            }
        }
    }
    let mut goal_writes = Plan::default();
    p.goals(&mut goal_writes, cur, st, fx, &event_id);
    plan.pushes.append(&mut goal_writes.pushes);
    for e in fx {
        if let Effect::Score { board, period, end, segment, score, reached, moved_from } = e {
            let key = store::BoardKey { tenant: p.tenant.to_string(), board: board.to_string(), period: period.to_string(), segment: segment.clone().unwrap_or_default() };
            let left = moved_from.as_ref().map(|m| store::BoardKey { segment: m.clone(), ..key.clone() });
            plan.boards.push(BoardUpdate { key, entry: store::BoardEntry { score: *score, reached: *reached, end: *end }, left });
        }
    }
    if !plan.boards.is_empty() {
        plan.writes.push(store::writes::board_scores(p.tenant, p.user, &board_scores(st)));
    }
    // Her new share goes before the event's record: a crash can leave it without the record
    // (the persister's writes are not atomic), and `Share::at` then reads the one before.
    for e in fx {
        if let (Effect::Contributed { goal, amount }, Some(shares)) = (e, p.shares) {
            let before = shares.get(&**goal).copied().unwrap_or(0.0);
            plan.writes.push(store::writes::community_share(p.tenant, p.user, goal, &store::Share { total: before + amount, prev: before, seq: cur.seq }));
            plan.contributed.push((goal.clone(), *amount, before <= 0.0));
        }
    }
    if !p.linked.is_empty() {
        match crate::core::catalogue::team_of(p.user) {
            None => p.contributions(&mut plan, cur.seq, &event, received_at),
            Some(_) => p.tell_members(&mut plan, cur.seq, st, fx, received_at),
        }
    }
    let w = p.record_at(&mut plan, cur.seq, event, received_at, Keyed::ById);
    plan.writes.push(w);
    plan.writes.append(&mut goal_writes.writes);
    if cur.snap_seq == 0 || cur.seq - cur.snap_seq >= p.snapshot_every {
        plan.writes.extend(p.snapshot(cur, st));
    }
    plan
}

/// A goal operation the core applied (`fx`, non-empty) to the assignee's state `st`: its
/// `accolade.goal` record, so every rebuild repeats it, then the goal records it changed.
pub fn goal(p: &Planner, cur: &mut Cursor, st: &UserState, fx: &[Effect], goal: &str, op: &GoalOp, now: Millis) -> Plan {
    let mut plan = Plan::default();
    cur.seq += 1;
    let event_id = format!("goal:{goal}:{}", cur.seq);
    p.goals(&mut plan, cur, st, fx, &event_id);
    let event = p.system(event_id, records::GOAL_EVENT, "goal", now, records::goal_payload(op));
    let record = p.record_at(&mut plan, cur.seq, event, now, Keyed::ByPlace);
    plan.writes.insert(0, record);
    plan
}

/// A team's unlock told to this member (`event`, an `accolade.team_unlock` record the team
/// mailed her): one `team_unlock` push, logged under its id so a repeat is recognised. A badge
/// the team catalogue no longer has is logged without a push.
pub fn team_unlock(p: &Planner, cur: &mut Cursor, st: &UserState, fx: &[Effect], event: Event, now: Millis) -> Plan {
    let mut plan = Plan::default();
    if let Some((team, badge, count)) = records::team_unlock_args(&event)
        && let Some(def) = p.cat.teams.as_ref().and_then(|t| t.catalogue.badge(&badge))
    {
        match records::team_revoked_cause(&event) {
            Some(cause) => push(&mut plan, cur, "team_revoked", |o| protocol::team_revoked(o, &team, def, count, &cause, event.occurred_at)),
            None => push(&mut plan, cur, "team_unlock", |o| protocol::team_unlock(o, &team, def, count, event.occurred_at)),
        }
    }
    // The badge the team gave her (`core::give`), after the news of the team's.
    p.awards(&mut plan, cur, st, fx, &event.event_id);
    let w = p.record(&mut plan, cur, event, now, Keyed::ById);
    plan.writes.push(w);
    plan
}

/// How community goal `goal` (kept under `key`) ended (`o`), told to a participant whose share
/// was `share`: one `community_outcome` push, logged under `records::community_id(key)` so she
/// is told once.
#[allow(clippy::too_many_arguments)]
pub fn community_outcome(p: &Planner, cur: &mut Cursor, key: &str, goal: &str, name: &str, o: &store::Outcome, share: f64, now: Millis) -> Plan {
    let mut plan = Plan::default();
    push(&mut plan, cur, "community_outcome", |off| protocol::community_outcome(off, goal, name, (o.reached, o.total, o.target, o.participants, o.ends), share));
    let payload = vec![("goal".to_string(), crate::core::Value::Str(goal.into())), ("reached".to_string(), crate::core::Value::Bool(o.reached))];
    let event = p.system(records::community_id(key), records::COMMUNITY_EVENT, "community", now, payload);
    let w = p.record(&mut plan, cur, event, now, Keyed::ById);
    plan.writes.push(w);
    plan
}

/// How a goal ended, told to its assigner: one `notice` push, logged under the notice's `id`
/// so a repeat is recognised.
pub struct Notice<'a> {
    pub id: String,
    pub kind: &'a str,
    pub goal: &'a str,
    pub title: &'a str,
    pub assignee: &'a str,
    pub at: Millis,
}

pub fn notice(p: &Planner, cur: &mut Cursor, n: Notice, now: Millis) -> Plan {
    let mut plan = Plan::default();
    push(&mut plan, cur, "notice", |o| protocol::notice(o, n.kind, n.goal, n.title, n.assignee, n.at));
    let payload = vec![("kind".into(), crate::core::Value::Str(n.kind.into())), ("goal".into(), crate::core::Value::Str(n.goal.into()))];
    let event = p.system(n.id, records::NOTICE_EVENT, "goal", now, payload);
    plan.writes = vec![p.record(&mut plan, cur, event, now, Keyed::ById)];
    plan
}

/// A leaderboard period award the core made (`fx`, non-empty): its `accolade.leaderboard`
/// record lets every rebuild make the same award.
#[allow(clippy::too_many_arguments)]
pub fn award(p: &Planner, cur: &mut Cursor, st: &UserState, fx: &[Effect], board: &str, period: &str, rank: usize, now: Millis) -> Plan {
    let mut plan = Plan::default();
    let event_id = records::award_id(board, period);
    p.awards(&mut plan, cur, st, fx, &event_id);
    // A team's award from a board of teams is told to its members, like any unlock of its own,
    // in the same batch and before the award's record.
    if !p.linked.is_empty() {
        p.tell_members(&mut plan, cur.seq + 1, st, fx, now);
    }
    let event = p.system(event_id, records::LEADERBOARD_EVENT, "leaderboard", now, records::award_payload(board, period, rank));
    let w = p.record(&mut plan, cur, event, now, Keyed::ByPlace);
    plan.writes.push(w);
    plan
}

/// The id the next record of `kind` (`revoke` or `retract`) about `target` takes: its place
/// in the log makes it unique. The core records it in the revocations it makes, before the
/// plan writes the record.
pub fn record_id(kind: &str, target: &str, cur: &Cursor) -> String {
    format!("{kind}:{target}:{}", cur.seq + 1)
}

/// A revocation through the API or a retraction the core made (`fx`, non-empty): its record
/// (`accolade.revoke` or `accolade.retract`, `t`), so every rebuild takes the same badges,
/// and a `revoked` push for each badge taken. A retraction's record goes with a snapshot, as a
/// backfill's does, since repeating it replays the user's whole log twice.
#[allow(clippy::too_many_arguments)]
pub fn take(p: &Planner, cur: &mut Cursor, st: &UserState, fx: &[Effect], t: &'static str, rec: &records::TakeRecord, record_id: String, now: Millis) -> Plan {
    let mut plan = Plan::default();
    cur.seq += 1;
    p.revocations(&mut plan, cur, fx, &record_id);
    // A member's retracted event is retracted from her teams too (what it counted there), by a
    // mail row to each, in the retraction's batch.
    // A team's badges taken away are told to its members.
    if crate::core::catalogue::team_of(p.user).is_some() && !p.linked.is_empty() {
        p.tell_members(&mut plan, cur.seq, st, fx, now);
    }
    if t == records::RETRACT_EVENT && crate::core::catalogue::team_of(p.user).is_none() {
        for team in p.linked {
            let asked = records::TakeRecord { target: records::contribution_id(team, p.user, &rec.target), reason: rec.reason.clone(), claw_back: rec.claw_back };
            let event = Event {
                event_id: format!("{}\u{1}retract", records::contribution_id(team, p.user, &rec.target)),
                event_type: records::TEAM_RETRACT_EVENT.into(),
                user_id: team.clone(),
                tenant_id: p.tenant.into(),
                occurred_at: now,
                source: "team".into(),
                payload: asked.payload(records::RETRACT_EVENT),
            };
            plan.writes.push(store::mail(p.tenant, p.user, cur.seq, &format!("{team}\u{1}retract"), &store::MailRow { event, received_at: now }));
            plan.mailed += 1;
        }
    }
    let event = p.system(record_id, t, "api", now, rec.payload(t));
    let w = p.record_at(&mut plan, cur.seq, event, now, Keyed::ByPlace);
    plan.writes.push(w);
    if t == records::RETRACT_EVENT || cur.seq - cur.snap_seq >= p.snapshot_every {
        plan.writes.extend(p.snapshot(cur, st));
    }
    plan
}

/// What a look with no event changed (`core::look`, `fx` non-empty: the user connected or the
/// expiry sweep visited): its `accolade.expire` record, a `revoked` push for each expiry, then
/// the awards of the waits that lapsed (a team's told to its members, as an event's are).
pub fn expire(p: &Planner, cur: &mut Cursor, st: &UserState, fx: &[Effect], record_id: String, now: Millis) -> Plan {
    let mut plan = Plan::default();
    cur.seq += 1;
    p.revocations(&mut plan, cur, fx, &record_id);
    p.awards(&mut plan, cur, st, fx, &record_id);
    if !p.linked.is_empty() {
        p.tell_members(&mut plan, cur.seq, st, fx, now);
    }
    let event = p.system(record_id, records::EXPIRE_EVENT, "expiry", now, vec![]);
    // After the mail to the members (as an event's record comes after its mail), not instead.
    let w = p.record_at(&mut plan, cur.seq, event, now, Keyed::ByPlace);
    plan.writes.push(w);
    if cur.seq - cur.snap_seq >= p.snapshot_every {
        plan.writes.extend(p.snapshot(cur, st));
    }
    plan
}

/// The expiry index's write for `st` when its next look (`UserState::next_look`: the earliest
/// badge expiry or wait of an `absence` rule) is not what the index holds (`indexed`, then
/// updated), so that the expiry sweep finds a user whose badge runs out, or whose wait
/// lapses, while she is away. The shell puts it before the change's log record: after a crash the
/// index may run ahead of the log (the sweep then finds nothing due and sets it right), never
/// behind it.
pub fn expiry_index(tenant: &str, user: &str, st: &UserState, indexed: &mut Option<Millis>) -> Option<Write> {
    let due = st.next_look();
    if due == *indexed {
        return None;
    }
    *indexed = due;
    Some(store::writes::expiry(tenant, user, due))
}

/// How many badges backfill `job` has given this user, counting a visit before this one: a
/// resumed job may visit a user again (its record is saved every half second, and at a
/// graceful stop without the user it was still waiting on), and the badges it gave then are
/// counted again, never re-awarded, so the job's total stays exact. `owned` is the state
/// before this visit; `fx` is what this visit's merge returned.
pub fn backfill_awards(owned: &UserState, badges: &[String], job: u64, fx: &[Effect]) -> u32 {
    let event_id = records::backfill_id(job);
    let earlier = badges.iter().filter(|b| owned.badges.get(b.as_str()).is_some_and(|r| r.event_id == event_id)).count();
    let now = fx.iter().filter(|e| matches!(e, Effect::Unlock { .. })).count();
    (earlier + now) as u32
}

/// A backfill step that changed the user (`st` after it): its `accolade.backfill` record and a
/// snapshot in one job; the awards are pushed only when the job says to (`notify`).
#[allow(clippy::too_many_arguments)]
pub fn backfill(p: &Planner, cur: &mut Cursor, st: &UserState, fx: &[Effect], job: u64, rec: &BackfillRecord, notify: bool, now: Millis) -> Plan {
    let mut plan = Plan::default();
    let event_id = records::backfill_id(job);
    if notify {
        p.awards(&mut plan, cur, st, fx, &event_id);
    }
    let event = p.system(event_id, records::BACKFILL_EVENT, "backfill", now, rec.payload(job));
    plan.writes = vec![p.record(&mut plan, cur, event, now, Keyed::ByPlace)];
    plan.writes.extend(p.snapshot(cur, st));
    plan
}

#[cfg(test)]
mod tests;
