//! The disk watchdog: how long the oldest disk operation in progress (a persister batch, a
//! flush) has been waiting, what that means for the server's health, and, in the binary, the
//! thread that ends a process whose disk has stopped answering.
//!
//! Why: sled 0.34 can wait for ever in `flush` after a write to disk failed
//! (docs/reliability.md). Nothing acknowledged is lost then, since nothing is acknowledged
//! before its flush returns, but the server stops acknowledging while it looks alive, and it
//! cannot even shut down (its last flush never returns). Exiting is safe for the same reason
//! a `kill -9` is: clients resend what was not acknowledged, and the event ids make the resend
//! count once. So past `--stall-exit-secs` the process exits with `EXIT_STALLED` and a
//! supervisor starts it again; before that, `/healthz` answers 503.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The exit status of a process ended by the watchdog (`EX_TEMPFAIL`: try again).
pub const EXIT_STALLED: i32 = 75;

/// How often the binary's watchdog thread looks.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Disk operations in progress, each with when it began and what it is.
#[derive(Default)]
pub struct DiskWatch {
    next: AtomicU64,
    busy: Mutex<Vec<(u64, Instant, &'static str)>>,
}

/// Marks one disk operation in progress until dropped.
pub struct Busy<'a> {
    watch: &'a DiskWatch,
    token: u64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.watch.busy.lock() {
            b.retain(|(t, _, _)| *t != self.token);
        }
    }
}

impl DiskWatch {
    /// Marks `what` as waiting on the disk from `now` until the returned guard is dropped.
    pub fn begin(&self, what: &'static str, now: Instant) -> Busy<'_> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut b) = self.busy.lock() {
            b.push((token, now, what));
        }
        Busy { watch: self, token }
    }

    /// The oldest operation still in progress at `now`: how long it has waited, and what it is.
    pub fn oldest(&self, now: Instant) -> Option<(Duration, &'static str)> {
        let b = self.busy.lock().ok()?;
        b.iter().min_by_key(|(_, at, _)| *at).map(|(_, at, what)| (now.saturating_duration_since(*at), *what))
    }
}

/// When a wait on the disk stops being normal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Past this, `/healthz` answers 503.
    pub unhealthy: Duration,
    /// Past this, the binary exits with `EXIT_STALLED`; `None`: never.
    pub exit: Option<Duration>,
}

impl Limits {
    /// From the configuration's seconds; 0 for `exit_secs` turns the exit off.
    pub fn from_secs(unhealthy_secs: u64, exit_secs: u64) -> Limits {
        Limits { unhealthy: Duration::from_secs(unhealthy_secs.max(1)), exit: (exit_secs > 0).then(|| Duration::from_secs(exit_secs)) }
    }
}

/// What a wait of `waited` on the disk means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Stalled,
    Exit,
}

/// Judges a wait against the limits. Pure, so its table is a unit test.
pub fn judge(waited: Option<Duration>, limits: Limits) -> Verdict {
    match waited {
        Some(w) if limits.exit.is_some_and(|e| w >= e) => Verdict::Exit,
        Some(w) if w >= limits.unhealthy => Verdict::Stalled,
        _ => Verdict::Healthy,
    }
}

/// Starts the thread that ends the process once the disk has not answered for `limits.exit`.
/// A thread of its own, not a task: a runtime whose workers are all waiting on the stalled disk
/// must not keep it from looking. Only the binary starts it; a server built inside a test
/// process reports a stall on `/healthz` and never exits its host.
pub fn exit_on_stall(look: impl Fn(Instant) -> Option<(Duration, &'static str)> + Send + 'static, limits: Limits) -> std::io::Result<()> {
    if limits.exit.is_none() {
        return Ok(());
    }
    std::thread::Builder::new().name("accolade-watchdog".into()).spawn(move || {
        loop {
            std::thread::sleep(LOOK_EVERY);
            let oldest = look(Instant::now());
            if judge(oldest.map(|(w, _)| w), limits) == Verdict::Exit {
                let (waited, what) = oldest.unwrap_or_default();
                tracing::error!(waited_secs = waited.as_secs(), operation = what, status = EXIT_STALLED, "the disk has not answered; exiting so that a supervisor restarts the server (nothing acknowledged is lost)");
                std::process::exit(EXIT_STALLED);
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_judged_against_both_limits() {
        let s = Duration::from_secs;
        let both = Limits::from_secs(10, 60);
        let never_exit = Limits::from_secs(10, 0);
        // (waited, limits, verdict)
        let table = [
            (None, both, Verdict::Healthy),
            (Some(s(0)), both, Verdict::Healthy),
            (Some(Duration::from_millis(9_999)), both, Verdict::Healthy),
            (Some(s(10)), both, Verdict::Stalled),
            (Some(Duration::from_millis(59_999)), both, Verdict::Stalled),
            (Some(s(60)), both, Verdict::Exit),
            (Some(s(3600)), both, Verdict::Exit),
            (Some(s(3600)), never_exit, Verdict::Stalled),
            (None, never_exit, Verdict::Healthy),
        ];
        for (waited, limits, want) in table {
            assert_eq!(judge(waited, limits), want, "{waited:?} with {limits:?}");
        }
    }

    #[test]
    fn the_oldest_operation_in_progress_is_the_one_reported() {
        let w = DiskWatch::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(w.oldest(t0), None);
        let batch = w.begin("persist batch", t0);
        let flush = w.begin("flush", t0 + s(5));
        assert_eq!(w.oldest(t0 + s(7)), Some((s(7), "persist batch")));
        drop(batch);
        assert_eq!(w.oldest(t0 + s(7)), Some((s(2), "flush")));
        drop(flush);
        assert_eq!(w.oldest(t0 + s(7)), None, "nothing in progress, nothing waiting");
    }
}
