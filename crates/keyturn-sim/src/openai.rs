//! Gemini's OpenAI-compatible surface, `/v1beta/openai/…`, as the real service serves it:
//! `POST chat/completions` (plain, streamed as `data:` events ending in `data: [DONE]`, tools,
//! `response_format`), `POST embeddings`, `GET models`, `GET models/{m}`. The key comes as
//! `Authorization: Bearer`; every error is the native body wrapped in a one-element list,
//! `[{"error": {…}}]` (the shape public reports show, see keyturn-gemini's classifier).
//!
//! Each request is a native one underneath, as for the real service: a chat completion is a
//! `generateContent` (or `streamGenerateContent`) on the model's quota, an embedding an
//! `embedContent` (a list of inputs a `batchEmbedContents`, one request per input), the model
//! routes `getModel` and `listModels` probes; scripts, project states, faults and quotas apply
//! exactly as on the native routes, and the stats count them under those routes.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use crate::admission::{Peer, Surface, authenticate_on, error_on, gate, not_found, peer_ip};
use crate::answers::reply_for;
use crate::config::{Route, ServedModel};
use crate::content::{embedding, json_reply, seed_of};
use crate::errors::{self, ApiError};
use crate::faults::{Fault, dropped, malformed};
use crate::files::foreign_file;
use crate::models::spend;
use crate::server::{DEFAULT_EMBEDDING_DIMS, json_response};
use crate::state::{KeyInfo, SimState};
use crate::wire::{GenerateContentRequest, count_tokens};

/// Only `v1beta` serves the OpenAI-compatible routes.
fn version_ok(v: &str) -> bool {
    v == "v1beta"
}

fn model_object(name: &str) -> Value {
    json!({"id": format!("models/{name}"), "object": "model", "created": 0, "owned_by": "google"})
}

/// Authenticates and passes the gate, or the refusal in the list envelope.
fn admit(
    st: &SimState,
    headers: &HeaderMap,
    route: Route,
    model: Option<&str>,
    peer: &Peer,
) -> Result<KeyInfo, Box<Response>> {
    let ip = peer_ip(peer);
    let key = authenticate_on(Surface::OpenAi, st, headers, None, route, ip)?;
    if let Some(e) = gate(st, &key, route, model, ip) {
        return Err(Box::new(error_on(Surface::OpenAi, st, Some(&key), &e)));
    }
    Ok(key)
}

/// `GET /v1beta/openai/models`.
pub(crate) async fn list_models(
    State(st): State<Arc<SimState>>,
    Path(version): Path<String>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    if !version_ok(&version) {
        return error_on(Surface::OpenAi, &st, None, &not_found());
    }
    let key = match admit(&st, &headers, Route::ListModels, None, &peer) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let data: Vec<Value> = st
        .served_models()
        .iter()
        .map(|(n, _)| model_object(n))
        .collect();
    st.record_status(Some(&key), 200);
    json_response(200, &json!({"object": "list", "data": data}))
}

/// `GET /v1beta/openai/models/{m}`.
pub(crate) async fn get_model(
    State(st): State<Arc<SimState>>,
    Path((version, name)): Path<(String, String)>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    if !version_ok(&version) {
        return error_on(Surface::OpenAi, &st, None, &not_found());
    }
    let key = match admit(&st, &headers, Route::GetModel, Some(&name), &peer) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match st.served(&name) {
        Some(_) => {
            st.record_status(Some(&key), 200);
            json_response(200, &model_object(&name))
        }
        None => error_on(
            Surface::OpenAi,
            &st,
            Some(&key),
            &errors::model_not_found(&name, &version, "get"),
        ),
    }
}

/// A body's `model`, `models/` stripped.
fn body_model(v: &Value) -> Result<String, ApiError> {
    match v.get("model").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => Ok(m.strip_prefix("models/").unwrap_or(m).to_owned()),
        _ => Err(errors::invalid_argument("model is required")),
    }
}

fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(errors::invalid_payload("the request must be a JSON object")),
        Err(e) => Err(errors::invalid_payload(&e.to_string())),
    }
}

