//! Taking badges away: a revocation the tenant's backend asks for, the expiry of a badge held
//! for a period (`valid_for`), and the badges that fall away when an event behind them is
//! retracted. Pure like the rest of the core: time comes in as `now`, and every rebuild makes
//! the same calls from the log (`accolade.revoke` and `accolade.retract` records, and the
//! events that saw an expiry), so it takes the same badges at the same times.
//!
//! A badge taken away leaves a `Revocation` in its place, which the entitlement check shows.
//! It can be earned again, on new facts only: after a revocation or an expiry a count, sum or
//! distinct count is counted anew from its value then (`Revocation::base`), any other rule
//! must hold at a later event; after a retraction the facts left are recomputed, and reaching
//! the target on them earns it again. A backfill never gives a revoked badge back.

use super::catalogue::Catalogue;
use super::effect::Effect;
use super::state::{BadgeRecord, Revocation, RevokeCause, UserState};
use super::value::Millis;

/// Whether a user holds a badge at a moment, as the entitlement check answers it.
#[derive(Debug, PartialEq)]
pub enum Holding<'a> {
    Held(&'a BadgeRecord),
    /// Held until `at`: its `valid_for` ran out, whether or not an event has seen it yet.
    Expired { at: Millis, record: &'a BadgeRecord },
    /// Taken away (through the API, by an expiry already seen, or by a retraction).
    Revoked(&'a Revocation),
    /// Never held.
    Never,
}

/// What the user holds of `badge` at `now`. An expiry nobody has seen yet (no event since)
/// is already an expiry here, so the answer never depends on when the user was last active.
pub fn holding<'a>(st: &'a UserState, badge: &str, now: Millis) -> Holding<'a> {
    match (st.badges.get(badge), st.revoked.get(badge)) {
        (Some(r), _) => match r.expires_at {
            Some(at) if at <= now => Holding::Expired { at, record: r },
            _ => Holding::Held(r),
        },
        (None, Some(v)) => Holding::Revoked(v),
        (None, None) => Holding::Never,
    }
}

/// Why a revocation through the API changes nothing and is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeRefused {
    /// The catalogue has no such badge and the user never held one by that id.
    UnknownBadge,
    /// The user never held the badge (a badge held and taken away before is not refused: a
    /// revocation sent again changes nothing and is answered as done).
    NeverHeld,
}

/// Takes `badge` from the user through the API, at `now`, recording `reason`; with `claw_back`
/// the XP its awards paid is taken back too (the level follows the XP down). Expiries due at
/// `now` are taken first, as an event would. A badge already taken away is a no-op: the
/// effects are then empty, or hold only those expiries.
#[allow(clippy::too_many_arguments)]
pub fn revoke(state: &mut UserState, badge: &str, reason: &str, claw_back: bool, now: Millis, event_id: &str, cat: &Catalogue) -> Result<Vec<Effect>, RevokeRefused> {
    state.sync(cat);
    let mut fx = Vec::new();
    expire_due(state, now, event_id, cat, &mut fx);
    if !state.badges.contains_key(badge) {
        return match (state.revoked.contains_key(badge), cat.badge(badge).is_some()) {
            (true, _) => Ok(fx),
            (false, true) => Err(RevokeRefused::NeverHeld),
            (false, false) => Err(RevokeRefused::UnknownBadge),
        };
    }
    take(state, badge, RevokeCause::Api, reason, claw_back, now, event_id, cat, &mut fx);
    Ok(fx)
}

/// The reason an expiry is recorded with.
pub const EXPIRED: &str = "valid_for ran out";

/// Takes every badge whose `valid_for` ran out by `now` (the XP is kept: the badge was
/// earned, it only lapsed), each at its own expiry time. One comparison when none is due.
pub fn expire_due(state: &mut UserState, now: Millis, event_id: &str, cat: &Catalogue, fx: &mut Vec<Effect>) {
    if state.derived.next_expiry.is_none_or(|t| now < t) {
        return;
    }
    let due: Vec<(String, Millis)> = state.badges.iter().filter_map(|(id, r)| r.expires_at.filter(|&at| at <= now).map(|at| (id.clone(), at))).collect();
    for (id, at) in due {
        take(state, &id, RevokeCause::Expired, EXPIRED, false, at, event_id, cat, fx);
    }
}

