//! Catalogue backfills: every stored user re-evaluated after a change, exactly once across a
//! restart in the middle, with live events during the job counted once; file reloads (SIGHUP's
//! path) going through the same validation and versioning.

mod common;

use accolade::backfill::current_state;
use common::*;
use serde_json::{json, Value};

fn special_badge(target: u32) -> Value {
    json!({ "name": "Special", "tier": "silver", "xp": 10,
        "rule": { "kind": "count", "event": "problem.answered", "when": { "exercise": "special" }, "target": target } })
}

/// Polls a job until `done` says so, for at most 120 s.
async fn wait_job(api: &Api, id: u64, done: impl Fn(&Value) -> bool) -> Value {
    api.wait_for(&format!("/v1/jobs/{id}"), 120, done).await
}

/// How many backfill records a user's log holds.
fn backfill_records(s: &TestServer, user: &str) -> usize {
    backfill_records_in(&s.shared.store, user)
}

fn backfill_records_in(store: &accolade::store::Store, user: &str) -> usize {
    store.events_after("demo", user, 0, usize::MAX).unwrap().iter().filter(|(_, e)| e.event.event_type == accolade::records::BACKFILL_EVENT).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_over_ten_thousand_users_survives_a_restart_and_awards_each_once() {
    const USERS: usize = 10_000;
    let dir = tmp();
    let rate = |c: &mut accolade::config::Config| c.backfill_users_per_sec = 4_000;
    let s = TestServer::start_with(dir.path(), rate).await;
    let api = Api::new(&s, DEMO_KEY);
    // Every third user answered the "special" exercise before the badge existed.
    for chunk in 0..USERS / 1000 {
        let events = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| http_answer(&format!("e{i}"), &format!("u{i:05}"), if i % 3 == 0 { "special" } else { "plain" }, true))
            .collect();
        assert_eq!(api.ingest(events).await["accepted"], 1000);
    }
    let (st, v) = api.call("PUT", "/v1/catalogue/badges/special-one", Some(&special_badge(1))).await;
    assert_eq!(st, 201, "{v}");
    let job = v["job"]["id"].as_u64().unwrap();
    assert_eq!((v["job"]["total"].as_u64(), v["job"]["status"].as_str()), (Some(USERS as u64), Some("running")));

    // Restart in the middle.
    let before = wait_job(&api, job, |j| j["done"].as_u64() >= Some(2_000)).await;
    s.stop().await;
    // A graceful stop stores where the job is: its record counts every award on disk up to its
    // cursor, and at most the one user it was waiting on has one beyond it.
    let store = accolade::store::Store::open(dir.path()).unwrap();
    let stored: accolade::backfill::JobRecord = store.get(accolade::store::Kind::Job, "demo", job).unwrap().unwrap();
    let cursor = stored.cursor.clone().unwrap();
    let awarded: Vec<String> = (0..USERS).map(|i| format!("u{i:05}")).filter(|u| backfill_records_in(&store, u) == 1).collect();
    let (upto, beyond) = awarded.iter().partition::<Vec<&String>, _>(|u| **u <= cursor);
    assert_eq!(upto.len() as u64, stored.awards, "stored {stored:?}");
    assert!(beyond.len() <= 1, "{} awards beyond the stored cursor {cursor}: {:?}", beyond.len(), &beyond[..beyond.len().min(5)]);
    drop(store);
    let s = TestServer::start_with(dir.path(), rate).await;
    let api = Api::new(&s, DEMO_KEY);
    let (_, paused) = api.get(&format!("/v1/jobs/{job}")).await;
    assert!(paused["done"].as_u64().unwrap() < USERS as u64, "the restart really interrupted the job: {paused} (was {before})");
    let done = wait_job(&api, job, |j| j["status"] == "done").await;
    let qualifying = (0..USERS).filter(|i| i % 3 == 0).count() as u64;
    assert_eq!((done["done"].as_u64(), done["awards"].as_u64()), (Some(USERS as u64), Some(qualifying)), "{done}");

    // Every qualifying user has it exactly once, from this job; nobody else has it.
    let shared = s.shared.clone();
    let owners = tokio::task::spawn_blocking(move || {
        let mut owners = 0;
        for i in 0..USERS {
            let st = current_state(&shared.store, &shared.catalogues, "demo", &format!("u{i:05}")).unwrap();
            match st.badges.get("special-one") {
                Some(r) => {
                    assert!(i % 3 == 0, "u{i:05} does not qualify");
                    assert_eq!((r.count, r.event_id.as_str(), r.version), (1, format!("backfill:{job}").as_str(), 2));
                    assert_eq!(st.xp, 10 + 10, "answer XP plus the badge's, once");
                    owners += 1;
                }
                None => assert!(i % 3 != 0, "u{i:05} qualifies but has nothing"),
            }
        }
        owners
    })
    .await
    .unwrap();
    assert_eq!(owners, qualifying);
    assert_eq!(backfill_records(&s, "u00000"), 1);
    assert_eq!(backfill_records(&s, "u00001"), 0, "a user with nothing to award gets no record");

    // Running it again (a cosmetic change) awards nothing.
    let mut again = special_badge(1);
    again["description"] = json!("Now with a description.");
    let (_, v) = api.call("PUT", "/v1/catalogue/badges/special-one", Some(&again)).await;
    let job2 = v["job"]["id"].as_u64().unwrap();
    let done2 = wait_job(&api, job2, |j| j["status"] == "done").await;
    assert_eq!(done2["awards"], 0, "{done2}");
    assert_eq!(backfill_records(&s, "u00000"), 1);
    s.stop().await;

    // And the log rebuilds exactly what is stored.
    let s = TestServer::start(dir.path()).await;
    let shared = s.shared.clone();
    let report = tokio::task::spawn_blocking(move || accolade::replay::check_all(&shared.store, &shared.catalogues)).await.unwrap().unwrap();
    assert_eq!((report.users, report.skipped), (USERS as u64, 0));
    assert!(report.differences.is_empty(), "{:?}", &report.differences[..report.differences.len().min(5)]);
    s.stop().await;
}

