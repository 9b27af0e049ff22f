//! The compiled catalogue: what the engine runs on. Event types with their field positions and
//! the stats, XP rules and badges each can change; stat slots; compiled conditions; levels;
//! leaderboards. Built once by `compile`, immutable afterwards; nothing here reads the document.

use crate::core::buckets::{Bucket, Reading};
use crate::core::calendar::Period;
use crate::core::predicate::{Op, Pred};
use crate::core::value::{same_str, Millis, Value};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The event type the core itself understands: it sets user attributes used for segmentation.
pub const PROFILE_EVENT: &str = "user.profile";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Bronze,
    Silver,
    Gold,
    Platinum,
    Diamond,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Bronze => "bronze",
            Tier::Silver => "silver",
            Tier::Gold => "gold",
            Tier::Platinum => "platinum",
            Tier::Diamond => "diamond",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Number,
    Bool,
    Any,
}

#[derive(Clone, Debug)]
pub struct FieldDef {
    pub name: String,
    pub kind: FieldKind,
    pub optional: bool,
}

#[derive(Clone, Debug)]
pub struct EventTypeDef {
    pub name: String,
    /// Whether clients may send this type over the socket; all others are server-only.
    pub client: bool,
    pub fields: Vec<FieldDef>,
    /// Field positions whose values identify one business action, and for how long.
    pub fingerprint: Option<(Vec<usize>, Millis)>,
    /// Which cache ring keeps this type's actions, if any rule reads them back.
    pub cache: Option<usize>,
    /// The declared field positions a cache entry keeps, in cache-entry order.
    pub cached_fields: Vec<usize>,
    /// Stats, XP rules and badges that this event type can change.
    pub stats: Vec<usize>,
    pub xp_rules: Vec<usize>,
    pub badges: Vec<usize>,
    /// The badges of `badges` that report progress (a metric against a target), each with
    /// what the engine needs to report it without reading the badge's definition.
    pub progress: Vec<ProgressSlot>,
    /// The badges of `badges` that the engine checks after an event of this type: those not
    /// in `Catalogue::user_badges`, which are checked after every event anyway.
    pub checks: Vec<usize>,
}

#[derive(Clone, Copy, Debug)]
pub struct ProgressSlot {
    pub badge: usize,
    /// The position of `stat` in the event type's `stats`: its bit in the engine's set of
    /// stats this event moved.
    pub bit: usize,
    pub stat: usize,
    pub target: f64,
    pub repeat_every: Option<f64>,
    /// A hidden badge reports no progress until it is earned: a progress bar would show it.
    pub hidden: bool,
    /// For a `keys` rule: what each key must reach; the progress is the number of keys that do.
    pub each: Option<f64>,
    /// A `repeat` badge: progress towards the next award is reported while it is owned.
    pub again: bool,
}

