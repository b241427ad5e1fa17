//! [`GeminiEmbeddings::builder`]: the service from keys in one expression.

use std::sync::Arc;

use keyturn_gemini::{BuildError, CallerBuilder, GeminiCall};

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
    keyturn_gemini::pool_setters!("GeminiLlm::caller()");

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
