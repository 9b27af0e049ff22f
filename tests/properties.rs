//! Property tests for the rule core over the demo catalogue: duplicates never change state,
//! replaying a stream is deterministic to the byte, XP never decreases, award times never move;
//! and the first two with award times again over the demo plus a badge of every rule kind of
//! issue 23, on streams spanning weeks, with late events and time-zone changes; and the first
//! two again with revocations through the API and badges that expire, where XP moves only by
//! awards and by what revocations say they took back.

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
[[badges]]
id = "p-comeback"
name = "p"
tier = "bronze"
repeat_every = 1
rule = { kind = "comeback", event = ["login", "problem.answered"], after = "20h" }
[[badges]]
id = "p-idle"
name = "p"
tier = "bronze"
xp = 2
repeat_every = 2
rule = { kind = "absence", event = "exercise.proficient", until = "problem.answered", until_when = { correct = true }, key = "exercise", within = "1d" }
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

/// The demo catalogue with badges held for a period (`valid_for`) on a count, a window and
/// a streak, so that streams of weeks see them expire and be earned again.
fn expiring() -> &'static Catalogue {
    static CAT: OnceLock<Catalogue> = OnceLock::new();
    CAT.get_or_init(|| {
        let extra = r#"
[[badges]]
id = "p-certified"
name = "p"
tier = "silver"
xp = 25
valid_for = "3d"
rule = { kind = "count", event = "exercise.proficient", target = 2 }
[[badges]]
id = "p-busy-week"
name = "p"
tier = "bronze"
xp = 5
valid_for = "2d"
rule = { kind = "window", within = "7d", require = [ { event = "problem.answered", count = 4 } ] }
[[badges]]
id = "p-hot-hand"
name = "p"
tier = "bronze"
valid_for = "36h"
rule = { kind = "streak", event = "problem.answered", when = { correct = true }, target = 2 }
[[badges]]
id = "p-idle"
name = "p"
tier = "bronze"
xp = 4
valid_for = "2d"
rule = { kind = "absence", event = "exercise.proficient", until = "problem.answered", key = "exercise", within = "20h" }
"#;
        Catalogue::parse(&format!("{}\n{extra}", accolade::core::catalogue::DEMO_CATALOGUE), accolade::core::Format::Toml).expect("the expiring catalogue is valid")
    })
}

