//! Rule tables for the pure core: for every rule kind, event streams and the effects a user
//! would see, including the edges (exact thresholds, window bounds, broken and resumed streaks,
//! time-zone midnight, DST, duplicates, late events, hidden and repeatable badges).

use accolade::core::value::{b, n, s};
use accolade::core::{apply, Catalogue, DuplicateBy, Effect, Event, Format, Millis, Rejection, UserState, Value, XpReason};

const HOUR: Millis = 3_600_000;
const DAY: Millis = 24 * HOUR;
const MIN: Millis = 60_000;

/// 2026-03-02T12:00:00Z, a Monday.
const T0: Millis = 1_772_452_800_000;

const HEADER: &str = r#"
version = 1
[settings]
late_bound = "24h"
future_skew = "5m"
[event_types."problem.answered"]
client = true
fields = { exercise = "string", correct = "bool", seconds = "number" }
[event_types."video.watched"]
client = true
fields = { video = "string", playlist = "string", seconds = "number" }
[event_types."exercise.proficient"]
fields = { exercise = "string" }
[event_types."article.read"]
client = true
fields = { article = "string" }
fingerprint = ["article"]
fingerprint_window = "1h"
[event_types."login"]
client = true
[event_types."race.finished"]
client = true
fields = { course = "string", time = "number", record = "number", score = "number", previous_best = "number?" }
[levels]
thresholds = [0, 100, 300, 600]
[tables.fast]
default = 10
quick = 2
"#;

fn catalogue(rest: &str) -> Catalogue {
    Catalogue::parse(&format!("{HEADER}\n{rest}"), Format::Toml).unwrap_or_else(|e| panic!("catalogue: {e}"))
}

fn badge(id: &str, extra: &str, rule: &str) -> String {
    format!("[[badges]]\nid = \"{id}\"\nname = \"{id}\"\ntier = \"bronze\"\n{extra}\nrule = {rule}\n")
}

/// One user's stream: applies events and remembers effects.
struct User {
    cat: Catalogue,
    st: UserState,
    next: u64,
}

impl User {
    fn new(cat: Catalogue) -> User {
        User { cat, st: UserState::default(), next: 0 }
    }

    fn event(&mut self, ty: &str, at: Millis, payload: &[(&str, Value)]) -> Event {
        self.next += 1;
        let mut e = Event::new(&format!("e{}", self.next), ty, at, payload);
        e.user_id = "alice".into();
        e.tenant_id = "demo".into();
        e
    }

    fn send(&mut self, ty: &str, at: Millis, payload: &[(&str, Value)]) -> Vec<Effect> {
        let e = self.event(ty, at, payload);
        apply(&mut self.st, &e, at + 1000, &self.cat)
    }

    fn answer(&mut self, at: Millis, exercise: &str, correct: bool, seconds: f64) -> Vec<String> {
        unlocks(&self.send("problem.answered", at, &[("exercise", s(exercise)), ("correct", b(correct)), ("seconds", n(seconds))]))
    }

    fn watch(&mut self, at: Millis, playlist: &str, video: &str, seconds: f64) -> Vec<String> {
        unlocks(&self.send("video.watched", at, &[("video", s(video)), ("playlist", s(playlist)), ("seconds", n(seconds))]))
    }
}

fn unlocks(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Unlock { badge, .. } => Some(badge.to_string()),
            _ => None,
        })
        .collect()
}

/// Plays `(ms offset, correct, exercise)` answers and returns at which step each badge unlocked.
fn answers_table(cat: &Catalogue, steps: &[(Millis, bool, &str, f64)]) -> Vec<(usize, String)> {
    let mut u = User::new(cat.clone());
    let mut out = vec![];
    for (i, (off, correct, ex, secs)) in steps.iter().enumerate() {
        for b in u.answer(T0 + off, ex, *correct, *secs) {
            out.push((i + 1, b));
        }
    }
    out
}

