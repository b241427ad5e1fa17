//! The rotated call: acquire a lease → send with its key → classify the answer → settle the lease
//! with real usage → on a refusal, retry on another key according to the error's kind.
//!
//! - Throttled, model unavailable, dead key: the ledger has learned; retry at once (it will pick
//!   another key, or wait for one, or say none is left).
//! - Transient: capped exponential backoff with full jitter, then retry.
//! - Caller fault: return the error; key health untouched.
//! - Bounded by attempts and by total time. Cancellation-safe: a dropped call drops its lease
//!   unsettled, which the ledger counts as sent; a lost half-open probe frees itself.
//!
//! Files: this one holds the public types, the [`GeminiCall`] seam and its implementation's
//! entry points; `run.rs` the attempt loop (retry by kind, backoff, settling); `send.rs` one send
//! with one key and where it goes; `verify.rs` what a 403 without a reason was; `stream.rs` a
//! started stream until it settles; `unmetered.rs` calls that spend no quota; `stats.rs` the
//! per-key counts and the waiting gauge.

mod run;
mod send;
mod stats;
mod stream;
mod unmetered;
mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use keyturn_core::{Clock, Demand, KeyId, QuotaLedger};
use serde_json::Value;

use self::send::Upstream;
pub use self::stats::KeyCallStats;
use crate::check::KeyCheck;
use crate::error::GeminiError;
use crate::transport::{KeyHeader, OpenAiRoute, Transport};

/// Retry bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts per call (keys tried, transient retries included).
    pub max_attempts: u32,
    /// Most time per call, waiting for capacity included.
    pub max_elapsed: Duration,
    /// First backoff after a transient failure.
    pub base_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            max_elapsed: Duration::from_secs(600),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A successful call's answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// The response body.
    pub body: Value,
    /// The response body exactly as the server sent it (for pass-through).
    pub raw: Bytes,
    /// Label of the key that served it.
    pub key: String,
    /// Attempts it took.
    pub attempts: u32,
}

/// A stream of response chunks.
pub type ChunkStream = BoxStream<'static, Result<Value, GeminiError>>;

/// The seam between services and the network, so each service's own logic can be tested alone.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait GeminiCall: Send + Sync + std::fmt::Debug {
    /// POSTs `body` to `models/{model}:{method}` through the rotation.
    async fn call(
        &self,
        model: &str,
        method: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError>;

    /// `streamGenerateContent?alt=sse` through the rotation: retries until a stream starts; the
    /// lease is settled when the stream ends (with the last chunk's usage).
    async fn stream(
        &self,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<ChunkStream, GeminiError>;

    /// POSTs an OpenAI-format body to Gemini's OpenAI-compatible surface
    /// (`openai/chat/completions`, `openai/embeddings`) through the same rotation, the key as
    /// `Authorization: Bearer`; settled with the answer's `usage.prompt_tokens`. `model` (from the
    /// body) names the quota scope; the body goes upstream as given.
    async fn call_openai(
        &self,
        route: OpenAiRoute,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError>;

    /// A streamed `openai/chat/completions` (the body says `"stream": true`) through the
    /// rotation: retries until a stream starts; each chunk is one JSON value, the terminating
    /// `[DONE]` ends the stream, and the lease is settled then with the last `usage` seen. A
    /// stream whose connection ends before `[DONE]` was cut short: its last item is an error and
    /// the lease is settled as a transient failure.
    async fn stream_openai(
        &self,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<ChunkStream, GeminiError>;

    /// POSTs `body` to a resource collection (`cachedContents`: creating a cache spends the
    /// model's input tokens) through the same rotation, the quota scope named by `model`; the
    /// path is validated ([`Transport::resource_url`]). Pin `demand` to a project to keep the
    /// call on its keys.
    async fn call_resource(
        &self,
        model: &str,
        path: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError>;

    /// A call that spends no generation quota (countTokens, GET models): any usable key.
    async fn call_unmetered(
        &self,
        url_path: &str,
        body: Option<Value>,
    ) -> Result<Reply, GeminiError>;

    /// The pool behind the calls.
    fn ledger(&self) -> Arc<dyn QuotaLedger>;

    /// Per-key statistics of this process's calls, in key order.
    fn stats(&self) -> Vec<KeyCallStats>;

    /// Calls waiting now for quota (inside the ledger's acquire): a gauge for the console.
    fn waiting_for_quota(&self) -> usize {
        0
    }
}

/// The Gemini implementation of [`GeminiCall`].
#[derive(Debug, Clone)]
pub struct RotatingCaller {
    ledger: Arc<dyn QuotaLedger>,
    transport: Transport,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    unmetered_cursor: Arc<std::sync::atomic::AtomicUsize>,
    /// Calls inside the ledger's acquire now.
    waiting_for_quota: Arc<std::sync::atomic::AtomicUsize>,
    stats: Arc<parking_lot::Mutex<Vec<KeyCallStats>>>,
    /// Recent probe answers per key (Unix ms, answer), so a burst of bare 403s probes once.
    probes: Arc<parking_lot::Mutex<HashMap<KeyId, (i64, KeyCheck)>>>,
}

/// How long a probe's answer about a key is reused.
pub const PROBE_TTL: Duration = Duration::from_secs(60);

impl RotatingCaller {
    /// A caller over a pool.
    pub fn new(
        ledger: Arc<dyn QuotaLedger>,
        transport: Transport,
        retry: RetryPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let stats = ledger
            .keys()
            .iter()
            .map(|(_, e)| KeyCallStats {
                label: e.label.clone(),
                fingerprint: e.fingerprint().to_string(),
                ..KeyCallStats::default()
            })
            .collect();
        Self {
            ledger,
            transport,
            retry,
            clock,
            unmetered_cursor: Arc::default(),
            waiting_for_quota: Arc::default(),
            stats: Arc::new(parking_lot::Mutex::new(stats)),
            probes: Arc::default(),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }
}

#[async_trait]
impl GeminiCall for RotatingCaller {
    async fn call(
        &self,
        model: &str,
        method: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError> {
        let upstream = self.native(model, method, false)?;
        self.call_at(model, &upstream, demand, body).await
    }

    async fn stream(
        &self,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<ChunkStream, GeminiError> {
        let upstream = self.native(model, "streamGenerateContent", true)?;
        self.stream_at(model, &upstream, demand, body).await
    }

    async fn call_openai(
        &self,
        route: OpenAiRoute,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError> {
        let upstream = self.openai(route);
        self.call_at(model, &upstream, demand, body).await
    }

    async fn stream_openai(
        &self,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<ChunkStream, GeminiError> {
        let upstream = self.openai(OpenAiRoute::ChatCompletions);
        self.stream_at(model, &upstream, demand, body).await
    }

    async fn call_resource(
        &self,
        model: &str,
        path: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError> {
        let upstream = Upstream {
            url: self.transport.resource_url(path)?,
            key_header: KeyHeader::GoogApiKey,
            method: path.to_owned(),
            ends_with_done: false,
        };
        self.call_at(model, &upstream, demand, body).await
    }

    async fn call_unmetered(
        &self,
        url_path: &str,
        body: Option<Value>,
    ) -> Result<Reply, GeminiError> {
        self.unmetered(url_path, body).await
    }

    fn ledger(&self) -> Arc<dyn QuotaLedger> {
        self.ledger.clone()
    }

    fn stats(&self) -> Vec<KeyCallStats> {
        self.stats.lock().clone()
    }

    fn waiting_for_quota(&self) -> usize {
        self.waiting_for_quota
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
