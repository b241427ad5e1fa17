//! What the quota allows: a dated built-in table of Gemini models, overridden per model and per
//! project by configuration. Limits the server itself reports (a 429's `quotaValue`) are learned
//! by the ledger on top of these and win when lower.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::LimitError;

/// When the built-in table was last checked against its sources (each row names its own).
/// Google changes limits often (gemini-2.5-flash's free tier fell from 250 to 20 requests per
/// day on 2025-12-06) and no longer publishes a full per-tier table (AI Studio shows each
/// project its own); configuration and learned limits correct what this table gets wrong.
pub const BUILTIN_TABLE_DATE: &str = "2026-12-01";

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
    /// Input tokens per Pacific day (`GenerateContentInputTokensPerModelPerDay`). Google
    /// publishes none; the server reports it in its 429s, and configuration may set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpd: Option<u64>,
}

impl ModelLimits {
    /// Limits with all three set.
    pub const fn new(rpm: u64, tpm: u64, rpd: u64) -> Self {
        Self {
            rpm: Some(rpm),
            tpm: Some(tpm),
            rpd: Some(rpd),
            tpd: None,
        }
    }

    /// No limit at all.
    pub const UNLIMITED: Self = Self {
        rpm: None,
        tpm: None,
        rpd: None,
        tpd: None,
    };

    /// The base `[limits] unknown_model` overrides: the free tier's family default with a
    /// per-day cap as tight as the tightest free tier.
    pub const CONSERVATIVE: Self = Self::new(5, 250_000, 20);

    /// Whether any limit is zero (the model is off for the project).
    pub fn is_off(&self) -> bool {
        self.rpm == Some(0) || self.tpm == Some(0) || self.rpd == Some(0) || self.tpd == Some(0)
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
            tpd: lo(self.tpd, other.tpd),
        }
    }

    /// Applies an override: each field it sets replaces ours.
    pub fn with(self, o: &LimitOverride) -> Self {
        Self {
            rpm: o.rpm.map_or(self.rpm, Some),
            tpm: o.tpm.map_or(self.tpm, Some),
            rpd: o.rpd.map_or(self.rpd, Some),
            tpd: o.tpd.map_or(self.tpd, Some),
        }
    }
}

/// A project's usage tier (Google AI Studio's ladder), which selects the built-in column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// The free tier of the Gemini API.
    #[default]
    Free,
    /// Paid tier 1 (billing linked).
    Tier1,
    /// Paid tier 2.
    Tier2,
    /// Paid tier 3.
    Tier3,
}

impl Tier {
    /// The name configuration uses (`free`, `tier1`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Tier1 => "tier1",
            Tier::Tier2 => "tier2",
            Tier::Tier3 => "tier3",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A model's family, read from the structure of its name: the dash-separated words of the id
/// (after `models/`). A word `embedding` makes it an embedding model (`gemini-embedding-001`,
/// `text-embedding-004`); otherwise a word `pro` a pro model (`gemini-3.1-pro-preview`); a word
/// `flash` a flash model (`gemini-2.5-flash-lite`); anything else is [`ModelFamily::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFamily {
    /// `…-pro-…`.
    Pro,
    /// `…-flash-…`.
    Flash,
    /// `…-embedding-…`.
    Embedding,
    /// Anything else (gemma, imagen, a name keyturn cannot read).
    Other,
}

impl ModelFamily {
    /// The family of a model id.
    pub fn of(model: &str) -> Self {
        let words = || normalize_model(model).split('-');
        if words().any(|w| w.eq_ignore_ascii_case("embedding")) {
            ModelFamily::Embedding
        } else if words().any(|w| w.eq_ignore_ascii_case("pro")) {
            ModelFamily::Pro
        } else if words().any(|w| w.eq_ignore_ascii_case("flash")) {
            ModelFamily::Flash
        } else {
            ModelFamily::Other
        }
    }

    /// The per-minute limits a model of this family gets on `tier` when the built-in table has
    /// no entry for it, and never a per-day cap: that one is learned exactly from the server's
    /// first per-day 429 (`quotaValue`). Paid tiers take the published gemini-2.5-flash row
    /// of the tier (the one paid row Google staff published whole, see [`BUILTIN_MODELS`]): a
    /// pro model's real limits are lower, and its first per-minute 429 teaches them (one refused
    /// request), where a default set too low could never be raised by learning. The free tier
    /// takes 5 RPM / 250,000 TPM (the tightest free flash and pro rows); free embeddings 100 RPM
    /// (gemini-embedding-2, real-14 of the corpus) and no TPM cap until learned.
    pub const fn defaults(self, tier: Tier) -> ModelLimits {
        let (rpm, tpm) = match (tier, self) {
            (Tier::Free, ModelFamily::Embedding) => (Some(100), None),
            (Tier::Free, _) => (Some(5), Some(250_000)),
            (Tier::Tier1, _) => (Some(1_000), Some(1_000_000)),
            (Tier::Tier2, _) => (Some(2_000), Some(3_000_000)),
            (Tier::Tier3, _) => (Some(10_000), Some(8_000_000)),
        };
        ModelLimits {
            rpm,
            tpm,
            rpd: None,
            tpd: None,
        }
    }
}

