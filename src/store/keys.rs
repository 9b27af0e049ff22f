//! What the store holds and under which keys: the stored records, the key layouts of every
//! tree (see the store's own header), and the versioned encoding of every value.

use super::StoreError;
use crate::core::{Event, Millis, UserState};
use serde::{Deserialize, Serialize};

/// The format byte in front of every stored value.
pub const FORMAT_V1: u8 = 1;
/// The format of user snapshots since revocation and expiry (`UserState::revoked`,
/// `BadgeRecord::expires_at`). Every other value is still written as format 1, unchanged; a
/// format 1 snapshot is read through `legacy` and written back as format 2 at the next
/// snapshot.
pub const FORMAT_V2: u8 = 2;
/// The format of event records since each user's id index (`ids.rs`): a flags byte, then the
/// record encoded as in format 1. Flag `FOUND_BY_ID` says the record is found by its id (a
/// client event, a duplicate by fingerprint, a notice, a team's unlock told), so that its id
/// goes into the user's index; without it the record is one the server made for itself (a
/// goal operation, an award, a backfill step, a revocation, an expiry), found by its place.
/// A format 1 event record says neither: its id is looked up in the legacy `dedup` tree.
pub const FORMAT_EVENT_V3: u8 = 3;
pub const FOUND_BY_ID: u8 = 1;

/// The format of the whole store, kept under `STORE_FORMAT_KEY` in the default tree: 1 (or no
/// key) for a store with the tenant-wide `dedup` tree, 2 since per-user id chunks. A store of
/// a later format than this release knows is refused at open rather than misread.
pub const STORE_FORMAT: u8 = 2;
pub(super) const STORE_FORMAT_KEY: &[u8] = b"store-format";

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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

pub(super) fn board_prefix(tenant: &str, board: &str, period: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + board.len() + period.len() + 3);
    for part in [tenant, board, period] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k
}

pub(super) fn archive_key(b: &BoardKey, rank: u32) -> Vec<u8> {
    let mut k = board_prefix(&b.tenant, &b.board, &b.period);
    k.extend_from_slice(b.segment.as_bytes());
    k.push(0);
    k.extend_from_slice(&rank.to_be_bytes());
    k
}

pub(super) fn closed_key(tenant: &str, board: &str, period: &str) -> Vec<u8> {
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

pub(super) fn goal_key(tenant: &str, id: &str) -> Vec<u8> {
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
    /// The ids of her log records found by id, for as long as they are retained.
    pub ids: super::IdIndex,
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
    /// Team memberships, both ways (docs/teams.md).
    Links,
    /// Contributions to teams still to be delivered (docs/teams.md).
    Mail,
    /// Each user's earliest badge expiry, for the expiry sweep: `tenant \0 user` -> i64 BE.
    Expiries,
    /// Each user's analytics record (`analytics::UserFacts`), written with the snapshot.
    Analytics,
    /// Each user's id chunks (`ids.rs`): user key + the last seq a chunk covers -> the ids.
    Ids,
    /// Community goals (`community.rs`): each user's share of each goal under her key, and
    /// each goal's outcome once it is closed.
    Community,
}

impl TreeId {
    pub(super) const ALL: [TreeId; 20] = [
        TreeId::Users,
        TreeId::Events,
        TreeId::Dedup,
        TreeId::SnapSeq,
        TreeId::Catalogues,
        TreeId::Dead,
        TreeId::Jobs,
        TreeId::Boards,
        TreeId::Archive,
        TreeId::Closed,
        TreeId::Goals,
        TreeId::Hooks,
        TreeId::Outbox,
        TreeId::HookLog,
        TreeId::Links,
        TreeId::Mail,
        TreeId::Expiries,
        TreeId::Analytics,
        TreeId::Ids,
        TreeId::Community,
    ];

    /// The tree's number where writes leave the process (cluster mode's changelog). Frozen:
    /// a new tree takes the next number.
    pub fn code(self) -> u8 {
        Self::ALL.iter().position(|&t| t == self).expect("every tree is listed") as u8
    }

    pub fn from_code(code: u8) -> Option<TreeId> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(TreeId, Vec<u8>, Vec<u8>),
    Del(TreeId, Vec<u8>),
}

pub fn user_key(tenant: &str, user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + user.len() + 2);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

pub(super) fn seq_key(uk: &[u8], n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(uk.len() + 8);
    k.extend_from_slice(uk);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

pub(super) fn dedup_key(tenant: &str, event_id: &str) -> Vec<u8> {
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

/// Encodes an event record (format 3): `by_id` says whether its id goes into the user's index.
pub fn encode_event(ev: &StoredEvent, by_id: bool) -> Vec<u8> {
    let mut out = vec![FORMAT_EVENT_V3, if by_id { FOUND_BY_ID } else { 0 }];
    bincode::serde::encode_into_std_write(ev, &mut out, bincode::config::standard()).expect("encoding into a Vec cannot fail");
    out
}

/// Whether an encoded event record is found by its id: `None` for a format 1 record, which
/// does not say.
pub(super) fn found_by_id(bytes: &[u8]) -> Option<bool> {
    match bytes {
        [FORMAT_EVENT_V3, flags, ..] => Some(flags & FOUND_BY_ID != 0),
        _ => None,
    }
}

/// Decodes a value of format 1, or an event record of format 3 (its flags byte skipped).
pub fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt { key: String::from_utf8_lossy(key).replace('\0', "/"), why };
    let body = match bytes {
        [FORMAT_EVENT_V3, _, rest @ ..] => Some(rest),
        _ => None,
    };
    if let Some(rest) = body {
        return bincode::serde::decode_from_slice(rest, bincode::config::standard()).map(|(v, _)| v).map_err(|e| corrupt(e.to_string()));
    }
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => bincode::serde::decode_from_slice(rest, bincode::config::standard()).map(|(v, _)| v).map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!("unknown format version {v}"))),
        None => Err(corrupt("empty value".into())),
    }
}

