//! [`GeminiLlm::builder`]: the service from keys in one expression.

use std::sync::Arc;

use keyturn_core::{Clock, KeySpec, LedgerConfig, QuotaLedger};
use keyturn_gemini::{BuildError, CallerBuilder, GeminiCall, RetryPolicy};

use crate::{CacheConfig, EstimateMode, GeminiLlm, LlmConfig};

/// Builds a [`GeminiLlm`]: keys (or a ledger, or another service's caller), where Gemini is,
/// and the service's own settings.
///
/// ```
/// use keyturn_llm::GeminiLlm;
///
/// let llm = GeminiLlm::builder()
///     .keys(["made-up-key-1", "made-up-key-2", "made-up-key-3"])
///     .base_url("http://127.0.0.1:8088")
///     .build()?;
/// assert_eq!(llm.caller().ledger().keys().len(), 3);
/// # Ok::<(), keyturn_llm::BuildError>(())
/// ```
#[derive(Debug, Default)]
pub struct GeminiLlmBuilder {
    pool: CallerBuilder,
    caller: Option<Arc<dyn GeminiCall>>,
    cfg: LlmConfig,
}

impl GeminiLlmBuilder {
    /// Adds keys, each its own project (see [`key`](Self::key) for labels and projects).
    pub fn keys<I>(mut self, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.pool = self.pool.keys(keys);
        self
    }

    /// Adds a key with a label or a project (keys of one project share its quota).
    pub fn key(mut self, spec: KeySpec) -> Self {
        self.pool = self.pool.key(spec);
        self
    }

    /// Rotates over an existing ledger and its keys: an `InMemoryLedger` that
    /// `keyturn_store::Persister` saves to a state file, or a `keyturn_store::RedisLedger`
    /// shared between processes (`examples/persistent_state.rs`).
    pub fn ledger(mut self, ledger: Arc<dyn QuotaLedger>) -> Self {
        self.pool = self.pool.ledger(ledger);
        self
    }

    /// Limits, policy, breaker and wait bound of the in-memory pool built from keys.
    pub fn ledger_config(mut self, cfg: LedgerConfig) -> Self {
        self.pool = self.pool.ledger_config(cfg);
        self
    }

    /// Where Gemini is, without a version segment (`GEMINI_BASE_URL`: the simulator, a proxy;
    /// default [`DEFAULT_BASE_URL`](crate::DEFAULT_BASE_URL)).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.pool = self.pool.base_url(url);
        self
    }

    /// Retry bounds.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.pool = self.pool.retry(retry);
        self
    }

    /// The clock (default: the system's).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.pool = self.pool.clock(clock);
        self
    }

    /// Any other pool setting (API version, timeouts).
    pub fn pool(mut self, f: impl FnOnce(CallerBuilder) -> CallerBuilder) -> Self {
        self.pool = f(self.pool);
        self
    }

    /// Calls through an existing caller instead, to share one pool with another service
    /// (`GeminiEmbeddings::caller()`); the pool settings above are then unused.
    pub fn caller(mut self, caller: Arc<dyn GeminiCall>) -> Self {
        self.caller = Some(caller);
        self
    }

    /// Turns the response cache on.
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cfg.cache = Some(cache);
        self
    }

    /// How input tokens are estimated before each call.
    pub fn estimate(mut self, mode: EstimateMode) -> Self {
        self.cfg.estimate = mode;
        self
    }

    /// The service.
    pub fn build(self) -> Result<GeminiLlm, BuildError> {
        // The service's clock (cache ages) is the pool's.
        let clock = self.pool.clock_in_use();
        let caller = match self.caller {
            Some(c) => c,
            None => Arc::new(self.pool.build()?) as Arc<dyn GeminiCall>,
        };
        Ok(GeminiLlm::new(caller, self.cfg, clock))
    }
}

impl GeminiLlm {
    /// A [`GeminiLlmBuilder`].
    pub fn builder() -> GeminiLlmBuilder {
        GeminiLlmBuilder::default()
    }
}
