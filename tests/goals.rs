//! Assigned goals end to end: a teacher gives a student a goal; the student's actor tracks it
//! like a badge; completion and a missed due date reach both sides, online and offline (the
//! assigner's `notice` waits in their history); cancel; every error a client can cause.

mod common;

use common::*;
use serde_json::{json, Value};

fn read_three() -> Value {
    json!({ "kind": "count", "event": "article.read", "distinct": "article", "target": 3 })
}

fn read(id: &str, article: &str) -> Value {
    event(id, "article.read", json!({ "article": article }))
}

/// Polls a goal until `done` says so, for at most 30 s.
async fn wait_goal(api: &Api, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    api.wait_for(&format!("/v1/goals/{id}"), 30, done).await
}

async fn next_of(c: &mut Client, ty: &str) -> Value {
    c.until(ty).await.pop().unwrap()
}

#[tokio::test]
async fn a_completed_goal_reaches_the_student_at_once_and_the_teacher_online_or_later() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.goal_tick_ms = 50).await;
    let api = Api::new(&s, DEMO_KEY);
    // The student read one article before: it does not count towards the goal.
    let mut student = s.connect("stu").await;
    student.send(&read("before", "a0")).await;
    next_of(&mut student, "ack").await;
    let mut teacher = s.connect("tea").await;

    let (st, g) = api.call("POST", "/v1/goals", Some(&json!({ "id": "reading", "assignee": "stu", "assigner": "tea", "title": "Read three articles", "criterion": read_three() }))).await;
    assert_eq!(st, 201, "{g}");
    assert_eq!((g["status"].as_str(), g["assignee"].as_str(), g["due_at"].clone()), (Some("open"), Some("stu"), Value::Null));
    let assigned = next_of(&mut student, "goal_assigned").await;
    assert_eq!((assigned["goal"]["id"].as_str(), assigned["goal"]["assigner"].as_str()), (Some("reading"), Some("tea")));
    // Sending the same goal again is answered with it; other content under its id is refused.
    let (st, again) = api.call("POST", "/v1/goals", Some(&json!({ "id": "reading", "assignee": "stu", "assigner": "tea", "title": "Read three articles", "criterion": read_three() }))).await;
    assert_eq!((st, again["status"].as_str()), (200, Some("open")));
    let (st, clash) = api.call("POST", "/v1/goals", Some(&json!({ "id": "reading", "assignee": "stu", "assigner": "tea", "title": "Read four", "criterion": read_three() }))).await;
    assert_eq!((st, clash["error"].as_str()), (409, Some("goal_exists")));

    // Progress, part by part, like a badge's.
    student.send(&read("r1", "a1")).await;
    student.send(&read("r2", "a2")).await;
    next_of(&mut student, "ack").await;
    next_of(&mut student, "ack").await;
    let g = wait_goal(&api, "reading", |g| g["progress"]["rule"]["current"] == 2.0).await;
    assert_eq!((g["progress"]["rule"]["target"].as_f64(), g["status"].as_str()), (Some(3.0), Some("open")), "{g}");

    student.send(&read("r3", "a3")).await;
    let done = next_of(&mut student, "goal_completed").await;
    assert_eq!((done["goal"]["id"].as_str(), done["event_id"].as_str()), (Some("reading"), Some("r3")));
    // The teacher, online, gets a notice.
    let notice = next_of(&mut teacher, "notice").await;
    assert_eq!((notice["kind"].as_str(), notice["goal"]["id"].as_str(), notice["goal"]["assignee"].as_str()), (Some("goal_completed"), Some("reading"), Some("stu")));
    let g = wait_goal(&api, "reading", |g| g["assigner_notified"] == true).await;
    assert_eq!(g["status"], "completed");
    assert!(g.get("progress").is_none(), "{g}");

    // An offline teacher finds the notice in their history when they come back.
    let epoch = teacher.welcome["epoch"].clone();
    let offset = notice["offset"].as_u64().unwrap();
    drop(teacher);
    let (st, _) = api.call("POST", "/v1/goals", Some(&json!({ "id": "two", "assignee": "stu", "assigner": "tea", "title": "Two more", "criterion": read_three() }))).await;
    assert_eq!(st, 201);
    for (i, a) in ["b1", "b2", "b3"].iter().enumerate() {
        student.send(&read(&format!("s{i}"), a)).await;
    }
    next_of(&mut student, "goal_completed").await;
    wait_goal(&api, "two", |g| g["assigner_notified"] == true).await;
    let mut back = Client::connect(&s.url(), &token("tea"), Some(json!({ "epoch": epoch, "offset": offset }))).await;
    assert_eq!(back.welcome["recovered"], true);
    let missed = next_of(&mut back, "notice").await;
    assert_eq!((missed["goal"]["id"].as_str(), missed["offset"].as_u64()), (Some("two"), Some(offset + 1)));

    // Lists by assignee and by assigner.
    let (_, by_student) = api.get("/v1/goals?assignee=stu").await;
    let (_, by_teacher) = api.get("/v1/goals?assigner=tea&status=completed").await;
    let ids = |v: &Value| v["goals"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!((ids(&by_student), ids(&by_teacher)), (vec!["reading".to_string(), "two".into()], vec!["reading".to_string(), "two".into()]));
    let (_, none) = api.get("/v1/goals?assigner=stu").await;
    assert!(ids(&none).is_empty());
    s.stop().await;

    // After a restart: the goals, their ends and the notices are all still there, told once.
    let s = TestServer::start_with(dir.path(), |c| c.goal_tick_ms = 50).await;
    let api = Api::new(&s, DEMO_KEY);
    let (_, g) = api.get("/v1/goals/two").await;
    assert_eq!((g["status"].as_str(), g["assigner_notified"].as_bool()), (Some("completed"), Some(true)));
    let (_, log) = api.get("/v1/users/tea/events").await;
    let notices = log["events"].as_array().unwrap().iter().filter(|e| e["event_type"] == "accolade.notice").count();
    assert_eq!(notices, 2, "{log}");
    let report = accolade::replay::check_all(&s.shared.store, &s.shared.catalogues).unwrap();
    assert!(report.differences.is_empty(), "{:?}", report.differences);
    s.stop().await;
}

