//! Cluster mode's partitions on this node: joining the cluster at start (a clear error if no
//! NATS server answers), each partition gained rebuilt from its changelog before it is served,
//! each one lost, or whose changelog writer stopped, let go of (its users' actors ended without
//! a snapshot, so the next message for them finds it unserved, or rebuilt), and leaving the
//! cluster at shutdown. Events for a user of a partition another node serves are forwarded to
//! it (`forward`), and this node answers such requests for the partitions it serves.

use crate::cluster::changelog::Writer;
use crate::cluster::eventlog::{rebuild, ClusterLog};
use crate::cluster::lease::Timing;
use crate::cluster::log::{Fence, PartitionLog};
use crate::cluster::node::{Node, Options, Owned};
use crate::cluster::partition::partition_of;
use crate::cluster::route::{Handler, Routes};
use crate::config::Config;
use crate::core::{Event, Millis};
use crate::store::Store;
use crate::user::{IngestOutcome, Origin, UserMsg, Users};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A node's part in the cluster, from start to shutdown.
pub struct Membership {
    pub id: String,
    pub log: Arc<ClusterLog>,
    partitions: PartitionLog,
    routes: Routes,
    node: tokio::sync::Mutex<Option<Node>>,
}

/// An event forwarded to the node that serves its user, with the time this node received it
/// (the rules see that time, wherever they run).
#[derive(Serialize, Deserialize)]
struct Forwarded {
    tenant: String,
    event: Event,
    received_at: Millis,
}

/// The outcome of a forwarded event, as it comes back.
#[derive(Serialize, Deserialize)]
struct Answer {
    event_id: String,
    status: String,
    reason: Option<String>,
    code: Option<String>,
    xp: u64,
    unlocks: Vec<String>,
}

/// How long a forwarded event may take: its owner answers once the event is durable.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

fn unavailable(event_id: String, why: String) -> IngestOutcome {
    IngestOutcome { event_id, status: "rejected", reason: Some(format!("{why}; send it again")), code: Some("unavailable".into()), xp: 0, unlocks: vec![] }
}

/// Answers events forwarded for a partition: each goes through its user's actor on this node,
/// as an HTTP event would, and the reply is its outcome once durable.
fn answer_events(users: Users) -> Handler {
    Arc::new(move |body: Bytes| {
        let users = users.clone();
        Box::pin(async move {
            let outcome = match serde_json::from_slice::<Forwarded>(&body) {
                Err(e) => unavailable(String::new(), format!("a forwarded event did not decode: {e}")),
                Ok(f) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let (id, user) = (f.event.event_id.clone(), f.event.user_id.clone());
                    let msg = UserMsg::Event { event: f.event, received_at: f.received_at, arrived: tokio::time::Instant::now(), origin: Origin::Http(tx), permit: None };
                    match users.send(&f.tenant, &user, msg) {
                        Err(e) => unavailable(id, e.to_string()),
                        Ok(()) => rx.await.unwrap_or_else(|_| unavailable(id, "the user's actor stopped".into())),
                    }
                }
            };
            let a = Answer { event_id: outcome.event_id, status: outcome.status.into(), reason: outcome.reason, code: outcome.code.map(Into::into), xp: outcome.xp, unlocks: outcome.unlocks };
            Bytes::from(serde_json::to_vec(&a).expect("an answer encodes"))
        })
    })
}

impl Membership {
    /// Connects to the NATS servers and joins; the actors are to be given `log`.
    pub async fn join(config: &Config, store: &Store) -> anyhow::Result<Membership> {
        let urls = config.cluster.as_deref().unwrap_or_default();
        let id = config.node_id.clone().ok_or_else(|| anyhow::anyhow!("--cluster needs --node-id: each node of a cluster has its own id"))?;
        crate::cluster::node::check_id(&id)?;
        let client = crate::cluster::connect(urls, Duration::from_secs(5)).await?;
        let lease = Duration::from_millis(config.cluster_lease_ms.max(400));
        let node = Node::join(client.clone(), Options { id: id.clone(), timing: Timing::for_lease(lease), replicas: config.cluster_replicas.max(1) }).await?;
        let partitions = PartitionLog::for_client(client.clone(), config.cluster_replicas.max(1)).await?;
        tracing::info!(node = %id, urls, "joined the cluster");
        Ok(Membership { id, log: Arc::new(ClusterLog::new(store.clone())), partitions, routes: Routes::new(client), node: tokio::sync::Mutex::new(Some(node)) })
    }

