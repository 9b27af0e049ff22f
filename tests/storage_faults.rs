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

/// The process may write files of at most `kb` KiB: writes past it fail (EFBIG) the way they
/// would on a full disk (SIGXFSZ ignored, as a server would not die of it either).
fn disk_limit(kb: u32) -> String {
    format!("ulimit -f {kb}; trap '' XFSZ")
}

/// Polls the child server until it exits (at most `secs`), returning its status. A child
/// process of its own: paused time cannot reach it, so its exit is polled on the runtime's
/// timer.
async fn exit_of(server: &mut Server, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = server.0.try_wait().unwrap() {
            return st;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not exit within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One value of `/metrics`, by its exact series name.
async fn metric(api: &Api, series: &str) -> f64 {
    let m = api.with_key(None).get("/metrics").await.1;
    let prefix = format!("{series} ");
    m.as_str().unwrap().lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("no {series} in /metrics")).parse().unwrap()
}

/// What a server whose store has failed answers to everyone, before it exits: nothing read
/// from the store, nothing taken.
async fn assert_failed_closed(api: &Api, user: &str) {
    let health = api.with_key(None);
    let (st, body) = health.get("/healthz").await;
    assert_eq!(st, 503, "{body}");
    assert!(body.as_str().unwrap().starts_with("storage failed: "), "{body}");
    assert_eq!(health.get("/readyz").await, (503, json!("storage failed")));
    let (st, body) = api.get(&format!("/v1/users/{user}")).await;
    assert_eq!((st, body["error"].as_str()), (503, Some("storage_failed")), "the user is not read from a store that failed: {body}");
    assert_eq!(metric(api, "accolade_storage_failed").await, 1.0);
}

/// A full disk under HTTP ingest of many users at once: every event in a failed group commit
/// (several users' events share one) is refused, none is acknowledged, and none is reported
/// accepted; the server then serves nothing from storage and exits with status 74 by itself;
/// restarted with room on the disk, it has every acknowledged event once and takes the
/// others once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_events_and_loses_nothing_acknowledged() {
    let dir = tmp();
    let port = free_port();
    let mut server = start_wrapped(dir.path(), port, &["--write-failure-exit-secs", "4"], Some(&disk_limit(3000))).await;
    let api = Api::demo_at(port);
    let mut sent: Vec<Value> = vec![];
    let mut accepted: Vec<String> = vec![];
    let mut refused: Vec<Value> = vec![];
    for batch in 0..40 {
        let events: Vec<Value> = (0..200).map(|i| big_video(&format!("b{batch}-{i}"), &format!("u{}", i % 20))).collect();
        let r = api.ingest(events.clone()).await;
        for (e, res) in events.iter().zip(r["results"].as_array().unwrap()) {
            match res["status"].as_str() {
                Some("accepted") => accepted.push(e["event_id"].as_str().unwrap().into()),
                _ => {
                    assert_eq!(res["code"], "unavailable", "{res}");
                    assert!(res.get("dead_letter").is_none(), "a storage failure is not the event's fault: {res}");
                    refused.push(e.clone());
                }
            }
        }
        sent.extend(events);
        if !refused.is_empty() {
            break;
        }
    }
    assert!(!refused.is_empty() && !accepted.is_empty(), "the disk filled part way ({} accepted, {} refused)", accepted.len(), refused.len());
    let users: std::collections::HashSet<&str> = refused.iter().map(|e| e["user_id"].as_str().unwrap()).collect();
    assert!(users.len() > 1, "the failed commit held several users' events: {users:?}");
    // Accepted means durable: what was refused is not counted as accepted.
    assert_eq!(metric(&api, "accolade_events_total{outcome=\"accepted\"}").await, accepted.len() as f64);
    // Each refused event is counted once as refused for the store, wherever it was caught.
    assert_eq!(metric(&api, "accolade_events_total{outcome=\"storage_failed\"}").await, refused.len() as f64);
    // Sent again before the restart, a refused event is refused again: never a duplicate.
    let (st, body) = api.call("POST", "/v1/events", Some(&json!({ "events": [refused[0].clone()] }))).await;
    assert_eq!((st, body["error"].as_str()), (503, Some("storage_failed")), "{body}");
    assert_failed_closed(&api, refused[0]["user_id"].as_str().unwrap()).await;
    // The recovery path: the process ends itself, with the status a supervisor restarts on.
    assert_eq!(exit_of(&mut server, 30).await.code(), Some(accolade::watchdog::EXIT_WRITE_FAILED));

    // Space again: everything acknowledged is there, everything else is taken once now.
    let server2 = start(dir.path(), port).await;
    assert_eq!(api.with_key(None).get("/healthz").await, (200, json!("ok")));
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

/// A socket event of about 6 KB, to fill the disk in a few hundred events.
fn big_socket_video(id: &str) -> Value {
    event(id, "video.watched", json!({ "video": "v".repeat(6000), "playlist": "p", "seconds": 60 }))
}

/// Reads one socket event's answer: `Ok(duplicate)` for its ack, `Err(message)` for anything
/// that ends it otherwise (an error, a close). An xp push read on the way (an earlier event's,
/// which follows its ack) sets `xp` to its total.
async fn answer_of(c: &mut Client, id: &str, xp: &mut u64) -> Result<bool, Value> {
    loop {
        let m = c.next().await;
        match m["type"].as_str() {
            Some("ack") if m["event_id"] == id => return Ok(m["duplicate"].as_bool().unwrap()),
            Some("xp") => *xp = m["total"].as_u64().unwrap(),
            Some("error") if m["event_id"] == id => return Err(m),
            Some("closed") => return Err(m),
            _ => {}
        }
    }
}

/// Issue 27's sequence, over the socket. One user sends ~6 KB events one at a time until the
/// disk is full. The event whose group commit failed is not acknowledged, and sent again
/// before the restart it is never acknowledged either (it was acked as a duplicate, read from
/// sled's trees in memory); the user's XP and event count are not shown from what the disk
/// refused; a connected bystander's event is refused with `unavailable`. After a restart with
/// room on the disk, the user has exactly the acknowledged events, and the resent event counts
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_event_whose_write_failed_is_never_acked_and_counts_once_after_the_restart() {
    let dir = tmp();
    let port = free_port();
    let mut server = start_wrapped(dir.path(), port, &["--write-failure-exit-secs", "120"], Some(&disk_limit(2500))).await;
    let api = Api::demo_at(port);
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let mut bystander = Client::connect(&url, &token("bystander"), None).await;
    let mut c = Client::connect(&url, &token("victim"), None).await;
    let (mut acked, mut xp) = (0u64, 0u64);
    let (failed, why) = loop {
        assert!(acked < 5000, "the disk never filled");
        let e = big_socket_video(&format!("e{acked}"));
        c.send(&e).await;
        match answer_of(&mut c, e["event_id"].as_str().unwrap(), &mut xp).await {
            Ok(duplicate) => {
                assert!(!duplicate);
                acked += 1;
            }
            Err(m) => break (e, m),
        }
    };
    // Its commit failed: no ack, the socket closed for a reconnect.
    assert_eq!(why["code"], 1011, "{why}");
    assert!(acked > 10, "the disk filled part way ({acked} acked)");
    let failed_id = failed["event_id"].as_str().unwrap().to_string();

    // Reconnect and resend, three times, as a client following docs/protocol.md does: never
    // an ack. The server cannot rebuild the user from a store that failed, and says so.
    for _ in 0..3 {
        let mut ws = Client::raw(&url).await;
        futures_util::SinkExt::send(&mut ws, tokio_tungstenite::tungstenite::Message::text(json!({ "type": "hello", "token": token("victim") }).to_string())).await.unwrap();
        let mut again = Client { ws, welcome: Value::Null };
        let m = again.next().await;
        assert_eq!((m["type"].as_str(), m["code"].as_str()), (Some("error"), Some("unavailable")), "no welcome from a failed store: {m}");
        assert_eq!(again.closed().await, Some(1011));
    }
    // A user still connected is refused too, with the event's id, so it sends it again later.
    let e = answer("b1", "x", true);
    bystander.send(&e).await;
    let mut ignored = 0;
    let m = answer_of(&mut bystander, "b1", &mut ignored).await.expect_err("no ack from a failed store");
    assert_eq!((m["code"].as_str(), m["event_id"].as_str()), (Some("unavailable"), Some("b1")), "{m}");
    // Neither the user nor the metrics describe the failed event.
    assert_failed_closed(&api, "victim").await;
    assert_eq!(metric(&api, "accolade_events_total{outcome=\"accepted\"}").await, acked as f64);
    assert!(metric(&api, "accolade_events_total{outcome=\"storage_failed\"}").await >= 2.0);

    // Stopped by its operator meanwhile, it exits with the same status as by itself.
    assert!(std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap().success());
    assert_eq!(exit_of(&mut server, 30).await.code(), Some(accolade::watchdog::EXIT_WRITE_FAILED));

    // Restarted with room on the disk: the acknowledged events, with their XP, and the failed
    // one only if its writes happened to reach the disk before the failure.
    let _server2 = start(dir.path(), port).await;
    let user = api.get("/v1/users/victim").await.1;
    let before = user["events"].as_u64().unwrap();
    assert!(before == acked || before == acked + 1, "{acked} acked, {before} stored");
    if before == acked {
        assert_eq!(user["xp"].as_u64(), Some(xp), "the XP of the acknowledged events: {user}");
    }
    let mut c = Client::connect(&url, &token("victim"), None).await;
    assert_eq!(c.welcome["xp"], user["xp"], "{}", c.welcome);
    c.send(&failed).await;
    let mut xp_after = user["xp"].as_u64().unwrap();
    let duplicate = answer_of(&mut c, &failed_id, &mut xp_after).await.expect("the resent event is acknowledged now");
    assert_eq!(duplicate, before == acked + 1, "accepted now unless the disk already had it");
    if !duplicate {
        let m = c.next_main().await;
        assert_eq!((m["type"].as_str(), m["event_id"].as_str()), (Some("xp"), Some(failed_id.as_str())), "{m}");
        xp_after = m["total"].as_u64().unwrap();
    }
    let user = api.get("/v1/users/victim").await.1;
    assert_eq!(user["events"].as_u64(), Some(acked + 1), "counted once: {user}");
    assert_eq!(user["xp"].as_u64(), Some(xp_after), "{user}");
    assert!(xp_after >= xp);
}

/// The server binary with the debug build's injected write failure armed: while the file
/// `fail` exists, each group commit inserts its writes and then fails its flush, as a full
/// disk does (`ACCOLADE_FAULT_FAIL_PERSIST`, src/store/persister.rs).
async fn start_failable(data: &std::path::Path, fail: &std::path::Path, port: u16, extra: &[&str]) -> Server {
    let setup = format!("export ACCOLADE_FAULT_FAIL_PERSIST='{}'", fail.display());
    start_wrapped(data, port, extra, Some(&setup)).await
}

/// A failure in the middle of the traffic of several users: each of five connected users has
/// events acknowledged, then one more each in flight when a group commit fails. None of those
/// is acknowledged, on the first try or resent before the restart; the users who were
/// connected are told why their socket closed; the process exits with status 74 once
/// `--write-failure-exit-secs` has passed. After the restart every acknowledged event is a
/// duplicate and every failed one is taken as new, since no flush ever covered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_of_several_users_is_never_acked_and_the_server_restarts_from_disk() {
    let dir = tmp();
    let (data, fail, port) = (dir.path().join("data"), dir.path().join("fail"), free_port());
    let mut server = start_failable(&data, &fail, port, &["--write-failure-exit-secs", "3"]).await;
    let api = Api::demo_at(port);
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let mut clients = vec![];
    for u in 0..5 {
        let mut c = Client::connect(&url, &token(&format!("p{u}")), None).await;
        for i in 0..3 {
            let mut xp = 0;
            c.send(&answer(&format!("p{u}-{i}"), "x", true)).await;
            assert_eq!(answer_of(&mut c, &format!("p{u}-{i}"), &mut xp).await, Ok(false));
        }
        clients.push(c);
    }
    std::fs::write(&fail, b"").unwrap();
    for (u, c) in clients.iter_mut().enumerate() {
        c.send(&answer(&format!("p{u}-late"), "x", true)).await;
    }
    // Each late event was either in the commit that failed (its socket closes for a
    // reconnect) or came after it (refused with `unavailable`, to be sent again later).
    for (u, c) in clients.iter_mut().enumerate() {
        let mut xp = 0;
        let id = format!("p{u}-late");
        let m = answer_of(c, &id, &mut xp).await.expect_err("a failed commit is never acknowledged");
        let refused = m["type"] == "error" && m["code"] == "unavailable" && m["event_id"] == id.as_str();
        assert!(m["code"] == 1011 || refused, "p{u}: {m}");
    }
    assert_eq!(metric(&api, "accolade_events_total{outcome=\"accepted\"}").await, 15.0);
    assert_eq!(metric(&api, "accolade_events_total{outcome=\"storage_failed\"}").await, 5.0);
    let (st, body) = api.call("POST", "/v1/events", Some(&json!({ "events": [http_answer("p0-late", "p0", "x", true)] }))).await;
    assert_eq!((st, body["error"].as_str()), (503, Some("storage_failed")), "{body}");
    // Whether a user's actor failed with the commit or is still in memory, nothing is served.
    for u in 0..5 {
        assert_failed_closed(&api, &format!("p{u}")).await;
    }
    assert_eq!(exit_of(&mut server, 20).await.code(), Some(accolade::watchdog::EXIT_WRITE_FAILED));

    std::fs::remove_file(&fail).unwrap();
    let _server2 = start_failable(&data, &fail, port, &[]).await;
    for u in 0..5 {
        let events: Vec<Value> = (0..3).map(|i| http_answer(&format!("p{u}-{i}"), &format!("p{u}"), "x", true)).chain([http_answer(&format!("p{u}-late"), &format!("p{u}"), "x", true)]).collect();
        let r = api.ingest(events).await;
        let status: Vec<&str> = r["results"].as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap()).collect();
        assert_eq!(status, ["duplicate", "duplicate", "duplicate", "accepted"], "p{u}: {r}");
        assert_eq!(api.get(&format!("/v1/users/p{u}")).await.1["events"], 4);
    }
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
/// holds the persister's batch the same way (`ACCOLADE_FAULT_STALL_PERSIST`, src/store/persister.rs).
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
