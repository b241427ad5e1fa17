//! Counting windows: the rolling minute (requests and input tokens) and the Pacific day.
//!
//! # The rolling-minute rule
//! Time is cut into whole seconds. An admission at second `s` is allowed only if the requests
//! (tokens) recorded in seconds `s-60 ..= s` — 61 one-second buckets — plus the new ones stay
//! within the limit. Any 60-second span `[t, t+60)` of real time holds only admissions whose
//! seconds lie within the 61 buckets seen by the last admission in that span, so **no 60-second
//! span ever holds more than the limit**. The price is at most one second of lost capacity per
//! minute (a burst of `limit` admissions is next possible after 61 s, not 60 s): 98.4 % of the
//! quota, and never a refusal that we caused.
//!
//! Sums are kept running, so a check is O(1); moving time forward clears one bucket per elapsed
//! second (at most 61).

use crate::pacific::QuotaDay;

/// Number of one-second buckets in the rolling minute.
pub const BUCKETS: usize = 61;
const BUCKETS_I64: i64 = BUCKETS as i64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    sec: i64,
    requests: u64,
    tokens: u64,
}

/// Requests and input tokens over the rolling minute.
///
/// The head second's counts live beside the totals, not in its bucket, and `repr(C)` puts them
/// first: an admission writes one cache line of the 1.5 KB, and the head's bucket is written
/// once, when the window moves on (a pick over hundreds of scopes missed the cache on the bucket
/// write; seen in the profile). The head's slot in `buckets` stays empty.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct RollingWindow {
    head: i64,
    requests: u64,
    tokens: u64,
    /// Requests and tokens recorded in second `head`.
    head_requests: u64,
    head_tokens: u64,
    /// Seconds `head - 60 ..= head - 1`.
    buckets: [Bucket; BUCKETS],
}

impl Default for RollingWindow {
    fn default() -> Self {
        Self::new()
    }
}

