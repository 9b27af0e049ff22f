//! What stores of earlier formats hold, and how it is read: the user snapshot as format 1
//! stored it, and which records of a format 1 store were found by id.
//!
//! The user snapshot as format 1 stored it (before revocation and expiry): the same fields as
//! today's `UserState` less `revoked`, and badge records without `expires_at`. bincode writes
//! fields one after another with no names, so an old snapshot can only be read by types laid
//! out as it was; these are those types, and their conversion to today's.

use crate::core::state::{BoardScore, GoalSpec, GoalState, GoalStatus, KeyMap, Ring, StatValue};
use crate::core::{BadgeRecord, Millis, UserState, Value};
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};

#[derive(Deserialize)]
pub(super) struct UserRecordV1 {
    state: UserStateV1,
    seq: u64,
    offset: u64,
    epoch: String,
}

#[derive(Deserialize)]
struct BadgeRecordV1 {
    awarded_at: Millis,
    count: u32,
    version: u64,
    keys: Vec<String>,
    event_id: String,
}

#[derive(Deserialize)]
struct GoalStateV1 {
    spec: GoalSpec,
    assigned_at: Millis,
    status: GoalStatus,
    closed_at: Option<Millis>,
    sub: Box<UserStateV1>,
}

#[derive(Deserialize)]
struct UserStateV1 {
    tenant_id: String,
    user_id: String,
    xp: u64,
    level: u32,
    badges: BTreeMap<String, BadgeRecordV1>,
    layout: u64,
    stats: Vec<(u64, StatValue)>,
    rings: Vec<Ring>,
    recent_ids: VecDeque<u64>,
    fingerprints: VecDeque<(u64, Millis)>,
    attributes: BTreeMap<String, Value>,
    timezone: Option<String>,
    signed_up_at: Option<Millis>,
    first_seen: Option<Millis>,
    last_event_at: Millis,
    xp_days: KeyMap<(i32, u64)>,
    events: u64,
    boards: KeyMap<BoardScore>,
    goals: BTreeMap<String, GoalStateV1>,
}

impl From<UserStateV1> for UserState {
    fn from(o: UserStateV1) -> UserState {
        let mut badges = KeyMap::default();
        for (id, b) in o.badges {
            badges.insert(id, BadgeRecord { awarded_at: b.awarded_at, count: b.count, version: b.version, keys: b.keys, event_id: b.event_id, expires_at: None });
        }
        let goals = o
            .goals
            .into_iter()
            .map(|(id, g)| (id, GoalState { spec: g.spec, assigned_at: g.assigned_at, status: g.status, closed_at: g.closed_at, sub: Box::new(UserState::from(*g.sub)) }))
            .collect();
        UserState {
            tenant_id: o.tenant_id,
            user_id: o.user_id,
            xp: o.xp,
            level: o.level,
            badges,
            layout: o.layout,
            stats: o.stats,
            rings: o.rings,
            recent_ids: o.recent_ids,
            fingerprints: o.fingerprints,
            attributes: o.attributes,
            timezone: o.timezone,
            signed_up_at: o.signed_up_at,
            first_seen: o.first_seen,
            last_event_at: o.last_event_at,
            xp_days: o.xp_days,
            events: o.events,
            boards: o.boards,
            goals,
            revoked: KeyMap::default(),
            ..Default::default()
        }
    }
}

impl From<UserRecordV1> for super::UserRecord {
    fn from(o: UserRecordV1) -> super::UserRecord {
        super::UserRecord { state: o.state.into(), seq: o.seq, offset: o.offset, epoch: o.epoch }
    }
}

/// Whether a record of a store of format 1 was found by its place in the log only, which its
/// type says: the records the server made for itself (goal operations, leaderboard awards,
/// backfill steps, revocations, retractions, expiries) were written without a dedup key, every
/// other record with one. Frozen: it describes that format, whose records do not say how they
/// are found (format 3 records do, `FORMAT_EVENT_V3`).
pub fn format1_found_by_place(event_type: &str) -> bool {
    ["accolade.goal", "accolade.leaderboard", "accolade.backfill", "accolade.revoke", "accolade.retract", "accolade.expire"].contains(&event_type)
}
