//! Webhooks end to end, against receivers on loopback: signed deliveries of unlocks, level-ups
//! and goal outcomes, retries with backoff, endpoints that refuse or never answer holding up
//! nobody, a notification that keeps failing set aside so that other users' notifications flow
//! (and redriven), the outbox surviving a SIGKILL, the delivery log, every error a client can
//! cause, and the receiver recipes of docs/webhooks.md (Node, Python, Go) verifying real
//! deliveries.

mod common;

use common::receiver::*;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

    /// The same receiver over HTTPS, with a certificate for `localhost` issued by a CA made
    /// here, whose PEM is written to `ca_file`.
async fn start_tls(ca_file: &std::path::Path) -> (Receiver, u16) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Accolade test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(ca_file, ca.pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let r = Receiver::default();
        let app = r.app();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake here.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
                });
            }
        });
        (r, port)
    }


fn video(id: &str, user: &str) -> Value {
    // 20 minutes in one playlist: two badges and level 2 for a new user (see tests/server.rs).
    http_event(id, user, "video.watched", json!({ "video": "v1", "playlist": "algebra", "seconds": 1200 }))
}

async fn create_hook(api: &Api, url: &str, events: Option<Value>) -> (u64, String) {
    let mut body = json!({ "url": url, "description": "test receiver" });
    if let Some(e) = events {
        body["events"] = e;
    }
    let (st, h) = api.call("POST", "/v1/webhooks", Some(&body)).await;
    assert_eq!(st, 201, "{h}");
    (h["id"].as_u64().unwrap(), h["secret"].as_str().unwrap().to_string())
}

