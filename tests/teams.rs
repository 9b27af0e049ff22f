//! Teams end to end (docs/teams.md): a team made and read through the API, members added and
//! removed, their events counted toward the team once each and only while they belong, the
//! limits and every error a client can cause, and a contribution that counts once across a
//! SIGKILL on either side of its delivery.

mod common;
use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// The demo catalogue with a teams section: a badge at five answers, one when two members have
/// answered, and a point of team XP per answer.
fn catalogue_with_teams(max_members: usize, max_teams: usize) -> String {
    format!(
        r#"{}
[teams]
max_members = {max_members}
max_teams_per_user = {max_teams}

[[teams.xp]]
id = "team-answer"
event = "problem.answered"
amount = 1

[[teams.badges]]
id = "team-five"
name = "Five answers together"
tier = "bronze"
rule = {{ kind = "count", event = "problem.answered", target = 5 }}

[[teams.badges]]
id = "two-members"
name = "Two members answered"
tier = "silver"
rule = {{ kind = "count", event = "problem.answered", distinct = "member", target = 2 }}
"#,
        accolade::core::catalogue::DEMO_CATALOGUE
    )
}

async fn server_with_teams(dir: &std::path::Path, max_members: usize, max_teams: usize) -> TestServer {
    let file = dir.join("catalogue.toml");
    std::fs::write(&file, catalogue_with_teams(max_members, max_teams)).unwrap();
    let data = dir.join("data");
    TestServer::start_with(&data, |c| {
        c.catalogue = Some(file);
        two_tenants(c);
    })
    .await
}

