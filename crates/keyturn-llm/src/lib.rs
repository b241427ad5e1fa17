//! # keyturn-llm
//!
//! The LLM service: [`LlmService`] (a mockable async trait) and [`GeminiLlm`], its Gemini
//! implementation on a shared key pool — generate (text, or JSON under a response schema, with a
//! system instruction and generation config), stream (SSE), count tokens, and a response cache
//! whose hits spend no quota.
//!
//! Before acquiring, each call estimates its input tokens so the pool can reserve TPM: by default
//! locally, as ⌈UTF-8 bytes / 3⌉ + 4 per part — above Gemini's ~4 characters a token for text, so
//! the reservation errs high and settling with the real `usageMetadata.promptTokenCount` gives the
//! difference back. Requests with non-text parts (images, files), which the local estimate cannot
//! size, ask the server's `countTokens` (which spends no generation quota); if that fails they
//! fall back to the local estimate plus 1,000 tokens a part. [`EstimateMode::CountTokens`] always
//! asks the server.
//!
//! From keys to an answer (`examples/generate.rs` runs this against `keyturn sim` in CI):
//!
//! ```no_run
//! use keyturn_llm::{GeminiLlm, GenerateRequest, LlmService};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let llm = GeminiLlm::builder()
//!     .keys(std::env::var("GEMINI_API_KEYS")?.split(','))
//!     .base_url(std::env::var("GEMINI_BASE_URL").unwrap_or(keyturn_llm::DEFAULT_BASE_URL.into()))
//!     .build()?;
//! let req = GenerateRequest::new("gemini-2.5-flash", "Name three rivers.").system("Be brief.");
//! let out = llm.generate(&req).await?;
//! println!("{} (key {:?}, cache hit: {})", out.text, out.key, out.cache_hit);
//! # Ok(()) }
//! ```
//!
//! The pool is in memory unless [`GeminiLlmBuilder::ledger`] gives it a persisted or shared
//! ledger (`examples/persistent_state.rs`); [`GeminiLlmBuilder::caller`] shares one pool with
//! `keyturn-embeddings`. Every type in this crate's signatures is re-exported here, and the
//! lower crates are reachable as [`keyturn_core`] and [`keyturn_gemini`].

mod builder;
mod cache;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use keyturn_core::Demand;

pub use builder::GeminiLlmBuilder;
pub use cache::{CacheConfig, CacheStats, ResponseCache};
// What a caller needs to read `LlmService::stream`'s answer.
pub use futures::StreamExt;
pub use futures::stream::BoxStream;
pub use keyturn_core::{self, ApiKey, Clock, KeySpec, LedgerConfig, QuotaLedger};
pub use keyturn_gemini::transport::DEFAULT_BASE_URL;
pub use keyturn_gemini::wire::{
    self, Content, CountTokensResponse, GenerateContentRequest, GenerateContentResponse,
    GenerationConfig, Part, UsageMetadata,
};
pub use keyturn_gemini::{
    self, BuildError, CallerBuilder, ErrorKind, GeminiCall, GeminiError, RetryPolicy,
};
pub use serde_json::Value;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Model id.
    pub model: String,
    /// The request body (contents, system instruction, generation config, anything else).
    pub body: GenerateContentRequest,
}

impl GenerateRequest {
    /// One user turn.
    pub fn new(model: impl Into<String>, prompt: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            body: GenerateContentRequest {
                contents: vec![Content::user(prompt)],
                ..Default::default()
            },
        }
    }

    /// Sets the system instruction.
    pub fn system(mut self, text: impl Into<String>) -> Self {
        self.body.system_instruction = Some(Content::system(text));
        self
    }

    fn config(&mut self) -> &mut GenerationConfig {
        self.body
            .generation_config
            .get_or_insert_with(Default::default)
    }

    /// Asks for JSON that conforms to `schema` (Gemini's OpenAPI subset).
    pub fn json_schema(mut self, schema: Value) -> Self {
        let c = self.config();
        c.response_mime_type = Some("application/json".into());
        c.response_schema = Some(schema);
        self
    }

    /// Caps output tokens.
    pub fn max_output_tokens(mut self, n: u32) -> Self {
        self.config().max_output_tokens = Some(n);
        self
    }

    /// Sets the temperature.
    pub fn temperature(mut self, t: f64) -> Self {
        self.config().temperature = Some(t);
        self
    }
}

