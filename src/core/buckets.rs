//! Calendar buckets: a user's actions totalled per local day, week or month, and which of those
//! buckets reached a threshold ("40 correct answers in one day", "practised on 5 days this
//! week", "4 weeks in a row"). Pure data and arithmetic over local day numbers; the engine
//! finds the user's local day of an action (`calendar::local_day`, in the user's time zone) and
//! passes it in.

use serde::{Deserialize, Serialize};

/// How actions are grouped. Weeks start on Monday (ISO, as leaderboards' weeks) unless the
/// rule says Sunday.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bucket {
    Day,
    Week { sunday: bool },
    Month,
}

/// What a calendar rule reads from its buckets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    /// How many buckets reached the threshold, ever.
    Total,
    /// How long the run of consecutive reached buckets is that includes the current bucket, or
    /// the one before it (a run is still alive while its next bucket is under way).
    InARow,
    /// How many day buckets reached the threshold in the week or month of the current day.
    InOne(Bucket),
}

impl Bucket {
    /// The bucket number of local day `day` (days since 1970-01-01, a Thursday).
    pub fn of(self, day: i32) -> i32 {
        match self {
            Bucket::Day => day,
            // Monday 1970-01-05 is day 4: (4 + 3) / 7 = 1 starts the first whole week.
            Bucket::Week { sunday } => (day + 3 + i32::from(sunday)).div_euclid(7),
            Bucket::Month => {
                let (y, m, _) = civil(day);
                y * 12 + m as i32 - 1
            }
        }
    }

    /// The first and last local day of the bucket that holds `day`.
    pub fn days(self, day: i32) -> (i32, i32) {
        match self {
            Bucket::Day => (day, day),
            Bucket::Week { sunday } => {
                let first = day - (day + 3 + i32::from(sunday)).rem_euclid(7);
                (first, first + 6)
            }
            Bucket::Month => {
                let (y, m, d) = civil(day);
                let first = day - (d as i32 - 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (first, days_from_civil(ny, nm, 1) - 1)
            }
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Bucket::Day => "day",
            Bucket::Week { .. } => "week",
            Bucket::Month => "month",
        }
    }
}

/// The civil date (year, month, day) of a day number (Howard Hinnant's algorithm, exact for
/// every day an `i32` holds that a calendar needs).
fn civil(day: i32) -> (i32, u32, u32) {
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

fn days_from_civil(y: i32, m: u32, d: u32) -> i32 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) as i32
}

/// One calendar stat: the totals of the newest buckets with activity, and the buckets that
/// reached the threshold, as runs. Bounded: a long-lived user keeps at most `OPEN` totals and
/// `RUNS` runs, and what falls out is summed into `older`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    /// (bucket, total) of the newest buckets with activity, oldest first. An action for a
    /// bucket older than all of these, once `OPEN` are kept, counts no more: such a bucket is
    /// final (it lies far beyond the default late bound of 24 hours).
    pub open: Vec<(i32, f64)>,
    /// Buckets that reached the threshold, as runs of consecutive buckets (first, last),
    /// oldest first, never touching: a bucket that joins two runs merges them.
    pub runs: Vec<(i32, i32)>,
    /// Reached buckets in runs no longer kept. (Their longest run is not kept: no reading
    /// needs it, and a field once stored stays in every snapshot.)
    pub older: u32,
}

impl Buckets {
    /// Totals kept: more than a month of days with activity.
    pub const OPEN: usize = 40;
    /// Runs kept before the oldest are summed up.
    pub const RUNS: usize = 64;

    /// Adds `x` to bucket `b`; a bucket that reaches `at_least` is reached from then on.
    /// Returns whether a bucket was newly reached: only that changes what a rule reads, and
    /// so what a progress push would say.
    pub fn add(&mut self, b: i32, x: f64, at_least: f64) -> bool {
        let mut i = match self.open.binary_search_by_key(&b, |&(k, _)| k) {
            Ok(i) => i,
            Err(0) if self.open.len() >= Self::OPEN => return false,
            Err(i) => {
                self.open.insert(i, (b, 0.0));
                i
            }
        };
        if self.open.len() > Self::OPEN {
            self.open.remove(0);
            i -= 1;
        }
        self.open[i].1 += x;
        if self.open[i].1 >= at_least && !self.reached(b) {
            self.mark(b);
            return true;
        }
        false
    }

    /// Whether bucket `b` reached the threshold.
    pub fn reached(&self, b: i32) -> bool {
        self.run_of(b).is_some()
    }

    /// The first bucket of the run that `InARow` reads on local day `day`: it names the run, so
    /// a `repeat` badge can tell a new run from the one it was already earned for.
    pub fn run_start(&self, bucket: Bucket, day: i32) -> Option<i32> {
        let b = bucket.of(day);
        self.run_of(b).or_else(|| self.run_of(b - 1)).map(|(first, _)| first)
    }

    fn run_of(&self, b: i32) -> Option<(i32, i32)> {
        let p = self.runs.partition_point(|&(first, _)| first <= b);
        p.checked_sub(1).map(|q| self.runs[q]).filter(|&(_, last)| last >= b)
    }

