//! Cluster mode's ownership of partitions (issue 21, as far as it is built), on a real
//! three-server NATS JetStream cluster on loopback: every partition owned by exactly one node
//! at every moment, shares moving on a join, a leave and a crash, the leases riding out the
//! loss of one NATS server, and a stale owner's writes refused by the fence.

mod common;

use accolade::cluster::lease::Timing;
use accolade::cluster::log::{LogError, PartitionLog};
use accolade::cluster::node::{Node, Options, Owned};
use accolade::cluster::partition::{preferred, PARTITIONS};
use accolade::cluster::{self, ClusterError};
use accolade::store::{EventLog, Store, TreeId, Write};
use common::nats::Cluster;
use common::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const LEASE: Duration = Duration::from_secs(3);

async fn join(cluster: &Cluster, id: &str) -> Node {
    // The nodes' own account (RUST_LOG, warnings by default), shown when a test fails.
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into())).with_test_writer().try_init();
    let client = cluster.connect().await;
    Node::join(client, Options { id: id.into(), timing: Timing::for_lease(LEASE), replicas: 3 }).await.expect("the node joins")
}

/// The nodes whose views are watched, by id.
type Views = Arc<Mutex<BTreeMap<String, watch::Receiver<Owned>>>>;

/// Who owns each partition, by every watched node's own account; panics if two nodes act for
/// one partition at once.
fn owners(views: &Views) -> BTreeMap<u16, String> {
    let mut by = BTreeMap::new();
    for (id, view) in views.lock().unwrap().iter() {
        for &p in view.borrow().keys() {
            if let Some(other) = by.insert(p, id.clone()) {
                panic!("partition {p} is owned by {other} and {id} at once");
            }
        }
    }
    by
}

