//! `apply`: one event against one user's state under one catalogue, producing effects. Pure and
//! deterministic: no IO, no clock (time arrives as `now` and `occurred_at`), no randomness.

use super::calendar::local_day;
use super::buckets::Reading;
use super::catalogue::{BadgeDef, Catalogue, Cond, EventTypeDef, FieldKind, StatKind, PROFILE_EVENT};
use super::effect::{DuplicateBy, Effect, Rejection, XpReason};
use super::history::{recent, window_reaches, Runs};
use super::stats::{lapse_waits, update_stat};
use super::state::{Action, BadgeRecord, StatValue, UserState};
use super::value::{same_str, stable_hash, Event, Millis, Value};
use super::xp::add_xp;

/// What `apply` does to the state for an event that is a duplicate by fingerprint: its id is
/// remembered among the recent ones. The shell logs such a duplicate as a record of its own
/// (`accolade.duplicate`), and every rebuild repeats it with this, so a rebuilt state knows
/// the id exactly as the live one did.
pub fn remember_id(state: &mut UserState, event_id: &str, cat: &Catalogue) {
    state.sync(cat);
    remember(state, stable_hash(event_id.as_bytes()), cat);
}

fn remember(state: &mut UserState, id_hash: u64, cat: &Catalogue) {
    state.recent_ids.push_back(id_hash);
    let mut evicted = 0;
    while state.recent_ids.len() > cat.settings.recent_ids {
        state.recent_ids.pop_front();
        evicted += 1;
    }
    state.derived.ids.added(&state.recent_ids, id_hash, evicted);
}

