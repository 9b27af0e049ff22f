//! End-to-end tests of the push server with real WebSocket clients: ordering, several tabs,
//! duplicates, recovery, restarts, every client-caused error, and slow consumers.

mod common;
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;

fn video(id: &str, playlist: &str, seconds: u64) -> serde_json::Value {
    event(id, "video.watched", json!({ "video": "v1", "playlist": playlist, "seconds": seconds }))
}

#[tokio::test]
async fn an_event_is_acked_then_xp_then_unlocks_in_order() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let mut c = s.connect("alice").await;
    assert_eq!((c.welcome["xp"].as_u64(), c.welcome["level"].as_u64(), c.welcome["recovered"].as_bool()), (Some(0), Some(1), Some(false)));
    // 20 minutes in one playlist: 60 XP, "Act I Scene I" (+50) and "Nice Listener" (+50).
    c.send(&video("e1", "algebra", 1200)).await;
    let msgs: Vec<serde_json::Value> = vec![c.next_main().await, c.next_main().await, c.next_main().await, c.next_main().await, c.next_main().await];
    let types: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ack", "xp", "unlock", "unlock", "level_up"], "{msgs:?}");
    assert_eq!(msgs[0], json!({ "type": "ack", "event_id": "e1", "duplicate": false }));
    assert_eq!((msgs[1]["delta"].as_u64(), msgs[1]["total"].as_u64(), msgs[1]["level"].as_u64()), (Some(160), Some(160), Some(2)));
    let names: Vec<&str> = msgs[2..4].iter().map(|m| m["badge"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Act I Scene I", "Nice Listener"]);
    assert_eq!(msgs[2]["badge"]["tier"], "bronze");
    assert_eq!(msgs[4]["level"], 2);
    // Offsets increase by one per push.
    let offs: Vec<u64> = msgs[1..].iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert!(offs.windows(2).all(|w| w[1] == w[0] + 1), "{offs:?}");
    s.stop().await;
}

#[tokio::test]
async fn every_tab_of_a_user_receives_the_pushes() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let mut a = s.connect("bob").await;
    let mut b = s.connect("bob").await;
    let mut other = s.connect("carol").await;
    a.send(&video("v1", "geometry", 1200)).await;
    assert_eq!(a.next_main().await["type"], "ack");
    // The other tab gets the pushes but not the ack, which belongs to the sender.
    let first = b.next_main().await;
    assert_eq!((first["type"].as_str(), first["total"].as_u64()), (Some("xp"), Some(160)));
    assert_eq!(b.next_main().await["type"], "unlock");
    // Another user hears nothing: their next message is the ack of their own event.
    other.send(&event("c1", "login", json!({}))).await;
    assert_eq!(other.next_main().await, json!({ "type": "ack", "event_id": "c1", "duplicate": false }));
    s.stop().await;
}

#[tokio::test]
async fn a_duplicate_event_id_is_acked_as_duplicate_and_pays_nothing() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let mut c = s.connect("dora").await;
    let e = answer("same-id", "addition-1", true);
    c.send(&e).await;
    let msgs = c.until("xp").await;
    assert_eq!(msgs[0]["duplicate"], false);
    assert_eq!(msgs.last().unwrap()["total"], 10);
    c.send(&e).await;
    assert_eq!(c.next_main().await, json!({ "type": "ack", "event_id": "same-id", "duplicate": true }));
    c.send(&answer("next", "addition-1", true)).await;
    let msgs = c.until("xp").await;
    assert_eq!(msgs.iter().filter(|m| m["type"] == "ack").count(), 1);
    assert_eq!(msgs.last().unwrap()["total"], 20, "the duplicate paid no XP");
    s.stop().await;
}

