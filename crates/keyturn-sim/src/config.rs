//! The simulator's configuration: keys with their project and state, limits per model and per
//! project, faults, and where to listen. Read from TOML or JSON; flags override.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What the simulated service thinks of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// Works.
    #[default]
    Valid,
    /// 400 INVALID_ARGUMENT, `API_KEY_INVALID`.
    Invalid,
    /// 400 INVALID_ARGUMENT, `API_KEY_INVALID`, "API key expired".
    Expired,
    /// 403 PERMISSION_DENIED, reported as leaked.
    Leaked,
    /// 403 PERMISSION_DENIED, `CONSUMER_SUSPENDED`.
    Suspended,
    /// 403 PERMISSION_DENIED, `SERVICE_DISABLED`.
    ServiceDisabled,
    /// 403 PERMISSION_DENIED, `API_KEY_SERVICE_BLOCKED`.
    Blocked,
}

/// One key the simulator knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimKey {
    /// The (made-up) key.
    pub key: String,
    /// A name for stats.
    #[serde(default)]
    pub label: Option<String>,
    /// The project whose quota it draws on; by default its own.
    #[serde(default)]
    pub project: Option<String>,
    /// Its state.
    #[serde(default)]
    pub state: KeyState,
}

/// Limits of one model. A missing field is unlimited; `0` means the project has no access
/// (the refusal carries `limit: 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Input tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests per day.
    #[serde(default)]
    pub rpd: Option<u64>,
}

impl Limits {
    /// All three.
    pub const fn new(rpm: u64, tpm: u64, rpd: u64) -> Self {
        Self {
            rpm: Some(rpm),
            tpm: Some(tpm),
            rpd: Some(rpd),
        }
    }

    fn over(self, base: Self) -> Self {
        Self {
            rpm: self.rpm.or(base.rpm),
            tpm: self.tpm.or(base.tpm),
            rpd: self.rpd.or(base.rpd),
        }
    }

    /// Whether some limit is zero.
    pub fn is_zero(&self) -> bool {
        self.rpm == Some(0) || self.tpm == Some(0) || self.rpd == Some(0)
    }
}

/// Per-project overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Limits per model for this project.
    #[serde(default)]
    pub models: BTreeMap<String, Limits>,
}

/// Injected faults. Probabilities are per request, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// 500 INTERNAL.
    pub p500: f64,
    /// 503 UNAVAILABLE ("The model is overloaded").
    pub p503: f64,
    /// 504 DEADLINE_EXCEEDED.
    pub p504: f64,
    /// A 429 with no details at all.
    pub p429_bare: f64,
    /// The connection is dropped without a complete response.
    pub p_drop: f64,
    /// A 200 whose body is cut off mid-JSON.
    pub p_malformed: f64,
    /// Added latency per request (ms).
    pub latency_ms: u64,
    /// Up to this much more, uniformly (ms).
    pub jitter_ms: u64,
    /// Pause between streamed chunks (ms).
    pub stream_chunk_delay_ms: u64,
    /// The retryDelay per-day refusals carry (default: until the next minute, like the real
    /// service); set 0 to reproduce `retryDelay: "0s"`.
    pub per_day_retry_delay_ms: Option<u64>,
}

impl Faults {
    /// Checks probabilities are in [0, 1].
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, p) in [
            ("p500", self.p500),
            ("p503", self.p503),
            ("p504", self.p504),
            ("p429_bare", self.p429_bare),
            ("p_drop", self.p_drop),
            ("p_malformed", self.p_malformed),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(ConfigError::Invalid(format!(
                    "faults.{name} = {p}: a probability is between 0 and 1"
                )));
            }
        }
        let total =
            self.p500 + self.p503 + self.p504 + self.p429_bare + self.p_drop + self.p_malformed;
        if total > 1.0 {
            return Err(ConfigError::Invalid(format!(
                "fault probabilities add up to {total}, more than 1"
            )));
        }
        Ok(())
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Address to bind (loopback by default).
    pub bind: IpAddr,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// Known keys. With none, any key is accepted as valid and is its own project.
    pub keys: Vec<SimKey>,
    /// Limits per model (over the built-in defaults).
    pub models: BTreeMap<String, Limits>,
    /// Per-project limits.
    pub projects: BTreeMap<String, ProjectConfig>,
    /// Faults.
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            keys: Vec::new(),
            models: BTreeMap::new(),
            projects: BTreeMap::new(),
            faults: Faults::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read simulator config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("simulator config {path}: {detail}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// A value is out of range.
    #[error("simulator config: {0}")]
    Invalid(String),
}