    fn mark(&mut self, b: i32) {
        let p = self.runs.partition_point(|&(first, _)| first <= b);
        let joins_before = p > 0 && self.runs[p - 1].1 == b - 1;
        let joins_after = p < self.runs.len() && self.runs[p].0 == b + 1;
        match (joins_before, joins_after) {
            (true, true) => {
                self.runs[p - 1].1 = self.runs[p].1;
                self.runs.remove(p);
            }
            (true, false) => self.runs[p - 1].1 = b,
            (false, true) => self.runs[p].0 = b,
            (false, false) => self.runs.insert(p, (b, b)),
        }
        // Runs that end before the oldest kept total can change no more: sum them up.
        let oldest = self.open.first().map_or(i32::MIN, |&(k, _)| k);
        while self.runs.len() > Self::RUNS && self.runs[0].1 < oldest.saturating_sub(1) {
            let (first, last) = self.runs.remove(0);
            self.older += (last - first + 1) as u32;
        }
    }

    /// The total of bucket `b` (0 when it had no activity or is no longer kept).
    pub fn total(&self, b: i32) -> f64 {
        self.open.binary_search_by_key(&b, |&(k, _)| k).map_or(0.0, |i| self.open[i].1)
    }

    /// How many buckets reached the threshold, ever.
    pub fn count(&self) -> u32 {
        self.older + self.runs.iter().map(|&(f, l)| (l - f + 1) as u32).sum::<u32>()
    }

    /// What `reading` gives on local day `day` for buckets cut by `bucket`.
    pub fn read(&self, bucket: Bucket, reading: Reading, day: i32) -> f64 {
        match reading {
            Reading::Total => f64::from(self.count()),
            Reading::InARow => {
                let b = bucket.of(day);
                self.run_of(b).or_else(|| self.run_of(b - 1)).map_or(0.0, |(f, l)| f64::from(l - f + 1))
            }
            Reading::InOne(period) => {
                let (lo, hi) = period.days(day);
                let n: i32 = self.runs.iter().map(|&(f, l)| (l.min(hi) - f.max(lo) + 1).max(0)).sum();
                f64::from(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate};

    fn day(y: i32, m: u32, d: u32) -> i32 {
        (NaiveDate::from_ymd_opt(y, m, d).unwrap() - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
    }

    #[test]
    fn day_numbers_map_to_weeks_and_months_as_the_calendar_does() {
        // Every day of 1900 to 2100 against chrono's calendar.
        for n in day(1900, 1, 1)..day(2100, 12, 31) {
            let date = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(n as i64);
            assert_eq!(civil(n), (date.year(), date.month(), date.day()), "day {n}");
            assert_eq!(days_from_civil(date.year(), date.month(), date.day()), n);
            let monday = n - date.weekday().num_days_from_monday() as i32;
            assert_eq!(Bucket::Week { sunday: false }.days(n), (monday, monday + 6), "{date}");
            let sunday = n - date.weekday().num_days_from_sunday() as i32;
            assert_eq!(Bucket::Week { sunday: true }.days(n), (sunday, sunday + 6), "{date}");
            assert_eq!(Bucket::Week { sunday: false }.of(n), Bucket::Week { sunday: false }.of(monday), "{date}");
            assert_eq!(Bucket::Week { sunday: false }.of(monday + 7), Bucket::Week { sunday: false }.of(n) + 1);
        }
        assert_eq!(Bucket::Month.days(day(2028, 2, 10)), (day(2028, 2, 1), day(2028, 2, 29)));
        assert_eq!(Bucket::Month.days(day(2026, 12, 31)), (day(2026, 12, 1), day(2026, 12, 31)));
        assert_eq!(Bucket::Month.of(day(2027, 1, 1)), Bucket::Month.of(day(2026, 12, 31)) + 1);
    }

    #[test]
    fn runs_merge_and_stay_bounded() {
        let mut b = Buckets::default();
        for d in [1, 2, 4, 5] {
            assert!(b.add(d, 1.0, 1.0));
        }
        assert_eq!(b.runs, vec![(1, 2), (4, 5)]);
        // Day 3 joins the two runs.
        b.add(3, 1.0, 1.0);
        assert_eq!((b.runs.clone(), b.count()), (vec![(1, 5)], 5));
        assert_eq!(b.read(Bucket::Day, Reading::InARow, 6), 5.0, "alive while day 6 is under way");
        assert_eq!(b.read(Bucket::Day, Reading::InARow, 7), 0.0);
        // A long life of every other day keeps at most OPEN totals and RUNS runs, and counts all.
        let mut c = Buckets::default();
        for d in 0..1000 {
            c.add(d * 2, 1.0, 1.0);
        }
        assert!(c.open.len() <= Buckets::OPEN && c.runs.len() <= Buckets::RUNS + 1, "{} {}", c.open.len(), c.runs.len());
        assert_eq!((c.count(), c.older), (1000, 1000 - c.runs.len() as u32));
        // A bucket older than every kept total is final.
        assert!(!c.add(0, 1.0, 1.0));
        assert_eq!(c.count(), 1000);
        // Adding to a bucket already reached changes nothing a rule reads.
        assert!(!c.add(1998, 1.0, 1.0));
    }
}