/// Waits until every partition is owned and `ok` holds of the owners; returns how long that
/// took. Checks for double ownership every 5 ms meanwhile.
async fn settle(views: &Views, what: &str, limit: Duration, ok: impl Fn(&BTreeMap<u16, String>) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let by = owners(views);
        if by.len() == PARTITIONS as usize && ok(&by) {
            return start.elapsed();
        }
        if start.elapsed() >= limit {
            let missing: Vec<u16> = (0..PARTITIONS).filter(|p| !by.contains_key(p)).collect();
            panic!("{what}: not settled after {limit:?}: {} partitions owned; unowned {missing:?}; owners {by:?}", by.len());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn shares(by: &BTreeMap<u16, String>) -> BTreeMap<String, usize> {
    let mut s = BTreeMap::new();
    for id in by.values() {
        *s.entry(id.clone()).or_insert(0) += 1;
    }
    s
}

/// Every partition owned by the node rendezvous hashing prefers among `members`.
fn as_preferred(members: &[&str]) -> impl Fn(&BTreeMap<u16, String>) -> bool {
    let members: Vec<String> = members.iter().map(|s| s.to_string()).collect();
    move |by| by.iter().all(|(&p, id)| preferred(p, members.iter().map(String::as_str)) == Some(id.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_has_one_owner_through_joins_leaves_a_crash_and_a_lost_nats_server() {
    let dir = tmp();
    let mut nats = Cluster::start(dir.path());
    let views: Views = Arc::default();
    // A watcher that checks for double ownership every millisecond for the whole test, not
    // only while a step waits.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let (views, stop) = (views.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                owners(&views);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let mut nodes = BTreeMap::new();
    for id in ["node-a", "node-b", "node-c"] {
        let n = join(&nats, id).await;
        views.lock().unwrap().insert(id.to_string(), n.owned());
        nodes.insert(id, n);
    }
    settle(&views, "three nodes start", Duration::from_secs(30), as_preferred(&["node-a", "node-b", "node-c"])).await;
    let s = shares(&owners(&views));
    assert!(s.values().all(|&n| n >= 50), "each of three nodes owns about a third: {s:?}");

    // A fourth node takes its share from the others; nobody else's partitions move.
    let before = owners(&views);
    let d = join(&nats, "node-d").await;
    views.lock().unwrap().insert("node-d".into(), d.owned());
    nodes.insert("node-d", d);
    settle(&views, "node-d joins", Duration::from_secs(20), as_preferred(&["node-a", "node-b", "node-c", "node-d"])).await;
    let after = owners(&views);
    assert!((0..PARTITIONS).all(|p| before[&p] == after[&p] || after[&p] == "node-d"), "only node-d's share moved");

    // A node that leaves hands its partitions over at once, well within a lease.
    let c = nodes.remove("node-c").unwrap();
    let left = Instant::now();
    c.leave().await;
    views.lock().unwrap().remove("node-c");
    settle(&views, "node-c leaves", LEASE, as_preferred(&["node-a", "node-b", "node-d"])).await;
    let handover = left.elapsed();

    // A node that crashes (every task of it stopped at once, as with kill -9) keeps its
    // partitions until its lease runs out; then the others take them.
    let b = nodes.remove("node-b").unwrap();
    let crashed = Instant::now();
    drop(b);
    views.lock().unwrap().remove("node-b");
    settle(&views, "node-b crashes", 4 * LEASE, as_preferred(&["node-a", "node-d"])).await;
    let takeover = crashed.elapsed();
    assert!(takeover >= LEASE - Timing::for_lease(LEASE).heartbeat, "a dead node's partitions wait for its lease: {takeover:?}");

    // One NATS server of three dies: the nodes' clients move to another server, and no
    // partition is ever owned twice, watched for 8 leases; a node that let its share go when
    // the heartbeat bucket's leader died (as designed, docs/cluster.md, "What losing one NATS
    // server of three costs") takes it back, so ownership comes back whole and as before.
    // (Twice in CI, before the fixes of docs/cluster.md's "A node's share after a lost NATS
    // server", node-d had not taken its share back 90 s later.)
    nats.kill("n0");
    let lost = Instant::now();
    let before = as_preferred(&["node-a", "node-d"]);
    let mut whole_at = None;
    while lost.elapsed() < 8 * LEASE {
        let by = owners(&views);
        if by.len() == PARTITIONS as usize && before(&by) {
            whole_at.get_or_insert(lost.elapsed());
        } else {
            whole_at = None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let whole = match whole_at {
        Some(at) => at,
        None => 8 * LEASE + settle(&views, "n0 dies", 10 * LEASE, &before).await,
    };

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    checker.await.expect("no partition was ever owned twice");
    eprintln!("hand-over on leave {handover:?}, takeover after a crash {takeover:?} (lease {LEASE:?}); every partition owned as before since {whole:?} after a NATS server died");
}

/// node-a alone on the cluster, once it owns every partition, and the partition logs.
async fn alone(nats: &Cluster) -> (Node, Views, PartitionLog) {
    let a = join(nats, "node-a").await;
    let views: Views = Arc::default();
    views.lock().unwrap().insert("node-a".into(), a.owned());
    settle(&views, "node-a alone", Duration::from_secs(30), |_| true).await;
    let log = PartitionLog::open(async_nats::jetstream::new(nats.connect().await), 3).await.unwrap();
    (a, views, log)
}

/// node-b joins and node-a stops (its tasks end, as in a crash); returns node-b once it owns
/// every partition.
async fn take_over(nats: &Cluster, a: Node, views: &Views) -> Node {
    let b = join(nats, "node-b").await;
    drop(a);
    views.lock().unwrap().remove("node-a");
    views.lock().unwrap().insert("node-b".into(), b.owned());
    settle(views, "node-b takes over", 4 * LEASE, |by| by.values().all(|id| id == "node-b")).await;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owners_writes_are_refused_once_its_partition_was_taken_over() {
    let dir = tmp();
    let nats = Cluster::start(dir.path());
    let (a, views, log) = alone(&nats).await;

    // node-a writes through its fence, and keeps the fence as a paused process would.
    let mut stale = a.owned().borrow()[&7].clone();
    let first = log.append(&mut stale, "u1", "note", "by a".into()).await.expect("the owner writes");

    // node-a stops (its leases run out), node-b takes every partition over.
    let b = take_over(&nats, a, &views).await;

    // node-a wakes up and writes with what it had: refused, under any key of the partition.
    for key in ["u1", "u2"] {
        match log.append(&mut stale, key, "note", "by a, too late".into()).await {
            Err(LogError::Fenced(7)) => {}
            other => panic!("a stale owner's write must be refused by the fence: {other:?}"),
        }
    }
    // node-b's fence writes.
    let mut fresh = b.owned().borrow()[&7].clone();
    assert!(fresh.lease > stale.lease && fresh.claim > stale.claim, "lease and claim moved on: {stale:?} then {fresh:?}");
    let mut seqs = Vec::new();
    for i in 0..50 {
        seqs.push(log.append(&mut fresh, "u1", "note", format!("by b {i}").into()).await.expect("the new owner writes"));
    }

    // The key's records: a's note, then b's fifty, and nothing of a after b's claim.
    let records = log.records(7, "u1", 0, 1000).await.unwrap();
    let bodies: Vec<String> = records.iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    let mut want = vec!["by a".to_string()];
    want.extend((0..50).map(|i| format!("by b {i}")));
    assert_eq!(bodies, want);
    assert_eq!(records[0].sequence, first);
    assert!(records[1..].iter().all(|r| r.node == "node-b" && r.lease == fresh.lease && r.sequence > fresh.claim));
    assert_eq!(records[1..].iter().map(|r| r.sequence).collect::<Vec<_>>(), seqs);
    // The claims: a's, then b's, each naming its lease revision.
    let claims = log.claims(7, 0, 10).await.unwrap();
    let who: Vec<(&str, u64)> = claims.iter().map(|r| (r.node.as_str(), r.lease)).collect();
    assert_eq!(who, vec![("node-a", stale.lease), ("node-b", fresh.lease)]);
}

#[tokio::test]
async fn an_unreachable_nats_and_a_bad_node_id_are_clear_errors() {
    let port = free_port();
    match cluster::connect(&format!("nats://127.0.0.1:{port}"), Duration::from_secs(1)).await {
        Err(e @ ClusterError::Unreachable { .. }) => assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}"),
        other => panic!("no server listens there: {other:?}"),
    }
    match cluster::connect("http://[oops", Duration::from_secs(1)).await {
        Err(e @ ClusterError::Unreachable { .. }) => assert!(e.to_string().contains("not a NATS address"), "{e}"),
        other => panic!("{other:?}"),
    }
    for bad in ["", "node a", "node.a", &"x".repeat(65)] {
        assert!(matches!(accolade::cluster::node::check_id(bad), Err(ClusterError::BadNodeId(_))), "{bad:?}");
    }
    accolade::cluster::node::check_id("node-1_b").unwrap();
}

/// Appends `writes` and waits for the changelog's answer.
fn append(w: &accolade::cluster::changelog::Writer, writes: Vec<Write>) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.append(&writes, Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_writes_reach_its_changelog_in_batches_replay_in_order_and_stop_at_the_fence() {
    use accolade::cluster::changelog::{restore, Writer, KEY};
    let dir = tmp();
    let nats = Cluster::start(dir.path());
    let (a, views, log) = alone(&nats).await;
    let writer = Writer::start(log.clone(), a.owned().borrow()[&3].clone());

    // 300 jobs at once (a user's log entry and its dedup key each, one a delete), then two
    // that are too large to share a batch.
    let job = |i: u32| {
        vec![
            Write::Put(TreeId::Events, format!("demo\0u{i}\0").into_bytes(), format!("event {i}").into_bytes()),
            if i.is_multiple_of(10) { Write::Del(TreeId::Dedup, format!("demo\0e{i}").into_bytes()) } else { Write::Put(TreeId::Dedup, format!("demo\0e{i}").into_bytes(), vec![1]) },
        ]
    };
    let mut expected: Vec<Write> = Vec::new();
    let mut waits = Vec::new();
    for i in 0..300 {
        expected.extend(job(i));
        waits.push(append(&writer, job(i)));
    }
    for big in 0..2u8 {
        let w = vec![Write::Put(TreeId::Users, vec![b'b', big], vec![big; 400 * 1024])];
        expected.extend(w.clone());
        waits.push(append(&writer, w));
    }
    for w in waits {
        w.await.unwrap().expect("stored in the changelog");
    }
    // An empty job (what a sync sends) is answered once everything before it is stored, and
    // writes nothing.
    let before = log.records(3, KEY, 0, 10_000).await.unwrap().len();
    append(&writer, vec![]).await.unwrap().expect("an empty job is answered");
    assert_eq!(log.records(3, KEY, 0, 10_000).await.unwrap().len(), before);
    let batches = log.records(3, KEY, 0, 10_000).await.unwrap();
    assert!(batches.len() < 300, "jobs share batches: {} batches for 302 jobs", batches.len());
    // The two 400 KiB jobs cannot share one (a batch stays under NATS's 1 MiB payload).
    let decoded = accolade::cluster::changelog::batches(&log, 3, 0, 10_000).await.unwrap();
    let with_big = |n: u8| decoded.iter().position(|(_, ws)| ws.iter().any(|w| matches!(w, Write::Put(TreeId::Users, k, _) if *k == vec![b'b', n]))).unwrap();
    assert_ne!(with_big(0), with_big(1), "the large jobs went in separate batches");
    assert!(batches.iter().all(|b| b.body.len() < 1024 * 1024));

    // Replayed, the changelog gives every write once, in the order they were appended.
    let mut replayed = Vec::new();
    let last = restore(&log, 3, 0, |w| replayed.extend(w)).await.unwrap();
    assert_eq!(replayed, expected);
    assert_eq!(last, batches.last().unwrap().sequence);
    // From a point on, only what came after it.
    let mut tail = Vec::new();
    restore(&log, 3, batches[batches.len() - 2].sequence, |w| tail.extend(w)).await.unwrap();
    assert_eq!(tail, expected[expected.len() - 1..]);

    // Another node claims the partition: the writer's appends fail from then on, and the
    // changelog holds nothing of them.
    let _b = take_over(&nats, a, &views).await;
    let r = append(&writer, job(1000)).await.unwrap();
    assert!(r.as_ref().is_err_and(|e| e.contains("claimed by another node")), "a fenced-off writer's append must fail: {r:?}");
    let r = append(&writer, job(1001)).await.unwrap();
    assert!(r.as_ref().is_err_and(|e| e.contains("claimed by another node")), "and so must every one after it: {r:?}");
    let mut after = Vec::new();
    restore(&log, 3, 0, |w| after.extend(w)).await.unwrap();
    assert_eq!(after, expected);
}

/// What a store holds, as a sorted list, to compare two stores.
fn contents(store: &Store) -> Vec<Write> {
    let mut c = store.contents().unwrap();
    c.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_changelog_rebuilds_what_its_whole_history_did_swept_and_a_fenced_owner_compacts_nothing() {
    use accolade::cluster::changelog::{compact, latest_base, Writer, KEY};
    use accolade::cluster::eventlog::rebuild;
    let dir = tmp();
    let nats = Cluster::start(dir.path());
    let (a, views, log) = alone(&nats).await;
    let writer = Writer::start(log.clone(), a.owned().borrow()[&3].clone());
    // Two users' events 1 to 40 (received at 1001 to 1040), each with a rewrite of one
    // leaderboard record; a snapshot at 20.
    let job = |u: &str, seq: u64| {
        let mut w = event_writes(u, seq, &format!("{u}-{seq}"));
        w.push(Write::Put(TreeId::Boards, format!("demo\0{u}\0").into_bytes(), seq.to_be_bytes().to_vec()));
        if seq == 20 {
            w.extend(accolade::store::writes::snapshot("demo", u, 20, b"state at 20".to_vec()));
        }
        w
    };
    let mut waits = Vec::new();
    for seq in 1..=40 {
        for u in ["ann", "bob"] {
            waits.push(append(&writer, job(u, seq)));
        }
    }
    for w in waits {
        w.await.unwrap().unwrap();
    }
    let batches = log.records(3, KEY, 0, 10_000).await.unwrap().len() as u64;
    // What the whole history gives, swept at 1011 (events 1 to 10 are past it and in the
    // snapshot).
    let whole = Store::open_temporary().unwrap();
    rebuild(&whole, &log, 3, 0, &mut |_| {}).await.unwrap();
    whole.sweep(1011).unwrap();
    let want = contents(&whole);
    assert!(want.len() < 2 * 40 * 2 + 2 * 2 + 2, "the sweep took the old events out: {}", want.len());

    let c = compact(&log, &writer, 3, "node-a", Some(1011)).await.unwrap().expect("there was something to compact");
    assert_eq!(c.batches, batches);
    assert_eq!(c.records, want.len());
    assert!(c.removed >= batches, "{c:?}");
    assert!(log.records(3, KEY, 0, 10_000).await.unwrap().is_empty(), "the batches the base covers are gone");
    let from_base = Store::open_temporary().unwrap();
    let r = rebuild(&from_base, &log, 3, 0, &mut |_| {}).await.unwrap();
    assert_eq!(r.batches, 0);
    assert_eq!(contents(&from_base), want, "the base gives what the swept history gave");

    // Batches after the base are read after it; a second compaction folds base and batches.
    for seq in 41..=45 {
        append(&writer, job("ann", seq)).await.unwrap().unwrap();
    }
    let later = Store::open_temporary().unwrap();
    assert_eq!(rebuild(&later, &log, 3, 0, &mut |_| {}).await.unwrap().batches, 5);
    let want_later = contents(&later);
    for seq in 41..=45u64 {
        assert!(want_later.iter().any(|w| matches!(w, Write::Put(TreeId::Events, k, _) if k.ends_with(&seq.to_be_bytes()))), "event {seq} is there");
    }
    let c2 = compact(&log, &writer, 3, "node-a", Some(1011)).await.unwrap().unwrap();
    assert_eq!(c2.batches, 5);
    let again = Store::open_temporary().unwrap();
    rebuild(&again, &log, 3, 0, &mut |_| {}).await.unwrap();
    assert_eq!(contents(&again), want_later);

    // An owner that lost the partition stores no marker and removes nothing.
    append(&writer, job("bob", 41)).await.unwrap().unwrap();
    let marker = latest_base(&log, 3).await.unwrap();
    let _b = take_over(&nats, a, &views).await;
    let stale = compact(&log, &writer, 3, "node-a", Some(1011)).await;
    assert!(stale.as_ref().is_err_and(|e| e.contains("claimed by another node")), "{stale:?}");
    assert_eq!(latest_base(&log, 3).await.unwrap(), marker);
    assert_eq!(log.records(3, KEY, 0, 10_000).await.unwrap().len(), 1, "the batch after the base is still there");
}

/// A user's log entry as the actor writes it./// A user's log entry as the actor writes it.
fn event_writes(user: &str, seq: u64, id: &str) -> Vec<Write> {
    let mut event = accolade::core::Event::new(id, "problem_answered", 1_000 + seq as i64, &[]);
    event.user_id = user.into();
    event.tenant_id = "demo".into();
    let ev = accolade::store::StoredEvent {
        event,
        received_at: 1_000 + seq as i64,
        catalogue_version: 1,
        pushes: vec![(seq, format!("{{\"type\":\"xp\",\"seq\":{seq}}}"))],
    };
    vec![accolade::store::writes::event("demo", user, seq, &ev, true)]
}

/// Whether `user`'s log holds a record found by id `id`: in her id index as a load builds it,
/// and read back from the log, as her actor checks a resend.
fn knows(log: &dyn EventLog, user: &str, id: &str) -> bool {
    let loaded = log.load_user("demo", user).unwrap();
    loaded.ids.get(id).into_iter().any(|seq| log.event_id_at("demo", user, seq).unwrap().as_deref() == Some(id))
}

/// Appends through an event log and waits for the answer.
async fn log_append(log: &dyn EventLog, user: &str, writes: Vec<Write>) -> Result<(), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append("demo", user, writes, Box::new(move |r| {
        let _ = tx.send(r);
    }))
    .map_err(|e| e.to_string())?;
    rx.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_rebuilt_on_another_node_from_the_changelog_and_an_unwritten_event_is_never_a_duplicate() {
    use accolade::cluster::changelog::Writer;
    use accolade::cluster::eventlog::{rebuild, ClusterLog};
    use accolade::cluster::partition::partition_of;
    let dir = tmp();
    std::fs::create_dir_all(dir.path().join("nats")).unwrap();
    let nats = Cluster::start(&dir.path().join("nats"));
    let (a, views, log) = alone(&nats).await;
    let p = partition_of("demo", "alice");

    // Node a serves alice's partition and accepts 20 of her events.
    let store_a = Store::open(&dir.path().join("a")).unwrap();
    let on_a = ClusterLog::new(store_a.clone());
    on_a.serve(p, Writer::start(log.clone(), a.owned().borrow()[&p].clone()));
    for seq in 1..=20 {
        log_append(&on_a, "alice", event_writes("alice", seq, &format!("e{seq}"))).await.expect("stored in the changelog and in sled");
    }
    assert!(knows(&on_a, "alice", "e7"));
    let before = on_a.load_user("demo", "alice").unwrap();
    assert_eq!(before.tail.len(), 20);

    // A node with an empty disk rebuilds her from the changelog alone: the same events, the
    // same pushes, the same ids known.
    let store_b = Store::open(&dir.path().join("b")).unwrap();
    let on_b = ClusterLog::new(store_b.clone());
    assert!(on_b.load_user("demo", "alice").is_err(), "a partition not yet served is not read");
    rebuild(&store_b, &log, p, 0, &mut |_| {}).await.unwrap();
    let b = take_over(&nats, a, &views).await;
    on_b.serve(p, Writer::start(log.clone(), b.owned().borrow()[&p].clone()));
    let after = on_b.load_user("demo", "alice").unwrap();
    let ids = |l: &accolade::store::Loaded| l.tail.iter().map(|e| e.event.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(after.last_seq, before.last_seq);
    assert_eq!(on_b.pushes_after("demo", "alice", 0, 100).unwrap(), on_a.pushes_after("demo", "alice", 0, 100).unwrap());
    assert!(knows(&on_b, "alice", "e7"));

    // Node a, fenced off, cannot take another event: the append fails, and neither its sled
    // nor the changelog has it, so a resend of it is new, not a duplicate.
    let r = log_append(&on_a, "alice", event_writes("alice", 21, "e21")).await;
    assert!(r.as_ref().is_err_and(|e| e.contains("claimed by another node")), "{r:?}");
    assert!(!knows(&store_a, "alice", "e21"), "not in a's sled");
    assert!(!on_a.serves(p), "a stopped writer serves no more");
    assert!(on_a.load_user("demo", "alice").is_err());
    log_append(&on_b, "alice", event_writes("alice", 21, "e21")).await.expect("node b takes the resend");
    assert!(knows(&on_b, "alice", "e21"));
    on_b.sync().await.unwrap();
    assert_eq!(on_b.load_user("demo", "alice").unwrap().tail.len(), 21);
}

/// Connects `user` to a node, retrying until the node serves the user's partition (it answers
/// the hello with a welcome), for at most `limit`.
async fn connect_served(url: &str, user: &str, limit: Duration) -> Client {
    use futures_util::SinkExt;
    let start = Instant::now();
    loop {
        if let Ok(Ok((mut ws, _))) = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(url)).await {
            let hello = serde_json::json!({ "type": "hello", "token": token(user) }).to_string();
            if ws.send(tokio_tungstenite::tungstenite::Message::text(hello)).await.is_ok() {
                let mut c = Client { ws, welcome: serde_json::Value::Null };
                if let Ok(w) = tokio::time::timeout(Duration::from_secs(2), c.next()).await
                    && w["type"] == "welcome"
                {
                    c.welcome = w;
                    return c;
                }
            }
        }
        assert!(start.elapsed() < limit, "{user} not served at {url} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many partitions the node on `port` serves, by its /metrics.
async fn partitions_served(port: u16) -> Option<u64> {
    let (_, m) = Api::demo_at(port).with_key(None).get("/metrics").await;
    m.as_str()?.lines().find_map(|l| l.strip_prefix("accolade_cluster_partitions_served "))?.parse().ok()
}

/// Waits until the node on `port` serves exactly `share` partitions, for at most `limit`.
async fn wait_serving(port: u16, share: u64, limit: Duration) {
    let start = Instant::now();
    loop {
        let served = partitions_served(port).await;
        if served == Some(share) {
            return;
        }
        assert!(start.elapsed() < limit, "the node on {port} serves {served:?} partitions after {limit:?}, not its share of {share}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes a new cluster's buckets and streams with `accolade cluster-init` (twice: the second
/// run finds them and changes nothing), so that no node's start waits on their leaders.
fn cluster_init(urls: &str) {
    for run in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_accolade")).args(["cluster-init", "--cluster", urls]).output().expect("the binary runs");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && said.contains("cluster ready") && said.contains("ACCOLADE_PARTITIONS"), "run {run}: {said} {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Three NATS servers and two node binaries, `node-a` and `node-b`, with a 3 s lease.
struct TwoNodes {
    a: Server,
    b: Server,
    port_a: u16,
    port_b: u16,
    _nats: Cluster,
    _dir: tempfile::TempDir,
}

/// A failed test shows what the nodes said (their info and warn lines), the last of it: why a
/// partition was let go of, rebuilt, or not served, is in there.
impl Drop for TwoNodes {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (name, server) in [("node-a", &mut self.a), ("node-b", &mut self.b)] {
            let mut said = std::collections::VecDeque::new();
            while let Ok(line) = server.1.try_recv() {
                said.push_back(line);
                if said.len() > 300 {
                    said.pop_front();
                }
            }
            eprintln!("---- the last {} lines {name} said ----", said.len());
            for line in said {
                eprintln!("[{name}] {line}");
            }
        }
    }
}

impl TwoNodes {
    async fn start() -> TwoNodes {
        TwoNodes::start_with(|_| vec![]).await
    }

    /// Both nodes with more flags, made from the test's directory.
    async fn start_with(extra: impl Fn(&std::path::Path) -> Vec<String>) -> TwoNodes {
        let dir = tmp();
        std::fs::create_dir_all(dir.path().join("nats")).unwrap();
        let nats = Cluster::start(&dir.path().join("nats"));
        nats.ready().await;
        // Made once the test has its NATS cluster (it may have waited its turn for it), so
        // that what they say about time (a period's end, say) counts from the nodes' start.
        let extra = extra(dir.path());
        let urls = nats.urls.join(",");
        cluster_init(&urls);
        let (port_a, port_b) = (free_port(), free_port());
        let node = |id: &str, port: u16| {
            // Compacting every 25 batches: the failovers below rebuild from a base and the
            // batches after it, as a long-lived cluster does.
            let mut args = vec!["--cluster".to_string(), urls.clone(), "--node-id".into(), id.into(), "--cluster-lease-ms".into(), "3000".into(), "--cluster-compact-batches".into(), "25".into()];
            args.extend(extra.iter().cloned());
            let data = dir.path().join(id);
            async move { start_with(&data, port, &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
        };
        let a = node("node-a", port_a).await;
        let b = node("node-b", port_b).await;
        // Each node serves its own share before the test begins: while node-b's share moves
        // from node-a (which took every partition while alone), its users are briefly
        // `unavailable`, which the tests below assert only where they mean to.
        for (id, port) in [("node-a", port_a), ("node-b", port_b)] {
            let share = (0..PARTITIONS).filter(|&p| preferred(p, ["node-a", "node-b"]) == Some(id)).count() as u64;
            wait_serving(port, share, Duration::from_secs(60)).await;
        }
        TwoNodes { a, b, port_a, port_b, _nats: nats, _dir: dir }
    }

    /// Starts one more node, `id`, on the same NATS servers.
    async fn join(&self, id: &str) -> (Server, u16) {
        let port = free_port();
        let urls = self._nats.urls.join(",");
        let args = ["--cluster", &urls, "--node-id", id, "--cluster-lease-ms", "3000", "--cluster-compact-batches", "25"];
        (start_with(&self._dir.path().join(id), port, &args).await, port)
    }

    fn ws_a(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port_a)
    }

    fn ws_b(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port_b)
    }
}

/// A demo user whose partition `node` is preferred for while both nodes live.
fn user_of(node: &str, prefix: &str) -> String {
    use accolade::cluster::partition::partition_of;
    (0..).map(|i| format!("{prefix}-{i}")).find(|u| preferred(partition_of("demo", u), ["node-a", "node-b"]) == Some(node)).unwrap()
}

/// A metric's value on a node (0 when it is not there).
async fn metric(port: u16, name: &str) -> f64 {
    let text = http_client().get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' '))).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// 300 answers of a user node-a serves, streamed over a socket of `via` (200 of them before
/// the kill), and node-a killed with SIGKILL once half are acknowledged: node-b then serves
/// her, every event acked before the kill is a duplicate there, and her state is the stream
/// applied once.
async fn acked_events_survive_the_owners_kill_9(via: &str) {
    use common::answers::{answers, assert_exact, resend_all, send_all, Seen};
    use tokio_tungstenite::tungstenite::Message;
    let mut nodes = TwoNodes::start().await;
    let user = user_of("node-a", "traveller");
    let url = if via == "node-a" { nodes.ws_a() } else { nodes.ws_b() };

    // 300 answers; kill -9 once half are acknowledged.
    let at = now_rfc3339();
    let events = answers("c", 300);
    // A welcome on node-b comes from node-a's actor only once node-a serves her.
    let _ = connect_served(&nodes.ws_a(), &user, Duration::from_secs(30)).await;
    let mut c = connect_served(&url, &user, Duration::from_secs(30)).await;
    // The first 40 one at a time, each its own changelog batch, and node-a compacts her
    // partition's changelog: what node-b rebuilds from is a base and the batches after it.
    let mut seen = Seen::default();
    for e in &events[..40] {
        send_all(&mut c, std::slice::from_ref(e), &at).await;
        let acked = seen.acked.len();
        while seen.acked.len() == acked {
            seen.note(&c.next().await);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(nodes.port_a, "accolade_cluster_compactions_total").await < 1.0 {
        assert!(Instant::now() < deadline, "node-a compacted nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Up to the 200th sent, the kill once 150 are acknowledged: some are in flight when it
    // lands, and the last 100 are sent only after the failover (sent at once, all 300 had
    // sometimes been acked before the kill took effect).
    send_all(&mut c, &events[40..200], &at).await;
    while seen.acked.len() < 150 {
        seen.note(&c.next().await);
    }
    nodes.a.kill9();
    let killed = Instant::now();
    // The socket closes (on node-b, once it finds node-a gone), telling the client to come back.
    let mut close = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), futures_util::StreamExt::next(&mut c.ws)).await {
            Ok(Some(Ok(Message::Text(t)))) => seen.note(&serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(f)))) => {
                close = Some(f.map(|f| (u16::from(f.code), f.reason.to_string())));
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => break,
            Err(_) if via == "node-a" => break,
            Err(_) => {}
        }
    }
    if via == "node-b" {
        let (code, reason) = close.flatten().expect("node-b closes the socket with a code once node-a is gone");
        assert_eq!(code, 1011, "{reason}");
        assert!(reason.contains("reconnect"), "{reason}");
        eprintln!("node-b closed the socket {:?} after node-a was killed: {reason}", killed.elapsed());
    }
    assert!(seen.acked.len() <= 200, "only 200 were sent before the kill: {}", seen.acked.len());

    // node-b takes the partition over once node-a's lease has run out, rebuilds her from the
    // changelog (node-a's disk is not touched), and serves her: every event node-a acked is a
    // duplicate there, and her state is the rule core's answer for the stream applied once.
    let mut c = connect_served(&nodes.ws_b(), &user, Duration::from_secs(30)).await;
    let failover = killed.elapsed();
    resend_all(&mut c, &events, &at, &mut seen).await;
    let fresh = connect_served(&nodes.ws_b(), &user, Duration::from_secs(10)).await;
    assert_exact(&fresh.welcome, &user, &events, &at, &seen);
    eprintln!("node-b served {user} {failover:?} after node-a was killed (lease 3 s); {} of 300 acked before the kill, over {via}", seen.acked.len());

    // `accolade replay` on node-b's disk, which holds her only as rebuilt from JetStream and
    // then served, rebuilds her from the log alone and finds the stored state.
    nodes.b.kill9();
    let data = nodes._dir.path().join("node-b");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accolade")).args(["--data-dir", data.to_str().unwrap(), "replay"]).env("RUST_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("replayed 1 users") && text.contains(" 0 differences"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_acked_events_survive_kill_9_of_the_node_that_owned_her_and_another_node_serves_her() {
    acked_events_survive_the_owners_kill_9("node-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_acked_over_a_socket_of_another_node_survive_kill_9_of_the_users_owner() {
    acked_events_survive_the_owners_kill_9("node-b").await;
}

/// Reads frames until one of `ty` for `event_id`, returning all read on the way.
async fn until_for(c: &mut Client, ty: &str, event_id: &str) -> Vec<serde_json::Value> {
    let mut out = vec![];
    loop {
        let m = c.next().await;
        let done = m["type"] == ty && m["event_id"] == event_id;
        out.push(m);
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_on_any_node_is_served_by_its_users_actor_and_both_tabs_get_every_push() {
    let nodes = TwoNodes::start().await;
    let user = user_of("node-a", "tabs");
    // One tab on the node that serves her, one on the other node.
    let mut on_a = connect_served(&nodes.ws_a(), &user, Duration::from_secs(30)).await;
    let mut on_b = connect_served(&nodes.ws_b(), &user, Duration::from_secs(30)).await;
    assert_eq!((&on_b.welcome["epoch"], &on_b.welcome["xp"]), (&on_a.welcome["epoch"], &on_a.welcome["xp"]), "one user, one state");
    // node-a counts the socket node-b holds for her.
    let gauge = |port: u16| async move {
        let text = http_client().get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines().find_map(|l| l.strip_prefix("accolade_cluster_remote_sockets ")).map(|v| v.trim().to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge(nodes.port_a).await.as_deref() != Some("1") {
        assert!(Instant::now() < deadline, "node-a's remote sockets: {:?}", gauge(nodes.port_a).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gauge(nodes.port_b).await.as_deref(), Some("0"));

    // An event from the tab on node-b: acked there, its XP pushed to both tabs.
    on_b.send(&answer("t-1", "ex-1", true)).await;
    let seen_b = until_for(&mut on_b, "xp", "t-1").await;
    let ack = seen_b.iter().position(|m| m["type"] == "ack" && m["event_id"] == "t-1").expect("acked on its own socket");
    assert_eq!(seen_b[ack]["duplicate"], false);
    assert!(ack < seen_b.len() - 1, "the ack comes before the push: {seen_b:?}");
    let seen_a = until_for(&mut on_a, "xp", "t-1").await;
    assert!(seen_a.iter().all(|m| m["type"] != "ack"), "the other tab gets the push, not the ack: {seen_a:?}");
    assert_eq!(seen_a.last(), seen_b.last(), "the same push on both tabs");
    // From the tab on node-a: the same the other way round.
    on_a.send(&answer("t-2", "ex-1", true)).await;
    let xp_a = until_for(&mut on_a, "xp", "t-2").await.pop().unwrap();
    let xp_b = until_for(&mut on_b, "xp", "t-2").await.pop().unwrap();
    assert_eq!(xp_a, xp_b);
    assert_eq!(xp_b["total"].as_u64(), Some(seen_b.last().unwrap()["total"].as_u64().unwrap() + xp_b["delta"].as_u64().unwrap()));
    // A resend over node-b is a duplicate; an event the rules refuse is refused by name.
    on_b.send(&answer("t-1", "ex-1", true)).await;
    let dup = on_b.until("ack").await.pop().unwrap();
    assert_eq!((&dup["event_id"], &dup["duplicate"]), (&serde_json::json!("t-1"), &serde_json::json!(true)));
    // Watching a board over the socket node-b holds: rank and top pushed from the whole
    // cluster's standings, with a rival node-b serves ahead of her.
    let rival = user_of("node-b", "rival");
    for i in 0..6 {
        let r = post_until_taken(&Api::demo_at(nodes.port_a), &http_answer(&format!("r-{i}"), &rival, "ex-1", true), Duration::from_secs(30)).await;
        assert_eq!(r["status"], "accepted", "{r}");
    }
    on_b.send(&serde_json::json!({ "type": "watch", "board": "xp-weekly", "top": 3 })).await;
    let rank = on_b.until("rank").await.pop().unwrap();
    assert_eq!((rank["rank"].as_u64(), rank["of"].as_u64()), (Some(2), Some(2)), "{rank}");
    let top = on_b.until("top").await.pop().unwrap();
    let names: Vec<&str> = top["entries"].as_array().unwrap().iter().map(|e| e["user_id"].as_str().unwrap()).collect();
    assert_eq!(names, [rival.as_str(), user.as_str()], "{top}");
    on_b.send(&serde_json::json!({ "type": "unwatch", "board": "xp-weekly" })).await;
    on_b.send(&event("t-bad", "problem.answered", serde_json::json!({ "exercise": "ex-1" }))).await;
    let err = on_b.until("error").await.pop().unwrap();
    assert_eq!((&err["code"], &err["event_id"]), (&serde_json::json!("invalid_event"), &serde_json::json!("t-bad")), "{err}");

    // The tab on node-b closes; three events later it comes back on node-b with `since` and
    // gets exactly what it missed, as the tab on node-a saw it.
    let since = on_b.since(xp_b["offset"].as_u64().unwrap());
    on_b.ws.close(None).await.unwrap();
    let mut missed = vec![];
    for i in 3..6 {
        on_a.send(&answer(&format!("t-{i}"), "ex-1", true)).await;
        missed.extend(until_for(&mut on_a, "xp", &format!("t-{i}")).await.into_iter().filter(|m| m.get("offset").is_some()));
    }
    let mut back = Client::connect(&nodes.ws_b(), &token(&user), Some(since)).await;
    assert_eq!(back.welcome["recovered"], true, "{}", back.welcome);
    let mut replayed = vec![];
    while replayed.len() < missed.len() {
        replayed.push(back.next().await);
    }
    assert_eq!(replayed, missed, "the pushes missed, in order, from the user's node");
    assert_eq!(back.welcome["xp"], missed.last().unwrap()["total"]);
}

#[tokio::test]
async fn a_node_that_cannot_reach_nats_exits_with_a_clear_error() {
    let dir = tmp();
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accolade"))
        .args(["--bind", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap(), "--cluster", &dead, "--node-id", "node-a"])
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no NATS server answered") && err.contains(&dead), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_accolade"))
        .args(["--bind", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap(), "--cluster", &dead])
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-id"), "{}", String::from_utf8_lossy(&out.stderr));
    // Setting up a cluster's buckets and streams says the same, and what it needs.
    for (args, says) in [(vec!["cluster-init", "--cluster", &dead], "no NATS server answered"), (vec!["cluster-init"], "needs --cluster")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_accolade")).args(&args).output().expect("the binary runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    }
}

/// Posts one event to a node's HTTP API; returns its result.
async fn post(api: &Api, ev: &serde_json::Value) -> serde_json::Value {
    api.ingest(vec![ev.clone()]).await["results"][0].clone()
}

/// `GET path` until it is not `unavailable` (her partition between nodes), for at most
/// `limit`; asserts the answer is a 200 and returns it.
async fn get_served(api: &Api, path: &str, limit: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (s, v) = api.get(path).await;
        if s != 503 {
            assert_eq!(s, 200, "{path}: {v}");
            return v;
        }
        assert!(start.elapsed() < limit, "{path} still unavailable after {limit:?}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts one event until it is not `unavailable`, for at most `limit`; returns its result.
async fn post_until_taken(api: &Api, ev: &serde_json::Value, limit: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let r = post(api, ev).await;
        if r["code"] != "unavailable" {
            return r;
        }
        assert!(start.elapsed() < limit, "not taken within {limit:?}: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_posted_to_any_node_is_taken_by_the_node_that_serves_its_user() {
    let mut nodes = TwoNodes::start().await;
    let (ua, ub) = (user_of("node-a", "learner"), user_of("node-b", "learner"));
    let (api_a, api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));

    // Posted to node-b, a user node-a serves: taken there, with her XP in the answer.
    let first = http_answer("f-1", &ua, "ex-1", true);
    let r = post_until_taken(&api_b, &first, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "accepted", "{r}");
    assert!(r["xp"].as_u64().unwrap() > 0, "{r}");
    // It went to node-a's actor: sent to node-a itself, it is a duplicate.
    assert_eq!(post(&api_a, &first).await["status"], "duplicate");
    // A user node-b serves is taken on node-b, and the same over node-a.
    assert_eq!(post_until_taken(&api_b, &http_answer("f-2", &ub, "ex-1", true), Duration::from_secs(30)).await["status"], "accepted");
    assert_eq!(post(&api_a, &http_answer("f-3", &ub, "ex-1", true)).await["status"], "accepted");

    // A user's queries on either node are answered by her actor, wherever it runs.
    for (user, events) in [(&ua, 1), (&ub, 2)] {
        let (sa, on_a) = api_a.get(&format!("/v1/users/{user}")).await;
        let (sb, on_b) = api_b.get(&format!("/v1/users/{user}")).await;
        assert_eq!((sa, sb), (200, 200), "{on_a} {on_b}");
        assert_eq!(on_a, on_b, "one answer for {user}, whichever node is asked");
        assert_eq!(on_b["events"], events, "{on_b}");
        let (s, listed) = api_b.get(&format!("/v1/users/{user}/events")).await;
        assert_eq!(s, 200, "{listed}");
        assert_eq!(api_a.get(&format!("/v1/users/{user}/events")).await.1, listed);
    }
    // Her errors come back as her node gave them: an unknown badge, a user never seen (asked
    // on the node that does not serve her), a bad key (refused where asked).
    let (s, e) = api_b.get(&format!("/v1/users/{ua}/badges/no-such-badge")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("unknown_badge")), "{e}");
    let stranger = user_of("node-a", "stranger");
    let (s, e) = api_b.get(&format!("/v1/users/{stranger}")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("user_not_found")), "{e}");
    let (s, e) = api_b.with_key(Some("wrong")).get(&format!("/v1/users/{ua}")).await;
    assert_eq!((s, e["error"].as_str()), (401, Some("unauthorized")), "{e}");
    // Webhooks are the cluster's (none registered yet): the list is empty on either node,
    // and an unknown endpoint is not found.
    let (s, e) = api_a.get("/v1/webhooks").await;
    assert_eq!((s, e["webhooks"].as_array().map(Vec::len)), (200, Some(0)), "{e}");
    let (s, e) = api_b.get("/v1/webhooks/7/deliveries").await;
    assert_eq!((s, e["error"].as_str()), (404, Some("not_found")), "{e}");

    // node-a dies: until node-b has taken its partitions over, nobody serves ua and her event
    // is `unavailable` (the sender sends it again); then node-b takes it, and what node-a had
    // taken is known there.
    nodes.a.kill9();
    let again = http_answer("f-4", &ua, "ex-1", true);
    let r = post(&api_b, &again).await;
    assert_eq!((r["status"].as_str(), r["code"].as_str()), (Some("rejected"), Some("unavailable")), "{r}");
    // Asked again: still between nodes, or (on a loaded machine the lease can run out while
    // the refusal above was answered) node-b's already, with what node-a had taken.
    let (s, e) = api_b.get(&format!("/v1/users/{ua}")).await;
    match s {
        503 => assert_eq!(e["error"], "unavailable", "{e}"),
        200 => assert_eq!(e["events"], 1, "{e}"),
        _ => panic!("{s} {e}"),
    }
    assert_eq!(post_until_taken(&api_b, &again, Duration::from_secs(30)).await["status"], "accepted");
    assert_eq!(post(&api_b, &first).await["status"], "duplicate", "rebuilt from JetStream on node-b");
}

/// `method path` until it is not `unavailable` (a partition between nodes), for at most 30 s.
async fn call_served(api: &Api, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
    let start = Instant::now();
    loop {
        let (s, v) = api.call(method, path, body).await;
        if s != 503 || start.elapsed() > Duration::from_secs(30) {
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn goal_ids(list: &serde_json::Value) -> Vec<String> {
    list["goals"].as_array().unwrap_or_else(|| panic!("a goal list: {list}")).iter().map(|g| g["id"].as_str().unwrap().to_string()).collect()
}

/// A teacher served by one node gives goals to students served by either; every goal route
/// answers the same on both nodes, an id names one goal across the cluster, the teacher is told
/// once how a goal ended, and the goal and its end survive the death of the student's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goals_are_the_clusters_on_every_node_and_survive_the_assignees_node() {
    let mut nodes = TwoNodes::start_with(|_| vec!["--goal-tick-ms".into(), "100".into()]).await;
    let (student, other, teacher) = (user_of("node-a", "student"), user_of("node-b", "student"), user_of("node-b", "teacher"));
    let (api_a, api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));
    let read_two = serde_json::json!({ "kind": "count", "event": "article.read", "distinct": "article", "target": 2 });
    let goal = |id: &str, assignee: &str| serde_json::json!({ "id": id, "assignee": assignee, "assigner": teacher, "title": "Read two articles", "criterion": read_two });

    // Given on node-b to a student node-a serves: assigned there; the same again on node-a is
    // the same goal; its id given to another student, on either node, is refused.
    let (s, g) = call_served(&api_b, "POST", "/v1/goals", Some(&goal("reading", &student))).await;
    assert_eq!((s, g["status"].as_str(), g["assignee"].as_str()), (201, Some("open"), Some(student.as_str())), "{g}");
    let (s, g) = call_served(&api_a, "POST", "/v1/goals", Some(&goal("reading", &student))).await;
    assert_eq!((s, g["status"].as_str()), (200, Some("open")), "{g}");
    for api in [&api_a, &api_b] {
        let (s, e) = call_served(api, "POST", "/v1/goals", Some(&goal("reading", &other))).await;
        assert_eq!((s, e["error"].as_str()), (409, Some("goal_exists")), "{e}");
    }
    let (s, g) = call_served(&api_a, "POST", "/v1/goals", Some(&goal("later", &other))).await;
    assert_eq!(s, 201, "{g}");

    // Read, listed and counted the same on both nodes: by id, by assignee (her node's answer)
    // and by assigner (gathered from both).
    for api in [&api_a, &api_b] {
        let (s, g) = call_served(api, "GET", "/v1/goals/reading", None).await;
        assert_eq!((s, g["assignee"].as_str(), g["progress"]["rule"]["target"].as_f64()), (200, Some(student.as_str()), Some(2.0)), "{g}");
        let (s, mine) = call_served(api, "GET", &format!("/v1/goals?assignee={student}"), None).await;
        assert_eq!((s, goal_ids(&mine)), (200, vec!["reading".to_string()]), "{mine}");
        let (s, given) = call_served(api, "GET", &format!("/v1/goals?assigner={teacher}"), None).await;
        assert_eq!((s, goal_ids(&given)), (200, vec!["later".to_string(), "reading".into()]), "{given}");
        let (s, e) = api.get("/v1/goals/no-such-goal").await;
        assert_eq!((s, e["error"].as_str()), (404, Some("not_found")), "{e}");
    }

    // She reads two articles (posted to node-b): the goal completes on node-a and the teacher,
    // on node-b, is told once.
    for (id, article) in [("read-1", "a1"), ("read-2", "a2")] {
        let r = post_until_taken(&api_b, &http_event(id, &student, "article.read", serde_json::json!({ "article": article })), Duration::from_secs(30)).await;
        assert_eq!(r["status"], "accepted", "{r}");
    }
    let start = Instant::now();
    let done = loop {
        let (_, g) = call_served(&api_b, "GET", "/v1/goals/reading", None).await;
        if g["assigner_notified"] == true {
            break g;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the teacher was not told: {g}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    let notices = |log: &serde_json::Value| log["events"].as_array().unwrap().iter().filter(|e| e["event_type"] == "accolade.notice").count();
    let log = get_served(&api_a, &format!("/v1/users/{teacher}/events"), Duration::from_secs(30)).await;
    assert_eq!(notices(&log), 1, "{log}");

    // Cancelled on node-a, a goal node-b keeps: cancelled for both.
    let (s, g) = call_served(&api_a, "DELETE", "/v1/goals/later", None).await;
    assert_eq!((s, g["status"].as_str()), (200, Some("cancelled")), "{g}");
    assert_eq!(call_served(&api_b, "GET", "/v1/goals/later", None).await.1["status"], "cancelled");

    // node-a dies: node-b serves the student, rebuilt from the changelog, with the goal ended
    // and the teacher told; whether node-b finds the notice marked given or gives it again
    // (its reserved id counts it once), the teacher has it once.
    nodes.a.kill9();
    let g = get_served(&api_b, "/v1/goals/reading", Duration::from_secs(30)).await;
    assert_eq!((g["status"].as_str(), g["assigner_notified"].as_bool()), (Some("completed"), Some(true)), "{g}");
    tokio::time::sleep(Duration::from_millis(1000)).await; // ten sweeps of node-b
    let log = get_served(&api_b, &format!("/v1/users/{teacher}/events"), Duration::from_secs(30)).await;
    assert_eq!(notices(&log), 1, "{log}");
    let (s, given) = call_served(&api_b, "GET", &format!("/v1/goals?assigner={teacher}&status=completed"), None).await;
    assert_eq!((s, goal_ids(&given)), (200, vec!["reading".to_string()]), "{given}");
}

/// A catalogue change's preview counts every stored user of the cluster, through any node, and
/// its backfill walks them all, each node those it serves, and goes on from where it was when a node is killed mid-way: every user is visited
/// once in the job's counts, each one due the badge gets it once, and a job is cancelled from
/// any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_walks_every_users_node_and_survives_the_death_of_one() {
    const USERS: usize = 60;
    let mut nodes = TwoNodes::start_with(|_| vec!["--backfill-users-per-sec".into(), "10".into()]).await;
    let (api_a, api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));
    let users: Vec<String> = (0..USERS).map(|i| format!("bf-{i:02}")).collect();
    // Every third user answered the "special" exercise before the badge existed.
    for (i, u) in users.iter().enumerate() {
        let r = post_until_taken(&api_a, &http_answer(&format!("bf-e{i}"), u, if i % 3 == 0 { "special" } else { "plain" }, true), Duration::from_secs(30)).await;
        assert_eq!(r["status"], "accepted", "{r}");
    }
    let on_a = users.iter().filter(|u| preferred(accolade::cluster::partition::partition_of("demo", u), ["node-a", "node-b"]) == Some("node-a")).count();
    assert!(on_a > 10 && USERS - on_a > 10, "both nodes serve some: {on_a} of {USERS} on node-a");
    let badge = |name: &str| serde_json::json!({ "name": name, "tier": "silver", "xp": 10, "rule": { "kind": "count", "event": "problem.answered", "when": { "exercise": "special" }, "target": 1 } });
    // Previewed first, on node-a: every user of both nodes counted, the sample in key order.
    let mut change = badge("Special");
    change["id"] = "special-one".into();
    let (s, preview) = api_a.call("POST", "/v1/catalogue/preview", Some(&serde_json::json!({ "op": "put_badge", "badge": change }))).await;
    assert_eq!(s, 200, "{preview}");
    let due_users: Vec<&String> = users.iter().step_by(3).collect();
    let sample: Vec<String> = due_users.iter().take(10).map(|u| u.to_string()).collect();
    assert_eq!(
        (preview["users_scanned"].as_u64(), preview["badges"][0]["badge"].as_str(), preview["badges"][0]["would_earn"].as_u64()),
        (Some(USERS as u64), Some("special-one"), Some(due_users.len() as u64)),
        "{preview}"
    );
    assert_eq!(preview["badges"][0]["sample"], serde_json::json!(sample), "{preview}");
    let (s, v) = api_b.call("PUT", "/v1/catalogue/badges/special-one", Some(&badge("Special"))).await;
    assert_eq!(s, 201, "{v}");
    let job = v["job"]["id"].as_u64().unwrap_or_else(|| panic!("a job: {v}"));
    assert_eq!((job, v["job"]["status"].as_str()), (v["version"].as_u64().unwrap(), Some("running")), "the job of the version: {v}");

    // Killed once both nodes are under way (ten users a second each).
    api_a.wait_for(&format!("/v1/jobs/{job}"), 60, |j| j["done"].as_u64() >= Some(12)).await;
    nodes.a.kill9();
    let start = Instant::now();
    let done = loop {
        let (s, j) = api_b.get(&format!("/v1/jobs/{job}")).await;
        assert_eq!(s, 200, "{j}");
        if j["status"] == "done" {
            break j;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "the job did not finish on node-b: {j}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let due = users.iter().enumerate().filter(|(i, _)| i % 3 == 0).count() as u64;
    assert_eq!((done["done"].as_u64(), done["total"].as_u64(), done["awards"].as_u64()), (Some(USERS as u64), Some(USERS as u64), Some(due)), "{done}");
    for (i, u) in users.iter().enumerate() {
        let doc = get_served(&api_b, &format!("/v1/users/{u}"), Duration::from_secs(30)).await;
        let has = doc["badges"].as_array().unwrap().iter().filter(|b| b["id"] == "special-one").count();
        assert_eq!(has, usize::from(i % 3 == 0), "{u}: {doc}");
        let log = get_served(&api_b, &format!("/v1/users/{u}/events"), Duration::from_secs(30)).await;
        let awards = log["events"].as_array().unwrap().iter().filter(|e| e["event_type"] == "accolade.backfill").count();
        assert_eq!(awards, usize::from(i % 3 == 0), "{u} awarded once: {log}");
    }

    // A second change's job, cancelled: listed with the first, each as it ended.
    let (s, v) = api_b.call("PUT", "/v1/catalogue/badges/special-two", Some(&badge("Special too"))).await;
    assert_eq!(s, 201, "{v}");
    let second = v["job"]["id"].as_u64().unwrap();
    let (s, j) = api_b.call("DELETE", &format!("/v1/jobs/{second}"), None).await;
    assert_eq!((s, j["status"].as_str()), (200, Some("cancelled")), "{j}");
    let (s, e) = api_b.call("DELETE", "/v1/jobs/424242", None).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("not_found")), "{e}");
    let (_, list) = api_b.get("/v1/jobs").await;
    let listed: Vec<(u64, String)> = list["jobs"].as_array().unwrap().iter().map(|j| (j["id"].as_u64().unwrap(), j["status"].as_str().unwrap().to_string())).collect();
    assert_eq!(listed, vec![(job, "done".to_string()), (second, "cancelled".into())], "{list}");
}

/// Event ids in cluster mode: an id counts once for its user, through any node; an id another
/// user took, of her partition or of another, is his own event, as on one node
/// (docs/cluster.md, "Event ids across users"). Neither user's event is ever taken for a
/// duplicate of the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_counts_once_per_user_and_is_never_another_users_duplicate() {
    use accolade::cluster::partition::partition_of;
    let nodes = TwoNodes::start().await;
    let (api_a, api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));
    let first = user_of("node-a", "ids");
    let p = partition_of("demo", &first);
    let same = (0..).map(|i| format!("ids-same-{i}")).find(|u| partition_of("demo", u) == p).unwrap();
    let other = user_of("node-b", "ids");
    let r = post_until_taken(&api_b, &http_answer("shared-id", &first, "ex-1", true), Duration::from_secs(30)).await;
    assert_eq!(r["status"], "accepted", "{r}");
    // Her own resend, through either node: a duplicate.
    for api in [&api_a, &api_b] {
        assert_eq!(post(api, &http_answer("shared-id", &first, "ex-1", true)).await["status"], "duplicate");
    }
    // Another user of her partition, and a user of another partition: each his own event,
    // counted for him once.
    for (api, u) in [(&api_b, &same), (&api_a, &other)] {
        let r = post_until_taken(api, &http_answer("shared-id", u, "ex-1", true), Duration::from_secs(30)).await;
        assert_eq!(r["status"], "accepted", "{u}: {r}");
        assert_eq!(post(api, &http_answer("shared-id", u, "ex-1", true)).await["status"], "duplicate", "{u}");
    }
    for u in [&first, &same, &other] {
        let doc = get_served(&api_a, &format!("/v1/users/{u}"), Duration::from_secs(30)).await;
        assert_eq!(doc["events"], 1, "{u}: {doc}");
    }
}

/// The all-time XP board as one node would rank `users`, read from each user's own XP.
async fn ranked_by_xp(api: &Api, users: &[String]) -> Vec<(String, f64)> {
    let mut want = Vec::new();
    for u in users {
        let (s, doc) = api.get(&format!("/v1/users/{u}")).await;
        assert_eq!(s, 200, "{doc}");
        want.push((u.clone(), doc["xp"].as_f64().unwrap()));
    }
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    want
}

fn rows(standings: &serde_json::Value) -> Vec<(String, f64)> {
    standings.as_array().unwrap().iter().map(|r| (r["user_id"].as_str().unwrap().to_string(), r["score"].as_f64().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_standings_on_any_node_rank_every_user_wherever_she_is_served() {
    let mut nodes = TwoNodes::start().await;
    let (api_a, api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));
    // Eight users, four on each node, user k with k + 1 correct answers (so distinct XP).
    let users: Vec<String> = (0..8).map(|k| user_of(if k % 2 == 0 { "node-a" } else { "node-b" }, &format!("racer{k}"))).collect();
    for (k, u) in users.iter().enumerate() {
        for i in 0..=k {
            let r = post_until_taken(&api_b, &http_answer(&format!("{u}-{i}"), u, "ex-1", true), Duration::from_secs(30)).await;
            assert_eq!(r["status"], "accepted", "{r}");
        }
    }
    let want = ranked_by_xp(&api_a, &users).await;
    assert!(want.windows(2).all(|w| w[0].1 > w[1].1), "distinct XP, so the order is the scores': {want:?}");

    // The whole board, a page of it, a rank with its neighbours and a friends list: the same
    // on both nodes, and what one node holding everyone would give.
    for api in [&api_a, &api_b] {
        let (s, all) = api.get("/v1/leaderboards/xp-all-time?limit=100").await;
        assert_eq!(s, 200, "{all}");
        assert_eq!((all["total"].as_u64(), rows(&all["entries"])), (Some(8), want.clone()), "{all}");
        assert_eq!(all["entries"][7]["rank"], 8);
        let (_, page) = api.get("/v1/leaderboards/xp-all-time?from=3&limit=2").await;
        assert_eq!(rows(&page["entries"]), want[2..4].to_vec(), "{page}");
        assert_eq!(page["entries"][0]["rank"], 3);
        let third = &want[2].0;
        let (s, me) = api.get(&format!("/v1/leaderboards/xp-all-time/users/{third}?around=2")).await;
        assert_eq!((s, me["rank"].as_u64()), (200, Some(3)), "{me}");
        assert_eq!(rows(&me["around"]), want[0..5].to_vec(), "{me}");
        let (s, top) = api.get(&format!("/v1/leaderboards/xp-all-time/users/{}?around=1", want[0].0)).await;
        assert_eq!((s, rows(&top["around"])), (200, want[0..2].to_vec()), "{top}");
        let friends = serde_json::json!({ "users": [want[6].0, "nobody-at-all", want[1].0] });
        let (s, f) = api.call("POST", "/v1/leaderboards/xp-all-time/standings", Some(&friends)).await;
        assert_eq!(s, 200, "{f}");
        let got: Vec<(&str, Option<u64>)> = f["entries"].as_array().unwrap().iter().map(|e| (e["user_id"].as_str().unwrap(), e["rank"].as_u64())).collect();
        assert_eq!(got, [(want[1].0.as_str(), Some(2)), (want[6].0.as_str(), Some(7)), ("nobody-at-all", None)], "{f}");
    }
    // A page past the deepest rank a cluster gathers is refused, saying so.
    let (s, e) = api_a.get("/v1/leaderboards/xp-all-time?from=4999&limit=10").await;
    assert_eq!((s, e["error"].as_str()), (400, Some("invalid_query")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("5000"), "{e}");
    // An all-time board never closes.
    let (s, p) = api_a.get("/v1/leaderboards/xp-all-time/periods").await;
    assert_eq!((s, &p["periods"]), (200, &serde_json::json!([])), "{p}");

    // node-a dies. Until node-b has rebuilt its partitions the board is refused (503, ask
    // again), never given without node-a's users; then it is whole again, from the changelog.
    nodes.a.kill9();
    let start = Instant::now();
    loop {
        let (s, all) = api_b.get("/v1/leaderboards/xp-all-time?limit=100").await;
        if s == 200 {
            assert_eq!((all["total"].as_u64(), rows(&all["entries"])), (Some(8), want.clone()), "{all}");
            break;
        }
        assert_eq!((s, all["error"].as_str()), (503, Some("unavailable")), "{all}");
        assert!(start.elapsed() < Duration::from_secs(30), "the board is not whole again: {all}");
    }
    // And node-b ranks new scores of node-a's users it now serves.
    let first = &want[7].0;
    for i in 0..12 {
        assert_eq!(post_until_taken(&api_b, &http_answer(&format!("{first}-late-{i}"), first, "ex-1", true), Duration::from_secs(30)).await["status"], "accepted");
    }
    let want = ranked_by_xp(&api_b, &users).await;
    assert_eq!(want[0].0, *first, "{want:?}");
    // A ranking follows a score once it is durable, which may be a moment after the ack.
    let start = Instant::now();
    loop {
        let (_, all) = api_b.get("/v1/leaderboards/xp-all-time?limit=100").await;
        if rows(&all["entries"]) == want {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{all} is not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sprint_wins(api: &Api, user: &str) -> Option<u64> {
    let (s, doc) = api.get(&format!("/v1/users/{user}")).await;
    assert_eq!(s, 200, "{doc}");
    doc["badges"].as_array().unwrap().iter().find(|b| b["id"] == "sprint-winner").map(|b| b["count"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaderboard_period_closes_once_for_the_whole_cluster_and_its_archive_survives_its_node() {
    let mut nodes = TwoNodes::start_with(|dir| {
        // Twenty seconds from the nodes' start: time to start, settle and take the answers.
        let ends = (chrono::Utc::now() + chrono::Duration::seconds(20)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let file = dir.join("sprint.toml");
        std::fs::write(&file, sprint_catalogue(&ends)).unwrap();
        ["--catalogue", file.to_str().unwrap(), "--leaderboard-tick-ms", "100", "--leaderboard-close-grace-ms", "200"].map(String::from).to_vec()
    })
    .await;
    let (api_a, api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));
    // The winners are on different nodes: u1 (3 correct answers) on node-a, u2 (2) on node-b;
    // u3 (1) is third.
    let (u1, u2, u3) = (user_of("node-a", "sprinter1"), user_of("node-b", "sprinter2"), user_of("node-a", "sprinter3"));
    for (u, n) in [(&u1, 3), (&u2, 2), (&u3, 1)] {
        for i in 0..n {
            assert_eq!(post_until_taken(&api_b, &http_answer(&format!("{u}-{i}"), u, "ex-1", true), Duration::from_secs(30)).await["status"], "accepted");
        }
    }
    let names = |v: &serde_json::Value| v["entries"].as_array().unwrap().iter().map(|e| e["user_id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let order = vec![u1.clone(), u2.clone(), u3.clone()];
    let (s, open) = api_a.get("/v1/leaderboards/sprint").await;
    assert_eq!((s, names(&open), open["closed"].as_bool()), (200, order.clone(), Some(false)), "the period is still open: {open}");

    // It ends: closed once, by the node serving the board, from both nodes' users.
    let deadline = Instant::now() + Duration::from_secs(60);
    let closed = loop {
        let (s, v) = api_a.get("/v1/leaderboards/sprint/periods").await;
        if s == 200 && v["periods"].as_array().is_some_and(|p| p.len() == 1) {
            break v["periods"][0].clone();
        }
        assert!(Instant::now() < deadline && (s == 200 || s == 503), "not closed: {s} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((closed["period"].as_str(), closed["segments"].clone(), closed["awarded"].as_u64()), (Some("custom"), serde_json::json!([["", 3]]), Some(2)), "{closed}");
    for api in [&api_a, &api_b] {
        let (s, archived) = api.get("/v1/leaderboards/sprint?period=custom").await;
        assert_eq!((s, names(&archived), archived["closed"].as_bool(), archived["total"].as_u64()), (200, order.clone(), Some(true), Some(3)), "{archived}");
        assert_eq!(api.get("/v1/leaderboards/sprint/periods").await.1["periods"][0], closed);
        assert_eq!((sprint_wins(api, &u1).await, sprint_wins(api, &u2).await, sprint_wins(api, &u3).await), (Some(1), Some(1), None));
        let (s, e) = api.get("/v1/leaderboards/sprint").await;
        assert_eq!((s, e["error"].as_str()), (404, Some("no_open_period")), "{e}");
    }

    // The node serving the board dies. The other rebuilds the board's records and its users'
    // (whose records still hold the closed period's scores): the period is found closed, not
    // closed again, and nobody is awarded twice.
    let board_node = preferred(accolade::cluster::partition::partition_of("demo", &accolade::standings::board_partition_key("sprint")), ["node-a", "node-b"]).unwrap();
    let survivor = if board_node == "node-a" {
        nodes.a.kill9();
        &api_b
    } else {
        nodes.b.kill9();
        &api_a
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = survivor.get("/v1/leaderboards/sprint/periods").await;
        if s == 200 {
            assert_eq!(v["periods"].as_array().map(Vec::len), Some(1), "{v}");
            assert_eq!(v["periods"][0], closed);
            break;
        }
        assert!(Instant::now() < deadline && s == 503, "{s} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every user's partition is served again, and some closer rounds have passed.
    post_until_taken(survivor, &http_answer("late-1", &u1, "ex-1", true), Duration::from_secs(30)).await;
    post_until_taken(survivor, &http_answer("late-2", &u2, "ex-1", true), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((sprint_wins(survivor, &u1).await, sprint_wins(survivor, &u2).await, sprint_wins(survivor, &u3).await), (Some(1), Some(1), None));
    assert_eq!(survivor.get("/v1/leaderboards/sprint/periods").await.1["periods"][0], closed);
}

#[tokio::test]
async fn scripts_cluster_starts_a_served_cluster_and_stops_what_it_started() {
    // The script's NATS servers take their turn like the tests' own.
    let _turn = common::nats::Turn::take();
    let dir = tmp();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster");
    let run = |cmd: &str| {
        std::process::Command::new(&script)
            .args([cmd, dir.path().to_str().unwrap()])
            .env("ACCOLADE_BIN", env!("CARGO_BIN_EXE_accolade"))
            .env("ACCOLADE_CLUSTER_NODES", "2")
            .env("ACCOLADE_CLUSTER_ARGS", "--cluster-lease-ms 3000")
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("scripts/cluster runs")
    };
    let up = run("up");
    assert!(up.status.success(), "up failed");
    let out = String::from_utf8(up.stdout).unwrap();
    let nodes: Vec<(u16, u32)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert!(f.len() == 5 && f[0] == "node" && f[3] == "pid" && f[2].starts_with("127.0.0.1:"), "not `node N 127.0.0.1:PORT pid PID`: {l:?}");
            (f[2]["127.0.0.1:".len()..].parse().unwrap(), f[4].parse().unwrap())
        })
        .collect();
    assert_eq!(nodes.len(), 2, "{out}");
    // Every partition is served, and each node serves a share.
    let mut total = 0;
    for (port, _) in &nodes {
        let served = partitions_served(*port).await.expect("the served gauge");
        assert!(served > 0, "node on {port} serves nothing");
        total += served;
    }
    assert_eq!(total, 256);
    // An event posted to either node is taken.
    let r = Api::demo_at(nodes[0].0).ingest(vec![http_answer("s-1", "scripted", "ex-1", true)]).await;
    assert_eq!(r["results"][0]["status"], "accepted", "{r}");

    // `join` starts a third node, which takes a share once it is ready.
    let join = run("join");
    assert!(join.status.success(), "join failed");
    let line = String::from_utf8(join.stdout).unwrap();
    let f: Vec<&str> = line.trim().split(' ').collect();
    assert!(f.len() == 5 && f[0] == "node" && f[1] == "3" && f[3] == "pid", "not `node 3 127.0.0.1:PORT pid PID`: {line:?}");
    let third: u16 = f[2]["127.0.0.1:".len()..].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if partitions_served(third).await.expect("the served gauge") > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the joined node serves nothing after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // `down` stops every process `up` and `join` started (the NATS servers too), by PID.
    let started: Vec<u32> = std::fs::read_to_string(dir.path().join("pids")).unwrap().lines().map(|l| l.split(' ').nth(2).unwrap().parse().unwrap()).collect();
    assert_eq!(started.len(), 6, "three NATS servers and three nodes");
    let down = run("down");
    assert!(down.status.success(), "down failed");
    assert!(std::fs::read_to_string(dir.path().join("pids")).unwrap().is_empty(), "down forgets what it stopped");
    for pid in started {
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "));
        assert!(gone, "process {pid} still runs after down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_acks_nothing_when_it_wakes_and_the_user_stays_exact() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let nodes = TwoNodes::start().await;
    let user = user_of("node-a", "sleeper");
    let (url_a, url_b) = (nodes.ws_a(), nodes.ws_b());
    let login = |id: &str| event(id, "login", serde_json::json!({}));

    // Ten events acked by node-a.
    let mut on_a = connect_served(&url_a, &user, Duration::from_secs(30)).await;
    for i in 0..10 {
        on_a.send(&login(&format!("p-{i}"))).await;
        assert_eq!(on_a.until("ack").await.last().unwrap()["event_id"], format!("p-{i}"));
    }
    // node-a stops (SIGSTOP) past its lease; node-b takes her over and acks ten more.
    let pid = nodes.a.0.id() as i32;
    let signal = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    signal("-STOP");
    let mut on_b = connect_served(&url_b, &user, Duration::from_secs(30)).await;
    for i in 10..20 {
        on_b.send(&login(&format!("p-{i}"))).await;
        assert_eq!(on_b.until("ack").await.last().unwrap()["event_id"], format!("p-{i}"));
    }
    // node-a wakes with her actor and socket still in memory, and is sent more events: it acks
    // none of them (its writes are fenced off, and it lets the partition go).
    signal("-CONT");
    for i in 20..25 {
        let _ = on_a.ws.send(Message::text(login(&format!("p-{i}")).to_string())).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), futures_util::StreamExt::next(&mut on_a.ws)).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let m: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_ne!(m["type"], "ack", "a paused node acked after its partition was taken over: {m}");
            }
            Ok(Some(Ok(_))) => {}
            Ok(_) => break,
            Err(_) => {}
        }
    }
    // Her state holds exactly the twenty acked events: resent, they are duplicates, and the
    // five sent to node-a are new, each counted once. node-a, awake, takes its share back from
    // node-b meanwhile, so she is served by one node or the other: the client does what
    // accolade.js does, reconnecting (to either node) and resending what is unacknowledged.
    let mut new = std::collections::BTreeSet::new();
    let mut acked = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    'resend: while acked.len() < 25 {
        assert!(Instant::now() < deadline, "not every event acked within 60 s: {acked:?}");
        for url in [&url_a, &url_b] {
            let Ok(mut c) = tokio::time::timeout(Duration::from_secs(5), connect_served(url, &user, Duration::from_secs(4))).await else { continue };
            for i in 0..25 {
                let id = format!("p-{i}");
                if acked.contains(&id) {
                    continue;
                }
                if c.ws.send(Message::text(login(&id).to_string())).await.is_err() {
                    continue 'resend;
                }
                let ack = loop {
                    match tokio::time::timeout(Duration::from_secs(5), futures_util::StreamExt::next(&mut c.ws)).await {
                        Ok(Some(Ok(Message::Text(t)))) => {
                            let m: serde_json::Value = serde_json::from_str(&t).unwrap();
                            if m["type"] == "ack" && m["event_id"] == id.as_str() {
                                break m;
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                        _ => continue 'resend,
                    }
                };
                if !ack["duplicate"].as_bool().unwrap_or(false) {
                    assert!(i >= 20, "{id} was acked before the pause, yet counted again: {ack}");
                    assert!(new.insert(id.clone()), "{id} counted twice");
                }
                acked.insert(id);
            }
            break;
        }
    }
    // A resend whose ack was lost when a partition move closed the socket is acked as a
    // duplicate on the next connection: so the five may be new or duplicates, but her state
    // holds each of the 25 exactly once, whichever node is asked.
    let doc = get_served(&Api::demo_at(nodes.port_b), &format!("/v1/users/{user}"), Duration::from_secs(30)).await;
    assert_eq!(doc["events"].as_u64(), Some(25), "every event once: {doc}");
    let listed = get_served(&Api::demo_at(nodes.port_a), &format!("/v1/users/{user}/events"), Duration::from_secs(30)).await;
    let ids: std::collections::BTreeSet<String> = listed["events"].as_array().expect("a list of events").iter().map(|e| e["event_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, (0..25).map(|i| format!("p-{i}")).collect(), "{listed}");
    assert!(new.iter().all(|id| id.as_str() >= "p-20"), "{new:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_change_on_any_node_is_one_version_for_the_whole_cluster() {
    let mut nodes = TwoNodes::start().await;
    let (api_a, api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));
    let ub = user_of("node-b", "fan");
    // Wait until node-b serves its users.
    let _ = connect_served(&nodes.ws_b(), &ub, Duration::from_secs(30)).await;

    // Both nodes started from the same file; the cluster holds its version once.
    let (_, va) = api_a.get("/v1/catalogue/versions").await;
    let (_, vb) = api_b.get("/v1/catalogue/versions").await;
    assert_eq!(va["versions"].as_array().map(Vec::len), Some(1), "{va}");
    assert_eq!(va, vb, "one history");

    // A badge put on node-a is in force on node-b at once, for the users node-b serves.
    let badge = serde_json::json!({ "name": "Login Fan", "tier": "bronze", "xp": 5, "rule": { "kind": "count", "event": "login", "target": 2 } });
    let (st, v) = api_a.call("PUT", "/v1/catalogue/badges/login-fan", Some(&badge)).await;
    assert_eq!((st, v["version"].as_u64()), (201, Some(2)), "{v}");
    assert_eq!((v["job"]["id"].as_u64(), v.get("backfill_skipped")), (Some(2), None), "the cluster's backfill of version 2: {v}");
    let cur = api_b.wait_for("/v1/catalogue", 10, |c| c["version"] == 2).await;
    assert_eq!(cur["current"], true);
    let login = |id: &str| http_event(id, &ub, "login", serde_json::json!({}));
    let r = api_b.ingest(vec![login("fan-1"), login("fan-2")]).await;
    assert_eq!(r["results"][1]["unlocks"], serde_json::json!(["login-fan"]), "{r}");

    // Changes sent to both nodes at the same moment are all made, each a version of its own,
    // numbered without a gap, as on one node: one that another node beat to the next version
    // is made again on top of it. Both nodes end with the same history.
    let mut made = vec![];
    let mut refused = 0;
    for i in 0..8 {
        let rule = |n: u64| serde_json::json!({ "event": "login", "amount": n });
        let (path_a, path_b, rule_a, rule_b) = (format!("/v1/catalogue/xp/race-a-{i}"), format!("/v1/catalogue/xp/race-b-{i}"), rule(1), rule(2));
        let (ra, rb) = tokio::join!(api_a.call("PUT", &path_a, Some(&rule_a)), api_b.call("PUT", &path_b, Some(&rule_b)));
        for (st, v) in [ra, rb] {
            match st {
                201 => made.push(v["version"].as_u64().unwrap()),
                409 => {
                    assert_eq!(v["error"], "catalogue_conflict", "{v}");
                    refused += 1;
                }
                _ => panic!("{st} {v}"),
            }
        }
    }
    made.sort();
    assert_eq!(made, (3..19).collect::<Vec<_>>(), "every change made, distinct versions, no gaps ({refused} refused)");
    let last = 2 + made.len() as u64;
    let complete = |v: &serde_json::Value| v["versions"].as_array().is_some_and(|l| l.len() as u64 == last && l[l.len() - 1]["current"] == true);
    let on_a = api_a.wait_for("/v1/catalogue/versions", 10, complete).await;
    let on_b = api_b.wait_for("/v1/catalogue/versions", 10, complete).await;
    assert_eq!(on_a, on_b, "one history on both nodes");
    assert_eq!(api_a.get("/v1/catalogue").await.1["version"], last);
    assert_eq!(api_b.get("/v1/catalogue").await.1["version"], last);

    // node-b dies; node-a takes its users over with the versions their events were judged by:
    // the login fan keeps her badge and her events.
    nodes.b.kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    let user = loop {
        let (st, u) = api_a.get(&format!("/v1/users/{ub}")).await;
        if st == 200 {
            break u;
        }
        assert_eq!((st, u["error"].as_str()), (503, Some("unavailable")), "{u}");
        assert!(Instant::now() < deadline, "node-a did not take {ub} over: {u}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(user["events"], 2, "{user}");
    assert!(user["badges"].as_array().unwrap().iter().any(|b| b["id"] == "login-fan"), "{user}");
}

/// Streams `events` for `user` over sockets of `url`, one every 20 ms, as accolade.js would:
/// whenever the socket closes, or an event is answered `unavailable`, it reconnects (to the
/// same node) and resends what was sent and not acknowledged, then goes on, until every event
/// is acknowledged. What the client was told
/// is in `seen`; the second value counts the sockets closed on it. `quarter` hears once a
/// quarter of the events are acknowledged.
async fn stream_through_moves(url: String, user: String, events: Vec<(String, String, bool)>, at: String, quarter: tokio::sync::mpsc::UnboundedSender<()>) -> (common::answers::Seen, usize) {
    use common::answers::{answer_msg, Seen};
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut seen = Seen::default();
    let (mut closes, mut next, mut told) = (0, 0, false);
    let deadline = Instant::now() + Duration::from_secs(120);
    'connect: while seen.acked.len() < events.len() {
        assert!(Instant::now() < deadline, "{user}: {} of {} acked after 120 s", seen.acked.len(), events.len());
        let mut c = connect_served(&url, &user, Duration::from_secs(60)).await;
        for e in events[..next].iter().filter(|e| !seen.acked.contains(&e.0)) {
            if c.ws.feed(Message::text(answer_msg(e, &at))).await.is_err() {
                closes += 1;
                continue 'connect;
            }
        }
        // `feed` only buffers (tungstenite writes out at 128 KiB or on a flush): once every
        // event has been sent no `send` below would flush, and the resent events would sit in
        // the buffer while the test waited for their acks.
        if c.ws.flush().await.is_err() {
            closes += 1;
            continue 'connect;
        }
        let mut heard = Instant::now();
        while seen.acked.len() < events.len() {
            if next < events.len() {
                if c.ws.send(Message::text(answer_msg(&events[next], &at))).await.is_err() {
                    closes += 1;
                    continue 'connect;
                }
                next += 1;
            }
            let until = tokio::time::Instant::now() + Duration::from_millis(20);
            loop {
                match tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut c.ws)).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        heard = Instant::now();
                        let m: serde_json::Value = serde_json::from_str(&t).unwrap();
                        // An event sent just as her node let her go (a partition moving) is
                        // answered `unavailable`: send it again, as docs/protocol.md says and
                        // accolade.js does. Reconnecting sends every event not yet acked.
                        if m["type"] == "error" && m["code"] == "unavailable" {
                            closes += 1;
                            continue 'connect;
                        }
                        assert_ne!(m["type"], "error", "{user}: {m}");
                        seen.note(&m);
                        if !told && seen.acked.len() * 4 >= events.len() {
                            told = true;
                            let _ = quarter.send(());
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(_) => {
                        closes += 1;
                        continue 'connect;
                    }
                    Err(_) => break,
                }
            }
            if heard.elapsed() > Duration::from_secs(15) {
                closes += 1;
                continue 'connect;
            }
        }
    }
    (seen, closes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_moved_to_a_joining_node_while_events_flow_lose_and_repeat_nothing() {
    use accolade::cluster::partition::partition_of;
    let nodes = TwoNodes::start().await;
    let three = ["node-a", "node-b", "node-c"];
    let owner_when_three = |u: &str| preferred(partition_of("demo", u), three).unwrap().to_string();
    // Two users who will move to node-c, and two who stay; each streamed over a socket of a
    // node that does not serve her now, and one of each over her own node.
    let pick = |prefix: &str, moves: bool| (0..).map(|i| format!("{prefix}-{i}")).find(|u| (owner_when_three(u) == "node-c") == moves).unwrap();
    let users = [pick("mover", true), pick("mover-b", true), pick("stayer", false), pick("stayer-b", false)];
    let at = now_rfc3339();
    let (half_tx, mut half_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = vec![];
    for (i, u) in users.iter().enumerate() {
        let url = if i % 2 == 0 { nodes.ws_a() } else { nodes.ws_b() };
        // 400 at one per 20 ms or so: the streams outlast node-c's start and its takeover.
        let events = common::answers::answers(&format!("m{i}"), 400);
        tasks.push(tokio::spawn(stream_through_moves(url, u.clone(), events.clone(), at.clone(), half_tx.clone())));
    }
    // Once every stream is a quarter acknowledged, node-c joins and takes its share: the
    // movers' partitions among it, while their events flow.
    for _ in 0..users.len() {
        half_rx.recv().await.unwrap();
    }
    let (_c, port_c) = nodes.join("node-c").await;
    let mut results = vec![];
    for t in tasks {
        results.push(t.await.unwrap());
    }
    // Every stream is exact: the rule core's answer for it applied once, no award announced
    // twice, wherever it was served.
    let api_c = Api::demo_at(port_c);
    for (i, (u, (seen, closes))) in users.iter().zip(&results).enumerate() {
        let fresh = connect_served(&nodes.ws_a(), u, Duration::from_secs(30)).await;
        common::answers::assert_exact(&fresh.welcome, u, &common::answers::answers(&format!("m{i}"), 400), &at, seen);
        eprintln!("{u}: served by {} at the end, its socket closed {closes} times on the way", owner_when_three(u));
    }
    // node-c serves its share, the movers among it.
    for u in &users[..2] {
        let (st, doc) = api_c.get(&format!("/v1/users/{u}")).await;
        assert_eq!((st, doc["events"].as_u64()), (200, Some(400)), "{u} on node-c: {doc}");
    }
    assert!(results[..2].iter().all(|(_, closes)| *closes >= 1), "a mover's socket was closed when her partition moved: {:?}", results.iter().map(|r| r.1).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_keeps_taking_events_when_the_nats_server_leading_its_log_is_killed() {
    let mut nodes = TwoNodes::start().await;
    let (ua, ub) = (user_of("node-a", "steady"), user_of("node-b", "steady"));
    let at = now_rfc3339();
    let (quarter_tx, mut quarter_rx) = tokio::sync::mpsc::unbounded_channel();
    // Each user streamed over the node that does not serve her.
    let streams = [(ua.clone(), nodes.ws_b()), (ub.clone(), nodes.ws_a())].map(|(u, url)| {
        let events = common::answers::answers(&format!("s-{u}"), 200);
        tokio::spawn(stream_through_moves(url, u, events, at.clone(), quarter_tx.clone()))
    });
    for _ in 0..2 {
        quarter_rx.recv().await.unwrap();
    }
    // The server leading the partition log dies while events flow.
    let client = nodes._nats.connect().await;
    let mut stream = async_nats::jetstream::new(client).get_stream("ACCOLADE_PARTITIONS").await.unwrap();
    let leader = stream.info().await.unwrap().cluster.clone().and_then(|c| c.leader).expect("the log has a leader");
    nodes._nats.kill(&leader);
    let killed = Instant::now();
    let mut results = vec![];
    for s in streams {
        results.push(s.await.unwrap());
    }
    eprintln!("NATS server {leader} killed; every event acked {:?} later; sockets closed {:?}", killed.elapsed(), results.iter().map(|r| r.1).collect::<Vec<_>>());
    // Every event of both streams is taken, once.
    for (u, (seen, _)) in [&ua, &ub].into_iter().zip(&results) {
        let fresh = connect_served(&nodes.ws_a(), u, Duration::from_secs(30)).await;
        common::answers::assert_exact(&fresh.welcome, u, &common::answers::answers(&format!("s-{u}"), 200), &at, seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_every_nats_server_refuses_events_and_takes_them_again_once_they_are_back() {
    let mut nodes = TwoNodes::start().await;
    let ua = user_of("node-a", "offline");
    let api = Api::demo_at(nodes.port_a);
    let first = http_answer("o-1", &ua, "ex-1", true);
    assert_eq!(post_until_taken(&api, &first, Duration::from_secs(30)).await["status"], "accepted");

    // Every NATS server dies: nothing can be made durable, so nothing is acknowledged; the
    // event is `unavailable` (send it again), and the node still answers its health check.
    for n in ["n0", "n1", "n2"] {
        nodes._nats.kill(n);
    }
    let second = http_answer("o-2", &ua, "ex-1", true);
    let r = post(&api, &second).await;
    assert_eq!((r["status"].as_str(), r["code"].as_str()), (Some("rejected"), Some("unavailable")), "{r}");
    let (st, _) = api.with_key(None).get("/healthz").await;
    assert_eq!(st, 200);

    // The servers come back: the node takes events again by itself, and what it took before
    // is still there, once. The refused event, sent again, is taken, or is a duplicate: its
    // write may have reached JetStream after all, after the answer (retried under its message
    // id while the servers were away), and either way it counts once.
    let lost = Instant::now();
    for n in ["n0", "n1", "n2"] {
        nodes._nats.restart(n);
    }
    let r = post_until_taken(&api, &second, Duration::from_secs(90)).await;
    assert!(r["status"] == "accepted" || r["status"] == "duplicate", "{r}");
    eprintln!("node-a took events again {:?} after the NATS servers were restarted", lost.elapsed());
    assert_eq!(post(&api, &first).await["status"], "duplicate");
    let (st, doc) = api.get(&format!("/v1/users/{ua}")).await;
    assert_eq!((st, doc["events"].as_u64()), (200, Some(2)), "{doc}");
}

/// Webhooks are the cluster's: an endpoint registered through one node is in force on every
/// node; each notification is delivered once, by the node serving its user, not once per
/// node, with ids unique across the cluster; the deliveries are read through any node; the
/// notifications still waiting when their user's node is killed are delivered by the node that
/// takes her over, once; and an endpoint deleted through one node is gone from all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_the_clusters_each_notification_delivered_once_and_kept_through_the_death_of_its_node() {
    use common::receiver::{verify, Receiver};
    use std::sync::atomic::Ordering;
    let mut nodes = TwoNodes::start_with(|_| ["--webhook-retry-base-ms", "200", "--webhook-retry-max-ms", "1000"].map(String::from).to_vec()).await;
    let (rx, addr) = Receiver::start().await;
    let (ua, ub) = (user_of("node-a", "hooked"), user_of("node-b", "hooked"));
    let (api_a, api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));
    // 20 minutes of one playlist: two unlocks for a new user (tests/server.rs).
    let video = |id: &str, user: &str| http_event(id, user, "video.watched", serde_json::json!({ "video": id, "playlist": "algebra", "seconds": 1200 }));

    // Registered through node-b; listed the same through both.
    let (s, h) = call_served(&api_b, "POST", "/v1/webhooks", Some(&serde_json::json!({ "url": format!("http://{addr}/hook"), "events": ["unlock"] }))).await;
    assert_eq!(s, 201, "{h}");
    let (hook, secret) = (h["id"].as_u64().unwrap(), h["secret"].as_str().unwrap().to_string());
    for api in [&api_a, &api_b] {
        let (s, list) = call_served(api, "GET", "/v1/webhooks", None).await;
        let ids: Vec<u64> = list["webhooks"].as_array().unwrap().iter().map(|w| w["id"].as_u64().unwrap()).collect();
        assert_eq!((s, ids), (200, vec![hook]), "{list}");
    }

    // One user served by each node, each event posted through the other node: four unlocks,
    // each delivered once, signed, with four different ids.
    for (id, user, api) in [("v-a", &ua, &api_b), ("v-b", &ub, &api_a)] {
        assert_eq!(post_until_taken(api, &video(id, user), Duration::from_secs(30)).await["status"], "accepted");
    }
    let got = rx.wait("four unlocks", |g| g.iter().filter(|g| g.ok).count() >= 4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // a second node delivering them again would have by now
    let got = rx.got().len().max(got.len());
    let delivered = rx.delivered();
    assert_eq!((got, delivered.len()), (4, 4), "{:?}", delivered.iter().map(|g| &g.json).collect::<Vec<_>>());
    assert!(delivered.iter().all(|g| verify(&secret, g)), "every delivery is signed with the endpoint's secret");
    let ids: std::collections::BTreeSet<u64> = delivered.iter().map(|g| g.json["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    let users: std::collections::BTreeSet<&str> = delivered.iter().map(|g| g.json["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, [ua.as_str(), ub.as_str()].into_iter().collect());
    // The delivery log, through either node, has the four, newest first.
    for api in [&api_a, &api_b] {
        let (s, log) = call_served(api, "GET", &format!("/v1/webhooks/{hook}/deliveries"), None).await;
        let finished: Vec<u64> = log["finished"].as_array().unwrap().iter().map(|d| d["id"].as_u64().unwrap()).collect();
        let want: Vec<u64> = ids.iter().rev().copied().collect();
        assert_eq!((s, finished, log["pending"].as_array().map(Vec::len)), (200, want, Some(0)), "{log}");
    }

    // A delivered one is not sent again, and an unknown one is not found, through either node
    // (whichever node serves its user answers).
    let first = *ids.iter().next().unwrap();
    for api in [&api_a, &api_b] {
        let (s, e) = call_served(api, "POST", &format!("/v1/webhooks/{hook}/deliveries/{first}/retry"), None).await;
        assert_eq!((s, e["error"].as_str()), (409, Some("already_delivered")), "{e}");
        let (s, e) = call_served(api, "POST", &format!("/v1/webhooks/{hook}/deliveries/12345/retry"), None).await;
        assert_eq!((s, e["error"].as_str()), (404, Some("not_found")), "{e}");
    }

    // The endpoint fails while node-a makes two notifications of a new user; node-a is killed
    // with them still waiting, and node-b, serving her from the changelog, delivers them once
    // the endpoint answers again.
    let late = user_of("node-a", "hooked-late");
    rx.failing.store(true, Ordering::SeqCst);
    // A second endpoint, which nothing answers: it is deleted while the late user's partition
    // is between nodes (node-a dead, node-b not yet serving it), so no node removes her rows
    // of it then; node-b removes them once it serves her.
    let (s, d) = call_served(&api_b, "POST", "/v1/webhooks", Some(&serde_json::json!({ "url": "http://127.0.0.1:9/nobody", "events": ["unlock"] }))).await;
    assert_eq!(s, 201, "{d}");
    let doomed = d["id"].as_u64().unwrap();
    assert_eq!(post_until_taken(&api_b, &video("v-late", &late), Duration::from_secs(30)).await["status"], "accepted");
    rx.wait("a failed attempt at the late user's unlocks", |g| g.iter().any(|g| !g.ok && g.json["user_id"] == late.as_str())).await;
    let (s, log) = call_served(&api_b, "GET", &format!("/v1/webhooks/{hook}/deliveries"), None).await;
    assert_eq!((s, log["pending"].as_array().map(Vec::len)), (200, Some(2)), "{log}");
    nodes.a.kill9();
    let (s, _) = api_b.call("DELETE", &format!("/v1/webhooks/{doomed}"), None).await;
    assert_eq!(s, 204);
    let swept = nodes.b.line("webhook rows of endpoints deleted while their partition moved removed").await;
    // The line's colours (ANSI escapes) out, then its `rows` field.
    let mut plain = String::new();
    let mut escaped = false;
    for c in swept.chars() {
        match (escaped, c) {
            (false, '\u{1b}') => escaped = true,
            (true, 'm') => escaped = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    assert!(plain.contains("rows=2"), "the late user's two rows of the deleted endpoint: {plain}");
    rx.failing.store(false, Ordering::SeqCst);
    rx.wait("the late user's two unlocks after node-a's death", |g| g.iter().filter(|g| g.ok).count() >= 6).await;
    let delivered = rx.delivered();
    let again: std::collections::BTreeSet<u64> = delivered.iter().map(|g| g.json["id"].as_u64().unwrap()).collect();
    assert_eq!((delivered.len(), again.len()), (6, 6), "each delivered once: {:?}", delivered.iter().map(|g| &g.json).collect::<Vec<_>>());
    // The last outcome is recorded a moment after the endpoint's answer.
    let start = Instant::now();
    let log = loop {
        let log = get_served(&api_b, &format!("/v1/webhooks/{hook}/deliveries"), Duration::from_secs(30)).await;
        if log["pending"].as_array().is_some_and(Vec::is_empty) || start.elapsed() > Duration::from_secs(10) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((log["finished"].as_array().map(Vec::len), log["pending"].as_array().map(Vec::len)), (Some(6), Some(0)), "{log}");

    // Deleted through node-b: gone, and nothing more is sent.
    let (s, _) = call_served(&api_b, "DELETE", &format!("/v1/webhooks/{hook}"), None).await;
    assert_eq!(s, 204);
    let (s, e) = api_b.get(&format!("/v1/webhooks/{hook}")).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("not_found")), "{e}");
    let before = rx.got().len();
    let fresh = user_of("node-b", "hooked-after");
    assert_eq!(post_until_taken(&api_b, &video("v-after", &fresh), Duration::from_secs(30)).await["status"], "accepted");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.got().len(), before, "nothing is sent after the deletion");
}

/// A node that leaves and comes back rebuilds the partitions it held from its own sled's
/// checkpoint, reading only what their changelogs gained while it was away, and serves exactly
/// what the cluster has: the events the other node took meanwhile count, once, with hers from
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_comes_back_rebuilds_from_its_checkpoint_and_serves_what_the_cluster_took_meanwhile() {
    let mut nodes = TwoNodes::start().await;
    let user = user_of("node-b", "returner");
    let (api_a, mut api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));
    let answer = |i: usize| http_answer(&format!("back-{i}"), &user, &format!("ex-{i}"), true);
    for i in 0..3 {
        assert_eq!(post_until_taken(&api_b, &answer(i), Duration::from_secs(30)).await["status"], "accepted");
    }
    let before = get_served(&api_b, &format!("/v1/users/{user}"), Duration::from_secs(30)).await;

    // node-b leaves (SIGTERM: its partitions go to node-a at once); node-a takes three more.
    assert!(std::process::Command::new("kill").args(["-TERM", &nodes.b.0.id().to_string()]).status().unwrap().success());
    assert!(nodes.b.0.wait().unwrap().success());
    for i in 3..6 {
        assert_eq!(post_until_taken(&api_a, &answer(i), Duration::from_secs(30)).await["status"], "accepted");
    }
    let on_a = get_served(&api_a, &format!("/v1/users/{user}"), Duration::from_secs(30)).await;
    assert!(on_a["xp"].as_f64() > before["xp"].as_f64(), "{before} then {on_a}");

    // node-b comes back on its data dir: its share again, her partition from its checkpoint.
    let (b, port_b) = nodes.join("node-b").await;
    nodes.b = b;
    let share = (0..PARTITIONS).filter(|&p| preferred(p, ["node-a", "node-b"]) == Some("node-b")).count() as u64;
    wait_serving(port_b, share, Duration::from_secs(60)).await;
    api_b = Api::demo_at(port_b);
    let back = get_served(&api_b, &format!("/v1/users/{user}"), Duration::from_secs(30)).await;
    assert_eq!((back["xp"].as_f64(), back["level"].as_f64()), (on_a["xp"].as_f64(), on_a["level"].as_f64()), "{back}");
    let log = get_served(&api_b, &format!("/v1/users/{user}/events"), Duration::from_secs(30)).await;
    let ids: Vec<&str> = log["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, (0..6).map(|i| format!("back-{i}")).collect::<Vec<_>>(), "{log}");
    for i in [1, 4] {
        assert_eq!(post(&api_b, &answer(i)).await["status"], "duplicate", "back-{i}");
    }
    assert!(metric(port_b, "accolade_cluster_rebuilds_from_checkpoint_total").await >= 1.0, "her partition was rebuilt from node-b's checkpoint");
}

/// Teams across nodes (docs/teams.md): a team served by node-a, one member served by each
/// node, every request through the node that serves neither the team nor the member; each
/// member's events count toward the team once, and each member is told the team's unlock
/// once, in her own log on her node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_counts_its_members_events_from_both_nodes_and_tells_each_member_its_unlock() {
    use accolade::cluster::partition::partition_of;
    use accolade::core::catalogue::team_entity;
    let nodes = TwoNodes::start_with(|dir| {
        let file = dir.join("teams.toml");
        let teams = "\n[teams]\n[[teams.xp]]\nid = \"t\"\nevent = \"problem.answered\"\namount = 1\n[[teams.badges]]\nid = \"team-three\"\nname = \"Three together\"\ntier = \"bronze\"\nrule = { kind = \"count\", event = \"problem.answered\", target = 3 }\n[[teams.leaderboards]]\nid = \"crews\"\nmetric = \"xp\"\nperiod = \"all_time\"\n";
        std::fs::write(&file, format!("{}{teams}", accolade::core::catalogue::DEMO_CATALOGUE)).unwrap();
        vec!["--catalogue".into(), file.to_str().unwrap().to_string(), "--progress-throttle-ms".into(), "0".into()]
    })
    .await;
    let (api_a, api_b) = (Api::demo_at(nodes.port_a), Api::demo_at(nodes.port_b));
    let team = (0..).map(|i| format!("crew-{i}")).find(|t| preferred(partition_of("demo", &team_entity(t)), ["node-a", "node-b"]) == Some("node-a")).unwrap();
    let (ua, ub) = (user_of("node-a", "mate"), user_of("node-b", "mate"));

    // Made and joined through node-b: the team's side on node-a, each member's on hers.
    let (s, t) = call_served(&api_b, "PUT", &format!("/v1/teams/{team}"), Some(&serde_json::json!({ "name": "Crew" }))).await;
    assert_eq!((s, t["name"].as_str()), (200, Some("Crew")), "{t}");
    for u in [&ua, &ub] {
        let (s, m) = call_served(&api_b, "POST", &format!("/v1/teams/{team}/members"), Some(&serde_json::json!({ "user_id": u }))).await;
        assert_eq!((s, m["joined"].as_bool()), (200, Some(true)), "{m}");
    }
    // Each member on a socket of the node that serves her: the team's progress reaches the
    // one node-a serves from its actor there, the other through node-b.
    let url = |port: u16| format!("ws://127.0.0.1:{port}/v1/ws");
    let mut sockets = [connect_served(&url(nodes.port_a), &ua, Duration::from_secs(30)).await, connect_served(&url(nodes.port_b), &ub, Duration::from_secs(30)).await];
    // Each member's events through the node that does not serve her.
    for (id, user, api) in [("m-1", &ua, &api_b), ("m-2", &ua, &api_b), ("m-3", &ub, &api_a)] {
        assert_eq!(post_until_taken(api, &http_answer(id, user, "ex-1", true), Duration::from_secs(30)).await["status"], "accepted");
    }
    for (c, u) in sockets.iter_mut().zip([&ua, &ub]) {
        let mut currents = vec![];
        while currents.len() < 2 {
            let m = tokio::time::timeout(Duration::from_secs(20), c.next()).await.unwrap_or_else(|_| panic!("{u}: team progress so far {currents:?}"));
            if m["type"] == "team_progress" {
                assert_eq!((m["team"].as_str(), m["badge"].as_str(), m["target"].as_f64()), (Some(team.as_str()), Some("team-three"), Some(3.0)), "{m}");
                currents.push(m["current"].as_f64().unwrap() as u64);
            }
        }
        currents.sort();
        assert_eq!(currents, [1, 2], "{u}: a third and two thirds, once each (the third answer is the badge)");
    }
    let start = Instant::now();
    let t = loop {
        let t = get_served(&api_b, &format!("/v1/teams/{team}"), Duration::from_secs(30)).await;
        if t["xp"] == 3 || start.elapsed() > Duration::from_secs(20) {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((t["xp"].as_u64(), t["member_count"].as_u64()), (Some(3), Some(2)), "{t}");
    assert_eq!(t["badges"].as_array().map(|b| b.iter().map(|b| b["id"].clone()).collect::<Vec<_>>()), Some(vec![serde_json::json!("team-three")]), "{t}");
    // The team is ranked on the board of teams, as gathered from both nodes, and its own
    // document shows its standing.
    let start = Instant::now();
    loop {
        let board = get_served(&api_b, "/v1/leaderboards/crews", Duration::from_secs(30)).await;
        if board["entries"] == serde_json::json!([{ "rank": 1, "team_id": team, "score": 3.0 }]) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{board}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = get_served(&api_a, &format!("/v1/teams/{team}"), Duration::from_secs(30)).await;
    assert_eq!(t["standings"], serde_json::json!([{ "board": "crews", "period": "all", "segment": null, "rank": 1, "score": 3.0 }]), "{t}");
    // Each member is told once, in her own log, read through either node.
    for u in [&ua, &ub] {
        let start = Instant::now();
        loop {
            let log = get_served(&api_a, &format!("/v1/users/{u}/events"), Duration::from_secs(30)).await;
            let told: Vec<&serde_json::Value> = log["events"].as_array().unwrap().iter().filter(|e| e["event_type"] == "accolade.team_unlock").collect();
            if told.len() == 1 {
                assert_eq!((told[0]["payload"]["team"].as_str(), told[0]["payload"]["badge"].as_str()), (Some(team.as_str()), Some("team-three")), "{log}");
                assert_eq!(told[0]["pushes"][0]["type"], "team_unlock", "{log}");
                break;
            }
            assert!(told.len() < 2 && start.elapsed() < Duration::from_secs(20), "{u}: {log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
