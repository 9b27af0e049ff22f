//! The leaderboard closer: archives a period when it ends and awards its top ranks exactly
//! once, and drives the watchers' `rank` and `top` pushes (`boards.rs`) on the same tick.
//!
//! Closing is idempotent at every step: the archive rows are rewritten the same,
//! awards are made through the winners' actors and the core refuses a second award for the same
//! period, and the `closed` record is written last. A restart at any point finishes the close.

use crate::boards::Boards;
use crate::catalogues::Catalogues;
use crate::core::Millis;
use crate::metrics::Metrics;
use crate::ranking::Standing;
use crate::store::{self, Archived, BoardKey, ClosedPeriod, Store};
use crate::clock::now_ms;
use crate::user::{UserMsg, Users};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// What closing periods works with.
pub struct Closer {
    pub store: Store,
    pub catalogues: Arc<Catalogues>,
    pub boards: Arc<Boards>,
    pub users: Users,
    pub metrics: Arc<Metrics>,
}

impl Closer {

    /// Archives a period that has ended and awards its top ranks; returns how many awards were
    /// made. Safe to run again after a crash at any point.
    pub async fn close(&self, tenant: &str, board: &str, period: &str) -> Result<u64, String> {
        let boards = &self.boards;
        let segments = boards.segments(tenant, board, period);
        let keys: Vec<BoardKey> = segments.iter().map(|s| BoardKey { tenant: tenant.into(), board: board.into(), period: period.into(), segment: s.clone() }).collect();
        let store = &self.store;
        let already = store.closed(tenant, board, period).map_err(|e| e.to_string())?;
        let cat = self.catalogues.current(tenant);
        let def = cat.as_ref().and_then(|c| c.boards.iter().find(|b| &*b.id == board).cloned());
        let size = def.as_ref().and_then(|d| d.size).unwrap_or(usize::MAX);
        let mut end = 0;
        let mut standings: Vec<(BoardKey, Vec<Standing>)> = Vec::new();
        for k in &keys {
            if let Some(live) = boards.get(k) {
                end = live.end;
                standings.push((k.clone(), live.ranking.lock().expect("ranking lock").iter().collect()));
            }
        }
        let mut awarded = 0;
        if already.is_none() {
            // 1. The final standings, durable before anyone is told.
            let mut writes = Vec::new();
            for (k, rows) in &standings {
                for (i, s) in rows.iter().take(size).enumerate() {
                    writes.push(store::writes::archived(k, i as u32 + 1, &Archived { user: s.user.to_string(), score: s.score, reached: s.reached }));
                }
            }
            self.submit(writes).await?;
            // 2. The awards, each through the winner's actor, which refuses a second one.
            if let Some((_, top)) = def.as_ref().and_then(|d| d.award) {
                for (_, rows) in &standings {
                    for (i, s) in rows.iter().take(top.min(size)).enumerate() {
                        let (tx, rx) = oneshot::channel();
                        let msg = UserMsg::Award { board: board.into(), period: period.into(), rank: i + 1, reply: tx };
                        self.users.send(tenant, &s.user, msg).map_err(|e| e.to_string())?;
                        if rx.await.map_err(|_| "the user's actor stopped".to_string())?? {
                            awarded += 1;
                        }
                    }
                }
            }
        }
        // 3. The record that it is closed. The users' stored scores of this period stay in their
        // records until their next period replaces them; loading skips closed periods.
        if already.is_none() {
            let segments = standings.iter().map(|(k, rows)| (k.segment.clone(), rows.len().min(size) as u64)).collect();
            self.submit(vec![store::writes::closed(tenant, board, &ClosedPeriod { period: period.into(), end, closed_at: now_ms(), segments, awarded })]).await?;
        }
        boards.forget(&keys);
        if already.is_none() {
            tracing::info!(tenant, board, period, awarded, "leaderboard period closed");
            self.metrics.periods_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(awarded)
    }

    async fn submit(&self, writes: Vec<store::Write>) -> Result<(), String> {
        if writes.is_empty() {
            return Ok(());
        }
        self.store.write(writes).await.map_err(|e| e.to_string())
    }

    /// Closes periods as they end (`grace` after their end) and pushes rank changes to
    /// watchers, once per `every` (`--leaderboard-tick-ms`), until shutdown.
    pub async fn run(self, every: Duration, grace: Millis, stop: watch::Receiver<bool>) {
        crate::clock::every(every, stop, || async {
            let now = now_ms();
            for (tenant, board, period) in self.boards.due(now, grace) {
                if let Err(e) = self.close(&tenant, &board, &period).await {
                    tracing::warn!(tenant, board, period, error = %e, "closing a leaderboard period failed; retrying");
                }
            }
            self.boards.tick(&self.catalogues, now);
        })
        .await
    }
}
