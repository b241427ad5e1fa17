//! "At today's pace, when does this scope run out today?": the proxy operator's question, from
//! the pace observed since Pacific midnight.

use super::{Capacity, MS_PER_MINUTE};
use crate::pacific::QuotaDay;

/// The proxy operator's question for one scope of a status taken at `now_ms`: at today's pace
/// (today's requests and input tokens over the minutes since Pacific midnight), when does it
/// run out today? `None`: not today (or nothing was sent yet, so there is no pace).
pub fn runs_out_today_at_todays_pace(s: &crate::snapshot::ScopeStatus, now_ms: i64) -> Option<i64> {
    let minutes = (now_ms - QuotaDay::containing(now_ms).start_ms) as f64 / MS_PER_MINUTE;
    let c = Capacity::of_status(s);
    if minutes <= 0.0 {
        return runs_out_today(&c, 0.0, 0.0, now_ms);
    }
    runs_out_today(
        &c,
        s.rpd_used as f64 / minutes,
        s.tpd_used as f64 / minutes,
        now_ms,
    )
}

/// At today's pace, when a scope runs out of its day (Unix ms): `None` if its day cap outlasts
/// today at that pace, or it has none. The proxy's question: "at today's rate, when does each
/// project and model run out today". `requests_per_minute` and `tokens_per_minute` are the pace
/// observed (e.g. today's use divided by the minutes since midnight).
pub fn runs_out_today(
    c: &Capacity,
    requests_per_minute: f64,
    tokens_per_minute: f64,
    now_ms: i64,
) -> Option<i64> {
    let day = QuotaDay::containing(now_ms);
    if c.off || c.limits.is_off() || c.exhausted_today {
        return Some(now_ms);
    }
    let by = |cap: Option<u64>, used: u64, pace: f64| -> Option<f64> {
        let cap = cap?;
        let left = cap.saturating_sub(used) as f64;
        if left <= 0.0 {
            return Some(0.0);
        }
        (pace > 0.0).then(|| left / pace * MS_PER_MINUTE)
    };
    let in_ms = [
        by(c.limits.rpd, c.rpd_used, requests_per_minute),
        by(c.limits.tpd, c.tpd_used, tokens_per_minute),
    ]
    .into_iter()
    .flatten()
    .fold(f64::INFINITY, f64::min);
    let at = now_ms as f64 + in_ms;
    (at < day.end_ms as f64).then(|| at.round() as i64)
}
