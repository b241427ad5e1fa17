//! # keyturn-services
//!
//! Configuration and the factory. [`Config::load`] reads `keyturn.toml` (from `--config`,
//! `KEYTURN_CONFIG`, or `./keyturn.toml`), then the environment, then flags;
//! [`discovery`] finds keys in every place users keep them; and the factory builds services on
//! one shared pool over the configured state backend:
//!
//! - [`create_gemini_services`]: the LLM and embeddings services sharing one pool;
//! - [`create_llm_service_only`], [`create_embeddings_service_only`].
//!
//! Each returns a [`StateHandle`] to flush state (at checkpoints) and to shut down cleanly.
//! Downstream code does not care which backend holds the state.
//!
//! ```no_run
//! use keyturn_services::{Config, Overrides, create_gemini_services, process_env};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let env = process_env();
//! let cwd = std::env::current_dir()?;
//! let cfg = Config::load(None, &env, &cwd, &Overrides::default())?;
//! let services = create_gemini_services(&cfg, &env, &cwd).await?;
//! // services.llm.generate(…), services.embeddings.embed_many(…)
//! services.state.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod discovery;
pub mod error;
pub mod monitor;
pub mod notify;
pub mod state;
pub mod view;

use std::path::Path;
use std::sync::Arc;

use keyturn_core::{
    Clock, InMemoryLedger, KeyRing, LedgerConfig, QuotaLedger, RingChange, StateStore, StoreError,
};
use keyturn_embeddings::{EmbeddingsService, GeminiEmbeddings};
use keyturn_gemini::{GeminiCall, RetryPolicy, RotatingCaller, Transport, TransportConfig};
use keyturn_llm::{CacheConfig, GeminiLlm, LlmConfig, LlmService};
use keyturn_store::{ConnectError, FileStore, Persister, RedisLedger, TimeSource};

pub use config::{
    Backend, BatchFallbackSetting, Config, Env, Overrides, PipelineMode, PipelineSettings,
    process_env,
};
pub use discovery::{Found, config_files, discover, key_ring};
pub use error::{ConfigError, ServiceError, ServiceErrorKind};

/// Owns the state backend's background work; flush at checkpoints, shut down at exit.
#[derive(Debug)]
pub struct StateHandle {
    monitor: Option<monitor::Monitor>,
    /// The file backend's ledger, which a reload changes in place.
    memory: Option<Arc<InMemoryLedger>>,
    persister: Option<Persister>,
    store: Option<Arc<FileStore>>,
    /// The Redis backend's ledger, whose unspent quota grants go back at shutdown.
    redis: Option<Arc<RedisLedger>>,
    describe: String,
    resources: ResourcesAt,
}

/// Where the resource map (which project owns a file, a cache, a batch) lives: beside the state.
#[derive(Debug, Clone)]
enum ResourcesAt {
    File(std::path::PathBuf),
    Redis(keyturn_store::RedisResources),
}

impl StateHandle {
    /// The resource map on the same backend as the state: `resources.json` in the state folder
    /// (opened now: a malformed file is an error naming it), or keys beside the Redis ledger's.
    pub fn resources(
        &self,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<dyn keyturn_core::ResourceMap>, StoreError> {
        Ok(match &self.resources {
            ResourcesAt::File(dir) => Arc::new(keyturn_store::FileResources::open(dir, clock)?),
            ResourcesAt::Redis(r) => Arc::new(r.clone()),
        })
    }

    /// Saves state now (file backend; Redis is always current).
    pub async fn flush(&self) -> Result<(), StoreError> {
        match &self.persister {
            Some(p) => p.flush().await,
            None => Ok(()),
        }
    }

    /// Checks quota a last time (warnings of the run's end), saves a last time and stops
    /// background work.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        if let Some(m) = self.monitor {
            m.shutdown().await;
        }
        if let Some(r) = self.redis {
            close_redis(&r).await;
        }
        match self.persister {
            Some(p) => p.shutdown().await,
            None => Ok(()),
        }
    }

    /// Where the state lives ("file .keyturn/state.json", "redis redis://host:6379 namespace x").
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The state file, for the file backend.
    pub fn file(&self) -> Option<&Path> {
        self.store.as_deref().map(FileStore::path)
    }

    /// Snapshots written by this process (file backend).
    pub fn writes(&self) -> u64 {
        self.persister.as_ref().map_or(0, Persister::writes)
    }
}

