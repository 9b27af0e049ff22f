//! Crash loop: the real binary under steady load from several clients is killed with SIGKILL
//! at random moments and restarted, again and again. Clients behave like `accolade.js`: they
//! reconnect, resume with `since`, and resend every event not yet acknowledged. At the end:
//! every event counts exactly once (each user's state is the core's answer for its stream),
//! every acknowledged event is a duplicate when sent again, no award was announced twice, every
//! award announced is in the durable state, and `accolade replay` finds no difference.
//!
//! `CRASH_CYCLES` sets the number of kills (default 50); `CRASH_SEED` replays a run's random
//! kill points, counted in acknowledged events (the seed is printed).

mod common;

use accolade::core::value::{b, n, s};
use accolade::core::{apply, Catalogue, Event, UserState};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const USERS: usize = 6;
/// Events a client keeps unacknowledged at most, as a paced real client would.
const WINDOW: usize = 24;

/// What one client has seen, shared with the checker.
#[derive(Default)]
struct Seen {
    /// Events sent at least once: the first `issued` of the client's stream.
    issued: usize,
    acked: HashSet<String>,
    /// Pushes by offset (a replay after resuming repeats offsets; a double award would not).
    pushes: BTreeMap<u64, Value>,
    epoch: Option<String>,
    offset: u64,
}

/// A client's endless stream of answers (only the issued prefix is ever sent).
fn event_of(user: usize, i: usize) -> (String, String, bool) {
    (format!("u{user}-{i}"), format!("ex-{}", (i / 20 + user) % 4), !(i + user).is_multiple_of(11))
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn message(user: usize, i: usize, at: &str) -> Message {
    let (id, ex, right) = event_of(user, i);
    Message::text(json!({ "type": "event", "event_id": id, "event_type": "problem.answered", "occurred_at": at, "payload": { "exercise": ex, "correct": right, "seconds": 3 } }).to_string())
}

/// One client: connects (resuming if it can), resends what is unacknowledged in order, keeps
/// up to `WINDOW` new events in flight until `stop`, and repeats after every disconnect until
/// everything it sent is acknowledged.
async fn client(url: String, user: usize, at: String, seen: Arc<Mutex<Seen>>, stop: Arc<std::sync::atomic::AtomicBool>, mut up: Signals) {
    use std::sync::atomic::Ordering::Relaxed;
    let name = format!("loop-user-{user}");
    let token = token(&name);
    loop {
        let since = {
            let s = seen.lock().unwrap();
            if stop.load(Relaxed) && s.acked.len() == s.issued {
                return;
            }
            s.epoch.as_ref().map(|e| json!({ "epoch": e, "offset": s.offset }))
        };
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(&url)).await else {
            // The server is down: wait for the next start (bounded, in case it was up after all).
            let _ = tokio::time::timeout(Duration::from_secs(1), up.started.changed()).await;
            continue;
        };
        let mut hello = json!({ "type": "hello", "token": token });
        if let Some(s) = since {
            hello["since"] = s;
        }
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            continue;
        }
        // Everything sent before and not acknowledged goes again, in order.
        let resend: Vec<usize> = {
            let s = seen.lock().unwrap();
            (0..s.issued).filter(|&i| !s.acked.contains(&event_of(user, i).0)).collect()
        };
        let mut alive = true;
        for i in resend {
            alive = alive && ws.feed(message(user, i, &at)).await.is_ok();
        }
        if !alive || ws.flush().await.is_err() {
            continue;
        }
        loop {
            // Top up the window with new events.
            let fresh: Vec<usize> = {
                let mut s = seen.lock().unwrap();
                let mut out = vec![];
                while !stop.load(Relaxed) && s.issued - s.acked.len() < WINDOW {
                    out.push(s.issued);
                    s.issued += 1;
                }
                if stop.load(Relaxed) && s.acked.len() == s.issued {
                    return;
                }
                out
            };
            for i in fresh {
                alive = alive && ws.feed(message(user, i, &at)).await.is_ok();
            }
            if !alive || ws.flush().await.is_err() {
                break;
            }
            let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await else { break };
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            let mut s = seen.lock().unwrap();
            match v["type"].as_str() {
                Some("welcome") => {
                    let epoch = v["epoch"].as_str().unwrap().to_string();
                    if s.epoch.as_deref() != Some(&epoch) {
                        assert!(s.epoch.is_none(), "{name}: the push epoch changed, so missed pushes were lost");
                        s.epoch = Some(epoch);
                    }
                    assert!(v["offset"].as_u64().unwrap() >= s.offset, "{name}: the server forgot pushes it had sent");
                }
                Some("ack") => {
                    s.acked.insert(v["event_id"].as_str().unwrap().to_string());
                    up.acked.notify_one();
                }
                Some("error") => panic!("{name}: unexpected error {v}"),
                _ => {}
            }
            if let Some(o) = v["offset"].as_u64().filter(|_| v["type"] != "welcome") {
                if let Some(prev) = s.pushes.get(&o) {
                    assert_eq!(prev, &v, "{name}: offset {o} carried two different pushes");
                }
                s.pushes.insert(o, v.clone());
                s.offset = s.offset.max(o);
            }
        }
    }
}

