//! What a run uses, each behind its seam so the executor can be driven with mocks.

use std::sync::Arc;

use keyturn_core::Clock;
use keyturn_embeddings::EmbeddingsService;
use keyturn_llm::LlmService;
use keyturn_services::Services;

/// Where a run keeps the rotation state: saved after each episode and at the end, and named in
/// the run report. The factory's [`keyturn_services::StateHandle`] is one; a test can give its own.
#[async_trait::async_trait]
pub trait RunState: Send + Sync {
    /// Saves the state now (the file backend; Redis is always current).
    async fn flush(&self) -> Result<(), keyturn_core::StoreError>;
    /// Where it lives (the state file's path, or the Redis server and namespace).
    fn describe(&self) -> String;
}

#[async_trait::async_trait]
impl RunState for keyturn_services::StateHandle {
    async fn flush(&self) -> Result<(), keyturn_core::StoreError> {
        keyturn_services::StateHandle::flush(self).await
    }

    fn describe(&self) -> String {
        keyturn_services::StateHandle::describe(self).to_owned()
    }
}

/// What a run uses, each behind its seam so the executor can be driven with mocks: the LLM and
/// embeddings services, the ledger (its snapshot goes into each checkpoint; the progress line
/// reads its status), the caller (per-key statistics for the progress line and the report),
/// where the rotation state is saved, and the one clock.
#[derive(Clone)]
pub struct SeedServices<'a> {
    /// Extraction.
    pub llm: Arc<dyn LlmService>,
    /// Embeddings of chunks and entities.
    pub embeddings: Arc<dyn EmbeddingsService>,
    /// The pool's ledger.
    pub ledger: Arc<dyn keyturn_core::QuotaLedger>,
    /// The caller both services share.
    pub caller: Arc<dyn keyturn_gemini::GeminiCall>,
    /// Where the rotation state is saved.
    pub state: &'a dyn RunState,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Batch Mode jobs, with the pool's transport (needed only with
    /// [`SeedOptions::batch`](super::SeedOptions::batch)).
    pub batch: Option<keyturn_gemini::BatchClient>,
}

impl std::fmt::Debug for SeedServices<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedServices")
            .field("llm", &self.llm)
            .field("embeddings", &self.embeddings)
            .field("state", &self.state.describe())
            .finish_non_exhaustive()
    }
}

impl<'a> SeedServices<'a> {
    /// The factory's services, on the pool's one clock.
    pub fn of(services: &'a Services) -> Self {
        Self {
            llm: services.llm.clone(),
            embeddings: services.embeddings.clone(),
            ledger: services.ledger.clone(),
            caller: services.caller.clone(),
            state: &services.state,
            clock: services.clock.clone(),
            batch: None,
        }
    }
}