/// Applies `event` to `state`, returning what happened as effects. The state changes in place
/// when the first effect is `Accepted`. A rejected event or a repeated `event_id` leaves it
/// untouched; a new id whose fingerprint matches a counted action only has its id remembered.
///
/// `now` is the moment the server received the event; it bounds how late or early `occurred_at`
/// may be. Everything else (windows, streaks, days, tenure) uses `occurred_at`, so replaying a
/// stored stream with its stored receive times rebuilds the same state.
pub fn apply(state: &mut UserState, event: &Event, now: Millis, cat: &Catalogue) -> Vec<Effect> {
    let reject = |reason| vec![Effect::Rejected { event_id: event.event_id.clone(), reason }];
    if state.user_id.is_empty() && state.tenant_id.is_empty() {
        state.user_id = event.user_id.clone();
        state.tenant_id = event.tenant_id.clone();
        state.level = state.level.max(1);
    } else if !same_str(&state.user_id, &event.user_id) || !same_str(&state.tenant_id, &event.tenant_id) {
        return reject(Rejection::WrongUser);
    }
    state.sync(cat);
    let Some(t) = cat.type_of(&event.event_type) else {
        return reject(Rejection::UnknownEventType(event.event_type.clone()));
    };
    let ty = &cat.types[t];
    let fields = match validate(ty, &event.payload) {
        Ok(f) => f,
        Err(r) => return reject(r),
    };
    let at = event.occurred_at;
    if at < now.saturating_sub(cat.settings.late_bound) {
        return reject(Rejection::TooLate { bound_ms: cat.settings.late_bound });
    }
    if at > now.saturating_add(cat.settings.future_skew) {
        return reject(Rejection::InFuture { skew_ms: cat.settings.future_skew });
    }
    let profile = if ty.name == PROFILE_EVENT {
        match parse_profile(&event.payload) {
            Ok(p) => Some(p),
            Err(r) => return reject(r),
        }
    } else {
        None
    };
    let id_hash = stable_hash(event.event_id.as_bytes());
    if state.derived.ids.may_contain(&state.recent_ids, id_hash) && contains(&state.recent_ids, id_hash) {
        return vec![Effect::Duplicate { event_id: event.event_id.clone(), by: DuplicateBy::EventId }];
    }
    let fingerprint = ty.fingerprint.as_ref().map(|(pos, window)| {
        let mut text = ty.name.clone();
        for &p in pos {
            text.push('\u{1f}');
            text.push_str(&fields[p].to_string());
        }
        (stable_hash(text.as_bytes()), *window)
    });
    // The id is remembered even when the fingerprint says the action was already counted, so
    // that this id sent again later (after the fingerprint window) is still a duplicate. That
    // changes the state, so the shell logs such a duplicate too (see `remember_id`).
    remember(state, id_hash, cat);
    if let Some((h, window)) = fingerprint
        && state.fingerprints.iter().any(|&(x, when)| x == h && (when - at).abs() <= window)
    {
        return vec![Effect::Duplicate { event_id: event.event_id.clone(), by: DuplicateBy::Fingerprint }];
    }

    // From here on the event counts.
    let mut fx = Vec::with_capacity(8);
    fx.push(Effect::Accepted { event_id: event.event_id.clone() });
    // A badge whose `valid_for` ran out is taken before the event is judged, so the event
    // can earn it again. Time is the arrival, as for every check against the present.
    if state.derived.next_expiry.is_some_and(|t| now >= t) {
        super::revoke::expire_due(state, now, &event.event_id, cat, &mut fx);
    }
    if let Some((h, window)) = fingerprint {
        state.fingerprints.retain(|&(_, when)| when >= at - window);
        state.fingerprints.push_back((h, at));
        while state.fingerprints.len() > cat.settings.recent_ids {
            state.fingerprints.pop_front();
        }
    }
    // The time since the user's previous event, for comeback rules (none at her first).
    let away = state.first_seen.is_some().then(|| at - state.last_event_at);
    // A wait due before this event occurred lapsed before it, whatever the event is (an event
    // that would have closed it came too late).
    let mut lapsed = lapse_waits(state, at.min(now));
    state.events += 1;
    state.first_seen.get_or_insert(at);
    state.last_event_at = state.last_event_at.max(at);
    if let Some(p) = profile {
        apply_profile(state, p);
    }

    // Which stats this event moved, as a bit set over the event type's own stat list.
    let mut touched: u128 = 0;
    for (bit, &s) in ty.stats.iter().enumerate() {
        let def = &cat.stats[s];
        let day = matches!(def.kind, StatKind::Daily { .. } | StatKind::Calendar { .. }).then(|| day_of(state, at, cat));
        if update_stat(def, &mut state.stats[s].1, t, &fields, at, day, away) && bit < 128 {
            touched |= 1 << bit;
        }
    }
    if !cat.absence_badges.is_empty() {
        // Waits this event opened or closed, then the ones due by its arrival: judged at the
        // time of looking, as an expiry is.
        state.refresh_waits();
        lapsed |= lapse_waits(state, now);
    }
    if let Some(ring) = ty.cache {
        let vals = ty.cached_fields.iter().map(|&p| fields[p].clone()).collect();
        state.rings[ring].insert(Action { seq: state.events, at, vals }, cat.settings.cache_size);
    }

    for &x in &ty.xp_rules {
        let rule = &cat.xp_rules[x];
        if !rule.when.matches(&fields) {
            continue;
        }
        let mut amount = match rule.amount {
            super::catalogue::XpAmount::Fixed(a) => a,
            super::catalogue::XpAmount::Field { pos, multiplier } => (fields[pos].as_f64().unwrap_or(0.0).max(0.0) * multiplier).floor() as u64,
        };
        if let Some(m) = rule.max {
            amount = amount.min(m);
        }
        if let Some(cap) = rule.daily_cap {
            let day = day_of(state, at, cat);
            let used = match state.xp_days.get(&rule.id) {
                Some(&(d, used)) if d == day => used,
                Some(&(d, _)) if d > day => cap, // a late event for a day already closed gets no XP
                _ => 0,
            };
            amount = amount.min(cap.saturating_sub(used));
            if amount > 0 {
                match state.xp_days.get_mut(&rule.id) {
                    Some(slot) => *slot = (day, used + amount),
                    None => {
                        state.xp_days.insert(rule.id.to_string(), (day, used + amount));
                    }
                }
            }
        }
        if amount > 0 {
            add_xp(state, amount, XpReason::Rule(rule.id.clone()), cat, &mut fx);
        }
    }

    // Stats no longer change once badges are being evaluated, so each stat's value in this
    // context is looked up once (five streak badges share one streak stat, for example).
    // The buffer lives in the state between events so that no event allocates it.
    let mut memo = std::mem::take(&mut state.derived.memo);
    memo.clear();
    memo.resize(cat.stats.len(), std::cell::Cell::new(f64::NAN));
    // Calendar rules read their buckets at the event's local day.
    let day = if cat.calendar { day_of(state, at, cat) } else { 0 };
    let ctx = Ctx { cat, t, fields: &fields, at, day, memo: &memo, runs: Runs::default(), bound: None };
    for &i in &ty.checks {
        if !(cat.once[i] && state.derived.owned[i] > 0) {
            consider(state, &ctx, i, &event.event_id, &mut fx);
        }
    }
    // A wait that lapsed may earn its badge whatever this event's type.
    if lapsed {
        for &i in &cat.absence_badges {
            if !(cat.once[i] && state.derived.owned[i] > 0) {
                consider(state, &ctx, i, &event.event_id, &mut fx);
            }
        }
    }
    // Badges that depend on XP, level, other badges or the user are rechecked until nothing
    // more is awarded; each pass awards at least one badge or stops, so this ends.
    let mut again = true;
    while again {
        again = false;
        for &i in &cat.user_badges {
            if !(cat.once[i] && state.derived.owned[i] > 0) && consider(state, &ctx, i, &event.event_id, &mut fx) {
                again = true;
            }
        }
    }

    for p in &ty.progress {
        let owned = state.derived.owned[p.badge];
        // A hidden badge shows nothing until it is earned, progress included.
        if (p.bit >= 128 || touched & (1 << p.bit) != 0) && (owned == 0 || p.repeat_every.is_some() || p.again) && !(p.hidden && owned == 0) {
            let mut current = match p.each {
                Some(each) => state.stats[p.stat].1.keys_reaching(each, usize::MAX) as f64,
                None => metric(state, &ctx, p.stat),
            };
            // A badge taken away counts anew from its revocation (see `consider`).
            if !state.revoked.is_empty()
                && p.each.is_none()
                && let Some(base) = state.revoked.get(&cat.badges[p.badge].id).and_then(|r| r.base)
            {
                current = (current - base).max(0.0);
            }
            let target = match p.repeat_every {
                Some(every) => every * (owned as f64 + 1.0),
                None => p.target,
            };
            fx.push(Effect::Progress { badge: cat.badges[p.badge].id.clone(), current: current.min(target), target });
        }
    }
    state.derived.memo = memo;
    if !state.goals.is_empty() {
        super::goal::step(state, event, now, cat, &mut fx, apply);
    }
    if !cat.boards.is_empty() {
        let xp: u64 = fx.iter().map(|e| if let Effect::Xp { delta, .. } = e { *delta } else { 0 }).sum();
        super::board::score(state, cat, t, &fields, at, now, xp, &mut fx);
    }
    for g in &cat.community {
        if let Some(amount) = g.amount(t, &fields, now) {
            fx.push(Effect::Contributed { goal: g.key.clone(), amount });
        }
    }
    fx
}

