//! The HTTP API end to end: every route's happy path and errors, and that one tenant's key never
//! reaches another tenant's data. Runs a real server on loopback with two tenants.

mod common;

use common::*;
use serde_json::{json, Value};

fn video(id: &str, user: &str, seconds: u64) -> Value {
    http_event(id, user, "video.watched", json!({ "video": "v1", "playlist": "algebra", "seconds": seconds }))
}

/// Fills `{...}` path parameters with harmless values.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { if seg.contains("id") { "1" } else { "x" } } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_documented_route_exists_and_refuses_a_missing_or_wrong_key() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), two_tenants).await;
    let api = Api::new(&s, DEMO_KEY);
    let (status, doc) = api.with_key(None).get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 18, "{} paths", paths.len());
    let mut secured = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let url = concrete(path);
            if op.get("security").is_none() {
                // Operations without a key: they answer (and are not the router's 404).
                let (st, body) = api.with_key(None).call(&method.to_uppercase(), &url, None).await;
                assert!(st == 200 || st == 503, "{method} {url}: {st} {body}");
                continue;
            }
            secured += 1;
            for key in [None, Some("not-a-key-of-anyone-at-all")] {
                let (st, body) = api.with_key(key).call(&method.to_uppercase(), &url, Some(&json!({}))).await;
                assert_eq!(st, 401, "{method} {url} with {key:?}: {body}");
                assert_eq!(body["error"], "unauthorized", "{body}");
            }
        }
    }
    assert!(secured >= 18, "{secured}");
    // An unknown route is a JSON 404, not an empty body.
    let (st, body) = api.get("/v1/nope").await;
    assert_eq!((st, body["error"].as_str()), (404, Some("no_route")));
    s.stop().await;
}

#[tokio::test]
async fn ingest_reports_each_event_and_pushes_to_open_sockets() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let mut sock = s.connect("alice").await;
    let r = api
        .ingest(vec![
            video("v-1", "alice", 1200),
            video("v-1", "alice", 1200),
            // Server-only over the socket, allowed from the backend.
            http_event("p-1", "alice", "exercise.proficient", json!({ "exercise": "addition-1" })),
            http_event("u-1", "alice", "no.such.type", json!({})),
            json!({ "event_id": "m-1", "event_type": "login", "occurred_at": now_rfc3339() }),
            json!(["not", "an", "object"]),
            json!({ "event_id": "t-1", "user_id": "alice", "tenant_id": "acme", "event_type": "login", "occurred_at": now_rfc3339() }),
            http_event("b-1", "bob", "problem.answered", json!({ "exercise": "x", "correct": "yes", "seconds": 3 })),
        ])
        .await;
    let res = r["results"].as_array().unwrap();
    let status: Vec<&str> = res.iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["accepted", "duplicate", "accepted", "rejected", "rejected", "rejected", "rejected", "rejected"], "{r}");
    assert_eq!((r["accepted"].as_u64(), r["duplicates"].as_u64(), r["rejected"].as_u64()), (Some(2), Some(1), Some(5)));
    assert_eq!(res[0]["xp"], 160);
    assert_eq!(res[0]["unlocks"], json!(["act-one-scene-one", "nice-listener"]));
    let codes: Vec<&str> = res[3..].iter().map(|x| x["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["unknown_event_type", "invalid_event", "invalid_event", "wrong_tenant", "wrong_type"], "{r}");
    assert!(res[4]["reason"].as_str().unwrap().contains("user_id"), "{}", res[4]);
    assert!(res[3..].iter().all(|x| x["dead_letter"].is_u64()), "every refusal is kept: {r}");
    // The socket got the pushes of the HTTP event at once (no ack: the ack went to HTTP).
    let got = sock.until("level_up").await;
    let types: Vec<&str> = got.iter().map(|m| m["type"].as_str().unwrap()).filter(|t| *t != "progress").collect();
    assert_eq!(types, ["xp", "unlock", "unlock", "level_up"]);
    assert_eq!(got[0]["event_id"], "v-1");
    s.stop().await;
}

#[tokio::test]
async fn bad_batches_get_clear_errors_and_are_kept() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let (st, v) = api.raw("POST", "/v1/events", b"{not json".to_vec()).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_body")), "{v}");
    let (st, v) = api.call("POST", "/v1/events", Some(&json!({ "events": 3 }))).await;
    assert_eq!(st, 400);
    assert!(v["message"].as_str().unwrap().contains("events"), "{v}");
    let (_, dl) = api.get("/v1/dead-letters").await;
    let kept: Vec<&str> = dl["dead_letters"].as_array().unwrap().iter().map(|d| d["raw"].as_str().unwrap()).collect();
    assert_eq!(kept, ["{not json", "{\"events\":3}"], "malformed bodies are dead letters too");
    let many: Vec<Value> = (0..1001).map(|i| http_answer(&format!("e{i}"), "u", "x", true)).collect();
    let (st, v) = api.call("POST", "/v1/events", Some(&json!({ "events": many }))).await;
    assert_eq!((st, v["error"].as_str()), (413, Some("too_many_events")), "{v}");
    let (st, v) = api.raw("POST", "/v1/events", vec![b' '; accolade::api::MAX_BODY + 1]).await;
    assert_eq!((st, v["error"].as_str()), (413, Some("too_large")), "{v}");
    // None of it was counted.
    assert_eq!(api.get("/v1/users/u").await.0, 404);
    s.stop().await;
}