/// One row of the built-in table: per tier, `None` when no source gives that tier's limits
/// (the family default applies, with no per-day cap). Inside an entry a field left `None` was
/// not published: RPM/TPM take the family default, RPD has no cap until the server says.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinModel {
    /// Model id as the API names it.
    pub name: &'static str,
    /// Free tier (`Some(0)` everywhere: no free tier).
    pub free: Option<ModelLimits>,
    /// Paid tier 1.
    pub tier1: Option<ModelLimits>,
    /// Paid tier 2.
    pub tier2: Option<ModelLimits>,
    /// Paid tier 3.
    pub tier3: Option<ModelLimits>,
    /// Where each number comes from (the docs' table is generated from these).
    pub sources: &'static [Source],
}

/// Where a number of the built-in table comes from: what it supports and, for a public page,
/// its address. "corpus real-NN" is the error body of that id in
/// `crates/keyturn-gemini/tests/data/gemini-errors/`, which names its own URL.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// What it states (`"free RPD since 2025-12-06"`, `"free TPM: corpus real-02"`).
    pub what: &'static str,
    /// The page, if it is one.
    pub url: Option<&'static str>,
}

const fn src(what: &'static str, url: &'static str) -> Source {
    Source {
        what,
        url: Some(url),
    }
}

const fn corpus(what: &'static str) -> Source {
    Source { what, url: None }
}

const QUASA: &str = "https://quasa.io/media/google-s-gemini-api-free-tier-fiasco-developers-hit-by-silent-rate-limit-purge";

/// Every tier, in the order of the built-in table's columns.
pub const TIERS: [Tier; 4] = [Tier::Free, Tier::Tier1, Tier::Tier2, Tier::Tier3];

impl BuiltinModel {
    /// This row's entry for a tier.
    pub const fn for_tier(&self, tier: Tier) -> Option<ModelLimits> {
        match tier {
            Tier::Free => self.free,
            Tier::Tier1 => self.tier1,
            Tier::Tier2 => self.tier2,
            Tier::Tier3 => self.tier3,
        }
    }
}

const NO_FREE_TIER: Option<ModelLimits> = Some(ModelLimits::new(0, 0, 0));

const fn partial(rpm: Option<u64>, tpm: Option<u64>, rpd: Option<u64>) -> Option<ModelLimits> {
    Some(ModelLimits {
        rpm,
        tpm,
        rpd,
        tpd: None,
    })
}