/// Encodes a user snapshot (a `UserRecord`, or anything laid out like it) as format 2.
pub fn encode_user<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V2];
    bincode::serde::encode_into_std_write(v, &mut out, bincode::config::standard()).expect("encoding into a Vec cannot fail");
    out
}

/// Decodes a user snapshot of either format.
pub fn decode_user(key: &[u8], bytes: &[u8]) -> Result<UserRecord, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt { key: String::from_utf8_lossy(key).replace('\0', "/"), why };
    let cfg = bincode::config::standard();
    match bytes.split_first() {
        Some((&FORMAT_V2, rest)) => bincode::serde::decode_from_slice(rest, cfg).map(|(v, _)| v).map_err(|e| corrupt(e.to_string())),
        Some((&FORMAT_V1, rest)) => bincode::serde::decode_from_slice::<super::legacy::UserRecordV1, _>(rest, cfg).map(|(v, _)| v.into()).map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!("unknown format version {v}"))),
        None => Err(corrupt("empty value".into())),
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

pub(super) fn hook_prefix(tenant: &str, hook: u64) -> Vec<u8> {
    seq_key(&tenant_prefix(tenant), hook)
}

pub(super) fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k
}

#[cfg(test)]
mod tree_codes {
    use super::TreeId;

    #[test]
    fn tree_codes_are_frozen_and_round_trip() {
        // Changelogs in a cluster's JetStream name trees by these numbers: do not renumber.
        assert_eq!((TreeId::Users.code(), TreeId::Events.code(), TreeId::Dedup.code(), TreeId::HookLog.code(), TreeId::Links.code(), TreeId::Mail.code(), TreeId::Expiries.code()), (0, 1, 2, 13, 14, 15, 16));
        assert_eq!(TreeId::Analytics.code(), 17);
        assert_eq!(TreeId::Ids.code(), 18);
        assert_eq!(TreeId::Community.code(), 19, "a new tree takes the next number");
        for c in 0..20 {
            assert_eq!(TreeId::from_code(c).map(TreeId::code), Some(c));
        }
        assert_eq!(TreeId::from_code(20), None);
    }
}

#[cfg(test)]
mod stored_states {
    use super::{decode_user, encode_user, UserRecord, FORMAT_V1, FORMAT_V2};
    use crate::core::value::{b, n, s};
    use crate::core::{apply, Catalogue, Effect, Event};

    /// A user's snapshot as the code before calendar rules (683a1f5) stored it: the demo
    /// catalogue of then, a user in Paris with answers, a video, an article, a proficiency and
    /// a login (written once by that code; see the commit that added this file).
    const OLD: &str = include_str!("../../tests/fixtures/user-record-683a1f5.hex");

