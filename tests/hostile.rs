//! Hostile and broken clients: each bad input gets its clear error (or close code), and none of
//! it costs the server more than its limits allow. The table in docs/limits.md points here.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    sock.connect(to).await.unwrap()
}

/// Opens a WebSocket from `from`; the HTTP status if the handshake is refused.
async fn ws_from(from: [u8; 4], s: &TestServer) -> Result<Client, (u16, String)> {
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp_from(from, s.addr).await);
    match tokio_tungstenite::client_async(s.url(), tcp).await {
        Ok((ws, _)) => Ok(Client { ws, welcome: json!(null) }),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err((r.status().as_u16(), String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned())),
        Err(e) => Err((0, e.to_string())),
    }
}

#[tokio::test]
async fn a_handshake_that_never_completes_is_cut_off() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.header_timeout_secs = 1).await;
    // Slowloris: a request head started and never finished.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the server still holds a stalled handshake after 5 s");
    // A connection that never sends anything is cut off the same way.
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await.is_ok());
    // Real clients are unaffected.
    let c = s.connect("patient").await;
    assert_eq!(c.welcome["type"], "welcome");
    s.stop().await;
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.max_connections_per_address = 3;
        c.max_connections = 5;
        c.accept_wait_ms = 200;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_from([127, 0, 0, 2], &s).await.expect("within the per-address limit"));
    }
    let (status, body) = ws_from([127, 0, 0, 2], &s).await.err().expect("the fourth from one address is refused");
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "too_many_connections");
    assert!(body["message"].as_str().unwrap().contains("this address"), "{body}");
    // Other addresses still get in, up to the total.
    held.push(ws_from([127, 0, 0, 3], &s).await.expect("another address"));
    held.push(ws_from([127, 0, 0, 4], &s).await.expect("another address"));
    let (status, body) = ws_from([127, 0, 0, 5], &s).await.err().expect("past the total");
    assert_eq!(status, 503);
    assert!(body.contains("too many open connections"), "{body}");
    // A closed connection gives its slot back.
    let mut first = held.remove(0);
    first.ws.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        if let Ok(c) = ws_from([127, 0, 0, 2], &s).await {
            held.push(c);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot never came back");
    }
    s.stop().await;
}

/// A reconnect storm: clients drop their sockets and dial again at once, and the new
/// connections can arrive before the server has seen the old ones close. A full server holds a
/// new connection back until a slot comes free instead of refusing it.
#[tokio::test]
async fn a_full_server_lets_a_new_client_wait_for_a_closing_one() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.max_connections = 2;
        c.accept_wait_ms = 30_000;
    })
    .await;
    let mut held = vec![s.connect("ada").await, s.connect("bob").await];
    let mut c = {
        let waiting = ws_from([127, 0, 0, 3], &s);
        tokio::pin!(waiting);
        // Before a slot frees, the new client is neither let in nor refused: it waits.
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(), "a full server answered the new client at once");
        held.remove(0).ws.close(None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the waiting client got in once a slot freed").expect("let in, not refused")
    };
    // And it is a working session.
    c.ws.send(Message::text(json!({"type": "hello", "token": token("cy")}).to_string())).await.unwrap();
    assert_eq!(c.next().await["type"], "welcome");
    s.stop().await;
}

/// The pause at the cap is for a storm that passes. A server that stays full waits once, then
/// refuses at once, so clients are told to retry instead of hanging in the listen queue.
#[tokio::test]
async fn a_server_that_stays_full_waits_once_then_refuses_at_once() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.max_connections = 1;
        c.accept_wait_ms = 3_000;
    })
    .await;
    let _held = s.connect("ada").await;
    let (status, _) = ws_from([127, 0, 0, 2], &s).await.err().expect("refused after the wait");
    assert_eq!(status, 503);
    // Another wait would take 3 s; each of these must be answered well before that.
    for _ in 0..3 {
        let refused = tokio::time::timeout(Duration::from_secs(1), ws_from([127, 0, 0, 2], &s)).await.expect("answered without a second wait");
        assert_eq!(refused.err().expect("still full").0, 503);
    }
    s.stop().await;
}

