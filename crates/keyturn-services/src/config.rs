//! `keyturn.toml` and the environment. Precedence, highest first: flags ([`Overrides`]),
//! environment, the file, defaults. Unknown fields and bad values are errors that name the field
//! and the file; nothing is silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyturn_core::serde_duration;
use keyturn_core::{BreakerConfig, LimitOverride, LimitTable, Policy, Tier};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The environment keyturn reads, injectable so tests never touch the process's own.
pub type Env = BTreeMap<String, String>;

/// The process environment (only the binary calls this).
pub fn process_env() -> Env {
    std::env::vars().collect()
}

/// Which state backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `FileStore` in `state.dir`: one process.
    #[default]
    File,
    /// `RedisLedger` at `state.redis_url`: many processes.
    Redis,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `file` or `redis`.
    pub backend: Backend,
    /// Folder of the file backend.
    pub dir: PathBuf,
    /// Redis URL.
    pub redis_url: String,
    /// Namespace in Redis (several pipelines can share one Redis).
    pub namespace: String,
    /// File backend: at most one write per interval.
    #[serde(with = "serde_duration")]
    pub flush_interval: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: Backend::File,
            dir: PathBuf::from(".keyturn"),
            redis_url: "redis://127.0.0.1:6379".into(),
            namespace: "default".into(),
            flush_interval: Duration::from_secs(1),
        }
    }
}

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
}

impl Default for RotationConfig {
    fn default() -> Self {
        let d = keyturn_core::RotationSettings::default();
        Self {
            policy: d.policy,
            max_wait: d.max_wait,
            default_throttle_cooldown: d.default_throttle_cooldown,
        }
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

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Base URL without version (`GEMINI_BASE_URL`).
    pub base_url: String,
    /// `v1beta` or `v1`.
    pub api_version: String,
    /// Connect timeout.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Request timeout.
    #[serde(with = "serde_duration")]
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = keyturn_gemini::TransportConfig::default();
        Self {
            base_url: d.base_url,
            api_version: d.api_version,
            connect_timeout: d.connect_timeout,
            request_timeout: d.request_timeout,
        }
    }
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Whether LLM answers are cached.
    pub enabled: bool,
    /// How long an answer stays.
    #[serde(with = "serde_duration")]
    pub ttl: Duration,
    /// Most answers in memory.
    pub max_entries: u64,
    /// Also keep answers on disk, in `<state.dir>/cache`.
    pub disk: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        let d = keyturn_llm::CacheConfig::default();
        Self {
            enabled: true,
            ttl: d.ttl,
            max_entries: d.max_entries,
            disk: false,
        }
    }
}

/// `[embeddings]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingsSettings {
    /// Items per batch (at most 100).
    pub batch_size: usize,
    /// Batches in flight.
    pub concurrency: usize,
}

impl Default for EmbeddingsSettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            concurrency: 4,
        }
    }
}

/// A client token of the proxy: only its SHA-256 is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeToken {
    /// Who holds it.
    pub label: String,
    /// SHA-256 of the token, 64 hex digits (`keyturn serve token new` prints it).
    pub sha256: String,
}

/// `[serve]`: the rotating proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSettings {
    /// Where to listen.
    pub listen: String,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Upstream calls in flight at once (a stream counts until it ends); more wait.
    pub max_in_flight: usize,
    /// Client connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open.
    #[serde(with = "serde_duration")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, and to take an answer it has left
    /// untaken.
    #[serde(with = "serde_duration")]
    pub body_timeout: Duration,
    /// Client tokens (`[[serve.tokens]]`). Required to listen beyond loopback.
    pub tokens: Vec<ServeToken>,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 20 * 1024 * 1024,
            max_in_flight: 64,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            tokens: Vec::new(),
        }
    }
}

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
            check_interval: Duration::from_secs(1),
            queue: 256,
            max_attempts: 5,
            timeout: Duration::from_secs(5),
        }
    }
}

