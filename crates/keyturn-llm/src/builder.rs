//! [`GeminiLlm::builder`]: the service from keys in one expression.

use std::sync::Arc;

use keyturn_gemini::{BuildError, CallerBuilder, GeminiCall};

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
    keyturn_gemini::pool_setters!("GeminiEmbeddings::caller()");

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
