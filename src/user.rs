//! The user actor: one per active user, owning that user's state. It applies events with the
//! rule core, turns effects into writes and pushes, and releases the pushes only once the
//! persister says the writes are on disk, so a push always describes durable state.
//!
//! Also here: the registry that finds or spawns a user's actor, and the supervisor that forgets
//! an actor that stopped or failed, so the next message revives the user from sled.

use crate::backfill::BackfillSpec;
use crate::core::{apply, Catalogue, Effect, Event, Millis, UserState};
use crate::protocol::{self, Frame, Since};
use crate::server::Shared;
use crate::store::{self, StoredEvent};
use dashmap::DashMap;
use futures_util::future::Either;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, MessagingErr, SupervisionEvent};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    pub xp: u64,
    pub unlocks: Vec<String>,
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

/// A goal operation, logged as an `accolade.goal` record so every rebuild repeats it.
#[derive(Debug, Clone)]
pub enum GoalOp {
    Assign(crate::core::goal::GoalSpec),
    Due(String),
    Cancel(String),
}

/// A socket event's two in-flight slots, its connection's (`--inflight-per-user`) and the
/// server's (`--socket-inflight-events`), held from the moment its frame is read until its
/// reply goes out.
pub struct InFlight {
    pub conn: OwnedSemaphorePermit,
    pub server: OwnedSemaphorePermit,
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
    Attach { conn: Conn, since: Option<Since> },
    Detach { conn_id: u64 },
    /// From the persister: every job up to `job` is on disk (or failed).
    Durable { job: u64, result: Result<(), String> },
    /// Passivation check.
    Tick,
    /// Shutdown: write a snapshot, then stop.
    Stop(oneshot::Sender<()>),
}

/// Messages the registry counts as in flight until the actor has handled them.
fn counted(m: &UserMsg) -> bool {
    matches!(m, UserMsg::Event { .. } | UserMsg::Attach { .. } | UserMsg::Detach { .. } | UserMsg::Stop(_) | UserMsg::Query(_) | UserMsg::Backfill { .. } | UserMsg::Award { .. } | UserMsg::Goal { .. } | UserMsg::Notice { .. })
}

enum Delivery {
    One(u64, Frame),
    All(Frame),
    Http(oneshot::Sender<IngestOutcome>, IngestOutcome),
    /// Held only to be dropped on delivery, which frees the event's in-flight slots.
    Release(#[allow(dead_code)] InFlight),
    /// The event's pushes are released: record how long that took since it arrived.
    Observe(Instant),
    /// A backfill's awards are durable.
    Backfilled(oneshot::Sender<Result<u32, String>>, u32),
    /// A leaderboard award is durable (or there was nothing to award).
    Awarded(oneshot::Sender<Result<bool, String>>, bool),
    /// A goal operation is durable.
    Goal(oneshot::Sender<Result<Option<store::GoalRecord>, String>>, Option<store::GoalRecord>),
    /// A notice is durable.
    Noticed(oneshot::Sender<Result<(), String>>),
    /// The event is durable: count it as accepted (`accolade_events_total`). A job that
    /// fails counts its events as `storage_failed` instead.
    Accepted,
    /// A leaderboard score is durable: update the live ranking.
    Board(store::BoardKey, store::BoardEntry, Option<store::BoardKey>),
    /// Webhook notifications are durable in these endpoints' outboxes: wake their workers.
    Wake(Vec<Arc<tokio::sync::Notify>>),
}

/// Work that must wait until everything in flight is durable, so it sees durable state.
enum Waiting {
    Attach(Conn, Option<Since>),
    Query(Query),
    Backfill(Arc<BackfillSpec>, oneshot::Sender<Result<u32, String>>),
    Award(String, String, usize, oneshot::Sender<Result<bool, String>>),
    Goal(GoalOp, oneshot::Sender<Result<Option<store::GoalRecord>, String>>),
    Notice(NoticeMsg),
}

pub struct NoticeMsg {
    id: String,
    kind: &'static str,
    goal: String,
    title: String,
    assignee: String,
    at: Millis,
    reply: oneshot::Sender<Result<(), String>>,
}

pub struct UserActor;

pub struct UserArgs {
    pub shared: Arc<Shared>,
    pub tenant: String,
    pub user: String,
    pub inflight: Arc<AtomicU64>,
}

pub struct User {
    shared: Arc<Shared>,
    tenant: String,
    user: String,
    inflight: Arc<AtomicU64>,
    st: UserState,
    epoch: String,
    seq: u64,
    offset: u64,
    snap_seq: u64,
    conns: Vec<Conn>,
    pending: VecDeque<(u64, Vec<Delivery>)>,
    next_job: u64,
    waiting: Vec<Waiting>,
    last_activity: Instant,
    /// For each badge: when progress was last pushed, and at which tenth of the target.
    progress_sent: HashMap<Arc<str>, (Instant, u8)>,
}

/// Every leaderboard score the user's state holds (each board's current period and the one
/// before), as stored.
fn board_scores(st: &UserState) -> Vec<(String, String, String, store::BoardEntry)> {
    let mut out = Vec::new();
    for (board, b) in &st.boards {
        for s in std::iter::once(b).chain(b.previous.as_deref()) {
            let entry = store::BoardEntry { score: s.score, reached: s.reached, end: s.end };
            out.push((board.clone(), s.period.to_string(), s.segment.clone().unwrap_or_default(), entry));
        }
    }
    out
}

/// The push epoch of a user with nothing stored yet. It is the same every time, so a client
/// that saw the welcome of a brand-new user, before anything was written, still resumes after
/// a crash. A user's first event stores it with the first snapshot, and an epoch only changes
/// when stored history is lost, which is what clients must be told.
fn genesis_epoch(tenant: &str, user: &str) -> String {
    let h = crate::core::value::stable_hash(format!("genesis\0{tenant}\0{user}").as_bytes());
    format!("{h:016x}")
}

pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

impl Actor for UserActor {
    type Msg = UserMsg;
    type State = User;
    type Arguments = UserArgs;

