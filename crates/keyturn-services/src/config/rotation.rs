//! `[rotation]` and `[retry]`: how keys are chosen, when what was learned about a key expires,
//! and how a refused call is retried.

use std::time::Duration;

use keyturn_core::Policy;
use keyturn_core::serde_duration;
use serde::{Deserialize, Serialize};

/// `[rotation]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// `round-robin`, `least-loaded`, `weighted`.
    pub policy: Policy,
    /// How long a call may wait for capacity.
    #[serde(with = "serde_duration")]
    pub max_wait: Duration,
    /// Cooldown after a 429 that names no delay.
    #[serde(with = "serde_duration")]
    pub default_throttle_cooldown: Duration,
    /// How long what the server taught holds (learned limits, a model or project switched
    /// off): `None` (`"pacific-midnight"`) until the next Pacific midnight after it was learned,
    /// or a duration ([`RELEARN_AFTER_MIN`] to [`RELEARN_AFTER_MAX`]).
    #[serde(with = "relearn_after")]
    pub relearn_after: Option<Duration>,
}

impl Default for RotationConfig {
    fn default() -> Self {
        let d = keyturn_core::RotationSettings::default();
        Self {
            policy: d.policy,
            max_wait: d.max_wait,
            default_throttle_cooldown: d.default_throttle_cooldown,
            relearn_after: keyturn_core::LedgerConfig::default().relearn_after,
        }
    }
}

/// The shortest `relearn_after`: each expiry of a switch-off costs a real request, and each
/// expiry of a learned limit up to a refused one, so an expiry every few seconds would turn
/// keyturn into a source of the 429s it exists to avoid.
pub const RELEARN_AFTER_MIN: Duration = Duration::from_secs(60);

/// The longest `relearn_after`: Google moves projects between tiers and changes published
/// limits; what it said a month ago is not evidence any more.
pub const RELEARN_AFTER_MAX: Duration = Duration::from_secs(30 * 86_400);

/// `relearn_after` in files: `"pacific-midnight"` (the default) or a duration.
mod relearn_after {
    use std::time::Duration;

    use keyturn_core::serde_duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub const MIDNIGHT: &str = "pacific-midnight";

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            None => s.serialize_str(MIDNIGHT),
            Some(d) => serde_duration::serialize(d, s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == MIDNIGHT {
            return Ok(None);
        }
        serde_duration::parse(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{e}; or \"{MIDNIGHT}\" (the default)")))
    }
}

/// `[retry]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Most attempts per call.
    pub max_attempts: u32,
    /// Most time per call.
    #[serde(with = "serde_duration")]
    pub max_elapsed: Duration,
    /// First backoff after a transient failure.
    #[serde(with = "serde_duration")]
    pub base_backoff: Duration,
    /// Longest backoff.
    #[serde(with = "serde_duration")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let d = keyturn_gemini::RetryPolicy::default();
        Self {
            max_attempts: d.max_attempts,
            max_elapsed: d.max_elapsed,
            base_backoff: d.base_backoff,
            max_backoff: d.max_backoff,
        }
    }
}

#[cfg(test)]
mod relearn_tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::error::ConfigError;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("keyturn.toml"))
    }

    #[test]
    fn relearn_after_is_midnight_by_default_or_a_bounded_duration() {
        assert_eq!(load("").unwrap().rotation.relearn_after, None);
        assert_eq!(
            load("[rotation]\nrelearn_after = \"pacific-midnight\"")
                .unwrap()
                .rotation
                .relearn_after,
            None
        );
        assert_eq!(
            load("[rotation]\nrelearn_after = \"6h\"")
                .unwrap()
                .rotation
                .relearn_after,
            Some(Duration::from_secs(6 * 3600))
        );
        for bad in [
            "\"0s\"",
            "\"59s\"",
            "\"31 days\"",
            "\"soon\"",
            "\"-1h\"",
            "3600",
        ] {
            let err = load(&format!("[rotation]\nrelearn_after = {bad}"))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains("relearn_after"), "{bad}: {err}");
            assert!(err.contains("keyturn.toml"), "{bad}: {err}");
        }
    }

    #[test]
    fn relearn_after_reaches_the_ledger() {
        let cfg = load("[rotation]\nrelearn_after = \"2h\"").unwrap();
        let l = crate::ledger_config(&cfg).unwrap();
        assert_eq!(l.relearn_after, Some(Duration::from_secs(7200)));
        assert_eq!(l.relearn_at(1_000), 1_000 + 7_200_000);
    }
}
