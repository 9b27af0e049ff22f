//! The catalogue: the versioned document that defines event types, XP rules, the level curve and
//! every badge, and its compilation into the indices and stat slots the engine runs on.
//!
//! Compiling is where the catalogue's cost is paid once: every leaf rule becomes a stat slot
//! (identical rules share one), rules are indexed by the event types that can change them, and
//! the fields that pattern rules read from the last-N cache are chosen. The format is documented
//! in `docs/catalogue.md`.

use super::predicate::{Op, Pred, RawPred};
use super::value::{parse_duration, stable_hash, Millis, Value, DAY, HOUR};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// The demo catalogue, modelled on Khan Academy's badges; compiled into the binary so the server
/// starts with no files.
pub const DEMO_CATALOGUE: &str = include_str!("../../../catalogues/khan.toml");

/// The event type the core itself understands: it sets user attributes used for segmentation.
pub const PROFILE_EVENT: &str = "user.profile";

/// A catalogue that failed validation. `badge` names the badge (or XP rule, or event type) and
/// `field` the path inside it, so an operator can find the line to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct CatalogueError {
    pub badge: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.badge {
            Some(b) => write!(f, "{b}: field `{}`: {}", self.field, self.message),
            None => write!(f, "field `{}`: {}", self.field, self.message),
        }
    }
}

fn err(owner: Option<&str>, field: impl Into<String>, message: impl Into<String>) -> CatalogueError {
    CatalogueError { badge: owner.map(str::to_string), field: field.into(), message: message.into() }
}

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

