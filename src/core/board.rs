//! Leaderboards as the rule core sees them: which period an instant falls in (in the tenant's
//! time zone), what one event adds to a user's score on each board, and the award for a top
//! rank when a period closes. Pure: the ranking itself and the closing clock live in the shell.

use super::catalogue::{BoardMetric, Catalogue};
use super::effect::{Effect, XpReason};
use super::state::{BadgeRecord, BoardScore, UserState};
use super::value::{Millis, Value};
use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// How a board's periods are cut.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Period {
    AllTime,
    Daily,
    /// ISO weeks: Monday to Sunday.
    Weekly,
    Monthly,
    /// One period, from `start` (inclusive) to `end` (exclusive).
    Custom { start: Millis, end: Millis },
}

/// One period of a board: its label (part of every key and URL), and its bounds in UTC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub label: String,
    pub start: Millis,
    /// Exclusive; `Millis::MAX` for all time.
    pub end: Millis,
}

impl Period {
    pub fn as_str(&self) -> &'static str {
        match self {
            Period::AllTime => "all_time",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Custom { .. } => "custom",
        }
    }

    /// The period `at` falls in, in zone `tz`; `None` outside a custom period's bounds.
    /// Labels: `all`, `2026-11-22`, `2026-W47`, `2026-11`, `custom`.
    pub fn span(&self, tz: Tz, at: Millis) -> Option<Span> {
        let local = Utc.timestamp_millis_opt(at).single()?.with_timezone(&tz).date_naive();
        let (label, first, next) = match self {
            Period::AllTime => return Some(Span { label: "all".into(), start: Millis::MIN, end: Millis::MAX }),
            Period::Custom { start, end } => {
                return (at >= *start && at < *end).then(|| Span { label: "custom".into(), start: *start, end: *end });
            }
            Period::Daily => (local.format("%Y-%m-%d").to_string(), local, local.succ_opt()?),
            Period::Weekly => {
                let monday = local - Duration::days(i64::from(local.weekday().num_days_from_monday()));
                let w = local.iso_week();
                (format!("{}-W{:02}", w.year(), w.week()), monday, monday + Duration::days(7))
            }
            Period::Monthly => {
                let first = NaiveDate::from_ymd_opt(local.year(), local.month(), 1)?;
                let next = if local.month() == 12 {
                    NaiveDate::from_ymd_opt(local.year() + 1, 1, 1)?
                } else {
                    NaiveDate::from_ymd_opt(local.year(), local.month() + 1, 1)?
                };
                (local.format("%Y-%m").to_string(), first, next)
            }
        };
        Some(Span { label, start: midnight(first, tz)?, end: midnight(next, tz)? })
    }
}

/// The first instant of `date` in `tz`; where midnight does not exist (a DST gap), the first
/// hour that does.
fn midnight(date: NaiveDate, tz: Tz) -> Option<Millis> {
    (0..3).find_map(|h| tz.from_local_datetime(&date.and_hms_opt(h, 0, 0)?).earliest()).map(|d| d.timestamp_millis())
}

/// What one accepted event adds to the user's boards. An event counts on a board when it
/// happened in the period that is current when it arrives (`now`): a late event for a period
/// that has ended adds nothing, so a closed period's standings never change. A user whose
/// segment attribute is missing is not ranked on a segmented board.
///
/// Called by `apply` with the XP the event earned (rules and the badges it unlocked).
pub(crate) fn score(state: &mut UserState, cat: &Catalogue, t: usize, fields: &[Value], at: Millis, now: Millis, xp: u64, fx: &mut Vec<Effect>) {
    for def in &cat.boards {
        let amount = match &def.metric {
            BoardMetric::Xp => xp as f64,
            BoardMetric::Count { event, when } => f64::from(u8::from(*event == t && when.matches(fields))),
            BoardMetric::Sum { event, when, field } => {
                if *event == t && when.matches(fields) {
                    fields[*field].as_f64().unwrap_or(0.0)
                } else {
                    0.0
                }
            }
        };
        if !(amount > 0.0) {
            continue;
        }
        let segment = match &def.segment_by {
            None => None,
            Some(attr) => match state.attributes.get(attr) {
                Some(v) => match v.key() {
                    // NUL separates the parts of storage keys, so it never reaches one.
                    Some(k) => Some(k.replace('\0', "")),
                    None => continue,
                },
                None => continue,
            },
        };
        // The user's entry remembers its period's bounds, so most events need no calendar math
        // and no allocation.
        let current = state.boards.get(&*def.id).is_some_and(|b| now >= b.start && now < b.end);
        if !current {
            let Some(span) = def.period.span(cat.settings.default_timezone, now) else { continue };
            // A new period (or the first): the score starts from zero.
            let fresh = BoardScore { period: span.label.into(), start: span.start, end: span.end, segment: segment.clone(), score: 0.0, reached: now, previous: None };
            match state.boards.get_mut(&*def.id) {
                Some(e) => {
                    let mut old = std::mem::replace(e, fresh);
                    old.previous = None;
                    e.previous = Some(Box::new(old));
                }
                None => {
                    state.boards.insert(def.id.to_string(), fresh);
                }
            }
        }
        let entry = state.boards.get_mut(&*def.id).expect("just ensured");
        if at < entry.start || at >= entry.end {
            continue;
        }
        // A user whose attribute changed mid-period moves to the new league with their score.
        let moved_from = if entry.segment != segment { std::mem::replace(&mut entry.segment, segment) } else { None };
        entry.score += amount;
        entry.reached = now;
        fx.push(Effect::Score {
            board: def.id.clone(),
            period: entry.period.clone(),
            end: entry.end,
            segment: entry.segment.clone(),
            score: entry.score,
            reached: now,
            moved_from,
        });
    }
}