/// What the harness tells clients (a server start) and clients tell the harness (an ack).
#[derive(Clone)]
struct Signals {
    started: tokio::sync::watch::Receiver<u64>,
    acked: Arc<tokio::sync::Notify>,
}

/// A running server with `USERS` clients streaming at it.
struct Load {
    dir: tempfile::TempDir,
    port: u16,
    url: String,
    at: String,
    seen: Vec<Arc<Mutex<Seen>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    started: tokio::sync::watch::Sender<u64>,
    acked: Arc<tokio::sync::Notify>,
}

async fn start_load() -> (Load, Server) {
    let dir = tmp();
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let at = now_rfc3339();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..USERS).map(|_| Arc::new(Mutex::new(Seen::default()))).collect();
    let server = start(dir.path(), port).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (started, started_rx) = tokio::sync::watch::channel(0u64);
    let acked = Arc::new(tokio::sync::Notify::new());
    let signals = Signals { started: started_rx, acked: acked.clone() };
    let clients = (0..USERS).map(|u| tokio::spawn(client(url.clone(), u, at.clone(), seen[u].clone(), stop.clone(), signals.clone()))).collect();
    (Load { dir, port, url, at, seen, stop, clients, started, acked }, server)
}

impl Load {
    fn acked(&self) -> usize {
        self.seen.iter().map(|s| s.lock().unwrap().acked.len()).sum()
    }

