//! The on-disk format across releases: a data dir written by the release before per-user id
//! chunks (store format 1, `tests/fixtures/store-v1.tar.gz`, made by
//! `tests/fixtures/make-store-v1.sh`) opens with this one and loses nothing: the same users,
//! every id still a duplicate (those outside the state's recent-id ring included), new events
//! accepted, the index written in chunks and read back after a restart, and `accolade
//! replay` clean afterwards.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;

/// Unpacks the fixture into `dir`; returns its data dir.
fn unpack(dir: &std::path::Path) -> std::path::PathBuf {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v1.tar.gz");
    let ok = Command::new("tar").args(["-xzf", fixture, "-C", dir.to_str().unwrap()]).status().unwrap();
    assert!(ok.success(), "tar could not unpack {fixture}");
    dir.join("data")
}

/// The status of each event sent in one batch, by id.
async fn send(api: &Api, events: &[Value]) -> Vec<(String, String)> {
    let (status, body) = api.call("POST", "/v1/events", Some(&json!({ "events": events }))).await;
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().unwrap().iter().map(|r| (r["event_id"].as_str().unwrap().to_string(), r["status"].as_str().unwrap().to_string())).collect()
}

/// An answer sent now (a resend's time does not matter: its id is looked up first).
fn answer(user: &str, i: u32) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({ "event_id": format!("{user}-{i}"), "user_id": user, "event_type": "problem.answered", "occurred_at": now,
            "payload": { "exercise": "ex1", "correct": true, "seconds": 12 } })
}

fn resent(ids: &[&str]) -> Vec<(String, String)> {
    ids.iter().map(|id| (id.to_string(), "duplicate".to_string())).collect()
}

#[tokio::test]
async fn a_store_of_the_release_before_id_chunks_opens_and_keeps_every_id() {
    let dir = tmp();
    let data = unpack(dir.path());
    // Kept for ever: the fixture's events are from 2026-12-07, older than any retention by
    // the time this runs.
    let keep = |c: &mut accolade::config::Config| c.event_retention_hours = 0;
    let s = TestServer::start_with(&data, keep).await;
    let api = Api::new(&s, DEMO_KEY);
    let (_, heavy) = api.get("/v1/users/fx-heavy").await;
    let (_, light) = api.get("/v1/users/fx-light").await;
    // What the old release answered for them (the script prints fx-heavy's).
    assert_eq!((heavy["xp"].as_u64(), heavy["level"].as_u64()), (Some(4050), Some(12)), "{heavy}");
    assert!(light["xp"].as_u64().unwrap() > 0, "{light}");

    // fx-heavy's answers 5, 100 and 201 are not in her snapshot's 256-id ring: only her old
    // log finds them (the old server's stop snapshotted her at 400, so her whole log is
    // before the snapshot). 390 is in the ring too. fx-light's third event was a duplicate by
    // fingerprint, logged under its own id.
    let old: Vec<Value> = [5, 100, 201, 390].iter().map(|&i| answer("fx-heavy", i)).collect();
    assert_eq!(send(&api, &old).await, resent(&["fx-heavy-5", "fx-heavy-100", "fx-heavy-201", "fx-heavy-390"]));
    let light_again: Vec<Value> = (1..=4).map(|i| json!({ "event_id": format!("fx-light-{i}"), "user_id": "fx-light", "event_type": "login", "occurred_at": "2026-12-07T11:00:00Z" })).collect();
    assert_eq!(send(&api, &light_again).await, resent(&["fx-light-1", "fx-light-2", "fx-light-3", "fx-light-4"]));
    // New events are new, and so is an old id of one user sent by another, and the id of a
    // record the old server made for itself (fx-light's goal, found by its place only).
    let (_, log) = api.get("/v1/users/fx-light/events").await;
    let goal = log["events"].as_array().unwrap().iter().find(|e| e["event_type"] == "accolade.goal").expect("the fixture's goal record");
    assert_eq!(goal["event_id"], "goal:fx-goal:5", "{goal}");
    let new = [answer("fx-heavy", 401), answer("fx-light", 5)];
    let mut other = answer("fx-other", 0);
    other["event_id"] = json!("fx-heavy-5");
    let mut taken = answer("fx-light", 0);
    taken["event_id"] = json!("goal:fx-goal:5");
    let got = send(&api, &[new[0].clone(), new[1].clone(), other, taken]).await;
    let want: Vec<(String, String)> = ["fx-heavy-401", "fx-light-5", "fx-heavy-5", "goal:fx-goal:5"].iter().map(|id| (id.to_string(), "accepted".to_string())).collect();
    assert_eq!(got, want);
    let (_, after) = api.get("/v1/users/fx-heavy").await;
    assert_eq!((heavy["events"].as_u64(), after["events"].as_u64()), (Some(400), Some(401)), "{after}");
    s.stop().await;

    // Her first write stored what her first load found as her first id chunk, up to her
    // snapshot (400), and her stop the rest with its own snapshot: after a restart her ids
    // are read from the chunks, not from her whole log.
    let store = accolade::store::Store::open(&data).unwrap();
    assert_eq!(store.id_chunks("demo", "fx-heavy").unwrap(), [400, 401]);
    let loaded = store.load_user("demo", "fx-heavy").unwrap();
    assert_eq!((loaded.ids.get("fx-heavy-5"), loaded.ids.get("fx-heavy-401")), (vec![5], vec![401]));
    assert_eq!(loaded.ids.len(), 401, "every answer, and nothing else");
    let light = store.load_user("demo", "fx-light").unwrap();
    assert_eq!((light.ids.get("fx-light-3"), light.ids.get("goal:fx-goal:5")), (vec![3], vec![7]), "the duplicate's record, and the client's event under the goal record's id");
    drop(loaded);
    drop(store);
    let s = TestServer::start_with(&data, keep).await;
    let api = Api::new(&s, DEMO_KEY);
    let again: Vec<Value> = [5, 100, 401].iter().map(|&i| answer("fx-heavy", i)).collect();
    assert_eq!(send(&api, &again).await, resent(&["fx-heavy-5", "fx-heavy-100", "fx-heavy-401"]));
    let (_, same) = api.get("/v1/users/fx-heavy").await;
    assert_eq!((&same["events"], &same["xp"]), (&after["events"], &after["xp"]), "nothing counted twice");
    s.stop().await;

    // The log alone rebuilds what the server holds, old records and new.
    let out = Command::new(env!("CARGO_BIN_EXE_accolade")).args(["replay", "--data-dir", data.to_str().unwrap()]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("0 differences"), "{text}");
}

#[test]
fn a_store_of_a_later_format_is_refused_at_open() {
    let dir = tmp();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"store-format", &[9u8]).unwrap();
        db.flush().unwrap();
    }
    let err = accolade::store::Store::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("format 9"), "{err}");
}