#[tokio::test]
async fn dead_letters_can_be_listed_fixed_resubmitted_and_discarded() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let r = api
        .ingest(vec![
            http_event("q-1", "carol", "quiz.passed", json!({ "quiz": "q1" })),
            http_event("q-2", "carol", "quiz.passed", json!({ "quiz": "q2" })),
            http_event("q-3", "carol", "quiz.passed", json!({ "quiz": "q3" })),
        ])
        .await;
    let ids: Vec<u64> = r["results"].as_array().unwrap().iter().map(|x| x["dead_letter"].as_u64().unwrap()).collect();
    let (_, page) = api.get("/v1/dead-letters?limit=2").await;
    assert_eq!(page["dead_letters"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_u64().unwrap();
    let (_, rest) = api.get(&format!("/v1/dead-letters?after={after}")).await;
    assert_eq!(rest["dead_letters"][0]["id"].as_u64(), Some(ids[2]));
    let (st, one) = api.get(&format!("/v1/dead-letters/{}", ids[0])).await;
    assert_eq!((st, one["code"].as_str(), one["user_id"].as_str()), (200, Some("unknown_event_type"), Some("carol")));
    // Still unknown: the retry fails and the dead letter stays, counting the attempt.
    let (st, v) = api.call("POST", &format!("/v1/dead-letters/{}/retry", ids[0]), None).await;
    assert_eq!((st, v["resolved"].as_bool()), (200, Some(false)), "{v}");
    assert_eq!(api.get(&format!("/v1/dead-letters/{}", ids[0])).await.1["retries"], 1);
    // Fix the catalogue: declare the event type and a badge for it.
    let (_, cur) = api.get("/v1/catalogue").await;
    let mut doc = cur["document"].clone();
    doc["event_types"]["quiz.passed"] = json!({ "fields": { "quiz": "string" } });
    let (st, v) = api.call("PUT", "/v1/catalogue", Some(&doc)).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = api.call("POST", &format!("/v1/dead-letters/{}/retry", ids[0]), None).await;
    assert_eq!((st, v["resolved"].as_bool(), v["result"]["status"].as_str()), (200, Some(true), Some("accepted")), "{v}");
    assert_eq!(api.get(&format!("/v1/dead-letters/{}", ids[0])).await.0, 404, "a resolved dead letter is gone");
    // Discard another.
    assert_eq!(api.call("DELETE", &format!("/v1/dead-letters/{}", ids[1]), None).await.0, 204);
    assert_eq!(api.call("DELETE", &format!("/v1/dead-letters/{}", ids[1]), None).await.0, 404);
    assert_eq!(api.call("POST", "/v1/dead-letters/999999/retry", None).await.0, 404);
    let (_, list) = api.get("/v1/dead-letters").await;
    assert_eq!(list["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(api.get("/v1/users/carol").await.1["events"], 1, "the re-submitted event counts once");
    s.stop().await;
}

#[tokio::test]
async fn catalogue_changes_make_validated_versions_applied_live() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let (st, cur) = api.get("/v1/catalogue").await;
    assert_eq!((st, cur["version"].as_u64(), cur["current"].as_bool(), cur["origin"].as_str()), (200, Some(1), Some(true), Some("embedded")), "no --catalogue file: the demo catalogue built in");
    let badge = json!({ "name": "Login Fan", "tier": "bronze", "xp": 5, "rule": { "kind": "count", "event": "login", "target": 2 } });
    let (st, v) = api.call("PUT", "/v1/catalogue/badges/login-fan", Some(&badge)).await;
    assert_eq!((st, v["version"].as_u64()), (201, Some(2)), "{v}");
    assert_eq!(v["changed_badges"], json!(["login-fan"]));
    // A bad rule names the badge and the field; nothing changes.
    let mut broken = badge.clone();
    broken["rule"]["target"] = json!("two");
    let (st, v) = api.call("PUT", "/v1/catalogue/badges/login-fan", Some(&broken)).await;
    assert_eq!((st, v["error"].as_str(), v["badge"].as_str()), (422, Some("invalid_catalogue"), Some("badge `login-fan`")), "{v}");
    assert!(v["field"].as_str().unwrap().starts_with("rule") && v["message"].as_str().unwrap().contains("\"two\""), "{v}");
    let mut wrong_id = badge.clone();
    wrong_id["id"] = json!("other");
    assert_eq!(api.call("PUT", "/v1/catalogue/badges/login-fan", Some(&wrong_id)).await.0, 400);
    assert_eq!(api.raw("PUT", "/v1/catalogue", b"[1,2".to_vec()).await.0, 400);
    let (st, v) = api.call("PUT", "/v1/catalogue", Some(&json!({ "version": 1 }))).await;
    assert_eq!((st, v["error"].as_str()), (422, Some("invalid_catalogue")), "{v}");
    // Live at once: two logins earn it.
    let r = api.ingest(vec![http_event("l1", "dan", "login", json!({})), http_event("l2", "dan", "login", json!({}))]).await;
    assert_eq!(r["results"][1]["unlocks"], json!(["login-fan"]), "{r}");
    // Retire: dan keeps it, erin can no longer earn it.
    let (st, v) = api.call("DELETE", "/v1/catalogue/badges/login-fan", None).await;
    assert_eq!((st, v["version"].as_u64()), (201, Some(3)), "{v}");
    let r = api.ingest(vec![http_event("l3", "erin", "login", json!({})), http_event("l4", "erin", "login", json!({}))]).await;
    assert_eq!(r["results"][1]["unlocks"], json!([]), "{r}");
    let (st, b) = api.get("/v1/users/dan/badges/login-fan").await;
    assert_eq!((st, b["retired"].as_bool(), b["rule_version"].as_u64()), (200, Some(true), Some(2)));
    assert_eq!(api.call("DELETE", "/v1/catalogue/badges/nope", None).await.0, 404);
    // XP rules.
    let rule = json!({ "event": "login", "amount": 7 });
    let (st, v) = api.call("PUT", "/v1/catalogue/xp/login-xp", Some(&rule)).await;
    assert_eq!((st, v["version"].as_u64()), (201, Some(4)), "{v}");
    let r = api.ingest(vec![http_event("l5", "erin", "login", json!({}))]).await;
    assert_eq!(r["results"][0]["xp"], 7);
    let (st, v) = api.call("PUT", "/v1/catalogue/xp/bad", Some(&json!({ "event": "nope", "amount": 1 }))).await;
    assert_eq!((st, v["error"].as_str()), (422, Some("invalid_catalogue")), "{v}");
    assert_eq!(api.call("DELETE", "/v1/catalogue/xp/login-xp", None).await.0, 201);
    assert_eq!(api.call("DELETE", "/v1/catalogue/xp/login-xp", None).await.0, 404);
    let r = api.ingest(vec![http_event("l6", "erin", "login", json!({}))]).await;
    assert_eq!(r["results"][0]["xp"], 0);
    // Every version is kept and readable.
    let (_, list) = api.get("/v1/catalogue/versions").await;
    let versions: Vec<u64> = list["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert_eq!(list["versions"][4]["current"], true);
    let (st, old) = api.get("/v1/catalogue?version=1").await;
    assert_eq!((st, old["current"].as_bool()), (200, Some(false)));
    assert!(!old["document"]["badges"].as_array().unwrap().iter().any(|b| b["id"] == "login-fan"));
    assert_eq!(api.get("/v1/catalogue?version=99").await.0, 404);
    // And survive a restart.
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    assert_eq!(api.get("/v1/catalogue").await.1["version"], 5);
    s.stop().await;
}

#[tokio::test]
async fn preview_counts_who_would_earn_a_badge_without_changing_anything() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let mut events = vec![];
    for (user, n) in [("p1", 3), ("p2", 4), ("p3", 1)] {
        for i in 0..n {
            events.push(http_answer(&format!("{user}-{i}"), user, "geometry", true));
        }
    }
    api.ingest(events).await;
    let change = json!({ "op": "put_badge", "badge": { "id": "three-right", "name": "Three Right", "tier": "bronze",
        "rule": { "kind": "count", "event": "problem.answered", "when": { "correct": true }, "target": 3 } } });
    let (st, v) = api.call("POST", "/v1/catalogue/preview", Some(&change)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["users_scanned"].as_u64(), v["version"].as_u64()), (Some(3), Some(2)));
    assert_eq!(v["badges"], json!([{ "badge": "three-right", "would_earn": 2, "sample": ["p1", "p2"] }]));
    assert_eq!(api.get("/v1/catalogue").await.1["version"], 1, "a preview changes nothing");
    assert_eq!(api.get("/v1/users/p1/badges/three-right").await.1["error"], "unknown_badge");
    let bad = json!({ "op": "put_badge", "badge": { "id": "x", "name": "X", "tier": "tin", "rule": { "kind": "count", "event": "login", "target": 1 } } });
    let (st, v) = api.call("POST", "/v1/catalogue/preview", Some(&bad)).await;
    assert_eq!((st, v["error"].as_str()), (422, Some("invalid_catalogue")), "{v}");
    let (st, v) = api.call("POST", "/v1/catalogue/preview", Some(&json!({ "op": "explode" }))).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_body")), "{v}");
    s.stop().await;
}

#[tokio::test]
async fn user_queries_answer_what_a_user_has_and_why_not() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    api.ingest(vec![video("v-1", "gia", 1200), http_answer("a-1", "gia", "fractions", true), http_answer("a-2", "gia", "fractions", false)]).await;
    let (st, u) = api.get("/v1/users/gia").await;
    assert_eq!((st, u["xp"].as_u64(), u["level"].as_u64(), u["events"].as_u64()), (200, Some(171), Some(2), Some(3)), "{u}");
    let owned: Vec<&str> = u["badges"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(owned, ["act-one-scene-one", "nice-listener"]);
    assert_eq!((u["badges"][0]["tier"].as_str(), u["badges"][0]["rule_version"].as_u64(), u["badges"][0]["event_id"].as_str()), (Some("bronze"), Some(1), Some("v-1")));
    assert!(u["stats"].as_array().unwrap().iter().any(|s| s["value"] != json!(0.0) && s["value"] != Value::Null), "{u}");
    // Progress: an unowned count badge shows current/target; a composite shows its parts.
    let (st, p) = api.get("/v1/users/gia/progress").await;
    assert_eq!(st, 200);
    let badges = p["badges"].as_array().unwrap();
    assert!(!badges.iter().any(|b| b["badge"] == "nice-listener"), "owned badges are left out");
    let master = badges.iter().find(|b| b["badge"] == "master-of-arithmetic").unwrap();
    let parts = master["rule"]["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{master}");
    assert_eq!((parts[2]["holds"].as_bool(), parts[2]["current"].as_f64(), parts[2]["target"].as_f64()), (Some(false), Some(2.0), Some(10.0)), "{master}");
    let counted = badges.iter().find(|b| b["rule"]["target"].is_number() && b["rule"]["current"].as_f64() > Some(0.0)).expect("a badge with some progress");
    assert!(counted["rule"]["current"].as_f64() < counted["rule"]["target"].as_f64());
    // Entitlement checks.
    let (st, b) = api.get("/v1/users/gia/badges/nice-listener").await;
    assert_eq!((st, b["count"].as_u64()), (200, Some(1)));
    assert_eq!(api.get("/v1/users/gia/badges/magellan").await, (404, json!({ "error": "not_owned", "message": "user `gia` does not own `magellan`" })));
    assert_eq!(api.get("/v1/users/gia/badges/no-such").await.1["error"], "unknown_badge");
    // The event log, paged.
    let (st, log) = api.get("/v1/users/gia/events?limit=2").await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = log["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["v-1", "a-1"]);
    assert_eq!(log["events"][0]["pushes"][1]["type"], "unlock", "{log}");
    assert_eq!(log["events"][0]["payload"]["playlist"], "algebra");
    let next = log["next_after"].as_u64().unwrap();
    let (_, rest) = api.get(&format!("/v1/users/gia/events?after={next}")).await;
    assert_eq!(rest["events"][0]["event_id"], "a-2");
    assert_eq!(rest["next_after"], Value::Null);
    // Unknown users are 404 on every user route.
    for path in ["/v1/users/nobody", "/v1/users/nobody/progress", "/v1/users/nobody/badges/magellan", "/v1/users/nobody/events"] {
        assert_eq!(api.get(path).await.1["error"], "user_not_found", "{path}");
    }
    s.stop().await;
}

#[tokio::test]
async fn a_hidden_badge_shows_nothing_before_it_is_earned_neither_pushed_nor_explained() {
    // The demo's hidden "The Curious" (10 different articles) is the only badge an article
    // read moves: the read must push no progress, and the progress route must not name it.
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.progress_throttle_ms = 0).await;
    let api = Api::new(&s, DEMO_KEY);
    let mut sock = s.connect("hana").await;
    sock.send(&event("r-1", "article.read", json!({ "article": "fractions-intro" }))).await;
    // An invalid event is answered after every push of the read before it.
    sock.send(&event("fence", "no.such.type", json!({}))).await;
    let seen = sock.until("error").await;
    assert!(seen.iter().any(|m| m["type"] == "ack" && m["event_id"] == "r-1"), "{seen:?}");
    assert!(!seen.iter().any(|m| m["type"] == "progress"), "{seen:?}");
    let (st, p) = api.get("/v1/users/hana/progress").await;
    assert_eq!(st, 200);
    let curious = p["badges"].as_array().unwrap().iter().find(|b| b["hidden"] == true && b["owned"] == 0).expect("listed, as ???");
    assert_eq!(curious, &json!({ "name": "???", "hidden": true, "owned": 0, "rule": { "describe": "???", "holds": false } }));
    // Neither its name, its rule nor its id appears anywhere in the answer.
    let text = p.to_string();
    assert!(!text.contains("The Curious") && !text.contains("different article") && !text.contains("the-curious"), "{text}");
    s.stop().await;
}

#[tokio::test]
async fn one_tenants_key_never_reaches_another_tenant() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), two_tenants).await;
    let demo = Api::new(&s, DEMO_KEY);
    let acme = Api::new(&s, ACME_KEY);
    // The same event id in two tenants: two different events.
    assert_eq!(demo.ingest(vec![video("same-id", "alice", 1200)]).await["accepted"], 1);
    assert_eq!(acme.ingest(vec![http_event("same-id", "zed", "login", json!({}))]).await["accepted"], 1);
    let dl = demo.ingest(vec![http_event("bad", "alice", "nope", json!({}))]).await["results"][0]["dead_letter"].as_u64().unwrap();
    // Naming the other tenant in an event is refused.
    let r = acme.ingest(vec![json!({ "event_id": "x", "user_id": "alice", "tenant_id": "demo", "event_type": "login", "occurred_at": now_rfc3339() })]).await;
    assert_eq!(r["results"][0]["code"], "wrong_tenant");
    // Users, badges, events, progress.
    for path in ["/v1/users/alice", "/v1/users/alice/progress", "/v1/users/alice/badges/nice-listener", "/v1/users/alice/events"] {
        assert_eq!(acme.get(path).await.1["error"], "user_not_found", "{path}");
        assert_eq!(demo.get(path).await.0, 200, "{path}");
    }
    assert_eq!(demo.get("/v1/users/zed").await.0, 404);
    // Dead letters.
    assert_eq!(acme.get(&format!("/v1/dead-letters/{dl}")).await.0, 404);
    assert_eq!(acme.call("POST", &format!("/v1/dead-letters/{dl}/retry"), None).await.0, 404);
    assert_eq!(acme.call("DELETE", &format!("/v1/dead-letters/{dl}"), None).await.0, 404);
    assert!(!acme.get("/v1/dead-letters").await.1["dead_letters"].as_array().unwrap().iter().any(|d| d["id"] == dl));
    assert_eq!(demo.get(&format!("/v1/dead-letters/{dl}")).await.0, 200, "still there for its tenant");
    // Catalogues and jobs.
    let badge = json!({ "name": "Only Acme", "tier": "bronze", "rule": { "kind": "count", "event": "login", "target": 1 } });
    let (st, v) = acme.call("PUT", "/v1/catalogue/badges/only-acme", Some(&badge)).await;
    assert_eq!(st, 201, "{v}");
    let job = v["job"]["id"].as_u64().unwrap();
    assert_eq!(demo.get("/v1/catalogue").await.1["version"], 1, "demo's catalogue is untouched");
    assert!(!demo.get("/v1/catalogue").await.1["document"]["badges"].as_array().unwrap().iter().any(|b| b["id"] == "only-acme"));
    assert_eq!(demo.get("/v1/catalogue?version=2").await.0, 404);
    assert_eq!(demo.get(&format!("/v1/jobs/{job}")).await.0, 404);
    assert_eq!(demo.call("DELETE", &format!("/v1/jobs/{job}"), None).await.0, 404);
    assert!(demo.get("/v1/jobs").await.1["jobs"].as_array().unwrap().is_empty());
    assert_eq!(acme.get(&format!("/v1/jobs/{job}")).await.0, 200);
    // A preview scans only the key's tenant: acme has one user (zed), demo has alice.
    let change = json!({ "op": "put_badge", "badge": { "id": "any-video", "name": "Any", "tier": "bronze", "rule": { "kind": "count", "event": "video.watched", "target": 1 } } });
    let (_, p) = acme.call("POST", "/v1/catalogue/preview", Some(&change)).await;
    assert_eq!((p["users_scanned"].as_u64(), p["badges"][0]["would_earn"].as_u64()), (Some(1), Some(0)), "{p}");
    let (_, p) = demo.call("POST", "/v1/catalogue/preview", Some(&change)).await;
    assert_eq!((p["users_scanned"].as_u64(), p["badges"][0]["sample"].clone()), (Some(1), json!(["alice"])), "{p}");
    // Acme's catalogue is its own copy: retiring a badge or adding XP there leaves demo's alone.
    assert_eq!(acme.call("DELETE", "/v1/catalogue/badges/nice-listener", None).await.0, 201);
    assert_eq!(acme.call("PUT", "/v1/catalogue/xp/video-bonus", Some(&json!({ "event": "video.watched", "amount": 1000 }))).await.0, 201);
    assert_eq!(demo.get("/v1/catalogue/versions").await.1["versions"].as_array().unwrap().len(), 1);
    assert_eq!(acme.get("/v1/catalogue/versions").await.1["versions"].as_array().unwrap().len(), 4);
    let r = demo.ingest(vec![video("v-2", "newbie", 1200)]).await;
    assert_eq!(r["results"][0]["unlocks"], json!(["act-one-scene-one", "nice-listener"]), "demo still awards it");
    assert_eq!(r["results"][0]["xp"], 160, "and has no acme XP rule");
    s.stop().await;
}

