//! The leaderboard closer: archives a period when it ends and awards its top ranks exactly
//! once, and drives the watchers' `rank` and `top` pushes (`boards.rs`) on the same tick.
//!
//! Closing is idempotent at every step: the archive rows are rewritten the same,
//! awards are made through the winners' actors and the core refuses a second award for the same
//! period, and the `closed` record is written last. A restart at any point finishes the close.
//! In cluster mode the standings are gathered from every node (`standings.rs`), a board's
//! periods are closed by the node serving the board's partition, its records go through that
//! partition's changelog, and each award through the winner's own node.

use crate::boards::Boards;
use crate::catalogues::Catalogues;
use crate::core::Millis;
use crate::metrics::Metrics;
use crate::ownership::Membership;
use crate::standings::{self, board_partition_key, Entry, Question, Reply, Snapshot};
use crate::store::{self, Archived, BoardKey, ClosedPeriod, EventLog, Store};
use crate::clock::now_ms;
use crate::user::{UserMsg, Users};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Standings read per question while archiving a period.
const PAGE: usize = 1000;

/// What closing periods works with.
pub struct Closer {
    /// Where the board's records are read: this node's sled (in cluster mode, complete for
    /// the partitions this node serves, the board's among them when it closes it).
    pub store: Store,
    /// Where they are written: the sled, or in cluster mode the board partition's changelog.
    pub log: Arc<dyn EventLog>,
    pub catalogues: Arc<Catalogues>,
    pub boards: Arc<Boards>,
    pub users: Users,
    pub metrics: Arc<Metrics>,
    /// In cluster mode: standings are every node's, and a winner's actor may be elsewhere.
    pub cluster: Option<Arc<Membership>>,
}

impl Closer {
    /// Asks about standings: this process's rankings, or every node's.
    async fn ask(&self, q: Question) -> Result<Reply, String> {
        match &self.cluster {
            None => Ok(standings::answer(&self.boards, &q, &|_, _| true)),
            Some(m) => m.gather(&q).await,
        }
    }

    /// A league's standings from the top, at most `size` of them.
    async fn standings(&self, key: &BoardKey, size: usize) -> Result<Vec<Entry>, String> {
        let mut out: Vec<Entry> = Vec::new();
        while out.len() < size {
            let q = Question::Top { key: key.clone(), after: out.last().cloned(), limit: PAGE.min(size - out.len()) };
            let Reply::Top { rows, .. } = self.ask(q).await? else { return Err("standings came back as another answer".into()) };
            if rows.is_empty() {
                break;
            }
            out.extend(rows);
        }
        Ok(out)
    }

    /// Cluster mode: the standings this node's watchers are to be pushed, gathered from every
    /// node (three questions per watched board: who the watchers are, what is ahead of them,
    /// and each watched league's top).
    async fn snapshot(&self, watched: Vec<crate::boards::Watched>, now: Millis) -> Result<Snapshot, String> {
        let mut snap = Snapshot::default();
        // (tenant, board) -> the watching users, with the top N each watches.
        type Watchers = Vec<(String, Option<usize>)>;
        let mut groups: BTreeMap<(String, String), Watchers> = BTreeMap::new();
        for (tenant, board, user, top) in watched {
            groups.entry((tenant, board)).or_default().push((user, top));
        }
        let other = || "standings came back as another answer".to_string();
        for ((tenant, board), watchers) in groups {
            let Some(cat) = self.catalogues.current(&tenant) else { continue };
            let Some((def, _)) = cat.board(&board) else { continue };
            let Some(span) = def.period.span(cat.settings.default_timezone, now) else { continue };
            let period = span.label;
            let users: BTreeSet<String> = watchers.iter().map(|w| w.0.clone()).collect();
            let q = Question::Find { tenant: tenant.clone(), board: board.clone(), period: period.clone(), users: users.into_iter().collect() };
            let Reply::Found(found) = self.ask(q).await? else { return Err(other()) };
            let most = watchers.iter().filter_map(|w| w.1).max().unwrap_or(0).min(crate::ranking::MAX_TOP);
            let mut leagues: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
            for (segment, e) in found {
                leagues.entry(segment).or_default().push(e);
            }
            // A watcher with no score yet is shown the top of the board's first league.
            if most > 0 {
                leagues.entry(String::new()).or_default();
            }
            for (segment, of) in leagues {
                let key = BoardKey { tenant: tenant.clone(), board: board.clone(), period: period.clone(), segment: segment.clone() };
                if !of.is_empty() {
                    let Reply::Ahead(ahead) = self.ask(Question::Ahead { key: key.clone(), of: of.clone() }).await? else { return Err(other()) };
                    for (e, n) in of.into_iter().zip(ahead) {
                        snap.found.insert((tenant.clone(), board.clone(), period.clone(), e.user), (segment.clone(), n + 1, e.score));
                    }
                }
                let Reply::Top { total, rows } = self.ask(Question::Top { key: key.clone(), after: None, limit: most }).await? else { return Err(other()) };
                snap.tops.insert(key, (total, rows));
            }
        }
        Ok(snap)
    }

