//! `[[keys]]`, `[projects."id"]` and `[limits]`: the pool (where each key is, never the key
//! itself) and the limit table it runs under.

use std::collections::BTreeMap;
use std::path::PathBuf;

use keyturn_core::{LimitOverride, LimitTable, Tier};
use serde::{Deserialize, Serialize};

use super::{Config, ProxyUrl};
use crate::error::ConfigError;

/// `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Tier of projects not named in `[projects]`.
    pub tier: Tier,
    /// Limits for models not in the built-in table.
    pub unknown_model: Option<LimitOverride>,
}

/// `[projects."id"]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectSettings {
    /// The project's tier.
    pub tier: Option<Tier>,
    /// Per-model limits for this project.
    pub models: BTreeMap<String, LimitOverride>,
}

/// `[[keys]]`: where a key is, never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntryConfig {
    /// An environment variable holding the key.
    #[serde(default)]
    pub env: Option<String>,
    /// A file holding the key (or a keys file: one key per line).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Label.
    #[serde(default)]
    pub label: Option<String>,
    /// Project.
    #[serde(default)]
    pub project: Option<String>,
    /// Weight for the weighted policy.
    #[serde(default)]
    pub weight: Option<u32>,
    /// The egress route this entry's keys leave through: `http://`, `https://`, `socks5://` or
    /// `socks5h://` `[user:password@]host:port` (over `[http] proxy`). Its credentials are
    /// secrets: never logged or shown.
    #[serde(default, skip_serializing)]
    pub proxy: Option<ProxyUrl>,
    /// Refused: keys are never written in the config file.
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
}

impl Config {
    /// The limit table this configuration describes.
    pub fn limit_table(&self) -> Result<LimitTable, ConfigError> {
        let mut t = LimitTable::builtin();
        t.set_default_tier(self.limits.tier);
        let path = self.file_name();
        let wrap = |e: keyturn_core::LimitError| ConfigError::Limits {
            path: path.clone(),
            detail: e.to_string(),
        };
        if let Some(u) = self.limits.unknown_model {
            t.set_unknown_default(u).map_err(wrap)?;
        }
        for (m, o) in &self.models {
            t.set_model(m, *o).map_err(wrap)?;
        }
        for (p, ps) in &self.projects {
            if let Some(tier) = ps.tier {
                t.set_project_tier(p.clone(), tier);
            }
            for (m, o) in &ps.models {
                t.set_project_model(p, m, *o).map_err(wrap)?;
            }
        }
        Ok(t)
    }
}
