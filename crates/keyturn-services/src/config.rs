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

mod checks;

use checks::*;

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
    /// The egress route of every key without its own (`[[keys]] proxy`); none: straight out
    /// (or through `HTTPS_PROXY`/`ALL_PROXY`, which reqwest honours).
    #[serde(default, skip_serializing)]
    pub proxy: Option<ProxyUrl>,
}

/// An egress proxy URL as configured. It may hold a password, so `Debug` shows only scheme,
/// host and port (or that it does not parse).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ProxyUrl(String);

impl ProxyUrl {
    /// The URL as written, for the one place that builds the route from it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match keyturn_gemini::EgressRoute::parse(&self.0) {
            Ok(r) => write!(f, "ProxyUrl({r})"),
            Err(_) => f.write_str("ProxyUrl(not a URL)"),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = keyturn_gemini::TransportConfig::default();
        Self {
            base_url: d.base_url,
            api_version: d.api_version,
            connect_timeout: d.connect_timeout,
            request_timeout: d.request_timeout,
            proxy: None,
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

/// How `keyturn seed` sends its extraction requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineMode {
    /// One call per chunk, answers in seconds (default).
    #[default]
    Interactive,
    /// Gemini's Batch Mode: jobs answered within a day, at half the price.
    Batch,
}

/// What batch mode does with an episode whose batch items failed, or when no project can run
/// batch jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchFallbackSetting {
    /// Retry in a later job (default).
    #[default]
    Batch,
    /// Call Gemini interactively for it.
    Interactive,
}

/// `[pipeline]`: how `keyturn seed` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// `"interactive"` or `"batch"` (`--batch`).
    pub mode: PipelineMode,
    /// `"batch"` or `"interactive"` (`--batch-fallback`).
    pub batch_fallback: BatchFallbackSetting,
    /// Most requests (chunks) in one batch job.
    pub batch_max_requests: usize,
    /// First interval between polls of the batch jobs (again after any job changed state).
    #[serde(with = "serde_duration")]
    pub batch_poll: Duration,
    /// Longest interval between polls (the interval doubles while nothing changes).
    #[serde(with = "serde_duration")]
    pub batch_max_poll: Duration,
    /// In batch mode, the chunk and entity embeddings go as batch jobs too
    /// (`asyncBatchEmbedContent`) instead of interactive `batchEmbedContents` calls.
    pub batch_embeddings: bool,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            mode: PipelineMode::Interactive,
            batch_fallback: BatchFallbackSetting::Batch,
            batch_max_requests: 1_000,
            batch_poll: Duration::from_secs(10),
            batch_max_poll: Duration::from_secs(300),
            batch_embeddings: false,
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
    /// Largest file upload (`POST /upload/…/files`), streamed through, never held whole.
    pub max_upload_bytes: u64,
    /// Upstream calls in flight at once (a stream counts until it ends); more wait.
    pub max_in_flight: usize,
    /// Client connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a proxied request may wait for quota (the proxy's bound in place of
    /// `[rotation] max_wait`); past it the client gets 429 with `RetryInfo` at once. SDKs time
    /// out at about 60 s and retry, so a long wait only doubles the load.
    #[serde(with = "serde_duration")]
    pub max_queue_wait: Duration,
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
    /// Admin tokens for the console and the admin API (`[[serve.admin_tokens]]`), never usable
    /// as client tokens nor the other way round. Without any, the console answers only this
    /// machine on loopback and is off beyond it.
    pub admin_tokens: Vec<ServeToken>,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 20 * 1024 * 1024,
            // The Files API's own limit per file.
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            max_in_flight: 64,
            max_connections: 1024,
            max_queue_wait: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            tokens: Vec::new(),
            admin_tokens: Vec::new(),
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
    /// Warn when a whole project is switched off (402 credits depleted, a zero whole-API quota).
    pub project_off: bool,
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
            project_off: true,
            check_interval: Duration::from_secs(1),
            queue: 256,
            max_attempts: 5,
            timeout: Duration::from_secs(5),
        }
    }
}