impl EventTypeDef {
    pub fn field(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
    pub(super) fn cached_pos(&self, name: &str) -> Option<usize> {
        let f = self.field(name)?;
        self.cached_fields.iter().position(|&c| c == f)
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub cache_size: usize,
    pub recent_ids: usize,
    pub late_bound: Millis,
    pub future_skew: Millis,
    pub default_timezone: chrono_tz::Tz,
}

#[derive(Clone, Debug)]
pub enum Levels {
    Thresholds(Vec<u64>),
    Formula { base: f64, exponent: f64, max_level: u32 },
}

impl Levels {
    /// XP needed to reach `level` (level 1 needs nothing).
    pub fn xp_for(&self, level: u32) -> Option<u64> {
        match self {
            Levels::Thresholds(t) => t.get(level.checked_sub(1)? as usize).copied(),
            Levels::Formula { base, exponent, max_level } => {
                (level >= 1 && level <= *max_level).then(|| (base * ((level - 1) as f64).powf(*exponent)).round() as u64)
            }
        }
    }

    /// The level a total of `xp` reaches.
    pub fn level_for(&self, xp: u64) -> u32 {
        self.level_from(xp, 1)
    }

    /// The level `xp` reaches, searching upward from `from` (XP never decreases, so the user's
    /// current level is a safe start and the search is usually one step).
    pub fn level_from(&self, xp: u64, from: u32) -> u32 {
        let mut level = from.max(1);
        while let Some(need) = self.xp_for(level + 1) {
            if xp < need {
                break;
            }
            level += 1;
        }
        level
    }
}

#[derive(Clone, Debug)]
pub enum XpAmount {
    Fixed(u64),
    Field { pos: usize, multiplier: f64 },
}

#[derive(Clone, Debug)]
pub struct XpRuleDef {
    pub id: Arc<str>,
    pub event: usize,
    pub when: Pred,
    pub amount: XpAmount,
    pub max: Option<u64>,
    pub daily_cap: Option<u64>,
}

/// What a stat slot keeps up to date.
#[derive(Clone, Debug, PartialEq)]
pub enum StatKind {
    Count,
    Distinct,
    Sum,
    Max,
    /// Consecutive matching events; `StatInput::breaks` resets it.
    Streak,
    /// Active on consecutive local days.
    Daily { grace: Millis, freezes: u32, freeze_every: u32 },
    /// Ordered steps within a time limit; `StatInput::step` says which step an input is.
    Sequence { steps: usize, within: Millis },
    /// Whether a `repeat` badge's rule held when it was last checked (no inputs: the engine
    /// sets it as it checks the badge). 0: never checked, 1: held, 2: did not hold.
    Held,
    /// Actions totalled per local day, week or month of the user (a count, or the sum of
    /// `StatInput::value`); a bucket counts once its total reaches `at_least`, and the rule
    /// reads the reached buckets as `reading` says.
    Calendar { bucket: Bucket, at_least: f64, reading: Reading },
    /// How many events (of its inputs) came at least `after` since the user's previous event
    /// of any type: "no login for 14 days, then a login".
    Comeback { after: Millis },
    /// How many waits lapsed: an opening event (`StatInput::step` 0) starts a wait for its key
    /// (`StatInput::key`; one wait without a key), a closing event (step 1) of the same key
    /// that occurred before `within` ran out ends it, and a wait still open at its due time
    /// lapses when the engine next looks (an event, or `engine::look`).
    Absence { within: Millis },
}

/// How one event type feeds a stat.
#[derive(Clone, Debug)]
pub struct StatInput {
    pub event: usize,
    pub when: Pred,
    pub breaks: Option<Pred>,
    /// The per-key field position ("per exercise").
    pub key: Option<usize>,
    /// The numeric field (sum, max) or the distinct field.
    pub value: Option<usize>,
    pub step: usize,
}

#[derive(Clone, Debug)]
pub struct StatDef {
    /// A stable identity derived from the rule's canonical text: state keeps stat values under
    /// it, so a catalogue edit keeps the values of every stat that did not change.
    pub id: u64,
    pub kind: StatKind,
    pub keyed: bool,
    /// The per-key field's name; an event of any type with that field picks the key.
    pub per: Option<String>,
    /// For each event type, the position of the `per` field in it, found once at compile time.
    pub key_pos: Vec<Option<usize>>,
    pub inputs: Vec<StatInput>,
    pub describe: String,
}

/// One requirement of a time-window rule, read from one cache ring.
#[derive(Clone, Debug)]
pub struct WindowReq {
    pub per_type: Vec<(usize, Pred, Option<usize>)>, // (cache ring, predicate on cached fields, summed cached field)
    pub target: f64,
    pub describe: String,
}

impl WindowReq {
    /// A count of actions (each adds 0 or 1), rather than a sum of a field.
    pub fn counts(&self) -> bool {
        self.per_type.iter().all(|(_, _, sum)| sum.is_none())
    }
}

#[derive(Clone, Debug)]
pub struct RecentCond {
    /// (cache ring, positions of same/in_key/sum fields in that ring's entries)
    pub rings: Vec<RecentRing>,
    pub last: usize,
    pub same: bool,
    pub in_key: bool,
    pub min_items: usize,
    pub all: bool,
    pub newest: usize,
    pub at_least: Option<usize>,
    pub ratio: Option<f64>,
    pub sum_at_most: Option<SumLimit>,
    pub describe: String,
    /// Each requirement in words, for the explanation's parts.
    pub words: RecentWords,
}

/// The requirements of a `recent` rule in words (empty where the rule does not ask).
#[derive(Clone, Debug, Default)]
pub struct RecentWords {
    pub key: String,
    pub all: String,
    pub newest: Vec<String>,
    pub at_least: String,
    pub ratio: String,
    pub sum_field: String,
}

#[derive(Clone, Debug)]
pub struct RecentRing {
    pub ring: usize,
    pub key_pos: Option<usize>,
    pub all: Pred,
    pub newest: Vec<Pred>,
    pub at_least: Pred,
    pub ratio: Pred,
    pub sum_pos: Option<usize>,
}

#[derive(Clone, Debug)]
pub enum SumLimit {
    PerItem(f64),
    Table { values: BTreeMap<String, f64>, default: f64 },
}

/// A compiled rule: what must hold for a badge.
#[derive(Clone, Debug)]
pub enum Cond {
    Metric { stat: usize, target: f64 },
    /// Stat `of` compared with `value` times stat `to`: "at least 25% of reviews are of first
    /// drafts". Never holds while both are 0.
    Ratio { of: usize, to: usize, cmp: Cmp, value: f64 },
    /// How many keys of a keyed stat reach `each`: "a total score of 15 in each of 20 topics".
    Keys { stat: usize, each: f64, target: f64 },
    Sequence { stat: usize },
    Window { within: Millis, reqs: Vec<WindowReq> },
    Recent(Box<RecentCond>),
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Owns(usize),
    Level(u32),
    Xp(u64),
    Attribute(Vec<(String, Op)>),
    Tenure(Millis),
    /// Given from outside the event stream (a leaderboard award); never holds on its own.
    Never,
    /// An `all` over parts kept per key of one field: they must hold for one and the same key
    /// ("20 answers and a score of 100 in one topic"), not each for a key of its own.
    SameKey(Box<SameKey>),
}

/// How a ratio compares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cmp {
    AtLeast,
    MoreThan,
    AtMost,
    LessThan,
}

impl Cmp {
    /// Whether `of` compares with `value` times `to` as asked; never when both are 0, since
    /// nothing was compared ("25% of no reviews").
    pub fn holds(self, of: f64, to: f64, value: f64) -> bool {
        if of == 0.0 && to == 0.0 {
            return false;
        }
        let bound = value * to;
        match self {
            Cmp::AtLeast => of >= bound,
            Cmp::MoreThan => of > bound,
            Cmp::AtMost => of <= bound,
            Cmp::LessThan => of < bound,
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Cmp::AtLeast => "at least",
            Cmp::MoreThan => "more than",
            Cmp::AtMost => "at most",
            Cmp::LessThan => "less than",
        }
    }
}

/// See `Cond::SameKey`.
#[derive(Clone, Debug)]
pub struct SameKey {
    /// The field the parts are kept per.
    pub per: String,
    /// For each event type, the position of `per` in it: an event that carries the field
    /// picks the key, as for a single keyed part.
    pub key_pos: Vec<Option<usize>>,
    /// The keyed stats inside, whose keys are the candidates when the event names none.
    pub stats: Vec<usize>,
    pub cond: Cond,
}

impl Cond {
    /// Whether this condition can stop holding once it holds; a `repeat` badge needs one that
    /// can, or it would never be earned again.
    /// The stat a rule counts anew after a revocation: the badge's whole rule is a count, a
    /// sum or a distinct count not kept per key, whose value only grows with the user's facts.
    /// For such a rule "earned again" means its target reached again from the value at the
    /// revocation; any other rule is earned again when it holds at a later event.
    pub fn base_stat(&self, stats: &[StatDef]) -> Option<usize> {
        match self {
            Cond::Metric { stat, .. } if !stats[*stat].keyed && matches!(stats[*stat].kind, StatKind::Count | StatKind::Sum | StatKind::Distinct | StatKind::Comeback { .. } | StatKind::Absence { .. }) => Some(*stat),
            _ => None,
        }
    }

