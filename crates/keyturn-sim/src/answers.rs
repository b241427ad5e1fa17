//! The answers the simulator makes up: a `generateContent` reply (text or JSON to a schema,
//! its candidates and usage), and the same streamed as SSE events or a JSON array.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::config::{Faults, ServedModel};
use crate::content::{json_reply, seed_of, text_reply};
use crate::wire::{GenerateContentRequest, count_tokens};

pub(crate) struct Reply {
    pub(crate) text: String,
    pub(crate) finish: &'static str,
    pub(crate) prompt_tokens: u64,
    pub(crate) candidate_tokens: u64,
    pub(crate) thoughts: u64,
}

pub(crate) fn reply_for(
    req: &GenerateContentRequest,
    model: &str,
    served: &ServedModel,
    index: u32,
) -> Reply {
    let prompt = req.prompt_text();
    let seed = seed_of(&[model, &prompt, &index.to_string()]);
    // Answers draw on what the user said, not on the instructions.
    let said = req
        .contents
        .iter()
        .map(|c| c.text())
        .collect::<Vec<_>>()
        .join("\n");
    let gc = req.generation_config.clone().unwrap_or_default();
    let json_mode = gc.response_mime_type.as_deref() == Some("application/json");
    let schema = gc
        .response_schema
        .as_ref()
        .or(gc.response_json_schema.as_ref());
    let (mut text, mut finish) = if json_mode {
        let v = match schema {
            Some(s) => json_reply(&said, seed, s),
            None => json!({ "answer": text_reply(&said, seed, 12) }),
        };
        (serde_json::to_string(&v).unwrap_or_default(), "STOP")
    } else {
        (text_reply(&said, seed, 24), "STOP")
    };
    if !json_mode
        && let Some(max) = gc.max_output_tokens
        && count_tokens(&text) > u64::from(max)
    {
        text = text.chars().take(max as usize * 4).collect();
        finish = "MAX_TOKENS";
    }
    let thoughts = if served.thinking { 8 + seed % 24 } else { 0 };
    Reply {
        prompt_tokens: count_tokens(&prompt),
        candidate_tokens: count_tokens(&text),
        text,
        finish,
        thoughts,
    }
}

fn usage(prompt: u64, candidates: u64, thoughts: u64) -> Value {
    let mut u = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    });
    if thoughts > 0 {
        u["thoughtsTokenCount"] = json!(thoughts);
    }
    u
}

/// The `generateContent` answer; batches answer each request with it too.
pub(crate) fn generate(
    req: &GenerateContentRequest,
    model: &str,
    served: &ServedModel,
    id: &str,
) -> Value {
    let n = req
        .generation_config
        .as_ref()
        .and_then(|g| g.candidate_count)
        .unwrap_or(1)
        .clamp(1, 8);
    let replies: Vec<Reply> = (0..n).map(|i| reply_for(req, model, served, i)).collect();
    let candidates: Vec<Value> = replies
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "content": {"parts": [{"text": r.text}], "role": "model"},
                "finishReason": r.finish,
                "index": i,
            })
        })
        .collect();
    let prompt = replies[0].prompt_tokens;
    let cand: u64 = replies.iter().map(|r| r.candidate_tokens).sum();
    let thoughts: u64 = replies.iter().map(|r| r.thoughts).sum();
    json!({
        "candidates": candidates,
        "usageMetadata": usage(prompt, cand, thoughts),
        "modelVersion": model,
        "responseId": id,
    })
}

pub(crate) fn stream_response(
    req: &GenerateContentRequest,
    model: &str,
    served: &ServedModel,
    id: &str,
    sse: bool,
    faults: Faults,
) -> Response {
    let r = reply_for(req, model, served, 0);
    // Split the text into up to three chunks on char boundaries.
    let chars: Vec<char> = r.text.chars().collect();
    let pieces = 3.min(chars.len().max(1));
    let per = chars.len().div_ceil(pieces).max(1);
    let chunks: Vec<String> = chars.chunks(per).map(|c| c.iter().collect()).collect();
    let last = chunks.len().saturating_sub(1);
    let mut sent_tokens = 0;
    let events: Vec<String> = chunks
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            sent_tokens += count_tokens(piece);
            let mut cand =
                json!({"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0});
            let thoughts = if i == last { r.thoughts } else { 0 };
            let tokens = if i == last {
                r.candidate_tokens
            } else {
                sent_tokens
            };
            if i == last {
                cand["finishReason"] = json!(r.finish);
            }
            let chunk = json!({
                "candidates": [cand],
                "usageMetadata": usage(r.prompt_tokens, tokens, thoughts),
                "modelVersion": model,
                "responseId": id,
            });
            let text = serde_json::to_string(&chunk).unwrap_or_default();
            if sse {
                format!("data: {text}\r\n\r\n")
            } else if i == 0 {
                format!("[{text}")
            } else {
                format!(",\r\n{text}")
            }
        })
        .chain((!sse).then(|| "]".to_owned()))
        .collect();
    let delay = Duration::from_millis(faults.stream_chunk_delay_ms);
    let stream =
        futures::stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<Bytes, Infallible>(Bytes::from(e))
        });
    let mut resp = Response::new(Body::from_stream(stream));
    let ct = if sse {
        "text/event-stream"
    } else {
        "application/json; charset=UTF-8"
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}
