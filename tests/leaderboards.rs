//! Leaderboards end to end: standings with the tie rule, a user's neighbours, friends, leagues,
//! the errors a client can cause; `rank` and `top` pushes over the socket; and a period that
//! closes on time, archives its standings and awards its top ranks exactly once, with the real
//! binary killed in the middle of closing.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn users(v: &Value) -> Vec<&str> {
    v["entries"].as_array().unwrap().iter().map(|e| e["user_id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn standings_ranks_neighbours_friends_and_leagues() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    // alice and carol answer the same three questions (carol later), bob one, dave three
    // wrong ones (1 XP each).
    let three = |u: &str| (0..3).map(|i| http_answer(&format!("{u}-{i}"), u, "addition-1", true)).collect::<Vec<_>>();
    api.ingest(three("alice")).await;
    api.ingest(vec![http_answer("bob-0", "bob", "addition-1", true)]).await;
    api.ingest(three("carol")).await;
    api.ingest((0..3).map(|i| http_answer(&format!("dave-{i}"), "dave", "addition-1", false)).collect()).await;

    let (st, list) = api.get("/v1/leaderboards").await;
    assert_eq!(st, 200, "{list}");
    let ids: Vec<&str> = list["leaderboards"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["xp-weekly", "xp-all-time", "answers-today", "trig-monthly", "video-monthly"]);
    let weekly = &list["leaderboards"][0];
    assert!(weekly["current"]["label"].as_str().unwrap().contains("-W"), "{weekly}");
    assert_eq!(weekly["award"], json!({ "badge": "top-of-the-week", "top": 3 }));

    let (st, top) = api.get("/v1/leaderboards/xp-weekly?limit=10").await;
    assert_eq!(st, 200, "{top}");
    // Equal scores: alice reached hers first.
    assert_eq!(users(&top), ["alice", "carol", "bob", "dave"], "{top}");
    let e = top["entries"].as_array().unwrap();
    assert_eq!(e[0]["score"], e[1]["score"]);
    assert!(e[1]["score"].as_f64() > e[2]["score"].as_f64() && e[3]["score"] == json!(3.0), "{top}");
    assert_eq!(e.iter().map(|r| r["rank"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!((top["total"].as_u64(), top["closed"].as_bool()), (Some(4), Some(false)));
    let (_, page) = api.get("/v1/leaderboards/xp-weekly?from=2&limit=2").await;
    assert_eq!(users(&page), ["carol", "bob"]);

    let (st, me) = api.get("/v1/leaderboards/xp-weekly/users/bob?around=1").await;
    assert_eq!(st, 200, "{me}");
    assert_eq!((me["rank"].as_u64(), users(&me.as_object().map(|m| json!({ "entries": m["around"] })).unwrap())), (Some(3), vec!["carol", "bob", "dave"]));
    let (_, nobody) = api.get("/v1/leaderboards/xp-weekly/users/zed").await;
    assert_eq!((nobody["rank"].clone(), nobody["around"].clone()), (Value::Null, json!([])));

    let (st, friends) = api.call("POST", "/v1/leaderboards/xp-weekly/standings", Some(&json!({ "users": ["zed", "dave", "alice"] }))).await;
    assert_eq!(st, 200, "{friends}");
    let f: Vec<(String, Value)> = friends["entries"].as_array().unwrap().iter().map(|e| (e["user_id"].as_str().unwrap().into(), e["rank"].clone())).collect();
    assert_eq!(f, [("alice".into(), json!(1)), ("dave".into(), json!(4)), ("zed".into(), Value::Null)]);

    // Leagues: answers-today is split by plan; users without a plan are not on it.
    api.ingest(vec![
        http_event("p1", "alice", "user.profile", json!({ "plan": "pro" })),
        http_event("p2", "bob", "user.profile", json!({ "plan": "free" })),
        http_answer("alice-9", "alice", "addition-1", true),
        http_answer("bob-9", "bob", "addition-1", true),
        http_answer("carol-9", "carol", "addition-1", true),
    ])
    .await;
    let (_, pro) = api.get("/v1/leaderboards/answers-today?segment=pro").await;
    assert_eq!((users(&pro), pro["segment"].as_str()), (vec!["alice"], Some("pro")));
    let (_, free) = api.get("/v1/leaderboards/answers-today?segment=free").await;
    assert_eq!(users(&free), ["bob"]);
    let (_, carol) = api.get("/v1/leaderboards/answers-today/users/carol").await;
    assert_eq!(carol["rank"], Value::Null);
    let (_, bob) = api.get("/v1/leaderboards/answers-today/users/bob").await;
    assert_eq!((bob["rank"].as_u64(), bob["segment"].as_str()), (Some(1), Some("free")));

    // Every error a client can cause here.
    let errors = [
        ("GET", "/v1/leaderboards/nope", None, 404, "not_found"),
        ("GET", "/v1/leaderboards/xp-weekly?limit=0", None, 400, "invalid_query"),
        ("GET", "/v1/leaderboards/xp-weekly?limit=101", None, 400, "invalid_query"),
        ("GET", "/v1/leaderboards/xp-weekly?from=0", None, 400, "invalid_query"),
        ("GET", "/v1/leaderboards/answers-today", None, 400, "invalid_query"),
        ("GET", "/v1/leaderboards/xp-weekly?period=1999-W01", None, 404, "not_found"),
        ("GET", "/v1/leaderboards/xp-weekly/users/bob?around=51", None, 400, "invalid_query"),
        ("GET", "/v1/leaderboards/nope/periods", None, 404, "not_found"),
        ("POST", "/v1/leaderboards/xp-weekly/standings", Some(json!({ "people": [] })), 400, "invalid_body"),
        ("POST", "/v1/leaderboards/xp-weekly/standings", Some(json!({ "users": vec!["u"; 1001] })), 400, "invalid_body"),
    ];
    for (method, path, body, status, code) in errors {
        let (st, v) = api.call(method, path, body.as_ref()).await;
        assert_eq!((st, v["error"].as_str()), (status, Some(code)), "{method} {path}: {v}");
    }

    // A restart rebuilds the same standings from the users' stored scores.
    let (_, before) = api.get("/v1/leaderboards/xp-weekly?limit=10").await;
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let (_, after) = api.get("/v1/leaderboards/xp-weekly?limit=10").await;
    assert_eq!(after["entries"], before["entries"]);
    let (_, pro) = api.get("/v1/leaderboards/answers-today?segment=pro").await;
    assert_eq!(users(&pro), ["alice"]);
    s.stop().await;
}

#[tokio::test]
async fn watchers_get_rank_and_top_pushes() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.leaderboard_tick_ms = 50).await;
    let api = Api::new(&s, DEMO_KEY);
    api.ingest(vec![http_answer("a1", "ann", "addition-1", true), http_answer("a2", "ann", "addition-1", true)]).await;
    let mut c = s.connect("ben").await;
    c.send(&json!({ "type": "watch", "board": "nope" })).await;
    assert_eq!(c.next().await["code"], "unknown_board");
    c.send(&json!({ "type": "watch", "board": "xp-all-time", "top": 3 })).await;
    // Not ranked yet: only the top comes.
    let top = c.until("top").await.pop().unwrap();
    assert_eq!(users(&top), ["ann"]);
    c.send(&answer("b1", "addition-1", true)).await;
    let got = c.until("rank").await;
    let rank = got.last().unwrap();
    assert_eq!((rank["board"].as_str(), rank["rank"].as_u64(), rank["of"].as_u64(), rank["previous"].clone()), (Some("xp-all-time"), Some(2), Some(2), Value::Null), "{rank}");
    // Ann's lead grows, Ben overtakes: his rank moves to 1 and the top changes.
    for i in 0..3 {
        c.send(&answer(&format!("b{}", i + 2), "addition-1", true)).await;
    }
    loop {
        let m = c.next().await;
        if m["type"] == "rank" && m["rank"] == 1 {
            assert_eq!(m["previous"], 2);
            break;
        }
    }
    loop {
        let m = c.next().await;
        if m["type"] == "top" && users(&m) == ["ben", "ann"] {
            break;
        }
    }
    // After unwatch, no more leaderboard pushes: the next message after an event's ack and
    // pushes is the answer to a later error, never a rank.
    c.send(&json!({ "type": "unwatch", "board": "xp-all-time" })).await;
    api.ingest((0..10).map(|i| http_answer(&format!("a{}", i + 10), "ann", "addition-1", true)).collect()).await;
    c.send(&json!({ "type": "watch", "board": "nope" })).await;
    loop {
        let m = c.next().await;
        assert!(m["type"] != "rank", "{m}");
        if m["code"] == "unknown_board" {
            break;
        }
    }
    s.stop().await;
}

/// Reads a user's badges over the API.
async fn badges(api: &Api, user: &str) -> Value {
    let (st, v) = api.get(&format!("/v1/users/{user}")).await;
    assert_eq!(st, 200, "{v}");
    v["badges"].clone()
}

fn owned(badges: &Value, id: &str) -> Option<Value> {
    badges.as_array().unwrap().iter().find(|b| b["id"] == id).cloned()
}

#[tokio::test]
async fn a_period_closes_once_even_when_the_server_is_killed_while_closing() {
    let dir = tmp();
    let data = dir.path().join("data");
    let file = dir.path().join("catalogue.toml");
    // The period ends a few seconds from now.
    let ends = chrono::Utc::now() + chrono::Duration::seconds(4);
    let ends_text = ends.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::fs::write(&file, sprint_catalogue(&ends_text)).unwrap();
    let port = free_port();
    let flags = ["--catalogue", file.to_str().unwrap(), "--leaderboard-tick-ms", "50", "--leaderboard-close-grace-ms", "100"];
    let mut server = start_with(&data, port, &flags).await;
    let api = Api::demo_at(port);
    let mut events = vec![];
    for (user, n) in [("u1", 3), ("u2", 2), ("u3", 1)] {
        events.extend((0..n).map(|i| http_answer(&format!("{user}-{i}"), user, "addition-1", true)));
    }
    api.ingest(events).await;
    let (_, open) = api.get("/v1/leaderboards/sprint").await;
    assert_eq!((users(&open), open["closed"].as_bool(), open["period"].as_str()), (vec!["u1", "u2", "u3"], Some(false), Some("custom")));

    // Killed once the first award is durable (its push is only sent then) and before the close
    // is recorded: the restart must finish the close without awarding u1 again.
    let mut u1 = Client::connect(&format!("ws://127.0.0.1:{port}/v1/ws"), &token("u1"), None).await;
    loop {
        let m = u1.next().await;
        if m["type"] == "unlock" && m["badge"]["id"] == "sprint-winner" {
            assert_eq!((m["key"].as_str(), m["count"].as_u64()), (Some("custom"), Some(1)), "{m}");
            break;
        }
    }
    server.kill9();

    // The restart finishes the close.
    let mut server = start_with(&data, port, &flags).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let closed = loop {
        tick.tick().await;
        let (st, v) = api.get("/v1/leaderboards/sprint/periods").await;
        assert_eq!(st, 200, "{v}");
        if v["periods"].as_array().unwrap().len() == 1 {
            break v["periods"][0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the period was not closed after the restart: {v}");
    };
    assert_eq!((closed["period"].as_str(), closed["segments"].clone()), (Some("custom"), json!([["", 3]])), "{closed}");
    let (_, archived) = api.get("/v1/leaderboards/sprint?period=custom").await;
    assert_eq!((users(&archived), archived["closed"].as_bool(), archived["total"].as_u64()), (vec!["u1", "u2", "u3"], Some(true), Some(3)));
    assert_eq!(archived["entries"][0]["score"], 3.0);
    for (user, won) in [("u1", true), ("u2", true), ("u3", false)] {
        let b = owned(&badges(&api, user).await, "sprint-winner");
        match won {
            true => assert_eq!(b.as_ref().map(|b| b["count"].clone()), Some(json!(1)), "{user}: {b:?}"),
            false => assert!(b.is_none(), "{user} was third: {b:?}"),
        }
    }
    // No open period is left, and the board says so.
    let (st, v) = api.get("/v1/leaderboards/sprint").await;
    assert_eq!((st, v["error"].as_str()), (404, Some("no_open_period")), "{v}");

    // Another restart changes nothing: still one award each, and the log replays clean.
    server.kill9();
    let mut server = start_with(&data, port, &flags).await;
    let (_, v) = api.get("/v1/leaderboards/sprint/periods").await;
    assert_eq!(v["periods"].as_array().unwrap().len(), 1);
    assert_eq!(owned(&badges(&api, "u1").await, "sprint-winner").unwrap()["count"], 1);
    server.kill9();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accolade"))
        .args(["--data-dir", data.to_str().unwrap(), "--catalogue", file.to_str().unwrap(), "replay"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("replayed 3 users") && text.contains("0 differences"), "{text}");
}