fn badge_ids(team: &Value) -> Vec<&str> {
    team["badges"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn members_events_count_toward_their_team_once_and_only_while_they_belong() {
    let dir = tmp();
    let s = server_with_teams(dir.path(), 100, 10).await;
    let api = Api::new(&s, DEMO_KEY);

    // An endpoint that wants the teams' unlocks.
    let (hooks, addr) = common::receiver::Receiver::start().await;
    let (st, h) = api.call("POST", "/v1/webhooks", Some(&json!({ "url": format!("http://{addr}/hook"), "events": ["team_unlock"] }))).await;
    assert_eq!(st, 201, "{h}");
    let (st, t) = api.call("PUT", "/v1/teams/class-a", Some(&json!({ "name": "Class A", "timezone": "Europe/Paris", "attributes": { "school": "north" } }))).await;
    assert_eq!(st, 200, "{t}");
    assert_eq!((t["team_id"].as_str(), t["name"].as_str(), t["member_count"].as_u64(), t["xp"].as_u64()), (Some("class-a"), Some("Class A"), Some(0), Some(0)), "{t}");
    assert_eq!((t["attributes"]["school"].as_str(), t["attributes"]["timezone"].as_str()), (Some("north"), Some("Europe/Paris")), "{t}");

    // Ann answers twice before she joins: not the team's.
    api.ingest(vec![http_answer("a-0", "ann", "ex-1", true), http_answer("a-1", "ann", "ex-1", true)]).await;
    for user in ["ann", "bob"] {
        let (st, m) = api.call("POST", "/v1/teams/class-a/members", Some(&json!({ "user_id": user }))).await;
        assert_eq!((st, m["joined"].as_bool()), (200, Some(true)), "{m}");
    }
    let (st, m) = api.call("POST", "/v1/teams/class-a/members", Some(&json!({ "user_id": "ann" }))).await;
    assert_eq!((st, m["joined"].as_bool()), (200, Some(false)), "joining twice changes nothing: {m}");

    // Ann watches on a socket; Bob is offline.
    let mut ann_ws = s.connect("ann").await;
    // Three answers of Ann's and two of Bob's: five, from two members.
    api.ingest(vec![http_answer("a-2", "ann", "ex-1", true), http_answer("a-3", "ann", "ex-2", false), http_answer("b-0", "bob", "ex-1", true)]).await;
    api.ingest(vec![http_answer("a-4", "ann", "ex-3", true), http_answer("b-1", "bob", "ex-2", true)]).await;
    let t = api.wait_for("/v1/teams/class-a", 10, |t| t["xp"] == 5).await;
    assert_eq!(badge_ids(&t), vec!["team-five", "two-members"], "{t}");
    assert_eq!((t["member_count"].as_u64(), t["members"].clone()), (Some(2), json!(["ann", "bob"])), "{t}");
    // Each member is told each of the team's unlocks: Ann on her socket at once, Bob when he
    // comes back and asks for what he missed.
    let told = |m: &Value| (m["team"].as_str().map(String::from), m["badge"]["id"].as_str().map(String::from), m["count"].as_u64());
    let mut ann_told = vec![];
    while ann_told.len() < 2 {
        let m = ann_ws.until("team_unlock").await.pop().unwrap();
        ann_told.push(told(&m));
    }
    // Two members had answered at the third contribution, five answers came with the fifth.
    let want = vec![(Some("class-a".to_string()), Some("two-members".to_string()), Some(1)), (Some("class-a".to_string()), Some("team-five".to_string()), Some(1))];
    assert_eq!(ann_told, want);
    // The endpoint got each of the team's unlocks once, naming the team.
    let got = hooks.wait("the team's two unlocks", |g| g.len() >= 2).await;
    let notes: Vec<(&str, &str, &str)> = got.iter().map(|g| (g.json["type"].as_str().unwrap_or("?"), g.json["team_id"].as_str().unwrap_or("?"), g.json["data"]["badge"]["id"].as_str().unwrap_or("?"))).collect();
    assert_eq!(notes, vec![("team_unlock", "class-a", "two-members"), ("team_unlock", "class-a", "team-five")], "{got:?}");
    assert!(got.iter().all(|g| g.json.get("user_id").is_none()), "a team's notification names no user");
    let bob_ws = s.connect("bob").await;
    let since = json!({ "epoch": bob_ws.welcome["epoch"], "offset": 0 });
    let mut bob_ws = Client::connect(&s.url(), &token("bob"), Some(since)).await;
    let mut bob_told = vec![];
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(500), bob_ws.next()).await {
        if m["type"] == "team_unlock" {
            bob_told.push(told(&m));
        }
    }
    assert_eq!(bob_told, want, "once each, in his history");
    // Sent again, the same events count nothing more for the team either.
    let again = api.ingest(vec![http_answer("a-2", "ann", "ex-1", true), http_answer("b-1", "bob", "ex-2", true)]).await;
    assert!(again["results"].as_array().unwrap().iter().all(|r| r["status"] == "duplicate"), "{again}");

    // Bob leaves: his next answer is his own only; Ann's still counts.
    let (st, _) = api.call("DELETE", "/v1/teams/class-a/members/bob", None).await;
    assert_eq!(st, 204);
    // Ann joins a second team: her next answer counts for both.
    assert_eq!(api.call("PUT", "/v1/teams/class-b", Some(&json!({ "name": "Class B" }))).await.0, 200);
    assert_eq!(api.call("POST", "/v1/teams/class-b/members", Some(&json!({ "user_id": "ann" }))).await.0, 200);
    api.ingest(vec![http_answer("b-2", "bob", "ex-3", true)]).await;
    api.ingest(vec![http_answer("a-5", "ann", "ex-4", true)]).await;
    let t = api.wait_for("/v1/teams/class-a", 10, |t| t["xp"] == 6).await;
    api.wait_for("/v1/teams/class-b", 10, |t| t["xp"] == 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the mail worker looks every second
    let (_, t2) = api.get("/v1/teams/class-a").await;
    assert_eq!((t2["xp"].as_u64(), t2["members"].clone()), (Some(6), json!(["ann"])), "bob's answer after he left is not the team's: {t2}");
    assert_eq!(t["badges"], t2["badges"]);
    // Bob's own state has all three of his answers.
    let (_, bob) = api.get("/v1/users/bob").await;
    assert_eq!(bob["events"], 3, "{bob}");

    // The team is not another tenant's, and its entity is not a user anyone can name.
    let acme = Api::new(&s, ACME_KEY);
    let (st, e) = acme.get("/v1/teams/class-a").await;
    assert_eq!((st, e["error"].as_str()), (404, Some("unknown_team")), "{e}");
    s.stop().await;
}

/// The `team_progress` frames a socket got within `wait` of the last one: (badge, current,
/// target), in order.
async fn team_progress(c: &mut Client, wait: Duration) -> Vec<(String, u64, u64)> {
    let mut out = vec![];
    while let Ok(m) = tokio::time::timeout(wait, c.next()).await {
        if m["type"] == "team_progress" {
            assert_eq!(m["team"], "class-p", "{m}");
            assert!(m.get("offset").is_none(), "a team's progress is in no history: {m}");
            out.push((m["badge"].as_str().unwrap().to_string(), m["current"].as_f64().unwrap() as u64, m["target"].as_f64().unwrap() as u64));
        }
    }
    out
}

/// A team's progress reaches its members' open sockets as `team_progress` (by tenths of the
/// target, here with no time throttle), whoever's event moved it, and nobody else's; it is a
/// hint for a progress bar, so a reconnecting member does not get it back.
#[tokio::test]
async fn a_teams_progress_is_pushed_to_its_members_sockets_and_to_nobody_else() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    std::fs::write(&file, catalogue_with_teams(100, 10)).unwrap();
    let s = TestServer::start_with(&dir.path().join("data"), |c| {
        c.catalogue = Some(file);
        c.progress_throttle_ms = 0;
    })
    .await;
    let api = Api::new(&s, DEMO_KEY);
    assert_eq!(api.call("PUT", "/v1/teams/class-p", Some(&json!({ "name": "Class P" }))).await.0, 200);
    for user in ["ann", "bob"] {
        assert_eq!(api.call("POST", "/v1/teams/class-p/members", Some(&json!({ "user_id": user }))).await.0, 200);
    }
    let (mut ann, mut bob, mut carl) = (s.connect("ann").await, s.connect("bob").await, s.connect("carl").await);
    api.ingest((1..=5).map(|i| http_answer(&format!("p-{i}"), "ann", "ex-1", true)).collect()).await;
    // Every tenth of "five answers" crossed (each answer is two) until the fifth, which is the
    // badge itself (told as `team_unlock`); "two members" got halfway with Ann's first answer,
    // and no further.
    let want: Vec<(String, u64, u64)> = [("team-five", 1, 5), ("two-members", 1, 2), ("team-five", 2, 5), ("team-five", 3, 5), ("team-five", 4, 5)]
        .iter()
        .map(|(b, c, t)| (b.to_string(), *c, *t))
        .collect();
    let sorted = |mut v: Vec<(String, u64, u64)>| {
        v.sort();
        v
    };
    let got_bob = team_progress(&mut bob, Duration::from_secs(3)).await;
    assert_eq!(sorted(got_bob.clone()), sorted(want.clone()), "{got_bob:?}");
    let five: Vec<u64> = got_bob.iter().filter(|p| p.0 == "team-five").map(|p| p.1).collect();
    assert_eq!(five, [1, 2, 3, 4], "in the order the team counted them");
    assert_eq!(sorted(team_progress(&mut ann, Duration::from_millis(300)).await), sorted(want), "the member whose events they were");
    assert_eq!(team_progress(&mut carl, Duration::from_millis(300)).await, vec![], "not a member");
    // Not in the history a reconnecting member catches up on (the team's unlock is).
    let since = json!({ "epoch": bob.welcome["epoch"], "offset": 0 });
    let mut again = Client::connect(&s.url(), &token("bob"), Some(since)).await;
    assert_eq!(team_progress(&mut again, Duration::from_millis(500)).await, vec![]);
    s.stop().await;
}

#[tokio::test]
async fn every_team_error_a_client_can_cause_has_its_code_and_changes_nothing() {
    let dir = tmp();
    let s = server_with_teams(dir.path(), 2, 1).await;
    let api = Api::new(&s, DEMO_KEY);
    let (st, _) = api.call("PUT", "/v1/teams/t1", Some(&json!({ "name": "One" }))).await;
    assert_eq!(st, 200);
    let (st, _) = api.call("PUT", "/v1/teams/t2", Some(&json!({ "name": "Two" }))).await;
    assert_eq!(st, 200);
    let member = |id: &str| json!({ "user_id": id });
    let table: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        ("GET", "/v1/teams/nope".into(), None, 404, "unknown_team"),
        ("POST", "/v1/teams/nope/members".into(), Some(member("ann")), 404, "unknown_team"),
        ("GET", "/v1/teams/bad%20id".into(), None, 400, "invalid_team"),
        ("PUT", "/v1/teams/bad%20id".into(), Some(json!({ "name": "x" })), 400, "invalid_team"),
        ("PUT", "/v1/teams/t3".into(), Some(json!({ "name": "" })), 400, "invalid_body"),
        ("PUT", "/v1/teams/t3".into(), Some(json!({ "name": "x", "colour": "red" })), 400, "invalid_body"),
        ("PUT", "/v1/teams/t3".into(), Some(json!({ "name": "x", "timezone": "Mars/Olympus" })), 400, "invalid_body"),
        ("PUT", "/v1/teams/t3".into(), Some(json!({ "name": "x", "attributes": { "name": "y" } })), 400, "invalid_body"),
        ("POST", "/v1/teams/t1/members".into(), Some(member("")), 400, "invalid_user"),
        ("POST", "/v1/teams/t1/members".into(), Some(member("\u{1}team:t2")), 400, "invalid_user"),
        ("POST", "/v1/teams/t1/members".into(), Some(json!({ "user": "ann" })), 400, "invalid_body"),
        ("DELETE", "/v1/teams/t1/members/zed".into(), None, 404, "not_a_member"),
    ];
    for (method, path, body, status, code) in table {
        let (st, e) = api.call(method, &path, body.as_ref()).await;
        assert_eq!((st, e["error"].as_str()), (status, Some(code)), "{method} {path}: {e}");
    }
    let (st, _) = api.get("/v1/teams/t3").await;
    assert_eq!(st, 404, "a refused PUT made no team");

    // Two members at most: the third is refused, and nobody's teams change.
    for u in ["ann", "bob"] {
        assert_eq!(api.call("POST", "/v1/teams/t1/members", Some(&member(u))).await.0, 200);
    }
    let (st, e) = api.call("POST", "/v1/teams/t1/members", Some(&member("cy"))).await;
    assert_eq!((st, e["error"].as_str()), (409, Some("team_full")), "{e}");
    // One team per user at most: ann cannot join t2, and t2 does not keep her.
    let (st, e) = api.call("POST", "/v1/teams/t2/members", Some(&member("ann"))).await;
    assert_eq!((st, e["error"].as_str()), (409, Some("too_many_teams")), "{e}");
    let (_, t2) = api.get("/v1/teams/t2").await;
    assert_eq!(t2["member_count"], 0, "{t2}");
    // Cy, refused by t1, may join t2; then her events count for t2 only.
    assert_eq!(api.call("POST", "/v1/teams/t2/members", Some(&member("cy"))).await.0, 200);
    api.ingest(vec![http_answer("c-0", "cy", "ex-1", true)]).await;
    api.wait_for("/v1/teams/t2", 10, |t| t["xp"] == 1).await;
    let (_, t1) = api.get("/v1/teams/t1").await;
    assert_eq!(t1["xp"], 0, "{t1}");
    s.stop().await;

    // A catalogue without a teams section: teams are refused with a reason.
    let plain = tmp();
    let s = TestServer::start(plain.path()).await;
    let (st, e) = Api::new(&s, DEMO_KEY).call("PUT", "/v1/teams/t1", Some(&json!({ "name": "One" }))).await;
    assert_eq!((st, e["error"].as_str()), (409, Some("no_teams")), "{e}");
    s.stop().await;
}