/// `[metrics]`: the Prometheus exporter (off unless an address is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where to serve `/metrics` (`--metrics-addr` overrides).
    pub addr: Option<std::net::SocketAddr>,
}

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
    /// Refused: keys are never written in the config file.
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[state]`.
    pub state: StateConfig,
    /// `[rotation]`.
    pub rotation: RotationConfig,
    /// `[breaker]`.
    pub breaker: BreakerConfig,
    /// `[retry]`.
    pub retry: RetryConfig,
    /// `[http]`.
    pub http: HttpConfig,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// `[embeddings]`.
    pub embeddings: EmbeddingsSettings,
    /// `[limits]`.
    pub limits: LimitsSettings,
    /// `[models."name"]`.
    pub models: BTreeMap<String, LimitOverride>,
    /// `[projects."id"]`.
    pub projects: BTreeMap<String, ProjectSettings>,
    /// `[[keys]]`.
    pub keys: Vec<KeyEntryConfig>,
    /// `[serve]`.
    pub serve: ServeSettings,
    /// `[notify]`.
    pub notify: NotifySettings,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
    /// Where the file came from (not a TOML field).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Command-line flags that override everything else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--redis-url` (selects the Redis backend).
    pub redis_url: Option<String>,
    /// `--base-url`.
    pub base_url: Option<String>,
    /// `--policy`.
    pub policy: Option<Policy>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--metrics-addr`.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Config {
    /// Parses TOML text; `path` names the file in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        cfg.source = Some(path.to_owned());
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        Self::from_toml(&text, path)
    }

    /// The configuration in force: the file (from `config_path`, else `KEYTURN_CONFIG`, else
    /// `./keyturn.toml` if present), then the environment, then flags.
    pub fn load(
        config_path: Option<&Path>,
        env: &Env,
        cwd: &Path,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let path = config_path
            .map(Path::to_owned)
            .or_else(|| env.get("KEYTURN_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let p = cwd.join("keyturn.toml");
                p.exists().then_some(p)
            });
        let mut cfg = match path {
            Some(p) => Self::from_file(&resolve(cwd, &p))?,
            None => Self::default(),
        };
        cfg.apply_env(env);
        cfg.apply_overrides(overrides);
        if cfg.state.dir.is_relative() {
            cfg.state.dir = cwd.join(&cfg.state.dir);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Environment over file.
    pub fn apply_env(&mut self, env: &Env) {
        if let Some(d) = env.get("KEYTURN_STATE_DIR").filter(|v| !v.is_empty()) {
            self.state.dir = PathBuf::from(d);
        }
        if let Some(u) = env.get("KEYTURN_REDIS_URL").filter(|v| !v.is_empty()) {
            self.state.redis_url = u.clone();
            self.state.backend = Backend::Redis;
        }
        if let Some(u) = env.get("GEMINI_BASE_URL").filter(|v| !v.is_empty()) {
            self.http.base_url = u.clone();
        }
    }

    /// Flags over everything.
    pub fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(d) = &o.state_dir {
            self.state.dir = d.clone();
        }
        if let Some(u) = &o.redis_url {
            self.state.redis_url = u.clone();
            self.state.backend = Backend::Redis;
        }
        if let Some(u) = &o.base_url {
            self.http.base_url = u.clone();
        }
        if let Some(p) = o.policy {
            self.rotation.policy = p;
        }
        if o.no_cache {
            self.cache.enabled = false;
        }
        if let Some(a) = o.metrics_addr {
            self.metrics.addr = Some(a);
        }
    }

    fn file_name(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| PathBuf::from("(configuration)"))
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, detail: String| ConfigError::Invalid {
            path: self.file_name(),
            field: field.to_owned(),
            detail,
        };
        for (i, k) in self.keys.iter().enumerate() {
            let field = format!("keys[{i}]");
            if k.key.is_some() {
                return Err(bad(
                    &format!("{field}.key"),
                    "keys are never written in keyturn.toml; put the key in an environment variable (env = \"NAME\") or a file (file = \"path\")".into(),
                ));
            }
            match (&k.env, &k.file) {
                (Some(_), Some(_)) => {
                    return Err(bad(&field, "give either env or file, not both".into()));
                }
                (None, None) => {
                    return Err(bad(
                        &field,
                        "needs env = \"NAME\" or file = \"path\"".into(),
                    ));
                }
                _ => {}
            }
            if k.weight == Some(0) {
                return Err(bad(&format!("{field}.weight"), "weights start at 1".into()));
            }
        }
        if !(1..=keyturn_embeddings::MAX_BATCH).contains(&self.embeddings.batch_size) {
            return Err(bad(
                "embeddings.batch_size",
                format!("{} is not between 1 and 100", self.embeddings.batch_size),
            ));
        }
        if self.embeddings.concurrency == 0 {
            return Err(bad("embeddings.concurrency", "must be at least 1".into()));
        }
        if let Some(u) = &self.notify.webhook_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(bad(
                "notify.webhook_url",
                "must be an http:// or https:// URL".into(),
            ));
        }
        if let Some(t) = self
            .notify
            .thresholds
            .iter()
            .find(|t| **t == 0 || **t > 100)
        {
            return Err(bad(
                "notify.thresholds",
                format!("{t} is not a percentage between 1 and 100"),
            ));
        }
        if self.notify.queue == 0 || self.notify.max_attempts == 0 {
            return Err(bad(
                "notify",
                "queue and max_attempts must be at least 1".into(),
            ));
        }
        if self.notify.check_interval < Duration::from_millis(50) {
            return Err(bad("notify.check_interval", "must be at least 50ms".into()));
        }
        if self.retry.max_attempts == 0 {
            return Err(bad("retry.max_attempts", "must be at least 1".into()));
        }
        if self.breaker.failure_threshold == 0 {
            return Err(bad(
                "breaker.failure_threshold",
                "must be at least 1".into(),
            ));
        }
        if self.state.namespace.is_empty() || self.state.namespace.contains(char::is_whitespace) {
            return Err(bad("state.namespace", "must be a non-empty word".into()));
        }
        for (i, t) in self.serve.tokens.iter().enumerate() {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(
                    &format!("serve.tokens[{i}].sha256"),
                    "must be 64 hex digits (the SHA-256 that `keyturn serve token new` prints); never the token itself".into(),
                ));
            }
        }
        if self.serve.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "serve.listen",
                format!(
                    "'{}' is not an address like 127.0.0.1:8080",
                    self.serve.listen
                ),
            ));
        }
        if self.serve.max_connections == 0 {
            return Err(bad("serve.max_connections", "must be at least 1".into()));
        }
        if self.serve.header_timeout.is_zero() {
            return Err(bad("serve.header_timeout", "must be more than 0s".into()));
        }
        if self.serve.body_timeout.is_zero() {
            return Err(bad("serve.body_timeout", "must be more than 0s".into()));
        }
        if self.serve.max_in_flight == 0 {
            return Err(bad("serve.max_in_flight", "must be at least 1".into()));
        }
        if self.http.base_url.is_empty() || !self.http.base_url.contains("://") {
            return Err(bad(
                "http.base_url",
                format!("'{}' is not a URL", self.http.base_url),
            ));
        }
        self.limit_table()?;
        Ok(())
    }

    /// The limit table this configuration describes.
    pub fn limit_table(&self) -> Result<LimitTable, ConfigError> {
        let mut t = LimitTable::builtin();
        t.set_default_tier(self.limits.tier);
        let path = self.file_name();
        let wrap = |e: keyturn_core::ConfigError| ConfigError::Limits {
            path: path.clone(),
            detail: e.to_string(),
        };
        if let Some(u) = self.limits.unknown_model {
            let base = keyturn_core::ModelLimits::CONSERVATIVE.with(&u);
            t.set_unknown_default(base).map_err(wrap)?;
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

fn resolve(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        cwd.join(p)
    } else {
        p.to_owned()
    }
}
