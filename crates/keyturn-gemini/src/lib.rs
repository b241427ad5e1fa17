//! # keyturn-gemini
//!
//! Gemini on the wire: serde types for `generateContent`, `streamGenerateContent`,
//! `countTokens`, `embedContent`, `batchEmbedContents` and `models` ([`wire`]); Batch Mode jobs
//! pinned to a project's key ([`batch`]); the reqwest
//! transport with the key only in a header ([`transport`]); the classifier that reads
//! Gemini's own error details — `quotaId`, `quotaValue`, `retryDelay`, `ErrorInfo.reason` — into a
//! typed error with a kind ([`error`]); and the rotated-call loop ([`caller`]): acquire → send →
//! classify → settle with real `usageMetadata` → retry on another key by the error's kind. The
//! same loop serves Gemini's OpenAI-compatible routes (`/v1beta/openai/…`: the key as a bearer
//! token, usage from `usage.prompt_tokens`, errors in their list envelope).
//!
//! ```no_run
//! use std::sync::Arc;
//! use keyturn_core::*;
//! use keyturn_gemini::{GeminiCall, RetryPolicy, RotatingCaller, Transport, TransportConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = Arc::new(KeyRing::new(vec![KeySpec::new(ApiKey::new("made-up-key")?)])?);
//! let ledger = Arc::new(InMemoryLedger::new(keys, LedgerConfig::default(), Arc::new(SystemClock)));
//! let transport = Transport::new(&TransportConfig {
//!     base_url: "http://127.0.0.1:8088".into(),
//!     ..TransportConfig::default()
//! })?;
//! let caller = RotatingCaller::new(ledger, transport, RetryPolicy::default(), Arc::new(SystemClock));
//! let body = serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]});
//! let reply = caller.call("gemini-2.5-flash", "generateContent", Demand::tokens(10), body).await?;
//! println!("served by {}", reply.key);
//! # Ok(()) }
//! ```

pub mod batch;
pub mod body;
pub mod builder;
pub mod caller;
pub mod check;
pub mod error;
pub mod metrics;
pub mod route;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;
mod url_cache;
pub mod wire;

pub use batch::{BatchClient, BatchJob, BatchOutput, BatchRequest, BatchState, ItemResult};
pub use builder::{BuildError, CallerBuilder};
#[cfg(any(test, feature = "mock"))]
pub use caller::MockGeminiCall;
pub use caller::{ChunkStream, GeminiCall, KeyCallStats, Reply, RetryPolicy, RotatingCaller};
pub use check::{KeyCheck, ModelCheck, check_key, check_key_for_model};
pub use error::{ApiFailure, ErrorKind, GeminiError, classify, redact};
pub use route::{BadRoute, EgressRoute, RouteBoard, RouteFailing, RouteFault};
pub use transport::{
    InvalidName, KeyHeader, OpenAiRoute, SendError, Transport, TransportConfig, model_id,
    valid_model,
};
