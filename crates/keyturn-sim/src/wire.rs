//! The simulator's own reading of Gemini's request bodies. Like the real service (proto3 JSON), it
//! accepts lowerCamelCase and snake_case field names, and refuses unknown fields with 400.

use serde::Deserialize;
use serde_json::Value;

/// One part of a content.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Part {
    /// Text.
    #[serde(default)]
    pub text: Option<String>,
    /// Inline bytes.
    #[serde(default, alias = "inline_data")]
    pub inline_data: Option<Value>,
    /// A file reference.
    #[serde(default, alias = "file_data")]
    pub file_data: Option<Value>,
    /// A function call.
    #[serde(default, alias = "function_call")]
    pub function_call: Option<Value>,
    /// A function response.
    #[serde(default, alias = "function_response")]
    pub function_response: Option<Value>,
    /// Marks a thought.
    #[serde(default)]
    pub thought: Option<bool>,
    /// Thought signature.
    #[serde(default, alias = "thought_signature")]
    pub thought_signature: Option<String>,
    /// Code to run.
    #[serde(default, alias = "executable_code")]
    pub executable_code: Option<Value>,
    /// Result of running code.
    #[serde(default, alias = "code_execution_result")]
    pub code_execution_result: Option<Value>,
    /// Video metadata.
    #[serde(default, alias = "video_metadata")]
    pub video_metadata: Option<Value>,
}

/// A turn.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Content {
    /// "user" or "model".
    #[serde(default)]
    pub role: Option<String>,
    /// Its parts.
    #[serde(default)]
    pub parts: Vec<Part>,
}

impl Content {
    /// All text of the parts, space-joined.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| p.text.as_deref())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Generation settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerationConfig {
    /// Stop sequences.
    #[serde(default, alias = "stop_sequences")]
    pub stop_sequences: Option<Vec<String>>,
    /// `application/json` for structured output.
    #[serde(default, alias = "response_mime_type")]
    pub response_mime_type: Option<String>,
    /// OpenAPI-subset schema.
    #[serde(default, alias = "response_schema")]
    pub response_schema: Option<Value>,
    /// JSON Schema.
    #[serde(default, alias = "response_json_schema", alias = "_responseJsonSchema")]
    pub response_json_schema: Option<Value>,
    /// Output modalities.
    #[serde(default, alias = "response_modalities")]
    pub response_modalities: Option<Value>,
    /// Candidates.
    #[serde(default, alias = "candidate_count")]
    pub candidate_count: Option<u32>,
    /// Output cap.
    #[serde(default, alias = "max_output_tokens")]
    pub max_output_tokens: Option<u32>,
    /// Temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, alias = "top_p")]
    pub top_p: Option<f64>,
    /// Top-k.
    #[serde(default, alias = "top_k")]
    pub top_k: Option<f64>,
    /// Seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Presence penalty.
    #[serde(default, alias = "presence_penalty")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    #[serde(default, alias = "frequency_penalty")]
    pub frequency_penalty: Option<f64>,
    /// Log-probabilities.
    #[serde(default, alias = "response_logprobs")]
    pub response_logprobs: Option<bool>,
    /// How many log-probabilities.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Civic answers.
    #[serde(default, alias = "enable_enhanced_civic_answers")]
    pub enable_enhanced_civic_answers: Option<bool>,
    /// Speech.
    #[serde(default, alias = "speech_config")]
    pub speech_config: Option<Value>,
    /// Thinking.
    #[serde(default, alias = "thinking_config")]
    pub thinking_config: Option<Value>,
    /// Media resolution.
    #[serde(default, alias = "media_resolution")]
    pub media_resolution: Option<Value>,
}

/// `models/{m}:generateContent` and `:streamGenerateContent`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenerateContentRequest {
    /// The model, when given in the body.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    #[serde(default)]
    pub contents: Vec<Content>,
    /// System instruction.
    #[serde(default, alias = "system_instruction")]
    pub system_instruction: Option<Content>,
    /// Generation settings.
    #[serde(default, alias = "generation_config")]
    pub generation_config: Option<GenerationConfig>,
    /// Safety settings.
    #[serde(default, alias = "safety_settings")]
    pub safety_settings: Option<Value>,
    /// Tools.
    #[serde(default)]
    pub tools: Option<Value>,
    /// Tool configuration.
    #[serde(default, alias = "tool_config")]
    pub tool_config: Option<Value>,
    /// Cached content name.
    #[serde(default, alias = "cached_content")]
    pub cached_content: Option<String>,
}

impl GenerateContentRequest {
    /// All prompt text (system instruction first).
    pub fn prompt_text(&self) -> String {
        let mut out = String::new();
        if let Some(s) = &self.system_instruction {
            out.push_str(&s.text());
        }
        for c in &self.contents {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&c.text());
        }
        out
    }
}

/// `models/{m}:embedContent`, and each item of a batch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbedContentRequest {
    /// `models/{m}`; in a batch it must match the URL's model.
    #[serde(default)]
    pub model: Option<String>,
    /// The text.
    #[serde(default)]
    pub content: Content,
    /// RETRIEVAL_DOCUMENT, SEMANTIC_SIMILARITY, …
    #[serde(default, alias = "task_type")]
    pub task_type: Option<String>,
    /// Title (RETRIEVAL_DOCUMENT).
    #[serde(default)]
    pub title: Option<String>,
    /// Truncated dimension.
    #[serde(default, alias = "output_dimensionality")]
    pub output_dimensionality: Option<u32>,
}

/// `models/{m}:batchEmbedContents`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchEmbedContentsRequest {
    /// The items.
    #[serde(default)]
    pub requests: Vec<EmbedContentRequest>,
}

/// `models/{m}:countTokens`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CountTokensRequest {
    /// Contents to count.
    #[serde(default)]
    pub contents: Option<Vec<Content>>,
    /// Or a whole request.
    #[serde(default, alias = "generate_content_request")]
    pub generate_content_request: Option<GenerateContentRequest>,
}

/// Turns a serde error into the real service's wording.
pub fn describe_parse_error(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some(end) = rest.find('`')
    {
        return format!("Unknown name \"{}\": Cannot find field.", &rest[..end]);
    }
    msg
}

/// Tokens of a text as the simulator counts them: about four characters a token, at least one for
/// non-empty text.
pub fn count_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_parse() {
        let camel: GenerateContentRequest = serde_json::from_str(
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],
                "systemInstruction":{"parts":[{"text":"be brief"}]},
                "generationConfig":{"responseMimeType":"application/json","maxOutputTokens":5}}"#,
        )
        .unwrap();
        let snake: GenerateContentRequest = serde_json::from_str(
            r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}],
                "system_instruction":{"parts":[{"text":"be brief"}]},
                "generation_config":{"response_mime_type":"application/json","max_output_tokens":5}}"#,
        )
        .unwrap();
        for r in [camel, snake] {
            assert_eq!(r.prompt_text(), "be brief hi");
            let g = r.generation_config.unwrap();
            assert_eq!(g.response_mime_type.as_deref(), Some("application/json"));
            assert_eq!(g.max_output_tokens, Some(5));
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_the_real_wording() {
        let e = serde_json::from_str::<GenerateContentRequest>(r#"{"contnets":[]}"#).unwrap_err();
        assert_eq!(
            describe_parse_error(&e),
            "Unknown name \"contnets\": Cannot find field."
        );
    }

    #[test]
    fn token_count_is_quarter_chars_rounded_up() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("abc"), 1);
        assert_eq!(count_tokens("abcdefgh"), 2);
        assert_eq!(count_tokens("abcdefghi"), 3);
    }
}
