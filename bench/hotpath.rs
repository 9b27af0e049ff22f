//! Criterion benchmarks for the server's per-event hot path outside the rule core: decoding an
//! event frame, encoding the ack and xp pushes, and the persister writing a batch of accepted
//! events (log record, dedup key and leaderboard record each, then one flush), as the actor
//! submits them.

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
    let mut w: Vec<_> = writes::event("bench", &user, seq, &stored).into();
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

criterion_group!(benches, bench_wire, bench_persist);
criterion_main!(benches);
