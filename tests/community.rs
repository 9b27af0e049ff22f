//! Community goals end to end (docs/teams.md, "Community goals"): a tenant-wide total of its
//! users' events toward a target before a deadline, each event counted once (resends are
//! not), exact across a SIGKILL, pushed to every socket of the tenant as it moves, and closed
//! at the deadline with its outcome told once to each participant (on her socket, or when she
//! comes back), and to nobody who did not take part.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// The demo catalogue with two community goals ending at `ends`: ten correct answers (which
/// the test reaches) and an hour of answering (which it misses).
fn catalogue(ends: &str) -> String {
    format!(
        r#"{}
[[community_goals]]
id = "ten-correct"
name = "Ten correct answers together"
event = "problem.answered"
when = {{ correct = true }}
target = 10
ends = "{ends}"

[[community_goals]]
id = "an-hour"
name = "An hour of practice"
event = "problem.answered"
field = "seconds"
target = 3600
ends = "{ends}"
"#,
        accolade::core::catalogue::DEMO_CATALOGUE
    )
}

/// The community frames a socket got within `wait` of the last message: (type, goal, current
/// or total).
async fn community(c: &mut Client, wait: Duration) -> Vec<Value> {
    let mut out = vec![];
    while let Ok(m) = tokio::time::timeout(wait, c.next()).await {
        if m["type"].as_str().is_some_and(|t| t.starts_with("community_")) {
            out.push(m);
        }
    }
    out
}

