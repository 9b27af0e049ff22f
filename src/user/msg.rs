//! What the rest of the server sends a user's actor and gets back: the messages, the
//! connection handle, the ingest outcome, queries and the in-flight slots of a socket event.

use crate::core::{Event, Millis, UserState, Catalogue};
use crate::protocol::{Frame, Since};
use crate::records::GoalOp;
use crate::store;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

/// What one backfill asks of each user's actor.
#[derive(Debug, Clone)]
pub struct BackfillSpec {
    pub job: u64,
    pub badges: Vec<String>,
    pub new_stats: Vec<u64>,
    /// Push the awards to the user's open sockets (and recovery history) like live ones.
    pub notify: bool,
}

/// A connection as the actor sees it: where to write, and how to tell it it is too slow.
#[derive(Clone, Debug)]
pub struct Conn {
    pub id: u64,
    pub tx: mpsc::Sender<Frame>,
    pub slow: Arc<Notify>,
    /// Why the actor let go of this connection, when it did so on purpose: the session closes
    /// with this code once it has written what was queued.
    pub closing: Arc<std::sync::OnceLock<(u16, &'static str)>>,
}

/// What the HTTP API gets back for one ingested event.
#[derive(Debug, Clone, Serialize)]
pub struct IngestOutcome {
    pub event_id: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Borrowed for the server's own codes, owned for one that came from another node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<std::borrow::Cow<'static, str>>,
    pub xp: u64,
    pub unlocks: Vec<String>,
}

/// What a revocation or retraction did, once it is durable.
#[derive(Debug, Clone)]
pub struct Taken {
    /// Whether it changed anything: false for a badge already taken away, or an event already
    /// retracted (asked again, it is counted once).
    pub changed: bool,
    /// The badges taken (`Effect::Revoked`), any expiry seen at the same moment included.
    pub fx: Vec<crate::core::Effect>,
    /// The revocation the badge asked about now holds (revocations only).
    pub revocation: Option<crate::core::Revocation>,
    pub xp: u64,
    pub level: u32,
}

/// Why a revocation or retraction was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TakeError {
    UnknownBadge,
    NotOwned,
    /// No event of this user by that id (or only a record the server made).
    UnknownEvent,
    /// The user's log no longer starts at the beginning (swept by retention), so the facts
    /// without the event cannot be recomputed.
    LogIncomplete,
    Failed(String),
}

/// Who asked for an event, to send the ack or error back.
pub enum Origin {
    Conn(u64),
    Http(oneshot::Sender<IngestOutcome>),
}

/// What a query sees: the user's state (everything accepted is durable), the catalogue in
/// force, and the stream positions. The state may still be aligned to an older catalogue
/// version until the next event; use stat ids, or a synced copy, to read stats.
pub struct UserView<'a> {
    pub state: &'a UserState,
    pub catalogue: &'a Arc<Catalogue>,
    pub seq: u64,
    pub offset: u64,
}

