//! The simulator's configuration: keys with their project and state, limits per model and per
//! project, faults, and where to listen. Read from TOML or JSON; flags override.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod models;
mod route;

pub use self::models::{SERVED_MODELS, ServedModel};
pub use self::route::Route;
use crate::resources::shown;

/// What the simulated service thinks of a key. Every state but `Valid` is refused on every route,
/// `GET models…` included, as the real service refuses a dead key's cost-free probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyState {
    /// Works.
    #[default]
    Valid,
    /// 400 INVALID_ARGUMENT, `API_KEY_INVALID` (corpus `real-17`).
    Invalid,
    /// 400 INVALID_ARGUMENT, `API_KEY_INVALID`, "API Key not found" (deleted; `real-18`).
    Deleted,
    /// 400 INVALID_ARGUMENT, `API_KEY_INVALID`, "API key expired".
    Expired,
    /// 403 PERMISSION_DENIED with no details, reported as leaked (`real-24`).
    Leaked,
    /// 403 PERMISSION_DENIED, `CONSUMER_SUSPENDED`. Like the real service, the message quotes the
    /// key itself, so tests can prove a client never logs server messages verbatim.
    Suspended,
    /// 403 PERMISSION_DENIED, `SERVICE_DISABLED` (`real-26`), for this key only; a project's
    /// `state = "service-disabled"` refuses every key of the project, as the real service does.
    ServiceDisabled,
    /// 403 PERMISSION_DENIED, `API_KEY_SERVICE_BLOCKED` (the key is restricted to other APIs).
    Blocked,
    /// 403 PERMISSION_DENIED, `API_KEY_IP_ADDRESS_BLOCKED` (`real-28`).
    IpBlocked,
    /// 403 PERMISSION_DENIED, `API_KEY_HTTP_REFERRER_BLOCKED` (`real-29`).
    ReferrerBlocked,
    /// 401 UNAUTHENTICATED, `CREDENTIALS_MISSING`: a key bound to Vertex AI (`real-35`).
    CredentialsMissing,
}

/// What the simulated service thinks of a project: states that hold for every key of it, until
/// changed (`[projects."p"] state`, `PUT /admin/projects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectState {
    /// Serves.
    #[default]
    Active,
    /// 402: prepayment credits depleted (`real-16`) on every call that spends quota; `GET
    /// models…` and `countTokens` still answer.
    CreditsDepleted,
    /// 403 `SERVICE_DISABLED` (`real-26`) for every key of the project on every route.
    ServiceDisabled,
    /// 403 with no details: "restricted from your billing country" (`real-30`), for every key
    /// on every route.
    BillingDenied,
    /// The older Cloud-quota 429 with a zero whole-API quota (`api-limit-zero`, built on
    /// `real-10`), for every key on every route (the quota counts every API request).
    ApiLimitZero,
}

/// "Answer with this corpus shape": for the requests that match every filter given, for the
/// next `times` of them, or always. Scripts are tried in order; the first that matches answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptRule {
    /// A corpus id (`real-26`) or `api-limit-zero`.
    pub shape: String,
    /// Only requests with the key of this label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Only requests with a key of this project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Only requests naming this model (`GET models`, which names none, never matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Only this route. Without it, the shape goes where the real service sends it: a key or
    /// project refusal on every route, probes included; anything else only on calls that
    /// spend quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Route>,
    /// For this many matching requests, then the script is spent; without it, always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
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
    /// The project's state, for every key of it.
    #[serde(default)]
    pub state: ProjectState,
    /// Models off for this project, each answered with the corpus shape named (`real-34`'s bare
    /// 403, `real-05`'s limit 0, `real-20`'s FAILED_PRECONDITION, `real-10`'s older limit 0…)
    /// on calls; `GET models…` still answers for them, as the real service's does.
    #[serde(default)]
    pub models_off: BTreeMap<String, String>,
    /// Files this project created (`files/abc123` or `abc123`). A request naming a
    /// `fileData.fileUri` that another project created, or one containing `other-project`, is
    /// refused with `real-32`'s bare 403; other file URIs are accepted.
    #[serde(default)]
    pub files: Vec<String>,
    /// The project's billing tier. Batch Mode is refused on the free tier with `real-22`'s
    /// FAILED_PRECONDITION, as the real service refuses it.
    #[serde(default)]
    pub tier: Tier,
}

