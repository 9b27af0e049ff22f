//! What applying one event produces: effects as data, for the shell to persist and push.

use super::state::RevokeCause;
use super::value::Millis;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    /// The event counts; everything after this in the list follows from it.
    Accepted { event_id: String },
    /// The event was seen before and changed nothing.
    Duplicate { event_id: String, by: DuplicateBy },
    /// The event was refused and changed nothing.
    Rejected { event_id: String, reason: Rejection },
    /// XP changed: `delta` from one rule or badge, `total` and `level` after it.
    Xp { delta: u64, total: u64, level: u32, reason: XpReason },
    LevelUp { level: u32 },
    /// The event adds `amount` to community goal `goal` (its key, `CommunityGoalDef::key`;
    /// docs/teams.md): the shell adds it to the user's share and the tenant's total once it is
    /// durable.
    Contributed { goal: Arc<str>, amount: f64 },
    /// A badge was earned. `count` is how many times it is now owned; `xp` what this award paid.
    Unlock { badge: Arc<str>, count: u32, key: Option<String>, xp: u64, at: Millis },
    /// A badge was taken away (`cause`: through the API, expired, or its facts retracted).
    /// `count` is how many awards it held; `xp` the XP taken back with it; `total` and
    /// `level` the user's after that.
    Revoked { badge: Arc<str>, cause: RevokeCause, reason: String, count: u32, xp: u64, total: u64, level: u32, at: Millis },
    /// A badge's measurable progress moved (up, or back when a streak breaks).
    Progress { badge: Arc<str>, current: f64, target: f64 },
    /// An assigned goal is now tracked.
    GoalAssigned { goal: String, title: String, assigner: String, due: Option<Millis> },
    /// The goal's criterion was met: the assignee is told like an unlock, the assigner by a notice.
    GoalCompleted { goal: String, title: String, assigner: String, at: Millis },
    /// The due date passed first.
    GoalMissed { goal: String, title: String, assigner: String, at: Millis },
    GoalCancelled { goal: String },
    /// The user's score on a leaderboard for the current period is now `score`, reached at
    /// `reached` (the receive time, which breaks ties). `moved_from` names the league the user
    /// left, when their segment attribute changed within the period.
    Score { board: Arc<str>, period: Arc<str>, end: Millis, segment: Option<String>, score: f64, reached: Millis, moved_from: Option<String> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DuplicateBy {
    EventId,
    Fingerprint,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum XpReason {
    Rule(Arc<str>),
    Badge(Arc<str>),
}

/// Why an event was refused. The core never fails on bad input: it reports one of these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Rejection {
    UnknownEventType(String),
    MissingField(String),
    WrongType { field: String, expected: String, got: String },
    BadValue { field: String, message: String },
    TooLate { bound_ms: Millis },
    InFuture { skew_ms: Millis },
    WrongUser,
}

impl Rejection {
    /// A short machine-readable code, stable across versions.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::UnknownEventType(_) => "unknown_event_type",
            Rejection::MissingField(_) => "missing_field",
            Rejection::WrongType { .. } => "wrong_type",
            Rejection::BadValue { .. } => "bad_value",
            Rejection::TooLate { .. } => "too_late",
            Rejection::InFuture { .. } => "in_future",
            Rejection::WrongUser => "wrong_user",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::UnknownEventType(t) => write!(f, "event type `{t}` is not in the catalogue"),
            Rejection::MissingField(x) => write!(f, "payload.{x} is required"),
            Rejection::WrongType { field, expected, got } => write!(f, "payload.{field} must be a {expected}, not a {got}"),
            Rejection::BadValue { field, message } => write!(f, "payload.{field}: {message}"),
            Rejection::TooLate { bound_ms } => write!(f, "occurred_at is more than {} s in the past", bound_ms / 1000),
            Rejection::InFuture { skew_ms } => write!(f, "occurred_at is more than {} s in the future", skew_ms / 1000),
            Rejection::WrongUser => f.write_str("event belongs to another user or tenant"),
        }
    }
}
