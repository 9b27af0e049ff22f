//! Assigned goals in the rule core: one user (a teacher, a manager) gives another a goal whose
//! criterion is written in the badge rule language. The assignee's state tracks it exactly like
//! a badge, from the moment it is assigned: each goal keeps its own small state, fed every
//! accepted event under a catalogue of one badge (the criterion). Pure, like the rest of the
//! core: assignment, completion, the due date and cancellation are all decided here, from data.

use super::catalogue::{Catalogue, CatalogueError};
use super::effect::Effect;
use super::explain::BadgeProgress;
use super::state::UserState;
use super::value::{Event, Millis};
use std::sync::Arc;

// A goal's data is part of the user's state (a `GoalState` holds the goal's own `UserState`),
// so the types live in `state`; they are re-exported here, where the rest of the crate finds
// them.
pub use super::state::{GoalSpec, GoalState, GoalStatus};

/// The catalogue a goal is tracked with, compiled from the tenant's catalogue in force.
pub fn catalogue_for(spec: &GoalSpec, cat: &Catalogue) -> Result<Catalogue, CatalogueError> {
    let criterion: serde_json::Value = serde_json::from_str(&spec.criterion).map_err(|e| CatalogueError {
        badge: None,
        field: "criterion".into(),
        message: format!("not valid JSON: {e}"),
    })?;
    cat.for_goal(&spec.title, &criterion)
}

/// The compiled goal catalogue, from the state's cache (rebuilt when the tenant's catalogue
/// changed, or after a restart).
fn compiled(state: &mut UserState, id: &str, cat: &Catalogue) -> Option<Arc<Catalogue>> {
    if let Some((base, c)) = state.derived.goal_cats.get(id)
        && *base == cat.id
    {
        return Some(c.clone());
    }
    let spec = &state.goals.get(id)?.spec;
    let c = Arc::new(catalogue_for(spec, cat).ok()?);
    state.derived.goal_cats.insert(id.to_string(), (cat.id, c.clone()));
    Some(c)
}

/// Assigns a goal. Refused (with the reason) when its criterion does not compile, or when the
/// id is already taken; repeating the same assignment changes nothing.
pub fn assign(state: &mut UserState, spec: GoalSpec, now: Millis, cat: &Catalogue) -> Result<Vec<Effect>, String> {
    if let Some(g) = state.goals.get(&spec.id) {
        return if g.spec == spec { Ok(vec![]) } else { Err(format!("goal id `{}` is already used", spec.id)) };
    }
    let compiled = catalogue_for(&spec, cat).map_err(|e| e.to_string())?;
    let mut sub = UserState::new(&state.tenant_id, &state.user_id);
    sub.sync(&compiled);
    let id = spec.id.clone();
    let fx = vec![Effect::GoalAssigned { goal: id.clone(), title: spec.title.clone(), assigner: spec.assigner.clone(), due: spec.due }];
    state.goals.insert(id.clone(), GoalState { spec, assigned_at: now, status: GoalStatus::Open, closed_at: None, sub: Box::new(sub) });
    state.derived.goal_cats.insert(id, (cat.id, Arc::new(compiled)));
    Ok(fx)
}

/// How a goal's own state takes an event: the engine's `apply`, which the engine hands to `step`.
/// A goal is tracked by the same rules as a badge, so feeding it means running the engine on the
/// goal's state; taking the engine as an argument, rather than importing it, keeps this module
/// below the engine, which calls it.
pub(crate) type Apply = fn(&mut UserState, &Event, Millis, &Catalogue) -> Vec<Effect>;

/// Feeds an accepted event to every open goal; called by `apply`, which passes itself as
/// `apply`. A goal completes when its badge would unlock; an event that arrives after the due
/// date closes it as missed instead. However a goal ends, its own stats are dropped, so a
/// user's state does not grow with every goal they ever had (the goal, and how it ended, are
/// kept).
pub(crate) fn step(state: &mut UserState, event: &Event, now: Millis, cat: &Catalogue, fx: &mut Vec<Effect>, apply: Apply) {
    let open: Vec<String> = state.goals.iter().filter(|(_, g)| g.status == GoalStatus::Open).map(|(id, _)| id.clone()).collect();
    for id in open {
        if state.goals[&id].spec.due.is_some_and(|d| now > d) {
            fx.extend(expire(state, &id, now));
            continue;
        }
        let Some(c) = compiled(state, &id, cat) else { continue };
        let g = state.goals.get_mut(&id).expect("listed above");
        let sub_fx = apply(&mut g.sub, event, now, &c);
        if sub_fx.iter().any(|e| matches!(e, Effect::Unlock { .. })) {
            g.status = GoalStatus::Completed;
            g.closed_at = Some(now);
            *g.sub = Default::default();
            state.derived.goal_cats.remove(&id);
            fx.push(Effect::GoalCompleted { goal: id.clone(), title: g.spec.title.clone(), assigner: g.spec.assigner.clone(), at: now });
        }
    }
}

/// Closes an open goal whose due date has passed as missed.
pub fn expire(state: &mut UserState, id: &str, now: Millis) -> Vec<Effect> {
    match state.goals.get_mut(id) {
        Some(g) if g.status == GoalStatus::Open && g.spec.due.is_some_and(|d| now > d) => {
            g.status = GoalStatus::Missed;
            g.closed_at = Some(now);
            *g.sub = Default::default();
            state.derived.goal_cats.remove(id);
            vec![Effect::GoalMissed { goal: id.to_string(), title: g.spec.title.clone(), assigner: g.spec.assigner.clone(), at: now }]
        }
        _ => vec![],
    }
}

/// Cancels an open goal (a completed or missed one stays as it ended).
pub fn cancel(state: &mut UserState, id: &str, now: Millis) -> Vec<Effect> {
    match state.goals.get_mut(id) {
        Some(g) if g.status == GoalStatus::Open => {
            g.status = GoalStatus::Cancelled;
            g.closed_at = Some(now);
            *g.sub = Default::default();
            state.derived.goal_cats.remove(id);
            vec![Effect::GoalCancelled { goal: id.to_string() }]
        }
        _ => vec![],
    }
}

/// Progress towards an open goal, part by part, like a badge's.
pub fn progress(state: &UserState, id: &str, now: Millis, cat: &Catalogue) -> Option<BadgeProgress> {
    let g = state.goals.get(id)?;
    let c = catalogue_for(&g.spec, cat).ok()?;
    let mut sub = (*g.sub).clone();
    sub.sync(&c);
    super::explain::progress(&sub, &c, now).into_iter().next()
}