/// Takes away the badges that an event earned, when it is retracted. `with` and `without` are
/// the user's facts replayed from scratch under `cat`, with the event and without it: every
/// stat and cached action the event moved takes its value without it, and every badge the
/// user holds that `with` earns and `without` does not is taken away (a badge given from
/// outside the rules, like a leaderboard's, or earned under an older rule, is left alone:
/// the retraction cannot be what earned it). XP rules' XP for the event is kept; with
/// `claw_back` the XP of the badges taken goes too.
#[allow(clippy::too_many_arguments)]
pub fn retract(live: &mut UserState, with: &UserState, without: &UserState, reason: &str, claw_back: bool, now: Millis, event_id: &str, cat: &Catalogue) -> Vec<Effect> {
    live.sync(cat);
    let mut fx = Vec::new();
    expire_due(live, now, event_id, cat, &mut fx);
    for ((id, w), (_, wo)) in with.stats.iter().zip(&without.stats) {
        if w != wo
            && let Some(slot) = live.stats.iter_mut().find(|(x, _)| x == id)
        {
            slot.1 = wo.clone();
        }
    }
    for (w, wo) in with.rings.iter().zip(&without.rings) {
        if w != wo
            && let Some(ring) = live.rings.iter_mut().find(|r| r.event_type == wo.event_type && r.fields == wo.fields)
        {
            ring.items = wo.items.clone();
        }
    }
    let fallen: Vec<String> = live.badges.keys().filter(|id| with.badges.contains_key(id.as_str()) && !without.badges.contains_key(id.as_str())).cloned().collect();
    for id in fallen {
        take(live, &id, RevokeCause::Retracted, reason, claw_back, now, event_id, cat, &mut fx);
    }
    fx
}

/// Takes a held badge away: its record goes, a revocation takes its place, and the XP its
/// awards paid is taken back when asked (never more than the user has).
#[allow(clippy::too_many_arguments)]
fn take(state: &mut UserState, badge: &str, cause: RevokeCause, reason: &str, claw_back: bool, at: Millis, event_id: &str, cat: &Catalogue, fx: &mut Vec<Effect>) {
    let Some(rec) = state.badges.remove(badge) else { return };
    let def = cat.badge(badge);
    let paid = def.map_or(0, |d| if d.per_key.is_some() { d.xp } else { d.xp.saturating_mul(u64::from(rec.count)) });
    let xp = if claw_back { paid.min(state.xp) } else { 0 };
    if xp > 0 {
        state.xp -= xp;
        // Levels are a function of XP: the level is found again from the bottom.
        state.level = cat.levels.level_from(state.xp, 1);
    }
    // After a retraction the facts left are the truth, and reaching the target on them again
    // earns the badge again; after a revocation or an expiry the facts that earned it are
    // spent, and the count starts again from here.
    let base = match cause {
        RevokeCause::Retracted => None,
        RevokeCause::Api | RevokeCause::Expired => def.and_then(|d| d.cond.base_stat(&cat.stats)).and_then(|s| state.stats.get(s)).map(|(_, v)| v.metric(None)),
    };
    state.revoked.insert(badge.to_string(), Revocation { at, cause, reason: reason.to_string(), count: rec.count, xp, event_id: event_id.to_string(), base });
    if let Some(&i) = cat.badge_index.get(badge)
        && let Some(n) = state.derived.owned.get_mut(i)
    {
        *n = 0;
    }
    state.refresh_expiry();
    let id = def.map_or_else(|| badge.into(), |d| d.id.clone());
    fx.push(Effect::Revoked { badge: id, cause, reason: reason.to_string(), count: rec.count, xp, total: state.xp, level: state.level, at });
}
