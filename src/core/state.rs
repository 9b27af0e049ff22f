//! Per-user state: XP, level, badges, the precalculated stats, the last-N action cache, dedup
//! memory, attributes and assigned goals. Plain data with deterministic serialization (ordered
//! maps only), so the same event stream always encodes to the same bytes.

use super::buckets::Buckets;
use super::catalogue::{Catalogue, StatKind};
use super::value::{same_str, Millis, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A badge the user holds. Retiring a badge in the catalogue never removes it (a badge shown
/// is a badge kept); only a revocation does (through the API, by expiry or by a retraction),
/// and that leaves a `Revocation` in its place.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BadgeRecord {
    pub awarded_at: Millis,
    /// How many times it was earned (repeatable badges, or per-key badges once per key).
    pub count: u32,
    /// The catalogue version whose rule awarded it first.
    pub version: u64,
    /// For per-key badges: the keys it was earned for, in order.
    pub keys: Vec<String>,
    pub event_id: String,
    /// For a badge with `valid_for`: when it stops being held, counted from its latest award.
    pub expires_at: Option<Millis>,
}

/// Why a badge was taken away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeCause {
    /// Through the API, by the tenant's backend.
    Api,
    /// Its `valid_for` ran out.
    Expired,
    /// An event behind it was retracted, and the facts left no longer earn it.
    Retracted,
}

impl RevokeCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeCause::Api => "api",
            RevokeCause::Expired => "expired",
            RevokeCause::Retracted => "retracted",
        }
    }
}

/// The last time a badge was taken away from the user. Kept after the badge is earned again,
/// until the next revocation replaces it: it is the history the entitlement check shows, and
/// `base` goes on measuring the rule from the revocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    pub at: Millis,
    pub cause: RevokeCause,
    pub reason: String,
    /// How many awards the user held when it was taken.
    pub count: u32,
    /// The XP taken back with it (0 when the XP was kept).
    pub xp: u64,
    /// The log record (or, for an expiry seen by an event, that event) that took it.
    pub event_id: String,
    /// For a count, sum or distinct count rule: the stat's value when the badge was taken.
    /// Earning it again takes the rule's target counted from here, so that facts that earned
    /// it once do not give it back at the next event.
    pub base: Option<f64>,
}

/// The user's score on one leaderboard, in the period of its last counted event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoardScore {
    /// The period's label, shared with the effects that carry it.
    pub period: std::sync::Arc<str>,
    pub start: Millis,
    pub end: Millis,
    /// The league (the segment attribute's value) for segmented boards.
    pub segment: Option<String>,
    pub score: f64,
    /// When the score was reached (receive time): the earlier of equal scores ranks first.
    pub reached: Millis,
    /// The score of the period before, kept until the next period starts so that it is still
    /// stored (and ranked after a restart) until that period has been closed.
    pub previous: Option<Box<BoardScore>>,
}

/// A map from key ("exercise-3") to a value, kept as a vector sorted by key. Per-key stats are
/// read and bumped on every event, usually over a few dozen keys: a short scan comparing
/// lengths first beats a B-tree's string comparisons there, and a binary search takes over for
/// users with many keys. It serializes exactly like a `BTreeMap` (a map in key order).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyMap<V>(Vec<(String, V)>);

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap(Vec::new())
    }
}

impl<V> KeyMap<V> {
    /// Up to this many keys a linear scan is used.
    const SCAN: usize = 32;

    fn find(&self, k: &str) -> Result<usize, usize> {
        if self.0.len() <= Self::SCAN {
            if let Some(i) = self.0.iter().position(|(x, _)| same_str(x, k)) {
                return Ok(i);
            }
            return Err(self.0.partition_point(|(x, _)| x.as_str() < k));
        }
        self.0.binary_search_by(|(x, _)| x.as_str().cmp(k))
    }

    pub fn get(&self, k: &str) -> Option<&V> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }

    /// The value at `k`, inserting `new()` first when the key is new (the key is only copied then).
    pub fn get_or_insert_with(&mut self, k: &str, new: impl FnOnce() -> V) -> &mut V {
        let i = match self.find(k) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (k.to_string(), new()));
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, k: &str) -> Option<&mut V> {
        self.find(k).ok().map(|i| &mut self.0[i].1)
    }

    pub fn contains_key(&self, k: &str) -> bool {
        self.find(k).is_ok()
    }

    /// Sets `k` to `v`, returning the value it replaces.
    pub fn insert(&mut self, k: String, v: V) -> Option<V> {
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    /// Takes `k` out, returning its value.
    pub fn remove(&mut self, k: &str) -> Option<V> {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V> std::ops::Index<&str> for KeyMap<V> {
    type Output = V;

    fn index(&self, k: &str) -> &V {
        self.get(k).unwrap_or_else(|| panic!("no key `{k}`"))
    }
}

impl<'a, V> IntoIterator for &'a KeyMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, V)>, fn(&'a (String, V)) -> (&'a String, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<V: Serialize> Serialize for KeyMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for KeyMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a BTreeMap, so that the order holds whatever the stored bytes say.
        Ok(KeyMap(BTreeMap::<String, V>::deserialize(d)?.into_iter().collect()))
    }
}

