//! Accepting TCP connections: the limits that protect the process before a request is even
//! read (connections in all, with a short pause for a slot before refusing, and per source
//! address; a deadline for the request head, and for the body a deadline and a floor on its
//! rate), HTTP/1.1 with upgrades for WebSockets, and the graceful drain at shutdown.
//!
//! axum's own `serve` sets no deadline for reading a request head, so a client that opens a
//! socket and trickles bytes (slowloris) would hold a file descriptor for ever, and nothing
//! stops one address from opening thousands. With a hard cap of 20,000 open files per process,
//! both would starve real users; this loop bounds them.

use crate::metrics::Metrics;
use axum::body::{Body, Bytes};
use axum::Router;
use dashmap::DashMap;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tower::ServiceExt;

/// The connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a complete request head (the WebSocket handshake included).
    pub header_timeout: Duration,
    /// Open connections in all; past it new ones get 503.
    pub total: usize,
    /// Open connections from one source address; past it that address gets 503.
    pub per_address: usize,
    /// How long accepting pauses at `total`, waiting for a connection to close, before the next
    /// one is refused.
    pub full_wait: Duration,
    /// What a request body may take.
    pub body: BodyLimits,
}

/// What a request body may take once its head has arrived. A body that breaks either limit is
/// cut off: the handler reading it answers 408 and the connection closes, so a client that
/// trickles a large body cannot hold a connection (and a share of the caps above) for hours.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The whole body must arrive within this long after the head.
    pub timeout: Duration,
    /// At least this many bytes per second, over each `BODY_WINDOW` (0: no floor).
    pub min_rate: u64,
}

/// The span over which a body's rate is judged: a client may pause for a moment (a
/// retransmission, a busy sender) as long as each such span brings the floor's worth.
pub const BODY_WINDOW: Duration = Duration::from_secs(5);

/// Why a request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CutOff {
    #[error("the request body did not arrive within {0} s of its head")]
    Deadline(u64),
    #[error("the request body arrived slower than {0} bytes per second")]
    TooSlow(u64),
}

impl CutOff {
    /// The error code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            CutOff::Deadline(_) => "request_timeout",
            CutOff::TooSlow(_) => "body_too_slow",
        }
    }

    /// The cut-off behind a body error, if the error is one (it reaches a handler wrapped in
    /// axum's and hyper's errors).
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Option<CutOff> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(c) = err.downcast_ref::<CutOff>() {
                return Some(*c);
            }
            cur = err.source();
        }
        None
    }
}

/// The pace of one body, judged with the time passed in.
#[derive(Debug)]
struct Pace {
    deadline: tokio::time::Instant,
    window_start: tokio::time::Instant,
    window_bytes: u64,
    /// Bytes the body still owes, when its length was announced.
    owed: Option<u64>,
    /// `owed` when the window started.
    window_owed: Option<u64>,
}

impl Pace {
    /// `length`: the body's announced length, if any.
    fn new(now: tokio::time::Instant, limits: &BodyLimits, length: Option<u64>) -> Pace {
        Pace { deadline: now + limits.timeout, window_start: now, window_bytes: 0, owed: length, window_owed: length }
    }

    fn on_data(&mut self, n: usize) {
        self.window_bytes = self.window_bytes.saturating_add(n as u64);
        self.owed = self.owed.map(|o| o.saturating_sub(n as u64));
    }

    /// At `now`: cut off, or when to look again (the deadline or the end of the window).
    fn check(&mut self, now: tokio::time::Instant, limits: &BodyLimits) -> Result<tokio::time::Instant, CutOff> {
        if now >= self.deadline {
            return Err(CutOff::Deadline(limits.timeout.as_secs()));
        }
        if limits.min_rate > 0 {
            let span = now - self.window_start;
            if span >= BODY_WINDOW {
                // The floor holds while more than a window's worth of it is still owed: a small
                // body (one event is a few hundred bytes) or a body's last few KiB, stalled by a
                // lossy link's retransmissions, has only the deadline to meet. Such a body can
                // hold its connection no longer than the deadline, which is the bound wanted.
                let need = (limits.min_rate as u128 * span.as_millis() / 1000) as u64;
                let window_worth = (limits.min_rate as u128 * BODY_WINDOW.as_millis() / 1000) as u64;
                let small = self.window_owed.is_some_and(|o| o <= window_worth);
                if self.window_bytes < need && !small {
                    return Err(CutOff::TooSlow(limits.min_rate));
                }
                self.window_start = now;
                self.window_bytes = 0;
                self.window_owed = self.owed;
            }
            return Ok(self.deadline.min(self.window_start + BODY_WINDOW));
        }
        Ok(self.deadline)
    }
}

