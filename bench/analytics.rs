//! Criterion benchmarks of analytics (issue 25, docs/analytics.md): what each query of
//! `/v1/analytics/...` computes, for a tenant of a million users on the demo catalogue (the
//! goal: under 50 ms), and what the hot path adds per event (a user's fold of one step, and
//! the tenant's figures adding it).

use accolade::analytics::figures::{self, user_hash, Figures, Step, Unlocked, UserFacts};
use accolade::api::analytics::{funnel_steps, rarity_doc, unlock_times};
use accolade::core::{Catalogue, Millis};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

// The server's allocator (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const D: Millis = 86_400_000;
/// The last day of the figures (2026-12-01), and the first day users arrive: 400 days before.
const LAST: i32 = 20_788;
const SPAN: u64 = 400;

fn day(at: Millis) -> i32 {
    at.div_euclid(D) as i32
}

/// A deterministic generator (SplitMix64), so every run builds the same tenant.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A tenant of `users` users: each arrives on a day of the last 400, is active on 1 to 12
/// days over the following weeks, and earns the first 0 to 9 badges of a random run of the
/// catalogue (a ladder), each some hours after the one before.
fn tenant(users: u64, cat: &Catalogue) -> Figures {
    let ids: Vec<String> = cat.badges.iter().map(|b| b.id.to_string()).collect();
    let mut rng = Rng(7);
    let mut f = Figures::default();
    let first_day = LAST as i64 - SPAN as i64;
    for u in 0..users {
        let hash = user_hash("bench", &format!("u{u}"));
        let mut facts = UserFacts::default();
        let mut at = (first_day + rng.below(SPAN) as i64) * D + rng.below(D as u64) as i64;
        let active = 1 + rng.below(12);
        let badges = rng.below(10) as usize;
        let start = rng.below(ids.len() as u64) as usize;
        let mut seq = 0;
        for k in 0..active.max(badges as u64) {
            seq += 1;
            let unlocks = if (k as usize) < badges { vec![Unlocked { badge: ids[(start + k as usize) % ids.len()].clone(), at, backfilled: rng.below(20) == 0 }] } else { vec![] };
            f.add(&facts.fold(seq, &Step { occurred_at: Some(at), unlocks }, hash, day));
            at += (1 + rng.below(72)) as i64 * 3_600_000;
        }
    }
    f
}

/// A million users under `cargo bench`; a hundredth of that when `cargo test` runs the
/// benchmarks once each to check that they work (criterion's test mode, no `--bench`), where
/// building a million users' figures in a debug build took a minute of the suite.
fn tenant_size() -> (u64, &'static str) {
    if std::env::args().any(|a| a == "--bench") { (1_000_000, "analytics/1M") } else { (10_000, "analytics/10k") }
}

fn bench_queries(c: &mut Criterion) {
    let cat = Catalogue::demo();
    let (users, group) = tenant_size();
    let f = tenant(users, &cat);
    let mut g = c.benchmark_group(group);
    g.sample_size(20);
    // What each route does: copy under the lock what it reads, then compute.
    g.bench_function("rarity-30d", |b| {
        b.iter(|| {
            let part = Figures { users: f.users, days: f.days_for(LAST - 29, LAST), badges: f.badges.clone(), pairs: Default::default() };
            black_box(rarity_doc(&part, &cat, LAST - 29, LAST))
        })
    });
    g.bench_function("rarity-366d", |b| {
        b.iter(|| {
            let part = Figures { users: f.users, days: f.days_for(LAST - 365, LAST), badges: f.badges.clone(), pairs: Default::default() };
            black_box(rarity_doc(&part, &cat, LAST - 365, LAST))
        })
    });
    for (name, days) in [("activity-30d", 30), ("activity-366d", 366)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let from = LAST - (days - 1);
                let copied = f.days_for(from - 29, LAST);
                black_box(figures::activity(&copied, from, LAST))
            })
        });
    }
    let ladder: Vec<String> = cat.badges.iter().take(5).map(|b| b.id.to_string()).collect();
    g.bench_function("funnel-5", |b| b.iter(|| black_box(funnel_steps(&f, &cat, &ladder))));
    g.bench_function("time-to-unlock-all", |b| b.iter(|| black_box(unlock_times(&f, &cat, None))));
    g.finish();
}

/// The hot path's share: a user's fold of one step and the tenant's figures adding it, for an
/// event without an unlock (most events) and one with an unlock.
fn bench_fold(c: &mut Criterion) {
    let mut g = c.benchmark_group("analytics/per-event");
    let mut f = Figures::default();
    let mut facts = UserFacts::default();
    let hash = user_hash("bench", "u");
    let mut seq = 0;
    let at = LAST as i64 * D;
    g.bench_function("event", |b| {
        b.iter(|| {
            seq += 1;
            f.add(&facts.fold(seq, black_box(&Step { occurred_at: Some(at), unlocks: vec![] }), hash, day));
        })
    });
    let cat = Catalogue::demo();
    let mut n = 0usize;
    g.bench_function("event-with-unlock", |b| {
        b.iter(|| {
            // A fresh user each time, so that every unlock is a first award.
            n += 1;
            let mut facts = UserFacts::default();
            let step = Step { occurred_at: Some(at), unlocks: vec![Unlocked { badge: cat.badges[n % 10].id.to_string(), at, backfilled: false }] };
            f.add(&facts.fold(1, black_box(&step), user_hash("bench", &n.to_string()), day));
        })
    });
    g.finish();
}

criterion_group!(benches, bench_queries, bench_fold);
criterion_main!(benches);
