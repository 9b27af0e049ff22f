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
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The notifications an endpoint can subscribe to (named as the pushes that announce them).
pub const KINDS: [&str; 4] = ["unlock", "level_up", "goal_completed", "goal_missed"];
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
/// of `MAX_HOOKS`, nor give one id twice). Ids are never given again: one below `next` that
/// is not in `hooks` was deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    pub next: u64,
    pub hooks: BTreeMap<u64, Hook>,
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
        for push in pushes {
            let Some(kind) = KINDS.iter().find(|k| **k == push.kind) else { continue };
            let targets: Vec<&Sub> = subs.iter().filter(|s| s.events.iter().any(|e| e == kind)).collect();
            if targets.is_empty() {
                continue;
            }
            let id = self.io.log.delivery_id(tenant, user).map_err(|e| format!("no id for a webhook notification: {e}"))?;
            let now = now_ms();
            let body = notification(id, kind, now, tenant, user, &push.frame);
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

/// The delay before the next attempt after `failures` failures in a row: the base doubled per
/// failure, capped, then jittered down by up to half (`unit` in [0, 1)), so that endpoints that
/// failed together do not come back in lockstep.
pub fn backoff(failures: u32, base_ms: u64, max_ms: u64, unit: f64) -> u64 {
    let full = base_ms.saturating_mul(1u64 << failures.saturating_sub(1).min(40)).min(max_ms);
    let half = full / 2;
    half + ((full - half) as f64 * unit.clamp(0.0, 1.0)) as u64
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

/// The retry policy, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub base_ms: u64,
    pub max_ms: u64,
    pub max_attempts: u32,
    pub give_up_after_ms: Millis,
    /// Failed attempts after which a notification is set aside: out of the line, retried on
    /// its own backoff, no longer holding up other users' notifications.
    pub hold_attempts: u32,
}

impl Policy {
    pub fn of(c: &crate::config::Config) -> Policy {
        Policy {
            base_ms: c.webhook_retry_base_ms,
            max_ms: c.webhook_retry_max_ms,
            max_attempts: c.webhook_max_attempts.max(1),
            give_up_after_ms: (c.webhook_give_up_after_secs as Millis).saturating_mul(1000),
            hold_attempts: c.webhook_hold_attempts.max(1),
        }
    }

    /// Whether a waiting notification is set aside. It is its failed attempts that say so,
    /// so the attempt's one write sets it aside, and a redrive (attempts back to 0) undoes it.
    pub fn set_aside(&self, p: &Pending) -> bool {
        p.attempts >= self.hold_attempts
    }
}

/// The user a notification is about, read from its body (where the actor wrote it), so that
/// the stored rows need no field for it.
pub fn user_of(p: &Pending) -> String {
    user_of_body(&p.body)
}

/// The user a notification's body is about.
pub fn user_of_body(body: &str) -> String {
    #[derive(Deserialize)]
    struct About {
        user_id: String,
    }
    serde_json::from_str::<About>(body).map(|a| a.user_id).unwrap_or_default()
}

/// How far waiting notifications are counted (an endpoint that has been down for days can
/// have a long outbox, and this is read per API call).
pub const COUNT_CAP: usize = 100_000;

/// A question about an endpoint's deliveries. One node alone answers it from its own sled;
/// in a cluster every node answers for the users it serves, and the answers are merged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ask {
    /// How many notifications wait, counted up to `COUNT_CAP`.
    Count,
    /// What waits (oldest first) and what finished (newest first, ids below `before`), at
    /// most `limit` of each.
    Deliveries { before: Option<u64>, limit: usize },
    /// The set-aside notifications among the oldest `SCAN_DEPTH` waiting, at most `limit`.
    SetAside { limit: usize },
    /// Send a set-aside or given-up delivery again.
    Retry { delivery: u64 },
}

/// Why a delivery cannot be retried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Refusal {
    /// It waits in line, and is sent in its turn.
    NotSetAside,
    /// It was delivered.
    Delivered,
}