// ---------------------------------------------------------------------------------------------
// The document as written. Unknown keys are refused so a typo never silently disables a rule.
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    version: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    settings: DocSettings,
    event_types: BTreeMap<String, DocEventType>,
    levels: DocLevels,
    #[serde(default)]
    xp: Vec<serde_json::Value>,
    #[serde(default)]
    tables: BTreeMap<String, BTreeMap<String, f64>>,
    #[serde(default)]
    badges: Vec<serde_json::Value>,
    #[serde(default)]
    leaderboards: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocBoard {
    id: String,
    #[serde(default)]
    name: String,
    /// `xp`, `count` or `sum`.
    metric: String,
    event: Option<String>,
    when: Option<serde_json::Value>,
    field: Option<String>,
    /// `all_time`, `daily`, `weekly`, `monthly` or `custom`.
    period: String,
    starts: Option<String>,
    ends: Option<String>,
    segment_by: Option<String>,
    size: Option<usize>,
    award: Option<DocAward>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocAward {
    badge: String,
    top: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DocSettings {
    cache_size: usize,
    recent_ids: usize,
    late_bound: String,
    future_skew: String,
    default_timezone: String,
}

impl Default for DocSettings {
    fn default() -> Self {
        DocSettings {
            cache_size: 500,
            recent_ids: 256,
            late_bound: "24h".into(),
            future_skew: "5m".into(),
            default_timezone: "UTC".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocEventType {
    #[serde(default)]
    client: bool,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    #[serde(default)]
    fingerprint: Vec<String>,
    fingerprint_window: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocLevels {
    thresholds: Option<Vec<u64>>,
    base: Option<f64>,
    exponent: Option<f64>,
    max_level: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocXp {
    id: String,
    event: String,
    when: Option<serde_json::Value>,
    amount: Option<u64>,
    amount_field: Option<String>,
    #[serde(default = "one")]
    multiplier: f64,
    max: Option<u64>,
    daily_cap: Option<u64>,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocBadge {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    tier: Tier,
    #[serde(default)]
    xp: u64,
    #[serde(default)]
    icon: String,
    #[serde(default)]
    hidden: bool,
    repeat_every: Option<f64>,
    per_key: Option<String>,
    available_from: Option<String>,
    available_until: Option<String>,
    /// A retired badge is no longer awarded; users who own it keep it and still see it.
    #[serde(default)]
    retired: bool,
    rule: DocRule,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Deserialize, Clone)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum DocRule {
    Count { event: OneOrMany, when: Option<serde_json::Value>, per: Option<String>, distinct: Option<String>, target: f64 },
    Sum { event: OneOrMany, when: Option<serde_json::Value>, field: String, per: Option<String>, target: f64 },
    Max { event: OneOrMany, when: Option<serde_json::Value>, field: String, per: Option<String>, target: f64 },
    Streak { event: OneOrMany, when: Option<serde_json::Value>, breaks_when: Option<serde_json::Value>, per: Option<String>, target: f64 },
    DailyStreak {
        event: OneOrMany,
        when: Option<serde_json::Value>,
        days: u32,
        #[serde(default)]
        grace_hours: f64,
        #[serde(default)]
        freezes: u32,
        #[serde(default = "seven")]
        freeze_every_days: u32,
    },
    Window { within: String, require: Vec<DocWindowReq> },
    Recent {
        event: OneOrMany,
        last: usize,
        same: Option<String>,
        in_key: Option<String>,
        min_items: Option<usize>,
        all: Option<serde_json::Value>,
        #[serde(default)]
        newest: Vec<serde_json::Value>,
        at_least: Option<DocAtLeast>,
        ratio: Option<DocRatio>,
        sum_at_most: Option<DocSumAtMost>,
    },
    Sequence { steps: Vec<DocStep>, within: String },
    All { of: Vec<DocRule> },
    Any { of: Vec<DocRule> },
    Not { rule: Box<DocRule> },
    Badge { id: String },
    Level { at_least: u32 },
    Xp { at_least: u64 },
    Attribute { when: serde_json::Value },
    Tenure { days: f64 },
    /// Never earned by events: given by a leaderboard's period award.
    Awarded {},
}

fn seven() -> u32 {
    7
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct DocWindowReq {
    event: OneOrMany,
    when: Option<serde_json::Value>,
    count: Option<f64>,
    sum: Option<String>,
    at_least: Option<f64>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct DocAtLeast {
    when: serde_json::Value,
    count: usize,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct DocRatio {
    when: serde_json::Value,
    at_least: f64,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct DocSumAtMost {
    field: String,
    per_item: Option<f64>,
    per_item_table: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct DocStep {
    event: String,
    when: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// The compiled catalogue.
// ---------------------------------------------------------------------------------------------

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
}

impl EventTypeDef {
    pub fn field(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
    fn cached_pos(&self, name: &str) -> Option<usize> {
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
}

impl Cond {
    /// Whether this condition can change without an event of its own types (XP, level, other
    /// badges, attributes, tenure): such badges are rechecked after every event.
    fn depends_on_user(&self) -> bool {
        match self {
            Cond::Owns(_) | Cond::Level(_) | Cond::Xp(_) | Cond::Attribute(_) | Cond::Tenure(_) => true,
            Cond::All(c) | Cond::Any(c) => c.iter().any(Cond::depends_on_user),
            Cond::Not(c) => c.depends_on_user(),
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
    pub period: super::calendar::Period,
    /// A league per value of this user attribute.
    pub segment_by: Option<String>,
    /// Only the top `size` are shown, ranked and archived.
    pub size: Option<usize>,
    /// (badge position, top N) awarded when a period closes.
    pub award: Option<(usize, usize)>,
    /// The metric as written, for the API.
    pub describe: String,
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
    /// Award once per value of this field (Khan's "once per exercise"); XP on the first only.
    pub per_key: Option<String>,
    /// For each event type, the position of the `per_key` field in it.
    pub per_key_pos: Vec<Option<usize>>,
    pub available_from: Option<Millis>,
    pub available_until: Option<Millis>,
    /// Retired: kept for its owners, never evaluated.
    pub retired: bool,
    pub cond: Cond,
    pub events: Vec<String>,
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
    /// The document this was compiled from, kept so a version can be stored and served.
    pub source: String,
    /// The same document, parsed: the base of assigned goals' catalogues.
    pub document: Arc<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Catalogue {
    pub fn demo() -> Catalogue {
        Catalogue::parse(DEMO_CATALOGUE, Format::Toml).expect("the embedded demo catalogue is valid")
    }

    pub fn parse(text: &str, format: Format) -> Result<Catalogue, CatalogueError> {
        let value: serde_json::Value = match format {
            Format::Toml => toml::from_str(text).map_err(|e| err(None, "document", format!("not valid TOML: {}", e.message())))?,
            Format::Json => serde_json::from_str(text).map_err(|e| err(None, "document", format!("not valid JSON: {e}")))?,
        };
        let mut cat = compile(value.clone())?;
        cat.source = text.to_string();
        cat.id = stable_hash(format!("{}\u{1f}{}", cat.version, text).as_bytes());
        cat.document = Arc::new(value);
        Ok(cat)
    }

    /// The catalogue an assigned goal is tracked with: this catalogue's event types and
    /// settings, and one badge, `goal`, whose rule is the goal's criterion (in the same rule
    /// language). Errors name the field inside the criterion.
    pub fn for_goal(&self, title: &str, criterion: &serde_json::Value) -> Result<Catalogue, CatalogueError> {
        let mut v = (*self.document).clone();
        let Some(doc) = v.as_object_mut() else { return Err(err(None, "criterion", "the catalogue document is not an object")) };
        doc.insert("badges".into(), serde_json::json!([{ "id": "goal", "name": title, "tier": "bronze", "rule": criterion }]));
        doc.insert("xp".into(), serde_json::json!([]));
        doc.insert("leaderboards".into(), serde_json::json!([]));
        let mut cat = compile(v).map_err(|e| {
            let field = match e.field.strip_prefix("rule") {
                Some(rest) => format!("criterion{rest}"),
                None => e.field.clone(),
            };
            err(None, field, e.message)
        })?;
        if matches!(cat.badges[0].cond, Cond::Never) {
            return Err(err(None, "criterion.kind", "a goal needs a rule that events can meet"));
        }
        cat.version = self.version;
        cat.id = stable_hash(format!("goal\u{1f}{}\u{1f}{title}\u{1f}{criterion}", self.id).as_bytes());
        Ok(cat)
    }

    pub fn type_of(&self, name: &str) -> Option<usize> {
        // Catalogues declare a handful of event types: comparing names (lengths first) is
        // cheaper than hashing one, and this runs on every event.
        if self.types.len() <= 16 {
            return self.types.iter().position(|t| super::value::same_str(&t.name, name));
        }
        self.type_index.get(name).copied()
    }

    pub fn badge(&self, id: &str) -> Option<&BadgeDef> {
        self.badge_index.get(id).map(|&i| &self.badges[i])
    }
}

/// Deserializes a part of the document, reporting the exact path of a bad key.
fn part<T: serde::de::DeserializeOwned>(v: serde_json::Value, owner: Option<&str>, prefix: &str) -> Result<T, CatalogueError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = match (path.as_str(), prefix.is_empty()) {
            (".", true) => "document".to_string(),
            (".", false) => prefix.to_string(),
            (_, true) => path,
            (_, false) => format!("{prefix}.{path}"),
        };
        err(owner, field, e.into_inner().to_string())
    })
}

struct Builder {
    types: Vec<EventTypeDef>,
    type_index: HashMap<String, usize>,
    stats: Vec<StatDef>,
    stat_ids: HashMap<u64, usize>,
    /// per type: field names some window/recent rule reads back from the cache
    cache_wants: Vec<Vec<String>>,
    tables: BTreeMap<String, BTreeMap<String, f64>>,
    badge_ids: HashMap<String, usize>,
}

fn compile(doc_value: serde_json::Value) -> Result<Catalogue, CatalogueError> {
    let doc: Doc = part(doc_value, None, "")?;
    let s = &doc.settings;
    let dur = |f: &str, v: &str| parse_duration(v).map_err(|m| err(None, format!("settings.{f}"), m));
    if s.cache_size == 0 || s.cache_size > 10_000 {
        return Err(err(None, "settings.cache_size", "must be between 1 and 10000"));
    }
    let settings = Settings {
        cache_size: s.cache_size,
        recent_ids: s.recent_ids.clamp(1, 100_000),
        late_bound: dur("late_bound", &s.late_bound)?,
        future_skew: dur("future_skew", &s.future_skew)?,
        default_timezone: s
            .default_timezone
            .parse()
            .map_err(|_| err(None, "settings.default_timezone", format!("unknown time zone `{}`", s.default_timezone)))?,
    };

    let mut b = Builder {
        types: Vec::new(),
        type_index: HashMap::new(),
        stats: Vec::new(),
        stat_ids: HashMap::new(),
        cache_wants: Vec::new(),
        tables: doc.tables.clone(),
        badge_ids: HashMap::new(),
    };

    let mut type_docs: Vec<(String, DocEventType)> = doc.event_types.into_iter().collect();
    if !type_docs.iter().any(|(n, _)| n == PROFILE_EVENT) {
        // The profile event is always available to the app's backend, so segmentation works
        // in every catalogue.
        type_docs.push((
            PROFILE_EVENT.into(),
            DocEventType { client: false, fields: BTreeMap::new(), fingerprint: vec![], fingerprint_window: None },
        ));
    }
    for (name, t) in type_docs {
        let owner = format!("event type `{name}`");
        if name.is_empty() || name.len() > 64 {
            return Err(err(Some(&owner), "name", "must be 1 to 64 characters"));
        }
        let mut fields = Vec::new();
        for (fname, kind) in &t.fields {
            let (k, optional) = match kind.strip_suffix('?') {
                Some(k) => (k, true),
                None => (kind.as_str(), false),
            };
            let kind = match k {
                "string" => FieldKind::String,
                "number" => FieldKind::Number,
                "bool" => FieldKind::Bool,
                "any" => FieldKind::Any,
                other => {
                    return Err(err(Some(&owner), format!("fields.{fname}"), format!("unknown type `{other}` (use string, number, bool or any; add ? for optional)")));
                }
            };
            fields.push(FieldDef { name: fname.clone(), kind, optional });
        }
        let mut def = EventTypeDef {
            name: name.clone(),
            client: t.client,
            fields,
            fingerprint: None,
            cache: None,
            cached_fields: vec![],
            stats: vec![],
            xp_rules: vec![],
            badges: vec![],
            progress: vec![],
            checks: vec![],
        };
        if !t.fingerprint.is_empty() {
            let mut pos = Vec::new();
            for f in &t.fingerprint {
                pos.push(def.field(f).ok_or_else(|| err(Some(&owner), "fingerprint", format!("`{f}` is not a declared field")))?);
            }
            let window = t
                .fingerprint_window
                .as_deref()
                .ok_or_else(|| err(Some(&owner), "fingerprint_window", "a fingerprint needs a window, e.g. \"1h\""))
                .and_then(|w| parse_duration(w).map_err(|m| err(Some(&owner), "fingerprint_window", m)))?;
            def.fingerprint = Some((pos, window));
        }
        b.type_index.insert(name, b.types.len());
        b.types.push(def);
        b.cache_wants.push(Vec::new());
    }

    let levels = match (&doc.levels.thresholds, doc.levels.base) {
        (Some(t), None) => {
            if t.first() != Some(&0) || t.windows(2).any(|w| w[0] >= w[1]) {
                return Err(err(None, "levels.thresholds", "must start at 0 and increase strictly"));
            }
            Levels::Thresholds(t.clone())
        }
        (None, Some(base)) => {
            let exponent = doc.levels.exponent.unwrap_or(2.0);
            if !(base > 0.0) || !(exponent > 0.0) {
                return Err(err(None, "levels", "base and exponent must be positive"));
            }
            Levels::Formula { base, exponent, max_level: doc.levels.max_level.unwrap_or(100).max(1) }
        }
        _ => return Err(err(None, "levels", "give either `thresholds` or `base` (with optional exponent and max_level)")),
    };

    let mut xp_rules = Vec::new();
    let mut xp_ids = std::collections::HashSet::new();
    for (i, v) in doc.xp.into_iter().enumerate() {
        let owner_guess = v.get("id").and_then(|x| x.as_str()).map(|x| format!("xp rule `{x}`")).unwrap_or(format!("xp rule #{}", i + 1));
        let x: DocXp = part(v, Some(&owner_guess), "")?;
        let owner = Some(owner_guess.as_str());
        if !xp_ids.insert(x.id.clone()) {
            return Err(err(owner, "id", "duplicate XP rule id"));
        }
        let t = *b.type_index.get(&x.event).ok_or_else(|| err(owner, "event", format!("unknown event type `{}`", x.event)))?;
        let when = b.pred_on_type(t, x.when.as_ref()).map_err(|m| err(owner, "when", m))?;
        let amount = match (x.amount, &x.amount_field) {
            (Some(a), None) => XpAmount::Fixed(a),
            (None, Some(f)) => {
                let pos = b.types[t].field(f).ok_or_else(|| err(owner, "amount_field", format!("`{f}` is not a declared field")))?;
                if b.types[t].fields[pos].kind != FieldKind::Number {
                    return Err(err(owner, "amount_field", format!("`{f}` must be declared as a number")));
                }
                if !(x.multiplier >= 0.0) {
                    return Err(err(owner, "multiplier", "must not be negative"));
                }
                XpAmount::Field { pos, multiplier: x.multiplier }
            }
            _ => return Err(err(owner, "amount", "give exactly one of `amount` or `amount_field`")),
        };
        b.types[t].xp_rules.push(xp_rules.len());
        xp_rules.push(XpRuleDef { id: x.id.as_str().into(), event: t, when, amount, max: x.max, daily_cap: x.daily_cap });
    }

    // Badge ids first, so `badge` conditions may name badges defined later in the document.
    let mut docs = Vec::new();
    for (i, v) in doc.badges.into_iter().enumerate() {
        let owner = v.get("id").and_then(|x| x.as_str()).map(|x| format!("badge `{x}`")).unwrap_or(format!("badge #{}", i + 1));
        let d: DocBadge = part(v, Some(&owner), "")?;
        if d.id.is_empty() || d.id.len() > 64 || !d.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(err(Some(&owner), "id", "use 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        if b.badge_ids.insert(d.id.clone(), i).is_some() {
            return Err(err(Some(&owner), "id", "duplicate badge id"));
        }
        docs.push((owner, d));
    }

    let mut badges = Vec::new();
    for (owner, d) in docs {
        let o = Some(owner.as_str());
        let cond = b.rule(&d.rule, o, "rule")?;
        if let Some(every) = d.repeat_every {
            let ok = matches!(&cond, Cond::Metric { stat, .. } if matches!(b.stats[*stat].kind, StatKind::Count | StatKind::Sum));
            if !ok || !(every > 0.0) {
                return Err(err(o, "repeat_every", "needs a positive number and a count or sum rule"));
            }
        }
        if let Some(k) = &d.per_key {
            let events = cond_events(&cond, &b);
            if events.is_empty() || events.iter().any(|&t| b.types[t].field(k).is_none()) {
                return Err(err(o, "per_key", format!("`{k}` must be a field of every event type the rule reads")));
            }
            if d.repeat_every.is_some() {
                return Err(err(o, "per_key", "cannot be combined with repeat_every"));
            }
        }
        let time = |f: &str, v: &Option<String>| -> Result<Option<Millis>, CatalogueError> {
            v.as_ref()
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|d| d.timestamp_millis())
                        .map_err(|_| err(o, f, format!("`{t}` is not an RFC 3339 time")))
                })
                .transpose()
        };
        let available_from = time("available_from", &d.available_from)?;
        let available_until = time("available_until", &d.available_until)?;
        if let (Some(f), Some(u)) = (available_from, available_until)
            && f >= u
        {
            return Err(err(o, "available_until", "must be after available_from"));
        }
        let idx = badges.len();
        let events: Vec<usize> = cond_events(&cond, &b);
        if !d.retired {
            for &t in &events {
                b.types[t].badges.push(idx);
            }
        }
        badges.push(BadgeDef {
            id: d.id.as_str().into(),
            name: d.name,
            description: d.description,
            tier: d.tier,
            xp: d.xp,
            icon: d.icon,
            hidden: d.hidden,
            repeat_every: d.repeat_every,
            per_key_pos: b.types.iter().map(|t| d.per_key.as_deref().and_then(|k| t.field(k))).collect(),
            per_key: d.per_key,
            available_from,
            available_until,
            retired: d.retired,
            events: events.iter().map(|&t| b.types[t].name.clone()).collect(),
            cond,
        });
    }
    let user_badges: Vec<usize> = (0..badges.len()).filter(|&i| !badges[i].retired && badges[i].cond.depends_on_user()).collect();
    for ty in &mut b.types {
        ty.checks = ty.badges.iter().copied().filter(|i| !user_badges.contains(i)).collect();
        ty.progress = ty
            .badges
            .iter()
            .filter_map(|&i| match badges[i].cond {
                Cond::Metric { stat, target } => {
                    let bit = ty.stats.iter().position(|&x| x == stat)?;
                    Some(ProgressSlot { badge: i, bit, stat, target, repeat_every: badges[i].repeat_every })
                }
                _ => None,
            })
            .collect();
    }

    // Cache rings: one per event type that a window or recent rule reads, keeping only the
    // fields those rules read. Conditions were compiled against `cache_wants` positions, so the
    // ring layout must follow the same order.
    let mut rings = Vec::new();
    for (t, wants) in b.cache_wants.iter().enumerate() {
        if b.types[t].cache.is_some() {
            let positions = wants.iter().map(|w| b.types[t].field(w).expect("checked")).collect();
            b.types[t].cached_fields = positions;
            rings.push((t, wants.clone()));
        }
    }
    let mut layout_text = String::new();
    for s in &b.stats {
        layout_text.push_str(&format!("{:x};", s.id));
    }
    for (t, f) in &rings {
        layout_text.push_str(&format!("{}:{};", b.types[*t].name, f.join(",")));
    }
    let badge_index: HashMap<String, usize> = badges.iter().enumerate().map(|(i, d)| (d.id.to_string(), i)).collect();
    let boards = compile_boards(doc.leaderboards, &b, &badges, &badge_index)?;
    let once = badges.iter().map(|d| d.repeat_every.is_none() && d.per_key.is_none()).collect();
    Ok(Catalogue {
        version: doc.version,
        id: 0,
        name: doc.name,
        layout: stable_hash(layout_text.as_bytes()),
        settings,
        types: b.types,
        type_index: b.type_index,
        xp_rules,
        levels,
        stats: b.stats,
        badges,
        badge_index,
        user_badges,
        once,
        rings,
        boards,
        source: String::new(),
        document: Arc::new(serde_json::Value::Null),
    })
}

fn compile_boards(docs: Vec<serde_json::Value>, b: &Builder, badges: &[BadgeDef], badge_index: &HashMap<String, usize>) -> Result<Vec<BoardDef>, CatalogueError> {
    let mut out: Vec<BoardDef> = Vec::new();
    for (i, v) in docs.into_iter().enumerate() {
        let owner = v.get("id").and_then(|x| x.as_str()).map(|x| format!("leaderboard `{x}`")).unwrap_or(format!("leaderboard #{}", i + 1));
        let d: DocBoard = part(v, Some(&owner), "")?;
        let o = Some(owner.as_str());
        if d.id.is_empty() || d.id.len() > 64 || !d.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(err(o, "id", "use 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        if out.iter().any(|x| *x.id == *d.id) {
            return Err(err(o, "id", "duplicate leaderboard id"));
        }
        let event = || -> Result<usize, CatalogueError> {
            let name = d.event.as_deref().ok_or_else(|| err(o, "event", format!("a `{}` leaderboard needs an `event`", d.metric)))?;
            b.type_id(name).map_err(|m| err(o, "event", m))
        };
        let (metric, describe) = match d.metric.as_str() {
            "xp" => {
                if d.event.is_some() || d.when.is_some() || d.field.is_some() {
                    return Err(err(o, "metric", "an `xp` leaderboard takes no event, when or field"));
                }
                (BoardMetric::Xp, "xp".to_string())
            }
            "count" | "sum" => {
                let t = event()?;
                let when = b.pred_on_type(t, d.when.as_ref()).map_err(|m| err(o, "when", m))?;
                if d.metric == "count" {
                    if d.field.is_some() {
                        return Err(err(o, "field", "a `count` leaderboard takes no field"));
                    }
                    (BoardMetric::Count { event: t, when }, format!("count of {}", b.types[t].name))
                } else {
                    let f = d.field.as_deref().ok_or_else(|| err(o, "field", "a `sum` leaderboard needs a number `field`"))?;
                    let pos = b.types[t].field(f).filter(|&p| b.types[t].fields[p].kind == FieldKind::Number);
                    let pos = pos.ok_or_else(|| err(o, "field", format!("`{f}` is not a number field of `{}`", b.types[t].name)))?;
                    (BoardMetric::Sum { event: t, when, field: pos }, format!("sum of {} {f}", b.types[t].name))
                }
            }
            other => return Err(err(o, "metric", format!("unknown metric `{other}` (use xp, count or sum)"))),
        };
        let time = |f: &str, v: &Option<String>| -> Result<Option<Millis>, CatalogueError> {
            v.as_ref()
                .map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|d| d.timestamp_millis()).map_err(|_| err(o, f, format!("`{t}` is not an RFC 3339 time"))))
                .transpose()
        };
        let (starts, ends) = (time("starts", &d.starts)?, time("ends", &d.ends)?);
        let period = match (d.period.as_str(), starts, ends) {
            ("custom", Some(start), Some(end)) if start < end => super::calendar::Period::Custom { start, end },
            ("custom", Some(_), Some(_)) => return Err(err(o, "ends", "must be after starts")),
            ("custom", _, _) => return Err(err(o, "period", "a custom period needs `starts` and `ends`")),
            (_, Some(_), _) | (_, _, Some(_)) => return Err(err(o, "starts", "only a custom period takes starts and ends")),
            ("all_time", ..) => super::calendar::Period::AllTime,
            ("daily", ..) => super::calendar::Period::Daily,
            ("weekly", ..) => super::calendar::Period::Weekly,
            ("monthly", ..) => super::calendar::Period::Monthly,
            (other, ..) => return Err(err(o, "period", format!("unknown period `{other}` (use all_time, daily, weekly, monthly or custom)"))),
        };
        if d.size == Some(0) {
            return Err(err(o, "size", "must be at least 1"));
        }
        let award = match &d.award {
            None => None,
            Some(a) => {
                let &bi = badge_index.get(&a.badge).ok_or_else(|| err(o, "award.badge", format!("unknown badge `{}`", a.badge)))?;
                if !matches!(badges[bi].cond, Cond::Never) {
                    return Err(err(o, "award.badge", format!("badge `{}` must have the rule {{ kind = \"awarded\" }}", a.badge)));
                }
                if matches!(period, super::calendar::Period::AllTime) {
                    return Err(err(o, "award", "an all-time board never closes, so it cannot award a badge"));
                }
                if a.top == 0 || d.size.is_some_and(|s| a.top > s) {
                    return Err(err(o, "award.top", "must be at least 1 and within the board's size"));
                }
                Some((bi, a.top))
            }
        };
        let name = if d.name.is_empty() { d.id.clone() } else { d.name };
        out.push(BoardDef { id: d.id.as_str().into(), name, metric, period, segment_by: d.segment_by, size: d.size, award, describe });
    }
    Ok(out)
}

/// The event types whose arrival can change a condition.
fn cond_events(c: &Cond, b: &Builder) -> Vec<usize> {
    let mut out = Vec::new();
    fn walk(c: &Cond, b: &Builder, out: &mut Vec<usize>) {
        match c {
            Cond::Metric { stat, .. } | Cond::Sequence { stat } => out.extend(b.stats[*stat].inputs.iter().map(|i| i.event)),
            Cond::Window { reqs, .. } => {
                for r in reqs {
                    out.extend(r.per_type.iter().map(|(ring, _, _)| b.ring_type(*ring)));
                }
            }
            Cond::Recent(r) => out.extend(r.rings.iter().map(|x| b.ring_type(x.ring))),
            Cond::All(cs) | Cond::Any(cs) => cs.iter().for_each(|c| walk(c, b, out)),
            Cond::Not(c) => walk(c, b, out),
            _ => {}
        }
    }
    walk(c, b, &mut out);
    out.sort();
    out.dedup();
    out
}

impl Builder {
    fn ring_type(&self, ring: usize) -> usize {
        self.types.iter().position(|t| t.cache == Some(ring)).expect("ring has a type")
    }

    fn type_id(&self, name: &str) -> Result<usize, String> {
        self.type_index.get(name).copied().ok_or_else(|| format!("unknown event type `{name}`"))
    }

    fn pred_on_type(&self, t: usize, v: Option<&serde_json::Value>) -> Result<Pred, String> {
        let raw = RawPred::parse(v)?;
        raw.compile(|f| self.types[t].field(f)).map_err(|m| format!("{m} of `{}`", self.types[t].name))
    }

    /// Declares that a cache rule reads `fields` from type `t`, and returns the ring index.
    fn want_cache(&mut self, t: usize, fields: &[&str]) -> Result<usize, String> {
        for f in fields {
            if self.types[t].field(f).is_none() {
                return Err(format!("`{f}` is not a declared field of `{}`", self.types[t].name));
            }
            if !self.cache_wants[t].iter().any(|w| w == f) {
                self.cache_wants[t].push(f.to_string());
            }
        }
        if self.types[t].cache.is_none() {
            let ring = self.types.iter().filter(|x| x.cache.is_some()).count();
            self.types[t].cache = Some(ring);
        }
        // Keep cached_fields current while compiling so cached_pos can be used right away.
        let positions = self.cache_wants[t].iter().map(|w| self.types[t].field(w).unwrap()).collect();
        self.types[t].cached_fields = positions;
        Ok(self.types[t].cache.unwrap())
    }

    fn cached_pred(&self, t: usize, v: Option<&serde_json::Value>) -> Result<Pred, String> {
        RawPred::parse(v)?.compile(|f| self.types[t].cached_pos(f))
    }

    /// Registers a stat, sharing the slot with an identical one.
    fn stat(&mut self, kind: StatKind, per: Option<&String>, inputs: Vec<StatInput>, canonical: String, describe: String) -> usize {
        let id = stable_hash(canonical.as_bytes());
        if let Some(&i) = self.stat_ids.get(&id) {
            return i;
        }
        let i = self.stats.len();
        for inp in &inputs {
            if !self.types[inp.event].stats.contains(&i) {
                self.types[inp.event].stats.push(i);
            }
        }
        let key_pos = self.types.iter().map(|t| per.and_then(|k| t.field(k))).collect();
        self.stats.push(StatDef { id, kind, keyed: per.is_some(), per: per.cloned(), key_pos, inputs, describe });
        self.stat_ids.insert(id, i);
        i
    }

    /// Builds per-type inputs for a stat over `events`, resolving the predicate, key and value.
    #[allow(clippy::too_many_arguments)]
    fn inputs(
        &self,
        events: &[String],
        when: Option<&serde_json::Value>,
        breaks: Option<&serde_json::Value>,
        per: Option<&str>,
        value: Option<(&str, bool)>,
        o: Option<&str>,
        path: &str,
    ) -> Result<(Vec<StatInput>, String), CatalogueError> {
        let mut inputs = Vec::new();
        let mut types = Vec::new();
        for e in events {
            let t = self.type_id(e).map_err(|m| err(o, format!("{path}.event"), m))?;
            let ty = &self.types[t];
            let w = self.pred_on_type(t, when).map_err(|m| err(o, format!("{path}.when"), m))?;
            let br = breaks.map(|x| self.pred_on_type(t, Some(x))).transpose().map_err(|m| err(o, format!("{path}.breaks_when"), m))?;
            let key = per
                .map(|k| ty.field(k).ok_or_else(|| err(o, format!("{path}.per"), format!("`{k}` is not a declared field of `{e}`"))))
                .transpose()?;
            let val = match value {
                Some((f, numeric)) => {
                    let p = ty.field(f).ok_or_else(|| err(o, format!("{path}.field"), format!("`{f}` is not a declared field of `{e}`")))?;
                    if numeric && ty.fields[p].kind != FieldKind::Number {
                        return Err(err(o, format!("{path}.field"), format!("`{f}` must be declared as a number")));
                    }
                    Some(p)
                }
                None => None,
            };
            inputs.push(StatInput { event: t, when: w, breaks: br, key, value: val, step: 0 });
            types.push(e.clone());
        }
        if inputs.is_empty() {
            return Err(err(o, format!("{path}.event"), "names no event type"));
        }
        types.sort();
        let canon = format!(
            "{}|{}|{}|{:?}|{:?}",
            types.join(","),
            RawPred::parse(when).map(|p| p.canonical()).unwrap_or_default(),
            RawPred::parse(breaks).map(|p| p.canonical()).unwrap_or_default(),
            per,
            value.map(|v| v.0)
        );
        Ok((inputs, canon))
    }

    fn rule(&mut self, r: &DocRule, o: Option<&str>, path: &str) -> Result<Cond, CatalogueError> {
        let target_ok = |t: f64| -> Result<f64, CatalogueError> {
            if t > 0.0 && t.is_finite() { Ok(t) } else { Err(err(o, format!("{path}.target"), "must be a positive number")) }
        };
        Ok(match r {
            DocRule::Count { event, when, per, distinct, target } => {
                let target = target_ok(*target)?;
                let (inputs, canon) = self.inputs(&event.list(), when.as_ref(), None, per.as_deref(), distinct.as_deref().map(|d| (d, false)), o, path)?;
                let kind = if distinct.is_some() { StatKind::Distinct } else { StatKind::Count };
                let d = format!("{} {}", if distinct.is_some() { "distinct" } else { "count" }, event.list().join("|"));
                let stat = self.stat(kind.clone(), per.as_ref(), inputs, format!("{kind:?}|{canon}"), d);
                Cond::Metric { stat, target }
            }
            DocRule::Sum { event, when, field, per, target } | DocRule::Max { event, when, field, per, target } => {
                let target = target_ok(*target)?;
                let kind = if matches!(r, DocRule::Sum { .. }) { StatKind::Sum } else { StatKind::Max };
                let (inputs, canon) = self.inputs(&event.list(), when.as_ref(), None, per.as_deref(), Some((field, true)), o, path)?;
                let d = format!("{kind:?} of {field}").to_lowercase();
                let stat = self.stat(kind.clone(), per.as_ref(), inputs, format!("{kind:?}|{canon}"), d);
                Cond::Metric { stat, target }
            }
            DocRule::Streak { event, when, breaks_when, per, target } => {
                let target = target_ok(*target)?;
                let (inputs, canon) = self.inputs(&event.list(), when.as_ref(), breaks_when.as_ref(), per.as_deref(), None, o, path)?;
                let stat = self.stat(StatKind::Streak, per.as_ref(), inputs, format!("Streak|{canon}"), "streak".into());
                Cond::Metric { stat, target }
            }
            DocRule::DailyStreak { event, when, days, grace_hours, freezes, freeze_every_days } => {
                if *days == 0 {
                    return Err(err(o, format!("{path}.days"), "must be at least 1"));
                }
                if !(*grace_hours >= 0.0 && *grace_hours <= 24.0 * 14.0) {
                    return Err(err(o, format!("{path}.grace_hours"), "must be between 0 and 336"));
                }
                if *freeze_every_days == 0 {
                    return Err(err(o, format!("{path}.freeze_every_days"), "must be at least 1"));
                }
                let (inputs, canon) = self.inputs(&event.list(), when.as_ref(), None, None, None, o, path)?;
                let kind = StatKind::Daily { grace: (*grace_hours * HOUR as f64) as Millis, freezes: *freezes, freeze_every: *freeze_every_days };
                let stat = self.stat(kind.clone(), None, inputs, format!("{kind:?}|{canon}"), "days in a row".into());
                Cond::Metric { stat, target: *days as f64 }
            }
            DocRule::Sequence { steps, within } => {
                let within = parse_duration(within).map_err(|m| err(o, format!("{path}.within"), m))?;
                if steps.len() < 2 {
                    return Err(err(o, format!("{path}.steps"), "needs at least two steps"));
                }
                let mut inputs = Vec::new();
                let mut canon = format!("Seq|{within}");
                for (i, st) in steps.iter().enumerate() {
                    let p = format!("{path}.steps[{i}]");
                    let t = self.type_id(&st.event).map_err(|m| err(o, format!("{p}.event"), m))?;
                    let w = self.pred_on_type(t, st.when.as_ref()).map_err(|m| err(o, format!("{p}.when"), m))?;
                    canon.push_str(&format!("|{}:{}", st.event, RawPred::parse(st.when.as_ref()).unwrap_or_default().canonical()));
                    inputs.push(StatInput { event: t, when: w, breaks: None, key: None, value: None, step: i });
                }
                let stat = self.stat(StatKind::Sequence { steps: steps.len(), within }, None, inputs, canon, "sequence".into());
                Cond::Sequence { stat }
            }
            DocRule::Window { within, require } => {
                let within = parse_duration(within).map_err(|m| err(o, format!("{path}.within"), m))?;
                if require.is_empty() {
                    return Err(err(o, format!("{path}.require"), "needs at least one requirement"));
                }
                let mut reqs = Vec::new();
                for (i, q) in require.iter().enumerate() {
                    let p = format!("{path}.require[{i}]");
                    let target = match (q.count, &q.sum, q.at_least) {
                        (Some(c), None, None) if c > 0.0 => c,
                        (None, Some(_), Some(a)) if a > 0.0 => a,
                        _ => return Err(err(o, p, "give either `count = N` or `sum = \"field\"` with `at_least = N`")),
                    };
                    let mut per_type = Vec::new();
                    for e in q.event.list() {
                        let t = self.type_id(&e).map_err(|m| err(o, format!("{p}.event"), m))?;
                        let raw = RawPred::parse(q.when.as_ref()).map_err(|m| err(o, format!("{p}.when"), m))?;
                        let mut fields: Vec<&str> = raw.fields().collect();
                        if let Some(sf) = &q.sum {
                            fields.push(sf);
                        }
                        let ring = self.want_cache(t, &fields).map_err(|m| err(o, format!("{p}.when"), m))?;
                        let pred = self.cached_pred(t, q.when.as_ref()).map_err(|m| err(o, format!("{p}.when"), m))?;
                        let sum_pos = q.sum.as_ref().map(|f| self.types[t].cached_pos(f).unwrap());
                        if let Some(sf) = &q.sum
                            && self.types[t].fields[self.types[t].field(sf).unwrap()].kind != FieldKind::Number
                        {
                            return Err(err(o, format!("{p}.sum"), format!("`{sf}` must be declared as a number")));
                        }
                        per_type.push((ring, pred, sum_pos));
                    }
                    let describe = match &q.sum {
                        Some(f) => format!("{f} of {}", q.event.list().join("|")),
                        None => q.event.list().join("|"),
                    };
                    reqs.push(WindowReq { per_type, target, describe });
                }
                Cond::Window { within, reqs }
            }
            DocRule::Recent { event, last, same, in_key, min_items, all, newest, at_least, ratio, sum_at_most } => {
                if *last == 0 || *last > 10_000 {
                    return Err(err(o, format!("{path}.last"), "must be between 1 and 10000"));
                }
                if same.is_some() && in_key.is_some() {
                    return Err(err(o, format!("{path}.in_key"), "use either `same` or `in_key`"));
                }
                let key = same.as_ref().or(in_key.as_ref());
                let mut rings = Vec::new();
                for e in event.list() {
                    let t = self.type_id(&e).map_err(|m| err(o, format!("{path}.event"), m))?;
                    let mut names: Vec<String> = Vec::new();
                    let mut collect = |v: Option<&serde_json::Value>, f: &str| -> Result<(), CatalogueError> {
                        let raw = RawPred::parse(v).map_err(|m| err(o, format!("{path}.{f}"), m))?;
                        names.extend(raw.fields().map(str::to_string));
                        Ok(())
                    };
                    collect(all.as_ref(), "all")?;
                    for n in newest {
                        collect(Some(n), "newest")?;
                    }
                    collect(at_least.as_ref().map(|a| &a.when), "at_least.when")?;
                    collect(ratio.as_ref().map(|a| &a.when), "ratio.when")?;
                    names.extend(key.cloned());
                    names.extend(sum_at_most.as_ref().map(|s| s.field.clone()));
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    let ring = self.want_cache(t, &refs).map_err(|m| err(o, path.to_string(), m))?;
                    let cp = |v: Option<&serde_json::Value>, f: &str| self.cached_pred(t, v).map_err(|m| err(o, format!("{path}.{f}"), m));
                    rings.push(RecentRing {
                        ring,
                        key_pos: key.map(|k| self.types[t].cached_pos(k).unwrap()),
                        all: cp(all.as_ref(), "all")?,
                        newest: newest.iter().map(|n| cp(Some(n), "newest")).collect::<Result<_, _>>()?,
                        at_least: cp(at_least.as_ref().map(|a| &a.when), "at_least")?,
                        ratio: cp(ratio.as_ref().map(|a| &a.when), "ratio")?,
                        sum_pos: sum_at_most.as_ref().map(|s| self.types[t].cached_pos(&s.field).unwrap()),
                    });
                }
                if newest.len() > *last {
                    return Err(err(o, format!("{path}.newest"), "names more positions than `last`"));
                }
                let sum_limit = match sum_at_most {
                    None => None,
                    Some(s) => Some(match (s.per_item, &s.per_item_table) {
                        (Some(v), None) => SumLimit::PerItem(v),
                        (None, Some(t)) => {
                            if key.is_none() {
                                return Err(err(o, format!("{path}.sum_at_most.per_item_table"), "needs `same` or `in_key` to pick the table row"));
                            }
                            let table = self.tables.get(t).ok_or_else(|| err(o, format!("{path}.sum_at_most.per_item_table"), format!("no table `{t}`")))?;
                            let default = *table.get("default").ok_or_else(|| err(o, format!("{path}.sum_at_most.per_item_table"), format!("table `{t}` needs a `default` row")))?;
                            SumLimit::Table { values: table.clone(), default }
                        }
                        _ => return Err(err(o, format!("{path}.sum_at_most"), "give exactly one of per_item or per_item_table")),
                    }),
                };
                if let Some(r) = ratio
                    && !(r.at_least > 0.0 && r.at_least <= 1.0)
                {
                    return Err(err(o, format!("{path}.ratio.at_least"), "must be in (0, 1]"));
                }
                let min_items = min_items.unwrap_or(if same.is_some() || all.is_some() { *last } else { 1 }).max(newest.len()).max(1);
                Cond::Recent(Box::new(RecentCond {
                    rings,
                    last: *last,
                    same: same.is_some(),
                    in_key: in_key.is_some(),
                    min_items,
                    all: all.is_some(),
                    newest: newest.len(),
                    at_least: at_least.as_ref().map(|a| a.count),
                    ratio: ratio.as_ref().map(|r| r.at_least),
                    sum_at_most: sum_limit,
                    describe: format!("last {last} of {}", event.list().join("|")),
                }))
            }
            DocRule::All { of } | DocRule::Any { of } => {
                if of.is_empty() {
                    return Err(err(o, format!("{path}.of"), "needs at least one rule"));
                }
                let mut cs = Vec::new();
                for (i, c) in of.iter().enumerate() {
                    cs.push(self.rule(c, o, &format!("{path}.of[{i}]"))?);
                }
                if matches!(r, DocRule::All { .. }) { Cond::All(cs) } else { Cond::Any(cs) }
            }
            DocRule::Not { rule } => Cond::Not(Box::new(self.rule(rule, o, &format!("{path}.rule"))?)),
            DocRule::Badge { id } => Cond::Owns(*self.badge_ids.get(id).ok_or_else(|| err(o, format!("{path}.id"), format!("no badge `{id}`")))?),
            DocRule::Level { at_least } => Cond::Level(*at_least),
            DocRule::Xp { at_least } => Cond::Xp(*at_least),
            DocRule::Attribute { when } => {
                let raw = RawPred::parse(Some(when)).map_err(|m| err(o, format!("{path}.when"), m))?;
                Cond::Attribute(raw.tests)
            }
            DocRule::Tenure { days } => {
                if !(*days >= 0.0) {
                    return Err(err(o, format!("{path}.days"), "must not be negative"));
                }
                Cond::Tenure((*days * DAY as f64) as Millis)
            }
            DocRule::Awarded {} => Cond::Never,
        })
    }
}

/// Looks a value's per-item limit up in a sum table.
pub fn table_value(limit: &SumLimit, key: Option<&Value>) -> f64 {
    match limit {
        SumLimit::PerItem(v) => *v,
        SumLimit::Table { values, default } => key.and_then(|k| k.key()).and_then(|k| values.get(k.as_ref()).copied()).unwrap_or(*default),
    }
}
