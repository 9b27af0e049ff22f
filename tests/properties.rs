//! Property tests for the rule core over the demo catalogue: duplicates never change state,
//! replaying a stream is deterministic to the byte, XP never decreases, award times never move;
//! and the first two with award times again over the demo plus a badge of every rule kind of
//! issue 23, on streams spanning weeks, with late events and time-zone changes.

use accolade::core::value::{b, n, s};
use accolade::core::{apply, Catalogue, Effect, Event, UserState};
use proptest::prelude::*;
use std::sync::OnceLock;

const T0: i64 = 1_772_452_800_000;

fn demo() -> &'static Catalogue {
    static CAT: OnceLock<Catalogue> = OnceLock::new();
    CAT.get_or_init(Catalogue::demo)
}

/// One generated action: kind, a small choice of keys, a flag and a number, and a time step.
fn action() -> impl Strategy<Value = (u8, u8, bool, u16, u32)> {
    (0u8..6, 0u8..4, any::<bool>(), 0u16..4000, 0u32..7_200_000)
}

fn to_event(i: usize, (kind, key, flag, num, _): (u8, u8, bool, u16, u32), at: i64) -> Event {
    let ex = ["addition-1", "subtraction-1", "fractions-1", "trigonometry-1"][key as usize];
    let (ty, payload): (&str, Vec<(&str, accolade::core::Value)>) = match kind {
        0 | 1 => ("problem.answered", vec![("exercise", s(ex)), ("correct", b(flag || kind == 1)), ("seconds", n((num % 30) as f64))]),
        2 => ("video.watched", vec![("video", s(&format!("v{}", num % 9))), ("playlist", s(ex)), ("seconds", n(num as f64))]),
        3 => ("exercise.proficient", vec![("exercise", s(ex))]),
        4 => ("article.read", vec![("article", s(&format!("a{}", num % 12)))]),
        _ => ("login", vec![]),
    };
    let mut e = Event::new(&format!("ev-{i}"), ty, at, &payload);
    e.user_id = "p".into();
    e.tenant_id = "t".into();
    e
}

fn stream(actions: &[(u8, u8, bool, u16, u32)]) -> Vec<Event> {
    let mut at = T0;
    actions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            at += a.4 as i64;
            to_event(i, *a, at)
        })
        .collect()
}