/// A crash can land after some users were awarded and before the job's record (saved every
/// half second) says so. The resumed job visits them again: it must neither award them twice nor
/// leave them out of its count. The crash is staged by putting back an older record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_record_behind_its_awards_resumes_with_the_exact_count() {
    const USERS: usize = 300;
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let events = (0..USERS).map(|i| http_answer(&format!("e{i}"), &format!("u{i:03}"), if i % 3 == 0 { "special" } else { "plain" }, true)).collect();
    assert_eq!(api.ingest(events).await["accepted"], USERS);
    let (_, v) = api.call("PUT", "/v1/catalogue/badges/special-one", Some(&special_badge(1))).await;
    let id = v["job"]["id"].as_u64().unwrap();
    let finished = wait_job(&api, id, |j| j["status"] == "done").await;
    assert_eq!(finished["awards"], 100, "{finished}");

    // The record as it stood after the first 100 users (34 of them awarded), while in truth
    // all 300 were done.
    let mut behind: accolade::backfill::JobRecord = serde_json::from_value(finished.clone()).unwrap();
    (behind.status, behind.done, behind.awards, behind.cursor, behind.finished_at) = (accolade::backfill::JobStatus::Running, 100, 34, Some("u099".into()), None);
    s.shared.store.write(vec![accolade::store::writes::put(accolade::store::Kind::Job, "demo", id, &behind)]).await.unwrap();
    s.stop().await;

    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let resumed = wait_job(&api, id, |j| j["status"] == "done").await;
    assert_eq!((resumed["done"].as_u64(), resumed["awards"].as_u64()), (Some(USERS as u64), Some(100)), "{resumed}");
    for user in ["u000", "u150", "u297"] {
        let (_, u) = api.get(&format!("/v1/users/{user}")).await;
        assert_eq!(u["xp"], 20, "{user}: answer XP plus the badge's, once: {u}");
        assert_eq!(backfill_records(&s, user), 1, "{user}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_during_a_backfill_are_counted_once() {
    const USERS: usize = 600;
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.backfill_users_per_sec = 300).await;
    let api = Api::new(&s, DEMO_KEY);
    let events = (0..USERS).map(|i| http_answer(&format!("e{i}"), &format!("u{i:03}"), "special", true)).collect();
    api.ingest(events).await;
    // A new stat (special answers) and a badge at 3.
    let (st, v) = api.call("PUT", "/v1/catalogue/badges/special-three", Some(&special_badge(3))).await;
    assert_eq!(st, 201, "{v}");
    let job = v["job"]["id"].as_u64().unwrap();
    // While it runs, the first 100 users answer more: even users twice (3 in all: they earn
    // it), odd users once (2 in all: they do not).
    let mut sent = 0;
    for round in 0..2 {
        for i in 0..100usize {
            if round == 1 && i % 2 == 1 {
                continue;
            }
            let r = api.ingest(vec![http_answer(&format!("live-{round}-{i}"), &format!("u{i:03}"), "special", true)]).await;
            assert_eq!(r["accepted"], 1);
            sent += 1;
        }
    }
    let (_, mid) = api.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(mid["status"], "running", "the live events really overlapped the job: {mid} after {sent} events");
    let done = wait_job(&api, job, |j| j["status"] == "done").await;
    for i in 0..100usize {
        let user = format!("u{i:03}");
        let (_, u) = api.get(&format!("/v1/users/{user}")).await;
        let owned = u["badges"].as_array().unwrap().iter().filter(|b| b["id"] == "special-three").count();
        if i % 2 == 0 {
            assert_eq!((u["events"].as_u64(), owned), (Some(3), 1), "{user}: {u}");
        } else {
            assert_eq!((u["events"].as_u64(), owned), (Some(2), 0), "{user}: {u}");
            let (_, p) = api.get(&format!("/v1/users/{user}/progress")).await;
            let b = p["badges"].as_array().unwrap().iter().find(|b| b["badge"] == "special-three").unwrap().clone();
            assert_eq!((b["rule"]["current"].as_f64(), b["rule"]["target"].as_f64()), (Some(2.0), Some(3.0)), "{user}: counted once, {b}");
        }
    }
    // The other 500 answered once: the backfill filled the new stat in for them.
    let (_, p) = api.get("/v1/users/u300/progress").await;
    let b = p["badges"].as_array().unwrap().iter().find(|b| b["badge"] == "special-three").unwrap().clone();
    assert_eq!(b["rule"]["current"].as_f64(), Some(1.0), "{b}");
    assert!(done["awards"].as_u64().unwrap() <= 50, "live events awarded some of them first: {done}");
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    let shared = s.shared.clone();
    let report = tokio::task::spawn_blocking(move || accolade::replay::check_all(&shared.store, &shared.catalogues)).await.unwrap().unwrap();
    assert!(report.differences.is_empty(), "{} differences, first {:?}", report.differences.len(), report.differences.first());
    s.stop().await;
}