fn kinds(got: &[Got]) -> Vec<String> {
    got.iter().map(|g| g.json["type"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test]
async fn notifications_arrive_signed_in_order_with_one_id_on_every_endpoint() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let (all, a_addr) = Receiver::start().await;
    let (levels, b_addr) = Receiver::start().await;
    let (a, a_secret) = create_hook(&api, &format!("http://{a_addr}/hook"), None).await;
    let (b, b_secret) = create_hook(&api, &format!("http://{b_addr}/hook"), Some(json!(["level_up"]))).await;
    assert_ne!(a_secret, b_secret);

    let mut alice = s.connect("alice").await;
    alice.send(&event("v1", "video.watched", json!({ "video": "v1", "playlist": "algebra", "seconds": 1200 }))).await;
    let pushed: Vec<String> = alice.until("level_up").await.iter().map(|m| m["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(pushed, ["ack", "xp", "unlock", "unlock", "level_up"]);

    let got = all.wait("three notifications", |g| g.len() >= 3).await;
    assert_eq!(kinds(&got), ["unlock", "unlock", "level_up"], "in the order they were pushed");
    let names: Vec<&str> = got[..2].iter().map(|g| g.json["data"]["badge"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Act I Scene I", "Nice Listener"]);
    for g in &got {
        assert!(verify(&a_secret, g), "signature of {}", g.body);
        assert!(!verify(&b_secret, g), "another endpoint's secret must not verify");
        assert_eq!((g.json["tenant"].as_str(), g.json["user_id"].as_str(), g.json["data"]["event_id"].as_str()), (Some("demo"), Some("alice"), Some("v1")));
        assert_eq!(g.headers["accolade-event"], g.json["type"].as_str().unwrap());
        assert_eq!(g.headers["accolade-id"], g.json["id"].to_string().as_str());
        assert_eq!(g.headers["content-type"], "application/json");
    }
    let ids: BTreeSet<u64> = got.iter().map(|g| g.json["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 3, "each notification has its own id");

    // The other endpoint subscribed to level-ups only, and sees the same notification id.
    let lv = levels.wait("the level-up", |g| !g.is_empty()).await;
    assert_eq!(kinds(&lv), ["level_up"]);
    assert!(verify(&b_secret, &lv[0]));
    assert_eq!(lv[0].json["id"], got[2].json["id"]);
    assert_eq!(lv[0].json["data"]["level"], 2);

    // The delivery log: three delivered at the first attempt, nothing waiting.
    let log = api.wait_for(&format!("/v1/webhooks/{a}/deliveries"), 10, |l| l["finished"].as_array().unwrap().len() == 3).await;
    assert_eq!(log["pending"], json!([]));
    for d in log["finished"].as_array().unwrap() {
        assert_eq!((d["state"].as_str(), d["attempts"].as_u64(), d["last_attempt"]["status"].as_u64()), (Some("delivered"), Some(1), Some(204)), "{d}");
    }
    let newest_first: Vec<u64> = log["finished"].as_array().unwrap().iter().map(|d| d["id"].as_u64().unwrap()).collect();
    assert_eq!(newest_first, ids.iter().rev().copied().collect::<Vec<_>>());

    // Listing and reading endpoints never shows the secret again.
    let (st, list) = api.get("/v1/webhooks").await;
    assert_eq!(st, 200);
    let listed: Vec<u64> = list["webhooks"].as_array().unwrap().iter().map(|h| h["id"].as_u64().unwrap()).collect();
    assert_eq!(listed, [a, b]);
    assert!(!list.to_string().contains("whsec_"), "{list}");
    let (st, one) = api.get(&format!("/v1/webhooks/{b}")).await;
    assert_eq!((st, one["events"].clone(), one["pending"].as_u64(), one.get("secret")), (200, json!(["level_up"]), Some(0), None));
    api.wait_for(&format!("/v1/webhooks/{b}/deliveries"), 10, |l| l["finished"].as_array().unwrap().len() == 1).await;
    let (_, metrics) = api.get("/metrics").await;
    assert!(metrics.as_str().unwrap().contains("accolade_webhook_deliveries_total{outcome=\"delivered\"} 4"), "{metrics}");

    // A deleted endpoint gets nothing more; the other carries on.
    let (st, _) = api.call("DELETE", &format!("/v1/webhooks/{a}"), None).await;
    assert_eq!(st, 204);
    let (st, _) = api.get(&format!("/v1/webhooks/{a}")).await;
    assert_eq!(st, 404);
    api.ingest(vec![http_event("l1", "alice", "exercise.proficient", json!({ "exercise": "e1" })), video("v2", "bob")]).await;
    levels.wait("bob's level-up", |g| g.len() >= 2).await;
    assert_eq!(all.got().len(), 3, "the deleted endpoint was sent nothing more");
    s.stop().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_growing_delays_and_live_pushes_do_not_wait() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.webhook_retry_base_ms = 100;
        c.webhook_retry_max_ms = 10_000;
    })
    .await;
    let api = Api::new(&s, DEMO_KEY);
    let (rx, addr) = Receiver::start().await;
    rx.failing.store(true, Ordering::SeqCst);
    let (id, secret) = create_hook(&api, &format!("http://{addr}/hook"), None).await;

    let mut alice = s.connect("alice").await;
    alice.send(&event("v1", "video.watched", json!({ "video": "v1", "playlist": "algebra", "seconds": 1200 }))).await;
    // The pushes are not held by the failing endpoint.
    alice.until("level_up").await;

    // The oldest notification is tried again and again; the log shows why it waits.
    let log = api
        .wait_for(&format!("/v1/webhooks/{id}/deliveries"), 30, |l| l["pending"].get(0).is_some_and(|p| p["attempts"].as_u64() >= Some(4)))
        .await;
    let head = &log["pending"][0];
    assert_eq!((head["type"].as_str(), head["last_attempt"]["status"].as_u64()), (Some("unlock"), Some(500)), "{head}");
    assert!(head["last_attempt"]["error"].as_str().unwrap().contains("500"), "{head}");
    assert_eq!(log["pending"].as_array().unwrap().len(), 3, "{log}");

    rx.failing.store(false, Ordering::SeqCst);
    let got = rx.wait("three deliveries", |g| g.iter().filter(|g| g.ok).count() >= 3).await;
    // Retries repeat the same notification (same id and body) until it is taken; only then
    // do the next ones go, in order.
    let first = got[0].json["id"].clone();
    let tries = got.iter().take_while(|g| g.json["id"] == first).count();
    assert!(tries >= 5, "{tries} attempts at the first notification");
    assert!(got[..tries].iter().all(|g| g.body == got[0].body && verify(&secret, g)));
    assert_eq!(kinds(&rx.delivered()), ["unlock", "unlock", "level_up"]);
    // Backoff: after the k-th failure in a row the wait is at least half of 100 ms * 2^(k-1)
    // (full jitter takes off at most half), so the least possible wait doubles each time.
    for k in 1..=3u32 {
        let gap = got[k as usize].at - got[k as usize - 1].at;
        // Less 2 ms: the worker schedules in whole milliseconds.
        assert!(gap >= Duration::from_millis((50 << (k - 1)) - 2), "wait after failure {k}: {gap:?}");
    }
    let log = api.wait_for(&format!("/v1/webhooks/{id}/deliveries"), 10, |l| l["finished"].as_array().unwrap().len() == 3).await;
    let oldest = &log["finished"][2];
    assert_eq!((oldest["state"].as_str(), oldest["attempts"].as_u64(), oldest["id"].clone()), (Some("delivered"), Some(tries as u64), first), "{oldest}");
    s.stop().await;
}

/// Issue 26: one notification the receiver keeps refusing (here: every notification about
/// alice) used to hold the endpoint's whole outbox for its twenty attempts. Now it holds the
/// line for `--webhook-hold-attempts` attempts, is set aside (listed, retried on its own
/// backoff), the other users' notifications flow, alice's later ones wait behind it so hers
/// stay in order, and a redrive once the receiver is fixed delivers all of hers, in order.
#[tokio::test]
async fn a_notification_that_keeps_failing_is_set_aside_so_other_users_flow_and_a_redrive_delivers_it() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.webhook_retry_base_ms = 50;
        c.webhook_hold_attempts = 2;
    })
    .await;
    let api = Api::new(&s, DEMO_KEY);
    let (rx, addr) = Receiver::start().await;
    *rx.poisoned.lock().unwrap() = Some("alice".into());
    let (hook, secret) = create_hook(&api, &format!("http://{addr}/hook"), None).await;
    // Alice's three notifications first, so that hers is the oldest: the head of the line.
    // The receiver holds the first request until all nine are waiting, so that what it gets
    // next depends on the worker's choices only, not on how fast the ingests were.
    let closed = rx.gate.clone().write_owned().await;
    api.ingest(vec![video("va", "alice")]).await;
    api.ingest(vec![video("vb", "bob"), video("vc", "carol")]).await;
    api.wait_for(&format!("/v1/webhooks/{hook}"), 10, |h| h["pending"] == 9).await;
    drop(closed);

    let user = |g: &Got| g.json["user_id"].as_str().unwrap_or_default().to_string();
    let got = rx.wait("bob's and carol's six notifications", |g| g.iter().filter(|g| g.ok && user(g) != "alice").count() >= 6).await;
    // Alice's first was tried exactly twice (the hold) before anything else was sent, and
    // none of her later ones was sent at all: one user's notifications go in order.
    let first_other = got.iter().position(|g| user(g) != "alice").unwrap();
    assert_eq!(first_other, 2, "alice's head held the line for two attempts: {:?}", got.iter().map(user).collect::<Vec<_>>());
    let alice: Vec<&Got> = got.iter().filter(|g| user(g) == "alice").collect();
    let poisoned_id = alice[0].json["id"].as_u64().unwrap();
    assert!(alice.iter().all(|g| !g.ok && g.json["id"].as_u64() == Some(poisoned_id) && verify(&secret, g)), "only alice's first was sent");
    for u in ["bob", "carol"] {
        let theirs: Vec<Got> = got.iter().filter(|g| user(g) == u).cloned().collect();
        assert_eq!(kinds(&theirs), ["unlock", "unlock", "level_up"], "{u}'s in order");
    }

    // The set-aside list shows it, why, and that it is still retried; the log shows alice's
    // later two waiting (`pending`) behind it.
    let (st, aside) = api.get(&format!("/v1/webhooks/{hook}/set-aside")).await;
    assert_eq!(st, 200);
    let aside = aside["set_aside"].as_array().unwrap().clone();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!((aside[0]["id"].as_u64(), aside[0]["state"].as_str(), aside[0]["last_attempt"]["status"].as_u64()), (Some(poisoned_id), Some("set_aside"), Some(500)));
    assert_eq!(aside[0]["body"]["user_id"], "alice");
    let (_, log) = api.get(&format!("/v1/webhooks/{hook}/deliveries")).await;
    let waiting: Vec<(u64, &str)> = log["pending"].as_array().unwrap().iter().map(|d| (d["id"].as_u64().unwrap(), d["state"].as_str().unwrap())).collect();
    assert_eq!(waiting.len(), 3, "{log}");
    assert_eq!(waiting[0], (poisoned_id, "set_aside"));
    assert!(waiting[1..].iter().all(|(_, state)| *state == "pending"), "{log}");
    // One waiting in line is not retried by hand.
    let (st, e) = api.call("POST", &format!("/v1/webhooks/{hook}/deliveries/{}/retry", waiting[1].0), None).await;
    assert_eq!((st, e["error"].as_str()), (409, Some("not_set_aside")), "{e}");
    let (_, metrics) = api.get("/metrics").await;
    assert!(metrics.as_str().unwrap().contains("accolade_webhook_set_aside_total 1"), "{metrics}");

    // Its own backoff keeps growing. Once its next attempt is over a second away, the receiver
    // is fixed and it is redriven: sent at once with a fresh count, so delivered at attempt 1
    // (its own next attempt would have been its seventh or later).
    let aside = api
        .wait_for(&format!("/v1/webhooks/{hook}/set-aside"), 30, |l| {
            l["set_aside"].get(0).is_some_and(|d| {
                let next = chrono::DateTime::parse_from_rfc3339(d["next_attempt_at"].as_str().unwrap()).unwrap().with_timezone(&chrono::Utc);
                d["attempts"].as_u64() >= Some(6) && next - chrono::Utc::now() > chrono::Duration::seconds(1)
            })
        })
        .await;
    assert_eq!(aside["set_aside"][0]["id"].as_u64(), Some(poisoned_id));
    *rx.poisoned.lock().unwrap() = None;
    let (st, d) = api.call("POST", &format!("/v1/webhooks/{hook}/deliveries/{poisoned_id}/retry"), None).await;
    assert_eq!((st, d["state"].as_str(), d["attempts"].as_u64()), (202, Some("pending"), Some(0)), "{d}");
    let got = rx.wait("alice's three, delivered", |g| g.iter().filter(|g| g.ok && user(g) == "alice").count() >= 3).await;
    let hers: Vec<Got> = got.into_iter().filter(|g| g.ok && user(g) == "alice").collect();
    assert_eq!(kinds(&hers), ["unlock", "unlock", "level_up"]);
    assert_eq!(hers[0].json["id"].as_u64(), Some(poisoned_id));
    let log = api.wait_for(&format!("/v1/webhooks/{hook}/deliveries"), 10, |l| l["finished"].as_array().unwrap().len() == 9).await;
    assert_eq!(log["pending"], json!([]));
    let redriven = log["finished"].as_array().unwrap().iter().find(|d| d["id"].as_u64() == Some(poisoned_id)).unwrap();
    assert_eq!((redriven["state"].as_str(), redriven["attempts"].as_u64()), (Some("delivered"), Some(1)), "{redriven}");
    let (_, aside) = api.get(&format!("/v1/webhooks/{hook}/set-aside")).await;
    assert_eq!(aside["set_aside"], json!([]));
    s.stop().await;
}

#[tokio::test]
async fn endpoints_that_refuse_or_never_answer_hold_up_nobody_and_given_up_deliveries_can_be_retried() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.webhook_retry_base_ms = 20;
        c.webhook_retry_max_ms = 50;
        c.webhook_max_attempts = 2;
        c.webhook_timeout_ms = 500;
    })
    .await;
    let api = Api::new(&s, DEMO_KEY);
    // Nothing listens on `refused`; `silent` accepts connections and never answers.
    let refused = free_port();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    let (dead, _) = create_hook(&api, &format!("http://127.0.0.1:{refused}/hook"), None).await;
    let (hung, _) = create_hook(&api, &format!("http://{silent_addr}/hook"), None).await;
    let (rx, addr) = Receiver::start().await;
    let (good, _) = create_hook(&api, &format!("http://{addr}/hook"), None).await;

    let mut clients = Vec::new();
    for u in ["u1", "u2", "u3"] {
        clients.push(s.connect(u).await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&event(&format!("e{i}"), "video.watched", json!({ "video": "v1", "playlist": "algebra", "seconds": 1200 }))).await;
    }
    for c in clients.iter_mut() {
        c.until("level_up").await;
    }
    let got = rx.wait("nine notifications", |g| g.len() >= 9).await;
    let users: BTreeSet<&str> = got.iter().map(|g| g.json["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, BTreeSet::from(["u1", "u2", "u3"]));

    // Each bad endpoint gives up after two attempts per delivery, and says why.
    let why = |hook: u64, text: &'static str| {
        let api = api.clone();
        async move {
            let log = api.wait_for(&format!("/v1/webhooks/{hook}/deliveries"), 30, |l| l["finished"].as_array().unwrap().len() == 9).await;
            for d in log["finished"].as_array().unwrap() {
                assert_eq!((d["state"].as_str(), d["attempts"].as_u64(), d["last_attempt"]["status"].clone()), (Some("failed"), Some(2), Value::Null), "{d}");
                let e = d["last_attempt"]["error"].as_str().unwrap().to_lowercase();
                assert!(e.contains(text), "{hook}: `{e}` should mention `{text}`");
            }
            log
        }
    };
    let log = why(dead, "refused").await;
    why(hung, "timed out").await;
    let (_, metrics) = api.get("/metrics").await;
    assert!(metrics.as_str().unwrap().contains("accolade_webhook_deliveries_total{outcome=\"given_up\"} 18"), "{metrics}");

    // A given-up delivery can be sent again once the endpoint is back.
    let (back, _) = Receiver::start_on(format!("127.0.0.1:{refused}").parse().unwrap()).await;
    let failed = log["finished"][0]["id"].as_u64().unwrap();
    let (st, d) = api.call("POST", &format!("/v1/webhooks/{dead}/deliveries/{failed}/retry"), None).await;
    assert_eq!((st, d["state"].as_str(), d["attempts"].as_u64()), (202, Some("pending"), Some(0)), "{d}");
    let again = back.wait("the retried delivery", |g| !g.is_empty()).await;
    assert_eq!(again[0].json["id"].as_u64(), Some(failed));
    let log = api.wait_for(&format!("/v1/webhooks/{dead}/deliveries"), 10, |l| l["finished"][0]["state"] == "delivered").await;
    assert_eq!(log["finished"][0]["id"].as_u64(), Some(failed));
    // Retrying a delivered one, or one that does not exist, is refused.
    let (st, e) = api.call("POST", &format!("/v1/webhooks/{dead}/deliveries/{failed}/retry"), None).await;
    assert_eq!((st, e["error"].as_str()), (409, Some("already_delivered")));
    let (st, e) = api.call("POST", &format!("/v1/webhooks/{good}/deliveries/12345678/retry"), None).await;
    assert_eq!((st, e["error"].as_str()), (404, Some("not_found")));
    s.stop().await;
}

