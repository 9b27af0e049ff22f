//! "Why didn't I get this badge?": how far a user is towards every badge they do not own, part
//! by part for composite rules. Pure, like the rest of the core; `now` is passed in.

use super::catalogue::{Catalogue, Cond};
use super::history::{recent, window_total};
use super::state::{StatValue, UserState};
use super::value::{Millis, Value};
use serde::Serialize;

/// One condition of a badge rule and whether it holds now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    /// What the condition asks, in words.
    pub describe: String,
    pub holds: bool,
    /// For measurable conditions: where the user is, and what is needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    /// For `all`, `any` and `not`: the conditions inside.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

/// How far a user is towards one badge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadgeProgress {
    pub badge: String,
    pub name: String,
    pub hidden: bool,
    /// For repeatable and per-key badges: how many times it is owned already.
    pub owned: u32,
    /// The top condition, with its parts.
    pub rule: Part,
    /// Why it cannot be earned now even when the rule holds (not yet or no longer available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// Progress towards every badge the user can still earn: not owned, or repeatable. Retired
/// badges are left out, since nobody can earn them any more.
pub fn progress(state: &UserState, cat: &Catalogue, now: Millis) -> Vec<BadgeProgress> {
    let mut out = Vec::new();
    for b in &cat.badges {
        let owned = state.badges.get(&b.id).map_or(0, |r| r.count);
        let repeatable = b.repeat_every.is_some() || b.per_key.is_some();
        if b.retired || (owned > 0 && !repeatable) {
            continue;
        }
        let mut rule = explain(state, cat, &b.cond, now);
        if let (Some(every), Cond::Metric { .. }) = (b.repeat_every, &b.cond) {
            // The next repetition is what is left to earn.
            let target = every * (owned as f64 + 1.0);
            rule.target = Some(target);
            rule.holds = rule.current.is_some_and(|c| c >= target);
        }
        let unavailable = if b.available_from.is_some_and(|f| now < f) {
            Some("not available yet".to_string())
        } else if b.available_until.is_some_and(|u| now >= u) {
            Some("no longer available".to_string())
        } else {
            None
        };
        out.push(BadgeProgress { badge: b.id.to_string(), name: b.name.clone(), hidden: b.hidden, owned, rule, unavailable });
    }
    out
}

fn part(describe: String, holds: bool, current: Option<f64>, target: Option<f64>) -> Part {
    Part { describe, holds, current, target, parts: Vec::new() }
}

/// Explains one condition. Keyed stats report their best key, which is what "in one exercise"
/// rules need to reach.
fn explain(state: &UserState, cat: &Catalogue, c: &Cond, now: Millis) -> Part {
    match c {
        Cond::Metric { stat, target } => {
            let current = state.stats.get(*stat).map_or(0.0, |(_, v)| v.metric(None));
            let def = &cat.stats[*stat];
            part(def.describe.clone(), current >= *target, Some(current.min(*target)), Some(*target))
        }
        Cond::Sequence { stat } => {
            let (step, done) = match state.stats.get(*stat) {
                Some((_, StatValue::Seq { step, done, .. })) => (*step, *done),
                _ => (0, false),
            };
            let steps = match cat.stats[*stat].kind {
                super::catalogue::StatKind::Sequence { steps, .. } => steps as f64,
                _ => 1.0,
            };
            let current = if done { steps } else { f64::from(step) };
            part(cat.stats[*stat].describe.clone(), done, Some(current), Some(steps))
        }
        Cond::Window { within, reqs } => {
            let end = reqs
                .iter()
                .flat_map(|r| r.per_type.iter())
                .filter_map(|(ring, _, _)| state.rings.get(*ring).and_then(|r| r.items.back()).map(|a| a.at))
                .fold(now, Millis::max);
            let parts: Vec<Part> = reqs
                .iter()
                .map(|r| {
                    let total = if state.rings.len() == cat.rings.len() { window_total(state, end, *within, r) } else { 0.0 };
                    part(r.describe.clone(), total >= r.target, Some(total.min(r.target)), Some(r.target))
                })
                .collect();
            let holds = parts.iter().all(|p| p.holds);
            Part { describe: format!("within {}", human(*within)), holds, current: None, target: None, parts }
        }
        Cond::Recent(r) => {
            let holds = state.rings.len() == cat.rings.len() && recent(state, r, None);
            part(r.describe.clone(), holds, None, None)
        }
        Cond::All(cs) | Cond::Any(cs) => {
            let parts: Vec<Part> = cs.iter().map(|c| explain(state, cat, c, now)).collect();
            let all = matches!(c, Cond::All(_));
            let holds = if all { parts.iter().all(|p| p.holds) } else { parts.iter().any(|p| p.holds) };
            let met = parts.iter().filter(|p| p.holds).count() as f64;
            let describe = if all { "all of".to_string() } else { "any of".to_string() };
            Part { describe, holds, current: Some(met), target: Some(if all { parts.len() as f64 } else { 1.0 }), parts }
        }
        Cond::Not(inner) => {
            let p = explain(state, cat, inner, now);
            Part { describe: "not".into(), holds: !p.holds, current: None, target: None, parts: vec![p] }
        }
        Cond::Owns(b) => {
            let id = &cat.badges[*b].id;
            part(format!("owns badge `{id}`"), state.badges.contains_key(id), None, None)
        }
        Cond::Level(l) => part(format!("level {l}"), state.level >= *l, Some(f64::from(state.level.min(*l))), Some(f64::from(*l))),
        Cond::Xp(x) => part(format!("{x} XP"), state.xp >= *x, Some(state.xp.min(*x) as f64), Some(*x as f64)),
        Cond::Attribute(tests) => {
            let parts: Vec<Part> = tests
                .iter()
                .map(|(k, op)| {
                    let v = state.attributes.get(k).unwrap_or(&Value::Null);
                    part(format!("attribute `{k}` {op:?}"), op.test(v), None, None)
                })
                .collect();
            let holds = parts.iter().all(|p| p.holds);
            Part { describe: "attributes".into(), holds, current: None, target: None, parts }
        }
        Cond::Never => part("awarded by a leaderboard".into(), false, None, None),
        Cond::Tenure(ms) => {
            let since = state.signed_up_at.or(state.first_seen);
            let days = since.map_or(0.0, |s| ((now - s).max(0) as f64 / 86_400_000.0).floor());
            let need = (*ms as f64 / 86_400_000.0).ceil();
            part(format!("member for {need} days"), since.is_some_and(|s| now - s >= *ms), Some(days.min(need)), Some(need))
        }
    }
}

fn human(ms: Millis) -> String {
    match ms {
        m if m % 86_400_000 == 0 => format!("{} days", m / 86_400_000),
        m if m % 3_600_000 == 0 => format!("{} hours", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{} minutes", m / 60_000),
        m => format!("{} seconds", m / 1000),
    }
}