    async fn pre_start(&self, _: ActorRef<UserMsg>, a: UserArgs) -> Result<User, ActorProcessingErr> {
        if a.shared.catalogue(&a.tenant).is_none() {
            return Err(format!("tenant `{}` has no catalogue", a.tenant).into());
        }
        let (shared, t, u) = (a.shared.clone(), a.tenant.clone(), a.user.clone());
        // sled reads can touch the disk, so they run on the blocking pool. The event log is the
        // durable truth after the snapshot: it is replayed with each event's own receive time
        // and catalogue version, which rebuilds exactly the state that was acknowledged.
        let r = tokio::task::spawn_blocking(move || crate::replay::restore(&shared.store, &shared.catalogues, &t, &u)).await??;
        let (st, snap_seq) = (r.state, r.snap_seq);
        let epoch = r.epoch.unwrap_or_else(|| genesis_epoch(&a.tenant, &a.user));
        let loaded = crate::store::Loaded { record: None, tail: vec![], last_seq: r.last_seq, last_offset: r.last_offset };
        a.shared.metrics.actors.fetch_add(1, Ordering::Relaxed);
        Ok(User {
            shared: a.shared,
            tenant: a.tenant,
            user: a.user,
            inflight: a.inflight,
            st,
            epoch,
            seq: loaded.last_seq,
            offset: loaded.last_offset,
            snap_seq,
            conns: Vec::new(),
            pending: VecDeque::new(),
            next_job: 0,
            waiting: Vec::new(),
            last_activity: Instant::now(),
            progress_sent: HashMap::new(),
        })
    }

    // `handle` is a plain fn that returns its future, not an async fn, and it does the work of
    // the common messages (events, durable completions, detach, tick) before returning a ready
    // future. ractor keeps the future that waits for an actor's next message on the heap for the
    // whole life of the actor, and that future holds `handle`'s inline (twice over, in its
    // `run_with_signal`). As an async fn, `handle` kept the 208-byte message twice and room for
    // the largest thing it could await, and every connected user paid about 1.8 KiB for it even
    // when idle (`-Zprint-type-sizes`, heaptrack; bench/README.md, fix 13). Now only messages
    // that wait (attach, queries, backfills, awards, goals, notices, stop, and waiting work that
    // a completion releases) build a future, boxed, when they arrive.
    fn handle(&self, myself: ActorRef<UserMsg>, msg: UserMsg, u: &mut User) -> impl Future<Output = Result<(), ActorProcessingErr>> + Send {
        let was_counted = counted(&msg);
        let later = match msg {
            UserMsg::Event { event, received_at, arrived, origin, permit } => {
                let _span = tracing::debug_span!("event", event_id = %event.event_id, tenant = %u.tenant, user = %u.user).entered();
                let seq = u.seq;
                let result = u.on_event(&myself, event, received_at, arrived, origin, permit);
                // A user sending a burst (hundreds of events queued in its mailbox) would
                // otherwise handle about a hundred of them, until tokio's budget runs out, each
                // time it is polled, and every other user's event waits behind that in the
                // runtime's queue, once per hop. Every sixteenth stored event the actor goes to
                // the back of the queue instead (bench/README.md, fix 22).
                if result.is_err() || u.seq == seq || !u.seq.is_multiple_of(YIELD_EVERY) {
                    return u.done(was_counted, result);
                }
                Later::Yield
            }
            UserMsg::Attach { conn, since } => {
                u.last_activity = Instant::now();
                // The welcome must describe durable state: wait for the writes in flight.
                Later::Run(Waiting::Attach(conn, since))
            }
            UserMsg::Query(reply) => Later::Run(Waiting::Query(reply)),
            UserMsg::Backfill { spec, reply } => Later::Run(Waiting::Backfill(spec, reply)),
            UserMsg::Award { board, period, rank, reply } => Later::Run(Waiting::Award(board, period, rank, reply)),
            UserMsg::Goal { op, reply } => Later::Run(Waiting::Goal(op, reply)),
            UserMsg::Notice { id, kind, goal, title, assignee, at, reply } => Later::Run(Waiting::Notice(NoticeMsg { id, kind, goal, title, assignee, at, reply })),
            UserMsg::Detach { conn_id } => {
                u.conns.retain(|c| c.id != conn_id);
                u.waiting.retain(|w| !matches!(w, Waiting::Attach(c, _) if c.id == conn_id));
                u.last_activity = Instant::now();
                return u.done(was_counted, Ok(()));
            }
            UserMsg::Durable { job, result } => match u.on_durable(job, result) {
                Ok(()) if u.pending.is_empty() && !u.waiting.is_empty() => Later::Waiting,
                r => return u.done(was_counted, r),
            },
            UserMsg::Tick => {
                u.maybe_passivate(&myself);
                return u.done(was_counted, Ok(()));
            }
            UserMsg::Stop(reply) => Later::Stop(reply),
        };
        Either::Right(Box::pin(async move {
            match later {
                Later::Yield => tokio::task::yield_now().await,
                Later::Run(w) => u.run_or_wait(&myself, w).await,
                Later::Waiting => u.run_waiting(&myself).await,
                Later::Stop(reply) => {
                    u.snapshot(&myself);
                    // A sync completes after everything submitted before it, so once it is done the
                    // snapshot (and everything before it) is on disk.
                    let _ = u.shared.store.sync().await;
                    let _ = reply.send(());
                    myself.stop(None);
                }
            }
            if was_counted {
                u.inflight.fetch_sub(1, Ordering::AcqRel);
            }
            Ok(())
        }))
    }
}

/// Stored events an actor handles before it lets the runtime's other tasks run (see `handle`).
const YIELD_EVERY: u64 = 16;

/// What a message leaves to do that must wait (see `handle`).
enum Later {
    /// The event is handled; let other tasks run before the next message.
    Yield,
    Run(Waiting),
    /// Work that waited for durable state, released by a completion.
    Waiting,
    Stop(oneshot::Sender<()>),
}

impl User {
    /// The end of a message handled at once (see `UserActor::handle`).
    fn done<F>(&self, was_counted: bool, result: Result<(), ActorProcessingErr>) -> Either<std::future::Ready<Result<(), ActorProcessingErr>>, F> {
        if was_counted {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
        }
        Either::Left(std::future::ready(result))
    }