#[tokio::test]
async fn reconnecting_with_since_replays_exactly_the_missed_pushes() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.progress_throttle_ms = 0).await;
    let mut a = s.connect("erin").await;
    a.send(&answer("a1", "addition-1", true)).await;
    a.send(&event("a2", "login", json!({}))).await;
    // An invalid event is answered after everything queued before it, so reading up to its
    // error means A has seen every push of a1 and a2.
    a.send(&event("fence", "no.such.type", json!({}))).await;
    let seen = a.until("error").await;
    let last = seen.iter().filter_map(|m| m["offset"].as_u64()).max().unwrap();
    let epoch = a.welcome["epoch"].clone();
    drop(a);
    // While tab A is away, tab B acts.
    let mut b = s.connect("erin").await;
    let mut missed = vec![];
    for i in 0..3 {
        b.send(&video(&format!("b{i}"), "history", 400)).await;
        missed.extend(b.until("ack").await);
    }
    b.send(&event("b-end", "login", json!({}))).await;
    missed.extend(b.until("ack").await);
    let missed: Vec<serde_json::Value> = missed.into_iter().filter(|m| m.get("offset").is_some()).collect();
    assert!(!missed.is_empty());
    // A comes back with where it was.
    let mut a = Client::connect(&s.url(), &token("erin"), Some(json!({ "epoch": epoch, "offset": last }))).await;
    assert_eq!(a.welcome["recovered"], true);
    let end = a.welcome["offset"].as_u64().unwrap();
    let mut replayed = vec![];
    for _ in last + 1..=end {
        replayed.push(a.next().await);
    }
    let offsets: Vec<u64> = replayed.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (last + 1..=end).collect::<Vec<_>>(), "every missed push, in order, once");
    assert_eq!(replayed, missed, "the same pushes tab B saw");
    // A stale epoch cannot be honoured: the welcome says so and replays nothing.
    let mut c = Client::connect(&s.url(), &token("erin"), Some(json!({ "epoch": "not-it", "offset": 1 }))).await;
    assert_eq!(c.welcome["recovered"], false);
    c.send(&event("c1", "login", json!({}))).await;
    assert_eq!(c.next_main().await["type"], "ack", "nothing was replayed before the ack");
    s.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let mut c = s.connect("fay").await;
    c.send(&video("f1", "algebra", 1200)).await;
    c.until("level_up").await;
    let epoch = c.welcome["epoch"].clone();
    drop(c);
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    let c = s.connect("fay").await;
    assert_eq!(c.welcome["xp"], 160);
    assert_eq!(c.welcome["level"], 2);
    assert_eq!(c.welcome["epoch"], epoch, "history continues across restarts");
    let mut owned: Vec<&str> = c.welcome["badges"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    owned.sort();
    assert_eq!(owned, ["act-one-scene-one", "nice-listener"]);
    s.stop().await;
}

