//! The plan's table tests: each path from effects to writes, pushes and records, driven by
//! data with no runtime.

use super::*;
use crate::core::RevokeCause;
use crate::store::TreeId;

const T0: Millis = 1_772_452_800_000;

static NO_SHARES: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();

fn planner(cat: &Catalogue) -> Planner<'_> {
    Planner { tenant: "t", user: "u", epoch: "e", cat, snapshot_every: 100, linked: &[], shares: Some(&NO_SHARES) }
}

fn ev(id: &str) -> Event {
    Event { event_id: id.into(), event_type: "login".into(), user_id: "u".into(), tenant_id: "t".into(), occurred_at: T0, source: "socket".into(), payload: vec![] }
}

fn trees(plan: &Plan) -> Vec<TreeId> {
    plan.writes.iter().map(|w| match w { Write::Put(t, ..) | Write::Del(t, ..) => *t }).collect()
}

fn kinds(plan: &Plan) -> Vec<(&'static str, u64)> {
    plan.pushes.iter().map(|p| (p.kind, p.offset)).collect()
}

/// Whether the plan's log record says it is found by its id (its flags byte), and the ids
/// the plan gives the user's index.
fn found_by_id(plan: &Plan) -> (bool, Vec<(u64, u64)>) {
    let v = plan.writes.iter().find_map(|w| match w { Write::Put(TreeId::Events, _, v) => Some(v.clone()), _ => None }).expect("a log record");
    assert_eq!(v[0], store::FORMAT_EVENT_V3);
    (v[1] & store::FOUND_BY_ID != 0, plan.ids.clone())
}

/// The stored record of the plan's event (the first Events write).
fn stored(plan: &Plan) -> StoredEvent {
    let v = plan.writes.iter().find_map(|w| match w { Write::Put(TreeId::Events, _, v) => Some(v.clone()), _ => None }).expect("a log record");
    store::decode(b"test", &v).unwrap()
}

fn unlock(badge: &str) -> Effect {
    Effect::Unlock { badge: badge.into(), count: 1, key: None, xp: 50, at: T0 }
}

fn revoked(badge: &str, cause: RevokeCause) -> Effect {
    Effect::Revoked { badge: badge.into(), cause, reason: "r".into(), count: 1, xp: 50, total: 0, level: 1, at: T0 }
}

fn xp(delta: u64) -> Effect {
    Effect::Xp { delta, total: 0, level: 1, reason: crate::core::XpReason::Rule("r".into()) }
}

/// Events, from their effects to pushes and writes: one xp summing every XP effect, the
/// unlocks in order, one level-up (the highest), all numbered from the cursor's offset;
/// the log record holds those pushes with their offsets; a snapshot with the first event
/// and then every `snapshot_every` events.
#[test]
fn an_event_plan_numbers_its_pushes_and_orders_its_writes() {
    let cat = Catalogue::demo();
    let badge = cat.badges[0].id.to_string();
    let rows: Vec<(&str, Vec<Effect>, Cursor, Vec<(&str, u64)>, Vec<TreeId>)> = vec![
        ("nothing to push, first event: record and snapshot", vec![], Cursor::default(), vec![], vec![TreeId::Events, TreeId::Users, TreeId::SnapSeq]),
        ("nothing to push, snapshot not due", vec![], Cursor { seq: 10, offset: 4, snap_seq: 5 }, vec![], vec![TreeId::Events]),
        ("snapshot due again", vec![], Cursor { seq: 104, offset: 4, snap_seq: 5 }, vec![], vec![TreeId::Events, TreeId::Users, TreeId::SnapSeq]),
        (
            "xp summed, unlock, highest level",
            vec![xp(5), unlock(&badge), xp(50), Effect::LevelUp { level: 2 }, Effect::LevelUp { level: 3 }],
            Cursor { seq: 10, offset: 4, snap_seq: 5 },
            vec![("xp", 5), ("unlock", 6), ("level_up", 7)],
            vec![TreeId::Events],
        ),
        ("an unknown badge is not pushed", vec![unlock("no-such-badge")], Cursor { seq: 10, offset: 4, snap_seq: 5 }, vec![], vec![TreeId::Events]),
    ];
    for (what, fx, before, pushes, writes) in rows {
        let mut cur = before;
        let st = UserState::new("t", "u");
        let plan = event(&planner(&cat), &mut cur, &st, &fx, ev("e1"), T0, &mut Throttle::new(Duration::ZERO), Instant::now());
        assert_eq!(kinds(&plan), pushes, "{what}");
        assert_eq!(trees(&plan), writes, "{what}");
        assert_eq!(cur.seq, before.seq + 1, "{what}");
        assert_eq!(cur.offset, before.offset + pushes.len() as u64, "{what}");
        let rec = stored(&plan);
        assert_eq!(rec.event.event_id, "e1", "{what}");
        assert_eq!(found_by_id(&plan), (true, vec![(store::id_hash("e1"), before.seq + 1)]), "{what}: a client event is found by its id");
        assert_eq!(rec.pushes, plan.pushes.iter().map(|p| (p.offset, p.frame.to_string())).collect::<Vec<_>>(), "{what}: the record keeps its pushes");
        assert_eq!(plan.xp, fx.iter().map(|e| if let Effect::Xp { delta, .. } = e { *delta } else { 0 }).sum::<u64>(), "{what}");
    }
}

