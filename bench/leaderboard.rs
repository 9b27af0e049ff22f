//! Criterion benchmark of the leaderboard ranking structure at 1 million users: one score
//! update and one rank query, each on a random user of a full board.

use accolade::ranking::Ranking;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

// The server's allocator (src/main.rs), so the layout in memory is the one the server has.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A small deterministic generator, so every run measures the same sequence.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// A million users under `cargo bench`; a hundredth of that in criterion's test mode (`cargo
/// test` runs each benchmark once, with no `--bench`), where the million took 13 s of a debug
/// build to rank.
fn size() -> (u64, &'static str) {
    if std::env::args().any(|a| a == "--bench") { (1_000_000, "leaderboard/1M") } else { (10_000, "leaderboard/10k") }
}

fn bench_ranking(c: &mut Criterion) {
    let (n, group) = size();
    let mut r = Ranking::new();
    let mut rng = Lcg(7);
    let names: Vec<String> = (0..n).map(|i| format!("user-{i}")).collect();
    // The caller knows each user's score (the user's actor computes it), as here.
    let mut scores: Vec<f64> = (0..n).map(|_| (rng.next() % 100_000) as f64).collect();
    for (i, name) in names.iter().enumerate() {
        r.set(name, scores[i], i as i64);
    }
    let mut g = c.benchmark_group(group);
    let mut t = n as i64;
    g.bench_function("update", |b| {
        b.iter(|| {
            let i = (rng.next() % n) as usize;
            t += 1;
            // A score moves up by a typical event's worth of XP.
            scores[i] += (rng.next() % 50) as f64;
            black_box(r.set(&names[i], scores[i], t))
        })
    });
    g.bench_function("rank", |b| b.iter(|| black_box(r.rank(&names[(rng.next() % n) as usize]))));
    g.bench_function("top10", |b| b.iter(|| black_box(r.range(1, 10))));
    g.finish();
}

criterion_group!(benches, bench_ranking);
criterion_main!(benches);