/// A generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The first candidate's text.
    pub text: String,
    /// Its finish reason.
    pub finish_reason: Option<String>,
    /// Usage as Gemini reported it (zero for cache hits: they spent nothing).
    pub usage: UsageMetadata,
    /// The whole response.
    pub response: GenerateContentResponse,
    /// Served from the cache: no request was sent, no quota spent.
    pub cache_hit: bool,
    /// Label of the key that served it (`None` for cache hits).
    pub key: Option<String>,
    /// Attempts it took (0 for cache hits).
    pub attempts: u32,
}

/// One streamed chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamChunk {
    /// Text added by this chunk.
    pub text: String,
    /// Set on the last chunk.
    pub finish_reason: Option<String>,
    /// Usage so far.
    pub usage: Option<UsageMetadata>,
}

/// An LLM call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The call failed (classified: see [`GeminiError::kind`]).
    #[error(transparent)]
    Gemini(#[from] GeminiError),
    /// JSON output was asked for and the answer is not JSON.
    #[error(
        "{model} answered with text that is not valid JSON ({detail}); finish reason {finish:?}"
    )]
    InvalidJson {
        /// Model.
        model: String,
        /// Parser's complaint.
        detail: String,
        /// Finish reason (MAX_TOKENS means the output was cut).
        finish: Option<String>,
    },
    /// The answer had no candidate (blocked prompt).
    #[error("{model} returned no answer (prompt feedback: {feedback})")]
    NoCandidate {
        /// Model.
        model: String,
        /// `promptFeedback`, as JSON.
        feedback: String,
    },
}

/// How input tokens are estimated before a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EstimateMode {
    /// Locally (no request), asking the server only for non-text parts.
    #[default]
    Local,
    /// Always `countTokens` (precise; one extra unmetered request per call).
    CountTokens,
}

/// LLM service settings.
#[derive(Debug, Clone, Default)]
pub struct LlmConfig {
    /// How to estimate input tokens.
    pub estimate: EstimateMode,
    /// Response cache (`None`: off).
    pub cache: Option<CacheConfig>,
}

/// The LLM service.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait LlmService: Send + Sync + std::fmt::Debug {
    /// Generates (text, or JSON when the request asks for it).
    async fn generate(&self, req: &GenerateRequest) -> Result<Generation, LlmError>;

    /// Generates JSON under `schema` and parses it.
    async fn generate_json(
        &self,
        req: &GenerateRequest,
        schema: &Value,
    ) -> Result<(Value, Generation), LlmError>;

    /// Streams the answer chunk by chunk.
    async fn stream(
        &self,
        req: &GenerateRequest,
    ) -> Result<BoxStream<'static, Result<StreamChunk, LlmError>>, LlmError>;

    /// Counts a request's input tokens on the server (spends no generation quota).
    async fn count_tokens(&self, req: &GenerateRequest) -> Result<u64, LlmError>;

    /// Cache hits and misses so far.
    fn cache_stats(&self) -> CacheStats;
}

fn _object_safe(_: Box<dyn LlmService>) {}

/// Local input-token estimate: ⌈bytes / 3⌉ + 4 per part, an upper bound for text.
pub fn local_estimate(body: &GenerateContentRequest) -> u64 {
    let parts = body
        .contents
        .iter()
        .chain(body.system_instruction.iter())
        .map(|c| c.parts.len() as u64)
        .sum::<u64>();
    keyturn_gemini::wire::estimate_input_tokens(body.input_text_len() as u64, parts)
}

/// Added per non-text part when the server cannot be asked.
pub const NON_TEXT_PART_FALLBACK: u64 = 1_000;

/// [`LlmService`] on Gemini.
#[derive(Debug)]
pub struct GeminiLlm {
    caller: Arc<dyn GeminiCall>,
    cfg: LlmConfig,
    cache: Option<ResponseCache>,
    estimates_from_server: AtomicU64,
}