/// A model the simulator serves, with its defaults.
#[derive(Debug, Clone, Copy)]
pub struct ServedModel {
    /// Id.
    pub name: &'static str,
    /// Embedding model (serves embedContent, not generateContent).
    pub embedding: bool,
    /// Default limits (the free tier as published in late 2025).
    pub limits: Limits,
    /// Input token limit advertised by `GET models`.
    pub input_token_limit: u64,
    /// Output token limit advertised.
    pub output_token_limit: u64,
    /// Whether it reports thinking tokens.
    pub thinking: bool,
}

/// Models the simulator serves by default.
pub const SERVED_MODELS: &[ServedModel] = &[
    ServedModel {
        name: "gemini-3-pro-preview",
        embedding: false,
        limits: Limits::new(0, 0, 0),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: true,
    },
    ServedModel {
        name: "gemini-3-flash-preview",
        embedding: false,
        limits: Limits::new(5, 250_000, 20),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: true,
    },
    ServedModel {
        name: "gemini-2.5-pro",
        embedding: false,
        limits: Limits::new(2, 125_000, 50),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: true,
    },
    ServedModel {
        name: "gemini-2.5-flash",
        embedding: false,
        limits: Limits::new(5, 250_000, 20),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: true,
    },
    ServedModel {
        name: "gemini-2.5-flash-lite",
        embedding: false,
        limits: Limits::new(10, 250_000, 20),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: false,
    },
    ServedModel {
        name: "gemini-2.0-flash",
        embedding: false,
        limits: Limits::new(15, 1_000_000, 200),
        input_token_limit: 1_048_576,
        output_token_limit: 8_192,
        thinking: false,
    },
    ServedModel {
        name: "gemini-2.0-flash-lite",
        embedding: false,
        limits: Limits::new(30, 1_000_000, 200),
        input_token_limit: 1_048_576,
        output_token_limit: 8_192,
        thinking: false,
    },
    ServedModel {
        name: "gemini-embedding-001",
        embedding: true,
        limits: Limits::new(100, 30_000, 1_000),
        input_token_limit: 2_048,
        output_token_limit: 1,
        thinking: false,
    },
];

impl SimConfig {
    /// Reads a TOML (`.toml`) or JSON (anything else) file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let cfg: Self = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: shown,
                detail: e.to_string(),
            })?
        } else {
            serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
                path: shown,
                detail: e.to_string(),
            })?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.faults.validate()?;
        let mut seen = std::collections::HashSet::new();
        for k in &self.keys {
            if k.key.trim().is_empty() {
                return Err(ConfigError::Invalid("a key is empty".into()));
            }
            if !seen.insert(k.key.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "key {} is listed twice",
                    k.label.as_deref().unwrap_or("(unlabelled)")
                )));
            }
        }
        Ok(())
    }

    /// The served model by name, or one added by configuration.
    pub fn served(&self, model: &str) -> Option<ServedModel> {
        SERVED_MODELS
            .iter()
            .find(|m| m.name == model)
            .copied()
            .or_else(|| {
                self.models.get(model).map(|l| ServedModel {
                    name: "",
                    embedding: model.contains("embedding"),
                    limits: *l,
                    input_token_limit: 1_048_576,
                    output_token_limit: 8_192,
                    thinking: false,
                })
            })
    }

    /// Limits in force for (project, model).
    pub fn limits(&self, project: &str, model: &str) -> Limits {
        let base = self.served(model).map(|m| m.limits).unwrap_or_default();
        let mut l = self
            .models
            .get(model)
            .copied()
            .unwrap_or_default()
            .over(base);
        if let Some(p) = self.projects.get(project).and_then(|p| p.models.get(model)) {
            l = p.over(l);
        }
        l
    }
}