#[test]
fn count_with_predicate_per_key_and_distinct() {
    let cat = catalogue(&[
        badge("three-right", "", r#"{ kind = "count", event = "problem.answered", when = { correct = true }, target = 3 }"#),
        badge("slow-ones", "", r#"{ kind = "count", event = "problem.answered", when = { seconds = { gte = 60 } }, target = 2 }"#),
        badge("two-in-one", "", r#"{ kind = "count", event = "problem.answered", per = "exercise", target = 2 }"#),
        badge("three-exercises", "", r#"{ kind = "count", event = "problem.answered", distinct = "exercise", target = 3 }"#),
        badge("listed", "", r#"{ kind = "count", event = "problem.answered", when = { exercise = { in = ["x", "y"] } }, target = 1 }"#),
    ]
    .concat());
    let got = answers_table(
        &cat,
        &[(0, true, "a", 5.0), (1, false, "b", 60.0), (2, true, "c", 61.0), (3, true, "d", 1.0), (4, false, "d", 1.0), (5, true, "y", 1.0)],
    );
    let want = [(3, "slow-ones"), (3, "three-exercises"), (4, "three-right"), (5, "two-in-one"), (6, "listed")];
    assert_eq!(got, want.map(|(i, b)| (i, b.to_string())));
}

#[test]
fn sum_and_max_per_key() {
    let cat = catalogue(&[
        badge("hour-in-one-playlist", "", r#"{ kind = "sum", event = "video.watched", field = "seconds", per = "playlist", target = 3600 }"#),
        badge("hour-total", "", r#"{ kind = "sum", event = "video.watched", field = "seconds", target = 3600 }"#),
        badge("long-one", "", r#"{ kind = "max", event = "video.watched", field = "seconds", target = 1800 }"#),
    ]
    .concat());
    let mut u = User::new(cat);
    assert_eq!(u.watch(T0, "p1", "v1", 1799.0), Vec::<String>::new());
    assert_eq!(u.watch(T0 + 1, "p2", "v2", 1800.0), vec!["long-one"]);
    // 3599 s in p1 and 3599 + 1800 in total: the total badge, not the playlist one.
    assert_eq!(u.watch(T0 + 2, "p1", "v3", 1800.0), vec!["hour-total"]);
    assert_eq!(u.watch(T0 + 3, "p2", "v4", 1799.0), Vec::<String>::new());
    // Exactly at the threshold counts.
    assert_eq!(u.watch(T0 + 4, "p1", "v5", 1.0), vec!["hour-in-one-playlist"]);
}

#[test]
fn consecutive_streak_per_key_broken_and_resumed_once_per_exercise() {
    let cat = catalogue(&badge(
        "streak-3",
        "xp = 100\nper_key = \"exercise\"",
        r#"{ kind = "streak", event = "problem.answered", when = { correct = true }, per = "exercise", target = 3 }"#,
    ));
    let mut u = User::new(cat);
    let t = |i: i64| T0 + i * 1000;
    assert!(u.answer(t(0), "a", true, 3.0).is_empty());
    assert!(u.answer(t(1), "a", true, 3.0).is_empty());
    // Another exercise does not break exercise a's streak.
    assert!(u.answer(t(2), "b", false, 3.0).is_empty());
    assert_eq!(u.answer(t(3), "a", true, 3.0), vec!["streak-3"]);
    // A wrong answer breaks it; it must be rebuilt from zero.
    assert!(u.answer(t(4), "b", true, 3.0).is_empty());
    assert!(u.answer(t(5), "b", false, 3.0).is_empty());
    assert!(u.answer(t(6), "b", true, 3.0).is_empty());
    assert!(u.answer(t(7), "b", true, 3.0).is_empty());
    let fx = u.send("problem.answered", t(8), &[("exercise", s("b")), ("correct", b(true)), ("seconds", n(1.0))]);
    // Earned again for exercise b, counted twice, but XP only on the first award.
    assert!(fx.contains(&Effect::Unlock { badge: "streak-3".into(), count: 2, key: Some("b".into()), xp: 0, at: t(8) }), "{fx:?}");
    // Exercise a again: already earned there.
    assert!(u.answer(t(9), "a", true, 3.0).is_empty());
    assert_eq!(u.st.badges["streak-3"].keys, vec!["a", "b"]);
    assert_eq!(u.st.xp, 100);
}

#[test]
fn breaking_event_can_be_narrower_than_not_matching() {
    // Only a wrong answer faster than 5 s (a guess) breaks this streak.
    let cat = catalogue(&badge(
        "careful",
        "",
        r#"{ kind = "streak", event = "problem.answered", when = { correct = true }, breaks_when = { correct = false, seconds = { lt = 5 } }, target = 3 }"#,
    ));
    let got = answers_table(&cat, &[(0, true, "a", 9.0), (1, false, "a", 30.0), (2, true, "a", 9.0), (3, false, "a", 1.0), (4, true, "a", 9.0), (5, true, "a", 9.0), (6, true, "a", 9.0)]);
    assert_eq!(got, vec![(7, "careful".to_string())]);
}

fn daily(extra: &str) -> Catalogue {
    catalogue(&badge("three-days", "", &format!(r#"{{ kind = "daily_streak", event = ["problem.answered", "video.watched"], days = 3 {extra} }}"#)))
}

#[test]
fn calendar_streak_counts_local_days() {
    // Table: hours after T0 (12:00 UTC) of each action, and whether the third day unlocks.
    let table: &[(&str, &[i64], Option<usize>)] = &[
        ("three days", &[0, 24, 48], Some(3)),
        ("twice a day does not count double", &[0, 1, 24, 25], None),
        ("a missed day resets", &[0, 48, 72, 96], Some(4)),
        ("late on day 1, early on day 3 is still three days", &[11, 24, 36], Some(3)),
    ];
    for (name, hours, want) in table {
        let mut u = User::new(daily(""));
        let mut got = None;
        for (i, h) in hours.iter().enumerate() {
            if !u.answer(T0 + h * HOUR, "a", true, 1.0).is_empty() {
                got = Some(i + 1);
            }
        }
        assert_eq!(got, *want, "{name}");
    }
}

#[test]
fn calendar_streak_uses_the_users_time_zone_and_survives_dst() {
    let mut u = User::new(daily(""));
    u.send("user.profile", T0 - DAY, &[("timezone", s("America/New_York"))]);
    // 2026-03-07 23:30 and 2026-03-08 23:30 New York time: DST starts on the 8th.
    let sat = 1_772_944_200_000; // 2026-03-08T04:30:00Z = 2026-03-07 23:30 EST
    let sun = sat + 23 * HOUR; // 23:30 EDT on the 8th (the day is 23 hours long)
    let mon = sun + 24 * HOUR + 10 * MIN; // 23:40 EDT on the 9th
    assert!(u.answer(sat, "a", true, 1.0).is_empty());
    assert!(u.answer(sun, "a", true, 1.0).is_empty());
    assert_eq!(u.answer(mon, "a", true, 1.0), vec!["three-days"]);

    // In UTC the same three instants fall on days 8, 9 and 10 too; but 00:30 UTC vs 23:30 the
    // evening before is where zones differ: two actions 1 hour apart are one day in New York
    // (23:00 and 23:59) but two in UTC.
    let mut utc = User::new(daily(""));
    let mut ny = User::new(daily(""));
    ny.send("user.profile", T0 - DAY, &[("timezone", s("America/New_York"))]);
    let t = T0 + 11 * HOUR + 30 * MIN; // 23:30 UTC, 18:30 New York
    for (i, u) in [&mut utc, &mut ny].into_iter().enumerate() {
        u.answer(t, "a", true, 1.0);
        let third = u.answer(t + HOUR, "a", true, 1.0); // 00:30 UTC next day
        let fourth = u.answer(t + 25 * HOUR, "a", true, 1.0);
        if i == 0 {
            assert!(third.is_empty() && fourth == vec!["three-days"], "utc: {third:?} {fourth:?}");
        } else {
            assert!(third.is_empty() && fourth.is_empty(), "new york: {third:?} {fourth:?}");
        }
    }
}

#[test]
fn calendar_streak_grace_and_freezes() {
    // With a 36 h grace, a gap of a calendar day is forgiven when actions are < 36 h apart.
    let mut u = User::new(daily(", grace_hours = 36"));
    assert!(u.answer(T0 - 11 * HOUR, "a", true, 1.0).is_empty()); // 01:00 on day 1
    assert!(u.answer(T0 + 11 * HOUR, "a", true, 1.0).is_empty()); // 23:00 on day 1 (same day)
    assert!(u.answer(T0 + 11 * HOUR + 35 * HOUR, "a", true, 1.0).is_empty()); // 10:00 on day 3: 35 h later
    assert_eq!(u.answer(T0 + 3 * DAY, "a", true, 1.0), vec!["three-days"]);
    // Without the grace the same gap resets.
    let mut strict = User::new(daily(""));
    for h in [-11, 11, 46] {
        strict.answer(T0 + h * HOUR, "a", true, 1.0);
    }
    assert!(strict.answer(T0 + 3 * DAY, "a", true, 1.0).is_empty());
    // A freeze, earned after every 2 days of streak, covers one missed day.
    let mut f = User::new(catalogue(&badge("four", "", r#"{ kind = "daily_streak", event = "login", days = 4, freezes = 1, freeze_every_days = 2 }"#)));
    for d in [0, 1] {
        assert!(unlocks(&f.send("login", T0 + d * DAY, &[])).is_empty());
    }
    assert!(unlocks(&f.send("login", T0 + 3 * DAY, &[])).is_empty()); // day 2 missed, frozen
    assert_eq!(unlocks(&f.send("login", T0 + 4 * DAY, &[])), vec!["four"]);
}

#[test]
fn time_window_bounds_are_inclusive_and_slide() {
    let cat = catalogue(&badge(
        "power",
        "",
        r#"{ kind = "window", within = "15m", require = [ { event = "problem.answered", when = { correct = true }, count = 3 }, { event = "video.watched", sum = "seconds", at_least = 600 } ] }"#,
    ));
    let mut u = User::new(cat.clone());
    assert!(u.watch(T0, "p", "v", 600.0).is_empty());
    assert!(u.answer(T0 + 5 * MIN, "a", true, 1.0).is_empty());
    assert!(u.answer(T0 + 6 * MIN, "a", false, 1.0).is_empty());
    assert!(u.answer(T0 + 10 * MIN, "a", true, 1.0).is_empty());
    // Exactly 15 minutes after the video: still inside.
    assert_eq!(u.answer(T0 + 15 * MIN, "a", true, 1.0), vec!["power"]);

    let mut late = User::new(cat);
    late.watch(T0, "p", "v", 600.0);
    late.answer(T0 + 5 * MIN, "a", true, 1.0);
    late.answer(T0 + 10 * MIN, "a", true, 1.0);
    // One millisecond too late: the video has slid out of the window.
    assert!(late.answer(T0 + 15 * MIN + 1, "a", true, 1.0).is_empty());
    // A late-reported video that happened inside the window brings it back.
    assert_eq!(late.watch(T0 + 14 * MIN, "p", "v2", 600.0), vec!["power"]);
}

const FAST_3: &str = r#"{ kind = "recent", event = "problem.answered", last = 3, same = "exercise", all = { correct = true }, sum_at_most = { field = "seconds", per_item_table = "fast" } }"#;

#[test]
fn recent_patterns_timed_recovery_and_unfinished() {
    let cat = catalogue(&[
        badge("fast-3", "", FAST_3),
        badge("recovery", "", r#"{ kind = "recent", event = "problem.answered", last = 5, same = "exercise", newest = [{ correct = true }, { correct = false }], at_least = { when = { correct = false }, count = 3 } }"#),
        badge("mostly-right", "", r#"{ kind = "all", of = [ { kind = "count", event = "problem.answered", per = "exercise", target = 4 }, { kind = "not", rule = { kind = "count", event = "exercise.proficient", per = "exercise", target = 1 } }, { kind = "recent", event = "problem.answered", last = 6, in_key = "exercise", min_items = 4, newest = [{ correct = true }], ratio = { when = { correct = true }, at_least = 0.75 } } ] }"#),
    ]
    .concat());
    let fast = catalogue(&badge("fast-3", "", FAST_3));
    // fast-3: three correct in "quick" (2 s each allowed, 6 s total): 2+2+2 unlocks, 2+2+3 not.
    let got = answers_table(&fast, &[(0, true, "quick", 2.0), (1, true, "quick", 2.0), (2, true, "quick", 3.0), (3, true, "quick", 1.0)]);
    assert_eq!(got, vec![(4, "fast-3".to_string())], "2+3+1 = 6 is at the limit");
    let got = answers_table(&fast, &[(0, true, "quick", 2.0), (1, true, "other", 2.0), (2, true, "quick", 2.0)]);
    assert!(got.is_empty(), "not all in one exercise: {got:?}");
    // recovery: last 5 in one exercise, newest right, the one before wrong, >= 3 wrong.
    let got = answers_table(&cat, &[(0, false, "r", 9.0), (1, true, "r", 9.0), (2, false, "r", 9.0), (3, false, "r", 9.0), (4, true, "r", 9.0)]);
    assert_eq!(got, vec![(5, "recovery".to_string())]);
    // mostly-right: 4 answers in "m", 3 of 4 right, newest right; other exercises interleaved.
    let mut u = User::new(cat.clone());
    for (i, (ex, ok)) in [("m", true), ("z", false), ("m", false), ("m", true), ("z", false)].iter().enumerate() {
        assert!(u.answer(T0 + i as i64, ex, *ok, 9.0).is_empty());
    }
    assert_eq!(u.answer(T0 + 10, "m", true, 9.0), vec!["mostly-right"]);
    // ...but not once the user is proficient in that exercise.
    let mut p = User::new(cat);
    p.send("exercise.proficient", T0, &[("exercise", s("m"))]);
    for (i, ok) in [true, false, true, true].iter().enumerate() {
        assert!(p.answer(T0 + i as i64 + 1, "m", *ok, 9.0).is_empty());
    }
}

#[test]
fn ordered_sequence_within_a_time_limit() {
    let rule = r#"{ kind = "sequence", within = "1d", steps = [ { event = "article.read" }, { event = "video.watched" }, { event = "problem.answered", when = { correct = true } } ] }"#;
    let cat = catalogue(&badge("onboarded", "", rule));
    let read = |u: &mut User, at, a: &str| unlocks(&u.send("article.read", at, &[("article", s(a))]));
    // In order within a day.
    let mut u = User::new(cat.clone());
    read(&mut u, T0, "a1");
    u.watch(T0 + HOUR, "p", "v", 10.0);
    assert!(u.answer(T0 + 2 * HOUR, "x", false, 1.0).is_empty(), "the last step needs a correct answer");
    assert_eq!(u.answer(T0 + 3 * HOUR, "x", true, 1.0), vec!["onboarded"]);
    // Out of order does not count.
    let mut o = User::new(cat.clone());
    o.watch(T0, "p", "v", 10.0);
    read(&mut o, T0 + HOUR, "a1");
    assert!(o.answer(T0 + 2 * HOUR, "x", true, 1.0).is_empty());
    // Too slow: the attempt expires; a new article starts over and then succeeds.
    let mut slow = User::new(cat);
    read(&mut slow, T0, "a1");
    slow.watch(T0 + HOUR, "p", "v", 10.0);
    assert!(slow.answer(T0 + DAY + 2 * HOUR, "x", true, 1.0).is_empty());
    read(&mut slow, T0 + DAY + 3 * HOUR, "a2");
    slow.watch(T0 + DAY + 4 * HOUR, "p", "v", 10.0);
    assert_eq!(slow.answer(T0 + DAY + 5 * HOUR, "x", true, 1.0), vec!["onboarded"]);
}

#[test]
fn composites_badges_levels_xp_attributes_and_tenure() {
    let cat = catalogue(&[
        "[[xp]]\nid = \"right\"\nevent = \"problem.answered\"\nwhen = { correct = true }\namount = 100\n".to_string(),
        badge("first", "xp = 50", r#"{ kind = "count", event = "problem.answered", target = 1 }"#),
        badge("level-3", "", r#"{ kind = "level", at_least = 3 }"#),
        badge("xp-250", "", r#"{ kind = "xp", at_least = 250 }"#),
        badge("both", "", r#"{ kind = "all", of = [ { kind = "badge", id = "first" }, { kind = "badge", id = "xp-250" } ] }"#),
        badge("pro-or-video", "", r#"{ kind = "any", of = [ { kind = "attribute", when = { plan = "pro" } }, { kind = "count", event = "video.watched", target = 1 } ] }"#),
        badge("not-pro", "", r#"{ kind = "all", of = [ { kind = "count", event = "login", target = 1 }, { kind = "not", rule = { kind = "attribute", when = { plan = "pro" } } } ] }"#),
        badge("one-year", "", r#"{ kind = "tenure", days = 365 }"#),
    ]
    .concat());
    let mut u = User::new(cat);
    // 100 XP from the rule + 50 from `first` = 150 (level 2).
    assert_eq!(u.answer(T0, "a", true, 1.0), vec!["first"]);
    assert_eq!((u.st.xp, u.st.level), (150, 2));
    // +100 = 250: the XP badge, and `both` in the same event through the cascade.
    assert_eq!(u.answer(T0 + 1, "a", true, 1.0), vec!["xp-250", "both"]);
    let fx = u.send("problem.answered", T0 + 2, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))]);
    assert!(fx.contains(&Effect::LevelUp { level: 3 }) && unlocks(&fx) == vec!["level-3"], "{fx:?}");
    // Attributes and tenure are checked on any event, the profile change itself included.
    let fx = u.send("user.profile", T0 + 3, &[("plan", s("pro")), ("signed_up_at", s("2025-01-01T00:00:00Z"))]);
    assert_eq!(unlocks(&fx), vec!["pro-or-video", "one-year"]);
    assert!(unlocks(&u.send("login", T0 + 4, &[])).is_empty());
    assert!(!u.st.badges.contains_key("not-pro"));
}

#[test]
fn hidden_repeatable_and_availability() {
    let cat = catalogue(&[
        badge("every-2", "xp = 10\nrepeat_every = 2", r#"{ kind = "count", event = "login", target = 2 }"#),
        badge("secret", "hidden = true", r#"{ kind = "count", event = "login", target = 3 }"#),
        badge("march-only", "available_from = \"2026-03-01T00:00:00Z\"\navailable_until = \"2026-04-01T00:00:00Z\"", r#"{ kind = "count", event = "article.read", target = 1 }"#),
    ]
    .concat());
    assert!(cat.badge("secret").unwrap().hidden);
    let mut u = User::new(cat);
    let logins: Vec<Vec<String>> = (0..5).map(|i| unlocks(&u.send("login", T0 + i * HOUR, &[]))).collect();
    assert_eq!(logins, vec![vec![], vec!["every-2".to_string()], vec!["secret".into()], vec!["every-2".into()], vec![]]);
    assert_eq!(u.st.badges["every-2"].count, 2);
    assert_eq!(u.st.xp, 20, "a repeatable badge pays each time");
    // Outside the availability window, the same action earns nothing.
    let april = T0 + 30 * DAY;
    let mut v = User::new(u.cat.clone());
    assert!(unlocks(&v.send("article.read", april, &[("article", s("a"))])).is_empty());
    assert_eq!(unlocks(&u.send("article.read", T0 + 5 * HOUR, &[("article", s("a"))])), vec!["march-only"]);
}

#[test]
fn xp_rules_amounts_caps_and_level_curve() {
    let cat = catalogue(
        r#"
[[xp]]
id = "video"
event = "video.watched"
amount_field = "seconds"
multiplier = 0.1
max = 50
daily_cap = 70
[[xp]]
id = "login"
event = "login"
amount = 5
daily_cap = 5
"#,
    );
    let mut u = User::new(cat);
    let xp = |fx: Vec<Effect>| -> Vec<(u64, u64, u32)> {
        fx.iter().filter_map(|e| if let Effect::Xp { delta, total, level, .. } = e { Some((*delta, *total, *level)) } else { None }).collect()
    };
    assert_eq!(xp(u.send("video.watched", T0, &[("video", s("v")), ("playlist", s("p")), ("seconds", n(305.0))])), vec![(30, 30, 1)]);
    // 1000 s would be 100 XP, capped at 50 per event...
    assert_eq!(xp(u.send("video.watched", T0 + 1, &[("video", s("v")), ("playlist", s("p")), ("seconds", n(1000.0))])), vec![(40, 70, 1)], "...and at 70 per day");
    assert!(xp(u.send("video.watched", T0 + 2, &[("video", s("v")), ("playlist", s("p")), ("seconds", n(100.0))])).is_empty());
    // The cap resets at the user's midnight.
    let fx = u.send("video.watched", T0 + DAY, &[("video", s("v")), ("playlist", s("p")), ("seconds", n(500.0))]);
    assert_eq!(xp(fx.clone()), vec![(50, 120, 2)]);
    assert!(fx.contains(&Effect::LevelUp { level: 2 }));
    assert_eq!(xp(u.send("login", T0 + DAY, &[])), vec![(5, 125, 2)]);
    assert!(xp(u.send("login", T0 + DAY + HOUR, &[])).is_empty(), "once a day");
    assert!(matches!(&u.send("login", T0 + 2 * DAY, &[])[1], Effect::Xp { reason: XpReason::Rule(r), .. } if &**r == "login"));
}

#[test]
fn formula_levels() {
    let cat = Catalogue::parse(
        "version = 1\n[event_types.login]\n[levels]\nbase = 100.0\nexponent = 2.0\nmax_level = 5\n",
        Format::Toml,
    )
    .unwrap();
    let table = [(0, 1), (99, 1), (100, 2), (399, 2), (400, 3), (900, 4), (1600, 5), (1_000_000, 5)];
    for (xp, level) in table {
        assert_eq!(cat.levels.level_for(xp), level, "{xp} XP");
    }
}

#[test]
fn duplicate_ids_and_fingerprints_change_nothing() {
    let cat = catalogue(&badge("two-articles", "", r#"{ kind = "count", event = "article.read", target = 2 }"#));
    let mut u = User::new(cat);
    let e = u.event("article.read", T0, &[("article", s("a1"))]);
    assert!(matches!(apply(&mut u.st, &e, T0, &u.cat)[0], Effect::Accepted { .. }));
    let before = u.st.clone();
    assert_eq!(apply(&mut u.st, &e, T0 + 5, &u.cat), vec![Effect::Duplicate { event_id: e.event_id.clone(), by: DuplicateBy::EventId }]);
    assert_eq!(u.st, before);
    // The same article under a new id (reported by the backend) within the hour: one read.
    let backend = u.event("article.read", T0 + 30 * MIN, &[("article", s("a1"))]);
    let again = apply(&mut u.st, &backend, T0 + 30 * MIN, &u.cat);
    assert!(matches!(again[0], Effect::Duplicate { by: DuplicateBy::Fingerprint, .. }), "{again:?}");
    assert_eq!(u.st.events, 1);
    // That id sent again after the fingerprint window is still a duplicate (found by proptest).
    let resent = apply(&mut u.st, &backend, T0 + 2 * HOUR, &u.cat);
    assert!(matches!(resent[0], Effect::Duplicate { by: DuplicateBy::EventId, .. }), "{resent:?}");
    // After the window it is a new read.
    assert_eq!(unlocks(&u.send("article.read", T0 + 2 * HOUR, &[("article", s("a1"))])), vec!["two-articles"]);
}

#[test]
fn bad_events_are_rejected_with_a_reason_and_change_nothing() {
    let cat = catalogue("");
    let mut u = User::new(cat);
    u.send("login", T0, &[]);
    let before = u.st.clone();
    let table: Vec<(&str, Vec<(&str, Value)>, Millis, &str)> = vec![
        ("quiz.taken", vec![], T0, "unknown_event_type"),
        ("problem.answered", vec![("exercise", s("a")), ("correct", b(true))], T0, "missing_field"),
        ("problem.answered", vec![("exercise", s("a")), ("correct", s("yes")), ("seconds", n(1.0))], T0, "wrong_type"),
        ("problem.answered", vec![("exercise", s("a")), ("correct", b(true)), ("seconds", Value::Other)], T0, "wrong_type"),
        ("user.profile", vec![("timezone", s("Mars/Olympus"))], T0, "bad_value"),
        ("login", vec![], T0 - 25 * HOUR, "too_late"),
        ("login", vec![], T0 + 10 * MIN, "in_future"),
    ];
    for (ty, payload, at, code) in table {
        let e = u.event(ty, at, &payload);
        let fx = apply(&mut u.st, &e, T0, &u.cat);
        match &fx[..] {
            [Effect::Rejected { reason, .. }] => assert_eq!(reason.code(), code, "{ty}: {reason}"),
            other => panic!("{ty}: expected a rejection, got {other:?}"),
        }
        assert_eq!(u.st, before, "{ty} changed state");
    }
    let mut other = u.event("login", T0, &[]);
    other.user_id = "mallory".into();
    assert_eq!(apply(&mut u.st, &other, T0, &u.cat), vec![Effect::Rejected { event_id: other.event_id.clone(), reason: Rejection::WrongUser }]);
    assert_eq!(Rejection::MissingField("seconds".into()).to_string(), "payload.seconds is required");
}

#[test]
fn late_events_within_the_bound_count_where_they_happened() {
    let cat = catalogue(&badge("three", "", r#"{ kind = "count", event = "login", target = 3 }"#));
    let mut u = User::new(cat);
    u.send("login", T0, &[]);
    u.send("login", T0 + HOUR, &[]);
    // Received 23 h after it happened: within the 24 h bound, so it counts.
    let e = u.event("login", T0 - 22 * HOUR, &[]);
    assert_eq!(unlocks(&apply(&mut u.st, &e, T0 + HOUR, &u.cat)), vec!["three"]);
}

#[test]
fn progress_moves_up_and_back() {
    let cat = catalogue(&badge("streak-3", "", r#"{ kind = "streak", event = "problem.answered", when = { correct = true }, target = 3 }"#));
    let mut u = User::new(cat);
    let progress = |fx: Vec<Effect>| fx.into_iter().find_map(|e| if let Effect::Progress { current, target, .. } = e { Some((current, target)) } else { None });
    assert_eq!(progress(u.send("problem.answered", T0, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))])), Some((1.0, 3.0)));
    assert_eq!(progress(u.send("problem.answered", T0 + 1, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))])), Some((2.0, 3.0)));
    assert_eq!(progress(u.send("problem.answered", T0 + 2, &[("exercise", s("a")), ("correct", b(false)), ("seconds", n(1.0))])), Some((0.0, 3.0)));
}

#[test]
fn catalogue_errors_name_the_badge_and_field() {
    let table = [
        (badge("typo", "", r#"{ kind = "count", event = "problem.answered", targte = 3 }"#), "badge `typo`: field `rule`", "unknown field `targte`"),
        (badge("no-type", "", r#"{ kind = "count", event = "quiz", target = 3 }"#), "badge `no-type`: field `rule.event`", "unknown event type `quiz`"),
        (badge("no-field", "", r#"{ kind = "sum", event = "video.watched", field = "minutes", target = 3 }"#), "badge `no-field`: field `rule.field`", "`minutes`"),
        (badge("bad-when", "", r#"{ kind = "count", event = "login", when = { x = 1 }, target = 3 }"#), "badge `bad-when`: field `rule.when`", "`x` is not a declared field"),
        (badge("zero", "", r#"{ kind = "count", event = "login", target = 0 }"#), "badge `zero`: field `rule.target`", "positive"),
        (badge("tier", "", r#"{ kind = "count", event = "login", target = 1 }"#).replace("bronze", "copper"), "badge `tier`: field `tier`", "unknown variant `copper`"),
        (badge("nested", "", r#"{ kind = "all", of = [ { kind = "badge", id = "ghost" } ] }"#), "badge `nested`: field `rule.of[0].id`", "no badge `ghost`"),
        (badge("win", "", r#"{ kind = "window", within = "soon", require = [ { event = "login", count = 1 } ] }"#), "badge `win`: field `rule.within`", "not a duration"),
        (badge("rep", "repeat_every = 5", r#"{ kind = "max", event = "video.watched", field = "seconds", target = 3 }"#), "badge `rep`: field `repeat_every`", "count, sum, comeback, absence or tenure"),
        (badge("eight", "", r#"{ kind = "calendar", event = "login", bucket = "day", buckets = 8, in_one = "week" }"#), "badge `eight`: field `rule.buckets`", "a week has at most 7 days"),
        (badge("long", "", r#"{ kind = "calendar", event = "login", bucket = "day", buckets = 32, in_one = "month" }"#), "badge `long`: field `rule.buckets`", "a month has at most 31 days"),
        (badge("inner", "", r#"{ kind = "keys", count = 2, rule = { kind = "count", event = "problem.answered", per = "exercise", target = 3, describe = "Three" } }"#), "badge `inner`: field `rule.rule.describe`", "give `describe` on the `keys` rule itself"),
        (badge("never-again", "repeat = true", r#"{ kind = "not", rule = { kind = "count", event = "login", target = 3 } }"#), "badge `never-again`: field `repeat`", "never stops holding"),
        (format!("{}{}", badge("dup", "", r#"{ kind = "count", event = "login", target = 1 }"#), badge("dup", "", r#"{ kind = "count", event = "login", target = 2 }"#)), "badge `dup`: field `id`", "duplicate"),
    ];
    for (doc, prefix, detail) in table {
        let e = Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string();
        assert!(e.starts_with(prefix) && e.contains(detail), "got: {e}\nwant: {prefix} … {detail}");
    }
    let e = Catalogue::parse("version = 1\n[event_types.x]\nfields = { a = \"text\" }\n[levels]\nthresholds = [0]\n", Format::Toml).unwrap_err();
    assert_eq!(e.to_string(), "event type `x`: field `fields.a`: unknown type `text` (use string, number, bool or any; add ? for optional)");
    let e = Catalogue::parse("{\"version\": 1}", Format::Json).unwrap_err();
    assert!(e.to_string().contains("missing field `event_types`"), "{e}");
    // Limits that still compile: seven days in a week, 31 in a month, and `repeat` on a `keys`
    // rule over a streak per key (the count of keys falls when one key's streak breaks).
    for rule in [
        r#"{ kind = "calendar", event = "login", bucket = "day", buckets = 7, in_one = "week" }"#,
        r#"{ kind = "calendar", event = "login", bucket = "day", buckets = 31, in_one = "month" }"#,
    ] {
        catalogue(&badge("ok", "", rule));
    }
    catalogue(&badge("keys-again", "repeat = true", r#"{ kind = "keys", count = 2, rule = { kind = "streak", event = "problem.answered", when = { correct = true }, per = "exercise", target = 3 } }"#));
    // Found by the load_catalogue fuzz target: an empty document's error named no field.
    let e = Catalogue::parse("", Format::Toml).unwrap_err();
    assert_eq!((e.field.as_str(), e.to_string().contains("missing field `version`")), ("document", true), "{e}");
    // And so did a key that is the empty string in a badge (2026-12-07); in a rule, unknown
    // keys are the rule's, as always.
    let doc = r#"{"version":1,"event_types":{"login":{}},"levels":{"thresholds":[0,10]},"badges":[{"id":"b","":"x","tier":"gold","rule":{"kind":"count","event":"login","target":2}}]}"#;
    let e = Catalogue::parse(doc, Format::Json).unwrap_err();
    assert_eq!((e.field.as_str(), e.to_string().contains("unknown field ``")), ("\"\"", true), "{e}");
    let e = Catalogue::parse(&doc.replace(r#""":"x","#, "").replace(r#""target":2"#, r#""target":2,"":1"#), Format::Json).unwrap_err();
    assert_eq!((e.field.as_str(), e.to_string().contains("unknown field ``")), ("rule", true), "{e}");
}

#[test]
fn the_demo_catalogue_uses_every_rule_kind_and_tier() {
    let cat = Catalogue::demo();
    assert!(cat.badges.len() >= 30, "{} badges", cat.badges.len());
    let text = accolade::core::catalogue::DEMO_CATALOGUE;
    for kind in ["count", "sum", "max", "streak", "daily_streak", "window", "recent", "sequence", "all", "any", "not", "badge", "level", "xp", "attribute", "tenure", "calendar", "keys", "ratio"] {
        assert!(text.contains(&format!("kind = \"{kind}\"")), "demo catalogue lacks rule kind {kind}");
    }
    for tier in ["bronze", "silver", "gold", "platinum", "diamond"] {
        assert!(cat.badges.iter().any(|b| b.tier.as_str() == tier), "no {tier} badge");
    }
    assert!(cat.badges.iter().any(|b| b.hidden) && cat.badges.iter().any(|b| b.repeat_every.is_some()) && cat.badges.iter().any(|b| b.repeat.is_some()));
    assert!(cat.badges.iter().any(|b| b.available_until.is_some()) && cat.badges.iter().any(|b| b.per_key.is_some()));
    // Identical rules share stats: five proficiency badges, one distinct-count stat.
    assert!(cat.stats.len() < cat.badges.len(), "{} stats for {} badges", cat.stats.len(), cat.badges.len());
    assert!(!cat.types[cat.type_of("exercise.proficient").unwrap()].client);
}

#[test]
fn a_catalogue_change_keeps_the_stats_that_did_not_change() {
    let v1 = catalogue(&badge("five", "", r#"{ kind = "count", event = "login", target = 5 }"#));
    let mut u = User::new(v1);
    for i in 0..4 {
        u.send("login", T0 + i, &[]);
    }
    // v2 adds a badge on a new stat and keeps the login count.
    let v2 = catalogue(&[badge("five", "", r#"{ kind = "count", event = "login", target = 5 }"#), badge("video", "", r#"{ kind = "count", event = "video.watched", target = 1 }"#)].concat());
    u.cat = v2;
    assert_eq!(unlocks(&u.send("login", T0 + 10, &[])), vec!["five"]);
    assert_eq!(u.watch(T0 + 11, "p", "v", 1.0), vec!["video"]);
}

fn scores(fx: &[Effect]) -> Vec<(String, String, f64)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Score { board, period, score, .. } => Some((board.to_string(), period.to_string(), *score)),
            _ => None,
        })
        .collect()
}

fn board(id: &str, rest: &str) -> String {
    format!("[[leaderboards]]\nid = \"{id}\"\n{rest}\n")
}

#[test]
fn leaderboard_scores_count_per_period_and_start_from_zero() {
    let xp = "[[xp]]\nid = \"answer\"\nevent = \"problem.answered\"\nwhen = { correct = true }\namount = 10\n";
    let cat = catalogue(
        &[
            xp.to_string(),
            board("xp-daily", "metric = \"xp\"\nperiod = \"daily\""),
            board("right", "metric = \"count\"\nevent = \"problem.answered\"\nwhen = { correct = true }\nperiod = \"weekly\""),
            board("watch", "metric = \"sum\"\nevent = \"video.watched\"\nfield = \"seconds\"\nperiod = \"all_time\""),
        ]
        .concat(),
    );
    let mut u = User::new(cat);
    let answer = |u: &mut User, at: Millis, ok: bool| scores(&u.send("problem.answered", at, &[("exercise", s("a")), ("correct", b(ok)), ("seconds", n(5.0))]));
    // T0 is Monday 2026-03-02 12:00 UTC.
    assert_eq!(answer(&mut u, T0, true), [("xp-daily".into(), "2026-03-02".into(), 10.0), ("right".into(), "2026-W10".into(), 1.0)]);
    assert_eq!(answer(&mut u, T0 + HOUR, true), [("xp-daily".into(), "2026-03-02".into(), 20.0), ("right".into(), "2026-W10".into(), 2.0)]);
    // A wrong answer earns nothing and counts on no board.
    assert_eq!(answer(&mut u, T0 + 2 * HOUR, false), []);
    // The next day: the daily board starts again from zero, the weekly one carries on.
    assert_eq!(answer(&mut u, T0 + DAY, true), [("xp-daily".into(), "2026-03-03".into(), 10.0), ("right".into(), "2026-W10".into(), 3.0)]);
    // A late event for yesterday, arriving today: its day has closed, so no board moves for
    // it except those whose period is still open (the week).
    let e = u.event("problem.answered", T0 + 3 * HOUR, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(5.0))]);
    let fx = apply(&mut u.st, &e, T0 + DAY + HOUR, &u.cat);
    assert_eq!(scores(&fx), [("right".into(), "2026-W10".into(), 4.0)]);
    assert_eq!(u.watch(T0, "p", "v", 90.0), Vec::<String>::new());
    assert_eq!(u.st.boards["watch"].score, 90.0);
    assert_eq!(&*u.st.boards["watch"].period, "all");
}

#[test]
fn segmented_boards_rank_users_in_their_league() {
    let cat = catalogue(&board("by-plan", "metric = \"count\"\nevent = \"login\"\nperiod = \"all_time\"\nsegment_by = \"plan\""));
    let mut u = User::new(cat);
    // No plan yet: not ranked on a board split by plan.
    assert_eq!(scores(&u.send("login", T0, &[])), []);
    u.send("user.profile", T0 + 1, &[("plan", s("free"))]);
    let seg = |fx: Vec<Effect>| fx.into_iter().find_map(|e| if let Effect::Score { segment, moved_from, score, .. } = e { Some((segment, moved_from, score)) } else { None });
    assert_eq!(seg(u.send("login", T0 + 2, &[])), Some((Some("free".into()), None, 1.0)));
    u.send("user.profile", T0 + 3, &[("plan", s("pro"))]);
    // An upgrade moves the user, with their score, to the new league.
    assert_eq!(seg(u.send("login", T0 + 4, &[])), Some((Some("pro".into()), Some("free".into()), 2.0)));
}

#[test]
fn a_closed_period_awards_its_top_ranks_once() {
    let cat = catalogue(
        &[
            badge("champion", "xp = 100", r#"{ kind = "awarded" }"#),
            board("weekly", "metric = \"count\"\nevent = \"login\"\nperiod = \"weekly\"\naward = { badge = \"champion\", top = 2 }"),
        ]
        .concat(),
    );
    let mut st = UserState::new("demo", "alice");
    let fx = accolade::core::award_rank(&mut st, "weekly", "2026-W10", 2, T0, "lb:weekly:2026-W10", &cat);
    assert_eq!(unlocks(&fx), ["champion"]);
    assert!(fx.iter().any(|e| matches!(e, Effect::Xp { delta: 100, .. })));
    // The same period again (a retry after a restart) awards nothing; the next week does.
    assert!(accolade::core::award_rank(&mut st, "weekly", "2026-W10", 2, T0, "lb:weekly:2026-W10", &cat).is_empty());
    assert!(accolade::core::award_rank(&mut st, "weekly", "2026-W11", 3, T0, "x", &cat).is_empty(), "rank 3 is outside the top 2");
    assert_eq!(unlocks(&accolade::core::award_rank(&mut st, "weekly", "2026-W12", 1, T0, "y", &cat)), ["champion"]);
    assert_eq!(st.badges["champion"].count, 2);
    assert_eq!(st.badges["champion"].keys, ["2026-W10", "2026-W12"]);
    // An awarded badge is never earned by events.
    let mut u = User::new(cat);
    for i in 0..5 {
        assert!(unlocks(&u.send("login", T0 + i, &[])).is_empty());
    }
}

#[test]
fn leaderboard_errors_name_the_board_and_field() {
    let table = [
        (board("b", "metric = \"xp\""), "leaderboard `b`: field `document`", "missing field `period`"),
        (board("b", "metric = \"fame\"\nperiod = \"daily\""), "leaderboard `b`: field `metric`", "unknown metric `fame`"),
        (board("b", "metric = \"count\"\nperiod = \"daily\""), "leaderboard `b`: field `event`", "needs an `event`"),
        (board("b", "metric = \"sum\"\nevent = \"login\"\nfield = \"x\"\nperiod = \"daily\""), "leaderboard `b`: field `field`", "not a number field"),
        (board("b", "metric = \"xp\"\nperiod = \"hourly\""), "leaderboard `b`: field `period`", "unknown period `hourly`"),
        (board("b", "metric = \"xp\"\nperiod = \"custom\""), "leaderboard `b`: field `period`", "needs `starts` and `ends`"),
        (board("b", "metric = \"xp\"\nperiod = \"custom\"\nstarts = \"2026-02-01T00:00:00Z\"\nends = \"2026-01-01T00:00:00Z\""), "leaderboard `b`: field `ends`", "after starts"),
        (board("b", "metric = \"xp\"\nperiod = \"daily\"\naward = { badge = \"ghost\", top = 1 }"), "leaderboard `b`: field `award.badge`", "unknown badge"),
        (
            format!("{}{}", badge("earned", "", r#"{ kind = "count", event = "login", target = 1 }"#), board("b", "metric = \"xp\"\nperiod = \"daily\"\naward = { badge = \"earned\", top = 1 }")),
            "leaderboard `b`: field `award.badge`",
            "kind = \"awarded\"",
        ),
        (
            format!("{}{}", badge("c", "", r#"{ kind = "awarded" }"#), board("b", "metric = \"xp\"\nperiod = \"all_time\"\naward = { badge = \"c\", top = 1 }")),
            "leaderboard `b`: field `award`",
            "never closes",
        ),
        (format!("{}{}", board("b", "metric = \"xp\"\nperiod = \"daily\""), board("b", "metric = \"xp\"\nperiod = \"daily\"")), "leaderboard `b`: field `id`", "duplicate"),
    ];
    for (doc, prefix, detail) in table {
        let e = Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string();
        assert!(e.starts_with(prefix) && e.contains(detail), "got: {e}\nwant: {prefix} … {detail}");
    }
}

#[test]
fn the_period_before_is_kept_until_the_next_one_starts() {
    let cat = catalogue(&board("daily", "metric = \"count\"\nevent = \"login\"\nperiod = \"daily\""));
    let mut u = User::new(cat);
    u.send("login", T0, &[]);
    u.send("login", T0 + 1, &[]);
    u.send("login", T0 + DAY, &[]);
    let b = &u.st.boards["daily"];
    assert_eq!((&*b.period, b.score), ("2026-03-03", 1.0));
    let prev = b.previous.as_deref().expect("yesterday is kept until it is closed");
    assert_eq!((&*prev.period, prev.score, prev.previous.is_none()), ("2026-03-02", 2.0, true));
}

fn goal(id: &str, criterion: &str, due: Option<Millis>) -> accolade::core::goal::GoalSpec {
    accolade::core::goal::GoalSpec { id: id.into(), title: format!("Goal {id}"), assigner: "teacher".into(), criterion: criterion.into(), due }
}

fn goal_effects(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::GoalCompleted { goal, .. } => Some(format!("completed {goal}")),
            Effect::GoalMissed { goal, .. } => Some(format!("missed {goal}")),
            _ => None,
        })
        .collect()
}

#[test]
fn assigned_goals_are_tracked_like_badges_from_their_assignment() {
    use accolade::core::goal::{assign, cancel, expire, GoalStatus};
    let cat = catalogue("");
    let mut u = User::new(cat.clone());
    // An article read before the assignment does not count towards it.
    u.send("article.read", T0, &[("article", s("a"))]);
    let three = r#"{"kind":"count","event":"article.read","distinct":"article","target":3}"#;
    let fx = assign(&mut u.st, goal("read3", three, Some(T0 + DAY)), T0 + 1, &u.cat).unwrap();
    assert!(matches!(&fx[..], [Effect::GoalAssigned { goal, .. }] if goal == "read3"));
    assign(&mut u.st, goal("later", three, Some(T0 + HOUR)), T0 + 1, &u.cat).unwrap();
    assign(&mut u.st, goal("dropped", three, None), T0 + 1, &u.cat).unwrap();
    // The same assignment again changes nothing; a different one under the same id is refused.
    assert_eq!(assign(&mut u.st, goal("read3", three, Some(T0 + DAY)), T0 + 2, &u.cat), Ok(vec![]));
    assert!(assign(&mut u.st, goal("read3", three, None), T0 + 2, &u.cat).unwrap_err().contains("already used"));
    assert!(cancel(&mut u.st, "dropped", T0 + 3).len() == 1 && cancel(&mut u.st, "dropped", T0 + 4).is_empty());

    let mut got = vec![];
    for (i, article) in ["a", "b", "b", "c"].iter().enumerate() {
        let at = T0 + 2 * HOUR + i as Millis * MIN;
        let e = u.event("article.read", at, &[("article", s(article))]);
        got.push(goal_effects(&apply(&mut u.st, &e, at, &u.cat)));
    }
    // "later" was due an hour in: the first event after that closes it as missed; "read3"
    // completes on the third distinct article read since it was assigned.
    assert_eq!(got, [vec!["missed later"], vec![], vec![], vec!["completed read3"]]);
    assert_eq!(u.st.goals["read3"].status, GoalStatus::Completed);
    assert_eq!(u.st.goals["read3"].sub.events, 0, "an ended goal's own stats are dropped");
    assert_eq!(u.st.goals["dropped"].status, GoalStatus::Cancelled);
    assert!(expire(&mut u.st, "read3", T0 + 2 * DAY).is_empty(), "a completed goal is not missed afterwards");

    // A criterion that does not compile is refused, naming the field inside it.
    let e = assign(&mut u.st, goal("bad", r#"{"kind":"count","event":"quiz","target":1}"#, None), T0, &u.cat).unwrap_err();
    assert!(e.contains("criterion.event") && e.contains("unknown event type `quiz`"), "{e}");
    let e = assign(&mut u.st, goal("never", r#"{"kind":"awarded"}"#, None), T0, &u.cat).unwrap_err();
    assert!(e.contains("criterion.kind"), "{e}");
}

// --- Explanations and hidden badges (issue 23) ------------------------------------------------

fn explain(u: &User, id: &str) -> accolade::core::explain::BadgeProgress {
    explain_at(u, id, T0 + 30 * DAY)
}

/// The explanation as asked at `now` (a window is read up to now).
fn explain_at(u: &User, id: &str, now: Millis) -> accolade::core::explain::BadgeProgress {
    let mut st = u.st.clone();
    st.sync(&u.cat);
    accolade::core::explain::progress(&st, &u.cat, now).into_iter().find(|p| p.badge.as_deref() == Some(id)).unwrap_or_else(|| panic!("no progress for {id}"))
}

fn progress_of(fx: &[Effect], id: &str) -> Option<(f64, f64)> {
    fx.iter().find_map(|e| match e {
        Effect::Progress { badge, current, target } if &**badge == id => Some((*current, *target)),
        _ => None,
    })
}

#[test]
fn a_repeatable_badge_explains_the_next_award_from_the_whole_count() {
    // 207 correct answers with a badge earned every 100: owned twice, 207 of the 300 the third needs.
    let cat = catalogue(&badge("centurion", "repeat_every = 100", r#"{ kind = "count", event = "problem.answered", when = { correct = true }, target = 100 }"#));
    let mut u = User::new(cat);
    let mut last = vec![];
    for i in 0..207 {
        last = u.send("problem.answered", T0 + i, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))]);
    }
    let p = explain(&u, "centurion");
    assert_eq!((p.owned, p.rule.current, p.rule.target, p.rule.holds), (2, Some(207.0), Some(300.0), false), "{p:?}");
    // The pushed progress says the same.
    assert_eq!(progress_of(&last, "centurion"), Some((207.0, 300.0)));
}

#[test]
fn all_of_per_key_parts_must_hold_for_one_and_the_same_key() {
    let parts = r#"{ kind = "count", event = "problem.answered", per = "exercise", target = 20 }, { kind = "max", event = "problem.answered", field = "seconds", per = "exercise", target = 100 }"#;
    let cat = catalogue(&[
        "[[xp]]\nid = \"login\"\nevent = \"login\"\namount = 50\n".to_string(),
        badge("one-topic", "", &format!("{{ kind = \"all\", of = [ {parts} ] }}")),
        // Checked after every event (it depends on XP), also after events without an exercise.
        badge("one-topic-and-xp", "", &format!("{{ kind = \"all\", of = [ {parts}, {{ kind = \"xp\", at_least = 50 }} ] }}")),
    ]
    .concat());
    // 20 answers in a, and 100 seconds in b: no single exercise has both.
    let mut split = User::new(cat.clone());
    for i in 0..20 {
        assert!(split.answer(T0 + i, "a", true, 1.0).is_empty());
    }
    assert!(split.answer(T0 + 20, "b", true, 100.0).is_empty());
    assert!(unlocks(&split.send("login", T0 + 21, &[])).is_empty(), "a login must not pair a's count with b's time");
    let p = explain(&split, "one-topic");
    assert!(!p.rule.holds, "{p:?}");
    // It reports the key that comes closest, with both parts read at that key.
    let key = p.rule.key.clone().expect("a key");
    assert!(p.rule.parts.iter().all(|x| x.key.as_deref() == Some(key.as_str())), "{p:?}");
    assert_eq!(p.rule.parts.iter().filter(|x| x.holds).count(), 1, "{p:?}");
    // Both in one exercise: the answer earns the first; the login's XP then the second, its
    // exercise found among the user's keys.
    let mut both = User::new(cat);
    for i in 0..19 {
        both.answer(T0 + i, "a", true, 1.0);
    }
    assert_eq!(both.answer(T0 + 19, "a", true, 100.0), vec!["one-topic"]);
    assert_eq!(unlocks(&both.send("login", T0 + 20, &[])), vec!["one-topic-and-xp"]);
    // The reading this changed (docs/catalogue.md, "Changed"), as a table of events: an `all`
    // with a user-level part is rechecked on a login, which names no exercise. Before, each
    // per-exercise part took its own best exercise (20 answers in a, 100 seconds in b) and the
    // login awarded it; now no one exercise has both, and nothing is awarded until one does.
    let xp = "[[xp]]\nid = \"login\"\nevent = \"login\"\namount = 50\n";
    let mut u = User::new(catalogue(&format!("{xp}{}", badge("one-topic-and-xp", "", &format!("{{ kind = \"all\", of = [ {parts}, {{ kind = \"xp\", at_least = 50 }} ] }}")))));
    let table: [(&str, &str, f64, Vec<&str>); 5] = [
        ("answer x20", "a", 1.0, vec![]),
        ("answer", "b", 100.0, vec![]),
        ("login", "", 0.0, vec![]), // the old reading awarded it here
        ("answer x19", "b", 1.0, vec!["one-topic-and-xp"]),
        ("login", "", 0.0, vec![]),
    ];
    let mut at = T0;
    for (what, ex, secs, want) in table {
        let mut got = vec![];
        let times = what.strip_prefix("answer x").map_or(1, |n| n.parse().unwrap());
        for _ in 0..times {
            at += 1;
            got = if what == "login" { unlocks(&u.send("login", at, &[])) } else { u.answer(at, ex, true, secs) };
        }
        assert_eq!(got, want, "{what} {ex}");
    }
}

#[test]
fn explanations_read_as_sentences_with_numbers() {
    let cat = catalogue(&[
        badge("right", "", r#"{ kind = "count", event = "problem.answered", when = { correct = true }, target = 30 }"#),
        badge("wrong", "", r#"{ kind = "count", event = "problem.answered", when = { correct = false }, target = 30 }"#),
        badge("in-one", "", r#"{ kind = "count", event = "problem.answered", per = "exercise", target = 30 }"#),
        badge("exercises", "", r#"{ kind = "count", event = "problem.answered", distinct = "exercise", target = 30 }"#),
        badge("fast-five", "", r#"{ kind = "recent", event = "problem.answered", last = 5, same = "exercise", all = { correct = true }, sum_at_most = { field = "seconds", per_item = 10 } }"#),
        badge("pro", "", r#"{ kind = "attribute", when = { plan = { in = ["pro", "team"] } } }"#),
        badge("paced", "", r#"{ kind = "window", within = "1h", require = [ { event = "video.watched", sum = "seconds", at_least = 600 } ] }"#),
    ]
    .concat());
    let mut u = User::new(cat);
    for i in 0..3 {
        u.answer(T0 + i, "a", true, 4.0);
    }
    u.watch(T0 + 3, "p", "v", 120.0);
    // Four stats on one event type, each named by what it counts.
    let said: Vec<String> = ["right", "wrong", "in-one", "exercises"].iter().map(|b| explain(&u, b).rule.describe).collect();
    assert_eq!(
        said,
        [
            "number of problem.answered where correct is true",
            "number of problem.answered where correct is false",
            "number of problem.answered, in one exercise",
            "different exercise in problem.answered",
        ]
    );
    assert_eq!(explain(&u, "in-one").rule.key.as_deref(), Some("a"));
    // A pattern shows where each of its requirements stands.
    let r = explain(&u, "fast-five").rule;
    assert_eq!(r.describe, "the last 5 problem.answered, all in one exercise");
    let parts: Vec<(&str, bool, Option<f64>, Option<f64>, bool)> = r.parts.iter().map(|p| (p.describe.as_str(), p.holds, p.current, p.target, p.at_most)).collect();
    assert_eq!(
        parts,
        [
            ("actions counted", false, Some(3.0), Some(5.0), false),
            ("all in one exercise", true, None, None, false),
            ("each where correct is true", true, Some(3.0), Some(3.0), false),
            ("total seconds", true, Some(12.0), Some(30.0), true),
        ]
    );
    // Attributes read as words, never as the operator's Rust form.
    let pro = explain(&u, "pro");
    assert_eq!((pro.rule.describe.as_str(), pro.rule.holds), ("plan is pro or team", false));
    let paced = explain_at(&u, "paced", T0 + 4).rule;
    assert_eq!((paced.describe.as_str(), paced.parts[0].describe.as_str(), paced.parts[0].current), ("within 1 hour", "total seconds of video.watched", Some(120.0)));
    let json = serde_json::to_string(&accolade::core::explain::progress(&u.st, &u.cat, T0)).unwrap();
    for rust in ["In(", "Str(", "Num(", "Count", "|"] {
        assert!(!json.contains(rust), "`{rust}` in {json}");
    }
}

#[test]
fn the_catalogue_can_word_a_badge_and_each_part_itself() {
    let cat = catalogue(&[
        badge("worded", "describe = \"Become a regular\"", r#"{ kind = "all", of = [ { kind = "count", event = "login", target = 5, describe = "Log in on 5 occasions" }, { kind = "not", rule = { kind = "attribute", when = { plan = "free" }, describe = "Be on the free plan" } } ] }"#),
        badge("window", "", r#"{ kind = "window", within = "1h", describe = "A busy hour", require = [ { event = "login", count = 2, describe = "Two logins" } ] }"#),
    ]
    .concat());
    let u = User::new(cat);
    let w = explain(&u, "worded").rule;
    assert_eq!((w.describe.as_str(), w.parts[0].describe.as_str(), w.parts[1].parts[0].describe.as_str()), ("Become a regular", "Log in on 5 occasions", "Be on the free plan"));
    let h = explain(&u, "window").rule;
    assert_eq!((h.describe.as_str(), h.parts[0].describe.as_str()), ("A busy hour", "Two logins"));
    // Every wrong use names the field.
    let table = [
        (badge("num", "", r#"{ kind = "count", event = "login", target = 1, describe = 3 }"#), "badge `num`: field `rule.describe`: must be a text of 1 to 300 characters"),
        (badge("blank", "", r#"{ kind = "all", of = [ { kind = "count", event = "login", target = 1, describe = " " } ] }"#), "badge `blank`: field `rule.of[0].describe`: must be a text of 1 to 300 characters"),
        (badge("twice", "describe = \"a\"", r#"{ kind = "count", event = "login", target = 1, describe = "b" }"#), "badge `twice`: field `describe`: give `describe` on the badge or on its rule, not both"),
        (badge("empty", "describe = \"\"", r#"{ kind = "count", event = "login", target = 1 }"#), "badge `empty`: field `describe`: must be a text of 1 to 300 characters"),
    ];
    for (doc, want) in table {
        let e = Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string();
        assert_eq!(e, want);
    }
}

#[test]
fn a_hidden_badge_shows_nothing_until_it_is_earned() {
    let cat = catalogue(&[
        badge("the-curious", "hidden = true", r#"{ kind = "count", event = "article.read", distinct = "article", target = 3 }"#),
        badge("reader", "", r#"{ kind = "count", event = "article.read", target = 3 }"#),
        badge("after-secret", "", r#"{ kind = "all", of = [ { kind = "badge", id = "the-curious" }, { kind = "count", event = "login", target = 1 } ] }"#),
    ]
    .concat());
    let mut u = User::new(cat);
    let fx = u.send("article.read", T0, &[("article", s("a1"))]);
    // The visible badge moves; the hidden one pushes nothing.
    assert_eq!((progress_of(&fx, "reader"), progress_of(&fx, "the-curious")), (Some((1.0, 3.0)), None), "{fx:?}");
    // Listed without its id: the only entry that has none.
    let all = accolade::core::explain::progress(&u.st, &u.cat, T0);
    let p = all.iter().find(|p| p.badge.is_none()).expect("listed as ???");
    assert_eq!((p.name.as_str(), p.hidden, p.rule.describe.as_str(), p.rule.current, p.rule.parts.len()), ("???", true, "???", None, 0));
    // A rule that names it does not give its name or id away either.
    let json = serde_json::to_string(&all).unwrap();
    assert!(!json.contains("different article") && !json.contains("the-curious"), "{json}");
    assert_eq!(explain(&u, "after-secret").rule.parts[0].describe, "has a hidden badge");
    u.send("article.read", T0 + HOUR, &[("article", s("a2"))]);
    assert_eq!(unlocks(&u.send("article.read", T0 + 2 * HOUR, &[("article", s("a3"))])), vec!["the-curious", "reader"]);
    assert_eq!(explain(&u, "after-secret").rule.parts[0].describe, "has the badge the-curious");
}

// --- Calendar buckets in the user's time zone (issue 23) --------------------------------------

fn at(rfc3339: &str) -> Millis {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
}

/// Plays `(time, answers)` steps (each answer a millisecond after the one before) for a user in
/// `zone`, and returns the step whose answers unlocked `id`, if any.
fn calendar_steps(rule: &str, zone: &str, steps: &[(&str, usize)]) -> Option<usize> {
    let mut u = User::new(catalogue(&badge("cal", "", rule)));
    let first = at(steps[0].0) - HOUR;
    u.send("user.profile", first, &[("timezone", s(zone))]);
    let mut got = None;
    for (i, (when, answers)) in steps.iter().enumerate() {
        for k in 0..*answers {
            if u.answer(at(when) + k as Millis, "a", true, 30.0).contains(&"cal".to_string()) {
                got = got.or(Some(i + 1));
            }
        }
    }
    got
}

#[test]
fn at_least_k_in_one_calendar_day_is_not_a_sliding_24_hours() {
    let forty = r#"{ kind = "calendar", event = "problem.answered", when = { correct = true }, bucket = "day", at_least = 40, buckets = 1 }"#;
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, usize)], Option<usize>);
    let table: &[Case] = &[
        ("39 at 23:00 and 1 at 01:00 the next day", "UTC", &[("2026-03-02T23:00:00Z", 39), ("2026-03-03T01:00:00Z", 1)], None),
        ("40 before midnight", "UTC", &[("2026-03-02T23:00:00Z", 39), ("2026-03-02T23:59:59.000Z", 1)], Some(2)),
        ("the next day's 40th", "UTC", &[("2026-03-02T23:00:00Z", 39), ("2026-03-03T01:00:00Z", 39), ("2026-03-03T23:00:00Z", 1)], Some(3)),
        // 22:30 and 23:30 UTC are one UTC day, but 23:30 and 00:30 in Paris.
        ("the user's midnight, not UTC's", "Europe/Paris", &[("2026-03-02T22:30:00Z", 20), ("2026-03-02T23:30:00Z", 20)], None),
        ("the same hours in UTC", "UTC", &[("2026-03-02T22:30:00Z", 20), ("2026-03-02T23:30:00Z", 20)], Some(2)),
        // New York springs forward on 2026-03-08: a 23-hour day from 05:00 to 04:00 UTC.
        ("a 23-hour day is one day", "America/New_York", &[("2026-03-08T05:00:00Z", 20), ("2026-03-09T03:59:00Z", 20)], Some(2)),
        ("the hour before it is the day before", "America/New_York", &[("2026-03-08T04:30:00Z", 20), ("2026-03-08T05:30:00Z", 20)], None),
        // It falls back on 2026-11-01: a 25-hour day from 04:00 to 05:00 UTC the next day.
        ("a 25-hour day is one day", "America/New_York", &[("2026-11-01T04:00:00Z", 20), ("2026-11-02T04:59:00Z", 20)], Some(2)),
    ];
    for (name, zone, steps, want) in table {
        assert_eq!(calendar_steps(forty, zone, steps), *want, "{name}");
    }
}

#[test]
fn distinct_days_and_days_that_reach_a_total() {
    let three_days = r#"{ kind = "calendar", event = "problem.answered", bucket = "day", buckets = 3 }"#;
    let two_good_days = r#"{ kind = "calendar", event = "problem.answered", bucket = "day", at_least = 3, buckets = 2 }"#;
    let video_days = r#"{ kind = "calendar", event = "video.watched", bucket = "day", sum = "seconds", at_least = 600, buckets = 2 }"#;
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, usize)], Option<usize>);
    let table: &[Case] = &[
        ("three days", three_days, &[("2026-03-02T10:00:00Z", 1), ("2026-03-04T10:00:00Z", 1), ("2026-03-09T10:00:00Z", 1)], Some(3)),
        ("twice a day counts once", three_days, &[("2026-03-02T10:00:00Z", 5), ("2026-03-02T20:00:00Z", 5), ("2026-03-03T10:00:00Z", 1)], None),
        ("days that reach 3", two_good_days, &[("2026-03-02T10:00:00Z", 2), ("2026-03-03T10:00:00Z", 3), ("2026-03-04T10:00:00Z", 1), ("2026-03-05T10:00:00Z", 3)], Some(4)),
        ("a day's total may build up over the day", two_good_days, &[("2026-03-02T01:00:00Z", 1), ("2026-03-02T12:00:00Z", 2), ("2026-03-03T23:00:00Z", 2), ("2026-03-03T23:30:00Z", 1)], Some(4)),
    ];
    for (name, rule, steps, want) in table {
        assert_eq!(calendar_steps(rule, "UTC", steps), *want, "{name}");
    }
    // Sums: ten minutes of video on two days, 599 s not being ten minutes.
    let mut u = User::new(catalogue(&badge("cal", "", video_days)));
    assert!(u.watch(at("2026-03-02T10:00:00Z"), "p", "v", 599.0).is_empty());
    assert!(u.watch(at("2026-03-03T10:00:00Z"), "p", "v", 300.0).is_empty());
    assert!(u.watch(at("2026-03-03T11:00:00Z"), "p", "v", 300.0).is_empty());
    assert_eq!(u.watch(at("2026-03-04T10:00:00Z"), "p", "v", 600.0), vec!["cal"]);
}

#[test]
fn days_in_one_week_follow_the_weeks_first_day() {
    let monday_weeks = r#"{ kind = "calendar", event = "problem.answered", bucket = "day", buckets = 5, in_one = "week" }"#;
    let sunday_weeks = r#"{ kind = "calendar", event = "problem.answered", bucket = "day", buckets = 5, in_one = "week", week_starts = "sunday" }"#;
    let five = |first: &str| -> Vec<(String, usize)> {
        let d0 = at(first);
        (0..5).map(|i| (chrono::DateTime::from_timestamp_millis(d0 + i * DAY).unwrap().to_rfc3339(), 1)).collect()
    };
    // 2026-03-02 is a Monday, 2026-03-05 a Thursday, 2026-03-01 a Sunday.
    type Case<'a> = (&'a str, &'a str, &'a str, &'a str, Option<usize>);
    let table: &[Case] = &[
        ("Monday to Friday", monday_weeks, "UTC", "2026-03-02T12:00:00Z", Some(5)),
        ("Thursday to Monday spans two weeks", monday_weeks, "UTC", "2026-03-05T12:00:00Z", None),
        ("Sunday to Thursday in a week from Monday", monday_weeks, "UTC", "2026-03-01T12:00:00Z", None),
        ("Sunday to Thursday in a week from Sunday", sunday_weeks, "UTC", "2026-03-01T12:00:00Z", Some(5)),
        // Monday 02:00 in Tokyo is Sunday 17:00 UTC: the Tokyo week has begun.
        ("the user's week, not UTC's", monday_weeks, "Asia/Tokyo", "2026-03-01T17:00:00Z", Some(5)),
        ("the same instants in UTC", monday_weeks, "UTC", "2026-03-01T17:00:00Z", None),
    ];
    for (name, rule, zone, first, want) in table {
        let steps = five(first);
        let steps: Vec<(&str, usize)> = steps.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        assert_eq!(calendar_steps(rule, zone, &steps), *want, "{name}");
    }
}

#[test]
fn consecutive_weeks_and_months_and_a_late_event_that_joins_two_runs() {
    let three_weeks = r#"{ kind = "calendar", event = "problem.answered", bucket = "week", in_a_row = 3 }"#;
    type Case<'a> = (&'a str, &'a [(&'a str, usize)], Option<usize>);
    let table: &[Case] = &[
        ("three weeks", &[("2026-03-02T10:00:00Z", 1), ("2026-03-15T10:00:00Z", 1), ("2026-03-16T10:00:00Z", 1)], Some(3)),
        ("a week missed", &[("2026-03-02T10:00:00Z", 1), ("2026-03-16T10:00:00Z", 1), ("2026-03-23T10:00:00Z", 1)], None),
        ("a week missed, then three", &[("2026-03-02T10:00:00Z", 1), ("2026-03-16T10:00:00Z", 1), ("2026-03-23T10:00:00Z", 1), ("2026-03-30T10:00:00Z", 1)], Some(4)),
    ];
    for (name, steps, want) in table {
        assert_eq!(calendar_steps(three_weeks, "UTC", steps), *want, "{name}");
    }
    // Weeks W10 and W12 are done; an action from Sunday of W11, reported on Monday of W12
    // within the late bound, fills the gap: three weeks in a row.
    let mut u = User::new(catalogue(&badge("cal", "", three_weeks)));
    assert!(u.answer(at("2026-03-02T10:00:00Z"), "a", true, 1.0).is_empty());
    assert!(u.answer(at("2026-03-16T08:00:00Z"), "a", true, 1.0).is_empty());
    let late = u.event("problem.answered", at("2026-03-15T20:00:00Z"), &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))]);
    assert_eq!(unlocks(&apply(&mut u.st, &late, at("2026-03-16T09:00:00Z"), &u.cat)), vec!["cal"]);
    // Months: an hour of video in one calendar month; 30 minutes on 31 January and 30 on
    // 1 February are not.
    let month = r#"{ kind = "calendar", event = "video.watched", bucket = "month", sum = "seconds", at_least = 3600, buckets = 1 }"#;
    let mut m = User::new(catalogue(&badge("cal", "", month)));
    assert!(m.watch(at("2026-01-31T20:00:00Z"), "p", "v", 1800.0).is_empty());
    assert!(m.watch(at("2026-02-01T09:00:00Z"), "p", "v", 1800.0).is_empty());
    assert_eq!(m.watch(at("2026-02-27T09:00:00Z"), "p", "v", 1800.0), vec!["cal"]);
}

#[test]
fn calendar_progress_is_pushed_and_explained_for_this_week() {
    let cat = catalogue(&badge("five-days", "", r#"{ kind = "calendar", event = "problem.answered", when = { correct = true }, bucket = "day", buckets = 5, in_one = "week" }"#));
    let mut u = User::new(cat);
    let mut last = vec![];
    for d in 0..3 {
        last = u.send("problem.answered", at("2026-03-02T10:00:00Z") + d * DAY, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))]);
    }
    assert_eq!(progress_of(&last, "five-days"), Some((3.0, 5.0)));
    // Asked on Thursday: three days this week. Asked the next Monday: a new week, none yet.
    let p = explain_at(&u, "five-days", at("2026-03-05T10:00:00Z")).rule;
    assert_eq!((p.describe.as_str(), p.current, p.target), ("days this week with problem.answered where correct is true", Some(3.0), Some(5.0)));
    assert_eq!(explain_at(&u, "five-days", at("2026-03-09T10:00:00Z")).rule.current, Some(0.0));
    // The first answer of the new week pushes the fall back to 1.
    let fx = u.send("problem.answered", at("2026-03-09T10:00:00Z"), &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))]);
    assert_eq!(progress_of(&fx, "five-days"), Some((1.0, 5.0)));
}

#[test]
fn a_day_that_must_reach_a_total_explains_how_far_today_is() {
    let cat = catalogue(&badge("forty", "", r#"{ kind = "calendar", event = "problem.answered", when = { correct = true }, bucket = "day", at_least = 40, buckets = 2 }"#));
    let mut u = User::new(cat);
    u.send("user.profile", at("2026-03-02T08:00:00Z"), &[("timezone", s("Europe/Paris"))]);
    for i in 0..17 {
        u.answer(at("2026-03-02T10:00:00Z") + i, "a", true, 1.0);
    }
    // At 22:30 UTC it is 23:30 in Paris: 17 so far today. An hour later it is the next day
    // there, with nothing so far.
    let p = explain_at(&u, "forty", at("2026-03-02T22:30:00Z")).rule;
    assert_eq!((p.describe.as_str(), p.current, p.target), ("days with at least 40 problem.answered where correct is true", Some(0.0), Some(2.0)));
    assert_eq!((p.parts[0].describe.as_str(), p.parts[0].current, p.parts[0].target), ("today", Some(17.0), Some(40.0)));
    assert_eq!(explain_at(&u, "forty", at("2026-03-02T23:30:00Z")).rule.parts[0].current, Some(0.0));
}

#[test]
fn calendar_rule_errors_name_the_field() {
    let c = |rest: &str| badge("cal", "", &format!(r#"{{ kind = "calendar", event = "problem.answered", {rest} }}"#));
    let table = [
        (c(r#"bucket = "fortnight", buckets = 1"#), "rule.bucket", "unknown bucket `fortnight` (use day, week or month)"),
        (c(r#"bucket = "day""#), "rule", "give `buckets = N` (buckets that reach `at_least`) or `in_a_row = N` (consecutive ones)"),
        (c(r#"bucket = "day", buckets = 2, in_a_row = 2"#), "rule.in_a_row", "give either `buckets` or `in_a_row`, not both"),
        (c(r#"bucket = "day", buckets = 0"#), "rule.buckets", "must be a whole number from 1 to 100000"),
        (c(r#"bucket = "day", in_a_row = 2.5"#), "rule.in_a_row", "must be a whole number from 1 to 100000"),
        (c(r#"bucket = "day", buckets = 1, at_least = 0"#), "rule.at_least", "must be a positive number"),
        (c(r#"bucket = "day", buckets = 1, sum = "exercise""#), "rule.sum", "`exercise` must be declared as a number"),
        (c(r#"bucket = "day", buckets = 1, sum = "minutes""#), "rule.sum", "`minutes` is not a declared field of `problem.answered`"),
        (c(r#"bucket = "week", buckets = 1, in_one = "month""#), "rule.in_one", "counts day buckets in one week or month: use it with bucket = \"day\""),
        (c(r#"bucket = "day", buckets = 1, in_one = "day""#), "rule.in_one", "use week or month"),
        (c(r#"bucket = "day", buckets = 1, in_one = "year""#), "rule.in_one", "unknown bucket `year` (use day, week or month)"),
        (c(r#"bucket = "day", in_a_row = 3, in_one = "week""#), "rule.in_one", "goes with `buckets`, not with `in_a_row`"),
        (c(r#"bucket = "week", in_a_row = 3, week_starts = "friday""#), "rule.week_starts", "unknown day `friday` (use monday or sunday)"),
        (c(r#"bucket = "month", buckets = 1, week_starts = "sunday""#), "rule.week_starts", "only weeks have a first day: use it with bucket = \"week\" or in_one = \"week\""),
        (c(r#"bucket = "day", buckets = 1, within = "7d""#), "rule", "unknown field `within`"),
    ];
    for (doc, field, detail) in table {
        let e = Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string();
        let want = format!("badge `cal`: field `{field}`: {detail}");
        assert!(e.starts_with(&want) || (field == "rule" && e.starts_with("badge `cal`: field `rule`") && e.contains(detail)), "got: {e}\nwant: {want}");
    }
}

#[test]
fn calendar_rules_replay_to_the_byte_and_duplicates_change_nothing() {
    let cat = catalogue(&[
        badge("two-a-day", "", r#"{ kind = "calendar", event = "problem.answered", bucket = "day", at_least = 2, buckets = 5 }"#),
        badge("weeks", "", r#"{ kind = "calendar", event = ["problem.answered", "video.watched"], bucket = "week", in_a_row = 2 }"#),
        badge("week-days", "", r#"{ kind = "calendar", event = "video.watched", bucket = "day", sum = "seconds", at_least = 100, buckets = 3, in_one = "week", week_starts = "sunday" }"#),
    ]
    .concat());
    // Five weeks of actions every 7 hours, some of them late by up to 20 hours.
    let mut events = vec![];
    let mut u = User::new(cat.clone());
    for i in 0..120i64 {
        let when = T0 + i * 7 * HOUR - if i % 5 == 3 { 20 * HOUR } else { 0 };
        let e = if i % 3 == 0 {
            u.event("video.watched", when, &[("video", s("v")), ("playlist", s("p")), ("seconds", n((i * 37 % 200) as f64))])
        } else {
            u.event("problem.answered", when, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))])
        };
        events.push((e, T0 + i * 7 * HOUR + 1000));
    }
    let run = |dup: bool| {
        let mut st = UserState::default();
        let mut fx = vec![];
        for (e, now) in &events {
            fx.push(apply(&mut st, e, *now, &cat));
            if dup {
                let before = st.clone();
                assert!(matches!(apply(&mut st, e, *now, &cat)[..], [Effect::Duplicate { .. }]));
                assert_eq!(st, before);
            }
        }
        (bincode::serde::encode_to_vec(&st, bincode::config::standard()).unwrap(), fx)
    };
    let (a, fa) = run(false);
    let (b2, fb) = run(true);
    assert_eq!((a, fa.clone()), (b2, fb));
    let mut earned: Vec<String> = fa.iter().flat_map(|f| unlocks(f)).collect();
    earned.sort();
    assert_eq!(earned, ["two-a-day", "week-days", "weeks"], "every calendar badge earned, once");
}

// --- Counting keys that meet a threshold (issue 23) -------------------------------------------

#[test]
fn counting_the_keys_that_reach_a_threshold() {
    let cat = catalogue(&[
        // Two correct answers in each of three exercises.
        badge("three-exercises", "", r#"{ kind = "keys", count = 3, rule = { kind = "count", event = "problem.answered", when = { correct = true }, per = "exercise", target = 2 } }"#),
        // Ten minutes of video in each of two playlists.
        badge("two-playlists", "", r#"{ kind = "keys", count = 2, rule = { kind = "sum", event = "video.watched", field = "seconds", per = "playlist", target = 600 } }"#),
        // Two different videos in each of two playlists.
        badge("two-by-two", "", r#"{ kind = "keys", count = 2, rule = { kind = "count", event = "video.watched", distinct = "video", per = "playlist", target = 2 } }"#),
    ]
    .concat());
    let got = answers_table(&cat, &[(0, true, "a", 1.0), (1, true, "b", 1.0), (2, true, "a", 1.0), (3, false, "c", 1.0), (4, true, "c", 1.0), (5, true, "b", 1.0), (6, true, "c", 1.0)]);
    assert_eq!(got, vec![(7, "three-exercises".to_string())]);
    let mut u = User::new(cat);
    assert!(u.watch(T0, "p1", "v1", 600.0).is_empty());
    assert!(u.watch(T0 + 1, "p2", "v1", 599.0).is_empty());
    assert!(u.watch(T0 + 2, "p1", "v1", 1.0).is_empty(), "the same video again is not a second one");
    let fx = u.send("video.watched", T0 + 3, &[("video", s("v2")), ("playlist", s("p2")), ("seconds", n(1.0))]);
    assert_eq!(unlocks(&fx), vec!["two-playlists"]);
    // Progress counts keys: one playlist with two different videos of the two needed.
    assert_eq!(progress_of(&fx, "two-by-two"), Some((1.0, 2.0)));
    let p = explain(&u, "two-by-two").rule;
    assert_eq!((p.describe.as_str(), p.current, p.target), ("different playlist where different video in video.watched reaches 2", Some(1.0), Some(2.0)));
    assert_eq!(u.watch(T0 + 4, "p1", "v2", 1.0), vec!["two-by-two"]);
    // Errors name the field.
    let table = [
        (badge("k", "", r#"{ kind = "keys", count = 3, rule = { kind = "count", event = "login", target = 2 } }"#), "badge `k`: field `rule.rule`: a `keys` rule counts the keys of a count, sum, max or streak kept per key: give that rule `per`"),
        (badge("k", "", r#"{ kind = "keys", count = 0, rule = { kind = "count", event = "login", per = "x", target = 2 } }"#), "badge `k`: field `rule.count`: must be a whole number from 1 to 1000000"),
        (badge("k", "", r#"{ kind = "keys", count = 2, rule = { kind = "count", event = "problem.answered", per = "topic", target = 2 } }"#), "badge `k`: field `rule.rule.per`: `topic` is not a declared field of `problem.answered`"),
        (badge("k", "", r#"{ kind = "keys", count = 2, rule = { kind = "all", of = [ { kind = "count", event = "problem.answered", per = "exercise", target = 2 } ] } }"#), "badge `k`: field `rule.rule`: a `keys` rule counts the keys of a count, sum, max or streak kept per key: give that rule `per`"),
    ];
    for (doc, want) in table {
        assert_eq!(Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string(), want);
    }
}

// --- Ratios and comparisons (issue 23) ----------------------------------------------------------

#[test]
fn ratios_between_two_stats() {
    let answers = r#"{ kind = "count", event = "problem.answered" }"#;
    let right = r#"{ kind = "count", event = "problem.answered", when = { correct = true } }"#;
    let wrong = r#"{ kind = "count", event = "problem.answered", when = { correct = false } }"#;
    let cat = catalogue(&[
        // At least 4 answers, at least three quarters of them right.
        badge("accurate", "", &format!(r#"{{ kind = "all", of = [ {{ kind = "count", event = "problem.answered", target = 4 }}, {{ kind = "ratio", of = {right}, to = {answers}, at_least = 0.75 }} ] }}"#)),
        // More than 2 wrong answers, and they are at least half of all answers.
        badge("struggling", "", &format!(r#"{{ kind = "all", of = [ {{ kind = "count", event = "problem.answered", when = {{ correct = false }}, target = 3 }}, {{ kind = "ratio", of = {wrong}, to = {answers}, at_least = 0.5 }} ] }}"#)),
        // More videos watched than problems answered.
        badge("watcher", "", &format!(r#"{{ kind = "ratio", of = {{ kind = "count", event = "video.watched" }}, to = {answers}, more_than = 1 }}"#)),
        // Wrong answers under a tenth of all: not while there is nothing to compare.
        badge("careful", "", &format!(r#"{{ kind = "ratio", of = {wrong}, to = {answers}, less_than = 0.1 }}"#)),
    ]
    .concat());
    let mut u = User::new(cat);
    assert_eq!(u.watch(T0, "p", "v", 10.0), vec!["watcher"], "one video against no answers is more");
    let p = explain(&u, "careful").rule;
    assert_eq!((p.holds, p.current, p.target, p.at_most), (false, Some(0.0), Some(0.1), true), "0 of 0 holds nothing");
    let got: Vec<Vec<String>> = [true, true, false, true].iter().enumerate().map(|(i, c)| u.answer(T0 + 1 + i as Millis, "a", *c, 1.0)).collect();
    assert_eq!(got, vec![vec!["careful".to_string()], vec![], vec![], vec!["accurate".to_string()]]);
    // 3 of 4 right; then wrong answers: 2 wrong of 5 are too few, 3 of 6 are half.
    let got: Vec<Vec<String>> = (0..3).map(|i| u.answer(T0 + 10 + i, "a", false, 1.0)).collect();
    assert_eq!(got, vec![vec![], vec!["struggling".to_string()], vec![]]);
    let a = explain(&User::new(u.cat.clone()), "watcher").rule;
    assert_eq!((a.describe.as_str(), a.holds, a.parts.len()), ("number of video.watched, as a share of number of problem.answered", false, 2));
}

#[test]
fn fields_compared_with_other_fields_of_the_same_event() {
    let cat = catalogue(&[
        badge("record-breaker", "", r#"{ kind = "count", event = "race.finished", when = { time = { lt = { field = "record" } } }, target = 1 }"#),
        badge("leap", "", r#"{ kind = "count", event = "race.finished", when = { score = { gt = { field = "previous_best", times = 2 } } }, target = 1 }"#),
        badge("three-records", "", r#"{ kind = "count", event = "race.finished", when = { time = { lt = { field = "record" } } }, distinct = "course", target = 3 }"#),
    ]
    .concat());
    let race = |u: &mut User, at: Millis, course: &str, time: f64, record: f64, score: f64, best: Option<f64>| {
        let mut p = vec![("course", s(course)), ("time", n(time)), ("record", n(record)), ("score", n(score))];
        p.extend(best.map(|b| ("previous_best", n(b))));
        unlocks(&u.send("race.finished", at, &p))
    };
    let mut u = User::new(cat);
    assert!(race(&mut u, T0, "a", 61.0, 60.0, 100.0, Some(50.0)).is_empty(), "slower than the record; exactly twice the best is not more");
    assert_eq!(race(&mut u, T0 + 1, "a", 59.9, 60.0, 100.0, None), vec!["record-breaker"], "no previous best: not more than twice it");
    assert_eq!(race(&mut u, T0 + 2, "b", 70.0, 60.0, 100.1, Some(50.0)), vec!["leap"]);
    race(&mut u, T0 + 3, "b", 59.0, 60.0, 1.0, None);
    assert_eq!(race(&mut u, T0 + 4, "c", 10.0, 12.0, 1.0, None), vec!["three-records"]);
    assert_eq!(explain(&User::new(u.cat.clone()), "leap").rule.describe, "number of race.finished where score is more than 2 times previous_best");
}

#[test]
fn ratio_and_field_comparison_errors_name_the_field() {
    let answers = r#"{ kind = "count", event = "problem.answered" }"#;
    let table = [
        (badge("r", "", &format!(r#"{{ kind = "ratio", of = {answers}, to = {answers} }}"#)), "badge `r`: field `rule`: give exactly one of at_least, more_than, at_most or less_than"),
        (badge("r", "", &format!(r#"{{ kind = "ratio", of = {answers}, to = {answers}, at_least = 0.5, at_most = 0.9 }}"#)), "badge `r`: field `rule`: give exactly one of at_least, more_than, at_most or less_than"),
        (badge("r", "", &format!(r#"{{ kind = "ratio", of = {answers}, to = {answers}, at_least = -1 }}"#)), "badge `r`: field `rule.at_least`: must be a number of at least 0"),
        (badge("r", "", r#"{ kind = "ratio", of = { kind = "count", event = "quiz" }, to = { kind = "count", event = "login" }, at_least = 1 }"#), "badge `r`: field `rule.of.event`: unknown event type `quiz`"),
        (badge("r", "", r#"{ kind = "ratio", of = { kind = "sum", event = "login", field = "x" }, to = { kind = "count", event = "login" }, at_least = 1 }"#), "badge `r`: field `rule.of.field`: `x` is not a declared field of `login`"),
        (badge("r", "", r#"{ kind = "ratio", of = { kind = "count", event = "login" }, to = { kind = "count", event = "login", when = { y = 1 } }, at_least = 1 }"#), "badge `r`: field `rule.to.when`: `y` is not a declared field of `login`"),
        (badge("w", "", r#"{ kind = "count", event = "race.finished", when = { time = { lt = { field = "recrod" } } }, target = 1 }"#), "badge `w`: field `rule.when`: `recrod` is not a declared field of `race.finished`"),
        (badge("w", "", r#"{ kind = "count", event = "race.finished", when = { time = { in = { field = "record" } } }, target = 1 }"#), "badge `w`: field `rule.when`: `time.in` cannot compare with another field (eq, ne, gt, gte, lt and lte can)"),
        (badge("a", "", r#"{ kind = "attribute", when = { plan = { eq = { field = "tier" } } } }"#), "badge `a`: field `rule.when`: user attributes compare with values, not with fields"),
    ];
    for (doc, want) in table {
        assert_eq!(Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string(), want);
    }
    // A side takes no target and no `per` (serde names the rule, and the key it refuses).
    for (side, bad) in [(r#"{ kind = "count", event = "login", target = 3 }"#, "target"), (r#"{ kind = "count", event = "login", per = "x" }"#, "per")] {
        let doc = badge("r", "", &format!(r#"{{ kind = "ratio", of = {side}, to = {answers}, at_least = 1 }}"#));
        let e = Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string();
        assert!(e.starts_with("badge `r`: field `rule`") && e.contains(&format!("unknown field `{bad}`")), "{e}");
    }
}

// --- Repeat of any rule (issue 23) --------------------------------------------------------------

#[test]
fn a_repeat_badge_is_earned_again_by_each_new_streak() {
    let cat = catalogue(&[
        badge("hot-streak", "xp = 10\nrepeat = true", r#"{ kind = "streak", event = "problem.answered", when = { correct = true }, target = 3 }"#),
        badge("three-days", "repeat = true", r#"{ kind = "daily_streak", event = "login", days = 3 }"#),
    ]
    .concat());
    // Three right in a row earn it; a fourth and fifth are the same streak; a wrong answer ends
    // it, and the next three right earn it again.
    let got = answers_table(&cat, &[(0, true, "a", 1.0), (1, true, "a", 1.0), (2, true, "a", 1.0), (3, true, "a", 1.0), (4, true, "a", 1.0), (5, false, "a", 1.0), (6, true, "a", 1.0), (7, true, "a", 1.0), (8, true, "a", 1.0)]);
    assert_eq!(got, vec![(3, "hot-streak".to_string()), (9, "hot-streak".to_string())]);
    let mut u = User::new(cat);
    for i in 0..9 {
        u.answer(T0 + i, "a", i != 5, 1.0);
    }
    assert_eq!((u.st.badges["hot-streak"].count, u.st.xp), (2, 20), "each award pays");
    // While owned, progress towards the next streak is pushed and explained.
    let fx = u.send("problem.answered", T0 + 9, &[("exercise", s("a")), ("correct", b(false)), ("seconds", n(1.0))]);
    assert_eq!(progress_of(&fx, "hot-streak"), Some((0.0, 3.0)));
    assert_eq!(explain(&u, "hot-streak").owned, 2);
    // Calendar streaks: days 1-3 earn it, day 4 goes on, a missed day ends it, days 6-8 again.
    let days: Vec<bool> = [0, 1, 2, 3, 5, 6, 7].iter().map(|d| unlocks(&u.send("login", T0 + d * DAY, &[])).contains(&"three-days".to_string())).collect();
    assert_eq!(days, [false, false, true, false, false, false, true]);
}

#[test]
fn a_repeat_badge_is_earned_again_after_a_quiet_spell_by_a_single_action() {
    // Each of these holds again at once on the first action after days without any: no event
    // saw it stop holding, so the badge tells the new week, run or streak by its number.
    let cat = catalogue(&[
        badge("weekly", "xp = 5\nrepeat = true", r#"{ kind = "calendar", event = "login", bucket = "day", buckets = 1, in_one = "week" }"#),
        badge("week-run", "repeat = true", r#"{ kind = "calendar", event = "login", bucket = "week", in_a_row = 1 }"#),
        badge("a-day", "repeat = true", r#"{ kind = "daily_streak", event = "login", days = 1 }"#),
    ]
    .concat());
    let mut u = User::new(cat);
    // T0 is Monday 2 March 2026, noon. Once this week: earned every week, three weeks running.
    let mut got = vec![];
    for d in [0, 2, 7, 9, 14] {
        got.push((d, unlocks(&u.send("login", T0 + d * DAY, &[]))));
    }
    let got: Vec<(i64, Vec<&str>)> = got.iter().map(|(d, b)| (*d, b.iter().map(String::as_str).filter(|b| *b != "a-day").collect())).collect();
    assert_eq!(got, vec![(0, vec!["weekly", "week-run"]), (2, vec![]), (7, vec!["weekly"]), (9, vec![]), (14, vec!["weekly"])]);
    assert_eq!((u.st.badges["weekly"].count, u.st.badges["week-run"].count), (3, 1), "weeks 1 to 3 are one run of weeks");
    // A week without any login ends the run of weeks; the next login starts a new one.
    assert_eq!(unlocks(&u.send("login", T0 + 28 * DAY, &[])), vec!["weekly", "week-run", "a-day"]);
    // A daily streak of one day: earned again by a login after a missed day, not the next day.
    let days: Vec<bool> = [29, 30, 32, 32].iter().map(|d| unlocks(&u.send("login", T0 + d * DAY + 1, &[])).contains(&"a-day".to_string())).collect();
    assert_eq!(days, [false, false, true, false]);
    // A late login for the empty week before: that week is older than the one last earned, and
    // it joins the two runs of weeks into one already earned, so nothing is earned.
    assert!(unlocks(&u.send("login", T0 + 22 * DAY, &[])).is_empty());
}

#[test]
fn tenure_repeats_every_year_and_repeat_errors_name_the_field() {
    let cat = catalogue(&badge("anniversary", "xp = 5\nrepeat_every = 365", r#"{ kind = "tenure", days = 365 }"#));
    let mut u = User::new(cat);
    // Two years and two months a member when first seen: two awards at once.
    let fx = u.send("user.profile", T0, &[("signed_up_at", s("2024-01-01T00:00:00Z"))]);
    assert!(fx.contains(&Effect::Unlock { badge: "anniversary".into(), count: 2, key: None, xp: 10, at: T0 }), "{fx:?}");
    let p = explain_at(&u, "anniversary", T0);
    assert_eq!((p.owned, p.rule.current, p.rule.target), (2, Some(791.0), Some(1095.0)));
    assert!(unlocks(&u.send("login", T0 + 300 * DAY, &[])).is_empty());
    assert_eq!(unlocks(&u.send("login", T0 + 305 * DAY, &[])), vec!["anniversary"]);
    // A first award after a shorter wait: at 7 days, then every 30 days after it.
    let mut w = User::new(catalogue(&badge("regular", "repeat_every = 30", r#"{ kind = "tenure", days = 7 }"#)));
    // Signed up at T0 (2026-03-02 12:00 UTC).
    assert!(unlocks(&w.send("user.profile", T0, &[("signed_up_at", s("2026-03-02T12:00:00Z"))])).is_empty());
    assert!(unlocks(&w.send("login", T0 + 7 * DAY - 1, &[])).is_empty());
    assert_eq!(unlocks(&w.send("login", T0 + 7 * DAY, &[])), vec!["regular"]);
    assert!(unlocks(&w.send("login", T0 + 36 * DAY, &[])).is_empty());
    assert_eq!(unlocks(&w.send("login", T0 + 37 * DAY, &[])), vec!["regular"]);
    let p = explain_at(&w, "regular", T0 + 37 * DAY);
    assert_eq!((p.owned, p.rule.target), (2, Some(67.0)));
    let table = [
        (badge("r", "repeat = true", r#"{ kind = "count", event = "login", target = 3 }"#), "badge `r`: field `repeat`: this rule never stops holding once it holds, so it could not be earned again (for counts and sums use repeat_every)"),
        (badge("r", "repeat = true\nrepeat_every = 3", r#"{ kind = "sum", event = "video.watched", field = "seconds", target = 3 }"#), "badge `r`: field `repeat`: cannot be combined with repeat_every or per_key"),
        (badge("r", "repeat = true", r#"{ kind = "all", of = [ { kind = "level", at_least = 2 }, { kind = "tenure", days = 3 } ] }"#), "badge `r`: field `repeat`: this rule never stops holding once it holds, so it could not be earned again (for counts and sums use repeat_every)"),
        (badge("r", "repeat_every = 2", r#"{ kind = "streak", event = "login", target = 3 }"#), "badge `r`: field `repeat_every`: needs a positive number and a count, sum, comeback, absence or tenure rule (use repeat = true for others)"),
        (badge("r", "repeat = 1", r#"{ kind = "streak", event = "login", target = 3 }"#), "badge `r`: field `repeat`: invalid type: integer `1`, expected a boolean"),
        (badge("r", "repeat = true", r#"{ kind = "window", within = "1h", require = [ { event = "video.watched", count = 2 } ] }"#), "badge `r`: field `repeat`: cannot repeat a window rule: it stops holding as time passes, with no event to see it, so a new occurrence could not be told from the last (repeat a calendar rule with `in_one` or `in_a_row` instead)"),
        (badge("r", "repeat = true", r#"{ kind = "any", of = [ { kind = "daily_streak", event = "login", days = 2 }, { kind = "level", at_least = 3 } ] }"#), "badge `r`: field `repeat`: repeats a daily streak or a calendar rule with `in_one` or `in_a_row` only as the badge's whole rule: it stops holding as days pass, and only on its own can its occurrences be told apart"),
        (badge("r", "repeat_every = 0.001", r#"{ kind = "tenure", days = 0 }"#), "badge `r`: field `repeat_every`: on a tenure rule counts whole days: give a whole number from 1 to 100000"),
        (badge("r", "repeat_every = 1.5", r#"{ kind = "tenure", days = 1 }"#), "badge `r`: field `repeat_every`: on a tenure rule counts whole days: give a whole number from 1 to 100000"),
        (badge("r", "repeat_every = 30", r#"{ kind = "tenure", days = 365 }"#), "badge `r`: field `repeat_every`: must be at least the rule's `days`: the first award comes at `days`, the next ones every `repeat_every` days after it"),
        (badge("r", "repeat_every = 0.5", r#"{ kind = "count", event = "login", target = 1 }"#), "badge `r`: field `repeat_every`: on a count must be at least 1: a count grows by one at a time"),
        (badge("r", "repeat = true", r#"{ kind = "streak", event = "problem.answered", when = { correct = true }, per = "exercise", target = 3 }"#), "badge `r`: field `repeat`: takes a rule that is not kept per key (`per`, `same`, `in_key`): whether it holds changes with each event's key"),
    ];
    for (doc, want) in table {
        assert_eq!(Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string(), want);
    }
}

#[test]
fn a_badge_owned_before_it_became_repeatable_waits_for_a_new_streak() {
    let once = catalogue(&badge("hot", "", r#"{ kind = "streak", event = "problem.answered", when = { correct = true }, target = 2 }"#));
    let mut u = User::new(once);
    u.answer(T0, "a", true, 1.0);
    assert_eq!(u.answer(T0 + 1, "a", true, 1.0), vec!["hot"]);
    // The catalogue makes it repeatable while the streak goes on: not earned again for it.
    u.cat = catalogue(&badge("hot", "repeat = true", r#"{ kind = "streak", event = "problem.answered", when = { correct = true }, target = 2 }"#));
    assert!(u.answer(T0 + 2, "a", true, 1.0).is_empty());
    u.answer(T0 + 3, "a", false, 1.0);
    u.answer(T0 + 4, "a", true, 1.0);
    assert_eq!(u.answer(T0 + 5, "a", true, 1.0), vec!["hot"]);
    assert_eq!(u.st.badges["hot"].count, 2);
}

/// A catalogue's `[teams]` section is a catalogue of its own over the members' events, each
/// with the `member` who sent it: its badges count the team's events and can count members.
#[test]
fn team_rules_count_the_members_events_and_the_members() {
    let team = r#"
[teams]
max_members = 50
[[teams.badges]]
id = "three-answers"
name = "Three answers"
tier = "bronze"
rule = { kind = "count", event = "problem.answered", target = 3 }
[[teams.badges]]
id = "two-members"
name = "Two members answered"
tier = "silver"
rule = { kind = "count", event = "problem.answered", distinct = "member", target = 2 }
"#;
    let cat = catalogue(team);
    let teams = cat.teams.as_ref().expect("a teams section");
    assert_eq!((teams.max_members, teams.max_teams_per_user), (50, 10));
    assert!(cat.badge("three-answers").is_none(), "team badges are not the users'");
    let mut t = User::new((*teams.catalogue).clone());
    let answer = |t: &mut User, member: &str, at: Millis| unlocks(&t.send("problem.answered", at, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0)), ("member", s(member))]));
    assert_eq!(answer(&mut t, "ann", T0), Vec::<String>::new());
    assert_eq!(answer(&mut t, "ann", T0 + MIN), Vec::<String>::new());
    assert_eq!(answer(&mut t, "bob", T0 + 2 * MIN), vec!["three-answers", "two-members"]);
    // A member's event without its member is refused, and changes nothing.
    let before = t.st.clone();
    let fx = t.send("problem.answered", T0 + 3 * MIN, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))]);
    assert!(matches!(&fx[0], Effect::Rejected { reason: Rejection::MissingField(f), .. } if f == "member"), "{fx:?}");
    assert_eq!(t.st, before);
    // The same article read by two members is two reads for the team (the fingerprint is the
    // member's side's to apply).
    let mut t2 = User::new((*catalogue(&format!("{team}[[teams.badges]]\nid = \"two-reads\"\nname = \"r\"\ntier = \"bronze\"\nrule = {{ kind = \"count\", event = \"article.read\", target = 2 }}\n")).teams.as_ref().unwrap().catalogue).clone());
    t2.send("article.read", T0, &[("article", s("a1")), ("member", s("ann"))]);
    assert_eq!(unlocks(&t2.send("article.read", T0 + MIN, &[("article", s("a1")), ("member", s("bob"))])), vec!["two-reads"]);
    // A catalogue without the section has no team catalogue.
    assert!(catalogue("").teams.is_none());
}

/// A community goal's share of an accepted event: counted (or its field summed) when it meets
/// `when` and arrives (by the server's clock) within the goal's span; nothing from a refused or
/// repeated event.
#[test]
fn community_goals_take_a_share_of_accepted_events_within_their_span() {
    // T0 + 1 s is when the first event arrives (`send` receives at its time + 1 s).
    let at = |ms: Millis| chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339();
    let cat = catalogue(&format!(
        "[[community_goals]]\nid = \"correct\"\nevent = \"problem.answered\"\nwhen = {{ correct = true }}\ntarget = 100\nstarts = \"{}\"\nends = \"{}\"\n\
         [[community_goals]]\nid = \"seconds\"\nevent = \"problem.answered\"\nfield = \"seconds\"\ntarget = 1000\nends = \"{}\"\n",
        at(T0),
        at(T0 + 10 * MIN),
        at(T0 + 10 * MIN),
    ));
    let shares = |fx: &[Effect]| -> Vec<(String, f64)> {
        // Kept under `id@ends`, so that a goal run again with a new deadline starts anew.
        fx.iter()
            .filter_map(|e| if let Effect::Contributed { goal, amount } = e { Some((accolade::core::catalogue::CommunityGoalDef::id_of(goal).to_string(), *amount)) } else { None })
            .collect()
    };
    let mut u = User::new(cat);
    let answer = |u: &mut User, at: Millis, correct: bool, seconds: f64| shares(&u.send("problem.answered", at, &[("exercise", s("a")), ("correct", b(correct)), ("seconds", n(seconds))]));
    let rows: Vec<(&str, Millis, bool, f64, Vec<(String, f64)>)> = vec![
        ("before it starts: the sum only", T0 - 2 * MIN, true, 5.0, vec![("seconds".into(), 5.0)]),
        ("correct, within", T0, true, 7.0, vec![("correct".into(), 1.0), ("seconds".into(), 7.0)]),
        ("wrong: the sum only", T0 + MIN, false, 3.0, vec![("seconds".into(), 3.0)]),
        ("no seconds: nothing to sum", T0 + 2 * MIN, true, 0.0, vec![("correct".into(), 1.0)]),
        ("received at the end: too late", T0 + 10 * MIN - 1000, true, 4.0, vec![]),
    ];
    for (what, t, correct, seconds, want) in rows {
        assert_eq!(answer(&mut u, t, correct, seconds), want, "{what}");
    }
    // A repeated id shares nothing.
    let e = u.event("problem.answered", T0, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(1.0))]);
    assert_eq!(shares(&apply(&mut u.st, &e, T0 + 1000, &u.cat)).len(), 2);
    assert_eq!(shares(&apply(&mut u.st, &e, T0 + 1000, &u.cat)), vec![], "a duplicate");
    // A team's catalogue has none (its events are its members' again).
    let with_teams = catalogue(&format!("[[community_goals]]\nid = \"c\"\nevent = \"login\"\ntarget = 1\nends = \"{}\"\n[teams]\n[[teams.badges]]\nid = \"t\"\nname = \"t\"\ntier = \"bronze\"\nrule = {{ kind = \"count\", event = \"login\", target = 1 }}\n", at(T0)));
    assert_eq!((with_teams.community.len(), with_teams.teams.as_ref().unwrap().catalogue.community.len()), (1, 0));
}

#[test]
fn community_goal_errors_name_the_goal_and_field() {
    let g = |body: &str| format!("[[community_goals]]\nid = \"g\"\n{body}\n");
    let ok = "event = \"login\"\ntarget = 5\nends = \"2027-01-01T00:00:00Z\"";
    let table = [
        (g("event = \"quiz.taken\"\ntarget = 5\nends = \"2027-01-01T00:00:00Z\""), "community goal `g`: field `event`: unknown event type `quiz.taken`"),
        (g("event = \"login\"\ntarget = 0\nends = \"2027-01-01T00:00:00Z\""), "community goal `g`: field `target`: must be a positive number"),
        (g("event = \"login\"\ntarget = 5\nends = \"next sunday\""), "community goal `g`: field `ends`: `next sunday` is not an RFC 3339 time"),
        (g("event = \"login\"\ntarget = 5"), "community goal `g`: field `document`: missing field `ends`"),
        (g(&format!("{ok}\nstarts = \"2027-02-01T00:00:00Z\"")), "community goal `g`: field `ends`: must be after starts"),
        (g("event = \"problem.answered\"\nfield = \"exercise\"\ntarget = 5\nends = \"2027-01-01T00:00:00Z\""), "community goal `g`: field `field`: `exercise` is not a number field of `problem.answered`"),
        (g("event = \"problem.answered\"\nwhen = { colour = \"red\" }\ntarget = 5\nends = \"2027-01-01T00:00:00Z\""), "community goal `g`: field `when`"),
        (g(&format!("{ok}\ncolour = 1")), "community goal `g`: field `colour`: unknown field `colour`"),
        (format!("{}{}", g(ok), g(ok)), "community goal `g`: field `id`: duplicate community goal id"),
        ("[[community_goals]]\nid = \"a b\"\nevent = \"login\"\ntarget = 5\nends = \"2027-01-01T00:00:00Z\"\n".to_string(), "community goal `a b`: field `id`: use 1 to 64 letters"),
    ];
    for (doc, want) in table {
        let e = Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string();
        assert!(e.starts_with(want), "got: {e}\nwant: {want}");
    }
}

/// A team badge's `give`: the badge of users it names, and for `contributors` the members whose
/// events its rule counted (with its conditions), kept in the team's state as it goes.
#[test]
fn a_team_badge_gives_a_badge_of_users_to_its_members_or_its_contributors() {
    let cat = catalogue(
        r#"
[[badges]]
id = "helped"
name = "Helped the team"
tier = "bronze"
xp = 20
rule = { kind = "awarded" }
[[badges]]
id = "logged-in"
name = "Logged in"
tier = "bronze"
rule = { kind = "count", event = "login", target = 1 }
[teams]
[[teams.badges]]
id = "three-correct"
name = "Three correct answers"
tier = "bronze"
rule = { kind = "count", event = "problem.answered", when = { correct = true }, target = 3 }
give = { badge = "helped", to = "contributors" }
[[teams.badges]]
id = "four-answers"
name = "Four answers"
tier = "bronze"
rule = { kind = "count", event = "problem.answered", target = 4 }
give = { badge = "helped" }
"#,
    );
    let tc = cat.teams.as_ref().unwrap().catalogue.clone();
    let give = |id: &str| tc.badge(id).unwrap().give.clone().unwrap();
    assert_eq!((&*give("four-answers").badge, give("four-answers").contributors), ("helped", None));
    let slot = give("three-correct").contributors.expect("a contributors stat");
    let mut t = User::new((*tc).clone());
    let answer = |t: &mut User, member: &str, correct: bool, at: Millis| unlocks(&t.send("problem.answered", at, &[("exercise", s("a")), ("correct", b(correct)), ("seconds", n(1.0)), ("member", s(member))]));
    let contributors = |t: &User| match &t.st.stats[slot].1 {
        accolade::core::state::StatValue::Set(m) => m.iter().cloned().collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    answer(&mut t, "ann", true, T0);
    answer(&mut t, "bob", false, T0 + MIN);
    answer(&mut t, "ann", true, T0 + 2 * MIN);
    assert_eq!(contributors(&t), ["ann"], "a wrong answer does not count toward three correct ones");
    assert_eq!(answer(&mut t, "cy", true, T0 + 3 * MIN), vec!["three-correct", "four-answers"]);
    assert_eq!(contributors(&t), ["ann", "cy"]);

    // The member's side: given once per telling, its unlock naming the team, with its XP.
    let mut u = User::new(cat.clone());
    let fx = accolade::core::give(&mut u.st, "helped", "class-a", "told-1", T0, "told-1", &cat);
    assert!(matches!(&fx[0], Effect::Unlock { badge, count: 1, key: Some(k), xp: 20, .. } if &**badge == "helped" && k == "class-a"), "{fx:?}");
    assert_eq!(u.st.xp, 20);
    assert_eq!(accolade::core::give(&mut u.st, "helped", "class-a", "told-1", T0, "told-1", &cat), vec![], "the same telling gives nothing twice");
    assert_eq!(unlocks(&accolade::core::give(&mut u.st, "helped", "class-b", "told-2", T0, "told-2", &cat)), vec!["helped"], "another team's gift is another award");
    assert_eq!(u.st.badges.get("helped").map(|r| r.count), Some(2));
    // Only a badge of kind `awarded` is given from outside its rules.
    assert_eq!(accolade::core::give(&mut u.st, "logged-in", "class-a", "told-3", T0, "told-3", &cat), vec![]);
    assert_eq!(accolade::core::give(&mut u.st, "gone", "class-a", "told-4", T0, "told-4", &cat), vec![]);
    assert!(u.st.badges.get("logged-in").is_none());
}

#[test]
fn team_catalogue_errors_name_the_field() {
    let b = |rule: &str| format!("[[teams.badges]]\nid = \"tb\"\nname = \"tb\"\ntier = \"bronze\"\nrule = {rule}\n");
    let table = [
        (format!("[teams]\n{}", ""), "field `teams`: a teams section needs at least one badge or XP rule: otherwise a team counts nothing".to_string()),
        (
            format!("[[leaderboards]]\nid = \"week\"\nmetric = \"xp\"\nperiod = \"weekly\"\n[teams]\n{}[[teams.leaderboards]]\nid = \"week\"\nmetric = \"xp\"\nperiod = \"weekly\"\n", b(r#"{ kind = "count", event = "login", target = 1 }"#)),
            "team leaderboard `week`: field `id`: a leaderboard of users has this id too".into(),
        ),
        (
            format!("[teams]\n{}[[teams.leaderboards]]\nid = \"crews\"\nmetric = \"xp\"\nperiod = \"weekly\"\naward = {{ badge = \"tb\", top = 1 }}\n", b(r#"{ kind = "count", event = "login", target = 1 }"#)),
            "team leaderboard `crews`: field `award.badge`: badge `tb` must have the rule { kind = \"awarded\" }".into(),
        ),
        (
            format!("[teams]\n{}[[teams.leaderboards]]\nid = \"crews\"\nmetric = \"count\"\nevent = \"quiz.taken\"\nperiod = \"weekly\"\n", b(r#"{ kind = "count", event = "login", target = 1 }"#)),
            "team leaderboard `crews`: field `event`: unknown event type `quiz.taken`".into(),
        ),
        (format!("[teams]\nmax_members = 0\n{}", b(r#"{ kind = "count", event = "login", target = 1 }"#)), "field `teams.max_members`: must be between 1 and 100000".into()),
        (format!("[teams]\nmax_teams_per_user = 101\n{}", b(r#"{ kind = "count", event = "login", target = 1 }"#)), "field `teams.max_teams_per_user`: must be between 1 and 100".into()),
        (format!("[teams]\ncolour = \"red\"\n{}", b(r#"{ kind = "count", event = "login", target = 1 }"#)), "field `teams.colour`: unknown field `colour`, expected one of".into()),
        (b(r#"{ kind = "count", event = "quiz.taken", target = 1 }"#), "team badge `tb`: field `rule.event`: unknown event type `quiz.taken`".into()),
        (b(r#"{ kind = "count", event = "login", distinct = "team", target = 2 }"#), "team badge `tb`: field `rule.distinct`".into()),
        (format!("{}give = {{ badge = \"nope\" }}\n", b(r#"{ kind = "count", event = "login", target = 1 }"#)), "team badge `tb`: field `give.badge`: unknown badge `nope`".into()),
        (
            format!("[[badges]]\nid = \"ub\"\nname = \"ub\"\ntier = \"bronze\"\nrule = {{ kind = \"count\", event = \"login\", target = 1 }}\n{}give = {{ badge = \"ub\" }}\n", b(r#"{ kind = "count", event = "login", target = 1 }"#)),
            "team badge `tb`: field `give.badge`: badge `ub` must have the rule { kind = \"awarded\" }".into(),
        ),
        (format!("{}give = {{ badge = \"x\", to = \"everyone\" }}\n", b(r#"{ kind = "count", event = "login", target = 1 }"#)), "team badge `tb`: field `give.to`: unknown `everyone` (use members or contributors)".into()),
        (format!("{}repeat_every = 5\ngive = {{ badge = \"x\", to = \"contributors\" }}\n", b(r#"{ kind = "count", event = "login", target = 5 }"#)), "team badge `tb`: field `give.to`: the contributors are those of the team's whole life".into()),
        (format!("{}give = {{ badge = \"x\", to = \"contributors\" }}\n", b(r#"{ kind = "awarded" }"#)), "team badge `tb`: field `give.to`: this rule reads no member's event".into()),
        (
            "[[badges]]\nid = \"ub\"\nname = \"ub\"\ntier = \"bronze\"\nrule = { kind = \"count\", event = \"login\", target = 1 }\ngive = { badge = \"ub\" }\n".to_string(),
            "badge `ub`: field `give`: only a badge of the [teams] section gives a badge".into(),
        ),
    ];
    for (doc, want) in table {
        let e = Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string();
        assert!(e.starts_with(&want), "got: {e}\nwant: {want}");
    }
    // An event type that already has a `member` field cannot be counted for teams.
    let clash = HEADER.replace("fields = { article = \"string\" }", "fields = { article = \"string\", member = \"string\" }");
    let e = Catalogue::parse(&format!("{clash}\n{}", b(r#"{ kind = "count", event = "login", target = 1 }"#)), Format::Toml).unwrap_err().to_string();
    assert!(e.starts_with("event type `article.read`: field `fields.member`: a catalogue with teams adds this field"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Revocation, expiry and retraction (issue 23, item 6)
// ---------------------------------------------------------------------------------------------

use accolade::core::revoke::{holding, revoke, Holding, RevokeRefused};
use accolade::core::RevokeCause;

/// The badges `fx` takes away: (badge, cause, XP taken back, XP and level after).
fn revoked(fx: &[Effect]) -> Vec<(String, RevokeCause, u64, u64, u32)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Revoked { badge, cause, xp, total, level, .. } => Some((badge.to_string(), *cause, *xp, *total, *level)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_revoked_badge_is_gone_counted_once_and_earned_again_only_on_new_facts() {
    let cat = catalogue(&format!(
        "{}{}",
        badge("three", "xp = 150", r#"{ kind = "count", event = "problem.answered", when = { correct = true }, target = 3 }"#),
        badge("marathon", "xp = 20", r#"{ kind = "sum", event = "video.watched", field = "seconds", target = 600 }"#),
    ));
    let mut u = User::new(cat);
    assert_eq!(u.answer(T0, "a", true, 5.0), Vec::<String>::new());
    u.answer(T0 + MIN, "a", true, 5.0);
    assert_eq!(u.answer(T0 + 2 * MIN, "a", true, 5.0), ["three"]);
    assert_eq!((u.st.xp, u.st.level), (150, 2));
    let now = T0 + HOUR;
    // Taken with its XP: the level follows the XP down.
    let fx = revoke(&mut u.st, "three", "answers copied", true, now, "revoke:three:4", &u.cat).unwrap();
    assert_eq!(revoked(&fx), [("three".to_string(), RevokeCause::Api, 150, 0, 1)]);
    assert_eq!((u.st.xp, u.st.level), (0, 1));
    match holding(&u.st, "three", now) {
        Holding::Revoked(r) => assert_eq!((r.at, r.reason.as_str(), r.count, r.xp, r.event_id.as_str()), (now, "answers copied", 1, 150, "revoke:three:4")),
        other => panic!("{other:?}"),
    }
    // Asked again it changes nothing: one revocation, counted once.
    let before = u.st.clone();
    assert_eq!(revoke(&mut u.st, "three", "again", true, now + 1, "revoke:three:5", &u.cat), Ok(vec![]));
    assert_eq!(u.st, before);
    // The answers that earned it are spent: three more right answers earn it again, not one,
    // and "why not?" counts from the revocation.
    let why = explain(&u, "three");
    assert_eq!((why.owned, why.rule.current, why.rule.holds), (0, Some(0.0), false));
    assert_eq!(u.answer(T0 + 2 * HOUR, "a", true, 5.0), Vec::<String>::new());
    assert_eq!(explain(&u, "three").rule.current, Some(1.0));
    assert_eq!(u.answer(T0 + 3 * HOUR, "a", false, 5.0), Vec::<String>::new());
    assert_eq!(u.answer(T0 + 4 * HOUR, "a", true, 5.0), Vec::<String>::new());
    assert_eq!(u.answer(T0 + 5 * HOUR, "a", true, 5.0), ["three"]);
    assert!(matches!(holding(&u.st, "three", T0 + 5 * HOUR), Holding::Held(_)));
    // XP kept when the caller says so; a badge never held and one the catalogue lacks are
    // refused.
    u.watch(T0 + 6 * HOUR, "p", "v", 700.0);
    let xp = u.st.xp;
    let fx = revoke(&mut u.st, "marathon", "test account", false, T0 + 7 * HOUR, "revoke:marathon:9", &u.cat).unwrap();
    assert_eq!(revoked(&fx), [("marathon".to_string(), RevokeCause::Api, 0, xp, u.st.level)]);
    assert_eq!(u.st.xp, xp);
    let mut fresh = User::new(u.cat.clone());
    fresh.answer(T0, "a", true, 5.0);
    assert_eq!(revoke(&mut fresh.st, "three", "r", true, T0, "x", &fresh.cat), Err(RevokeRefused::NeverHeld));
    assert_eq!(revoke(&mut fresh.st, "ghost", "r", true, T0, "x", &fresh.cat), Err(RevokeRefused::UnknownBadge));
}

#[test]
fn a_badge_valid_for_a_period_expires_unseen_and_is_earned_again() {
    let cat = catalogue(&format!(
        "{}{}",
        badge("certified", "xp = 40\nvalid_for = \"30d\"", r#"{ kind = "count", event = "exercise.proficient", target = 1 }"#),
        badge("regular", "valid_for = \"7d\"", r#"{ kind = "window", within = "1d", require = [ { event = "login", count = 2 } ] }"#),
    ));
    let mut u = User::new(cat);
    let fx = u.send("exercise.proficient", T0, &[("exercise", s("algebra"))]);
    assert_eq!(unlocks(&fx), ["certified"]);
    assert_eq!(u.st.badges["certified"].expires_at, Some(T0 + 30 * DAY));
    // The entitlement at a moment: held up to the last millisecond, expired from then on,
    // though no event has come to see it.
    assert!(matches!(holding(&u.st, "certified", T0 + 30 * DAY - 1), Holding::Held(_)));
    assert!(matches!(holding(&u.st, "certified", T0 + 30 * DAY), Holding::Expired { at, .. } if at == T0 + 30 * DAY));
    // Seen when the user connects instead (an `accolade.expire` record), it is the same
    // expiry, and a rebuild repeats it to the byte.
    let mut connected = u.st.clone();
    let fx = accolade::core::look(&mut connected, T0 + 35 * DAY, "expire:2", &u.cat);
    assert_eq!(revoked(&fx), [("certified".to_string(), RevokeCause::Expired, 0, 40, 1)]);
    let mut rebuilt = u.st.clone();
    let record = stored("expire:2", accolade::records::EXPIRE_EVENT, T0 + 35 * DAY - 1000, &[]);
    accolade::replay::replay_record(&mut rebuilt, &[record], 0, &[], &u.cat);
    assert_eq!(rebuilt, connected);
    // The next event, whatever it is, takes it at its own expiry time, XP kept.
    let fx = u.send("login", T0 + 40 * DAY, &[]);
    assert_eq!(revoked(&fx), [("certified".to_string(), RevokeCause::Expired, 0, 40, 1)]);
    assert!(matches!(&fx[1], Effect::Revoked { at, .. } if *at == T0 + 30 * DAY), "{fx:?}");
    assert!(matches!(holding(&u.st, "certified", T0 + 40 * DAY), Holding::Revoked(r) if r.cause == RevokeCause::Expired));
    // Earned again by a new proficiency, and held for 30 days from that one.
    let fx = u.send("exercise.proficient", T0 + 41 * DAY, &[("exercise", s("algebra"))]);
    assert_eq!(unlocks(&fx), ["certified"]);
    assert_eq!(u.st.badges["certified"].expires_at, Some(T0 + 71 * DAY));
    assert_eq!(u.st.xp, 80);
    // A window rule: held a week, then earned again only by two logins within a day.
    u.send("login", T0 + 50 * DAY, &[]);
    assert_eq!(unlocks(&u.send("login", T0 + 50 * DAY + HOUR, &[])), ["regular"]);
    let fx = u.send("login", T0 + 58 * DAY, &[]);
    assert_eq!(revoked(&fx).iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["regular"]);
    assert!(unlocks(&fx).is_empty(), "one login in a day does not hold: {fx:?}");
    assert_eq!(unlocks(&u.send("login", T0 + 58 * DAY + HOUR, &[])), ["regular"]);
}

#[test]
fn valid_for_errors_name_the_field() {
    let table = [
        (badge("soon", "valid_for = \"soon\"", r#"{ kind = "count", event = "login", target = 1 }"#), "not a duration"),
        (badge("blink", "valid_for = \"10s\"", r#"{ kind = "count", event = "login", target = 1 }"#), "too short"),
        (badge("keyed", "valid_for = \"30d\"\nper_key = \"exercise\"", r#"{ kind = "count", event = "exercise.proficient", target = 1 }"#), "per_key"),
        (badge("old-timer", "valid_for = \"30d\"", r#"{ kind = "tenure", days = 30 }"#), "never stops holding"),
        (badge("levelled", "valid_for = \"30d\"", r#"{ kind = "level", at_least = 2 }"#), "never stops holding"),
    ];
    for (doc, detail) in table {
        let id = doc.split('"').nth(1).unwrap().to_string();
        let e = Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string();
        let prefix = format!("badge `{id}`: field `valid_for`");
        assert!(e.starts_with(&prefix) && e.contains(detail), "got: {e}\nwant: {prefix} … {detail}");
    }
    // Counts, sums and rules that can stop holding take it.
    for rule in [
        r#"{ kind = "sum", event = "video.watched", field = "seconds", target = 600 }"#,
        r#"{ kind = "streak", event = "problem.answered", when = { correct = true }, target = 3 }"#,
        r#"{ kind = "window", within = "7d", require = [ { event = "login", count = 3 } ] }"#,
    ] {
        catalogue(&badge("ok", "valid_for = \"365d\"", rule));
    }
}

/// One stored event of user alice, received a second after it happened.
fn stored(id: &str, ty: &str, at: Millis, payload: &[(&str, Value)]) -> accolade::store::StoredEvent {
    let mut e = Event::new(id, ty, at, payload);
    e.user_id = "alice".into();
    e.tenant_id = "demo".into();
    accolade::store::StoredEvent { event: e, received_at: at + 1000, catalogue_version: 1, pushes: vec![] }
}

#[test]
fn a_retracted_event_takes_back_what_it_earned_and_only_that() {
    let cat = catalogue(&format!(
        "{}{}{}",
        badge("three", "xp = 30", r#"{ kind = "count", event = "problem.answered", when = { correct = true }, target = 3 }"#),
        badge("listener", "", r#"{ kind = "sum", event = "video.watched", field = "seconds", target = 600 }"#),
        badge("regular", "", r#"{ kind = "badge", id = "three" }"#),
    ));
    let right = |id: &str, at: Millis| stored(id, "problem.answered", at, &[("exercise", s("a")), ("correct", b(true)), ("seconds", n(5.0))]);
    let mut log = vec![right("e1", T0), right("e2", T0 + MIN), stored("e3", "video.watched", T0 + 2 * MIN, &[("video", s("v")), ("playlist", s("p")), ("seconds", n(700.0))]), right("e4", T0 + 3 * MIN)];
    let mut st = UserState::default();
    for e in &log {
        apply(&mut st, &e.event, e.received_at, &cat);
    }
    assert_eq!(st.badges.keys().cloned().collect::<Vec<_>>(), ["listener", "regular", "three"]);
    let now = T0 + HOUR;
    // Retracting a right answer: the count is recomputed (2), and the badges it earned, the
    // one that needed it included, fall away; the video's badge stays.
    let rec = accolade::records::TakeRecord { target: "e2".into(), reason: "refunded".into(), claw_back: true };
    let fx = accolade::replay::apply_retract(&mut st, &log, &rec, now, "retract:e2:5", &cat);
    let fallen: Vec<(String, RevokeCause)> = revoked(&fx).into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(fallen, [("regular".to_string(), RevokeCause::Retracted), ("three".to_string(), RevokeCause::Retracted)]);
    assert_eq!(st.xp, 0, "the XP of `three` went with it");
    assert!(matches!(holding(&st, "listener", now), Holding::Held(_)));
    // Every later replay leaves the event out, and one more right answer earns `three` again
    // (the facts left are the truth: nothing is counted anew after a retraction).
    let mut record = stored("retract:e2:5", accolade::records::RETRACT_EVENT, now, &[]);
    record.event.payload = rec.payload(accolade::records::RETRACT_EVENT);
    log.push(record);
    let e5 = right("e5", T0 + 2 * HOUR);
    let fx = apply(&mut st, &e5.event, e5.received_at, &cat);
    assert_eq!(unlocks(&fx), ["three", "regular"]);
    // Retracting the video takes its badge, and its seconds, XP kept as asked.
    let log2 = [log.clone(), vec![e5]].concat();
    let rec = accolade::records::TakeRecord { target: "e3".into(), reason: "duplicate upload".into(), claw_back: false };
    let fx = accolade::replay::apply_retract(&mut st, &log2, &rec, now, "retract:e3:7", &cat);
    assert_eq!(revoked(&fx).iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["listener"]);
    let sum = st.stats.iter().map(|(_, v)| v.metric(None)).collect::<Vec<_>>();
    assert!(sum.contains(&0.0) && !sum.contains(&700.0), "the video's seconds are gone: {sum:?}");
}

// ---------------------------------------------------------------------------------------------
// Comebacks and absence (issue 23, item 4)
// ---------------------------------------------------------------------------------------------

const QA: &str = r#"
[event_types."question.asked"]
client = true
fields = { question = "string" }
[event_types."question.answered"]
client = true
fields = { question = "string" }
"#;

/// How many waits an `absence` stat has seen lapse, and how many it has open.
fn waits(st: &UserState) -> (u32, usize) {
    st.stats.iter().find_map(|(_, v)| if let accolade::core::state::StatValue::Waits { open, lapsed } = v { Some((*lapsed, open.len())) } else { None }).expect("an absence stat")
}

#[test]
fn a_comeback_is_an_event_after_a_time_away_from_every_event() {
    let cat = catalogue(&format!(
        "{}{}",
        badge("back", "", r#"{ kind = "comeback", event = "login", after = "14d" }"#),
        badge("back-again", "repeat_every = 1", r#"{ kind = "comeback", event = ["login", "problem.answered"], after = "30d" }"#),
    ));
    let mut u = User::new(cat);
    // The first event is no comeback: there was nothing to come back to.
    assert_eq!(unlocks(&u.send("login", T0, &[])), Vec::<String>::new());
    assert_eq!(unlocks(&u.send("login", T0 + 13 * DAY, &[])), Vec::<String>::new());
    // Any event of hers ends a time away, not only the rule's: 13 days after the answer.
    assert_eq!(u.answer(T0 + 20 * DAY, "a", true, 5.0), Vec::<String>::new());
    assert_eq!(unlocks(&u.send("login", T0 + 33 * DAY, &[])), Vec::<String>::new());
    // Fourteen days to the millisecond is a comeback.
    assert_eq!(unlocks(&u.send("login", T0 + 47 * DAY, &[])), ["back"]);
    // Thirty days away, then an answer: the other badge, earned again at each new comeback.
    assert_eq!(u.answer(T0 + 77 * DAY, "a", true, 5.0), ["back-again"]);
    // An event reported late, for a moment before her newest, comes back from nowhere.
    assert_eq!(unlocks(&u.send("login", T0 + 77 * DAY - 20 * HOUR, &[])), Vec::<String>::new());
    assert_eq!(unlocks(&u.send("login", T0 + 110 * DAY, &[])), ["back-again"]);
    assert_eq!((u.st.badges["back"].count, u.st.badges["back-again"].count), (1, 2));
}

#[test]
fn an_absence_counts_the_waits_that_ran_out_when_it_next_looks() {
    let cat = catalogue(&format!(
        "{QA}{}{}",
        badge("unanswered", "xp = 10", r#"{ kind = "absence", event = "question.asked", until = "question.answered", key = "question", within = "7d" }"#),
        badge("three-unanswered", "", r#"{ kind = "absence", event = "question.asked", until = "question.answered", key = "question", within = "7d", target = 3 }"#),
    ));
    let mut u = User::new(cat);
    let q = |id: &str| [("question", s(id))];
    u.send("question.asked", T0, &q("q1"));
    assert_eq!(u.st.next_look(), Some(T0 + 7 * DAY));
    // Answered in time: that wait is over.
    u.send("question.answered", T0 + 3 * DAY, &q("q1"));
    assert_eq!(u.st.next_look(), None);
    // A question asked twice waits from the first time.
    u.send("question.asked", T0 + DAY, &q("q2"));
    u.send("question.asked", T0 + 2 * DAY, &q("q2"));
    assert_eq!((waits(&u.st), u.st.next_look()), ((0, 1), Some(T0 + 8 * DAY)));
    // With no event at all: nothing a millisecond before the due time, the badge at it.
    let mut early = u.st.clone();
    assert_eq!(accolade::core::look(&mut early, T0 + 8 * DAY - 1, "expire:5", &u.cat), vec![]);
    let mut looked = u.st.clone();
    let fx = accolade::core::look(&mut looked, T0 + 8 * DAY, "expire:5", &u.cat);
    assert_eq!(unlocks(&fx), ["unanswered"]);
    assert_eq!((looked.xp, waits(&looked), looked.next_look()), (10, (1, 0), None));
    assert!(matches!(fx.iter().find(|e| matches!(e, Effect::Unlock { .. })), Some(Effect::Unlock { at, .. }) if *at == T0 + 8 * DAY), "{fx:?}");
    // A rebuild repeats the look from its record's receive time, to the byte.
    let mut rebuilt = u.st.clone();
    let record = stored("expire:5", accolade::records::EXPIRE_EVENT, T0 + 8 * DAY - 1000, &[]);
    accolade::replay::replay_record(&mut rebuilt, &[record], 0, &[], &u.cat);
    assert_eq!(rebuilt, looked);
    u.st = looked;
    // Unseen by a look, a wait lapses at her next event, whatever its type.
    u.send("question.asked", T0 + 10 * DAY, &q("q3"));
    u.send("question.asked", T0 + 10 * DAY + HOUR, &q("q4"));
    assert_eq!(unlocks(&u.send("login", T0 + 18 * DAY, &[])), ["three-unanswered"]);
    // An answer after the due time closes nothing: that question went unanswered.
    u.send("question.answered", T0 + 18 * DAY + HOUR, &q("q3"));
    assert_eq!(waits(&u.st), (3, 0));
    // An answer that happened before the due time but arrives after it (late, within the
    // bound) was in time.
    u.send("question.asked", T0 + 20 * DAY, &q("q5"));
    let answer = u.event("question.answered", T0 + 27 * DAY - HOUR, &q("q5"));
    apply(&mut u.st, &answer, T0 + 27 * DAY + HOUR, &u.cat);
    assert_eq!((waits(&u.st), u.st.next_look()), ((3, 0), None));
    // A wait that the same event both sees lapse and opens again: the old one lapses before
    // the event, and the question asked anew waits afresh.
    u.send("question.asked", T0 + 30 * DAY, &q("q6"));
    u.send("question.asked", T0 + 38 * DAY, &q("q6"));
    assert_eq!((waits(&u.st), u.st.next_look()), ((4, 1), Some(T0 + 45 * DAY)));
}

#[test]
fn an_absence_without_a_key_is_one_wait_and_stops_opening_at_its_limit() {
    let cat = catalogue(&format!("{QA}{}", badge("quiet", "", r#"{ kind = "absence", event = "login", until = ["problem.answered", "video.watched"], within = "1d" }"#)));
    let mut u = User::new(cat);
    u.send("login", T0, &[]);
    u.send("login", T0 + HOUR, &[]);
    assert_eq!((waits(&u.st), u.st.next_look()), ((0, 1), Some(T0 + DAY)));
    // Either closing type closes it.
    u.watch(T0 + 2 * HOUR, "p", "v", 10.0);
    assert_eq!(waits(&u.st), (0, 0));
    assert_eq!(unlocks(&u.send("login", T0 + 3 * HOUR, &[])), Vec::<String>::new());
    assert_eq!(unlocks(&u.send("login", T0 + 28 * HOUR, &[])), ["quiet"]);
    // Keyed waits open up to the limit; the ones beyond it open none.
    let cat = catalogue(&format!("{QA}{}", badge("many", "", r#"{ kind = "absence", event = "question.asked", until = "question.answered", key = "question", within = "30d" }"#)));
    let mut u = User::new(cat);
    for i in 0..accolade::core::stats::MAX_WAITS + 5 {
        u.send("question.asked", T0 + i as Millis, &[("question", s(&format!("q{i}")))]);
    }
    assert_eq!(waits(&u.st), (0, accolade::core::stats::MAX_WAITS));
}

#[test]
fn comeback_and_absence_errors_name_the_field() {
    let a = |rest: &str| format!("{QA}{}", badge("gone", "", &format!(r#"{{ kind = "absence", event = "question.asked", {rest} }}"#)));
    let table = [
        (a(r#"until = "question.answered", within = "0s""#), "rule.within", "must be longer than nothing"),
        (a(r#"until = "question.answered", within = "soon""#), "rule.within", ""),
        (a(r#"until = "question.closed", within = "7d""#), "rule.until", "unknown event type `question.closed`"),
        (a(r#"until = "login", key = "question", within = "7d""#), "rule.key", "`question` is not a declared field of `login`"),
        (a(r#"until = "question.answered", until_when = { grade = 3 }, within = "7d""#), "rule.until_when", "grade"),
        (a(r#"until = "question.answered", within = "7d", target = 0"#), "rule.target", "must be a positive number"),
        (a(r#"within = "7d""#), "rule", "missing field `until`"),
        (
            format!("{QA}{}", badge("gone", "", r#"{ kind = "all", of = [ { kind = "absence", event = "question.asked", until = "question.answered", within = "7d" }, { kind = "level", at_least = 2 } ] }"#)),
            "rule.of[0]",
            "an `absence` rule must be the badge's whole rule",
        ),
        (badge("gone", "", r#"{ kind = "comeback", event = "login", after = "0s" }"#), "rule.after", "must be longer than nothing"),
        (badge("gone", "", r#"{ kind = "comeback", event = "logout", after = "14d" }"#), "rule.event", "unknown event type `logout`"),
        (badge("gone", "", r#"{ kind = "comeback", event = "login", after = "14d", target = -1 }"#), "rule.target", "must be a positive number"),
        (badge("gone", "repeat = true", r#"{ kind = "comeback", event = "login", after = "14d" }"#), "repeat", "this rule never stops holding"),
        (badge("gone", "repeat_every = 0.5", r#"{ kind = "comeback", event = "login", after = "14d" }"#), "repeat_every", "must be at least 1"),
    ];
    for (doc, field, detail) in table {
        let e = Catalogue::parse(&format!("{HEADER}\n{doc}"), Format::Toml).unwrap_err().to_string();
        assert!(e.starts_with(&format!("badge `gone`: field `{field}`: ")) && e.contains(detail), "got: {e}\nwant field `{field}`: {detail}");
    }
}
