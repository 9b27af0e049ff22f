//! The load generator's quick mode, run against a real in-process server: proves the
//! generator and its measurements are right (counts, no missed pushes, recovery, slow
//! clients closed, passivation and revival). It asserts correctness, never speed.

use accolade::server;
use accolade_loadgen::{run, Options, Report, Scenario};
use std::time::Duration;

async fn scenario(s: Scenario, tweak: impl FnOnce(&mut accolade::config::Config), opts: impl FnOnce(&mut Options)) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = accolade::config::Config::default();
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.data_dir = dir.path().to_path_buf();
    cfg.demo = "on".into();
    cfg.rate_per_sec = 1e6;
    cfg.rate_burst = 1e6;
    tweak(&mut cfg);
    let listener = tokio::net::TcpListener::bind(cfg.bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = server::build(cfg).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let srv = tokio::spawn(server::run(listener, shared, async move {
        let _ = stopped.await;
    }));
    let mut o = Options { url: format!("ws://{addr}/v1/ws"), scenario: s, connections: 20, rate: 400.0, duration: Duration::from_secs(2), burst: 10, ..Options::default() };
    opts(&mut o);
    let r = run(o).await.unwrap();
    print!("{}", accolade_loadgen::report::table(&r));
    let _ = stop.send(());
    srv.await.unwrap().unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_counts_every_event_and_push() {
    let r = scenario(Scenario::Steady, |_| {}, |_| {}).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.sent > 400, "sent {}", r.sent);
    assert_eq!(r.acked, r.sent, "every event answered");
    assert_eq!(r.missed_pushes, 0);
    assert_eq!(r.ack.count, r.acked);
    assert!(r.xp.count > 0 && r.pushes >= r.xp.count);
    assert!(r.ack.p50 > 0 && r.ack.p50 <= r.ack.p99 && r.ack.p99 <= r.ack.max);
    assert!(r.timeline.iter().map(|s| s.acked).sum::<u64>() == r.acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_and_unlock_storm_answer_everything() {
    let r = scenario(Scenario::Spike, |_| {}, |_| {}).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.sent, r.acked), (200, 200));
    let r = scenario(Scenario::UnlockStorm, |_| {}, |_| {}).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.acked, r.sent);
    // The scripted events unlock at least one badge each (four videos: five badges).
    assert!(r.unlocks >= r.sent, "{} unlocks for {} events", r.unlocks, r.sent);
    assert_eq!(r.unlock.count, r.unlocks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_misses_nothing() {
    let r = scenario(Scenario::ReconnectStorm, |_| {}, |o| o.duration = Duration::from_secs(1)).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.not_recovered, 0);
    assert_eq!(r.missed_pushes, 0, "every push missed while away was replayed");
    assert!(r.resume_all_ms.is_some());
    assert_eq!(r.resumed, Some(r.connections as u64), "every client resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_are_closed_and_others_keep_going() {
    let r = scenario(
        Scenario::SlowConsumers,
        |c| {
            // Small enough that a client that stops reading fills it within the run, larger
            // than the burst of pushes one event causes.
            c.outbox_capacity = 64;
            c.progress_throttle_ms = 0;
        },
        |o| {
            o.connections = 100;
            o.rate = 1000.0;
            o.duration = Duration::from_secs(6);
            // Flooding, so that a stalled client's outbox fills within the run.
            o.slow_rate = Some(0.0);
        },
    )
    .await;
    assert!(r.slow_closed.unwrap() >= 1, "no slow client was closed");
    assert!(r.baseline_ack_p99_us.unwrap() > 0 && r.slow_phase_ack_p99_us.unwrap() > 0);
    // Only the slow clients' own closes are errors.
    assert!(r.errors.keys().all(|k| k == "closed 4000"), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_passivates_and_revives_users() {
    let r = scenario(Scenario::Churn, |c| c.passivate_secs = 1, |o| {
        o.connections = 5;
        o.users = 40;
        o.duration = Duration::from_secs(5);
    })
    .await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.distinct_users, 40);
    assert_eq!(r.fresh_first_ack.as_ref().unwrap().count, 40);
    assert!(r.revived_first_ack.as_ref().unwrap().count > 0, "no user came back");
    assert_eq!(r.acked, r.sent);
}
