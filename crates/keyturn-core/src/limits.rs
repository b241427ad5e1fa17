//! What the quota allows: a dated built-in table of Gemini models, overridden per model and per
//! project by configuration. Limits the server itself reports (a 429's `quotaValue`) are learned
//! by the ledger on top of these and win when lower.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// When the built-in table was last checked against Google's published rate limits. Google
/// changes them often (gemini-2.5-flash's free tier fell from 250 to 20 requests per day in
/// December 2025); configuration and learned limits correct what this table gets wrong.
pub const BUILTIN_TABLE_DATE: &str = "2025-12-15";

/// Limits of one model for one project. `None` means unlimited; `Some(0)` means the model is not
/// available at all (Gemini's `limit: 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelLimits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Input tokens per minute.
    pub tpm: Option<u64>,
    /// Requests per Pacific day.
    pub rpd: Option<u64>,
}

impl ModelLimits {
    /// Limits with all three set.
    pub const fn new(rpm: u64, tpm: u64, rpd: u64) -> Self {
        Self {
            rpm: Some(rpm),
            tpm: Some(tpm),
            rpd: Some(rpd),
        }
    }

    /// No limit at all.
    pub const UNLIMITED: Self = Self {
        rpm: None,
        tpm: None,
        rpd: None,
    };

    /// The limit unknown models get until the server says otherwise: as tight as the tightest
    /// free tier, so a new model never causes a burst of refusals.
    pub const CONSERVATIVE: Self = Self::new(5, 250_000, 20);

    /// Whether any limit is zero (the model is off for the project).
    pub fn is_off(&self) -> bool {
        self.rpm == Some(0) || self.tpm == Some(0) || self.rpd == Some(0)
    }

    /// Each field the lower of the two (None is +infinity).
    pub fn min(self, other: Self) -> Self {
        fn lo(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, None) => a,
                (None, b) => b,
            }
        }
        Self {
            rpm: lo(self.rpm, other.rpm),
            tpm: lo(self.tpm, other.tpm),
            rpd: lo(self.rpd, other.rpd),
        }
    }

    /// Applies an override: each field it sets replaces ours.
    pub fn with(self, o: &LimitOverride) -> Self {
        Self {
            rpm: o.rpm.map_or(self.rpm, Some),
            tpm: o.tpm.map_or(self.tpm, Some),
            rpd: o.rpd.map_or(self.rpd, Some),
        }
    }
}

/// A project's billing tier, which selects the built-in limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// The free tier of the Gemini API.
    #[default]
    Free,
    /// Paid tier 1.
    Tier1,
}

/// One row of the built-in table.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinModel {
    /// Model id as the API names it.
    pub name: &'static str,
    /// Free-tier limits (`Some(0)` everywhere: no free tier).
    pub free: ModelLimits,
    /// Tier-1 limits.
    pub tier1: ModelLimits,
}

const NO_FREE_TIER: ModelLimits = ModelLimits::new(0, 0, 0);

/// The built-in table, as published by Google on [`BUILTIN_TABLE_DATE`].
pub const BUILTIN_MODELS: &[BuiltinModel] = &[
    BuiltinModel {
        name: "gemini-3-pro-preview",
        free: NO_FREE_TIER,
        tier1: ModelLimits::new(50, 1_000_000, 1_000),
    },
    BuiltinModel {
        name: "gemini-3-flash-preview",
        free: ModelLimits::new(5, 250_000, 20),
        tier1: ModelLimits::new(1_000, 1_000_000, 10_000),
    },
    BuiltinModel {
        name: "gemini-2.5-pro",
        free: ModelLimits::new(2, 125_000, 50),
        tier1: ModelLimits::new(150, 2_000_000, 10_000),
    },
    BuiltinModel {
        name: "gemini-2.5-flash",
        free: ModelLimits::new(5, 250_000, 20),
        tier1: ModelLimits::new(1_000, 1_000_000, 10_000),
    },
    BuiltinModel {
        name: "gemini-2.5-flash-lite",
        free: ModelLimits::new(10, 250_000, 20),
        tier1: ModelLimits::new(4_000, 4_000_000, 150_000),
    },
    BuiltinModel {
        name: "gemini-2.0-flash",
        free: ModelLimits::new(15, 1_000_000, 200),
        tier1: ModelLimits::new(2_000, 4_000_000, 150_000),
    },
    BuiltinModel {
        name: "gemini-2.0-flash-lite",
        free: ModelLimits::new(30, 1_000_000, 200),
        tier1: ModelLimits::new(4_000, 4_000_000, 150_000),
    },
    BuiltinModel {
        name: "gemini-embedding-001",
        free: ModelLimits::new(100, 30_000, 1_000),
        tier1: ModelLimits::new(3_000, 1_000_000, 150_000),
    },
];