/// The pool: keys, ledger, state handle, and the caller both services share.
#[derive(Debug)]
pub struct Pool {
    /// The keys.
    pub keys: Arc<KeyRing>,
    /// Where each key came from.
    pub found: Vec<Found>,
    /// The ledger.
    pub ledger: Arc<dyn QuotaLedger>,
    /// The caller over the ledger.
    pub caller: Arc<dyn GeminiCall>,
    /// The clock the ledger reads: everything that reports or compares a time against the
    /// pool's (run reports, the cache, retry delays) reads this one.
    pub clock: Arc<dyn Clock>,
    /// The state backend.
    pub state: StateHandle,
    /// Where the state lives, as configured at the start: a reload cannot move it.
    state_config: config::StateConfig,
    /// Who hears the monitor's warnings (kept for a monitor restarted by a reload).
    sink: Sink,
    /// Each key's egress route (`[[keys]] proxy`, else `[http] proxy`), for its callers.
    routes: Routes,
    /// Which keys' routes are failing now, as this pool's transports found them.
    route_board: Arc<keyturn_gemini::RouteBoard>,
}

/// Keys with their own egress route.
type Routes = Vec<(keyturn_core::Fingerprint, keyturn_gemini::EgressRoute)>;

/// Each found key's route: its entry's, else the default for all keys.
fn routes_of(cfg: &Config, found: &[Found]) -> Routes {
    let default = cfg
        .http
        .proxy
        .as_ref()
        .and_then(|p| keyturn_gemini::EgressRoute::parse(p.expose()).ok());
    found
        .iter()
        .filter_map(|f| {
            let route = f.route.clone().or_else(|| default.clone())?;
            Some((f.spec.key.fingerprint(), route))
        })
        .collect()
}

/// The monitor's warning sink, kept for a restart (`Debug` says only whether there is one).
#[derive(Clone, Default)]
struct Sink(Option<monitor::WarningSink>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sink({})", if self.0.is_some() { "set" } else { "none" })
    }
}

/// Why a reload was refused; the pool keeps its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new configuration or key set is wrong (the error names the field, never a key).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A setting that only a restart can change was changed.
    #[error(
        "[state] changed ({0}); a reload keeps the state where it is: restart keyturn to move it"
    )]
    StateMoved(&'static str),
}

