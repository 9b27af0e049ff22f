//! Accolade: a real-time achievement server. Events come in over WebSocket (or HTTP), each
//! user's actor applies them to its state with the pure rule core, and XP, level-ups and badge
//! unlocks are pushed back at once.
//!
//! Data flows one way: socket -> [`session`] -> [`user`] actor -> [`core`] -> effects ->
//! [`store`] (persist) -> pushes back through the session.
//!
//! - [`core`]: the pure rule engine (catalogue, state, `apply`, effects). No IO.
//! - [`protocol`]: the WebSocket wire format; the only module that knows its JSON shapes.
//! - [`session`]: one WebSocket connection; the only module that touches socket types.
//! - [`user`]: the per-user actor, its sockets, `Users` (the registry that finds it), and its
//!   supervisor.
//! - [`store`]: sled storage, the event-log interface the actor uses, and the group-commit
//!   persister; the only module that imports sled.
//! - [`auth`]: token verification (HS256, pinned).
//! - [`accept`]: TCP accept with connection limits, the request-head deadline, the drain.
//! - [`api`]: the HTTP API (ingest, catalogue changes, queries, dead letters, jobs, health and
//!   metrics) and its OpenAPI document.
//! - [`catalogues`]: each tenant's catalogue versions and the changes that make them.
//! - [`backfill`]: background re-evaluation of stored users after a catalogue change.
//! - [`replay`]: rebuilding users from the event log (actor start, backfill, `replay` check).
//! - [`goals`]: the sweeper that closes goals past due and tells assigners how goals ended.
//! - [`teams`]: the mail worker that delivers members' contributions to their teams.
//! - [`boards`]: live rankings of open leaderboard periods and their watchers.
//! - [`leaderboard`]: closing and archiving periods, and driving the rank pushes.
//! - [`ranking`]: the order-statistic structure behind a leaderboard.
//! - [`standings`]: questions about standings, answered by one node's rankings or merged from
//!   every node's in a cluster.
//! - [`metrics`]: counters and histograms, rendered for Prometheus.
//! - [`analytics`]: each tenant's figures (rarity, activity, funnels, time to unlock, health),
//!   kept as changes become durable and rebuilt from the users' records; the export's rows.
//! - [`ownership`]: cluster mode's partitions on this node: joining, rebuilding a partition
//!   gained before serving it, letting go of one lost.
//! - [`remote`]: cluster mode's work for a user that crosses nodes: events forwarded to her
//!   owner, sockets attached to her actor there, and the owner's answers.
//! - [`server`]: `build(config)` (the one place the server is assembled), the router and
//!   `run(listener, shared, shutdown)`.
//! - [`shared`]: `Shared`, what the HTTP and WebSocket handlers share.
//! - [`demo`]: the embedded demo page and demo token endpoint.
//! - [`dashboard`]: the embedded operator dashboard over the analytics API.
//! - [`config`]: the one typed configuration.
//! - [`cluster`]: cluster mode on NATS JetStream, as far as it is built: partitions, leases,
//!   fenced partition logs.

pub mod accept;
pub mod analytics;
pub mod api;
pub mod auth;
pub mod backfill;
pub mod boards;
pub mod catalogues;
pub mod clock;
pub mod community;
pub mod cluster;
pub mod config;
pub mod core;
pub mod dashboard;
pub mod demo;
pub mod expiries;
pub mod goals;
pub mod leaderboard;
pub mod metrics;
pub mod ownership;
pub mod plan;
pub mod protocol;
pub mod ranking;
pub mod records;
pub mod remote;
pub mod replay;
pub mod server;
pub mod session;
pub mod shared;
pub mod standings;
pub mod store;
pub mod teams;
pub mod user;
pub mod watchdog;
pub mod webhooks;

/// Helpers for the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// A small deterministic random source for data-driven tests: each call returns a number
    /// below its argument (xorshift64, so a failing case is the same on every run).
    pub fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut s = seed;
        move |n| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        }
    }
}
