//! Cluster mode's partitions on this node: joining the cluster at start (a clear error if no
//! NATS server answers), each partition gained rebuilt from its changelog before it is served,
//! each one lost, or whose changelog writer stopped, let go of (its users' actors ended without
//! a snapshot, so the next message for them finds it unserved, or rebuilt), and leaving the
//! cluster at shutdown. Events and sockets of a user another node serves go to that node
//! (`forward`, `attach`; the messages are `remote.rs`'s), and this node answers them for the
//! partitions it serves.

use crate::cluster::changelog::Writer;
use crate::cluster::eventlog::{rebuild, start_for, ClusterLog, Start};
use crate::cluster::lease::Timing;
use crate::cluster::log::{Fence, PartitionLog};
use crate::cluster::node::{Node, Options, Owned};
use crate::cluster::partition::{partition_of, PARTITIONS};
use crate::cluster::patiently;
use crate::cluster::route::{RouteError, Routes};
use crate::config::Config;
use crate::core::{Event, Millis};
use crate::protocol::Since;
use crate::boards::Boards;
use crate::remote::{Answering, Attachment, Remotes};
use crate::standings::{Answer, Question, Reply};
use crate::store::{Store, TreeId, Write};
use crate::user::{Conn, IngestOutcome, Users};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Partitions claimed and rebuilt at the same time.
const REBUILDS_AT_ONCE: usize = 16;

/// The subject of questions about leaderboard standings, which every node answers.
const STANDINGS: &str = "accolade.standings";

/// The subject of questions about the goals one assigner gave, which every node answers.
const GOALS: &str = "accolade.goals";

/// The subject of catalogue previews, which every node answers for the users it serves.
const PREVIEWS: &str = "accolade.previews";

/// The subject of questions about a webhook endpoint's deliveries, which every node answers
/// for the users it serves.
const HOOKS: &str = "accolade.webhooks";

/// The most an answer about webhook deliveries takes, well under NATS's default `max_payload`
/// of 1 MiB (a page of 1,000 waiting and 1,000 finished notifications can be larger).
const ANSWER_BYTES: usize = 768 * 1024;

/// A question to every node about endpoint `hook` of `tenant`.
#[derive(serde::Serialize, serde::Deserialize)]
struct HookQuestion {
    tenant: String,
    hook: u64,
    ask: crate::webhooks::Ask,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct HookAnswer {
    partitions: Vec<u16>,
    told: crate::webhooks::Told,
}

/// A question to every node: what `change` would award the users it serves, judged against the
/// catalogue version the asking node has (a node at another version answers for no partition,
/// so the asker waits for it rather than add up two different changes).
#[derive(serde::Serialize, serde::Deserialize)]
struct PreviewQuestion {
    tenant: String,
    change: crate::catalogues::Change,
    /// The version the change would make.
    version: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PreviewAnswer {
    partitions: Vec<u16>,
    report: Option<crate::backfill::PreviewReport>,
}

/// A question to every node: the goals `assigner` gave in `tenant`.
#[derive(serde::Serialize, serde::Deserialize)]
struct GoalsQuestion {
    tenant: String,
    assigner: String,
}

/// A node's answer: the partitions it serves, and the goals of their assignees.
#[derive(serde::Serialize, serde::Deserialize)]
struct GoalsAnswer {
    partitions: Vec<u16>,
    goals: Vec<crate::store::GoalRecord>,
}

/// How long a question about standings waits for every partition to be answered for. A
/// partition between owners is answered for by nobody until it is rebuilt (a few seconds
/// after a node dies), and then the question fails rather than give a partial ranking.
const GATHER_FOR: Duration = Duration::from_secs(3);

/// How long a catalogue preview waits for every partition to be answered for.
const PREVIEW_FOR: Duration = Duration::from_secs(30);

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
    /// Each goal id's assignee.
    goal_ids: crate::cluster::goals::GoalIds,
    /// The cluster's backfill jobs.
    pub jobs: Arc<crate::cluster::jobs::Jobs>,
    /// The cluster's webhook endpoints.
    hooks: crate::cluster::hooks::HookBucket,
    /// The outbox size of a socket attached from another node (`--outbox-capacity`).
    outbox: usize,
    /// Batches after which a partition's changelog is compacted (`--cluster-compact-batches`).
    compact_batches: u64,
    /// The event retention, which a compaction applies as the sweep does.
    retention_hours: u64,
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
        // A cluster that is starting may not have elected the leaders of these streams yet.
        let replicas = config.cluster_replicas.max(1);
        let partitions = patiently("opening the partition log", || PartitionLog::for_client(client.clone(), replicas)).await?;
        let catalog = Arc::new(patiently("opening the catalogue history", || crate::cluster::catalog::CatalogueLog::for_client(client.clone(), replicas)).await?);
        let goal_ids = crate::cluster::goals::GoalIds::for_client(client.clone(), replicas).await?;
        let jobs = Arc::new(crate::cluster::jobs::Jobs::for_client(client.clone(), replicas).await?);
        let hooks = crate::cluster::hooks::HookBucket::for_client(client.clone(), replicas).await?;
        tracing::info!(node = %id, urls, "joined the cluster");
        Ok(Membership { id, catalog, log: Arc::new(ClusterLog::new(store.clone())), partitions, routes: Arc::new(Routes::new(client)), remotes: Arc::default(), router: Arc::default(), node: tokio::sync::Mutex::new(Some(node)), goal_ids, jobs, hooks, outbox: config.outbox_capacity, compact_batches: config.cluster_compact_batches, retention_hours: config.event_retention_hours })
    }