#[tokio::test]
async fn https_endpoints_are_verified_against_the_system_roots_and_the_configured_ca() {
    let dir = tmp();
    let ca = dir.path().join("ca.pem");
    let (rx, port) = start_tls(&ca).await;
    let data = dir.path().join("data");
    let s = TestServer::start_with(&data, |c| {
        c.webhook_ca_file = Some(ca.clone());
        c.webhook_max_attempts = 1;
    })
    .await;
    let api = Api::new(&s, DEMO_KEY);
    let (good, secret) = create_hook(&api, &format!("https://localhost:{port}/hook"), Some(json!(["level_up"]))).await;
    // The certificate names `localhost`, not the address: this one must be refused.
    let (wrong, _) = create_hook(&api, &format!("https://127.0.0.1:{port}/hook"), Some(json!(["level_up"]))).await;
    api.ingest(vec![video("v1", "alice")]).await;
    let got = rx.wait("the level-up over TLS", |g| !g.is_empty()).await;
    assert_eq!(kinds(&got), ["level_up"]);
    assert!(verify(&secret, &got[0]));
    let log = api.wait_for(&format!("/v1/webhooks/{wrong}/deliveries"), 30, |l| !l["finished"].as_array().unwrap().is_empty()).await;
    let e = log["finished"][0]["last_attempt"]["error"].as_str().unwrap().to_lowercase();
    assert!(e.contains("certificate"), "{e}");
    api.wait_for(&format!("/v1/webhooks/{good}/deliveries"), 10, |l| l["finished"][0]["state"] == "delivered").await;
    assert_eq!(rx.got().len(), 1, "nothing reached the receiver through the refused certificate");
    s.stop().await;

    // A CA file that is not PEM stops the server at start, naming the file.
    std::fs::write(&ca, "not a certificate").unwrap();
    let mut c = test_config(&data);
    c.webhook_ca_file = Some(ca.clone());
    let e = accolade::server::build(c).await.err().expect("refused").to_string();
    assert!(e.contains("--webhook-ca-file") && e.contains("ca.pem"), "{e}");
}