/// The text of a message's `content`: a string, or the `text` of its `{"type": "text"}` parts
/// (image parts carry no text).
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The chat request as the native request the service turns it into.
fn to_native(v: &Value) -> Result<GenerateContentRequest, ApiError> {
    let Some(messages) = v.get("messages").and_then(Value::as_array) else {
        return Err(errors::invalid_argument("messages is required"));
    };
    if messages.is_empty() {
        return Err(errors::invalid_argument("messages must not be empty"));
    }
    let mut system = Vec::new();
    let mut contents = Vec::new();
    for m in messages {
        let text = content_text(m.get("content"));
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => system.push(text),
            Some("assistant") => contents.push(json!({"role": "model", "parts": [{"text": text}]})),
            Some("user" | "tool" | "function") => {
                contents.push(json!({"role": "user", "parts": [{"text": text}]}));
            }
            other => {
                return Err(errors::invalid_argument(&format!(
                    "messages: unknown role {}",
                    other.unwrap_or("(none)")
                )));
            }
        }
    }
    let mut config = Map::new();
    if let Some(n) = v
        .get("max_completion_tokens")
        .or_else(|| v.get("max_tokens"))
        .and_then(Value::as_u64)
    {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(n) = v.get("n").and_then(Value::as_u64) {
        config.insert("candidateCount".into(), json!(n));
    }
    if let Some(t) = v.get("temperature").and_then(Value::as_f64) {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(f) = v.get("response_format") {
        match f.get("type").and_then(Value::as_str) {
            Some("json_object") => {
                config.insert("responseMimeType".into(), json!("application/json"));
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), json!("application/json"));
                if let Some(schema) = f.get("json_schema").and_then(|j| j.get("schema")) {
                    config.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            Some("text") | None => {}
            Some(other) => {
                return Err(errors::invalid_argument(&format!(
                    "response_format: unknown type {other}"
                )));
            }
        }
    }
    let mut native = json!({"contents": contents, "generationConfig": config});
    if !system.is_empty() {
        native["systemInstruction"] = json!({"parts": [{"text": system.join("\n")}]});
    }
    serde_json::from_value(native).map_err(|e| errors::invalid_argument(&e.to_string()))
}

/// The `image_url` URLs of the messages that are not data URLs (a Files API URI among them names
/// a file that belongs to a project).
fn file_urls(v: &Value) -> Vec<String> {
    v.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter_map(|part| part.get("image_url"))
        .filter_map(|u| u.get("url").or(Some(u)).and_then(Value::as_str))
        .filter(|u| !u.starts_with("data:"))
        .map(str::to_owned)
        .collect()
}

/// The function the model calls, when the request offers tools and does not forbid them: the
/// one `tool_choice` names, else the first.
fn chosen_tool(v: &Value) -> Option<&Value> {
    let tools = v.get("tools").and_then(Value::as_array)?;
    let functions = tools.iter().filter_map(|t| t.get("function"));
    match v.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => None,
        Some(Value::Object(c)) => {
            let name = c.get("function")?.get("name")?.as_str()?;
            functions
                .clone()
                .find(|f| f.get("name").and_then(Value::as_str) == Some(name))
        }
        _ => functions.clone().next(),
    }
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// `POST /v1beta/openai/chat/completions`.
pub(crate) async fn chat_completions(
    State(st): State<Arc<SimState>>,
    Path(version): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fail = |key: Option<&KeyInfo>, e: &ApiError| error_on(Surface::OpenAi, &st, key, e);
    if !version_ok(&version) {
        return fail(None, &not_found());
    }
    let v = parse_object(&body);
    let stream = v
        .as_ref()
        .ok()
        .and_then(|v| v.get("stream"))
        .and_then(Value::as_bool)
        == Some(true);
    let route = if stream {
        Route::StreamGenerateContent
    } else {
        Route::GenerateContent
    };
    let model = v.as_ref().ok().and_then(|v| body_model(v).ok());
    let key = match admit(&st, &headers, route, model.as_deref(), &peer) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let (v, model) = match v.and_then(|v| body_model(&v).map(|m| (v, m))) {
        Ok(vm) => vm,
        Err(e) => return fail(Some(&key), &e),
    };
    let Some(served) = st.served(&model).filter(|m| !m.embedding) else {
        return fail(
            Some(&key),
            &errors::model_not_found(&model, &version, "generateContent"),
        );
    };
    let native = match to_native(&v) {
        Ok(n) => n,
        Err(e) => return fail(Some(&key), &e),
    };
    // A Files API file named as an image URL must be the key's project's, as on the native route.
    if let Some(e) = foreign_file(&st, &key, route, &file_urls(&v)) {
        return fail(Some(&key), &e);
    }
    let tokens = count_tokens(&native.prompt_text());
    let ip = peer_ip(&peer);
    let fault = match spend(&st, &key, &model, &served, 1, tokens, ip).await {
        Ok(f) => f,
        Err(e) => return fail(Some(&key), &e),
    };
    let id = st.next_response_id();
    let created = st.clock.now_ms() / 1000;
    st.record_status(Some(&key), 200);
    if fault == Fault::Drop {
        return dropped();
    }
    let answer = Answer::of(&v, &native, &model, &served);
    if stream {
        let include_usage = v
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        let delay = std::time::Duration::from_millis(st.faults().stream_chunk_delay_ms);
        return answer.stream(&id, created, &model, include_usage, delay);
    }
    let body = answer.completion(&id, created, &model);
    match fault {
        Fault::Malformed => malformed(&body),
        _ => json_response(200, &body),
    }
}

/// What the model says: text, or a call of the chosen tool.
struct Answer {
    message: Value,
    finish: &'static str,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Answer {
    fn of(v: &Value, native: &GenerateContentRequest, model: &str, served: &ServedModel) -> Self {
        let r = reply_for(native, model, served, 0);
        let said = native
            .contents
            .iter()
            .map(|c| c.text())
            .collect::<Vec<_>>()
            .join("\n");
        let completion_tokens = r.candidate_tokens + r.thoughts;
        match chosen_tool(v) {
            Some(f) => {
                let name = f.get("name").and_then(Value::as_str).unwrap_or("tool");
                let schema = f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                let args = json_reply(&said, seed_of(&[model, &said, name]), &schema);
                Self {
                    message: json!({"role": "assistant", "content": null, "tool_calls": [{
                        "id": format!("call-{:08x}", seed_of(&[name, &said]) as u32),
                        "type": "function",
                        "function": {"name": name, "arguments": args.to_string()},
                    }]}),
                    finish: "tool_calls",
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens,
                }
            }
            None => Self {
                message: json!({"role": "assistant", "content": r.text}),
                finish: match r.finish {
                    "MAX_TOKENS" => "length",
                    _ => "stop",
                },
                prompt_tokens: r.prompt_tokens,
                completion_tokens,
            },
        }
    }

    fn completion(&self, id: &str, created: i64, model: &str) -> Value {
        json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": self.message, "finish_reason": self.finish}],
            "usage": usage(self.prompt_tokens, self.completion_tokens),
        })
    }

    /// `data:` events: the text in up to three deltas (a tool call in one), the last with the
    /// finish reason; with `include_usage`, a last chunk with no choices and the usage; then
    /// `data: [DONE]`. `delay` between events (the slow-stream fault).
    fn stream(
        &self,
        id: &str,
        created: i64,
        model: &str,
        include_usage: bool,
        delay: std::time::Duration,
    ) -> Response {
        let chunk = |choices: Value| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices});
        let mut deltas: Vec<Value> = match self.message.get("content").and_then(Value::as_str) {
            Some(text) => {
                let chars: Vec<char> = text.chars().collect();
                let per = chars.len().div_ceil(3).max(1);
                chars
                    .chunks(per)
                    .map(|c| json!({"role": "assistant", "content": c.iter().collect::<String>()}))
                    .collect()
            }
            None => vec![self.message.clone()],
        };
        if deltas.is_empty() {
            deltas.push(json!({"role": "assistant", "content": ""}));
        }
        let last = deltas.len() - 1;
        let mut events: Vec<Value> = deltas
            .into_iter()
            .enumerate()
            .map(|(i, mut d)| {
                if let Some(calls) = d.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    for (n, c) in calls.iter_mut().enumerate() {
                        c["index"] = json!(n);
                    }
                }
                let finish = if i == last {
                    json!(self.finish)
                } else {
                    Value::Null
                };
                chunk(json!([{"index": 0, "delta": d, "finish_reason": finish}]))
            })
            .collect();
        if include_usage {
            let mut u = chunk(json!([]));
            u["usage"] = usage(self.prompt_tokens, self.completion_tokens);
            events.push(u);
        }
        let frames: Vec<Bytes> = events
            .iter()
            .map(|e| Bytes::from(format!("data: {e}\n\n")))
            .chain(std::iter::once(Bytes::from_static(b"data: [DONE]\n\n")))
            .collect();
        let frames =
            futures::stream::iter(frames.into_iter().enumerate()).then(move |(i, f)| async move {
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<Bytes, Infallible>(f)
            });
        let mut r = Response::new(Body::from_stream(frames));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r
    }
}

