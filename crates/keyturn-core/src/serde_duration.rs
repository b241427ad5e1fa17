//! Durations in configuration and snapshots as friendly strings ("10s", "5m", "1h 30m").

use std::time::Duration;

use jiff::SignedDuration;
use serde::{Deserialize, Deserializer, Serializer};

/// Serializes as a friendly duration ("1m 30s").
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    let sd = SignedDuration::try_from(*d).map_err(serde::ser::Error::custom)?;
    s.collect_str(&format_args!("{sd:#}"))
}

/// Parses "10s", "250ms", "5m", "1h 30m" or ISO 8601 ("PT10S").
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// Parses a friendly or ISO 8601 duration; negative durations are refused.
pub fn parse(s: &str) -> Result<Duration, String> {
    let sd: SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("'{s}' is not a duration like \"10s\" or \"5m\": {e}"))?;
    Duration::try_from(sd).map_err(|_| format!("'{s}' is negative; durations must be ≥ 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_friendly_and_iso() {
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("PT2M").unwrap(), Duration::from_secs(120));
        assert!(parse("-5s").is_err());
        assert!(parse("soon").is_err());
    }
}