#[tokio::test]
async fn backfilled_awards_toast_only_when_asked() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    api.ingest(vec![http_answer("a", "loud", "special", true), http_answer("b", "quiet", "special", true)]).await;
    let mut loud = s.connect("loud").await;
    let (_, v) = api.call("PUT", "/v1/catalogue/badges/special-a?notify=true", Some(&special_badge(1))).await;
    wait_job(&api, v["job"]["id"].as_u64().unwrap(), |j| j["status"] == "done").await;
    let got = loud.until("unlock").await;
    let unlock = got.last().unwrap();
    assert_eq!((unlock["badge"]["id"].as_str(), unlock["event_id"].as_str()), (Some("special-a"), Some(format!("backfill:{}", v["job"]["id"]).as_str())));
    let (_, v) = api.call("PUT", "/v1/catalogue/badges/special-b", Some(&special_badge(1))).await;
    wait_job(&api, v["job"]["id"].as_u64().unwrap(), |j| j["status"] == "done").await;
    // Silent: the award is there, and the log record pushed nothing.
    assert_eq!(api.get("/v1/users/quiet/badges/special-b").await.0, 200);
    let (_, log) = api.get("/v1/users/quiet/events").await;
    let records: Vec<&Value> = log["events"].as_array().unwrap().iter().filter(|e| e["event_type"] == "accolade.backfill").collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["pushes"], json!([]), "{log}");
    // A reconnecting client that missed the notified toast gets it from the recovery history.
    let since = loud.since(0);
    drop(loud);
    let mut again = accolade_client(&s, "loud", since).await;
    let replayed = again.until("unlock").await;
    assert_eq!(replayed.last().unwrap()["badge"]["id"], "special-a");
    // Cancelling a finished job changes nothing; an unknown one is 404.
    assert_eq!(api.call("DELETE", "/v1/jobs/424242", None).await.0, 404);
    s.stop().await;
}