/// A question run inside the actor on its state, answering through its own channel: nothing
/// is copied that the question does not need.
pub type Query = Box<dyn FnOnce(UserView<'_>) + Send>;


/// A socket event's in-flight slots, held from the moment its frame is read until its reply
/// goes out.
pub enum InFlight {
    /// A socket of this node: its connection's slot (`--inflight-per-user`) and the server's
    /// (`--socket-inflight-events`).
    Socket { conn: OwnedSemaphorePermit, server: OwnedSemaphorePermit },
    /// A socket another node holds (cluster mode): that node keeps the slots, and this tells
    /// it, when dropped, that one is free again.
    Remote(Receipt),
}

/// Sends one note when dropped, however the event it stands for ended (answered, failed, or
/// its actor gone).
pub struct Receipt(pub mpsc::UnboundedSender<()>);

impl Drop for Receipt {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Conn {
    /// A connection id no other connection of this process has had.
    pub fn next_id() -> u64 {
        NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Why a membership change was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkError {
    /// The entity has `limit` links already.
    Full(usize),
    /// The store could not read or write it.
    Failed(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Full(n) => write!(f, "it has {n} already, the most the catalogue allows"),
            LinkError::Failed(why) => write!(f, "{why}"),
        }
    }
}

pub enum UserMsg {
    /// An authenticated event. `permit` holds its in-flight slots (socket events only); they
    /// are released when the reply goes out. `arrived` starts the event-to-push clock.
    Event { event: Event, received_at: Millis, arrived: Instant, origin: Origin, permit: Option<InFlight> },
    /// A question about the state, answered once everything accepted so far is durable.
    Query(Query),
    /// Re-evaluate this user for a backfill job; replies with the number of badges this job
    /// has awarded the user (on this visit or an earlier one), once they are durable.
    Backfill { spec: Arc<BackfillSpec>, reply: oneshot::Sender<Result<u32, String>> },
    /// A goal operation on this user as the assignee. Replies with the goal as stored, once
    /// durable, or why it was refused.
    Goal { op: GoalOp, reply: oneshot::Sender<Result<Option<store::GoalRecord>, String>> },
    /// Tell this user (a goal's assigner) how a goal ended: a `notice` push, kept in the
    /// history. `id` makes it once only. Replies once durable.
    Notice { id: String, kind: &'static str, goal: String, title: String, assignee: String, at: Millis, reply: oneshot::Sender<Result<(), String>> },
    /// The user finished a closed leaderboard period at `rank`: award the board's badge if
    /// due. Replies whether anything was awarded, once it is durable.
    Award { board: String, period: String, rank: usize, reply: oneshot::Sender<Result<bool, String>> },
    /// A membership change on this entity's side (docs/teams.md): link it to `other` (a
    /// user's team, a team's member) unless it already has `limit` links, or unlink it.
    /// Replies whether anything changed, once durable.
    Link { other: String, join: bool, limit: usize, reply: oneshot::Sender<Result<bool, LinkError>> },
    /// A team's unlock told to this member (an `accolade.team_unlock` record the team mailed):
    /// pushed and logged once under its id. Replies once durable.
    TeamUnlock { event: Event, reply: oneshot::Sender<Result<(), String>> },
    /// Take a badge away (the API's revocation): replies with what was taken, once durable.
    Revoke { badge: String, reason: String, claw_back: bool, reply: oneshot::Sender<Result<Taken, TakeError>> },
    /// Retract one of this user's events: its facts recomputed without it, and the badges it
    /// earned taken away. Replies once durable.
    Retract { event_id: String, reason: String, claw_back: bool, reply: oneshot::Sender<Result<Taken, TakeError>> },
    /// The expiry sweep: take the badges run out by now (an `accolade.expire` record and its
    /// pushes) and set the expiry index right. Replies once durable.
    Expire { reply: oneshot::Sender<Result<(), String>> },
    Attach { conn: Conn, since: Option<Since> },
    Detach { conn_id: u64 },
    /// From the persister: every job up to `job` is on disk (or failed).
    Durable { job: u64, result: Result<(), String> },
    /// Passivation check.
    Tick,
    /// Frames for this user's open sockets that are in no history (a team's progress).
    Told(Vec<Frame>),
    /// A community goal of the tenant closed: tell this user its outcome if she took part and
    /// was not told yet (docs/teams.md).
    CommunityClosed,
    /// Shutdown: write a snapshot, then stop.
    Stop(oneshot::Sender<()>),
}

/// Messages the registry counts as in flight until the actor has handled them.
pub(crate) fn counted(m: &UserMsg) -> bool {
    matches!(
        m,
        UserMsg::Event { .. }
            | UserMsg::Attach { .. }
            | UserMsg::Detach { .. }
            | UserMsg::Stop(_)
            | UserMsg::Query(_)
            | UserMsg::Backfill { .. }
            | UserMsg::Award { .. }
            | UserMsg::Goal { .. }
            | UserMsg::Notice { .. }
            | UserMsg::Link { .. }
            | UserMsg::TeamUnlock { .. }
            | UserMsg::Revoke { .. }
            | UserMsg::Retract { .. }
            | UserMsg::Expire { .. }
    )
}
