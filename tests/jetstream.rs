//! The engine cluster mode stands on (issue 21), checked before any Accolade code depends on
//! it: a three-server NATS JetStream cluster on loopback, from the pinned binary that
//! `scripts/nats-server` installs, with every server fsyncing before it acknowledges. What the
//! design takes from it, each asserted here:
//! - a publish acknowledged by a replicated (R3) stream survives the death of the stream's
//!   leader, and the cluster keeps acknowledging with one server of three gone;
//! - a publish retried with the same message id (a node that did not see the first ack) is
//!   stored once and acknowledged as a duplicate;
//! - a key-value update that names a stale revision is refused: the fencing a partition lease
//!   needs, so an owner that lost its lease cannot write.

mod common;

use async_nats::jetstream::{self, kv, stream};
use common::nats::{until_ok, Cluster};
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// Publishes with a message id until JetStream acknowledges it; returns whether the
/// acknowledgement says it was a duplicate.
async fn publish(js: &jetstream::Context, subject: &str, id: &str) -> bool {
    until_ok("publish", || async {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", id);
        let ack = js.publish_with_headers(subject.to_string(), h, id.to_string().into()).await.map_err(|e| e.to_string())?;
        ack.await.map(|a| a.duplicate).map_err(|e| e.to_string())
    })
    .await
}

#[tokio::test]
async fn acknowledged_publishes_survive_the_leaders_death_retries_count_once_and_stale_revisions_are_refused() {
    let dir = tmp();
    let mut cluster = Cluster::start(dir.path());
    let client = cluster.connect().await;
    let version = client.server_info().version;
    assert!(version.starts_with("2.12."), "the pinned server is 2.12.x, this is {version}");
    let js = jetstream::new(client);
    let config = stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["acc.e.>".into()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let mut events = until_ok("creating the R3 stream", || js.get_or_create_stream(config.clone())).await;

    // 100 events over four partitions, then ten of them again: a retry counts once.
    for i in 0..100 {
        assert!(!publish(&js, &format!("acc.e.p{}.u{i}", i % 4), &format!("e{i}")).await, "e{i} is new");
    }
    for i in 0..10 {
        assert!(publish(&js, &format!("acc.e.p{}.u{i}", i % 4), &format!("e{i}")).await, "e{i} again is a duplicate");
    }

    // A lease: whoever holds the revision may write; a stale revision is refused.
    let leases = until_ok("creating the lease bucket", || js.create_key_value(kv::Config { bucket: "leases".into(), history: 1, num_replicas: 3, ..Default::default() })).await;
    let first = until_ok("taking the lease", || leases.create("p0", "node-a".into())).await;
    let second = leases.update("p0", "node-b".into(), first).await.expect("the holder of the current revision writes");
    assert!(second > first);
    assert!(leases.update("p0", "node-a again".into(), first).await.is_err(), "a stale revision is refused");
    assert_eq!(leases.get("p0").await.unwrap().as_deref(), Some(&b"node-b"[..]));

    // Kill the stream's leader: what it acknowledged is on the other two, and they go on.
    let leader = events.info().await.unwrap().cluster.clone().and_then(|c| c.leader).expect("the stream has a leader");
    cluster.kill(&leader);
    for i in 100..200 {
        publish(&js, &format!("acc.e.p{}.u{i}", i % 4), &format!("e{i}")).await;
    }
    let info = until_ok("stream info after the leader died", || async {
        let mut s = js.get_stream("EVENTS").await.map_err(|e| e.to_string())?;
        s.info().await.cloned().map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(info.state.messages, 200, "every acknowledged event once, none twice");
    let mut ids = BTreeSet::new();
    for seq in 1..=200 {
        let m = until_ok("reading back", || events.get_raw_message(seq)).await;
        ids.insert(m.headers.get("Nats-Msg-Id").expect("id kept").to_string());
    }
    assert_eq!(ids, (0..200).map(|i| format!("e{i}")).collect::<BTreeSet<_>>());
}

/// A test's NATS servers end with its cluster: a test that left its three running (as one
/// change once did, 335 idle servers by the end of a run) would slow every test after it.
#[tokio::test]
async fn a_tests_nats_servers_stop_when_its_cluster_is_dropped() {
    let dir = tmp();
    let nats = Cluster::start(dir.path());
    let pids = nats.pids();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|p| std::path::Path::new(&format!("/proc/{p}")).exists()), "the servers run");
    drop(nats);
    let gone: Vec<u32> = pids.into_iter().filter(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).collect();
    assert_eq!(gone.len(), 3, "every server was killed and reaped");
}

