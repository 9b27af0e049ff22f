//! Each tenant's catalogue: the version in force, every stored version, and changes (API edits,
//! file reloads on SIGHUP) that are validated, stored as a new version and swapped in live.
//!
//! Versions are numbered by the server, per tenant, from the file's declared `version` upwards;
//! the document a version is stored with carries its number. A tenant's catalogue starts from the
//! configured file (or the embedded demo catalogue). Once it is changed through the API it is
//! owned by the API, and reloading the file leaves it alone.

use crate::core::value::Millis;
use crate::core::{Catalogue, CatalogueError, Format};
use crate::store::{self, Kind, Store, StoreError};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use crate::cluster::catalog::{CatalogLogError, CatalogueLog};

/// Where a catalogue version came from: the `--catalogue` file, the demo catalogue built into
/// the binary (no file given), or a change through the API.
pub const FROM_FILE: &str = "file";
pub const EMBEDDED: &str = "embedded";
pub const FROM_API: &str = "api";

/// The origin of versions taken from the base catalogue: the file, or the embedded one.
fn base_origin(file: &Option<PathBuf>) -> &'static str {
    if file.is_some() { FROM_FILE } else { EMBEDDED }
}

/// Whether a version came from the base catalogue (and so follows it when it changes), not
/// from a change through the API. Data dirs of earlier releases say `file` for the embedded
/// catalogue too.
fn from_base(origin: &str) -> bool {
    origin == FROM_FILE || origin == EMBEDDED
}

/// One stored catalogue version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCatalogue {
    pub version: u64,
    pub origin: String,
    pub created_at: Millis,
    /// What changed, in words ("put badge `x`").
    pub change: String,
    /// The document, as JSON.
    pub document: String,
}

/// A change to a tenant's catalogue, as the API takes it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Replace the whole document (its `version` is set by the server).
    ReplaceDocument { document: Json },
    /// Create a badge, or replace the badge with the same `id`.
    PutBadge { badge: Json },
    /// Retire a badge: owners keep it, nobody earns it any more.
    RetireBadge { id: String },
    /// Create an XP rule, or replace the one with the same `id`.
    PutXp { rule: Json },
    /// Remove an XP rule; XP already granted stays.
    RemoveXp { id: String },
}