/// Second of a millisecond timestamp (floor).
pub fn sec_of(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

impl RollingWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            buckets: [Bucket::default(); BUCKETS],
            head: i64::MIN,
            requests: 0,
            tokens: 0,
            head_requests: 0,
            head_tokens: 0,
        }
    }

    /// Requests and tokens recorded in second `s` while it is in the window.
    fn at(&self, s: i64) -> Option<(u64, u64)> {
        if s == self.head {
            return Some((self.head_requests, self.head_tokens));
        }
        let b = &self.buckets[Self::slot(s)];
        (b.sec == s).then_some((b.requests, b.tokens))
    }

    fn slot(sec: i64) -> usize {
        sec.rem_euclid(BUCKETS_I64) as usize
    }

    /// Moves the window to second `now` (never backwards: a wall clock stepping back keeps
    /// counting in the latest second seen). Returns the second the window now stands at.
    pub fn advance(&mut self, now: i64) -> i64 {
        if now <= self.head {
            return self.head;
        }
        if self.head == i64::MIN || now - self.head >= BUCKETS_I64 {
            self.buckets = [Bucket::default(); BUCKETS];
            self.requests = 0;
            self.tokens = 0;
        } else {
            // The head second becomes a bucket like the others.
            self.buckets[Self::slot(self.head)] = Bucket {
                sec: self.head,
                requests: self.head_requests,
                tokens: self.head_tokens,
            };
            for s in self.head + 1..=now {
                let b = &mut self.buckets[Self::slot(s)];
                self.requests -= b.requests;
                self.tokens -= b.tokens;
                *b = Bucket::default();
            }
        }
        self.head = now;
        self.head_requests = 0;
        self.head_tokens = 0;
        self.head
    }

    /// Requests in the window (after [`RollingWindow::advance`]).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Tokens in the window (after [`RollingWindow::advance`]).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Whether `requests` more requests and `tokens` more tokens fit under the limits.
    pub fn fits(&self, requests: u64, tokens: u64, rpm: Option<u64>, tpm: Option<u64>) -> bool {
        rpm.is_none_or(|l| self.requests.saturating_add(requests) <= l)
            && tpm.is_none_or(|l| self.tokens.saturating_add(tokens) <= l)
    }

    /// Records an admission in the current head second; returns that second (the lease keeps it
    /// to correct the token count on settle).
    pub fn record(&mut self, requests: u64, tokens: u64) -> i64 {
        self.head_requests += requests;
        self.head_tokens += tokens;
        self.requests += requests;
        self.tokens += tokens;
        self.head
    }

    /// Corrects the tokens recorded at second `sec` by `delta` (real usage minus estimate). If that
    /// second has already left the window there is nothing left to correct.
    pub fn adjust_tokens(&mut self, sec: i64, delta: i64) {
        if sec > self.head || sec <= self.head - BUCKETS_I64 {
            return;
        }
        let (requests, tokens) = if sec == self.head {
            (self.head_requests, &mut self.head_tokens)
        } else {
            let b = &mut self.buckets[Self::slot(sec)];
            if b.sec != sec {
                return;
            }
            (b.requests, &mut b.tokens)
        };
        if requests == 0 && *tokens == 0 {
            return;
        }
        if delta >= 0 {
            *tokens += delta as u64;
            self.tokens += delta as u64;
        } else {
            let take = delta.unsigned_abs().min(*tokens);
            *tokens -= take;
            self.tokens -= take;
        }
    }

    /// The earliest millisecond at which `requests` and `tokens` more would fit, or `None` if
    /// they never can (the demand alone exceeds a limit). Returns `now_ms` if they fit now.
    pub fn free_at(
        &self,
        now_ms: i64,
        requests: u64,
        tokens: u64,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> Option<i64> {
        if rpm.is_some_and(|l| requests > l) || tpm.is_some_and(|l| tokens > l) {
            return None;
        }
        if self.fits(requests, tokens, rpm, tpm) {
            return Some(now_ms);
        }
        let (mut r, mut t) = (self.requests, self.tokens);
        for s in self.head - (BUCKETS_I64 - 1)..=self.head {
            let Some((requests_at, tokens_at)) = self.at(s) else {
                continue;
            };
            r -= requests_at;
            t -= tokens_at;
            let ok = rpm.is_none_or(|l| r + requests <= l) && tpm.is_none_or(|l| t + tokens <= l);
            if ok {
                // Bucket `s` leaves the window when the head reaches s + 61.
                return Some(((s + BUCKETS_I64) * 1000).max(now_ms));
            }
        }
        Some(((self.head + 1) * 1000).max(now_ms))
    }

    /// Buckets with something in them, oldest first, as (second, requests, tokens): for snapshots.
    pub fn occupied(&self) -> impl Iterator<Item = (i64, u64, u64)> + '_ {
        let head = self.head;
        (head.saturating_sub(BUCKETS_I64 - 1)..=head).filter_map(move |s| {
            if head == i64::MIN {
                return None;
            }
            self.at(s)
                .filter(|(r, t)| *r > 0 || *t > 0)
                .map(|(r, t)| (s, r, t))
        })
    }

    /// Rebuilds a window from snapshot buckets, dropping those already out of the window at `now`.
    pub fn restore(now_sec: i64, occupied: impl IntoIterator<Item = (i64, u64, u64)>) -> Self {
        let mut w = Self::new();
        w.advance(now_sec);
        for (sec, requests, tokens) in occupied {
            if sec > now_sec || sec <= now_sec - BUCKETS_I64 {
                continue;
            }
            if sec == now_sec {
                w.head_requests += requests;
                w.head_tokens += tokens;
            } else {
                let b = &mut w.buckets[Self::slot(sec)];
                b.sec = sec;
                b.requests += requests;
                b.tokens += tokens;
            }
            w.requests += requests;
            w.tokens += tokens;
        }
        w
    }
}

