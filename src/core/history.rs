//! The user's recent history as rules read it: the count or sum a time-window requirement
//! reaches, and whether a pattern holds over the newest actions. Both read the last-N action
//! cache (the rings in `UserState`) and change nothing.
//!
//! These reads are shared by the engine, which decides awards with them, and by `explain`,
//! which reports progress with them; they live below both so that explaining a badge does not
//! need the engine.

use super::catalogue::{table_value, RecentCond, RecentRing, WindowReq};
use super::state::{Action, UserState};
use super::value::{Millis, Value};

/// The count or sum a window requirement reaches in `[end - within, end]`.
pub(crate) fn window_total(state: &UserState, end: Millis, within: Millis, r: &WindowReq) -> f64 {
    let mut total = 0.0;
    for (ring, pred, sum) in &r.per_type {
        for a in state.rings[*ring].items.iter().rev() {
            if a.at > end {
                continue;
            }
            if a.at < end - within {
                break;
            }
            if pred.matches(&a.vals) {
                total += match sum {
                    Some(p) => a.vals[*p].as_f64().unwrap_or(0.0),
                    None => 1.0,
                };
            }
        }
    }
    total
}

/// Whether a window requirement reaches its target: always the same answer as
/// `window_total(..) >= r.target`, found sooner where it can be.
///
/// A count adds 0 or 1 per cached action, so the answer is known as soon as the count reaches
/// the target, or as soon as the actions not yet read could no longer make up the difference.
/// This matters because a window spans up to `cache_size` actions per event type (500 in the
/// demo), and every unowned window badge was read in full on every event: that scan was the
/// largest single item of the server's profile at saturation (`window_total`, 7.3% of samples;
/// bench/README.md, fix 18). Counts are whole numbers, so stopping early cannot change a
/// rounding. A sum is read in full, in the same order as `window_total`, because a summed field
/// may be negative, so a partial sum says nothing about the whole.
pub(crate) fn window_reaches(state: &UserState, end: Millis, within: Millis, r: &WindowReq) -> bool {
    if !r.counts() {
        return window_total(state, end, within, r) >= r.target;
    }
    // Actions not yet read, an upper bound on what the count can still gain.
    let mut unread: usize = r.per_type.iter().map(|(ring, _, _)| state.rings[*ring].items.len()).sum();
    if (unread as f64) < r.target {
        return false;
    }
    let mut total = 0.0;
    for (ring, pred, _) in &r.per_type {
        let items = &state.rings[*ring].items;
        let mut left_here = items.len();
        for a in items.iter().rev() {
            left_here -= 1;
            unread -= 1;
            if a.at > end {
                continue;
            }
            if a.at < end - within {
                break;
            }
            if pred.matches(&a.vals) {
                total += 1.0;
                if total >= r.target {
                    return true;
                }
            } else if total + (unread as f64) < r.target {
                return false;
            }
        }
        // The rest of this ring is older than the window: it adds nothing.
        unread -= left_here;
        if total + (unread as f64) < r.target {
            return false;
        }
    }
    total >= r.target
}

/// Evaluates a pattern over the newest cached actions in one pass, stopping at the first item
/// that rules the pattern out.
pub(crate) fn recent(state: &UserState, r: &RecentCond, runs: Option<&Runs>) -> bool {
    if r.rings.len() == 1 {
        let ring = &r.rings[0];
        // "All in the same exercise" fails unless the newest `last` actions share one key. How
        // many newest actions share the newest one's key is worked out once per event and
        // shared by every pattern on that ring, so most patterns end here.
        if let (true, Some(pos), Some(runs)) = (r.same, ring.key_pos, runs) {
            let items = &state.rings[ring.ring].items;
            let need = r.last.min(items.len());
            if need >= 2 && runs.same_run(items, ring.ring, pos, need) < need {
                return false;
            }
        }
        recent_over(r, state.rings[ring.ring].items.iter().rev().take(r.last).map(|a| (ring, a)))
    } else {
        recent_over(r, newest(state, r).into_iter())
    }
}