impl Pool {
    /// Reloads keys, projects and limits from `cfg` (read anew by the caller) without a
    /// restart. The file backend's ledger changes in place: a new key joins with a fresh state,
    /// a removed key takes no new request and finishes what it has in flight, new limits hold at
    /// once. On Redis, whose state lives by fingerprint in Redis, a new ledger over the new keys
    /// replaces the old one (a request in flight settles through the one it started on), with a
    /// new caller and monitor. [`Pool::ledger`] and [`Pool::caller`] are the ones to use after
    /// it. Anything wrong leaves the pool as it was.
    pub async fn reload(
        &mut self,
        cfg: &Config,
        env: &Env,
        cwd: &Path,
    ) -> Result<RingChange, ReloadError> {
        let was = &self.state_config;
        let now = &cfg.state;
        if now.backend != was.backend {
            return Err(ReloadError::StateMoved("backend"));
        }
        if now.dir != was.dir && now.backend == Backend::File {
            return Err(ReloadError::StateMoved("dir"));
        }
        if now.backend == Backend::Redis
            && (now.redis_url != was.redis_url || now.namespace != was.namespace)
        {
            return Err(ReloadError::StateMoved("redis_url or namespace"));
        }
        let (ring, found) = key_ring(cfg, env, cwd).map_err(ServiceError::from)?;
        let lcfg = ledger_config(cfg).map_err(ServiceError::from)?;
        let routes = routes_of(cfg, &found);
        let change = match &self.state.memory {
            Some(memory) => {
                let change = memory.reload(&ring, lcfg.limits);
                self.keys = memory.keys();
                change
            }
            None => {
                let (_, change) = self.ledger.keys().reloaded(&ring);
                let keys = Arc::new(ring);
                // The models in use stay in status, as they would in the ledger reloaded in place.
                let mut lcfg = lcfg;
                if let Ok(st) = self.ledger.status().await {
                    for s in st.scopes {
                        if !lcfg.models.contains(&s.model) {
                            lcfg.models.push(s.model);
                        }
                    }
                }
                let redis = Arc::new(
                    RedisLedger::connect(
                        &cfg.state.redis_url,
                        &cfg.state.namespace,
                        keys.clone(),
                        lcfg,
                        self.clock.clone(),
                        TimeSource::Redis,
                    )
                    .await
                    .map_err(|e| redis_connect_error(cfg, e))?,
                );
                // The ledger it replaces gives its unspent grants back (its leases in flight
                // settle on it still).
                if let Some(old) = self.state.redis.replace(redis.clone()) {
                    close_redis(&old).await;
                }
                let ledger: Arc<dyn QuotaLedger> = redis;
                self.caller = build_caller(
                    cfg,
                    ledger.clone(),
                    &cfg.http.api_version,
                    self.clock.clone(),
                    (&routes, &self.route_board),
                )?;
                self.ledger = ledger;
                self.keys = keys;
                // The restarted monitor re-checks through the new routes.
                self.routes = routes.clone();
                if let Some(m) = self.state.monitor.take() {
                    m.shutdown().await;
                    self.watch_with(cfg, self.sink.0.clone())?;
                }
                change
            }
        };
        if self.state.memory.is_some() {
            self.caller = build_caller(
                cfg,
                self.ledger.clone(),
                &cfg.http.api_version,
                self.clock.clone(),
                (&routes, &self.route_board),
            )?;
        }
        self.found = found;
        self.routes = routes;
        Ok(change)
    }

    /// Starts watching the pool for the life of the run (until `state.shutdown()`): metrics
    /// gauges, and warnings to the log and to `[notify] webhook_url`. Commands that do work
    /// (seed, demo, serve) watch; one-shot commands (status, keys) do not.
    pub fn watch(&mut self, cfg: &Config) -> Result<(), ServiceError> {
        self.watch_with(cfg, None)
    }

    /// [`Pool::watch`], with `sink` hearing every warning as it is raised.
    pub fn watch_with(
        &mut self,
        cfg: &Config,
        sink: Option<monitor::WarningSink>,
    ) -> Result<(), ServiceError> {
        if self.state.monitor.is_some() {
            return Ok(());
        }
        self.sink = Sink(sink.clone());
        let notifier = match &cfg.notify.webhook_url {
            Some(url) => Some(
                notify::Notifier::spawn(url.clone(), &cfg.notify)
                    .map_err(|e| ServiceError::Http(e.into()))?,
            ),
            None => None,
        };
        let recheck = if cfg.recheck.enabled {
            Some((self.check_transport(cfg)?, cfg.recheck.interval))
        } else {
            None
        };
        self.state.monitor = Some(monitor::Monitor::spawn(
            self.ledger.clone(),
            cfg.notify.clone(),
            notifier,
            recheck,
            sink,
        ));
        Ok(())
    }

    /// A caller over this pool's ledger and clock for another API version (the proxy serves
    /// `/v1/` and `/v1beta/` and forwards each to the same version).
    pub fn caller_for_version(
        &self,
        cfg: &Config,
        api_version: &str,
    ) -> Result<Arc<dyn GeminiCall>, ServiceError> {
        build_caller(
            cfg,
            self.ledger.clone(),
            api_version,
            self.clock.clone(),
            (&self.routes, &self.route_board),
        )
    }

