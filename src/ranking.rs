//! The order-statistic structure behind one leaderboard: scores by user, kept in rank order so
//! an update and a rank query each cost O(log n) with small constants. Pure data, no IO.
//!
//! Layout: the entries in rank order are cut into blocks of at most `BLOCK` entries (a sorted
//! `Vec` each), with a Fenwick tree over the block lengths. A rank query finds the user's key
//! (hash map), the block (binary search over each block's last key), the place in the block
//! (binary search) and the entries before the block (Fenwick prefix sum). An update removes the
//! old key and inserts the new one the same way; inserting into a block moves at most `BLOCK`
//! entries, which is a short `memmove`. Structural changes (a block splits or empties) rebuild
//! the Fenwick tree in O(blocks), which happens at most once every `BLOCK / 2` updates.
//!
//! **Ties**: a higher score ranks first; equal scores rank by who reached the score first
//! (`reached`, the receive time of the event that set it), then by user id. Ranks are ordinal
//! (1, 2, 3, ...), never shared, so "the top 3" is always three users.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

/// The most entries a `top` subscription or query returns.
pub const MAX_TOP: usize = 100;

/// A standing as queries return it: a user's on a board of users, a team's on a board of
/// teams (docs/teams.md), so each row names one of the two.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Row {
    pub rank: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    pub score: f64,
}

impl Row {
    /// The row of entity `entity` (a user id, or a team's entity id).
    pub fn new(rank: usize, entity: String, score: f64) -> Row {
        match crate::core::catalogue::team_of(&entity) {
            Some(team) => Row { rank, user_id: None, team_id: Some(team.to_string()), score },
            None => Row { rank, user_id: Some(entity), team_id: None, score },
        }
    }

    /// The entity the row ranks, as rankings key it.
    pub fn entity(&self) -> String {
        match (&self.user_id, &self.team_id) {
            (Some(u), _) => u.clone(),
            (None, Some(t)) => crate::core::catalogue::team_entity(t),
            (None, None) => String::new(),
        }
    }
}

/// Entries per block at most. A block's keys then fill 2 KiB (half a page), so its binary
/// search and its insert touch little memory.
const BLOCK: usize = 128;

/// One standing: who, with what score, reached when.
#[derive(Clone, Debug, PartialEq)]
pub struct Standing {
    pub user: Arc<str>,
    pub score: f64,
    pub reached: i64,
}

/// The sort key without the user: (score, descending, as ordered bits; reached, ascending).
/// Sixteen bytes, compared as integers; the user id is read only on a full tie.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key(u64, i64);

impl Key {
    fn new(score: f64, reached: i64) -> Key {
        // IEEE bits made monotonic (negatives flipped), then inverted so higher scores sort first.
        let b = score.to_bits();
        let ordered = if b >> 63 == 1 { !b } else { b | (1 << 63) };
        Key(!ordered, reached)
    }

    fn score(self) -> f64 {
        let ordered = !self.0;
        f64::from_bits(if ordered >> 63 == 1 { ordered & !(1 << 63) } else { !ordered })
    }
}

#[derive(Clone, Debug, Default)]
struct Block {
    keys: Vec<Key>,
    users: Vec<Arc<str>>,
}

impl Block {
    fn find(&self, k: Key, user: &str) -> Result<usize, usize> {
        // A forward scan, not a binary search: the block is a few KiB in a row, which the
        // prefetcher streams, where a binary search waits on one cache miss per probe.
        let i = self.keys.iter().position(|x| *x >= k).unwrap_or(self.keys.len());
        let mut j = i;
        // Equal keys (same score, reached at the same millisecond) are ordered by user id.
        while j < self.keys.len() && self.keys[j] == k {
            match (*self.users[j]).cmp(user) {
                Ordering::Less => j += 1,
                Ordering::Equal => return Ok(j),
                Ordering::Greater => break,
            }
        }
        Err(j)
    }
}

