//! Property tests for the rule core over the demo catalogue: duplicates never change state,
//! replaying a stream is deterministic to the byte, XP never decreases, award times never move.

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