#[tokio::test]
async fn a_dead_endpoints_notifications_are_given_up_once_too_old_so_its_outbox_stays_bounded() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| {
        c.webhook_give_up_after_secs = 1;
        c.webhook_retry_base_ms = 3000;
    })
    .await;
    let api = Api::new(&s, DEMO_KEY);
    let (dead, _) = create_hook(&api, &format!("http://127.0.0.1:{}/hook", free_port()), None).await;
    api.ingest(vec![video("v1", "alice")]).await;
    // The oldest is tried once and backs the endpoint off; by the next turn all three are older
    // than a second and are given up without further attempts.
    let log = api.wait_for(&format!("/v1/webhooks/{dead}/deliveries"), 30, |l| l["finished"].as_array().unwrap().len() == 3).await;
    assert_eq!(log["pending"], json!([]));
    let attempts: Vec<u64> = log["finished"].as_array().unwrap().iter().map(|d| d["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [0, 0, 1], "newest first: {log}");
    for d in log["finished"].as_array().unwrap() {
        assert_eq!(d["state"], "failed");
        assert!(d["last_attempt"]["error"].as_str().unwrap().contains("not delivered within 1 s"), "{d}");
    }
    assert!(log["finished"][2]["last_attempt"]["error"].as_str().unwrap().to_lowercase().contains("refused"), "{log}");
    s.stop().await;
}

#[tokio::test]
async fn the_outbox_survives_sigkill_and_everything_is_delivered_after_the_restart() {
    let dir = tmp();
    let port = free_port();
    let receiver_port = free_port();
    let flags = ["--webhook-retry-base-ms", "50", "--webhook-retry-max-ms", "200"];
    let mut server = start_with(dir.path(), port, &flags).await;
    let api = Api::demo_at(port);
    let (id, secret) = create_hook(&api, &format!("http://127.0.0.1:{receiver_port}/hook"), None).await;
    // Five users, each two badges and a level: fifteen notifications, all acknowledged (the
    // ingest answers once they are durable) while the endpoint is down.
    let users = ["k1", "k2", "k3", "k4", "k5"];
    let out = api.ingest(users.iter().map(|u| video(&format!("v-{u}"), u)).collect()).await;
    assert!(out["results"].as_array().unwrap().iter().all(|r| r["status"] == "accepted"), "{out}");
    let log = api.wait_for(&format!("/v1/webhooks/{id}/deliveries"), 30, |l| l["pending"][0]["attempts"].as_u64() >= Some(1)).await;
    let waiting: BTreeSet<u64> = log["pending"].as_array().unwrap().iter().map(|d| d["id"].as_u64().unwrap()).collect();
    assert_eq!(waiting.len(), 15, "{log}");
    server.kill9();

    let (rx, _) = Receiver::start_on(format!("127.0.0.1:{receiver_port}").parse().unwrap()).await;
    let _server = start_with(dir.path(), port, &flags).await;
    let got = rx.wait("fifteen notifications", |g| g.iter().map(|g| g.json["id"].as_u64()).collect::<BTreeSet<_>>().len() >= 15).await;
    let ids: BTreeSet<u64> = got.iter().map(|g| g.json["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, waiting, "exactly the notifications that waited were delivered");
    assert!(got.iter().all(|g| verify(&secret, g)));
    for u in users {
        let mine: Vec<String> = got.iter().filter(|g| g.json["user_id"] == u).map(|g| g.json["type"].as_str().unwrap().to_string()).collect::<BTreeSet<_>>().into_iter().collect();
        assert_eq!(mine, ["level_up", "unlock"], "{u}");
    }
    let log = api.wait_for(&format!("/v1/webhooks/{id}/deliveries"), 10, |l| l["finished"].as_array().unwrap().len() == 15).await;
    assert_eq!(log["pending"], json!([]));
}

#[tokio::test]
async fn goal_outcomes_are_notified_to_endpoints_that_subscribe() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.goal_tick_ms = 50).await;
    let api = Api::new(&s, DEMO_KEY);
    let (rx, addr) = Receiver::start().await;
    create_hook(&api, &format!("http://{addr}/hook"), Some(json!(["goal_missed", "goal_completed"]))).await;
    let criterion = json!({ "kind": "count", "event": "article.read", "distinct": "article", "target": 3 });
    let (st, _) = api.call("POST", "/v1/goals", Some(&json!({ "id": "read3", "assignee": "stu", "assigner": "tea", "title": "Read three", "criterion": criterion }))).await;
    assert_eq!(st, 201);
    let due = (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
    let two_logins = json!({ "kind": "count", "event": "login", "target": 2 });
    let (st, _) = api.call("POST", "/v1/goals", Some(&json!({ "id": "soon", "assignee": "stu", "assigner": "tea", "title": "Log in twice", "criterion": two_logins, "due_at": due }))).await;
    assert_eq!(st, 201);
    let reads: Vec<Value> = ["a1", "a2", "a3"].iter().map(|a| http_event(&format!("r-{a}"), "stu", "article.read", json!({ "article": a }))).collect();
    api.ingest(reads).await;
    let got = rx.wait("both outcomes", |g| g.len() >= 2).await;
    let mut seen: Vec<(String, String)> = got.iter().map(|g| (g.json["type"].as_str().unwrap().into(), g.json["data"]["goal"]["id"].as_str().unwrap().into())).collect();
    seen.sort();
    assert_eq!(seen, [("goal_completed".to_string(), "read3".to_string()), ("goal_missed".to_string(), "soon".to_string())]);
    assert!(got.iter().all(|g| g.json["user_id"] == "stu" && g.json["data"]["goal"]["assigner"] == "tea"));
    s.stop().await;
}

#[tokio::test]
async fn every_client_error_is_answered_clearly() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), two_tenants).await;
    let api = Api::new(&s, DEMO_KEY);
    let cases = [
        (json!({ "url": "ftp://example.com/x" }), "http or https"),
        (json!({ "url": "not a url" }), "not a URL"),
        (json!({ "url": "http://user:pw@127.0.0.1/x" }), "credentials"),
        (json!({ "url": "http://127.0.0.1/x", "events": ["xp"] }), "`events` has `xp`"),
        (json!({ "url": "http://127.0.0.1/x", "events": [] }), "`events` is empty"),
        (json!({ "url": "http://127.0.0.1/x", "description": "d".repeat(201) }), "description"),
        (json!({ "url": format!("http://127.0.0.1/{}", "x".repeat(2048)) }), "2,048"),
        (json!({ "url": "http://127.0.0.1/x", "secret": "mine" }), "secret"),
        (json!({ "events": ["unlock"] }), "url"),
    ];
    for (body, text) in cases {
        let (st, e) = api.call("POST", "/v1/webhooks", Some(&body)).await;
        assert_eq!((st, e["error"].as_str()), (400, Some("invalid_body")), "{body}: {e}");
        assert!(e["message"].as_str().unwrap().contains(text), "{body}: {e} should mention {text}");
    }
    let (st, e) = api.raw("POST", "/v1/webhooks", b"{not json".to_vec()).await;
    assert_eq!((st, e["error"].as_str()), (400, Some("invalid_body")), "{e}");

    let mut ids = Vec::new();
    for i in 0..16 {
        ids.push(create_hook(&api, &format!("http://127.0.0.1:9/{i}"), Some(json!(["unlock", "unlock"]))).await.0);
    }
    let (st, e) = api.call("POST", "/v1/webhooks", Some(&json!({ "url": "http://127.0.0.1:9/17" }))).await;
    assert_eq!((st, e["error"].as_str()), (409, Some("too_many_webhooks")), "{e}");
    let (_, one) = api.get(&format!("/v1/webhooks/{}", ids[0])).await;
    assert_eq!(one["events"], json!(["unlock"]), "repeated kinds are kept once");

    for (method, path) in [("GET", "/v1/webhooks/424242"), ("DELETE", "/v1/webhooks/424242"), ("GET", "/v1/webhooks/424242/deliveries"), ("GET", "/v1/webhooks/424242/set-aside"), ("POST", "/v1/webhooks/424242/deliveries/1/retry")] {
        let (st, e) = api.call(method, path, None).await;
        assert_eq!((st, e["error"].as_str()), (404, Some("not_found")), "{method} {path}: {e}");
    }
    // Another tenant sees none of them and cannot touch them.
    let acme = api.with_key(Some(ACME_KEY));
    let (st, list) = acme.get("/v1/webhooks").await;
    assert_eq!((st, list["webhooks"].clone()), (200, json!([])));
    for (method, path) in [("GET", format!("/v1/webhooks/{}", ids[0])), ("DELETE", format!("/v1/webhooks/{}", ids[0])), ("GET", format!("/v1/webhooks/{}/deliveries", ids[0])), ("GET", format!("/v1/webhooks/{}/set-aside", ids[0]))] {
        let (st, _) = acme.call(method, &path, None).await;
        assert_eq!(st, 404, "acme {method} {path}");
    }
    let (st, _) = api.get(&format!("/v1/webhooks/{}", ids[0])).await;
    assert_eq!(st, 200, "still there for its own tenant");
    // A deleted endpoint frees its place.
    let (st, _) = api.call("DELETE", &format!("/v1/webhooks/{}", ids[0]), None).await;
    assert_eq!(st, 204);
    create_hook(&api, "https://hooks.example.com/accolade", None).await;
    s.stop().await;
}

