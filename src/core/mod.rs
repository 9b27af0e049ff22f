//! The rule core: a pure, deterministic engine that decides, for one user and one event, what
//! changes and what to tell the user.
//!
//! Its single entry point is [`apply`]`(state, event, now, catalogue) -> effects`. Nothing here
//! does IO, reads a clock, spawns a task or imports the server's dependencies (tokio, ractor,
//! sled, axum): the shell passes time in and performs the effects that come out.
//!
//! The modules form layers: each one imports only modules listed below it (unit tests aside),
//! so the core has no import cycle. Where a lower module needs something of a higher one, the
//! higher one passes it in (the engine hands `goal` its own `apply`).
//!
//! - [`engine`]: `apply` itself, and `backfill`.
//! - [`goal`]: goals one user assigns another, tracked like badges.
//! - [`board`]: what an event adds to a user's leaderboard scores, and period awards.
//! - [`explain`]: progress towards unowned badges, part by part.
//! - [`revoke`]: badges taken away (through the API, by expiry, by a retraction), and whether
//!   a badge is held at a moment.
//! - [`xp`]: crediting XP and announcing a level-up.
//! - [`history`]: window totals and recent-action patterns, read from the last-N cache.
//! - [`state`]: what is kept per user (XP, badges, stats, last-N cache, dedup memory, goals).
//! - [`catalogue`]: the versioned rule document and its compilation into stat slots and indices.
//! - [`effect`]: what `apply` returns.
//! - [`predicate`]: payload conditions compiled to field positions.
//! - [`buckets`]: totals per local day, week or month, and which reached a threshold.
//! - [`calendar`]: local days in the user's time zone, leaderboard periods in the tenant's.
//! - [`value`]: payload values, the event contract, durations and stable hashes.

pub mod board;
pub mod buckets;
pub mod calendar;
pub mod catalogue;
pub mod effect;
pub mod engine;
pub mod explain;
pub mod goal;
pub mod history;
pub mod predicate;
pub mod revoke;
pub mod state;
pub mod stats;
pub mod value;
pub mod xp;

pub use catalogue::{Catalogue, CatalogueError, Format, Tier};
pub use effect::{DuplicateBy, Effect, Rejection, XpReason};
pub use engine::{apply, backfill, look, remember_id};
pub use board::{award_rank, give};
pub use calendar::Period;
pub use state::{BadgeRecord, BoardScore, Revocation, RevokeCause, UserState};
pub use value::{Event, Millis, Value};
