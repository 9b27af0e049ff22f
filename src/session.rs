//! One WebSocket connection: authenticate with `hello`, decode and validate each event, forward
//! it to the user's actor, and write what the actor pushes from a bounded outbox. The only
//! module that touches WebSocket types.

use crate::accept::Abort;
use crate::auth::Principal;
use crate::core::Event;
use crate::protocol::{self, ClientMsg, Frame};
use crate::clock::now_ms;
use crate::shared::Shared;
use crate::user::{Conn, InFlight, Origin, UserMsg};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, AcquireError, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, Instant};

use crate::protocol::close;

/// A per-connection token bucket.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token at `now` (read once per frame by the read loop), if one has refilled.
    fn take(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the bucket holds a whole token again, if it does not now.
    fn refilled_at(&self) -> Option<Instant> {
        (self.tokens < 1.0 && self.rate > 0.0).then(|| self.at + std::time::Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

fn text(f: Frame) -> Message {
    Message::Text(Utf8Bytes::from(f.as_ref()))
}

/// The close code for a failed read, when the client broke the protocol: a frame over the
/// protocol limit (1009), invalid UTF-8 in a text frame (1007), any other violation (1002).
fn read_error(e: axum::Error) -> Option<(u16, &'static str)> {
    match e.into_inner().downcast::<tungstenite::Error>().map(|b| *b) {
        Ok(tungstenite::Error::Capacity(_)) => Some((close::TOO_BIG, "message too big")),
        Ok(tungstenite::Error::Utf8(_)) => Some((close::BAD_DATA, "text frame is not valid UTF-8")),
        Ok(tungstenite::Error::Protocol(_)) => Some((close::PROTOCOL, "protocol error")),
        _ => None,
    }
}

async fn close_with<S: Sink<Message> + Unpin>(sink: &mut S, code: u16, reason: &'static str) {
    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))).await;
}

/// `GET /v1/ws`: upgrades the request to a WebSocket and runs its session.
pub async fn upgrade(State(shared): State<Arc<Shared>>, abort: Option<axum::Extension<Abort>>, headers: axum::http::HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    // A handshake is a GET and carries no body. One that announces a body would be switched
    // to a WebSocket only once the body had arrived (hyper upgrades after the request ends),
    // holding the connection for as long as a slow client takes: refuse it instead, at once.
    let length = headers.get(axum::http::header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|l| l.trim().parse::<u64>().ok()));
    if headers.contains_key(axum::http::header::TRANSFER_ENCODING) || length.is_some_and(|l| l != Some(0)) {
        use axum::response::IntoResponse;
        let mut res = crate::api::ApiError(axum::http::StatusCode::BAD_REQUEST, "handshake_with_body", "a WebSocket handshake carries no body".into()).into_response();
        res.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return res;
    }
    // The application limit (`max_message_bytes`) answers with a `too_large` error and keeps
    // the connection; the protocol limit, four times larger, closes it (1009). Small buffers
    // keep ten thousand idle connections cheap: the read buffer is allocated whole for every
    // connection (heaptrack: it was 4 KiB of each connection's heap at 4 KiB) and tungstenite
    // zero-fills it before each read, while a client's event frame is about 250 bytes. A larger
    // frame still arrives whole: tungstenite reserves a frame's full length once its header is
    // read. Outgoing frames collect in the write buffer
    // until the session flushes, which it does once per batch of queued pushes: one send
    // system call per batch instead of one per frame (an event's ack and xp are two frames).
    let hard = shared.config.max_message_bytes.saturating_mul(4).max(1024);
    upgrade
        .max_message_size(hard)
        .max_frame_size(hard)
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .on_upgrade(move |socket| run(socket, shared, abort.map(|a| a.0)))
}

/// An error answer for the client, counted by its code in `/metrics`.
fn refusal(m: &crate::metrics::Metrics, code: &str, text: &str, event_id: Option<&str>) -> Frame {
    m.refused(code);
    protocol::error(code, text, event_id)
}

