//! The user actor: one per active user, owning that user's state. It applies events with the
//! rule core, performs the plan (`plan.rs`) that turns their effects into writes and pushes,
//! and releases the pushes only once the persister says the writes are on disk, so a push
//! always describes durable state.
//!
//! Beside it: what the rest of the server sends it (`msg.rs`), the requests beside events
//! (`requests.rs`), holding what a write announces until it is durable (`durable.rs`), its
//! sockets (`sockets.rs`), and the registry, supervisor and passivation clock (`registry.rs`).

/// What a plan reads besides the state: who this is, under catalogue `cat`. A macro, not a
/// method, so that the plan may borrow the cursor and the throttle mutably beside it.
/// Defined before the submodules, which use it too (a macro is in scope only after it).
macro_rules! planner {
    ($u:expr, $cat:expr) => {
        plan::Planner {
            tenant: &$u.tenant,
            user: &$u.user,
            epoch: &$u.epoch,
            cat: &$cat,
            snapshot_every: $u.env.config.snapshot_every,
            linked: $u.linked.as_deref().unwrap_or(&[]),
            shares: $u.env.community.as_ref().map(|_| &$u.shares),
        }
    };
}

mod durable;
mod msg;
mod registry;
mod requests;
mod sockets;

pub use msg::*;
pub use registry::*;

use sockets::Sockets;

use crate::core::{apply, Catalogue, DuplicateBy, Effect, Event, Millis, UserState};
use crate::clock::now_ms;
use crate::plan::{self, Cursor};
use crate::records::GoalOp;
use crate::protocol::{self, Frame, Since};
use crate::boards::Boards;
use crate::catalogues::Catalogues;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{self, EventLog, StoredEvent};
use crate::webhooks::Webhooks;
use futures_util::future::Either;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What `User::evaluate` found: the event's effects under the catalogue in force (it was
/// accepted, or is a duplicate by fingerprint, which changes the state too), or why it changes
/// nothing.
type Evaluated = Result<(Vec<Effect>, Arc<Catalogue>), Unchanged>;

/// Why an event changes nothing, as `User::evaluate` found it.
enum Unchanged {
    /// Seen before: acked again as a duplicate.
    Duplicate,
    /// Refused: the wire error's code, the ingest outcome's code, and why.
    Refused { wire: &'static str, code: &'static str, text: String },
}

enum Delivery {
    One(u64, Frame),
    /// A planned push, to every socket of the user.
    Push(plan::Push),
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
    /// A membership change is durable.
    Linked(oneshot::Sender<Result<bool, LinkError>>),
    /// A revocation or retraction is durable.
    Taken(oneshot::Sender<Result<Taken, TakeError>>, Taken),
    /// An expiry sweep's visit is durable.
    Swept(oneshot::Sender<Result<(), String>>),
    /// The event is durable: count it as accepted (`accolade_events_total`). A job that
    /// fails counts its events as `storage_failed` instead.
    Accepted,
    /// A leaderboard score is durable: update the live ranking.
    Board(store::BoardKey, store::BoardEntry, Option<store::BoardKey>),
    /// Webhook notifications are durable in these endpoints' outboxes: wake their workers.
    Wake(Vec<Arc<tokio::sync::Notify>>),
    /// What the job adds to the tenant's analytics, added once it is durable.
    Analytics(crate::analytics::Contribution),
    /// A team's progress, for the sockets of its members whose actors are in memory.
    Tell(Vec<Frame>),
    /// A share of a community goal is durable: (goal, amount, the user's first share of it).
    Community(Arc<str>, f64, bool),
}