/// Checks the payload against the event type's declaration, returning the values in declared
/// order (absent optional fields as null). Undeclared fields are allowed and ignored.
fn validate(ty: &EventTypeDef, payload: &[(String, Value)]) -> Result<Vec<Value>, Rejection> {
    let mut out = vec![Value::Null; ty.fields.len()];
    // Payloads usually list fields in declared (sorted) order, so the next declared field is
    // tried first and the search only runs when it is not the one.
    let mut next = 0;
    for (name, v) in payload {
        let i = match ty.fields.get(next) {
            Some(f) if same_str(&f.name, name) => Some(next),
            _ => ty.field(name),
        };
        if let Some(i) = i {
            out[i] = v.clone();
            next = i + 1;
        }
    }
    for (f, v) in ty.fields.iter().zip(&out) {
        let ok = match (f.kind, v) {
            (_, Value::Null) => {
                if f.optional {
                    continue;
                }
                return Err(Rejection::MissingField(f.name.clone()));
            }
            (FieldKind::Any, _) => true,
            (FieldKind::String, Value::Str(_)) | (FieldKind::Bool, Value::Bool(_)) => true,
            (FieldKind::Number, Value::Num(x)) => x.is_finite(),
            _ => false,
        };
        if !ok {
            let expected = match f.kind {
                FieldKind::String => "string",
                FieldKind::Number => "number",
                FieldKind::Bool => "bool",
                FieldKind::Any => "value",
            };
            return Err(Rejection::WrongType { field: f.name.clone(), expected: expected.into(), got: v.type_name().into() });
        }
    }
    Ok(out)
}

