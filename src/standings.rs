//! Questions about leaderboard standings, asked the same way on one node and across a
//! cluster, and the merge of the answers. On one node the answer is this process's rankings
//! (`boards.rs`). In cluster mode each node ranks only the users of the partitions it serves,
//! so a question goes to every node (`ownership.rs` carries it), each answers for its
//! partitions, and the answers are merged here once they cover every partition.
//!
//! Every question is one whose answer merges exactly: the first N of a league are among the
//! first N of each node's; what is ahead of a standing is the sum of what is ahead of it on
//! each node; the standings just ahead of it (and just behind) are among each node's. So a
//! rank gathered from three nodes is the rank one node holding everyone would give.
//!
//! Pure: no IO, no clock.

use crate::boards::{Boards, View};
use crate::core::catalogue::BoardDef;
use crate::core::Millis;
use crate::ranking::{Row, Standing};
use crate::store::BoardKey;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};

/// The key whose partition a board's own records are in (its closed periods): the node
/// serving that partition closes the board's periods and answers for its archive. User ids
/// never hold a NUL, so no user shares it.
pub fn board_partition_key(board: &str) -> String {
    format!("\0board\0{board}")
}

/// One standing as the questions carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub user: String,
    pub score: f64,
    pub reached: i64,
}

impl From<Standing> for Entry {
    fn from(s: Standing) -> Entry {
        Entry { user: s.user.to_string(), score: s.score, reached: s.reached }
    }
}