/// The `accolade_...` metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    expr.match_indices("accolade_").map(|(i, _)| expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()).collect()
}

/// Every query of the Grafana dashboard (docs/grafana/accolade.json) asks for a metric that
/// `/metrics` renders, so renaming a metric without the dashboard fails here rather than as an
/// operator's empty panel; and every panel reads the data source chosen at import.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_the_server_renders() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    // A labelled family renders nothing before its first series, so one refusal first (an
    // event without its type), as any running server has seen.
    let api = Api::new(&s, DEMO_KEY);
    api.ingest(vec![json!({ "event_id": "bad-1", "user_id": "hal", "occurred_at": now_rfc3339() })]).await;
    let (_, text) = api.with_key(None).get("/metrics").await;
    // The series names a query can ask for.
    let rendered: std::collections::HashSet<&str> = text.as_str().unwrap().lines().filter(|l| !l.starts_with('#')).map(|l| l.split(['{', ' ']).next().unwrap()).collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/accolade.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // Panel targets' `expr` and the instance variable's `definition`, wherever they nest.
    fn queries(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| match v.as_str() {
                Some(q) if k == "expr" || k == "definition" => out.push(q.to_string()),
                _ => queries(v, out),
            }),
            Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
            _ => {}
        }
    }
    let mut exprs = vec![];
    queries(&dashboard, &mut exprs);
    let panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row").collect();
    assert!(panels.len() >= 15 && exprs.len() > panels.len(), "{} panels, {} queries", panels.len(), exprs.len());
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "`{e}` asks for no accolade metric");
        for n in names {
            assert!(rendered.contains(n.as_str()), "the dashboard asks for {n}, which /metrics does not render, in `{e}`");
        }
    }
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
    }
    assert!(dashboard["templating"]["list"].as_array().unwrap().iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus"));
    s.stop().await;
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY).with_key(None);
    assert_eq!(api.get("/healthz").await, (200, json!("ok")));
    assert_eq!(api.get("/readyz").await, (200, json!("ready")));
    let key = Api::new(&s, DEMO_KEY);
    key.ingest(vec![video("v-1", "hal", 1200), video("v-2", "hal", 60)]).await;
    // Sent again once durable: found in the dedup index without reaching the rule core.
    key.ingest(vec![video("v-1", "hal", 1200)]).await;
    // Refused over HTTP before any actor saw it (no event_type): counted as a rejected event
    // and by its code.
    key.ingest(vec![json!({ "event_id": "bad-1", "user_id": "hal", "occurred_at": now_rfc3339() })]).await;
    let (_, m) = api.get("/metrics").await;
    let m = m.as_str().unwrap().to_string();
    for line in ["accolade_events_total{outcome=\"accepted\"} 2", "accolade_dedup_hits_total 1", "accolade_rule_eval_seconds_count 2", "accolade_event_to_push_seconds_count 3", "accolade_http_events_total 4", "accolade_events_total{outcome=\"rejected\"} 1", "accolade_refusals_total{code=\"invalid_event\"} 1"] {
        assert!(m.contains(line), "missing `{line}` in\n{m}");
    }
    // OpenMetrics, typed as such for scrapers that negotiate it, and ended the way it requires.
    let res = http_client().get(format!("http://{}/metrics", s.addr)).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(res.text().await.unwrap().ends_with("\n# EOF\n"));
    for name in ["accolade_persist_last_batch_jobs", "accolade_backfill_running", "accolade_dead_letters_total", "accolade_connections"] {
        assert!(m.lines().any(|l| l.starts_with(&format!("{name} "))), "no {name} sample in\n{m}");
    }
    // Request ids: the caller's is echoed, otherwise one is made.
    let res = http_client().get(format!("http://{}/healthz", s.addr)).header("x-request-id", "req-42").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-42");
    let res = http_client().get(format!("http://{}/healthz", s.addr)).send().await.unwrap();
    assert!(!res.headers()["x-request-id"].is_empty());
    s.stop().await;
}

