//! A user's work that crosses nodes in cluster mode, over `cluster::route`: events posted to a
//! node that does not serve their user, and sockets a node holds for a user another node
//! serves. Both sides are here: the node that holds the socket (`attach`, `Attachment`), and
//! the owner, which answers for the partitions it serves (`answering`) and keeps the sockets
//! other nodes hold for its users (`Remotes`).
//!
//! A remote socket is attached to its user's actor on the owner like a local one: the owner
//! gives the actor a connection whose frames (the welcome, acks, errors and pushes, in the
//! actor's order) are published to the holder's inbox, one subject per socket. The holder
//! keeps the socket's in-flight slots and gets a receipt back for each event once its reply
//! has gone out, so the bounds on events in flight hold end to end. Each side learns of the
//! other's death: the holder refreshes the attachment every `REFRESH` and gives up on an owner
//! that stays silent for `STALL` after being asked something (or that NATS says is gone); the
//! owner drops an attachment not refreshed for `EXPIRE`.

use crate::cluster::partition::partition_of;
use crate::cluster::route::{Handler, Incoming, Inbox, Note, RouteError, Routes};
use crate::core::{Event, Millis};
use crate::metrics::Metrics;
use crate::protocol::{self, close, Frame, Since};
use crate::user::{Conn, InFlight, IngestOutcome, Origin, Receipt, UserMsg, Users};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// How often a holder refreshes each of its attachments.
pub const REFRESH: Duration = Duration::from_secs(5);
/// An attachment not refreshed for this long is dropped by the owner (its holder died).
pub const EXPIRE: Duration = Duration::from_secs(20);
/// A holder that asked its owner something and heard nothing back for this long gives up.
pub const STALL: Duration = Duration::from_secs(10);
/// How long a forwarded HTTP event may take: its owner answers once the event is durable.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// What one node sends the node serving a partition.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Request {
    /// An HTTP event, answered with its outcome once durable. It carries the time this node
    /// received it: the rules see that time, wherever they run.
    Event { tenant: String, event: Event, received_at: Millis },
    /// Attach the socket whose inbox is the reply subject to the user's actor.
    Attach { tenant: String, user: String, since: Option<Since> },
    /// An event from an attached socket, the `n`th it sent (from 1): a gap means one was lost.
    Socket { event: Event, received_at: Millis, n: u64 },
    /// The socket is still held, and has sent `sent` events.
    Refresh { sent: u64 },
    /// The socket has closed.
    Detach,
    /// An HTTP request about a user, answered by the owner's own router (`HttpAnswer`).
    Http { method: String, uri: String, headers: Vec<(String, String)>, body: String },
    /// A closed leaderboard period's award for a user, given by her actor, which refuses a
    /// second one: answered with `Result<bool, String>` (true when given now).
    Award { tenant: String, user: String, board: String, period: String, rank: usize },
    /// A goal's notice for its assigner, given by her actor (its reserved id makes a second one
    /// count once): answered with `Result<(), String>` once it is durable.
    Notice { tenant: String, user: String, notice: GoalNotice },
    /// One side of a team membership (docs/teams.md), changed by its entity's actor: answered
    /// with `Result<bool, Refused>` once durable.
    Link { tenant: String, entity: String, other: String, join: bool, limit: usize },
    /// A team's unlock told to a member (an `accolade.team_unlock` record), by her actor:
    /// answered with `Result<(), String>` once durable.
    TeamUnlock { tenant: String, event: Event },
    /// A member's retraction for a team (an `accolade.team_retract` mail row, addressed to the
    /// team), by the team's actor: answered with `Result<(), String>` once durable.
    TeamRetract { tenant: String, event: Event },
    /// Frames in no history (a team's progress) for a user's open sockets, given to her actor
    /// only if it is in memory: answered at once, with `()`.
    Told { tenant: String, user: String, frames: Vec<String> },
}

/// A membership change refused, as it crosses nodes (`LinkError`).
#[derive(Serialize, Deserialize)]
enum Refused {
    Full(usize),
    Failed(String),
}

/// A goal's notice for its assigner, as it crosses nodes (`UserMsg::Notice` without its reply).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct GoalNotice {
    pub id: String,
    /// `goal_completed` or `goal_missed`.
    pub kind: String,
    pub goal: String,
    pub title: String,
    pub assignee: String,
    pub at: Millis,
}

