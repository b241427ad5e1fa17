//! Selection policies: which eligible key takes the next request.

use serde::{Deserialize, Serialize};

/// How the pool picks among keys that have room. Every policy skips ineligible keys, is O(keys)
/// at worst and allocation-free, and starves no key:
/// - `round-robin` (default): the next eligible key after the last one picked;
/// - `least-loaded`: the key whose scope has the most headroom (the smallest fraction used of its
///   tightest limit); ties go to the key picked least recently, so keys of one project alternate.
///   Kept in an index, not found by a scan: a key back from a cooldown or an open breaker in the
///   middle of a second competes from the next second (at once if no other key can serve);
/// - `weighted`: smooth weighted round-robin (nginx's): over every whole cycle of the weights,
///   each eligible key's share is its weight over the eligible keys' total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Next eligible key in order.
    #[default]
    RoundRobin,
    /// Most headroom first.
    LeastLoaded,
    /// Proportional to key weights.
    Weighted,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round-robin" => Ok(Self::RoundRobin),
            "least-loaded" => Ok(Self::LeastLoaded),
            "weighted" => Ok(Self::Weighted),
            other => Err(format!(
                "unknown policy '{other}': expected round-robin, least-loaded or weighted"
            )),
        }
    }
}