/// The award for finishing at `rank` on a closed period of `board`: the board's badge, once per
/// period (the period label is the award's key), if the rank is within the board's top N and
/// the badge is not retired. Returns the effects, like `apply` (empty when nothing is due, for
/// example because this award was already made).
pub fn award_rank(state: &mut UserState, board: &str, period: &str, rank: usize, now: Millis, event_id: &str, cat: &Catalogue) -> Vec<Effect> {
    state.sync(cat);
    let mut fx = Vec::new();
    let Some(def) = cat.boards.iter().find(|b| &*b.id == board) else { return fx };
    let Some((i, top)) = def.award else { return fx };
    let badge = &cat.badges[i];
    if badge.retired || rank == 0 || rank > top {
        return fx;
    }
    if state.badges.get(&*badge.id).is_some_and(|r| r.keys.iter().any(|k| k == period)) {
        return fx;
    }
    let rec = state.badges.get_or_insert_with(&badge.id, || BadgeRecord {
        awarded_at: now,
        count: 0,
        version: cat.version,
        keys: vec![],
        event_id: event_id.to_string(),
    });
    rec.count += 1;
    rec.keys.push(period.to_string());
    let count = rec.count;
    state.derived.owned[i] = count;
    fx.push(Effect::Unlock { badge: badge.id.clone(), count, key: Some(period.to_string()), xp: badge.xp, at: now });
    if badge.xp > 0 {
        super::engine::add_xp(state, badge.xp, XpReason::Badge(badge.id.clone()), cat, &mut fx);
    }
    fx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    /// (period, zone, instant, label, start, end)
    #[test]
    fn periods_follow_the_tenants_calendar() {
        let table: &[(Period, &str, &str, &str, &str, &str)] = &[
            (Period::Daily, "UTC", "2026-11-22T23:59:59.999Z", "2026-11-22", "2026-11-22T00:00:00Z", "2026-11-23T00:00:00Z"),
            (Period::Daily, "UTC", "2026-11-23T00:00:00Z", "2026-11-23", "2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"),
            // Midnight in Paris is 23:00 UTC the day before.
            (Period::Daily, "Europe/Paris", "2026-11-22T23:30:00Z", "2026-11-23", "2026-11-22T23:00:00Z", "2026-11-23T23:00:00Z"),
            (Period::Daily, "America/New_York", "2026-11-23T03:00:00Z", "2026-11-22", "2026-11-22T05:00:00Z", "2026-11-23T05:00:00Z"),
            // Spring forward: a 23-hour day; fall back: 25 hours.
            (Period::Daily, "America/New_York", "2026-03-08T12:00:00Z", "2026-03-08", "2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"),
            (Period::Daily, "America/New_York", "2026-11-01T12:00:00Z", "2026-11-01", "2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z"),
            // A zone whose DST gap is at midnight: the day starts at 01:00.
            (Period::Daily, "America/Santiago", "2026-09-06T12:00:00Z", "2026-09-06", "2026-09-06T04:00:00Z", "2026-09-07T03:00:00Z"),
            // ISO weeks run Monday to Sunday; 2026-11-22 is a Sunday.
            (Period::Weekly, "UTC", "2026-11-22T12:00:00Z", "2026-W47", "2026-11-16T00:00:00Z", "2026-11-23T00:00:00Z"),
            (Period::Weekly, "UTC", "2026-11-23T00:00:00Z", "2026-W48", "2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z"),
            // The ISO year differs from the calendar year at the turn of the year.
            (Period::Weekly, "UTC", "2027-01-01T12:00:00Z", "2026-W53", "2026-12-28T00:00:00Z", "2027-01-04T00:00:00Z"),
            (Period::Monthly, "UTC", "2026-02-28T23:59:59Z", "2026-02", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"),
            (Period::Monthly, "UTC", "2028-02-29T10:00:00Z", "2028-02", "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z"),
            (Period::Monthly, "UTC", "2026-12-31T23:00:00Z", "2026-12", "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            // Month end in Tokyo comes nine hours before UTC's.
            (Period::Monthly, "Asia/Tokyo", "2026-07-31T15:00:00Z", "2026-08", "2026-07-31T15:00:00Z", "2026-08-31T15:00:00Z"),
        ];
        for (p, zone, at, label, start, end) in table {
            let tz: Tz = zone.parse().unwrap();
            let s = p.span(tz, ms(at)).unwrap();
            assert_eq!(s, Span { label: label.to_string(), start: ms(start), end: ms(end) }, "{p:?} {zone} {at}");
        }
        let custom = Period::Custom { start: ms("2026-07-01T00:00:00Z"), end: ms("2026-08-01T00:00:00Z") };
        let tz: Tz = "UTC".parse().unwrap();
        assert_eq!(custom.span(tz, ms("2026-07-31T23:59:59Z")).unwrap().label, "custom");
        assert_eq!(custom.span(tz, ms("2026-08-01T00:00:00Z")), None);
        assert_eq!(custom.span(tz, ms("2026-06-30T23:59:59Z")), None);
        assert_eq!(Period::AllTime.span(tz, 0).unwrap().end, Millis::MAX);
    }
}
