//! The live rankings of every open leaderboard period (rebuilt from sled at start, updated by
//! user actors once a score is durable) and the sockets watching them, which get `rank` and
//! `top` pushes on each tick.
//!
//! Who owns what: a user's score is part of the user's state (the actor computes it with the
//! rule core and writes it with the event that changed it); these rankings are an index over
//! those scores, kept by this process. Closing a period is the closer's (`leaderboard.rs`).

use crate::catalogues::Catalogues;
use crate::core::catalogue::BoardDef;
use crate::core::{Catalogue, Millis};
use crate::protocol::{self, Frame};
use crate::ranking::{Ranking, Standing};
use crate::store::{self, BoardEntry, BoardKey};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

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

/// Where a tick reads the standings it pushes to watchers: this process's rankings, or in
/// cluster mode a snapshot gathered from every node just before (`standings::Snapshot`).
pub trait View {
    /// The user's league, rank (None past the board's size) and score in an open period.
    fn find(&self, tenant: &str, def: &BoardDef, period: &str, user: &str) -> Option<(String, Option<usize>, f64)>;
    /// Standings from rank `from` (1-based) in one league, within the board's size, and how
    /// many the league has within it.
    fn top(&self, key: &BoardKey, size: Option<usize>, from: usize, n: usize) -> (usize, Vec<Row>);
}

impl View for Boards {
    fn find(&self, tenant: &str, def: &BoardDef, period: &str, user: &str) -> Option<(String, Option<usize>, f64)> {
        Boards::find(self, tenant, def, period, user)
    }

    fn top(&self, key: &BoardKey, size: Option<usize>, from: usize, n: usize) -> (usize, Vec<Row>) {
        Boards::top(self, key, size, from, n)
    }
}

/// One watch as a tick needs to know it: tenant, board, user, and the top N watched.
pub type Watched = (String, String, String, Option<usize>);

#[derive(Default)]
pub struct Boards {
    live: DashMap<BoardKey, Arc<Live>>,
    /// (connection, board) -> watch.
    watches: Mutex<HashMap<(u64, String), Watch>>,
}


fn row(rank: usize, s: &Standing) -> Row {
    Row::new(rank, s.user.to_string(), s.score)
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

    /// Puts in the rankings scores read from the store (a partition's users, once it is
    /// rebuilt in cluster mode); returns how many.
    pub fn load_entries(&self, entries: Vec<(BoardKey, String, BoardEntry)>) -> usize {
        let n = entries.len();
        for (key, user, e) in entries {
            self.set(key, &user, &e);
        }
        n
    }

    /// Takes out of every ranking the users `gone` names (the users of a partition this node
    /// let go of); a league left empty is forgotten.
    pub fn remove_where(&self, gone: impl Fn(&str, &str) -> bool) {
        self.live.retain(|key, live| {
            let mut r = live.ranking.lock().expect("ranking lock");
            let leaving: Vec<Arc<str>> = r.iter().filter(|s| gone(&key.tenant, &s.user)).map(|s| s.user).collect();
            for u in leaving {
                r.remove(&u);
            }
            !r.is_empty()
        });
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

    pub fn get(&self, key: &BoardKey) -> Option<Arc<Live>> {
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

    /// Periods whose end (plus `grace`) has passed: (tenant, board, period, end).
    pub fn due(&self, now: Millis, grace: Millis) -> Vec<(String, String, String, Millis)> {
        let mut out: Vec<(String, String, String, Millis)> = self
            .live
            .iter()
            .filter(|e| e.value().end.saturating_add(grace) <= now)
            .map(|e| (e.key().tenant.clone(), e.key().board.clone(), e.key().period.clone(), e.value().end))
            .collect();
        out.sort();
        out.dedup_by(|a, b| (&a.0, &a.1, &a.2) == (&b.0, &b.1, &b.2));
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

    /// Every watch held on this node's sockets.
    pub fn watched(&self) -> Vec<Watched> {
        let w = self.watches.lock().expect("watch lock");
        w.iter().filter(|(_, w)| w.tx.strong_count() > 0).map(|((_, board), w)| (w.tenant.clone(), board.clone(), w.user.clone(), w.top.as_ref().map(|t| t.0))).collect()
    }

    /// Pushes `rank` to watchers whose rank changed, and `top` to those whose top N changed,
    /// as `view` has them. Called on a timer, which is the throttle: at most one push of each
    /// kind per interval.
    pub fn tick(&self, catalogues: &Catalogues, now: Millis, view: &dyn View) {
        let mut watches = self.watches.lock().expect("watch lock");
        let mut cats: HashMap<String, Option<Arc<Catalogue>>> = HashMap::new();
        for ((_, board), w) in watches.iter_mut() {
            let Some(tx) = w.tx.upgrade() else { continue };
            let Some(cat) = cats.entry(w.tenant.clone()).or_insert_with(|| catalogues.current(&w.tenant)).clone() else { continue };
            let Some((def, _)) = cat.board(board) else { continue };
            let Some(span) = def.period.span(cat.settings.default_timezone, now) else { continue };
            let found = view.find(&w.tenant, def, &span.label, &w.user);
            let rank = found.as_ref().and_then(|f| f.1);
            if w.last_rank != Some(rank) {
                if let Some((_, Some(r), score)) = &found {
                    let total = view.top(&self.key(&w.tenant, def, &span.label, &found.as_ref().map(|f| f.0.clone()).unwrap_or_default()), def.size, 1, 0).0;
                    let _ = tx.try_send(protocol::rank(board, &span.label, *r, *score, total, w.last_rank.flatten()));
                }
                w.last_rank = Some(rank);
            }
            if let Some((n, last)) = &mut w.top {
                let segment = found.map(|f| f.0).unwrap_or_default();
                let key = self.key(&w.tenant, def, &span.label, &segment);
                let (_, rows) = view.top(&key, def.size, 1, *n);
                let now_top: Vec<(Arc<str>, f64)> = rows.iter().map(|r| (Arc::from(r.entity()), r.score)).collect();
                if now_top != *last {
                    let _ = tx.try_send(protocol::top(board, &span.label, &segment, &rows));
                    *last = now_top;
                }
            }
        }
    }

    /// Forgets the rankings of a period's leagues, once the period is closed.
    pub fn forget(&self, keys: &[BoardKey]) {
        for k in keys {
            self.live.remove(k);
        }
    }

    fn key(&self, tenant: &str, def: &BoardDef, period: &str, segment: &str) -> BoardKey {
        BoardKey { tenant: tenant.into(), board: def.id.to_string(), period: period.into(), segment: segment.into() }
    }
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
