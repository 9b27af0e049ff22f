//! The analytics figures, pure: what one user contributed (`UserFacts`, folded one log record
//! at a time by `UserFacts::fold`), a tenant's figures as the sum of its users' contributions
//! (`Figures`), the answers read from them (rarity, activity, funnels, time to unlock), and the
//! merge of several nodes' figures into one. No IO, no clock: days are local day numbers in the
//! tenant's zone, passed in. docs/analytics.md says why each figure is exactly once.

use crate::core::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per-day history a user's record keeps: older days fall off (their counts stay in the
/// tenant's figures, which were given them when they happened).
pub const KEEP_DAYS: usize = 400;

// ---------------------------------------------------------------------------------------------
// Sketches
// ---------------------------------------------------------------------------------------------

/// A HyperLogLog sketch of distinct users (4,096 one-byte registers, standard error 1.6%),
/// with linear counting for small sets, where it is exact in practice. Adding a user twice
/// changes nothing, and two sketches merge by the larger register: the two properties that
/// make active users both exactly-once and mergeable across nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hll {
    regs: Vec<u8>,
}

const HLL_BITS: u32 = 12;
const HLL_M: usize = 1 << HLL_BITS;

impl Default for Hll {
    fn default() -> Hll {
        Hll { regs: vec![0; HLL_M] }
    }
}

impl Hll {
    /// Adds a user by the hash of its key (`user_hash`).
    pub fn add(&mut self, hash: u64) {
        let idx = (hash >> (64 - HLL_BITS)) as usize;
        let rest = hash << HLL_BITS;
        let rank = (rest.leading_zeros().min(64 - HLL_BITS) + 1) as u8;
        if self.regs[idx] < rank {
            self.regs[idx] = rank;
        }
    }

    pub fn merge(&mut self, other: &Hll) {
        for (a, b) in self.regs.iter_mut().zip(&other.regs) {
            *a = (*a).max(*b);
        }
    }

    /// The estimated number of distinct users added.
    pub fn count(&self) -> u64 {
        let m = HLL_M as f64;
        let zeros = self.regs.iter().filter(|&&r| r == 0).count();
        // 2^-r, built from its exponent bits: a query counts hundreds of sketches.
        let sum: f64 = self.regs.iter().map(|&r| f64::from_bits((1023 - u64::from(r)) << 52)).sum();
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        // Linear counting below 2.5 m, as the original paper does: there it is far more exact.
        let est = if raw <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { raw };
        est.round() as u64
    }
}

/// The hash a user is added to sketches by: FNV-1a of `tenant \0 user` mixed by SplitMix64's
/// finaliser, because a sketch needs every bit of the hash to be well spread.
pub fn user_hash(tenant: &str, user: &str) -> u64 {
    let mut h = crate::core::value::stable_hash(format!("{tenant}\0{user}").as_bytes());
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

/// A histogram of durations on a log scale: bucket 0 holds durations under a second, then
/// eight buckets per doubling (each about 9% wide). Sums bucket by bucket, so nodes merge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHist {
    buckets: BTreeMap<u16, u64>,
}

/// A quantile read from a histogram: the bucket it falls in, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Quantile {
    /// The bucket's lower bound, inclusive.
    pub low_ms: u64,
    /// The bucket's upper bound, exclusive.
    pub high_ms: u64,
}

impl LogHist {
    fn bucket(ms: Millis) -> u16 {
        if ms < 1000 {
            return 0;
        }
        ((ms as f64 / 1000.0).log2() * 8.0).floor() as u16 + 1
    }

    /// The bounds of bucket `b` in milliseconds.
    pub fn bounds(b: u16) -> (u64, u64) {
        if b == 0 {
            return (0, 1000);
        }
        let at = |i: u16| (1000.0 * 2f64.powf(f64::from(i) / 8.0)).round() as u64;
        (at(b - 1), at(b))
    }

    pub fn add(&mut self, ms: Millis) {
        *self.buckets.entry(Self::bucket(ms.max(0))).or_default() += 1;
    }