/// An expiry an event saw is pushed before what the event earned (it may earn the same
/// badge again), and kept in the event's record like its other pushes.
#[test]
fn an_expiry_seen_by_an_event_is_pushed_before_its_awards() {
    let cat = Catalogue::demo();
    let badge = cat.badges[0].id.to_string();
    let fx = vec![Effect::Accepted { event_id: "e1".into() }, revoked(&badge, RevokeCause::Expired), xp(50), unlock(&badge)];
    let mut cur = Cursor { seq: 3, offset: 5, snap_seq: 3 };
    let plan = event(&planner(&cat), &mut cur, &UserState::new("t", "u"), &fx, ev("e1"), T0, &mut Throttle::new(Duration::ZERO), Instant::now());
    assert_eq!(kinds(&plan), [("revoked", 6), ("xp", 7), ("unlock", 8)]);
    assert_eq!((plan.revoked.clone(), plan.unlocks.clone()), (vec![badge.clone()], vec![badge]));
    assert_eq!(stored(&plan).pushes.len(), 3);
}

/// A look with no event (`core::look`): its `accolade.expire` record holds the expiries'
/// `revoked` pushes first, then the XP and unlocks of the waits that lapsed, so a rebuild
/// reads the award from the record as it reads an event's.
#[test]
fn a_look_pushes_its_expiries_then_the_awards_of_lapsed_waits() {
    let cat = Catalogue::demo();
    let (gone, earned) = (cat.badges[0].id.to_string(), cat.badges[1].id.to_string());
    let fx = vec![revoked(&gone, RevokeCause::Expired), xp(50), unlock(&earned)];
    let mut cur = Cursor { seq: 3, offset: 5, snap_seq: 3 };
    let plan = expire(&planner(&cat), &mut cur, &UserState::new("t", "u"), &fx, "expire:4".into(), T0);
    assert_eq!(kinds(&plan), [("revoked", 6), ("xp", 7), ("unlock", 8)]);
    assert_eq!((plan.revoked.clone(), plan.unlocks.clone(), plan.xp), (vec![gone], vec![earned], 50));
    let rec = stored(&plan);
    assert_eq!((rec.event.event_type.as_str(), rec.event.event_id.as_str(), rec.pushes.len()), (records::EXPIRE_EVENT, "expire:4", 3));
    assert_eq!(cur.seq, 4);
}

/// A leaderboard score is written before the event, as the user's whole set of scores, and
/// becomes a ranking update with the league the user left.
#[test]
fn a_score_is_written_before_the_event_and_ranked_after_it() {
    let cat = Catalogue::demo();
    let fx = vec![Effect::Score { board: "weekly".into(), period: "2026-W10".into(), end: T0 + 1, segment: Some("gold".into()), score: 7.0, reached: T0, moved_from: Some("silver".into()) }];
    let mut cur = Cursor { seq: 3, offset: 0, snap_seq: 3 };
    let plan = event(&planner(&cat), &mut cur, &UserState::new("t", "u"), &fx, ev("e1"), T0, &mut Throttle::new(Duration::ZERO), Instant::now());
    assert_eq!(trees(&plan), vec![TreeId::Boards, TreeId::Events]);
    assert_eq!(plan.boards.len(), 1);
    let b = &plan.boards[0];
    assert_eq!((b.key.board.as_str(), b.key.period.as_str(), b.key.segment.as_str(), b.entry.score), ("weekly", "2026-W10", "gold", 7.0));
    assert_eq!(b.left.as_ref().map(|k| k.segment.as_str()), Some("silver"));
    assert!(plan.pushes.is_empty(), "a score is not a push");
}

