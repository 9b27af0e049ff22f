//! How an endpoint's line moves, decided from data with time passed in: the retry policy and
//! its backoff, where each outbox row stands (the head of the line, set aside, or behind an
//! older one of its user), the next step of a worker, what an attempt leaves, and a redrive.
//! Pure: the worker in `mod.rs` reads the rows, performs the step and writes its outcome.

use super::{Attempt, Finished, Pending};
use crate::core::Millis;
use serde::Deserialize;
use std::collections::HashSet;

/// The delay before the next attempt after `failures` failures in a row: the base doubled per
/// failure, capped, then jittered down by up to half (`unit` in [0, 1)), so that endpoints that
/// failed together do not come back in lockstep.
pub fn backoff(failures: u32, base_ms: u64, max_ms: u64, unit: f64) -> u64 {
    let full = base_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(40)).min(max_ms);
    let half = full / 2;
    half + ((full - half) as f64 * unit.clamp(0.0, 1.0)) as u64
}

/// The retry policy, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub base_ms: u64,
    pub max_ms: u64,
    pub max_attempts: u32,
    pub give_up_after_ms: Millis,
    /// Failed attempts after which a notification is set aside: out of the line, retried on
    /// its own backoff, no longer holding up other users' notifications.
    pub hold_attempts: u32,
}

impl Policy {
    pub fn of(c: &crate::config::Config) -> Policy {
        Policy {
            base_ms: c.webhook_retry_base_ms,
            max_ms: c.webhook_retry_max_ms,
            max_attempts: c.webhook_max_attempts.max(1),
            give_up_after_ms: (c.webhook_give_up_after_secs as Millis).saturating_mul(1000),
            hold_attempts: c.webhook_hold_attempts.max(1),
        }
    }

    /// Whether a waiting notification is set aside. It is its failed attempts that say so,
    /// so the attempt's one write sets it aside, and a redrive (attempts back to 0) undoes it.
    pub fn set_aside(&self, p: &Pending) -> bool {
        p.attempts >= self.hold_attempts
    }
}

/// The user a notification is about, read from its body (where the actor wrote it), so that
/// the stored rows need no field for it.
pub fn user_of(p: &Pending) -> String {
    user_of_body(&p.body)
}

/// The user a notification's body is about (for a team's, the team's entity).
pub fn user_of_body(body: &str) -> String {
    #[derive(Deserialize)]
    struct About {
        user_id: Option<String>,
        team_id: Option<String>,
    }
    // A team's notification names the team, whose entity's log it goes through.
    match serde_json::from_str::<About>(body) {
        Ok(About { user_id: Some(u), .. }) => u,
        Ok(About { team_id: Some(t), .. }) => crate::core::catalogue::team_entity(&t),
        _ => String::new(),
    }
}

/// Where a row of the outbox stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// Failed `hold_attempts` times: retried on its own backoff, out of the line.
    Aside,
    /// An older notification about the same user still waits: this one goes after it.
    Behind,
    /// The oldest notification in line: the rest of the line waits behind it.
    Head,
}

/// The rows of an endpoint's outbox that the worker decides from: read oldest first, up to
/// and with the head of the line.
#[derive(Debug, Default)]
pub struct Window {
    pub rows: Vec<(u64, Role, Pending)>,
    users: HashSet<String>,
}

impl Window {
    /// Adds the next row (oldest first), as `user`'s; answers whether to read on, which is
    /// until the head of the line has been added.
    pub fn push(&mut self, id: u64, user: String, p: Pending, policy: &Policy) -> bool {
        let role = if self.users.contains(&user) {
            Role::Behind
        } else if policy.set_aside(&p) {
            Role::Aside
        } else {
            Role::Head
        };
        self.users.insert(user);
        self.rows.push((id, role, p));
        role != Role::Head
    }
}

/// What a worker does next.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing waits.
    Idle,
    /// This notification is too old: give it up without another attempt.
    Expire(u64, Finished),
    /// Nothing is due: look again in this many milliseconds (or when woken).
    Wait(u64),
    /// Send this notification now.
    Attempt(u64),
}