/// `[recheck]`: bringing disabled keys back when they answer again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecheckSettings {
    /// Re-check disabled keys at all.
    pub enabled: bool,
    /// How long after a key was disabled (or last re-checked) it is asked again, with a request
    /// that costs no quota.
    #[serde(with = "serde_duration")]
    pub interval: Duration,
}

impl Default for RecheckSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(3600),
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
    /// The egress route this entry's keys leave through: `http://`, `https://`, `socks5://` or
    /// `socks5h://` `[user:password@]host:port` (over `[http] proxy`). Its credentials are
    /// secrets: never logged or shown.
    #[serde(default, skip_serializing)]
    pub proxy: Option<ProxyUrl>,
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
    /// `[pipeline]`.
    pub pipeline: PipelineSettings,
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
    /// `[recheck]`.
    pub recheck: RecheckSettings,
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
        Self::from_toml_with(text, path, &Env::new())
    }

    /// [`Config::from_toml`] knowing the environment, so that a key value configured there and
    /// pasted into the file is recognised (and hidden) too.
    pub fn from_toml_with(text: &str, path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let mut secrets = crate::discovery::env_secrets(env, &[]);
        let parsed = (|| {
            // First as plain TOML: a key pasted into any field, known or not, is found by name
            // before serde's messages (which quote values) can show it.
            let table: toml::Table =
                toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
            secrets.extend(crate::discovery::env_secrets(env, &key_env_names(&table)));
            if let Some((field, leaf)) = find_key_shaped(&table, "", &secrets) {
                return Err(key_in_file(path, &field, &leaf));
            }
            let mut cfg: Config = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
            cfg.source = Some(path.to_owned());
            cfg.validate()?;
            Ok(cfg)
        })();
        parsed.map_err(|e: ConfigError| e.scrubbed(&secrets))
    }

    /// Reads a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file_with(path, &Env::new())
    }

    /// [`Config::from_file`] knowing the environment (see [`Config::from_toml_with`]).
    pub fn from_file_with(path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let text = crate::discovery::read_small_file(path).map_err(|e| e.scrubbed(&[]))?;
        Self::from_toml_with(&text, path, env)
    }

    /// The configuration in force: the file (from `config_path`, else `KEYTURN_CONFIG`, else
    /// `./keyturn.toml` if present), then the environment, then flags.
    pub fn load(
        config_path: Option<&Path>,
        env: &Env,
        cwd: &Path,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let from_env = env.get("KEYTURN_CONFIG").filter(|v| !v.is_empty());
        if config_path.is_none()
            && let Some(v) = from_env
            && crate::error::looks_like_key(v)
        {
            return Err(env_holds_key("KEYTURN_CONFIG", "a path"));
        }
        let path = config_path
            .map(Path::to_owned)
            .or_else(|| from_env.map(PathBuf::from))
            .or_else(|| {
                let p = cwd.join("keyturn.toml");
                p.exists().then_some(p)
            });
        let mut cfg = match path {
            Some(p) => Self::from_file_with(&resolve(cwd, &p), env)?,
            None => Self::default(),
        };
        cfg.apply_env(env);
        cfg.apply_overrides(overrides);
        if cfg.state.dir.is_relative() {
            cfg.state.dir = cwd.join(&cfg.state.dir);
        }
        let names: Vec<String> = cfg.keys.iter().filter_map(|k| k.env.clone()).collect();
        cfg.validate()
            .map_err(|e| e.scrubbed(&crate::discovery::env_secrets(env, &names)))?;
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

    /// Checks values the types cannot: every number and duration for sense (zero where zero means
    /// nothing, a minimum above its maximum), the strings that are really enums, and that no
    /// field holds what looks like an API key. Errors name the field and the file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, detail: String| ConfigError::Invalid {
            path: self.file_name(),
            field: field.to_owned(),
            detail,
        };
        // Values that reach logs and messages (or come from variables a careless user may fill
        // with a key) must not be keys.
        let mut shown: Vec<(String, String)> = vec![
            (
                "state.dir".into(),
                self.state.dir.to_string_lossy().into_owned(),
            ),
            ("state.redis_url".into(), self.state.redis_url.clone()),
            ("state.namespace".into(), self.state.namespace.clone()),
            ("http.base_url".into(), self.http.base_url.clone()),
            ("http.api_version".into(), self.http.api_version.clone()),
            ("serve.listen".into(), self.serve.listen.clone()),
        ];
        if let Some(u) = &self.notify.webhook_url {
            shown.push(("notify.webhook_url".into(), u.clone()));
        }
        for (i, k) in self.keys.iter().enumerate() {
            for (name, v) in [
                ("env", k.env.clone()),
                (
                    "file",
                    k.file.as_ref().map(|f| f.to_string_lossy().into_owned()),
                ),
                ("label", k.label.clone()),
                ("project", k.project.clone()),
            ] {
                if let Some(v) = v {
                    shown.push((format!("keys[{i}].{name}"), v));
                }
            }
        }
        for (i, t) in self.serve.tokens.iter().enumerate() {
            shown.push((format!("serve.tokens[{i}].label"), t.label.clone()));
        }
        for (i, t) in self.serve.admin_tokens.iter().enumerate() {
            shown.push((format!("serve.admin_tokens[{i}].label"), t.label.clone()));
        }
        for (field, v) in &shown {
            if crate::error::looks_like_key(v) {
                let leaf = field.rsplit('.').next().unwrap_or("");
                return Err(key_in_file(&self.file_name(), field, leaf));
            }
        }
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
            if let Some(var) = &k.env
                && !is_variable_name(var)
            {
                return Err(bad(
                    &format!("{field}.env"),
                    format!(
                        "'{var}' is not a variable name (letters, digits and _, not starting with a digit); name the environment variable that holds the key"
                    ),
                ));
            }
            if k.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                return Err(bad(
                    &format!("{field}.file"),
                    "is empty; name the file that holds the key".into(),
                ));
            }
            if let Some(l) = &k.label {
                check_name(l).map_err(|d| bad(&format!("{field}.label"), d))?;
            }
            if let Some(p) = &k.project {
                check_project(p).map_err(|d| bad(&format!("{field}.project"), d))?;
            }
            if k.weight == Some(0) {
                return Err(bad(&format!("{field}.weight"), "weights start at 1".into()));
            }
            if let Some(p) = &k.proxy {
                keyturn_gemini::EgressRoute::parse(p.expose())
                    .map_err(|e| bad(&format!("{field}.proxy"), e.to_string()))?;
            }
        }
        if let Some(p) = &self.http.proxy {
            keyturn_gemini::EgressRoute::parse(p.expose())
                .map_err(|e| bad("http.proxy", e.to_string()))?;
        }
        let positive = |field: &str, d: Duration| {
            if d.is_zero() {
                Err(bad(field, "must be more than 0".into()))
            } else {
                Ok(())
            }
        };
        let at_least = |field: &str, n: u64, min: u64| {
            if n < min {
                Err(bad(field, format!("must be at least {min}, not {n}")))
            } else {
                Ok(())
            }
        };
        let ordered = |lo: (&str, Duration), hi: (&str, Duration)| {
            if lo.1 > hi.1 {
                Err(bad(
                    lo.0,
                    format!(
                        "{:?} is longer than {} ({:?}): the shortest cannot exceed the longest",
                        lo.1, hi.0, hi.1
                    ),
                ))
            } else {
                Ok(())
            }
        };

        // [state]
        if self.state.dir.as_os_str().is_empty() {
            return Err(bad("state.dir", "is empty".into()));
        }
        check_namespace(&self.state.namespace).map_err(|d| bad("state.namespace", d))?;
        check_redis_url(&self.state.redis_url).map_err(|d| bad("state.redis_url", d))?;
        if self.state.flush_interval < Duration::from_millis(10) {
            return Err(bad(
                "state.flush_interval",
                "must be at least 10ms (the state is written at most once per interval)".into(),
            ));
        }

        // [rotation]: max_wait = 0 is meaningful (fail at once instead of waiting).
        positive(
            "rotation.default_throttle_cooldown",
            self.rotation.default_throttle_cooldown,
        )?;
        if let Some(d) = self.rotation.relearn_after
            && !(RELEARN_AFTER_MIN..=RELEARN_AFTER_MAX).contains(&d)
        {
            return Err(bad(
                "rotation.relearn_after",
                format!(
                    "{d:?} is out of range: from 1m (each expiry costs a real request to a refusing project) to 30 days, or \"pacific-midnight\""
                ),
            ));
        }

        // [breaker]
        at_least(
            "breaker.failure_threshold",
            self.breaker.failure_threshold.into(),
            1,
        )?;
        positive("breaker.base_cooldown", self.breaker.base_cooldown)?;
        positive("breaker.max_cooldown", self.breaker.max_cooldown)?;
        positive("breaker.probe_timeout", self.breaker.probe_timeout)?;
        ordered(
            ("breaker.base_cooldown", self.breaker.base_cooldown),
            ("breaker.max_cooldown", self.breaker.max_cooldown),
        )?;

        // [retry]
        at_least("retry.max_attempts", self.retry.max_attempts.into(), 1)?;
        positive("retry.max_elapsed", self.retry.max_elapsed)?;
        positive("retry.base_backoff", self.retry.base_backoff)?;
        positive("retry.max_backoff", self.retry.max_backoff)?;
        ordered(
            ("retry.base_backoff", self.retry.base_backoff),
            ("retry.max_backoff", self.retry.max_backoff),
        )?;

        // [http]
        check_base_url(&self.http.base_url).map_err(|d| bad("http.base_url", d))?;
        if !API_VERSIONS.contains(&self.http.api_version.as_str()) {
            return Err(bad(
                "http.api_version",
                format!(
                    "'{}' is not a Gemini API version; use \"v1beta\" or \"v1\"",
                    self.http.api_version
                ),
            ));
        }
        positive("http.connect_timeout", self.http.connect_timeout)?;
        positive("http.request_timeout", self.http.request_timeout)?;

        // [cache]
        positive("cache.ttl", self.cache.ttl)?;

        // [pipeline]
        at_least(
            "pipeline.batch_max_requests",
            self.pipeline.batch_max_requests as u64,
            1,
        )?;
        positive("pipeline.batch_poll", self.pipeline.batch_poll)?;
        ordered(
            ("pipeline.batch_poll", self.pipeline.batch_poll),
            ("pipeline.batch_max_poll", self.pipeline.batch_max_poll),
        )?;
        at_least("cache.max_entries", self.cache.max_entries, 1)?;

        // [embeddings]
        if !(1..=keyturn_embeddings::MAX_BATCH).contains(&self.embeddings.batch_size) {
            return Err(bad(
                "embeddings.batch_size",
                format!("{} is not between 1 and 100", self.embeddings.batch_size),
            ));
        }
        at_least(
            "embeddings.concurrency",
            self.embeddings.concurrency as u64,
            1,
        )?;

        // [serve]
        if self.serve.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "serve.listen",
                format!(
                    "'{}' is not an address like 127.0.0.1:8080",
                    self.serve.listen
                ),
            ));
        }
        at_least("serve.max_body_bytes", self.serve.max_body_bytes as u64, 1)?;
        at_least("serve.max_upload_bytes", self.serve.max_upload_bytes, 1)?;
        at_least("serve.max_in_flight", self.serve.max_in_flight as u64, 1)?;
        at_least(
            "serve.max_connections",
            self.serve.max_connections as u64,
            1,
        )?;
        positive("serve.header_timeout", self.serve.header_timeout)?;
        positive("serve.body_timeout", self.serve.body_timeout)?;
        positive("recheck.interval", self.recheck.interval)?;
        for (table, tokens) in [
            ("tokens", &self.serve.tokens),
            ("admin_tokens", &self.serve.admin_tokens),
        ] {
            for (i, t) in tokens.iter().enumerate() {
                check_name(&t.label).map_err(|d| bad(&format!("serve.{table}[{i}].label"), d))?;
                if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(
                        &format!("serve.{table}[{i}].sha256"),
                        "must be 64 hex digits (the SHA-256 that `keyturn serve token new` prints); never the token itself".into(),
                    ));
                }
            }
        }
        // One token in both tables would make a client an admin.
        if let Some(t) = self.serve.admin_tokens.iter().find(|a| {
            self.serve
                .tokens
                .iter()
                .any(|c| c.sha256.eq_ignore_ascii_case(&a.sha256))
        }) {
            return Err(bad(
                "serve.admin_tokens",
                format!(
                    "'{}' is also a client token ([[serve.tokens]]); an admin token must be its own (keyturn serve token new --admin)",
                    t.label
                ),
            ));
        }

        // [notify]
        if let Some(u) = &self.notify.webhook_url {
            check_http_url(u).map_err(|d| bad("notify.webhook_url", d))?;
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
        at_least("notify.queue", self.notify.queue as u64, 1)?;
        at_least("notify.max_attempts", self.notify.max_attempts.into(), 1)?;
        if self.notify.check_interval < Duration::from_millis(50) {
            return Err(bad("notify.check_interval", "must be at least 50ms".into()));
        }
        positive("notify.timeout", self.notify.timeout)?;

        // [models], [projects]
        for m in self.models.keys() {
            check_model(m).map_err(|d| bad(&format!("models.\"{m}\""), d))?;
        }
        for (p, ps) in &self.projects {
            check_project(p).map_err(|d| bad(&format!("projects.\"{p}\""), d))?;
            for m in ps.models.keys() {
                check_model(m).map_err(|d| bad(&format!("projects.\"{p}\".models.\"{m}\""), d))?;
            }
        }
        self.limit_table()?;
        Ok(())
    }

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