    pub fn merge(&mut self, other: &LogHist) {
        for (b, n) in &other.buckets {
            *self.buckets.entry(*b).or_default() += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// The bucket holding the `q` quantile (the lower median for an even count).
    pub fn quantile(&self, q: f64) -> Option<Quantile> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (b, c) in &self.buckets {
            seen += c;
            if seen >= rank {
                let (low_ms, high_ms) = Self::bounds(*b);
                return Some(Quantile { low_ms, high_ms });
            }
        }
        None
    }

    /// Every non-empty bucket: (low, high, count).
    pub fn rows(&self) -> Vec<(u64, u64, u64)> {
        self.buckets.iter().map(|(b, c)| {
            let (l, h) = Self::bounds(*b);
            (l, h, *c)
        }).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// One user
// ---------------------------------------------------------------------------------------------

/// An unlock a log record caused.
#[derive(Debug, Clone, PartialEq)]
pub struct Unlocked {
    pub badge: String,
    pub at: Millis,
    /// Given by a backfill (its event id is `backfill:<job>`).
    pub backfilled: bool,
}

/// What one log record says, for analytics: a client event (with its `occurred_at`) or a
/// record the server made (`None`), and the unlocks it caused.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub occurred_at: Option<Millis>,
    pub unlocks: Vec<Unlocked>,
}

/// One local day of a user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayFacts {
    pub day: i32,
    pub events: u32,
    pub unlocks: u32,
    pub backfilled: u32,
}

/// A badge's first award to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstAward {
    pub badge: String,
    pub at: Millis,
    pub backfilled: bool,
}

/// What a user has contributed to the figures, up to log sequence number `seq`: stored as
/// the user's analytics record with every snapshot (docs/analytics.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFacts {
    pub seq: u64,
    /// The `occurred_at` of the user's first client event.
    pub first: Option<Millis>,
    /// Active days, oldest first, at most `KEEP_DAYS`.
    pub days: Vec<DayFacts>,
    /// First awards, in the order they were made.
    pub badges: Vec<FirstAward>,
}

/// What a user adds to the tenant's figures: one step's worth, or a whole record's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contribution {
    pub user: u64,
    /// The user's first event, on this local day.
    pub new_user: Option<i32>,
    pub days: Vec<DayFacts>,
    pub firsts: Vec<FirstContribution>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FirstContribution {
    pub badge: String,
    pub day: i32,
    pub backfilled: bool,
    /// Time since the user's first event, when it had one.
    pub since_first: Option<Millis>,
    /// (a badge the user already held, the time between its award and this one).
    pub pairs: Vec<(String, Millis)>,
}

impl Contribution {
    pub fn is_empty(&self) -> bool {
        self.new_user.is_none() && self.days.is_empty() && self.firsts.is_empty()
    }
}

impl UserFacts {
    /// Folds one log record in: `day` gives the local day of an instant in the tenant's zone.
    /// Returns what it adds to the tenant's figures.
    pub fn fold(&mut self, seq: u64, step: &Step, user: u64, day: impl Fn(Millis) -> i32) -> Contribution {
        self.seq = self.seq.max(seq);
        let mut c = Contribution { user, ..Default::default() };
        if let Some(at) = step.occurred_at {
            if self.first.is_none() {
                self.first = Some(at);
                c.new_user = Some(day(at));
            }
            let d = day(at);
            self.day_mut(d).events += 1;
            add_day(&mut c.days, DayFacts { day: d, events: 1, ..Default::default() });
        }
        for u in &step.unlocks {
            let d = day(u.at);
            let f = self.day_mut(d);
            f.unlocks += 1;
            f.backfilled += u32::from(u.backfilled);
            add_day(&mut c.days, DayFacts { day: d, unlocks: 1, backfilled: u32::from(u.backfilled), ..Default::default() });
            if self.badges.iter().any(|b| b.badge == u.badge) {
                continue;
            }
            let pairs = self.badges.iter().map(|b| (b.badge.clone(), (u.at - b.at).max(0))).collect();
            c.firsts.push(FirstContribution { badge: u.badge.clone(), day: d, backfilled: u.backfilled, since_first: self.first.map(|f| (u.at - f).max(0)), pairs });
            self.badges.push(FirstAward { badge: u.badge.clone(), at: u.at, backfilled: u.backfilled });
        }
        if self.days.len() > KEEP_DAYS {
            let cut = self.days.len() - KEEP_DAYS;
            self.days.drain(..cut);
        }
        c
    }