/// The value of one stat slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StatValue {
    Num(f64),
    Keyed(KeyMap<f64>),
    Set(BTreeSet<String>),
    KeyedSet(KeyMap<BTreeSet<String>>),
    Daily { last_at: Millis, last_day: i32, len: u32, freezes: u32 },
    Seq { step: u32, started_at: Millis, done: bool },
    /// A calendar stat's buckets. Boxed, so that the other stats stay small. A variant added
    /// last, so states stored before it decode unchanged.
    Calendar(Box<Buckets>),
    /// An `absence` stat: the waits open (key, due time), oldest first, and how many lapsed.
    /// Added last, like `Calendar`.
    Waits { open: Vec<(String, Millis)>, lapsed: u32 },
}

impl StatValue {
    /// The keys a keyed stat holds a value for, in order, without copying them (none for a
    /// stat without keys).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let (keyed, sets) = match self {
            StatValue::Keyed(m) => (Some(m.iter().map(|(k, _)| k.as_str())), None),
            StatValue::KeyedSet(m) => (None, Some(m.iter().map(|(k, _)| k.as_str()))),
            _ => (None, None),
        };
        keyed.into_iter().flatten().chain(sets.into_iter().flatten())
    }

    /// Whether a keyed stat holds a value for `key`.
    pub fn has_key(&self, key: &str) -> bool {
        match self {
            StatValue::Keyed(m) => m.contains_key(key),
            StatValue::KeyedSet(m) => m.contains_key(key),
            _ => false,
        }
    }

    pub fn initial(kind: &StatKind, keyed: bool) -> StatValue {
        match (kind, keyed) {
            (StatKind::Distinct, false) => StatValue::Set(BTreeSet::new()),
            (StatKind::Distinct, true) => StatValue::KeyedSet(KeyMap::default()),
            (StatKind::Daily { .. }, _) => StatValue::Daily { last_at: 0, last_day: 0, len: 0, freezes: 0 },
            (StatKind::Sequence { .. }, _) => StatValue::Seq { step: 0, started_at: 0, done: false },
            (StatKind::Calendar { .. }, _) => StatValue::Calendar(Box::default()),
            (StatKind::Absence { .. }, _) => StatValue::Waits { open: Vec::new(), lapsed: 0 },
            (_, true) => StatValue::Keyed(KeyMap::default()),
            (_, false) => StatValue::Num(0.0),
        }
    }

    /// How many keys have a value of at least `each`, counting no further than `cap`.
    pub fn keys_reaching(&self, each: f64, cap: usize) -> usize {
        match self {
            StatValue::Keyed(m) => m.values().filter(|&&v| v >= each).take(cap).count(),
            StatValue::KeyedSet(m) => m.values().filter(|s| s.len() as f64 >= each).take(cap).count(),
            _ => 0,
        }
    }

    /// The metric at `key`, or for a keyed stat with no key, the best key's value.
    pub fn metric(&self, key: Option<&str>) -> f64 {
        match self {
            StatValue::Num(v) => *v,
            StatValue::Keyed(m) => match key {
                Some(k) => m.get(k).copied().unwrap_or(0.0),
                None => m.values().copied().fold(0.0, f64::max),
            },
            StatValue::Set(s) => s.len() as f64,
            StatValue::KeyedSet(m) => match key {
                Some(k) => m.get(k).map_or(0, |s| s.len()) as f64,
                None => m.values().map(|s| s.len()).max().unwrap_or(0) as f64,
            },
            StatValue::Daily { len, .. } => *len as f64,
            StatValue::Seq { done, .. } => f64::from(u8::from(*done)),
            // Without a day to read at: how many buckets reached the threshold, ever.
            StatValue::Calendar(b) => f64::from(b.count()),
            StatValue::Waits { lapsed, .. } => f64::from(*lapsed),
        }
    }
}

/// One cached action: only the fields some rule reads back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub seq: u64,
    pub at: Millis,
    pub vals: Vec<Value>,
}

/// The last-N actions of one event type, ordered by `occurred_at` (then arrival).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ring {
    pub event_type: String,
    pub fields: Vec<String>,
    pub items: VecDeque<Action>,
}