impl GoalNotice {
    /// The actor's message for it. Only the two kinds a goal ends with are known.
    pub fn message(self, reply: tokio::sync::oneshot::Sender<Result<(), String>>) -> Result<UserMsg, String> {
        let kind = match self.kind.as_str() {
            "goal_completed" => "goal_completed",
            "goal_missed" => "goal_missed",
            other => return Err(format!("`{other}` is not a goal notice")),
        };
        Ok(UserMsg::Notice { id: self.id, kind, goal: self.goal, title: self.title, assignee: self.assignee, at: self.at, reply })
    }
}

/// The header that marks a request relayed from another node: its answer is this node's, and
/// it is never relayed again.
pub const RELAYED: &str = "accolade-relayed";

/// The owner's answer to a relayed HTTP request. Bodies are the API's JSON, so text.
#[derive(Serialize, Deserialize)]
struct HttpAnswer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

/// The outcome of a forwarded HTTP event, as it comes back.
#[derive(Serialize, Deserialize)]
struct Answer {
    event_id: String,
    status: String,
    reason: Option<String>,
    code: Option<String>,
    xp: u64,
    unlocks: Vec<String>,
}

/// What the owner sends a socket's inbox: one byte of kind, the note's number (eight bytes,
/// big-endian, from 1, so the holder sees a note lost on the way; 0 for a close sent by a node
/// that does not know the socket), then the body.
mod note {
    /// A frame for the client (its text follows).
    pub const FRAME: u8 = b'F';
    /// One event's reply has gone out: one in-flight slot is free.
    pub const RECEIPT: u8 = b'R';
    /// A refresh was heard, and every event the socket sent had arrived.
    pub const KEPT: u8 = b'K';
    /// The socket is to close: the code and the reason follow, as `code reason`.
    pub const CLOSE: u8 = b'C';
}

fn encode(r: &Request) -> Bytes {
    Bytes::from(serde_json::to_vec(r).expect("a request encodes"))
}

fn with_kind(kind: u8, number: u64, body: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(body.len() + 9);
    b.push(kind);
    b.extend_from_slice(&number.to_be_bytes());
    b.extend_from_slice(body);
    Bytes::from(b)
}

/// A close from a node that does not know the socket (unnumbered).
fn closing_note(code: u16, why: &str) -> Bytes {
    with_kind(note::CLOSE, 0, format!("{code} {why}").as_bytes())
}

/// Why a socket closes when a message between its node and the user's was lost (core NATS
/// delivers at most once: a server lost, a connection moving to another server).
const LOST: &str = "a message between nodes was lost; reconnect";

fn unavailable(event_id: String, why: String) -> IngestOutcome {
    IngestOutcome { event_id, status: "rejected", reason: Some(format!("{why}; send it again")), code: Some("unavailable".into()), xp: 0, unlocks: vec![] }
}

// ---------------------------------------------------------------------------------------------
// The node that received the event or holds the socket
// ---------------------------------------------------------------------------------------------

/// Sends an HTTP event to the node that serves its user and returns that node's outcome; an
/// event nobody serves at the moment is `unavailable` (the sender sends it again).
pub async fn forward(routes: &Routes, tenant: &str, event: Event, received_at: Millis) -> IngestOutcome {
    let (to, id) = (event.user_id.clone(), event.event_id.clone());
    match ask::<Answer>(routes, tenant, &to, Request::Event { tenant: tenant.to_string(), event, received_at }).await {
        Ok(a) => IngestOutcome {
            event_id: a.event_id,
            status: match a.status.as_str() {
                "accepted" => "accepted",
                "duplicate" => "duplicate",
                _ => "rejected",
            },
            reason: a.reason,
            code: a.code.map(Into::into),
            xp: a.xp,
            unlocks: a.unlocks,
        },
        // Timed out (the event may yet be taken there, and a resend is then a duplicate), or
        // the answer did not decode.
        Err(e) => unavailable(id, e),
    }
}

/// Asks the node serving `entity`'s partition `r`, and decodes its answer.
async fn ask<T: serde::de::DeserializeOwned>(routes: &Routes, tenant: &str, entity: &str, r: Request) -> Result<T, String> {
    let reply = routes.request(partition_of(tenant, entity), encode(&r), FORWARD_TIMEOUT).await.map_err(|e| e.to_string())?;
    serde_json::from_slice::<T>(&reply).map_err(|e| format!("the serving node's answer did not decode: {e}"))
}

/// Gives a closed period's award to a user through her actor on the node serving her; true
/// when it was given now, false when she had it already.
pub async fn award(routes: &Routes, tenant: &str, user: &str, board: &str, period: &str, rank: usize) -> Result<bool, String> {
    let r = Request::Award { tenant: tenant.into(), user: user.into(), board: board.into(), period: period.into(), rank };
    ask::<Result<bool, String>>(routes, tenant, user, r).await?
}

