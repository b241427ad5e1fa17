//! The quota day. Gemini's requests-per-day counters reset at midnight America/Los_Angeles, so a
//! day is 23 hours long in March and 25 in November. The time zone comes from jiff's bundled
//! tz database, so it is right on a machine without `/usr/share/zoneinfo`.

use std::sync::OnceLock;

use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::clock::ms_to_timestamp;

/// The time zone Gemini's daily quotas follow.
pub const QUOTA_TIME_ZONE: &str = "America/Los_Angeles";

fn pacific() -> &'static TimeZone {
    static TZ: OnceLock<TimeZone> = OnceLock::new();
    TZ.get_or_init(|| {
        jiff::tz::db()
            .get(QUOTA_TIME_ZONE)
            // The bundled database always has it; the POSIX rule is the same zone's current rule.
            .or_else(|_| TimeZone::posix("PST8PDT,M3.2.0,M11.1.0"))
            .unwrap_or(TimeZone::UTC)
    })
}

/// One Pacific calendar day as a half-open span of Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDay {
    /// The civil date in Pacific time.
    pub date: Date,
    /// Midnight Pacific that starts the day.
    pub start_ms: i64,
    /// The next Pacific midnight, when daily counters reset.
    pub end_ms: i64,
}

impl QuotaDay {
    /// The Pacific day that contains the instant `ms`.
    pub fn containing(ms: i64) -> Self {
        let date = ms_to_timestamp(ms)
            .to_zoned_datetime(pacific().clone())
            .date();
        Self::with_fallback(date, ms)
    }

    /// The Pacific day of a civil date.
    pub fn of_date(date: Date) -> Self {
        Self::with_fallback(date, 0)
    }

    /// The day of `date`; `start` stands in if the zone cannot place its midnight (it always
    /// can with the bundled database).
    fn with_fallback(date: Date, start: i64) -> Self {
        let start_ms = start_of(date).unwrap_or(start);
        let end_ms = date
            .tomorrow()
            .ok()
            .and_then(start_of)
            .unwrap_or(start_ms + 86_400_000);
        Self {
            date,
            start_ms,
            end_ms,
        }
    }

    /// The `n` days ending with this one, newest first.
    pub fn and_before(self, n: usize) -> Vec<Self> {
        let mut days = Vec::with_capacity(n);
        let mut day = self;
        for _ in 0..n {
            days.push(day);
            day = day.previous();
        }
        days
    }

    /// The day before this one.
    pub fn previous(&self) -> Self {
        Self::containing(self.start_ms - 1)
    }

    /// Whether `ms` falls in this day.
    pub fn contains(&self, ms: i64) -> bool {
        self.start_ms <= ms && ms < self.end_ms
    }
}

fn start_of(date: Date) -> Option<i64> {
    date.to_zoned_datetime(pacific().clone())
        .ok()
        .map(|z| z.timestamp().as_millisecond())
}

/// The next Pacific midnight after `ms`.
pub fn next_pacific_midnight(ms: i64) -> i64 {
    QuotaDay::containing(ms).end_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn resets_at_pacific_midnight_not_utc() {
        // 2026-01-15 07:59:59Z is 23:59:59 PST on the 14th.
        let day = QuotaDay::containing(ms("2026-01-15T07:59:59Z"));
        assert_eq!(day.date.to_string(), "2026-01-14");
        assert_eq!(day.end_ms, ms("2026-01-15T08:00:00Z"));
        // UTC midnight is in the middle of a Pacific day.
        let d2 = QuotaDay::containing(ms("2026-01-15T00:00:00Z"));
        assert_eq!(d2.start_ms, ms("2026-01-14T08:00:00Z"));
    }

    #[test]
    fn summer_midnight_is_07_utc() {
        let day = QuotaDay::containing(ms("2026-07-01T12:00:00Z"));
        assert_eq!(day.start_ms, ms("2026-07-01T07:00:00Z"));
        assert_eq!(day.end_ms, ms("2026-07-02T07:00:00Z"));
    }

    #[test]
    fn spring_forward_day_has_23_hours_and_fall_back_day_25() {
        // DST starts 2026-03-08 and ends 2026-11-01 in the US.
        let spring = QuotaDay::containing(ms("2026-03-08T12:00:00Z"));
        assert_eq!(spring.date.to_string(), "2026-03-08");
        assert_eq!(spring.end_ms - spring.start_ms, 23 * 3_600_000);
        let fall = QuotaDay::containing(ms("2026-11-01T12:00:00Z"));
        assert_eq!(fall.date.to_string(), "2026-11-01");
        assert_eq!(fall.end_ms - fall.start_ms, 25 * 3_600_000);
        // The repeated 01:00-02:00 hour is inside the same day.
        assert!(fall.contains(ms("2026-11-01T08:30:00Z")));
        assert!(fall.contains(ms("2026-11-01T09:30:00Z")));
    }

    #[test]
    fn a_date_and_the_day_before_it_round_trip() {
        let day = QuotaDay::containing(ms("2026-11-02T12:00:00Z"));
        assert_eq!(QuotaDay::of_date(day.date), day);
        let before = day.previous();
        assert_eq!(before.date.to_string(), "2026-11-01");
        assert_eq!(before.end_ms, day.start_ms);
        assert_eq!(before.end_ms - before.start_ms, 25 * 3_600_000);
    }

    #[test]
    fn next_midnight_of_the_last_millisecond_is_one_ms_away() {
        let end = ms("2026-01-15T08:00:00Z");
        assert_eq!(next_pacific_midnight(end - 1), end);
        assert_eq!(next_pacific_midnight(end), end + 86_400_000);
    }
}
