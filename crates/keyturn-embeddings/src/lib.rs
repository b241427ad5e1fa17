//! # keyturn-embeddings
//!
//! The embeddings service: [`EmbeddingsService`] (a mockable async trait) and
//! [`GeminiEmbeddings`], its Gemini implementation on a shared key pool. One text is one
//! `embedContent`; many texts are split into `batchEmbedContents` batches of at most 100, each
//! acquiring a lease for its item count (each item counts as one request against the embedding
//! quota), sent a few at a time, with order preserved. A batch that fails is retried by the
//! rotation on its own; batches that succeeded are never sent again.
//!
//! From keys to vectors (`examples/embed.rs` runs this against `keyturn sim` in CI):
//!
//! ```no_run
//! use keyturn_embeddings::{EmbedOptions, EmbeddingsService, GeminiEmbeddings};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let emb = GeminiEmbeddings::builder()
//!     .keys(std::env::var("GEMINI_API_KEYS")?.split(','))
//!     .base_url(std::env::var("GEMINI_BASE_URL").unwrap_or(keyturn_embeddings::DEFAULT_BASE_URL.into()))
//!     .build()?;
//! let opts = EmbedOptions::new("gemini-embedding-001").task_type("RETRIEVAL_DOCUMENT").dimensions(768);
//! let vectors = emb.embed_many(&["first".into(), "second".into()], &opts).await?;
//! assert_eq!(vectors.len(), 2);
//! # Ok(()) }
//! ```
//!
//! The pool is in memory unless [`GeminiEmbeddingsBuilder::ledger`] gives it a persisted or
//! shared ledger; [`GeminiEmbeddingsBuilder::caller`] shares one pool with `keyturn-llm`. Every
//! type in this crate's signatures is re-exported here, and the lower crates are reachable as
//! [`keyturn_core`] and [`keyturn_gemini`].

mod builder;

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use keyturn_core::Demand;
use keyturn_gemini::wire::{
    BatchEmbedContentsRequest, BatchEmbedContentsResponse, Content, EmbedContentRequest,
    EmbedContentResponse,
};

pub use builder::{DEFAULT_CONCURRENCY, GeminiEmbeddingsBuilder};
pub use keyturn_core::{self, ApiKey, Clock, KeySpec, LedgerConfig, QuotaLedger};
pub use keyturn_gemini::transport::DEFAULT_BASE_URL;
pub use keyturn_gemini::{
    self, BuildError, CallerBuilder, ErrorKind, GeminiCall, GeminiError, RetryPolicy,
};

/// Gemini's limit on items per `batchEmbedContents`.
pub const MAX_BATCH: usize = 100;

/// How to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedOptions {
    /// Model id.
    pub model: String,
    /// RETRIEVAL_DOCUMENT, RETRIEVAL_QUERY, SEMANTIC_SIMILARITY, CLASSIFICATION, CLUSTERING, …
    pub task_type: Option<String>,
    /// Truncated dimension (gemini-embedding-001: up to 3072).
    pub output_dimensionality: Option<u32>,
    /// Title (RETRIEVAL_DOCUMENT only).
    pub title: Option<String>,
}

impl EmbedOptions {
    /// Options for a model.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            task_type: None,
            output_dimensionality: None,
            title: None,
        }
    }

    /// Sets the task type.
    pub fn task_type(mut self, t: impl Into<String>) -> Self {
        self.task_type = Some(t.into());
        self
    }

    /// Sets the output dimension.
    pub fn dimensions(mut self, d: u32) -> Self {
        self.output_dimensionality = Some(d);
        self
    }

    /// Sets the title.
    pub fn title(mut self, t: impl Into<String>) -> Self {
        self.title = Some(t.into());
        self
    }

    /// The `EmbedContentRequest` body a Batch Mode job (`asyncBatchEmbedContent`) carries for
    /// `text`: the very request [`EmbeddingsService::embed_many`] sends for it, so a batch
    /// job's vectors are the interactive ones.
    pub fn batch_request(&self, text: &str) -> serde_json::Value {
        serde_json::to_value(self.request(text, true)).unwrap_or_default()
    }

    fn model_id(&self) -> &str {
        self.model.strip_prefix("models/").unwrap_or(&self.model)
    }

    fn request(&self, text: &str, in_batch: bool) -> EmbedContentRequest {
        EmbedContentRequest {
            model: in_batch.then(|| format!("models/{}", self.model_id())),
            content: Content {
                role: None,
                parts: vec![keyturn_gemini::wire::Part::text(text)],
            },
            task_type: self.task_type.clone(),
            title: self.title.clone(),
            output_dimensionality: self.output_dimensionality,
        }
    }
}