struct Profile {
    timezone: Option<String>,
    signed_up_at: Option<Millis>,
    attrs: Vec<(String, Value)>,
}

fn parse_profile(payload: &[(String, Value)]) -> Result<Profile, Rejection> {
    let mut p = Profile { timezone: None, signed_up_at: None, attrs: vec![] };
    for (k, v) in payload {
        let bad = |m: &str| Rejection::BadValue { field: k.clone(), message: m.into() };
        match (k.as_str(), v) {
            ("timezone", Value::Str(tz)) => {
                tz.parse::<chrono_tz::Tz>().map_err(|_| bad("not an IANA time zone such as Europe/Paris"))?;
                p.timezone = Some(tz.to_string());
            }
            ("signed_up_at", Value::Str(t)) => {
                p.signed_up_at = Some(chrono::DateTime::parse_from_rfc3339(t).map_err(|_| bad("not an RFC 3339 time"))?.timestamp_millis());
            }
            ("timezone" | "signed_up_at", _) => return Err(bad("must be a string")),
            (_, Value::Other) => return Err(bad("attributes must be strings, numbers or booleans")),
            _ => p.attrs.push((k.clone(), v.clone())),
        }
    }
    Ok(p)
}

fn apply_profile(state: &mut UserState, p: Profile) {
    if let Some(tz) = p.timezone {
        state.derived.tz = tz.parse().ok();
        state.derived.day = None;
        state.attributes.insert("timezone".into(), Value::Str(tz.as_str().into()));
        state.timezone = Some(tz);
    }
    if p.signed_up_at.is_some() {
        state.signed_up_at = p.signed_up_at;
    }
    for (k, v) in p.attrs {
        if v == Value::Null {
            state.attributes.remove(&k);
        } else {
            state.attributes.insert(k, v);
        }
    }
}

fn contains(ring: &std::collections::VecDeque<u64>, h: u64) -> bool {
    let (a, b) = ring.as_slices();
    a.contains(&h) || b.contains(&h)
}

/// The user's local day of `at`, cached across calls within the same day.
fn day_of(state: &mut UserState, at: Millis, cat: &Catalogue) -> i32 {
    if let Some((start, end, day)) = state.derived.day
        && at >= start
        && at < end
    {
        return day;
    }
    let (day, start, end) = local_day(at, state.tz(cat));
    state.derived.day = Some((start, end, day));
    day
}

