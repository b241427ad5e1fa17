//! The per-key circuit breaker for transient failures (500, 503, 504, timeouts, resets).
//!
//! Closed → after `failure_threshold` consecutive transient failures → Open for a cooldown that
//! doubles with each consecutive trip, up to `max_cooldown` → when it ends, HalfOpen: exactly one
//! probe request goes through → a success closes the breaker, a failure opens it again for longer.
//! A probe whose lease is never settled (a cancelled call) frees the probe slot after
//! `probe_timeout`, so a key is never stuck half-open.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// First cooldown.
    #[serde(with = "crate::serde_duration")]
    pub base_cooldown: Duration,
    /// Longest cooldown.
    #[serde(with = "crate::serde_duration")]
    pub max_cooldown: Duration,
    /// How long a half-open probe may stay unsettled before another is allowed.
    #[serde(with = "crate::serde_duration")]
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            base_cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
            probe_timeout: Duration::from_secs(60),
        }
    }
}

impl BreakerConfig {
    fn cooldown_ms(&self, trips: u32) -> i64 {
        let base = self.base_cooldown.as_millis() as i64;
        let max = self.max_cooldown.as_millis() as i64;
        let factor = 1i64
            .checked_shl(trips.saturating_sub(1).min(30))
            .unwrap_or(i64::MAX);
        base.saturating_mul(factor).min(max).max(0)
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// No request until `until_ms`.
    Open {
        /// When the cooldown ends.
        until_ms: i64,
    },
    /// One probe may go; `probe_deadline_ms` is set while a probe is out.
    HalfOpen {
        /// When an unsettled probe is given up on.
        probe_deadline_ms: Option<i64>,
    },
}

/// Whether a breaker lets a request through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Yes,
    /// Half-open: go, as the one probe.
    Probe,
    /// Open (or a probe is out) until this moment.
    NotUntil(i64),
}

/// One key's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    /// Current state.
    pub state: BreakerState,
    /// Consecutive transient failures while closed.
    pub failures: u32,
    /// Consecutive trips without a success in between (drives the growing cooldown).
    pub trips: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: BreakerState::Closed,
            failures: 0,
            trips: 0,
        }
    }
}

impl Breaker {
    /// Whether a request may go now. Pure: call [`Breaker::admitted`] once the request is sent.
    pub fn check(&self, now_ms: i64) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Yes,
            BreakerState::Open { until_ms } if now_ms >= until_ms => Admission::Probe,
            BreakerState::Open { until_ms } => Admission::NotUntil(until_ms),
            BreakerState::HalfOpen {
                probe_deadline_ms: Some(d),
            } if now_ms < d => Admission::NotUntil(d),
            BreakerState::HalfOpen { .. } => Admission::Probe,
        }
    }

    /// Records that a request went through with this admission.
    pub fn admitted(&mut self, admission: Admission, now_ms: i64, cfg: &BreakerConfig) {
        if admission == Admission::Probe {
            self.state = BreakerState::HalfOpen {
                probe_deadline_ms: Some(
                    now_ms.saturating_add(cfg.probe_timeout.as_millis() as i64),
                ),
            };
        }
    }

    /// A request on this key got an answer that proves the key and the service work.
    /// Returns true if the breaker closed (it was not closed before).
    pub fn on_success(&mut self) -> bool {
        let was_closed = self.state == BreakerState::Closed;
        *self = Self::default();
        !was_closed
    }

    /// A transient failure. Returns true if this opened the breaker.
    pub fn on_failure(&mut self, probe: bool, now_ms: i64, cfg: &BreakerConfig) -> bool {
        match self.state {
            BreakerState::Closed => {
                self.failures += 1;
                if self.failures >= cfg.failure_threshold.max(1) {
                    self.trip(now_ms, cfg);
                    return true;
                }
                false
            }
            BreakerState::HalfOpen { .. } if probe => {
                self.trip(now_ms, cfg);
                true
            }
            // Failures of requests sent before the breaker opened say nothing new.
            _ => false,
        }
    }

    /// The probe's answer said nothing about the key (a caller fault): let another probe go.
    pub fn release_probe(&mut self) {
        if let BreakerState::HalfOpen { .. } = self.state {
            self.state = BreakerState::HalfOpen {
                probe_deadline_ms: None,
            };
        }
    }

    fn trip(&mut self, now_ms: i64, cfg: &BreakerConfig) {
        self.trips = self.trips.saturating_add(1);
        self.failures = 0;
        self.state = BreakerState::Open {
            until_ms: now_ms.saturating_add(cfg.cooldown_ms(self.trips)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 2,
            base_cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(35),
            probe_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn opens_after_threshold_then_half_open_admits_exactly_one_probe() {
        let c = cfg();
        let mut b = Breaker::default();
        assert!(!b.on_failure(false, 0, &c));
        assert!(b.on_failure(false, 0, &c));
        assert_eq!(b.check(9_999), Admission::NotUntil(10_000));
        assert_eq!(b.check(10_000), Admission::Probe);
        b.admitted(Admission::Probe, 10_000, &c);
        // Second caller while the probe is out: refused until the probe deadline.
        assert_eq!(b.check(10_001), Admission::NotUntil(15_000));
        assert!(b.on_success());
        assert_eq!(b.check(10_002), Admission::Yes);
    }

    #[test]
    fn cooldown_grows_with_repeated_trips_up_to_the_cap() {
        let c = cfg();
        let mut b = Breaker::default();
        let mut now = 0;
        let mut cooldowns = vec![];
        b.on_failure(false, now, &c);
        b.on_failure(false, now, &c);
        for _ in 0..4 {
            let BreakerState::Open { until_ms } = b.state else {
                panic!("not open")
            };
            cooldowns.push(until_ms - now);
            now = until_ms;
            assert_eq!(b.check(now), Admission::Probe);
            b.admitted(Admission::Probe, now, &c);
            assert!(b.on_failure(true, now, &c));
        }
        assert_eq!(cooldowns, vec![10_000, 20_000, 35_000, 35_000]);
    }

    #[test]
    fn lost_probe_frees_the_slot_after_the_timeout() {
        let c = cfg();
        let mut b = Breaker {
            state: BreakerState::Open { until_ms: 0 },
            failures: 0,
            trips: 1,
        };
        b.admitted(Admission::Probe, 0, &c);
        assert_eq!(b.check(4_999), Admission::NotUntil(5_000));
        assert_eq!(b.check(5_000), Admission::Probe);
        b.release_probe();
        assert_eq!(b.check(5_001), Admission::Probe);
    }

    #[test]
    fn stale_failures_while_open_do_not_extend_it() {
        let c = cfg();
        let mut b = Breaker::default();
        b.on_failure(false, 0, &c);
        b.on_failure(false, 0, &c);
        let before = b;
        assert!(!b.on_failure(false, 1_000, &c));
        assert_eq!(b, before);
    }
}