    pub(super) fn can_fall(&self, stats: &[StatDef]) -> bool {
        match self {
            Cond::Metric { stat, .. } => match stats[*stat].kind {
                StatKind::Count | StatKind::Distinct | StatKind::Max | StatKind::Sequence { .. } | StatKind::Held | StatKind::Comeback { .. } | StatKind::Absence { .. } => false,
                StatKind::Calendar { reading, .. } => reading != Reading::Total,
                // A sum of a field that may be negative, a streak and a calendar streak can fall.
                StatKind::Sum | StatKind::Streak | StatKind::Daily { .. } => true,
            },
            // How many keys reach a target falls when one key's value can (a streak per key).
            Cond::Keys { stat, each, .. } => Cond::Metric { stat: *stat, target: *each }.can_fall(stats),
            Cond::Owns(_) | Cond::Level(_) | Cond::Xp(_) | Cond::Tenure(_) | Cond::Never | Cond::Sequence { .. } => false,
            Cond::All(cs) | Cond::Any(cs) => cs.iter().any(|c| c.can_fall(stats)),
            Cond::SameKey(k) => k.cond.can_fall(stats),
            // `not` stops holding when its rule starts to, and holds again only if that falls.
            Cond::Not(c) => c.can_fall(stats),
            Cond::Window { .. } | Cond::Recent(_) | Cond::Attribute(_) | Cond::Ratio { .. } => true,
        }
    }