/// A look at the user's due times with no event: the badges whose `valid_for` ran out by
/// `now` are taken, the waits due by then lapse, and the `absence` badges they earn are
/// awarded. What the shell logs as an `accolade.expire` record (when the user connects, or
/// the expiry sweep visits her) and every rebuild repeats with the record's receive time.
pub fn look(state: &mut UserState, now: Millis, event_id: &str, cat: &Catalogue) -> Vec<Effect> {
    state.sync(cat);
    let mut fx = Vec::new();
    super::revoke::expire_due(state, now, event_id, cat, &mut fx);
    if lapse_waits(state, now) {
        let mut memo = std::mem::take(&mut state.derived.memo);
        memo.clear();
        memo.resize(cat.stats.len(), std::cell::Cell::new(f64::NAN));
        let day = if cat.calendar { day_of(state, now, cat) } else { 0 };
        for &i in &cat.absence_badges {
            if cat.once[i] && state.derived.owned[i] > 0 {
                continue;
            }
            // An absence badge's rule is its one stat, read without an event: any type and
            // no fields do (the opening type is the one at hand).
            let Cond::Metric { stat, .. } = cat.badges[i].cond else { continue };
            let t = cat.stats[stat].inputs[0].event;
            let fields = vec![Value::Null; cat.types[t].fields.len()];
            let ctx = Ctx { cat, t, fields: &fields, at: now, day, memo: &memo, runs: Runs::default(), bound: None };
            consider(state, &ctx, i, event_id, &mut fx);
        }
        state.derived.memo = memo;
    }
    fx
}

/// The event an evaluation happens in: which type, its values, and when it occurred.
pub(crate) struct Ctx<'a> {
    pub cat: &'a Catalogue,
    pub t: usize,
    pub fields: &'a [Value],
    pub at: Millis,
    /// The user's local day of `at`, when the catalogue has calendar rules.
    pub day: i32,
    /// Stat values already looked up in this context (NaN: not yet).
    pub memo: &'a [std::cell::Cell<f64>],
    pub runs: Runs,
    /// While a `SameKey` condition tries one key: (the field, the key) keyed stats of that
    /// field are read at, whatever the event carries.
    pub bound: Option<(&'a str, &'a str)>,
}

/// A stat's value in this context: for a keyed stat, at the key the event carries in the field
/// of that name ("this exercise"); when the event has no such field, the best key's value.
pub(crate) fn metric(state: &UserState, ctx: &Ctx, stat: usize) -> f64 {
    let known = ctx.memo[stat].get();
    if !known.is_nan() {
        return known;
    }
    let def = &ctx.cat.stats[stat];
    if let (StatKind::Calendar { bucket, reading, .. }, StatValue::Calendar(b)) = (&def.kind, &state.stats[stat].1) {
        let v = b.read(*bucket, *reading, ctx.day);
        ctx.memo[stat].set(v);
        return v;
    }
    let v = match ctx.bound {
        Some((per, key)) if def.per.as_deref() == Some(per) => state.stats[stat].1.metric(Some(key)),
        _ => state.stats[stat].1.metric(def.key_pos[ctx.t].and_then(|p| ctx.fields[p].key()).as_deref()),
    };
    ctx.memo[stat].set(v);
    v
}