    /// A transport for checks with this pool's keys (`GET models…`, no quota): each key through
    /// its own route, failures recorded on [`Pool::route_board`].
    pub fn check_transport(&self, cfg: &Config) -> Result<Transport, ServiceError> {
        Ok(
            Transport::with_routes(&transport_config(cfg, &cfg.http.api_version), &self.routes)
                .map_err(|e| ServiceError::Http(e.into()))?
                .with_route_board(self.route_board.clone()),
        )
    }

    /// Which keys' egress routes are failing now.
    pub fn route_board(&self) -> Arc<keyturn_gemini::RouteBoard> {
        self.route_board.clone()
    }
}

/// Serves Prometheus metrics on `addr` (any path answers) for the rest of the process: the
/// `metrics` facade's global recorder. Call once, inside the Tokio runtime.
pub fn install_metrics_exporter(addr: std::net::SocketAddr) -> Result<(), ServiceError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Seconds: from a fast local answer to a long model call or a wait for the next minute.
    const BUCKETS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .and_then(PrometheusBuilder::install)
        .map_err(|e| ServiceError::Metrics {
            addr,
            source: e.into(),
        })
}

/// Both services on one pool.
#[derive(Debug)]
pub struct Services {
    /// LLM.
    pub llm: Arc<dyn LlmService>,
    /// Embeddings.
    pub embeddings: Arc<dyn EmbeddingsService>,
    /// The shared ledger (status, resets).
    pub ledger: Arc<dyn QuotaLedger>,
    /// The caller both services use (per-key call statistics).
    pub caller: Arc<dyn GeminiCall>,
    /// The pool's clock (see [`Pool::clock`]).
    pub clock: Arc<dyn Clock>,
    /// The keys.
    pub keys: Arc<KeyRing>,
    /// Where each key came from.
    pub found: Vec<Found>,
    /// The state backend.
    pub state: StateHandle,
}

/// The ledger configuration a `Config` describes.
pub fn ledger_config(cfg: &Config) -> Result<LedgerConfig, ConfigError> {
    Ok(LedgerConfig {
        policy: cfg.rotation.policy,
        breaker: cfg.breaker,
        max_wait: cfg.rotation.max_wait,
        default_throttle_cooldown: cfg.rotation.default_throttle_cooldown,
        limits: cfg.limit_table()?,
        models: Vec::new(),
        relearn_after: cfg.rotation.relearn_after,
    })
}

/// Builds the pool: keys, the ledger over the configured backend (state loaded), the caller.
pub async fn create_pool(cfg: &Config, env: &Env, cwd: &Path) -> Result<Pool, ServiceError> {
    create_pool_with_clock(cfg, env, cwd, clock(env)?).await
}

/// The clock the pool reads: the system's, shifted by `KEYTURN_CLOCK_OFFSET_MS` if set (to
/// rehearse a new quota day against `keyturn sim`; with the Redis backend, Redis's own time
/// rules the counters and the offset only moves the day boundaries the client computes, so use
/// it with the file backend).
pub fn clock(env: &Env) -> Result<Arc<dyn Clock>, ConfigError> {
    match clock_offset_ms(env)? {
        None => Ok(system_clock()),
        Some(ms) => {
            tracing::warn!(
                offset_ms = ms,
                "the clock is shifted by KEYTURN_CLOCK_OFFSET_MS"
            );
            Ok(Arc::new(keyturn_core::OffsetClock::new(ms)))
        }
    }
}

/// `KEYTURN_CLOCK_OFFSET_MS`, checked: `None` when unset or blank. [`clock`] builds the clock
/// (and says it is shifted); this only reads the setting, so a command can refuse a bad one
/// before it starts.
pub fn clock_offset_ms(env: &Env) -> Result<Option<i64>, ConfigError> {
    let Some(v) = env
        .get("KEYTURN_CLOCK_OFFSET_MS")
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(None);
    };
    v.trim().parse().map(Some).map_err(|_| {
        ConfigError::Invalid {
            path: "(environment)".into(),
            field: "KEYTURN_CLOCK_OFFSET_MS".into(),
            detail: format!("'{v}' is not a whole number of milliseconds"),
        }
        .scrubbed(&discovery::env_secrets(env, &[]))
    })
}