/// Gives a goal's notice to its assigner `user` through her actor on the node serving her.
pub async fn notice(routes: &Routes, tenant: &str, user: &str, notice: GoalNotice) -> Result<(), String> {
    let r = Request::Notice { tenant: tenant.into(), user: user.into(), notice };
    ask::<Result<(), String>>(routes, tenant, user, r).await?
}

/// Changes one side of a team membership through `entity`'s actor on the node serving it.
pub async fn link(routes: &Routes, tenant: &str, entity: &str, other: &str, join: bool, limit: usize) -> Result<Result<bool, crate::user::LinkError>, String> {
    let r = Request::Link { tenant: tenant.into(), entity: entity.into(), other: other.into(), join, limit };
    let done: Result<bool, Refused> = ask(routes, tenant, entity, r).await?;
    Ok(done.map_err(|r| match r {
        Refused::Full(n) => crate::user::LinkError::Full(n),
        Refused::Failed(why) => crate::user::LinkError::Failed(why),
    }))
}

/// Tells a member a team's unlock (`event`, addressed to her) through her actor on the node
/// serving her.
pub async fn team_unlock(routes: &Routes, tenant: &str, event: Event) -> Result<(), String> {
    let to = event.user_id.clone();
    ask::<Result<(), String>>(routes, tenant, &to, Request::TeamUnlock { tenant: tenant.into(), event }).await?
}

/// Retracts a member's contribution from a team (`event`, addressed to the team) through the
/// team's actor on the node serving it.
pub async fn team_retract(routes: &Routes, tenant: &str, event: Event) -> Result<(), String> {
    let to = event.user_id.clone();
    ask::<Result<(), String>>(routes, tenant, &to, Request::TeamRetract { tenant: tenant.into(), event }).await?
}

/// How long a node waits for the answer to `told` (a hint: nothing is sent again).
const TOLD_TIMEOUT: Duration = Duration::from_secs(2);

/// Gives frames in no history (a team's progress) to `user`'s actor on the node serving her,
/// if it is in memory there.
pub async fn told(routes: &Routes, tenant: &str, user: &str, frames: &[Frame]) -> Result<(), String> {
    let r = Request::Told { tenant: tenant.into(), user: user.into(), frames: frames.iter().map(|f| f.to_string()).collect() };
    routes.request(partition_of(tenant, user), encode(&r), TOLD_TIMEOUT).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Relays an HTTP request about a user of partition `p` to the node serving it, and returns
/// that node's response, made by its own router from its user's actor.
pub async fn relay(routes: &Routes, p: u16, req: axum::http::Request<Bytes>) -> Result<axum::http::Response<Bytes>, RouteError> {
    let (parts, body) = req.into_parts();
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| *k != axum::http::header::HOST && *k != axum::http::header::CONTENT_LENGTH)
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let uri = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| parts.uri.path().to_string());
    let r = Request::Http { method: parts.method.to_string(), uri, headers, body: String::from_utf8_lossy(&body).into_owned() };
    let reply = routes.request(p, encode(&r), FORWARD_TIMEOUT).await?;
    let a: HttpAnswer = serde_json::from_slice(&reply).map_err(|e| RouteError::Nats(format!("the serving node's answer did not decode: {e}")))?;
    let mut res = axum::http::Response::builder().status(a.status);
    if let Some(ct) = a.content_type {
        res = res.header(axum::http::header::CONTENT_TYPE, ct);
    }
    res.body(Bytes::from(a.body)).map_err(|e| RouteError::Nats(format!("the serving node's answer is not a response: {e}")))
}

/// A socket of this node attached to its user's actor on another node. Dropping it detaches.
pub struct Attachment {
    out: mpsc::UnboundedSender<((Event, Millis), Option<InFlight>)>,
}

impl Attachment {
    /// Sends an event of the socket to the owner; its reply comes back as a frame like any
    /// other, and `permit` is released when the owner's receipt for it arrives (or the socket
    /// closes). Events sent one after another arrive in that order.
    pub fn event(&self, event: Event, received_at: Millis, permit: Option<InFlight>) -> Result<(), String> {
        self.out.send(((event, received_at), permit)).map_err(|_| "the user's node closed the socket; reconnect".to_string())
    }
}