/// Evaluates badge `i` and awards it if due. Returns whether anything was awarded. The cheap
/// checks come first: most calls end at "already owned" or at a metric below its target, before
/// any map lookup.
fn consider(state: &mut UserState, ctx: &Ctx, i: usize, event_id: &str, fx: &mut Vec<Effect>) -> bool {
    let def: &BadgeDef = &ctx.cat.badges[i];
    let have = state.derived.owned[i];
    if have > 0 && !def.repeatable() {
        return false;
    }
    if def.available_from.is_some_and(|f| ctx.at < f) || def.available_until.is_some_and(|u| ctx.at >= u) {
        return false;
    }
    // A badge taken away before is earned again on new facts: a count or sum from its value
    // at the revocation (see `core::revoke`). One emptiness check for users with none.
    let base = if state.revoked.is_empty() { None } else { state.revoked.get(&def.id).and_then(|r| r.base) };
    let (times, key) = if let Some(every) = def.repeat_every {
        let due = match def.cond {
            Cond::Metric { stat, .. } => ((metric(state, ctx, stat) - base.unwrap_or(0.0)) / every).floor(),
            // Tenure is first earned at the rule's `days`, then every `every` days after it
            // (compile keeps `days` at most `every`, both whole days).
            Cond::Tenure(ms) => match state.member_since() {
                Some(s) if ctx.at - s >= ms => ((ctx.at - s - ms) / super::value::DAY) as f64 / every + 1.0,
                _ => 0.0,
            }
            .floor(),
            _ => return false,
        };
        // Clamped so that no sum, however large, wraps the award count.
        let due = due.min(f64::from(u32::MAX / 2)) as u32;
        if due <= have {
            return false;
        }
        (due - have, None)
    } else if let Some(held) = def.repeat {
        let now = holds(state, ctx, &def.cond);
        let before = state.stats[held].1.metric(None);
        let (after, earned) = repeat_marker(state, ctx, &def.cond, before, now, have);
        if before != after {
            state.stats[held].1 = StatValue::Num(after);
        }
        if !earned {
            return false;
        }
        (1, None)
    } else if def.per_key.is_some() {
        let Some(key) = def.per_key_pos[ctx.t].and_then(|p| ctx.fields[p].key()) else { return false };
        if !holds(state, ctx, &def.cond) {
            return false;
        }
        if have > 0 && state.badges.get(&def.id).is_some_and(|r| r.keys.iter().any(|x| x == key.as_ref())) {
            return false;
        }
        (1, Some(key.into_owned()))
    } else {
        let held = match (base, &def.cond) {
            (Some(b), Cond::Metric { stat, target }) => metric(state, ctx, *stat) - b >= *target,
            _ => holds(state, ctx, &def.cond),
        };
        if !held {
            return false;
        }
        (1, None)
    };
    // Per-key badges pay XP on the first award only, as Khan Academy's did.
    let xp = if def.per_key.is_some() && have > 0 { 0 } else { def.xp.saturating_mul(u64::from(times)) };
    let rec = state.badges.get_or_insert_with(&def.id, || BadgeRecord {
        awarded_at: ctx.at,
        count: 0,
        version: ctx.cat.version,
        keys: vec![],
        event_id: event_id.to_string(),
        expires_at: None,
    });
    rec.count += times;
    if let Some(k) = &key {
        rec.keys.push(k.clone());
    }
    let count = rec.count;
    // Held for `valid_for` from its latest award: earning it again renews it.
    if let Some(v) = def.valid_for {
        rec.expires_at = Some(ctx.at.saturating_add(v));
        state.refresh_expiry();
    }
    state.derived.owned[i] = count;
    fx.push(Effect::Unlock { badge: def.id.clone(), count, key, xp, at: ctx.at });
    if xp > 0 {
        add_xp(state, xp, XpReason::Badge(def.id.clone()), ctx.cat, fx);
    }
    true
}

/// Markers a `repeat` badge's `Held` stat keeps: never checked, held, did not hold; from
/// `NAMED` up, the occurrence last earned (or, for a daily streak, last seen) by number.
const NEVER: f64 = 0.0;
const HELD: f64 = 1.0;
const NOT_HELD: f64 = 2.0;
const NAMED: f64 = 3.0;