    /// Why a `repeat` badge could not tell this condition's occurrences apart, if it could not.
    /// A window, a calendar rule read per period or run and a daily streak stop holding as
    /// time passes, with no event to see it, so one action after a quiet spell makes them hold
    /// again at once. The engine names the occurrence of a calendar rule or daily streak that
    /// is the badge's whole rule (`top`); elsewhere, and for a window, it could not.
    pub(super) fn unseen_fall(&self, stats: &[StatDef], top: bool) -> Option<&'static str> {
        let by_days = |s: usize| matches!(stats[s].kind, StatKind::Daily { .. } | StatKind::Calendar { reading: Reading::InARow | Reading::InOne(_), .. });
        match self {
            Cond::Window { .. } => Some(
                "cannot repeat a window rule: it stops holding as time passes, with no event to see it, so a new occurrence could not be told from the last (repeat a calendar rule with `in_one` or `in_a_row` instead)",
            ),
            Cond::Metric { stat, .. } if !top && by_days(*stat) => Some(
                "repeats a daily streak or a calendar rule with `in_one` or `in_a_row` only as the badge's whole rule: it stops holding as days pass, and only on its own can its occurrences be told apart",
            ),
            Cond::Ratio { of, to, .. } if by_days(*of) || by_days(*to) => Some(
                "repeats a daily streak or a calendar rule with `in_one` or `in_a_row` only as the badge's whole rule: it stops holding as days pass, and only on its own can its occurrences be told apart",
            ),
            Cond::All(cs) | Cond::Any(cs) => cs.iter().find_map(|c| c.unseen_fall(stats, false)),
            Cond::Not(c) => c.unseen_fall(stats, false),
            Cond::SameKey(k) => k.cond.unseen_fall(stats, false),
            _ => None,
        }
    }

    /// Whether this condition reads anything kept per key (`per`, `same`, `in_key`): whether it
    /// holds then depends on the event's key, so it cannot say when "it" stopped holding.
    pub(super) fn keyed(&self, stats: &[StatDef]) -> bool {
        match self {
            Cond::Metric { stat, .. } => stats[*stat].per.is_some(),
            Cond::Recent(r) => r.same || r.in_key,
            Cond::SameKey(_) => true,
            Cond::All(cs) | Cond::Any(cs) => cs.iter().any(|c| c.keyed(stats)),
            Cond::Not(c) => c.keyed(stats),
            _ => false,
        }
    }

    /// Whether this condition can change without an event of its own types (XP, level, other
    /// badges, attributes, tenure): such badges are rechecked after every event.
    pub(super) fn depends_on_user(&self) -> bool {
        match self {
            Cond::Owns(_) | Cond::Level(_) | Cond::Xp(_) | Cond::Attribute(_) | Cond::Tenure(_) => true,
            Cond::All(c) | Cond::Any(c) => c.iter().any(Cond::depends_on_user),
            Cond::Not(c) => c.depends_on_user(),
            Cond::SameKey(k) => k.cond.depends_on_user(),
            _ => false,
        }
    }
}

/// What a leaderboard ranks by.
#[derive(Clone, Debug)]
pub enum BoardMetric {
    /// XP earned by events (rules and the badges they unlock).
    Xp,
    Count { event: usize, when: Pred },
    Sum { event: usize, when: Pred, field: usize },
}

#[derive(Clone, Debug)]
pub struct BoardDef {
    pub id: Arc<str>,
    pub name: String,
    pub metric: BoardMetric,
    pub period: Period,
    /// A league per value of this user attribute.
    pub segment_by: Option<String>,
    /// Only the top `size` are shown, ranked and archived.
    pub size: Option<usize>,
    /// (badge position, top N) awarded when a period closes.
    pub award: Option<(usize, usize)>,
    /// The metric as written, for the API.
    pub describe: String,
    /// Whether it ranks teams: a board of the catalogue's `[teams]` section (docs/teams.md).
    pub ranks_teams: bool,
}

