//! [`GeminiEmbeddings::builder`]: the service from keys in one expression.

use std::sync::Arc;

use keyturn_core::{Clock, KeySpec, LedgerConfig, QuotaLedger};
use keyturn_gemini::{BuildError, CallerBuilder, GeminiCall, RetryPolicy};

use crate::{GeminiEmbeddings, MAX_BATCH};

/// Batches sent at a time unless [`GeminiEmbeddingsBuilder::concurrency`] says otherwise
/// (keyturn-services' `[embeddings] concurrency` default).
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Builds a [`GeminiEmbeddings`]: keys (or a ledger, or another service's caller), where Gemini
/// is, and how texts are batched.
///
/// ```
/// use keyturn_embeddings::GeminiEmbeddings;
///
/// let embeddings = GeminiEmbeddings::builder()
///     .keys(["made-up-key-1", "made-up-key-2"])
///     .base_url("http://127.0.0.1:8088")
///     .batch_size(50)
///     .build()?;
/// assert_eq!(embeddings.caller().ledger().keys().len(), 2);
/// # Ok::<(), keyturn_embeddings::BuildError>(())
/// ```
#[derive(Debug)]
pub struct GeminiEmbeddingsBuilder {
    pool: CallerBuilder,
    caller: Option<Arc<dyn GeminiCall>>,
    batch_size: usize,
    concurrency: usize,
}

impl Default for GeminiEmbeddingsBuilder {
    fn default() -> Self {
        Self {
            pool: CallerBuilder::default(),
            caller: None,
            batch_size: MAX_BATCH,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl GeminiEmbeddingsBuilder {
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
    /// shared between processes.
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
    /// (`GeminiLlm::caller()`); the pool settings above are then unused.
    pub fn caller(mut self, caller: Arc<dyn GeminiCall>) -> Self {
        self.caller = Some(caller);
        self
    }

    /// Texts per `batchEmbedContents` (1 to 100; default 100).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Batches sent at a time (default [`DEFAULT_CONCURRENCY`]).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The service.
    pub fn build(self) -> Result<GeminiEmbeddings, BuildError> {
        let caller = match self.caller {
            Some(c) => c,
            None => Arc::new(self.pool.build()?) as Arc<dyn GeminiCall>,
        };
        Ok(GeminiEmbeddings::new(
            caller,
            self.batch_size,
            self.concurrency,
        ))
    }
}

impl GeminiEmbeddings {
    /// A [`GeminiEmbeddingsBuilder`].
    pub fn builder() -> GeminiEmbeddingsBuilder {
        GeminiEmbeddingsBuilder::default()
    }
}
