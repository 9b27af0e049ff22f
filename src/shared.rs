//! What the HTTP and WebSocket handlers share: the server's parts, each built once by
//! `server::build` and passed to the handlers as `Arc<Shared>`. The parts below the handlers
//! never see this; each is given only the handles it uses.

use crate::auth::{ApiKeys, Keys};
use crate::backfill::Backfills;
use crate::boards::Boards;
use crate::catalogues::Catalogues;
use crate::config::Config;
use crate::core::Catalogue;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::user::Users;
use crate::webhooks::Webhooks;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::watch;

/// The handlers' view of the server. No globals: this is passed around as `Arc<Shared>`.
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    pub keys: Keys,
    pub api_keys: ApiKeys,
    /// The user actors of this process.
    pub users: Users,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Sender<bool>,
    pub demo: bool,
    pub catalogues: Arc<Catalogues>,
    /// Set once the server accepts traffic; cleared when shutdown starts (`/readyz`).
    pub ready: AtomicBool,
    /// Room for HTTP-ingested events in flight: the HTTP path's backpressure (sockets have
    /// theirs per connection).
    pub ingest_permits: Arc<tokio::sync::Semaphore>,
    /// Socket events in flight across the server (`--socket-inflight-events`).
    pub socket_permits: Arc<tokio::sync::Semaphore>,
    /// The backfill jobs of this process.
    pub backfills: Arc<Backfills>,
    /// The live rankings of open leaderboard periods, and their watchers.
    pub boards: Arc<Boards>,
    /// Each tenant's webhook endpoints and their delivery workers.
    pub webhooks: Arc<Webhooks>,
    /// Each tenant's analytics figures and health counters.
    pub analytics: Arc<crate::analytics::Analytics>,
    /// Community goals' totals and the sockets they are pushed to (standalone only).
    pub community: Arc<crate::community::Community>,
    /// This node's part in the cluster, in cluster mode.
    pub cluster: Option<Arc<crate::ownership::Membership>>,
}

impl Shared {
    /// The tenant's catalogue in force. Read once per message; a change swaps the whole `Arc`.
    /// Every caller has authenticated the tenant, and every configured tenant has a catalogue.
    pub fn catalogue(&self, tenant: &str) -> Option<Arc<Catalogue>> {
        self.catalogues.current(tenant)
    }
}
