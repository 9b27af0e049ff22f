//! Outbound notifications (webhooks): each tenant's endpoints, the outbox rows a user's actor
//! adds to its event's batch, and one delivery worker per endpoint that POSTs them signed,
//! retrying with exponential backoff and jitter. The only module that makes outbound HTTP
//! requests.
//!
//! Delivery is at least once: a notification is durable (in the `outbox` tree) before the push
//! that announced it is released, and it leaves the outbox only once the endpoint answered 2xx
//! or its attempts ran out, in one write with its log record. A crash in between sends it
//! again, with the same `id`. Each endpoint has its own worker, so a dead one holds up only
//! itself; the actors never wait on an endpoint, only on the disk.
//!
//! Order (docs/webhooks.md): an endpoint gets one user's notifications in the order they were
//! made. Across users it gets them in order too, except that a notification which has failed
//! `--webhook-hold-attempts` times is set aside: it is retried on its own backoff, out of the
//! line, and the line moves on; the same user's later notifications wait behind it. Whether a
//! row is set aside is its attempt count, so setting aside is part of the attempt's one write,
//! and the stored format did not change.
//!
//! The decisions are pure and apart: how a line moves (`line.rs`) and what is answered about
//! an endpoint's deliveries, and how several nodes' answers merge (`answers.rs`).

use crate::core::Millis;
use crate::plan::Push;
use crate::protocol::rfc3339;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{self, EventLog, Kind, Store, Write};
use crate::clock::now_ms;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

mod answers;
mod line;
pub use answers::*;
pub use line::*;

/// The notifications an endpoint can subscribe to (named as the pushes that announce them).
pub const KINDS: [&str; 6] = ["unlock", "level_up", "goal_completed", "goal_missed", "team_unlock", "revoked"];
/// Endpoints per tenant.
pub const MAX_HOOKS: usize = 16;
/// The header carrying the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "accolade-signature";
/// How deep a worker reads its outbox looking for the head of its line, past set-aside rows
/// and the rows of their users waiting behind them. Rows deeper than this wait until some of
/// those ahead leave.
pub const SCAN_DEPTH: usize = 10_000;

/// An endpoint, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hook {
    pub url: String,
    /// Which of `KINDS` it receives.
    pub events: Vec<String>,
    /// The HMAC key, as given to the tenant at creation.
    pub secret: String,
    pub description: String,
    pub created_at: Millis,
}

/// A tenant's endpoints as the cluster keeps them (cluster mode: one record per tenant in a
/// key-value bucket, changed by compare-and-set, so that two nodes cannot both take the last
/// of `MAX_HOOKS`, nor give one id twice). Ids are never given again: `next` is the last one
/// given, and one up to it that is not in `hooks` was deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    pub next: u64,
    pub hooks: BTreeMap<u64, Hook>,
}

impl Endpoints {
    /// Whether endpoint `id` was given and then deleted: ids are given from 1 up to `next`,
    /// the last one given, and never again.
    pub fn deleted(&self, id: u64) -> bool {
        (1..=self.next).contains(&id) && !self.hooks.contains_key(&id)
    }
}

/// One outbox or delivery-log row as a sweep sees it: its tenant, endpoint and user.
pub type RowOf = (String, u64, String);

/// Of the rows of users a node has just taken over, those of endpoints the cluster's records
/// (`endpoints`, by tenant, read after the rows) say were deleted, grouped by user: an endpoint
/// deleted while their partition was between nodes, when no node served them to remove them.
/// A tenant whose record could not be read keeps its rows.
pub fn rows_of_deleted(rows: Vec<(RowOf, Write)>, endpoints: &BTreeMap<String, Endpoints>) -> BTreeMap<(String, String), Vec<Write>> {
    let mut out: BTreeMap<(String, String), Vec<Write>> = BTreeMap::new();
    for ((tenant, hook, user), w) in rows {
        if endpoints.get(&tenant).is_some_and(|e| e.deleted(hook)) {
            out.entry((tenant, user)).or_default().push(w);
        }
    }
    out
}

/// One attempt to deliver, as the log shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: Millis,
    /// The endpoint's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Why the attempt failed, when it did.
    pub error: Option<String>,
    pub millis: u64,
}