    /// Whether this node serves `partition` now.
    pub fn serves_partition(&self, partition: u16) -> bool {
        self.log.serves(partition)
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

    /// Changes one side of a team membership through `entity`'s actor on the node serving it.
    pub async fn link(&self, tenant: &str, entity: &str, other: &str, join: bool, limit: usize) -> Result<Result<bool, crate::user::LinkError>, String> {
        crate::remote::link(&self.routes, tenant, entity, other, join, limit).await
    }

    /// Gives frames in no history (a team's progress) to `user`'s actor on the node serving
    /// her, if it is in memory there.
    pub async fn told(&self, tenant: &str, user: &str, frames: &[crate::protocol::Frame]) -> Result<(), String> {
        crate::remote::told(&self.routes, tenant, user, frames).await
    }

    /// Retracts a member's contribution from a team through the team's actor on the node
    /// serving it.
    pub async fn team_retract(&self, tenant: &str, event: Event) -> Result<(), String> {
        crate::remote::team_retract(&self.routes, tenant, event).await
    }

    /// Tells a member a team's unlock through her actor on the node serving her.
    pub async fn team_unlock(&self, tenant: &str, event: Event) -> Result<(), String> {
        crate::remote::team_unlock(&self.routes, tenant, event).await
    }

    /// Attaches `conn`, a socket of this node for a user another node serves, to her actor
    /// there (see `remote::attach`).
    pub async fn attach(&self, metrics: Arc<crate::metrics::Metrics>, tenant: &str, user: &str, since: Option<Since>, conn: Conn) -> Result<Attachment, RouteError> {
        crate::remote::attach(self.routes.clone(), metrics, tenant, user, since, conn).await
    }

    /// Gives a closed period's award to `user` through her actor on the node serving her.
    pub async fn award(&self, tenant: &str, user: &str, board: &str, period: &str, rank: usize) -> Result<bool, String> {
        crate::remote::award(&self.routes, tenant, user, board, period, rank).await
    }

    /// Gives a goal's notice to its assigner `user` through her actor on the node serving her.
    pub async fn notice(&self, tenant: &str, user: &str, notice: crate::remote::GoalNotice) -> Result<(), String> {
        crate::remote::notice(&self.routes, tenant, user, notice).await
    }

    /// Claims goal id `id` of `tenant` for `assignee`, unless it names a goal already: the
    /// assignee it names, this one when the claim is new.
    pub async fn claim_goal_id(&self, tenant: &str, id: &str, assignee: &str) -> Result<String, String> {
        self.goal_ids.claim(tenant, id, assignee).await
    }

    /// The assignee of goal `id` of `tenant`, if the id names a goal.
    pub async fn goal_assignee(&self, tenant: &str, id: &str) -> Result<Option<String>, String> {
        self.goal_ids.assignee(tenant, id).await
    }

    /// The goals `assigner` gave in `tenant`, gathered from every node once they cover every
    /// partition; an error when some partition found no node serving it in time.
    pub async fn goals_given_by(&self, tenant: &str, assigner: &str) -> Result<Vec<crate::store::GoalRecord>, String> {
        let q = GoalsQuestion { tenant: tenant.into(), assigner: assigner.into() };
        let got: Vec<GoalsAnswer> = self.gather_all(GOALS, &q, GATHER_FOR, |a: &GoalsAnswer| &a.partitions).await?;
        let mut goals: BTreeMap<String, crate::store::GoalRecord> = BTreeMap::new();
        for a in got {
            // A goal answered twice (its partition moving between the answers) is one goal.
            for g in a.goals {
                goals.insert(g.spec.id.clone(), g);
            }
        }
        // In id order, as one node's store lists them.
        Ok(goals.into_values().collect())
    }

    /// What `change` (which would make catalogue version `version`) would award the stored
    /// users, each node previewing those it serves, gathered once every partition is answered
    /// for; an error when some partition found no node serving it in time.
    pub async fn preview(&self, tenant: &str, change: &crate::catalogues::Change, version: u64) -> Result<Vec<crate::backfill::PreviewReport>, String> {
        let q = PreviewQuestion { tenant: tenant.into(), change: change.clone(), version };
        // A preview replays every stored user's events: longer than a question about standings.
        let got: Vec<PreviewAnswer> = self.gather_all(PREVIEWS, &q, PREVIEW_FOR, |a: &PreviewAnswer| &a.partitions).await?;
        Ok(got.into_iter().filter_map(|a| a.report).collect())
    }

    /// Asks every node `q` on `subject` and gathers their answers (JSON), each naming the
    /// partitions it answered for, until every partition is covered; an error if some
    /// partition was not answered for within `timeout` (between nodes, say), rather than an
    /// answer about some of the users.
    async fn gather_all<Q: serde::Serialize, A: serde::de::DeserializeOwned>(&self, subject: &str, q: &Q, timeout: Duration, partitions: fn(&A) -> &Vec<u16>) -> Result<Vec<A>, String> {
        let body = bytes::Bytes::from(serde_json::to_vec(q).expect("a question encodes"));
        let covered = |got: &[bytes::Bytes]| {
            let mut seen = [false; PARTITIONS as usize];
            for a in got.iter().filter_map(|b| serde_json::from_slice::<A>(b).ok()) {
                partitions(&a).iter().for_each(|&p| seen[usize::from(p) % seen.len()] = true);
            }
            seen.iter().all(|s| *s)
        };
        let got = self.routes.gather(subject, body, timeout, covered).await.map_err(|e| e.to_string())?;
        if !covered(&got) {
            return Err("some partitions are between nodes, or on a node that cannot answer yet, and were not answered for".into());
        }
        let answers: Vec<A> = got.iter().filter_map(|b| serde_json::from_slice(b).ok()).collect();
        // Two nodes answering for one partition: it moved while the question was out, and one
        // of the answers is stale. Asked again, it is answered once.
        let mut seen = [false; PARTITIONS as usize];
        for p in answers.iter().flat_map(|a| partitions(a).iter()) {
            if std::mem::replace(&mut seen[usize::from(*p) % seen.len()], true) {
                return Err(format!("partition {p} moved between nodes while it was asked about"));
            }
        }
        Ok(answers)
    }

    /// Answers other nodes' catalogue previews for the users of the partitions this node
    /// serves, until the task is aborted.
    async fn answer_previews(&self, store: Store, catalogues: Arc<crate::catalogues::Catalogues>) -> Result<tokio::task::JoinHandle<()>, RouteError> {
        let log = self.log.clone();
        let answer = Arc::new(move |body: bytes::Bytes| -> futures_util::future::BoxFuture<'static, bytes::Bytes> {
            let (store, catalogues, log) = (store.clone(), catalogues.clone(), log.clone());
            Box::pin(async move {
                let none = PreviewAnswer { partitions: vec![], report: None };
                let reply = match serde_json::from_slice::<PreviewQuestion>(&body) {
                    Ok(q) => match catalogues.candidate(&q.tenant, &q.change) {
                        Ok(cand) if cand.catalogue.version == q.version => {
                            let served: Vec<bool> = (0..PARTITIONS).map(|p| log.serves(p)).collect();
                            let partitions: Vec<u16> = (0..PARTITIONS).filter(|p| served[usize::from(*p)]).collect();
                            let t = q.tenant.clone();
                            let report = tokio::task::spawn_blocking(move || crate::backfill::preview_users(&store, &catalogues, &t, &cand, &|u| served[usize::from(partition_of(&t, u))])).await;
                            match report {
                                Ok(Ok(r)) => PreviewAnswer { partitions, report: Some(r) },
                                _ => none,
                            }
                        }
                        // Another version here, or a change this node refuses: no partition
                        // answered for, so the asker sees them uncovered.
                        _ => none,
                    },
                    Err(_) => none,
                };
                bytes::Bytes::from(serde_json::to_vec(&reply).expect("an answer encodes"))
            })
        });
        self.routes.answer_all(PREVIEWS, answer).await
    }