#[tokio::test]
async fn broken_frames_and_bad_tokens_get_their_close_codes() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), two_tenants).await;
    // Invalid UTF-8 in a text frame: 1007.
    let mut c = s.connect("utf").await;
    c.ws.send(Message::Frame(Frame::message(vec![0x7b, 0xff, 0xfe, 0x7d], OpCode::Data(Data::Text), true))).await.unwrap();
    assert_eq!(c.closed().await, Some(1007));
    // A 1 MiB frame: over the protocol limit, 1009 (a message over the application limit but
    // under the protocol one gets `too_large` and keeps the socket: tests/server.rs).
    let mut c = s.connect("huge").await;
    let _ = c.ws.send(Message::text("x".repeat(1 << 20))).await;
    assert_eq!(c.closed().await, Some(1009));
    // Tokens: expired, unknown tenant, alg none, garbage. Each: `unauthorized` with the reason,
    // then 4001.
    let now = accolade::auth::now_secs();
    let b64 = |v: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    };
    let tokens = [
        (accolade::auth::mint_with_secret(accolade::config::DEMO_SECRET, "demo", "eve", now - 3600), "expired"),
        (accolade::auth::mint_with_secret("whatever-secret-123456", "nosuch", "eve", now + 60), "unknown tenant"),
        (format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&format!(r#"{{"sub":"eve","tenant":"demo","exp":{}}}"#, now + 60))), "token"),
        // Signed by acme's secret but claiming the demo tenant.
        (accolade::auth::mint_with_secret(ACME_SECRET, "demo", "eve", now + 60), "signature"),
        ("not-a-token".to_string(), "malformed"),
    ];
    for (token, why) in tokens {
        let mut ws = Client::raw(&s.url()).await;
        ws.send(Message::text(json!({ "type": "hello", "token": token }).to_string())).await.unwrap();
        let mut c = Client { ws, welcome: json!(null) };
        let e = c.next().await;
        assert_eq!(e["code"], "unauthorized", "{why}: {e}");
        assert!(e["message"].as_str().unwrap().contains(why), "{why}: {e}");
        assert_eq!(c.closed().await, Some(4001), "{why}");
    }
    s.stop().await;
}

#[tokio::test]
async fn events_cannot_speak_for_another_user_or_block_their_ids() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), two_tenants).await;
    let mut alice = s.connect("alice").await;
    // A socket event naming a user (or tenant) is refused: the token says who it is.
    for field in ["user_id", "tenant_id"] {
        let mut e = event("forged", "login", json!({}));
        e[field] = json!("bob");
        alice.send(&e).await;
        let m = alice.next_main().await;
        assert_eq!(m["code"], "invalid_event", "{m}");
        assert!(m["message"].as_str().unwrap().contains(field), "{m}");
    }
    // Far in the future, and long ago.
    let mut e = event("future", "login", json!({}));
    e["occurred_at"] = json!("2999-01-01T00:00:00Z");
    alice.send(&e).await;
    let m = alice.next_main().await;
    assert_eq!((m["code"].as_str(), m["event_id"].as_str()), (Some("invalid_event"), Some("future")));
    assert!(m["message"].as_str().unwrap().contains("future"), "{m}");
    // Ids count per user: an id alice used is bob's own event when he sends it, never a
    // duplicate of hers (which would let one user suppress another's events by guessing
    // ids), and it blocks nothing of hers, before or after...
    alice.send(&event("shared-1", "login", json!({}))).await;
    assert_eq!(alice.until("ack").await.last().unwrap()["duplicate"], false);
    let mut bob = s.connect("bob").await;
    for (id, duplicate) in [("shared-1", false), ("shared-1", true), ("shared-2", false)] {
        bob.send(&event(id, "login", json!({}))).await;
        let m = bob.until("ack").await.pop().unwrap();
        assert_eq!((m["type"].as_str(), m["event_id"].as_str(), m["duplicate"].as_bool()), (Some("ack"), Some(id), Some(duplicate)), "{m}");
    }
    alice.send(&event("shared-2", "login", json!({}))).await;
    assert_eq!(alice.until("ack").await.last().unwrap()["duplicate"], false, "bob's id is alice's own event too");
    // ...while the same id in another tenant is another event.
    let acme = accolade::auth::mint_with_secret(ACME_SECRET, ACME, "alice", accolade::auth::now_secs() + 60);
    let mut other = Client::connect(&s.url(), &acme, None).await;
    other.send(&event("shared-1", "login", json!({}))).await;
    let m = other.next_main().await;
    assert_eq!((m["type"].as_str(), m["duplicate"].as_bool()), (Some("ack"), Some(false)), "{m}");
    // And alice's own retry is still just a duplicate.
    alice.send(&event("shared-1", "login", json!({}))).await;
    assert_eq!(alice.until("ack").await.last().unwrap()["duplicate"], true);
    s.stop().await;
}