/// Per event: for each (ring, key position) asked so far, how many of the newest actions share
/// the newest one's key, and up to what count that was checked.
#[derive(Default)]
pub(crate) struct Runs {
    slots: [std::cell::Cell<Option<(usize, usize, usize, usize)>>; 4],
}

impl Runs {
    /// How many of the newest actions share the newest one's key at `pos`, counting at most
    /// `cap` of them.
    fn same_run(&self, items: &std::collections::VecDeque<Action>, ring: usize, pos: usize, cap: usize) -> usize {
        let mut free = None;
        for slot in &self.slots {
            match slot.get() {
                Some((rg, p, run, upto)) if rg == ring && p == pos => {
                    // A run shorter than what was checked is exact; otherwise it may go on.
                    if run < upto || cap <= upto {
                        return run.min(cap);
                    }
                    free = Some(slot);
                    break;
                }
                None if free.is_none() => free = Some(slot),
                _ => {}
            }
        }
        let mut it = items.iter().rev().take(cap);
        let run = match it.next() {
            Some(first) => 1 + it.take_while(|a| a.vals[pos] == first.vals[pos]).count(),
            None => 0,
        };
        if let Some(slot) = free {
            slot.set(Some((ring, pos, run, cap)));
        }
        run
    }
}

/// Where a pattern stands, every requirement counted over the same actions `recent` reads:
/// what an explanation shows. `holds` always answers as `recent` does (tested below), but this
/// reads every action instead of stopping at the first that rules the pattern out.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Tally {
    /// Actions counted: with `same`, those up to the first of another key; with `in_key`,
    /// those of the newest one's key.
    pub n: usize,
    /// With `same`: no action of another key among the newest `last`.
    pub same: bool,
    /// Of the counted actions, how many match `all`.
    pub all: usize,
    /// For each `newest` position: whether the action there matches.
    pub newest: Vec<bool>,
    pub hits: usize,
    pub ratio_hits: usize,
    pub sum: f64,
    /// The limit the sum must stay within: the per-item limit times `n`.
    pub limit: f64,
}

impl Tally {
    pub(crate) fn holds(&self, r: &RecentCond) -> bool {
        self.n >= r.min_items
            && self.same
            && (!r.all || self.all == self.n)
            && self.newest.iter().all(|&x| x)
            && r.at_least.is_none_or(|w| self.hits >= w)
            && r.ratio.is_none_or(|q| self.n > 0 && self.ratio_hits as f64 >= q * self.n as f64)
            && (r.sum_at_most.is_none() || self.sum <= self.limit)
    }
}

/// The newest `last` actions of a pattern's rings, newest first (by occurrence, then arrival),
/// each with the ring it came from: what both `recent` and `recent_tally` read.
fn newest<'a>(state: &'a UserState, r: &'a RecentCond) -> Vec<(&'a RecentRing, &'a Action)> {
    let mut items: Vec<(&RecentRing, &Action)> = r.rings.iter().flat_map(|ring| state.rings[ring.ring].items.iter().rev().take(r.last).map(move |a| (ring, a))).collect();
    items.sort_by(|x, y| (y.1.at, y.1.seq).cmp(&(x.1.at, x.1.seq)));
    items.truncate(r.last);
    items
}

pub(crate) fn recent_tally(state: &UserState, r: &RecentCond) -> Tally {
    let items = newest(state, r);
    let mut t = Tally { same: true, newest: vec![false; r.newest], ..Tally::default() };
    let mut key: Option<&Value> = None;
    for (ring, a) in items {
        let k = ring.key_pos.map(|p| &a.vals[p]);
        if r.same || r.in_key {
            match key {
                None => key = k,
                Some(want) if Some(want) != k => {
                    if r.same {
                        t.same = false;
                        break;
                    }
                    continue;
                }
                _ => {}
            }
        }
        if ring.all.matches(&a.vals) {
            t.all += 1;
        }
        if t.n < r.newest {
            t.newest[t.n] = ring.newest[t.n].matches(&a.vals);
        }
        if ring.at_least.matches(&a.vals) {
            t.hits += 1;
        }
        if ring.ratio.matches(&a.vals) {
            t.ratio_hits += 1;
        }
        if let Some(p) = ring.sum_pos {
            t.sum += a.vals[p].as_f64().unwrap_or(0.0);
        }
        t.n += 1;
    }
    t.limit = r.sum_at_most.as_ref().map_or(0.0, |l| table_value(l, key) * t.n as f64);
    t
}

