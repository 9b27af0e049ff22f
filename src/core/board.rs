//! Leaderboards as the rule core sees them: what one event adds to a user's score on each
//! board, and the award for a top rank when a period closes. Which period an instant falls in
//! (in the tenant's time zone) is calendar arithmetic, in `calendar`. Pure: the ranking itself
//! and the closing clock live in the shell.

use super::catalogue::{BoardMetric, Catalogue};
use super::effect::{Effect, XpReason};
use super::state::{BadgeRecord, BoardScore, UserState};
use super::value::{Millis, Value};
use super::xp::add_xp;

// The periods are re-exported here, where they were first defined, so `core::board::Period`
// keeps naming them.
pub use super::calendar::{Period, Span};

/// What one accepted event adds to the user's boards. An event counts on a board when it
/// happened in the period that is current when it arrives (`now`): a late event for a period
/// that has ended adds nothing, so a closed period's standings never change. A user whose
/// segment attribute is missing is not ranked on a segmented board.
///
/// Called by `apply` with the XP the event earned (rules and the badges it unlocked).
pub(crate) fn score(state: &mut UserState, cat: &Catalogue, t: usize, fields: &[Value], at: Millis, now: Millis, xp: u64, fx: &mut Vec<Effect>) {
    for def in &cat.boards {
        let amount = match &def.metric {
            BoardMetric::Xp => xp as f64,
            BoardMetric::Count { event, when } => f64::from(u8::from(*event == t && when.matches(fields))),
            BoardMetric::Sum { event, when, field } => {
                if *event == t && when.matches(fields) {
                    fields[*field].as_f64().unwrap_or(0.0)
                } else {
                    0.0
                }
            }
        };
        if !(amount > 0.0) {
            continue;
        }
        let segment = match &def.segment_by {
            None => None,
            Some(attr) => match state.attributes.get(attr) {
                Some(v) => match v.key() {
                    // NUL separates the parts of storage keys, so it never reaches one.
                    Some(k) => Some(k.replace('\0', "")),
                    None => continue,
                },
                None => continue,
            },
        };
        // The user's entry remembers its period's bounds, so most events need no calendar math
        // and no allocation.
        let current = state.boards.get(&def.id).is_some_and(|b| now >= b.start && now < b.end);
        if !current {
            let Some(span) = def.period.span(cat.settings.default_timezone, now) else { continue };
            // A new period (or the first): the score starts from zero.
            let fresh = BoardScore { period: span.label.into(), start: span.start, end: span.end, segment: segment.clone(), score: 0.0, reached: now, previous: None };
            match state.boards.get_mut(&def.id) {
                Some(e) => {
                    let mut old = std::mem::replace(e, fresh);
                    old.previous = None;
                    e.previous = Some(Box::new(old));
                }
                None => {
                    state.boards.insert(def.id.to_string(), fresh);
                }
            }
        }
        let entry = state.boards.get_mut(&def.id).expect("just ensured");
        if at < entry.start || at >= entry.end {
            continue;
        }
        // A user whose attribute changed mid-period moves to the new league with their score.
        let moved_from = if entry.segment != segment { std::mem::replace(&mut entry.segment, segment) } else { None };
        entry.score += amount;
        entry.reached = now;
        fx.push(Effect::Score {
            board: def.id.clone(),
            period: entry.period.clone(),
            end: entry.end,
            segment: entry.segment.clone(),
            score: entry.score,
            reached: now,
            moved_from,
        });
    }
}

/// The award for finishing at `rank` on a closed period of `board`: the board's badge, once per
/// period (the period label is the award's key), if the rank is within the board's top N and
/// the badge is not retired. Returns the effects, like `apply` (empty when nothing is due, for
/// example because this award was already made).
pub fn award_rank(state: &mut UserState, board: &str, period: &str, rank: usize, now: Millis, event_id: &str, cat: &Catalogue) -> Vec<Effect> {
    state.sync(cat);
    let fx = Vec::new();
    let Some(def) = cat.boards.iter().find(|b| &*b.id == board) else { return fx };
    let Some((i, top)) = def.award else { return fx };
    let badge = &cat.badges[i];
    if badge.retired || rank == 0 || rank > top {
        return fx;
    }
    grant(state, i, period, period, now, event_id, cat)
}

/// A badge a member's team gives her when it earns one of its own (`Give`, docs/teams.md):
/// `badge`, of kind `awarded` in her catalogue, once per `key` (the id of the record that
/// tells her), its unlock naming `team`. Effects as `apply`'s; empty when nothing is due (the
/// badge is gone from her catalogue, retired, or given under this key already).
pub fn give(state: &mut UserState, badge: &str, team: &str, key: &str, now: Millis, event_id: &str, cat: &Catalogue) -> Vec<Effect> {
    state.sync(cat);
    let Some(i) = cat.badges.iter().position(|b| &*b.id == badge) else { return Vec::new() };
    if cat.badges[i].retired || !matches!(cat.badges[i].cond, crate::core::catalogue::Cond::Never) {
        return Vec::new();
    }
    grant(state, i, key, team, now, event_id, cat)
}

/// Awards badge `i` from outside the event stream, once per `key`; its unlock shows `shown` as
/// its key (the period, the team).
fn grant(state: &mut UserState, i: usize, key: &str, shown: &str, now: Millis, event_id: &str, cat: &Catalogue) -> Vec<Effect> {
    let mut fx = Vec::new();
    let badge = &cat.badges[i];
    if state.badges.get(&badge.id).is_some_and(|r| r.keys.iter().any(|k| k == key)) {
        return fx;
    }
    let rec = state.badges.get_or_insert_with(&badge.id, || BadgeRecord {
        awarded_at: now,
        count: 0,
        version: cat.version,
        keys: vec![],
        event_id: event_id.to_string(),
        expires_at: None,
    });
    rec.count += 1;
    rec.keys.push(key.to_string());
    let count = rec.count;
    if let Some(v) = badge.valid_for {
        rec.expires_at = Some(now.saturating_add(v));
        state.refresh_expiry();
    }
    state.derived.owned[i] = count;
    fx.push(Effect::Unlock { badge: badge.id.clone(), count, key: Some(shown.to_string()), xp: badge.xp, at: now });
    if badge.xp > 0 {
        add_xp(state, badge.xp, XpReason::Badge(badge.id.clone()), cat, &mut fx);
    }
    fx
}
