//! Crediting XP: the one place a user's XP grows and a level-up is announced.
//!
//! XP is paid by the engine's XP rules and badge unlocks, by a leaderboard's period award and by
//! a backfill. They all go through `add_xp`, which sits below both the engine and the board so
//! that neither has to import the other for it.

use super::catalogue::Catalogue;
use super::effect::{Effect, XpReason};
use super::state::UserState;

/// Adds `delta` XP to the user for `reason`, reporting the new total and level, and a level-up
/// when the total crosses the next threshold of the catalogue's level curve.
pub(crate) fn add_xp(state: &mut UserState, delta: u64, reason: XpReason, cat: &Catalogue, fx: &mut Vec<Effect>) {
    state.xp = state.xp.saturating_add(delta);
    let level = cat.levels.level_from(state.xp, state.level);
    fx.push(Effect::Xp { delta, total: state.xp, level, reason });
    if level > state.level {
        state.level = level;
        fx.push(Effect::LevelUp { level });
    }
}
