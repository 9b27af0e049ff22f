//! One node's membership of the cluster: its heartbeat, the watches on the nodes and leases
//! buckets, and the lease actions that `cluster/lease.rs` decides, performed on NATS. What it
//! yields is the set of partitions this node may act for, each with the fence its writes go
//! through.

use super::lease::{Action, Leases, Outcome, Timing};
use super::log::{Fence, PartitionLog};
use super::{patiently, ClusterError};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The bucket of node heartbeats: one key per node, rewritten every heartbeat.
pub const NODES: &str = "accolade-nodes";
/// The bucket of partition leases: key `p<N>`, value the holder's node id.
pub const LEASES: &str = "accolade-leases";

/// How a node joins.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's id: letters, digits, `-` and `_`, at most 64.
    pub id: String,
    pub timing: Timing,
    /// Copies JetStream keeps of the buckets and logs (3 in a three-server cluster).
    pub replicas: usize,
}

/// The partitions a node may act for, each with its fence.
pub type Owned = BTreeMap<u16, Fence>;

fn lease_key(p: u16) -> String {
    format!("p{p}")
}

fn partition_of_key(key: &str) -> Option<u16> {
    key.strip_prefix('p')?.parse().ok().filter(|&p| p < super::partition::PARTITIONS)
}

/// Checks a node id: it becomes a key-value key and a header value.
pub fn check_id(id: &str) -> Result<(), ClusterError> {
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(ClusterError::BadNodeId(id.to_string())) }
}

enum Input {
    /// The heartbeat numbered `.0` is being sent, at `.1`. Told before the put, so that it is
    /// known before the watch can bring the heartbeat back.
    Sending(u64, Instant),
    /// The heartbeat sent at `.0` was stored.
    Stored(Instant),
    Node(kv::Entry),
    Lease(kv::Entry),
    Done(u16, Outcome, Option<Fence>),
}

