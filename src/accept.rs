//! Accepting TCP connections: the limits that protect the process before a request is even
//! read (connections in all, with a short pause for a slot before refusing, and per source
//! address; a deadline for the request head), HTTP/1.1 with upgrades for WebSockets, and the
//! graceful drain at shutdown.
//!
//! axum's own `serve` sets no deadline for reading a request head, so a client that opens a
//! socket and trickles bytes (slowloris) would hold a file descriptor for ever, and nothing
//! stops one address from opening thousands. With a hard cap of 20,000 open files per process,
//! both would starve real users; this loop bounds them.

use axum::body::Body;
use axum::Router;
use dashmap::DashMap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A socket that carries its slot.
struct Counted {
    io: TcpStream,
    _slot: Slot,
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
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, mut stop: watch::Receiver<bool>, grace: Duration) {
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
        let svc = TowerToHyperService::new(router.clone().map_request(|r: axum::http::Request<Incoming>| r.map(Body::new)));
        let mut stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let conn = http.serve_connection(TokioIo::new(Counted { io: stream, _slot: slot }), svc).with_upgrades();
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