    /// Everything the record holds, as one contribution (a rebuild's, before the log tail).
    pub fn whole(&self, user: u64, day: impl Fn(Millis) -> i32) -> Contribution {
        let mut c = Contribution { user, new_user: self.first.map(&day), days: self.days.clone(), firsts: vec![] };
        for (i, b) in self.badges.iter().enumerate() {
            let pairs = self.badges[..i].iter().map(|a| (a.badge.clone(), (b.at - a.at).max(0))).collect();
            c.firsts.push(FirstContribution { badge: b.badge.clone(), day: day(b.at), backfilled: b.backfilled, since_first: self.first.map(|f| (b.at - f).max(0)), pairs });
        }
        c
    }

    fn day_mut(&mut self, d: i32) -> &mut DayFacts {
        let i = match self.days.binary_search_by_key(&d, |f| f.day) {
            Ok(i) => i,
            Err(i) => {
                self.days.insert(i, DayFacts { day: d, ..Default::default() });
                i
            }
        };
        &mut self.days[i]
    }
}

fn add_day(days: &mut Vec<DayFacts>, f: DayFacts) {
    match days.iter_mut().find(|d| d.day == f.day) {
        Some(d) => {
            d.events += f.events;
            d.unlocks += f.unlocks;
            d.backfilled += f.backfilled;
        }
        None => days.push(f),
    }
}

// ---------------------------------------------------------------------------------------------
// A tenant
// ---------------------------------------------------------------------------------------------

/// One local day of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Day {
    pub events: u64,
    pub unlocks: u64,
    pub backfilled: u64,
    pub new_users: u64,
    pub active: Hll,
}

/// One badge of a tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BadgeFigures {
    pub holders: u64,
    pub backfilled: u64,
    /// First awards per local day.
    pub firsts: BTreeMap<i32, u64>,
    /// From the user's first event to the award.
    pub time_to_unlock: LogHist,
}

/// A tenant's figures: the sum of its users' contributions. This is also a node's answer in
/// a cluster, merged with the other nodes' by `merge`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub users: u64,
    pub days: BTreeMap<i32, Day>,
    pub badges: BTreeMap<String, BadgeFigures>,
    /// pairs[a][b]: users who got `b` after `a`, by the time between.
    pub pairs: BTreeMap<String, BTreeMap<String, LogHist>>,
}

impl Figures {
    pub fn add(&mut self, c: &Contribution) {
        if let Some(d) = c.new_user {
            self.users += 1;
            self.days.entry(d).or_default().new_users += 1;
        }
        for f in &c.days {
            let day = self.days.entry(f.day).or_default();
            day.events += u64::from(f.events);
            day.unlocks += u64::from(f.unlocks);
            day.backfilled += u64::from(f.backfilled);
            if f.events > 0 {
                day.active.add(c.user);
            }
        }
        for f in &c.firsts {
            let b = self.badges.entry(f.badge.clone()).or_default();
            b.holders += 1;
            b.backfilled += u64::from(f.backfilled);
            *b.firsts.entry(f.day).or_default() += 1;
            if let Some(t) = f.since_first {
                b.time_to_unlock.add(t);
            }
            for (a, dt) in &f.pairs {
                self.pairs.entry(a.clone()).or_default().entry(f.badge.clone()).or_default().add(*dt);
            }
        }
    }

