//! Local calendar days in a user's time zone, the unit of daily streaks and daily XP caps.

use super::value::Millis;
use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

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
}