    fn bytes(hex: &str) -> Vec<u8> {
        let hex = hex.trim();
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn a_state_stored_before_calendar_rules_opens_and_goes_on() {
        let old = bytes(OLD);
        assert_eq!(old[0], FORMAT_V1);
        let rec: UserRecord = decode_user(b"demo\0ada", &old).expect("the old record decodes");
        assert_eq!((rec.seq, rec.offset, rec.state.events, rec.state.timezone.as_deref()), (29, 41, 29, Some("Europe/Paris")));
        // Format 1 knew no revocations and no expiry: it opens with none, writes back as format
        // 2, and that reads back the same.
        assert!(rec.state.revoked.is_empty() && rec.state.badges.values().all(|b| b.expires_at.is_none()));
        let again = encode_user(&rec);
        assert_eq!(again[0], FORMAT_V2);
        assert_eq!(decode_user(b"demo\0ada", &again).unwrap().state, rec.state);
        // Under today's demo catalogue its stats are kept, the calendar stats start at zero, and
        // it takes events: answers on five more days.
        let cat = Catalogue::demo();
        let mut st = rec.state;
        st.sync(&cat);
        let before = st.badges.len();
        // "Centurion" counts correct answers: its stat is the stored one, going on.
        let centurion = match cat.badge("centurion").expect("a demo badge").cond {
            crate::core::catalogue::Cond::Metric { stat, .. } => stat,
            ref other => panic!("centurion is a count: {other:?}"),
        };
        let answers_before = st.stats[centurion].1.metric(None);
        let t0: i64 = 1_772_452_800_000;
        let mut earned = vec![];
        for d in 3..8i64 {
            let at = t0 + d * 86_400_000;
            let mut e = Event::new(&format!("new-{d}"), "problem.answered", at, &[("exercise", s("addition-1")), ("correct", b(true)), ("seconds", n(5.0))]);
            e.user_id = "ada".into();
            e.tenant_id = "demo".into();
            let fx = apply(&mut st, &e, at + 1000, &cat);
            assert!(matches!(fx[0], Effect::Accepted { .. }), "{fx:?}");
            earned.extend(fx.iter().filter_map(|f| if let Effect::Unlock { badge, .. } = f { Some(badge.to_string()) } else { None }));
        }
        // Five fast right answers on five days in a row earn the fast-answer pattern and the
        // five-day streak, on top of the badges the stored state owned.
        assert!(before > 0, "the stored state owned badges");
        assert_eq!(earned, ["picking-up-steam", "good-habits"]);
        // The calendar stat counts from its first event: the stored Monday and Tuesday answers
        // are not in it, so Thursday to Sunday are four days of that week, not six, and the
        // Monday after starts the next week. A backfill would count the old ones...
        assert!(!earned.contains(&"five-day-week".to_string()), "{earned:?}");
        // ...while the stats the state already had went on from their stored values.
        assert!(answers_before > 0.0, "the stored state had correct answers");
        assert_eq!(st.stats[centurion].1.metric(None), answers_before + 5.0, "the answer count went on from the stored one");
    }
}

#[cfg(test)]
mod stored_states_v2 {
    use super::{decode_user, encode_user, UserRecord, FORMAT_V2};
    use crate::core::value::{b, n, s};
    use crate::core::{apply, Catalogue, Event, Format, RevokeCause};

    /// The demo catalogue of the commit that added format 2, plus a certification held for 30
    /// days: what the fixture was written with.
    fn catalogue() -> Catalogue {
        let extra = "[[badges]]\nid = \"certified\"\nname = \"Certified\"\ntier = \"gold\"\nxp = 40\nvalid_for = \"30d\"\nrule = { kind = \"count\", event = \"exercise.proficient\", target = 1 }\n";
        Catalogue::parse(&format!("{}\n{extra}", crate::core::catalogue::DEMO_CATALOGUE), Format::Toml).unwrap()
    }

    /// A user with a badge held for a period and a badge revoked through the API (its XP taken
    /// back), as format 2 stores it.
    fn record() -> UserRecord {
        let cat = catalogue();
        let mut st = crate::core::UserState::new("demo", "ada");
        let t0: i64 = 1_772_452_800_000;
        let mut send = |i: i64, ty: &str, payload: &[(&str, crate::core::Value)]| {
            let mut e = Event::new(&format!("e{i}"), ty, t0 + i * 60_000, payload);
            e.user_id = "ada".into();
            e.tenant_id = "demo".into();
            apply(&mut st, &e, t0 + i * 60_000 + 1000, &cat);
        };
        send(1, "video.watched", &[("video", s("v1")), ("playlist", s("algebra")), ("seconds", n(1200.0))]);
        send(2, "exercise.proficient", &[("exercise", s("addition-1"))]);
        send(3, "problem.answered", &[("exercise", s("addition-1")), ("correct", b(true)), ("seconds", n(4.0))]);
        crate::core::revoke::revoke(&mut st, "nice-listener", "shared account", true, t0 + 3_600_000, "revoke:nice-listener:4", &cat).unwrap();
        UserRecord { state: st, seq: 4, offset: 9, epoch: "e".into() }
    }

    const V2: &str = include_str!("../../tests/fixtures/user-record-v2-revoke.hex");

    #[test]
    fn a_state_stored_with_revocations_and_expiry_opens_and_writes_back_the_same_bytes() {
        let hex = V2.trim();
        let stored: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        assert_eq!(stored[0], FORMAT_V2);
        let rec = decode_user(b"demo\0ada", &stored).expect("the stored record decodes");
        let r = &rec.state.revoked["nice-listener"];
        assert_eq!((r.cause, r.reason.as_str(), r.xp, r.count), (RevokeCause::Api, "shared account", 50, 1));
        assert_eq!(rec.state.badges["certified"].expires_at, Some(1_772_452_800_000 + 2 * 60_000 + 30 * 86_400_000));
        // The format is frozen: what the code writes today for the same history is these bytes.
        assert_eq!(encode_user(&rec), stored);
        assert_eq!(encode_user(&record()), stored, "format 2 changed: keep old snapshots readable (see `legacy.rs`)");
    }
}
