//! Storage faults: a full disk, an unreadable user record, a data directory that cannot be
//! written. The server refuses clearly, never acknowledges what it could not store, and one
//! broken user does not take the others down.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn big_video(id: &str, user: &str) -> Value {
    // A large payload field (kept in the log) fills the disk quickly.
    http_event(id, user, "video.watched", json!({ "video": "v".repeat(2000), "playlist": "p", "seconds": 10 }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_events_and_loses_nothing_acknowledged() {
    let dir = tmp();
    let port = free_port();
    // The process may write files of at most 3 MB: writes past it fail (EFBIG) the way they
    // would on a full disk (SIGXFSZ ignored, as a server would not die of it either).
    let mut server = start_wrapped(dir.path(), port, &[], Some("ulimit -f 3000; trap '' XFSZ")).await;
    let api = Api::demo_at(port);
    let mut sent: Vec<Value> = vec![];
    let mut accepted: Vec<String> = vec![];
    let mut refused = 0;
    for batch in 0..40 {
        let events: Vec<Value> = (0..200).map(|i| big_video(&format!("b{batch}-{i}"), &format!("u{}", i % 20))).collect();
        let r = api.ingest(events.clone()).await;
        for (e, res) in events.iter().zip(r["results"].as_array().unwrap()) {
            match res["status"].as_str() {
                Some("accepted") => accepted.push(e["event_id"].as_str().unwrap().into()),
                _ => {
                    assert_eq!(res["code"], "unavailable", "{res}");
                    assert!(res.get("dead_letter").is_none(), "a storage failure is not the event's fault: {res}");
                    refused += 1;
                }
            }
        }
        sent.extend(events);
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0 && !accepted.is_empty(), "the disk filled part way ({} accepted, {refused} refused)", accepted.len());
    // Still up and answering while full.
    assert_eq!(api.with_key(None).get("/healthz").await.0, 200);
    server.kill9();

    // Space again: everything acknowledged is there, everything else is taken once now.
    let server2 = start(dir.path(), port).await;
    let mut per_user: HashMap<String, u64> = HashMap::new();
    for chunk in sent.chunks(1000) {
        let r = api.ingest(chunk.to_vec()).await;
        for (e, res) in chunk.iter().zip(r["results"].as_array().unwrap()) {
            let id = e["event_id"].as_str().unwrap();
            // Acknowledged: a duplicate now. Refused: its writes may or may not have reached
            // the disk before the failure, so it is either taken now or already counted; the
            // per-user totals below say it counts exactly once either way.
            if accepted.iter().any(|a| a == id) {
                assert_eq!(res["status"], "duplicate", "{id}: {res}");
            } else {
                assert!(res["status"] == "accepted" || res["status"] == "duplicate", "{id}: {res}");
            }
            *per_user.entry(e["user_id"].as_str().unwrap().into()).or_default() += 1;
        }
    }
    for (user, n) in per_user {
        assert_eq!(api.get(&format!("/v1/users/{user}")).await.1["events"].as_u64(), Some(n), "{user}");
    }
    drop(server2);
}

#[tokio::test]
async fn an_unreadable_user_record_does_not_take_the_others_down() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    api.ingest(vec![http_answer("g1", "good", "x", true), http_answer("b1", "broken", "x", true)]).await;
    s.stop().await;
    // Damage one user's snapshot on disk.
    {
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let users = db.open_tree("users").unwrap();
        users.insert(accolade::store::user_key("demo", "broken"), b"\x01\xff\xff\xff garbage".to_vec()).unwrap();
        db.flush().unwrap();
    }
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    // The broken user gets a clear error, on queries and on ingest...
    let (st, v) = api.get("/v1/users/broken").await;
    assert_eq!((st, v["error"].as_str()), (500, Some("corrupt_user")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("other users are unaffected"), "{v}");
    let r = api.ingest(vec![http_answer("b2", "broken", "x", true)]).await;
    assert_eq!(r["results"][0]["code"], "corrupt_user", "{r}");
    // ...and everyone else carries on.
    let r = api.ingest(vec![http_answer("g2", "good", "x", true), http_answer("n1", "newcomer", "x", true)]).await;
    assert_eq!(r["accepted"], 2, "{r}");
    assert_eq!(api.get("/v1/users/good").await.1["events"], 2);
    let mut c = s.connect("good").await;
    c.send(&answer("g3", "x", true)).await;
    assert_eq!(c.until("ack").await.last().unwrap()["duplicate"], false);
    s.stop().await;
    // The replay check names it and checks the rest.
    let s = TestServer::start(dir.path()).await;
    let shared = s.shared.clone();
    let report = tokio::task::spawn_blocking(move || accolade::replay::check_all(&shared.store, &shared.catalogues)).await.unwrap().unwrap();
    assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    assert_eq!(report.differences[0].user, "broken");
    assert!(report.differences[0].what.starts_with("unreadable"), "{:?}", report.differences);
    s.stop().await;
}

#[tokio::test]
async fn a_data_directory_that_cannot_be_written_is_refused_at_start() {
    let dir = tmp();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut perms = std::fs::metadata(&data).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(&data, perms).unwrap();
    // Root ignores permission bits, so as root the server runs as `nobody` here.
    let mut cmd = if is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", env!("CARGO_BIN_EXE_accolade")]);
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_accolade"))
    };
    // The binary must be reachable by `nobody`; cargo's target dir is.
    let out = cmd.args(["--data-dir", data.to_str().unwrap(), "--bind", "127.0.0.1:0"]).env("RUST_LOG", "warn").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server must not start: {err}");
    assert!(err.contains("data dir") && err.contains(data.to_str().unwrap()) && err.to_lowercase().contains("permission denied"), "{err}");
}

/// Whether the test runs as root (uid 0), read from /proc rather than through libc.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").unwrap().lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// The server binary with the debug build's injected disk fault armed: while the file `stall`
/// exists, the persister's batches wait instead of writing (`ACCOLADE_FAULT_STALL_PERSIST`).
struct Stallable {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    stall: std::path::PathBuf,
    port: u16,
    server: Server,
}

impl Stallable {
    async fn start(extra: &[&str]) -> Stallable {
        let dir = tmp();
        let (data, stall, port) = (dir.path().join("data"), dir.path().join("stall"), free_port());
        let setup = format!("export ACCOLADE_FAULT_STALL_PERSIST='{}'", stall.display());
        let server = start_wrapped(&data, port, extra, Some(&setup)).await;
        Stallable { dir, data, stall, port, server }
    }
}

/// A disk that stops answering: sled 0.34 can wait for ever in `flush` after a disk error
/// (docs/reliability.md), which no test can cause on purpose, so a debug build's injected fault
/// holds the persister's batch the same way (`ACCOLADE_FAULT_STALL_PERSIST`, src/store.rs).
/// The server must say so on `/healthz`, must not hang on SIGTERM, must exit with status 75
/// once the stall passes `--stall-exit-secs` so that a supervisor restarts it, and must have
/// lost nothing it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_stops_answering_ends_the_process_and_loses_nothing_acknowledged() {
    let Stallable { dir: _dir, data, stall, port, mut server } = Stallable::start(&["--stall-unhealthy-secs", "1", "--stall-exit-secs", "6"]).await;
    let api = Api::demo_at(port);
    let health = api.with_key(None);
    assert_eq!(health.get("/healthz").await, (200, json!("ok")));
    let acked: Vec<Value> = (0..5).map(|i| http_answer(&format!("ok{i}"), "ada", "x", true)).collect();
    assert_eq!(api.ingest(acked.clone()).await["accepted"], 5);

    // The disk stops answering. An event sent now is never acknowledged: its request waits
    // (and fails when the process ends).
    std::fs::write(&stall, b"").unwrap();
    let late = http_client().post(format!("http://127.0.0.1:{port}/v1/events")).bearer_auth(DEMO_KEY).json(&json!({ "events": [http_answer("late", "ada", "x", true)] }));
    let waiting = tokio::spawn(async move { late.timeout(Duration::from_secs(60)).send().await.map(|r| r.status()) });
    // The server is a child process: paused time cannot reach it, so its health is polled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let r = health.get("/healthz").await;
        if r.0 != 200 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.as_str().unwrap().starts_with("stalled: a persist batch has waited"), "{body}");
    let metrics = health.get("/metrics").await.1;
    let wait: f64 = metrics.as_str().unwrap().lines().find_map(|l| l.strip_prefix("accolade_disk_wait_seconds ")).unwrap().parse().unwrap();
    assert!(wait >= 1.0, "the gauge shows the wait: {wait}");
    assert!(!waiting.is_finished(), "nothing is acknowledged while the disk does not answer");

    // A SIGTERM cannot finish (its drain and last flush wait on the disk), so the watchdog
    // ends the process, with the status a supervisor restarts on.
    assert!(std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap().success());
    server.line("the disk has not answered").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(st) = server.0.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "the stalled server did not exit");
        // A child process of its own: polling its exit is the wait on the event (paused
        // time cannot reach another process), on the runtime's timer, not a blocked worker.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(accolade::watchdog::EXIT_STALLED));
    let answer = waiting.await.unwrap();
    assert!(answer.is_err(), "the late event was never answered, the process ended under it: {answer:?}");

    // Restarted with a disk that answers: everything acknowledged is there, once; the event
    // that never was is taken now.
    std::fs::remove_file(&stall).unwrap();
    let server2 = start(&data, port).await;
    let r = api.ingest(acked).await;
    assert_eq!(r["duplicates"], 5, "{r}");
    // It was sent after the disk stopped, so no batch holding it was ever written.
    let r = api.ingest(vec![http_answer("late", "ada", "x", true)]).await;
    assert_eq!(r["results"][0]["status"], "accepted", "{r}");
    assert_eq!(api.get("/v1/users/ada").await.1["events"], 6);
    assert_eq!(health.get("/healthz").await, (200, json!("ok")));
    drop(server2);
}

