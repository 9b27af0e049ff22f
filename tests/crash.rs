//! Crash test: the real binary is killed with SIGKILL while a client streams events, then
//! restarted. Every acknowledged event must come back as a duplicate, the final state must be
//! exactly what the rule core computes for the stream applied once, and no badge may have been
//! announced twice.

mod common;
use common::answers::{answers, assert_exact, resend_all, send_all, Seen};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Streams `events` from `user` without waiting, kills the server with SIGKILL once `kill_after`
/// are acknowledged, restarts it (with `extra` flags both times), resends everything as
/// accolade.js does after a reconnect, and checks the final state against the rule core's
/// answer for the stream applied once, in order. Returns the restarted server and how many
/// events were acknowledged before the kill.
async fn kill_midstream_and_resend(dir: &std::path::Path, user: &str, events: &[(String, String, bool)], kill_after: usize, extra: &[&str]) -> (Server, usize) {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let at = now_rfc3339();
    let mut server = start_with(dir, port, extra).await;
    let mut c = Client::connect(&url, &token(user), None).await;
    let mut seen = Seen::default();
    send_all(&mut c, events, &at).await;
    while seen.acked.len() < kill_after {
        seen.note(&c.next().await);
    }
    server.kill9();
    // Whatever the client had already received before the kill still counts as shown.
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(200), c.ws.next()).await {
        if let Message::Text(t) = m {
            seen.note(&serde_json::from_str(&t).unwrap());
        }
    }
    let acked = seen.acked.len();
    let server = start_with(dir, port, extra).await;
    let mut c = Client::connect(&url, &token(user), None).await;
    resend_all(&mut c, events, &at, &mut seen).await;
    let fresh = Client::connect(&url, &token(user), None).await;
    assert_exact(&fresh.welcome, user, events, &at, &seen);
    (server, acked)
}

#[tokio::test]
async fn acked_events_survive_sigkill_exactly_once() {
    let dir = tmp();
    let (mut server, acked) = kill_midstream_and_resend(dir.path(), "crash-user", &answers("crash", 400), 150, &[]).await;
    server.kill9();
    assert!(acked < 400, "the kill should land mid-stream");

    // `accolade replay` rebuilds the user from the log alone and finds the stored state, with
    // the data dir given before the subcommand or after it (issue 26: after it was refused).
    for args in [["--data-dir", dir.path().to_str().unwrap(), "replay"], ["replay", "--data-dir", dir.path().to_str().unwrap()]] {
        let out = Command::new(env!("CARGO_BIN_EXE_accolade")).args(args).env("RUST_LOG", "warn").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("replayed 1 users") && text.contains("0 differences"), "{args:?}: {text}");
    }
}

/// Ids older than the user state's own ring of recent ids (256) are found in her id index: on
/// disk in the chunks written with her snapshots (at her first event and then every 400 here)
/// and, after the last one, in her log, which a SIGKILL leaves without the chunk of its tail:
/// answers 402 to about 440 are in neither a chunk nor the ring.
#[tokio::test]
async fn ids_older_than_the_recent_ring_stay_duplicates_after_sigkill() {
    let dir = tmp();
    let (mut server, _) = kill_midstream_and_resend(dir.path(), "old-ids", &answers("old", 700), 620, &["--snapshot-every", "400"]).await;
    server.kill9();
    // The chunks the snapshots wrote (the later answers were found in her log).
    let store = accolade::store::Store::open(dir.path()).unwrap();
    assert_eq!(store.id_chunks("demo", "old-ids").unwrap(), [1, 401]);
}

#[tokio::test]
async fn sighup_reloads_the_catalogue_file_and_refuses_a_broken_one() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    std::fs::write(&file, accolade::core::catalogue::DEMO_CATALOGUE).unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut server = start_with(&data, port, &["--catalogue", file.to_str().unwrap()]).await;
    let api = Api::demo_at(port);
    assert_eq!(api.get("/v1/catalogue").await.1["version"], 1);
    let hup = |pid: u32| assert!(Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success());
    let extra = "\n[[badges]]\nid = \"hup\"\nname = \"Hup\"\ntier = \"bronze\"\nrule = { kind = \"count\", event = \"login\", target = 1 }\n";
    std::fs::write(&file, format!("{}{extra}", accolade::core::catalogue::DEMO_CATALOGUE)).unwrap();
    hup(server.0.id());
    server.line("catalogue reloaded from the file").await;
    let (_, cur) = api.get("/v1/catalogue").await;
    assert_eq!((cur["version"].as_u64(), cur["origin"].as_str()), (Some(2), Some("file")));
    std::fs::write(&file, "version = [").unwrap();
    hup(server.0.id());
    let refused = server.line("catalogue reload refused").await;
    assert!(refused.contains("not valid TOML"), "{refused}");
    assert_eq!(api.get("/v1/catalogue").await.1["version"], 2, "the version in force stays");
    server.kill9();
}