/// A request body held to `BodyLimits`: it fails with `CutOff` when the body breaks them,
/// counted in `/metrics`, which the handler reading it turns into a 408.
struct Paced {
    inner: Incoming,
    pace: Pace,
    limits: BodyLimits,
    timer: Pin<Box<tokio::time::Sleep>>,
    metrics: Arc<Metrics>,
    /// Set once the body has ended or failed: nothing more is timed.
    over: bool,
}

impl Paced {
    fn new(inner: Incoming, limits: BodyLimits, metrics: Arc<Metrics>) -> Paced {
        let now = tokio::time::Instant::now();
        let pace = Pace::new(now, &limits, hyper::body::Body::size_hint(&inner).exact());
        Paced { inner, timer: Box::pin(tokio::time::sleep_until(pace.deadline)), pace, limits, metrics, over: false }
    }

    fn cut(&mut self, c: CutOff) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        self.over = true;
        let counter = match c {
            CutOff::Deadline(_) => &self.metrics.bodies_timed_out,
            CutOff::TooSlow(_) => &self.metrics.bodies_too_slow,
        };
        counter.inc();
        Poll::Ready(Some(Err(Box::new(c))))
    }
}

impl hyper::body::Body for Paced {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.over {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.pace.on_data(d.len());
                }
                // A body that keeps trickling is judged as its bytes arrive, too.
                if let Err(c) = this.pace.check(tokio::time::Instant::now(), &this.limits) {
                    return this.cut(c);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(None) => {
                this.over = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                this.over = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Pending => {}
        }
        // Nothing arrived: wake at the next point the body is judged, and judge it then.
        loop {
            match this.pace.check(tokio::time::Instant::now(), &this.limits) {
                Err(c) => return this.cut(c),
                Ok(next) => {
                    this.timer.as_mut().reset(next);
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Live connection counts, in all and per address.
#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    per_address: DashMap<IpAddr, usize>,
    /// Told whenever a slot is given back, for the accept loop waiting at the cap.
    freed: Notify,
}

/// Held for as long as a connection's socket lives, including after a WebSocket upgrade (it
/// travels inside the socket wrapper), so upgraded connections count too.
struct Slot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        self.counts.per_address.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
        self.counts.freed.notify_one();
    }
}

impl Counts {
    /// Waits until fewer than `total` connections are open, or until `deadline`. A stale
    /// notification only costs one more look at the count.
    async fn room(&self, total: usize, deadline: tokio::time::Instant) {
        while self.total.load(Ordering::Acquire) >= total {
            tokio::select! {
                _ = self.freed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Takes a slot for `ip`, or says which limit is reached.
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Slot, &'static str> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("the server has too many open connections; retry shortly");
        }
        let mut n = self.per_address.entry(ip).or_insert(0);
        if *n >= limits.per_address {
            drop(n);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("too many open connections from this address");
        }
        *n += 1;
        Ok(Slot { counts: self.clone(), ip })
    }
}

/// A socket that carries its slot, and whether it is to be reset rather than closed.
struct Counted {
    io: TcpStream,
    _slot: Slot,
    abort: Abort,
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Zero linger: the close sends a reset and the kernel drops what it still held to
        // send, instead of keeping the socket, its buffer full, as an orphan until the peer
        // reads it or the retries run out (minutes, for a peer that never opens its window).
        if self.abort.0.load(Ordering::Relaxed) {
            let _ = self.io.set_zero_linger();
        }
    }
}

/// Asks for a connection to be reset when it ends instead of closed: for a client given up
/// on, whose socket is full of pushes it is not reading. Every request carries its
/// connection's in its extensions.
#[derive(Clone, Default)]
pub struct Abort(Arc<AtomicBool>);

impl Abort {
    pub fn on_close(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Answers a refused connection with a 503 and a JSON body, then closes it.
async fn refuse(mut stream: TcpStream, why: &'static str) {
    let body = serde_json::json!({ "error": "too_many_connections", "message": why }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves `router` on `listener` until `stop` turns true, then stops accepting, lets requests
/// in progress finish (up to `grace`), and returns. WebSocket sessions watch the same signal
/// and close themselves.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>, grace: Duration) {
    let counts = Arc::new(Counts::default());
    // Every connection task holds a sender; when all are gone, the drain is over.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    // Whether the next connection at the cap may wait for a slot (see below).
    let mut patient = true;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        // At the cap, stop accepting for a moment rather than refuse at once: in a reconnect
        // storm every client drops its socket and dials again, and the new connections can
        // arrive before the server has seen the old ones close. Meanwhile they wait in the
        // kernel's listen queue, which costs no file descriptor. Only a server still full after
        // the wait answers 503, and it then answers at once until a slot frees: one wait per
        // spell of fullness, not one per client, or a server that stays full would leave its
        // queue hanging.
        if counts.total.load(Ordering::Acquire) >= limits.total {
            if patient {
                tokio::select! {
                    _ = counts.room(limits.total, tokio::time::Instant::now() + limits.full_wait) => {}
                    _ = stop.changed() => break,
                }
                patient = counts.total.load(Ordering::Acquire) < limits.total;
            }
        } else {
            patient = true;
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, mostly: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // Pushes are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let slot = match counts.take(peer.ip(), &limits) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(%peer, why, "connection refused");
                tokio::spawn(refuse(stream, why));
                continue;
            }
        };
        // Requests without a body (most GETs) have nothing to time.
        let m = metrics.clone();
        let abort = Abort::default();
        let for_requests = abort.clone();
        let svc = TowerToHyperService::new(router.clone().map_request(move |r: axum::http::Request<Incoming>| {
            let mut r = r.map(|b| if hyper::body::Body::is_end_stream(&b) { Body::new(b) } else { Body::new(Paced::new(b, limits.body, m.clone())) });
            r.extensions_mut().insert(for_requests.clone());
            r
        }));
        let mut stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let conn = http.serve_connection(TokioIo::new(Counted { io: stream, _slot: slot, abort }), svc).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(alive);
    let _ = tokio::time::timeout(grace, drained.recv()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body's pace, step by step: (seconds since the head, bytes that arrived, what `check`
    /// says then: Ok or the cut-off).
    #[test]
    fn a_body_is_cut_off_past_its_deadline_or_below_its_floor_and_a_short_pause_passes() {
        let limits = BodyLimits { timeout: Duration::from_secs(30), min_rate: 1000 };
        type Steps = Vec<(u64, usize, Result<(), CutOff>)>;
        // (what, the announced length, the steps)
        let cases: Vec<(&str, Option<u64>, Steps)> = vec![
            ("fast enough in every window", None, vec![(1, 10_000, Ok(())), (5, 0, Ok(())), (9, 6_000, Ok(())), (10, 0, Ok(()))]),
            ("a 3 s pause inside a window that still brings the floor", Some(100_000), vec![(1, 5_000, Ok(())), (4, 0, Ok(())), (5, 0, Ok(()))]),
            ("one byte a second", Some(100_000), vec![(1, 1, Ok(())), (2, 1, Ok(())), (5, 1, Err(CutOff::TooSlow(1000)))]),
            ("one byte a second, no length announced", None, vec![(1, 1, Ok(())), (5, 1, Err(CutOff::TooSlow(1000)))]),
            ("fast but never done", None, (1..=30).map(|t| (t, 6_000, if t < 30 { Ok(()) } else { Err(CutOff::Deadline(30)) })).collect()),
            ("a small body stalled for 7 s: only the deadline holds it", Some(400), vec![(1, 100, Ok(())), (5, 0, Ok(())), (8, 300, Ok(()))]),
            ("a small body that never ends is cut at the deadline", Some(400), vec![(5, 0, Ok(())), (20, 0, Ok(())), (30, 0, Err(CutOff::Deadline(30)))]),
            ("a large body whose last 4 KB stall: the floor lets the tail go", Some(24_000), vec![(4, 20_000, Ok(())), (5, 0, Ok(())), (10, 0, Ok(())), (12, 4_000, Ok(()))]),
        ];
        for (what, length, steps) in cases {
            let t0 = tokio::time::Instant::now();
            let mut pace = Pace::new(t0, &limits, length);
            for (t, bytes, want) in steps {
                pace.on_data(bytes);
                let got = pace.check(t0 + Duration::from_secs(t), &limits).map(|_| ());
                assert_eq!(got, want, "{what}, at {t} s");
            }
        }
        // No floor: only the deadline counts.
        let none = BodyLimits { timeout: Duration::from_secs(30), min_rate: 0 };
        let t0 = tokio::time::Instant::now();
        let mut pace = Pace::new(t0, &none, None);
        assert!(pace.check(t0 + Duration::from_secs(29), &none).is_ok());
        assert_eq!(pace.check(t0 + Duration::from_secs(30), &none), Err(CutOff::Deadline(30)));
    }
}