/// A disk far slower than the load (the same injected fault, lifted again): once
/// `--socket-inflight-events` socket events are in flight across the server, sockets are not
/// read and the rest wait in TCP, so what a server falling behind holds in memory does not grow
/// with its connections. Nothing is lost: everything is answered once the disk is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_bounds_the_socket_events_held_in_memory_and_loses_none() {
    let Stallable { dir: _dir, stall, port, server: _server, .. } = Stallable::start(&["--socket-inflight-events", "5", "--stall-exit-secs", "0"]).await;
    let api = Api::demo_at(port);
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let mut clients = vec![];
    for u in 0..3 {
        clients.push(Client::connect(&url, &token(&format!("p{u}")), None).await);
    }
    let in_flight = || async {
        let m = api.with_key(None).get("/metrics").await.1;
        m.as_str().unwrap().lines().find_map(|l| l.strip_prefix("accolade_socket_events_in_flight ")).unwrap().parse::<u64>().unwrap()
    };
    assert_eq!(in_flight().await, 0);

    std::fs::write(&stall, b"").unwrap();
    for (u, c) in clients.iter_mut().enumerate() {
        for i in 0..4 {
            c.send(&answer(&format!("p{u}-{i}"), "x", true)).await;
        }
    }
    // Twelve sent, three connections each allowed 256: the server's bound is what holds. The
    // gauge is polled, as the server is a child process that paused time cannot reach.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while in_flight().await < 5 {
        assert!(tokio::time::Instant::now() < deadline, "the bound was never reached: {}", in_flight().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // That no more is read can only be seen over a window of time; half a second is many
    // times what reading and handing on a frame takes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(in_flight().await, 5, "no more than the bound is read while nothing is answered");

    // The disk answers again: every event is taken, once.
    std::fs::remove_file(&stall).unwrap();
    for (u, c) in clients.iter_mut().enumerate() {
        let mut acked = vec![];
        while acked.len() < 4 {
            let m = c.next().await;
            if m["type"] == "ack" {
                assert_eq!(m["duplicate"], false, "{m}");
                acked.push(m["event_id"].as_str().unwrap().to_string());
            }
        }
        acked.sort();
        assert_eq!(acked, (0..4).map(|i| format!("p{u}-{i}")).collect::<Vec<_>>());
        assert_eq!(api.get(&format!("/v1/users/p{u}")).await.1["events"], 4);
    }
    assert_eq!(in_flight().await, 0);
}