    /// Adds another node's figures: its users are not this node's, so counters add, sketches
    /// take the larger register and histograms add bucket by bucket.
    pub fn merge(&mut self, o: &Figures) {
        self.users += o.users;
        for (d, x) in &o.days {
            let day = self.days.entry(*d).or_default();
            day.events += x.events;
            day.unlocks += x.unlocks;
            day.backfilled += x.backfilled;
            day.new_users += x.new_users;
            day.active.merge(&x.active);
        }
        for (id, x) in &o.badges {
            let b = self.badges.entry(id.clone()).or_default();
            b.holders += x.holders;
            b.backfilled += x.backfilled;
            for (d, n) in &x.firsts {
                *b.firsts.entry(*d).or_default() += n;
            }
            b.time_to_unlock.merge(&x.time_to_unlock);
        }
        for (a, row) in &o.pairs {
            let mine = self.pairs.entry(a.clone()).or_default();
            for (b, h) in row {
                mine.entry(b.clone()).or_default().merge(h);
            }
        }
    }

    /// The days of `from..=to`, copied: what the activity and a period's active users are
    /// computed from, away from the lock the live path takes.
    pub fn days_for(&self, from: i32, to: i32) -> BTreeMap<i32, Day> {
        self.days.range(from..=to).map(|(d, x)| (*d, x.clone())).collect()
    }

    /// Distinct users active on any day of `from..=to`.
    pub fn active(&self, from: i32, to: i32) -> u64 {
        let mut u = Hll::default();
        for (_, d) in self.days.range(from..=to) {
            u.merge(&d.active);
        }
        u.count()
    }

    /// Users who first earned `badge` on a day of `from..=to`.
    pub fn earned(&self, badge: &str, from: i32, to: i32) -> u64 {
        self.badges.get(badge).map_or(0, |b| b.firsts.range(from..=to).map(|(_, n)| n).sum())
    }

    /// Users holding both `a` and `b`, in either order.
    pub fn both(&self, a: &str, b: &str) -> u64 {
        let one = |x: &str, y: &str| self.pairs.get(x).and_then(|r| r.get(y)).map_or(0, LogHist::count);
        one(a, b) + one(b, a)
    }

    pub fn between(&self, a: &str, b: &str) -> Option<&LogHist> {
        self.pairs.get(a).and_then(|r| r.get(b))
    }
}

/// One day of the activity answer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ActivityDay {
    /// The local date, `YYYY-MM-DD`.
    pub date: String,
    /// Users active that day, and over the 7 and 30 days ending with it (estimated: see
    /// docs/analytics.md).
    pub dau: u64,
    pub wau: u64,
    pub mau: u64,
    pub events: u64,
    pub unlocks: u64,
    /// Of `unlocks`, those a backfill gave.
    pub backfilled_unlocks: u64,
    pub new_users: u64,
}

/// Activity per local day over `from..=to`, from the tenant's days (at least those from
/// `from - 29` to `to`: see `Figures::days_for`).
pub fn activity(days: &BTreeMap<i32, Day>, from: i32, to: i32) -> Vec<ActivityDay> {
    let wau = windows(days, from, to, 7);
    let mau = windows(days, from, to, 30);
    (from..=to)
        .enumerate()
        .map(|(i, d)| {
            let day = days.get(&d);
            let n = |g: fn(&Day) -> u64| day.map_or(0, g);
            ActivityDay {
                date: date_of(d),
                dau: day.map_or(0, |x| x.active.count()),
                wau: wau[i],
                mau: mau[i],
                events: n(|x| x.events),
                unlocks: n(|x| x.unlocks),
                backfilled_unlocks: n(|x| x.backfilled),
                new_users: n(|x| x.new_users),
            }
        })
        .collect()
}

