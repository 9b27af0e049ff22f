//! The disk watchdog: how long the oldest disk operation in progress (a persister batch, a
//! flush) has been waiting, whether a write has failed, what that means for the server's
//! health, and, in the binary, the thread that ends a process whose disk has stopped answering
//! or refused a write.
//!
//! Why: sled 0.34 can wait for ever in `flush` after a write to disk failed
//! (docs/reliability.md). Nothing acknowledged is lost then, since nothing is acknowledged
//! before its flush returns, but the server stops acknowledging while it looks alive, and it
//! cannot even shut down (its last flush never returns). Exiting is safe for the same reason
//! a `kill -9` is: clients resend what was not acknowledged, and the event ids make the resend
//! count once. So past `--stall-exit-secs` the process exits with `EXIT_STALLED` and a
//! supervisor starts it again; before that, `/healthz` answers 503.
//!
//! A write that fails (a full disk) is the other way a disk lets the server down. sled keeps
//! the failed batch's inserts in its in-memory trees and refuses every later write (its error
//! is sticky), so from then on its reads describe writes the disk refused. The store fails
//! closed at once (`DiskWatch::fail`: no read, no write; `/healthz` and `/readyz` answer 503),
//! and past `--write-failure-exit-secs` the binary exits with `EXIT_WRITE_FAILED`, so that a
//! supervisor starts it again from what is on disk.

use std::sync::{Mutex, OnceLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The exit status of a process ended by the watchdog (`EX_TEMPFAIL`: try again).
pub const EXIT_STALLED: i32 = 75;

/// The exit status of a process whose store refused a write (`EX_IOERR`): restart it once
/// the disk has room; nothing acknowledged is lost.
pub const EXIT_WRITE_FAILED: i32 = 74;

/// How often the binary's watchdog thread looks.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Disk operations in progress, each with when it began and what it is.
#[derive(Default)]
pub struct DiskWatch {
    next: AtomicU64,
    busy: Mutex<Vec<(u64, Instant, &'static str)>>,
    /// The first write that failed: when, and why. Set once, never cleared: only a new process
    /// reads the disk afresh.
    failed: OnceLock<(Instant, String)>,
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

    /// Records that a write failed at `now`. Only the first failure is kept: it is the one
    /// that put the in-memory view ahead of the disk.
    pub fn fail(&self, why: String, now: Instant) {
        let _ = self.failed.set((now, why));
    }

    /// Why the store failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(|(_, why)| why.as_str())
    }

    /// How long ago at `now` the store failed, if it did.
    pub fn failed_for(&self, now: Instant) -> Option<Duration> {
        self.failed.get().map(|(at, _)| now.saturating_duration_since(*at))
    }

    /// What the watchdog looks at: the oldest wait, and how long ago a write failed.
    pub fn reading(&self, now: Instant) -> Reading {
        Reading { oldest: self.oldest(now), failed_for: self.failed_for(now) }
    }
}

/// The disk as the watchdog sees it at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// The oldest operation in progress: how long it has waited, and what it is.
    pub oldest: Option<(Duration, &'static str)>,
    /// How long ago a write failed, if one did.
    pub failed_for: Option<Duration>,
}

/// When a wait on the disk stops being normal, and how long a failed store stays up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Past this, `/healthz` answers 503.
    pub unhealthy: Duration,
    /// Past this, the binary exits with `EXIT_STALLED`; `None`: never.
    pub exit: Option<Duration>,
    /// This long after a write failed, the binary exits with `EXIT_WRITE_FAILED`; `None`:
    /// never (the server stays up, failed closed, until it is restarted).
    pub failed_exit: Option<Duration>,
}

impl Limits {
    /// From the configuration's seconds; 0 for `exit_secs` turns the stall exit off, and 0 for
    /// `failed_exit_secs` exits as soon as a write fails.
    pub fn from_secs(unhealthy_secs: u64, exit_secs: u64, failed_exit_secs: Option<u64>) -> Limits {
        Limits {
            unhealthy: Duration::from_secs(unhealthy_secs.max(1)),
            exit: (exit_secs > 0).then(|| Duration::from_secs(exit_secs)),
            failed_exit: failed_exit_secs.map(Duration::from_secs),
        }
    }
}

/// What a reading of the disk means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// An operation has waited past `unhealthy`.
    Stalled,
    /// A write failed: the store serves nothing.
    Failed,
    /// Exit with this status.
    Exit(i32),
}

