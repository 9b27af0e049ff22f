//! The catalogue document as written, in TOML or JSON, before any checking beyond its shape.
//! Unknown keys are refused so a typo never silently disables a rule.
//!
//! Everything here is read by `compile` and `rules` only; the rest of the core sees the
//! compiled model.

use super::error::{err, CatalogueError};
use super::model::Tier;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The demo catalogue, modelled on Khan Academy's badges; compiled into the binary so the server
/// starts with no files.
pub const DEMO_CATALOGUE: &str = include_str!("../../../catalogues/khan.toml");

/// The notation a catalogue document is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

/// Deserializes a part of the document, reporting the exact path of a bad key.
pub(super) fn part<T: serde::de::DeserializeOwned>(v: serde_json::Value, owner: Option<&str>, prefix: &str) -> Result<T, CatalogueError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let mut path = e.path().to_string();
        // A key that is the empty string shows as an empty last segment: name it as written.
        if path.is_empty() || (path.len() > 1 && path.ends_with('.')) {
            path.push_str("\"\"");
        }
        let field = match (path.as_str(), prefix.is_empty()) {
            (".", true) => "document".to_string(),
            (".", false) => prefix.to_string(),
            (_, true) => path,
            (_, false) => format!("{prefix}.{path}"),
        };
        err(owner, field, e.into_inner().to_string())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Doc {
    pub(super) version: u64,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) settings: DocSettings,
    pub(super) event_types: BTreeMap<String, DocEventType>,
    pub(super) levels: DocLevels,
    #[serde(default)]
    pub(super) xp: Vec<serde_json::Value>,
    #[serde(default)]
    pub(super) tables: BTreeMap<String, BTreeMap<String, f64>>,
    #[serde(default)]
    pub(super) badges: Vec<serde_json::Value>,
    #[serde(default)]
    pub(super) leaderboards: Vec<serde_json::Value>,
    /// The team catalogue (docs/teams.md). Declared so that the document's shape admits it;
    /// `compile_teams` reads it from the document as parsed, since it compiles a catalogue of
    /// its own from the whole document.
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) teams: Option<serde_json::Value>,
    /// Community goals for the whole tenant (docs/teams.md, "Community goals").
    #[serde(default)]
    pub(super) community_goals: Vec<serde_json::Value>,
}

/// `[[community_goals]]`: a target for the whole tenant's events of one type before a deadline.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocCommunityGoal {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    pub(super) event: String,
    pub(super) when: Option<serde_json::Value>,
    /// Summed instead of counted.
    pub(super) field: Option<String>,
    pub(super) target: f64,
    pub(super) starts: Option<String>,
    pub(super) ends: String,
}

/// The `[teams]` section: the team catalogue's own parts and the membership limits.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocTeams {
    #[serde(default = "default_max_members")]
    pub(super) max_members: usize,
    #[serde(default = "default_max_teams")]
    pub(super) max_teams_per_user: usize,
    pub(super) levels: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) xp: Vec<serde_json::Value>,
    #[serde(default)]
    pub(super) badges: Vec<serde_json::Value>,
    #[serde(default)]
    pub(super) leaderboards: Vec<serde_json::Value>,
}

fn default_max_members() -> usize {
    1_000
}