/// An embedding call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The call failed (classified: see [`GeminiError::kind`]).
    #[error(transparent)]
    Gemini(#[from] GeminiError),
    /// Gemini refuses empty texts; which one.
    #[error("text #{index} is empty; Gemini does not embed empty content")]
    EmptyText {
        /// Its position in the input.
        index: usize,
    },
    /// The answer does not match the request.
    #[error("{model} answered with {got} embeddings for {sent} texts")]
    Mismatch {
        /// Model.
        model: String,
        /// Texts sent.
        sent: usize,
        /// Embeddings received.
        got: usize,
    },
    /// The answer's shape is wrong.
    #[error("{model} answered with an unexpected shape: {detail}")]
    Shape {
        /// Model.
        model: String,
        /// What is wrong.
        detail: String,
    },
}

/// The embeddings service.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait EmbeddingsService: Send + Sync + std::fmt::Debug {
    /// One text.
    async fn embed(&self, text: &str, opts: &EmbedOptions) -> Result<Vec<f32>, EmbedError>;

    /// Many texts, in order.
    async fn embed_many(
        &self,
        texts: &[String],
        opts: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, EmbedError>;
}

fn _object_safe(_: Box<dyn EmbeddingsService>) {}

/// The vector of one `EmbedContentResponse` (a Batch Mode job's answer): `embedding.values`.
/// Read as [`EmbeddingsService::embed`] reads its answer, so the numbers are the same.
pub fn vector_of(response: &serde_json::Value) -> Option<Vec<f32>> {
    serde_json::from_value::<EmbedContentResponse>(response.clone())
        .ok()
        .map(|r| r.embedding.values)
}

/// Input-token estimate for a text (the pool's one rule, without a per-part allowance: an
/// embedding item is one text).
pub fn estimate_tokens(text: &str) -> u64 {
    keyturn_gemini::wire::estimate_input_tokens(text.len() as u64, 0)
}

/// [`EmbeddingsService`] on Gemini.
#[derive(Debug)]
pub struct GeminiEmbeddings {
    caller: Arc<dyn GeminiCall>,
    batch_size: usize,
    concurrency: usize,
}

impl GeminiEmbeddings {
    /// A service: batches of `batch_size` (capped at 100), `concurrency` batches at a time.
    pub fn new(caller: Arc<dyn GeminiCall>, batch_size: usize, concurrency: usize) -> Self {
        Self {
            caller,
            batch_size: batch_size.clamp(1, MAX_BATCH),
            concurrency: concurrency.max(1),
        }
    }

    /// The caller (and through it, the pool).
    pub fn caller(&self) -> &Arc<dyn GeminiCall> {
        &self.caller
    }

    async fn batch(
        &self,
        texts: &[String],
        opts: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let req = BatchEmbedContentsRequest {
            requests: texts.iter().map(|t| opts.request(t, true)).collect(),
        };
        let tokens = texts.iter().map(|t| estimate_tokens(t)).sum();
        let body = serde_json::to_value(&req).unwrap_or_default();
        let reply = self
            .caller
            .call(
                opts.model_id(),
                "batchEmbedContents",
                Demand::batch(texts.len() as u32, tokens),
                body,
            )
            .await?;
        let r: BatchEmbedContentsResponse =
            serde_json::from_value(reply.body).map_err(|e| EmbedError::Shape {
                model: opts.model.clone(),
                detail: e.to_string(),
            })?;
        if r.embeddings.len() != texts.len() {
            return Err(EmbedError::Mismatch {
                model: opts.model.clone(),
                sent: texts.len(),
                got: r.embeddings.len(),
            });
        }
        Ok(r.embeddings.into_iter().map(|e| e.values).collect())
    }
}