#[derive(Default, Clone, Debug)]
pub struct Ranking {
    blocks: Vec<Block>,
    /// Each block's last key, side by side: the block search reads only these, which stay in
    /// cache where chasing every block's heap pointer would not. (The block's last user id is
    /// read only when keys tie.)
    lasts: Vec<Key>,
    /// Fenwick tree over the blocks' lengths, 1-based.
    fen: Vec<usize>,
    by_user: HashMap<Arc<str>, Key>,
}

impl Ranking {
    pub fn new() -> Ranking {
        Ranking::default()
    }

    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    /// Sets `user`'s score (replacing any earlier one). Returns the new 1-based rank.
    pub fn set(&mut self, user: &str, score: f64, reached: i64) -> usize {
        let key = Key::new(score, reached);
        // One hash lookup: the stored key is swapped in place, and the board's own copy of the
        // user id comes back from the block it leaves.
        let user: Arc<str> = match self.by_user.get_mut(user) {
            Some(slot) => {
                let old = std::mem::replace(slot, key);
                if old == key {
                    return self.rank(user).unwrap_or(0);
                }
                match self.locate(old, user) {
                    Some((b, i)) => {
                        let nb = self.block_for(key, user).min(self.blocks.len() - 1);
                        if nb == b {
                            return self.move_within_block(b, i, key, user);
                        }
                        // Start loading the destination block now, so that its cache misses
                        // overlap with the removal below instead of following it.
                        let dest = &self.blocks[nb];
                        std::hint::black_box((dest.keys.get(dest.keys.len() / 2), dest.users.get(dest.users.len() / 2)));
                        self.remove_at(b, i)
                    }
                    None => Arc::from(user),
                }
            }
            None => {
                let u: Arc<str> = Arc::from(user);
                self.by_user.insert(u.clone(), key);
                u
            }
        };
        self.insert_entry(key, user)
    }

    /// Removes `user`; true when they were on the board.
    pub fn remove(&mut self, user: &str) -> bool {
        match self.by_user.remove_entry(user) {
            Some((u, k)) => {
                self.remove_entry(k, &u);
                true
            }
            None => false,
        }
    }

    /// The user's 1-based rank and standing, if they are on the board.
    pub fn get(&self, user: &str) -> Option<(usize, Standing)> {
        let (u, &k) = self.by_user.get_key_value(user)?;
        let (b, i) = self.locate(k, u)?;
        Some((self.before(b) + i + 1, Standing { user: u.clone(), score: k.score(), reached: k.1 }))
    }

    pub fn rank(&self, user: &str) -> Option<usize> {
        let &k = self.by_user.get(user)?;
        let (b, i) = self.locate(k, user)?;
        Some(self.before(b) + i + 1)
    }

    /// Standings from 1-based rank `from`, at most `n` of them, in rank order.
    pub fn range(&self, from: usize, n: usize) -> Vec<(usize, Standing)> {
        let mut out = Vec::with_capacity(n.min(self.len()).min(1024));
        if n == 0 || from == 0 || from > self.len() {
            return out;
        }
        let (mut b, mut i) = self.select(from - 1);
        let mut rank = from;
        while out.len() < n && b < self.blocks.len() {
            let block = &self.blocks[b];
            if i < block.keys.len() {
                out.push((rank, Standing { user: block.users[i].clone(), score: block.keys[i].score(), reached: block.keys[i].1 }));
                rank += 1;
                i += 1;
            } else {
                b += 1;
                i = 0;
            }
        }
        out
    }

    /// How many standings rank ahead of (`score`, `reached`, `user`), whether or not that
    /// standing is on the board: what a standing elsewhere (another node's user) would have
    /// ahead of it here.
    pub fn ahead(&self, score: f64, reached: i64, user: &str) -> usize {
        let k = Key::new(score, reached);
        let b = self.block_for(k, user);
        match self.blocks.get(b) {
            Some(block) => self.before(b) + block.find(k, user).unwrap_or_else(|i| i),
            None => self.len(),
        }
    }