/// Attaches `conn`, a socket of this node, to its user's actor on the node serving her: the
/// welcome (with what the client missed since `since`) and everything after it arrive in
/// `conn`'s outbox. When the attachment ends, `conn` is dropped, with its `closing` reason set,
/// which closes the socket.
pub async fn attach(routes: Arc<Routes>, metrics: Arc<Metrics>, tenant: &str, user: &str, since: Option<Since>, conn: Conn) -> Result<Attachment, RouteError> {
    let p = partition_of(tenant, user);
    let inbox = routes.new_inbox();
    // Bounded: with NATS away, the client's queue fills and sends wait for it to come back.
    let notes = bounded(routes.listen(&inbox)).await?;
    bounded(routes.send(p, encode(&Request::Attach { tenant: tenant.into(), user: user.into(), since }), &inbox)).await?;
    let (out, rx) = mpsc::unbounded_channel();
    tokio::spawn(hold(routes, metrics, p, inbox, notes, rx, conn));
    Ok(Attachment { out })
}

/// A send to NATS, given up on after `STALL`.
async fn bounded<T>(f: impl std::future::Future<Output = Result<T, RouteError>>) -> Result<T, RouteError> {
    tokio::time::timeout(STALL, f).await.unwrap_or_else(|_| Err(RouteError::Nats("NATS did not take the message in time".into())))
}

/// Why an attachment ended, as the holder sees it.
enum Ended {
    /// The socket closed (or was given up on): tell the owner.
    Here,
    /// The owner ended it, or is gone: nothing to tell.
    There,
}

