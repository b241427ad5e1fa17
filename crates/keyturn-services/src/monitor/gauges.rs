//! The metrics gauges a pool's status sets: quota used and its limit per scope and window, keys
//! by state, each key's breaker.

use std::collections::BTreeMap;

use keyturn_core::snapshot::{KeyStatus, ScopeStatus};
use keyturn_core::{BreakerState, PoolStatus, ScopeState};

/// Gauge: quota used now, by `project`, `model` and `window` (`minute`, `tokens-minute`, `day`).
pub const QUOTA_USED: &str = "keyturn_quota_used";
/// Gauge: the limit in force, same labels (absent when unlimited).
pub const QUOTA_LIMIT: &str = "keyturn_quota_limit";
/// Gauge: keys by `state` (`usable`, `cooling`, `exhausted`, `disabled`).
pub const KEYS: &str = "keyturn_keys";
/// Gauge: a key's breaker by `key` and `fingerprint`: 0 closed, 1 half-open, 2 open.
pub const BREAKER: &str = "keyturn_breaker_state";

/// Refreshes the gauges from a status.
pub fn gauges(st: &PoolStatus) {
    for sc in &st.scopes {
        let l = &sc.limits;
        for (window, used, limit) in [
            ("minute", sc.rpm_used, l.rpm),
            ("tokens-minute", sc.tpm_used, l.tpm),
            ("day", sc.rpd_used, l.rpd),
        ] {
            let labels = [
                ("project", sc.project.clone()),
                ("model", sc.model.clone()),
                ("window", window.to_owned()),
            ];
            metrics::gauge!(QUOTA_USED, &labels).set(used as f64);
            if let Some(limit) = limit {
                metrics::gauge!(QUOTA_LIMIT, &labels).set(limit as f64);
            }
        }
    }
    let mut counts: BTreeMap<&str, u64> = ["usable", "cooling", "exhausted", "disabled"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for k in &st.keys {
        let breaker = match k.breaker {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        };
        metrics::gauge!(BREAKER, "key" => k.label.clone(), "fingerprint" => k.fingerprint.to_string())
            .set(breaker);
        *counts.entry(key_state(st, k)).or_default() += 1;
    }
    for (state, n) in counts {
        metrics::gauge!(KEYS, "state" => state).set(n as f64);
    }
}

/// One word for a key across the models in use: disabled; usable if some model has room and
/// its breaker admits; exhausted if every model's day is over (or off); cooling otherwise.
fn key_state(st: &PoolStatus, k: &KeyStatus) -> &'static str {
    if k.disabled.is_some() {
        return "disabled";
    }
    let mine: Vec<&ScopeStatus> = st
        .scopes
        .iter()
        .filter(|s| s.project == k.project)
        .collect();
    if !mine.is_empty()
        && mine
            .iter()
            .all(|s| matches!(s.state, ScopeState::Exhausted | ScopeState::Off))
    {
        return "exhausted";
    }
    let breaker_open = matches!(k.breaker, BreakerState::Open { .. });
    if !breaker_open && (mine.is_empty() || mine.iter().any(|s| s.state == ScopeState::Ready)) {
        "usable"
    } else {
        "cooling"
    }
}