#[tokio::test]
async fn per_user_sockets_silent_sockets_and_late_hellos_are_closed_with_their_codes() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.connections_per_user = 1;
        c.auth_timeout_secs = 1;
        c.idle_timeout_secs = 1;
        c.ping_secs = 1;
    })
    .await;
    // A second socket for a user already at the limit.
    let _first = s.connect("tabby").await;
    let mut ws = Client::raw(&s.url()).await;
    ws.send(Message::text(json!({ "type": "hello", "token": token("tabby") }).to_string())).await.unwrap();
    let mut second = Client { ws, welcome: json!(null) };
    let mut got = second.next().await;
    if got["type"] == "welcome" {
        got = second.next().await;
    }
    assert_eq!(got["code"], "too_many_connections", "{got}");
    assert_eq!(second.closed().await, Some(4004));
    // No hello within the auth time-out.
    let mut quiet = Client { ws: Client::raw(&s.url()).await, welcome: json!(null) };
    assert_eq!(quiet.closed().await, Some(4002));
    // Authenticated, then silent: this client reads nothing, so it answers no ping either.
    // Wait on the server's own count of open sockets (the session ends when it closes this
    // one), then read the close frame.
    let mut silent = s.connect("silent").await;
    let open = || s.shared.metrics.connections.get();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while open() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "the silent socket was never closed");
        tick.tick().await;
    }
    assert_eq!(silent.closed().await, Some(4003));
    s.stop().await;
}

/// A client that ignores `rate_limited` and keeps sending is read at its bucket's rate, not as
/// fast as it writes: after a refusal the socket is not read until a token is back, so its
/// flood waits in TCP instead of costing the server a refusal per frame.
#[tokio::test]
async fn a_client_ignoring_rate_limits_is_read_at_the_buckets_rate() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.rate_burst = 2.0;
        c.rate_per_sec = 5.0;
    })
    .await;
    let mut c = s.connect("flood").await;
    for i in 0..40 {
        c.ws.feed(Message::text(event(&format!("f{i}"), "login", json!({})).to_string())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    // Read whatever answers come in one second: acks and refusals, each naming its event.
    let (mut acked, mut refused) = (0, 0);
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(m) = tokio::time::timeout_at(until, c.next_main()).await {
        match (m["type"].as_str(), m["code"].as_str()) {
            (Some("ack"), _) => acked += 1,
            (Some("error"), Some("rate_limited")) => refused += 1,
            _ => {}
        }
    }
    // Two from the burst, then about one accepted and one refused per 200 ms: about 13 in all.
    // Read as fast as it was written, all 40 would have been answered (2 acks, 38 refusals).
    assert!(refused >= 1, "the flood was refused at first: acked {acked}, refused {refused}");
    assert!(acked >= 2, "the burst was accepted: acked {acked}, refused {refused}");
    assert!(acked + refused <= 20, "a flood was read faster than the bucket refills: acked {acked}, refused {refused}");
    s.stop().await;
}

/// Sends a `POST /v1/events` head announcing `len` body bytes, then each chunk after its delay,
/// reading all the while; stops sending once an answer arrives. Returns the status line's code,
/// the answer's body, the time from the head to the answer, and whether the exchange ended
/// (a kept-alive answer read whole, or a `connection: close` one followed by the close) within
/// 20 s.
async fn post_paced(addr: SocketAddr, len: usize, chunks: Vec<(Duration, Vec<u8>)>) -> (u16, String, Duration, bool) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {DEMO_KEY}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        for (delay, bytes) in chunks {
            tokio::time::sleep(delay).await;
            // Once the server has answered and closed, writes fail: that is the point.
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        // Keep the connection open for the answer.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut answered_at = None;
    // The server closes a cut-off connection after its answer; a reset that follows (bytes
    // the client sent after the close) only ends the read.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answered_at.get_or_insert_with(|| started.elapsed());
            writer.abort();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            // A kept-alive answer is complete once its body has arrived.
            if let Some((head, body)) = text.split_once("\r\n\r\n")
                && let Some(cl) = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse::<usize>().unwrap()))
                && body.len() >= cl
                && !head.to_ascii_lowercase().contains("connection: close")
            {
                break;
            }
        }
    })
    .await
    .is_ok();
    writer.abort();
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body, answered_at.unwrap_or(Duration::MAX), ended)
}