#[derive(Clone, Debug)]
pub struct BadgeDef {
    /// Shared, because every effect about the badge carries it.
    pub id: Arc<str>,
    pub name: String,
    pub description: String,
    pub tier: Tier,
    pub xp: u64,
    pub icon: String,
    pub hidden: bool,
    pub repeat_every: Option<f64>,
    /// For `repeat` badges: the `StatKind::Held` stat that re-arms the badge once its rule
    /// stops holding.
    pub repeat: Option<usize>,
    /// Award once per value of this field (Khan's "once per exercise"); XP on the first only.
    pub per_key: Option<String>,
    /// For each event type, the position of the `per_key` field in it.
    pub per_key_pos: Vec<Option<usize>>,
    pub available_from: Option<Millis>,
    pub available_until: Option<Millis>,
    /// How long an award is held (`valid_for`); absent, for ever.
    pub valid_for: Option<Millis>,
    /// Retired: kept for its owners, never evaluated.
    pub retired: bool,
    pub cond: Cond,
    /// The catalogue's own words for the rule and its parts (`describe`), by the part's path
    /// (`rule`, `rule.of[1]`, `rule.require[0]`), in place of the generated sentences.
    pub describes: BTreeMap<String, String>,
    pub events: Vec<String>,
    /// A team badge's gift to the team's members when the team earns it.
    pub give: Option<Give>,
}

/// A community goal: the tenant's events of one type (that meet `when`), counted or summed
/// over everyone, toward `target` before `ends` (docs/teams.md, "Community goals").
#[derive(Clone, Debug)]
pub struct CommunityGoalDef {
    pub id: Arc<str>,
    /// The goal as shares and outcomes are kept under: its id and its deadline
    /// (`id@ends`, ends in ms), so that running a goal again with a new `ends` starts it anew.
    pub key: Arc<str>,
    pub name: String,
    pub description: String,
    pub event: usize,
    pub when: Pred,
    /// The number field summed; None counts events.
    pub field: Option<usize>,
    pub target: f64,
    pub starts: Option<Millis>,
    pub ends: Millis,
    /// The metric as written, for the API.
    pub describe: String,
}

impl CommunityGoalDef {
    /// What an accepted event of type `t` with `fields`, received at `received`, adds to the
    /// goal: only within its span by the server's clock (a late event cannot reopen it).
    pub fn amount(&self, t: usize, fields: &[Value], received: Millis) -> Option<f64> {
        if t != self.event || received >= self.ends || self.starts.is_some_and(|s| received < s) || !self.when.matches(fields) {
            return None;
        }
        let a = match self.field {
            Some(p) => fields[p].as_f64().unwrap_or(0.0),
            None => 1.0,
        };
        (a > 0.0).then_some(a)
    }

    /// The goal id of a key (`key`).
    pub fn id_of(key: &str) -> &str {
        key.split_once('@').map_or(key, |(id, _)| id)
    }

    /// Whether it is open at `now`.
    pub fn open(&self, now: Millis) -> bool {
        now < self.ends && self.starts.is_none_or(|s| now >= s)
    }
}

/// What a team badge gives the team's members when the team earns it (docs/teams.md).
#[derive(Clone, Debug)]
pub struct Give {
    /// The badge of users given: one of kind `awarded` in the tenant's own catalogue.
    pub badge: Arc<str>,
    /// Given only to the members who contributed: the team's stat of the different members
    /// whose events the badge's rule reads (with its conditions). None: to every member.
    pub contributors: Option<usize>,
}

impl BadgeDef {
    /// Whether the badge can be earned more than once: every `repeat_every`, once per key, or
    /// again with each new occurrence of its rule (`repeat`).
    pub fn repeatable(&self) -> bool {
        self.repeat_every.is_some() || self.per_key.is_some() || self.repeat.is_some()
    }
}

/// A validated, compiled catalogue. Immutable once built; a change makes a new one.
#[derive(Clone, Debug)]
pub struct Catalogue {
    pub version: u64,
    /// A hash of the source document: two catalogues with the same id compile alike.
    pub id: u64,
    pub name: String,
    /// Hash of the stat and cache layout: state compiled against another layout is remapped.
    pub layout: u64,
    pub settings: Settings,
    pub types: Vec<EventTypeDef>,
    pub type_index: HashMap<String, usize>,
    pub xp_rules: Vec<XpRuleDef>,
    pub levels: Levels,
    pub stats: Vec<StatDef>,
    pub badges: Vec<BadgeDef>,
    pub badge_index: HashMap<String, usize>,
    /// Badges rechecked after any event because they depend on XP, level, badges or the user.
    pub user_badges: Vec<usize>,
    /// For each badge: whether it is earned at most once (neither repeatable nor per key). The
    /// engine reads this compact list to skip owned badges without touching their definitions.
    pub once: Vec<bool>,
    /// For each cache ring: its event type and the names of the fields it keeps.
    pub rings: Vec<(usize, Vec<String>)>,
    pub boards: Vec<BoardDef>,
    /// Community goals for the whole tenant (docs/teams.md).
    pub community: Vec<CommunityGoalDef>,
    /// Whether any stat is a calendar stat, so that the engine finds the event's local day
    /// only for catalogues that read it.
    pub calendar: bool,
    /// The badges whose rule is an `absence` rule, which a wait lapsing can earn whatever the
    /// event (or with none: `engine::look`); empty when the catalogue has none.
    pub absence_badges: Vec<usize>,
    /// The document this was compiled from, kept so a version can be stored and served.
    pub source: String,
    /// The same document, parsed: the base of assigned goals' catalogues.
    pub document: Arc<serde_json::Value>,
    /// The team catalogue and membership limits, when the document has a `[teams]` section
    /// (docs/teams.md).
    pub teams: Option<Arc<Teams>>,
}