/// An answer to an `Ask`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Told {
    pub pending: Vec<(u64, Pending)>,
    pub finished: Vec<(u64, Finished)>,
    pub count: usize,
    /// For `Retry`: the delivery as it waits now, or why it cannot be retried; `None` when
    /// the answering node has no such delivery.
    pub retried: Option<Result<(u64, Pending), Refusal>>,
    /// Whether `pending` (`finished`) was cut short to fit the answer in one message: the
    /// answering node holds more after its last one, which the merge must not skip.
    pub pending_cut: bool,
    pub finished_cut: bool,
}

impl Told {
    /// The answers of several nodes, each about its own users, as one node holding them all
    /// would have answered `ask`: waiting ones oldest first and finished ones newest first, in
    /// id order (a user's ids rise, so her notifications keep their order), cut to the limit.
    ///
    /// An answer cut short (`pending_cut`, `finished_cut`) holds rows past its last one that
    /// the others' rows may come between: the merged list then stops at the earliest such
    /// last row, and is marked cut, so the next page goes on from there and nothing is skipped.
    pub fn merge(ask: &Ask, answers: Vec<Told>) -> Told {
        let mut all = Told::default();
        // The last id each cut list reached: no row past the earliest of them is certain.
        let (mut pending_until, mut finished_from) = (None::<u64>, None::<u64>);
        for a in answers {
            if a.pending_cut && let Some((last, _)) = a.pending.last() {
                pending_until = Some(pending_until.map_or(*last, |u| u.min(*last)));
            }
            if a.finished_cut && let Some((last, _)) = a.finished.last() {
                finished_from = Some(finished_from.map_or(*last, |f| f.max(*last)));
            }
            all.pending_cut |= a.pending_cut;
            all.finished_cut |= a.finished_cut;
            all.pending.extend(a.pending);
            all.finished.extend(a.finished);
            all.count += a.count;
            all.retried = all.retried.or(a.retried);
        }
        all.pending.sort_by_key(|(id, _)| *id);
        all.finished.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        all.pending.retain(|(id, _)| pending_until.is_none_or(|u| *id <= u));
        all.finished.retain(|(id, _)| finished_from.is_none_or(|f| *id >= f));
        all.count = all.count.min(COUNT_CAP);
        let limit = match ask {
            Ask::Deliveries { limit, .. } | Ask::SetAside { limit } => *limit,
            Ask::Count | Ask::Retry { .. } => usize::MAX,
        };
        all.pending_cut |= all.pending.len() > limit;
        all.finished_cut |= all.finished.len() > limit;
        all.pending.truncate(limit);
        all.finished.truncate(limit);
        all
    }