/// Requests in the current Pacific day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayCounter {
    day: QuotaDay,
    count: u64,
    /// Input tokens that day (estimates at admission, corrected at settle).
    tokens: u64,
    /// Of the requests sent that day, those Gemini served.
    served: u64,
    /// Of the requests sent that day, those Gemini refused (quota or access).
    refused: u64,
}

impl DayCounter {
    /// A counter for the day containing `now_ms`, at zero.
    pub fn new(now_ms: i64) -> Self {
        Self {
            day: QuotaDay::containing(now_ms),
            count: 0,
            tokens: 0,
            served: 0,
            refused: 0,
        }
    }

    /// A counter restored from a snapshot: the count survives only if `now_ms` is still that day.
    pub fn restore(now_ms: i64, day_start_ms: i64, count: u64, tokens: u64) -> Self {
        let mut c = Self::new(now_ms);
        if c.day.start_ms == day_start_ms {
            c.count = count;
            c.tokens = tokens;
        }
        c
    }

    /// Restores what Gemini served and refused that day (kept only if it is still that day).
    pub fn with_answers(mut self, day_start_ms: i64, served: u64, refused: u64) -> Self {
        if self.day.start_ms == day_start_ms {
            self.served = served;
            self.refused = refused;
        }
        self
    }

    /// Counts how Gemini answered a request sent at `sent_ms` (one of this day's, or nothing).
    pub fn answered(&mut self, sent_ms: i64, n: u64, how: crate::outcome::Answered) {
        if sent_ms < self.day.start_ms || sent_ms >= self.day.end_ms {
            return;
        }
        match how {
            crate::outcome::Answered::Served => self.served = self.served.saturating_add(n),
            crate::outcome::Answered::Refused => self.refused = self.refused.saturating_add(n),
            crate::outcome::Answered::Neither => {}
        }
    }

    /// Requests sent today that Gemini served.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// Requests sent today that Gemini refused (quota or access).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Starts a new day at zero if Pacific midnight has passed. Cheap when it has not.
    pub fn roll(&mut self, now_ms: i64) {
        if now_ms >= self.day.end_ms {
            *self = Self::new(now_ms);
        }
    }

    /// Requests so far today.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds requests.
    pub fn add(&mut self, n: u64) {
        self.count = self.count.saturating_add(n);
    }

    /// Input tokens so far today.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Adds input tokens (a correction may be negative). A correction for a request of an
    /// earlier day (`sent_ms` before this day's start) is not this day's.
    pub fn add_tokens(&mut self, sent_ms: i64, delta: i64) {
        if sent_ms >= self.day.start_ms {
            self.tokens = self.tokens.saturating_add_signed(delta);
        }
    }

    /// The day being counted.
    pub fn day(&self) -> QuotaDay {
        self.day
    }

