//! Leaderboards in the server: the live rankings of every open period (rebuilt from sled at
//! start, updated by user actors once a score is durable), the closer that archives a period
//! when it ends and awards its top ranks exactly once, and the socket watchers that get `rank`
//! and `top` pushes.
//!
//! Who owns what: a user's score is part of the user's state (the actor computes it with the
//! rule core and writes it with the event that changed it); these rankings are an index over
//! those scores. Closing is idempotent at every step: the archive rows are rewritten the same,
//! awards are made through the winners' actors and the core refuses a second award for the same
//! period, and the `closed` record is written last. A restart at any point finishes the close.

use crate::core::catalogue::BoardDef;
use crate::core::{Catalogue, Millis};
use crate::protocol::{self, Frame};
use crate::ranking::{Ranking, Standing};
use crate::server::Shared;
use crate::store::{self, Archived, BoardEntry, BoardKey, ClosedPeriod};
use crate::clock::now_ms;
use crate::user::UserMsg;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The live ranking of one open period of one board (one league).
pub struct Live {
    pub end: Millis,
    pub ranking: Mutex<Ranking>,
}

/// One socket's interest in a board.
struct Watch {
    tenant: String,
    user: String,
    tx: mpsc::WeakSender<Frame>,
    /// The rank last pushed, to push only changes.
    last_rank: Option<Option<usize>>,
    /// Subscribed to the top N: N, and the standings last pushed.
    top: Option<(usize, Vec<(Arc<str>, f64)>)>,
}

pub use crate::ranking::{Row, MAX_TOP};

/// Watches a connection may hold.
pub const MAX_WATCHES: usize = 16;

#[derive(Default)]
pub struct Boards {
    live: DashMap<BoardKey, Arc<Live>>,
    /// (connection, board) -> watch.
    watches: Mutex<HashMap<(u64, String), Watch>>,
}


fn row(rank: usize, s: &Standing) -> Row {
    Row { rank, user_id: s.user.to_string(), score: s.score }
}

impl Boards {
    /// Rebuilds every open period's ranking from the stored scores, leaving out periods that
    /// were closed already. Blocking.
    pub fn load(&self, store: &store::Store) -> Result<usize, store::StoreError> {
        let mut closed: HashMap<(String, String, String), bool> = HashMap::new();
        let mut n = 0;
        for (key, user, e) in store.board_entries()? {
            let id = (key.tenant.clone(), key.board.clone(), key.period.clone());
            let is_closed = match closed.get(&id) {
                Some(&c) => c,
                None => {
                    let c = store.closed(&key.tenant, &key.board, &key.period)?.is_some();
                    closed.insert(id, c);
                    c
                }
            };
            if is_closed {
                continue;
            }
            n += 1;
            let live = self.live.entry(key).or_insert_with(|| Arc::new(Live { end: e.end, ranking: Mutex::new(Ranking::new()) })).clone();
            live.ranking.lock().expect("ranking lock").set(&user, e.score, e.reached);
        }
        Ok(n)
    }

    /// A durable score: the user's standing in that period's ranking.
    pub fn set(&self, key: BoardKey, user: &str, e: &BoardEntry) {
        let live = self.live.entry(key).or_insert_with(|| Arc::new(Live { end: e.end, ranking: Mutex::new(Ranking::new()) })).clone();
        live.ranking.lock().expect("ranking lock").set(user, e.score, e.reached);
    }

    pub fn remove(&self, key: &BoardKey, user: &str) {
        if let Some(live) = self.live.get(key) {
            live.ranking.lock().expect("ranking lock").remove(user);
        }
    }

    fn get(&self, key: &BoardKey) -> Option<Arc<Live>> {
        self.live.get(key).map(|l| l.clone())
    }

    /// The leagues of an open period that have anyone in them.
    pub fn segments(&self, tenant: &str, board: &str, period: &str) -> Vec<String> {
        let mut out: Vec<String> =
            self.live.iter().filter(|e| e.key().tenant == tenant && e.key().board == board && e.key().period == period).map(|e| e.key().segment.clone()).collect();
        out.sort();
        out
    }