    /// Gives a winner her award through her actor, wherever it runs; true when given now.
    async fn award(&self, tenant: &str, user: &str, board: &str, period: &str, rank: usize) -> Result<bool, String> {
        if let Some(m) = &self.cluster
            && !m.serves(tenant, user)
        {
            return m.award(tenant, user, board, period, rank).await;
        }
        let (tx, rx) = oneshot::channel();
        let msg = UserMsg::Award { board: board.into(), period: period.into(), rank, reply: tx };
        self.users.send(tenant, user, msg).map_err(|e| e.to_string())?;
        rx.await.map_err(|_| "the user's actor stopped".to_string())?
    }

    /// Archives a period that has ended and awards its top ranks; returns how many awards were
    /// made. Safe to run again after a crash at any point, and on another node (in cluster
    /// mode its records are in the board partition's changelog).
    pub async fn close(&self, tenant: &str, board: &str, period: &str, end: Millis) -> Result<u64, String> {
        let Reply::Segments(segments) = self.ask(Question::Segments { tenant: tenant.into(), board: board.into(), period: period.into() }).await? else {
            return Err("segments came back as another answer".into());
        };
        let keys: Vec<BoardKey> = segments.iter().map(|s| BoardKey { tenant: tenant.into(), board: board.into(), period: period.into(), segment: s.clone() }).collect();
        let already = self.store.closed(tenant, board, period).map_err(|e| e.to_string())?;
        let cat = self.catalogues.current(tenant);
        let def = cat.as_ref().and_then(|c| c.board(board).map(|(d, _)| d.clone()));
        let size = def.as_ref().and_then(|d| d.size).unwrap_or(usize::MAX);
        let mut awarded = 0;
        if already.is_none() {
            let mut standings: Vec<(BoardKey, Vec<Entry>)> = Vec::new();
            for k in &keys {
                standings.push((k.clone(), self.standings(k, size).await?));
            }
            // 1. The final standings, durable before anyone is told.
            let mut writes = Vec::new();
            for (k, rows) in &standings {
                for (i, s) in rows.iter().enumerate() {
                    writes.push(store::writes::archived(k, i as u32 + 1, &Archived { user: s.user.clone(), score: s.score, reached: s.reached }));
                }
            }
            self.submit(tenant, board, writes).await?;
            // 2. The awards, each through the winner's actor, which refuses a second one.
            if let Some((_, top)) = def.as_ref().and_then(|d| d.award) {
                for (_, rows) in &standings {
                    for (i, s) in rows.iter().take(top).enumerate() {
                        if self.award(tenant, &s.user, board, period, i + 1).await? {
                            awarded += 1;
                        }
                    }
                }
            }
            // 3. The record that it is closed. The users' stored scores of this period stay in
            // their records until their next period replaces them; loading skips closed periods.
            let segments = standings.iter().map(|(k, rows)| (k.segment.clone(), rows.len() as u64)).collect();
            self.submit(tenant, board, vec![store::writes::closed(tenant, board, &ClosedPeriod { period: period.into(), end, closed_at: now_ms(), segments, awarded })]).await?;
            tracing::info!(tenant, board, period, awarded, "leaderboard period closed");
            self.metrics.periods_closed.inc();
        }
        // Every node forgets the period's rankings (in cluster mode one that rebuilds a
        // partition later may take them in again from its users' records: the period is then
        // due again, found closed, and forgotten again).
        let forgotten = self.ask(Question::Forget { keys }).await;
        if let Err(e) = forgotten {
            tracing::debug!(tenant, board, period, error = %e, "not every node heard that a period closed; it is told again when it is due again");
        }
        Ok(awarded)
    }

    async fn submit(&self, tenant: &str, board: &str, writes: Vec<store::Write>) -> Result<(), String> {
        if writes.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.log.append(tenant, &board_partition_key(board), writes, Box::new(move |r| {
            let _ = tx.send(r);
        })).map_err(|e| e.to_string())?;
        rx.await.map_err(|_| "the store stopped".to_string())?
    }

    /// Closes periods as they end (`grace` after their end) and pushes rank changes to
    /// watchers, once per `every` (`--leaderboard-tick-ms`), until shutdown.
    pub async fn run(self, every: Duration, grace: Millis, stop: watch::Receiver<bool>) {
        crate::clock::every(every, stop, || async {
            let now = now_ms();
            // In cluster mode each board's periods are closed by the node serving its
            // partition, from the standings of every node.
            let due = match self.ask(Question::Due { now, grace }).await {
                Ok(Reply::Due(d)) => d,
                Ok(_) => vec![],
                Err(e) => {
                    tracing::debug!(error = %e, "which periods are due is not known this time");
                    vec![]
                }
            };
            for (tenant, board, period, end) in due {
                if let Some(m) = &self.cluster
                    && !m.serves(&tenant, &board_partition_key(&board))
                {
                    continue;
                }
                if let Err(e) = self.close(&tenant, &board, &period, end).await {
                    tracing::warn!(tenant, board, period, error = %e, "closing a leaderboard period failed; retrying");
                }
            }
            match &self.cluster {
                None => self.boards.tick(&self.catalogues, now, &*self.boards),
                Some(_) => {
                    let watched = self.boards.watched();
                    if !watched.is_empty() {
                        match self.snapshot(watched, now).await {
                            Ok(snap) => self.boards.tick(&self.catalogues, now, &snap),
                            Err(e) => tracing::debug!(error = %e, "the watched standings are not known this time"),
                        }
                    }
                }
            }
        })
        .await
    }
}
