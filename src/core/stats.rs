//! How one event moves one stat (`update_stat`): counts, sums, streaks, calendar buckets,
//! sequences, comebacks and the waits of `absence` rules, and those waits lapsing when their
//! due time has passed. Pure, like the rest of the core; `engine` decides which stats an event
//! reaches and what their values earn.

use super::catalogue::{StatDef, StatKind};
use super::state::{StatValue, UserState};
use super::value::{Millis, Value};

/// Updates one stat for an event of type `t`; returns whether its value may have changed.
/// `away` is the time since the user's previous event (`None` at her first).
pub(super) fn update_stat(def: &StatDef, val: &mut StatValue, t: usize, fields: &[Value], at: Millis, day: Option<i32>, away: Option<Millis>) -> bool {
    let mut changed = false;
    for input in def.inputs.iter().filter(|i| i.event == t) {
        let matched = input.when.matches(fields);
        let key = input.key.and_then(|k| fields[k].key());
        if input.key.is_some() && key.is_none() {
            continue;
        }
        match &def.kind {
            StatKind::Count if matched => changed |= bump(&mut *val, key.as_deref(), |v| v + 1.0),
            StatKind::Sum if matched => {
                if let Some(x) = input.value.and_then(|p| fields[p].as_f64()) {
                    changed |= bump(&mut *val, key.as_deref(), |v| v + x);
                }
            }
            StatKind::Max if matched => {
                if let Some(x) = input.value.and_then(|p| fields[p].as_f64()) {
                    changed |= bump(&mut *val, key.as_deref(), |v| v.max(x));
                }
            }
            StatKind::Distinct if matched => {
                if let Some(item) = input.value.and_then(|p| fields[p].key()) {
                    // Look before inserting: most values were seen before, and owning the key
                    // would allocate for nothing.
                    let set = match (&mut *val, key) {
                        (StatValue::Set(s), _) => Some(s),
                        (StatValue::KeyedSet(m), Some(k)) => Some(m.get_or_insert_with(&k, Default::default)),
                        _ => None,
                    };
                    if let Some(set) = set
                        && !set.contains(item.as_ref())
                    {
                        changed |= set.insert(item.into_owned());
                    }
                }
            }
            StatKind::Streak => {
                if matched {
                    changed |= bump(&mut *val, key.as_deref(), |v| v + 1.0);
                } else if input.breaks.as_ref().is_none_or(|b| b.matches(fields)) {
                    changed |= bump(&mut *val, key.as_deref(), |_| 0.0);
                }
            }
            StatKind::Daily { grace, freezes: max_freezes, freeze_every } if matched => {
                let day = day.expect("daily stats get a day");
                if let StatValue::Daily { last_at, last_day, len, freezes } = &mut *val {
                    if *len == 0 {
                        (*len, *last_day, *last_at) = (1, day, at);
                        changed = true;
                    } else if day <= *last_day {
                        // Same day, or a late event for a day already counted or passed:
                        // calendar streaks only move forward.
                        *last_at = (*last_at).max(at);
                    } else {
                        let missed = (day - *last_day - 1) as u32;
                        if missed == 0 || at - *last_at <= *grace {
                            *len += 1;
                        } else if *freezes >= missed {
                            *freezes -= missed;
                            *len += 1;
                        } else {
                            *len = 1;
                            *freezes = 0;
                        }
                        if *max_freezes > 0 && *len % *freeze_every == 0 {
                            *freezes = (*freezes + 1).min(*max_freezes);
                        }
                        (*last_day, *last_at) = (day, at);
                        changed = true;
                    }
                }
            }
            StatKind::Calendar { bucket, at_least, .. } if matched => {
                let x = match input.value {
                    Some(p) => fields[p].as_f64().unwrap_or(0.0),
                    None => 1.0,
                };
                if let StatValue::Calendar(b) = &mut *val {
                    changed |= b.add(bucket.of(day.expect("calendar stats get a day")), x, *at_least);
                }
            }
            StatKind::Comeback { after } if matched => {
                if away.is_some_and(|a| a >= *after) {
                    changed |= bump(&mut *val, None, |v| v + 1.0);
                }
            }
            StatKind::Absence { within } if matched => {
                if let StatValue::Waits { open, .. } = &mut *val {
                    let key = key.as_deref().unwrap_or_default();
                    if input.step == 0 {
                        // A wait already open for this key stays as it was: the first
                        // question asked is the one waiting longest for its answer.
                        if open.len() < MAX_WAITS && !open.iter().any(|(k, _)| k == key) {
                            open.push((key.to_string(), at.saturating_add(*within)));
                            changed = true;
                        }
                    } else if let Some(i) = open.iter().position(|(k, due)| k == key && at < *due) {
                        open.remove(i);
                        changed = true;
                    }
                }
            }
            StatKind::Sequence { steps, within } if matched => {
                if let StatValue::Seq { step, started_at, done } = &mut *val {
                    if *done {
                        continue;
                    }
                    if *step > 0 && at - *started_at > *within {
                        *step = 0;
                    }
                    if input.step == *step as usize && (*step == 0 || at >= *started_at) {
                        if *step == 0 {
                            *started_at = at;
                        }
                        *step += 1;
                        *done = *step as usize == *steps;
                        changed = true;
                    } else if input.step == 0 && *step > 0 && at - *started_at > *within {
                        (*step, *started_at) = (1, at);
                        changed = true;
                    }
                }
            }
            _ => {}
        }
    }
    changed
}

/// Waits one `absence` stat keeps open at most; an opening event beyond them opens none (a
/// user with a thousand questions unanswered is not told of the thousand-and-first).
pub const MAX_WAITS: usize = 1_000;

/// Lapses every wait due by `now` (each counts once); returns whether any did. One comparison
/// when none is due.
pub(super) fn lapse_waits(state: &mut UserState, now: Millis) -> bool {
    if state.derived.next_wait.is_none_or(|t| now < t) {
        return false;
    }
    let mut any = false;
    for (_, v) in state.stats.iter_mut() {
        if let StatValue::Waits { open, lapsed } = v {
            let before = open.len();
            open.retain(|&(_, due)| due > now);
            let n = (before - open.len()) as u32;
            if n > 0 {
                *lapsed = lapsed.saturating_add(n);
                any = true;
            }
        }
    }
    state.refresh_waits();
    any
}

fn bump(val: &mut StatValue, key: Option<&str>, f: impl Fn(f64) -> f64) -> bool {
    let slot = match (val, key) {
        (StatValue::Num(v), _) => v,
        (StatValue::Keyed(m), Some(k)) => m.get_or_insert_with(k, || 0.0),
        _ => return false,
    };
    let new = f(*slot);
    let changed = new != *slot;
    *slot = new;
    changed
}