/// A project's billing tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// No billing account: the default, like the built-in limits (free tier).
    #[default]
    Free,
    /// Billing enabled (Tier 1 and up): Batch Mode is served.
    Paid,
}

/// Limits and timings of the project-owned resources: files, cached contents, batches. The
/// defaults are Google's documented ones (ai.google.dev/gemini-api/docs/files, /caching,
/// /batch-mode, /rate-limits, December 2025); tests shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceConfig {
    /// Largest file (Google: 2 GB).
    pub max_file_bytes: u64,
    /// Storage per project (Google: 20 GB, quotaId `FileStorageBytesPerProject`).
    pub project_storage_bytes: u64,
    /// Bytes of a file the simulator keeps to read back (batch input files, downloads); larger
    /// files are counted and hashed as they stream in, never held. Also the cap of a multipart
    /// upload, whose body is parsed whole.
    pub kept_file_bytes: u64,
    /// Bytes of all files the simulator keeps at once; past it, new files are counted and
    /// hashed only (their content cannot be read back).
    pub kept_total_bytes: u64,
    /// How long a file lives (Google: 48 h).
    pub file_ttl_secs: u64,
    /// How long a batch stays BATCH_STATE_PENDING, in simulated seconds.
    pub batch_pending_secs: u64,
    /// How long a batch then stays BATCH_STATE_RUNNING. Over 48 h, it expires instead
    /// (BATCH_STATE_EXPIRED), as Google expires batches pending or running for 48 h.
    pub batch_running_secs: u64,
    /// Batches pending or running at once per project (Google: 100).
    pub batch_concurrent: u64,
    /// Input tokens of the batches pending or running per project and model (Google's Tier 1
    /// "enqueued tokens" for gemini-2.5-flash: 3,000,000).
    pub batch_enqueued_tokens: u64,
    /// Every n-th request of a batch gets a per-item error instead of a response (0: none).
    pub batch_item_error_every: u64,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 2 * 1024 * 1024 * 1024,
            project_storage_bytes: 20 * 1024 * 1024 * 1024,
            kept_file_bytes: 32 * 1024 * 1024,
            kept_total_bytes: 256 * 1024 * 1024,
            file_ttl_secs: 48 * 3600,
            batch_pending_secs: 30,
            batch_running_secs: 120,
            batch_concurrent: 100,
            batch_enqueued_tokens: 3_000_000,
            batch_item_error_every: 0,
        }
    }
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
    pub fn validate(&self) -> Result<(), SimConfigError> {
        for (name, p) in [
            ("p500", self.p500),
            ("p503", self.p503),
            ("p504", self.p504),
            ("p429_bare", self.p429_bare),
            ("p_drop", self.p_drop),
            ("p_malformed", self.p_malformed),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(SimConfigError::Invalid(format!(
                    "faults.{name} = {p}: a probability is between 0 and 1"
                )));
            }
        }
        let total =
            self.p500 + self.p503 + self.p504 + self.p429_bare + self.p_drop + self.p_malformed;
        if total > 1.0 {
            return Err(SimConfigError::Invalid(format!(
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
    /// Scripted answers by corpus shape (`[[script]]` in TOML).
    pub script: Vec<ScriptRule>,
    /// Files, cached contents and batches: limits and timings (`[resources]`).
    pub resources: ResourceConfig,
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
            script: Vec::new(),
            resources: ResourceConfig::default(),
        }
    }
}

/// A simulator configuration that cannot be used (the simulator's own; keyturn's configuration
/// errors are keyturn-services' `ConfigError`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimConfigError {
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

impl SimConfig {
    /// Reads a TOML (`.toml`) or JSON (anything else) file.
    pub fn from_file(path: &Path) -> Result<Self, SimConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SimConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let cfg: Self = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| SimConfigError::Parse {
                path: shown,
                detail: e.to_string(),
            })?
        } else {
            serde_json::from_str(&text).map_err(|e| SimConfigError::Parse {
                path: shown,
                detail: e.to_string(),
            })?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        self.faults.validate()?;
        let mut seen = std::collections::HashSet::new();
        for k in &self.keys {
            if k.key.trim().is_empty() {
                return Err(SimConfigError::Invalid("a key is empty".into()));
            }
            if !seen.insert(k.key.as_str()) {
                return Err(SimConfigError::Invalid(format!(
                    "key {} is listed twice",
                    k.label.as_deref().unwrap_or("(unlabelled)")
                )));
            }
        }
        for (name, p) in &self.projects {
            self.check_project(name, p)?;
        }
        for rule in &self.script {
            self.check_script(rule)?;
        }
        Ok(())
    }

    /// Checks one script against this configuration: a known shape, a key label, project and
    /// model that exist (a typo would otherwise never fire), and a count of at least one.
    pub fn check_script(&self, rule: &ScriptRule) -> Result<(), SimConfigError> {
        let bad = |what: String| Err(SimConfigError::Invalid(format!("script: {what}")));
        if crate::corpus::shape(&rule.shape).is_none() {
            return bad(format!(
                "no error shape {:?} (corpus ids real-NN, or {})",
                shown(&rule.shape),
                crate::corpus::API_LIMIT_ZERO
            ));
        }
        if rule.times == Some(0) {
            return bad("times = 0 never answers; leave it out for always".into());
        }
        if let Some(label) = &rule.key
            && !self.keys.is_empty()
            && !self.keys.iter().any(|k| self.label_of(k) == *label)
        {
            return bad(format!("no key labelled {:?}", shown(label)));
        }
        if let Some(p) = &rule.project
            && !self.keys.is_empty()
            && !self.projects.contains_key(p)
            && !self.keys.iter().any(|k| k.project.as_deref() == Some(p))
        {
            return bad(format!("no project {:?}", shown(p)));
        }
        if let Some(m) = &rule.model
            && self.served(m).is_none()
        {
            return bad(format!("model {:?} is not served", shown(m)));
        }
        // Filters that can never hold together would leave a script that never fires.
        if rule.model.is_some() && rule.method == Some(Route::ListModels) {
            return bad(
                "listModels names no model: leave out `model` or pick another method".into(),
            );
        }
        if let (Some(label), Some(p)) = (&rule.key, &rule.project)
            && let Some(k) = self.keys.iter().find(|k| self.label_of(k) == *label)
            && k.project.as_deref().is_some_and(|kp| kp != p)
        {
            return bad(format!(
                "key {:?} is not in project {:?}",
                shown(label),
                shown(p)
            ));
        }
        Ok(())
    }

    fn check_project(&self, name: &str, p: &ProjectConfig) -> Result<(), SimConfigError> {
        for (model, shape) in &p.models_off {
            if crate::corpus::shape(shape).is_none() {
                return Err(SimConfigError::Invalid(format!(
                    "projects.{:?}.models_off: no error shape {:?}",
                    shown(name),
                    shown(shape)
                )));
            }
            if self.served(model).is_none() {
                return Err(SimConfigError::Invalid(format!(
                    "projects.{:?}.models_off: model {:?} is not served",
                    shown(name),
                    shown(model)
                )));
            }
        }
        if p.files.iter().any(|f| file_id(f).is_empty()) {
            return Err(SimConfigError::Invalid(format!(
                "projects.{:?}.files: a file name is empty",
                shown(name)
            )));
        }
        Ok(())
    }

    /// The label stats and scripts know a configured key by.
    pub fn label_of(&self, k: &SimKey) -> String {
        k.label
            .clone()
            .unwrap_or_else(|| crate::state::fingerprint(&k.key))
    }

    /// The project that created a file (by its id, `abc123` of `…/files/abc123`).
    pub fn file_owner(&self, id: &str) -> Option<&str> {
        self.projects
            .iter()
            .find(|(_, p)| p.files.iter().any(|f| file_id(f) == id))
            .map(|(name, _)| name.as_str())
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

/// A file's id: what follows the last `files/` of a name or URI, up to `?` or `#`.
pub fn file_id(uri: &str) -> &str {
    let tail = uri.rsplit_once("files/").map_or(uri, |(_, t)| t);
    tail.split(['?', '#']).next().unwrap_or("").trim()
}