    /// Waits (at most 30 s) until the clients have `n` events acknowledged in all.
    async fn until_acked(&self, n: usize) {
        let wait = async {
            while self.acked() < n {
                self.acked.notified().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait).await.expect("the load keeps going");
    }

    /// Restarts the server and tells the clients waiting for it.
    async fn restart(&self) -> Server {
        let server = start(self.dir.path(), self.port).await;
        self.started.send_modify(|g| *g += 1);
        server
    }

    /// No new events; every client finishes what it sent against the server now running.
    async fn finish(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in self.clients.drain(..) {
            tokio::time::timeout(Duration::from_secs(60), c).await.expect("clients finish within 60 s").unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_events_survive_a_crash_loop_exactly_once() {
    let cycles: usize = std::env::var("CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let mut rng: u64 = std::env::var("CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| accolade::clock::now_ms() as u64 | 1);
    eprintln!("crash loop: {cycles} cycles, CRASH_SEED={rng}");
    let (mut load, mut server) = start_load().await;
    for _ in 0..cycles {
        // Run under load until a random number of further events is acknowledged, then kill:
        // the moment falls anywhere in a group commit, without depending on timing.
        let more = 20 + (xorshift(&mut rng) % 300) as usize;
        load.until_acked(load.acked() + more).await;
        server.kill9();
        server = load.restart().await;
        assert!(!load.clients.iter().any(|c| c.is_finished()), "a client stopped early");
    }
    load.finish().await;
    let sent: usize = load.seen.iter().map(|s| s.lock().unwrap().issued).sum();
    eprintln!("crash loop: {cycles} kills under load, {sent} events sent");
    verify(&load, server).await;
}

/// Every event counted once, no award shown twice, every shown award durable, every acked id a
/// duplicate when sent again, and `accolade replay` finds no difference.
async fn verify(load: &Load, mut server: Server) {
    let (port, url, at, seen, dir) = (load.port, load.url.as_str(), load.at.as_str(), &load.seen, load.dir.path());

    let api = Api::demo_at(port);
    let cat = Catalogue::demo();
    let when = chrono::DateTime::parse_from_rfc3339(at).unwrap().timestamp_millis();
    for (u, seen) in seen.iter().enumerate() {
        let name = format!("loop-user-{u}");
        // Counted exactly once: the state is the core's answer for the stream applied once.
        let mut reference = UserState::default();
        let issued = seen.lock().unwrap().issued;
        for (id, ex, right) in (0..issued).map(|i| event_of(u, i)) {
            let mut e = Event::new(&id, "problem.answered", when, &[("exercise", s(&ex)), ("correct", b(right)), ("seconds", n(3.0))]);
            e.user_id = name.clone();
            e.tenant_id = "demo".into();
            apply(&mut reference, &e, when, &cat);
        }
        let (st, got) = api.get(&format!("/v1/users/{name}")).await;
        assert_eq!(st, 200, "{got}");
        assert_eq!((got["xp"].as_u64(), got["events"].as_u64()), (Some(reference.xp), Some(issued as u64)), "{name}");
        let owned: HashMap<String, u64> = got["badges"].as_array().unwrap().iter().map(|b| (b["id"].as_str().unwrap().to_string(), b["count"].as_u64().unwrap())).collect();
        let want: HashMap<String, u64> = reference.badges.iter().map(|(k, r)| (k.clone(), r.count as u64)).collect();
        assert_eq!(owned, want, "{name}");
        // No award announced twice, and every announced award is durable.
        let seen = seen.lock().unwrap();
        let mut announced = HashSet::new();
        for p in seen.pushes.values().filter(|p| p["type"] == "unlock") {
            let key = (p["badge"]["id"].as_str().unwrap().to_string(), p["count"].as_u64().unwrap());
            assert!(announced.insert(key.clone()), "{name}: {key:?} announced twice");
            assert!(owned.get(&key.0).is_some_and(|c| *c >= key.1), "{name}: {key:?} shown but not in the state");
        }
    }
    // Every acknowledged event is a duplicate when sent again.
    let mut c = Client::connect(url, &token("loop-user-0"), None).await;
    c.send(&json!({ "type": "event", "event_id": "u0-0", "event_type": "problem.answered", "occurred_at": at, "payload": { "exercise": "ex-0", "correct": true, "seconds": 3 } })).await;
    assert_eq!(c.until("ack").await.last().unwrap()["duplicate"], true);
    server.kill9();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accolade")).args(["--data-dir", dir.to_str().unwrap(), "replay"]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("replayed {USERS} users")) && text.contains(" 0 differences"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_loses_nothing() {
    let (mut load, mut server) = start_load().await;
    // Under load, wait until a good number is acknowledged, then SIGTERM.
    load.until_acked(1000).await;
    assert!(std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap().success());
    server.line("shutting down").await;
    let (status, _exited) = tokio::task::spawn_blocking(move || (server.0.wait().unwrap(), server)).await.unwrap();
    assert!(status.success(), "a clean exit after draining: {status:?}");
    let server = load.restart().await;
    load.finish().await;
    verify(&load, server).await;
}