fn resolve(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        cwd.join(p)
    } else {
        p.to_owned()
    }
}

#[cfg(test)]
mod relearn_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

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

#[cfg(test)]
mod pipeline_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("keyturn.toml"))
    }

    #[test]
    fn batch_mode_is_configured_in_pipeline_and_its_polls_are_checked() {
        let d = load("").unwrap().pipeline;
        assert_eq!(d.mode, PipelineMode::Interactive);
        assert_eq!(d.batch_fallback, BatchFallbackSetting::Batch);
        let p = load(
            "[pipeline]\nmode = \"batch\"\nbatch_fallback = \"interactive\"\nbatch_max_requests = 50\nbatch_poll = \"2s\"\nbatch_max_poll = \"1m\"",
        )
        .unwrap()
        .pipeline;
        assert_eq!(p.mode, PipelineMode::Batch);
        assert_eq!(p.batch_fallback, BatchFallbackSetting::Interactive);
        assert_eq!(p.batch_max_requests, 50);
        assert_eq!(p.batch_poll, Duration::from_secs(2));
        for (bad, field) in [
            ("mode = \"later\"", "mode"),
            ("batch_max_requests = 0", "batch_max_requests"),
            ("batch_poll = \"0s\"", "batch_poll"),
            (
                "batch_poll = \"10m\"\nbatch_max_poll = \"1m\"",
                "batch_poll",
            ),
        ] {
            let e = load(&format!("[pipeline]\n{bad}")).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }
}