impl GeminiLlm {
    /// A service on a caller (which holds the shared pool); `clock` is the pool's, by which
    /// cached answers age.
    pub fn new(caller: Arc<dyn GeminiCall>, cfg: LlmConfig, clock: Arc<dyn Clock>) -> Self {
        let cache = cfg.cache.clone().map(|c| ResponseCache::new(c, clock));
        Self {
            caller,
            cfg,
            cache,
            estimates_from_server: AtomicU64::new(0),
        }
    }

    /// The caller (and through it, the pool).
    pub fn caller(&self) -> &Arc<dyn GeminiCall> {
        &self.caller
    }

    /// How many estimates were asked of the server.
    pub fn server_estimates(&self) -> u64 {
        self.estimates_from_server.load(Ordering::Relaxed)
    }

    /// Input tokens to reserve for a request.
    pub async fn estimate(&self, req: &GenerateRequest) -> u64 {
        let local = local_estimate(&req.body);
        let non_text = req
            .body
            .contents
            .iter()
            .flat_map(|c| &c.parts)
            .filter(|p| p.text.is_none())
            .count() as u64;
        if self.cfg.estimate == EstimateMode::Local && non_text == 0 {
            return local;
        }
        match self.count_tokens(req).await {
            Ok(n) => {
                self.estimates_from_server.fetch_add(1, Ordering::Relaxed);
                n
            }
            Err(e) => {
                tracing::debug!(error = %e, "countTokens failed; using the local estimate");
                local + NON_TEXT_PART_FALLBACK * non_text
            }
        }
    }

    fn body_value(req: &GenerateRequest) -> Value {
        serde_json::to_value(&req.body).unwrap_or(Value::Null)
    }
}

fn to_generation(
    model: &str,
    body: Value,
    key: Option<String>,
    attempts: u32,
    cache_hit: bool,
) -> Result<Generation, LlmError> {
    let response: GenerateContentResponse =
        serde_json::from_value(body).map_err(|e| LlmError::InvalidJson {
            model: model.to_owned(),
            detail: format!("response shape: {e}"),
            finish: None,
        })?;
    if response.candidates.is_empty() {
        return Err(LlmError::NoCandidate {
            model: model.to_owned(),
            feedback: response
                .prompt_feedback
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_else(|| "none".into()),
        });
    }
    Ok(Generation {
        text: response.text(),
        finish_reason: response.finish_reason().map(str::to_owned),
        usage: if cache_hit {
            UsageMetadata::default()
        } else {
            response.usage_metadata.unwrap_or_default()
        },
        response,
        cache_hit,
        key,
        attempts,
    })
}

/// The JSON a structured answer holds, as [`LlmService::generate_json`] reads it.
fn json_of_generation(model: &str, g: Generation) -> Result<(Value, Generation), LlmError> {
    let v = serde_json::from_str(&g.text).map_err(|e| LlmError::InvalidJson {
        model: model.to_owned(),
        detail: e.to_string(),
        finish: g.finish_reason.clone(),
    })?;
    Ok((v, g))
}

/// Reads a `GenerateContentResponse` that came some other way than a call — one answer of a
/// Batch Mode job — exactly as [`LlmService::generate_json`] reads its own: no candidate, a
/// response of the wrong shape and text that is not JSON are the same errors.
pub fn json_answer(model: &str, response: Value) -> Result<(Value, Generation), LlmError> {
    json_of_generation(model, to_generation(model, response, None, 0, false)?)
}

/// The `GenerateContentRequest` body [`LlmService::generate_json`] sends for `req` under
/// `schema`, for a caller that sends it another way (a Batch Mode job).
pub fn json_request_body(req: &GenerateRequest, schema: &Value) -> Value {
    GeminiLlm::body_value(&req.clone().json_schema(schema.clone()))
}

#[async_trait]
impl LlmService for GeminiLlm {
    async fn generate(&self, req: &GenerateRequest) -> Result<Generation, LlmError> {
        let body = Self::body_value(req);
        let cache_key = self.cache.as_ref().map(|c| c.key(&req.model, &body));
        if let (Some(cache), Some(k)) = (&self.cache, &cache_key)
            && let Some(hit) = cache.get(k).await
        {
            return to_generation(&req.model, hit, None, 0, true);
        }
        let tokens = self.estimate(req).await;
        let reply = self
            .caller
            .call(&req.model, "generateContent", Demand::tokens(tokens), body)
            .await?;
        let out = to_generation(
            &req.model,
            reply.body.clone(),
            Some(reply.key),
            reply.attempts,
            false,
        )?;
        if let (Some(cache), Some(k)) = (&self.cache, cache_key) {
            cache.put(k, reply.body).await;
        }
        Ok(out)
    }

