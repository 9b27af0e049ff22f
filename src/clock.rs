//! The wall clock, read in one place: the shell reads it once per message and passes the time
//! down (the rule core and the plan never read it). Beside it, the one timer loop the shell's
//! periodic tasks share.

use crate::core::Millis;
use std::time::Duration;
use tokio::sync::watch;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

/// Runs `turn` every `every` until shutdown. A turn in progress is dropped when shutdown comes
/// (turns wait on actors and the disk, and the drain must not wait on them); a shutdown that
/// came before the first turn is seen at once.
pub async fn every<F, Fut>(every: Duration, mut stop: watch::Receiver<bool>, mut turn: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = turn() => {}
            _ = stop.changed() => return,
        }
    }
}