#[tokio::test]
async fn a_community_goal_counts_everyone_once_survives_sigkill_and_tells_each_participant_its_outcome() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    let ends = chrono::Utc::now() + chrono::Duration::seconds(15);
    std::fs::write(&file, catalogue(&ends.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))).unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let args = ["--catalogue", file.to_str().unwrap(), "--community-tick-ms", "50", "--leaderboard-close-grace-ms", "100"];
    let ws = format!("ws://127.0.0.1:{port}/v1/ws");
    let api = Api::demo_at(port);
    let mut server = start_with(&data, port, &args).await;

    // A socket is shown where the open goals stand as it connects, after its welcome.
    let mut carl = Client::connect(&ws, &token("carl"), None).await;
    let first = community(&mut carl, Duration::from_millis(300)).await;
    let shown: Vec<(&str, &str, f64)> = first.iter().map(|m| (m["type"].as_str().unwrap(), m["goal"].as_str().unwrap(), m["current"].as_f64().unwrap())).collect();
    assert_eq!(shown, vec![("community_progress", "ten-correct", 0.0), ("community_progress", "an-hour", 0.0)], "{first:?}");
    assert_eq!((first[0]["target"].as_f64(), first[0].get("offset")), (Some(10.0), None), "a hint, in no history: {}", first[0]);

    // Ann three correct answers, Bob four and a wrong one, Cy two; Ann's sent again.
    let answers = |user: &str, n: usize, correct: bool| -> Vec<Value> { (0..n).map(|i| http_answer(&format!("{user}-{correct}-{i}"), user, "ex-1", correct)).collect() };
    api.ingest([answers("ann", 3, true), answers("bob", 4, true), answers("bob", 1, false), answers("cy", 2, true)].concat()).await;
    let again = api.ingest(answers("ann", 3, true)).await;
    assert!(again["results"].as_array().unwrap().iter().all(|r| r["status"] == "duplicate"), "{again}");
    let goal = api.wait_for("/v1/community-goals/ten-correct", 10, |g| g["current"] == 9.0).await;
    assert_eq!((goal["participants"].as_u64(), goal["status"].as_str(), goal["target"].as_f64()), (Some(3), Some("open"), Some(10.0)), "{goal}");
    // Every socket of the tenant is pushed the new totals (the tick is the throttle).
    let pushed = community(&mut carl, Duration::from_millis(500)).await;
    let last = pushed.iter().rev().find(|m| m["goal"] == "ten-correct").expect("a push of the goal that moved");
    assert_eq!((last["current"].as_f64(), last["participants"].as_u64()), (Some(9.0), Some(3)), "{pushed:?}");

    // SIGKILL: the totals come back from the users' shares, exactly.
    server.kill9();
    let mut server = start_with(&data, port, &args).await;
    let (_, list) = api.get("/v1/community-goals").await;
    let totals: Vec<(&str, f64, u64)> = list["goals"].as_array().unwrap().iter().map(|g| (g["id"].as_str().unwrap(), g["current"].as_f64().unwrap(), g["participants"].as_u64().unwrap())).collect();
    assert_eq!(totals, vec![("ten-correct", 9.0, 3), ("an-hour", 30.0, 3)], "{list}");
    let (st, e) = api.get("/v1/community-goals/nope").await;
    assert_eq!((st, e["error"].as_str()), (404, Some("not_found")), "{e}");

    // Dan's answer reaches it. Ann and Carl are online at the deadline; Bob is not (his
    // socket learns where his history stands, then closes).
    api.ingest(answers("dan", 1, true)).await;
    let mut ann = Client::connect(&ws, &token("ann"), None).await;
    let mut carl = Client::connect(&ws, &token("carl"), None).await;
    let bob = Client::connect(&ws, &token("bob"), None).await;
    let since = json!({ "epoch": bob.welcome["epoch"], "offset": bob.welcome["offset"] });
    drop(bob);
    // Ann is told at the close, on the socket she holds, not as she connects.
    let left = (ends - chrono::Utc::now()).to_std().expect("this machine took more than 15 s to get here; the test needs Ann online before the deadline");
    tokio::time::sleep(left).await;
    let outcome = loop {
        let m = ann.next().await;
        if m["type"] == "community_outcome" && m["goal"] == "ten-correct" {
            break m;
        }
    };
    assert_eq!(
        (outcome["reached"].as_bool(), outcome["total"].as_f64(), outcome["participants"].as_u64(), outcome["share"].as_f64(), outcome["name"].as_str()),
        (Some(true), Some(10.0), Some(4), Some(3.0), Some("Ten correct answers together")),
        "{outcome}"
    );
    assert!(outcome["offset"].as_u64().is_some(), "kept in her history: {outcome}");
    let (_, g) = api.get("/v1/community-goals/an-hour").await;
    assert_eq!((g["status"].as_str(), g["current"].as_f64(), g["participants"].as_u64()), (Some("missed"), Some(33.0), Some(4)), "{g}");
    let (_, g) = api.get("/v1/community-goals/ten-correct").await;
    assert_eq!(g["status"], "reached", "{g}");
    // Bob, back with what he missed: both outcomes, once each.
    let mut bob = Client::connect(&ws, &token("bob"), Some(since)).await;
    let mut told: Vec<(String, bool, f64)> = community(&mut bob, Duration::from_millis(700))
        .await
        .iter()
        .filter(|m| m["type"] == "community_outcome")
        .map(|m| (m["goal"].as_str().unwrap().to_string(), m["reached"].as_bool().unwrap(), m["share"].as_f64().unwrap()))
        .collect();
    told.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(told, vec![("an-hour".to_string(), false, 15.0), ("ten-correct".to_string(), true, 4.0)], "bob's shares");
    // Cy's actor was not in memory when the goals closed: a socket of hers, even one that asks
    // for no history, is told as it connects.
    let mut cy = Client::connect(&ws, &token("cy"), None).await;
    let mut told: Vec<(String, f64)> = community(&mut cy, Duration::from_millis(700)).await.iter().filter(|m| m["type"] == "community_outcome").map(|m| (m["goal"].as_str().unwrap().to_string(), m["share"].as_f64().unwrap())).collect();
    told.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(told, vec![("an-hour".to_string(), 6.0), ("ten-correct".to_string(), 2.0)]);
    // Carl took no part: no outcome for him.
    assert!(community(&mut carl, Duration::from_millis(300)).await.iter().all(|m| m["type"] != "community_outcome"));

    // A restart tells nobody again, and the logs replay clean.
    server.kill9();
    let mut server = start_with(&data, port, &args).await;
    let mut ann = Client::connect(&ws, &token("ann"), None).await;
    let again: Vec<Value> = community(&mut ann, Duration::from_millis(700)).await;
    assert!(again.iter().all(|m| m["type"] != "community_outcome"), "told once: {again:?}");
    server.kill9();
    let out = Command::new(env!("CARGO_BIN_EXE_accolade")).args(["replay", "--data-dir", data.to_str().unwrap(), "--catalogue", file.to_str().unwrap()]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("0 differences"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}