#[tokio::test]
async fn every_refusal_of_an_ingested_event_has_its_code() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let at = |t: &str| json!({ "event_id": format!("t-{t}"), "user_id": "ivy", "event_type": "login", "occurred_at": t });
    let r = api
        .ingest(vec![
            at("2020-01-01T00:00:00Z"),
            at("2999-01-01T00:00:00Z"),
            at("yesterday"),
            http_event("m-1", "ivy", "problem.answered", json!({ "exercise": "x", "seconds": 3 })),
            http_event("id", &"u".repeat(129), "login", json!({})),
            json!({ "event_id": "", "user_id": "ivy", "event_type": "login", "occurred_at": now_rfc3339() }),
            json!({ "event_id": "p", "user_id": "ivy", "event_type": "login", "occurred_at": now_rfc3339(), "payload": [1] }),
        ])
        .await;
    let codes: Vec<&str> = r["results"].as_array().unwrap().iter().map(|x| x["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["too_late", "in_future", "invalid_event", "missing_field", "invalid_event", "invalid_event", "invalid_event"], "{r}");
    for (i, needle) in [(2, "RFC 3339"), (3, "correct"), (4, "user_id"), (5, "event_id"), (6, "payload")] {
        assert!(r["results"][i]["reason"].as_str().unwrap().contains(needle), "{i}: {}", r["results"][i]);
    }
    assert_eq!(api.get("/v1/dead-letters").await.1["dead_letters"].as_array().unwrap().len(), 7);
    let (st, v) = api.get(&format!("/v1/users/{}", "u".repeat(129))).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_user")));
    s.stop().await;
}

#[tokio::test]
async fn a_flood_of_batches_waits_for_room_then_is_told_to_retry() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.ingest_inflight_events = 1000;
        c.ingest_wait_ms = 300;
    })
    .await;
    let api = Api::new(&s, DEMO_KEY);
    // Every slot taken (as if 1,000 events were being processed)...
    let held = s.shared.ingest_permits.clone().acquire_many_owned(1000).await.unwrap();
    let (st, v) = api.call("POST", "/v1/events", Some(&json!({ "events": [http_answer("o1", "olga", "x", true)] }))).await;
    assert_eq!((st, v["error"].as_str()), (503, Some("overloaded")), "{v}");
    // ...a batch waits for room rather than failing at once.
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move { api.call("POST", "/v1/events", Some(&json!({ "events": [http_answer("o2", "olga", "x", true)] }))).await })
    };
    tokio::task::yield_now().await;
    drop(held);
    let (st, v) = waiting.await.unwrap();
    assert_eq!((st, v["accepted"].as_u64()), (200, Some(1)), "{v}");
    // The refused batch was not counted; sent again, it is.
    assert_eq!(api.ingest(vec![http_answer("o1", "olga", "x", true)]).await["accepted"], 1);
    assert_eq!(api.get("/v1/users/olga").await.1["events"], 2);
    s.stop().await;
}