    /// Clears the count (a forced reset).
    pub fn clear(&mut self) {
        self.count = 0;
        self.tokens = 0;
        self.served = 0;
        self.refused = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_day_at_the_top_of_u64_saturates() {
        // A state file edited by hand, or written by a broken tool: counting on must not panic.
        let now = 1_780_340_400_000;
        let day = QuotaDay::containing(now).start_ms;
        let mut c =
            DayCounter::restore(now, day, u64::MAX, 0).with_answers(day, u64::MAX, u64::MAX);
        c.add(1);
        c.answered(now, 1, crate::outcome::Answered::Served);
        c.answered(now, 1, crate::outcome::Answered::Refused);
        assert_eq!(
            (c.count(), c.served(), c.refused()),
            (u64::MAX, u64::MAX, u64::MAX)
        );
    }

    #[test]
    fn never_more_than_the_limit_in_any_60s_span() {
        let mut w = RollingWindow::new();
        let mut admitted: Vec<i64> = Vec::new();
        // Try one request every 250 ms for 5 minutes against a limit of 10.
        for ms in (0..300_000).step_by(250) {
            w.advance(sec_of(ms));
            if w.fits(1, 0, Some(10), None) {
                w.record(1, 0);
                admitted.push(ms);
            }
        }
        for &start in &admitted {
            let n = admitted
                .iter()
                .filter(|&&t| t >= start && t < start + 60_000)
                .count();
            assert!(n <= 10, "{n} admissions in the 60 s from {start}");
        }
        // And it does not starve: 10 per 61 s over 300 s is at least 40.
        assert!(admitted.len() >= 40, "{}", admitted.len());
    }

    #[test]
    fn free_at_names_the_second_the_oldest_bucket_leaves() {
        let mut w = RollingWindow::new();
        w.advance(100);
        w.record(3, 30);
        w.advance(110);
        w.record(2, 20);
        assert!(!w.fits(1, 0, Some(5), None));
        assert_eq!(w.free_at(110_500, 1, 0, Some(5), None), Some(161_000));
        // Needs 3 free: only after the first bucket goes too.
        assert_eq!(w.free_at(110_500, 3, 0, Some(5), None), Some(161_000));
        assert_eq!(w.free_at(110_500, 4, 0, Some(5), None), Some(171_000));
        assert_eq!(w.free_at(110_500, 6, 0, Some(5), None), None);
        w.advance(161);
        assert_eq!(w.requests(), 2);
        assert!(w.fits(3, 0, Some(5), None));
    }

    #[test]
    fn settle_corrects_tokens_in_the_bucket_still_in_window() {
        let mut w = RollingWindow::new();
        w.advance(5);
        let s = w.record(1, 1000);
        w.advance(20);
        w.adjust_tokens(s, -400);
        assert_eq!(w.tokens(), 600);
        w.adjust_tokens(s, 900);
        assert_eq!(w.tokens(), 1500);
        w.advance(66);
        assert_eq!(w.tokens(), 0);
        w.adjust_tokens(s, 5); // gone: no effect
        assert_eq!(w.tokens(), 0);
    }

    #[test]
    fn the_head_second_counts_like_any_other_before_and_after_the_window_moves() {
        let mut w = RollingWindow::new();
        w.advance(7);
        let s = w.record(2, 100);
        assert_eq!(s, 7);
        w.adjust_tokens(s, -30);
        assert_eq!(w.occupied().collect::<Vec<_>>(), vec![(7, 2, 70)]);
        // Restored into its own second, it is the head's again, and corrects there.
        let mut r = RollingWindow::restore(7, w.occupied());
        assert_eq!(r, w);
        r.adjust_tokens(7, 5);
        assert_eq!(r.tokens(), 75);
        w.advance(8);
        w.record(1, 1);
        w.adjust_tokens(s, 10);
        assert_eq!(
            w.occupied().collect::<Vec<_>>(),
            vec![(7, 2, 80), (8, 1, 1)]
        );
        assert_eq!((w.requests(), w.tokens()), (3, 81));
        assert_eq!(w.free_at(8_000, 1, 0, Some(3), None), Some(68_000));
        w.advance(68);
        assert_eq!(w.occupied().collect::<Vec<_>>(), vec![(8, 1, 1)]);
        assert_eq!((w.requests(), w.tokens()), (1, 1));
        w.advance(69);
        assert_eq!((w.requests(), w.tokens()), (0, 0));
    }

    #[test]
    fn snapshot_round_trip_drops_expired_buckets() {
        let mut w = RollingWindow::new();
        for s in [10, 30, 50] {
            w.advance(s);
            w.record(1, 7);
        }
        let occ: Vec<_> = w.occupied().collect();
        assert_eq!(occ, vec![(10, 1, 7), (30, 1, 7), (50, 1, 7)]);
        let r = RollingWindow::restore(75, occ);
        assert_eq!((r.requests(), r.tokens()), (2, 14));
    }

    #[test]
    fn day_counter_rolls_at_pacific_midnight() {
        // 2026-01-15T07:59:59Z = 23:59:59 PST.
        let t = 1_768_463_999_000;
        let mut d = DayCounter::new(t);
        d.add(20);
        d.roll(t + 999);
        assert_eq!(d.count(), 20);
        d.roll(t + 1000);
        assert_eq!(d.count(), 0);
    }
}
