//! What the caller counts: requests and outcomes per key, and calls waiting for quota.

use keyturn_core::Outcome;

/// What one key did, as seen by this process's calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyCallStats {
    /// Key label.
    pub label: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// Requests sent.
    pub requests: u64,
    /// Answered with success.
    pub ok: u64,
    /// 429s by kind: per-minute, tokens, per-day, unspecified, limit-0.
    pub throttled: std::collections::BTreeMap<String, u64>,
    /// Transient failures.
    pub transient: u64,
    /// Refusals that disabled the key.
    pub dead: u64,
    /// Caller faults.
    pub caller_faults: u64,
    /// Input tokens Gemini counted on successes.
    pub input_tokens: u64,
}

/// Counts a call as waiting for quota while it lives.
pub(super) struct WaitingForQuota<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> WaitingForQuota<'a> {
    pub(super) fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for WaitingForQuota<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Adds one request's outcome to a key's statistics.
pub(super) fn count(
    stats: &parking_lot::Mutex<Vec<KeyCallStats>>,
    key: keyturn_core::KeyId,
    outcome: &Outcome,
) {
    let mut all = stats.lock();
    let Some(s) = all.get_mut(key.index()) else {
        return;
    };
    s.requests += 1;
    match outcome {
        Outcome::Success { input_tokens } => {
            s.ok += 1;
            s.input_tokens += input_tokens.unwrap_or(0);
        }
        Outcome::Throttled { kind, .. } => {
            let k = match kind {
                keyturn_core::ThrottleKind::RequestsPerMinute => "per-minute",
                keyturn_core::ThrottleKind::TokensPerMinute => "tokens",
                keyturn_core::ThrottleKind::RequestsPerDay => "per-day",
                keyturn_core::ThrottleKind::TokensPerDay => "tokens-per-day",
                keyturn_core::ThrottleKind::Unspecified => "unspecified",
            };
            *s.throttled.entry(k.to_owned()).or_default() += 1;
        }
        Outcome::ModelUnavailable => *s.throttled.entry("limit-0".to_owned()).or_default() += 1,
        Outcome::ProjectOff => {
            *s.throttled.entry("project-off".to_owned()).or_default() += 1;
        }
        Outcome::KeyDead(_) | Outcome::ProjectDead(_) => s.dead += 1,
        Outcome::Transient => s.transient += 1,
        Outcome::CallerFault => s.caller_faults += 1,
    }
}