    /// Standings from rank `from` (1-based) in one league of a period, within the board's size.
    pub fn top(&self, key: &BoardKey, size: Option<usize>, from: usize, n: usize) -> (usize, Vec<Row>) {
        let Some(live) = self.get(key) else { return (0, vec![]) };
        let r = live.ranking.lock().expect("ranking lock");
        let cap = size.unwrap_or(usize::MAX);
        let n = n.min(cap.saturating_sub(from.saturating_sub(1)));
        (r.len().min(cap), r.range(from, n).iter().map(|(k, s)| row(*k, s)).collect())
    }

    /// The user's league, rank (None past the board's size) and score in an open period.
    pub fn find(&self, tenant: &str, def: &BoardDef, period: &str, user: &str) -> Option<(String, Option<usize>, f64)> {
        for segment in self.segments(tenant, &def.id, period) {
            let key = BoardKey { tenant: tenant.into(), board: def.id.to_string(), period: period.into(), segment: segment.clone() };
            if let Some(live) = self.get(&key)
                && let Some((rank, s)) = live.ranking.lock().expect("ranking lock").get(user)
            {
                let rank = (rank <= def.size.unwrap_or(usize::MAX)).then_some(rank);
                return Some((segment, rank, s.score));
            }
        }
        None
    }

    /// Periods whose end (plus `grace`) has passed: (tenant, board, period).
    fn due(&self, now: Millis, grace: Millis) -> Vec<(String, String, String)> {
        let mut out: Vec<(String, String, String)> =
            self.live.iter().filter(|e| e.value().end.saturating_add(grace) <= now).map(|e| (e.key().tenant.clone(), e.key().board.clone(), e.key().period.clone())).collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn watch(&self, conn: u64, tenant: &str, user: &str, board: &str, top: Option<usize>, tx: mpsc::WeakSender<Frame>) -> Result<(), &'static str> {
        let mut w = self.watches.lock().expect("watch lock");
        let mine = w.keys().filter(|(c, _)| *c == conn).count();
        if mine >= MAX_WATCHES && !w.contains_key(&(conn, board.to_string())) {
            return Err("too_many_watches");
        }
        w.insert(
            (conn, board.to_string()),
            Watch { tenant: tenant.into(), user: user.into(), tx, last_rank: None, top: top.map(|n| (n.clamp(1, MAX_TOP), Vec::new())) },
        );
        Ok(())
    }

    pub fn unwatch(&self, conn: u64, board: &str) {
        self.watches.lock().expect("watch lock").remove(&(conn, board.to_string()));
    }

    pub fn unwatch_all(&self, conn: u64) {
        self.watches.lock().expect("watch lock").retain(|(c, _), _| *c != conn);
    }

    /// Pushes `rank` to watchers whose rank changed, and `top` to those whose top N changed.
    /// Called on a timer, which is the throttle: at most one push of each kind per interval.
    pub fn tick(&self, shared: &Shared, now: Millis) {
        let mut watches = self.watches.lock().expect("watch lock");
        let mut cats: HashMap<String, Option<Arc<Catalogue>>> = HashMap::new();
        for ((_, board), w) in watches.iter_mut() {
            let Some(tx) = w.tx.upgrade() else { continue };
            let Some(cat) = cats.entry(w.tenant.clone()).or_insert_with(|| shared.catalogue(&w.tenant)).clone() else { continue };
            let Some(def) = cat.boards.iter().find(|b| *b.id == **board) else { continue };
            let Some(span) = def.period.span(cat.settings.default_timezone, now) else { continue };
            let found = self.find(&w.tenant, def, &span.label, &w.user);
            let rank = found.as_ref().and_then(|f| f.1);
            if w.last_rank != Some(rank) {
                if let Some((_, Some(r), score)) = &found {
                    let total = self.top(&self.key(&w.tenant, def, &span.label, &found.as_ref().map(|f| f.0.clone()).unwrap_or_default()), def.size, 1, 0).0;
                    let _ = tx.try_send(protocol::rank(board, &span.label, *r, *score, total, w.last_rank.flatten()));
                }
                w.last_rank = Some(rank);
            }
            if let Some((n, last)) = &mut w.top {
                let segment = found.map(|f| f.0).unwrap_or_default();
                let key = self.key(&w.tenant, def, &span.label, &segment);
                let (_, rows) = self.top(&key, def.size, 1, *n);
                let now_top: Vec<(Arc<str>, f64)> = rows.iter().map(|r| (Arc::from(r.user_id.as_str()), r.score)).collect();
                if now_top != *last {
                    let _ = tx.try_send(protocol::top(board, &span.label, &segment, &rows));
                    *last = now_top;
                }
            }
        }
    }