/// `POST /v1beta/openai/embeddings`: `input` a string or a list of strings.
pub(crate) async fn embeddings(
    State(st): State<Arc<SimState>>,
    Path(version): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fail = |key: Option<&KeyInfo>, e: &ApiError| error_on(Surface::OpenAi, &st, key, e);
    if !version_ok(&version) {
        return fail(None, &not_found());
    }
    let v = parse_object(&body);
    let inputs: Option<Vec<String>> = v.as_ref().ok().and_then(|v| match v.get("input")? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    });
    let route = match &inputs {
        Some(i) if i.len() > 1 => Route::BatchEmbedContents,
        _ => Route::EmbedContent,
    };
    let model = v.as_ref().ok().and_then(|v| body_model(v).ok());
    let key = match admit(&st, &headers, route, model.as_deref(), &peer) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let (v, model) = match v.and_then(|v| body_model(&v).map(|m| (v, m))) {
        Ok(vm) => vm,
        Err(e) => return fail(Some(&key), &e),
    };
    let Some(served) = st.served(&model).filter(|m| m.embedding) else {
        return fail(
            Some(&key),
            &errors::model_not_found(&model, &version, "embedContent"),
        );
    };
    let inputs = match inputs {
        Some(i) if !i.is_empty() && i.len() <= 100 && i.iter().all(|s| !s.trim().is_empty()) => i,
        Some(i) if i.len() > 100 => return fail(Some(&key), &errors::batch_too_large()),
        _ => {
            return fail(
                Some(&key),
                &errors::invalid_argument("input must be a non-empty string or list of strings"),
            );
        }
    };
    let dims = match v.get("dimensions").and_then(Value::as_u64) {
        None => DEFAULT_EMBEDDING_DIMS as usize,
        Some(d) if (1..=u64::from(DEFAULT_EMBEDDING_DIMS)).contains(&d) => d as usize,
        Some(d) => {
            return fail(
                Some(&key),
                &errors::invalid_argument(&format!(
                    "dimensions must be between 1 and {DEFAULT_EMBEDDING_DIMS}, got {d}"
                )),
            );
        }
    };
    let tokens: u64 = inputs.iter().map(|i| count_tokens(i)).sum();
    let ip = peer_ip(&peer);
    let fault = match spend(&st, &key, &model, &served, inputs.len() as u64, tokens, ip).await {
        Ok(f) => f,
        Err(e) => return fail(Some(&key), &e),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": embedding(text, "", dims)}))
        .collect();
    let body = json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    st.record_status(Some(&key), 200);
    match fault {
        Fault::Drop => dropped(),
        Fault::Malformed => malformed(&body),
        _ => json_response(200, &body),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use crate::{KeyState, Limits, SimConfig, SimKey, Simulator};

    const FLASH: &str = "gemini-2.5-flash";

    async fn sim(rpm: u64) -> Simulator {
        let mut models = BTreeMap::new();
        models.insert(FLASH.to_owned(), Limits::new(rpm, 1_000_000, 1_000));
        let key = |k: &str, state| SimKey {
            key: k.into(),
            label: Some(k.into()),
            project: Some("p1".into()),
            state,
        };
        Simulator::start(SimConfig {
            keys: vec![
                key("made-up-sim-openai", KeyState::Valid),
                key("made-up-sim-openai-dead", KeyState::Invalid),
            ],
            models,
            ..SimConfig::default()
        })
        .await
        .unwrap()
    }

    fn chat() -> Value {
        json!({"model": FLASH, "messages": [{"role": "user", "content": "hello there"}]})
    }

    /// The OpenAI routes spend the native routes' quota, and refuse in the list envelope.
    #[tokio::test]
    async fn one_quota_for_both_surfaces_and_errors_in_a_list() {
        let s = sim(2).await;
        let http = reqwest::Client::new();
        let native = http
            .post(format!(
                "{}/v1beta/models/{FLASH}:generateContent",
                s.base_url()
            ))
            .header("x-goog-api-key", "made-up-sim-openai")
            .json(&json!({"contents": [{"parts": [{"text": "hello"}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(native.status(), 200);
        let openai = |key: &'static str| {
            http.post(format!("{}/v1beta/openai/chat/completions", s.base_url()))
                .bearer_auth(key)
                .json(&chat())
                .send()
        };
        let r = openai("made-up-sim-openai").await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
        // The minute's two requests are spent, one on each surface.
        let r = openai("made-up-sim-openai").await.unwrap();
        assert_eq!(r.status(), 429);
        let v: Value = r.json().await.unwrap();
        let error = &v.as_array().expect("a list")[0]["error"];
        assert_eq!(error["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(
            error["details"][1]["violations"][0]["quotaId"],
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
        );
        // A dead key's refusal, and no key at all, in the same envelope.
        let r = openai("made-up-sim-openai-dead").await.unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v[0]["error"]["details"][0]["reason"], "API_KEY_INVALID");
        let r = http
            .get(format!("{}/v1beta/openai/models", s.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.json::<Value>().await.unwrap()[0]["error"].is_object());
        // Only v1beta serves the surface.
        let r = http
            .get(format!("{}/v1/openai/models", s.base_url()))
            .bearer_auth("made-up-sim-openai")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let st = s.state().stats();
        let k = &st["keys"][0];
        assert_eq!(k["by_route"]["generateContent"], 3, "{k}");
    }
}
