//! The simulator's clock: real time plus an offset `/admin/advance` moves, and the Pacific
//! calendar its per-day quotas roll on.

use std::sync::atomic::{AtomicI64, Ordering};

use jiff::civil::Date;
use jiff::tz::TimeZone;

/// Real time plus an offset.
#[derive(Debug, Default)]
pub struct SimClock {
    offset_ms: AtomicI64,
}

impl SimClock {
    /// Now (Unix ms) in the simulated world.
    #[allow(clippy::disallowed_methods)] // the simulator is its own world with its own clock
    pub fn now_ms(&self) -> i64 {
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        real + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves simulated time forward.
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms.max(0), Ordering::Relaxed);
    }

    /// The offset from real time.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}

fn pacific() -> TimeZone {
    jiff::tz::db()
        .get("America/Los_Angeles")
        .unwrap_or(TimeZone::UTC)
}

/// The Pacific date of an instant.
pub fn pacific_date(ms: i64) -> Date {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned_datetime(pacific()).date())
        .unwrap_or_default()
}

/// The next Pacific midnight after `ms`.
pub fn next_pacific_midnight(ms: i64) -> i64 {
    let tz = pacific();
    pacific_date(ms)
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned_datetime(tz).ok())
        .map_or(ms + 86_400_000, |z| z.timestamp().as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_rolls_at_pacific_midnight() {
        // 2026-01-15T07:59:59Z = 23:59:59 PST.
        let t = 1_768_463_999_000;
        assert_eq!(pacific_date(t).to_string(), "2026-01-14");
        assert_eq!(pacific_date(t + 1000).to_string(), "2026-01-15");
        assert_eq!(next_pacific_midnight(t), t + 1000);
    }
}
