//! The analytics API end to end (docs/analytics.md): every `/v1/analytics/...` route over a
//! known stream whose figures are worked out by hand below, the same figures after a restart
//! (rebuilt from the stored records), backfilled awards counted and marked, another tenant's
//! key seeing none of it, bad parameters refused with clear errors, and an export resumed from
//! a cursor.

mod common;

use common::*;
use serde_json::{json, Value};

/// A small catalogue in Paris time (UTC+1 in November), so that a day in the answers is a
/// local day: three steps of a ladder and a quiz badge. Events may be up to ten years late,
/// so the stream can sit on fixed dates in the past.
const CATALOGUE: &str = r#"
version = 1
name = "analytics test"

[settings]
late_bound = "3650d"
default_timezone = "Europe/Paris"

[levels]
base = 100.0
exponent = 1.5
max_level = 100

[event_types."lesson.done"]
client = true

[event_types."quiz.passed"]
client = true

[[badges]]
id = "step-1"
name = "Step one"
tier = "bronze"
rule = { kind = "count", event = "lesson.done", target = 1 }

[[badges]]
id = "step-2"
name = "Step two"
tier = "silver"
rule = { kind = "count", event = "lesson.done", target = 2 }

[[badges]]
id = "step-3"
name = "Step three"
tier = "gold"
rule = { kind = "count", event = "lesson.done", target = 3 }

[[badges]]
id = "quiz"
name = "Quizzer"
tier = "bronze"
rule = { kind = "count", event = "quiz.passed", target = 1 }
"#;

fn ev(id: &str, user: &str, ty: &str, at: &str) -> Value {
    json!({ "event_id": id, "user_id": user, "event_type": ty, "occurred_at": at })
}

/// The stream (times UTC; Paris is an hour ahead):
/// - ann: lessons at 11-02 09:00 and 09:10 (step-1, then step-2 ten minutes later), a lesson
///   at 11-03 09:00 (step-3, 23 h 50 min after step-2) and a quiz at 11-03 10:00 (quiz, 25 h
///   after her first event);
/// - bob: lessons at 11-02 23:30 and 11-03 00:30, both on 11-03 in Paris (step-1, step-2 an
///   hour later);
/// - cy: a quiz at 11-04 12:00 (quiz, at her first event);
/// - ann's first event sent again (a duplicate), an event of an unknown type (refused by cy's
///   actor) and one without a user (refused by the ingest route), both dead letters.
fn stream() -> Vec<Value> {
    vec![
        ev("a1", "ann", "lesson.done", "2026-11-02T09:00:00Z"),
        ev("a2", "ann", "lesson.done", "2026-11-02T09:10:00Z"),
        ev("a3", "ann", "lesson.done", "2026-11-03T09:00:00Z"),
        ev("a4", "ann", "quiz.passed", "2026-11-03T10:00:00Z"),
        ev("b1", "bob", "lesson.done", "2026-11-02T23:30:00Z"),
        ev("b2", "bob", "lesson.done", "2026-11-03T00:30:00Z"),
        ev("c1", "cy", "quiz.passed", "2026-11-04T12:00:00Z"),
        ev("a1", "ann", "lesson.done", "2026-11-02T09:00:00Z"),
        ev("x1", "cy", "no.such.type", "2026-11-04T12:00:00Z"),
        json!({ "event_id": "x2", "event_type": "lesson.done", "occurred_at": "2026-11-04T12:00:00Z" }),
    ]
}

async fn start(dir: &std::path::Path) -> TestServer {
    let file = dir.join("catalogue.toml");
    if !file.exists() {
        std::fs::write(&file, CATALOGUE).unwrap();
    }
    let data = dir.join("data");
    TestServer::start_with(&dir.to_path_buf(), |c| {
        two_tenants(c);
        c.catalogue = Some(file);
        c.data_dir = data;
    })
    .await
}

fn row<'a>(doc: &'a Value, badge: &str) -> &'a Value {
    doc["badges"].as_array().unwrap().iter().find(|b| b["badge"] == badge).unwrap_or_else(|| panic!("no {badge} in {doc}"))
}

/// Whether a histogram bucket `{low_ms, high_ms}` holds `ms`.
fn holds(q: &Value, ms: u64) -> bool {
    q["low_ms"].as_u64().unwrap() <= ms && ms < q["high_ms"].as_u64().unwrap()
}

const RANGE: &str = "from=2026-11-02&to=2026-11-04";