    fn key(&self, tenant: &str, def: &BoardDef, period: &str, segment: &str) -> BoardKey {
        BoardKey { tenant: tenant.into(), board: def.id.to_string(), period: period.into(), segment: segment.into() }
    }
}

/// Archives a period that has ended and awards its top ranks; returns how many awards were
/// made. Safe to run again after a crash at any point.
pub async fn close(shared: &Arc<Shared>, tenant: &str, board: &str, period: &str) -> Result<u64, String> {
    let boards = &shared.boards;
    let segments = boards.segments(tenant, board, period);
    let keys: Vec<BoardKey> = segments.iter().map(|s| BoardKey { tenant: tenant.into(), board: board.into(), period: period.into(), segment: s.clone() }).collect();
    let store = &shared.store;
    let already = store.closed(tenant, board, period).map_err(|e| e.to_string())?;
    let cat = shared.catalogue(tenant);
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
        submit(shared, writes).await?;
        // 2. The awards, each through the winner's actor, which refuses a second one.
        if let Some((_, top)) = def.as_ref().and_then(|d| d.award) {
            for (_, rows) in &standings {
                for (i, s) in rows.iter().take(top.min(size)).enumerate() {
                    let (tx, rx) = oneshot::channel();
                    let msg = UserMsg::Award { board: board.into(), period: period.into(), rank: i + 1, reply: tx };
                    shared.registry.send(shared, tenant, &s.user, msg).map_err(|e| e.to_string())?;
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
        submit(shared, vec![store::writes::closed(tenant, board, &ClosedPeriod { period: period.into(), end, closed_at: now_ms(), segments, awarded })]).await?;
    }
    for k in &keys {
        boards.live.remove(k);
    }
    if already.is_none() {
        tracing::info!(tenant, board, period, awarded, "leaderboard period closed");
        shared.metrics.periods_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(awarded)
}

async fn submit(shared: &Shared, writes: Vec<store::Write>) -> Result<(), String> {
    if writes.is_empty() {
        return Ok(());
    }
    shared.store.write(writes).await.map_err(|e| e.to_string())
}

/// Closes periods as they end and pushes rank changes to watchers, once per
/// `--leaderboard-tick-ms`, until shutdown.
pub async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(shared.config.leaderboard_tick_ms.max(10));
    let grace = shared.config.leaderboard_close_grace_ms as Millis;
    crate::server::every(every, stop, || async {
        let now = now_ms();
        for (tenant, board, period) in shared.boards.due(now, grace) {
            if let Err(e) = close(&shared, &tenant, &board, &period).await {
                tracing::warn!(tenant, board, period, error = %e, "closing a leaderboard period failed; retrying");
            }
        }
        shared.boards.tick(&shared, now);
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_may_watch_sixteen_boards() {
        let boards = Boards::default();
        let (tx, _rx) = mpsc::channel(8);
        for i in 0..MAX_WATCHES {
            assert_eq!(boards.watch(1, "t", "u", &format!("b{i}"), None, tx.downgrade()), Ok(()));
        }
        assert_eq!(boards.watch(1, "t", "u", "b-extra", None, tx.downgrade()), Err("too_many_watches"));
        // Watching a board again replaces the watch; other connections have their own limit.
        assert_eq!(boards.watch(1, "t", "u", "b0", Some(3), tx.downgrade()), Ok(()));
        assert_eq!(boards.watch(2, "t", "u", "b-extra", None, tx.downgrade()), Ok(()));
        boards.unwatch_all(1);
        assert_eq!(boards.watch(1, "t", "u", "b-extra", None, tx.downgrade()), Ok(()));
    }
}