impl Ring {
    /// Inserts in time order; a late event lands where it belongs, so windows and patterns read
    /// the user's actions as they happened.
    pub fn insert(&mut self, a: Action, cap: usize) {
        let pos = self.items.iter().rposition(|x| x.at <= a.at).map_or(0, |p| p + 1);
        self.items.insert(pos, a);
        while self.items.len() > cap {
            self.items.pop_front();
        }
    }
}

// Assigned goals. These are stored with the user (`UserState::goals`), and a goal's state holds
// a `UserState` of its own, so the types are one recursive type with `UserState` and live in
// this module; `goal` holds what is done with them.

/// Where an assigned goal stands: open until it is completed, missed or cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoalStatus {
    Open,
    Completed,
    Missed,
    Cancelled,
}

impl GoalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GoalStatus::Open => "open",
            GoalStatus::Completed => "completed",
            GoalStatus::Missed => "missed",
            GoalStatus::Cancelled => "cancelled",
        }
    }
}

/// What the assigner asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoalSpec {
    pub id: String,
    pub title: String,
    pub assigner: String,
    /// The criterion, as JSON text in the rule language (`{"kind": "count", ...}`).
    pub criterion: String,
    pub due: Option<Millis>,
}

/// One goal in the assignee's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoalState {
    pub spec: GoalSpec,
    pub assigned_at: Millis,
    pub status: GoalStatus,
    pub closed_at: Option<Millis>,
    /// The goal's own stats and cache, counted from the assignment on.
    pub sub: Box<UserState>,
}

/// Everything Accolade knows about one user of one tenant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub tenant_id: String,
    pub user_id: String,
    pub xp: u64,
    pub level: u32,
    pub badges: KeyMap<BadgeRecord>,
    /// The catalogue layout `stats` and `rings` are aligned to.
    pub layout: u64,
    /// Stat values by slot, each with its stable stat id for remapping.
    pub stats: Vec<(u64, StatValue)>,
    pub rings: Vec<Ring>,
    /// Stable hashes of recently accepted event ids, oldest first.
    pub recent_ids: VecDeque<u64>,
    /// (fingerprint hash, occurred_at) of recent business actions.
    pub fingerprints: VecDeque<(u64, Millis)>,
    pub attributes: BTreeMap<String, Value>,
    pub timezone: Option<String>,
    pub signed_up_at: Option<Millis>,
    pub first_seen: Option<Millis>,
    pub last_event_at: Millis,
    /// XP granted today by each capped XP rule: (local day, amount).
    pub xp_days: KeyMap<(i32, u64)>,
    /// Accepted events, and the arrival counter used to order cache entries.
    pub events: u64,
    /// Score per leaderboard id, for the board's current period.
    pub boards: KeyMap<BoardScore>,
    /// Goals assigned to this user, by id.
    pub goals: BTreeMap<String, GoalState>,
    /// The last revocation of each badge ever taken away (format 2 on, see `store::keys`).
    pub revoked: KeyMap<Revocation>,
    #[serde(skip)]
    pub(crate) derived: Derived,
}

/// Lookup aids rebuilt from the persistent fields; never serialized and never compared.
#[derive(Clone, Debug, Default)]
pub(crate) struct Derived {
    pub catalogue_id: u64,
    /// How many times each catalogue badge is owned (0 = not owned), by catalogue position.
    pub owned: Vec<u32>,
    pub tz: Option<chrono_tz::Tz>,
    /// (start, end, local day) of the last day computed, to skip time-zone math within a day.
    pub day: Option<(Millis, Millis, i32)>,
    /// Each goal's compiled catalogue, with the id of the tenant catalogue it was built from.
    pub goal_cats: std::collections::HashMap<String, (u64, std::sync::Arc<Catalogue>)>,
    /// The engine's per-event memo of stat values, kept to reuse its allocation.
    pub memo: Vec<std::cell::Cell<f64>>,
    pub ids: IdFilter,
    /// The earliest `expires_at` among the badges held, so that an event checks for expiry
    /// with one comparison.
    pub next_expiry: Option<Millis>,
    /// The earliest due time among the waits of `absence` stats, so that an event checks
    /// for lapses with one comparison.
    pub next_wait: Option<Millis>,
}

/// A Bloom filter over `recent_ids`, so that the duplicate check of a new id (nearly every
/// event) does not scan the whole list: "absent" is certain, "maybe" falls back to the scan.
/// Evicted ids cannot be removed from a Bloom filter, so it is rebuilt from the list once as
/// many ids have been evicted as half the list holds; until then they only cost false "maybe"s
/// (about one check in ten at the default 256 ids).
#[derive(Clone, Debug, Default)]
pub(crate) struct IdFilter {
    bits: Vec<u64>,
    stale: usize,
}