/// The system's clock. The one place keyturn builds it: every part of a pool (ledger, caller,
/// cache, proxy, run report) is handed the clock [`clock`] returns, so all agree on the time,
/// `KEYTURN_CLOCK_OFFSET_MS` included.
#[allow(clippy::disallowed_types)] // clippy.toml bans naming SystemClock anywhere else
fn system_clock() -> Arc<dyn Clock> {
    Arc::new(keyturn_core::SystemClock)
}

/// [`create_pool`] with an injected clock.
pub async fn create_pool_with_clock(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
    clock: Arc<dyn Clock>,
) -> Result<Pool, ServiceError> {
    let (ring, found) = key_ring(cfg, env, cwd)?;
    let keys = Arc::new(ring);
    let lcfg = ledger_config(cfg)?;
    let (ledger, state): (Arc<dyn QuotaLedger>, StateHandle) = match cfg.state.backend {
        Backend::File => {
            let store = Arc::new(FileStore::open(&cfg.state.dir)?);
            let ledger = Arc::new(InMemoryLedger::new(keys.clone(), lcfg, clock.clone()));
            if let Some(snap) = store.load().await? {
                ledger.restore_now(&snap).map_err(|e| StoreError::Corrupt {
                    path: store.path().to_owned(),
                    detail: e.to_string(),
                })?;
            }
            let persister =
                Persister::spawn(ledger.clone(), store.clone(), cfg.state.flush_interval);
            let describe = format!("file {}", store.path().display());
            (
                ledger.clone(),
                StateHandle {
                    monitor: None,
                    memory: Some(ledger),
                    persister: Some(persister),
                    resources: ResourcesAt::File(store.dir().to_owned()),
                    store: Some(store),
                    redis: None,
                    describe,
                },
            )
        }
        Backend::Redis => {
            let ledger = RedisLedger::connect(
                &cfg.state.redis_url,
                &cfg.state.namespace,
                keys.clone(),
                lcfg,
                clock.clone(),
                TimeSource::Redis,
            )
            .await
            .map_err(|e| redis_connect_error(cfg, e))?;
            let describe = format!(
                "redis {} namespace {}",
                ledger.server(),
                cfg.state.namespace
            );
            let resources = ResourcesAt::Redis(ledger.resources());
            let ledger = Arc::new(ledger);
            (
                ledger.clone(),
                StateHandle {
                    monitor: None,
                    memory: None,
                    persister: None,
                    store: None,
                    redis: Some(ledger),
                    describe,
                    resources,
                },
            )
        }
    };
    let routes = routes_of(cfg, &found);
    let route_board = Arc::new(keyturn_gemini::RouteBoard::new(clock.clone()));
    let caller = build_caller(
        cfg,
        ledger.clone(),
        &cfg.http.api_version,
        clock.clone(),
        (&routes, &route_board),
    )?;
    Ok(Pool {
        keys,
        found,
        ledger,
        caller,
        clock,
        state,
        state_config: cfg.state.clone(),
        sink: Sink::default(),
        routes,
        route_board,
    })
}

/// Redis refusing keyturn, or a URL it cannot use, is the configuration's fault (exit code 2);
/// Redis not answering is the state backend's.
fn redis_connect_error(cfg: &Config, e: ConnectError) -> ServiceError {
    match e {
        ConnectError::Refused { server, detail } => {
            ServiceError::Config(ConfigError::RedisAccess { server, detail })
        }
        ConnectError::Unavailable(s) => ServiceError::State(s),
        other => ServiceError::Config(ConfigError::Invalid {
            path: cfg
                .source
                .clone()
                .unwrap_or_else(|| "(configuration)".into()),
            field: "state.redis_url".into(),
            detail: other.to_string(),
        }),
    }
}

/// The HTTP transport `[http]` describes, for one API version: every key straight out. For
/// requests with the pool's keys, [`key_transport`] sends each through its own route.
pub fn transport(cfg: &Config, api_version: &str) -> Result<Transport, ServiceError> {
    Transport::new(&transport_config(cfg, api_version)).map_err(|e| ServiceError::Http(e.into()))
}