    fn on_event(
        &mut self,
        myself: &ActorRef<UserMsg>,
        event: Event,
        received_at: Millis,
        arrived: Instant,
        origin: Origin,
        permit: Option<InFlight>,
    ) -> Result<(), ActorProcessingErr> {
        self.last_activity = Instant::now();
        let m = &self.shared.metrics;
        let mut deliveries = Vec::with_capacity(5);
        deliveries.push(Delivery::Observe(arrived));
        let reply = |deliveries: &mut Vec<Delivery>, origin: Origin, frame: Frame, outcome: IngestOutcome| match origin {
            Origin::Conn(id) => deliveries.push(Delivery::One(id, frame)),
            Origin::Http(tx) => deliveries.push(Delivery::Http(tx, outcome)),
        };
        let id = event.event_id.clone();
        let outcome = |status: &'static str| IngestOutcome { event_id: id.clone(), status, reason: None, code: None, xp: 0, unlocks: vec![] };
        // Ids older than the state's own recent-id window are found in the dedup tree, which
        // keeps them for as long as the event is retained. A store that has failed answers
        // nothing: its trees may hold an id whose write the disk refused, and acking that as a
        // duplicate would lose the event (the client drops what is acked).
        let seen = match self.shared.store.seen(&self.tenant, &event.event_id) {
            Ok(seen) => seen,
            Err(store::StoreError::Failed(why)) => {
                m.storage_failed.fetch_add(1, Ordering::Relaxed);
                let text = format!("the server cannot store events now ({why}); send it again later");
                let mut o = outcome("rejected");
                o.reason = Some(text.clone());
                o.code = Some("unavailable");
                reply(&mut deliveries, origin, protocol::error("unavailable", &text, Some(&event.event_id)), o);
                deliveries.extend(permit.map(Delivery::Release));
                self.enqueue(myself, vec![], deliveries);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(owner) = seen {
            if !owner.starts_with(&store::user_key(&self.tenant, &self.user)) {
                // The id was accepted for another user. Acking it as a duplicate would let one
                // user suppress another's events by guessing ids; say so instead.
                m.rejected.fetch_add(1, Ordering::Relaxed);
                let text = "event_id is already used by another user of this tenant; event ids must be unique per tenant";
                let mut o = outcome("rejected");
                o.reason = Some(text.into());
                o.code = Some("id_conflict");
                reply(&mut deliveries, origin, protocol::error("id_conflict", text, Some(&event.event_id)), o);
                deliveries.extend(permit.map(Delivery::Release));
                self.enqueue(myself, vec![], deliveries);
                return Ok(());
            }
            m.duplicates.fetch_add(1, Ordering::Relaxed);
            reply(&mut deliveries, origin, protocol::ack(&event.event_id, true), outcome("duplicate"));
            deliveries.extend(permit.map(Delivery::Release));
            self.enqueue(myself, vec![], deliveries);
            return Ok(());
        }
        let Some(cat) = self.shared.catalogue(&self.tenant) else { return Err("the tenant's catalogue is gone".into()) };
        let started = std::time::Instant::now();
        let fx = apply(&mut self.st, &event, received_at, &cat);
        m.rule_eval.record(started.elapsed());
        match fx.first() {
            Some(Effect::Accepted { .. }) => {}
            Some(Effect::Duplicate { .. }) => {
                m.duplicates.fetch_add(1, Ordering::Relaxed);
                reply(&mut deliveries, origin, protocol::ack(&event.event_id, true), outcome("duplicate"));
                deliveries.extend(permit.map(Delivery::Release));
                self.enqueue(myself, vec![], deliveries);
                return Ok(());
            }
            Some(Effect::Rejected { reason, .. }) => {
                m.rejected.fetch_add(1, Ordering::Relaxed);
                let text = reason.to_string();
                tracing::debug!(code = reason.code(), reason = %text, "event rejected");
                let mut o = outcome("rejected");
                o.reason = Some(text.clone());
                o.code = Some(reason.code());
                reply(&mut deliveries, origin, protocol::error("invalid_event", &text, Some(&event.event_id)), o);
                deliveries.extend(permit.map(Delivery::Release));
                self.enqueue(myself, vec![], deliveries);
                return Ok(());
            }
            _ => unreachable!("apply always starts with Accepted, Duplicate or Rejected"),
        }
        // Counted as accepted once it is durable (`Delivery::Accepted`), not now.
        deliveries.push(Delivery::Accepted);
        self.seq += 1;
        let event_id = event.event_id.clone();
        let event_id = event_id.as_str();
        let mut out = outcome("accepted");

        // Pushes, in the order the client sees them: one xp summing the event's XP, then
        // unlocks, then a level-up, then throttled progress.
        let mut frames = self.award_frames(&fx, &cat, event_id, &mut out);
        tracing::debug!(xp = out.xp, unlocks = out.unlocks.len(), "event accepted");
        // Progress is a hint for a progress bar: it is pushed when a badge crosses a tenth of
        // its target (or falls back, or completes), and not more often than the throttle.
        // Every push is a durable write, so this keeps the stream to what a user can see move.
        let throttle = std::time::Duration::from_millis(self.shared.config.progress_throttle_ms);
        let now = Instant::now();
        for e in &fx {
            if let Effect::Progress { badge, current, target } = e {
                let step = ((current / target).clamp(0.0, 1.0) * 10.0).floor() as u8;
                let due = match self.progress_sent.get(badge) {
                    None => step > 0,
                    Some((at, last)) => step != *last && (now.duration_since(*at) >= throttle || step < *last || current >= target),
                };
                if due {
                    self.progress_sent.insert(badge.clone(), (now, step));
                    self.offset += 1;
                    frames.push(protocol::progress(self.offset, badge, *current, *target));
                }
            }
        }
        let mut goal_writes = Vec::new();
        if fx.iter().any(|e| matches!(e, Effect::GoalCompleted { .. } | Effect::GoalMissed { .. })) {
            self.goal_frames(&fx, event_id, &mut frames, &mut goal_writes);
        }
        // The pushes are stored in the event's own record, for recovery.
        let first_new = self.offset + 1 - frames.len() as u64;
        let pushes = frames.iter().enumerate().map(|(i, f)| (first_new + i as u64, f.to_string())).collect();
        let stored = StoredEvent { event, received_at, catalogue_version: cat.version, pushes };
        let mut writes = Vec::with_capacity(4);
        // Leaderboard scores are written before the event, as one record per user: a crash
        // between the two leaves scores whose event is not acknowledged, and the resent event
        // writes the same scores.
        let mut scored = false;
        for e in &fx {
            if let Effect::Score { board, period, end, segment, score, reached, moved_from } = e {
                let key = store::BoardKey { tenant: self.tenant.clone(), board: board.to_string(), period: period.to_string(), segment: segment.clone().unwrap_or_default() };
                let entry = store::BoardEntry { score: *score, reached: *reached, end: *end };
                let left = moved_from.as_ref().map(|m| store::BoardKey { segment: m.clone(), ..key.clone() });
                deliveries.push(Delivery::Board(key, entry, left));
                scored = true;
            }
        }
        if scored {
            writes.push(store::writes::board_scores(&self.tenant, &self.user, &board_scores(&self.st)));
        }
        writes.extend(store::writes::event(&self.tenant, &self.user, self.seq, &stored));
        writes.extend(goal_writes);
        reply(&mut deliveries, origin, protocol::ack(event_id, false), out);
        deliveries.extend(frames.into_iter().map(Delivery::All));
        deliveries.extend(permit.map(Delivery::Release));
        if self.snap_seq == 0 || self.seq - self.snap_seq >= self.shared.config.snapshot_every {
            writes.extend(self.snapshot_write());
        }
        self.enqueue(myself, writes, deliveries);
        Ok(())
    }

    /// The xp, unlock and level-up pushes for `fx`, numbered from the next offset.
    fn award_frames(&mut self, fx: &[Effect], cat: &Catalogue, event_id: &str, out: &mut IngestOutcome) -> Vec<Frame> {
        let mut frames: Vec<Frame> = Vec::new();
        let gained: u64 = fx.iter().map(|e| if let Effect::Xp { delta, .. } = e { *delta } else { 0 }).sum();
        if gained > 0 {
            self.offset += 1;
            frames.push(protocol::xp(self.offset, gained, self.st.xp, self.st.level, event_id));
            out.xp = gained;
        }
        for e in fx {
            if let Effect::Unlock { badge, count, key, xp, at } = e
                && let Some(def) = cat.badge(badge)
            {
                self.offset += 1;
                frames.push(protocol::unlock(self.offset, def, *count, key.as_deref(), *xp, *at, event_id));
                out.unlocks.push(badge.to_string());
                self.shared.metrics.unlocks.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(level) = fx.iter().filter_map(|e| if let Effect::LevelUp { level } = e { Some(*level) } else { None }).max() {
            self.offset += 1;
            frames.push(protocol::level_up(self.offset, level, event_id));
        }
        frames
    }

    /// Runs `w` now if nothing is in flight, otherwise once everything in flight is durable.
    async fn run_or_wait(&mut self, myself: &ActorRef<UserMsg>, w: Waiting) {
        if !self.pending.is_empty() {
            self.waiting.push(w);
            return;
        }
        match w {
            Waiting::Attach(conn, since) => self.attach(conn, since).await,
            Waiting::Query(q) => {
                // The live state is not aligned to a new catalogue here (only by the next
                // event), so that replaying the log rebuilds it exactly.
                if let Some(catalogue) = self.shared.catalogue(&self.tenant) {
                    q(UserView { state: &self.st, catalogue: &catalogue, seq: self.seq, offset: self.offset });
                }
            }
            Waiting::Backfill(spec, reply) => {
                let outcome = self.backfill(myself, &spec, reply).await;
                if let Err((reply, e)) = outcome {
                    let _ = reply.send(Err(e));
                }
            }
            Waiting::Award(board, period, rank, reply) => self.award(myself, &board, &period, rank, reply),
            Waiting::Goal(op, reply) => self.goal(myself, op, reply),
            Waiting::Notice(n) => self.notice(myself, n),
        }
    }

    /// The goal as the API lists it, from this (the assignee's) state.
    fn goal_record(&self, id: &str) -> Option<store::GoalRecord> {
        let g = self.st.goals.get(id)?;
        Some(store::GoalRecord {
            spec: g.spec.clone(),
            assignee: self.user.clone(),
            assigned_at: g.assigned_at,
            status: g.status,
            closed_at: g.closed_at,
            notified: false,
        })
    }

    /// The pushes for goal effects, and the goal records they change.
    fn goal_frames(&mut self, fx: &[Effect], event_id: &str, frames: &mut Vec<Frame>, writes: &mut Vec<store::Write>) {
        for e in fx {
            let (id, frame) = match e {
                Effect::GoalAssigned { goal, title, assigner, due } => {
                    (goal, protocol::goal_assigned(self.offset + 1, goal, title, assigner, *due, event_id))
                }
                Effect::GoalCompleted { goal, title, assigner, at } => (goal, protocol::goal_completed(self.offset + 1, goal, title, assigner, *at, event_id)),
                Effect::GoalMissed { goal, title, assigner, at } => (goal, protocol::goal_missed(self.offset + 1, goal, title, assigner, *at, event_id)),
                Effect::GoalCancelled { goal } => {
                    if let Some(r) = self.goal_record(goal) {
                        writes.push(store::writes::goal(&self.tenant, &r));
                    }
                    continue;
                }
                _ => continue,
            };
            self.offset += 1;
            frames.push(frame);
            if let Some(r) = self.goal_record(id) {
                writes.push(store::writes::goal(&self.tenant, &r));
            }
        }
    }

    /// A goal operation: applied by the core, logged, and the goal's record rewritten, all in
    /// one batch; the reply goes out once it is durable.
    fn goal(&mut self, myself: &ActorRef<UserMsg>, op: GoalOp, reply: oneshot::Sender<Result<Option<store::GoalRecord>, String>>) {
        let Some(cat) = self.shared.catalogue(&self.tenant) else {
            let _ = reply.send(Err("the tenant's catalogue is gone".into()));
            return;
        };
        let id = match &op {
            GoalOp::Assign(s) => s.id.clone(),
            GoalOp::Due(id) | GoalOp::Cancel(id) => id.clone(),
        };
        let now = now_ms();
        let mut next = self.st.clone();
        let fx = match crate::replay::apply_goal(&mut next, op.clone(), now, &cat) {
            Ok(fx) => fx,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if fx.is_empty() {
            let _ = reply.send(Ok(self.goal_record(&id)));
            return;
        }
        self.st = next;
        self.seq += 1;
        let event_id = format!("goal:{id}:{}", self.seq);
        let mut frames = Vec::new();
        let mut writes = Vec::new();
        self.goal_frames(&fx, &event_id, &mut frames, &mut writes);
        let first_new = self.offset + 1 - frames.len() as u64;
        let pushes = frames.iter().enumerate().map(|(i, f)| (first_new + i as u64, f.to_string())).collect();
        let event = Event {
            event_id,
            event_type: crate::replay::GOAL_EVENT.into(),
            user_id: self.user.clone(),
            tenant_id: self.tenant.clone(),
            occurred_at: now,
            source: "goal".into(),
            payload: crate::replay::goal_payload(&op),
        };
        let stored = StoredEvent { event, received_at: now, catalogue_version: cat.version, pushes };
        writes.insert(0, store::writes::system_event(&self.tenant, &self.user, self.seq, &stored));
        let mut deliveries: Vec<Delivery> = frames.into_iter().map(Delivery::All).collect();
        deliveries.push(Delivery::Goal(reply, self.goal_record(&id)));
        self.enqueue(myself, writes, deliveries);
    }

    /// A notice for this user: logged with its id (so a repeat is recognised) and pushed.
    fn notice(&mut self, myself: &ActorRef<UserMsg>, n: NoticeMsg) {
        match self.shared.store.seen(&self.tenant, &n.id) {
            Ok(Some(_)) => {
                let _ = n.reply.send(Ok(()));
                return;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = n.reply.send(Err(e.to_string()));
                return;
            }
        }
        let Some(cat) = self.shared.catalogue(&self.tenant) else {
            let _ = n.reply.send(Err("the tenant's catalogue is gone".into()));
            return;
        };
        let now = now_ms();
        self.seq += 1;
        self.offset += 1;
        let frame = protocol::notice(self.offset, n.kind, &n.goal, &n.title, &n.assignee, n.at);
        let event = Event {
            event_id: n.id,
            event_type: crate::replay::NOTICE_EVENT.into(),
            user_id: self.user.clone(),
            tenant_id: self.tenant.clone(),
            occurred_at: now,
            source: "goal".into(),
            payload: vec![("kind".into(), crate::core::Value::Str(n.kind.into())), ("goal".into(), crate::core::Value::Str(n.goal.as_str().into()))],
        };
        let stored = StoredEvent { event, received_at: now, catalogue_version: cat.version, pushes: vec![(self.offset, frame.to_string())] };
        let writes = Vec::from(store::writes::event(&self.tenant, &self.user, self.seq, &stored));
        self.enqueue(myself, writes, vec![Delivery::All(frame), Delivery::Noticed(n.reply)]);
    }

    /// A leaderboard period award. The log record (`accolade.leaderboard`) lets every rebuild
    /// make the same award; the core makes an award once per period, so a close retried after
    /// a crash awards nothing twice.
    fn award(&mut self, myself: &ActorRef<UserMsg>, board: &str, period: &str, rank: usize, reply: oneshot::Sender<Result<bool, String>>) {
        let Some(cat) = self.shared.catalogue(&self.tenant) else {
            let _ = reply.send(Err("the tenant's catalogue is gone".into()));
            return;
        };
        let now = now_ms();
        let event_id = format!("leaderboard:{board}:{period}");
        // On a copy, like a backfill: when nothing is due, the live state stays exactly what
        // the log rebuilds.
        let mut next = self.st.clone();
        let fx = crate::core::award_rank(&mut next, board, period, rank, now, &event_id, &cat);
        if fx.is_empty() {
            let _ = reply.send(Ok(false));
            return;
        }
        self.st = next;
        self.seq += 1;
        let mut out = IngestOutcome { event_id: event_id.clone(), status: "accepted", reason: None, code: None, xp: 0, unlocks: vec![] };
        let frames = self.award_frames(&fx, &cat, &event_id, &mut out);
        let first_new = self.offset + 1 - frames.len() as u64;
        let pushes = frames.iter().enumerate().map(|(i, f)| (first_new + i as u64, f.to_string())).collect();
        let event = Event {
            event_id,
            event_type: crate::replay::LEADERBOARD_EVENT.into(),
            user_id: self.user.clone(),
            tenant_id: self.tenant.clone(),
            occurred_at: now,
            source: "leaderboard".into(),
            payload: crate::replay::award_payload(board, period, rank),
        };
        let stored = StoredEvent { event, received_at: now, catalogue_version: cat.version, pushes };
        let writes = vec![store::writes::system_event(&self.tenant, &self.user, self.seq, &stored)];
        let mut deliveries: Vec<Delivery> = frames.into_iter().map(Delivery::All).collect();
        deliveries.push(Delivery::Awarded(reply, true));
        tracing::info!(tenant = %self.tenant, user = %self.user, board, period, rank, "leaderboard award");
        self.enqueue(myself, writes, deliveries);
    }

    /// Replays this user's whole log under the catalogue in force and awards what the job's
    /// badges would have given; the record and a snapshot are written together, and the reply
    /// goes out once they are durable.
    async fn backfill(
        &mut self,
        myself: &ActorRef<UserMsg>,
        spec: &BackfillSpec,
        reply: oneshot::Sender<Result<u32, String>>,
    ) -> Result<(), (oneshot::Sender<Result<u32, String>>, String)> {
        let Some(cat) = self.shared.catalogue(&self.tenant) else { return Err((reply, "the tenant's catalogue is gone".into())) };
        let store = self.shared.store.clone();
        let (t, u) = (self.tenant.clone(), self.user.clone());
        // Nothing is in flight, so the stored log holds exactly the events this state has seen.
        let log = match tokio::task::spawn_blocking(move || store.events_after(&t, &u, 0, usize::MAX)).await {
            Ok(Ok(log)) => log,
            Ok(Err(e)) => return Err((reply, e.to_string())),
            Err(e) => return Err((reply, e.to_string())),
        };
        let log: Vec<StoredEvent> = log.into_iter().map(|(_, e)| e).collect();
        let replayed = crate::replay::from_scratch(&self.tenant, &self.user, &log, &cat);
        let now = now_ms();
        let event_id = format!("backfill:{}", spec.job);
        // Worked out on a copy: when nothing changes, the live state stays exactly as the log
        // rebuilds it (not even aligned to the new catalogue), and no record is written.
        let mut next = self.st.clone();
        next.sync(&cat);
        let before = (next.stats.clone(), next.rings.clone());
        // A resumed job may visit a user again: its record is saved every half second (and at a
        // graceful stop, without the user it was still waiting on), the awards as each user is
        // done. The badges this job gave on the earlier visit are counted again (and never
        // re-awarded), so the job's total stays exact.
        let earlier = spec.badges.iter().filter(|b| self.st.badges.get(b.as_str()).is_some_and(|r| r.event_id == event_id)).count() as u32;
        let fx = crate::core::backfill(&mut next, &replayed, &spec.badges, &spec.new_stats, now, &event_id, &cat);
        let awarded = earlier + fx.iter().filter(|e| matches!(e, Effect::Unlock { .. })).count() as u32;
        if fx.is_empty() && (&next.stats, &next.rings) == (&before.0, &before.1) {
            let _ = reply.send(Ok(awarded));
            return Ok(());
        }
        self.st = next;
        self.seq += 1;
        let mut out = IngestOutcome { event_id: event_id.clone(), status: "accepted", reason: None, code: None, xp: 0, unlocks: vec![] };
        let frames = if spec.notify { self.award_frames(&fx, &cat, &event_id, &mut out) } else { Vec::new() };
        let first_new = self.offset + 1 - frames.len() as u64;
        let pushes = frames.iter().enumerate().map(|(i, f)| (first_new + i as u64, f.to_string())).collect();
        let rec = crate::replay::BackfillRecord { badges: spec.badges.clone(), new_stats: spec.new_stats.clone() };
        let event = Event {
            event_id,
            event_type: crate::replay::BACKFILL_EVENT.into(),
            user_id: self.user.clone(),
            tenant_id: self.tenant.clone(),
            occurred_at: now,
            source: "backfill".into(),
            payload: rec.payload(spec.job),
        };
        let stored = StoredEvent { event, received_at: now, catalogue_version: cat.version, pushes };
        let mut writes = vec![store::writes::system_event(&self.tenant, &self.user, self.seq, &stored)];
        writes.extend(self.snapshot_write());
        let mut deliveries: Vec<Delivery> = frames.into_iter().map(Delivery::All).collect();
        deliveries.push(Delivery::Backfilled(reply, awarded));
        tracing::debug!(job = spec.job, tenant = %self.tenant, user = %self.user, awarded, "backfilled");
        self.enqueue(myself, writes, deliveries);
        Ok(())
    }

    fn snapshot_write(&mut self) -> [store::Write; 2] {
        #[derive(Serialize)]
        struct RecordRef<'a> {
            state: &'a UserState,
            seq: u64,
            offset: u64,
            epoch: &'a str,
        }
        // Serializes exactly like `store::UserRecord` (same fields, same order) without
        // cloning the state.
        let rec = RecordRef { state: &self.st, seq: self.seq, offset: self.offset, epoch: &self.epoch };
        self.snap_seq = self.seq;
        store::writes::snapshot(&self.tenant, &self.user, self.seq, store::encode(&rec))
    }

    /// Writes a snapshot if the log has moved on since the last one.
    fn snapshot(&mut self, myself: &ActorRef<UserMsg>) {
        if self.seq > self.snap_seq {
            let w = self.snapshot_write();
            self.enqueue(myself, w.into(), vec![]);
        }
    }

    /// Sends writes to the persister and holds the deliveries until they are durable. With no
    /// writes, deliveries still wait behind any earlier ones, so the client sees them in order.
    fn enqueue(&mut self, myself: &ActorRef<UserMsg>, mut writes: Vec<store::Write>, mut deliveries: Vec<Delivery>) {
        // Webhook notifications go into the same batch as the pushes that announce them, so
        // one is durable exactly when the other is. Only tenants with endpoints pay for this.
        if !writes.is_empty() && self.shared.webhooks.any(&self.tenant) {
            let frames = deliveries.iter().filter_map(|d| if let Delivery::All(f) = d { Some(f) } else { None });
            let (outbox, wake) = self.shared.webhooks.outbox_writes(&self.shared.store, &self.tenant, &self.user, frames);
            if !outbox.is_empty() {
                writes.extend(outbox);
                deliveries.push(Delivery::Wake(wake));
            }
        }
        if writes.is_empty() {
            match self.pending.back_mut() {
                Some(last) => last.1.extend(deliveries),
                None => deliveries.into_iter().for_each(|d| self.deliver(d)),
            }
            return;
        }
        self.next_job += 1;
        let job = self.next_job;
        self.pending.push_back((job, deliveries));
        let me = myself.clone();
        let submitted = self.shared.store.submit_user(&self.tenant, &self.user, writes, move |result| {
            let _ = me.send_message(UserMsg::Durable { job, result });
        });
        match submitted {
            Ok(()) => {}
            // A write failed earlier: this one fails as the batch did, through a completion,
            // so the actor fails the same way and nothing of it is sent.
            Err(store::StoreError::Failed(why)) => {
                let _ = myself.send_message(UserMsg::Durable { job, result: Err(why) });
            }
            // The persister is gone (shutdown): nothing will become durable, so nothing is sent.
            Err(_) => self.pending.clear(),
        }
    }

    /// A completion from the persister: releases the deliveries of every job up to `job`.
    /// Work that waited for durable state is left for `run_waiting`.
    fn on_durable(&mut self, job: u64, result: Result<(), String>) -> Result<(), ActorProcessingErr> {
        if let Err(e) = result {
            // State in memory is ahead of the disk. Fail: the supervisor forgets this actor and
            // the next message rebuilds the user from what is durable (once the store can be
            // read: after a failed write, only a restarted server can). No ack was sent for the
            // lost events, so clients retry them.
            let lost = self.pending.iter().flat_map(|(_, ds)| ds).filter(|d| matches!(d, Delivery::Accepted)).count();
            self.shared.metrics.storage_failed.fetch_add(lost as u64, Ordering::Relaxed);
            // Whoever waits on a lost job is told why now, rather than by a dropped channel:
            // an HTTP sender learns its event is `unavailable` (send it again), the others get
            // the error itself. Nothing durable is claimed, and nothing is counted twice.
            for (_, ds) in std::mem::take(&mut self.pending) {
                for d in ds {
                    refuse(d, &e);
                }
            }
            if self.shared.store.failure().is_some() {
                for c in &self.conns {
                    let _ = c.closing.set((crate::session::close::INTERNAL, "storage failed; reconnect later"));
                }
            }
            return Err(format!("persisting failed: {e}").into());
        }
        // Idle time counts from when the last work finished, not from when it arrived.
        self.last_activity = Instant::now();
        while self.pending.front().is_some_and(|(j, _)| *j <= job) {
            let (_, ds) = self.pending.pop_front().expect("checked");
            for d in ds {
                self.deliver(d);
            }
        }
        Ok(())
    }

    /// Work that waited for durable state runs in order; a backfill writes, so whatever comes
    /// after it waits again.
    async fn run_waiting(&mut self, myself: &ActorRef<UserMsg>) {
        let mut waiting = std::mem::take(&mut self.waiting).into_iter();
        while self.pending.is_empty() {
            let Some(w) = waiting.next() else { break };
            self.run_or_wait(myself, w).await;
        }
        self.waiting.extend(waiting);
    }

    fn deliver(&mut self, d: Delivery) {
        match d {
            Delivery::One(id, f) => {
                if let Some(i) = self.conns.iter().position(|c| c.id == id) {
                    self.send_to(i, f);
                }
            }
            Delivery::All(f) => {
                let mut i = 0;
                while i < self.conns.len() {
                    if self.send_to(i, f.clone()) {
                        i += 1;
                    }
                }
            }
            Delivery::Http(tx, outcome) => {
                let _ = tx.send(outcome);
            }
            Delivery::Release(_) => {}
            Delivery::Accepted => {
                self.shared.metrics.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Delivery::Observe(arrived) => self.shared.metrics.event_to_push.record(arrived.elapsed()),
            Delivery::Backfilled(reply, n) => {
                let _ = reply.send(Ok(n));
            }
            Delivery::Awarded(reply, done) => {
                let _ = reply.send(Ok(done));
            }
            Delivery::Goal(reply, record) => {
                let _ = reply.send(Ok(record));
            }
            Delivery::Noticed(reply) => {
                let _ = reply.send(Ok(()));
            }
            Delivery::Wake(workers) => workers.iter().for_each(|w| w.notify_one()),
            Delivery::Board(key, entry, left) => {
                if let Some(old) = left {
                    self.shared.boards.remove(&old, &self.user);
                }
                self.shared.boards.set(key, &self.user, &entry);
            }
        }
    }

    /// Writes to connection `i`; a full outbox means a slow client, which is closed. Returns
    /// whether the connection is still there.
    fn send_to(&mut self, i: usize, f: Frame) -> bool {
        match self.conns[i].tx.try_send(f) {
            Ok(()) => {
                self.shared.metrics.pushes.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.conns[i].slow.notify_one();
                self.shared.metrics.slow_closed.fetch_add(1, Ordering::Relaxed);
                self.conns.swap_remove(i);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.conns.swap_remove(i);
                false
            }
        }
    }

    async fn attach(&mut self, conn: Conn, since: Option<Since>) {
        if self.conns.len() >= self.shared.config.connections_per_user {
            // The error goes out first, then the close: dropping `conn` ends the session's queue.
            let _ = conn.tx.try_send(protocol::error("too_many_connections", "this user has too many open connections", None));
            let _ = conn.closing.set((crate::session::close::TOO_MANY, "too many connections for this user"));
            return;
        }
        let Some(cat) = self.shared.catalogue(&self.tenant) else { return };
        let mut replay = Vec::new();
        let mut recovered = false;
        if let Some(s) = since
            && s.epoch == self.epoch
            && s.offset <= self.offset
        {
            if s.offset == self.offset {
                recovered = true;
            } else {
                let store = self.shared.store.clone();
                let (t, u, from) = (self.tenant.clone(), self.user.clone(), s.offset);
                let oldest_ok = now_ms() - self.shared.config.history_hours as Millis * 3_600_000;
                // Enough events to hold the history however few pushes each caused.
                let scan = (self.shared.config.history_size as usize).saturating_mul(4).max(64);
                if let Ok(Ok(pushes)) = tokio::task::spawn_blocking(move || store.pushes_after(&t, &u, from, scan)).await {
                    // Recovery is complete only if the stored history still starts right after
                    // the client's offset and nothing in between is too old.
                    // ...and the gap is within the history's size.
                    recovered = pushes.first().is_some_and(|p| p.0 == from + 1)
                        && pushes.iter().all(|p| p.1 >= oldest_ok)
                        && self.offset - from <= self.shared.config.history_size;
                    if recovered {
                        replay = pushes.into_iter().filter(|p| p.0 <= self.offset).map(|p| Frame::from(p.2)).collect();
                    }
                }
            }
        }
        let welcome = protocol::welcome(&self.st, &cat, &self.epoch, self.offset, recovered);
        let mut ok = conn.tx.try_send(welcome).is_ok();
        for f in replay {
            ok = ok && conn.tx.try_send(f).is_ok();
        }
        if !ok {
            conn.slow.notify_one();
            return;
        }
        self.conns.push(conn);
    }

    fn maybe_passivate(&mut self, myself: &ActorRef<UserMsg>) {
        let idle = self.last_activity.elapsed() >= self.shared.config.passivate_after();
        if !idle || !self.conns.is_empty() || !self.waiting.is_empty() || !self.pending.is_empty() {
            return;
        }
        if self.seq > self.snap_seq {
            // Persist first; the next tick stops once the snapshot is durable.
            self.snapshot(myself);
            return;
        }
        // Leave the registry only if no message is on its way to us; otherwise stay alive.
        if self.shared.registry.remove_if_idle(&self.tenant, &self.user, myself.get_id(), &self.inflight) {
            self.shared.metrics.passivated.fetch_add(1, Ordering::Relaxed);
            myself.stop(Some("passivated".into()));
        }
    }
}

// ---------------------------------------------------------------------------------------------

struct Entry {
    actor: ActorRef<UserMsg>,
    inflight: Arc<AtomicU64>,
}

/// Finds or spawns the actor of a user. A user's state lives behind one key (`tenant \0 user`),
/// so it can later be partitioned across servers by that key.
#[derive(Default)]
pub struct Registry {
    map: DashMap<String, Entry>,
    by_id: DashMap<ractor::ActorId, String>,
}

fn key(tenant: &str, user: &str) -> String {
    format!("{tenant}\0{user}")
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("could not start the user's actor: {0}")]
    Spawn(String),
    #[error("the user's actor is not available")]
    Unavailable,
}

impl Registry {
    /// Asks every actor in memory to check whether it is idle enough to passivate.
    pub fn tick(&self) {
        for e in self.map.iter() {
            let _ = e.actor.send_message(UserMsg::Tick);
        }
    }

    pub fn active(&self) -> usize {
        self.map.len()
    }

    /// Whether the user has an actor in memory.
    pub fn is_active(&self, tenant: &str, user: &str) -> bool {
        self.map.contains_key(&key(tenant, user))
    }

    /// Sends a message to a user's actor, spawning it (linked to `supervisor`) if needed.
    pub fn send(&self, shared: &Arc<Shared>, tenant: &str, user: &str, mut msg: UserMsg) -> Result<(), SendError> {
        let k = key(tenant, user);
        for _ in 0..4 {
            if let Some(e) = self.map.get(&k) {
                // Counted while the map guard is held, so passivation (which removes the entry
                // under the write lock only when nothing is in flight) cannot miss this message.
                let c = counted(&msg);
                if c {
                    e.inflight.fetch_add(1, Ordering::AcqRel);
                }
                match e.actor.send_message(msg) {
                    Ok(()) => return Ok(()),
                    Err(MessagingErr::SendErr(m)) => {
                        if c {
                            e.inflight.fetch_sub(1, Ordering::AcqRel);
                        }
                        msg = m;
                        let id = e.actor.get_id();
                        drop(e);
                        self.map.remove_if(&k, |_, v| v.actor.get_id() == id);
                        continue;
                    }
                    Err(_) => return Err(SendError::Unavailable),
                }
            }
            self.map.entry(k.clone()).or_try_insert_with(|| {
                let inflight = Arc::new(AtomicU64::new(0));
                let args = UserArgs { shared: shared.clone(), tenant: tenant.to_string(), user: user.to_string(), inflight: inflight.clone() };
                let (actor, _) = ractor::ActorRuntime::spawn_linked_instant(None, UserActor, args, shared.supervisor.clone())
                    .map_err(|e| SendError::Spawn(e.to_string()))?;
                self.by_id.insert(actor.get_id(), k.clone());
                Ok::<_, SendError>(Entry { actor, inflight })
            })?;
        }
        Err(SendError::Unavailable)
    }

    /// Sends only to a running actor (used for detach, which must not revive a user).
    pub fn send_existing(&self, tenant: &str, user: &str, msg: UserMsg) {
        if let Some(e) = self.map.get(&key(tenant, user)) {
            if counted(&msg) {
                e.inflight.fetch_add(1, Ordering::AcqRel);
            }
            if e.actor.send_message(msg).is_err() {
                e.inflight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    fn remove_if_idle(&self, tenant: &str, user: &str, id: ractor::ActorId, inflight: &AtomicU64) -> bool {
        let removed = self.map.remove_if(&key(tenant, user), |_, v| v.actor.get_id() == id && inflight.load(Ordering::Acquire) == 0).is_some();
        if removed {
            self.by_id.remove(&id);
        }
        removed
    }

    fn forget(&self, id: ractor::ActorId) {
        if let Some((_, k)) = self.by_id.remove(&id) {
            self.map.remove_if(&k, |_, v| v.actor.get_id() == id);
        }
    }

    /// Asks every actor to snapshot and stop, and waits until they have all ended (bounded by
    /// the caller). Repeats while actors remain, since a message already on its way (a backfill
    /// step, say) can revive a user after the first round.
    pub async fn stop_all(&self) {
        while !self.map.is_empty() {
            let actors: Vec<ActorRef<UserMsg>> = self.map.iter().map(|e| e.actor.clone()).collect();
            let mut waits = Vec::new();
            for a in &actors {
                let (tx, rx) = oneshot::channel();
                if a.send_message(UserMsg::Stop(tx)).is_ok() {
                    waits.push(rx);
                }
            }
            for w in waits {
                let _ = w.await;
            }
            // Ended means the actor's state (and its handle on the store) is dropped.
            for a in actors {
                let _ = a.get_cell().wait(None).await;
                self.forget(a.get_id());
            }
        }
    }
}

/// The parent of every user actor: when one stops or fails it is forgotten, so the next
/// message for that user starts a fresh actor from durable state.
pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = ();
    type State = Arc<Registry>;
    type Arguments = Arc<Registry>;

    async fn pre_start(&self, _: ActorRef<()>, registry: Arc<Registry>) -> Result<Arc<Registry>, ActorProcessingErr> {
        Ok(registry)
    }

    async fn handle_supervisor_evt(&self, _: ActorRef<()>, evt: SupervisionEvent, registry: &mut Arc<Registry>) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => registry.forget(cell.get_id()),
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::warn!(actor = %cell.get_id(), error = %err, "user actor failed; it will be rebuilt from durable state");
                registry.forget(cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

/// The passivation clock: every `--passivate-secs` / 4 (at least 250 ms) until shutdown, every
/// actor in memory gets a `Tick`. One task for all actors: a ractor `send_interval` per actor was
/// a task and a timer each, about 370 bytes of every connected user (heaptrack; bench/README.md,
/// fix 13), for a check that a connected user always passes.
pub async fn passivation_clock(registry: Arc<Registry>, every: std::time::Duration, stop: tokio::sync::watch::Receiver<bool>) {
    crate::server::every(every, stop, || {
        registry.tick();
        std::future::ready(())
    })
    .await
}

pub async fn start_supervisor(registry: Arc<Registry>) -> anyhow::Result<ActorCell> {
    let (sup, _) = Actor::spawn(None, Supervisor, registry).await?;
    Ok(sup.get_cell())
}

impl Drop for User {
    fn drop(&mut self) {
        self.shared.metrics.actors.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tells whoever waits on a delivery of a job that did not become durable that it failed;
/// pushes, counters and wake-ups of such a job are simply not performed.
fn refuse(d: Delivery, why: &str) {
    match d {
        Delivery::Http(tx, mut o) => {
            o.status = "rejected";
            o.code = Some("unavailable");
            o.reason = Some(format!("the event could not be made durable ({why}); send it again"));
            o.xp = 0;
            o.unlocks.clear();
            let _ = tx.send(o);
        }
        Delivery::Backfilled(reply, _) => drop(reply.send(Err(why.to_string()))),
        Delivery::Awarded(reply, _) => drop(reply.send(Err(why.to_string()))),
        Delivery::Goal(reply, _) => drop(reply.send(Err(why.to_string()))),
        Delivery::Noticed(reply) => drop(reply.send(Err(why.to_string()))),
        Delivery::One(..) | Delivery::All(_) | Delivery::Release(_) | Delivery::Observe(_) | Delivery::Accepted | Delivery::Board(..) | Delivery::Wake(_) => {}
    }
}