/// A notification in an endpoint's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub kind: String,
    /// The JSON body, exactly as it is signed and sent.
    pub body: String,
    pub created_at: Millis,
    pub attempts: u32,
    /// Not before this time (a retry's backoff).
    pub next_at: Millis,
    pub last: Option<Attempt>,
}

/// A delivery that ended: delivered, or given up after its last attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    pub kind: String,
    pub body: String,
    pub created_at: Millis,
    pub attempts: u32,
    pub delivered: bool,
    pub finished_at: Millis,
    pub last: Attempt,
}

/// What the actors need to know about an endpoint to fill its outbox.
#[derive(Clone)]
struct Sub {
    id: u64,
    events: Vec<String>,
    wake: Arc<Notify>,
}

struct Worker {
    /// Signals from the API (a retry, a redrive), which the worker looks at even while it
    /// waits out a backoff; the actors' signals (`Sub::wake`) matter only to an idle worker or
    /// one with no head in its line, since new notifications go behind the head.
    poke: Arc<Notify>,
    /// Set-aside notifications to put back at the head of the line, taken by the worker (the
    /// only writer of its outbox's rows) at its next turn.
    redrive: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

/// A notification's body, as signed and sent: the push (`data`, the frame exactly as the user's
/// sockets get it) with its id, kind, time, tenant and user. Written out directly, keys in the
/// order `serde_json` writes an object, since the frame is already JSON.
fn notification(id: u64, kind: &str, now: Millis, tenant: &str, user: &str, frame: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    format!(r#"{{"created_at":{},"data":{frame},"id":{id},"tenant":{},"type":{},"user_id":{}}}"#, q(&rfc3339(now)), q(tenant), q(kind), q(user))
}

/// A team's notification: as a user's, naming the team (`team_id`) instead of a user.
fn team_notification(id: u64, kind: &str, now: Millis, tenant: &str, team: &str, frame: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    format!(r#"{{"created_at":{},"data":{frame},"id":{id},"team_id":{},"tenant":{},"type":{}}}"#, q(&rfc3339(now)), q(team), q(tenant), q(kind))
}

/// What a delivery worker works with.
#[derive(Clone)]
struct Io {
    store: Store,
    /// Where a delivery's outcome is written: the log of the notification's user, so that in
    /// cluster mode it goes through her partition's changelog and moves with the partition.
    /// Its `serves` says which rows are this node's to deliver.
    log: Arc<dyn EventLog>,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
}

/// The endpoints of every tenant, in memory, and their workers.
pub struct Webhooks {
    subs: DashMap<String, Arc<Vec<Sub>>>,
    workers: DashMap<(String, u64), Worker>,
    io: Io,
    /// The workers stop when this turns true.
    stop: watch::Receiver<bool>,
    /// Held by the API while it changes endpoints, one change at a time.
    pub(crate) changes: tokio::sync::Mutex<()>,
}

impl Webhooks {
    /// The HTTP client for deliveries (`--webhook-timeout-ms`, `--webhook-ca-file`); no endpoint
    /// is in force until `start`.
    pub fn new(store: Store, log: Arc<dyn EventLog>, metrics: Arc<Metrics>, config: Arc<Config>, stop: watch::Receiver<bool>) -> anyhow::Result<Webhooks> {
        let timeout = Duration::from_millis(config.webhook_timeout_ms.max(1));
        let ca_file = config.webhook_ca_file.as_deref();
        // rustls on ring (see Cargo.toml). Installing it fails harmlessly when it is already
        // the process's provider (a second server in the same test process).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading --webhook-ca-file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| anyhow::anyhow!("--webhook-ca-file {}: {e}", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("--webhook-ca-file {} holds no PEM certificate", path.display());
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect is an answer the tenant should fix, not one to follow with a signed body.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Accolade-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Webhooks { subs: DashMap::new(), workers: DashMap::new(), io: Io { store, log, client, metrics, config }, stop, changes: tokio::sync::Mutex::new(()) })
    }

    /// Whether the tenant has any endpoint (the actors' fast path: one map lookup).
    pub fn any(&self, tenant: &str) -> bool {
        self.subs.get(tenant).is_some_and(|s| !s.is_empty())
    }

    /// The outbox rows for the notifications among `pushes` (those of one batch), one per
    /// subscribed endpoint, and the workers to wake once they are durable. Every endpoint gets
    /// the same `id` for the same notification. The plan says each push's kind, so nothing is
    /// parsed here: the frame goes into the body as it is. An error when no id can be had:
    /// the batch must then fail, rather than go out without its notifications.
    pub fn outbox_writes<'a>(&self, tenant: &str, user: &str, pushes: impl Iterator<Item = &'a Push>) -> Result<(Vec<Write>, Vec<Arc<Notify>>), String> {
        let Some(subs) = self.subs.get(tenant).map(|s| s.clone()) else { return Ok((vec![], vec![])) };
        let mut writes = Vec::new();
        let mut wake: Vec<Arc<Notify>> = Vec::new();
        // A team's own unlock is one `team_unlock` notification naming the team, and a badge it
        // lost one `revoked` naming the team; the rest of a team's pushes make none, and nor do
        // its members' copies of its unlocks.
        let team = crate::core::catalogue::team_of(user);
        for push in pushes {
            let kind = match (team, push.kind) {
                (Some(_), "unlock") => "team_unlock",
                (Some(_), "revoked") => "revoked",
                (Some(_), _) | (None, "team_unlock") => continue,
                (None, k) => k,
            };
            let Some(kind) = KINDS.iter().find(|k| **k == kind) else { continue };
            let targets: Vec<&Sub> = subs.iter().filter(|s| s.events.iter().any(|e| e == kind)).collect();
            if targets.is_empty() {
                continue;
            }
            let id = self.io.log.delivery_id(tenant, user).map_err(|e| format!("no id for a webhook notification: {e}"))?;
            let now = now_ms();
            let body = match team {
                Some(t) => team_notification(id, kind, now, tenant, t, &push.frame),
                None => notification(id, kind, now, tenant, user, &push.frame),
            };
            for s in targets {
                let p = Pending { kind: kind.to_string(), body: body.clone(), created_at: now, attempts: 0, next_at: now, last: None };
                writes.push(store::writes::outbox(tenant, s.id, id, &p));
                if !wake.iter().any(|w| Arc::ptr_eq(w, &s.wake)) {
                    wake.push(s.wake.clone());
                }
            }
        }
        Ok((writes, wake))
    }

    /// One node alone: loads every endpoint stored in its sled and starts its worker. Outbox
    /// rows of endpoints that no longer exist (an actor that filled one while it was being
    /// deleted) are removed. (A cluster node learns its endpoints from the cluster: `follow`.)
    pub async fn start(&self) -> anyhow::Result<usize> {
        let store = &self.io.store;
        let hooks: Vec<(String, u64, Hook)> = store.all_of(Kind::Webhook)?;
        for (tenant, id, hook) in &hooks {
            self.add(tenant, *id, hook);
        }
        let orphans = store.outbox_orphans(|tenant, hook| self.workers.contains_key(&(tenant.to_string(), hook)))?;
        if !orphans.is_empty() {
            tracing::info!(rows = orphans.len(), "outbox rows of deleted webhook endpoints removed");
            store.write(orphans).await?;
        }
        Ok(hooks.len())
    }

    /// Puts an endpoint in force: the actors start filling its outbox, and its worker runs.
    pub fn add(&self, tenant: &str, id: u64, hook: &Hook) {
        let wake = Arc::new(Notify::new());
        let poke = Arc::new(Notify::new());
        let redrive = Arc::new(Mutex::new(Vec::new()));
        let signals = Signals { wake: wake.clone(), poke: poke.clone(), redrive: redrive.clone() };
        let task = tokio::spawn(worker(self.io.clone(), tenant.to_string(), id, hook.clone(), signals, self.stop.clone()));
        self.workers.insert((tenant.to_string(), id), Worker { poke, redrive, task });
        let mut subs: Vec<Sub> = self.subs.get(tenant).map(|s| s.to_vec()).unwrap_or_default();
        subs.push(Sub { id, events: hook.events.clone(), wake });
        self.subs.insert(tenant.to_string(), Arc::new(subs));
    }

    /// Takes an endpoint out of force and waits until its worker has stopped, so that nothing
    /// writes to its outbox after this returns (but an actor that had already looked).
    pub async fn remove(&self, tenant: &str, id: u64) {
        if let Some(mut s) = self.subs.get_mut(tenant) {
            *s = Arc::new(s.iter().filter(|s| s.id != id).cloned().collect());
        }
        if let Some((_, w)) = self.workers.remove(&(tenant.to_string(), id)) {
            w.task.abort();
            let _ = w.task.await;
        }
    }

    /// Stops every worker (shutdown). A delivery in flight is abandoned: it is still in the
    /// outbox, and goes out again after the restart.
    pub async fn stop_all(&self) {
        let keys: Vec<(String, u64)> = self.workers.iter().map(|w| w.key().clone()).collect();
        for k in keys {
            if let Some((_, w)) = self.workers.remove(&k) {
                w.task.abort();
                let _ = w.task.await;
            }
        }
    }

    /// Cluster mode: puts `tenant`'s endpoints, as the cluster has them now, in force on this
    /// node: the new ones start, and the deleted ones stop, their rows about the users this
    /// node serves removed.
    pub async fn follow(&self, tenant: &str, now: &Endpoints) {
        let have: Vec<u64> = self.workers.iter().filter(|w| w.key().0 == tenant).map(|w| w.key().1).collect();
        for id in have.iter().filter(|id| !now.hooks.contains_key(id)) {
            self.remove(tenant, *id).await;
            match self.forget(tenant, *id).await {
                Ok(()) => tracing::info!(tenant, webhook = id, "webhook endpoint deleted"),
                Err(e) => tracing::warn!(tenant, webhook = id, error = %e, "removing a deleted webhook endpoint's rows failed"),
            }
        }
        for (id, hook) in now.hooks.iter().filter(|(id, _)| !have.contains(id)) {
            self.add(tenant, *id, hook);
            tracing::info!(tenant, webhook = id, url = %hook.url, "webhook endpoint in force");
        }
    }

    /// Removes the outbox and log rows of endpoint `hook` about the users this node serves,
    /// through each user's log (in cluster mode, her partition's changelog, so the rows do not
    /// come back with the partition on another node).
    async fn forget(&self, tenant: &str, hook: u64) -> Result<(), String> {
        let io = &self.io;
        let mut by_user: BTreeMap<String, Vec<Write>> = BTreeMap::new();
        let mut keep = |user: String, w: Write| {
            if io.log.serves(tenant, &user) {
                by_user.entry(user).or_default().push(w);
            }
        };
        let mut rows: Vec<(u64, String)> = Vec::new();
        io.store.outbox_scan::<Pending>(tenant, hook, usize::MAX, |id, p| {
            rows.push((id, user_of(&p)));
            true
        }).map_err(|e| e.to_string())?;
        for (id, user) in rows.drain(..) {
            keep(user, store::writes::outbox_delete(tenant, hook, id));
        }
        io.store.hook_log_scan::<Finished>(tenant, hook, None, |id, f| {
            rows.push((id, user_of_body(&f.body)));
            true
        }).map_err(|e| e.to_string())?;
        for (id, user) in rows {
            keep(user, store::writes::hook_log_delete(tenant, hook, id));
        }
        for (user, writes) in by_user {
            record(&*io.log, tenant, &user, writes).await?;
        }
        Ok(())
    }

    /// Removes rows (`rows_of_deleted`) through each user's log, so that they do not come
    /// back with her partition elsewhere; answers how many.
    pub async fn remove_rows(&self, by_user: BTreeMap<(String, String), Vec<Write>>) -> Result<usize, String> {
        let mut removed = 0;
        for ((tenant, user), writes) in by_user {
            removed += writes.len();
            record(&*self.io.log, &tenant, &user, writes).await?;
        }
        Ok(removed)
    }

    /// This node's answer to `ask` about endpoint `hook` of `tenant`, from the notifications
    /// of the users it serves (all of them, for one node alone). A cluster asks every node and
    /// merges their answers (`Told::merge`).
    pub async fn answer(&self, tenant: &str, hook: u64, ask: &Ask) -> Result<Told, String> {
        let io = &self.io;
        let policy = Policy::of(&io.config);
        let mine = |body: &str| io.log.serves(tenant, &user_of_body(body));
        let mut told = Told::default();
        let e = |e: store::StoreError| e.to_string();
        match ask {
            Ask::Count => io.store.outbox_scan::<Pending>(tenant, hook, COUNT_CAP, |_, p| {
                told.count += usize::from(mine(&p.body));
                true
            }).map_err(e)?,
            Ask::Deliveries { before, limit } => {
                io.store.outbox_scan::<Pending>(tenant, hook, usize::MAX, |id, p| {
                    if mine(&p.body) {
                        told.pending.push((id, p));
                    }
                    told.pending.len() < *limit
                }).map_err(e)?;
                io.store.hook_log_scan::<Finished>(tenant, hook, *before, |id, f| {
                    if mine(&f.body) {
                        told.finished.push((id, f));
                    }
                    told.finished.len() < *limit
                }).map_err(e)?;
            }
            Ask::SetAside { limit } => io.store.outbox_scan::<Pending>(tenant, hook, SCAN_DEPTH, |id, p| {
                if mine(&p.body) && policy.set_aside(&p) {
                    told.pending.push((id, p));
                }
                told.pending.len() < *limit
            }).map_err(e)?,
            Ask::Retry { delivery } => told.retried = self.retry(tenant, hook, *delivery, &policy).await?,
        }
        Ok(told)
    }

    /// Sends a set-aside or given-up delivery again, if it is this node's: the delivery as it
    /// waits now, or why it cannot be retried; `None` when this node has no such delivery.
    async fn retry(&self, tenant: &str, hook: u64, delivery: u64, policy: &Policy) -> Result<Option<Result<(u64, Pending), Refusal>>, String> {
        let io = &self.io;
        let now = now_ms();
        if let Some(p) = io.store.outbox_get::<Pending>(tenant, hook, delivery).map_err(|e| e.to_string())? {
            if !io.log.serves(tenant, &user_of(&p)) {
                return Ok(None);
            }
            let Some(p) = redriven(p, now, policy) else {
                return Ok(Some(Err(Refusal::NotSetAside)));
            };
            self.redrive(tenant, hook, delivery);
            return Ok(Some(Ok((delivery, p))));
        }
        let mut found = None;
        io.store.hook_log_scan::<Finished>(tenant, hook, delivery.checked_add(1), |id, f| {
            if id == delivery {
                found = Some(f);
            }
            false
        }).map_err(|e| e.to_string())?;
        let Some(f) = found else { return Ok(None) };
        let user = user_of_body(&f.body);
        if !io.log.serves(tenant, &user) {
            return Ok(None);
        }
        if f.delivered {
            return Ok(Some(Err(Refusal::Delivered)));
        }
        // Its id is older than anything waiting, so it is the next one sent.
        let p = Pending { kind: f.kind, body: f.body, created_at: f.created_at, attempts: 0, next_at: now, last: Some(f.last) };
        record(&*io.log, tenant, &user, vec![store::writes::outbox(tenant, hook, delivery, &p), store::writes::hook_log_delete(tenant, hook, delivery)]).await?;
        self.wake(tenant, hook);
        Ok(Some(Ok((delivery, p))))
    }

    /// Whether endpoint `id` of `tenant` is in force on this node (its worker runs, and the
    /// actors fill its outbox).
    pub fn in_force(&self, tenant: &str, id: u64) -> bool {
        self.workers.contains_key(&(tenant.to_string(), id))
    }

    /// Wakes an endpoint's worker (a retry asked for through the API).
    pub fn wake(&self, tenant: &str, id: u64) {
        if let Some(w) = self.workers.get(&(tenant.to_string(), id)) {
            w.poke.notify_one();
        }
    }

    /// Asks an endpoint's worker to put a set-aside notification back at the head of its line
    /// with a fresh count of attempts, and to try it without waiting out the endpoint's backoff.
    /// The worker does it (it alone rewrites its outbox's rows, so an attempt in flight cannot
    /// overwrite the change), at its next turn; one that was delivered meanwhile stays so.
    pub fn redrive(&self, tenant: &str, id: u64, delivery: u64) {
        if let Some(w) = self.workers.get(&(tenant.to_string(), id)) {
            w.redrive.lock().unwrap_or_else(|e| e.into_inner()).push(delivery);
            w.poke.notify_one();
        }
    }
}

/// The signature header's value for `body` sent at `t` (unix seconds): HMAC-SHA256 keyed with
/// the endpoint's secret over `"<t>.<body>"`, in lowercase hex.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let sum = mac.finalize().into_bytes();
    format!("t={t},v1={}", sum.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A new endpoint secret: 32 random bytes from the OS, base64url.
pub fn new_secret() -> anyhow::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// A number in [0, 1) that differs between calls: std's per-process random hash keys over a
/// counter. Jitter needs spread, not secrecy.
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// One POST of a notification.
async fn attempt(client: &reqwest::Client, hook: &Hook, id: u64, p: &Pending) -> Attempt {
    let at = now_ms();
    let started = std::time::Instant::now();
    let result = client
        .post(&hook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("accolade-id", id.to_string())
        .header("accolade-event", &p.kind)
        .header(SIGNATURE_HEADER, signature(&hook.secret, at / 1000, &p.body))
        .body(p.body.clone())
        .send()
        .await;
    let millis = started.elapsed().as_millis() as u64;
    match result {
        Ok(r) if r.status().is_success() => Attempt { at, status: Some(r.status().as_u16()), error: None, millis },
        Ok(r) => Attempt { at, status: Some(r.status().as_u16()), error: Some(format!("the endpoint answered {}", r.status())), millis },
        Err(e) => {
            // reqwest's top-level message is generic ("error sending request"); the cause says
            // what happened (refused, timed out, certificate).
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            Attempt { at, status: None, error: Some(why), millis }
        }
    }
}

/// Writes `writes` about a notification of `user` through her log, and waits until they are
/// durable (in cluster mode: in her partition's changelog, then the local sled).
async fn record(log: &dyn EventLog, tenant: &str, user: &str, writes: Vec<Write>) -> Result<(), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    log.append(tenant, user, writes, Box::new(move |r| drop(tx.send(r)))).map_err(|e| e.to_string())?;
    rx.await.map_err(|_| "the log stopped before the write was durable".to_string())?
}

/// Forgets an endpoint's finished deliveries but the newest `keep` of the users this node
/// serves.
async fn trim(io: &Io, tenant: &str, hook: u64, keep: usize) -> Result<(), String> {
    let mut kept = 0usize;
    let mut by_user: BTreeMap<String, Vec<Write>> = BTreeMap::new();
    io.store.hook_log_scan::<Finished>(tenant, hook, None, |id, f| {
        let user = user_of_body(&f.body);
        if io.log.serves(tenant, &user) {
            kept += 1;
            if kept > keep {
                by_user.entry(user).or_default().push(store::writes::hook_log_delete(tenant, hook, id));
            }
        }
        true
    }).map_err(|e| e.to_string())?;
    for (user, writes) in by_user {
        record(&*io.log, tenant, &user, writes).await?;
    }
    Ok(())
}

/// Reads the window of an endpoint's outbox: oldest first, up to the head of its line.
fn window(io: &Io, tenant: &str, id: u64, policy: &Policy) -> Window {
    let mut w = Window::default();
    let read = io.store.outbox_scan::<Pending>(tenant, id, SCAN_DEPTH, |nid, p| {
        let user = user_of(&p);
        // A cluster node delivers the notifications of the users it serves; the sled may
        // still hold rows of partitions it served before, which another node delivers now.
        if !io.log.serves(tenant, &user) {
            return true;
        }
        w.push(nid, user, p, policy)
    });
    if let Err(e) = read {
        tracing::error!(tenant, hook = id, error = %e, "reading a webhook outbox failed");
        return Window::default();
    }
    w
}

/// What wakes a worker: the actors (`wake`), the API (`poke`), and the redrives it asked for.
struct Signals {
    wake: Arc<Notify>,
    poke: Arc<Notify>,
    redrive: Arc<Mutex<Vec<u64>>>,
}

/// Delivers an endpoint's outbox, until shutdown or until the endpoint is removed: the head of
/// the line, and set-aside notifications when their own backoff has run, one attempt at a time.
/// A failure backs off the whole endpoint, so one that is down is tried once per backoff
/// whatever its outbox holds.
async fn worker(io: Io, tenant: String, id: u64, hook: Hook, signals: Signals, mut stop: watch::Receiver<bool>) {
    let Signals { wake, poke, redrive } = signals;
    let policy = Policy::of(&io.config);
    let m = &io.metrics;
    let mut e = Backoff::default();
    let mut since_trim = 0usize;
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let asked: Vec<u64> = std::mem::take(&mut *redrive.lock().unwrap_or_else(|e| e.into_inner()));
        for nid in asked {
            let now = now_ms();
            let Ok(Some(p)) = io.store.outbox_get::<Pending>(&tenant, id, nid) else { continue };
            if let Some(p) = redriven(p, now, &policy) {
                if let Err(err) = record(&*io.log, &tenant, &user_of(&p), vec![store::writes::outbox(&tenant, id, nid, &p)]).await {
                    tracing::error!(tenant, hook = id, delivery = nid, error = %err, "redriving a webhook delivery failed");
                    continue;
                }
                tracing::info!(tenant, hook = id, delivery = nid, "set-aside webhook delivery redriven");
                // The operator asks for an attempt now: the endpoint's backoff does not hold it.
                e.not_before = now;
            }
        }
        let w = window(&io, &tenant, id, &policy);
        let (nid, outcome) = match step(&w, now_ms(), e.not_before, &policy) {
            Step::Idle => {
                // Nothing to send: wait for an actor's wake-up (a poll covers a missed one).
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = poke.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            Step::Wait(ms) => {
                // A redrive or retry looks again at once; a new notification only when there is
                // no head of the line (it may be one), since it would otherwise wait behind it.
                let headless = !w.rows.iter().any(|(_, role, _)| *role == Role::Head);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = poke.notified() => {}
                    _ = wake.notified(), if headless => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            Step::Expire(nid, done) => (nid, Ok(done)),
            Step::Attempt(nid) => {
                let Some(p) = w.rows.into_iter().find(|(i, _, _)| *i == nid).map(|(_, _, p)| p) else { continue };
                let a = tokio::select! {
                    a = attempt(&io.client, &hook, nid, &p) => a,
                    _ = stop.changed() => return,
                };
                if let Some(err) = &a.error {
                    m.webhook_failed_attempts.inc();
                    tracing::warn!(tenant, hook = id, delivery = nid, attempts = p.attempts + 1, error = %err, "webhook delivery failed");
                }
                let outcome = after_attempt(p, a, now_ms(), &mut e, &policy, unit_random());
                if matches!(&outcome, Err(retry) if retry.attempts == policy.hold_attempts) {
                    m.webhook_set_aside.inc();
                    tracing::warn!(tenant, hook = id, delivery = nid, attempts = policy.hold_attempts, "webhook delivery set aside: later notifications of other users go first");
                }
                (nid, outcome)
            }
        };
        let (user, writes): (String, Vec<Write>) = match &outcome {
            Ok(done) => (user_of_body(&done.body), store::writes::delivery_done(&tenant, id, nid, done).into()),
            Err(retry) => (user_of(retry), vec![store::writes::outbox(&tenant, id, nid, retry)]),
        };
        if let Err(err) = record(&*io.log, &tenant, &user, writes).await {
            tracing::error!(tenant, hook = id, error = %err, "recording a webhook delivery failed");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        if let Ok(done) = &outcome {
            // Counted once it is recorded: a node that lost the user's partition meanwhile
            // recorded nothing, and the next owner delivers it again.
            (if done.delivered { &m.webhook_delivered } else { &m.webhook_given_up }).inc();
            since_trim += 1;
            if since_trim >= 64 {
                since_trim = 0;
                if let Err(err) = trim(&io, &tenant, id, io.config.webhook_log_keep).await {
                    tracing::warn!(tenant, hook = id, error = %err, "trimming a webhook log failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep after a partition is gained removes only the rows of endpoints the cluster's
    /// record says were deleted: not those of endpoints in force, nor of ids it never gave (a
    /// record read before an endpoint was made), nor of tenants whose record was not read.
    #[test]
    fn only_the_rows_of_deleted_endpoints_are_swept_grouped_by_user() {
        let hook = Hook { url: "http://h".into(), events: vec!["unlock".into()], secret: "s".into(), description: String::new(), created_at: 0 };
        // Endpoints 1 to 3 given (ids start at 1), 2 in force, 1 and 3 deleted, 4 not given yet.
        let acme = Endpoints { next: 3, hooks: BTreeMap::from([(2, hook)]) };
        let endpoints = BTreeMap::from([("acme".to_string(), acme)]);
        let row = |tenant: &str, hook: u64, user: &str, key: u8| ((tenant.to_string(), hook, user.to_string()), Write::Del(store::TreeId::Outbox, vec![key]));
        let rows = vec![row("acme", 1, "ann", 1), row("acme", 2, "ann", 2), row("acme", 3, "bob", 3), row("acme", 1, "ann", 4), row("acme", 4, "ann", 5), row("acme", 0, "ann", 7), row("other", 1, "cy", 6)];
        let swept = rows_of_deleted(rows, &endpoints);
        let keys: Vec<((String, String), Vec<u8>)> = swept.into_iter().flat_map(|(u, ws)| ws.into_iter().map(move |w| match w { Write::Del(_, k) => (u.clone(), k), w => panic!("{w:?}") })).collect();
        let ann = ("acme".to_string(), "ann".to_string());
        let bob = ("acme".to_string(), "bob".to_string());
        assert_eq!(keys, vec![(ann.clone(), vec![1]), (ann, vec![4]), (bob, vec![3])]);
    }

    /// A notification's body is byte for byte what it was when it was built by parsing the
    /// frame into a JSON value (receivers verify the signature over these bytes): for every
    /// kind, with names and titles that need escaping, and numbers of every shape.
    #[test]
    fn a_notification_body_embeds_the_frame_as_a_parsed_value_would() {
        let cat = crate::core::Catalogue::demo();
        let frames = [
            ("unlock", crate::protocol::unlock(7, &cat.badges[0], 2, Some("k\"é"), 50, 1_772_452_800_123, "e\n1")),
            ("level_up", crate::protocol::level_up(8, 3, "ev")),
            ("goal_completed", crate::protocol::goal_completed(9, "g", "Read \"all\" <10>", "teacher/ü", 1_772_452_800_000, "goal:g:3")),
            ("goal_missed", crate::protocol::goal_missed(10, "g", "T", "a", 0, "goal:g:4")),
            ("xp", crate::protocol::xp(u64::MAX, 1, 2, 3, "x")),
            ("progress", crate::protocol::progress(11, "b", 0.30000000000000004, 1e21)),
        ];
        for (kind, frame) in frames {
            let data: serde_json::Value = serde_json::from_str(&frame).unwrap();
            let before = serde_json::json!({ "id": 42, "type": kind, "created_at": rfc3339(1_772_452_800_000), "tenant": "t\"1", "user_id": "ü/u", "data": data }).to_string();
            assert_eq!(notification(42, kind, 1_772_452_800_000, "t\"1", "ü/u", &frame), before, "{kind}");
        }
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Checked against `printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test`.
        assert_eq!(signature("whsec_test", 1_700_000_000, r#"{"a":1}"#), "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789");
    }

    #[test]
    fn secrets_differ_and_carry_256_bits() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), "whsec_".len() + 43);
    }

    #[test]
    fn unit_random_spreads_over_the_unit_interval() {
        let xs: Vec<f64> = (0..1000).map(|_| unit_random()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().filter(|x| **x < 0.5).count() > 300 && xs.iter().filter(|x| **x >= 0.5).count() > 300);
    }
}
