//! Selection policies: which eligible key takes the next request.

use serde::{Deserialize, Serialize};

/// How the pool picks among keys that have room. Every policy skips ineligible keys, is O(keys)
/// at worst and allocation-free, and starves no key:
/// - `round-robin` (default): the next eligible key after the last one picked;
/// - `least-loaded`: the key whose scope has the most headroom (the smallest fraction used of its
///   tightest limit); ties go round-robin, so keys of one project alternate;
/// - `weighted`: smooth weighted round-robin (nginx's): over any run, each eligible key's share is
///   its weight over the total.
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
