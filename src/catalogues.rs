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
use std::sync::{Arc, RwLock};

/// Where a catalogue version came from.
pub const FROM_FILE: &str = "file";
pub const FROM_API: &str = "api";

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
    pub async fn open(store: Store, file: Option<PathBuf>, tenants: &[String], now: Millis) -> anyhow::Result<Catalogues> {
        let base = read_file(&file)?;
        let cats = Catalogues { store, file, current: RwLock::new(HashMap::new()), versions: DashMap::new(), changing: tokio::sync::Mutex::new(()) };
        for t in tenants {
            match cats.store.last::<StoredCatalogue>(Kind::Catalogue, t)? {
                None => {
                    let version = base.get("version").and_then(Json::as_u64).unwrap_or(1);
                    cats.install(t, version, base.clone(), FROM_FILE, "initial version from the file".into(), now).await?;
                }
                Some((_, s)) => {
                    let doc: Json = serde_json::from_str(&s.document)?;
                    if s.origin == FROM_FILE && without_version(&doc) != without_version(&base) {
                        cats.install(t, s.version + 1, base.clone(), FROM_FILE, "file changed".into(), now).await?;
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
        let last = self.store.last::<StoredCatalogue>(Kind::Catalogue, tenant)?.map_or(previous.version, |(v, _)| v);
        doc["version"] = Json::from(last + 1);
        let catalogue = Arc::new(compile(&doc.to_string())?);
        Ok(diff(catalogue, previous, &doc))
    }

    /// Validates, stores and swaps in a change. Returns the new version and what it changed.
    pub async fn apply(&self, tenant: &str, change: &Change, now: Millis) -> Result<Candidate, ChangeError> {
        let _one = self.changing.lock().await;
        let c = self.candidate(tenant, change)?;
        let doc: Json = serde_json::from_str(&c.catalogue.source).map_err(|e| ChangeError::BadRequest(e.to_string()))?;
        self.store_version(tenant, c.catalogue.clone(), &doc, FROM_API, change.describe(), now).await?;
        Ok(c)
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
            if origin != FROM_FILE {
                tracing::info!(tenant = %t, "catalogue reload: left alone, it was changed through the API");
                continue;
            }
            let doc: Json = serde_json::from_str(&cat.source)?;
            if without_version(&doc) == without_version(&base) {
                continue;
            }
            let last = self.store.last::<StoredCatalogue>(Kind::Catalogue, &t)?.map_or(cat.version, |(v, _)| v);
            let v = self.install(&t, last + 1, base.clone(), FROM_FILE, "file reloaded".into(), now).await?;
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

    async fn store_version(&self, tenant: &str, cat: Arc<Catalogue>, doc: &Json, origin: &str, change: String, now: Millis) -> Result<(), StoreError> {
        let stored = StoredCatalogue { version: cat.version, origin: origin.into(), created_at: now, change, document: doc.to_string() };
        // Durable before it is in force: an event is never judged by a version that could be lost.
        self.store.write(vec![store::writes::put(Kind::Catalogue, tenant, cat.version, &stored)]).await?;
        self.versions.insert((tenant.to_string(), cat.version), cat.clone());
        self.current.write().expect("catalogue lock").insert(tenant.to_string(), (cat, origin.into()));
        Ok(())
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
