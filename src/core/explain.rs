//! "Why didn't I get this badge?": how far a user is towards every badge they do not own, part
//! by part for composite rules. Pure, like the rest of the core; `now` is passed in.

use super::buckets::Bucket;
use super::catalogue::{Catalogue, Cmp, Cond};
use super::history::{recent_tally, window_total};
use super::predicate::words;
use super::state::{StatValue, UserState};
use super::value::{human_duration, Millis, Value};
use serde::Serialize;

/// One condition of a badge rule and whether it holds now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    /// What the condition asks, as a sentence generated from the rule, or the catalogue's own
    /// words for it (`describe`).
    pub describe: String,
    pub holds: bool,
    /// For measurable conditions: where the user is, and what is needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    /// The condition holds while `current` stays at or under `target` (a time limit), rather
    /// than once it reaches it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub at_most: bool,
    /// For conditions kept per key ("in one exercise"): the key these numbers are for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For `all`, `any`, `not`, windows and patterns: the conditions inside.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
}

/// How far a user is towards one badge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadgeProgress {
    /// The badge's id; absent for a hidden badge not yet earned, since an id such as
    /// `the-curious` would tell what it is as well as its name would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub badge: Option<String>,
    /// The badge's name, or `???` for a hidden badge not yet earned.
    pub name: String,
    pub hidden: bool,
    /// For repeatable and per-key badges: how many times it is owned already.
    pub owned: u32,
    /// The top condition, with its parts. A hidden badge not yet earned shows only `???`.
    pub rule: Part,
    /// Why it cannot be earned now even when the rule holds (not yet or no longer available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// Progress towards every badge the user can still earn: not owned, or repeatable. Retired
/// badges are left out, since nobody can earn them any more. A hidden badge the user has not
/// earned is listed as `???`, with nothing of its rule: what a player may be shown, since
/// hidden means hidden everywhere until earned.
pub fn progress(state: &UserState, cat: &Catalogue, now: Millis) -> Vec<BadgeProgress> {
    let mut out = Vec::new();
    for b in &cat.badges {
        let owned = state.badges.get(&b.id).map_or(0, |r| r.count);
        if b.retired || (owned > 0 && !b.repeatable()) {
            continue;
        }
        if b.hidden && owned == 0 {
            let rule = part("???".into(), false, None, None);
            out.push(BadgeProgress { badge: None, name: "???".into(), hidden: true, owned, rule, unavailable: None });
            continue;
        }
        let ex = Explainer { state, cat, now, words: &b.describes };
        let mut rule = ex.explain(&b.cond, None, "rule");
        if let Some(every) = b.repeat_every {
            // The next repetition is what is left to earn: after two awards every 100, the
            // third needs 300 in all, and the user's whole count counts towards it.
            let current = match &b.cond {
                Cond::Metric { stat, .. } => ex.value(*stat, None).1,
                _ => rule.current.unwrap_or(0.0).max(state.tenure_days(now)),
            };
            // Tenure is first earned at the rule's `days`, then every `every` days after it.
            let target = match &b.cond {
                Cond::Tenure(ms) => (*ms as f64 / 86_400_000.0).ceil() + every * owned as f64,
                _ => every * (owned as f64 + 1.0),
            };
            rule.target = Some(target);
            rule.current = Some(current.min(target));
            rule.holds = current >= target;
        }
        // A badge taken away counts anew from its revocation: what counted before is spent.
        if let Some(base) = state.revoked.get(&b.id).and_then(|r| r.base)
            && let Cond::Metric { stat, .. } = &b.cond
            && let Some(target) = rule.target
        {
            // From the stat itself: the part's `current` stops at its target.
            let again = (ex.value(*stat, None).1 - base).max(0.0);
            rule.current = Some(again.min(target));
            rule.holds = again >= target;
        }
        let unavailable = if b.available_from.is_some_and(|f| now < f) {
            Some("not available yet".to_string())
        } else if b.available_until.is_some_and(|u| now >= u) {
            Some("no longer available".to_string())
        } else {
            None
        };
        out.push(BadgeProgress { badge: Some(b.id.to_string()), name: b.name.clone(), hidden: b.hidden, owned, rule, unavailable });
    }
    out
}

fn part(describe: String, holds: bool, current: Option<f64>, target: Option<f64>) -> Part {
    Part { describe, holds, current, target, at_most: false, key: None, parts: Vec::new() }
}

/// Explains the conditions of one badge.
struct Explainer<'a> {
    state: &'a UserState,
    cat: &'a Catalogue,
    now: Millis,
    /// The badge's `describe` texts by path.
    words: &'a std::collections::BTreeMap<String, String>,
}