/// A contribution is written with its member's event and removed once the team has it: a
/// SIGKILL before the team has it, or after the team has it and before the removal, leaves it
/// to be delivered again, and the team counts it once. `accolade replay` then finds every user
/// and the team as their logs say.
#[tokio::test]
async fn a_contribution_counts_once_across_a_sigkill_before_or_after_its_delivery() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    std::fs::write(&file, catalogue_with_teams(100, 10)).unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let args = ["--catalogue", file.to_str().unwrap()];
    let api = Api::demo_at(port);

    let mut server = start_with(&data, port, &args).await;
    assert_eq!(api.call("PUT", "/v1/teams/crew", Some(&json!({ "name": "Crew" }))).await.0, 200);
    for u in ["ann", "bob"] {
        assert_eq!(api.call("POST", "/v1/teams/crew/members", Some(&json!({ "user_id": u }))).await.0, 200);
    }
    api.ingest(vec![http_answer("a-0", "ann", "ex-1", true), http_answer("b-0", "bob", "ex-1", true)]).await;
    api.wait_for("/v1/teams/crew", 10, |t| t["xp"] == 2).await;
    server.kill9();

    // Held back: the members' events are acknowledged, their contributions wait; SIGKILL.
    let mut server = start_wrapped(&data, port, &args, Some("export ACCOLADE_FAULT_HOLD_MAIL=1")).await;
    api.ingest(vec![http_answer("a-1", "ann", "ex-2", true), http_answer("b-1", "bob", "ex-2", true), http_answer("a-2", "ann", "ex-3", true)]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(api.get("/v1/teams/crew").await.1["xp"], 2, "held back");
    server.kill9();
    let mut server = start_with(&data, port, &args).await;
    api.wait_for("/v1/teams/crew", 10, |t| t["xp"] == 5).await;
    server.kill9();

    // Delivered but not removed: the team has them; SIGKILL; delivered again, counted once.
    let mut server = start_wrapped(&data, port, &args, Some("export ACCOLADE_FAULT_KEEP_MAIL=1")).await;
    api.ingest(vec![http_answer("a-3", "ann", "ex-4", true), http_answer("b-2", "bob", "ex-4", true)]).await;
    api.wait_for("/v1/teams/crew", 10, |t| t["xp"] == 7).await;
    server.kill9();
    let mut server = start_with(&data, port, &args).await;
    // The two kept contributions go to the team again, which knew them: duplicates.
    let dups = |m: &serde_json::Value| m.as_str().unwrap_or_default().lines().find_map(|l| l.strip_prefix("accolade_events_total{outcome=\"duplicate\"} ")).and_then(|v| v.trim().parse::<f64>().ok());
    api.with_key(None).wait_for("/metrics", 10, |m| dups(m).is_some_and(|d| d >= 2.0)).await;
    let (_, t) = api.get("/v1/teams/crew").await;
    assert_eq!((t["xp"].as_u64(), t["events"].as_u64()), (Some(7), Some(8)), "seven answers and the profile, each once: {t}");
    // Stopped (SIGTERM), so the team's snapshot holds all eight of its events, for replay to
    // check (with the members' events as far as their snapshots go).
    assert!(Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap().success());
    assert!(server.0.wait().unwrap().success());

    let out = Command::new(env!("CARGO_BIN_EXE_accolade")).args(["replay", "--data-dir", data.to_str().unwrap(), "--catalogue", file.to_str().unwrap()]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let events: u64 = text.split_once(" users (").and_then(|(_, r)| r.split_once(' ')).and_then(|(n, _)| n.parse().ok()).unwrap_or(0);
    assert!(out.status.success() && text.contains("replayed 3 users") && events >= 8 && text.contains("0 differences"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}

/// The teams catalogue with a board of teams: correct answers counted per team over a custom
/// period that ends at `ends`, whose winner is given `race-winner`.
fn catalogue_with_team_board(ends: &str) -> String {
    format!(
        r#"{}
[[teams.badges]]
id = "race-winner"
name = "Won the class race"
tier = "gold"
rule = {{ kind = "awarded" }}

[[teams.leaderboards]]
id = "class-race"
name = "Class race"
metric = "count"
event = "problem.answered"
when = {{ correct = true }}
period = "custom"
starts = "2026-01-01T00:00:00Z"
ends = "{ends}"
award = {{ badge = "race-winner", top = 1 }}
"#,
        catalogue_with_teams(100, 10)
    )
}

/// A board of teams ranks teams by their members' events, through the same routes and pushes as
/// a board of users (rows name `team_id`), refuses the routes that name users, shows each team
/// its standing, and when its period closes archives the standings and gives its award to the
/// winning team, whose members are told.
#[tokio::test]
async fn a_board_of_teams_ranks_teams_and_awards_the_winner_whose_members_are_told() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    let ends = chrono::Utc::now() + chrono::Duration::seconds(8);
    std::fs::write(&file, catalogue_with_team_board(&ends.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))).unwrap();
    let s = TestServer::start_with(&dir.path().join("data"), |c| {
        c.catalogue = Some(file);
        c.leaderboard_tick_ms = 50;
        c.leaderboard_close_grace_ms = 100;
    })
    .await;
    let api = Api::new(&s, DEMO_KEY);
    for (team, members) in [("class-a", &["ann", "bob"][..]), ("class-b", &["cy"][..])] {
        assert_eq!(api.call("PUT", &format!("/v1/teams/{team}"), Some(&json!({ "name": team }))).await.0, 200);
        for m in members {
            assert_eq!(api.call("POST", &format!("/v1/teams/{team}/members"), Some(&json!({ "user_id": m }))).await.0, 200);
        }
    }
    let mut ann = s.connect("ann").await;
    ann.send(&json!({ "type": "watch", "board": "class-race", "top": 5 })).await;
    // Class A: three correct answers of Ann's, one of Bob's, and a wrong one; Class B: two.
    api.ingest(vec![
        http_answer("a-1", "ann", "ex-1", true),
        http_answer("a-2", "ann", "ex-2", true),
        http_answer("a-3", "ann", "ex-3", true),
        http_answer("a-4", "ann", "ex-4", false),
        http_answer("b-1", "bob", "ex-1", true),
        http_answer("c-1", "cy", "ex-1", true),
        http_answer("c-2", "cy", "ex-2", true),
    ])
    .await;
    let rows = |v: &Value| -> Vec<(u64, String, f64)> {
        v["entries"].as_array().unwrap().iter().map(|e| {
            assert!(e.get("user_id").is_none(), "a row of a board of teams names no user: {e}");
            (e["rank"].as_u64().unwrap(), e["team_id"].as_str().unwrap().to_string(), e["score"].as_f64().unwrap())
        }).collect()
    };
    let want = vec![(1, "class-a".to_string(), 4.0), (2, "class-b".to_string(), 2.0)];
    // The contributions reach the teams through the mail worker, in no fixed order.
    let board = api.wait_for("/v1/leaderboards/class-race", 10, |v| v["entries"].as_array().is_some_and(|e| e.len() == 2) && rows(v) == want).await;
    assert_eq!((rows(&board), board["closed"].as_bool(), board["total"].as_u64()), (want.clone(), Some(false), Some(2)), "{board}");
    // The watcher's `top` push names the teams too.
    loop {
        let m = ann.until("top").await.pop().unwrap();
        // Earlier pushes may show the board on its way there.
        if rows(&m) == want {
            assert_eq!(m["board"].as_str(), Some("class-race"), "{m}");
            break;
        }
    }

    // The board says what it ranks; users' boards say so too.
    let (_, list) = api.get("/v1/leaderboards").await;
    let ranks: Vec<(&str, &str)> = list["leaderboards"].as_array().unwrap().iter().map(|b| (b["id"].as_str().unwrap(), b["ranks"].as_str().unwrap())).collect();
    assert!(ranks.contains(&("class-race", "teams")) && ranks.contains(&("xp-weekly", "users")), "{list}");
    let race = list["leaderboards"].as_array().unwrap().iter().find(|b| b["id"] == "class-race").unwrap();
    assert_eq!(race["award"], json!({ "badge": "race-winner", "top": 1 }), "{race}");
    // A team's rank and the teams around it; its standing in its own document.
    let (st, b) = api.get("/v1/leaderboards/class-race/teams/class-b?around=1").await;
    assert_eq!((st, b["rank"].as_u64(), b["score"].as_f64(), rows(&json!({ "entries": b["around"] }))), (200, Some(2), Some(2.0), want.clone()), "{b}");
    let (_, t) = api.get("/v1/teams/class-a").await;
    assert_eq!(t["standings"], json!([{ "board": "class-race", "period": "custom", "segment": null, "rank": 1, "score": 4.0 }]), "{t}");
    // Every error a client can cause on it.
    for (path, status, code) in [
        ("/v1/leaderboards/class-race/users/ann", 400, "ranks_teams"),
        ("/v1/leaderboards/xp-weekly/teams/class-a", 400, "ranks_users"),
        ("/v1/leaderboards/class-race/teams/no%20such", 400, "invalid_team"),
        ("/v1/leaderboards/class-race/teams/class-a?around=51", 400, "invalid_query"),
        ("/v1/leaderboards/nope/teams/class-a", 404, "not_found"),
    ] {
        let (st, e) = api.get(path).await;
        assert_eq!((st, e["error"].as_str()), (status, Some(code)), "{path}: {e}");
    }
    let (st, e) = api.call("POST", "/v1/leaderboards/class-race/standings", Some(&json!({ "users": ["ann"] }))).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("ranks_teams")), "{e}");
    let (st, unranked) = api.get("/v1/leaderboards/class-race/teams/class-z").await;
    assert_eq!((st, unranked["rank"].clone(), unranked["around"].clone()), (200, Value::Null, json!([])), "a team with no score: {unranked}");

    // The period closes: the standings are archived, the winning team gets its award and each
    // of its members is told (Ann on her socket), the other team's member is not.
    let told = loop {
        let m = ann.until("team_unlock").await.pop().unwrap();
        if m["badge"]["id"] == "race-winner" {
            break m;
        }
    };
    assert_eq!((told["team"].as_str(), told["count"].as_u64()), (Some("class-a"), Some(1)), "{told}");
    let periods = api.wait_for("/v1/leaderboards/class-race/periods", 10, |v| v["periods"].as_array().is_some_and(|p| p.len() == 1)).await;
    assert_eq!((periods["periods"][0]["awarded"].as_u64(), periods["periods"][0]["segments"].clone()), (Some(1), json!([["", 2]])), "{periods}");
    let (_, archived) = api.get("/v1/leaderboards/class-race?period=custom").await;
    assert_eq!((rows(&archived), archived["closed"].as_bool()), (want, Some(true)), "{archived}");
    let (_, a) = api.get("/v1/teams/class-a").await;
    assert!(badge_ids(&a).contains(&"race-winner"), "{a}");
    let (_, b) = api.get("/v1/teams/class-b").await;
    assert!(!badge_ids(&b).contains(&"race-winner"), "{b}");
    assert_eq!(a["standings"], json!([]), "no open period is left: {a}");
    let cy_since = json!({ "epoch": ann.welcome["epoch"], "offset": 0 });
    let mut cy = Client::connect(&s.url(), &token("cy"), Some(cy_since)).await;
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(500), cy.next()).await {
        assert!(m["type"] != "team_unlock", "cy's team did not win: {m}");
    }
    s.stop().await;
}