    async fn generate_json(
        &self,
        req: &GenerateRequest,
        schema: &Value,
    ) -> Result<(Value, Generation), LlmError> {
        let req = req.clone().json_schema(schema.clone());
        let g = self.generate(&req).await?;
        json_of_generation(&req.model, g)
    }

    async fn stream(
        &self,
        req: &GenerateRequest,
    ) -> Result<BoxStream<'static, Result<StreamChunk, LlmError>>, LlmError> {
        let tokens = self.estimate(req).await;
        let chunks = self
            .caller
            .stream(&req.model, Demand::tokens(tokens), Self::body_value(req))
            .await?;
        Ok(chunks
            .map(|c| {
                let v = c?;
                let r: GenerateContentResponse =
                    serde_json::from_value(v).map_err(|e| LlmError::InvalidJson {
                        model: String::new(),
                        detail: format!("stream chunk shape: {e}"),
                        finish: None,
                    })?;
                Ok(StreamChunk {
                    text: r.text(),
                    finish_reason: r.finish_reason().map(str::to_owned),
                    usage: r.usage_metadata,
                })
            })
            .boxed())
    }

    async fn count_tokens(&self, req: &GenerateRequest) -> Result<u64, LlmError> {
        let model = req.model.strip_prefix("models/").unwrap_or(&req.model);
        let mut inner = Self::body_value(req);
        if let Value::Object(m) = &mut inner {
            m.insert("model".into(), Value::String(format!("models/{model}")));
        }
        let body = serde_json::json!({ "generateContentRequest": inner });
        let reply = self
            .caller
            .call_unmetered(&format!("models/{model}:countTokens"), Some(body))
            .await?;
        let r: CountTokensResponse =
            serde_json::from_value(reply.body).map_err(|e| LlmError::InvalidJson {
                model: model.to_owned(),
                detail: format!("countTokens shape: {e}"),
                finish: None,
            })?;
        Ok(r.total_tokens)
    }

    fn cache_stats(&self) -> CacheStats {
        self.cache
            .as_ref()
            .map_or_else(CacheStats::default, ResponseCache::stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyturn_gemini::wire::Part;
    use keyturn_gemini::{MockGeminiCall, Reply};
    use serde_json::json;

    /// These tests keep answers in memory only, which age by moka's own timer: any clock does.
    fn test_clock() -> Arc<dyn Clock> {
        Arc::new(keyturn_core::ManualClock::at_ms(0))
    }

    fn ok_reply(text: &str, prompt_tokens: u64) -> Reply {
        Reply {
            body: json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP"}],
                         "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": 1, "totalTokenCount": prompt_tokens + 1}}),
            key: "k1".into(),
            attempts: 1,
            ..Reply::default()
        }
    }

    #[test]
    fn local_estimate_is_an_upper_bound_of_four_chars_a_token() {
        let req = GenerateRequest::new("m", "a".repeat(400)).system("b".repeat(40));
        let est = local_estimate(&req.body);
        assert_eq!(est, 440u64.div_ceil(3) + 8);
        assert!(est >= 440 / 4);
    }

    #[tokio::test]
    async fn the_estimate_is_reserved_and_text_requests_never_ask_the_server() {
        let mut mock = MockGeminiCall::new();
        mock.expect_call_unmetered().never();
        mock.expect_call()
            .withf(|model, method, demand, body| {
                model == "gemini-2.5-flash"
                    && method == "generateContent"
                    && *demand == Demand::tokens(30u64.div_ceil(3) + 4)
                    && body["contents"][0]["parts"][0]["text"] == "x".repeat(30)
            })
            .times(1)
            .returning(|_, _, _, _| Ok(ok_reply("hi", 8)));
        let llm = GeminiLlm::new(Arc::new(mock), LlmConfig::default(), test_clock());
        let g = llm
            .generate(&GenerateRequest::new("gemini-2.5-flash", "x".repeat(30)))
            .await
            .unwrap();
        assert_eq!(
            (g.text.as_str(), g.usage.prompt_token_count, g.cache_hit),
            ("hi", 8, false)
        );
    }

    #[tokio::test]
    async fn non_text_parts_ask_count_tokens_and_fall_back_when_it_fails() {
        let mut req = GenerateRequest::new("gemini-2.5-flash", "describe");
        let mut image = Part::default();
        image.extra.insert(
            "inlineData".into(),
            json!({"mimeType": "image/png", "data": "AAAA"}),
        );
        req.body.contents[0].parts.push(image);
        let local = local_estimate(&req.body);

        let mut mock = MockGeminiCall::new();
        mock.expect_call_unmetered()
            .withf(|path, body| path == "models/gemini-2.5-flash:countTokens" && body.is_some())
            .times(1)
            .returning(|_, _| {
                Ok(Reply {
                    body: json!({"totalTokens": 777}),
                    key: "k".into(),
                    attempts: 1,
                    ..Reply::default()
                })
            });
        mock.expect_call()
            .withf(|_, _, d, _| *d == Demand::tokens(777))
            .returning(|_, _, _, _| Ok(ok_reply("ok", 700)));
        let llm = GeminiLlm::new(Arc::new(mock), LlmConfig::default(), test_clock());
        llm.generate(&req).await.unwrap();
        assert_eq!(llm.server_estimates(), 1);

        let mut mock = MockGeminiCall::new();
        mock.expect_call_unmetered().returning(|_, _| {
            Err(GeminiError::Transport {
                model: "m".into(),
                key: "k".into(),
                detail: "down".into(),
            })
        });
        mock.expect_call()
            .withf(move |_, _, d, _| *d == Demand::tokens(local + NON_TEXT_PART_FALLBACK))
            .returning(|_, _, _, _| Ok(ok_reply("ok", 700)));
        let llm = GeminiLlm::new(Arc::new(mock), LlmConfig::default(), test_clock());
        llm.generate(&req).await.unwrap();
    }

    #[tokio::test]
    async fn json_output_is_parsed_and_non_json_is_a_typed_error() {
        let mut mock = MockGeminiCall::new();
        let mut n = 0;
        mock.expect_call()
            .withf(|_, _, _, body| {
                body["generationConfig"]["responseMimeType"] == "application/json"
            })
            .returning(move |_, _, _, _| {
                n += 1;
                Ok(ok_reply(
                    if n == 1 { r#"{"a": [1, 2]}"# } else { "{cut" },
                    5,
                ))
            });
        let llm = GeminiLlm::new(Arc::new(mock), LlmConfig::default(), test_clock());
        let req = GenerateRequest::new("m", "x");
        let (v, _) = llm
            .generate_json(&req, &json!({"type": "OBJECT"}))
            .await
            .unwrap();
        assert_eq!(v["a"][1], 2);
        let e = llm
            .generate_json(&req, &json!({"type": "OBJECT"}))
            .await
            .unwrap_err();
        assert!(matches!(e, LlmError::InvalidJson { .. }), "{e}");
    }

    #[tokio::test]
    async fn cache_hits_send_nothing_and_differ_by_model_and_body() {
        let mut mock = MockGeminiCall::new();
        mock.expect_call()
            .times(3)
            .returning(|_, _, _, _| Ok(ok_reply("hi", 3)));
        let llm = GeminiLlm::new(
            Arc::new(mock),
            LlmConfig {
                cache: Some(CacheConfig::default()),
                ..Default::default()
            },
            test_clock(),
        );
        let a = GenerateRequest::new("m1", "same");
        assert!(!llm.generate(&a).await.unwrap().cache_hit);
        let hit = llm.generate(&a).await.unwrap();
        assert!(hit.cache_hit && hit.key.is_none() && hit.usage == UsageMetadata::default());
        assert!(
            !llm.generate(&GenerateRequest::new("m2", "same"))
                .await
                .unwrap()
                .cache_hit
        );
        assert!(
            !llm.generate(&a.clone().temperature(0.5))
                .await
                .unwrap()
                .cache_hit
        );
        assert_eq!(llm.cache_stats(), CacheStats { hits: 1, misses: 3 });
    }
}