/// Runs one connection to its end. Generic over the socket so tests can drive it with channels.
/// `abort`, when the socket is a TCP connection, resets it at the end if the client was given
/// up on as slow and its socket stayed full.
///
/// The socket is split before the future is made, and the hello phase is a future of its own.
/// An async fn keeps a slot for each parameter, and for the locals of every phase, for its whole
/// life, and this future lives as long as the connection: split inside, the socket's 368 bytes
/// stayed in every connection's task after `split` had moved them out, and the hello phase's
/// futures were laid beside the serving loop's (`-Zprint-type-sizes`; bench/README.md, fix 13).
pub fn run<S>(socket: S, shared: Arc<Shared>, abort: Option<Abort>) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message> + Unpin + Send,
{
    let (sink, stream) = socket.split();
    serve(sink, stream, shared, abort)
}

async fn serve<S>(mut sink: SplitSink<S, Message>, mut stream: SplitStream<S>, shared: Arc<Shared>, abort: Option<Abort>)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message> + Unpin + Send,
{
    let cfg = shared.config.clone();
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow() {
        return close_with(&mut sink, close::GOING_AWAY, "server shutting down").await;
    }
    let Some((principal, since)) = Box::pin(hello(&mut sink, &mut stream, &shared, &mut shutdown)).await else {
        return;
    };
    let Principal { tenant, user } = principal;
    // A store that has failed cannot rebuild the user, nor describe them truthfully: say why,
    // and let the client reconnect once the server has restarted.
    if let Some(why) = shared.store.failure() {
        let _ = sink.send(text(refusal(&shared.metrics, "unavailable", &format!("the server cannot read or store state now ({why}); reconnect later"), None))).await;
        return close_with(&mut sink, close::INTERNAL, "storage failed; reconnect later").await;
    }

    let (tx, mut outbox) = mpsc::channel::<Frame>(cfg.outbox_capacity.max(8));
    let slow = Arc::new(Notify::new());
    let id = Conn::next_id();
    let closing = Arc::new(std::sync::OnceLock::new());
    let conn = Conn { id, tx: tx.clone(), slow: slow.clone(), closing: closing.clone() };
    // Leaderboard watches push into the same outbox through a weak handle: the session must
    // see the channel close when the actor lets go of the connection.
    let watch_tx = tx.downgrade();
    drop(tx);
    // In cluster mode, a user another node serves is attached to her actor there: what the
    // actor sends arrives in the same outbox, and her events go there in order.
    let via = match &shared.cluster {
        Some(m) if !m.serves(&tenant, &user) => match m.attach(shared.metrics.clone(), &tenant, &user, since, conn).await {
            Ok(a) => Via::Remote(a),
            Err(e) => {
                let _ = sink.send(text(refusal(&shared.metrics, "unavailable", &format!("the node serving this user cannot be reached ({e}); reconnect"), None))).await;
                return close_with(&mut sink, close::INTERNAL, "user unavailable; reconnect").await;
            }
        },
        _ => {
            if shared.users.send(&tenant, &user, UserMsg::Attach { conn, since }).is_err() {
                return close_with(&mut sink, close::INTERNAL, "user unavailable; reconnect").await;
            }
            Via::Local
        }
    };
    shared.metrics.connections.inc();

    // Unacknowledged events of this connection: when all permits are out, the socket is not
    // read until acks come back, which pushes back on the client through TCP.
    let permits = Arc::new(Semaphore::new(cfg.inflight_per_user.max(1)));
    let mut ready = None;
    // The server's bound on socket events in flight (`--socket-inflight-events`) is taken when
    // a frame has been read, not ahead of it like the connection's, or every idle connection
    // would hold one. When it is exhausted the frame waits in `parked`, the socket is not read
    // further, and the wait is kept across turns of the loop, so the connection keeps its
    // place in the semaphore's queue while its pushes go out.
    let mut parked: Option<Utf8Bytes> = None;
    let mut server_wait: Option<PermitWait> = None;
    let mut bucket = Bucket { tokens: cfg.rate_burst, rate: cfg.rate_per_sec, burst: cfg.rate_burst, at: Instant::now() };
    // After a refusal (`rate_limited`, or any error while the bucket is empty) the socket is
    // not read until the bucket holds a token again. A refusal costs the server a decode, an
    // error frame and a write, so a client that ignores `rate_limited` and keeps sending
    // spent the server's time as fast as it could write, and the others' acks waited: ten such
    // clients among a thousand kept the others' per-second ack p99 at 27 to 58 ms for two to
    // three seconds. Paused, the client waits in TCP, and only its first refusal costs
    // anything (bench/README.md, fix 20).
    let mut paused_until: Option<Instant> = None;
    let mut ping = tokio::time::interval(cfg.ping());
    ping.reset();
    let mut last_seen = Instant::now();
    // Grown by `recv_many` as batches need it; most batches are two or three frames, and a
    // preallocated 64 slots were 1 KiB of every connection.
    let mut batch = Vec::new();

    let reason = loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break Some((close::GOING_AWAY, "server shutting down")),
            _ = slow.notified() => break Some((close::SLOW, "too slow reading pushes")),
            n = outbox.recv_many(&mut batch, 256) => {
                if n == 0 {
                    break Some(closing.get().copied().unwrap_or((close::INTERNAL, "user restarted; reconnect")));
                }
                // Feed everything that is queued, then flush once. A client that stops reading
                // fills its socket and this write waits; it must not hold the connection past
                // the moment the actor finds the client too slow. (A shutdown lets the write
                // finish: the drain after the loop is bounded in time anyway.)
                let write = async {
                    for f in batch.drain(..) {
                        sink.feed(text(f)).await?;
                    }
                    sink.flush().await
                };
                tokio::select! {
                    biased;
                    _ = slow.notified() => break Some((close::SLOW, "too slow reading pushes")),
                    written = write => if written.is_err() { break None },
                }
                batch.clear();
            }
            p = permits.clone().acquire_owned(), if ready.is_none() => {
                ready = p.ok();
            }
            s = async { server_wait.as_mut().expect("polled only while waiting").await }, if server_wait.is_some() => {
                server_wait = None;
                let (Some(t), Ok(server)) = (parked.take(), s) else { break None };
                if let Some(err) = on_text(&shared, &tenant, &user, id, &t, Instant::now(), &mut bucket, &mut ready, server, &watch_tx, &via) {
                    paused_until = bucket.refilled_at();
                    if sink.send(text(err)).await.is_err() {
                        break None;
                    }
                }
            }
            // An async block, so that nothing is made unless the branch is polled.
            _ = async { if let Some(t) = paused_until { tokio::time::sleep_until(t).await } }, if paused_until.is_some() => {
                paused_until = None;
            }
            m = stream.next(), if ready.is_some() && paused_until.is_none() && parked.is_none() => {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => break read_error(e),
                    None => break None,
                };
                last_seen = Instant::now();
                match m {
                    Message::Text(t) => match shared.socket_permits.clone().try_acquire_owned() {
                        Ok(server) => {
                            if let Some(err) = on_text(&shared, &tenant, &user, id, &t, last_seen, &mut bucket, &mut ready, server, &watch_tx, &via) {
                                paused_until = bucket.refilled_at();
                                if sink.send(text(err)).await.is_err() {
                                    break None;
                                }
                            }
                        }
                        Err(_) => {
                            parked = Some(t);
                            server_wait = Some(Box::pin(shared.socket_permits.clone().acquire_owned()));
                        }
                    },
                    Message::Binary(_) => {
                        if sink.send(text(refusal(&shared.metrics, "invalid_message", "binary frames are not supported; send JSON text", None))).await.is_err() {
                            break None;
                        }
                    }
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Close(_) => {
                        // The protocol layer queued the close reply; flushing sends it, so the
                        // client sees a clean close instead of 1006.
                        let _ = sink.flush().await;
                        break None;
                    }
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > cfg.idle_timeout() {
                    break Some((close::IDLE, "idle"));
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some((code, why)) = reason {
        // Whatever is still queued goes out before the close frame, except to a slow client:
        // its socket is full, and waiting on it is exactly what must not happen. Either way
        // the last writes are bounded, so a client that reads nothing cannot hold the task.
        let drain = async {
            if code != close::SLOW {
                while let Ok(f) = outbox.try_recv() {
                    if sink.feed(text(f)).await.is_err() {
                        break;
                    }
                }
            }
            close_with(&mut sink, code, why).await;
        };
        let stuck = timeout(std::time::Duration::from_secs(1), drain).await.is_err();
        // A slow client whose socket is still full gets a reset: what the kernel holds for it
        // is pushes it will never catch up with, and an orphan would keep them for minutes.
        if stuck && code == close::SLOW
            && let Some(a) = &abort
        {
            a.on_close();
        }
    }
    shared.boards.unwatch_all(id);
    // The actor subscribed it to community goals' progress after its welcome.
    shared.community.unsubscribe(&tenant, id);
    match via {
        Via::Local => shared.users.send_existing(&tenant, &user, UserMsg::Detach { conn_id: id }),
        // Dropped, the attachment detaches.
        Via::Remote(a) => drop(a),
    }
    shared.metrics.connections.dec();
}

/// The hello phase: the first message must authenticate, within the time-out. Returns the
/// principal, or `None` once the connection has been answered and closed. Boxed by its caller,
/// so that its futures are freed once it is over.
async fn hello<S>(sink: &mut SplitSink<S, Message>, stream: &mut SplitStream<S>, shared: &Shared, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> Option<(Principal, Option<protocol::Since>)>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message> + Unpin + Send,
{
    let cfg = &shared.config;
    loop {
        let next = tokio::select! {
            n = timeout(cfg.auth_timeout(), stream.next()) => n,
            _ = shutdown.changed() => {
                close_with(sink, close::GOING_AWAY, "server shutting down").await;
                return None;
            }
        };
        let first = match next {
            Err(_) => {
                close_with(sink, close::AUTH_TIMEOUT, "no hello in time").await;
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                if let Some((code, why)) = read_error(e) {
                    close_with(sink, code, why).await;
                }
                return None;
            }
            Ok(Some(Ok(m))) => m,
        };
        let text = match first {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return None,
            Message::Binary(_) => {
                let _ = sink.send(text(refusal(&shared.metrics, "invalid_message", "binary frames are not supported; send JSON text", None))).await;
                close_with(sink, close::UNAUTHORIZED, "send hello first").await;
                return None;
            }
        };
        match protocol::decode(&text) {
            Ok(ClientMsg::Hello { token, since }) => match shared.keys.verify(&token) {
                Ok(p) => return Some((p, since)),
                Err(e) => {
                    let _ = sink.send(self::text(refusal(&shared.metrics, "unauthorized", &e.to_string(), None))).await;
                    close_with(sink, close::UNAUTHORIZED, "unauthorized").await;
                    return None;
                }
            },
            Ok(ClientMsg::Event(_) | ClientMsg::Watch { .. } | ClientMsg::Unwatch { .. }) => {
                let _ = sink.send(self::text(refusal(&shared.metrics, "unauthorized", "send hello with a token before any event", None))).await;
                close_with(sink, close::UNAUTHORIZED, "send hello first").await;
                return None;
            }
            Err(e) => {
                let _ = sink.send(self::text(refusal(&shared.metrics, e.code(), &e.to_string(), None))).await;
                close_with(sink, close::UNAUTHORIZED, "send hello first").await;
                return None;
            }
        }
    }
}

/// A wait for the server's in-flight permit, kept across turns of a session's loop.
type PermitWait = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Handles one text frame after authentication; returns an error frame for the client, if any.
/// An event takes the connection's permit from `ready` and `server`'s with it, both held until
/// its reply goes out; any other frame lets `server`'s go at once.
#[allow(clippy::too_many_arguments)]
fn on_text(
    shared: &Arc<Shared>,
    tenant: &str,
    user: &str,
    conn: u64,
    text: &str,
    now: Instant,
    bucket: &mut Bucket,
    ready: &mut Option<OwnedSemaphorePermit>,
    server: OwnedSemaphorePermit,
    watch_tx: &mpsc::WeakSender<Frame>,
    via: &Via,
) -> Option<Frame> {
    let limit = shared.config.max_message_bytes;
    if text.len() > limit {
        return Some(refusal(&shared.metrics, "too_large", &protocol::WireError::TooLarge(text.len(), limit).to_string(), None));
    }
    let ev = match protocol::decode(text) {
        Ok(ClientMsg::Event(ev)) => ev,
        Ok(ClientMsg::Hello { .. }) => return Some(refusal(&shared.metrics, "invalid_message", "already authenticated", None)),
        Ok(ClientMsg::Watch { board, top }) => {
            let known = shared.catalogue(tenant).is_some_and(|c| c.board(&board).is_some());
            if !known {
                return Some(refusal(&shared.metrics, "unknown_board", &format!("there is no leaderboard `{board}`"), None));
            }
            return match shared.boards.watch(conn, tenant, user, &board, top, watch_tx.clone()) {
                Ok(()) => None,
                Err(code) => Some(refusal(&shared.metrics, code, &format!("a connection may watch at most {} boards", crate::boards::MAX_WATCHES), None)),
            };
        }
        Ok(ClientMsg::Unwatch { board }) => {
            shared.boards.unwatch(conn, &board);
            return None;
        }
        Err(e) => {
            // An event the client cannot have meant as sent (a bad field, say) is a rejected
            // event; a frame that is not a message at all is only a refusal.
            if e.code() != "invalid_event" {
                return Some(refusal(&shared.metrics, e.code(), &e.to_string(), None));
            }
            shared.metrics.rejected.inc();
            // The refusal names the event whenever the event named itself, so that a client
            // can drop it rather than resend it unchanged on every reconnect. Read again only
            // on this path: the decoder does not keep what it refused.
            let id = serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| v.get("event_id")?.as_str().map(str::to_string));
            return Some(refusal(&shared.metrics, e.code(), &e.to_string(), id.as_deref()));
        }
    };
    if !bucket.take(now) {
        shared.metrics.rate_limited.inc();
        shared.metrics.refused("rate_limited");
        let wait = bucket.refilled_at().map_or(0, |at| at.saturating_duration_since(now).as_millis() as u64);
        return Some(protocol::rate_limited(&ev.event_id, wait.max(1)));
    }
    let Some(cat) = shared.catalogue(tenant) else {
        return Some(refusal(&shared.metrics, "unavailable", "this tenant has no catalogue", Some(&ev.event_id)));
    };
    if let Some(why) = shared.store.failure() {
        shared.metrics.storage_failed.inc();
        return Some(refusal(&shared.metrics, "unavailable", &format!("the server cannot store events now ({why}); send it again later"), Some(&ev.event_id)));
    }
    if let Some(t) = cat.type_of(&ev.event_type)
        && !cat.types[t].client
    {
        shared.metrics.rejected.inc();
        return Some(refusal(&shared.metrics, 
            "forbidden_event",
            &format!(
                "`{}` may only be sent by the app's backend through the HTTP API: event types are backend-only unless the catalogue gives them `client = true`",
                ev.event_type
            ),
            Some(&ev.event_id),
        ));
    }
    let event = Event {
        event_id: ev.event_id,
        event_type: ev.event_type,
        user_id: user.to_string(),
        tenant_id: tenant.to_string(),
        occurred_at: ev.occurred_at,
        source: "socket".into(),
        payload: ev.payload,
    };
    let event_id = event.event_id.clone();
    let permit = ready.take().map(|conn| InFlight::Socket { conn, server });
    let sent = match via {
        Via::Local => {
            let msg = UserMsg::Event { event, received_at: now_ms(), arrived: tokio::time::Instant::now(), origin: Origin::Conn(conn), permit };
            shared.users.send(tenant, user, msg).map_err(|e| e.to_string())
        }
        Via::Remote(a) => a.event(event, now_ms(), permit),
    };
    match sent {
        Ok(()) => None,
        Err(e) => Some(refusal(&shared.metrics, "unavailable", &e, Some(&event_id))),
    }
}

/// Where a socket's user is served: by an actor of this node, or (cluster mode) of another.
enum Via {
    Local,
    Remote(crate::remote::Attachment),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The rate bucket, from a table of (milliseconds since the start, taken?) at 10 events/s
    /// with a burst of 3: the burst first, then one token per 100 ms, never more than the
    /// burst saved up; `refilled_at` says when the next token is whole.
    #[test]
    fn the_rate_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut b = Bucket { tokens: 3.0, rate: 10.0, burst: 3.0, at: start };
        let rows = [
            (0, true, "burst 1"),
            (0, true, "burst 2"),
            (0, true, "burst 3"),
            (0, false, "empty"),
            (50, false, "half a token"),
            (100, true, "a token after 100 ms"),
            (150, false, "half again"),
            (10_000, true, "saved up: at most the burst"),
            (10_000, true, "2"),
            (10_000, true, "3"),
            (10_000, false, "no more than the burst"),
        ];
        for (ms, taken, what) in rows {
            assert_eq!(b.take(start + Duration::from_millis(ms)), taken, "{what} at {ms} ms");
        }
        assert_eq!(b.refilled_at(), Some(start + Duration::from_millis(10_100)), "the next token is whole 100 ms after the last");
    }
}