/// Judges a reading against the limits. Pure, so its table is a unit test. A failed store is
/// judged before a stall: once a write has failed, nothing else the disk does matters.
pub fn judge(r: Reading, limits: Limits) -> Verdict {
    let waited = r.oldest.map(|(w, _)| w);
    match (r.failed_for, waited) {
        (Some(f), _) if limits.failed_exit.is_some_and(|e| f >= e) => Verdict::Exit(EXIT_WRITE_FAILED),
        (_, Some(w)) if limits.exit.is_some_and(|e| w >= e) => Verdict::Exit(EXIT_STALLED),
        (Some(_), _) => Verdict::Failed,
        (None, Some(w)) if w >= limits.unhealthy => Verdict::Stalled,
        _ => Verdict::Healthy,
    }
}

/// Starts the thread that ends the process once the disk has not answered for `limits.exit`,
/// or `limits.failed_exit` after a write failed. A thread of its own, not a task: a runtime
/// whose workers are all waiting on the stalled disk must not keep it from looking. Only the
/// binary starts it; a server built inside a test process reports a stall or a failure on
/// `/healthz` and never exits its host.
pub fn exit_when_due(disk: std::sync::Arc<DiskWatch>, limits: Limits) -> std::io::Result<()> {
    if limits.exit.is_none() && limits.failed_exit.is_none() {
        return Ok(());
    }
    std::thread::Builder::new().name("accolade-watchdog".into()).spawn(move || {
        loop {
            std::thread::sleep(LOOK_EVERY);
            let r = disk.reading(Instant::now());
            match judge(r, limits) {
                Verdict::Exit(EXIT_WRITE_FAILED) => {
                    tracing::error!(status = EXIT_WRITE_FAILED, error = disk.failure().unwrap_or_default(), "a write to the disk failed; exiting so that a supervisor restarts the server from what is on disk (nothing acknowledged is lost)");
                    std::process::exit(EXIT_WRITE_FAILED);
                }
                Verdict::Exit(status) => {
                    let (waited, what) = r.oldest.unwrap_or_default();
                    tracing::error!(waited_secs = waited.as_secs(), operation = what, status, "the disk has not answered; exiting so that a supervisor restarts the server (nothing acknowledged is lost)");
                    std::process::exit(status);
                }
                _ => {}
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_judged_against_every_limit() {
        let s = Duration::from_secs;
        let both = Limits::from_secs(10, 60, Some(5));
        let never_exit = Limits::from_secs(10, 0, None);
        let at_once = Limits::from_secs(10, 60, Some(0));
        let stall = EXIT_STALLED;
        let failed = EXIT_WRITE_FAILED;
        // (waited, failed for, limits, verdict)
        let table = [
            (None, None, both, Verdict::Healthy),
            (Some(s(0)), None, both, Verdict::Healthy),
            (Some(Duration::from_millis(9_999)), None, both, Verdict::Healthy),
            (Some(s(10)), None, both, Verdict::Stalled),
            (Some(Duration::from_millis(59_999)), None, both, Verdict::Stalled),
            (Some(s(60)), None, both, Verdict::Exit(stall)),
            (Some(s(3600)), None, both, Verdict::Exit(stall)),
            (Some(s(3600)), None, never_exit, Verdict::Stalled),
            (None, None, never_exit, Verdict::Healthy),
            // A failed write is unhealthy at once, whatever the disk does next.
            (None, Some(s(0)), both, Verdict::Failed),
            (None, Some(Duration::from_millis(4_999)), both, Verdict::Failed),
            (Some(s(1)), Some(s(1)), both, Verdict::Failed),
            (None, Some(s(5)), both, Verdict::Exit(failed)),
            (Some(s(3600)), Some(s(5)), both, Verdict::Exit(failed)),
            (None, Some(s(0)), at_once, Verdict::Exit(failed)),
            (None, Some(s(3600)), never_exit, Verdict::Failed),
            // A stall past its exit still ends a failed store that is not yet due to exit.
            (Some(s(60)), Some(s(1)), both, Verdict::Exit(stall)),
        ];
        for (waited, failed_for, limits, want) in table {
            let r = Reading { oldest: waited.map(|w| (w, "persist batch")), failed_for };
            assert_eq!(judge(r, limits), want, "{r:?} with {limits:?}");
        }
    }

    #[test]
    fn the_first_failure_is_the_one_kept() {
        let w = DiskWatch::default();
        let t0 = Instant::now();
        assert_eq!(w.failure(), None);
        assert_eq!(w.failed_for(t0), None);
        w.fail("No space left on device".into(), t0);
        w.fail("a later error".into(), t0 + Duration::from_secs(1));
        assert_eq!(w.failure(), Some("No space left on device"));
        assert_eq!(w.failed_for(t0 + Duration::from_secs(3)), Some(Duration::from_secs(3)));
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