/// The import recipe in docs/catalogue.md: history older than `late_bound` is refused as
/// `too_late` until a catalogue change raises the bound; then it is taken, oldest first, and
/// counts as a live event would. Putting the bound back refuses old events again.
#[tokio::test]
async fn history_older_than_late_bound_is_imported_after_a_change_raises_the_bound() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let days_ago = |d: i64| (chrono::Utc::now() - chrono::Duration::days(d)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let old = |id: &str, d: i64| json!({ "event_id": id, "user_id": "ida", "event_type": "login", "occurred_at": days_ago(d) });
    let r = api.ingest(vec![old("h-1", 10)]).await;
    assert_eq!((r["results"][0]["status"].as_str(), r["results"][0]["code"].as_str()), (Some("rejected"), Some("too_late")), "{r}");

    let (_, cur) = api.get("/v1/catalogue").await;
    let mut doc = cur["document"].clone();
    doc["settings"]["late_bound"] = json!("400d");
    let (st, v) = api.call("PUT", "/v1/catalogue?backfill=false", Some(&doc)).await;
    assert_eq!(st, 201, "{v}");
    let r = api.ingest(vec![old("h-1", 10), old("h-2", 9), old("h-3", 8)]).await;
    let statuses: Vec<&str> = r["results"].as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "accepted", "accepted"], "{r}");
    assert_eq!(api.get("/v1/users/ida").await.1["events"], 3);

    doc["settings"]["late_bound"] = json!("24h");
    let (st, v) = api.call("PUT", "/v1/catalogue?backfill=false", Some(&doc)).await;
    assert_eq!(st, 201, "{v}");
    let r = api.ingest(vec![old("h-4", 7)]).await;
    assert_eq!(r["results"][0]["code"], "too_late", "{r}");
    s.stop().await;
}