#[async_trait]
impl EmbeddingsService for GeminiEmbeddings {
    async fn embed(&self, text: &str, opts: &EmbedOptions) -> Result<Vec<f32>, EmbedError> {
        if text.trim().is_empty() {
            return Err(EmbedError::EmptyText { index: 0 });
        }
        let body = serde_json::to_value(opts.request(text, false)).unwrap_or_default();
        let reply = self
            .caller
            .call(
                opts.model_id(),
                "embedContent",
                Demand::tokens(estimate_tokens(text)),
                body,
            )
            .await?;
        let r: EmbedContentResponse =
            serde_json::from_value(reply.body).map_err(|e| EmbedError::Shape {
                model: opts.model.clone(),
                detail: e.to_string(),
            })?;
        Ok(r.embedding.values)
    }

    async fn embed_many(
        &self,
        texts: &[String],
        opts: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if let Some(index) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(EmbedError::EmptyText { index });
        }
        // Owned batches: the futures must not borrow the caller's slice across the trait boundary.
        let chunks: Vec<Vec<String>> = texts
            .chunks(self.batch_size)
            .map(<[String]>::to_vec)
            .collect();
        let batches: Vec<Result<Vec<Vec<f32>>, EmbedError>> = futures::stream::iter(chunks)
            .map(|chunk| async move { self.batch(&chunk, opts).await })
            .buffered(self.concurrency)
            .collect()
            .await;
        let mut out = Vec::with_capacity(texts.len());
        for b in batches {
            out.extend(b?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyturn_gemini::{MockGeminiCall, Reply};
    use serde_json::json;
    use std::sync::Mutex;

    #[tokio::test]
    async fn batches_are_split_to_the_limit_with_a_lease_per_item_and_order_kept() {
        let seen: Arc<Mutex<Vec<(u32, usize)>>> = Arc::default();
        let s2 = seen.clone();
        let mut mock = MockGeminiCall::new();
        mock.expect_call()
            .withf(|model, method, _, _| {
                model == "gemini-embedding-001" && method == "batchEmbedContents"
            })
            .returning(move |_, _, demand, body| {
                let items = body["requests"].as_array().unwrap();
                assert!(
                    items
                        .iter()
                        .all(|i| i["model"] == "models/gemini-embedding-001")
                );
                s2.lock().unwrap().push((demand.requests, items.len()));
                // Each embedding's first value is the text's number, to check order.
                let embs: Vec<_> = items
                    .iter()
                    .map(|i| {
                        let n: f32 = i["content"]["parts"][0]["text"].as_str().unwrap()[1..]
                            .parse()
                            .unwrap();
                        json!({"values": [n]})
                    })
                    .collect();
                Ok(Reply {
                    body: json!({"embeddings": embs}),
                    key: "k".into(),
                    attempts: 1,
                    ..Reply::default()
                })
            });
        let svc = GeminiEmbeddings::new(Arc::new(mock), 500, 3);
        let texts: Vec<String> = (0..250).map(|i| format!("t{i}")).collect();
        let out = svc
            .embed_many(&texts, &EmbedOptions::new("models/gemini-embedding-001"))
            .await
            .unwrap();
        assert_eq!(out.len(), 250);
        assert!(out.iter().enumerate().all(|(i, v)| v[0] == i as f32));
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(
            seen,
            vec![(50, 50), (100, 100), (100, 100)],
            "capped at 100 whatever was asked"
        );
    }

    #[tokio::test]
    async fn empty_texts_and_short_answers_are_typed_errors() {
        let mut mock = MockGeminiCall::new();
        mock.expect_call().returning(|_, _, _, _| {
            Ok(Reply {
                body: json!({"embeddings": [{"values": [1.0]}]}),
                key: "k".into(),
                attempts: 1,
                ..Reply::default()
            })
        });
        let svc = GeminiEmbeddings::new(Arc::new(mock), 100, 1);
        let opts = EmbedOptions::new("gemini-embedding-001");
        let e = svc
            .embed_many(&["a".into(), " ".into()], &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, EmbedError::EmptyText { index: 1 }));
        let e = svc
            .embed_many(&["a".into(), "b".into()], &opts)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                EmbedError::Mismatch {
                    sent: 2,
                    got: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert!(svc.embed_many(&[], &opts).await.unwrap().is_empty());
    }
}