/// A `repeat` badge's marker after this check, and whether the check earns the badge again.
///
/// Earned when the rule holds in a new occurrence: not the streak, run or period it was last
/// earned for. Most rules only stop holding through an event, which checks the badge, so "held
/// at the last check" tells the occurrence apart. Calendar readings and daily streaks also stop
/// holding as days pass, with no event to see it: one action after a quiet spell makes them hold
/// again at once. For those the occurrence is named by a number (the period, the run's first
/// bucket, the streak's last day and length), and a new number earns it. A badge owned before it
/// became repeatable (nothing recorded yet) waits for a new occurrence.
fn repeat_marker(state: &UserState, ctx: &Ctx, cond: &Cond, before: f64, now: bool, have: u32) -> (f64, bool) {
    let first = before == NOT_HELD || (before == NEVER && have == 0);
    let Some((stat, kind)) = (match cond {
        Cond::Metric { stat, .. } => Some((*stat, &ctx.cat.stats[*stat].kind)),
        _ => None,
    }) else {
        return (if now { HELD } else { NOT_HELD }, now && first);
    };
    let named = |n: i32| NAMED + (f64::from(n) + 2_147_483_648.0);
    match (kind, &state.stats[stat].1) {
        (StatKind::Calendar { bucket, reading, .. }, StatValue::Calendar(b)) if !matches!(reading, Reading::Total) => {
            // Periods and runs are numbered in time order, so a late event that completes an
            // older week or run (a smaller number) earns nothing: the number kept is the newest.
            let n = match reading {
                Reading::InOne(period) => Some(period.of(ctx.day)),
                _ => b.run_start(*bucket, ctx.day),
            };
            match n {
                Some(n) if now => {
                    let m = named(n);
                    if before >= NAMED { (before.max(m), m > before) } else { (m, first) }
                }
                _ if before >= NAMED => (before, false),
                _ => (NOT_HELD, false),
            }
        }
        (StatKind::Daily { .. }, StatValue::Daily { last_day, len, .. }) => {
            // Every change of a daily streak comes with an event that checks this badge, so the
            // streak seen now is a new one when it is shorter than the one seen at the last
            // check, or as long but on another day (a streak of 1 restarted). The marker keeps
            // (last day, length, held) in one exact integer below 2^53.
            let len = (*len).min((1 << 20) - 1);
            let snap = (f64::from(*last_day) + 1_073_741_824.0) * 1_048_576.0 + f64::from(len);
            let m = NAMED + 2.0 * snap + f64::from(u8::from(now));
            if before < NAMED {
                return (m, now && first);
            }
            let prev = ((before - NAMED) / 2.0).floor();
            let prev_held = before - NAMED - 2.0 * prev == 1.0;
            let (prev_day, prev_len) = ((prev / 1_048_576.0).floor(), prev % 1_048_576.0);
            let restarted = f64::from(len) < prev_len || (f64::from(len) == prev_len && f64::from(*last_day) + 1_073_741_824.0 != prev_day);
            (m, now && (!prev_held || restarted))
        }
        _ => (if now { HELD } else { NOT_HELD }, now && first),
    }
}

/// Whether a compiled condition holds for this user in this context.
pub(crate) fn holds(state: &UserState, ctx: &Ctx, c: &Cond) -> bool {
    match c {
        Cond::Metric { stat, target } => metric(state, ctx, *stat) >= *target,
        Cond::Ratio { of, to, cmp, value } => cmp.holds(metric(state, ctx, *of), metric(state, ctx, *to), *value),
        Cond::Keys { stat, each, target } => {
            let need = *target as usize;
            state.stats[*stat].1.keys_reaching(*each, need) >= need
        }
        Cond::Sequence { stat } => matches!(state.stats[*stat].1, StatValue::Seq { done: true, .. }),
        Cond::Window { within, reqs } => {
            // The window ends at the user's latest action, so a late-reported event that fills a
            // gap is judged against the window it actually completes.
            let end = reqs
                .iter()
                .flat_map(|r| r.per_type.iter())
                .filter_map(|(ring, _, _)| state.rings[*ring].items.back().map(|a| a.at))
                .fold(ctx.at, Millis::max);
            // Counts first: they can be decided without reading every cached action (see
            // `window_reaches`), and a count that falls short spares the sums their full scan.
            // The order cannot change the answer: each requirement is a pure read.
            let counts = reqs.iter().filter(|r| r.counts());
            let sums = reqs.iter().filter(|r| !r.counts());
            counts.chain(sums).all(|r| window_reaches(state, end, *within, r))
        }
        Cond::Recent(r) => recent(state, r, Some(&ctx.runs)),
        Cond::All(cs) => cs.iter().all(|c| holds(state, ctx, c)),
        Cond::Any(cs) => cs.iter().any(|c| holds(state, ctx, c)),
        Cond::Not(c) => !holds(state, ctx, c),
        Cond::Owns(b) => state.derived.owned.get(*b).is_some_and(|&n| n > 0),
        Cond::Level(l) => state.level >= *l,
        Cond::Xp(x) => state.xp >= *x,
        Cond::Attribute(tests) => tests.iter().all(|(k, op)| op.test(state.attributes.get(k).unwrap_or(&Value::Null))),
        Cond::Tenure(ms) => state.member_since().is_some_and(|s| ctx.at - s >= *ms),
        Cond::Never => false,
        Cond::SameKey(k) => {
            // An event that names the key (or a key being tried) decides for that key alone.
            let named = ctx.bound.is_some_and(|(per, _)| per == k.per) || k.key_pos[ctx.t].is_some_and(|p| ctx.fields[p].key().is_some());
            if named {
                return holds(state, ctx, &k.cond);
            }
            // Otherwise some one key must satisfy every part: each key is tried with the memo
            // cleared. This happens only for badges rechecked after events without the field.
            // The keys are read in place, stat by stat (a key an earlier stat holds was tried
            // with it), and one memo serves every key: the cost is one lookup per key and part,
            // with no copy of the keys however many the user has.
            let mut memo: Vec<std::cell::Cell<f64>> = Vec::new();
            for (n, &s) in k.stats.iter().enumerate() {
                for key in state.stats[s].1.keys() {
                    if k.stats[..n].iter().any(|&e| state.stats[e].1.has_key(key)) {
                        continue;
                    }
                    if memo.is_empty() {
                        memo.resize(ctx.cat.stats.len(), std::cell::Cell::new(f64::NAN));
                    } else {
                        memo.iter().for_each(|c| c.set(f64::NAN));
                    }
                    let tried = Ctx { cat: ctx.cat, t: ctx.t, fields: ctx.fields, at: ctx.at, day: ctx.day, memo: &memo, runs: Runs::default(), bound: Some((&k.per, key)) };
                    if holds(state, &tried, &k.cond) {
                        return true;
                    }
                }
            }
            false
        }
    }
}