impl Change {
    fn describe(&self) -> String {
        match self {
            Change::ReplaceDocument { .. } => "replace document".into(),
            Change::PutBadge { badge } => format!("put badge `{}`", badge.get("id").and_then(Json::as_str).unwrap_or("?")),
            Change::RetireBadge { id } => format!("retire badge `{id}`"),
            Change::PutXp { rule } => format!("put XP rule `{}`", rule.get("id").and_then(Json::as_str).unwrap_or("?")),
            Change::RemoveXp { id } => format!("remove XP rule `{id}`"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Invalid(#[from] CatalogueError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Cluster mode: another node made a version at the same time.
    #[error("{0}")]
    Conflict(String),
    /// Cluster mode: the cluster's history could not be reached.
    #[error("{0}")]
    Cluster(String),
}

impl From<CatalogLogError> for ChangeError {
    fn from(e: CatalogLogError) -> ChangeError {
        match e {
            CatalogLogError::Conflict => ChangeError::Conflict("the catalogue was changed on another node at the same moment; this change was not made: send it again".into()),
            CatalogLogError::Nats(m) => ChangeError::Cluster(format!("the cluster's catalogue history cannot be reached ({m}); try again")),
        }
    }
}

/// A validated change, before or after it is applied.
pub struct Candidate {
    pub catalogue: Arc<Catalogue>,
    pub previous: Arc<Catalogue>,
    /// Badges that are new or whose definition changed (not retired ones): who might earn them
    /// now is what a preview counts and a backfill awards.
    pub changed_badges: Vec<String>,
    /// Stat ids the previous version did not track.
    pub new_stats: Vec<u64>,
}

pub struct Catalogues {
    store: Store,
    file: Option<PathBuf>,
    current: RwLock<HashMap<String, (Arc<Catalogue>, String)>>,
    versions: DashMap<(String, u64), Arc<Catalogue>>,
    /// One change at a time, so versions are numbered without gaps or races.
    changing: tokio::sync::Mutex<()>,
    /// Cluster mode: the cluster's one history, where a new version goes before anything else
    /// (`join_cluster`), and the stream sequence of each tenant's last version this node has.
    cluster: OnceLock<Arc<CatalogueLog>>,
    seqs: Mutex<HashMap<String, u64>>,
}

fn compile(document: &str) -> Result<Catalogue, CatalogueError> {
    Catalogue::parse(document, Format::Json)
}

fn read_file(file: &Option<PathBuf>) -> anyhow::Result<Json> {
    let (text, format) = match file {
        None => (crate::core::catalogue::DEMO_CATALOGUE.to_string(), Format::Toml),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading catalogue {}: {e}", path.display()))?;
            let format = if path.extension().is_some_and(|e| e == "json") { Format::Json } else { Format::Toml };
            (text, format)
        }
    };
    let name = file.as_ref().map_or("the embedded demo catalogue".to_string(), |p| p.display().to_string());
    // Validate with the file's own format first, so errors name what the author wrote.
    Catalogue::parse(&text, format).map_err(|e| anyhow::anyhow!("catalogue {name}: {e}"))?;
    Ok(match format {
        Format::Toml => toml::from_str(&text)?,
        Format::Json => serde_json::from_str(&text)?,
    })
}

fn without_version(doc: &Json) -> Json {
    let mut d = doc.clone();
    if let Some(o) = d.as_object_mut() {
        o.remove("version");
    }
    d
}

fn by_id(list: Option<&Json>) -> HashMap<String, Json> {
    list.and_then(Json::as_array)
        .map(|a| a.iter().filter_map(|b| Some((b.get("id")?.as_str()?.to_string(), b.clone()))).collect())
        .unwrap_or_default()
}

impl Catalogues {
    /// Loads every tenant's catalogue in force, storing the file's as the first version of a
    /// tenant that has none, and a new version when the file changed while the server was down.
    ///
    /// A cluster node (`clustered`) leaves a changed file alone here: its catalogues are the
    /// cluster's (`join_cluster`), and the file only seeds a cluster that has none.
    pub async fn open(store: Store, file: Option<PathBuf>, tenants: &[String], now: Millis, clustered: bool) -> anyhow::Result<Catalogues> {
        let base = read_file(&file)?;
        let cats = Catalogues {
            store,
            file,
            current: RwLock::new(HashMap::new()),
            versions: DashMap::new(),
            changing: tokio::sync::Mutex::new(()),
            cluster: OnceLock::new(),
            seqs: Mutex::default(),
        };
        let origin = base_origin(&cats.file);
        let what = if cats.file.is_some() { "the file" } else { "the embedded demo catalogue" };
        for t in tenants {
            match cats.store.last::<StoredCatalogue>(Kind::Catalogue, t)? {
                None => {
                    let version = base.get("version").and_then(Json::as_u64).unwrap_or(1);
                    cats.install(t, version, base.clone(), origin, format!("initial version from {what}"), now).await?;
                }
                Some((_, s)) => {
                    let doc: Json = serde_json::from_str(&s.document)?;
                    if !clustered && from_base(&s.origin) && without_version(&doc) != without_version(&base) {
                        cats.install(t, s.version + 1, base.clone(), origin, format!("{what} changed"), now).await?;
                    } else {
                        let cat = Arc::new(compile(&s.document).map_err(|e| anyhow::anyhow!("stored catalogue of tenant `{t}` version {}: {e}", s.version))?);
                        cats.versions.insert((t.clone(), s.version), cat.clone());
                        cats.current.write().expect("catalogue lock").insert(t.clone(), (cat, s.origin));
                    }
                }
            }
        }
        Ok(cats)
    }

    /// The tenants with a catalogue.
    pub fn tenants(&self) -> Vec<String> {
        self.current.read().expect("catalogue lock").keys().cloned().collect()
    }

    /// The catalogue in force for a tenant. Read once per message; a change swaps the `Arc`.
    pub fn current(&self, tenant: &str) -> Option<Arc<Catalogue>> {
        self.current.read().expect("catalogue lock").get(tenant).map(|c| c.0.clone())
    }

    /// A stored version (compiled once, then cached).
    pub fn version(&self, tenant: &str, version: u64) -> Option<Arc<Catalogue>> {
        if let Some(c) = self.versions.get(&(tenant.to_string(), version)) {
            return Some(c.clone());
        }
        let s: StoredCatalogue = self.store.get(Kind::Catalogue, tenant, version).ok()??;
        let cat = Arc::new(compile(&s.document).ok()?);
        self.versions.insert((tenant.to_string(), version), cat.clone());
        Some(cat)
    }

    /// Every stored version of a tenant, oldest first (documents left out).
    pub fn history(&self, tenant: &str) -> Result<Vec<StoredCatalogue>, StoreError> {
        Ok(self.store.list::<StoredCatalogue>(Kind::Catalogue, tenant, None, usize::MAX)?.into_iter().map(|(_, s)| s).collect())
    }

    pub fn stored(&self, tenant: &str, version: u64) -> Result<Option<StoredCatalogue>, StoreError> {
        self.store.get(Kind::Catalogue, tenant, version)
    }

    /// Validates a change against the tenant's current catalogue without applying it.
    pub fn candidate(&self, tenant: &str, change: &Change) -> Result<Candidate, ChangeError> {
        let previous = self.current(tenant).ok_or_else(|| ChangeError::NotFound(format!("unknown tenant `{tenant}`")))?;
        let mut doc: Json = serde_json::from_str(&previous.source).map_err(|e| ChangeError::BadRequest(e.to_string()))?;
        let list = |doc: &mut Json, key: &str| -> Result<Vec<Json>, ChangeError> {
            Ok(doc.get(key).and_then(Json::as_array).cloned().unwrap_or_default())
        };
        let id_of = |v: &Json, what: &str| -> Result<String, ChangeError> {
            v.get("id").and_then(Json::as_str).map(str::to_string).ok_or_else(|| ChangeError::BadRequest(format!("the {what} needs a string `id`")))
        };
        let put = |items: &mut Vec<Json>, id: &str, v: Json| match items.iter().position(|b| b.get("id").and_then(Json::as_str) == Some(id)) {
            Some(i) => items[i] = v,
            None => items.push(v),
        };
        match change {
            Change::ReplaceDocument { document } => {
                if !document.is_object() {
                    return Err(ChangeError::BadRequest("`document` must be a JSON object".into()));
                }
                doc = document.clone();
            }
            Change::PutBadge { badge } => {
                let id = id_of(badge, "badge")?;
                let mut items = list(&mut doc, "badges")?;
                put(&mut items, &id, badge.clone());
                doc["badges"] = Json::Array(items);
            }
            Change::RetireBadge { id } => {
                let mut items = list(&mut doc, "badges")?;
                let b = items
                    .iter_mut()
                    .find(|b| b.get("id").and_then(Json::as_str) == Some(id))
                    .ok_or_else(|| ChangeError::NotFound(format!("no badge `{id}` in the catalogue")))?;
                b["retired"] = Json::Bool(true);
                doc["badges"] = Json::Array(items);
            }
            Change::PutXp { rule } => {
                let id = id_of(rule, "XP rule")?;
                let mut items = list(&mut doc, "xp")?;
                put(&mut items, &id, rule.clone());
                doc["xp"] = Json::Array(items);
            }
            Change::RemoveXp { id } => {
                let mut items = list(&mut doc, "xp")?;
                let before = items.len();
                items.retain(|r| r.get("id").and_then(Json::as_str) != Some(id));
                if items.len() == before {
                    return Err(ChangeError::NotFound(format!("no XP rule `{id}` in the catalogue")));
                }
                doc["xp"] = Json::Array(items);
            }
        }
        doc["version"] = Json::from(self.next_version(tenant, previous.version)?);
        let catalogue = Arc::new(compile(&doc.to_string())?);
        Ok(diff(catalogue, previous, &doc))
    }

    /// Validates, stores and swaps in a change. Returns the new version and what it changed.
    ///
    /// In a cluster, a change that another node's change beat to the next version is made
    /// again on top of that one, as two changes on one node are made one after the other.
    pub async fn apply(&self, tenant: &str, change: &Change, now: Millis) -> Result<Candidate, ChangeError> {
        let _one = self.changing.lock().await;
        let mut tries = 0;
        loop {
            let c = self.candidate(tenant, change)?;
            let doc: Json = serde_json::from_str(&c.catalogue.source).map_err(|e| ChangeError::BadRequest(e.to_string()))?;
            match self.store_version(tenant, c.catalogue.clone(), &doc, FROM_API, change.describe(), now).await {
                Ok(()) => return Ok(c),
                Err(ChangeError::Conflict(_)) if tries < 10 => {
                    tries += 1;
                    self.catch_up_locked(tenant).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Re-reads the file (SIGHUP) and makes a new version for every tenant whose catalogue is
    /// still the file's and whose content changed. An invalid file changes nothing.
    pub async fn reload_file(&self, now: Millis) -> anyhow::Result<Vec<(String, Candidate)>> {
        let _one = self.changing.lock().await;
        let base = read_file(&self.file)?;
        let tenants: Vec<(String, Arc<Catalogue>, String)> =
            self.current.read().expect("catalogue lock").iter().map(|(t, (c, o))| (t.clone(), c.clone(), o.clone())).collect();
        let mut changed = Vec::new();
        for (t, cat, origin) in tenants {
            if !from_base(&origin) {
                tracing::info!(tenant = %t, "catalogue reload: left alone, it was changed through the API");
                continue;
            }
            let doc: Json = serde_json::from_str(&cat.source)?;
            if without_version(&doc) == without_version(&base) {
                continue;
            }
            let v = self.install(&t, self.next_version(&t, cat.version)?, base.clone(), base_origin(&self.file), "file reloaded".into(), now).await?;
            let new = self.version(&t, v).ok_or_else(|| anyhow::anyhow!("version {v} vanished"))?;
            let doc: Json = serde_json::from_str(&new.source)?;
            changed.push((t, diff(new, cat, &doc)));
        }
        Ok(changed)
    }

    /// A candidate from a whole document at `version`, stored and swapped in.
    async fn install(&self, tenant: &str, version: u64, mut doc: Json, origin: &str, change: String, now: Millis) -> anyhow::Result<u64> {
        doc["version"] = Json::from(version);
        let cat = Arc::new(compile(&doc.to_string()).map_err(|e| anyhow::anyhow!("catalogue: {e}"))?);
        self.store_version(tenant, cat, &doc, origin, change, now).await?;
        Ok(version)
    }

    /// The number a new version of `tenant`'s gets, after `current`, the one in force. A cluster
    /// node counts from the cluster's last version, which is the one in force.
    fn next_version(&self, tenant: &str, current: u64) -> Result<u64, StoreError> {
        if self.cluster.get().is_some() {
            return Ok(current + 1);
        }
        Ok(self.store.last::<StoredCatalogue>(Kind::Catalogue, tenant)?.map_or(current, |(v, _)| v) + 1)
    }

    fn seq(&self, tenant: &str) -> u64 {
        self.seqs.lock().expect("not poisoned").get(tenant).copied().unwrap_or(0)
    }

    async fn store_version(&self, tenant: &str, cat: Arc<Catalogue>, doc: &Json, origin: &str, change: String, now: Millis) -> Result<(), ChangeError> {
        let stored = StoredCatalogue { version: cat.version, origin: origin.into(), created_at: now, change, document: doc.to_string() };
        // In a cluster, the cluster's history first: the version exists once it is there, and
        // only if no other node made one since the last this node knows of.
        let mut appended = None;
        if let Some(log) = self.cluster.get() {
            let body = serde_json::to_vec(&stored).map_err(|e| ChangeError::BadRequest(e.to_string()))?;
            appended = Some(log.append(tenant, self.seq(tenant), body.into()).await?);
        }
        // Durable before it is in force: an event is never judged by a version that could be lost.
        // (In a cluster, the version is the cluster's already: if this write fails, the
        // sequence is not recorded, and `follow` or the next change takes it in from there.)
        self.store.write(vec![store::writes::put(Kind::Catalogue, tenant, cat.version, &stored)]).await?;
        if let Some(seq) = appended {
            self.seqs.lock().expect("not poisoned").insert(tenant.to_string(), seq);
        }
        self.versions.insert((tenant.to_string(), cat.version), cat.clone());
        self.current.write().expect("catalogue lock").insert(tenant.to_string(), (cat, origin.into()));
        Ok(())
    }
}

/// Cluster mode: one catalogue history for every node.
impl Catalogues {
    /// Makes this node's catalogues the cluster's: a tenant the cluster has no history for is
    /// given this node's (the file's first version, on a new cluster); otherwise the cluster's
    /// versions are stored here and its last is put in force, whatever this disk held. From
    /// then on every new version goes to the cluster first (`store_version`).
    pub async fn join_cluster(&self, log: Arc<CatalogueLog>, tenants: &[String]) -> Result<(), ChangeError> {
        let _one = self.changing.lock().await;
        for t in tenants {
            let mut history = log.history(t, 0).await?;
            let local = self.store.list::<StoredCatalogue>(Kind::Catalogue, t, None, usize::MAX)?;
            // A new cluster is given this node's history; so is one whose history is the start
            // of this node's (an earlier try of this join was cut short).
            let decoded: Vec<Option<StoredCatalogue>> = history.iter().map(|e| serde_json::from_slice(&e.body).ok()).collect();
            let prefix = decoded.len() < local.len()
                && decoded.iter().zip(&local).all(|(h, (_, l))| h.as_ref().is_some_and(|h| h.version == l.version && h.document == l.document));
            if prefix {
                let mut after = history.last().map_or(0, |e| e.sequence);
                for (_, s) in &local[decoded.len()..] {
                    match log.append(t, after, serde_json::to_vec(s).expect("a version encodes").into()).await {
                        Ok(seq) => after = seq,
                        // Another node gave the cluster its history first: that one stands.
                        Err(CatalogLogError::Conflict) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                history = log.history(t, 0).await?;
            }
            for e in history {
                self.adopt_locked(t, e.sequence, &e.body, true).await?;
            }
        }
        let _ = self.cluster.set(log);
        Ok(())
    }

    /// A version from the cluster's history, stored here and put in force if it is newer than
    /// the one in force (or, with `force`, in any case). One this node has already is skipped.
    async fn adopt_locked(&self, tenant: &str, seq: u64, body: &[u8], force: bool) -> Result<bool, ChangeError> {
        if seq <= self.seq(tenant) || self.current(tenant).is_none() {
            return Ok(false);
        }
        let stored: StoredCatalogue = serde_json::from_slice(body).map_err(|e| ChangeError::Cluster(format!("a version in the cluster's history did not decode: {e}")))?;
        let cat = Arc::new(compile(&stored.document)?);
        self.store.write(vec![store::writes::put(Kind::Catalogue, tenant, stored.version, &stored)]).await?;
        self.versions.insert((tenant.to_string(), stored.version), cat.clone());
        let newer = self.current(tenant).is_none_or(|c| c.version < stored.version);
        if newer || force {
            tracing::info!(tenant, version = stored.version, change = %stored.change, "catalogue version from the cluster in force");
            self.current.write().expect("catalogue lock").insert(tenant.to_string(), (cat, stored.origin));
        }
        self.seqs.lock().expect("not poisoned").insert(tenant.to_string(), seq);
        Ok(true)
    }

    /// Takes in every version the cluster has that this node has not, for every tenant: run
    /// before a partition is served, so that its users' events are replayed and judged by the
    /// versions they were judged by elsewhere.
    pub async fn catch_up(&self) -> Result<(), ChangeError> {
        let Some(log) = self.cluster.get() else { return Ok(()) };
        let tenants: Vec<String> = self.current.read().expect("catalogue lock").keys().cloned().collect();
        for t in tenants {
            if log.last(&t).await? <= self.seq(&t) {
                continue;
            }
            let _one = self.changing.lock().await;
            self.catch_up_locked(&t).await?;
        }
        Ok(())
    }

    /// `catch_up` for one tenant, with the change lock held.
    async fn catch_up_locked(&self, tenant: &str) -> Result<(), ChangeError> {
        let Some(log) = self.cluster.get() else { return Ok(()) };
        for e in log.history(tenant, self.seq(tenant)).await? {
            self.adopt_locked(tenant, e.sequence, &e.body, false).await?;
        }
        Ok(())
    }

    /// Follows the cluster's history until `stop`: each version another node makes is put in
    /// force here as it is appended. A broken stream is followed again from where it broke.
    pub async fn follow(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        use futures_util::StreamExt;
        let Some(log) = self.cluster.get().cloned() else { return };
        loop {
            // From the oldest last version known: each tenant skips what it has.
            let after = self.seqs.lock().expect("not poisoned").values().copied().min().unwrap_or(0);
            match log.follow(after).await {
                Ok(entries) => {
                    let mut entries = std::pin::pin!(entries);
                    loop {
                        let e = tokio::select! {
                            e = entries.next() => e,
                            _ = stop.changed() => return,
                        };
                        let Some(Ok(e)) = e else { break };
                        let _one = self.changing.lock().await;
                        if let Err(err) = self.adopt_locked(&e.tenant, e.sequence, &e.body, false).await {
                            // Not skipped: followed again from before it, in a second.
                            tracing::error!(tenant = %e.tenant, error = %err, "a catalogue version from the cluster could not be taken in; trying again");
                            break;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "following the cluster's catalogue history failed; trying again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

fn diff(catalogue: Arc<Catalogue>, previous: Arc<Catalogue>, doc: &Json) -> Candidate {
    let old_doc: Json = serde_json::from_str(&previous.source).unwrap_or_default();
    let old = by_id(old_doc.get("badges"));
    let new = by_id(doc.get("badges"));
    let changed_badges = catalogue
        .badges
        .iter()
        .filter(|b| !b.retired && old.get(&*b.id) != new.get(&*b.id))
        .map(|b| b.id.to_string())
        .collect();
    let new_stats = catalogue.stats.iter().map(|s| s.id).filter(|id| !previous.stats.iter().any(|p| p.id == *id)).collect();
    Candidate { catalogue, previous, changed_badges, new_stats }
}