/// A team badge's gift (`give`): when the team earns it, every member (or only the members
/// who contributed to it) gets a badge of users of her own, once, with its XP and `unlock`
/// push naming the team; a rebuild of her log gives her the same.
#[tokio::test]
async fn a_team_badge_gives_its_members_or_its_contributors_a_badge_of_their_own() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    let gifts = r#"
[[badges]]
id = "five-together"
name = "Five answers together"
tier = "bronze"
xp = 15
rule = { kind = "awarded" }

[[badges]]
id = "helped-three"
name = "Helped to three correct answers"
tier = "silver"
rule = { kind = "awarded" }

[[teams.badges]]
id = "five-gift"
name = "Five answers, one each"
tier = "bronze"
rule = { kind = "count", event = "problem.answered", target = 5 }
give = { badge = "five-together" }

[[teams.badges]]
id = "three-correct"
name = "Three correct answers"
tier = "silver"
rule = { kind = "count", event = "problem.answered", when = { correct = true }, target = 3 }
give = { badge = "helped-three", to = "contributors" }
"#;
    std::fs::write(&file, format!("{}{gifts}", catalogue_with_teams(100, 10))).unwrap();
    let data = dir.path().join("data");
    let s = TestServer::start_with(&data, |c| c.catalogue = Some(file.clone())).await;
    let api = Api::new(&s, DEMO_KEY);
    assert_eq!(api.call("PUT", "/v1/teams/class-g", Some(&json!({ "name": "Class G" }))).await.0, 200);
    for u in ["ann", "bob", "cy", "dan"] {
        assert_eq!(api.call("POST", "/v1/teams/class-g/members", Some(&json!({ "user_id": u }))).await.0, 200);
    }
    let mut ann = s.connect("ann").await;
    // Ann: one correct answer; Bob: two wrong ones; Cy: two correct ones; Dan: nothing. Five
    // answers, three of them correct (Ann's and Cy's).
    api.ingest(vec![http_answer("a-1", "ann", "ex-1", true), http_answer("b-1", "bob", "ex-1", false), http_answer("c-1", "cy", "ex-1", true)]).await;
    api.ingest(vec![http_answer("b-2", "bob", "ex-2", false), http_answer("c-2", "cy", "ex-2", true)]).await;
    let t = api.wait_for("/v1/teams/class-g", 10, |t| t["badges"].as_array().is_some_and(|b| b.iter().any(|b| b["id"] == "three-correct") && b.iter().any(|b| b["id"] == "five-gift"))).await;
    assert_eq!(t["xp"], 5, "{t}");
    // Ann is told the team's badge and given hers, on her socket, in that order.
    let unlock = loop {
        let m = ann.next().await;
        if m["type"] == "unlock" && m["badge"]["id"] == "helped-three" {
            break m;
        }
    };
    assert_eq!(unlock["key"], "class-g", "the unlock names the team that gave it: {unlock}");
    // Who got what, once each: everyone the five answers' gift, only Ann and Cy the other.
    let owned = |u: &Value| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = u["badges"].as_array().unwrap().iter().map(|b| (b["id"].as_str().unwrap().to_string(), b["count"].as_u64().unwrap())).collect();
        v.sort();
        v
    };
    let want = |helped: bool| -> Vec<(String, u64)> {
        let mut v = vec![("five-together".to_string(), 1)];
        if helped {
            v.push(("helped-three".to_string(), 1));
        }
        v
    };
    for (user, helped) in [("ann", true), ("bob", false), ("cy", true), ("dan", false)] {
        let u = api.wait_for(&format!("/v1/users/{user}"), 10, |u| u["badges"].as_array().is_some_and(|b| b.iter().any(|b| b["id"] == "five-together"))).await;
        let gifts: Vec<(String, u64)> = owned(&u).into_iter().filter(|(id, _)| id == "five-together" || id == "helped-three").collect();
        assert_eq!(gifts, want(helped), "{user}: {u}");
        if user == "dan" {
            assert_eq!(u["xp"], 15, "the gift's XP, and nothing else: {u}");
        }
    }
    // Stopped, and her log replayed: the same badges from the records that told her.
    s.stop().await;
    let out = Command::new(env!("CARGO_BIN_EXE_accolade")).args(["replay", "--data-dir", data.to_str().unwrap(), "--catalogue", file.to_str().unwrap()]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("0 differences"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}

/// A member's retracted event is retracted from her teams too: the team's facts are
/// recomputed without her contribution, and a team badge it earned and they no longer hold is
/// taken away, told to each member (`team_revoked`) and to the webhooks (`revoked`, naming the
/// team); a retraction sent again changes nothing more, and the logs replay clean.
#[tokio::test]
async fn a_retracted_event_is_taken_back_from_the_teams_it_counted_for() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    std::fs::write(&file, catalogue_with_teams(100, 10)).unwrap();
    let data = dir.path().join("data");
    let s = TestServer::start_with(&data, |c| c.catalogue = Some(file.clone())).await;
    let api = Api::new(&s, DEMO_KEY);
    assert_eq!(api.call("PUT", "/v1/teams/class-r", Some(&json!({ "name": "Class R" }))).await.0, 200);
    for u in ["ann", "bob"] {
        assert_eq!(api.call("POST", "/v1/teams/class-r/members", Some(&json!({ "user_id": u }))).await.0, 200);
    }
    let (hooks, addr) = common::receiver::Receiver::start().await;
    let (st, h) = api.call("POST", "/v1/webhooks", Some(&json!({ "url": format!("http://{addr}/hook"), "events": ["revoked"] }))).await;
    assert_eq!(st, 201, "{h}");
    let mut bob = s.connect("bob").await;
    api.ingest(vec![http_answer("a-1", "ann", "ex-1", true), http_answer("a-2", "ann", "ex-2", true), http_answer("a-3", "ann", "ex-3", true)]).await;
    api.ingest(vec![http_answer("b-1", "bob", "ex-1", true), http_answer("b-2", "bob", "ex-2", true)]).await;
    let t = api.wait_for("/v1/teams/class-r", 10, |t| t["events"] == 6).await;
    assert_eq!(badge_ids(&t), vec!["team-five", "two-members"], "{t}");
    let answers = |t: &Value| t["stats"].as_array().unwrap().iter().find(|s| s["describe"].as_str().is_some_and(|d| d == "number of problem.answered")).map(|s| s["value"].clone());
    assert_eq!(answers(&t), Some(json!(5.0)), "{t}");

    let retract = json!({ "event_id": "a-2", "reason": "answer copied", "xp": "claw_back" });
    let (st, r) = api.call("POST", "/v1/users/ann/retractions", Some(&retract)).await;
    assert_eq!((st, r["status"].as_str()), (200, Some("retracted")), "{r}");
    // The team's count falls to four and its five-answer badge with it; two members still
    // answered.
    let t = api.wait_for("/v1/teams/class-r", 10, |t| t["badges"].as_array().is_some_and(|b| b.len() == 1)).await;
    assert_eq!((badge_ids(&t), answers(&t)), (vec!["two-members"], Some(json!(4.0))), "{t}");
    // Bob, whose events were not retracted, is told his team lost it, once, in his history.
    let told = bob.until("team_revoked").await.pop().unwrap();
    assert_eq!((told["team"].as_str(), told["badge"]["id"].as_str(), told["count"].as_u64(), told["cause"].as_str()), (Some("class-r"), Some("team-five"), Some(1), Some("retracted")), "{told}");
    assert!(told["offset"].as_u64().is_some(), "{told}");
    // The endpoint gets one `revoked` naming the team (and none for Ann, who lost no badge).
    let got = hooks.wait("the team's revocation", |g| !g.is_empty()).await;
    assert_eq!((got[0].json["type"].as_str(), got[0].json["team_id"].as_str(), got[0].json["data"]["badge"]["id"].as_str()), (Some("revoked"), Some("class-r"), Some("team-five")), "{got:?}");
    // Sent again: nothing more, for her or the team.
    let (st, r) = api.call("POST", "/v1/users/ann/retractions", Some(&retract)).await;
    assert_eq!((st, r["status"].as_str()), (200, Some("already_retracted")), "{r}");
    tokio::time::sleep(Duration::from_millis(1500)).await; // the mail worker looks every second
    let (_, again) = api.get("/v1/teams/class-r").await;
    assert_eq!((badge_ids(&again), answers(&again)), (vec!["two-members"], Some(json!(4.0))), "{again}");
    assert_eq!(hooks.got().len(), 1, "one notification: {:?}", hooks.got());
    s.stop().await;
    let out = Command::new(env!("CARGO_BIN_EXE_accolade")).args(["replay", "--data-dir", data.to_str().unwrap(), "--catalogue", file.to_str().unwrap()]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("0 differences"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}