/// The holder's side of one attachment, to its end.
async fn hold(routes: Arc<Routes>, metrics: Arc<Metrics>, p: u16, inbox: String, mut notes: Inbox, mut out: mpsc::UnboundedReceiver<((Event, Millis), Option<InFlight>)>, conn: Conn) {
    let mut permits: VecDeque<InFlight> = VecDeque::new();
    // Since when something asked of the owner has gone unanswered (the attach, at first).
    let mut unheard: Option<Instant> = Some(Instant::now());
    let mut refresh = tokio::time::interval_at(Instant::now() + REFRESH, REFRESH);
    // Events sent, and the number of the last note heard.
    let (mut sent, mut heard) = (0u64, 0u64);
    let give_up = |code: u16, why: &'static str| {
        tracing::debug!(partition = p, inbox, why, "a socket attached to another node's actor closes");
        let _ = conn.closing.set((code, why));
    };
    let ended = loop {
        tokio::select! {
            o = out.recv() => {
                let Some((event, permit)) = o else { break Ended::Here };
                permits.extend(permit);
                unheard.get_or_insert_with(Instant::now);
                sent += 1;
                let (event, received_at) = event;
                if bounded(routes.send(p, encode(&Request::Socket { event, received_at, n: sent }), &inbox)).await.is_err() {
                    give_up(close::INTERNAL, "the user's node is gone; reconnect");
                    break Ended::Here;
                }
            }
            n = notes.next() => {
                unheard = None;
                let body = match n {
                    Some(Note::Message(body)) => body,
                    Some(Note::NoResponders) | None => {
                        give_up(close::INTERNAL, "the user's node is gone; reconnect");
                        break Ended::There;
                    }
                };
                if body.len() < 9 {
                    continue;
                }
                let number = u64::from_be_bytes(body[1..9].try_into().expect("eight bytes"));
                if number != 0 {
                    // A note missing in between: an ack, a push or a receipt is lost for good.
                    if number != heard + 1 {
                        give_up(close::INTERNAL, LOST);
                        break Ended::Here;
                    }
                    heard = number;
                }
                match body[0] {
                    note::FRAME => {
                        let Ok(text) = std::str::from_utf8(&body[9..]) else { continue };
                        match conn.tx.try_send(Frame::from(text)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                metrics.slow_closed.inc();
                                conn.slow.notify_one();
                                break Ended::Here;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => break Ended::Here,
                        }
                    }
                    note::RECEIPT => drop(permits.pop_front()),
                    note::CLOSE => {
                        let text = String::from_utf8_lossy(&body[9..]);
                        let (code, why) = text.split_once(' ').unwrap_or((&text, ""));
                        give_up(code.parse().unwrap_or(close::INTERNAL), close::reason(why));
                        break Ended::There;
                    }
                    _ => {}
                }
            }
            _ = refresh.tick() => {
                unheard.get_or_insert_with(Instant::now);
                if bounded(routes.send(p, encode(&Request::Refresh { sent }), &inbox)).await.is_err() {
                    give_up(close::INTERNAL, "the user's node is gone; reconnect");
                    break Ended::Here;
                }
            }
            _ = async { tokio::time::sleep_until(unheard.expect("polled only when set") + STALL).await }, if unheard.is_some() => {
                give_up(close::INTERNAL, "the user's node did not answer; reconnect");
                break Ended::Here;
            }
        }
    };
    // Dropping `conn` ends the session's outbox: the socket closes with `closing`'s reason, at
    // once, whether or not the detach below can be sent.
    drop(conn);
    drop(permits);
    if let Ended::Here = ended {
        let _ = bounded(routes.send(p, encode(&Request::Detach), &inbox)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The owner
// ---------------------------------------------------------------------------------------------

/// A socket another node holds, attached to one of this node's actors.
struct Remote {
    conn: u64,
    tenant: String,
    user: String,
    /// The connection's outbox, without keeping it open: it closes when the actor lets go.
    tx: mpsc::WeakSender<Frame>,
    receipts: mpsc::UnboundedSender<()>,
    /// Tells the publisher to send a `KEPT` note, in order with the others.
    kept: mpsc::UnboundedSender<()>,
    closing: Arc<OnceLock<(u16, &'static str)>>,
    /// Events received from the socket.
    received: u64,
    refreshed: Instant,
}

/// The sockets other nodes hold for this node's users, by their inboxes.
#[derive(Default)]
pub struct Remotes {
    by_inbox: Mutex<HashMap<String, Remote>>,
}

impl Remotes {
    /// How many are attached.
    pub fn len(&self) -> usize {
        self.by_inbox.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the attachments not refreshed since `EXPIRE` before `now`: their holders died.
    pub fn expire(&self, users: &Users, now: Instant) {
        let gone: Vec<Remote> = {
            let mut map = self.by_inbox.lock().expect("not poisoned");
            let old: Vec<String> = map.iter().filter(|(_, r)| now.duration_since(r.refreshed) > EXPIRE).map(|(k, _)| k.clone()).collect();
            old.iter().filter_map(|k| map.remove(k)).collect()
        };
        for r in gone {
            users.send_existing(&r.tenant, &r.user, UserMsg::Detach { conn_id: r.conn });
        }
    }

    /// Ends an attachment a message of which was lost: the actor lets go of it, and the
    /// publisher then tells the holder to close the socket, which reconnects and resends.
    fn lose(&self, users: &Users, inbox: &str) {
        if let Some(r) = self.by_inbox.lock().expect("not poisoned").remove(inbox) {
            let _ = r.closing.set((close::INTERNAL, LOST));
            users.send_existing(&r.tenant, &r.user, UserMsg::Detach { conn_id: r.conn });
        }
    }

    fn remove(&self, inbox: &str, conn: u64) -> Option<Remote> {
        let mut map = self.by_inbox.lock().expect("not poisoned");
        if map.get(inbox).is_some_and(|r| r.conn == conn) { map.remove(inbox) } else { None }
    }
}

/// What answers for the partitions this node serves.
pub struct Answering {
    pub users: Users,
    /// Which partitions this node serves: a node that let one go (or woke from a pause past
    /// its lease) may still be subscribed for a moment, and must not act for it.
    pub log: Arc<crate::cluster::eventlog::ClusterLog>,
    pub routes: Arc<Routes>,
    pub remotes: Arc<Remotes>,
    pub metrics: Arc<Metrics>,
    /// The outbox of a remote socket's connection, as for a local one (`--outbox-capacity`).
    pub outbox: usize,
    /// This node's HTTP router, which answers relayed requests; set once the server is built.
    pub router: Arc<OnceLock<axum::Router>>,
}

/// The handler for the messages of partition `p`, which this node serves.
pub fn answering(a: Arc<Answering>, p: u16) -> Handler {
    Arc::new(move |m: Incoming| a.handle(m, p))
}

impl Answering {
    fn handle(&self, m: Incoming, p: u16) -> Option<BoxFuture<'static, Bytes>> {
        // A node that has let the partition go (or woke from a pause past its lease) may still
        // be subscribed for a moment: it stays silent, and the node that serves it answers.
        if !self.log.serves(p) {
            return None;
        }
        let req = match serde_json::from_slice::<Request>(&m.body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "a message from another node did not decode");
                let body = answer_bytes(unavailable(String::new(), format!("the message did not decode here: {e}")));
                return Some(Box::pin(async move { body }));
            }
        };
        match (req, m.reply) {
            (Request::Event { tenant, event, received_at }, _) => Some(self.event(tenant, event, received_at)),
            (Request::Http { method, uri, headers, body }, _) => Some(Box::pin(answer_http(self.router.get().cloned(), method, uri, headers, body))),
            (Request::Award { tenant, user, board, period, rank }, _) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let sent = self.users.send(&tenant, &user, UserMsg::Award { board, period, rank, reply: tx }).map_err(|e| e.to_string());
                Some(Box::pin(async move {
                    let given = match sent {
                        Ok(()) => rx.await.unwrap_or_else(|_| Err("the user's actor stopped".into())),
                        Err(e) => Err(e),
                    };
                    Bytes::from(serde_json::to_vec(&given).expect("a result encodes"))
                }))
            }
            (Request::Notice { tenant, user, notice }, _) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let sent = notice.message(tx).and_then(|m| self.users.send(&tenant, &user, m).map_err(|e| e.to_string()));
                Some(Box::pin(async move {
                    let given = match sent {
                        Ok(()) => rx.await.unwrap_or_else(|_| Err("the user's actor stopped".into())),
                        Err(e) => Err(e),
                    };
                    Bytes::from(serde_json::to_vec(&given).expect("a result encodes"))
                }))
            }
            (Request::Link { tenant, entity, other, join, limit }, _) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let sent = self.users.send(&tenant, &entity, UserMsg::Link { other, join, limit, reply: tx }).map_err(|e| e.to_string());
                Some(Box::pin(async move {
                    let done: Result<bool, Refused> = match sent {
                        Ok(()) => match rx.await {
                            Ok(Ok(changed)) => Ok(changed),
                            Ok(Err(crate::user::LinkError::Full(n))) => Err(Refused::Full(n)),
                            Ok(Err(crate::user::LinkError::Failed(why))) => Err(Refused::Failed(why)),
                            Err(_) => Err(Refused::Failed("the actor stopped".into())),
                        },
                        Err(e) => Err(Refused::Failed(e)),
                    };
                    Bytes::from(serde_json::to_vec(&done).expect("a result encodes"))
                }))
            }
            (Request::TeamUnlock { tenant, event }, _) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let user = event.user_id.clone();
                let sent = self.users.send(&tenant, &user, UserMsg::TeamUnlock { event, reply: tx }).map_err(|e| e.to_string());
                Some(Box::pin(async move {
                    let told = match sent {
                        Ok(()) => rx.await.unwrap_or_else(|_| Err("the user's actor stopped".into())),
                        Err(e) => Err(e),
                    };
                    Bytes::from(serde_json::to_vec(&told).expect("a result encodes"))
                }))
            }
            (Request::TeamRetract { tenant, event }, _) => {
                let users = self.users.clone();
                Some(Box::pin(async move {
                    let done = users.retract_contribution(&tenant, event).await;
                    Bytes::from(serde_json::to_vec(&done).expect("a result encodes"))
                }))
            }
            (Request::Told { tenant, user, frames }, _) => {
                self.users.send_existing(&tenant, &user, UserMsg::Told(frames.into_iter().map(Frame::from).collect()));
                Some(Box::pin(async { Bytes::from_static(b"null") }))
            }
            (Request::Attach { tenant, user, since }, Some(inbox)) => {
                self.attach(inbox, tenant, user, since);
                None
            }
            (Request::Socket { event, received_at, n }, Some(inbox)) => {
                self.socket_event(inbox, event, received_at, n);
                None
            }
            (Request::Refresh { sent }, Some(inbox)) => {
                // Known, and every event it sent has arrived: kept (told in order with the
                // other notes). Known but short of events: one was lost.
                let known = match self.remotes.by_inbox.lock().expect("not poisoned").get_mut(&inbox) {
                    Some(r) if r.received == sent => {
                        r.refreshed = Instant::now();
                        let _ = r.kept.send(());
                        Some(true)
                    }
                    Some(_) => Some(false),
                    None => None,
                };
                match known {
                    Some(true) => None,
                    Some(false) => {
                        self.remotes.lose(&self.users, &inbox);
                        None
                    }
                    None => {
                        let body = closing_note(close::INTERNAL, "the user moved to another node; reconnect");
                        Some(Box::pin(async move { body }))
                    }
                }
            }
            (Request::Detach, Some(inbox)) => {
                if let Some(r) = self.remotes.by_inbox.lock().expect("not poisoned").remove(&inbox) {
                    self.users.send_existing(&r.tenant, &r.user, UserMsg::Detach { conn_id: r.conn });
                }
                None
            }
            // Every socket message names its inbox; one that does not is nobody's.
            (_, None) => None,
        }
    }

    /// An HTTP event through its user's actor; the reply is its outcome once durable.
    fn event(&self, tenant: String, event: Event, received_at: Millis) -> BoxFuture<'static, Bytes> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (id, user) = (event.event_id.clone(), event.user_id.clone());
        let msg = UserMsg::Event { event, received_at, arrived: Instant::now(), origin: Origin::Http(tx), permit: None };
        let sent = self.users.send(&tenant, &user, msg).map_err(|e| e.to_string());
        Box::pin(async move {
            let outcome = match sent {
                Err(e) => unavailable(id, e),
                Ok(()) => rx.await.unwrap_or_else(|_| unavailable(id, "the user's actor stopped".into())),
            };
            answer_bytes(outcome)
        })
    }

    /// Attaches a remote socket to its user's actor, and starts publishing its frames.
    fn attach(&self, inbox: String, tenant: String, user: String, since: Option<Since>) {
        let (tx, rx) = mpsc::channel::<Frame>(self.outbox.max(8));
        let (receipts, receipts_rx) = mpsc::unbounded_channel();
        let (kept, kept_rx) = mpsc::unbounded_channel();
        let slow = Arc::new(Notify::new());
        let closing = Arc::new(OnceLock::new());
        let id = Conn::next_id();
        let conn = Conn { id, tx: tx.clone(), slow: slow.clone(), closing: closing.clone() };
        let remote = Remote { conn: id, tenant: tenant.clone(), user: user.clone(), tx: tx.downgrade(), receipts, kept, closing: closing.clone(), received: 0, refreshed: Instant::now() };
        drop(tx);
        // Registered before the actor hears of it, so the socket's events, which follow the
        // attach in order, find it.
        if let Some(old) = self.remotes.by_inbox.lock().expect("not poisoned").insert(inbox.clone(), remote) {
            self.users.send_existing(&old.tenant, &old.user, UserMsg::Detach { conn_id: old.conn });
        }
        if let Err(e) = self.users.send(&tenant, &user, UserMsg::Attach { conn, since }) {
            tracing::debug!(tenant, user, error = %e, "a remote socket could not be attached");
            let _ = closing.set((close::INTERNAL, "user unavailable; reconnect"));
        }
        tokio::spawn(publish(self.routes.clone(), self.remotes.clone(), self.users.clone(), inbox, id, rx, receipts_rx, kept_rx, slow, closing));
    }

    /// An event of a remote socket, through its user's actor as the socket's own.
    fn socket_event(&self, inbox: String, event: Event, received_at: Millis, n: u64) {
        let found = {
            let mut map = self.remotes.by_inbox.lock().expect("not poisoned");
            match map.get_mut(&inbox) {
                Some(r) if r.received + 1 == n => {
                    r.received = n;
                    Some(Ok((r.conn, r.tenant.clone(), r.user.clone(), r.tx.clone(), r.receipts.clone())))
                }
                Some(_) => Some(Err(())),
                None => None,
            }
        };
        let found = match found {
            Some(Err(())) => {
                // An event before this one never arrived: the socket reconnects and resends.
                self.remotes.lose(&self.users, &inbox);
                return;
            }
            Some(Ok(f)) => Some(f),
            None => None,
        };
        let Some((conn, tenant, user, tx, receipts)) = found else {
            // Not attached (expired, or let go of with its partition): the holder closes the
            // socket, and the client resends the event after reconnecting.
            let routes = self.routes.clone();
            tokio::spawn(async move { routes.tell(&inbox, closing_note(close::INTERNAL, "the user moved to another node; reconnect")).await });
            return;
        };
        let id = event.event_id.clone();
        let msg = UserMsg::Event { event, received_at, arrived: Instant::now(), origin: Origin::Conn(conn), permit: Some(InFlight::Remote(Receipt(receipts))) };
        if let Err(e) = self.users.send(&tenant, &user, msg)
            && let Some(tx) = tx.upgrade()
        {
            self.metrics.refused("unavailable");
            let _ = tx.try_send(protocol::error("unavailable", &format!("{e}; send it again"), Some(&id)));
        }
    }
}

