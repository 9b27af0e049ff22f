//! Criterion benchmarks for the rule core: events per second through `apply` with the demo
//! catalogue and with a generated 200-badge catalogue, plus state encoding (the persister's
//! per-event cost).

use accolade::core::value::{b, n, s};
use accolade::core::{apply, Catalogue, Event, Format, UserState};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

// The server's allocator (src/main.rs), so allocation costs are the ones the server has.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_772_452_800_000;

/// A realistic mix like the load generator's: mostly answers (80% right) over 8 exercises,
/// some video, an article now and then, a daily login.
fn mix(count: usize, user: &str) -> Vec<Event> {
    let mut out = Vec::with_capacity(count);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = T0 + i as i64 * 7_000;
        let ex = format!("exercise-{}", x % 8);
        let (ty, payload) = match x % 20 {
            0..=15 => ("problem.answered", vec![("exercise", s(&ex)), ("correct", b(!x.is_multiple_of(5))), ("seconds", n((x % 30) as f64))]),
            16..=17 => ("video.watched", vec![("video", s(&format!("v{}", x % 40))), ("playlist", s(&ex)), ("seconds", n((x % 600) as f64))]),
            18 => ("article.read", vec![("article", s(&format!("a{}", x % 100)))]),
            _ => ("login", vec![]),
        };
        // Fields sorted by name, as the server's JSON decoder delivers them.
        let mut payload = payload;
        payload.sort_by(|a, b| a.0.cmp(b.0));
        let mut e = Event::new(&format!("{user}-{i}"), ty, at, &payload);
        e.user_id = user.into();
        e.tenant_id = "bench".into();
        out.push(e);
    }
    out
}

/// 200 badges over the demo event types, spread across every cheap and expensive rule kind.
fn big_catalogue() -> Catalogue {
    let demo = accolade::core::catalogue::DEMO_CATALOGUE;
    let head = &demo[..demo.find("[[badges]]").unwrap()];
    let mut doc = head.to_string();
    for i in 0..200 {
        let rule = match i % 8 {
            0 => format!(r#"{{ kind = "count", event = "problem.answered", when = {{ correct = true }}, target = {} }}"#, 10 + i),
            1 => format!(r#"{{ kind = "streak", event = "problem.answered", when = {{ correct = true }}, per = "exercise", target = {} }}"#, 5 + i),
            2 => format!(r#"{{ kind = "sum", event = "video.watched", field = "seconds", per = "playlist", target = {} }}"#, 600 * (i + 1)),
            3 => format!(r#"{{ kind = "recent", event = "problem.answered", last = {}, same = "exercise", all = {{ correct = true }} }}"#, 3 + i % 40),
            4 => format!(r#"{{ kind = "window", within = "1h", require = [ {{ event = "problem.answered", when = {{ correct = true }}, count = {} }} ] }}"#, 20 + i),
            5 => format!(r#"{{ kind = "daily_streak", event = ["problem.answered", "video.watched"], days = {}, grace_hours = 36 }}"#, 2 + i),
            6 => format!(r#"{{ kind = "count", event = "article.read", distinct = "article", target = {} }}"#, 5 + i),
            _ => format!(r#"{{ kind = "xp", at_least = {} }}"#, 1000 * (i + 1)),
        };
        doc.push_str(&format!("[[badges]]\nid = \"b{i}\"\nname = \"Badge {i}\"\ntier = \"silver\"\nxp = 10\nrule = {rule}\n"));
    }
    Catalogue::parse(&doc, Format::Toml).expect("generated catalogue is valid")
}

fn bench_apply(c: &mut Criterion) {
    const N: usize = 10_000;
    for (name, cat) in [("demo", Catalogue::demo()), ("200-badges", big_catalogue())] {
        let mut g = c.benchmark_group(format!("apply/{name}"));
        g.throughput(Throughput::Elements(N as u64));
        g.sample_size(20);
        // One user receiving 10,000 events: the state grows to its steady size (full caches).
        let events = mix(N, "u1");
        g.bench_function("one-user-10k-events", |bch| {
            bch.iter_batched(
                UserState::default,
                |mut st| {
                    for e in &events {
                        black_box(apply(&mut st, e, e.occurred_at, &cat));
                    }
                    st
                },
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

fn bench_encode(c: &mut Criterion) {
    let cat = Catalogue::demo();
    let mut st = UserState::default();
    for e in mix(2_000, "u2") {
        apply(&mut st, &e, e.occurred_at, &cat);
    }
    let bytes = bincode::serde::encode_to_vec(&st, bincode::config::standard()).unwrap();
    let mut g = c.benchmark_group("state");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode-after-2k-events", |bch| bch.iter(|| bincode::serde::encode_to_vec(black_box(&st), bincode::config::standard()).unwrap()));
    g.bench_function("decode-after-2k-events", |bch| {
        bch.iter(|| bincode::serde::decode_from_slice::<UserState, _>(black_box(&bytes), bincode::config::standard()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_apply, bench_encode);
criterion_main!(benches);