/// An action sent twice under two ids (the page and the backend both report the article read)
/// is one read: the second is a duplicate by fingerprint. That second id must stay a duplicate
/// for good, also after a SIGKILL and after the fingerprint window has passed: the client
/// drops what is acked as a duplicate, and a resend of it must not count the read again.
#[tokio::test]
async fn a_duplicate_by_fingerprint_stays_a_duplicate_after_sigkill() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    std::fs::write(
        &file,
        r#"
version = 1
[settings]
late_bound = "24h"
[event_types."article.read"]
client = true
fields = { article = "string" }
fingerprint = ["article"]
fingerprint_window = "1h"
[levels]
thresholds = [0, 100]
[[xp]]
id = "read"
event = "article.read"
amount = 10
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let at = |hours_ago: i64| (chrono::Utc::now() - chrono::Duration::hours(hours_ago)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let read = |id: &str, when: &str| json!({ "type": "event", "event_id": id, "event_type": "article.read", "occurred_at": when, "payload": { "article": "a1" } });
    let acked = |m: Value, id: &str| {
        assert_eq!((m["type"].as_str(), m["event_id"].as_str()), (Some("ack"), Some(id)), "{m}");
        m["duplicate"].as_bool().unwrap()
    };
    let two_hours_ago = at(2);

    let mut server = start_with(&data, port, &["--catalogue", file.to_str().unwrap()]).await;
    let mut c = Client::connect(&url, &token("reader"), None).await;
    c.send(&read("page-1", &two_hours_ago)).await;
    assert!(!acked(c.next_main().await, "page-1"));
    assert_eq!(c.next().await["type"], "xp");
    c.send(&read("backend-1", &two_hours_ago)).await;
    assert!(acked(c.next_main().await, "backend-1"), "the same read under another id is a duplicate");
    server.kill9();

    let mut server = start_with(&data, port, &["--catalogue", file.to_str().unwrap()]).await;
    let mut c = Client::connect(&url, &token("reader"), None).await;
    assert_eq!(c.welcome["xp"], 10);
    // A new read of the article, two hours on: counted, and the older fingerprint falls away.
    c.send(&read("page-2", &at(0))).await;
    assert!(!acked(c.next_main().await, "page-2"));
    assert_eq!(c.next().await["delta"], 10);
    // The backend's first report sent again: still the duplicate it was acknowledged as.
    c.send(&read("backend-1", &two_hours_ago)).await;
    assert!(acked(c.next_main().await, "backend-1"), "an id acknowledged as a duplicate stays one");
    let fresh = Client::connect(&url, &token("reader"), None).await;
    assert_eq!(fresh.welcome["xp"], 20, "two reads: {}", fresh.welcome);
    server.kill9();

    // The log alone rebuilds what the server holds.
    let out = Command::new(env!("CARGO_BIN_EXE_accolade")).args(["replay", "--data-dir", data.to_str().unwrap()]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("0 differences"), "{text}");
}

#[tokio::test]
async fn revocations_expiries_and_retractions_replay_with_no_difference() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    std::fs::write(
        &file,
        r#"
version = 1
[settings]
late_bound = "24h"
[event_types."article.read"]
client = true
fields = { article = "string" }
[event_types."login"]
client = true
[levels]
thresholds = [0, 20, 60]
[[badges]]
id = "reader"
name = "Reader"
tier = "bronze"
xp = 30
rule = { kind = "count", event = "article.read", distinct = "article", target = 2 }
[[badges]]
id = "fresh"
name = "Fresh"
tier = "bronze"
xp = 5
valid_for = "10m"
rule = { kind = "count", event = "login", target = 1 }
[[badges]]
id = "left-hanging"
name = "Left hanging"
tier = "bronze"
xp = 1
rule = { kind = "absence", event = "login", until = "article.read", within = "1m" }
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let ago = |minutes: i64| (chrono::Utc::now() - chrono::Duration::minutes(minutes)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ev = |id: &str, ty: &str, at: String, payload: Value| json!({ "event_id": id, "user_id": "kim", "event_type": ty, "occurred_at": at, "payload": payload });
    let read = |id: &str, article: &str| ev(id, "article.read", ago(0), json!({ "article": article }));

    let mut server = start_with(&data, port, &["--catalogue", file.to_str().unwrap()]).await;
    let api = Api::demo_at(port);
    // A login a quarter of an hour ago earns `fresh`, which ran out five minutes ago: the next
    // event sees that, and the next login earns it again.
    api.ingest(vec![ev("l-1", "login", ago(15), json!({})), read("r-1", "a1"), read("r-2", "a2"), ev("l-2", "login", ago(0), json!({}))]).await;
    let (_, log) = api.get("/v1/users/kim/events").await;
    let pushed = |id: &str| -> Vec<String> {
        let e = log["events"].as_array().unwrap().iter().find(|e| e["event_id"] == id).unwrap();
        e["pushes"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap().to_string()).collect()
    };
    // Taken once, by the next event or by the expiry sweep, whichever came first.
    let revoked: Vec<&Value> = log["events"].as_array().unwrap().iter().flat_map(|e| e["pushes"].as_array().unwrap()).filter(|p| p["type"] == "revoked").collect();
    assert_eq!(revoked.len(), 1, "{log}");
    assert_eq!((revoked[0]["badge"]["id"].as_str(), revoked[0]["cause"].as_str()), (Some("fresh"), Some("expired")));
    assert!(pushed("l-2").contains(&"unlock".to_string()), "{log}");
    let (st, v) = api.call("POST", "/v1/users/kim/badges/reader/revoke", Some(&json!({ "reason": "bot", "xp": "claw_back" }))).await;
    assert_eq!((st, v["status"].as_str(), v["level"].as_u64()), (200, Some("revoked"), Some(1)), "{v}");
    let (st, v) = api.call("POST", "/v1/users/kim/badges/reader/revoke", Some(&json!({ "reason": "bot", "xp": "claw_back" }))).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("already_revoked")), "{v}");
    api.ingest(vec![read("r-3", "a3"), read("r-4", "a4")]).await;
    let (_, v) = api.get("/v1/users/kim/badges/reader").await;
    assert_eq!(v["id"], "reader", "two new articles earn it again: {v}");
    let (st, v) = api.call("POST", "/v1/users/kim/retractions", Some(&json!({ "event_id": "r-4", "reason": "refund", "xp": "claw_back" }))).await;
    assert_eq!((st, v["status"].as_str(), v["revoked"][0]["badge"].as_str()), (200, Some("retracted"), Some("reader")), "{v}");
    api.ingest(vec![read("r-5", "a5")]).await;
    // A wait that runs out with no event to see it: the expiry sweep's look awards it (kim's
    // ran out before her first read, which saw it).
    let at = (chrono::Utc::now() - chrono::Duration::seconds(57)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    api.ingest(vec![json!({ "event_id": "k-1", "user_id": "kai", "event_type": "login", "occurred_at": at, "payload": {} })]).await;
    api.wait_for("/v1/users/kai", 20, |v| v["badges"].as_array().is_some_and(|b| b.iter().any(|b| b["id"] == "left-hanging"))).await;
    server.kill9();

    // After the kill, the restarted server holds what it showed.
    let mut server = start_with(&data, port, &["--catalogue", file.to_str().unwrap()]).await;
    let (_, doc) = api.get("/v1/users/kim").await;
    let held: Vec<&str> = doc["badges"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(held, ["fresh", "left-hanging", "reader"], "{doc}");
    let (_, kai) = api.get("/v1/users/kai/events").await;
    assert!(kai["events"].as_array().unwrap().iter().any(|e| e["event_type"] == "accolade.expire"), "the sweep's look is in her log: {kai}");
    let (st, _) = api.call("POST", "/v1/users/kim/badges/fresh/revoke", Some(&json!({ "reason": "last one", "xp": "keep" }))).await;
    assert_eq!(st, 200);
    server.kill9();

    // The log alone rebuilds what the server holds.
    let out = Command::new(env!("CARGO_BIN_EXE_accolade")).args(["replay", "--data-dir", data.to_str().unwrap()]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("0 differences"), "{text}");
}