/// What a backfill brings into a live state: the badges of `badges` that `replayed` (the user's
/// stored events replayed from scratch under `cat`) owns and `live` does not, and the values
/// of the stats in `new_stats`, which `live` only started counting when the catalogue changed.
///
/// Awards carry the time of the backfill (`now`), their XP, and any level reached; badges
/// already owned are left alone, so running the same backfill twice awards nothing the second
/// time. Returns the effects, like `apply`.
pub fn backfill(live: &mut UserState, replayed: &UserState, badges: &[String], new_stats: &[u64], now: Millis, event_id: &str, cat: &Catalogue) -> Vec<Effect> {
    live.sync(cat);
    let mut fx = Vec::new();
    for (id, v) in &replayed.stats {
        if new_stats.contains(id)
            && let Some(slot) = live.stats.iter_mut().find(|(x, _)| x == id)
        {
            slot.1 = v.clone();
        }
    }
    // A complete replay saw every action the live state saw, so its caches are at least as
    // full, and hold the fields a new rule reads back.
    if replayed.events == live.events && replayed.rings.len() == live.rings.len() {
        live.rings = replayed.rings.clone();
    }
    for id in badges {
        let Some(&i) = cat.badge_index.get(id.as_str()) else { continue };
        let def = &cat.badges[i];
        // A badge taken away is earned again on new facts only, never by a backfill (the
        // replay from scratch does not know it was taken).
        if def.retired || live.badges.contains_key(id) || live.revoked.contains_key(id) {
            continue;
        }
        let Some(r) = replayed.badges.get(id) else { continue };
        let xp = if def.per_key.is_some() { def.xp } else { def.xp * u64::from(r.count) };
        let expires_at = def.valid_for.map(|v| now.saturating_add(v));
        live.badges.insert(id.clone(), BadgeRecord { awarded_at: now, count: r.count, version: cat.version, keys: r.keys.clone(), event_id: event_id.to_string(), expires_at });
        if expires_at.is_some() {
            live.refresh_expiry();
        }
        live.derived.owned[i] = r.count;
        fx.push(Effect::Unlock { badge: def.id.clone(), count: r.count, key: r.keys.last().cloned(), xp, at: now });
        if xp > 0 {
            add_xp(live, xp, XpReason::Badge(def.id.clone()), cat, &mut fx);
        }
    }
    fx
}