/// Rank order: the higher score first, then who reached it first, then the lower user id
/// (`ranking.rs`).
pub fn order(a: &Entry, b: &Entry) -> Ordering {
    b.score.total_cmp(&a.score).then(a.reached.cmp(&b.reached)).then_with(|| a.user.cmp(&b.user))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Question {
    /// The first `limit` standings of a league after `after` (from the top when `None`), and
    /// how many it has.
    Top { key: BoardKey, after: Option<Entry>, limit: usize },
    /// The `before` standings just ahead of `of` and the `after` just behind it.
    Around { key: BoardKey, of: Entry, before: usize, after: usize },
    /// How many standings of a league are ahead of each of `of`.
    Ahead { key: BoardKey, of: Vec<Entry> },
    /// Each of `users`' standing in a period, in whichever league they are.
    Find { tenant: String, board: String, period: String, users: Vec<String> },
    /// The leagues of a period that have anyone in them.
    Segments { tenant: String, board: String, period: String },
    /// The periods whose end, plus `grace`, is before `now`: (tenant, board, period, end).
    Due { now: Millis, grace: Millis },
    /// Forget these leagues' rankings: their period is closed.
    Forget { keys: Vec<BoardKey> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Top { total: usize, rows: Vec<Entry> },
    /// `ahead`: how many are ahead of the standing asked about, counted with the neighbours.
    Around { ahead: usize, before: Vec<Entry>, after: Vec<Entry> },
    Ahead(Vec<usize>),
    /// (segment, standing) of each user found.
    Found(Vec<(String, Entry)>),
    Segments(Vec<String>),
    Due(Vec<(String, String, String, Millis)>),
    Forgotten,
}

/// One node's answer: the partitions it answered for and what their users hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub partitions: Vec<u16>,
    pub reply: Reply,
}

/// Answers `q` from this process's rankings, counting only users that `keep` says this node
/// answers for (all of them on one node; in a cluster, those of the partitions it serves, as
/// a ranking may still hold a partition's users for a moment after letting it go).
pub fn answer(boards: &Boards, q: &Question, keep: &dyn Fn(&str, &str) -> bool) -> Reply {
    match q {
        Question::Top { key, after, limit } => match boards.get(key) {
            None => Reply::Top { total: 0, rows: vec![] },
            Some(live) => {
                let r = live.ranking.lock().expect("ranking lock");
                let k = |s: &Standing| keep(&key.tenant, &s.user);
                // Users this node no longer answers for are skipped before the limit, so they
                // never take the place of one it does.
                let from = match after {
                    None => 0,
                    Some(e) => r.ahead(e.score, e.reached, &e.user) + usize::from(r.get(&e.user).is_some_and(|(_, s)| s.score == e.score && s.reached == e.reached)),
                };
                let rows = r.iter_from(from).filter(k).take(*limit).map(Entry::from).collect();
                Reply::Top { total: r.len(), rows }
            }
        },
        Question::Around { key, of, before, after } => match boards.get(key) {
            None => Reply::Around { ahead: 0, before: vec![], after: vec![] },
            Some(live) => {
                let r = live.ranking.lock().expect("ranking lock");
                let k = |s: &Standing| keep(&key.tenant, &s.user) && *s.user != *of.user;
                let at = r.ahead(of.score, of.reached, &of.user);
                // The standings just ahead, skipping users this node does not answer for: a
                // window that grows until it holds enough of the others or reaches the top.
                let mut window = *before;
                let b = loop {
                    let start = at.saturating_sub(window);
                    let rows: Vec<Standing> = r.iter_from(start).take(at - start).filter(k).collect();
                    if rows.len() >= *before || start == 0 {
                        break rows[rows.len().saturating_sub(*before)..].to_vec();
                    }
                    window = window.saturating_mul(2).max(1);
                };
                let a = r.iter_from(at).filter(k).take(*after).map(Entry::from).collect();
                Reply::Around { ahead: at, before: b.into_iter().map(Entry::from).collect(), after: a }
            }
        },
        Question::Ahead { key, of } => match boards.get(key) {
            None => Reply::Ahead(vec![0; of.len()]),
            Some(live) => {
                let r = live.ranking.lock().expect("ranking lock");
                Reply::Ahead(of.iter().map(|e| r.ahead(e.score, e.reached, &e.user)).collect())
            }
        },
        Question::Find { tenant, board, period, users } => {
            let segments = boards.segments(tenant, board, period);
            let mut found = Vec::new();
            for user in users.iter().filter(|u| keep(tenant, u)) {
                for segment in &segments {
                    let key = BoardKey { tenant: tenant.clone(), board: board.clone(), period: period.clone(), segment: segment.clone() };
                    if let Some(live) = boards.get(&key)
                        && let Some((_, s)) = live.ranking.lock().expect("ranking lock").get(user)
                    {
                        found.push((segment.clone(), Entry::from(s)));
                        break;
                    }
                }
            }
            Reply::Found(found)
        }
        Question::Segments { tenant, board, period } => Reply::Segments(boards.segments(tenant, board, period)),
        Question::Due { now, grace } => Reply::Due(boards.due(*now, *grace)),
        Question::Forget { keys } => {
            boards.forget(keys);
            Reply::Forgotten
        }
    }
}

/// The standings a tick pushes to the watchers of this node's sockets in cluster mode,
/// gathered from every node just before: each watching user's league, rank and score, and each
/// watched league's size and top.
/// Who stands where: (tenant, board, period, user).
pub type Placing = (String, String, String, String);

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Placing -> (league, rank on the whole league, score).
    pub found: HashMap<Placing, (String, usize, f64)>,
    /// League -> (how many it has, its first standings).
    pub tops: HashMap<BoardKey, (usize, Vec<Entry>)>,
}

impl View for Snapshot {
    fn find(&self, tenant: &str, def: &BoardDef, period: &str, user: &str) -> Option<(String, Option<usize>, f64)> {
        let (segment, rank, score) = self.found.get(&(tenant.to_string(), def.id.to_string(), period.to_string(), user.to_string()))?;
        Some((segment.clone(), (*rank <= def.size.unwrap_or(usize::MAX)).then_some(*rank), *score))
    }