impl IdFilter {
    const WORDS: usize = 32;

    fn slots(h: u64) -> [usize; 2] {
        // The ids are already stable 64-bit hashes: two slices of one are two independent probes.
        let n = Self::WORDS * 64;
        [(h as usize) % n, ((h >> 32) as usize) % n]
    }

    fn set(&mut self, h: u64) {
        for s in Self::slots(h) {
            self.bits[s / 64] |= 1 << (s % 64);
        }
    }

    /// Whether `h` may be among `ids`, which this filter must describe.
    pub fn may_contain(&mut self, ids: &VecDeque<u64>, h: u64) -> bool {
        if self.bits.is_empty() {
            self.rebuild(ids);
        }
        Self::slots(h).iter().all(|&s| self.bits[s / 64] & (1 << (s % 64)) != 0)
    }

    /// Records that `h` was appended to `ids` and `evicted` ids were dropped from its front.
    pub fn added(&mut self, ids: &VecDeque<u64>, h: u64, evicted: usize) {
        if self.bits.is_empty() {
            return self.rebuild(ids);
        }
        self.set(h);
        self.stale += evicted;
        if self.stale * 2 > ids.len().max(16) {
            self.rebuild(ids);
        }
    }

    fn rebuild(&mut self, ids: &VecDeque<u64>) {
        self.bits.clear();
        self.bits.resize(Self::WORDS, 0);
        self.stale = 0;
        for &h in ids {
            self.set(h);
        }
    }
}