    /// Whether this node serves `user`'s partition (its events go through a local actor).
    pub fn serves(&self, tenant: &str, user: &str) -> bool {
        self.log.serves(partition_of(tenant, user))
    }

    /// Sends an event to the node that serves its user and returns that node's outcome; an
    /// event nobody serves at the moment is `unavailable` (the sender sends it again).
    pub async fn forward(&self, tenant: &str, event: Event, received_at: Millis) -> IngestOutcome {
        let p = partition_of(tenant, &event.user_id);
        let id = event.event_id.clone();
        let body = Bytes::from(serde_json::to_vec(&Forwarded { tenant: tenant.to_string(), event, received_at }).expect("an event encodes"));
        match self.routes.request(p, body, FORWARD_TIMEOUT).await {
            Ok(reply) => match serde_json::from_slice::<Answer>(&reply) {
                Ok(a) => IngestOutcome {
                    event_id: a.event_id,
                    status: match a.status.as_str() {
                        "accepted" => "accepted",
                        "duplicate" => "duplicate",
                        _ => "rejected",
                    },
                    reason: a.reason,
                    code: a.code.map(Into::into),
                    xp: a.xp,
                    unlocks: a.unlocks,
                },
                Err(e) => unavailable(id, format!("the serving node's answer did not decode: {e}")),
            },
            // Timed out: the event may yet be taken there, and a resend is then a duplicate.
            Err(e) => unavailable(id, e.to_string()),
        }
    }

    /// Serves the partitions this node owns, until `stop`.
    pub async fn run(self: Arc<Self>, store: Store, users: Users, metrics: Arc<crate::metrics::Metrics>, mut stop: watch::Receiver<bool>) {
        let Some(mut owned) = self.node.lock().await.as_ref().map(Node::owned) else { return };
        let mut served: BTreeMap<u16, Fence> = BTreeMap::new();
        loop {
            let now: Owned = owned.borrow_and_update().clone();
            // Lost, or fenced anew, or its writer stopped: let go of it first.
            let gone: Vec<u16> = served.iter().filter(|(p, f)| now.get(p) != Some(f) || !self.log.serves(**p)).map(|(&p, _)| p).collect();
            for p in gone {
                self.routes.unserve(p);
                self.log.unserve(p);
                served.remove(&p);
                users.drop_where(|t, u| partition_of(t, u) == p).await;
                tracing::info!(partition = p, "partition let go of");
            }
            for (&p, fence) in &now {
                if served.contains_key(&p) {
                    continue;
                }
                // The writer of a partition whose last one stopped needs a fence of its own:
                // a fresh claim, which also fences off anything the old writer still sends.
                let fence = match self.partitions.claim(p, &self.id, fence.lease).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "claiming a partition failed; trying again");
                        continue;
                    }
                };
                match rebuild(&store, &self.partitions, p, 0).await {
                    Ok(last) => {
                        self.log.serve(p, Writer::start(self.partitions.clone(), fence.clone()));
                        if let Err(e) = self.routes.serve(p, answer_events(users.clone())).await {
                            tracing::warn!(partition = p, error = %e, "answering for a partition failed; its users are served from here only");
                        }
                        served.insert(p, now[&p].clone());
                        tracing::info!(partition = p, changelog = last, "partition rebuilt and served");
                    }
                    Err(e) => tracing::warn!(partition = p, error = %e, "rebuilding a partition failed; trying again"),
                }
            }
            metrics.partitions_served.store(served.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                changed = owned.changed() => if changed.is_err() { return },
                // A writer that stopped is noticed on the next round.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Leaves the cluster: the partitions go to the other nodes at once. Run after the actors
    /// have stopped (their last snapshots go through the changelog).
    pub async fn leave(&self) {
        if let Some(node) = self.node.lock().await.take() {
            node.leave().await;
        }
    }
}