#[tokio::test]
async fn a_slow_request_body_is_cut_off_on_time_and_fast_large_or_briefly_paused_ones_pass() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.body_timeout_secs = 8;
        c.min_body_bytes_per_sec = 1024;
    })
    .await;
    let one = |id: &str| serde_json::to_vec(&json!({ "events": [http_answer(id, "pat", "ex1", true)] })).unwrap();
    // 1. One byte every quarter second: below the floor, cut off when the first 5 s window ends.
    let trickle = (0..100).map(|_| (Duration::from_millis(250), b" ".to_vec())).collect();
    // 2. Fast enough (4 KB/s) but a body that never ends: cut off at the 8 s deadline.
    let endless = (0..100).map(|_| (Duration::from_millis(500), vec![b' '; 2048])).collect();
    // 3. A real body with a 2 s pause in the middle: each window still brings the floor.
    let body = one("paused");
    let mut padded = body.clone();
    padded.splice(1..1, std::iter::repeat_n(b' ', 20_000));
    let (a, b) = padded.split_at(12_000);
    let paused = vec![(Duration::ZERO, a.to_vec()), (Duration::from_secs(2), b.to_vec())];
    // 4. The largest body the API takes (8 MiB), as fast as loopback goes.
    let mut large = one("large");
    large.splice(1..1, std::iter::repeat_n(b' ', accolade::api::MAX_BODY - large.len()));
    let large_len = large.len();
    let (slow, never, pause, big) = tokio::join!(
        post_paced(s.addr, 100_000, trickle),
        post_paced(s.addr, 1_000_000, endless),
        post_paced(s.addr, padded.len(), paused),
        post_paced(s.addr, large_len, vec![(Duration::ZERO, large)]),
    );
    // Each cut-off answer says why and closes its connection.
    assert_eq!((slow.0, slow.1.contains("\"body_too_slow\""), slow.3), (408, true, true), "{slow:?}");
    assert!(slow.2 >= Duration::from_millis(4_500) && slow.2 < Duration::from_secs(8), "cut off after {:?}", slow.2);
    assert_eq!((never.0, never.1.contains("\"request_timeout\""), never.3), (408, true, true), "{never:?}");
    assert!(never.2 >= Duration::from_millis(7_500) && never.2 < Duration::from_secs(12), "cut off after {:?}", never.2);
    assert_eq!(pause.0, 200, "{pause:?}");
    assert!(pause.1.contains("\"accepted\":1"), "{pause:?}");
    assert_eq!(big.0, 200, "{big:?}");
    assert!(big.1.contains("\"accepted\":1"), "{big:?}");
    // Both are counted, by why.
    let metrics = http_client().get(format!("http://{}/metrics", s.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("accolade_request_bodies_cut_off_total{why=\"deadline\"} 1\n"), "{metrics}");
    assert!(metrics.contains("accolade_request_bodies_cut_off_total{why=\"too_slow\"} 1\n"), "{metrics}");
    s.stop().await;
}

#[tokio::test]
async fn a_websocket_handshake_with_a_body_is_refused_at_once() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let head = "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 100000\r\n\r\nx";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(ended.is_ok(), "the connection is still open after {:?}: {text}", started.elapsed());
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\"handshake_with_body\""), "{text}");
    s.stop().await;
}