/// Work that must wait until everything in flight is durable, so it sees durable state.
enum Waiting {
    Attach(Conn, Option<Since>),
    Query(Query),
    Backfill(Arc<BackfillSpec>, oneshot::Sender<Result<u32, String>>),
    Award(String, String, usize, oneshot::Sender<Result<bool, String>>),
    Goal(GoalOp, oneshot::Sender<Result<Option<store::GoalRecord>, String>>),
    Notice(NoticeMsg),
    Link(String, bool, usize, oneshot::Sender<Result<bool, LinkError>>),
    TeamUnlock(Event, oneshot::Sender<Result<(), String>>),
    Revoke(String, String, bool, oneshot::Sender<Result<Taken, TakeError>>),
    Retract(String, String, bool, oneshot::Sender<Result<Taken, TakeError>>),
    Expire(oneshot::Sender<Result<(), String>>),
    Community,
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

/// The handles every user actor of this process works with: nothing else of the server.
pub struct Env {
    pub config: Arc<Config>,
    /// The event log: the user's records, its dedup index and its snapshot.
    pub log: Arc<dyn EventLog>,
    pub catalogues: Arc<Catalogues>,
    pub metrics: Arc<Metrics>,
    /// Live rankings, updated once a score is durable.
    pub boards: Arc<Boards>,
    /// Endpoints whose outboxes an event's notifications go to.
    pub webhooks: Arc<Webhooks>,
    /// Wakes the mail worker once contributions to teams are durable (docs/teams.md).
    pub mail: Arc<tokio::sync::Notify>,
    /// Each tenant's analytics, added to once a change is durable.
    pub analytics: Arc<crate::analytics::Analytics>,
    /// Community goals' totals, added to once a share is durable, and their outcomes, told
    /// to participants (standalone only: `None` in cluster mode, docs/teams.md).
    pub community: Option<Arc<crate::community::Community>>,
    /// How frames in no history reach a user this node does not serve (cluster mode: through
    /// the node that does; `None` alone, where every user is served here).
    pub relay: Option<Relay>,
}

/// Gives frames in no history (a team's progress) to a user another node serves: (tenant,
/// user, frames). Called from an actor's turn, so it must not wait.
pub type Relay = Arc<dyn Fn(&str, &str, Vec<Frame>) + Send + Sync>;

impl Env {
    /// The catalogue in force for `user` of `tenant`: a team's is the team catalogue.
    fn catalogue(&self, tenant: &str, user: &str) -> Option<Arc<Catalogue>> {
        self.catalogues.current(tenant)?.for_entity(user)
    }
}

struct UserActor;

struct UserArgs {
    env: Arc<Env>,
    registry: Arc<Registry>,
    tenant: String,
    user: String,
    inflight: Arc<AtomicU64>,
}

pub struct User {
    env: Arc<Env>,
    registry: Arc<Registry>,
    tenant: String,
    user: String,
    inflight: Arc<AtomicU64>,
    st: UserState,
    epoch: String,
    /// The last log sequence number and push offset given out, and the snapshot's.
    cur: Cursor,
    /// The user's sockets this process holds: where pushes go.
    sockets: Sockets,
    /// Jobs sent to the log and not yet durable: (job, the last log seq it writes, what waits
    /// for it).
    pending: VecDeque<(u64, u64, Vec<Delivery>)>,
    next_job: u64,
    /// The last log sequence number known durable.
    durable_seq: u64,
    /// The ids of the user's retained records found by id (`store::IdIndex`).
    ids: store::IdIndex,
    waiting: Vec<Waiting>,
    last_activity: Instant,
    progress: plan::Throttle,
    /// What this entity is linked to (docs/teams.md): a user's teams, a team's members. Read
    /// at its first event (a user's only under a catalogue with teams); `None` until then.
    linked: Option<Vec<String>>,
    /// The earliest badge expiry the expiry index holds for this user.
    due: Option<Millis>,
    /// What this user has contributed to analytics, folded up to the last change planned,
    /// and the snapshot sequence number its record was last written with.
    facts: crate::analytics::UserFacts,
    facts_written: u64,
    /// The user's hash in the figures' sketches, and the local day last computed (its UTC
    /// bounds and number), so that the fold on every event skips the hashing and the time-zone
    /// arithmetic (about a third of what analytics cost the hot path, measured).
    user_hash: u64,
    day: std::cell::Cell<(Millis, Millis, i32, chrono_tz::Tz)>,
    /// The tenant's analytics: figures and health counters.
    stats: Arc<crate::analytics::TenantAnalytics>,
    /// The user's shares of community goals (goal -> share), as her records hold them; read
    /// at start when the tenant has community goals (docs/teams.md).
    shares: std::collections::BTreeMap<String, f64>,
}

/// The push epoch of a user with nothing stored yet. It is the same every time, so a client
/// that saw the welcome of a brand-new user, before anything was written, still resumes after
/// a crash. A user's first event stores it with the first snapshot, and an epoch only changes
/// when stored history is lost, which is what clients must be told.
fn genesis_epoch(tenant: &str, user: &str) -> String {
    let h = crate::core::value::stable_hash(format!("genesis\0{tenant}\0{user}").as_bytes());
    format!("{h:016x}")
}


impl Actor for UserActor {
    type Msg = UserMsg;
    type State = User;
    type Arguments = UserArgs;

