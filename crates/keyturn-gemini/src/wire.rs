//! Gemini's request and response bodies. Serialized in lowerCamelCase as the API documents;
//! deserialization tolerates unknown fields and keeps them (`extra`) so nothing a caller needs is
//! lost when Google adds fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One part of a content: text, or anything else (inline data, function calls…) kept as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Marks a thought summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    /// Other fields (inlineData, functionCall, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Part {
    /// A text part.
    pub fn text(t: impl Into<String>) -> Self {
        Self {
            text: Some(t.into()),
            ..Self::default()
        }
    }
}

/// A turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// "user" or "model".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Parts.
    #[serde(default)]
    pub parts: Vec<Part>,
}

impl Content {
    /// A user turn with one text part.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Some("user".into()),
            parts: vec![Part::text(text)],
        }
    }

    /// A system instruction (no role).
    pub fn system(text: impl Into<String>) -> Self {
        Self {
            role: None,
            parts: vec![Part::text(text)],
        }
    }

    /// Text of the parts that are not thoughts, concatenated.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter(|p| p.thought != Some(true))
            .filter_map(|p| p.text.as_deref())
            .collect()
    }
}

/// Generation settings (the ones keyturn uses; anything else through `extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    /// Temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Output cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// `application/json` for structured output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<String>,
    /// Schema of the JSON output (OpenAPI subset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<Value>,
    /// Other settings (topP, thinkingConfig, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `models/{m}:generateContent` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    /// The conversation.
    pub contents: Vec<Content>,
    /// System instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<Content>,
    /// Generation settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_config: Option<GenerationConfig>,
    /// Safety settings, tools, tool config, cached content…
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GenerateContentRequest {
    /// All the text that counts as input: system instruction and every part of every turn.
    pub fn input_text_len(&self) -> usize {
        let mut n = self
            .system_instruction
            .iter()
            .flat_map(|c| &c.parts)
            .filter_map(|p| p.text.as_ref())
            .map(String::len)
            .sum::<usize>();
        n += self
            .contents
            .iter()
            .flat_map(|c| &c.parts)
            .filter_map(|p| p.text.as_ref())
            .map(String::len)
            .sum::<usize>();
        n
    }

    /// Non-text parts (images, files, calls) in the input; the local estimate cannot size them.
    pub fn has_non_text_parts(&self) -> bool {
        self.contents
            .iter()
            .flat_map(|c| &c.parts)
            .any(|p| p.text.is_none())
    }
}

/// Token counts of a call, from `usageMetadata`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    /// Input tokens (what TPM counts).
    #[serde(default)]
    pub prompt_token_count: u64,
    /// Output tokens.
    #[serde(default)]
    pub candidates_token_count: u64,
    /// Thinking tokens.
    #[serde(default)]
    pub thoughts_token_count: u64,
    /// Tokens served from the context cache.
    #[serde(default)]
    pub cached_content_token_count: u64,
    /// Tool-use prompt tokens.
    #[serde(default)]
    pub tool_use_prompt_token_count: u64,
    /// All of them.
    #[serde(default)]
    pub total_token_count: u64,
}

/// One candidate answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// The content.
    #[serde(default)]
    pub content: Content,
    /// STOP, MAX_TOKENS, SAFETY, RECITATION, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Safety ratings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_ratings: Option<Value>,
    /// Index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Citation metadata, grounding metadata, …
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `generateContent` response (and each streamed chunk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    /// Candidates.
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    /// Usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_metadata: Option<UsageMetadata>,
    /// Model version that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Response id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// Prompt feedback (block reasons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_feedback: Option<Value>,
    /// Anything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GenerateContentResponse {
    /// The first candidate's text.
    pub fn text(&self) -> String {
        self.candidates
            .first()
            .map(|c| c.content.text())
            .unwrap_or_default()
    }

    /// The first candidate's finish reason.
    pub fn finish_reason(&self) -> Option<&str> {
        self.candidates
            .first()
            .and_then(|c| c.finish_reason.as_deref())
    }
}

/// `embedContent` request, and each item of a batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbedContentRequest {
    /// `models/{m}` (required in batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The text.
    pub content: Content,
    /// RETRIEVAL_DOCUMENT, RETRIEVAL_QUERY, SEMANTIC_SIMILARITY, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// Title (RETRIEVAL_DOCUMENT only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Truncated dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_dimensionality: Option<u32>,
}

/// An embedding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContentEmbedding {
    /// Values.
    #[serde(default)]
    pub values: Vec<f32>,
}

/// `embedContent` response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbedContentResponse {
    /// The embedding.
    pub embedding: ContentEmbedding,
}

/// `batchEmbedContents` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchEmbedContentsRequest {
    /// Items (at most 100).
    pub requests: Vec<EmbedContentRequest>,
}

/// `batchEmbedContents` response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchEmbedContentsResponse {
    /// Embeddings, in request order.
    #[serde(default)]
    pub embeddings: Vec<ContentEmbedding>,
}