    /// The `n` standings just ahead of (`score`, `reached`, `user`) and the `m` just behind
    /// it, in rank order, leaving out that standing itself.
    pub fn around(&self, score: f64, reached: i64, user: &str, n: usize, m: usize) -> (Vec<Standing>, Vec<Standing>) {
        let at = self.ahead(score, reached, user);
        let before = self.range(at.saturating_sub(n) + 1, at.min(n)).into_iter().map(|(_, s)| s).collect();
        let mut from = at + 1;
        if self.by_user.get(user) == Some(&Key::new(score, reached)) {
            from += 1;
        }
        let after = self.range(from, m).into_iter().map(|(_, s)| s).collect();
        (before, after)
    }

    /// Every standing from 0-based position `from` on, in rank order.
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = Standing> + '_ {
        let (b, i) = if from < self.len() { self.select(from) } else { (self.blocks.len(), 0) };
        self.blocks[b..].iter().enumerate().flat_map(move |(j, block)| {
            let skip = if j == 0 { i } else { 0 };
            block.keys.iter().zip(&block.users).skip(skip).map(|(k, u)| Standing { user: u.clone(), score: k.score(), reached: k.1 })
        })
    }

    /// Every standing in rank order.
    pub fn iter(&self) -> impl Iterator<Item = Standing> + '_ {
        self.blocks
            .iter()
            .flat_map(|b| b.keys.iter().zip(&b.users).map(|(k, u)| Standing { user: u.clone(), score: k.score(), reached: k.1 }))
    }

    /// (block, index) of the entry with 0-based rank `k` (k < len).
    fn select(&self, mut k: usize) -> (usize, usize) {
        // Fenwick descent: the largest prefix of blocks whose total is <= k.
        let n = self.blocks.len();
        let mut pos = 0;
        let mut step = n.next_power_of_two();
        while step > 0 {
            if pos + step <= n && self.fen[pos + step] <= k {
                pos += step;
                k -= self.fen[pos];
            }
            step >>= 1;
        }
        (pos, k)
    }

    /// Entries in blocks before `b`.
    fn before(&self, b: usize) -> usize {
        let mut i = b;
        let mut sum = 0;
        while i > 0 {
            sum += self.fen[i];
            i &= i - 1;
        }
        sum
    }

    fn fen_add(&mut self, b: usize, delta: isize) {
        let mut i = b + 1;
        while i < self.fen.len() {
            self.fen[i] = self.fen[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Recomputes the Fenwick tree after blocks were added or removed: O(blocks), with no
    /// allocation when the block count did not grow.
    fn rebuild(&mut self) {
        let n = self.blocks.len();
        self.fen.clear();
        self.fen.resize(n + 1, 0);
        for (b, block) in self.blocks.iter().enumerate() {
            self.fen[b + 1] += block.keys.len();
            let parent = (b + 1) + ((b + 1) & (b + 1).wrapping_neg());
            if parent <= n {
                self.fen[parent] += self.fen[b + 1];
            }
        }
    }

    /// The block an entry belongs in: the first whose last entry is not before it.
    fn block_for(&self, k: Key, user: &str) -> usize {
        let blocks = &self.blocks;
        let mut b = self.lasts.partition_point(|lk| *lk < k);
        // Keys equal to a block's last: the user ids decide, and equal keys may span blocks.
        while b < self.lasts.len() && self.lasts[b] == k && blocks[b].users.last().is_some_and(|u| &**u < user) {
            b += 1;
        }
        b
    }

    fn locate(&self, k: Key, user: &str) -> Option<(usize, usize)> {
        let b = self.block_for(k, user);
        let i = self.blocks.get(b)?.find(k, user).ok()?;
        Some((b, i))
    }

    fn insert_entry(&mut self, k: Key, user: Arc<str>) -> usize {
        if self.blocks.is_empty() {
            self.blocks.push(Block { keys: vec![k], users: vec![user] });
            self.lasts.push(k);
            self.rebuild();
            return 1;
        }
        let b = self.block_for(k, &user).min(self.blocks.len() - 1);
        let i = self.blocks[b].find(k, &user).unwrap_or_else(|i| i);
        if i == self.blocks[b].keys.len() {
            self.lasts[b] = k;
        }
        self.blocks[b].keys.insert(i, k);
        self.blocks[b].users.insert(i, user);
        let rank = self.before(b) + i + 1;
        if self.blocks[b].keys.len() > BLOCK {
            let tail = Block { keys: self.blocks[b].keys.split_off(BLOCK / 2), users: self.blocks[b].users.split_off(BLOCK / 2) };
            self.blocks.insert(b + 1, tail);
            self.lasts.insert(b, self.blocks[b].keys[BLOCK / 2 - 1]);
            self.rebuild();
        } else {
            self.fen_add(b, 1);
        }
        rank
    }

    /// Moves the entry at (`b`, `i`) to its new place `new` in the same block: one rotate of
    /// the entries between the two places, and no block changes length.
    fn move_within_block(&mut self, b: usize, i: usize, new: Key, user: &str) -> usize {
        let block = &mut self.blocks[b];
        // The place among the block's entries, the old one still included.
        let j = block.find(new, user).unwrap_or_else(|j| j);
        let at = if j <= i {
            block.keys[j..=i].rotate_right(1);
            block.users[j..=i].rotate_right(1);
            j
        } else {
            block.keys[i..j].rotate_left(1);
            block.users[i..j].rotate_left(1);
            j - 1
        };
        block.keys[at] = new;
        self.lasts[b] = *block.keys.last().expect("the block holds this entry");
        self.before(b) + at + 1
    }

    fn remove_entry(&mut self, k: Key, user: &str) -> Option<Arc<str>> {
        let (b, i) = self.locate(k, user)?;
        Some(self.remove_at(b, i))
    }

    fn remove_at(&mut self, b: usize, i: usize) -> Arc<str> {
        self.blocks[b].keys.remove(i);
        let removed = self.blocks[b].users.remove(i);
        if self.blocks[b].keys.is_empty() {
            self.blocks.remove(b);
            self.lasts.remove(b);
            self.rebuild();
        } else {
            if i == self.blocks[b].keys.len() {
                self.lasts[b] = self.blocks[b].keys[i - 1];
            }
            self.fen_add(b, -1);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The model: sort everything, every time.
    fn model(m: &HashMap<String, (f64, i64)>) -> Vec<(String, f64)> {
        let mut v: Vec<(&String, f64, i64)> = m.iter().map(|(u, &(s, r))| (u, s, r)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(b.0)));
        v.into_iter().map(|(u, s, _)| (u.clone(), s)).collect()
    }

    #[test]
    fn keys_order_scores_high_to_low_and_give_them_back() {
        let scores = [-1e9, -2.5, -0.0, 0.0, 1.0, 2.5, 1e12];
        for w in scores.windows(2) {
            assert!(Key::new(w[1], 0) <= Key::new(w[0], 0), "{} before {}", w[1], w[0]);
        }
        for s in scores {
            assert_eq!(Key::new(s, 0).score().to_bits(), s.to_bits());
        }
    }

    #[test]
    fn ties_go_to_who_reached_the_score_first_then_to_the_user_id() {
        let mut r = Ranking::new();
        r.set("carol", 10.0, 5);
        r.set("bob", 10.0, 3);
        r.set("alice", 10.0, 5);
        r.set("dave", 12.0, 9);
        let order: Vec<String> = r.iter().map(|s| s.user.to_string()).collect();
        assert_eq!(order, ["dave", "bob", "alice", "carol"]);
        assert_eq!(r.rank("carol"), Some(4));
        assert_eq!(r.rank("nobody"), None);
    }

    #[test]
    fn a_move_inside_one_block_keeps_the_order_both_ways() {
        let mut r = Ranking::new();
        for (i, u) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            r.set(u, 10.0 * (5 - i) as f64, 0);
        }
        // e (10) passes c (30) and d; then a (50) drops below d.
        assert_eq!(r.set("e", 35.0, 1), 3);
        assert_eq!(r.set("a", 25.0, 2), 4);
        let order: Vec<String> = r.iter().map(|s| s.user.to_string()).collect();
        assert_eq!(order, ["b", "e", "c", "a", "d"]);
        assert_eq!((r.rank("b"), r.rank("d")), (Some(1), Some(5)));
        assert_eq!(r.range(4, 1)[0].1.score, 25.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against the sort-everything model, through enough updates to split and empty blocks.
        #[test]
        fn matches_a_sorted_model(ops in prop::collection::vec((0u16..700, 0u8..40, any::<bool>()), 1..3000)) {
            let mut r = Ranking::new();
            let mut m: HashMap<String, (f64, i64)> = HashMap::new();
            for (t, (u, score, del)) in ops.into_iter().enumerate() {
                let score = f64::from(score) - 10.0;
                let user = format!("u{u}");
                if del && u % 3 == 0 {
                    prop_assert_eq!(r.remove(&user), m.remove(&user).is_some());
                } else {
                    let rank = r.set(&user, score, t as i64 % 17);
                    m.insert(user.clone(), (score, t as i64 % 17));
                    // The model sorts everything, so the returned rank is checked now and then.
                    if t % 29 == 0 {
                        let want = model(&m);
                        prop_assert_eq!(rank, want.iter().position(|(x, _)| *x == user).unwrap() + 1);
                    }
                }
            }
            let want = model(&m);
            prop_assert_eq!(r.len(), want.len());
            let got: Vec<(String, f64)> = r.range(1, usize::MAX).into_iter().map(|(_, s)| (s.user.to_string(), s.score)).collect();
            prop_assert_eq!(&got, &want);
            for (i, (u, _)) in want.iter().enumerate() {
                prop_assert_eq!(r.rank(u), Some(i + 1));
            }
            for from in [0, 1, want.len() / 2, want.len().saturating_sub(1), want.len(), want.len() + 3] {
                let got: Vec<String> = r.iter_from(from).map(|s| s.user.to_string()).collect();
                let expect: Vec<String> = want.iter().skip(from).map(|(u, _)| u.clone()).collect();
                prop_assert_eq!(got, expect);
            }
            if want.len() > 5 {
                let mid = r.range(3, 4);
                prop_assert_eq!(mid.len(), 4);
                prop_assert_eq!(mid[0].0, 3);
                prop_assert_eq!(&*mid[0].1.user, want[2].0.as_str());
            }
        }

        /// What a standing from elsewhere has ahead of it and around it, against the model:
        /// on the board or not, tied or not.
        #[test]
        fn ahead_and_around_match_the_model(users in prop::collection::vec((0u16..300, 0u8..20, 0i64..5), 1..600), probe in (0u16..320, 0u8..22, 0i64..6), n in 0usize..6) {
            let mut r = Ranking::new();
            let mut m: HashMap<String, (f64, i64)> = HashMap::new();
            for (u, score, reached) in users {
                r.set(&format!("u{u}"), f64::from(score), reached);
                m.insert(format!("u{u}"), (f64::from(score), reached));
            }
            let (pu, ps, pr) = (format!("u{}", probe.0), f64::from(probe.1), probe.2);
            // The model's order with the probe put in (replacing the user's own standing).
            let mut all: Vec<(String, f64, i64)> = m.iter().filter(|(u, _)| **u != pu).map(|(u, &(s, t))| (u.clone(), s, t)).collect();
            all.push((pu.clone(), ps, pr));
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
            let at = all.iter().position(|x| x.0 == pu).unwrap();
            // A user on the board with another standing counts ahead wherever that one is.
            let own_ahead = m.get(&pu).is_some_and(|&(s, t)| all[..at].iter().all(|x| x.0 != pu) && (s > ps || (s == ps && t < pr)));
            prop_assert_eq!(r.ahead(ps, pr, &pu), at + usize::from(own_ahead));
            if !m.contains_key(&pu) || m[&pu] == (ps, pr) {
                let (before, after) = r.around(ps, pr, &pu, n, n);
                let want_before: Vec<&str> = all[at.saturating_sub(n)..at].iter().map(|x| x.0.as_str()).collect();
                let want_after: Vec<&str> = all[at + 1..].iter().take(n).map(|x| x.0.as_str()).collect();
                prop_assert_eq!(before.iter().map(|s| &*s.user).collect::<Vec<_>>(), want_before);
                prop_assert_eq!(after.iter().map(|s| &*s.user).collect::<Vec<_>>(), want_after);
            }
        }
    }
}