async fn accolade_client(s: &TestServer, user: &str, since: Value) -> Client {
    Client::connect(&s.url(), &token(user), Some(since)).await
}

#[tokio::test]
async fn a_running_job_can_be_cancelled() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.backfill_users_per_sec = 20).await;
    let api = Api::new(&s, DEMO_KEY);
    api.ingest((0..200).map(|i| http_answer(&format!("e{i}"), &format!("c{i:03}"), "special", true)).collect()).await;
    let (_, v) = api.call("PUT", "/v1/catalogue/badges/special-c", Some(&special_badge(1))).await;
    let job = v["job"]["id"].as_u64().unwrap();
    let (st, j) = api.call("DELETE", &format!("/v1/jobs/{job}"), None).await;
    assert_eq!((st, j["status"].as_str()), (200, Some("cancelled")), "{j}");
    let (_, list) = api.get("/v1/jobs").await;
    assert_eq!(list["jobs"][0]["status"], "cancelled");
    // It stays cancelled across a restart, and does not resume.
    s.stop().await;
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let (_, j2) = api.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!((j2["status"].as_str(), j2["done"].as_u64()), (Some("cancelled"), j["done"].as_u64()));
    s.stop().await;
}

#[tokio::test]
async fn reloading_the_file_makes_a_version_only_when_it_changed_and_is_valid() {
    let dir = tmp();
    let file = dir.path().join("catalogue.toml");
    std::fs::write(&file, accolade::core::catalogue::DEMO_CATALOGUE).unwrap();
    let data = dir.path().join("data");
    let f = file.clone();
    let s = TestServer::start_with(&data, move |c| c.catalogue = Some(f)).await;
    let cats = &s.shared.catalogues;
    assert_eq!(cats.reload_file(0).await.unwrap().len(), 0, "unchanged file, no version");
    let extra = "\n[[badges]]\nid = \"reloaded\"\nname = \"Reloaded\"\ntier = \"bronze\"\nrule = { kind = \"count\", event = \"login\", target = 1 }\n";
    std::fs::write(&file, format!("{}{extra}", accolade::core::catalogue::DEMO_CATALOGUE)).unwrap();
    let changed = cats.reload_file(0).await.unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!((changed[0].0.as_str(), changed[0].1.catalogue.version, changed[0].1.changed_badges.clone()), ("demo", 2, vec!["reloaded".to_string()]));
    // An invalid file is refused with the badge and field named; the version in force stays.
    std::fs::write(&file, format!("{}{}", accolade::core::catalogue::DEMO_CATALOGUE, extra.replace("target = 1", "target = \"x\""))).unwrap();
    let e = cats.reload_file(0).await.err().expect("an invalid file is refused").to_string();
    assert!(e.contains("badge `reloaded`") && e.contains("rule"), "{e}");
    assert_eq!(cats.current("demo").unwrap().version, 2);
    // Once changed through the API, the file no longer owns the tenant's catalogue.
    let api = Api::new(&s, DEMO_KEY);
    assert_eq!(api.call("DELETE", "/v1/catalogue/badges/reloaded", None).await.0, 201);
    std::fs::write(&file, accolade::core::catalogue::DEMO_CATALOGUE).unwrap();
    assert_eq!(cats.reload_file(0).await.unwrap().len(), 0);
    assert_eq!(cats.current("demo").unwrap().version, 3);
    s.stop().await;
}