/// `countTokens` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CountTokensRequest {
    /// A whole request to count.
    pub generate_content_request: Value,
}

/// `countTokens` response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CountTokensResponse {
    /// Tokens.
    #[serde(default)]
    pub total_tokens: u64,
}

/// Input tokens to reserve before a call: ⌈UTF-8 bytes / 3⌉ + 4 a part. Above Gemini's ~4
/// characters a token for text, so the reservation errs high and settling with the real
/// `usageMetadata.promptTokenCount` gives the difference back. Every client of the pool (the
/// LLM and embeddings services, the proxy) reserves by this one rule.
pub fn estimate_input_tokens(text_bytes: u64, parts: u64) -> u64 {
    text_bytes.div_ceil(3) + 4 * parts
}

/// Something with `usageMetadata`, so the call loop can settle with real input tokens.
pub trait HasUsage {
    /// Input tokens the server counted, if it said.
    fn input_tokens(&self) -> Option<u64>;

    /// Output tokens (candidates and thoughts) the server counted, if it said.
    fn output_tokens(&self) -> Option<u64> {
        None
    }
}

impl HasUsage for GenerateContentResponse {
    fn input_tokens(&self) -> Option<u64> {
        self.usage_metadata.map(|u| u.prompt_token_count)
    }
}

impl HasUsage for EmbedContentResponse {
    fn input_tokens(&self) -> Option<u64> {
        None
    }
}

impl HasUsage for BatchEmbedContentsResponse {
    fn input_tokens(&self) -> Option<u64> {
        None
    }
}

impl HasUsage for CountTokensResponse {
    fn input_tokens(&self) -> Option<u64> {
        None
    }
}

/// Gemini's native answers count in `usageMetadata`; its OpenAI-compatible ones in OpenAI's
/// `usage` (`prompt_tokens`, `completion_tokens`, thoughts included in the latter).
impl HasUsage for Value {
    fn input_tokens(&self) -> Option<u64> {
        match self.get("usageMetadata") {
            Some(u) => u.get("promptTokenCount")?.as_u64(),
            None => self.get("usage")?.get("prompt_tokens")?.as_u64(),
        }
    }

    fn output_tokens(&self) -> Option<u64> {
        let Some(u) = self.get("usageMetadata") else {
            return self.get("usage")?.get("completion_tokens")?.as_u64();
        };
        let n = |f: &str| u.get(f).and_then(Value::as_u64);
        match (n("candidatesTokenCount"), n("thoughtsTokenCount")) {
            (None, None) => None,
            (c, t) => Some(c.unwrap_or(0) + t.unwrap_or(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = r#"{"candidates":[{"content":{"parts":[{"text":"hi"},{"thought":true,"text":"hmm"}],"role":"model"},
            "finishReason":"STOP","safetyRatings":[{"category":"X","probability":"LOW"}],"groundingMetadata":{"a":1}}],
            "usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"totalTokenCount":9,"thoughtsTokenCount":2,"cachedContentTokenCount":1},
            "modelVersion":"gemini-2.5-flash","responseId":"r1","newTopLevel":true}"#;
        let r: GenerateContentResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.text(), "hi", "thoughts are not answer text");
        assert_eq!(r.finish_reason(), Some("STOP"));
        let u = r.usage_metadata.unwrap();
        assert_eq!(
            (
                u.prompt_token_count,
                u.thoughts_token_count,
                u.cached_content_token_count
            ),
            (5, 2, 1)
        );
        assert!(r.candidates[0].safety_ratings.is_some());
        assert!(r.candidates[0].extra.contains_key("groundingMetadata"));
        assert!(r.extra.contains_key("newTopLevel"));
        let again = serde_json::to_value(&r).unwrap();
        assert_eq!(again["newTopLevel"], true);
    }

    #[test]
    fn usage_is_read_in_both_dialects() {
        let native = serde_json::json!({"usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3, "thoughtsTokenCount": 2}});
        assert_eq!(
            (native.input_tokens(), native.output_tokens()),
            (Some(7), Some(5))
        );
        let openai = serde_json::json!({"usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}});
        assert_eq!(
            (openai.input_tokens(), openai.output_tokens()),
            (Some(9), Some(4))
        );
        let none = serde_json::json!({"choices": []});
        assert_eq!((none.input_tokens(), none.output_tokens()), (None, None));
    }

    #[test]
    fn requests_serialize_in_camel_case() {
        let req = GenerateContentRequest {
            contents: vec![Content::user("x")],
            system_instruction: Some(Content::system("s")),
            generation_config: Some(GenerationConfig {
                response_mime_type: Some("application/json".into()),
                max_output_tokens: Some(10),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&req).unwrap();
        assert!(v.get("systemInstruction").is_some());
        assert_eq!(
            v["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert_eq!(v["generationConfig"]["maxOutputTokens"], 10);
    }
}