/// A relayed HTTP request, through this node's router as if it had come here. The router
/// answers with 503 if this node no longer serves the user (`RELAYED` stops a second relay).
async fn answer_http(router: Option<axum::Router>, method: String, uri: String, headers: Vec<(String, String)>, body: String) -> Bytes {
    use tower::ServiceExt;
    let failed = |status: u16, why: String| HttpAnswer { status, content_type: Some("application/json".into()), body: serde_json::json!({ "error": "unavailable", "message": why }).to_string() };
    let answer = match router {
        None => failed(503, "the serving node is still starting; try again".into()),
        Some(router) => {
            let mut req = axum::http::Request::builder().method(method.as_str()).uri(uri);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            match req.header(RELAYED, "1").body(axum::body::Body::from(body)) {
                Err(e) => failed(400, format!("the relayed request is not a request: {e}")),
                Ok(req) => {
                    let res = match router.oneshot(req).await {
                        Ok(res) => res,
                        Err(never) => match never {},
                    };
                    let status = res.status().as_u16();
                    let content_type = res.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
                    match axum::body::to_bytes(res.into_body(), usize::MAX).await {
                        Ok(b) => HttpAnswer { status, content_type, body: String::from_utf8_lossy(&b).into_owned() },
                        Err(e) => failed(503, format!("the answer could not be read: {e}")),
                    }
                }
            }
        }
    };
    let body = serde_json::to_vec(&answer).expect("an answer encodes");
    // NATS carries at most 1 MiB in a message (its default `max_payload`): a larger answer
    // would be dropped on the way and the asking node would wait it out. Say so instead.
    if body.len() > RELAY_MAX {
        let refused = HttpAnswer {
            status: 502,
            content_type: Some("application/json".into()),
            body: serde_json::json!({ "error": "too_large_to_relay", "message": format!("the answer ({} bytes) is larger than a message between nodes carries; ask for less (a smaller `limit`), or ask the node that serves the user", body.len()) }).to_string(),
        };
        return Bytes::from(serde_json::to_vec(&refused).expect("an answer encodes"));
    }
    Bytes::from(body)
}