#[tokio::test]
async fn a_goal_past_due_is_missed_and_both_sides_are_told_and_a_cancelled_one_stays_cancelled() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.goal_tick_ms = 50).await;
    let api = Api::new(&s, DEMO_KEY);
    let mut student = s.connect("sam").await;
    let mut teacher = s.connect("tom").await;
    let due = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (st, g) = api.call("POST", "/v1/goals", Some(&json!({ "id": "soon", "assignee": "sam", "assigner": "tom", "title": "Quick", "criterion": read_three(), "due_at": due }))).await;
    assert_eq!(st, 201, "{g}");
    student.send(&read("one", "x")).await;
    let missed = next_of(&mut student, "goal_missed").await;
    assert_eq!(missed["goal"]["id"], "soon");
    let notice = next_of(&mut teacher, "notice").await;
    assert_eq!((notice["kind"].as_str(), notice["goal"]["id"].as_str()), (Some("goal_missed"), Some("soon")));
    let g = wait_goal(&api, "soon", |g| g["assigner_notified"] == true).await;
    assert_eq!(g["status"], "missed");

    let (_, _) = api.call("POST", "/v1/goals", Some(&json!({ "id": "dropped", "assignee": "sam", "assigner": "tom", "title": "Never mind", "criterion": read_three() }))).await;
    let (st, c) = api.call("DELETE", "/v1/goals/dropped", None).await;
    assert_eq!((st, c["status"].as_str()), (200, Some("cancelled")));
    for (i, a) in ["p", "q", "r"].iter().enumerate() {
        student.send(&read(&format!("c{i}"), a)).await;
        next_of(&mut student, "ack").await;
    }
    let (_, g) = api.get("/v1/goals/dropped").await;
    assert_eq!(g["status"], "cancelled");
    // Cancelling an ended goal leaves it as it ended.
    let (st, g) = api.call("DELETE", "/v1/goals/soon", None).await;
    assert_eq!((st, g["status"].as_str()), (200, Some("missed")));
    s.stop().await;
}

#[tokio::test]
async fn every_error_a_client_can_cause_with_goals() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), two_tenants).await;
    let api = Api::new(&s, DEMO_KEY);
    let ok = json!({ "assignee": "a", "assigner": "b", "title": "T", "criterion": read_three() });
    let with = |k: &str, v: Value| {
        let mut o = ok.clone();
        o[k] = v;
        o
    };
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let table = [
        (json!({ "assignee": "a" }), 400, "invalid_body", "missing field"),
        (with("color", json!("red")), 400, "invalid_body", "unknown field `color`"),
        (with("assignee", json!("")), 400, "invalid_body", "assignee"),
        (with("title", json!(" ")), 400, "invalid_body", "title"),
        (with("criterion", json!("read things")), 400, "invalid_body", "criterion"),
        (with("id", json!("has space")), 400, "invalid_body", "id"),
        (with("due_at", json!("tomorrow")), 400, "invalid_body", "RFC 3339"),
        (with("due_at", json!(past)), 400, "invalid_body", "in the past"),
        (with("criterion", json!({ "kind": "count", "event": "quiz", "target": 1 })), 422, "invalid_goal", "unknown event type `quiz`"),
        (with("criterion", json!({ "kind": "count", "event": "login", "targte": 1 })), 422, "invalid_goal", "targte"),
        (with("criterion", json!({ "kind": "awarded" })), 422, "invalid_goal", "events can meet"),
    ];
    for (body, status, code, detail) in table {
        let (st, v) = api.call("POST", "/v1/goals", Some(&body)).await;
        assert_eq!((st, v["error"].as_str()), (status, Some(code)), "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(detail), "{body}: {v}");
    }
    let (_, v) = api.call("POST", "/v1/goals", Some(&with("criterion", json!({ "kind": "count", "event": "quiz", "target": 1 })))).await;
    assert_eq!(v["field"], "criterion.event");
    for (method, path, status, code) in [
        ("GET", "/v1/goals", 400, "invalid_query"),
        ("GET", "/v1/goals?assignee=a&status=late", 400, "invalid_query"),
        ("GET", "/v1/goals/nope", 404, "not_found"),
        ("DELETE", "/v1/goals/nope", 404, "not_found"),
    ] {
        let (st, v) = api.call(method, path, None).await;
        assert_eq!((st, v["error"].as_str()), (status, Some(code)), "{method} {path}: {v}");
    }
    // A goal of one tenant is invisible to another.
    let (st, _) = api.call("POST", "/v1/goals", Some(&with("id", json!("mine")))).await;
    assert_eq!(st, 201);
    let acme = api.with_key(Some(ACME_KEY));
    let (st, v) = acme.get("/v1/goals/mine").await;
    assert_eq!((st, v["error"].as_str()), (404, Some("not_found")));
    let (_, v) = acme.get("/v1/goals?assignee=a").await;
    assert_eq!(v["goals"], json!([]));
    // Clients cannot use the ids the server keeps for its own records.
    let mut c = s.connect("a").await;
    c.send(&read("accolade.notice:goal:mine:completed", "x")).await;
    let e = next_of(&mut c, "error").await;
    assert_eq!(e["code"], "invalid_event");
    s.stop().await;
}