    /// Cuts the lists until the answer, as JSON, fits in `bytes` (a NATS message carries at
    /// most 1 MiB by default): the newest waiting rows and the oldest finished ones go first,
    /// each list halved at a time and marked cut. Returns the JSON.
    pub fn fitted(mut self, bytes: usize) -> Vec<u8> {
        loop {
            let json = serde_json::to_vec(&self).expect("an answer encodes");
            if json.len() <= bytes || (self.pending.len() <= 1 && self.finished.len() <= 1) {
                return json;
            }
            if self.pending.len() >= self.finished.len() {
                self.pending.truncate(self.pending.len() / 2);
                self.pending_cut = true;
            } else {
                self.finished.truncate(self.finished.len() / 2);
                self.finished_cut = true;
            }
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

/// Where a row of the outbox stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Role {
    /// Failed `hold_attempts` times: retried on its own backoff, out of the line.
    Aside,
    /// An older notification about the same user still waits: this one goes after it.
    Behind,
    /// The oldest notification in line: the rest of the line waits behind it.
    Head,
}

/// The rows of an endpoint's outbox that the worker decides from: read oldest first, up to
/// and with the head of the line.
#[derive(Debug, Default)]
pub struct Window {
    pub rows: Vec<(u64, Role, Pending)>,
    users: HashSet<String>,
}

impl Window {
    /// Adds the next row (oldest first), as `user`'s; answers whether to read on, which is
    /// until the head of the line has been added.
    pub fn push(&mut self, id: u64, user: String, p: Pending, policy: &Policy) -> bool {
        let role = if self.users.contains(&user) {
            Role::Behind
        } else if policy.set_aside(&p) {
            Role::Aside
        } else {
            Role::Head
        };
        self.users.insert(user);
        self.rows.push((id, role, p));
        role != Role::Head
    }
}

/// What a worker does next.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing waits.
    Idle,
    /// This notification is too old: give it up without another attempt.
    Expire(u64, Finished),
    /// Nothing is due: look again in this many milliseconds (or when woken).
    Wait(u64),
    /// Send this notification now.
    Attempt(u64),
}

/// Gives up a notification that is too old, keeping its last attempt's answer in the reason.
fn expired(p: &Pending, now: Millis, policy: &Policy) -> Finished {
    let why = format!("given up: not delivered within {} s", policy.give_up_after_ms / 1000);
    let last = p.last.clone().unwrap_or(Attempt { at: now, status: None, error: None, millis: 0 });
    let error = Some(match &last.error {
        Some(e) => format!("{why}; last attempt: {e}"),
        None => why,
    });
    let last = Attempt { error, ..last };
    Finished { kind: p.kind.clone(), body: p.body.clone(), created_at: p.created_at, attempts: p.attempts, delivered: false, finished_at: now, last }
}

/// Decides the next step at `now` from the window of the outbox, the endpoint not being tried
/// before `not_before` (its backoff after a failure). The candidates are the head of the line
/// and the set-aside rows; a row behind an older one of its user is never one. Of those due,
/// the oldest goes; a row too old for `give_up_after_ms` is given up first, wherever it is.
pub fn step(w: &Window, now: Millis, not_before: Millis, policy: &Policy) -> Step {
    if let Some((id, _, p)) = w.rows.iter().find(|(_, _, p)| now - p.created_at > policy.give_up_after_ms) {
        return Step::Expire(*id, expired(p, now, policy));
    }
    let Some(first_expiry) = w.rows.iter().map(|(_, _, p)| p.created_at + policy.give_up_after_ms + 1).min() else { return Step::Idle };
    let candidates = || w.rows.iter().filter(|(_, role, _)| *role != Role::Behind).map(|(id, _, p)| (*id, p.next_at.max(not_before)));
    if let Some((id, _)) = candidates().filter(|(_, at)| *at <= now).min() {
        return Step::Attempt(id);
    }
    let next = candidates().map(|(_, at)| at).min().unwrap_or(first_expiry);
    Step::Wait((next.min(first_expiry) - now) as u64)
}

/// An endpoint's state between attempts, in the worker's memory: its failures in a row, and
/// the time before which it is not tried (its backoff).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub failures: u32,
    pub not_before: Millis,
}

/// What an attempt leaves: the delivery finished (delivered or given up), or to be retried
/// at `next_at`. A failure backs off the whole endpoint (`e`) by its failures in a row; a
/// notification in line is due again when that backoff ends. One that is (now) set aside is
/// due only after its own backoff too, counted from its own failed attempts and from the end
/// of the endpoint's: so the head of the line goes first when the endpoint is tried again
/// (were they due together, the older set-aside one would win every time, and hold the line
/// as before), and a set-aside one is retried ever more rarely.
pub fn after_attempt(mut p: Pending, a: Attempt, now: Millis, e: &mut Backoff, policy: &Policy, unit: f64) -> Result<Finished, Pending> {
    p.attempts += 1;
    let delivered = a.error.is_none();
    if delivered {
        *e = Backoff::default();
    } else {
        e.failures += 1;
        e.not_before = now + backoff(e.failures, policy.base_ms, policy.max_ms, unit) as Millis;
    }
    if delivered || p.attempts >= policy.max_attempts {
        return Ok(Finished { kind: p.kind, body: p.body, created_at: p.created_at, attempts: p.attempts, delivered, finished_at: now, last: a });
    }
    p.next_at = if policy.set_aside(&p) { e.not_before + backoff(p.attempts, policy.base_ms, policy.max_ms, unit) as Millis } else { e.not_before };
    p.last = Some(a);
    Err(p)
}