/// A log for `expiring()`: the stream's events, with a revocation through the API of a badge
/// the user holds (by position among those held) after every step that `op` picks, as the
/// actor would write it, and the live state that writing it built. Each revocation is also
/// sent again at once, as a retrying backend would: the third value lists what such a retry
/// changed (nothing, if it counts once).
fn with_revocations(events: &[(Event, i64)], ops: &[(u8, bool)]) -> (Vec<accolade::store::StoredEvent>, UserState, Vec<String>) {
    use accolade::records::{TakeRecord, REVOKE_EVENT};
    let cat = expiring();
    let mut st = UserState::default();
    let mut log = Vec::new();
    let mut changed = Vec::new();
    for (i, (e, now)) in events.iter().enumerate() {
        let fx = apply(&mut st, e, *now, cat);
        match fx.first() {
            Some(Effect::Accepted { .. }) => log.push(accolade::store::StoredEvent { event: e.clone(), received_at: *now, catalogue_version: cat.version, pushes: vec![] }),
            // A duplicate by fingerprint is logged under its own id, as the plan does.
            Some(Effect::Duplicate { by: accolade::core::DuplicateBy::Fingerprint, .. }) => {
                let d = Event { event_type: accolade::records::DUPLICATE_EVENT.into(), payload: accolade::records::duplicate_payload(&e.event_type), ..e.clone() };
                log.push(accolade::store::StoredEvent { event: d, received_at: *now, catalogue_version: cat.version, pushes: vec![] });
            }
            _ => {}
        }
        let Some(&(pick, claw_back)) = ops.get(i) else { continue };
        if pick == 8 {
            // A look with no event, as the expiry sweep or a connecting socket makes when the
            // user's next look is due: logged as an `accolade.expire` record.
            let at = *now + 700;
            if st.next_look().is_some_and(|t| t <= at) {
                let id = format!("expire:{}", log.len() + 1);
                accolade::core::look(&mut st, at, &id, cat);
                let mut r = Event::new(&id, accolade::records::EXPIRE_EVENT, at, &[]);
                r.user_id = "p".into();
                r.tenant_id = "t".into();
                log.push(accolade::store::StoredEvent { event: r, received_at: at, catalogue_version: cat.version, pushes: vec![] });
            }
            continue;
        }
        if pick == 9 {
            // A retraction of an earlier event of the user's, chosen by this step's place.
            let facts: Vec<&accolade::store::StoredEvent> = log.iter().filter(|e| !accolade::records::system_record(&e.event.event_type)).collect();
            if facts.is_empty() {
                continue;
            }
            let target = facts[i % facts.len()].event.event_id.clone();
            if accolade::records::retracted(&log).contains(&target) {
                continue;
            }
            let id = format!("retract:{target}:{}", log.len() + 1);
            let at = *now + 500;
            let rec = TakeRecord { target, reason: "refunded".into(), claw_back };
            accolade::replay::apply_retract(&mut st, &log, &rec, at, &id, cat);
            let mut r = Event::new(&id, accolade::records::RETRACT_EVENT, at, &[]);
            r.payload = rec.payload(accolade::records::RETRACT_EVENT);
            r.user_id = "p".into();
            r.tenant_id = "t".into();
            log.push(accolade::store::StoredEvent { event: r, received_at: at, catalogue_version: cat.version, pushes: vec![] });
            continue;
        }
        if pick >= 4 || st.badges.is_empty() {
            continue;
        }
        let badge = st.badges.keys().nth(pick as usize % st.badges.len()).cloned().unwrap();
        let id = format!("revoke:{badge}:{}", log.len() + 1);
        let at = *now + 500;
        let fx = accolade::core::revoke::revoke(&mut st, &badge, "checked by hand", claw_back, at, &id, cat).expect("a held badge can be revoked");
        assert!(!fx.is_empty());
        let mut retried = st.clone();
        let again = accolade::core::revoke::revoke(&mut retried, &badge, "checked by hand", claw_back, at, "retry", cat);
        if again != Ok(vec![]) || retried != st {
            changed.push(format!("{badge}: {again:?}"));
        }
        let rec = TakeRecord { target: badge, reason: "checked by hand".into(), claw_back };
        let mut r = Event::new(&id, REVOKE_EVENT, at, &[]);
        r.payload = rec.payload(REVOKE_EVENT);
        r.user_id = "p".into();
        r.tenant_id = "t".into();
        log.push(accolade::store::StoredEvent { event: r, received_at: at, catalogue_version: cat.version, pushes: vec![] });
    }
    (log, st, changed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    /// Revocations, expiries, retractions and lapsed waits replay to the byte: the log of
    /// events and `accolade.revoke`, `accolade.retract` and `accolade.expire` (a look with no
    /// event) records, replayed as every rebuild does, gives
    /// the live state's bytes; a revocation sent
    /// again and an event sent again change nothing; XP changes only by awards (up) and
    /// revocations that take it back (down, by exactly what they say).
    #[test]
    fn revocations_replay_to_the_byte_and_repeats_change_nothing(actions in prop::collection::vec(action(), 1..160), ops in prop::collection::vec((0u8..10, any::<bool>()), 0..160)) {
        let cat = expiring();
        let events = long_stream(&actions);
        let (log, live, retries_changed) = with_revocations(&events, &ops);
        prop_assert!(retries_changed.is_empty(), "a revocation sent again changed something: {:?}", retries_changed);
        let mut rebuilt = UserState::default();
        for i in 0..log.len() {
            accolade::replay::replay_record(&mut rebuilt, &log, i, &[], cat);
        }
        prop_assert_eq!(encode(&live), encode(&rebuilt));
        // Every event sent again, later, is a duplicate (or too late) and changes nothing.
        let mut again = live.clone();
        let last = log.last().map_or(T0, |e| e.received_at) + 1;
        let settled = encode(&again);
        for e in log.iter().filter(|e| !accolade::records::system_record(&e.event.event_type)) {
            let fx = apply(&mut again, &e.event, last, cat);
            prop_assert!(matches!(fx[..], [Effect::Duplicate { .. }] | [Effect::Rejected { .. }]), "{:?}", fx);
        }
        prop_assert_eq!(settled, encode(&again));
        // XP: every change is an award's or a revocation's, and adds up.
        let mut st = UserState::default();
        for i in 0..log.len() {
            let xp_before = st.xp;
            let fx = if log[i].event.event_type == accolade::records::RETRACT_EVENT {
                let rec = accolade::records::TakeRecord::parse(&log[i]).unwrap();
                accolade::replay::apply_retract(&mut st, &log[..i], &rec, log[i].received_at, &log[i].event.event_id, cat)
            } else if log[i].event.event_type == accolade::records::REVOKE_EVENT {
                let rec = accolade::records::TakeRecord::parse(&log[i]).unwrap();
                accolade::core::revoke::revoke(&mut st, &rec.target, &rec.reason, rec.claw_back, log[i].received_at, &log[i].event.event_id, cat).unwrap()
            } else if log[i].event.event_type == accolade::records::EXPIRE_EVENT {
                accolade::core::look(&mut st, log[i].received_at, &log[i].event.event_id, cat)
            } else {
                apply(&mut st, &log[i].event, log[i].received_at, cat)
            };
            let up: u64 = fx.iter().map(|f| if let Effect::Xp { delta, .. } = f { *delta } else { 0 }).sum();
            let down: u64 = fx.iter().map(|f| if let Effect::Revoked { xp, .. } = f { *xp } else { 0 }).sum();
            prop_assert_eq!(st.xp, xp_before + up - down);
            prop_assert!(st.level >= 1 && st.level == cat.levels.level_for(st.xp), "level {} at {} XP", st.level, st.xp);
        }
    }
}
