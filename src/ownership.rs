//! Cluster mode's partitions on this node: joining the cluster at start (a clear error if no
//! NATS server answers), each partition gained rebuilt from its changelog before it is served,
//! each one lost, or whose changelog writer stopped, let go of (its users' actors ended without
//! a snapshot, so the next message for them finds it unserved, or rebuilt), and leaving the
//! cluster at shutdown. Events and sockets of a user another node serves go to that node
//! (`forward`, `attach`; the messages are `remote.rs`'s), and this node answers them for the
//! partitions it serves.

use crate::cluster::changelog::Writer;
use crate::cluster::eventlog::{rebuild, ClusterLog};
use crate::cluster::lease::Timing;
use crate::cluster::log::{Fence, PartitionLog};
use crate::cluster::node::{Node, Options, Owned};
use crate::cluster::partition::partition_of;
use crate::cluster::route::{RouteError, Routes};
use crate::config::Config;
use crate::core::{Event, Millis};
use crate::protocol::Since;
use crate::remote::{Answering, Attachment, Remotes};
use crate::store::Store;
use crate::user::{Conn, IngestOutcome, Users};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Partitions claimed and rebuilt at the same time.
const REBUILDS_AT_ONCE: usize = 16;

/// A node's part in the cluster, from start to shutdown.
pub struct Membership {
    pub id: String,
    pub log: Arc<ClusterLog>,
    /// The cluster's catalogue history.
    pub catalog: Arc<crate::cluster::catalog::CatalogueLog>,
    partitions: PartitionLog,
    routes: Arc<Routes>,
    /// The sockets other nodes hold for the users this node serves.
    remotes: Arc<Remotes>,
    /// The HTTP router, which answers requests relayed from other nodes. (It holds the
    /// server's shared handles, and so this: a cycle that lives as long as the process.)
    router: Arc<std::sync::OnceLock<axum::Router>>,
    node: tokio::sync::Mutex<Option<Node>>,
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
        let catalog = Arc::new(crate::cluster::catalog::CatalogueLog::for_client(client.clone(), config.cluster_replicas.max(1)).await?);
        tracing::info!(node = %id, urls, "joined the cluster");
        Ok(Membership { id, catalog, log: Arc::new(ClusterLog::new(store.clone())), partitions, routes: Arc::new(Routes::new(client)), remotes: Arc::default(), router: Arc::default(), node: tokio::sync::Mutex::new(Some(node)) })
    }

    /// Whether this node serves `user`'s partition (its events go through a local actor).
    pub fn serves(&self, tenant: &str, user: &str) -> bool {
        self.log.serves(partition_of(tenant, user))
    }

    /// Sends an event to the node that serves its user and returns that node's outcome; an
    /// event nobody serves at the moment is `unavailable` (the sender sends it again).
    pub async fn forward(&self, tenant: &str, event: Event, received_at: Millis) -> IngestOutcome {
        crate::remote::forward(&self.routes, tenant, event, received_at).await
    }

    /// Attaches `conn`, a socket of this node for a user another node serves, to her actor
    /// there (see `remote::attach`).
    pub async fn attach(&self, metrics: Arc<crate::metrics::Metrics>, tenant: &str, user: &str, since: Option<Since>, conn: Conn) -> Result<Attachment, RouteError> {
        crate::remote::attach(self.routes.clone(), metrics, tenant, user, since, conn).await
    }

    /// Relays an HTTP request about `user` to the node that serves her.
    pub async fn relay(&self, tenant: &str, user: &str, req: axum::http::Request<bytes::Bytes>) -> Result<axum::http::Response<bytes::Bytes>, RouteError> {
        crate::remote::relay(&self.routes, partition_of(tenant, user), req).await
    }

    /// Gives this node's router, which answers relayed requests.
    pub fn set_router(&self, router: axum::Router) {
        let _ = self.router.set(router);
    }

    /// Serves the partitions this node owns, until `stop`.
    pub async fn run(self: Arc<Self>, store: Store, users: Users, catalogues: Arc<crate::catalogues::Catalogues>, metrics: Arc<crate::metrics::Metrics>, outbox: usize, mut stop: watch::Receiver<bool>) {
        let Some(mut owned) = self.node.lock().await.as_ref().map(Node::owned) else { return };
        let mut served: BTreeMap<u16, Fence> = BTreeMap::new();
        let answering = Arc::new(Answering { users: users.clone(), log: self.log.clone(), routes: self.routes.clone(), remotes: self.remotes.clone(), metrics: metrics.clone(), outbox, router: self.router.clone() });
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
            // A partition gained is served only once this node has every catalogue version
            // the cluster has: its users' events were judged by them elsewhere.
            let gains = now.keys().any(|p| !served.contains_key(p));
            let caught_up = match gains {
                false => true,
                true => catalogues.catch_up().await.map_err(|e| tracing::warn!(error = %e, "taking in the cluster's catalogue versions failed; trying again")).is_ok(),
            };
            // Claimed and rebuilt several at a time: a rebuild that waits on a slow read (a NATS
            // server just lost, its consumers' placement being sorted out) must not hold up the
            // others, as it did one after the other (ten seconds each, for every such one).
            let gained: Vec<(u16, u64)> = now.iter().filter(|(p, _)| caught_up && !served.contains_key(p)).map(|(&p, f)| (p, f.lease)).collect();
            let mut ready = futures_util::stream::iter(gained)
                .map(|(p, lease)| {
                    let (store, me) = (&store, &*self);
                    async move {
                        // The writer of a partition whose last one stopped needs a fence of its
                        // own: a fresh claim, which also fences off anything the old writer
                        // still sends.
                        let fence = match me.partitions.claim(p, &me.id, lease).await {
                            Ok(f) => f,
                            Err(e) => return (p, Err(format!("claiming failed: {e}"))),
                        };
                        match rebuild(store, &me.partitions, p, 0).await {
                            Ok(last) => (p, Ok((fence, last))),
                            Err(e) => (p, Err(format!("rebuilding failed: {e}"))),
                        }
                    }
                })
                .buffer_unordered(REBUILDS_AT_ONCE);
            // Each is served as soon as it is rebuilt.
            while let Some((p, r)) = ready.next().await {
                match r {
                    Ok((fence, last)) => {
                        self.log.serve(p, Writer::start(self.partitions.clone(), fence));
                        if let Err(e) = self.routes.serve(p, crate::remote::answering(answering.clone(), p)).await {
                            tracing::warn!(partition = p, error = %e, "answering for a partition failed; its users are served from here only");
                        }
                        served.insert(p, now[&p].clone());
                        metrics.partitions_served.store(served.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(partition = p, changelog = last, "partition rebuilt and served");
                    }
                    Err(e) => tracing::warn!(partition = p, error = %e, "a partition gained is not served yet; trying again"),
                }
            }
            metrics.partitions_served.store(served.len() as u64, std::sync::atomic::Ordering::Relaxed);
            metrics.remote_sockets.store(self.remotes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.remotes.expire(&users, tokio::time::Instant::now());
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