/// The progress throttle, from a table of (seconds since the first look, current of 10,
/// pushed?) for one badge with a throttle of 2 s: a first push once a tenth is reached, then
/// only on a new tenth after the throttle, or at once when it falls back or completes.
#[test]
fn progress_is_pushed_on_a_new_tenth_after_the_throttle() {
    let start = Instant::now();
    let mut t = Throttle::new(Duration::from_secs(2));
    let badge: Arc<str> = "b".into();
    let rows = [
        (0, 0.5, false, "below a tenth: nothing to show"),
        (0, 1.0, true, "the first tenth"),
        (1, 2.0, false, "a new tenth within the throttle"),
        (3, 2.5, true, "a new tenth after the throttle"),
        (3, 2.9, false, "the same tenth"),
        (3, 1.0, true, "fell back (a broken streak): at once"),
        (3, 10.0, true, "complete: at once"),
        (9, 10.0, false, "still complete: nothing new"),
    ];
    for (secs, current, pushed, what) in rows {
        assert_eq!(t.due(&badge, current, 10.0, start + Duration::from_secs(secs)), pushed, "{what}");
    }
}

/// A member's retraction is mailed to each of her teams, before its record, so that what her
/// event counted there is retracted too; a revocation is hers alone.
#[test]
fn a_members_retraction_is_mailed_to_her_teams() {
    let cat = Catalogue::demo();
    let teams = [crate::core::catalogue::team_entity("crew"), crate::core::catalogue::team_entity("band")];
    let p = Planner { tenant: "t", user: "ann", epoch: "e", cat: &cat, snapshot_every: 100, linked: &teams, shares: Some(&NO_SHARES) };
    let rec = records::TakeRecord { target: "a-2".into(), reason: "copied".into(), claw_back: true };
    let st = UserState::new("t", "ann");
    let plan = take(&p, &mut Cursor { seq: 7, offset: 3, snap_seq: 7 }, &st, &[], records::RETRACT_EVENT, &rec, "retract:a-2:8".into(), T0);
    assert_eq!(trees(&plan)[..3], [TreeId::Mail, TreeId::Mail, TreeId::Events]);
    assert_eq!(plan.mailed, 2);
    let revoke = take(&p, &mut Cursor { seq: 7, offset: 3, snap_seq: 7 }, &st, &[], records::REVOKE_EVENT, &rec, "revoke:x:8".into(), T0);
    assert_eq!((trees(&revoke), revoke.mailed), (vec![TreeId::Events], 0));
    // A team's badge taken away by a retraction is told to each member, under ids apart from
    // its unlocks'.
    let team = crate::core::catalogue::team_entity("crew");
    let members = ["ann".to_string(), "bob".to_string()];
    let p = Planner { tenant: "t", user: &team, epoch: "e", cat: &cat, snapshot_every: 100, linked: &members, shares: Some(&NO_SHARES) };
    let badge: Arc<str> = cat.badges[0].id.clone();
    let lost = Effect::Revoked { badge: badge.clone(), cause: RevokeCause::Retracted, reason: "copied".into(), count: 1, xp: 0, total: 0, level: 1, at: T0 };
    let plan = take(&p, &mut Cursor { seq: 7, offset: 3, snap_seq: 7 }, &UserState::new("t", &team), &[lost], records::RETRACT_EVENT, &rec, "retract:x:8".into(), T0);
    assert_eq!((trees(&plan)[..3].to_vec(), plan.mailed), (vec![TreeId::Mail, TreeId::Mail, TreeId::Events], 2));
    assert_eq!(kinds(&plan), vec![("revoked", 4)]);
}