/// A partial override from configuration: fields left `None` keep the value below them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Input tokens per minute.
    pub tpm: Option<u64>,
    /// Requests per day.
    pub rpd: Option<u64>,
}

impl LimitOverride {
    fn validate(&self, what: &str) -> Result<(), ConfigError> {
        for (field, v) in [("rpm", self.rpm), ("tpm", self.tpm), ("rpd", self.rpd)] {
            if v == Some(0) {
                return Err(ConfigError::ZeroLimit {
                    scope: what.to_owned(),
                    field,
                });
            }
        }
        Ok(())
    }
}

/// Where a scope's configured limits came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitSource {
    /// The built-in table.
    Builtin,
    /// Configuration overrode it.
    Configured,
    /// The model is unknown: the conservative default applies.
    Default,
}

/// Resolves a (project, model) to its configured limits: built-in table for the project's tier,
/// then per-model overrides, then per-project-and-model overrides.
#[derive(Debug, Clone, Default)]
pub struct LimitTable {
    default_tier: Tier,
    tiers: HashMap<String, Tier>,
    models: HashMap<String, LimitOverride>,
    projects: HashMap<(String, String), LimitOverride>,
    unknown: Option<ModelLimits>,
}

/// Strips the `models/` prefix Gemini uses in resource names.
pub fn normalize_model(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

impl LimitTable {
    /// The built-in table, free tier everywhere, no overrides.
    pub fn builtin() -> Self {
        Self::default()
    }

    /// The tier of projects not named in [`LimitTable::set_project_tier`].
    pub fn set_default_tier(&mut self, tier: Tier) -> &mut Self {
        self.default_tier = tier;
        self
    }

    /// A project's tier.
    pub fn set_project_tier(&mut self, project: impl Into<String>, tier: Tier) -> &mut Self {
        self.tiers.insert(project.into(), tier);
        self
    }

    /// Overrides a model's limits for every project. Zero is refused: a zero limit is something
    /// only the server can say.
    pub fn set_model(&mut self, model: &str, o: LimitOverride) -> Result<&mut Self, ConfigError> {
        o.validate(&format!("models.\"{model}\""))?;
        self.models.insert(
            normalize_model(model).to_owned(),
            merge(self.models.get(model), o),
        );
        Ok(self)
    }

    /// Overrides a model's limits for one project.
    pub fn set_project_model(
        &mut self,
        project: &str,
        model: &str,
        o: LimitOverride,
    ) -> Result<&mut Self, ConfigError> {
        o.validate(&format!("projects.\"{project}\".models.\"{model}\""))?;
        let k = (project.to_owned(), normalize_model(model).to_owned());
        let merged = merge(self.projects.get(&k), o);
        self.projects.insert(k, merged);
        Ok(self)
    }

    /// The limits an unknown model gets (default [`ModelLimits::CONSERVATIVE`]).
    pub fn set_unknown_default(&mut self, limits: ModelLimits) -> Result<&mut Self, ConfigError> {
        if limits.is_off() {
            return Err(ConfigError::ZeroLimit {
                scope: "unknown-model default".to_owned(),
                field: "rpm/tpm/rpd",
            });
        }
        self.unknown = Some(limits);
        Ok(self)
    }

    /// The tier of a project.
    pub fn tier(&self, project: &str) -> Tier {
        self.tiers
            .get(project)
            .copied()
            .unwrap_or(self.default_tier)
    }

    /// Whether the model is in the built-in table.
    pub fn is_builtin(model: &str) -> bool {
        let m = normalize_model(model);
        BUILTIN_MODELS.iter().any(|b| b.name == m)
    }

    /// The configured limits of (project, model) and where they came from.
    pub fn resolve(&self, project: &str, model: &str) -> (ModelLimits, LimitSource) {
        let model = normalize_model(model);
        let (mut limits, mut source) = match BUILTIN_MODELS.iter().find(|b| b.name == model) {
            Some(b) => match self.tier(project) {
                Tier::Free => (b.free, LimitSource::Builtin),
                Tier::Tier1 => (b.tier1, LimitSource::Builtin),
            },
            None => (
                self.unknown.unwrap_or(ModelLimits::CONSERVATIVE),
                LimitSource::Default,
            ),
        };
        if let Some(o) = self.models.get(model) {
            limits = limits.with(o);
            source = LimitSource::Configured;
        }
        if let Some(o) = self.projects.get(&(project.to_owned(), model.to_owned())) {
            limits = limits.with(o);
            source = LimitSource::Configured;
        }
        (limits, source)
    }
}

fn merge(old: Option<&LimitOverride>, new: LimitOverride) -> LimitOverride {
    match old {
        None => new,
        Some(o) => LimitOverride {
            rpm: new.rpm.or(o.rpm),
            tpm: new.tpm.or(o.tpm),
            rpd: new.rpd.or(o.rpd),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_builtin_then_model_then_project() {
        let mut t = LimitTable::builtin();
        assert_eq!(
            t.resolve("p", "gemini-2.5-flash"),
            (ModelLimits::new(5, 250_000, 20), LimitSource::Builtin)
        );
        t.set_model(
            "gemini-2.5-flash",
            LimitOverride {
                rpm: Some(10),
                rpd: Some(250),
                tpm: None,
            },
        )
        .unwrap();
        t.set_project_model(
            "paid",
            "models/gemini-2.5-flash",
            LimitOverride {
                rpm: Some(150),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            t.resolve("p", "gemini-2.5-flash").0,
            ModelLimits::new(10, 250_000, 250)
        );
        assert_eq!(
            t.resolve("paid", "gemini-2.5-flash").0,
            ModelLimits::new(150, 250_000, 250)
        );
    }

    #[test]
    fn tiers_and_unknown_models() {
        let mut t = LimitTable::builtin();
        t.set_project_tier("paid", Tier::Tier1);
        assert!(t.resolve("free", "gemini-3-pro-preview").0.is_off());
        assert!(!t.resolve("paid", "gemini-3-pro-preview").0.is_off());
        assert_eq!(
            t.resolve("p", "gemini-9-ultra"),
            (ModelLimits::CONSERVATIVE, LimitSource::Default)
        );
    }

    #[test]
    fn zero_limits_in_configuration_are_refused_with_the_field_named() {
        let mut t = LimitTable::builtin();
        let err = t
            .set_model(
                "gemini-2.5-pro",
                LimitOverride {
                    rpd: Some(0),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("rpd"), "{err}");
        assert!(err.to_string().contains("gemini-2.5-pro"), "{err}");
    }

    #[test]
    fn min_treats_none_as_unlimited() {
        let a = ModelLimits {
            rpm: Some(10),
            tpm: None,
            rpd: Some(5),
        };
        let b = ModelLimits {
            rpm: None,
            tpm: Some(7),
            rpd: Some(9),
        };
        assert_eq!(a.min(b), ModelLimits::new(10, 7, 5));
    }
}
