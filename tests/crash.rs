//! Crash test: the real binary is killed with SIGKILL while a client streams events, then
//! restarted. Every acknowledged event must come back as a duplicate, the final state must be
//! exactly what the rule core computes for the stream applied once, and no badge may have been
//! announced twice.

mod common;
use accolade::core::value::{b, n, s};
use accolade::core::{apply, Catalogue, Event, UserState};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The stream: answers over three exercises, mostly right, so streak badges (per exercise,
/// counted) and XP thresholds unlock along the way.
fn stream(count: usize) -> Vec<(String, String, bool)> {
    (0..count).map(|i| (format!("crash-{i}"), format!("ex-{}", (i / 25) % 3), i % 17 != 0)).collect()
}

/// Remembers what a message tells the client: an acknowledged id, or an announced award.
fn note(m: &serde_json::Value, acked: &mut HashSet<String>, unlocks: &mut Vec<(String, u64)>) {
    match m["type"].as_str() {
        Some("ack") => {
            acked.insert(m["event_id"].as_str().unwrap().to_string());
        }
        Some("unlock") => unlocks.push((m["badge"]["id"].as_str().unwrap().into(), m["count"].as_u64().unwrap())),
        _ => {}
    }
}

#[tokio::test]
async fn acked_events_survive_sigkill_exactly_once() {
    let dir = tmp();
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let events = stream(400);
    let at = now_rfc3339();
    let msg = |(id, ex, ok): &(String, String, bool)| {
        json!({ "type": "event", "event_id": id, "event_type": "problem.answered", "occurred_at": at, "payload": { "exercise": ex, "correct": ok, "seconds": 3 } }).to_string()
    };

    let mut server = start(dir.path(), port).await;
    let mut c = Client::connect(&url, &token("crash-user"), None).await;
    let mut acked = HashSet::new();
    let mut unlocks: Vec<(String, u64)> = vec![];
    // Stream without waiting, then kill once a good part is acknowledged.
    for e in &events {
        c.ws.feed(Message::text(msg(e))).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    while acked.len() < 150 {
        note(&c.next().await, &mut acked, &mut unlocks);
    }
    server.kill9();
    // Whatever the client had already received before the kill still counts as shown.
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(200), c.ws.next()).await {
        if let Message::Text(t) = m {
            note(&serde_json::from_str(&t).unwrap(), &mut acked, &mut unlocks);
        }
    }
    assert!(acked.len() < events.len(), "the kill should land mid-stream");

    let mut server = start(dir.path(), port).await;
    let mut c = Client::connect(&url, &token("crash-user"), None).await;
    // The client retries everything it sent, in order, as accolade.js does after a reconnect.
    for e in &events {
        c.ws.feed(Message::text(msg(e))).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    let mut replies = 0;
    while replies < events.len() {
        let m = c.next().await;
        match m["type"].as_str() {
            Some("ack") => {
                replies += 1;
                let id = m["event_id"].as_str().unwrap();
                if acked.contains(id) {
                    assert_eq!(m["duplicate"], true, "acked event {id} was counted again after the crash");
                }
            }
            Some("unlock") => unlocks.push((m["badge"]["id"].as_str().unwrap().into(), m["count"].as_u64().unwrap())),
            Some("error") => panic!("unexpected error {m}"),
            _ => {}
        }
    }
    let unique: HashSet<_> = unlocks.iter().cloned().collect();
    assert_eq!(unique.len(), unlocks.len(), "a badge award was announced twice: {unlocks:?}");

    // The final state is the core's answer for the stream applied once, in order.
    let cat = Catalogue::demo();
    let mut reference = UserState::default();
    let when = chrono::DateTime::parse_from_rfc3339(&at).unwrap().timestamp_millis();
    for (id, ex, ok) in &events {
        let mut e = Event::new(id, "problem.answered", when, &[("exercise", s(ex)), ("correct", b(*ok)), ("seconds", n(3.0))]);
        e.user_id = "crash-user".into();
        e.tenant_id = "demo".into();
        apply(&mut reference, &e, when, &cat);
    }
    let fresh = Client::connect(&url, &token("crash-user"), None).await;
    assert_eq!(fresh.welcome["xp"].as_u64(), Some(reference.xp));
    let got: BTreeMap<String, u64> = fresh.welcome["badges"].as_array().unwrap().iter().map(|b| (b["id"].as_str().unwrap().to_string(), b["count"].as_u64().unwrap())).collect();
    let want: BTreeMap<String, u64> = reference.badges.iter().map(|(k, r)| (k.clone(), r.count as u64)).collect();
    assert_eq!(got, want);
    // Every unlock the client was shown is in the durable state.
    for (badge, count) in &unique {
        assert!(got.get(badge).is_some_and(|c| c >= count), "shown {badge} x{count} but state has {got:?}");
    }
    server.kill9();

    // `accolade replay` rebuilds the user from the log alone and finds the stored state.
    let out = Command::new(env!("CARGO_BIN_EXE_accolade")).args(["--data-dir", dir.path().to_str().unwrap(), "replay"]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("replayed 1 users") && text.contains("0 differences"), "{text}");
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
