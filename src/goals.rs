//! The goal sweeper: closes open goals whose due date has passed (through the assignee's actor)
//! and tells each goal's assigner how it ended (a `notice` through the assigner's actor, kept in
//! their history), until the goal's record says they were told. Delivery to the assigner is at
//! least once from the durable goal record, and the notice's reserved id makes it count once.
//!
//! In cluster mode each node sweeps the goals of the assignees it serves (a goal lives with its
//! assignee); the notice goes to the node serving the assigner, and the `notified` mark goes
//! through the assignee's partition changelog, so the node that serves her next knows it.

use crate::core::goal::GoalStatus;
use crate::store::{self, GoalRecord, Store};
use crate::records::GoalOp;
use crate::clock::now_ms;
use crate::user::{UserMsg, Users};
use crate::ownership::Membership;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The id of the notice telling the assigner how goal `id` ended.
pub fn notice_id(goal: &str, status: GoalStatus) -> String {
    format!("{}notice:goal:{goal}:{}", crate::protocol::RESERVED_ID_PREFIX, status.as_str())
}

/// One pass over the goals that need something.
pub async fn sweep(store: &Store, users: &Users, cluster: Option<&Arc<Membership>>) -> Result<(), String> {
    let s = store.clone();
    let pending = tokio::task::spawn_blocking(move || s.goals_to_sweep()).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let now = now_ms();
    // The sled may still hold goals of partitions this node has let go of: only the served
    // ones are its to sweep.
    let pending = pending.into_iter().filter(|(t, g)| cluster.is_none_or(|m| m.serves(t, &g.assignee)));
    // One goal that cannot be handled now (its assigner's node between owners, say) does not
    // hold up the others: each is tried again at the next sweep.
    let mut failed = 0;
    for (tenant, g) in pending {
        let id = g.spec.id.clone();
        let done = match g.status {
            GoalStatus::Open if g.spec.due.is_some_and(|d| now > d) => close_missed(users, &tenant, &g).await,
            GoalStatus::Completed | GoalStatus::Missed => notify(store, users, cluster, &tenant, g).await,
            _ => Ok(()),
        };
        if let Err(e) = done {
            failed += 1;
            tracing::debug!(tenant, goal = %id, error = %e, "a goal could not be swept now; tried again at the next sweep");
        }
    }
    if failed > 0 {
        return Err(format!("{failed} goals could not be swept now"));
    }
    Ok(())
}

async fn close_missed(users: &Users, tenant: &str, g: &GoalRecord) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    users.send(tenant, &g.assignee, UserMsg::Goal { op: GoalOp::Due(g.spec.id.clone()), reply: tx }).map_err(|e| e.to_string())?;
    rx.await.map_err(|_| "the assignee's actor stopped".to_string())??;
    Ok(())
}

async fn notify(store: &Store, users: &Users, cluster: Option<&Arc<Membership>>, tenant: &str, g: GoalRecord) -> Result<(), String> {
    let kind = if g.status == GoalStatus::Completed { "goal_completed" } else { "goal_missed" };
    let notice = crate::remote::GoalNotice {
        id: notice_id(&g.spec.id, g.status),
        kind: kind.into(),
        goal: g.spec.id.clone(),
        title: g.spec.title.clone(),
        assignee: g.assignee.clone(),
        at: g.closed_at.unwrap_or_default(),
    };
    match cluster {
        Some(m) if !m.serves(tenant, &g.spec.assigner) => m.notice(tenant, &g.spec.assigner, notice).await?,
        _ => {
            let (tx, rx) = oneshot::channel();
            users.send(tenant, &g.spec.assigner, notice.message(tx)?).map_err(|e| e.to_string())?;
            rx.await.map_err(|_| "the assigner's actor stopped".to_string())??;
        }
    }
    // Only the sweeper writes a record once its goal has ended, so this cannot undo a change.
    let done = GoalRecord { notified: true, ..g };
    let writes = vec![store::writes::goal(tenant, &done)];
    match cluster {
        Some(m) => m.write_for(tenant, &done.assignee, writes).await,
        None => store.write(writes).await.map_err(|e| e.to_string()),
    }
}

/// Sweeps every `every` (`--goal-tick-ms`) until shutdown.
pub async fn run(store: Store, users: Users, cluster: Option<Arc<Membership>>, every: Duration, stop: watch::Receiver<bool>) {
    crate::clock::every(every, stop, || async {
        if let Err(e) = sweep(&store, &users, cluster.as_ref()).await {
            tracing::warn!(error = %e, "goal sweep failed; retrying");
        }
    })
    .await
}