/// The largest relayed answer: NATS's default `max_payload` (1 MiB) less room for headers.
const RELAY_MAX: usize = 1024 * 1024 - 16 * 1024;

fn answer_bytes(o: IngestOutcome) -> Bytes {
    let a = Answer { event_id: o.event_id, status: o.status.into(), reason: o.reason, code: o.code.map(Into::into), xp: o.xp, unlocks: o.unlocks };
    Bytes::from(serde_json::to_vec(&a).expect("an answer encodes"))
}

/// Publishes a remote socket's frames, receipts and refresh answers to its inbox, numbered, in
/// the order the actor made them, until the actor lets go of the connection; then tells the
/// holder to close it. A note NATS does not take (too large, or NATS away) ends it too: the
/// holder would otherwise miss it unawares.
#[allow(clippy::too_many_arguments)]
async fn publish(
    routes: Arc<Routes>,
    remotes: Arc<Remotes>,
    users: Users,
    inbox: String,
    conn: u64,
    mut rx: mpsc::Receiver<Frame>,
    mut receipts: mpsc::UnboundedReceiver<()>,
    mut kept: mpsc::UnboundedReceiver<()>,
    slow: Arc<Notify>,
    closing: Arc<OnceLock<(u16, &'static str)>>,
) {
    let mut batch = Vec::new();
    let mut number = 0u64;
    let mut tell = async |kind: u8, body: &[u8]| {
        number += 1;
        tokio::time::timeout(STALL, routes.tell(&inbox, with_kind(kind, number, body))).await.map_err(|_| RouteError::Nats("timed out".into())).and_then(|r| r)
    };
    'notes: loop {
        tokio::select! {
            biased;
            _ = slow.notified() => {
                let _ = closing.set((close::SLOW, "too slow reading pushes"));
                break;
            }
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    break;
                }
                for f in batch.drain(..) {
                    if tell(note::FRAME, f.as_bytes()).await.is_err() {
                        let _ = closing.set((close::INTERNAL, LOST));
                        break 'notes;
                    }
                }
            }
            Some(()) = receipts.recv() => {
                if tell(note::RECEIPT, &[]).await.is_err() {
                    let _ = closing.set((close::INTERNAL, LOST));
                    break;
                }
            }
            Some(()) = kept.recv() => {
                if tell(note::KEPT, &[]).await.is_err() {
                    let _ = closing.set((close::INTERNAL, LOST));
                    break;
                }
            }
        }
    }
    let (code, why) = closing.get().copied().unwrap_or((close::INTERNAL, "user restarted; reconnect"));
    let _ = tell(note::CLOSE, format!("{code} {why}").as_bytes()).await;
    // An attachment whose publisher ended is gone, whatever ended it; the actor lets go of it.
    if let Some(r) = remotes.remove(&inbox, conn) {
        users.send_existing(&r.tenant, &r.user, UserMsg::Detach { conn_id: conn });
    }
}