    async fn pre_start(&self, _: ActorRef<UserMsg>, a: UserArgs) -> Result<User, ActorProcessingErr> {
        if a.env.catalogue(&a.tenant, &a.user).is_none() {
            let whose = if crate::core::catalogue::team_of(&a.user).is_some() { "no teams section in its catalogue" } else { "no catalogue" };
            return Err(format!("tenant `{}` has {whose}", a.tenant).into());
        }
        let (env, t, u) = (a.env.clone(), a.tenant.clone(), a.user.clone());
        // sled reads can touch the disk, so they run on the blocking pool. The event log is the
        // durable truth after the snapshot: it is replayed with each event's own receive time
        // and catalogue version, which rebuilds exactly the state that was acknowledged.
        // A member's teams (a team's members) come with it: the plan mails to them, and
        // reading them later would scan on the actor's turn.
        let r = tokio::task::spawn_blocking(move || {
            let restored = crate::replay::restore(&*env.log, &env.catalogues, &t, &u)?;
            let teams = env.catalogue(&t, &u).is_some_and(|c| c.teams.is_some()) || crate::core::catalogue::team_of(&u).is_some();
            let linked = if teams { Some(env.log.links(&t, &u)?) } else { None };
            let community = env.community.as_ref().is_some_and(|c| env.catalogues.current(&t).is_some_and(|cat| !cat.community.is_empty()) || c.has_any(&t));
            // Each share as far as her log goes (`store::Share::at`).
            let shares = match community && crate::core::catalogue::team_of(&u).is_none() {
                true => env.log.community_of(&t, &u)?.into_iter().map(|(g, s)| (g, s.at(restored.last_seq))).collect(),
                false => Default::default(),
            };
            Ok::<_, crate::store::StoreError>((restored, linked, shares))
        })
        .await??;
        let (r, linked, shares) = r;
        let (st, snap_seq, ids) = (r.state, r.snap_seq, r.ids);
        // The index is written before the log record of every change, so it holds at least
        // what the rebuilt state says (or an earlier time, which the sweep sets right).
        let due = st.next_look();
        // The user's analytics facts: the record stored with the snapshot, and the log after it.
        // The figures already hold them (from the rebuild at start, or the live path), so
        // nothing is added here.
        let (env, t, u) = (a.env.clone(), a.tenant.clone(), a.user.clone());
        let tz = a.env.catalogue(&a.tenant, &a.user).map(|c| c.settings.default_timezone).unwrap_or_default();
        let facts = tokio::task::spawn_blocking(move || crate::analytics::load(&*env.log, &t, &u, |at| crate::core::calendar::local_day(at, tz).0)).await??.0;
        // A team's actor counts into figures of its own that nothing reads: its events are its
        // members' again, already counted (docs/analytics.md).
        let stats = if crate::core::catalogue::team_of(&a.user).is_some() { Arc::default() } else { a.env.analytics.tenant(&a.tenant) };
        let user_hash = crate::analytics::figures::user_hash(&a.tenant, &a.user);
        let epoch = r.epoch.unwrap_or_else(|| genesis_epoch(&a.tenant, &a.user));
        let (last_seq, last_offset) = (r.last_seq, r.last_offset);
        a.env.metrics.actors.inc();
        let throttle_ms = a.env.config.progress_throttle_ms;
        Ok(User {
            env: a.env,
            registry: a.registry,
            tenant: a.tenant,
            user: a.user,
            inflight: a.inflight,
            st,
            epoch,
            cur: Cursor { seq: last_seq, offset: last_offset, snap_seq },
            sockets: Sockets::default(),
            pending: VecDeque::new(),
            next_job: 0,
            durable_seq: last_seq,
            ids,
            waiting: Vec::new(),
            last_activity: Instant::now(),
            progress: plan::Throttle::new(std::time::Duration::from_millis(throttle_ms)),
            linked,
            due,
            facts_written: snap_seq,
            facts,
            stats,
            user_hash,
            day: std::cell::Cell::new((0, 0, 0, chrono_tz::Tz::UTC)),
            shares,
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
                let seq = u.cur.seq;
                let result = u.on_event(&myself, event, received_at, arrived, origin, permit);
                // A user sending a burst (hundreds of events queued in its mailbox) would
                // otherwise handle about a hundred of them, until tokio's budget runs out, each
                // time it is polled, and every other user's event waits behind that in the
                // runtime's queue, once per hop. Every sixteenth stored event the actor goes to
                // the back of the queue instead (bench/README.md, fix 22).
                if result.is_err() || u.cur.seq == seq || !u.cur.seq.is_multiple_of(YIELD_EVERY) {
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
            UserMsg::Link { other, join, limit, reply } => Later::Run(Waiting::Link(other, join, limit, reply)),
            UserMsg::TeamUnlock { event, reply } => Later::Run(Waiting::TeamUnlock(event, reply)),
            UserMsg::Notice { id, kind, goal, title, assignee, at, reply } => Later::Run(Waiting::Notice(NoticeMsg { id, kind, goal, title, assignee, at, reply })),
            UserMsg::Revoke { badge, reason, claw_back, reply } => Later::Run(Waiting::Revoke(badge, reason, claw_back, reply)),
            UserMsg::Retract { event_id, reason, claw_back, reply } => Later::Run(Waiting::Retract(event_id, reason, claw_back, reply)),
            UserMsg::Expire { reply } => Later::Run(Waiting::Expire(reply)),
            UserMsg::CommunityClosed => Later::Run(Waiting::Community),
            UserMsg::Detach { conn_id } => {
                u.sockets.remove(conn_id);
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
            UserMsg::Told(frames) => {
                for f in &frames {
                    u.sockets.all(f, &u.env.metrics);
                }
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
                    let _ = u.env.log.sync().await;
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
        let mut deliveries = Vec::with_capacity(5);
        deliveries.push(Delivery::Observe(arrived));
        let reply = |deliveries: &mut Vec<Delivery>, origin: Origin, frame: Frame, outcome: IngestOutcome| match origin {
            Origin::Conn(id) => deliveries.push(Delivery::One(id, frame)),
            Origin::Http(tx) => deliveries.push(Delivery::Http(tx, outcome)),
        };
        let id = event.event_id.clone();
        let outcome = |status: &'static str| IngestOutcome { event_id: id.clone(), status, reason: None, code: None, xp: 0, unlocks: vec![] };
        let (fx, cat) = match self.evaluate(&event, received_at)? {
            Ok(evaluated) => evaluated,
            Err(unchanged) => {
                // Nothing to write: the answer still waits behind anything in flight, so the
                // client sees its answers in order.
                let (frame, o) = match unchanged {
                    Unchanged::Duplicate => (protocol::ack(&id, true), outcome("duplicate")),
                    Unchanged::Refused { wire, code, text } => {
                        let mut o = outcome("rejected");
                        (o.reason, o.code) = (Some(text.clone()), Some(code.into()));
                        (protocol::error(wire, &text, Some(&id)), o)
                    }
                };
                reply(&mut deliveries, origin, frame, o);
                deliveries.extend(permit.map(Delivery::Release));
                self.enqueue(myself, vec![], deliveries);
                return Ok(());
            }
        };
        if let Some(Effect::Duplicate { .. }) = fx.first() {
            // A duplicate by fingerprint: its id is now remembered, so it is logged like a
            // change, and acked as a duplicate once that is durable.
            let plan = plan::duplicate(&planner!(self, cat), &mut self.cur, &self.st, event, received_at);
            reply(&mut deliveries, origin, protocol::ack(&id, true), outcome("duplicate"));
            let after = permit.map(Delivery::Release).into_iter().collect();
            self.perform(myself, plan, deliveries, after);
            return Ok(());
        }
        // Counted as accepted once it is durable (`Delivery::Accepted`), not now.
        deliveries.push(Delivery::Accepted);
        let mut out = outcome("accepted");
        let now = Instant::now().into_std();
        let step = crate::analytics::step_of_effects(Some(event.occurred_at), &fx, &cat, false);
        let plan = plan::event(&planner!(self, cat), &mut self.cur, &self.st, &fx, event, received_at, &mut self.progress, now);
        (out.xp, out.unlocks) = (plan.xp, plan.unlocks.clone());
        tracing::debug!(xp = out.xp, unlocks = out.unlocks.len(), "event accepted");
        // The ranking moves before the ack goes out, so a client that reads the board after
        // its ack sees its score; the pushes follow the ack.
        deliveries.extend(plan.boards.iter().cloned().map(|b| Delivery::Board(b.key, b.entry, b.left)));
        for (goal, amount, first) in &plan.contributed {
            *self.shares.entry(goal.to_string()).or_default() += amount;
            deliveries.push(Delivery::Community(goal.clone(), *amount, *first));
        }
        reply(&mut deliveries, origin, protocol::ack(&id, false), out);
        self.fold(&cat, &step, &mut deliveries);
        let after = permit.map(Delivery::Release).into_iter().collect();
        self.perform(myself, plan, deliveries, after);
        Ok(())
    }

    /// Whether `event` changes the user: its effects under the catalogue in force, or why it
    /// changes nothing (counted here). Fails only when the user cannot go on (its catalogue is
    /// gone, or the store could not be read).
    fn evaluate(&mut self, event: &Event, received_at: Millis) -> Result<Evaluated, ActorProcessingErr> {
        let m = &self.env.metrics;
        // Ids older than the state's own recent-id window are found in the user's id index,
        // which keeps them for as long as the event is retained. A store that has failed
        // answers nothing: the index may hold an id whose write the disk refused, and acking
        // that as a duplicate would lose the event (the client drops what is acked).
        match self.seen(&event.event_id) {
            Ok(false) => {}
            Ok(true) => {
                m.duplicates.inc();
                self.stats.health.duplicate();
                return Ok(Err(Unchanged::Duplicate));
            }
            Err(store::StoreError::Failed(why)) => {
                m.storage_failed.inc();
                let text = format!("the server cannot store events now ({why}); send it again later");
                m.refused("unavailable");
                self.stats.health.rejected("unavailable");
                return Ok(Err(Unchanged::Refused { wire: "unavailable", code: "unavailable", text }));
            }
            Err(e) => return Err(e.into()),
        }
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else { return Err("the tenant's catalogue is gone".into()) };
        // A member's teams (a team's members), read before the first event under a catalogue
        // with teams: the plan mails her accepted events to them (its unlocks to them). Only
        // this actor changes its side of a membership afterwards (`link`), so the list stays
        // true while it lives.
        if self.linked.is_none() && (cat.teams.is_some() || crate::core::catalogue::team_of(&self.user).is_some()) {
            self.linked = Some(self.env.log.links(&self.tenant, &self.user)?);
        }
        let started = std::time::Instant::now();
        let fx = apply(&mut self.st, event, received_at, &cat);
        m.rule_eval.record(started.elapsed());
        match fx.first() {
            Some(Effect::Accepted { .. }) => Ok(Ok((fx, cat))),
            Some(Effect::Duplicate { by: DuplicateBy::Fingerprint, .. }) => {
                m.duplicates.inc();
                self.stats.health.duplicate();
                Ok(Ok((fx, cat)))
            }
            Some(Effect::Duplicate { .. }) => {
                m.duplicates.inc();
                self.stats.health.duplicate();
                Ok(Err(Unchanged::Duplicate))
            }
            Some(Effect::Rejected { reason, .. }) => {
                m.rejected.inc();
                m.refused("invalid_event");
                self.stats.health.rejected(reason.code());
                let text = reason.to_string();
                tracing::debug!(code = reason.code(), reason = %text, "event rejected");
                Ok(Err(Unchanged::Refused { wire: "invalid_event", code: reason.code(), text }))
            }
            _ => unreachable!("apply always starts with Accepted, Duplicate or Rejected"),
        }
    }

    /// Whether `event_id` is the id of one of this user's retained records: a match in her id
    /// index, read back from the log to be sure (two ids can share a hash). A record not in the
    /// log yet is one of her writes in flight, so the match is hers; one no longer there was
    /// swept by retention, so the id is new again. Blocking, on a match only.
    fn seen(&self, event_id: &str) -> Result<bool, store::StoreError> {
        if let Some(why) = self.env.log.failure() {
            return Err(store::StoreError::Failed(why.to_string()));
        }
        for seq in self.ids.get(event_id) {
            let mine = match self.env.log.event_id_at(&self.tenant, &self.user, seq)? {
                Some(id) => id == event_id,
                None => seq > self.durable_seq,
            };
            if mine {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Executes a plan: its writes as one job, and once they are durable `before`, the plan's
    /// pushes, then `after`.
    fn perform(&mut self, myself: &ActorRef<UserMsg>, mut plan: plan::Plan, mut before: Vec<Delivery>, after: Vec<Delivery>) {
        self.env.metrics.unlocks.inc_by(plan.unlocks.len() as u64);
        if plan.mailed > 0 {
            before.push(Delivery::Wake(vec![self.env.mail.clone()]));
        }
        if let Some(w) = plan::expiry_index(&self.tenant, &self.user, &self.st, &mut self.due) {
            plan.writes.insert(0, w);
        }
        for (hash, seq) in plan.ids {
            self.ids.add(hash, seq);
        }
        before.extend(plan.pushes.into_iter().map(Delivery::Push));
        if !plan.told.is_empty() {
            before.push(Delivery::Tell(plan.told));
        }
        before.extend(after);
        self.enqueue(myself, plan.writes, before);
    }

    /// Runs `w` now if nothing is in flight, otherwise once everything in flight is durable.
    async fn run_or_wait(&mut self, myself: &ActorRef<UserMsg>, w: Waiting) {
        if !self.pending.is_empty() {
            self.waiting.push(w);
            return;
        }
        match w {
            Waiting::Attach(conn, since) => self.attach(myself, conn, since).await,
            Waiting::Query(q) => {
                // The live state is not aligned to a new catalogue here (only by the next
                // event), so that replaying the log rebuilds it exactly.
                if let Some(catalogue) = self.env.catalogue(&self.tenant, &self.user) {
                    q(UserView { state: &self.st, catalogue: &catalogue, seq: self.cur.seq, offset: self.cur.offset });
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
            Waiting::Link(other, join, limit, reply) => self.link(myself, other, join, limit, reply),
            Waiting::TeamUnlock(event, reply) => self.team_unlock(myself, event, reply),
            Waiting::Notice(n) => self.notice(myself, n),
            Waiting::Revoke(badge, reason, claw_back, reply) => self.revoke(myself, badge, reason, claw_back, reply),
            Waiting::Expire(reply) => match self.env.catalogue(&self.tenant, &self.user) {
                Some(cat) => self.expire_seen(myself, &cat, Some(reply)),
                None => drop(reply.send(Err("the tenant's catalogue is gone".into()))),
            },
            Waiting::Retract(event_id, reason, claw_back, reply) => {
                if let Err((reply, e)) = self.retract(myself, event_id, reason, claw_back, reply).await {
                    let _ = reply.send(Err(e));
                }
            }
            Waiting::Community => self.tell_outcomes(myself),
        }
    }

    /// Writes a snapshot if the log has moved on since the last one.
    fn snapshot(&mut self, myself: &ActorRef<UserMsg>) {
        if self.cur.seq > self.cur.snap_seq {
            let w = plan::snapshot(&self.tenant, &self.user, &self.epoch, &mut self.cur, &self.st);
            self.enqueue(myself, w.into(), vec![]);
        }
    }

    /// Folds a planned change into the user's analytics facts; what it adds to the tenant's
    /// figures goes with the deliveries, to be added once the change is durable.
    fn fold(&mut self, cat: &Catalogue, step: &crate::analytics::Step, deliveries: &mut Vec<Delivery>) {
        // A team's events are its members' events again: the figures are the users' alone.
        if crate::core::catalogue::team_of(&self.user).is_some() {
            return;
        }
        let tz = cat.settings.default_timezone;
        let cache = &self.day;
        let day = |at: Millis| {
            let (start, end, d, zone) = cache.get();
            if start <= at && at < end && zone == tz {
                return d;
            }
            let (d, start, end) = crate::core::calendar::local_day(at, tz);
            cache.set((start, end, d, tz));
            d
        };
        let c = self.facts.fold(self.cur.seq, step, self.user_hash, day);
        if !c.is_empty() {
            deliveries.push(Delivery::Analytics(c));
        }
    }


    async fn attach(&mut self, myself: &ActorRef<UserMsg>, conn: Conn, since: Option<Since>) {
        if self.sockets.len() >= self.env.config.connections_per_user {
            // The error goes out first, then the close: dropping `conn` ends the session's queue.
            let _ = conn.tx.try_send(protocol::error("too_many_connections", "this user has too many open connections", None));
            let _ = conn.closing.set((protocol::close::TOO_MANY, "too many connections for this user"));
            return;
        }
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else { return };
        let mut replay = Vec::new();
        let mut recovered = false;
        if let Some(s) = since
            && s.epoch == self.epoch
            && s.offset <= self.cur.offset
        {
            if s.offset == self.cur.offset {
                recovered = true;
            } else {
                let store = self.env.log.clone();
                let (t, u, from) = (self.tenant.clone(), self.user.clone(), s.offset);
                let oldest_ok = now_ms() - self.env.config.history_hours as Millis * 3_600_000;
                // Enough events to hold the history however few pushes each caused.
                let scan = (self.env.config.history_size as usize).saturating_mul(4).max(64);
                if let Ok(Ok(pushes)) = tokio::task::spawn_blocking(move || store.pushes_after(&t, &u, from, scan)).await {
                    // Recovery is complete only if the stored history still starts right after
                    // the client's offset and nothing in between is too old.
                    // ...and the gap is within the history's size.
                    recovered = pushes.first().is_some_and(|p| p.0 == from + 1)
                        && pushes.iter().all(|p| p.1 >= oldest_ok)
                        && self.cur.offset - from <= self.env.config.history_size;
                    if recovered {
                        replay = pushes.into_iter().filter(|p| p.0 <= self.cur.offset).map(|p| Frame::from(p.2)).collect();
                    }
                }
            }
        }
        let welcome = protocol::welcome(&self.st, &cat, &self.epoch, self.cur.offset, recovered, now_ms());
        let mut ok = conn.tx.try_send(welcome).is_ok();
        for f in replay {
            ok = ok && conn.tx.try_send(f).is_ok();
        }
        // Where the tenant's open community goals stand, after the welcome; from then on the
        // community's tick pushes them to this socket as they move (the session unsubscribes
        // it when it ends).
        if let Some(c) = &self.env.community
            && crate::core::catalogue::team_of(&self.user).is_none()
        {
            for f in c.progress_frames(&cat.community, &self.tenant, now_ms()) {
                ok = ok && conn.tx.try_send(f).is_ok();
            }
            c.subscribe(&self.tenant, conn.id, conn.tx.downgrade());
        }
        if !ok {
            conn.slow.notify_one();
            return;
        }
        self.sockets.add(conn);
        self.expire_seen(myself, &cat, None);
        // A community goal that closed while she was away is told now, to this socket too.
        if !self.shares.is_empty() {
            self.tell_outcomes(myself);
        }
    }

    /// A badge whose `valid_for` ran out since the user's last event: the welcome already left
    /// it out, and now it is taken for good (an `accolade.expire` record) and pushed as
    /// `revoked`, to this socket and the webhooks, instead of waiting for her next event. A
    /// wait of an `absence` rule due by now lapses in the same record (`core::look`), and the
    /// badge it earns is pushed as an unlock.
    /// The expiry sweep's visit (`swept`) does the same, and answers once it is durable; when
    /// nothing is due (the index ran ahead of the log after a crash) it sets the index right.
    fn expire_seen(&mut self, myself: &ActorRef<UserMsg>, cat: &Arc<Catalogue>, swept: Option<oneshot::Sender<Result<(), String>>>) {
        let now = now_ms();
        let mut after: Vec<Delivery> = swept.map(Delivery::Swept).into_iter().collect();
        if self.st.next_look().is_none_or(|at| at > now) {
            if !after.is_empty() {
                let due = self.st.next_look();
                self.due = due;
                self.enqueue(myself, vec![store::writes::expiry(&self.tenant, &self.user, due)], after);
            }
            return;
        }
        let id = format!("expire:{}", self.cur.seq + 1);
        let mut next = self.st.clone();
        let fx = crate::core::look(&mut next, now, &id, cat);
        self.st = next;
        let plan = plan::expire(&planner!(self, cat), &mut self.cur, &self.st, &fx, id, now);
        // A lapsed wait's award counts in analytics like any other (a rebuild reads it from
        // the record's unlock pushes).
        self.fold(cat, &crate::analytics::step_of_effects(None, &fx, cat, false), &mut after);
        self.perform(myself, plan, vec![], after);
    }

    fn maybe_passivate(&mut self, myself: &ActorRef<UserMsg>) {
        let idle = self.last_activity.elapsed() >= self.env.config.passivate_after();
        if !idle || !self.sockets.is_empty() || !self.waiting.is_empty() || !self.pending.is_empty() {
            return;
        }
        if self.cur.seq > self.cur.snap_seq {
            // Persist first; the next tick stops once the snapshot is durable.
            self.snapshot(myself);
            return;
        }
        // Leave the registry only if no message is on its way to us; otherwise stay alive.
        if self.registry.remove_if_idle(&self.tenant, &self.user, myself.get_id(), &self.inflight) {
            self.env.metrics.passivated.inc();
            myself.stop(Some("passivated".into()));
        }
    }
}

impl Drop for User {
    fn drop(&mut self) {
        self.env.metrics.actors.dec();
    }
}