/// A receiver recipe from `examples/webhooks/`, running as its own process until dropped, with
/// what it printed.
struct Recipe {
    name: &'static str,
    port: u16,
    child: std::process::Child,
    out: Arc<Mutex<Vec<String>>>,
}

impl Drop for Recipe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Recipe {
    /// Starts `program args` in the repository with the endpoint's secret, listening on
    /// `port`, and waits (up to a minute) until it says it listens. A missing interpreter fails
    /// the test: scripts/test installs each of them.
    fn start(name: &'static str, program: &str, args: &[&str], secret: &str, port: u16) -> Recipe {
        let mut child = std::process::Command::new(program)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("ACCOLADE_WEBHOOK_SECRET", secret)
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot run {program} ({e}); scripts/test installs it"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stdout, lines) = (child.stdout.take().unwrap(), out.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("listening on ") {
                    let _ = tx.send(());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let r = Recipe { name, port, child, out };
        assert!(rx.recv_timeout(Duration::from_secs(60)).is_ok(), "{name} did not start listening: {:?}", r.out.lock().unwrap());
        r
    }

    /// The notifications it acted on, as `<id> <type> <user_id>`.
    fn processed(&self) -> Vec<String> {
        self.out.lock().unwrap().iter().filter_map(|l| l.strip_prefix("processed ").map(str::to_string)).collect()
    }