/// A node's membership. Dropping it stops the heartbeat and every task at once, as a crash
/// would: its leases run out and the others take its partitions. `leave` hands them over
/// first.
pub struct Node {
    id: String,
    owned: watch::Receiver<Owned>,
    leave: Option<tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<()>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub(crate) async fn bucket(js: &jetstream::Context, name: &str, replicas: usize) -> Result<kv::Store, ClusterError> {
    patiently(&format!("opening bucket {name}"), || async {
        if let Ok(s) = js.get_key_value(name).await {
            return Ok(s);
        }
        js.create_key_value(kv::Config { bucket: name.into(), history: 1, num_replicas: replicas, storage: jetstream::stream::StorageType::File, ..Default::default() }).await
    })
    .await
}

/// A key's newest value and revision, read from the leader of the bucket's stream: what was
/// stored before this read was asked is in it. (`kv::Store::entry` reads with a direct get,
/// which any replica may answer, and one a moment behind the leader answers with an older value
/// or none: under load, a backfill job just created through a node was "not found" when that
/// node was asked to cancel it.) `None` for a key never written or deleted.
pub(crate) async fn fresh_entry(kv: &kv::Store, key: &str) -> Result<Option<(Bytes, u64)>, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match kv.stream.get_last_raw_message_by_subject(&format!("{}{key}", kv.prefix)).await {
        Ok(m) => {
            let deleted = m.headers.get("KV-Operation").is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            Ok((!deleted).then_some((m.payload, m.sequence)))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// A bucket's records as they are now, then each change (`None`: deleted), for as long as the
/// receiver is kept: watched again whenever a watch ends (NATS went away), each time from the
/// newest value of every key, so that a node that missed changes meanwhile catches up. One
/// watch for the node's life, where listing the bucket again and again would make a consumer
/// each time.
pub(crate) fn follow_bucket(store: kv::Store) -> mpsc::UnboundedReceiver<(String, Option<Bytes>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match store.watch_with_history(">").await {
                Ok(mut w) => {
                    while let Some(next) = w.next().await {
                        match next {
                            Ok(e) => {
                                let value = (e.operation == kv::Operation::Put).then_some(e.value);
                                if tx.send((e.key, value)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(bucket = %store.name, error = %e, "a watch failed; watching again");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(bucket = %store.name, error = %e, "a watch did not start; trying again"),
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    rx
}

/// Forwards a bucket's changes for ever, watching again when a watch ends (NATS went away).
fn forward(store: kv::Store, tx: mpsc::UnboundedSender<Input>, wrap: fn(kv::Entry) -> Input) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // With history: the newest value of every key first, then each change. (A plain
            // `watch_all` gives changes only, and a node that joins would never hear of a lease
            // that does not change again.)
            match store.watch_with_history(">").await {
                Ok(mut w) => {
                    loop {
                        match w.next().await {
                            Some(Ok(e)) => {
                                if tx.send(wrap(e)).is_err() {
                                    return;
                                }
                            }
                            Some(Err(e)) => {
                                tracing::debug!(bucket = %store.name, error = %e, "a watch failed; watching again");
                                break;
                            }
                            None => {
                                tracing::debug!(bucket = %store.name, "a watch ended; watching again");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(bucket = %store.name, error = %e, "a watch did not start; trying again"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

impl Node {
    /// Joins the cluster that `client` reaches: opens (or creates) the buckets and the
    /// partition log, and starts taking part. Partitions come once the first heartbeat is
    /// stored.
    pub async fn join(client: async_nats::Client, options: Options) -> Result<Node, ClusterError> {
        check_id(&options.id)?;
        let js = jetstream::new(client);
        let nodes = bucket(&js, NODES, options.replicas).await?;
        let leases = bucket(&js, LEASES, options.replicas).await?;
        let log = patiently("opening the partition log", || PartitionLog::open(js.clone(), options.replicas)).await?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (owned_tx, owned) = watch::channel(Owned::new());
        let (leave_tx, mut leave_rx) = tokio::sync::oneshot::channel::<tokio::sync::oneshot::Sender<()>>();
        let mut tasks = vec![forward(nodes.clone(), tx.clone(), Input::Node), forward(leases.clone(), tx.clone(), Input::Lease)];

        // The heartbeat: a number, so that the node knows its own heartbeat when the watch
        // brings it back; its send time goes back with the acknowledgement, as the lease counts
        // from the send.
        let id = options.id.clone();
        let every = options.timing.heartbeat;
        let (hb_nodes, hb_tx) = (nodes.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Numbered from the clock, so that a restarted node never takes an earlier run's
            // heartbeat, still in the bucket, for one of its own seen back.
            let first = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
            for n in first.. {
                tick.tick().await;
                let sent = Instant::now();
                if hb_tx.send(Input::Sending(n, sent)).is_err() {
                    return;
                }
                let stored = tokio::time::timeout(every, hb_nodes.put(&id, Bytes::from(n.to_string()))).await;
                match stored {
                    Ok(Ok(_)) => {
                        if hb_tx.send(Input::Stored(sent)).is_err() {
                            return;
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(node = %id, heartbeat = n, error = %e, "a heartbeat was not stored"),
                    Err(_) => tracing::debug!(node = %id, heartbeat = n, "a heartbeat was not acknowledged within a heartbeat"),
                }
            }
        }));

        let me = options.id.clone();
        let timing = options.timing;
        tasks.push(tokio::spawn(async move {
            let mut state = Leases::new(me.clone(), timing, Instant::now());
            let mut fences = Owned::new();
            // Send times of the heartbeats not yet seen back through the watch.
            let mut sent_at: BTreeMap<u64, Instant> = BTreeMap::new();
            let mut was_alive = false;
            let mut tick = tokio::time::interval((timing.heartbeat / 4).clamp(Duration::from_millis(20), Duration::from_millis(250)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    reply = &mut leave_rx => {
                        // Stop acting for every partition first, then hand each one over.
                        let held: Vec<(u16, u64)> = state.owned().iter().map(|(&p, &r)| (p, r)).collect();
                        fences.clear();
                        let _ = owned_tx.send(Owned::new());
                        for (p, rev) in held {
                            let _ = leases.delete_expect_revision(lease_key(p), Some(rev)).await;
                        }
                        let _ = nodes.delete(&me).await;
                        if let Ok(reply) = reply {
                            let _ = reply.send(());
                        }
                        return;
                    }
                    input = rx.recv() => {
                        let now = Instant::now();
                        match input {
                            None => return,
                            Some(Input::Sending(n, sent)) => {
                                sent_at.insert(n, sent);
                                // Heartbeats lost on the way are never seen back.
                                while sent_at.len() > 64 {
                                    sent_at.pop_first();
                                }
                            }
                            Some(Input::Stored(sent)) => state.heartbeat_stored(sent),
                            Some(Input::Node(e)) if e.key == me => {
                                let n = std::str::from_utf8(&e.value).ok().and_then(|v| v.parse::<u64>().ok());
                                if let Some(sent) = n.and_then(|n| sent_at.get(&n).copied()) {
                                    state.own_heartbeat_seen(sent);
                                    sent_at.retain(|&k, _| Some(k) > n);
                                }
                            }
                            Some(Input::Node(e)) => state.node_seen(&e.key, e.revision, e.operation == kv::Operation::Put, now),
                            Some(Input::Lease(e)) => {
                                if let Some(p) = partition_of_key(&e.key) {
                                    let holder = (e.operation == kv::Operation::Put).then(|| String::from_utf8_lossy(&e.value).into_owned());
                                    state.lease_seen(p, holder.as_deref(), e.revision, now);
                                }
                            }
                            Some(Input::Done(p, outcome, fence)) => {
                                state.done(p, outcome, now);
                                if let (Some(f), true) = (fence, state.owned().get(&p) == Some(&match outcome { Outcome::Holding(r) => r, _ => 0 })) {
                                    fences.insert(p, f);
                                }
                            }
                        }
                    }
                    _ = tick.tick() => {
                        let now = Instant::now();
                        // Said when it changes: an operator sees why a node stopped serving.
                        if state.alive(now) != was_alive {
                            was_alive = !was_alive;
                            if was_alive {
                                tracing::info!(node = %me, "a heartbeat stored within a lease: acting for partitions");
                            } else {
                                tracing::warn!(node = %me, "no heartbeat stored for a lease less one heartbeat: acting for no partition until one is");
                            }
                        }
                        let actions = state.tick(now);
                        // A partition given up leaves the view before its release is sent.
                        publish(&state, &mut fences, &owned_tx);
                        for action in actions {
                            tokio::spawn(perform(action, leases.clone(), log.clone(), me.clone(), tx.clone()));
                        }
                    }
                }
                publish(&state, &mut fences, &owned_tx);
            }
        }));
        Ok(Node { id: options.id, owned, leave: Some(leave_tx), tasks })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The partitions this node may act for now, and each change of them.
    pub fn owned(&self) -> watch::Receiver<Owned> {
        self.owned.clone()
    }

    /// Leaves the cluster: stops acting, releases every lease and removes the heartbeat, so
    /// the others take the partitions at once instead of after a lease.
    pub async fn leave(mut self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(l) = self.leave.take()
            && l.send(tx).is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }
}

/// Publishes what the node may act for: the partitions the state owns that have a fence.
fn publish(state: &Leases, fences: &mut Owned, view: &watch::Sender<Owned>) {
    fences.retain(|p, f| state.owned().get(p) == Some(&f.lease));
    if *view.borrow() != *fences {
        let _ = view.send(fences.clone());
    }
}

/// Reads `partition`'s lease as the bucket has it now, into the node's view, after an action
/// on it was refused or failed. The watch brings the same change in time; but a watch that has
/// stalled (its consumer being made again after the NATS server it used died) would otherwise
/// leave the node asking, for ever, to take a lease at a revision that is long gone, while the
/// others, seeing its heartbeats, wait for it: its partitions served by nobody.
async fn recheck(leases: &kv::Store, partition: u16, tx: &mpsc::UnboundedSender<Input>) {
    match tokio::time::timeout(Duration::from_secs(2), leases.entry(lease_key(partition))).await {
        Ok(Ok(Some(e))) => {
            let _ = tx.send(Input::Lease(e));
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::debug!(partition, error = %e, "reading a lease after a refused action failed"),
        Err(_) => tracing::debug!(partition, "reading a lease after a refused action timed out"),
    }
}

/// Performs one lease action; a lease gained is claimed in the partition's log before the
/// node acts for it, and given back if the claim fails.
async fn perform(action: Action, leases: kv::Store, log: PartitionLog, me: String, tx: mpsc::UnboundedSender<Input>) {
    tracing::debug!(node = %me, ?action, "lease action");
    let (p, result) = match action {
        Action::Create(p) => (p, leases.create(lease_key(p), Bytes::from(me.clone())).await.map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists)),
        Action::Take { partition, revision } => {
            (partition, leases.update(lease_key(partition), Bytes::from(me.clone()), revision).await.map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision))
        }
        Action::Release { partition, revision } => {
            let outcome = match leases.delete_expect_revision(lease_key(partition), Some(revision)).await {
                Ok(()) => Outcome::Released,
                Err(_) => {
                    recheck(&leases, partition, &tx).await;
                    Outcome::Failed
                }
            };
            let _ = tx.send(Input::Done(partition, outcome, None));
            return;
        }
    };
    let (outcome, fence) = match result {
        Ok(rev) => match log.claim(p, &me, rev).await {
            Ok(f) => (Outcome::Holding(rev), Some(f)),
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "claiming a partition's log failed; giving the lease back");
                let _ = leases.delete_expect_revision(lease_key(p), Some(rev)).await;
                (Outcome::Failed, None)
            }
        },
        Err(true) => (Outcome::Refused, None),
        Err(false) => (Outcome::Failed, None),
    };
    tracing::debug!(node = %me, partition = p, ?outcome, "lease action done");
    if !matches!(outcome, Outcome::Holding(_)) {
        recheck(&leases, p, &tx).await;
    }
    let _ = tx.send(Input::Done(p, outcome, fence));
}