fn encode(st: &UserState) -> Vec<u8> {
    bincode::serde::encode_to_vec(st, bincode::config::standard()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn replay_is_deterministic_to_the_byte(actions in prop::collection::vec(action(), 1..120)) {
        let events = stream(&actions);
        let run = || {
            let mut st = UserState::default();
            let fx: Vec<Vec<Effect>> = events.iter().map(|e| apply(&mut st, e, e.occurred_at, demo())).collect();
            (encode(&st), fx)
        };
        prop_assert_eq!(run(), run());
    }

    #[test]
    fn duplicates_never_change_state(actions in prop::collection::vec(action(), 1..80), dup_every in 1usize..5) {
        let events = stream(&actions);
        let mut clean = UserState::default();
        let mut noisy = UserState::default();
        for (i, e) in events.iter().enumerate() {
            apply(&mut clean, e, e.occurred_at, demo());
            apply(&mut noisy, e, e.occurred_at, demo());
            if i % dup_every == 0 {
                // The same event again, and an earlier one, both later in time.
                let before = encode(&noisy);
                let fx = apply(&mut noisy, e, e.occurred_at + 1000, demo());
                prop_assert!(matches!(fx[..], [Effect::Duplicate { .. }]), "{:?}", fx);
                let old = &events[i / 2];
                apply(&mut noisy, old, e.occurred_at, demo());
                prop_assert_eq!(before, encode(&noisy));
            }
        }
        prop_assert_eq!(encode(&clean), encode(&noisy));
    }

    #[test]
    fn xp_never_decreases_and_awards_never_move(actions in prop::collection::vec(action(), 1..150)) {
        let mut st = UserState::default();
        let mut last_xp = 0;
        let mut seen: std::collections::BTreeMap<String, i64> = Default::default();
        for e in stream(&actions) {
            for fx in apply(&mut st, &e, e.occurred_at, demo()) {
                if let Effect::Xp { delta, total, .. } = fx {
                    prop_assert!(delta > 0 && total == last_xp + delta);
                    last_xp = total;
                }
            }
            prop_assert_eq!(st.xp, last_xp);
            for (id, rec) in &st.badges {
                let at = *seen.entry(id.clone()).or_insert(rec.awarded_at);
                prop_assert_eq!(at, rec.awarded_at, "award time of {} moved", id);
            }
            prop_assert!(st.level >= 1 && st.level == demo().levels.level_for(st.xp));
        }
    }
}

/// The demo catalogue with one badge of each rule kind issue 23 added (calendar buckets in
/// every reading, counted keys, ratios, `all` over per-key parts, `repeat`), so that the
/// properties cover them over streams long enough for weeks and months.
fn extended() -> &'static Catalogue {
    static CAT: OnceLock<Catalogue> = OnceLock::new();
    CAT.get_or_init(|| {
        let extra = r#"
[[badges]]
id = "p-month-video"
name = "p"
tier = "bronze"
rule = { kind = "calendar", event = "video.watched", sum = "seconds", bucket = "month", at_least = 3000, buckets = 1 }
[[badges]]
id = "p-weeks"
name = "p"
tier = "bronze"
repeat = true
rule = { kind = "calendar", event = ["problem.answered", "login"], bucket = "week", in_a_row = 2, week_starts = "sunday" }
[[badges]]
id = "p-days-in-month"
name = "p"
tier = "bronze"
rule = { kind = "calendar", event = "problem.answered", when = { correct = true }, bucket = "day", at_least = 2, buckets = 3, in_one = "month" }
[[badges]]
id = "p-keys"
name = "p"
tier = "bronze"
rule = { kind = "keys", count = 2, rule = { kind = "count", event = "problem.answered", when = { correct = true }, per = "exercise", target = 3 } }
[[badges]]
id = "p-ratio"
name = "p"
tier = "bronze"
repeat = true
rule = { kind = "ratio", of = { kind = "count", event = "problem.answered", when = { correct = true } }, to = { kind = "count", event = "problem.answered" }, at_least = 0.6 }
[[badges]]
id = "p-same-key"
name = "p"
tier = "bronze"
rule = { kind = "all", of = [ { kind = "count", event = "problem.answered", per = "exercise", target = 3 }, { kind = "max", event = "problem.answered", field = "seconds", per = "exercise", target = 20 }, { kind = "xp", at_least = 10 } ] }
[[badges]]
id = "p-streak-again"
name = "p"
tier = "bronze"
xp = 3
repeat = true
rule = { kind = "streak", event = "problem.answered", when = { correct = true }, target = 3 }
"#;
        Catalogue::parse(&format!("{}\n{extra}", accolade::core::catalogue::DEMO_CATALOGUE), accolade::core::Format::Toml).expect("the extended catalogue is valid")
    })
}

/// A stream for the extended catalogue: steps of up to 30 hours, so that it spans weeks;
/// some events reported up to 20 hours late (within the 24-hour bound); and time-zone changes.
fn long_stream(actions: &[(u8, u8, bool, u16, u32)]) -> Vec<(Event, i64)> {
    let mut now = T0;
    actions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            now += (a.4 as i64) * 15;
            let late = if a.3 % 7 == 0 { (a.3 as i64 % 20) * 3_600_000 } else { 0 };
            let mut e = to_event(i, *a, now - late);
            if a.0 == 5 && a.3 % 5 == 0 {
                let zone = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"][a.1 as usize];
                e = Event::new(&format!("ev-{i}"), "user.profile", now - late, &[("timezone", s(zone))]);
                e.user_id = "p".into();
                e.tenant_id = "t".into();
            }
            (e, now)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    #[test]
    fn new_rule_kinds_replay_to_the_byte_and_ignore_duplicates(actions in prop::collection::vec(action(), 1..200), dup_every in 1usize..6) {
        let events = long_stream(&actions);
        let run = || {
            let mut st = UserState::default();
            let fx: Vec<Vec<Effect>> = events.iter().map(|(e, now)| apply(&mut st, e, *now, extended())).collect();
            (encode(&st), fx)
        };
        let (bytes, fx) = run();
        prop_assert_eq!((bytes.clone(), fx), run());
        let mut noisy = UserState::default();
        let mut seen: std::collections::BTreeMap<String, i64> = Default::default();
        for (i, (e, now)) in events.iter().enumerate() {
            apply(&mut noisy, e, *now, extended());
            if i % dup_every == 0 {
                let before = encode(&noisy);
                let again = apply(&mut noisy, e, *now + 1000, extended());
                prop_assert!(matches!(again[..], [Effect::Duplicate { .. }] | [Effect::Rejected { .. }]), "{:?}", again);
                prop_assert_eq!(before, encode(&noisy));
            }
            for (id, rec) in &noisy.badges {
                let at = *seen.entry(id.clone()).or_insert(rec.awarded_at);
                prop_assert_eq!(at, rec.awarded_at, "award time of {} moved", id);
            }
        }
        prop_assert_eq!(bytes, encode(&noisy));
    }
}