    fn top(&self, key: &BoardKey, size: Option<usize>, from: usize, n: usize) -> (usize, Vec<Row>) {
        let Some((total, rows)) = self.tops.get(key) else { return (0, vec![]) };
        let cap = size.unwrap_or(usize::MAX);
        let n = n.min(cap.saturating_sub(from.saturating_sub(1)));
        let rows = rows.iter().enumerate().skip(from.saturating_sub(1)).take(n).map(|(i, e)| Row::new(i + 1, e.user.clone(), e.score)).collect();
        ((*total).min(cap), rows)
    }
}

/// Why answers could not be merged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("{0} of the leaderboard's partitions are between nodes at the moment; ask again shortly")]
    Uncovered(usize),
    #[error("a node's answer does not fit the question")]
    Mismatch,
}

/// Merges the answers to `q` of nodes that between them answered for all `partitions`, each
/// partition counted once (the first answer naming it; a node that let it go a moment ago
/// may still name it). `partition_of` gives a user's partition.
pub fn merge(q: &Question, answers: Vec<Answer>, partitions: u16, partition_of: &dyn Fn(&str, &str) -> u16) -> Result<Reply, MergeError> {
    let mut claimed: HashSet<u16> = HashSet::new();
    let mut parts = Vec::new();
    for a in answers {
        let mine: HashSet<u16> = a.partitions.iter().copied().filter(|p| claimed.insert(*p)).collect();
        parts.push((mine, a.reply));
    }
    let uncovered = (0..partitions).filter(|p| !claimed.contains(p)).count();
    if uncovered > 0 {
        return Err(MergeError::Uncovered(uncovered));
    }
    let tenant = match q {
        Question::Top { key, .. } | Question::Around { key, .. } | Question::Ahead { key, .. } => key.tenant.as_str(),
        Question::Find { tenant, .. } | Question::Segments { tenant, .. } => tenant.as_str(),
        Question::Due { .. } | Question::Forget { .. } => "",
    };
    // A standing counts in the answer of the node that answered for its partition.
    let rows = |mine: &HashSet<u16>, v: Vec<Entry>| v.into_iter().filter(|e| mine.contains(&partition_of(tenant, &e.user))).collect::<Vec<_>>();
    match q {
        Question::Top { limit, .. } => {
            let (mut total, mut all) = (0, Vec::new());
            for (mine, r) in parts {
                let Reply::Top { total: t, rows: v } = r else { return Err(MergeError::Mismatch) };
                total += t;
                all.extend(rows(&mine, v));
            }
            all.sort_by(order);
            all.truncate(*limit);
            Ok(Reply::Top { total, rows: all })
        }
        Question::Around { before, after, .. } => {
            let (mut ahead, mut b_all, mut a_all) = (0, Vec::new(), Vec::new());
            for (mine, r) in parts {
                let Reply::Around { ahead: n, before: b, after: a } = r else { return Err(MergeError::Mismatch) };
                ahead += n;
                b_all.extend(rows(&mine, b));
                a_all.extend(rows(&mine, a));
            }
            b_all.sort_by(order);
            a_all.sort_by(order);
            let b_all = b_all.split_off(b_all.len().saturating_sub(*before));
            a_all.truncate(*after);
            Ok(Reply::Around { ahead, before: b_all, after: a_all })
        }
        Question::Ahead { of, .. } => {
            let mut sums = vec![0; of.len()];
            for (_, r) in parts {
                let Reply::Ahead(v) = r else { return Err(MergeError::Mismatch) };
                if v.len() != sums.len() {
                    return Err(MergeError::Mismatch);
                }
                sums.iter_mut().zip(v).for_each(|(s, n)| *s += n);
            }
            Ok(Reply::Ahead(sums))
        }
        Question::Find { users, .. } => {
            let mut found = Vec::new();
            for (mine, r) in parts {
                let Reply::Found(v) = r else { return Err(MergeError::Mismatch) };
                found.extend(v.into_iter().filter(|(_, e)| mine.contains(&partition_of(tenant, &e.user))));
            }
            // In the order asked.
            let at = |u: &str| users.iter().position(|x| x == u).unwrap_or(usize::MAX);
            found.sort_by_key(|(_, e)| at(&e.user));
            found.dedup_by(|a, b| a.1.user == b.1.user);
            Ok(Reply::Found(found))
        }
        Question::Segments { .. } => {
            let mut all = BTreeSet::new();
            for (_, r) in parts {
                let Reply::Segments(v) = r else { return Err(MergeError::Mismatch) };
                all.extend(v);
            }
            Ok(Reply::Segments(all.into_iter().collect()))
        }
        Question::Due { .. } => {
            let mut all = BTreeSet::new();
            for (_, r) in parts {
                let Reply::Due(v) = r else { return Err(MergeError::Mismatch) };
                all.extend(v);
            }
            let mut due: Vec<_> = all.into_iter().collect();
            due.dedup_by(|a, b| (&a.0, &a.1, &a.2) == (&b.0, &b.1, &b.2));
            Ok(Reply::Due(due))
        }
        Question::Forget { .. } => Ok(Reply::Forgotten),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BoardEntry;

    fn key() -> BoardKey {
        BoardKey { tenant: "t".into(), board: "b".into(), period: "all".into(), segment: String::new() }
    }

    /// A user's partition in these tests: the number in her id, modulo 4.
    fn part(_: &str, u: &str) -> u16 {
        u.trim_start_matches('u').parse::<u16>().unwrap() % 4
    }

    /// One node's boards, holding the users of `parts` among `scores`.
    fn node(scores: &[(u16, f64, i64)], parts: &[u16]) -> Boards {
        let b = Boards::default();
        for &(u, score, reached) in scores.iter().filter(|(u, _, _)| parts.contains(&(u % 4))) {
            b.set(key(), &format!("u{u}"), &BoardEntry { score, reached, end: i64::MAX });
        }
        b
    }

    /// Asks the whole board (one node) and the same users split over nodes, and compares.
    fn both(scores: &[(u16, f64, i64)], split: &[&[u16]], q: Question) -> (Reply, Reply) {
        let whole = answer(&node(scores, &[0, 1, 2, 3]), &q, &|_, _| true);
        let answers = split.iter().map(|parts| Answer { partitions: parts.to_vec(), reply: answer(&node(scores, parts), &q, &|_, _| true) }).collect();
        (whole, merge(&q, answers, 4, &part).unwrap())
    }

    fn scores() -> Vec<(u16, f64, i64)> {
        // Ties on score, and on score and time, across nodes.
        (0..40).map(|u| (u, f64::from(u % 7), i64::from(u % 3))).collect()
    }

    #[test]
    fn the_top_of_a_league_split_over_nodes_is_the_top_one_node_would_give() {
        for limit in [1, 3, 10, 40, 100] {
            let (whole, merged) = both(&scores(), &[&[0, 2], &[1], &[3]], Question::Top { key: key(), after: None, limit });
            assert_eq!(merged, whole, "limit {limit}");
        }
    }

    #[test]
    fn pages_after_a_standing_walk_the_whole_league_once_in_order() {
        let all = scores();
        let (Reply::Top { rows: want, .. }, _) = both(&all, &[&[0, 1, 2, 3]], Question::Top { key: key(), after: None, limit: 100 }) else { panic!() };
        let mut after = None;
        let mut got = Vec::new();
        loop {
            let (whole, merged) = both(&all, &[&[1, 3], &[0], &[2]], Question::Top { key: key(), after: after.clone(), limit: 7 });
            assert_eq!(merged, whole);
            let Reply::Top { rows, .. } = merged else { panic!() };
            if rows.is_empty() {
                break;
            }
            after = rows.last().cloned();
            got.extend(rows);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn users_a_node_still_holds_but_no_longer_answers_for_never_take_a_place() {
        // Node B answers for partitions 2 and 3 but still ranks partition 1's users (it let
        // the partition go a moment ago): pages and neighbours merged are still the whole's.
        let all = scores();
        let whole = node(&all, &[0, 1, 2, 3]);
        let (a, b) = (node(&all, &[0, 1]), node(&all, &[1, 2, 3]));
        let keep_b = |_: &str, u: &str| part("", u) != 1;
        let ask = |q: &Question| {
            let answers = vec![Answer { partitions: vec![0, 1], reply: answer(&a, q, &|_, _| true) }, Answer { partitions: vec![2, 3], reply: answer(&b, q, &keep_b) }];
            merge(q, answers, 4, &part).unwrap()
        };
        let mut after = None;
        loop {
            let q = Question::Top { key: key(), after: after.clone(), limit: 5 };
            let (Reply::Top { rows: got, .. }, Reply::Top { rows: want, .. }) = (ask(&q), answer(&whole, &q, &|_, _| true)) else { panic!() };
            assert_eq!(got, want);
            if got.is_empty() {
                break;
            }
            after = got.last().cloned();
        }
        for u in [3u16, 9, 22] {
            let e = Entry { user: format!("u{u}"), score: f64::from(u % 7), reached: i64::from(u % 3) };
            let q = Question::Around { key: key(), of: e, before: 3, after: 3 };
            let (Reply::Around { before: gb, after: ga, .. }, Reply::Around { before: wb, after: wa, .. }) = (ask(&q), answer(&whole, &q, &|_, _| true)) else { panic!() };
            assert_eq!((gb, ga), (wb, wa), "around u{u}");
        }
    }

    #[test]
    fn the_neighbours_and_the_count_ahead_merge_exactly() {
        for of in [(5u16, 5.0, 2i64), (13, 6.0, 1), (0, 0.0, 0), (99, 3.0, 1)] {
            let e = Entry { user: format!("u{}", of.0), score: of.1, reached: of.2 };
            let (whole, merged) = both(&scores(), &[&[0], &[1, 2, 3]], Question::Ahead { key: key(), of: vec![e.clone()] });
            assert_eq!(merged, whole);
            let q = Question::Around { key: key(), of: e, before: 3, after: 4 };
            let (whole, merged) = both(&scores(), &[&[3], &[2], &[1, 0]], q);
            assert_eq!(merged, whole);
        }
    }

    #[test]
    fn users_are_found_on_whichever_node_holds_them_in_the_order_asked() {
        let users: Vec<String> = ["u7", "u2", "u99", "u13"].map(String::from).to_vec();
        let q = Question::Find { tenant: "t".into(), board: "b".into(), period: "all".into(), users };
        let (whole, merged) = both(&scores(), &[&[0, 1], &[2, 3]], q);
        assert_eq!(merged, whole);
        let Reply::Found(f) = merged else { panic!() };
        assert_eq!(f.iter().map(|(_, e)| e.user.as_str()).collect::<Vec<_>>(), ["u7", "u2", "u13"]);
    }

    #[test]
    fn a_partition_nobody_answered_for_is_an_error_and_one_named_twice_counts_once() {
        let q = Question::Top { key: key(), after: None, limit: 100 };
        let a = |parts: &[u16]| Answer { partitions: parts.to_vec(), reply: answer(&node(&scores(), parts), &q, &|_, _| true) };
        assert_eq!(merge(&q, vec![a(&[0, 1]), a(&[2])], 4, &part), Err(MergeError::Uncovered(1)));
        // A node still holding partition 1 after letting it go: its rows of 1 are not counted.
        let stale = Answer { partitions: vec![2, 3], reply: answer(&node(&scores(), &[1, 2, 3]), &q, &|_, _| true) };
        let Ok(Reply::Top { rows, .. }) = merge(&q, vec![a(&[0, 1]), stale], 4, &part) else { panic!() };
        assert_eq!(rows.len(), 40);
        let users: HashSet<&str> = rows.iter().map(|e| e.user.as_str()).collect();
        assert_eq!(users.len(), 40);
    }
}