/// A redrive asked for through the API: a set-aside notification back in line with a fresh
/// count of attempts, due now; `None` when it is not set aside (delivered meanwhile, given up,
/// or never set aside), which leaves it as it is.
pub fn redriven(p: Pending, now: Millis, policy: &Policy) -> Option<Pending> {
    policy.set_aside(&p).then_some(Pending { attempts: 0, next_at: now, ..p })
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

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap_and_jitters_down_by_at_most_half() {
        // (failures, unit) -> delay, with base 1000 ms and cap 600000 ms.
        let table = [(1, 0.0, 500), (1, 0.999_999, 999), (2, 0.0, 1000), (3, 0.5, 3000), (10, 0.0, 256_000), (11, 0.0, 300_000), (11, 1.0, 600_000), (50, 0.0, 300_000), (0, 0.0, 500)];
        for (failures, unit, want) in table {
            assert_eq!(backoff(failures, 1000, 600_000, unit), want, "failures {failures}, unit {unit}");
        }
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

    fn pending(created_at: Millis, next_at: Millis, attempts: u32) -> Pending {
        Pending { kind: "unlock".into(), body: "{}".into(), created_at, attempts, next_at, last: None }
    }

    const POLICY: Policy = Policy { base_ms: 1000, max_ms: 600_000, max_attempts: 5, give_up_after_ms: 60_000, hold_attempts: 2 };

    /// A row as (id, user, created_at, next_at, attempts).
    type Row<'a> = (u64, &'a str, Millis, Millis, u32);

    /// A window read from rows oldest first, as the worker reads it: up to the head of the line.
    fn window(rows: &[Row]) -> Window {
        let mut w = Window::default();
        for &(id, user, created, next, attempts) in rows {
            if !w.push(id, user.to_string(), pending(created, next, attempts), &POLICY) {
                break;
            }
        }
        w
    }

    #[test]
    fn the_window_reads_past_set_aside_rows_and_their_users_later_ones_up_to_the_head_of_the_line() {
        // (rows, roles of the rows read). `hold_attempts` is 2: two failures set a row aside.
        let table: [(&[Row], &[Role]); 5] = [
            (&[(1, "a", 0, 0, 0), (2, "b", 0, 0, 0)], &[Role::Head]),
            (&[(1, "a", 0, 0, 1), (2, "b", 0, 0, 0)], &[Role::Head]),
            (&[(1, "a", 0, 0, 2), (2, "b", 0, 0, 0), (3, "c", 0, 0, 0)], &[Role::Aside, Role::Head]),
            (&[(1, "a", 0, 0, 2), (2, "a", 0, 0, 0), (3, "a", 0, 0, 0), (4, "b", 0, 0, 0)], &[Role::Aside, Role::Behind, Role::Behind, Role::Head]),
            (&[(1, "a", 0, 0, 3), (2, "b", 0, 0, 2), (3, "a", 0, 0, 0)], &[Role::Aside, Role::Aside, Role::Behind]),
        ];
        for (rows, roles) in table {
            let got: Vec<Role> = window(rows).rows.iter().map(|r| r.1).collect();
            assert_eq!(got, roles, "{rows:?}");
        }
    }

    #[test]
    fn the_next_step_is_the_oldest_due_of_the_head_and_the_set_aside_rows_never_one_behind_its_user() {
        // (rows, now, not_before, step).
        let table: [(&[Row], Millis, Millis, Step); 11] = [
            (&[], 0, 0, Step::Idle),
            (&[(1, "a", 0, 0, 0)], 0, 0, Step::Attempt(1)),
            // A failed head holds the line: the rows behind it are not even read.
            (&[(1, "a", 0, 1500, 1), (2, "b", 0, 0, 0)], 1000, 0, Step::Wait(500)),
            (&[(1, "a", 0, 1500, 1), (2, "b", 0, 0, 0)], 1500, 0, Step::Attempt(1)),
            // Set aside: the next in line goes while it waits for its own backoff ...
            (&[(1, "a", 0, 5000, 2), (2, "b", 0, 0, 0)], 1000, 0, Step::Attempt(2)),
            // ... but not before the endpoint's backoff after the last failure has run.
            (&[(1, "a", 0, 5000, 2), (2, "b", 0, 0, 0)], 1000, 1200, Step::Wait(200)),
            // Once due again, the set-aside row is older and goes first.
            (&[(1, "a", 0, 5000, 2), (2, "b", 0, 0, 0)], 5000, 0, Step::Attempt(1)),
            // The set-aside row's user waits behind it: user b's row goes, not a's second.
            (&[(1, "a", 0, 5000, 2), (2, "a", 0, 0, 0), (3, "b", 0, 0, 0)], 1000, 0, Step::Attempt(3)),
            (&[(1, "a", 0, 5000, 2), (2, "a", 0, 0, 0)], 1000, 0, Step::Wait(4000)),
            // Exactly at the age limit a row is still tried; waits end by the first expiry.
            (&[(1, "a", 0, 0, 0)], 60_000, 0, Step::Attempt(1)),
            (&[(1, "a", 0, 90_000, 2), (2, "a", 100, 0, 0)], 59_000, 0, Step::Wait(1001)),
        ];
        for (rows, now, not_before, want) in table {
            assert_eq!(step(&window(rows), now, not_before, &POLICY), want, "{rows:?} at {now}, not before {not_before}");
        }
    }

    #[test]
    fn a_row_too_old_is_given_up_wherever_it_waits() {
        // The oldest is set aside and young enough; the one behind it is too old.
        let w = window(&[(1, "a", 10_000, 0, 2), (2, "a", 0, 0, 0), (3, "b", 70_000, 0, 0)]);
        let Step::Expire(id, done) = step(&w, 60_001, 0, &POLICY) else { panic!("too old") };
        assert_eq!((id, done.delivered, done.attempts, done.finished_at), (2, false, 0, 60_001));
        assert!(done.last.error.unwrap().contains("not delivered within 60 s"));
    }

    #[test]
    fn an_attempt_finishes_the_delivery_or_schedules_the_next_with_the_endpoints_backoff() {
        let ok = Attempt { at: 0, status: Some(204), error: None, millis: 3 };
        let bad = Attempt { at: 0, status: Some(500), error: Some("the endpoint answered 500".into()), millis: 3 };
        let mut e = Backoff { failures: 4, not_before: 5 };
        let done = after_attempt(pending(0, 0, 1), ok, 10, &mut e, &POLICY, 0.0).unwrap();
        assert_eq!((done.delivered, done.attempts, e), (true, 2, Backoff::default()));
        // Failure number 5 in a row: 16 s, jittered down to 8 s at unit 0, for the endpoint
        // and the notification alike.
        let mut e = Backoff { failures: 4, not_before: 0 };
        let retry = after_attempt(pending(0, 0, 0), bad.clone(), 10, &mut e, &POLICY, 0.0).unwrap_err();
        assert_eq!((retry.attempts, retry.next_at, e, retry.last.unwrap().status), (1, 8_010, Backoff { failures: 5, not_before: 8_010 }, Some(500)));
        // A set-aside notification failing on an endpoint that takes the others: the endpoint
        // backs off by its one failure (0.5 s), the notification by its own 4 attempts (4 s)
        // after that, so the head of the line is tried before it.
        let mut e = Backoff::default();
        let retry = after_attempt(pending(0, 0, 3), bad.clone(), 10, &mut e, &POLICY, 0.0).unwrap_err();
        assert_eq!((retry.attempts, retry.next_at, e), (4, 4_510, Backoff { failures: 1, not_before: 510 }));
        // The head's second failure sets it aside (`hold_attempts` 2): due after both backoffs.
        let mut e = Backoff { failures: 1, not_before: 0 };
        let retry = after_attempt(pending(0, 0, 1), bad.clone(), 10, &mut e, &POLICY, 0.0).unwrap_err();
        assert_eq!((retry.attempts, retry.next_at, e.not_before), (2, 2_010, 1_010));
        let w = window(&[]);
        assert_eq!(step(&w, 0, 0, &POLICY), Step::Idle);
        // The last allowed attempt fails: given up, and the endpoint still backs off.
        let mut e = Backoff::default();
        let done = after_attempt(pending(0, 0, 4), bad, 10, &mut e, &POLICY, 0.0).unwrap();
        assert_eq!((done.delivered, done.attempts, e), (false, 5, Backoff { failures: 1, not_before: 510 }));
    }

    #[test]
    fn a_redrive_puts_a_set_aside_row_back_in_line_due_now_and_leaves_others_alone() {
        let back = redriven(pending(0, 90_000, 3), 1_000, &POLICY).unwrap();
        assert_eq!((back.attempts, back.next_at, POLICY.set_aside(&back)), (0, 1_000, false));
        assert_eq!(redriven(pending(0, 2_000, 1), 1_000, &POLICY), None, "in line: not redriven");
    }

    fn told(waiting: &[u64], pending_cut: bool, finished: &[u64], finished_cut: bool) -> Told {
        let rows = |ids: &[u64]| ids.iter().map(|&id| (id, pending(0, 0, 0))).collect();
        let done = |ids: &[u64]| {
            ids.iter().map(|&id| (id, Finished { kind: "unlock".into(), body: "{}".into(), created_at: 0, attempts: 1, delivered: true, finished_at: 0, last: Attempt { at: 0, status: Some(204), error: None, millis: 1 } })).collect()
        };
        Told { pending: rows(waiting), finished: done(finished), pending_cut, finished_cut, ..Told::default() }
    }

    /// Nodes' answers merge into what one node holding every row would answer: in id order,
    /// cut to the limit, and never past the last row of an answer that was cut short (the rows
    /// it left out may come before the others' next ones).
    #[test]
    fn answers_merge_in_id_order_up_to_the_limit_and_never_past_a_cut_answers_last_row() {
        let ids = |t: &Told| (t.pending.iter().map(|r| r.0).collect::<Vec<_>>(), t.finished.iter().map(|r| r.0).collect::<Vec<_>>(), t.pending_cut, t.finished_cut);
        let ask = Ask::Deliveries { before: None, limit: 3 };
        // (answers, merged pending, merged finished, pending cut, finished cut)
        let table: [(Vec<Told>, Vec<u64>, Vec<u64>, bool, bool); 4] = [
            (vec![told(&[1, 5], false, &[9, 4], false), told(&[2], false, &[7], false)], vec![1, 2, 5], vec![9, 7, 4], false, false),
            (vec![told(&[1, 5, 6], false, &[9, 8, 4, 3], false), told(&[2, 3], false, &[7], false)], vec![1, 2, 3], vec![9, 8, 7], true, true),
            // Node one was cut after 2 (it holds more, maybe 3): node two's 4 waits for the next page.
            (vec![told(&[1, 2], true, &[9], true), told(&[4], false, &[3], false)], vec![1, 2], vec![9], true, true),
            (vec![told(&[], false, &[], false), told(&[], false, &[], false)], vec![], vec![], false, false),
        ];
        for (answers, p, f, pc, fc) in table {
            assert_eq!(ids(&Told::merge(&ask, answers)), (p, f, pc, fc));
        }
    }

    #[test]
    fn an_answer_too_large_for_one_message_is_cut_and_says_so() {
        let big = Pending { body: "x".repeat(1000), ..pending(0, 0, 0) };
        let t = Told { pending: (0..100).map(|i| (i, big.clone())).collect(), ..Told::default() };
        let json = t.fitted(20_000);
        assert!(json.len() <= 20_000, "{}", json.len());
        let back: Told = serde_json::from_slice(&json).unwrap();
        assert!(back.pending_cut && !back.finished_cut);
        assert_eq!(back.pending.first().map(|r| r.0), Some(0), "the oldest are kept");
    }

    #[test]
    fn the_user_of_a_notification_is_read_from_its_body() {
        let p = Pending { body: notification(7, "unlock", 0, "t", "ü/\"x", "{}"), ..pending(0, 0, 0) };
        assert_eq!(user_of(&p), "ü/\"x");
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