    /// `processed` once it has `n` lines, or after 5 s: a receiver prints its line before it
    /// answers, but the thread reading its output may not have read that line yet.
    async fn processed_once(&self, n: usize) -> Vec<String> {
        let start = std::time::Instant::now();
        while self.processed().len() < n && start.elapsed() < std::time::Duration::from_secs(5) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.processed()
    }
}

/// Issue 26: the verification recipes of docs/webhooks.md, as the runnable receivers in
/// examples/webhooks/ (Node, Python, Go), each registered as an endpoint of a real server: the
/// genuine delivery is taken once; a repeat of the notification (signed again, as a retry is,
/// or with another `accolade-id` header) is acknowledged as a duplicate; a changed body,
/// another endpoint's secret, a timestamp ten minutes off and no signature are refused. The
/// functions shown in the doc are those in the files.
#[tokio::test]
async fn the_receiver_recipes_take_a_genuine_delivery_once_and_refuse_tampered_stale_and_unsigned_ones() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    // The test's own receiver gets the same notification, so the test has its exact bytes.
    let (rx, addr) = Receiver::start().await;
    let (_, other_secret) = create_hook(&api, &format!("http://{addr}/hook"), Some(json!(["level_up"]))).await;
    let go_bin = dir.path().join("receiver-go");
    let go_cache = std::env::var("GOCACHE").unwrap_or_else(|_| format!("{}/go-cache", env!("CARGO_TARGET_TMPDIR")));
    let built = std::process::Command::new("go")
        .args(["build", "-o", go_bin.to_str().unwrap(), "examples/webhooks/receiver.go"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("GOCACHE", &go_cache)
        .status()
        .unwrap_or_else(|e| panic!("cannot run go ({e}); scripts/test installs Debian's golang-go"));
    assert!(built.success(), "building examples/webhooks/receiver.go");
    let mut recipes = Vec::new();
    for (name, program, args) in [("node", "node", vec!["examples/webhooks/receiver.mjs"]), ("python", "python3", vec!["examples/webhooks/receiver.py"]), ("go", go_bin.to_str().unwrap(), vec![])] {
        let port = free_port();
        let (hook, secret) = create_hook(&api, &format!("http://127.0.0.1:{port}/hook"), Some(json!(["level_up"]))).await;
        recipes.push((Recipe::start(name, program, &args, &secret, port), hook, secret));
    }

    api.ingest(vec![video("v1", "alice")]).await;
    let genuine = rx.wait("the level-up", |g| !g.is_empty()).await.remove(0);
    let id = genuine.json["id"].as_u64().unwrap();
    let http = http_client();
    for (r, hook, secret) in &recipes {
        let name = r.name;
        // Accolade's own delivery: verified and taken (the log shows the recipe's 200).
        let log = api.wait_for(&format!("/v1/webhooks/{hook}/deliveries"), 30, |l| l["finished"][0]["state"] == "delivered").await;
        assert_eq!((log["finished"][0]["id"].as_u64(), log["finished"][0]["last_attempt"]["status"].as_u64()), (Some(id), Some(200)), "{name}: {log}");
        let send = |body: String, signature: Option<String>, header_id: u64| {
            let mut req = http.post(format!("http://127.0.0.1:{}/hook", r.port)).header("content-type", "application/json").header("accolade-id", header_id.to_string()).body(body);
            if let Some(sig) = signature {
                req = req.header("accolade-signature", sig);
            }
            async move {
                let res = req.send().await.unwrap();
                (res.status().as_u16(), res.text().await.unwrap().trim().to_string())
            }
        };
        let now = chrono::Utc::now().timestamp();
        let body = genuine.body.clone();
        let sign = |t: i64, b: &str| Some(accolade::webhooks::signature(secret, t, b));
        // A repeat, signed anew as Accolade signs a retry, and one with another id header.
        assert_eq!(send(body.clone(), sign(now, &body), id).await, (200, "duplicate".into()), "{name}: a repeat");
        assert_eq!(send(body.clone(), sign(now, &body), id + 1).await, (200, "duplicate".into()), "{name}: the id is the signed body's");
        let tampered = body.replace("\"alice\"", "\"mallory\"");
        assert_ne!(tampered, body);
        assert_eq!(send(tampered, sign(now, &body), id).await, (400, "bad signature".into()), "{name}: a changed body");
        assert_eq!(send(body.clone(), Some(accolade::webhooks::signature(&other_secret, now, &body)), id).await, (400, "bad signature".into()), "{name}: another endpoint's secret");
        assert_eq!(send(body.clone(), sign(now - 600, &body), id).await, (400, "stale timestamp".into()), "{name}: ten minutes old");
        assert_eq!(send(body.clone(), sign(now + 600, &body), id).await, (400, "stale timestamp".into()), "{name}: ten minutes ahead");
        assert_eq!(send(body.clone(), None, id).await.0, 400, "{name}: no signature");
        // A genuine notification with another id is taken: the recipe drops repeats only.
        let next = body.replace(&format!("\"id\":{id},"), &format!("\"id\":{},", id + 1000));
        assert_ne!(next, body);
        assert_eq!(send(next.clone(), sign(now, &next), id + 1000).await, (200, "processed".into()), "{name}: a new notification");
        assert_eq!(r.processed_once(2).await, [format!("{id} level_up alice"), format!("{} level_up alice", id + 1000)], "{name} acted once on each");
    }

    // The functions docs/webhooks.md shows are the recipes' own.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/webhooks.md")).unwrap();
    for (fence, file) in [("```js\n", "receiver.mjs"), ("```python\n", "receiver.py"), ("```go\n", "receiver.go")] {
        let start = doc.find(fence).unwrap_or_else(|| panic!("docs/webhooks.md has no {fence}")) + fence.len();
        let shown = &doc[start..start + doc[start..].find("```").unwrap()];
        let source = std::fs::read_to_string(format!("{}/examples/webhooks/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(shown.contains("verify") && source.contains(shown), "docs/webhooks.md's {file} function differs from examples/webhooks/{file}");
    }
    s.stop().await;
}

#[tokio::test]
async fn revocations_are_notified_signed_once_each_whatever_their_cause() {
    let dir = tmp();
    let s = TestServer::start(dir.path()).await;
    let api = Api::new(&s, DEMO_KEY);
    let (rx, addr) = Receiver::start().await;
    // Made after `revoked` existed, with every kind by default; another only for unlocks.
    let (id, secret) = create_hook(&api, &format!("http://{addr}/hook"), None).await;
    let (rx2, addr2) = Receiver::start().await;
    create_hook(&api, &format!("http://{addr2}/hook"), Some(json!(["unlock"]))).await;
    api.ingest(vec![http_event("v-1", "rae", "video.watched", json!({ "video": "v1", "playlist": "algebra", "seconds": 1200 }))]).await;
    let (st, _) = api.call("POST", "/v1/users/rae/badges/nice-listener/revoke", Some(&json!({ "reason": "shared account", "xp": "claw_back" }))).await;
    assert_eq!(st, 200);
    // Asked again: nothing more to notify.
    let (st, _) = api.call("POST", "/v1/users/rae/badges/nice-listener/revoke", Some(&json!({ "reason": "shared account", "xp": "claw_back" }))).await;
    assert_eq!(st, 200);
    let (st, _) = api.call("POST", "/v1/users/rae/retractions", Some(&json!({ "event_id": "v-1", "reason": "bot", "xp": "keep" }))).await;
    assert_eq!(st, 200);
    let got = rx.wait("two revocations", |g| kinds(g).iter().filter(|k| *k == "revoked").count() >= 2).await;
    let revoked: Vec<&Got> = got.iter().filter(|g| g.json["type"] == "revoked").collect();
    let what: Vec<(&str, &str, &str)> = revoked.iter().map(|g| (g.json["data"]["badge"]["id"].as_str().unwrap(), g.json["data"]["cause"].as_str().unwrap(), g.json["data"]["reason"].as_str().unwrap())).collect();
    assert_eq!(what, [("nice-listener", "api", "shared account"), ("act-one-scene-one", "retracted", "bot")]);
    assert!(revoked.iter().all(|g| verify(&secret, g) && g.headers["accolade-event"] == "revoked" && g.json["user_id"] == "rae"));
    // The unlock-only endpoint got the unlocks and nothing else.
    let only = rx2.wait("the unlocks", |g| g.len() >= 2).await;
    assert!(kinds(&only).iter().all(|k| k == "unlock"), "{:?}", kinds(&only));
    // Once nothing waits in the outbox, there were two, not three: the repeat made none.
    let log = api.wait_for(&format!("/v1/webhooks/{id}/deliveries"), 10, |l| l["pending"].as_array().unwrap().is_empty()).await;
    let finished: Vec<&str> = log["finished"].as_array().unwrap().iter().filter_map(|d| d["type"].as_str()).collect();
    assert_eq!(finished.iter().filter(|k| **k == "revoked").count(), 2, "{log}");
    s.stop().await;
}

#[tokio::test]
async fn an_expiry_nobody_sees_is_swept_pushed_to_the_history_and_notified_once() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.expiry_tick_ms = 50).await;
    let api = Api::new(&s, DEMO_KEY);
    let (rx, addr) = Receiver::start().await;
    let (id, _) = create_hook(&api, &format!("http://{addr}/hook"), Some(json!(["revoked"]))).await;
    let (st, v) = api
        .call("PUT", "/v1/catalogue/badges/fresh-login", Some(&json!({ "name": "Fresh Login", "tier": "bronze", "valid_for": "1m", "rule": { "kind": "count", "event": "login", "target": 1 } })))
        .await;
    assert_eq!(st, 201, "{v}");
    // Earned by a login two minutes ago, run out a minute ago: no event and no socket follow,
    // and the sweep takes it.
    let two_min_ago = (chrono::Utc::now() - chrono::Duration::minutes(2)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    api.ingest(vec![json!({ "event_id": "l-1", "user_id": "idle", "event_type": "login", "occurred_at": two_min_ago })]).await;
    let got = rx.wait("the expiry", |g| !g.is_empty()).await;
    assert_eq!((got[0].json["type"].as_str(), got[0].json["data"]["badge"]["id"].as_str(), got[0].json["data"]["cause"].as_str()), (Some("revoked"), Some("fresh-login"), Some("expired")));
    // Once: the index no longer names her, so later sweeps find nothing; her history has it.
    let (_, log) = api.get("/v1/users/idle/events").await;
    let expired: Vec<&Value> = log["events"].as_array().unwrap().iter().filter(|e| e["event_type"] == "accolade.expire").collect();
    assert_eq!(expired.len(), 1, "{log}");
    assert_eq!(expired[0]["pushes"][0]["type"], "revoked");
    let seq = log["events"].as_array().unwrap().last().unwrap()["seq"].as_u64().unwrap();
    // Another login (after a few more sweeps have run) comes next in the log, nothing between.
    api.wait_for(&format!("/v1/webhooks/{id}/deliveries"), 10, |l| l["pending"].as_array().unwrap().is_empty()).await;
    api.ingest(vec![http_event("l-2", "idle", "login", json!({}))]).await;
    let (_, log) = api.get(&format!("/v1/users/idle/events?after={seq}")).await;
    let after: Vec<&str> = log["events"].as_array().unwrap().iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(after, ["login"], "{log}");
    let (st, v) = api.get("/v1/users/idle/badges/fresh-login").await;
    assert_eq!(st, 200, "the new login earns it again: {v}");
    s.stop().await;
}

#[tokio::test]
async fn a_wait_that_runs_out_while_the_user_is_away_earns_its_badge_once_pushed_and_notified() {
    let dir = tmp();
    let s = TestServer::start_with(dir.path(), |c| c.expiry_tick_ms = 50).await;
    let api = Api::new(&s, DEMO_KEY);
    let (rx, addr) = Receiver::start().await;
    let (id, _) = create_hook(&api, &format!("http://{addr}/hook"), Some(json!(["unlock"]))).await;
    let rule = json!({ "kind": "absence", "event": "login", "until": "problem.answered", "within": "1m" });
    let (st, v) = api.call("PUT", "/v1/catalogue/badges/no-show", Some(&json!({ "name": "No Show", "tier": "bronze", "xp": 5, "rule": rule }))).await;
    assert_eq!(st, 201, "{v}");
    // Logged in 54 s ago and answered nothing since: the wait runs out 6 s from now, after
    // the login was taken (no lapse in its outcome), and with no event or socket to come,
    // the sweep looks then and awards it.
    let then = (chrono::Utc::now() - chrono::Duration::seconds(54)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let r = api.ingest(vec![json!({ "event_id": "l-1", "user_id": "away", "event_type": "login", "occurred_at": then })]).await;
    assert!(r["results"][0]["unlocks"].as_array().is_some_and(|u| !u.iter().any(|b| b == "no-show")), "{r}");
    let got = rx.wait("the lapse", |g| g.iter().any(|g| g.json["data"]["badge"]["id"] == "no-show")).await;
    let lapse = got.iter().find(|g| g.json["data"]["badge"]["id"] == "no-show").unwrap();
    assert_eq!((lapse.json["type"].as_str(), lapse.json["user_id"].as_str()), (Some("unlock"), Some("away")));
    // Once, in one `accolade.expire` record of her log carrying the unlock push.
    let (_, log) = api.get("/v1/users/away/events").await;
    let looks: Vec<&Value> = log["events"].as_array().unwrap().iter().filter(|e| e["event_type"] == "accolade.expire").collect();
    assert_eq!(looks.len(), 1, "{log}");
    assert!(looks[0]["pushes"].as_array().unwrap().iter().any(|p| p["type"] == "unlock" && p["badge"]["id"] == "no-show"), "{log}");
    let (st, v) = api.get("/v1/users/away").await;
    assert_eq!((st, v["xp"].as_u64().map(|x| x >= 5)), (200, Some(true)), "{v}");
    // An answer in time closes the next wait: a login, then an answer, and nothing lapses.
    api.ingest(vec![http_event("l-2", "away", "login", json!({}))]).await;
    api.ingest(vec![http_event("a-1", "away", "problem.answered", json!({ "exercise": "addition-1", "correct": true, "seconds": 3 }))]).await;
    api.wait_for(&format!("/v1/webhooks/{id}/deliveries"), 10, |l| l["pending"].as_array().unwrap().is_empty()).await;
    // The sweeps that ran meanwhile (every 50 ms, while two more events were taken and
    // delivered) found nothing more to do: one notification, one award.
    let all = rx.wait("every notification", |_| true).await;
    assert_eq!(all.iter().filter(|g| g.json["data"]["badge"]["id"] == "no-show").count(), 1);
    let (_, user) = api.get("/v1/users/away").await;
    let owned: Vec<&Value> = user["badges"].as_array().unwrap().iter().filter(|b| b["id"] == "no-show").collect();
    assert_eq!(owned.len(), 1, "{user}");
    assert_eq!(owned[0]["count"], 1, "{user}");
    // The stat, as the user route shows it: one lapse, and the wait the answer closed gone.
    let stat = user["stats"].as_array().unwrap().iter().find(|x| x["describe"] == "times login had no problem.answered within 1 minute").expect("the absence stat");
    assert_eq!(stat["value"], json!({ "lapsed": 1, "waiting": [] }), "{user}");
    s.stop().await;
}