impl Explainer<'_> {
    /// A stat's value, and the key it is for: at the bound key when the stat is kept per that
    /// key's field, otherwise at its best key (what an "in one exercise" rule needs to reach).
    fn value(&self, stat: usize, bound: Option<(&str, &str)>) -> (Option<String>, f64) {
        let def = &self.cat.stats[stat];
        let Some((_, v)) = self.state.stats.get(stat) else { return (None, 0.0) };
        if let (super::catalogue::StatKind::Calendar { bucket, reading, .. }, StatValue::Calendar(b)) = (&def.kind, v) {
            // Read at the user's local day now: "this week" is the week the user is in.
            let day = super::calendar::local_day(self.now, self.state.tz(self.cat)).0;
            return (None, b.read(*bucket, *reading, day));
        }
        match (bound, &def.per) {
            (Some((per, key)), Some(p)) if p == per => (Some(key.to_string()), v.metric(Some(key))),
            (_, Some(_)) => match self.state.best_key(stat) {
                Some((k, x)) => (Some(k.to_string()), x),
                None => (None, 0.0),
            },
            _ => (None, v.metric(None)),
        }
    }

    /// Explains condition `c` at `path` (`rule`, `rule.of[0]`, …), with keyed stats read at
    /// `bound` when it names their field.
    fn explain(&self, c: &Cond, bound: Option<(&str, &str)>, path: &str) -> Part {
        let mut p = self.generate(c, bound, path);
        if let Some(w) = self.words.get(path) {
            p.describe = w.clone();
        }
        p
    }

    fn generate(&self, c: &Cond, bound: Option<(&str, &str)>, path: &str) -> Part {
        let (state, cat, now) = (self.state, self.cat, self.now);
        match c {
            Cond::Metric { stat, target } => {
                let (key, current) = self.value(*stat, bound);
                let mut p = part(cat.stats[*stat].describe.clone(), current >= *target, Some(current.min(*target)), Some(*target));
                p.key = key;
                // A calendar rule whose buckets must reach more than one action also shows how
                // far the bucket under way is: "today: 17 of 40".
                if let (super::catalogue::StatKind::Calendar { bucket, at_least, .. }, Some((_, StatValue::Calendar(b)))) = (&cat.stats[*stat].kind, state.stats.get(*stat))
                    && (*at_least != 1.0 || cat.stats[*stat].inputs.iter().any(|i| i.value.is_some()))
                {
                    let day = super::calendar::local_day(now, state.tz(cat)).0;
                    let so_far = b.total(bucket.of(day));
                    let name = match bucket {
                        Bucket::Day => "today",
                        Bucket::Week { .. } => "this week",
                        Bucket::Month => "this month",
                    };
                    p.parts.push(part(name.into(), so_far >= *at_least, Some(so_far.min(*at_least)), Some(*at_least)));
                }
                p
            }
            Cond::Ratio { of, to, cmp, value } => {
                let (a, b) = (self.value(*of, None).1, self.value(*to, None).1);
                let share = if b == 0.0 { 0.0 } else { a / b };
                let parts = vec![part(cat.stats[*of].describe.clone(), true, Some(a), None), part(cat.stats[*to].describe.clone(), true, Some(b), None)];
                let describe = format!("{}, as a share of {}", cat.stats[*of].describe, cat.stats[*to].describe);
                let at_most = matches!(cmp, Cmp::AtMost | Cmp::LessThan);
                Part { parts, at_most, ..part(describe, cmp.holds(a, b, *value), Some(share), Some(*value)) }
            }
            Cond::Keys { stat, each, target } => {
                let def = &cat.stats[*stat];
                let per = def.per.as_deref().unwrap_or("key");
                let inner = def.describe.strip_suffix(&format!(", in one {per}")).unwrap_or(&def.describe);
                let n = state.stats.get(*stat).map_or(0, |(_, v)| v.keys_reaching(*each, usize::MAX)) as f64;
                part(format!("different {per} where {inner} reaches {}", words(&Value::Num(*each))), n >= *target, Some(n.min(*target)), Some(*target))
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
                    .enumerate()
                    .map(|(i, r)| {
                        let total = if state.rings.len() == cat.rings.len() { window_total(state, end, *within, r) } else { 0.0 };
                        let mut p = part(r.describe.clone(), total >= r.target, Some(total.min(r.target)), Some(r.target));
                        if let Some(w) = self.words.get(&format!("{path}.require[{i}]")) {
                            p.describe = w.clone();
                        }
                        p
                    })
                    .collect();
                let holds = parts.iter().all(|p| p.holds);
                Part { parts, ..part(format!("within {}", human_duration(*within)), holds, None, None) }
            }
            Cond::Recent(r) => {
                if state.rings.len() != cat.rings.len() {
                    return part(r.describe.clone(), false, Some(0.0), Some(r.min_items as f64));
                }
                let t = recent_tally(state, r);
                let w = &r.words;
                let mut parts = vec![part("actions counted".into(), t.n >= r.min_items, Some(t.n.min(r.min_items) as f64), Some(r.min_items as f64))];
                if r.same {
                    parts.push(part(format!("all in one {}", w.key), t.same, None, None));
                }
                if r.all {
                    parts.push(part(format!("each where {}", w.all), t.all == t.n, Some(t.all as f64), Some(t.n as f64)));
                }
                for (i, ok) in t.newest.iter().enumerate() {
                    let which = if i == 0 { "the newest".to_string() } else { format!("the newest but {i}") };
                    parts.push(part(format!("{which} where {}", w.newest[i]), *ok, None, None));
                }
                if let Some(k) = r.at_least {
                    parts.push(part(format!("number where {}", w.at_least), t.hits >= k, Some(t.hits.min(k) as f64), Some(k as f64)));
                }
                if let Some(q) = r.ratio {
                    let share = if t.n == 0 { 0.0 } else { t.ratio_hits as f64 / t.n as f64 };
                    parts.push(part(format!("share where {}", w.ratio), t.n > 0 && t.ratio_hits as f64 >= q * t.n as f64, Some(share), Some(q)));
                }
                if r.sum_at_most.is_some() {
                    let mut p = part(format!("total {}", w.sum_field), t.sum <= t.limit, Some(t.sum), Some(t.limit));
                    p.at_most = true;
                    parts.push(p);
                }
                Part { parts, ..part(r.describe.clone(), t.holds(r), None, None) }
            }
            Cond::SameKey(k) => {
                let named = bound.filter(|(per, _)| *per == k.per);
                if named.is_some() {
                    return self.generate(&k.cond, named, path);
                }
                // The key that comes closest: one where everything holds, else the most parts
                // met, else the most of each target reached; the first key in order among equals.
                let mut best: Option<(Part, (bool, usize, f64))> = None;
                for key in state.keys_of(&k.stats) {
                    let mut p = self.generate(&k.cond, Some((&k.per, &key)), path);
                    p.key = Some(key.clone());
                    let score = (p.holds, p.parts.iter().filter(|x| x.holds).count(), reached(&p));
                    if best.as_ref().is_none_or(|(_, b)| score.0 > b.0 || (score.0 == b.0 && (score.1 > b.1 || (score.1 == b.1 && score.2 > b.2)))) {
                        best = Some((p, score));
                    }
                }
                best.map(|(p, _)| p).unwrap_or_else(|| self.generate(&k.cond, bound, path))
            }
            Cond::All(cs) | Cond::Any(cs) => {
                let parts: Vec<Part> = cs.iter().enumerate().map(|(i, c)| self.explain(c, bound, &format!("{path}.of[{i}]"))).collect();
                let all = matches!(c, Cond::All(_));
                let holds = if all { parts.iter().all(|p| p.holds) } else { parts.iter().any(|p| p.holds) };
                let met = parts.iter().filter(|p| p.holds).count() as f64;
                let describe = if all { "all of".to_string() } else { "any of".to_string() };
                let key = bound.map(|(_, k)| k.to_string());
                Part { key, parts, ..part(describe, holds, Some(met), Some(if all { cs.len() as f64 } else { 1.0 })) }
            }
            Cond::Not(inner) => {
                let p = self.explain(inner, bound, &format!("{path}.rule"));
                Part { parts: vec![p.clone()], ..part("not".into(), !p.holds, None, None) }
            }
            Cond::Owns(b) => {
                let def = &cat.badges[*b];
                // Naming a hidden badge the user lacks would give it away.
                let name = if def.hidden && !state.badges.contains_key(&def.id) { "a hidden badge".to_string() } else { format!("the badge {}", def.name) };
                part(format!("has {name}"), state.badges.contains_key(&def.id), None, None)
            }
            Cond::Level(l) => part(format!("level {l}"), state.level >= *l, Some(f64::from(state.level.min(*l))), Some(f64::from(*l))),
            Cond::Xp(x) => part(format!("{x} XP"), state.xp >= *x, Some(state.xp.min(*x) as f64), Some(*x as f64)),
            Cond::Attribute(tests) => {
                let parts: Vec<Part> = tests
                    .iter()
                    .map(|(k, op)| {
                        let v = state.attributes.get(k).unwrap_or(&Value::Null);
                        part(op.sentence(k), op.test(v), None, None)
                    })
                    .collect();
                let holds = parts.iter().all(|p| p.holds);
                let describe = tests.iter().map(|(k, op)| op.sentence(k)).collect::<Vec<_>>().join(" and ");
                if parts.len() == 1 {
                    return part(describe, holds, None, None);
                }
                Part { parts, ..part(describe, holds, None, None) }
            }
            Cond::Never => part("awarded by a leaderboard".into(), false, None, None),
            Cond::Tenure(ms) => {
                let since = state.member_since();
                let days = state.tenure_days(now);
                let need = (*ms as f64 / 86_400_000.0).ceil();
                part(format!("member for {need} days"), since.is_some_and(|s| now - s >= *ms), Some(days.min(need)), Some(need))
            }
        }
    }
}

/// How much of its targets a part has reached, from 0 to 1 (a part without numbers: 1 if it
/// holds), averaged over its parts when it has them.
fn reached(p: &Part) -> f64 {
    if !p.parts.is_empty() {
        return p.parts.iter().map(reached).sum::<f64>() / p.parts.len() as f64;
    }
    match (p.current, p.target) {
        (Some(c), Some(t)) if t > 0.0 && !p.at_most => (c / t).min(1.0),
        _ => f64::from(u8::from(p.holds)),
    }
}