/// The transport for requests with the keys `found` (from [`key_ring`]): each through its own
/// egress route (`[[keys]] proxy`, else `[http] proxy`), as the pool's callers send them.
pub fn key_transport(cfg: &Config, found: &[Found]) -> Result<Transport, ServiceError> {
    Transport::with_routes(
        &transport_config(cfg, &cfg.http.api_version),
        &routes_of(cfg, found),
    )
    .map_err(|e| ServiceError::Http(e.into()))
}

fn transport_config(cfg: &Config, api_version: &str) -> TransportConfig {
    TransportConfig {
        base_url: cfg.http.base_url.clone(),
        api_version: api_version.to_owned(),
        connect_timeout: cfg.http.connect_timeout,
        request_timeout: cfg.http.request_timeout,
    }
}

fn build_caller(
    cfg: &Config,
    ledger: Arc<dyn QuotaLedger>,
    api_version: &str,
    clock: Arc<dyn Clock>,
    (routes, board): (&Routes, &Arc<keyturn_gemini::RouteBoard>),
) -> Result<Arc<dyn GeminiCall>, ServiceError> {
    let transport = Transport::with_routes(&transport_config(cfg, api_version), routes)
        .map_err(|e| ServiceError::Http(e.into()))?
        .with_route_board(board.clone());
    let retry = RetryPolicy {
        max_attempts: cfg.retry.max_attempts,
        max_elapsed: cfg.retry.max_elapsed,
        base_backoff: cfg.retry.base_backoff,
        max_backoff: cfg.retry.max_backoff,
    };
    Ok(Arc::new(RotatingCaller::new(
        ledger, transport, retry, clock,
    )))
}

fn llm_on(cfg: &Config, pool: &Pool) -> Arc<dyn LlmService> {
    let cache = cfg.cache.enabled.then(|| CacheConfig {
        ttl: cfg.cache.ttl,
        max_entries: cfg.cache.max_entries,
        dir: cfg.cache.disk.then(|| cfg.state.dir.join("cache")),
    });
    Arc::new(GeminiLlm::new(
        pool.caller.clone(),
        LlmConfig {
            cache,
            ..LlmConfig::default()
        },
        pool.clock.clone(),
    ))
}

fn embeddings_on(cfg: &Config, caller: Arc<dyn GeminiCall>) -> Arc<dyn EmbeddingsService> {
    Arc::new(GeminiEmbeddings::new(
        caller,
        cfg.embeddings.batch_size,
        cfg.embeddings.concurrency,
    ))
}

/// Both services on one shared pool and state backend.
pub async fn create_gemini_services(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
) -> Result<Services, ServiceError> {
    let mut pool = create_pool(cfg, env, cwd).await?;
    pool.watch(cfg)?;
    Ok(Services {
        llm: llm_on(cfg, &pool),
        embeddings: embeddings_on(cfg, pool.caller.clone()),
        caller: pool.caller,
        clock: pool.clock,
        ledger: pool.ledger,
        keys: pool.keys,
        found: pool.found,
        state: pool.state,
    })
}

/// The LLM service alone.
pub async fn create_llm_service_only(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
) -> Result<(Arc<dyn LlmService>, StateHandle), ServiceError> {
    let mut pool = create_pool(cfg, env, cwd).await?;
    pool.watch(cfg)?;
    Ok((llm_on(cfg, &pool), pool.state))
}

/// The embeddings service alone.
pub async fn create_embeddings_service_only(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
) -> Result<(Arc<dyn EmbeddingsService>, StateHandle), ServiceError> {
    let mut pool = create_pool(cfg, env, cwd).await?;
    pool.watch(cfg)?;
    Ok((embeddings_on(cfg, pool.caller), pool.state))
}

/// Gives a Redis ledger's unspent quota grants back; a failure only costs the room they held
/// (counted as sent until their second leaves the window), so it is logged, not returned.
async fn close_redis(ledger: &RedisLedger) {
    if let Err(e) = ledger.close().await {
        tracing::warn!(error = %e, "could not give unspent quota grants back to Redis");
    }
}