/// Dead letters, jobs, webhook endpoints and webhook notifications each count their ids from 1,
/// on their own, and go on from where they were after a restart (they once shared sled's one
/// generator, which jumps by a million at every start).
#[tokio::test]
async fn ids_of_each_kind_count_from_one_and_go_on_after_a_restart() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let hook = |n: u32| json!({ "url": format!("http://127.0.0.1:9/hook-{n}") });
    let dead = |id: &str| http_event(id, "ida", "quiz.passed", json!({}));
    let badge = |name: &str| json!({ "name": name, "tier": "bronze", "xp": 1, "rule": { "kind": "count", "event": "login", "target": 1 } });
    let (st, h1) = api.call("POST", "/v1/webhooks", Some(&hook(1))).await;
    assert_eq!((st, h1["id"].as_u64()), (201, Some(1)), "{h1}");
    assert_eq!(api.call("POST", "/v1/webhooks", Some(&hook(2))).await.1["id"], 2);
    assert_eq!(api.ingest(vec![dead("d-1")]).await["results"][0]["dead_letter"], 1);
    let (_, change) = api.call("PUT", "/v1/catalogue/badges/first-id", Some(&badge("First"))).await;
    assert_eq!(change["job"]["id"], 1, "{change}");
    // A video long enough to unlock badges: one notification id, the same on both endpoints.
    let r = api.ingest(vec![http_event("v-1", "ida", "video.watched", json!({ "video": "v1", "playlist": "algebra", "seconds": 1200 }))]).await;
    assert_eq!(r["results"][0]["status"], "accepted", "{r}");
    for h in [1, 2] {
        let (_, d) = api.get(&format!("/v1/webhooks/{h}/deliveries")).await;
        let ids: Vec<u64> = ["pending", "finished"].iter().flat_map(|k| d[*k].as_array().cloned().unwrap_or_default()).map(|x| x["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.iter().min(), Some(&1), "endpoint {h}: {d}");
    }
    s.stop().await;

    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    assert_eq!(api.ingest(vec![dead("d-2")]).await["results"][0]["dead_letter"], 2);
    let (_, change) = api.call("PUT", "/v1/catalogue/badges/second-id", Some(&badge("Second"))).await;
    assert_eq!(change["job"]["id"], 2, "{change}");
    assert_eq!(api.call("POST", "/v1/webhooks", Some(&hook(3))).await.1["id"], 3);
    s.stop().await;
}


/// A revocation's and a retraction's errors: each a status and a code a backend can branch on.
async fn refused(api: &Api, path: &str, body: Value) -> (u16, String, String) {
    let (st, v) = api.call("POST", path, Some(&body)).await;
    (st, v["error"].as_str().unwrap_or_default().to_string(), v["message"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_badge_revoked_through_the_api_is_pushed_once_and_gone_from_the_entitlement_check() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), two_tenants).await;
    let api = Api::new(&s, DEMO_KEY);
    let r = api.ingest(vec![video("v-1", "alice", 1200)]).await;
    assert_eq!(r["results"][0]["unlocks"], json!(["act-one-scene-one", "nice-listener"]), "{r}");
    let (_, before) = api.get("/v1/users/alice").await;
    let xp = before["xp"].as_u64().unwrap();
    let mut sock = s.connect("alice").await;

    let (st, v) = api.call("POST", "/v1/users/alice/badges/nice-listener/revoke", Some(&json!({ "reason": "shared account", "xp": "claw_back" }))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["status"].as_str(), v["revocation"]["cause"].as_str(), v["revocation"]["reason"].as_str()), (Some("revoked"), Some("api"), Some("shared account")));
    assert_eq!((v["revocation"]["xp"].as_u64(), v["xp"].as_u64()), (Some(50), Some(xp - 50)), "{v}");
    // The open socket is told.
    let m = sock.until("revoked").await.pop().unwrap();
    assert_eq!((m["badge"]["id"].as_str(), m["badge"]["name"].as_str(), m["cause"].as_str(), m["reason"].as_str()), (Some("nice-listener"), Some("Nice Listener"), Some("api"), Some("shared account")));
    assert_eq!((m["xp"].as_u64(), m["total"].as_u64()), (Some(50), Some(xp - 50)), "{m}");
    // The entitlement check says it is gone, why, and since when.
    let (st, v) = api.get("/v1/users/alice/badges/nice-listener").await;
    assert_eq!((st, v["error"].as_str(), v["revocation"]["reason"].as_str()), (404, Some("revoked"), Some("shared account")), "{v}");
    let (_, doc) = api.get("/v1/users/alice").await;
    assert!(doc["badges"].as_array().unwrap().iter().all(|b| b["id"] != "nice-listener"), "{doc}");
    assert_eq!(doc["revoked"][0]["badge"], "nice-listener", "{doc}");
    // Sent again it changes nothing: one record in the log, one push.
    let (st, v) = api.call("POST", "/v1/users/alice/badges/nice-listener/revoke", Some(&json!({ "reason": "shared account", "xp": "claw_back" }))).await;
    assert_eq!((st, v["status"].as_str(), v["xp"].as_u64()), (200, Some("already_revoked"), Some(xp - 50)), "{v}");
    let (_, log) = api.get("/v1/users/alice/events").await;
    let records: Vec<&Value> = log["events"].as_array().unwrap().iter().filter(|e| e["event_type"] == "accolade.revoke").collect();
    assert_eq!(records.len(), 1, "{log}");
    assert_eq!(records[0]["pushes"][0]["type"], "revoked");
    // XP kept when asked: the other badge goes, the XP stays.
    let (st, v) = api.call("POST", "/v1/users/alice/badges/act-one-scene-one/revoke", Some(&json!({ "reason": "test run", "xp": "keep" }))).await;
    assert_eq!((st, v["xp"].as_u64(), v["revocation"]["xp"].as_u64()), (200, Some(xp - 50), Some(0)), "{v}");

    // Every mistake a backend can make, each with its own answer.
    let ok = json!({ "reason": "r", "xp": "keep" });
    let cases = [
        ("/v1/users/nobody/badges/nice-listener/revoke", ok.clone(), 404, "user_not_found", "nobody"),
        ("/v1/users/alice/badges/no-such-badge/revoke", ok.clone(), 404, "unknown_badge", "no such badge"),
        ("/v1/users/alice/badges/magellan/revoke", ok.clone(), 404, "not_owned", "never held"),
        ("/v1/users/alice/badges/nice-listener/revoke", json!({ "xp": "keep" }), 400, "invalid_body", "reason"),
        ("/v1/users/alice/badges/nice-listener/revoke", json!({ "reason": "r" }), 400, "invalid_body", "xp"),
        ("/v1/users/alice/badges/nice-listener/revoke", json!({ "reason": "r", "xp": "maybe" }), 400, "invalid_body", "claw_back"),
        ("/v1/users/alice/badges/nice-listener/revoke", json!({ "reason": "  ", "xp": "keep" }), 400, "invalid_body", "reason"),
        ("/v1/users/alice/badges/nice-listener/revoke", json!({ "reason": "r", "xp": "keep", "force": true }), 400, "invalid_body", "force"),
    ];
    for (path, body, status, code, says) in cases {
        let (st, c, m) = refused(&api, path, body.clone()).await;
        assert_eq!((st, c.as_str()), (status, code), "{path} {body}: {m}");
        assert!(m.contains(says), "{path} {body}: {m}");
    }
    let (st, v) = api.raw("POST", "/v1/users/alice/badges/nice-listener/revoke", b"{not json".to_vec()).await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_body")), "{v}");
    // Another tenant's key cannot reach alice.
    let (st, v) = api.with_key(Some(ACME_KEY)).call("POST", "/v1/users/alice/badges/act-one-scene-one/revoke", Some(&ok)).await;
    assert_eq!((st, v["error"].as_str()), (404, Some("user_not_found")), "{v}");
    s.stop().await;
}

