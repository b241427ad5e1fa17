//! Quotas per (project, model), exactly: a sliding log of admissions over the last 60 s (the
//! window is `(now - 60 s, now]`) and a count per Pacific calendar day.

use std::collections::{BTreeMap, VecDeque};

use jiff::civil::Date;

use super::clock::pacific_date;
use crate::config::Limits;
use crate::errors::QuotaKind;

const MINUTE_MS: i64 = 60_000;

/// Why a request was refused by quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Which quota.
    pub kind: QuotaKind,
    /// Its limit.
    pub limit: u64,
    /// When to retry (ms from now).
    pub retry_ms: u64,
}

#[derive(Debug, Default)]
pub(super) struct ScopeQuota {
    pub(super) log: VecDeque<(i64, u64, u64)>,
    pub(super) requests: u64,
    pub(super) tokens: u64,
    pub(super) day: Date,
    pub(super) day_count: u64,
    pub(super) admitted: u64,
    pub(super) refused: BTreeMap<&'static str, u64>,
    pub(super) peak_rpm: u64,
    pub(super) peak_tpm: u64,
}

impl ScopeQuota {
    pub(super) fn evict(&mut self, now: i64) {
        while let Some(&(t, r, k)) = self.log.front() {
            if t > now - MINUTE_MS {
                break;
            }
            self.log.pop_front();
            self.requests -= r;
            self.tokens -= k;
        }
        let today = pacific_date(now);
        if today != self.day {
            self.day = today;
            self.day_count = 0;
        }
    }

    /// When `n` requests and `t` tokens would fit under rpm/tpm (ms from now).
    fn minute_retry(&self, now: i64, n: u64, t: u64, l: &Limits) -> u64 {
        let (mut r, mut k) = (self.requests, self.tokens);
        for &(at, rr, kk) in &self.log {
            r -= rr;
            k -= kk;
            if l.rpm.is_none_or(|x| r + n <= x) && l.tpm.is_none_or(|x| k + t <= x) {
                return (at + MINUTE_MS - now + 1).max(1) as u64;
            }
        }
        1
    }

    pub(super) fn admit(&mut self, now: i64, n: u64, t: u64, l: &Limits) -> Result<(), Refusal> {
        self.evict(now);
        let refuse = |kind, limit, retry_ms| Refusal {
            kind,
            limit,
            retry_ms,
        };
        let result = if let Some(rpd) = l.rpd.filter(|x| self.day_count + n > *x) {
            // Like the real service: a short retryDelay even though the day is over.
            let to_next_minute = (MINUTE_MS - now.rem_euclid(MINUTE_MS)) as u64;
            Err(refuse(QuotaKind::PerDay, rpd, to_next_minute.max(1000)))
        } else if let Some(rpm) = l.rpm.filter(|x| self.requests + n > *x) {
            Err(refuse(
                QuotaKind::PerMinute,
                rpm,
                self.minute_retry(now, n, t, l),
            ))
        } else if let Some(tpm) = l.tpm.filter(|x| self.tokens + t > *x) {
            Err(refuse(
                QuotaKind::Tokens,
                tpm,
                self.minute_retry(now, n, t, l),
            ))
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                self.log.push_back((now, n, t));
                self.requests += n;
                self.tokens += t;
                self.day_count += n;
                self.admitted += n;
                self.peak_rpm = self.peak_rpm.max(self.requests);
                self.peak_tpm = self.peak_tpm.max(self.tokens);
                Ok(())
            }
            Err(r) => {
                let name = match r.kind {
                    QuotaKind::PerDay => "per-day",
                    QuotaKind::PerMinute => "per-minute",
                    QuotaKind::Tokens => "tokens",
                };
                *self.refused.entry(name).or_default() += 1;
                Err(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_log_never_admits_past_rpm_in_any_minute() {
        let mut q = ScopeQuota::default();
        let l = Limits::new(3, 1_000_000, 1000);
        let t0 = 1_768_420_800_000;
        let mut admitted = vec![];
        for i in 0..400 {
            let now = t0 + i * 1_000;
            if q.admit(now, 1, 1, &l).is_ok() {
                admitted.push(now);
            }
        }
        for &a in &admitted {
            let n = admitted
                .iter()
                .filter(|&&b| b >= a && b < a + 60_000)
                .count();
            assert!(n <= 3);
        }
        assert_eq!(q.peak_rpm, 3);
        // Exactly 3 per 60 s with 1 s steps: admitted at 0,1,2, 60,61,62, ...
        assert_eq!(admitted.len(), 3 * 7);
    }

    #[test]
    fn refusals_name_the_quota_and_when() {
        let mut q = ScopeQuota::default();
        let l = Limits::new(2, 100, 1);
        let t0 = 1_768_420_800_000;
        assert!(q.admit(t0, 1, 10, &l).is_ok());
        let r = q.admit(t0 + 5, 1, 10, &l).unwrap_err();
        assert_eq!((r.kind, r.limit), (QuotaKind::PerDay, 1));
        let l = Limits::new(1, 100, 10);
        let r = q.admit(t0 + 10_000, 1, 10, &l).unwrap_err();
        assert_eq!((r.kind, r.limit), (QuotaKind::PerMinute, 1));
        assert_eq!(r.retry_ms, 50_001);
        let l = Limits::new(10, 15, 10);
        let r = q.admit(t0 + 10_000, 1, 10, &l).unwrap_err();
        assert_eq!(r.kind, QuotaKind::Tokens);
    }
}
