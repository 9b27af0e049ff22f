//! Compiling badge rules: the compiler's working state (`Builder`) and how each rule kind becomes
//! stat slots, reads from the last-N cache and a condition. Identical leaf rules share one stat
//! slot, found by a stable hash of the rule's canonical text.

use super::document::{DocRule, DocStat, OneOrMany};
use super::error::{err, CatalogueError};
use super::model::{Cmp, Cond, EventTypeDef, FieldKind, RecentCond, RecentRing, RecentWords, SameKey, StatDef, StatInput, StatKind, SumLimit, WindowReq};
use crate::core::buckets::{Bucket, Reading};
use crate::core::predicate::{Pred, RawPred};
use crate::core::value::{human_duration, parse_duration, stable_hash, Millis, DAY, HOUR};
use std::collections::{BTreeMap, HashMap};

/// The compiler's working state: the event types, stat slots and cache wants declared so far,
/// which every rule compiled adds to and later rules reuse.
pub(super) struct Builder {
    pub(super) types: Vec<EventTypeDef>,
    pub(super) type_index: HashMap<String, usize>,
    pub(super) stats: Vec<StatDef>,
    pub(super) stat_ids: HashMap<u64, usize>,
    /// per type: field names some window/recent rule reads back from the cache
    pub(super) cache_wants: Vec<Vec<String>>,
    pub(super) tables: BTreeMap<String, BTreeMap<String, f64>>,
    pub(super) badge_ids: HashMap<String, usize>,
}

/// A number as a sentence shows it: `40`, `2.5`.
fn fmt_num(x: f64) -> String {
    crate::core::predicate::words(&crate::core::value::Value::Num(x))
}