#[tokio::test]
async fn every_client_error_has_its_code() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.rate_burst = 3.0;
        c.rate_per_sec = 0.5;
    })
    .await;
    // unauthorized: a token signed with another secret; the socket is then closed with 4001.
    let mut ws = Client::raw(&s.url()).await;
    let forged = accolade::auth::mint_with_secret("not-the-demo-secret-at-all", "demo", "mallory", accolade::auth::now_secs() + 60);
    let mut c = Client { ws: { use futures_util::SinkExt; ws.send(tokio_tungstenite::tungstenite::Message::text(json!({"type":"hello","token":forged}).to_string())).await.unwrap(); ws }, welcome: json!(null) };
    let e = c.next().await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("unauthorized")), "{e}");
    assert_eq!(c.closed().await, Some(4001));

    let mut c = s.connect("gus").await;
    let table: Vec<(String, &str, Option<&str>)> = vec![
        ("{not json".into(), "invalid_message", None),
        (json!({"type": "subscribe"}).to_string(), "invalid_message", None),
        (json!({"type": "event", "event_id": "x1", "event_type": "problem.answered", "occurred_at": now_rfc3339(), "payload": {"exercise": "a"}}).to_string(), "invalid_event", Some("x1")),
        (json!({"type": "event", "event_id": "x2", "event_type": "login", "occurred_at": "last tuesday"}).to_string(), "invalid_event", Some("x2")),
        // Naming a user or tenant over the socket is refused, and the refusal names the event,
        // so the client drops it instead of resending it on every reconnect.
        (json!({"type": "event", "event_id": "x5", "event_type": "login", "occurred_at": now_rfc3339(), "user_id": "someone-else"}).to_string(), "invalid_event", Some("x5")),
        (json!({"type": "event", "event_id": "x6", "event_type": "login", "occurred_at": now_rfc3339(), "tenant_id": "acme"}).to_string(), "invalid_event", Some("x6")),
        (json!({"type": "event", "event_type": "login", "occurred_at": now_rfc3339()}).to_string(), "invalid_event", None),
        (json!({"type": "event", "event_id": "x3", "event_type": "exercise.proficient", "occurred_at": now_rfc3339(), "payload": {"exercise": "a"}}).to_string(), "forbidden_event", Some("x3")),
        (json!({"type": "event", "event_id": "x4", "event_type": "login", "occurred_at": "2001-01-01T00:00:00Z"}).to_string(), "invalid_event", Some("x4")),
        (format!(r#"{{"type":"event","event_id":"big","event_type":"login","occurred_at":"{}","payload":{{"pad":"{}"}}}}"#, now_rfc3339(), "x".repeat(70_000)), "too_large", None),
    ];
    for (text, code, id) in table {
        c.send_text(text.clone()).await;
        let e = c.next_main().await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some(code)), "{} -> {e}", &text[..text.len().min(120)]);
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(e["event_id"].as_str(), id, "{e}");
        if code == "forbidden_event" {
            // It says why (a type is backend-only unless the catalogue says otherwise) and how
            // to allow it.
            assert!(e["message"].as_str().unwrap().contains("`client = true`"), "{e}");
        }
    }
    // rate_limited: the bucket held 3 tokens and the bad events above used none of the
    // accepted ones... so send fast until refused; the refusal names the event.
    let mut limited = None;
    for i in 0..10 {
        c.send(&event(&format!("r{i}"), "login", json!({}))).await;
    }
    for _ in 0..10 {
        let m = c.next_main().await;
        if m["code"] == "rate_limited" {
            limited = Some(m);
            break;
        }
    }
    let limited = limited.expect("a rate_limited error");
    assert!(limited["event_id"].as_str().unwrap().starts_with('r'));
    // It says when to resend: the bucket refills at 0.5 a second, so within two seconds.
    let wait = limited["retry_after_ms"].as_u64().unwrap_or_else(|| panic!("a resend time: {limited}"));
    assert!((1..=2000).contains(&wait), "{limited}");
    // Binary frames are refused with a clear error; the connection stays usable.
    use futures_util::SinkExt;
    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![1, 2, 3])).await.unwrap();
    loop {
        let m = c.next_main().await;
        if m["type"] == "error" && m["code"] == "invalid_message" {
            assert!(m["message"].as_str().unwrap().contains("binary"));
            break;
        }
    }
    // An event before hello is refused and the socket closed.
    let mut raw = Client { ws: Client::raw(&s.url()).await, welcome: json!(null) };
    raw.send(&event("early", "login", json!({}))).await;
    assert_eq!(raw.next().await["code"], "unauthorized");
    assert_eq!(raw.closed().await, Some(4001));

    // Every refusal above is counted in /metrics by its code, whichever part of the server
    // made it; the seven refused events count as rejected events.
    let m = &s.shared.metrics;
    let by_code = |c: &str| m.refusals(c);
    assert_eq!(
        (by_code("unauthorized"), by_code("invalid_message"), by_code("invalid_event"), by_code("forbidden_event"), by_code("too_large")),
        (2, 3, 6, 1, 1)
    );
    assert!(by_code("rate_limited") >= 1);
    assert_eq!(m.rejected.get(), 7, "x1 to x6, and the one without an id");
    let text = http_client().get(format!("http://{}/metrics", s.addr)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("accolade_refusals_total{code=\"forbidden_event\"} 1"), "{text}");
    assert!(text.contains("accolade_events_total{outcome=\"rejected\"} 7"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn a_slow_client_is_closed_while_other_tabs_keep_going() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        // Larger than the pushes of the 8 events a connection may have in flight, so only a
        // client that stops reading fills it.
        c.outbox_capacity = 64;
        c.inflight_per_user = 8;
        c.progress_throttle_ms = 0;
        c.rate_per_sec = 1e6;
        c.rate_burst = 1e6;
    })
    .await;
    // The slow tab: a tiny receive buffer, and it never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let stream = sock.connect(s.addr).await.unwrap();
    let (mut slow_ws, _) = tokio_tungstenite::client_async(s.url(), tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    use futures_util::SinkExt;
    slow_ws.send(tokio_tungstenite::tungstenite::Message::text(json!({"type": "hello", "token": token("hal")}).to_string())).await.unwrap();
    let mut fast = s.connect("hal").await;
    let mut worst = Duration::ZERO;
    let mut i = 0;
    while s.shared.metrics.slow_closed.get() == 0 {
        // The bound is on what the kernel can hold for the slow tab (up to 4 MiB of send
        // buffer, tcp_wmem's maximum here, which took 36,100 events in one run; 40,000 was
        // once too few in CI), with room to spare.
        assert!(i < 120_000, "the slow client was never closed");
        // A busy but healthy tab: 50 events in flight, then all their acks.
        let started = std::time::Instant::now();
        for _ in 0..50 {
            fast.send(&answer(&format!("h{i}"), &format!("ex-{}", i % 7), i % 3 != 0)).await;
            i += 1;
        }
        let mut acks = 0;
        while acks < 50 {
            if fast.next().await["type"] == "ack" {
                acks += 1;
            }
        }
        worst = worst.max(started.elapsed());
    }
    // The server lets go of the slow tab at once, although the tab has not read a byte: its
    // session ends (only the fast tab is still counted), so a client that stops reading holds
    // no task and no place in the server.
    let dropped = std::time::Instant::now();
    while s.shared.metrics.connections.get() != 1 {
        assert!(dropped.elapsed() < Duration::from_secs(5), "the slow tab's session did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let let_go = dropped.elapsed();
    // The fast tab still gets answers after the slow one was dropped.
    fast.send(&event("after", "login", json!({}))).await;
    let acks = fast.until("ack").await;
    assert_eq!(acks.last().unwrap()["event_id"], "after");
    // The slow tab, once it reads, finds its connection ended: closed with the code that says
    // why when the close frame got through its full window, or, as its socket stayed full,
    // reset, so that it does not first wade through the pushes the kernel still held for it.
    let mut slow = slow_ws;
    let reading = std::time::Instant::now();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await.expect("the slow tab's stream ends") {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    assert!(end.is_none() || end == Some(4000), "closed with {end:?}");
    eprintln!("slow client closed after {i} events, let go of in {let_go:?}, its stream read to the end in {:?}; worst wait for 50 acks on the fast tab {worst:?}", reading.elapsed());
    s.stop().await;
}

#[tokio::test]
async fn the_demo_endpoints_serve_a_token_and_the_page() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let get = |path: &str| {
        let url = format!("http://{}{path}", s.addr);
        async move {
            let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://").split('/').next().unwrap()).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let path = "/".to_string() + url.splitn(4, '/').nth(3).unwrap();
            stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
            let mut body = String::new();
            stream.read_to_string(&mut body).await.unwrap();
            body
        }
    };
    let page = get("/").await;
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("Accolade"), "{}", &page[..200.min(page.len())]);
    let tok = get("/demo/token?user=ivy").await;
    let body: serde_json::Value = serde_json::from_str(tok.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let c = Client::connect(&s.url(), body["token"].as_str().unwrap(), None).await;
    assert_eq!(c.welcome["user"], "ivy");
    let bad = get("/demo/token?user=").await;
    assert!(bad.starts_with("HTTP/1.1 400") && bad.contains("invalid_user"), "{bad}");
    s.stop().await;
}

#[tokio::test]
async fn a_server_stopped_as_soon_as_it_starts_shuts_down_promptly() {
    // Regression: the retention sweeper subscribed to the shutdown signal only when it first
    // ran, after the signal was sent, and then held the drain until its next sweep (an hour).
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    tokio::time::timeout(std::time::Duration::from_secs(20), s.stop()).await.expect("stopped within 20 s");
}

#[tokio::test]
async fn with_log_format_json_each_log_line_is_a_json_object_that_names_its_request() {
    let dir = tmp();
    let port = free_port();
    let mut server = start_with(dir.path(), port, &["--log-format", "json"]).await;
    // A body that is not JSON is kept as a dead letter, which is logged inside the request.
    let res = http_client()
        .post(format!("http://127.0.0.1:{port}/v1/events"))
        .bearer_auth(DEMO_KEY)
        .header("x-request-id", "log-json-1")
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error(), "{}", res.status());
    let line = server.line("dead letter").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object: {line}: {e}"));
    assert_eq!(v["fields"]["message"], "event kept as a dead letter", "{v}");
    assert_eq!(v["span"]["request_id"], "log-json-1", "{v}");
    assert_eq!(v["level"], "INFO", "{v}");
    // Any other format is refused before the server starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accolade")).args(["--log-format", "yaml", "--data-dir", dir.path().join("other").to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log-format"), "{}", String::from_utf8_lossy(&out.stderr));
}
