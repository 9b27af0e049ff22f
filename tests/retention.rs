//! Event retention: old events already folded into a snapshot are swept with the id chunks
//! that covered them; the log tail that recovery replays is kept; the user's state is untouched.

mod common;
use accolade::core::value::s;
use accolade::core::Event;
use accolade::server;
use accolade::clock::now_ms;
use accolade::user::{IngestOutcome, Origin, UserMsg};
use std::sync::Arc;

async fn ingest(shared: &Arc<server::Shared>, user: &str, id: &str) -> IngestOutcome {
    let mut e = Event::new(id, "article.read", now_ms(), &[("article", s(id))]);
    e.user_id = user.into();
    e.tenant_id = "demo".into();
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared.users.send("demo", user, UserMsg::Event { event: e, received_at: now_ms(), arrived: tokio::time::Instant::now(), origin: Origin::Http(tx), permit: None }).unwrap();
    rx.await.unwrap()
}

#[tokio::test]
async fn old_events_in_a_snapshot_are_swept_and_the_tail_is_kept() {
    let dir = common::tmp();
    let mut cfg = common::test_config(dir.path());
    cfg.snapshot_every = 1000; // a snapshot on the first event only
    let shared = server::build(cfg).await.unwrap();
    for id in ["r1", "r2", "r3"] {
        assert_eq!(ingest(&shared, "rita", id).await.status, "accepted");
    }
    shared.store.sync().await.unwrap();
    let store = shared.store.clone();
    let swept = tokio::task::spawn_blocking(move || store.sweep(now_ms() + 1000)).await.unwrap().unwrap();
    // Only r1 was in the snapshot; r2 and r3 are the tail a restart replays.
    assert_eq!(swept.events, 1);
    let left: Vec<String> = shared.store.events_after("demo", "rita", 0, 10).unwrap().into_iter().map(|(_, e)| e.event.event_id).collect();
    assert_eq!(left, ["r2", "r3"]);
    // Her id index, as her next start reads it, no longer holds r1 (its chunk went with it),
    // and still holds the tail's.
    let ids = shared.store.load_user("demo", "rita").unwrap().ids;
    assert_eq!((ids.get("r1"), ids.get("r2"), ids.get("r3")), (vec![], vec![2], vec![3]));
    assert_eq!(shared.store.id_chunks("demo", "rita").unwrap(), Vec::<u64>::new(), "the one chunk (through 1) went with r1");
    // Still a duplicate: the state's own recent-id window remembers it.
    assert_eq!(ingest(&shared, "rita", "r1").await.status, "duplicate");
    // A sweep with a cutoff before the events removes nothing.
    let store = shared.store.clone();
    assert_eq!(tokio::task::spawn_blocking(move || store.sweep(0)).await.unwrap().unwrap().events, 0);
}