/// Gives up a notification that is too old, keeping its last attempt's answer in the reason.
fn expired(p: &Pending, now: Millis, policy: &Policy) -> Finished {
    let why = format!("given up: not delivered within {} s", policy.give_up_after_ms / 1000);
    let last = p.last.clone().unwrap_or(Attempt { at: now, status: None, error: None, millis: 0 });
    let error = Some(match &last.error {
        Some(e) => format!("{why}; last attempt: {e}"),
        None => why,
    });
    let last = Attempt { error, ..last };
    Finished { kind: p.kind.clone(), body: p.body.clone(), created_at: p.created_at, attempts: p.attempts, delivered: false, finished_at: now, last }
}

/// Decides the next step at `now` from the window of the outbox, the endpoint not being tried
/// before `not_before` (its backoff after a failure). The candidates are the head of the line
/// and the set-aside rows; a row behind an older one of its user is never one. Of those due,
/// the oldest goes; a row too old for `give_up_after_ms` is given up first, wherever it is.
pub fn step(w: &Window, now: Millis, not_before: Millis, policy: &Policy) -> Step {
    if let Some((id, _, p)) = w.rows.iter().find(|(_, _, p)| now - p.created_at > policy.give_up_after_ms) {
        return Step::Expire(*id, expired(p, now, policy));
    }
    let Some(first_expiry) = w.rows.iter().map(|(_, _, p)| p.created_at + policy.give_up_after_ms + 1).min() else { return Step::Idle };
    let candidates = || w.rows.iter().filter(|(_, role, _)| *role != Role::Behind).map(|(id, _, p)| (*id, p.next_at.max(not_before)));
    if let Some((id, _)) = candidates().filter(|(_, at)| *at <= now).min() {
        return Step::Attempt(id);
    }
    let next = candidates().map(|(_, at)| at).min().unwrap_or(first_expiry);
    Step::Wait((next.min(first_expiry) - now) as u64)
}

/// An endpoint's state between attempts, in the worker's memory: its failures in a row, and
/// the time before which it is not tried (its backoff).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub failures: u32,
    pub not_before: Millis,
}

/// What an attempt leaves: the delivery finished (delivered or given up), or to be retried
/// at `next_at`. A failure backs off the whole endpoint (`e`) by its failures in a row; a
/// notification in line is due again when that backoff ends. One that is (now) set aside is
/// due only after its own backoff too, counted from its own failed attempts and from the end
/// of the endpoint's: so the head of the line goes first when the endpoint is tried again
/// (were they due together, the older set-aside one would win every time, and hold the line
/// as before), and a set-aside one is retried ever more rarely.
pub fn after_attempt(mut p: Pending, a: Attempt, now: Millis, e: &mut Backoff, policy: &Policy, unit: f64) -> Result<Finished, Pending> {
    p.attempts += 1;
    let delivered = a.error.is_none();
    if delivered {
        *e = Backoff::default();
    } else {
        e.failures += 1;
        e.not_before = now + backoff(e.failures, policy.base_ms, policy.max_ms, unit) as Millis;
    }
    if delivered || p.attempts >= policy.max_attempts {
        return Ok(Finished { kind: p.kind, body: p.body, created_at: p.created_at, attempts: p.attempts, delivered, finished_at: now, last: a });
    }
    p.next_at = if policy.set_aside(&p) { e.not_before + backoff(p.attempts, policy.base_ms, policy.max_ms, unit) as Millis } else { e.not_before };
    p.last = Some(a);
    Err(p)
}