/// For each day of `from..=to`, the distinct users active in the `w` days ending with it.
/// Sketches merge by a maximum, which has no inverse, so a window cannot slide by removing
/// its oldest day; instead the days are cut in blocks of `w` and each block's running unions
/// kept from both ends (van Herk and Gil-Werman's sliding maximum): any window is one union of
/// a suffix and a prefix, about three merges per day whatever `w` is.
fn windows(days: &BTreeMap<i32, Day>, from: i32, to: i32, w: i32) -> Vec<u64> {
    let start = from - (w - 1);
    let n = (to - start + 1) as usize;
    let w = w as usize;
    let empty = Hll::default();
    let at = |i: usize| days.get(&(start + i as i32)).map_or(&empty, |d| &d.active);
    let mut prefix: Vec<Hll> = Vec::with_capacity(n);
    for i in 0..n {
        let mut h = if i % w == 0 { Hll::default() } else { prefix[i - 1].clone() };
        h.merge(at(i));
        prefix.push(h);
    }
    let mut suffix: Vec<Hll> = vec![Hll::default(); n];
    for i in (0..n).rev() {
        let mut h = if i % w == w - 1 || i == n - 1 { Hll::default() } else { suffix[i + 1].clone() };
        h.merge(at(i));
        suffix[i] = h;
    }
    (w - 1..n)
        .map(|i| {
            let j = i + 1 - w;
            if j % w == 0 {
                prefix[i].count()
            } else {
                let mut h = suffix[j].clone();
                h.merge(&prefix[i]);
                h.count()
            }
        })
        .collect()
}

/// The local date of day number `d` (days since 1970-01-01).
pub fn date_of(d: i32) -> String {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    (epoch + chrono::Duration::days(i64::from(d))).format("%Y-%m-%d").to_string()
}