    /// Answers other nodes' questions about the goals an assigner gave, from this node's
    /// store, for the partitions it serves, until the task is aborted.
    async fn answer_goals(&self, store: Store) -> Result<tokio::task::JoinHandle<()>, RouteError> {
        let log = self.log.clone();
        let answer = Arc::new(move |body: bytes::Bytes| -> futures_util::future::BoxFuture<'static, bytes::Bytes> {
            let (store, log) = (store.clone(), log.clone());
            Box::pin(async move {
                let reply = match serde_json::from_slice::<GoalsQuestion>(&body) {
                    Ok(q) => {
                        let served: Vec<bool> = (0..PARTITIONS).map(|p| log.serves(p)).collect();
                        let t = q.tenant.clone();
                        match tokio::task::spawn_blocking(move || store.goals(&t)).await {
                            Ok(Ok(all)) => GoalsAnswer {
                                partitions: (0..PARTITIONS).filter(|p| served[usize::from(*p)]).collect(),
                                // The sled may still hold goals of partitions let go of: only
                                // the served ones are this node's to tell.
                                goals: all.into_iter().filter(|g| g.spec.assigner == q.assigner && served[usize::from(partition_of(&q.tenant, &g.assignee))]).collect(),
                            },
                            // Unreadable here: answered for no partition, so the asker sees
                            // them uncovered instead of a partial list.
                            _ => GoalsAnswer { partitions: vec![], goals: vec![] },
                        }
                    }
                    Err(_) => GoalsAnswer { partitions: vec![], goals: vec![] },
                };
                bytes::Bytes::from(serde_json::to_vec(&reply).expect("an answer encodes"))
            })
        });
        self.routes.answer_all(GOALS, answer).await
    }

    /// `tenant`'s webhook endpoints as the cluster has them, with the record's revision.
    async fn endpoints_at(&self, tenant: &str) -> Result<(crate::webhooks::Endpoints, Option<u64>), String> {
        match self.hooks.get(tenant).await? {
            Some((b, rev)) => Ok((serde_json::from_slice(&b).map_err(|e| format!("the webhook endpoints do not decode: {e}"))?, Some(rev))),
            None => Ok((Default::default(), None)),
        }
    }

    /// `tenant`'s webhook endpoints as the cluster has them.
    pub async fn endpoints(&self, tenant: &str) -> Result<crate::webhooks::Endpoints, String> {
        Ok(self.endpoints_at(tenant).await?.0)
    }

    /// Changes `tenant`'s webhook endpoints by `f`, against the newest record until the
    /// compare-and-set takes (another node may change them at the same moment); what `f`
    /// said. `f` refusing (`Err`) changes nothing.
    pub async fn change_endpoints<R, E>(&self, tenant: &str, mut f: impl FnMut(&mut crate::webhooks::Endpoints) -> Result<R, E>) -> Result<Result<R, E>, String> {
        for _ in 0..100 {
            let (mut e, rev) = self.endpoints_at(tenant).await?;
            let r = match f(&mut e) {
                Ok(r) => r,
                Err(refused) => return Ok(Err(refused)),
            };
            if self.hooks.put(tenant, bytes::Bytes::from(serde_json::to_vec(&e).expect("endpoints encode")), rev).await? {
                return Ok(Ok(r));
            }
        }
        Err("the webhook endpoints kept changing under this node; try again".into())
    }

    /// Asks every node `ask` about endpoint `hook` of `tenant` and merges their answers, once
    /// they cover every partition; an error when some partition found no node serving it in
    /// time.
    pub async fn ask_hooks(&self, tenant: &str, hook: u64, ask: crate::webhooks::Ask) -> Result<crate::webhooks::Told, String> {
        let q = HookQuestion { tenant: tenant.into(), hook, ask: ask.clone() };
        let got: Vec<HookAnswer> = self.gather_all(HOOKS, &q, GATHER_FOR, |a: &HookAnswer| &a.partitions).await?;
        Ok(crate::webhooks::Told::merge(&ask, got.into_iter().map(|a| a.told).collect()))
    }

    /// Answers other nodes' questions about webhook deliveries, for the users of the
    /// partitions this node serves, until the task is aborted.
    async fn answer_hooks(&self, webhooks: Arc<crate::webhooks::Webhooks>) -> Result<tokio::task::JoinHandle<()>, RouteError> {
        let log = self.log.clone();
        let answer = Arc::new(move |body: bytes::Bytes| -> futures_util::future::BoxFuture<'static, bytes::Bytes> {
            let (webhooks, log) = (webhooks.clone(), log.clone());
            Box::pin(async move {
                let none = HookAnswer { partitions: vec![], told: Default::default() };
                let reply = match serde_json::from_slice::<HookQuestion>(&body) {
                    // An endpoint this node has not heard of yet (its watch is a moment
                    // behind): answered for no partition, so the asker waits for it.
                    Ok(q) if !webhooks.in_force(&q.tenant, q.hook) => none,
                    Ok(q) => {
                        // Named before the rows are read: a partition gained meanwhile is not
                        // claimed, and one lost meanwhile is claimed with its rows as they were.
                        let partitions: Vec<u16> = (0..PARTITIONS).filter(|p| log.serves(*p)).collect();
                        match webhooks.answer(&q.tenant, q.hook, &q.ask).await {
                            Ok(told) => HookAnswer { partitions, told },
                            // Unreadable here: answered for no partition, so the asker sees
                            // them uncovered instead of a partial answer.
                            Err(e) => {
                                tracing::warn!(error = %e, "answering a question about webhook deliveries failed");
                                none
                            }
                        }
                    }
                    Err(_) => none,
                };
                // Cut to fit one NATS message, with room for the rest of the answer.
                let HookAnswer { partitions, told } = reply;
                let told: serde_json::Value = serde_json::from_slice(&told.fitted(ANSWER_BYTES)).expect("an answer decodes");
                bytes::Bytes::from(serde_json::to_vec(&serde_json::json!({ "partitions": partitions, "told": told })).expect("an answer encodes"))
            })
        });
        self.routes.answer_all(HOOKS, answer).await
    }

    /// Waits (up to `GATHER_FOR` a few times) until every partition's node has endpoint `hook`
    /// of `tenant` in force, so that an endpoint registered through one node gets the
    /// notifications of the events sent right after, through any node. Whether they all had.
    pub async fn endpoint_in_force(&self, tenant: &str, hook: u64) -> bool {
        let deadline = tokio::time::Instant::now() + 3 * GATHER_FOR;
        while tokio::time::Instant::now() < deadline {
            if self.ask_hooks(tenant, hook, crate::webhooks::Ask::Count).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Keeps this node's webhook endpoints as the cluster's bucket has them, until `stop`.
    async fn follow_endpoints(self: Arc<Self>, webhooks: Arc<crate::webhooks::Webhooks>, mut stop: watch::Receiver<bool>) {
        let mut changes = self.hooks.follow();
        loop {
            tokio::select! {
                next = changes.recv() => match next {
                    Some((tenant, value)) => {
                        let now: crate::webhooks::Endpoints = if value.is_empty() { Default::default() } else {
                            match serde_json::from_slice(&value) {
                                Ok(e) => e,
                                Err(e) => {
                                    tracing::error!(tenant, error = %e, "a tenant's webhook endpoints do not decode; they are left as they were");
                                    continue;
                                }
                            }
                        };
                        webhooks.follow(&tenant, &now).await;
                    }
                    None => return,
                },
                _ = stop.changed() => return,
            }
        }
    }

    /// Appends writes about `user`'s records through her partition's changelog, as her actor's
    /// own do, and waits until they are durable (the goal sweeper's `notified` mark).
    pub async fn write_for(&self, tenant: &str, user: &str, writes: Vec<Write>) -> Result<(), String> {
        use crate::store::EventLog;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.log.append(tenant, user, writes, Box::new(move |r| drop(tx.send(r)))).map_err(|e| e.to_string())?;
        rx.await.map_err(|_| "the changelog writer stopped".to_string())?
    }

    /// Relays an HTTP request about `user` to the node that serves her.
    pub async fn relay(&self, tenant: &str, user: &str, req: axum::http::Request<bytes::Bytes>) -> Result<axum::http::Response<bytes::Bytes>, RouteError> {
        crate::remote::relay(&self.routes, partition_of(tenant, user), req).await
    }

    /// Asks every node `q` about leaderboard standings and merges their answers, once they
    /// cover every partition; an error when some partition found no node serving it in time.
    pub async fn gather(&self, q: &Question) -> Result<Reply, String> {
        let body = bytes::Bytes::from(bincode::serde::encode_to_vec(q, bincode::config::standard()).expect("a question encodes"));
        let decode = |b: &bytes::Bytes| bincode::serde::decode_from_slice::<Answer, _>(b, bincode::config::standard()).ok().map(|(a, _)| a);
        let covered = |got: &[bytes::Bytes]| {
            let mut seen = [false; PARTITIONS as usize];
            got.iter().filter_map(decode).flat_map(|a| a.partitions).for_each(|p| seen[usize::from(p) % seen.len()] = true);
            seen.iter().all(|s| *s)
        };
        let got = self.routes.gather(STANDINGS, body, GATHER_FOR, covered).await.map_err(|e| e.to_string())?;
        let answers: Vec<Answer> = got.iter().filter_map(decode).collect();
        crate::standings::merge(q, answers, PARTITIONS, &partition_of).map_err(|e| e.to_string())
    }

    /// Answers other nodes' questions about standings from `boards`, for the partitions this
    /// node serves, until the task is aborted.
    async fn answer_standings(&self, boards: Arc<Boards>) -> Result<tokio::task::JoinHandle<()>, RouteError> {
        let log = self.log.clone();
        let answer = Arc::new(move |body: bytes::Bytes| -> futures_util::future::BoxFuture<'static, bytes::Bytes> {
            let (boards, log) = (boards.clone(), log.clone());
            Box::pin(async move {
                let reply = match bincode::serde::decode_from_slice::<Question, _>(&body, bincode::config::standard()) {
                    Ok((q, _)) => {
                        // One look at what is served, for the partitions named and the users
                        // counted alike.
                        let served: Vec<bool> = (0..PARTITIONS).map(|p| log.serves(p)).collect();
                        let partitions = (0..PARTITIONS).filter(|p| served[usize::from(*p)]).collect();
                        Answer { partitions, reply: crate::standings::answer(&boards, &q, &|t, u| served[usize::from(partition_of(t, u))]) }
                    }
                    // A question this version does not know: answered for no partition, so
                    // the asker sees them uncovered instead of a wrong ranking.
                    Err(_) => Answer { partitions: vec![], reply: Reply::Forgotten },
                };
                bytes::Bytes::from(bincode::serde::encode_to_vec(&reply, bincode::config::standard()).expect("an answer encodes"))
            })
        });
        self.routes.answer_all(STANDINGS, answer).await
    }

    /// Gives this node's router, which answers relayed requests.
    pub fn set_router(&self, router: axum::Router) {
        let _ = self.router.set(router);
    }

    /// Serves the partitions this node owns, until `stop`.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(self: Arc<Self>, store: Store, users: Users, boards: Arc<Boards>, catalogues: Arc<crate::catalogues::Catalogues>, webhooks: Arc<crate::webhooks::Webhooks>, metrics: Arc<crate::metrics::Metrics>, mut stop: watch::Receiver<bool>) {
        let Some(mut owned) = self.node.lock().await.as_ref().map(Node::owned) else { return };
        // Listening for questions about standings is tried again each round until it works.
        struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                if let Some(t) = self.0.take() {
                    t.abort();
                }
            }
        }
        let mut served: BTreeMap<u16, Fence> = BTreeMap::new();
        let answering = Arc::new(Answering { users: users.clone(), log: self.log.clone(), routes: self.routes.clone(), remotes: self.remotes.clone(), metrics: metrics.clone(), outbox: self.outbox, router: self.router.clone() });
        let mut listening = AbortOnDrop(None);
        let mut listening_goals = AbortOnDrop(None);
        let mut listening_previews = AbortOnDrop(None);
        let mut listening_hooks = AbortOnDrop(None);
        let _compactor = AbortOnDrop(Some(tokio::spawn(self.clone().compact_for_ever(metrics.clone()))));
        let _endpoints = AbortOnDrop(Some(tokio::spawn(self.clone().follow_endpoints(webhooks.clone(), stop.clone()))));
        loop {
            if listening.0.is_none() {
                match self.answer_standings(boards.clone()).await {
                    Ok(t) => listening.0 = Some(t),
                    Err(e) => tracing::warn!(error = %e, "answering questions about standings failed; trying again"),
                }
            }
            if listening_goals.0.is_none() {
                match self.answer_goals(store.clone()).await {
                    Ok(t) => listening_goals.0 = Some(t),
                    Err(e) => tracing::warn!(error = %e, "answering questions about goals failed; trying again"),
                }
            }
            if listening_previews.0.is_none() {
                match self.answer_previews(store.clone(), catalogues.clone()).await {
                    Ok(t) => listening_previews.0 = Some(t),
                    Err(e) => tracing::warn!(error = %e, "answering catalogue previews failed; trying again"),
                }
            }
            if listening_hooks.0.is_none() {
                match self.answer_hooks(webhooks.clone()).await {
                    Ok(t) => listening_hooks.0 = Some(t),
                    Err(e) => tracing::warn!(error = %e, "answering questions about webhook deliveries failed; trying again"),
                }
            }
            let now: Owned = owned.borrow_and_update().clone();
            // Lost, or fenced anew, or its writer stopped: let go of it first.
            let gone: Vec<u16> = served.iter().filter(|(p, f)| now.get(p) != Some(f) || !self.log.serves(**p)).map(|(&p, _)| p).collect();
            for p in gone {
                self.routes.unserve(p);
                self.log.unserve(p);
                served.remove(&p);
                users.drop_where(|t, u| partition_of(t, u) == p).await;
                // Its users' standings are another node's to give from now on. Taken out once
                // their actors have ended: a write of theirs still finishing would otherwise
                // put a user back in the ranking.
                boards.remove_where(|t, u| partition_of(t, u) == p);
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
                    let (store, me, boards) = (&store, &*self, &boards);
                    async move {
                        // The writer of a partition whose last one stopped needs a fence of its
                        // own: a fresh claim, which also fences off anything the old writer
                        // still sends.
                        let fence = match me.partitions.claim(p, &me.id, lease).await {
                            Ok(f) => f,
                            Err(e) => return (p, Err(format!("claiming failed: {e}"))),
                        };
                        // The partition's leaderboard records, to rank its users here once
                        // it is served.
                        let mut board_keys: std::collections::BTreeSet<Vec<u8>> = Default::default();
                        let mut seen = |writes: &[Write]| {
                            for w in writes {
                                if let Write::Put(TreeId::Boards, k, _) | Write::Del(TreeId::Boards, k) = w {
                                    board_keys.insert(k.clone());
                                }
                            }
                        };
                        // From this node's checkpoint when its sled holds the partition's
                        // changelog up to a point still in the changelog: only what came since
                        // is read. Otherwise from the start, over whatever the sled holds.
                        let checkpoint = match store.checkpoint(p) {
                            Ok(c) => c,
                            Err(e) => return (p, Err(format!("reading its checkpoint failed: {e}"))),
                        };
                        let start = match start_for(&me.partitions, p, checkpoint).await {
                            Ok(s) => s,
                            Err(e) => return (p, Err(format!("reading its changelog's base failed: {e}"))),
                        };
                        let after = match start {
                            Start::Checkpoint(c) => c,
                            Start::Scratch => {
                                // The webhook rows this node still holds from an earlier time it
                                // served the partition go first: the changelog has them as they
                                // are now (some delivered and removed meanwhile by another node,
                                // which a base would not say), and the rebuild writes them back.
                                let stale = store.hook_rows_where(|t, body| partition_of(t, &crate::webhooks::user_of_body(body)) == p);
                                match stale {
                                    Ok(w) if w.is_empty() => {}
                                    Ok(w) => {
                                        if let Err(e) = store.write(w).await {
                                            return (p, Err(format!("clearing its old webhook rows failed: {e}")));
                                        }
                                    }
                                    Err(e) => return (p, Err(format!("reading its old webhook rows failed: {e}"))),
                                }
                                0
                            }
                        };
                        let rebuilt = match rebuild(store, &me.partitions, p, after, &mut seen).await {
                            Ok(r) => r,
                            Err(e) => return (p, Err(format!("rebuilding failed: {e}"))),
                        };
                        // Its users ranked here: from a checkpoint every record of the
                        // partition in the sled (most were not replayed), else those replayed.
                        let entries = match start {
                            Start::Checkpoint(_) => store.board_entries_where(|t, u| partition_of(t, u) == p),
                            Start::Scratch => store.board_entries_at(board_keys.iter().map(Vec::as_slice)),
                        };
                        match entries {
                            Ok(entries) => {
                                boards.load_entries(entries);
                                (p, Ok((fence, rebuilt, start)))
                            }
                            Err(e) => (p, Err(format!("reading its leaderboard records failed: {e}"))),
                        }
                    }
                })
                .buffer_unordered(REBUILDS_AT_ONCE);
            // Each is served as soon as it is rebuilt.
            let mut newly = Vec::new();
            while let Some((p, r)) = ready.next().await {
                match r {
                    Ok((fence, rebuilt, start)) => {
                        let last = rebuilt.last;
                        // The sled holds the changelog up to where the rebuild got, and each
                        // batch this node stores from now on moves that on.
                        store.checkpoint_after_pending(p, last);
                        let on_stored = {
                            let store = store.clone();
                            Box::new(move |seq| store.checkpoint_after_pending(p, seq))
                        };
                        // From a checkpoint, the batches since the last base are not all counted
                        // (those before the checkpoint were not read): the compaction comes
                        // later than `--cluster-compact-batches` says, by at most that many.
                        self.log.serve(p, Writer::start_after(self.partitions.clone(), fence, rebuilt.batches, on_stored));
                        let _ = match start {
                            Start::Checkpoint(_) => metrics.rebuilt_from_checkpoint.inc(),
                            Start::Scratch => metrics.rebuilt_from_start.inc(),
                        };
                        metrics.rebuild_batches.inc_by(rebuilt.read);
                        if let Err(e) = self.routes.serve(p, crate::remote::answering(answering.clone(), p)).await {
                            tracing::warn!(partition = p, error = %e, "answering for a partition failed; its users are served from here only");
                        }
                        served.insert(p, now[&p].clone());
                        newly.push(p);
                        metrics.partitions_served.set(served.len() as i64);
                        tracing::info!(partition = p, changelog = last, read = rebuilt.read, from_checkpoint = matches!(start, Start::Checkpoint(_)), "partition rebuilt and served");
                    }
                    Err(e) => tracing::warn!(partition = p, error = %e, "a partition gained is not served yet; trying again"),
                }
            }
            drop(ready);
            if !newly.is_empty() {
                tokio::spawn(self.clone().sweep_deleted_hooks(store.clone(), webhooks.clone(), newly));
            }
            metrics.partitions_served.set(served.len() as i64);
            metrics.remote_sockets.set(self.remotes.len() as i64);
            self.remotes.expire(&users, tokio::time::Instant::now());
            tokio::select! {
                changed = owned.changed() => if changed.is_err() { return },
                // A writer that stopped is noticed on the next round.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Removes the webhook rows of the partitions just gained whose endpoint was deleted while
    /// they were between nodes: the nodes then serving nothing of them removed nothing, and the
    /// rebuild brought the rows back. The rows are read before the records, so an endpoint
    /// missing from a record read after its rows was deleted (ids are never given again).
    async fn sweep_deleted_hooks(self: Arc<Self>, store: Store, webhooks: Arc<crate::webhooks::Webhooks>, gained: Vec<u16>) {
        let rows = store.hook_rows(|tenant, hook, body| {
            let user = crate::webhooks::user_of_body(body);
            gained.contains(&partition_of(tenant, &user)).then(|| (tenant.to_string(), hook, user))
        });
        let rows = match rows {
            Ok(rows) if rows.is_empty() => return,
            Ok(rows) => rows,
            Err(e) => return tracing::warn!(error = %e, "reading the webhook rows of partitions gained failed"),
        };
        let tenants: std::collections::BTreeSet<String> = rows.iter().map(|((t, _, _), _)| t.clone()).collect();
        let mut endpoints = std::collections::BTreeMap::new();
        for t in tenants {
            match self.endpoints(&t).await {
                Ok(e) => drop(endpoints.insert(t, e)),
                Err(e) => tracing::warn!(tenant = t, error = %e, "reading the webhook endpoints failed; rows of deleted ones stay until the next gain"),
            }
        }
        match webhooks.remove_rows(crate::webhooks::rows_of_deleted(rows, &endpoints)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "webhook rows of endpoints deleted while their partition moved removed"),
            Err(e) => tracing::warn!(error = %e, "removing the webhook rows of deleted endpoints failed"),
        }
    }

    /// Compacts the changelog of each partition this node serves once it has gathered
    /// `--cluster-compact-batches` batches since its last base, one partition at a time (a
    /// compaction reads the partition's records once, as a rebuild does).
    async fn compact_for_ever(self: Arc<Self>, metrics: Arc<crate::metrics::Metrics>) {
        if self.compact_batches == 0 {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (p, writer) in self.log.writers() {
                if writer.since_base() < self.compact_batches || writer.stopped().is_some() {
                    continue;
                }
                // Still this node's, with this writer (the list was taken before the ones
                // before it were compacted, and a partition may have gone meanwhile).
                if !self.log.writers().iter().any(|(q, w)| *q == p && Arc::ptr_eq(w, &writer)) || !self.log.serves(p) {
                    continue;
                }
                let cutoff = (self.retention_hours > 0).then(|| crate::clock::now_ms() - (self.retention_hours * 3_600_000) as Millis);
                let started = std::time::Instant::now();
                match crate::cluster::changelog::compact(&self.partitions, &writer, p, &self.id, cutoff).await {
                    Ok(Some(c)) => {
                        metrics.compactions.inc();
                        tracing::info!(partition = p, batches = c.batches, records = c.records, pieces = c.pieces, removed = c.removed, ms = started.elapsed().as_millis() as u64, "changelog compacted");
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(partition = p, error = %e, "compacting a changelog failed; it is tried again later"),
                }
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