/// The records the server makes for itself all go through the log-record helper: goal
/// operations, awards and backfills by place only, notices and duplicates by fingerprint
/// keyed by their id (a duplicate's record keeps what it duplicated); each
/// takes the next sequence number and keeps its pushes.
/// A team's unlock from a look (a wait that lapsed, an expiry sweep's visit) is mailed to
/// each member in the look's own job, before its record, as an event's is (the mail rows
/// were once dropped by the record's write).
#[test]
fn a_teams_unlock_from_a_look_or_a_board_award_is_mailed_to_its_members() {
    let cat = Catalogue::demo();
    let team = crate::core::catalogue::team_entity("crew");
    let members = ["ann".to_string(), "bob".to_string()];
    let p = Planner { tenant: "t", user: &team, epoch: "e", cat: &cat, snapshot_every: 100, linked: &members, shares: Some(&NO_SHARES) };
    let badge = cat.badges[0].id.to_string();
    let plan = expire(&p, &mut Cursor { seq: 7, offset: 3, snap_seq: 7 }, &UserState::new("t", &team), &[unlock(&badge)], "expire:8".into(), T0);
    assert_eq!(trees(&plan), vec![TreeId::Mail, TreeId::Mail, TreeId::Events]);
    assert_eq!(plan.mailed, 2);
    // So is one a board of teams awards when its period closes.
    let plan = award(&p, &mut Cursor { seq: 7, offset: 3, snap_seq: 7 }, &UserState::new("t", &team), &[unlock(&badge)], "crews", "2026-W10", 1, T0);
    assert_eq!(trees(&plan), vec![TreeId::Mail, TreeId::Mail, TreeId::Events]);
    assert_eq!(plan.mailed, 2);
}

