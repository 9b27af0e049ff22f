//! The expiry sweep: a user whose badge's `valid_for` runs out, or whose wait of an `absence`
//! rule lapses, while she is away is told then (a `revoked` or `unlock` push kept in her
//! history, and its webhook notifications), not only at her next event or connection. Her
//! actor keeps her next look (`UserState::next_look`) in the expiry index (written with her
//! changes, before their log record, so it is never behind them); the sweep reads the index
//! and sends each user with a look due `UserMsg::Expire`, which makes it through her actor as
//! an `accolade.expire` record (`core::look`) and sets the index right.
//!
//! In cluster mode each node sweeps the users it serves.

use crate::ownership::Membership;
use crate::store::Store;
use crate::clock::now_ms;
use crate::user::{UserMsg, Users};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// One pass over the users with an expiry due.
pub async fn sweep(store: &Store, users: &Users, cluster: Option<&Arc<Membership>>) -> Result<(), String> {
    let s = store.clone();
    let now = now_ms();
    let due = tokio::task::spawn_blocking(move || s.expiries_due(now)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let mut failed = 0;
    for (tenant, user) in due.into_iter().filter(|(t, u)| cluster.is_none_or(|m| m.serves(t, u))) {
        let (tx, rx) = oneshot::channel();
        let done = match users.send(&tenant, &user, UserMsg::Expire { reply: tx }) {
            Ok(()) => rx.await.map_err(|_| "the user's actor stopped".to_string()).and_then(|r| r),
            Err(e) => Err(e.to_string()),
        };
        // One user who cannot be reached now does not hold up the others: tried again at the
        // next sweep, since the index still names her.
        if let Err(e) = done {
            failed += 1;
            tracing::debug!(tenant, user, error = %e, "an expiry could not be swept now; tried again at the next sweep");
        }
    }
    if failed > 0 {
        return Err(format!("{failed} users' expiries could not be swept now"));
    }
    Ok(())
}

/// Sweeps every `every` (`--expiry-tick-ms`) until shutdown.
pub async fn run(store: Store, users: Users, cluster: Option<Arc<Membership>>, every: Duration, stop: watch::Receiver<bool>) {
    crate::clock::every(every, stop, || async {
        if let Err(e) = sweep(&store, &users, cluster.as_ref()).await {
            tracing::warn!(error = %e, "expiry sweep failed; retrying");
        }
    })
    .await
}