fn default_max_teams() -> usize {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocBoard {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: String,
    /// `xp`, `count` or `sum`.
    pub(super) metric: String,
    pub(super) event: Option<String>,
    pub(super) when: Option<serde_json::Value>,
    pub(super) field: Option<String>,
    /// `all_time`, `daily`, `weekly`, `monthly` or `custom`.
    pub(super) period: String,
    pub(super) starts: Option<String>,
    pub(super) ends: Option<String>,
    pub(super) segment_by: Option<String>,
    pub(super) size: Option<usize>,
    pub(super) award: Option<DocAward>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocAward {
    pub(super) badge: String,
    pub(super) top: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct DocSettings {
    pub(super) cache_size: usize,
    pub(super) recent_ids: usize,
    pub(super) late_bound: String,
    pub(super) future_skew: String,
    pub(super) default_timezone: String,
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
pub(super) struct DocEventType {
    #[serde(default)]
    pub(super) client: bool,
    #[serde(default)]
    pub(super) fields: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) fingerprint: Vec<String>,
    pub(super) fingerprint_window: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocLevels {
    pub(super) thresholds: Option<Vec<u64>>,
    pub(super) base: Option<f64>,
    pub(super) exponent: Option<f64>,
    pub(super) max_level: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocXp {
    pub(super) id: String,
    pub(super) event: String,
    pub(super) when: Option<serde_json::Value>,
    pub(super) amount: Option<u64>,
    pub(super) amount_field: Option<String>,
    #[serde(default = "one")]
    pub(super) multiplier: f64,
    pub(super) max: Option<u64>,
    pub(super) daily_cap: Option<u64>,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocBadge {
    pub(super) id: String,
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    pub(super) tier: Tier,
    #[serde(default)]
    pub(super) xp: u64,
    #[serde(default)]
    pub(super) icon: String,
    #[serde(default)]
    pub(super) hidden: bool,
    pub(super) repeat_every: Option<f64>,
    /// Earned again each time the rule holds after it stopped holding (a new streak).
    #[serde(default)]
    pub(super) repeat: bool,
    pub(super) per_key: Option<String>,
    pub(super) available_from: Option<String>,
    pub(super) available_until: Option<String>,
    /// How long an award is held ("365d"); the badge must then be earned again.
    pub(super) valid_for: Option<String>,
    /// A retired badge is no longer awarded; users who own it keep it and still see it.
    #[serde(default)]
    pub(super) retired: bool,
    /// The catalogue's own words for the whole rule, shown in place of the generated sentence.
    pub(super) describe: Option<String>,
    pub(super) rule: DocRule,
    /// A team badge's gift to the team's members when the team earns it (docs/teams.md).
    pub(super) give: Option<DocGive>,
}

/// `give = { badge = "...", to = "members" | "contributors" }` on a team badge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DocGive {
    pub(super) badge: String,
    #[serde(default = "members")]
    pub(super) to: String,
}

fn members() -> String {
    "members".into()
}

/// Takes every `describe` out of a rule as written (the rule itself, the rules of `of` and
/// `rule`, and the requirements of a window), keyed by the path of the part it names, so that
/// the rule kinds need no field of their own for it. Each must be a non-empty text.
pub(super) fn take_describes(v: &mut serde_json::Value, path: &str, owner: Option<&str>, out: &mut BTreeMap<String, String>) -> Result<(), CatalogueError> {
    let Some(obj) = v.as_object_mut() else { return Ok(()) };
    let kind = obj.get("kind").and_then(|k| k.as_str()).map(str::to_string);
    let obj_kind = kind.as_deref();
    if let Some(d) = obj.remove("describe") {
        match d.as_str().map(str::trim) {
            Some(t) if !t.is_empty() && t.chars().count() <= 300 => {
                out.insert(path.to_string(), t.to_string());
            }
            _ => return Err(err(owner, format!("{path}.describe"), "must be a text of 1 to 300 characters")),
        }
    }
    for list in ["of", "require"] {
        if let Some(serde_json::Value::Array(items)) = obj.get_mut(list) {
            for (i, item) in items.iter_mut().enumerate() {
                take_describes(item, &format!("{path}.{list}[{i}]"), owner, out)?;
            }
        }
    }
    if let Some(inner) = obj.get_mut("rule") {
        // A `keys` rule is explained as one part (how many keys reach the inner target), so a
        // `describe` on its inner rule would never be shown: refused rather than dropped.
        if obj_kind == Some("keys") && inner.get("describe").is_some() {
            return Err(err(owner, format!("{path}.rule.describe"), "a `keys` rule is explained as one part: give `describe` on the `keys` rule itself"));
        }
        take_describes(inner, &format!("{path}.rule"), owner, out)?;
    }
    Ok(())
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Deserialize, Clone)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum DocRule {
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
    /// Totals per local day, week or month: "40 in one day", "on 5 days this week", "4 weeks
    /// in a row".
    Calendar {
        event: OneOrMany,
        when: Option<serde_json::Value>,
        /// `day`, `week` or `month`.
        bucket: String,
        /// A number field to total; without it, actions are counted.
        sum: Option<String>,
        /// What a bucket's total must reach to count (default 1).
        at_least: Option<f64>,
        /// How many buckets must reach it, ever (or in one week or month with `in_one`)...
        buckets: Option<f64>,
        /// ...or how many consecutive buckets.
        in_a_row: Option<f64>,
        /// `week` or `month`: count only the day buckets of the current week or month.
        in_one: Option<String>,
        /// `monday` (the default, as ISO weeks and leaderboards) or `sunday`.
        week_starts: Option<String>,
    },
    /// Compares two stats: `of` at least (or more than, at most, less than) `value` times `to`.
    Ratio {
        of: DocStat,
        to: DocStat,
        at_least: Option<f64>,
        more_than: Option<f64>,
        at_most: Option<f64>,
        less_than: Option<f64>,
    },
    /// Counts the keys for which a rule kept per key holds: `count` topics with `rule`.
    Keys { count: f64, rule: Box<DocRule> },
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
    /// Events after a time away: "no login for 14 days, then a login", `target` times.
    Comeback { event: OneOrMany, when: Option<serde_json::Value>, after: String, target: Option<f64> },
    /// Waits that ran out: each `event` opens a wait (one per value of `key`), an `until`
    /// event of the same key that occurred within `within` closes it, and a wait not closed
    /// in time counts, `target` times: "a question with no answer for 7 days".
    Absence {
        event: OneOrMany,
        when: Option<serde_json::Value>,
        until: OneOrMany,
        until_when: Option<serde_json::Value>,
        key: Option<String>,
        within: String,
        target: Option<f64>,
    },
    /// Never earned by events: given by a leaderboard's period award.
    Awarded {},
}

/// One side of a `ratio`: what is counted or totalled, without a target.
#[derive(Deserialize, Clone)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum DocStat {
    Count { event: OneOrMany, when: Option<serde_json::Value>, distinct: Option<String> },
    Sum { event: OneOrMany, when: Option<serde_json::Value>, field: String },
    Max { event: OneOrMany, when: Option<serde_json::Value>, field: String },
}

fn seven() -> u32 {
    7
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct DocWindowReq {
    pub(super) event: OneOrMany,
    pub(super) when: Option<serde_json::Value>,
    pub(super) count: Option<f64>,
    pub(super) sum: Option<String>,
    pub(super) at_least: Option<f64>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct DocAtLeast {
    pub(super) when: serde_json::Value,
    pub(super) count: usize,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct DocRatio {
    pub(super) when: serde_json::Value,
    pub(super) at_least: f64,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct DocSumAtMost {
    pub(super) field: String,
    pub(super) per_item: Option<f64>,
    pub(super) per_item_table: Option<String>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct DocStep {
    pub(super) event: String,
    pub(super) when: Option<serde_json::Value>,
}