/// What a catalogue's `[teams]` section compiles to: the catalogue a team's state is judged
/// by (the tenant's event types, each with a `member` field, and the section's own levels,
/// XP rules, badges and leaderboards) and the membership limits.
#[derive(Debug)]
pub struct Teams {
    pub catalogue: Arc<Catalogue>,
    pub max_members: usize,
    pub max_teams_per_user: usize,
}

/// The field a team's copy of a member's event names her by.
pub const MEMBER_FIELD: &str = "member";

/// How a team's entity id begins: no user id may (`valid_user_id`), so a team is an entity in
/// the tenant's key space beside its users, kept like one.
pub const TEAM_PREFIX: &str = "\u{1}team:";

/// The entity id of team `id`.
pub fn team_entity(id: &str) -> String {
    format!("{TEAM_PREFIX}{id}")
}

/// The team id of an entity id, if it is a team's.
pub fn team_of(entity: &str) -> Option<&str> {
    entity.strip_prefix(TEAM_PREFIX)
}

/// Whether `id` may name a user: 1 to 128 bytes, no NUL (keys are split on it), and not
/// beginning with U+0001 (team entities do).
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.contains('\0') && !id.starts_with('\u{1}')
}

/// Whether `id` may name a team: 1 to 64 letters, digits, '-', '_' or '.'.
pub fn valid_team_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

// The lookups the engine makes on every event. Building a catalogue (`parse`, `for_goal`) is in
// `compile`.
impl Catalogue {
    /// The catalogue entity `id`'s state is judged by: a team's is the team catalogue (none
    /// when the tenant's has no `[teams]` section), a user's is this one.
    pub fn for_entity(self: &Arc<Self>, id: &str) -> Option<Arc<Catalogue>> {
        match team_of(id) {
            Some(_) => self.teams.as_ref().map(|t| t.catalogue.clone()),
            None => Some(self.clone()),
        }
    }

    /// A leaderboard by id, with the catalogue it belongs to: the tenant's own boards rank
    /// users, its team catalogue's rank teams, and the two share one space of ids.
    pub fn board(&self, id: &str) -> Option<(&BoardDef, &Catalogue)> {
        self.all_boards().find(|(b, _)| &*b.id == id)
    }

    /// Every leaderboard of the tenant, users' first, then teams'.
    pub fn all_boards(&self) -> impl Iterator<Item = (&BoardDef, &Catalogue)> {
        let teams = self.teams.as_deref().map(|t| &*t.catalogue);
        self.boards.iter().map(move |b| (b, self)).chain(teams.into_iter().flat_map(|c| c.boards.iter().map(move |b| (b, c))))
    }

    pub fn type_of(&self, name: &str) -> Option<usize> {
        // Catalogues declare a handful of event types: comparing names (lengths first) is
        // cheaper than hashing one, and this runs on every event.
        if self.types.len() <= 16 {
            return self.types.iter().position(|t| same_str(&t.name, name));
        }
        self.type_index.get(name).copied()
    }

    pub fn badge(&self, id: &str) -> Option<&BadgeDef> {
        self.badge_index.get(id).map(|&i| &self.badges[i])
    }
}

/// Looks a value's per-item limit up in a sum table.
pub fn table_value(limit: &SumLimit, key: Option<&Value>) -> f64 {
    match limit {
        SumLimit::PerItem(v) => *v,
        SumLimit::Table { values, default } => key.and_then(|k| k.key()).and_then(|k| values.get(k.as_ref()).copied()).unwrap_or(*default),
    }
}