impl PartialEq for Derived {
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl UserState {
    pub fn new(tenant_id: &str, user_id: &str) -> UserState {
        UserState { tenant_id: tenant_id.into(), user_id: user_id.into(), level: 1, ..Default::default() }
    }

    /// Aligns stats and caches with `cat`, keeping every value whose stat still exists.
    pub fn sync(&mut self, cat: &Catalogue) {
        if self.derived.catalogue_id == cat.id && self.layout == cat.layout && self.stats.len() == cat.stats.len() {
            return;
        }
        if self.layout != cat.layout || self.stats.len() != cat.stats.len() {
            let mut old: BTreeMap<u64, StatValue> = std::mem::take(&mut self.stats).into_iter().collect();
            self.stats = cat
                .stats
                .iter()
                .map(|d| {
                    let v = old.remove(&d.id).unwrap_or_else(|| StatValue::initial(&d.kind, d.keyed));
                    (d.id, v)
                })
                .collect();
            let mut old_rings = std::mem::take(&mut self.rings);
            self.rings = cat
                .rings
                .iter()
                .map(|(t, fields)| {
                    let name = &cat.types[*t].name;
                    let items = match old_rings.iter().position(|r| &r.event_type == name) {
                        Some(i) => {
                            let r = old_rings.swap_remove(i);
                            let map: Vec<Option<usize>> = fields.iter().map(|f| r.fields.iter().position(|x| x == f)).collect();
                            r.items
                                .into_iter()
                                .map(|a| Action {
                                    seq: a.seq,
                                    at: a.at,
                                    vals: map.iter().map(|m| m.map_or(Value::Null, |i| a.vals[i].clone())).collect(),
                                })
                                .collect()
                        }
                        None => VecDeque::new(),
                    };
                    Ring { event_type: name.clone(), fields: fields.clone(), items }
                })
                .collect();
            self.layout = cat.layout;
        }
        self.derived.owned = cat.badges.iter().map(|b| self.badges.get(&b.id).map_or(0, |r| r.count)).collect();
        self.derived.tz = self.timezone.as_deref().and_then(|t| t.parse().ok());
        self.derived.day = None;
        self.derived.catalogue_id = cat.id;
        self.refresh_expiry();
        self.refresh_waits();
    }

    /// Recomputes the earliest expiry among the badges held (after one was added or removed).
    pub fn refresh_expiry(&mut self) {
        self.derived.next_expiry = self.badges.values().filter_map(|r| r.expires_at).min();
    }

    /// Recomputes the earliest due time among the open waits (after one opened, closed or
    /// lapsed).
    pub fn refresh_waits(&mut self) {
        self.derived.next_wait = self.stats.iter().filter_map(|(_, v)| if let StatValue::Waits { open, .. } = v { open.iter().map(|w| w.1).min() } else { None }).min();
    }

    /// The next time the engine must look at this user with no event (`engine::look`): a
    /// badge's expiry or a wait's due time, whichever is first. The shell keeps it in the
    /// expiry index, so that the sweep looks then even while the user is away. Computed from
    /// the state alone, so it is right before `sync` too.
    pub fn next_look(&self) -> Option<Millis> {
        let expiry = self.badges.values().filter_map(|r| r.expires_at).min();
        let wait = self.stats.iter().filter_map(|(_, v)| if let StatValue::Waits { open, .. } = v { open.iter().map(|w| w.1).min() } else { None }).min();
        match (expiry, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the user's membership began, as tenure rules read it: `signed_up_at`, or else the
    /// first event.
    pub fn member_since(&self) -> Option<Millis> {
        self.signed_up_at.or(self.first_seen)
    }

    /// Whole days of membership at `at` (0 before the first event).
    pub fn tenure_days(&self, at: Millis) -> f64 {
        self.member_since().map_or(0.0, |s| ((at - s).max(0) / super::value::DAY) as f64)
    }

    /// Every key the keyed stats `stats` hold a value for, in order: the keys a rule that
    /// must hold for one key can hold for.
    pub fn keys_of(&self, stats: &[usize]) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for &s in stats {
            match self.stats.get(s).map(|(_, v)| v) {
                Some(StatValue::Keyed(m)) => keys.extend(m.keys().cloned()),
                Some(StatValue::KeyedSet(m)) => keys.extend(m.keys().cloned()),
                _ => {}
            }
        }
        keys
    }

    /// The key with the highest value of a keyed stat, and that value (the first key in order
    /// among equals); `None` for a stat without keys.
    pub fn best_key(&self, stat: usize) -> Option<(&str, f64)> {
        fn pick<'a>(best: Option<(&'a str, f64)>, (k, v): (&'a str, f64)) -> Option<(&'a str, f64)> {
            match best {
                Some((_, b)) if b >= v => best,
                _ => Some((k, v)),
            }
        }
        match self.stats.get(stat).map(|(_, v)| v)? {
            StatValue::Keyed(m) => m.iter().map(|(k, v)| (k.as_str(), *v)).fold(None, pick),
            StatValue::KeyedSet(m) => m.iter().map(|(k, v)| (k.as_str(), v.len() as f64)).fold(None, pick),
            _ => None,
        }
    }

    pub fn tz(&self, cat: &Catalogue) -> chrono_tz::Tz {
        self.derived.tz.unwrap_or(cat.settings.default_timezone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_filter_never_misses_an_id_in_the_list() {
        // A Bloom filter may say "maybe" wrongly, never "absent" wrongly: after every append and
        // eviction, across rebuilds, every listed id is a "maybe". Most absent ids are "absent".
        let (cap, mut ids, mut f) = (256, VecDeque::new(), IdFilter::default());
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut false_maybes = 0;
        for round in 0..3000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let h = super::super::value::stable_hash(&x.to_le_bytes());
            if !ids.contains(&h) && f.may_contain(&ids, h) {
                false_maybes += 1;
            }
            ids.push_back(h);
            let mut evicted = 0;
            while ids.len() > cap {
                ids.pop_front();
                evicted += 1;
            }
            f.added(&ids, h, evicted);
            for &id in &ids {
                assert!(f.may_contain(&ids, id), "round {round}");
            }
        }
        assert!(false_maybes < 3000 / 5, "{false_maybes} false maybes in 3000 checks");
    }

    #[test]
    fn key_map_stays_sorted_and_encodes_like_a_btree_map() {
        // Enough keys to cross from the scan to the binary search, inserted out of order.
        let keys: Vec<String> = (0..80).map(|i| format!("exercise-{}", (i * 37) % 80)).collect();
        let mut m = KeyMap::default();
        let mut model = BTreeMap::new();
        for (n, k) in keys.iter().enumerate() {
            *m.get_or_insert_with(k, || 0.0) += n as f64;
            *model.entry(k.clone()).or_insert(0.0) += n as f64;
            // Every key so far is found, with the model's value, at every size.
            for (k, v) in &model {
                assert_eq!(m.get(k), Some(v), "{k} after {n} inserts");
            }
            assert_eq!(m.get("absent"), None);
        }
        assert!(m.iter().map(|(k, _)| k).collect::<Vec<_>>().windows(2).all(|w| w[0] < w[1]));
        let cfg = bincode::config::standard();
        let ours = bincode::serde::encode_to_vec(&m, cfg).unwrap();
        assert_eq!(ours, bincode::serde::encode_to_vec(&model, cfg).unwrap());
        let back: KeyMap<f64> = bincode::serde::decode_from_slice(&ours, cfg).unwrap().0;
        assert_eq!(back, m);
    }
}