/// The figures of the stream, as worked out by hand in `stream`'s comment.
async fn check_figures(api: &Api) {
    let (st, r) = api.get("/v1/analytics/rarity?from=2026-11-03&to=2026-11-03").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["users"], 3);
    assert_eq!(r["active_users"], 2, "ann and bob were active on 11-03 in Paris: {r}");
    let order: Vec<&str> = r["badges"].as_array().unwrap().iter().map(|b| b["badge"].as_str().unwrap()).collect();
    assert_eq!(order, ["step-3", "quiz", "step-1", "step-2"], "rarest first, ties by id");
    for (badge, holders, period) in [("step-1", 2, 1), ("step-2", 2, 1), ("step-3", 1, 1), ("quiz", 2, 1)] {
        let b = row(&r, badge);
        assert_eq!((b["holders"].as_u64(), b["period_holders"].as_u64()), (Some(holders), Some(period)), "{badge}: {b}");
        assert!((b["share"].as_f64().unwrap() - holders as f64 / 3.0).abs() < 1e-9, "{b}");
        assert!((b["period_share"].as_f64().unwrap() - 0.5).abs() < 1e-9, "{b}");
        assert_eq!(b["backfilled"], 0);
    }

    let (st, a) = api.get(&format!("/v1/analytics/activity?{RANGE}")).await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["timezone"], "Europe/Paris");
    let days: Vec<(String, u64, u64, u64, u64, u64, u64)> = a["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let n = |k: &str| d[k].as_u64().unwrap();
            (d["date"].as_str().unwrap().to_string(), n("dau"), n("wau"), n("mau"), n("events"), n("unlocks"), n("new_users"))
        })
        .collect();
    assert_eq!(
        days,
        [
            ("2026-11-02".to_string(), 1, 1, 1, 2, 2, 1),
            ("2026-11-03".to_string(), 2, 2, 2, 4, 4, 1),
            ("2026-11-04".to_string(), 1, 3, 3, 1, 1, 1),
        ]
    );

    let (st, f) = api.get("/v1/analytics/funnel?badges=step-1,step-2,step-3").await;
    assert_eq!(st, 200, "{f}");
    let steps = f["steps"].as_array().unwrap();
    let users: Vec<u64> = steps.iter().map(|s| s["users"].as_u64().unwrap()).collect();
    assert_eq!(users, [2, 2, 1]);
    assert!(steps[0]["median_from_previous"].is_null());
    // Ten minutes (ann) and an hour (bob): the lower median is ann's.
    assert!(holds(&steps[1]["median_from_previous"], 600_000), "{f}");
    assert!(holds(&steps[2]["median_from_previous"], (23 * 60 + 50) * 60_000), "{f}");
    assert!((steps[2]["conversion"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    // The same ladder by its id prefix.
    let (_, by_prefix) = api.get("/v1/analytics/funnel?ladder=step-").await;
    assert_eq!(by_prefix, f);

    let (st, t) = api.get("/v1/analytics/time-to-unlock?badge=quiz").await;
    assert_eq!(st, 200, "{t}");
    let q = &t["badges"][0];
    assert_eq!(q["count"], 2);
    // cy at once, ann after 25 hours.
    assert!(holds(&q["median"], 0), "{t}");
    assert!(holds(&q["p90"], 25 * 3_600_000), "{t}");
    let buckets: u64 = q["buckets"].as_array().unwrap().iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(buckets, 2);
    let (_, all) = api.get("/v1/analytics/time-to-unlock").await;
    assert_eq!(all["badges"].as_array().unwrap().len(), 4);
    assert_eq!(row(&all, "step-3")["count"], 1);
}

#[tokio::test]
async fn every_analytics_route_answers_the_figures_of_a_known_stream_and_again_after_a_restart() {
    let dir = tmp();
    let s = start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let r = api.ingest(stream()).await;
    assert_eq!((r["accepted"].as_u64(), r["duplicates"].as_u64(), r["rejected"].as_u64()), (Some(7), Some(1), Some(2)), "{r}");
    check_figures(&api).await;

    let (st, h) = api.get("/v1/analytics/health").await;
    assert_eq!(st, 200, "{h}");
    assert_eq!((h["accepted"].as_u64(), h["duplicates"].as_u64()), (Some(7), Some(1)));
    assert!((h["duplicate_rate"].as_f64().unwrap() - 1.0 / 8.0).abs() < 1e-9, "{h}");
    assert_eq!(h["rejected"], json!({ "invalid_event": 1, "unknown_event_type": 1 }));
    assert_eq!(h["dead_letters"], 2);
    assert_eq!(h["catalogue_version"], 1);
    let per_minute: u64 = h["events_per_minute"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(per_minute, 7);
    assert!(h["unlock_latency_ms"]["p50"].is_array(), "{h}");
    assert_eq!(h["backfill_jobs"], json!([]));

    // A restart rebuilds the figures from the stored records: the same answers, nothing twice.
    s.stop().await;
    let s = start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    check_figures(&api).await;
    // The stream sent again after the restart changes nothing: every id is a duplicate.
    let r = api.ingest(stream()).await;
    assert_eq!(r["accepted"], 0, "{r}");
    check_figures(&api).await;

    // A new badge backfilled: its awards count as holders and unlocks, marked as backfilled.
    let badge = json!({ "name": "Lesson fan", "tier": "silver", "rule": { "kind": "count", "event": "lesson.done", "target": 2 } });
    let (st, v) = api.call("PUT", "/v1/catalogue/badges/lesson-fan", Some(&badge)).await;
    assert_eq!(st, 201, "{v}");
    let job = v["job"]["id"].as_u64().unwrap();
    api.wait_for(&format!("/v1/jobs/{job}"), 30, |j| j["status"] == "done").await;
    let (_, r) = api.get("/v1/analytics/rarity").await;
    let fan = row(&r, "lesson-fan");
    assert_eq!((fan["holders"].as_u64(), fan["backfilled"].as_u64()), (Some(2), Some(2)), "ann and bob: {fan}");
    let (_, a) = api.get("/v1/analytics/activity").await;
    let today = a["days"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((today["unlocks"].as_u64(), today["backfilled_unlocks"].as_u64()), (Some(2), Some(2)), "{today}");
    let (_, h) = api.get("/v1/analytics/health").await;
    assert_eq!(h["catalogue_version"], 2);
    assert_eq!(h["backfill_jobs"][0]["id"], job);
    // And they survive a restart as they were.
    s.stop().await;
    let s = start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let (_, again) = api.get("/v1/analytics/rarity").await;
    assert_eq!(again["badges"], r["badges"]);
    s.stop().await;
}

#[tokio::test]
async fn another_tenants_key_sees_none_of_it_and_bad_parameters_are_refused_clearly() {
    let dir = tmp();
    let s = start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    api.ingest(stream()).await;
    let acme = api.with_key(Some(ACME_KEY));
    let (st, r) = acme.get("/v1/analytics/rarity").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["users"], 0);
    assert!(r["badges"].as_array().unwrap().iter().all(|b| b["holders"] == 0), "{r}");
    let (_, a) = acme.get(&format!("/v1/analytics/activity?{RANGE}")).await;
    assert!(a["days"].as_array().unwrap().iter().all(|d| d["events"] == 0 && d["dau"] == 0), "{a}");
    let (_, h) = acme.get("/v1/analytics/health").await;
    assert_eq!((h["accepted"].as_u64(), h["dead_letters"].as_u64()), (Some(0), Some(0)), "{h}");
    let (st, body) = export(&acme, "layer=events").await;
    assert_eq!((st, body.as_str()), (200, ""), "acme's export is empty");
    // A cursor of the demo tenant's export is not one of acme's.
    let (_, demo_rows) = export(&api, "layer=events&limit=1").await;
    let cursor = first_cursor(&demo_rows);
    let (st, body) = export(&acme, &format!("cursor={cursor}")).await;
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("invalid_query"), "{body}");

    for (path, status, code, says) in [
        ("/v1/analytics/rarity?from=2026-11-04&to=2026-11-02", 400, "invalid_query", "inverted"),
        ("/v1/analytics/activity?from=2025-01-01&to=2026-11-30", 400, "invalid_query", "at most 366"),
        ("/v1/analytics/activity?from=yesterday", 400, "invalid_query", "YYYY-MM-DD"),
        ("/v1/analytics/funnel?badges=step-1,nope", 404, "unknown_badge", "nope"),
        ("/v1/analytics/funnel?badges=step-1", 400, "invalid_query", "2 to 20"),
        ("/v1/analytics/funnel", 400, "invalid_query", "ladder"),
        ("/v1/analytics/time-to-unlock?badge=nope", 404, "unknown_badge", "nope"),
        ("/v1/analytics/export?layer=users", 400, "invalid_query", "layer"),
        ("/v1/analytics/export?format=xml", 400, "invalid_query", "format"),
        ("/v1/analytics/export?from=2026-11-04T00:00:00Z&to=2026-11-02T00:00:00Z", 400, "invalid_query", "inverted"),
        ("/v1/analytics/export?from=2024-01-01T00:00:00Z&to=2026-11-02T00:00:00Z", 400, "invalid_query", "366"),
        ("/v1/analytics/export?cursor=not-a-cursor", 400, "invalid_query", "cursor"),
    ] {
        let (st, v) = api.get(path).await;
        assert_eq!((st, v["error"].as_str()), (status, Some(code)), "{path}: {v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{path}: {v}");
    }
    s.stop().await;
}

async fn export(api: &Api, query: &str) -> (u16, String) {
    let res = api.http.get(format!("{}/v1/analytics/export?{query}", api.base)).bearer_auth(api.key.as_deref().unwrap()).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

fn lines(body: &str) -> Vec<Value> {
    body.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

fn first_cursor(body: &str) -> String {
    lines(body)[0]["cursor"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_log_exports_in_three_layers_as_ndjson_and_csv_and_resumes_from_a_cursor() {
    let dir = tmp();
    let s = start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    api.ingest(stream()).await;

    let (st, body) = export(&api, "layer=events").await;
    assert_eq!(st, 200);
    let all = lines(&body);
    let ids: Vec<&str> = all.iter().map(|r| r["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a1", "a2", "a3", "a4", "b1", "b2", "c1"], "log order: user, then sequence; the duplicate and the refusal are not events");
    assert_eq!(all[4]["occurred_at"], "2026-11-02T23:30:00.000Z");
    assert_eq!(all[4]["seq"], 1);

    // Cut after three records, resumed from the last cursor: the rest, nothing twice.
    let (_, first) = export(&api, "layer=events&limit=3").await;
    let first = lines(&first);
    assert_eq!(first.len(), 3);
    let cursor = first[2]["cursor"].as_str().unwrap();
    let (_, rest) = export(&api, &format!("layer=events&cursor={cursor}")).await;
    let rest = lines(&rest);
    let resumed: Vec<&Value> = first.iter().chain(rest.iter()).collect();
    assert_eq!(resumed, all.iter().collect::<Vec<_>>());

    let (_, outcomes) = export(&api, "layer=outcomes").await;
    let outcomes = lines(&outcomes);
    let unlocks: Vec<u64> = outcomes.iter().map(|o| o["unlocks"].as_u64().unwrap()).collect();
    assert_eq!(unlocks, [1, 1, 1, 1, 1, 1, 1]);
    assert!(outcomes.iter().all(|o| o["status"] == "accepted" && o["catalogue_version"] == 1));

    let (st, csv) = export(&api, "layer=unlocks&format=csv").await;
    assert_eq!(st, 200);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "cursor,user_id,seq,event_id,badge,at,backfilled");
    let badges: Vec<&str> = rows[1..].iter().map(|r| r.split(',').nth(4).unwrap()).collect();
    assert_eq!(badges, ["step-1", "step-2", "step-3", "quiz", "step-1", "step-2", "quiz"]);
    assert!(rows[1].ends_with(",ann,1,a1,step-1,2026-11-02T09:00:00.000Z,false"), "{}", rows[1]);

    // The time range is on the time received: all of it was received just now.
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, recent) = export(&api, &format!("layer=events&from={hour_ago}")).await;
    assert_eq!(lines(&recent).len(), 7);
    let (_, none) = export(&api, &format!("layer=events&to={hour_ago}")).await;
    assert_eq!(none, "");
    s.stop().await;
}

/// `kill -9` after the stream was acknowledged: the users' analytics records are those of
/// their first snapshots, and the rest is in their log tails, which the rebuild folds in. The
/// figures come back exactly, nothing lost and nothing twice.
#[tokio::test]
async fn the_figures_survive_kill_9_exactly() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    std::fs::write(&file, CATALOGUE).unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let args = ["--catalogue", file.to_str().unwrap()];
    let mut server = start_with(&data, port, &args).await;
    let api = Api::demo_at(port);
    let r = api.ingest(stream()).await;
    assert_eq!(r["accepted"], 7, "{r}");
    check_figures(&api).await;
    server.kill9();
    let _server = start_with(&data, port, &args).await;
    check_figures(&api).await;
}