#[tokio::test]
async fn a_retracted_event_takes_its_badges_away_and_only_the_backend_can_retract() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    api.ingest(vec![video("v-1", "bob", 1200), http_event("l-1", "bob", "login", json!({}))]).await;
    let mut sock = s.connect("bob").await;
    let (st, v) = api.call("POST", "/v1/users/bob/retractions", Some(&json!({ "event_id": "v-1", "reason": "watched by a bot", "xp": "claw_back" }))).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("retracted")), "{v}");
    let gone: Vec<&str> = v["revoked"].as_array().unwrap().iter().map(|r| r["badge"].as_str().unwrap()).collect();
    assert_eq!(gone, ["act-one-scene-one", "nice-listener"], "{v}");
    assert!(v["revoked"].as_array().unwrap().iter().all(|r| r["cause"] == "retracted" && r["xp"] == 50), "{v}");
    let pushed: Vec<Value> = vec![sock.until("revoked").await.pop().unwrap(), sock.until("revoked").await.pop().unwrap()];
    assert!(pushed.iter().all(|m| m["cause"] == "retracted" && m["reason"] == "watched by a bot"), "{pushed:?}");
    let (st, v) = api.get("/v1/users/bob/badges/act-one-scene-one").await;
    assert_eq!((st, v["error"].as_str(), v["revocation"]["cause"].as_str()), (404, Some("revoked"), Some("retracted")), "{v}");
    // The video's seconds are gone from the stats: a new 20-minute video earns the badge again.
    let r = api.ingest(vec![video("v-2", "bob", 1200)]).await;
    assert_eq!(r["results"][0]["unlocks"], json!(["act-one-scene-one", "nice-listener"]), "{r}");
    // Sent again: counted once.
    let (st, v) = api.call("POST", "/v1/users/bob/retractions", Some(&json!({ "event_id": "v-1", "reason": "again", "xp": "claw_back" }))).await;
    assert_eq!((st, v["status"].as_str(), v["revoked"].as_array().map(Vec::len)), (200, Some("already_retracted"), Some(0)), "{v}");
    // Its id stays used: the event sent again is a duplicate, not a way back.
    let r = api.ingest(vec![video("v-1", "bob", 1200)]).await;
    assert_eq!(r["results"][0]["status"], "duplicate", "{r}");

    let cases = [
        ("/v1/users/nobody/retractions", json!({ "event_id": "v-1", "reason": "r", "xp": "keep" }), 404, "user_not_found"),
        ("/v1/users/bob/retractions", json!({ "event_id": "never-sent", "reason": "r", "xp": "keep" }), 404, "unknown_event"),
        ("/v1/users/bob/retractions", json!({ "event_id": "l-1-of-someone-else", "reason": "r", "xp": "keep" }), 404, "unknown_event"),
        ("/v1/users/bob/retractions", json!({ "reason": "r", "xp": "keep" }), 400, "invalid_body"),
        ("/v1/users/bob/retractions", json!({ "event_id": "", "reason": "r", "xp": "keep" }), 400, "invalid_body"),
        ("/v1/users/bob/retractions", json!({ "event_id": "l-1", "reason": "", "xp": "keep" }), 400, "invalid_body"),
        ("/v1/users/bob/retractions", json!({ "event_id": "l-1", "reason": "r", "xp": "all" }), 400, "invalid_body"),
    ];
    for (path, body, status, code) in cases {
        let (st, c, m) = refused(&api, path, body.clone()).await;
        assert_eq!((st, c.as_str()), (status, code), "{path} {body}: {m}");
    }
    // A record the server made is not the user's event.
    let (_, log) = api.get("/v1/users/bob/events").await;
    let record = log["events"].as_array().unwrap().iter().find(|e| e["event_type"] == "accolade.retract").unwrap()["event_id"].as_str().unwrap().to_string();
    let (st, c, _) = refused(&api, "/v1/users/bob/retractions", json!({ "event_id": record, "reason": "r", "xp": "keep" })).await;
    assert_eq!((st, c.as_str()), (404, "unknown_event"));
    // A player cannot retract: not over the socket, not as an event of the reserved type.
    sock.send(&json!({ "type": "retract", "event_id": "l-1" })).await;
    let m = sock.until("error").await.pop().unwrap();
    assert_eq!(m["code"], "invalid_message", "{m}");
    sock.send(&event("x-1", "accolade.retract", json!({ "event": "l-1", "reason": "r", "xp": "keep" }))).await;
    let m = sock.until("error").await.pop().unwrap();
    assert_eq!(m["code"], "invalid_event", "{m}");
    let r = api.ingest(vec![http_event("x-2", "bob", "accolade.retract", json!({ "event": "l-1" }))]).await;
    assert_eq!(r["results"][0]["code"], "unknown_event_type", "{r}");
    s.stop().await;
}