#[test]
fn system_records_take_the_next_place_in_the_log() {
    let cat = Catalogue::demo();
    let p = planner(&cat);
    let st = UserState::new("t", "u");
    let badge = cat.badges[0].id.to_string();
    let start = Cursor { seq: 7, offset: 3, snap_seq: 7 };
    let goal_fx = vec![Effect::GoalCancelled { goal: "g".into() }];
    let award_fx = vec![xp(10), unlock(&badge)];
    let revoke_id = format!("revoke:{badge}:8");
    let take_rec = |target: &str| records::TakeRecord { target: target.into(), reason: "r".into(), claw_back: true };
    let rows: Vec<(&str, Plan, Vec<TreeId>, &str, &str, usize)> = vec![
        ("goal", goal(&p, &mut start.clone(), &st, &goal_fx, "g", &GoalOp::Cancel("g".into()), T0), vec![TreeId::Events], "goal:g:8", records::GOAL_EVENT, 0),
        (
            "notice",
            notice(&p, &mut start.clone(), Notice { id: "notice:g".into(), kind: "completed", goal: "g", title: "G", assignee: "a", at: T0 }, T0),
            vec![TreeId::Events],
            "notice:g",
            records::NOTICE_EVENT,
            1,
        ),
        ("award", award(&p, &mut start.clone(), &st, &award_fx, "weekly", "2026-W10", 1, T0), vec![TreeId::Events], "leaderboard:weekly:2026-W10", records::LEADERBOARD_EVENT, 2),
        ("duplicate by fingerprint", duplicate(&p, &mut start.clone(), &st, ev("e2"), T0), vec![TreeId::Events], "e2", records::DUPLICATE_EVENT, 0),
        (
            "a team's unlock told (a badge this catalogue has not: logged, not pushed)",
            team_unlock(&p, &mut start.clone(), &st, &[], Event { event_type: records::TEAM_UNLOCK_EVENT.into(), ..ev("accolade.team_unlock:told") }, T0),
            vec![TreeId::Events],
            "accolade.team_unlock:told",
            records::TEAM_UNLOCK_EVENT,
            0,
        ),
        (
            "backfill, told",
            backfill(&p, &mut start.clone(), &st, &award_fx, 3, &BackfillRecord { badges: vec![badge.clone()], new_stats: vec![] }, true, T0),
            vec![TreeId::Events, TreeId::Users, TreeId::SnapSeq],
            "backfill:3",
            records::BACKFILL_EVENT,
            2,
        ),
        (
            "revocation through the API",
            take(&p, &mut start.clone(), &st, &[revoked(&badge, RevokeCause::Api)], records::REVOKE_EVENT, &take_rec(&badge), record_id("revoke", &badge, &start), T0),
            vec![TreeId::Events],
            &revoke_id,
            records::REVOKE_EVENT,
            1,
        ),
        (
            "retraction, with its snapshot",
            take(&p, &mut start.clone(), &st, &[revoked(&badge, RevokeCause::Retracted), revoked("other", RevokeCause::Retracted)], records::RETRACT_EVENT, &take_rec("e1"), record_id("retract", "e1", &start), T0),
            vec![TreeId::Events, TreeId::Users, TreeId::SnapSeq],
            "retract:e1:8",
            records::RETRACT_EVENT,
            2,
        ),
        ("expiry seen on connecting", expire(&p, &mut start.clone(), &st, &[revoked(&badge, RevokeCause::Expired)], "expire:8".into(), T0), vec![TreeId::Events], "expire:8", records::EXPIRE_EVENT, 1),
        (
            "backfill, silent",
            backfill(&p, &mut start.clone(), &st, &award_fx, 3, &BackfillRecord { badges: vec![], new_stats: vec![] }, false, T0),
            vec![TreeId::Events, TreeId::Users, TreeId::SnapSeq],
            "backfill:3",
            records::BACKFILL_EVENT,
            0,
        ),
    ];
    for (what, plan, writes, id, ty, pushes) in rows {
        assert_eq!(trees(&plan), writes, "{what}");
        // Only what a sender may send again is found by its id: a notice, a team's unlock
        // told, and a duplicate by fingerprint (its id is the client's). The server's own records are found by
        // their place, so a client's event may take such an id as its own.
        let by_id = [records::NOTICE_EVENT, records::DUPLICATE_EVENT, records::TEAM_UNLOCK_EVENT].contains(&ty);
        assert_eq!(by_id, !store::format1_found_by_place(ty), "{what}: as a store of format 1 is read");
        assert_eq!(found_by_id(&plan), (by_id, if by_id { vec![(store::id_hash(id), 8)] } else { vec![] }), "{what}");
        let rec = stored(&plan);
        if ty == records::DUPLICATE_EVENT {
            assert_eq!(rec.event.payload, records::duplicate_payload("login"), "{what}");
        }
        if ty == records::REVOKE_EVENT || ty == records::RETRACT_EVENT {
            assert_eq!(records::TakeRecord::parse(&rec).map(|r| r.claw_back), Some(true), "{what}: the record says what it took");
            assert!(plan.pushes.iter().all(|p| p.kind == "revoked"), "{what}");
        }
        assert_eq!((rec.event.event_id.as_str(), rec.event.event_type.as_str(), rec.received_at), (id, ty, T0), "{what}");
        assert_eq!(rec.pushes.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (4..4 + pushes as u64).collect::<Vec<_>>(), "{what}: pushes numbered from the next offset");
        match &plan.writes[0] {
            Write::Put(TreeId::Events, k, _) => assert!(k.ends_with(&8u64.to_be_bytes()), "{what}: the next sequence number"),
            w => panic!("{what}: {w:?}"),
        }
    }
}

#[test]
fn a_backfill_counts_the_badges_it_gave_on_an_earlier_visit_and_this_one() {
    let mut owned = UserState::new("t", "u");
    let by = |event_id: String| crate::core::BadgeRecord { awarded_at: T0, count: 1, version: 1, keys: vec![], event_id, expires_at: None };
    owned.badges.insert("a".into(), by(records::backfill_id(7)));
    owned.badges.insert("b".into(), by("e1".into()));
    owned.badges.insert("c".into(), by(records::backfill_id(6)));
    let badges: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let cases: Vec<(&str, Vec<Effect>, u32)> = vec![
        ("nothing new; `a` came from this job's earlier visit", vec![], 1),
        ("`d` now, `a` before", vec![unlock("d")], 2),
        ("xp alone awards nothing", vec![xp(5)], 1),
    ];
    for (what, fx, want) in cases {
        assert_eq!(backfill_awards(&owned, &badges, 7, &fx), want, "{what}");
    }
    // Another job's badges (`c`, job 6) and live ones (`b`) never count.
    assert_eq!(backfill_awards(&owned, &badges, 8, &[]), 0);
}
