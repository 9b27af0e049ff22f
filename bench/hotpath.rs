//! Criterion benchmarks for the server's per-event hot path outside the rule core: decoding an
//! event frame, encoding the ack and xp pushes, the persister writing a batch of accepted
//! events (log record, dedup key and leaderboard record each, then one flush), as the actor
//! submits them, and recording the metrics of an event.

use accolade::core::value::{b, n, s};
use accolade::core::Event;
use accolade::protocol;
use accolade::store::{writes, BoardEntry, Store, StoredEvent};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::mpsc;

// The server's allocator (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_772_452_800_000;

/// A frame as the load generator and the web demo send it.
const EVENT_FRAME: &str = r#"{"type":"event","event_id":"c7a1e0f2-5b4d-4e61-9a7e-3f2b1c0d9e8a","event_type":"problem.answered","occurred_at":"2026-11-22T10:00:00.123Z","payload":{"exercise":"exercise-3","correct":true,"seconds":12}}"#;

fn bench_wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode-event", |bch| bch.iter(|| protocol::decode(black_box(EVENT_FRAME)).unwrap()));
    g.bench_function("encode-ack-and-xp", |bch| {
        bch.iter(|| {
            let id = black_box("c7a1e0f2-5b4d-4e61-9a7e-3f2b1c0d9e8a");
            (protocol::ack(id, false), protocol::xp(black_box(41), 10, 1_230, 4, id))
        })
    });
    g.finish();
}

/// The writes of one accepted event of user `u`, number `seq`, as `User::on_event` makes them.
fn event_writes(u: usize, seq: u64) -> Vec<accolade::store::Write> {
    let user = format!("user-{u}");
    let id = format!("{user}-{seq}");
    let mut event = Event::new(&id, "problem.answered", T0 + seq as i64 * 1000, &[("correct", b(true)), ("exercise", s("exercise-3")), ("seconds", n(12.0))]);
    event.user_id = user.clone();
    event.tenant_id = "bench".into();
    let pushes = vec![(seq, protocol::xp(seq, 10, 10 * seq, 4, &id).to_string())];
    let stored = StoredEvent { event, received_at: T0 + seq as i64 * 1000, catalogue_version: 1, pushes };
    let entry = BoardEntry { score: 10.0 * seq as f64, reached: T0, end: T0 + 7 * 86_400_000 };
    let scores = vec![("xp-weekly".to_string(), "2026-W47".to_string(), String::new(), entry)];
    let mut w = vec![writes::event("bench", &user, seq, &stored, true)];
    w.push(writes::board_scores("bench", &user, &scores));
    w
}

fn bench_persist(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut g = c.benchmark_group("persist");
    g.sample_size(20);
    // 1,000 users sending in turn, so that each batch writes into many places of each tree.
    let mut seq = 0u64;
    for batch in [16usize, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch-of-{batch}-events"), |bch| {
            bch.iter_batched(
                || {
                    (0..batch)
                        .map(|_| {
                            seq += 1;
                            let u = (seq % 1000) as usize;
                            (u, event_writes(u, seq / 1000 + 1))
                        })
                        .collect::<Vec<_>>()
                },
                |jobs| {
                    // Everything is queued before the persister can drain it, so it forms one
                    // batch (or a few); the last completion means all of it is flushed.
                    let (tx, rx) = mpsc::channel();
                    let last = jobs.len() - 1;
                    for (i, (u, w)) in jobs.into_iter().enumerate() {
                        let tx = tx.clone();
                        // As an actor submits: by user, so both insert threads take part.
                        store
                            .submit_user("bench", &format!("user-{u}"), w, move |r| {
                                if i == last {
                                    let _ = tx.send(r);
                                }
                            })
                            .unwrap();
                    }
                    rx.recv().unwrap().unwrap();
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// The recording of `src/metrics.rs` before it moved onto prometheus-client (commit 2ced7be),
/// kept here so that both sides are measured in one build and one sitting.
mod before {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    pub struct Histogram {
        bounds: &'static [u64],
        counts: Vec<AtomicU64>,
        sum_micros: AtomicU64,
    }

    const LATENCY_BOUNDS: &[u64] = &[10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000];

    impl Default for Histogram {
        fn default() -> Self {
            Histogram { bounds: LATENCY_BOUNDS, counts: (0..=LATENCY_BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
        }
    }

    impl Histogram {
        pub fn record(&self, d: Duration) {
            let us = d.as_micros().min(u64::MAX as u128) as u64;
            let i = self.bounds.partition_point(|&b| b < us);
            self.counts[i].fetch_add(1, Ordering::Relaxed);
            self.sum_micros.fetch_add(us, Ordering::Relaxed);
        }
    }

    #[derive(Default)]
    pub struct Metrics {
        pub accepted: AtomicU64,
        refusals: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
        pub rule_eval: Histogram,
    }

    impl Metrics {
        pub fn refused(&self, code: &str) {
            let mut m = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            match m.get_mut(code) {
                Some(n) => *n += 1,
                None => {
                    m.insert(code.to_string(), 1);
                }
            }
        }
    }
}

/// What the server records per event, before and after `Metrics` moved onto prometheus-client:
/// a counter, a refusal by its code, a latency observation. Also two things the server does not
/// do, to show why: a labelled family looked up per increment, and prometheus-client's own
/// histogram. One thread, so uncontended costs.
fn bench_metrics(c: &mut Criterion) {
    use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let old = before::Metrics::default();
    let new = accolade::metrics::Metrics::default();
    let latency = Duration::from_micros(730);
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    g.bench_function("counter/before", |bch| bch.iter(|| black_box(&old.accepted).fetch_add(1, Ordering::Relaxed)));
    g.bench_function("counter/after", |bch| bch.iter(|| black_box(&new.accepted).inc()));
    let family = Family::<[(&str, &str); 1], Counter>::default();
    g.bench_function("counter/family-lookup", |bch| bch.iter(|| family.get_or_create(black_box(&[("outcome", "accepted")])).inc()));
    g.bench_function("refusal/before", |bch| bch.iter(|| old.refused(black_box("rate_limited"))));
    g.bench_function("refusal/after", |bch| bch.iter(|| new.refused(black_box("rate_limited"))));
    g.bench_function("histogram/before", |bch| bch.iter(|| old.rule_eval.record(black_box(latency))));
    g.bench_function("histogram/after", |bch| bch.iter(|| new.rule_eval.record(black_box(latency))));
    let client = Histogram::new([1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]);
    g.bench_function("histogram/client", |bch| bch.iter(|| client.observe(black_box(latency).as_secs_f64())));
    g.finish();
}

criterion_group!(benches, bench_wire, bench_persist, bench_metrics);
criterion_main!(benches);
