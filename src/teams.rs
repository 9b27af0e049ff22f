//! Teams' background work (docs/teams.md): the mail worker, which delivers each member's
//! contributions to her teams, and each team's unlocks to its members. A row is written in the
//! batch of the change that made it (`plan::Planner::contributions`, `tell_members`); the
//! worker sends it to the recipient's actor, and once the recipient's outcome is durable
//! removes the row through the sender's log. A crash in between leaves the row, which goes
//! again: the recipient's dedup index makes it count once.

use crate::store::{self, EventLog, Mail, Store};
use crate::user::{Origin, UserMsg, Users};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};

/// Contributions read per round: each round's are all sent before any is awaited, so teams
/// take them in batches, and the next round starts once this one's rows are removed.
const ROUND: usize = 1_000;

/// How often the worker looks without being woken: contributions left by a crash, or by a
/// round that could not finish.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Delivers contributions until shutdown: woken by `wake` (an actor's contributions are
/// durable) or every `LOOK_EVERY`.
pub async fn run(store: Store, log: Arc<dyn EventLog>, users: Users, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        // A debug build can hold contributions back, so a test can kill the process while
        // they wait (tests/teams.rs).
        let held = cfg!(debug_assertions) && std::env::var_os("ACCOLADE_FAULT_HOLD_MAIL").is_some();
        if !held {
            loop {
                match round(&store, &*log, &users).await {
                    Ok(n) if n == ROUND => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "delivering contributions to teams failed; trying again");
                        break;
                    }
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

/// One round: up to `ROUND` contributions sent to their teams, then the delivered ones
/// removed, each through its sender's log. Answers how many were read.
async fn round(store: &Store, log: &dyn EventLog, users: &Users) -> Result<usize, String> {
    let mail = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.mail_scan(ROUND)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?
    };
    let read = mail.len();
    let mut waiting = Vec::with_capacity(read);
    for m in mail {
        // A member's contribution goes to her team as an event; a team's unlock goes to a
        // member as what it is, never as an event (no client can send one).
        let (msg, rx) = if m.row.event.event_type == crate::records::TEAM_UNLOCK_EVENT {
            let (tx, rx) = oneshot::channel();
            let rx = Reply::Told(rx);
            (UserMsg::TeamUnlock { event: m.row.event.clone(), reply: tx }, rx)
        } else {
            let (tx, rx) = oneshot::channel();
            let msg = UserMsg::Event { event: m.row.event.clone(), received_at: m.row.received_at, arrived: tokio::time::Instant::now(), origin: Origin::Http(tx), permit: None };
            (msg, Reply::Counted(rx))
        };
        match users.send(&m.tenant, &m.row.event.user_id, msg) {
            Ok(()) => waiting.push((m, rx)),
            Err(e) => tracing::debug!(tenant = m.tenant, to = m.row.event.user_id, error = %e, "mail could not be delivered now"),
        }
    }
    let keep = cfg!(debug_assertions) && std::env::var_os("ACCOLADE_FAULT_KEEP_MAIL").is_some();
    let mut done: Vec<(String, String, Vec<store::Write>)> = Vec::new();
    for (m, rx) in waiting {
        match rx {
            Reply::Told(rx) => match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(tenant = m.tenant, member = m.row.event.user_id, error = %e, "a team's unlock could not be told now");
                    continue;
                }
                Err(_) => continue,
            },
            Reply::Counted(rx) => {
                let Ok(outcome) = rx.await else { continue };
                if outcome.code.as_deref() == Some("unavailable") {
                    continue;
                }
                if outcome.status == "rejected" {
                    // The team's catalogue refuses it (changed since it was written): it never
                    // counts, and waiting would not change that.
                    tracing::warn!(tenant = m.tenant, team = m.row.event.user_id, event_id = m.row.event.event_id, reason = ?outcome.reason, "a contribution was refused by its team and is dropped");
                }
            }
        }
        if keep {
            continue;
        }
        push_done(&mut done, &m);
    }
    for (tenant, sender, writes) in done {
        let (tx, rx) = oneshot::channel();
        log.append(&tenant, &sender, writes, Box::new(move |r| drop(tx.send(r)))).map_err(|e| e.to_string())?;
        rx.await.map_err(|_| "the log stopped".to_string())??;
    }
    Ok(read)
}

/// What a delivery's answer comes back on: a contribution's outcome, or a told unlock's.
enum Reply {
    Counted(oneshot::Receiver<crate::user::IngestOutcome>),
    Told(oneshot::Receiver<Result<(), String>>),
}

/// Gathers a delivered row's removal with the other removals of its sender.
fn push_done(done: &mut Vec<(String, String, Vec<store::Write>)>, m: &Mail) {
    match done.last_mut() {
        Some((t, s, w)) if *t == m.tenant && *s == m.sender => w.push(store::mail_done(m)),
        _ => done.push((m.tenant.clone(), m.sender.clone(), vec![store::mail_done(m)])),
    }
}