/// A redrive asked for through the API: a set-aside notification back in line with a fresh
/// count of attempts, due now; `None` when it is not set aside (delivered meanwhile, given up,
/// or never set aside), which leaves it as it is.
pub fn redriven(p: Pending, now: Millis, policy: &Policy) -> Option<Pending> {
    policy.set_aside(&p).then_some(Pending { attempts: 0, next_at: now, ..p })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap_and_jitters_down_by_at_most_half() {
        // (failures, unit) -> delay, with base 1000 ms and cap 600000 ms.
        let table = [(1, 0.0, 500), (1, 0.999_999, 999), (2, 0.0, 1000), (3, 0.5, 3000), (10, 0.0, 256_000), (11, 0.0, 300_000), (11, 1.0, 600_000), (50, 0.0, 300_000), (0, 0.0, 500)];
        for (failures, unit, want) in table {
            assert_eq!(backoff(failures, 1000, 600_000, unit), want, "failures {failures}, unit {unit}");
        }
    }

    fn pending(created_at: Millis, next_at: Millis, attempts: u32) -> Pending {
        Pending { kind: "unlock".into(), body: "{}".into(), created_at, attempts, next_at, last: None }
    }

    const POLICY: Policy = Policy { base_ms: 1000, max_ms: 600_000, max_attempts: 5, give_up_after_ms: 60_000, hold_attempts: 2 };

    /// A row as (id, user, created_at, next_at, attempts).
    type Row<'a> = (u64, &'a str, Millis, Millis, u32);

    /// A window read from rows oldest first, as the worker reads it: up to the head of the line.
    fn window(rows: &[Row]) -> Window {
        let mut w = Window::default();
        for &(id, user, created, next, attempts) in rows {
            if !w.push(id, user.to_string(), pending(created, next, attempts), &POLICY) {
                break;
            }
        }
        w
    }

    #[test]
    fn the_window_reads_past_set_aside_rows_and_their_users_later_ones_up_to_the_head_of_the_line() {
        // (rows, roles of the rows read). `hold_attempts` is 2: two failures set a row aside.
        let table: [(&[Row], &[Role]); 5] = [
            (&[(1, "a", 0, 0, 0), (2, "b", 0, 0, 0)], &[Role::Head]),
            (&[(1, "a", 0, 0, 1), (2, "b", 0, 0, 0)], &[Role::Head]),
            (&[(1, "a", 0, 0, 2), (2, "b", 0, 0, 0), (3, "c", 0, 0, 0)], &[Role::Aside, Role::Head]),
            (&[(1, "a", 0, 0, 2), (2, "a", 0, 0, 0), (3, "a", 0, 0, 0), (4, "b", 0, 0, 0)], &[Role::Aside, Role::Behind, Role::Behind, Role::Head]),
            (&[(1, "a", 0, 0, 3), (2, "b", 0, 0, 2), (3, "a", 0, 0, 0)], &[Role::Aside, Role::Aside, Role::Behind]),
        ];
        for (rows, roles) in table {
            let got: Vec<Role> = window(rows).rows.iter().map(|r| r.1).collect();
            assert_eq!(got, roles, "{rows:?}");
        }
    }

    #[test]
    fn the_next_step_is_the_oldest_due_of_the_head_and_the_set_aside_rows_never_one_behind_its_user() {
        // (rows, now, not_before, step).
        let table: [(&[Row], Millis, Millis, Step); 11] = [
            (&[], 0, 0, Step::Idle),
            (&[(1, "a", 0, 0, 0)], 0, 0, Step::Attempt(1)),
            // A failed head holds the line: the rows behind it are not even read.
            (&[(1, "a", 0, 1500, 1), (2, "b", 0, 0, 0)], 1000, 0, Step::Wait(500)),
            (&[(1, "a", 0, 1500, 1), (2, "b", 0, 0, 0)], 1500, 0, Step::Attempt(1)),
            // Set aside: the next in line goes while it waits for its own backoff ...
            (&[(1, "a", 0, 5000, 2), (2, "b", 0, 0, 0)], 1000, 0, Step::Attempt(2)),
            // ... but not before the endpoint's backoff after the last failure has run.
            (&[(1, "a", 0, 5000, 2), (2, "b", 0, 0, 0)], 1000, 1200, Step::Wait(200)),
            // Once due again, the set-aside row is older and goes first.
            (&[(1, "a", 0, 5000, 2), (2, "b", 0, 0, 0)], 5000, 0, Step::Attempt(1)),
            // The set-aside row's user waits behind it: user b's row goes, not a's second.
            (&[(1, "a", 0, 5000, 2), (2, "a", 0, 0, 0), (3, "b", 0, 0, 0)], 1000, 0, Step::Attempt(3)),
            (&[(1, "a", 0, 5000, 2), (2, "a", 0, 0, 0)], 1000, 0, Step::Wait(4000)),
            // Exactly at the age limit a row is still tried; waits end by the first expiry.
            (&[(1, "a", 0, 0, 0)], 60_000, 0, Step::Attempt(1)),
            (&[(1, "a", 0, 90_000, 2), (2, "a", 100, 0, 0)], 59_000, 0, Step::Wait(1001)),
        ];
        for (rows, now, not_before, want) in table {
            assert_eq!(step(&window(rows), now, not_before, &POLICY), want, "{rows:?} at {now}, not before {not_before}");
        }
    }

    #[test]
    fn a_row_too_old_is_given_up_wherever_it_waits() {
        // The oldest is set aside and young enough; the one behind it is too old.
        let w = window(&[(1, "a", 10_000, 0, 2), (2, "a", 0, 0, 0), (3, "b", 70_000, 0, 0)]);
        let Step::Expire(id, done) = step(&w, 60_001, 0, &POLICY) else { panic!("too old") };
        assert_eq!((id, done.delivered, done.attempts, done.finished_at), (2, false, 0, 60_001));
        assert!(done.last.error.unwrap().contains("not delivered within 60 s"));
    }

    #[test]
    fn an_attempt_finishes_the_delivery_or_schedules_the_next_with_the_endpoints_backoff() {
        let ok = Attempt { at: 0, status: Some(204), error: None, millis: 3 };
        let bad = Attempt { at: 0, status: Some(500), error: Some("the endpoint answered 500".into()), millis: 3 };
        let mut e = Backoff { failures: 4, not_before: 5 };
        let done = after_attempt(pending(0, 0, 1), ok, 10, &mut e, &POLICY, 0.0).unwrap();
        assert_eq!((done.delivered, done.attempts, e), (true, 2, Backoff::default()));
        // Failure number 5 in a row: 16 s, jittered down to 8 s at unit 0, for the endpoint
        // and the notification alike.
        let mut e = Backoff { failures: 4, not_before: 0 };
        let retry = after_attempt(pending(0, 0, 0), bad.clone(), 10, &mut e, &POLICY, 0.0).unwrap_err();
        assert_eq!((retry.attempts, retry.next_at, e, retry.last.unwrap().status), (1, 8_010, Backoff { failures: 5, not_before: 8_010 }, Some(500)));
        // A set-aside notification failing on an endpoint that takes the others: the endpoint
        // backs off by its one failure (0.5 s), the notification by its own 4 attempts (4 s)
        // after that, so the head of the line is tried before it.
        let mut e = Backoff::default();
        let retry = after_attempt(pending(0, 0, 3), bad.clone(), 10, &mut e, &POLICY, 0.0).unwrap_err();
        assert_eq!((retry.attempts, retry.next_at, e), (4, 4_510, Backoff { failures: 1, not_before: 510 }));
        // The head's second failure sets it aside (`hold_attempts` 2): due after both backoffs.
        let mut e = Backoff { failures: 1, not_before: 0 };
        let retry = after_attempt(pending(0, 0, 1), bad.clone(), 10, &mut e, &POLICY, 0.0).unwrap_err();
        assert_eq!((retry.attempts, retry.next_at, e.not_before), (2, 2_010, 1_010));
        let w = window(&[]);
        assert_eq!(step(&w, 0, 0, &POLICY), Step::Idle);
        // The last allowed attempt fails: given up, and the endpoint still backs off.
        let mut e = Backoff::default();
        let done = after_attempt(pending(0, 0, 4), bad, 10, &mut e, &POLICY, 0.0).unwrap();
        assert_eq!((done.delivered, done.attempts, e), (false, 5, Backoff { failures: 1, not_before: 510 }));
    }

    #[test]
    fn a_redrive_puts_a_set_aside_row_back_in_line_due_now_and_leaves_others_alone() {
        let back = redriven(pending(0, 90_000, 3), 1_000, &POLICY).unwrap();
        assert_eq!((back.attempts, back.next_at, POLICY.set_aside(&back)), (0, 1_000, false));
        assert_eq!(redriven(pending(0, 2_000, 1), 1_000, &POLICY), None, "in line: not redriven");
    }

    #[test]
    fn the_user_of_a_notification_is_read_from_its_body() {
        let p = Pending { body: super::super::notification(7, "unlock", 0, "t", "ü/\"x", "{}"), ..pending(0, 0, 0) };
        assert_eq!(user_of(&p), "ü/\"x");
    }
}