/// The built-in table, checked on [`BUILTIN_TABLE_DATE`]. Only what a source states is here;
/// the gemini-3.x models and the paid tiers of most models are not (Google shows them per
/// project in AI Studio only), so they take their family's defaults and learn their per-day
/// cap from the server. "corpus real-NN" is the error body of that id in
/// `crates/keyturn-gemini/tests/data/gemini-errors/`, which names its URL.
pub const BUILTIN_MODELS: &[BuiltinModel] = &[
    // Tier 3 has no published per-day limit.
    BuiltinModel {
        name: "gemini-2.5-flash",
        free: partial(None, Some(250_000), Some(20)),
        tier1: Some(ModelLimits::new(1_000, 1_000_000, 10_000)),
        tier2: Some(ModelLimits::new(2_000, 3_000_000, 100_000)),
        tier3: partial(Some(10_000), Some(8_000_000), None),
        sources: &[
            src("free RPD 20 since 2025-12-06", QUASA),
            corpus("free TPM: corpus real-02"),
            src(
                "tiers 1-3, as Google staff published them",
                "https://discuss.ai.google.dev/t/reached-the-rate-limit-again/104465",
            ),
            src(
                "tier 2 TPM, the server's own quotaValue",
                "https://discuss.ai.google.dev/t/incorrect-tiers-rate-limits-being-applied/97746",
            ),
            corpus("tier 1 TPM: corpus real-12"),
        ],
    },
    BuiltinModel {
        name: "gemini-2.5-flash-lite",
        free: partial(None, None, Some(20)),
        tier1: None,
        tier2: None,
        tier3: None,
        sources: &[corpus("free RPD 20, as the server says it: corpus real-00")],
    },
    BuiltinModel {
        name: "gemini-2.5-pro",
        free: NO_FREE_TIER,
        tier1: partial(None, None, Some(10_000)),
        tier2: None,
        tier3: None,
        sources: &[
            corpus("no free tier since December 2025, limit 0 on every quota: corpus real-06"),
            src("tier 1 RPD", QUASA),
        ],
    },
    BuiltinModel {
        name: "gemini-2.0-flash",
        free: NO_FREE_TIER,
        tier1: None,
        tier2: None,
        tier3: None,
        sources: &[corpus("no free tier, limit 0: corpus real-05")],
    },
    BuiltinModel {
        name: "gemini-embedding-2",
        free: partial(Some(100), None, None),
        tier1: None,
        tier2: None,
        tier3: None,
        sources: &[corpus(
            "free RPM 100, the server's EmbedContentRequestsPerMinutePerUserPerProjectPerModel-FreeTier quotaValue: corpus real-14",
        )],
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
    /// Input tokens per day.
    #[serde(default)]
    pub tpd: Option<u64>,
}

impl LimitOverride {
    fn validate(&self, what: &str) -> Result<(), LimitError> {
        for (field, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("rpd", self.rpd),
            ("tpd", self.tpd),
        ] {
            if v == Some(0) {
                return Err(LimitError::ZeroLimit {
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
    /// The built-in table's entry for the project's tier ([`BUILTIN_TABLE_DATE`]).
    Builtin,
    /// Configuration overrode it.
    Configured,
    /// Written by older versions for a model missing from the table; read as
    /// [`LimitSource::Family`].
    Default,
    /// The table has no entry for the model on the project's tier: its family's per-minute
    /// defaults for the tier ([`ModelFamily::defaults`]), no per-day cap until the server
    /// reports one.
    Family,
}

/// Resolves a (project, model) to its configured limits: built-in table for the project's tier,
/// then per-model overrides, then per-project-and-model overrides.
#[derive(Debug, Clone, Default)]
pub struct LimitTable {
    default_tier: Tier,
    tiers: HashMap<String, Tier>,
    models: HashMap<String, LimitOverride>,
    projects: HashMap<(String, String), LimitOverride>,
    unknown: Option<LimitOverride>,
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
    pub fn set_model(&mut self, model: &str, o: LimitOverride) -> Result<&mut Self, LimitError> {
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
    ) -> Result<&mut Self, LimitError> {
        o.validate(&format!("projects.\"{project}\".models.\"{model}\""))?;
        let k = (project.to_owned(), normalize_model(model).to_owned());
        let merged = merge(self.projects.get(&k), o);
        self.projects.insert(k, merged);
        Ok(self)
    }

    /// Overrides, field by field, the family defaults a model with no built-in entry for its
    /// project's tier gets (`[limits] unknown_model`). Zero is refused.
    pub fn set_unknown_default(&mut self, o: LimitOverride) -> Result<&mut Self, LimitError> {
        o.validate("limits.unknown_model")?;
        self.unknown = Some(o);
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

    /// The configured limits of (project, model) and where they came from: the built-in
    /// entry for the project's tier (fields it leaves open take the family default, except the
    /// per-day cap), else the `[limits] unknown_model` limits if configured, else the family
    /// default; then per-model and per-project-and-model overrides.
    pub fn resolve(&self, project: &str, model: &str) -> (ModelLimits, LimitSource) {
        let model = normalize_model(model);
        let tier = self.tier(project);
        let family = ModelFamily::of(model).defaults(tier);
        let entry = BUILTIN_MODELS
            .iter()
            .find(|b| b.name == model)
            .and_then(|b| b.for_tier(tier));
        let (mut limits, mut source) = match (entry, &self.unknown) {
            (Some(e), _) => (
                ModelLimits {
                    rpm: e.rpm.or(family.rpm),
                    tpm: e.tpm.or(family.tpm),
                    rpd: e.rpd,
                    tpd: None,
                },
                LimitSource::Builtin,
            ),
            (None, Some(u)) => (family.with(u), LimitSource::Configured),
            (None, None) => (family, LimitSource::Family),
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
            tpd: new.tpd.or(o.tpd),
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
                tpd: None,
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
    fn each_tier_takes_its_column_of_the_table() {
        let mut t = LimitTable::builtin();
        t.set_project_tier("t1", Tier::Tier1)
            .set_project_tier("t2", Tier::Tier2)
            .set_project_tier("t3", Tier::Tier3);
        let flash = "gemini-2.5-flash";
        assert_eq!(
            t.resolve("free", flash),
            (
                ModelLimits {
                    rpm: Some(5),
                    tpm: Some(250_000),
                    rpd: Some(20),
                    tpd: None,
                },
                LimitSource::Builtin
            ),
            "a field the source leaves open takes the family default"
        );
        assert_eq!(
            t.resolve("t1", flash).0,
            ModelLimits::new(1_000, 1_000_000, 10_000)
        );
        assert_eq!(
            t.resolve("t2", flash).0,
            ModelLimits::new(2_000, 3_000_000, 100_000)
        );
        assert_eq!(
            t.resolve("t3", flash).0.rpd,
            None,
            "no published per-day limit: no cap"
        );
        assert!(t.resolve("free", "gemini-2.5-pro").0.is_off());
        assert!(t.resolve("free", "models/gemini-2.0-flash").0.is_off());
        assert!(!t.resolve("t1", "gemini-2.5-pro").0.is_off());
    }

    #[test]
    fn a_model_with_no_entry_gets_its_family_and_no_daily_cap() {
        let mut t = LimitTable::builtin();
        t.set_project_tier("paid", Tier::Tier1);
        // The defect: 20 requests a day for a Tier 1 project on a new model.
        assert_eq!(
            t.resolve("paid", "gemini-3.1-pro-preview"),
            (
                ModelLimits {
                    rpm: Some(1_000),
                    tpm: Some(1_000_000),
                    rpd: None,
                    tpd: None,
                },
                LimitSource::Family
            )
        );
        assert_eq!(
            t.resolve("free", "gemini-3.1-pro-preview").0,
            ModelLimits {
                rpm: Some(5),
                tpm: Some(250_000),
                rpd: None,
                tpd: None,
            }
        );
        // A model in the table but not for this tier: the same rule.
        assert_eq!(
            t.resolve("paid", "gemini-2.0-flash"),
            (
                ModelFamily::Flash.defaults(Tier::Tier1),
                LimitSource::Family
            )
        );
        assert_eq!(
            t.resolve("free", "gemini-embedding-007").0,
            ModelLimits {
                rpm: Some(100),
                tpm: None,
                rpd: None,
                tpd: None,
            }
        );
    }

    #[test]
    fn unknown_model_setting_overrides_the_family_field_by_field() {
        let mut t = LimitTable::builtin();
        t.set_project_tier("paid", Tier::Tier2);
        t.set_unknown_default(LimitOverride {
            rpd: Some(500),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            t.resolve("paid", "gemini-9-flash"),
            (
                ModelLimits::new(2_000, 3_000_000, 500),
                LimitSource::Configured
            )
        );
        let err = t
            .set_unknown_default(LimitOverride {
                rpm: Some(0),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("unknown_model"), "{err}");
    }

    #[test]
    fn families_come_from_the_words_of_the_name() {
        for (name, family) in [
            ("gemini-3.1-pro-preview", ModelFamily::Pro),
            ("models/gemini-3-flash-preview", ModelFamily::Flash),
            ("gemini-2.5-flash-lite", ModelFamily::Flash),
            ("gemini-embedding-2", ModelFamily::Embedding),
            ("text-embedding-004", ModelFamily::Embedding),
            ("gemma-3-27b-it", ModelFamily::Other),
            ("gemini-proto-flashy", ModelFamily::Other),
            ("", ModelFamily::Other),
        ] {
            assert_eq!(ModelFamily::of(name), family, "{name}");
        }
    }

    #[test]
    fn tiers_read_and_older_sources_load() {
        #[derive(Deserialize)]
        struct T {
            tier: Tier,
        }
        for (text, tier) in [
            ("free", Tier::Free),
            ("tier1", Tier::Tier1),
            ("tier2", Tier::Tier2),
            ("tier3", Tier::Tier3),
        ] {
            let t: T = serde_json::from_str(&format!("{{\"tier\":\"{text}\"}}")).unwrap();
            assert_eq!(t.tier, tier);
            assert_eq!(tier.name(), text);
        }
        assert!(serde_json::from_str::<T>("{\"tier\":\"tier4\"}").is_err());
        let old: LimitSource = serde_json::from_str("\"default\"").unwrap();
        assert_eq!(old, LimitSource::Default);
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
            tpd: None,
        };
        let b = ModelLimits {
            rpm: None,
            tpm: Some(7),
            rpd: Some(9),
            tpd: None,
        };
        assert_eq!(a.min(b), ModelLimits::new(10, 7, 5));
    }
}