fn recent_over<'a>(r: &RecentCond, items: impl Iterator<Item = (&'a RecentRing, &'a Action)>) -> bool {
    let mut key: Option<&Value> = None;
    let (mut n, mut hits, mut ratio_hits, mut sum) = (0usize, 0usize, 0usize, 0.0);
    for (ring, a) in items {
        let k = ring.key_pos.map(|p| &a.vals[p]);
        if r.same || r.in_key {
            match key {
                None => key = k,
                Some(want) if Some(want) != k => {
                    if r.same {
                        return false;
                    }
                    continue;
                }
                _ => {}
            }
        }
        if r.all && !ring.all.matches(&a.vals) {
            return false;
        }
        if n < r.newest && !ring.newest[n].matches(&a.vals) {
            return false;
        }
        if r.at_least.is_some() && ring.at_least.matches(&a.vals) {
            hits += 1;
        }
        if r.ratio.is_some() && ring.ratio.matches(&a.vals) {
            ratio_hits += 1;
        }
        if let Some(p) = ring.sum_pos {
            sum += a.vals[p].as_f64().unwrap_or(0.0);
        }
        n += 1;
    }
    n >= r.min_items
        && r.at_least.is_none_or(|w| hits >= w)
        && r.ratio.is_none_or(|q| n > 0 && ratio_hits as f64 >= q * n as f64)
        && r.sum_at_most.as_ref().is_none_or(|l| sum <= table_value(l, key) * n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::catalogue::{Catalogue, Cond, Format};
    use crate::core::engine::apply;
    use crate::core::value::{b, n, s, Event};

    const MIN: Millis = 60_000;
    /// 2026-03-02T12:00:00Z.
    const T0: Millis = 1_772_452_800_000;

    /// The tally an explanation shows says a pattern holds exactly when the engine's early-exit
    /// reading does, for every recent rule of the demo catalogue over a random stream.
    #[test]
    fn recent_tally_agrees_with_recent() {
        // The demo's rules read one ring each; one more reads two (answers and videos), whose
        // newest actions interleave, so the tally's merge of rings is checked as well.
        let two_rings = r#"
[[badges]]
id = "mixed-recent"
name = "m"
tier = "bronze"
rule = { kind = "recent", event = ["problem.answered", "video.watched"], last = 6, newest = [ { seconds = { lte = 6 } } ], at_least = { when = { seconds = { lte = 4 } }, count = 3 }, sum_at_most = { field = "seconds", per_item = 4 } }
"#;
        let cat = Catalogue::parse(&format!("{}\n{two_rings}", crate::core::catalogue::DEMO_CATALOGUE), Format::Toml).expect("valid");
        let conds: Vec<&RecentCond> = cat.badges.iter().filter_map(|d| if let Cond::Recent(r) = &d.cond { Some(&**r) } else { None }).collect();
        assert!(conds.len() >= 4 && conds.iter().any(|r| r.rings.len() == 2), "{} recent rules", conds.len());
        let mut st = UserState::default();
        let mut next = crate::testing::rng(0x9e37_79b9_7f4a_7c15);
        let (mut held, mut checked) = (0, 0);
        let mut ex = "addition-1";
        for i in 0..600u64 {
            let at = T0 + i as Millis * 7_000;
            // Runs in one exercise, mostly right and quick, so that patterns both hold and fail.
            if next(25) == 0 {
                ex = ["addition-1", "fractions", "quick"][next(3) as usize];
            }
            let mut e = if next(4) == 0 {
                Event::new(&format!("e{i}"), "video.watched", at, &[("playlist", s("p")), ("seconds", n(next(9) as f64)), ("video", s(ex))])
            } else {
                Event::new(&format!("e{i}"), "problem.answered", at, &[("exercise", s(ex)), ("correct", b(next(12) > 0)), ("seconds", n(next(9) as f64))])
            };
            e.user_id = "u".into();
            e.tenant_id = "t".into();
            apply(&mut st, &e, at + 1_000, &cat);
            for r in &conds {
                let want = recent(&st, r, None);
                assert_eq!(recent_tally(&st, r).holds(r), want, "event {i}, {}", r.describe);
                held += usize::from(want);
                checked += 1;
            }
        }
        assert!(held > 0 && held < checked, "{held} of {checked} held");
    }

    /// `window_reaches` stops early; it must answer exactly as the full scan does, for every
    /// cache the engine can build (late events land mid-ring, rings evict at their size) and
    /// every window end, width and target, including the ones right at the count.
    #[test]
    fn window_reaches_answers_as_the_full_scan_does() {
        let cat = Catalogue::parse(
            r#"
version = 1
[settings]
late_bound = "24h"
future_skew = "5m"
cache_size = 40
[event_types."problem.answered"]
client = true
fields = { exercise = "string", correct = "bool", seconds = "number" }
[event_types."video.watched"]
client = true
fields = { video = "string", seconds = "number" }
[event_types."login"]
client = true
[levels]
thresholds = [0, 100]
[[badges]]
id = "mixed"
name = "mixed"
tier = "bronze"
rule = { kind = "window", within = "15m", require = [ { event = "problem.answered", when = { correct = true }, count = 1000 }, { event = "video.watched", sum = "seconds", at_least = 1e9 } ] }
[[badges]]
id = "either"
name = "either"
tier = "bronze"
rule = { kind = "window", within = "1h", require = [ { event = ["problem.answered", "video.watched"], count = 1000 } ] }
"#,
            Format::Toml,
        )
        .unwrap();
        let reqs: Vec<&WindowReq> = cat
            .badges
            .iter()
            .flat_map(|d| match &d.cond {
                Cond::Window { reqs, .. } => reqs.iter().collect::<Vec<_>>(),
                _ => vec![],
            })
            .collect();
        assert_eq!(reqs.iter().filter(|r| r.counts()).count(), 2, "two counts and one sum to check");
        let mut st = UserState::default();
        let mut next = crate::testing::rng(0x2545_f491_4f6c_dd1d);
        let mut checked = 0;
        let mut decided_both_ways = [0, 0];
        for i in 0..400u64 {
            // Mostly in order a few seconds apart, sometimes up to 20 minutes late.
            let at = T0 + i as Millis * 5_000 - if next(5) == 0 { next(20) as Millis * MIN } else { 0 };
            let mut e = match next(3) {
                0 => Event::new(&format!("e{i}"), "problem.answered", at, &[("exercise", s("a")), ("correct", b(next(3) > 0)), ("seconds", n(9.0))]),
                1 => Event::new(&format!("e{i}"), "video.watched", at, &[("video", s("v")), ("seconds", n(next(600) as f64 - 100.0))]),
                _ => Event::new(&format!("e{i}"), "login", at, &[]),
            };
            e.user_id = "u".into();
            e.tenant_id = "t".into();
            apply(&mut st, &e, at + 1_000, &cat);
            let last = T0 + i as Millis * 5_000;
            for r in &reqs {
                for within in [0, MIN, 15 * MIN, 60 * MIN] {
                    for end in [last, last - 3 * MIN, last - 25 * MIN] {
                        let total = window_total(&st, end, within, r);
                        for target in [0.0, 1.0, total - 1.0, total, total + 1.0, 20.0, 41.0, 81.0, -5.0] {
                            let mut r2 = (*r).clone();
                            r2.target = target;
                            let full = total >= target;
                            assert_eq!(window_reaches(&st, end, within, &r2), full, "event {i}, {} within {within} ending {end}, target {target}", r.describe);
                            checked += 1;
                            decided_both_ways[full as usize] += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000 && decided_both_ways.iter().all(|&n| n > 1_000), "{checked} {decided_both_ways:?}");
    }
}
