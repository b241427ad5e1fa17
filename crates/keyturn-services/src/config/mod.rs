//! `keyturn.toml` and the environment. Precedence, highest first: flags ([`Overrides`]),
//! environment, the file, defaults. Unknown fields and bad values are errors that name the field
//! and the file; nothing is silently ignored.
//!
//! One module per concern, each holding its sections' structs and defaults: `state` `[state]`; `rotation` `[rotation]` and `[retry]`; `http` `[http]` and the egress proxy; `keys`
//! `[[keys]]`, `[projects]`, `[limits]` and the limit table; `pipeline` `[cache]`, `[embeddings]`,
//! `[pipeline]`; `serve` `[serve]` and `[metrics]`; `health` `[notify]` and `[recheck]`. Where a
//! configuration comes from is `load`; what the types cannot check is `validate` (with `checks`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use keyturn_core::{BreakerConfig, LimitOverride, Policy};
use serde::{Deserialize, Serialize};

mod checks;
mod health;
mod http;
mod keys;
mod load;
mod pipeline;
mod rotation;
mod serve;
mod state;
mod validate;

pub use self::health::{NotifySettings, RecheckSettings};
pub use self::http::{HttpConfig, ProxyUrl};
pub use self::keys::{KeyEntryConfig, LimitsSettings, ProjectSettings};
pub use self::pipeline::{
    BatchFallbackSetting, CacheSettings, EmbeddingsSettings, PipelineMode, PipelineSettings,
};
pub use self::rotation::{RELEARN_AFTER_MAX, RELEARN_AFTER_MIN, RetryConfig, RotationConfig};
pub use self::serve::{MetricsSettings, ServeSettings, ServeToken};
pub use self::state::{Backend, StateConfig};

/// The environment keyturn reads, injectable so tests never touch the process's own.
pub type Env = BTreeMap<String, String>;

/// The process environment (only the binary calls this).
pub fn process_env() -> Env {
    std::env::vars().collect()
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