/// The day number of a local date `YYYY-MM-DD`.
pub fn day_of(date: &str) -> Option<i32> {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((d - epoch).num_days() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Millis = 3_600_000;
    const D: Millis = 24 * H;

    fn day(at: Millis) -> i32 {
        at.div_euclid(D) as i32
    }

    fn event(at: Millis, unlocks: &[(&str, Millis)]) -> Step {
        Step { occurred_at: Some(at), unlocks: unlocks.iter().map(|(b, t)| Unlocked { badge: b.to_string(), at: *t, backfilled: false }).collect() }
    }

    /// A sketch counts small sets exactly, ignores repeats, and merges to the union.
    #[test]
    fn a_sketch_counts_distinct_users_and_merges_to_the_union() {
        let mut a = Hll::default();
        let mut b = Hll::default();
        for i in 0..10 {
            a.add(user_hash("t", &format!("u{i}")));
            a.add(user_hash("t", &format!("u{i}")));
        }
        for i in 5..20 {
            b.add(user_hash("t", &format!("u{i}")));
        }
        assert_eq!(a.count(), 10);
        assert_eq!(b.count(), 15);
        a.merge(&b);
        assert_eq!(a.count(), 20);
        let mut big = Hll::default();
        for i in 0..100_000 {
            big.add(user_hash("t", &format!("u{i}")));
        }
        let err = (big.count() as f64 - 100_000.0).abs() / 100_000.0;
        assert!(err < 0.05, "estimate {} is {err} off", big.count());
    }

    /// Quantiles fall in the bucket holding the value; buckets are under 10% wide.
    #[test]
    fn a_histogram_finds_the_bucket_of_its_median() {
        let mut h = LogHist::default();
        for s in [60, 120, 300] {
            h.add(s * 1000);
        }
        let m = h.quantile(0.5).unwrap();
        assert!(m.low_ms <= 120_000 && 120_000 < m.high_ms, "{m:?}");
        assert!((m.high_ms - m.low_ms) as f64 / m.low_ms as f64 <= 0.1);
        assert_eq!(h.quantile(0.5), h.quantile(0.5));
        let top = h.quantile(1.0).unwrap();
        assert!(top.low_ms <= 300_000 && 300_000 < top.high_ms);
        assert_eq!(LogHist::default().quantile(0.5), None);
        let mut sub = LogHist::default();
        sub.add(400);
        assert_eq!(sub.quantile(0.5), Some(Quantile { low_ms: 0, high_ms: 1000 }));
    }

    /// A user's log, folded step by step, adds to the figures exactly what the stored record
    /// adds as a whole: the rebuild and the live path count the same.
    #[test]
    fn folding_step_by_step_equals_adding_the_record_whole() {
        let t0 = 20_000 * D;
        let steps = [
            event(t0 + H, &[]),
            event(t0 + 2 * H, &[("first", t0 + 2 * H)]),
            event(t0 + D + H, &[("second", t0 + D + H), ("first", t0 + D + H)]),
            Step { occurred_at: None, unlocks: vec![Unlocked { badge: "third".into(), at: t0 + 3 * D, backfilled: true }] },
        ];
        let mut facts = UserFacts::default();
        let mut live = Figures::default();
        for (i, s) in steps.iter().enumerate() {
            live.add(&facts.fold(i as u64 + 1, s, 7, day));
        }
        let mut rebuilt = Figures::default();
        rebuilt.add(&facts.whole(7, day));
        assert_eq!(live, rebuilt);
        assert_eq!(facts.seq, 4);
        assert_eq!(live.users, 1);
        assert_eq!(live.badges["first"].holders, 1, "a repeat award is not a second holder");
        assert_eq!(live.days[&(day(t0) + 1)].unlocks, 2, "but it is an unlock of its day");
        assert_eq!(live.badges["third"].backfilled, 1);
        assert_eq!(live.days[&(day(t0) + 3)].backfilled, 1);
        assert_eq!(live.days[&(day(t0) + 3)].events, 0, "a server record is no event");
        assert_eq!(live.both("first", "second"), 1);
        assert_eq!(live.both("second", "first"), 1);
        assert_eq!(live.both("first", "third"), 1);
    }

    /// Two nodes' figures merge into what one node holding all the users would have.
    #[test]
    fn two_nodes_figures_merge_into_one_nodes() {
        let t0 = 20_000 * D;
        let mut one = Figures::default();
        let mut a = Figures::default();
        let mut b = Figures::default();
        for i in 0..30u64 {
            let mut facts = UserFacts::default();
            let s = event(t0 + (i as Millis % 5) * D, &[("x", t0 + (i as Millis % 5) * D + (i as Millis) * 60_000)]);
            let c = facts.fold(1, &s, user_hash("t", &format!("u{i}")), day);
            one.add(&c);
            if i % 3 == 0 { a.add(&c) } else { b.add(&c) }
        }
        let mut merged = a.clone();
        merged.merge(&b);
        assert_eq!(merged, one);
        assert_eq!(merged.users, 30);
        assert_eq!(merged.active(day(t0), day(t0) + 4), 30);
        assert_eq!(merged.earned("x", day(t0), day(t0) + 1), 12);
    }

    /// Activity per day: DAU, and the trailing weekly and monthly windows, over a known
    /// stream: u0 active on days 0 and 10, u1 on day 3, u2 on day 9.
    #[test]
    fn activity_counts_each_window_by_hand() {
        let t0 = 20_000 * D;
        let mut f = Figures::default();
        for (u, days) in [("u0", vec![0, 10]), ("u1", vec![3]), ("u2", vec![9])] {
            let mut facts = UserFacts::default();
            for (i, d) in days.iter().enumerate() {
                f.add(&facts.fold(i as u64 + 1, &event(t0 + d * D, &[]), user_hash("t", u), day));
            }
        }
        let d0 = day(t0);
        let a = activity(&f.days, d0 + 9, d0 + 10);
        assert_eq!((a[0].dau, a[0].wau, a[0].mau, a[0].events, a[0].new_users), (1, 2, 3, 1, 1));
        assert_eq!((a[1].dau, a[1].wau, a[1].mau, a[1].events, a[1].new_users), (1, 2, 3, 1, 0));
        assert_eq!(a[0].date, date_of(d0 + 9));
        // Over a long range with users on scattered days, every window equals the plain union
        // of its days.
        let mut g = Figures::default();
        for u in 0..300u64 {
            let mut facts = UserFacts::default();
            for k in 0..3 {
                let d = ((u * 7 + k * 13) % 100) as Millis;
                g.add(&facts.fold(k + 1, &event(t0 + d * D, &[]), user_hash("t", &u.to_string()), day));
            }
        }
        let long = activity(&g.days, d0, d0 + 99);
        for (i, x) in long.iter().enumerate() {
            let d = d0 + i as i32;
            assert_eq!((x.wau, x.mau), (g.active(d - 6, d), g.active(d - 29, d)), "day {i}");
        }
        assert_eq!(day_of(&a[0].date), Some(d0 + 9));
    }
}