/// The event types a rule reads, in words: `problem.answered or video.watched`.
fn events_words(events: &[String]) -> String {
    match events.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// ` where correct is true`, or nothing for a rule without a predicate.
fn where_words(when: Option<&serde_json::Value>) -> String {
    let text = RawPred::parse(when).map(|p| p.sentence()).unwrap_or_default();
    if text.is_empty() { text } else { format!(" where {text}") }
}

/// `, in one exercise` for a rule kept per key.
fn per_words(per: Option<&String>) -> String {
    per.map(|k| format!(", in one {k}")).unwrap_or_default()
}

impl Builder {
    pub(super) fn ring_type(&self, ring: usize) -> usize {
        self.types.iter().position(|t| t.cache == Some(ring)).expect("ring has a type")
    }

    pub(super) fn type_id(&self, name: &str) -> Result<usize, String> {
        self.type_index.get(name).copied().ok_or_else(|| format!("unknown event type `{name}`"))
    }

    pub(super) fn pred_on_type(&self, t: usize, v: Option<&serde_json::Value>) -> Result<Pred, String> {
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
    pub(super) fn stat(&mut self, kind: StatKind, per: Option<&String>, inputs: Vec<StatInput>, canonical: String, describe: String) -> usize {
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
        // The value's field, whether it must be a number, and the rule's key that names it
        // (`field`, `distinct`, `sum`), which an error names.
        value: Option<(&str, bool, &str)>,
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
                Some((f, numeric, named)) => {
                    let p = ty.field(f).ok_or_else(|| err(o, format!("{path}.{named}"), format!("`{f}` is not a declared field of `{e}`")))?;
                    if numeric && ty.fields[p].kind != FieldKind::Number {
                        return Err(err(o, format!("{path}.{named}"), format!("`{f}` must be declared as a number")));
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

    pub(super) fn rule(&mut self, r: &DocRule, o: Option<&str>, path: &str) -> Result<Cond, CatalogueError> {
        let target_ok = |t: f64| -> Result<f64, CatalogueError> {
            if t > 0.0 && t.is_finite() { Ok(t) } else { Err(err(o, format!("{path}.target"), "must be a positive number")) }
        };
        Ok(match r {
            DocRule::Count { event, when, per, distinct, target } => {
                let target = target_ok(*target)?;
                let stat = self.count_stat(event, when.as_ref(), per.as_ref(), distinct.as_deref(), o, path)?;
                Cond::Metric { stat, target }
            }
            DocRule::Sum { event, when, field, per, target } | DocRule::Max { event, when, field, per, target } => {
                let target = target_ok(*target)?;
                let stat = self.value_stat(matches!(r, DocRule::Sum { .. }), event, when.as_ref(), field, per.as_ref(), o, path)?;
                Cond::Metric { stat, target }
            }
            DocRule::Ratio { of, to, at_least, more_than, at_most, less_than } => {
                let (cmp, value, name) = match (at_least, more_than, at_most, less_than) {
                    (Some(v), None, None, None) => (Cmp::AtLeast, *v, "at_least"),
                    (None, Some(v), None, None) => (Cmp::MoreThan, *v, "more_than"),
                    (None, None, Some(v), None) => (Cmp::AtMost, *v, "at_most"),
                    (None, None, None, Some(v)) => (Cmp::LessThan, *v, "less_than"),
                    _ => return Err(err(o, path.to_string(), "give exactly one of at_least, more_than, at_most or less_than")),
                };
                if !(value >= 0.0 && value.is_finite()) {
                    return Err(err(o, format!("{path}.{name}"), "must be a number of at least 0"));
                }
                let mut side = |d: &DocStat, p: &str| -> Result<usize, CatalogueError> {
                    let p = format!("{path}.{p}");
                    match d {
                        DocStat::Count { event, when, distinct } => self.count_stat(event, when.as_ref(), None, distinct.as_deref(), o, &p),
                        DocStat::Sum { event, when, field } => self.value_stat(true, event, when.as_ref(), field, None, o, &p),
                        DocStat::Max { event, when, field } => self.value_stat(false, event, when.as_ref(), field, None, o, &p),
                    }
                };
                let of = side(of, "of")?;
                let to = side(to, "to")?;
                Cond::Ratio { of, to, cmp, value }
            }
            DocRule::Streak { event, when, breaks_when, per, target } => {
                let target = target_ok(*target)?;
                let (inputs, canon) = self.inputs(&event.list(), when.as_ref(), breaks_when.as_ref(), per.as_deref(), None, o, path)?;
                let breaks = RawPred::parse(breaks_when.as_ref()).map(|p| p.sentence()).unwrap_or_default();
                let d = format!(
                    "{}{} in a row{}{}",
                    events_words(&event.list()),
                    where_words(when.as_ref()),
                    per_words(per.as_ref()),
                    if breaks.is_empty() { String::new() } else { format!(", broken only when {breaks}") }
                );
                let stat = self.stat(StatKind::Streak, per.as_ref(), inputs, format!("Streak|{canon}"), d);
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
                let d = format!("days in a row with {}{}", events_words(&event.list()), where_words(when.as_ref()));
                let stat = self.stat(kind.clone(), None, inputs, format!("{kind:?}|{canon}"), d);
                Cond::Metric { stat, target: *days as f64 }
            }
            DocRule::Calendar { event, when, bucket, sum, at_least, buckets, in_a_row, in_one, week_starts } => {
                let f = |name: &str| format!("{path}.{name}");
                let sunday = match week_starts.as_deref() {
                    None | Some("monday") => false,
                    Some("sunday") => true,
                    Some(other) => return Err(err(o, f("week_starts"), format!("unknown day `{other}` (use monday or sunday)"))),
                };
                let cut = |name: &str, v: &str| match v {
                    "day" => Ok(Bucket::Day),
                    "week" => Ok(Bucket::Week { sunday }),
                    "month" => Ok(Bucket::Month),
                    other => Err(err(o, f(name), format!("unknown bucket `{other}` (use day, week or month)"))),
                };
                let cut_by = cut("bucket", bucket)?;
                if week_starts.is_some() && cut_by != (Bucket::Week { sunday }) && in_one.as_deref() != Some("week") {
                    return Err(err(o, f("week_starts"), "only weeks have a first day: use it with bucket = \"week\" or in_one = \"week\""));
                }
                let at_least = at_least.unwrap_or(1.0);
                if !(at_least > 0.0 && at_least.is_finite()) {
                    return Err(err(o, f("at_least"), "must be a positive number"));
                }
                let whole = |name: &str, v: f64| {
                    if v >= 1.0 && v.fract() == 0.0 && v <= 100_000.0 { Ok(v) } else { Err(err(o, f(name), "must be a whole number from 1 to 100000")) }
                };
                let (reading, target) = match (buckets, in_a_row, in_one.as_deref()) {
                    (Some(n), None, None) => (Reading::Total, whole("buckets", *n)?),
                    (None, Some(n), None) => (Reading::InARow, whole("in_a_row", *n)?),
                    (Some(n), None, Some(period)) => {
                        if cut_by != Bucket::Day {
                            return Err(err(o, f("in_one"), "counts day buckets in one week or month: use it with bucket = \"day\""));
                        }
                        let p = match cut("in_one", period)? {
                            Bucket::Day => return Err(err(o, f("in_one"), "use week or month")),
                            p => p,
                        };
                        // More days than the period has could never be reached.
                        let most = if p == Bucket::Month { 31.0 } else { 7.0 };
                        if *n > most {
                            return Err(err(o, f("buckets"), format!("a {} has at most {most} days, so more could never be reached", p.noun())));
                        }
                        (Reading::InOne(p), whole("buckets", *n)?)
                    }
                    (None, Some(_), Some(_)) => return Err(err(o, f("in_one"), "goes with `buckets`, not with `in_a_row`")),
                    (Some(_), Some(_), _) => return Err(err(o, f("in_a_row"), "give either `buckets` or `in_a_row`, not both")),
                    (None, None, _) => return Err(err(o, path.to_string(), "give `buckets = N` (buckets that reach `at_least`) or `in_a_row = N` (consecutive ones)")),
                };
                if let Some(field) = sum {
                    for e in event.list() {
                        let t = self.type_id(&e).map_err(|m| err(o, f("event"), m))?;
                        match self.types[t].field(field) {
                            Some(p) if self.types[t].fields[p].kind == FieldKind::Number => {}
                            Some(_) => return Err(err(o, f("sum"), format!("`{field}` must be declared as a number"))),
                            None => return Err(err(o, f("sum"), format!("`{field}` is not a declared field of `{e}`"))),
                        }
                    }
                }
                let (inputs, canon) = self.inputs(&event.list(), when.as_ref(), None, None, sum.as_deref().map(|s| (s, true, "sum")), o, path)?;
                let kind = StatKind::Calendar { bucket: cut_by, at_least, reading };
                let (ev, wh) = (events_words(&event.list()), where_words(when.as_ref()));
                let need = match (sum, at_least) {
                    (Some(field), a) => format!("a total {field} of at least {} in {ev}{wh}", fmt_num(a)),
                    (None, a) if a == 1.0 => format!("{ev}{wh}"),
                    (None, a) => format!("at least {} {ev}{wh}", fmt_num(a)),
                };
                let noun = cut_by.noun();
                let d = match reading {
                    Reading::Total => format!("{noun}s with {need}"),
                    Reading::InARow => format!("{noun}s in a row with {need}"),
                    Reading::InOne(p) => format!("days this {} with {need}", p.noun()),
                };
                let stat = self.stat(kind.clone(), None, inputs, format!("{kind:?}|{canon}"), d);
                Cond::Metric { stat, target }
            }
            DocRule::Keys { count, rule } => {
                if !(*count >= 1.0 && count.fract() == 0.0 && *count <= 1_000_000.0) {
                    return Err(err(o, format!("{path}.count"), "must be a whole number from 1 to 1000000"));
                }
                let inner_path = format!("{path}.rule");
                match self.rule(rule, o, &inner_path)? {
                    Cond::Metric { stat, target } if self.stats[stat].per.is_some() && !matches!(self.stats[stat].kind, StatKind::Daily { .. } | StatKind::Sequence { .. } | StatKind::Calendar { .. }) => {
                        Cond::Keys { stat, each: target, target: *count }
                    }
                    _ => {
                        return Err(err(o, inner_path, "a `keys` rule counts the keys of a count, sum, max or streak kept per key: give that rule `per`"));
                    }
                }
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
                let words: Vec<String> = steps.iter().map(|st| format!("{}{}", st.event, where_words(st.when.as_ref()))).collect();
                let d = format!("{} in order within {}", words.join(", then "), human_duration(within));
                let stat = self.stat(StatKind::Sequence { steps: steps.len(), within }, None, inputs, canon, d);
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
                    let (ev, wh) = (events_words(&q.event.list()), where_words(q.when.as_ref()));
                    let describe = match &q.sum {
                        Some(f) => format!("total {f} of {ev}{wh}"),
                        None => format!("number of {ev}{wh}"),
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
                    describe: format!("the last {last} {}{}", events_words(&event.list()), match (same, in_key) {
                        (Some(k), _) => format!(", all in one {k}"),
                        (_, Some(k)) => format!(", those in this {k}"),
                        _ => String::new(),
                    }),
                    words: {
                        let w = |v: Option<&serde_json::Value>| RawPred::parse(v).map(|p| p.sentence()).unwrap_or_default();
                        RecentWords {
                            key: key.cloned().unwrap_or_default(),
                            all: w(all.as_ref()),
                            newest: newest.iter().map(|n| w(Some(n))).collect(),
                            at_least: w(at_least.as_ref().map(|a| &a.when)),
                            ratio: w(ratio.as_ref().map(|a| &a.when)),
                            sum_field: sum_at_most.as_ref().map(|s| s.field.clone()).unwrap_or_default(),
                        }
                    },
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
                if matches!(r, DocRule::All { .. }) { self.same_key(Cond::All(cs)) } else { Cond::Any(cs) }
            }
            DocRule::Not { rule } => Cond::Not(Box::new(self.rule(rule, o, &format!("{path}.rule"))?)),
            DocRule::Badge { id } => Cond::Owns(*self.badge_ids.get(id).ok_or_else(|| err(o, format!("{path}.id"), format!("no badge `{id}`")))?),
            DocRule::Level { at_least } => Cond::Level(*at_least),
            DocRule::Xp { at_least } => Cond::Xp(*at_least),
            DocRule::Attribute { when } => {
                let raw = RawPred::parse(Some(when)).map_err(|m| err(o, format!("{path}.when"), m))?;
                if !raw.cross.is_empty() {
                    return Err(err(o, format!("{path}.when"), "user attributes compare with values, not with fields"));
                }
                Cond::Attribute(raw.tests)
            }
            DocRule::Tenure { days } => {
                if !(*days >= 0.0) {
                    return Err(err(o, format!("{path}.days"), "must not be negative"));
                }
                Cond::Tenure((*days * DAY as f64) as Millis)
            }
            DocRule::Comeback { event, when, after, target } => {
                let target = target_ok(target.unwrap_or(1.0))?;
                let after = parse_duration(after).map_err(|m| err(o, format!("{path}.after"), m))?;
                if after <= 0 {
                    return Err(err(o, format!("{path}.after"), "must be longer than nothing"));
                }
                let (inputs, canon) = self.inputs(&event.list(), when.as_ref(), None, None, None, o, path)?;
                let d = format!("times {}{} came after {} away", events_words(&event.list()), where_words(when.as_ref()), human_duration(after));
                let stat = self.stat(StatKind::Comeback { after }, None, inputs, format!("Comeback|{after}|{canon}"), d);
                Cond::Metric { stat, target }
            }
            DocRule::Absence { event, when, until, until_when, key, within, target } => {
                // A wait lapses at its due time, with no event to judge the rest of a rule by:
                // only a badge's whole rule can be an absence.
                if path != "rule" {
                    return Err(err(o, path.to_string(), "an `absence` rule must be the badge's whole rule: it can be earned with no event, when a wait runs out, where no other part could be judged"));
                }
                let target = target_ok(target.unwrap_or(1.0))?;
                let within = parse_duration(within).map_err(|m| err(o, format!("{path}.within"), m))?;
                if within <= 0 {
                    return Err(err(o, format!("{path}.within"), "must be longer than nothing"));
                }
                let key_of = |events: &[String], name: &str| -> Result<Vec<Option<usize>>, CatalogueError> {
                    let Some(k) = key else { return Ok(vec![None; events.len()]) };
                    events
                        .iter()
                        .map(|e| {
                            let t = self.type_id(e).map_err(|m| err(o, format!("{path}.{name}"), m))?;
                            self.types[t].field(k).map(Some).ok_or_else(|| err(o, format!("{path}.key"), format!("`{k}` is not a declared field of `{e}`")))
                        })
                        .collect()
                };
                let (opens, closes) = (event.list(), until.list());
                let (open_keys, close_keys) = (key_of(&opens, "event")?, key_of(&closes, "until")?);
                let (mut inputs, canon) = self.inputs(&opens, when.as_ref(), None, None, None, o, path)?;
                for (input, k) in inputs.iter_mut().zip(open_keys) {
                    input.key = k;
                }
                let until_path = format!("{path}.until");
                let (mut shut, until_canon) = self
                    .inputs(&closes, until_when.as_ref(), None, None, None, o, &until_path)
                    .map_err(|mut e| {
                        // Named as the rule writes them: `until` and `until_when`.
                        if e.field == format!("{until_path}.event") {
                            e.field = until_path.clone();
                        } else if e.field == format!("{until_path}.when") {
                            e.field = format!("{path}.until_when");
                        }
                        e
                    })?;
                for (input, k) in shut.iter_mut().zip(close_keys) {
                    (input.key, input.step) = (k, 1);
                }
                inputs.extend(shut);
                let per = key.as_ref().map(|k| format!(" for the same {k}")).unwrap_or_default();
                let d = format!(
                    "times {}{} had no {}{}{per} within {}",
                    events_words(&opens),
                    where_words(when.as_ref()),
                    events_words(&closes),
                    where_words(until_when.as_ref()),
                    human_duration(within)
                );
                let stat = self.stat(StatKind::Absence { within }, None, inputs, format!("Absence|{within}|{key:?}|{canon}|{until_canon}"), d);
                Cond::Metric { stat, target }
            }
            DocRule::Awarded {} => Cond::Never,
        })
    }

    /// The stat of a count (or, with `distinct`, a count of different values).
    fn count_stat(&mut self, event: &OneOrMany, when: Option<&serde_json::Value>, per: Option<&String>, distinct: Option<&str>, o: Option<&str>, path: &str) -> Result<usize, CatalogueError> {
        let (inputs, canon) = self.inputs(&event.list(), when, None, per.map(String::as_str), distinct.map(|d| (d, false, "distinct")), o, path)?;
        let kind = if distinct.is_some() { StatKind::Distinct } else { StatKind::Count };
        let (ev, wh, pk) = (events_words(&event.list()), where_words(when), per_words(per));
        let d = match distinct {
            Some(f) => format!("different {f} in {ev}{wh}{pk}"),
            None => format!("number of {ev}{wh}{pk}"),
        };
        Ok(self.stat(kind.clone(), per, inputs, format!("{kind:?}|{canon}"), d))
    }

    /// The stat of a sum (`sum`) or maximum of a number field.
    #[allow(clippy::too_many_arguments)]
    fn value_stat(&mut self, sum: bool, event: &OneOrMany, when: Option<&serde_json::Value>, field: &str, per: Option<&String>, o: Option<&str>, path: &str) -> Result<usize, CatalogueError> {
        let kind = if sum { StatKind::Sum } else { StatKind::Max };
        let (inputs, canon) = self.inputs(&event.list(), when, None, per.map(String::as_str), Some((field, true, "field")), o, path)?;
        let (ev, wh, pk) = (events_words(&event.list()), where_words(when), per_words(per));
        let d = format!("{} {field} of {ev}{wh}{pk}", if sum { "total" } else { "highest" });
        Ok(self.stat(kind.clone(), per, inputs, format!("{kind:?}|{canon}"), d))
    }

    /// Wraps an `all` in `Cond::SameKey` for every field that two or more of its keyed stats
    /// are kept per, so that they must hold for one key together.
    fn same_key(&self, all: Cond) -> Cond {
        fn keyed(c: &Cond, stats: &[StatDef], out: &mut BTreeMap<String, Vec<usize>>) {
            match c {
                Cond::Metric { stat, .. } => {
                    if let Some(per) = &stats[*stat].per {
                        let v = out.entry(per.clone()).or_default();
                        if !v.contains(stat) {
                            v.push(*stat);
                        }
                    }
                }
                Cond::All(cs) | Cond::Any(cs) => cs.iter().for_each(|c| keyed(c, stats, out)),
                Cond::Not(c) => keyed(c, stats, out),
                Cond::SameKey(k) => keyed(&k.cond, stats, out),
                _ => {}
            }
        }
        let mut by_field = BTreeMap::new();
        keyed(&all, &self.stats, &mut by_field);
        let mut cond = all;
        for (per, stats) in by_field {
            if stats.len() >= 2 {
                let key_pos = self.types.iter().map(|t| t.field(&per)).collect();
                cond = Cond::SameKey(Box::new(SameKey { per, key_pos, stats, cond }));
            }
        }
        cond
    }
}
