//! The calendar in a time zone: local days in a user's zone (the unit of daily streaks and
//! daily XP caps) and leaderboard periods in the tenant's zone (days, ISO weeks, months).
//!
//! `Period` lives here rather than with the boards because it is calendar arithmetic, and
//! because the catalogue compiles it into a board's definition: both the catalogue and the
//! board read it, so it sits below both.

use super::value::Millis;
use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The local day number (days since 1970-01-01 in the zone's calendar) of `at`, and the UTC
/// bounds of that local day, which may be 23 or 25 hours long across a DST change.
pub fn local_day(at: Millis, tz: Tz) -> (i32, Millis, Millis) {
    let utc = Utc.timestamp_millis_opt(at).single().unwrap_or_default();
    let date = utc.with_timezone(&tz).date_naive();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let day = (date - epoch).num_days() as i32;
    let start = midnight(date, tz).unwrap_or(at);
    let end = date.succ_opt().and_then(|d| midnight(d, tz)).unwrap_or(at + 1);
    (day, start, end.max(at + 1))
}

/// The first instant of `date` in `tz`. Where midnight does not exist (a DST gap at midnight),
/// the day starts at the first hour that does.
fn midnight(date: NaiveDate, tz: Tz) -> Option<Millis> {
    (0..3).find_map(|h| tz.from_local_datetime(&date.and_hms_opt(h, 0, 0)?).earliest()).map(|d| d.timestamp_millis())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn days_follow_the_users_zone_and_dst() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 03:30 UTC on 2024-03-10 is still 2024-03-09 in New York.
        let (d1, _, _) = local_day(ms("2024-03-10T03:30:00Z"), ny);
        let (d2, start, end) = local_day(ms("2024-03-10T12:00:00Z"), ny);
        assert_eq!(d2, d1 + 1);
        // The spring-forward day is 23 hours long.
        assert_eq!(end - start, 23 * 3_600_000);
        let (_, s, e) = local_day(ms("2024-11-03T12:00:00Z"), ny);
        assert_eq!(e - s, 25 * 3_600_000);
        let utc: Tz = "UTC".parse().unwrap();
        assert_eq!(local_day(0, utc).0, 0);
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
