//! Teams' background work (docs/teams.md): the mail worker, which delivers each member's
//! contributions to her teams, and each team's unlocks to its members. A row is written in the
//! batch of the change that made it (`plan::Planner::contributions`, `tell_members`); the
//! worker sends it to the recipient's actor, and once the recipient's outcome is durable
//! removes the row through the sender's log. A crash in between leaves the row, which goes
//! again: the recipient's dedup index makes it count once.

use crate::ownership::Membership;
use crate::store::{self, EventLog, Mail, Store};
use crate::user::{IngestOutcome, Origin, UserMsg, Users};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};

/// Contributions read per round: each round's are all sent before any is awaited, so teams
/// take them in batches, and the next round starts once this one's rows are removed.
const ROUND: usize = 1_000;

/// How often the worker looks without being woken: contributions left by a crash, or by a
/// round that could not finish.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Delivers mail until shutdown: woken by `wake` (an actor's mail is durable) or every
/// `LOOK_EVERY`. In cluster mode each node delivers the rows of the senders it serves (their
/// rows came with their partition), to wherever the recipient is served.
pub async fn run(store: Store, log: Arc<dyn EventLog>, users: Users, cluster: Option<Arc<Membership>>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        // A debug build can hold the mail back, so a test can kill the process while it waits
        // (tests/teams.rs).
        let held = cfg!(debug_assertions) && std::env::var_os("ACCOLADE_FAULT_HOLD_MAIL").is_some();
        // One pass over the mail, round after round from where the last one stopped: rows that
        // cannot be delivered now (a recipient that fails to start, say) are passed over, so
        // they hold up nothing behind them, and are tried again at the next pass.
        let mut after: Option<Vec<u8>> = None;
        while !held {
            match round(&store, &*log, &users, cluster.as_ref(), after.as_deref()).await {
                Ok(Some(last)) => after = Some(last),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "delivering mail between teams and members failed; trying again");
                    break;
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Whether a delivery is done (its row can go) or must be tried again.
enum Delivered {
    Done,
    Again,
}

/// One round: up to `ROUND` rows after `after` sent to their recipients, then the delivered
/// ones removed, each sender's through her log. Answers the last key read when the round was
/// full (more may follow), `None` at the end of the mail.
async fn round(store: &Store, log: &dyn EventLog, users: &Users, cluster: Option<&Arc<Membership>>, after: Option<&[u8]>) -> Result<Option<Vec<u8>>, String> {
    let mail = {
        let (store, after) = (store.clone(), after.map(<[u8]>::to_vec));
        tokio::task::spawn_blocking(move || store.mail_scan(after.as_deref(), ROUND)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?
    };
    let last = (mail.len() == ROUND).then(|| mail.last().map(|m| m.key.clone())).flatten();
    let mut waiting: Vec<(Mail, BoxFuture<'static, Delivered>)> = Vec::with_capacity(mail.len());
    for m in mail {
        // Another node's sender: her rows are that node's to deliver.
        if !log.serves(&m.tenant, &m.sender) {
            continue;
        }
        let delivery = deliver(users, cluster, &m);
        waiting.push((m, delivery));
    }
    let keep = cfg!(debug_assertions) && std::env::var_os("ACCOLADE_FAULT_KEEP_MAIL").is_some();
    let mut done: Vec<(String, String, Vec<store::Write>)> = Vec::new();
    for (m, delivery) in waiting {
        if let Delivered::Again = delivery.await {
            continue;
        }
        if keep {
            continue;
        }
        push_done(&mut done, &m);
    }
    // Every sender's removals submitted at once, then awaited together: one group commit for
    // the round, not one per sender.
    let mut removed = Vec::with_capacity(done.len());
    for (tenant, sender, writes) in done {
        let (tx, rx) = oneshot::channel();
        log.append(&tenant, &sender, writes, Box::new(move |r| drop(tx.send(r)))).map_err(|e| e.to_string())?;
        removed.push(rx);
    }
    for rx in removed {
        rx.await.map_err(|_| "the log stopped".to_string())??;
    }
    Ok(last)
}

/// Sends one row to its recipient's actor, here or on the node serving her: a member's
/// contribution to her team as an event, a team's unlock to a member as what it is (never as
/// an event, which a client could send).
fn deliver(users: &Users, cluster: Option<&Arc<Membership>>, m: &Mail) -> BoxFuture<'static, Delivered> {
    let (tenant, event, received_at) = (m.tenant.clone(), m.row.event.clone(), m.row.received_at);
    let to = event.user_id.clone();
    let elsewhere = cluster.filter(|c| !c.serves(&tenant, &to)).cloned();
    if event.event_type == crate::records::TEAM_RETRACT_EVENT {
        let users = users.clone();
        return Box::pin(async move {
            let done = match elsewhere {
                Some(c) => c.team_retract(&tenant, event).await,
                None => users.retract_contribution(&tenant, event).await,
            };
            match done {
                Ok(()) => Delivered::Done,
                Err(e) => {
                    tracing::debug!(team = to, error = %e, "a retraction could not reach its team now");
                    Delivered::Again
                }
            }
        });
    }
    if event.event_type == crate::records::TEAM_UNLOCK_EVENT {
        let told: BoxFuture<'static, Result<(), String>> = match elsewhere {
            Some(c) => Box::pin(async move { c.team_unlock(&tenant, event).await }),
            None => {
                let (tx, rx) = oneshot::channel();
                let sent = users.send(&tenant, &to, UserMsg::TeamUnlock { event, reply: tx }).map_err(|e| e.to_string());
                Box::pin(async move { sent?; rx.await.map_err(|_| "the member's actor stopped".to_string())? })
            }
        };
        return Box::pin(async move {
            match told.await {
                Ok(()) => Delivered::Done,
                Err(e) => {
                    tracing::debug!(member = to, error = %e, "a team's unlock could not be told now");
                    Delivered::Again
                }
            }
        });
    }
    let counted: BoxFuture<'static, Option<IngestOutcome>> = match elsewhere {
        Some(c) => Box::pin(async move { Some(c.forward(&tenant, event, received_at).await) }),
        None => {
            let (tx, rx) = oneshot::channel();
            let msg = UserMsg::Event { event, received_at, arrived: tokio::time::Instant::now(), origin: Origin::Http(tx), permit: None };
            let sent = users.send(&tenant, &to, msg);
            Box::pin(async move { if sent.is_ok() { rx.await.ok() } else { None } })
        }
    };
    Box::pin(async move {
        let Some(outcome) = counted.await else { return Delivered::Again };
        if outcome.code.as_deref() == Some("unavailable") {
            return Delivered::Again;
        }
        if outcome.status == "rejected" {
            // The team's catalogue refuses it (changed since it was written): it never counts,
            // and waiting would not change that.
            tracing::warn!(team = to, event_id = outcome.event_id, reason = ?outcome.reason, "a contribution was refused by its team and is dropped");
        }
        Delivered::Done
    })
}

/// Gathers a delivered row's removal with the other removals of its sender.
fn push_done(done: &mut Vec<(String, String, Vec<store::Write>)>, m: &Mail) {
    match done.last_mut() {
        Some((t, s, w)) if *t == m.tenant && *s == m.sender => w.push(store::mail_done(m)),
        _ => done.push((m.tenant.clone(), m.sender.clone(), vec![store::mail_done(m)])),
    }
}
