//! `[notify]` and `[recheck]`: warnings before quota runs out, and bringing disabled keys back
//! when they answer again.

use std::time::Duration;

use keyturn_core::serde_duration;
use serde::{Deserialize, Serialize};

/// `[notify]`: warnings before quota runs out, to the log and to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// Where warnings are POSTed as JSON; none: warnings go to the log only.
    pub webhook_url: Option<String>,
    /// Percentages of a scope's daily request quota that raise a warning, once each per day.
    pub thresholds: Vec<u8>,
    /// Warn when a key is disabled (once per key per day while it stays disabled).
    pub key_disabled: bool,
    /// Warn when every key is exhausted (or disabled) for a model.
    pub all_exhausted: bool,
    /// Warn when a whole project is switched off (402 credits depleted, a zero whole-API quota).
    pub project_off: bool,
    /// How often the pool's state is checked (also the metrics gauges' refresh).
    #[serde(with = "serde_duration")]
    pub check_interval: Duration,
    /// Warnings waiting for delivery; beyond that, new ones are logged and dropped.
    pub queue: usize,
    /// Delivery attempts per warning (retried with exponential backoff on errors and 5xx).
    pub max_attempts: u32,
    /// Timeout of one delivery attempt.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            webhook_url: None,
            thresholds: vec![80, 100],
            key_disabled: true,
            all_exhausted: true,
            project_off: true,
            check_interval: Duration::from_secs(1),
            queue: 256,
            max_attempts: 5,
            timeout: Duration::from_secs(5),
        }
    }
}

/// `[recheck]`: bringing disabled keys back when they answer again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecheckSettings {
    /// Re-check disabled keys at all.
    pub enabled: bool,
    /// How long after a key was disabled (or last re-checked) it is asked again, with a request
    /// that costs no quota.
    #[serde(with = "serde_duration")]
    pub interval: Duration,
}

impl Default for RecheckSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(3600),
        }
    }
}