#[tokio::test]
async fn a_badge_held_for_a_period_expires_in_the_entitlement_check_before_any_event_sees_it() {
    let dir = tmp();
    // No expiry sweep during the test: what is checked is the expiry nobody has seen yet.
    let s = TestServer::start_with(dir.path(), |c| c.expiry_tick_ms = 3_600_000).await;
    let api = Api::new(&s, DEMO_KEY);
    let (st, v) = api
        .call("PUT", "/v1/catalogue/badges/fresh-login", Some(&json!({ "name": "Fresh Login", "tier": "bronze", "xp": 5, "valid_for": "1m", "rule": { "kind": "count", "event": "login", "target": 1 } })))
        .await;
    assert_eq!(st, 201, "{v}");
    // Logged in three minutes ago: held for a minute from then, so already run out.
    let three_min_ago = (chrono::Utc::now() - chrono::Duration::minutes(3)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let r = api.ingest(vec![json!({ "event_id": "l-1", "user_id": "cara", "event_type": "login", "occurred_at": three_min_ago })]).await;
    assert!(r["results"][0]["unlocks"].as_array().unwrap().contains(&json!("fresh-login")), "{r}");
    let (st, v) = api.get("/v1/users/cara/badges/fresh-login").await;
    assert_eq!((st, v["error"].as_str(), v["revocation"]["cause"].as_str()), (404, Some("expired"), Some("expired")), "{v}");
    let (_, doc) = api.get("/v1/users/cara").await;
    assert!(doc["badges"].as_array().unwrap().iter().all(|b| b["id"] != "fresh-login"), "{doc}");
    // Connecting: the welcome leaves it out, and the expiry is recorded and pushed at once
    // (as `revoked`, XP kept), without waiting for an event.
    let mut sock = s.connect("cara").await;
    assert!(sock.welcome["badges"].as_array().unwrap().iter().all(|b| b["id"] != "fresh-login"), "{}", sock.welcome);
    let m = sock.until("revoked").await.pop().unwrap();
    assert_eq!((m["badge"]["id"].as_str(), m["cause"].as_str(), m["xp"].as_u64()), (Some("fresh-login"), Some("expired"), Some(0)), "{m}");
    assert_eq!(m["offset"].as_u64(), sock.welcome["offset"].as_u64().map(|o| o + 1), "{m}");
    let (_, log) = api.get("/v1/users/cara/events").await;
    assert_eq!(log["events"].as_array().unwrap().iter().filter(|e| e["event_type"] == "accolade.expire").count(), 1, "{log}");
    // A second tab finds nothing more to expire.
    let tab = s.connect("cara").await;
    assert_eq!(tab.welcome["offset"], m["offset"], "{}", tab.welcome);
    // The next login earns the badge anew: the login that earned it is spent.
    api.ingest(vec![http_event("l-2", "cara", "login", json!({}))]).await;
    let m = sock.until("unlock").await.pop().unwrap();
    assert_eq!(m["badge"]["id"], "fresh-login");
    let (st, v) = api.get("/v1/users/cara/badges/fresh-login").await;
    assert_eq!(st, 200, "{v}");
    assert!(v["expires_at"].as_str().is_some(), "{v}");
    // A catalogue that gives `valid_for` wrongly is refused, naming the field.
    let (st, v) = api.call("PUT", "/v1/catalogue/badges/forever", Some(&json!({ "name": "F", "tier": "bronze", "valid_for": "a while", "rule": { "kind": "count", "event": "login", "target": 1 } }))).await;
    assert_eq!((st, v["error"].as_str(), v["field"].as_str()), (422, Some("invalid_catalogue"), Some("valid_for")), "{v}");
    s.stop().await;
}
