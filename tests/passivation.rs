//! Passivation with paused time: an actor with no connection and no event for the configured
//! idle time persists and stops; the next event revives the user from sled, state intact.

mod common;
use accolade::core::value::n;
use accolade::core::Event;
use accolade::server;
use accolade::clock::now_ms;
use accolade::user::{Conn, IngestOutcome, Origin, UserMsg};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

fn video(id: &str, seconds: f64) -> Event {
    let mut e = Event::new(id, "video.watched", now_ms(), &[("video", accolade::core::value::s("v")), ("playlist", accolade::core::value::s("p")), ("seconds", n(seconds))]);
    e.user_id = "pat".into();
    e.tenant_id = "demo".into();
    e
}

async fn ingest(shared: &Arc<server::Shared>, e: Event) -> IngestOutcome {
    let (tx, rx) = oneshot::channel();
    shared.users.send("demo", "pat", UserMsg::Event { event: e, received_at: now_ms(), arrived: tokio::time::Instant::now(), origin: Origin::Http(tx), permit: None }).unwrap();
    rx.await.unwrap()
}

/// Lets the timer task, the actor and the registry take their turns after time advanced.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_actor_passivates_and_comes_back_intact() {
    let dir = common::tmp();
    let mut cfg = common::test_config(dir.path());
    cfg.passivate_secs = 120;
    let shared = server::build(cfg).await.unwrap();

    let out = ingest(&shared, video("p1", 1200.0)).await;
    assert_eq!((out.status, out.xp), ("accepted", 160));
    assert_eq!(shared.users.active(), 1);

    // Not before the idle time...
    tokio::time::advance(Duration::from_secs(100)).await;
    settle().await;
    assert_eq!(shared.users.active(), 1, "passivated too early");
    // ...but after it (plus the check interval and the snapshot's own round trip).
    for _ in 0..20 {
        tokio::time::advance(Duration::from_secs(30)).await;
        settle().await;
        if shared.users.active() == 0 {
            break;
        }
        // Wait for the persister thread (real time) to finish the snapshot.
        shared.store.sync().await.unwrap();
    }
    assert_eq!(shared.users.active(), 0, "the idle actor did not stop");
    assert_eq!(shared.metrics.passivated.get(), 1);

    // The next event revives the user from sled with everything it had.
    let out = ingest(&shared, video("p2", 60.0)).await;
    assert_eq!((out.status, out.xp), ("accepted", 3));
    let (tx, mut rx) = mpsc::channel(16);
    let conn = Conn { id: 1, tx, slow: Arc::new(Notify::new()), closing: Default::default() };
    shared.users.send("demo", "pat", UserMsg::Attach { conn, since: None }).unwrap();
    let welcome: serde_json::Value = serde_json::from_str(&rx.recv().await.unwrap()).unwrap();
    assert_eq!(welcome["xp"], 163);
    let badges: Vec<&str> = welcome["badges"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(badges, ["act-one-scene-one", "nice-listener"]);
    // An old id is still a duplicate after revival.
    assert_eq!(ingest(&shared, video("p1", 1200.0)).await.status, "duplicate");
    // A connected user is never passivated.
    tokio::time::advance(Duration::from_secs(600)).await;
    settle().await;
    assert_eq!(shared.users.active(), 1);
}
