//! Google's OpenAI-compatible endpoint through the rotation, at the paths Google serves it, so
//! an OpenAI client sets `base_url = "http://host:port/v1beta/openai/"`:
//!
//! - `POST chat/completions` (plain or streamed; tools, `response_format`, images as data URLs
//!   go upstream untouched) and `POST embeddings`: the model is read from the body (with or
//!   without `models/`) and validated, the input estimated from `messages` / `input` by the
//!   pool's one rule, and the call goes through the same acquire → send → classify → settle
//!   loop as the native routes, upstream to Gemini's own `/v1beta/openai/…` with the pool key
//!   as `Authorization: Bearer`. The lease is settled with the answer's `usage.prompt_tokens`.
//! - A stream always asks upstream for its usage (`stream_options.include_usage`), so the
//!   ledger settles with the real count; a client that did not ask gets no usage from it.
//! - `GET models`, `GET models/{m}`: unmetered, on any usable key.
//! - The proxy's own refusals (bad token, bad body, no capacity, shutting down) come in OpenAI's
//!   error form with `Retry-After` on 429 and 503; upstream answers that were the request's
//!   fault pass through in Google's own envelope.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::StreamExt;
use keyturn_core::Demand;
use keyturn_gemini::OpenAiRoute;
use keyturn_gemini::wire::estimate_input_tokens;
use serde_json::{Value, json};

use crate::answer::{Answer, failure, invalid};
use crate::native::confirm_model;
use crate::request::{json_values, max_json_values, read_body, slot};
use crate::{ProxyState, Refusal, auth};

/// The one API version Google serves its OpenAI-compatible endpoint under.
const VERSION: &str = "v1beta";

/// The OpenAI-compatible routes, behind the client-token gate (refusing in OpenAI's form).
pub(crate) fn router(state: Arc<ProxyState>) -> Router<Arc<ProxyState>> {
    Router::new()
        .route("/v1beta/openai/chat/completions", post(chat_completions))
        .route("/v1beta/openai/embeddings", post(embeddings))
        .route("/v1beta/openai/models", get(list_models))
        // `{*name}`: a client may send the listed id, `models/gemini-2.5-flash`, as it is.
        .route("/v1beta/openai/models/{*name}", get(get_model))
        .route_layer(middleware::from_fn_with_state(
            state,
            auth::authenticate_openai,
        ))
}

/// A request body as a JSON object, under the body cap, the body timeout and the value bound.
async fn read_object(st: &ProxyState, body: Body) -> Result<Value, Refusal> {
    let body = read_body(st, body).await?;
    let most = max_json_values(st.max_body_bytes);
    if json_values(&body) > most {
        return Err(invalid(&format!(
            "the request body holds more than {most} JSON values; no request needs as many"
        ))
        .into());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(invalid("the request body must be a JSON object").into()),
        Err(e) => Err(invalid(&format!("the request body is not JSON: {e}")).into()),
    }
}

/// The body's `model`, `models/` stripped, if it is a valid model id: it names the quota scope
/// and the metric labels, so nothing else gets that far.
fn body_model(v: &Value) -> Result<String, Refusal> {
    let Some(m) = v.get("model").and_then(Value::as_str) else {
        return Err(invalid("the request names no model (\"model\": \"gemini-2.5-flash\")").into());
    };
    keyturn_gemini::model_id(m)
        .map(str::to_owned)
        .map_err(|e| invalid(&e.to_string()).into())
}

/// Input tokens to reserve for a chat: the text of every message (a string `content`, or the
/// `text` of its parts), a part per message, by the pool's one rule. Images and tools are not
/// sized, as on the native routes; settling with the real usage corrects the estimate.
fn chat_tokens(v: &Value) -> u64 {
    let messages = v.get("messages").and_then(Value::as_array);
    let mut bytes = 0u64;
    let mut parts = 0u64;
    for m in messages.into_iter().flatten() {
        parts += 1;
        bytes += match m.get("content") {
            Some(Value::String(s)) => s.len() as u64,
            Some(Value::Array(ps)) => ps
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(|t| t.len() as u64)
                .sum(),
            _ => 0,
        };
    }
    estimate_input_tokens(bytes, parts)
}

/// What an embedding request spends: one request per input, tokens by the pool's rule (a token
/// array counts its length).
fn embedding_demand(v: &Value) -> Demand {
    fn tokens(item: &Value) -> u64 {
        match item {
            Value::String(s) => estimate_input_tokens(s.len() as u64, 0),
            Value::Array(ids) => ids.len() as u64,
            _ => 1,
        }
    }
    match v.get("input") {
        Some(Value::Array(items)) if items.iter().any(|i| !i.is_number()) => {
            let n = items.len().max(1) as u32;
            Demand::batch(n, items.iter().map(tokens).sum())
        }
        Some(item) => Demand::tokens(tokens(item)),
        None => Demand::tokens(0),
    }
}

/// Makes a streamed request ask upstream for its usage; whether the client asked itself.
fn ask_for_usage(v: &mut Value) -> bool {
    let asked = v
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    if !asked {
        match v.get_mut("stream_options").and_then(Value::as_object_mut) {
            Some(o) => {
                o.insert("include_usage".into(), Value::Bool(true));
            }
            None => v["stream_options"] = json!({"include_usage": true}),
        }
    }
    asked
}

async fn chat_completions(
    State(st): State<Arc<ProxyState>>,
    Extension(client): Extension<auth::Client>,
    body: Body,
) -> Response {
    chat(&st, &client, body)
        .await
        .unwrap_or_else(Answer::openai)
}

async fn chat(st: &ProxyState, client: &auth::Client, body: Body) -> Result<Response, Refusal> {
    let caller = st.live().v1beta.clone();
    let mut v = read_object(st, body).await?;
    let model = body_model(&v)?;
    let stream = v.get("stream").and_then(Value::as_bool) == Some(true);
    let client_asked = stream && ask_for_usage(&mut v);
    // A file named anywhere in the messages (an image or file part's URL) pins the chat to the
    // project that owns it (and is refused if it is another client's).
    let demand =
        crate::affinity::pin(st, client, &v, Demand::tokens(chat_tokens(&v)), true).await?;
    let permit = slot(st).await?;
    confirm_model(st, &caller, VERSION, &model).await?;
    if stream {
        let chunks = caller
            .stream_openai(&model, demand, v)
            .await
            .map_err(|e| failure(st, &e))?;
        return Ok(stream_response(st, chunks, client_asked, permit));
    }
    let r = caller
        .call_openai(OpenAiRoute::ChatCompletions, &model, demand, v)
        .await
        .map_err(|e| failure(st, &e))?;
    Ok(st.relay(r.raw))
}

async fn embeddings(State(st): State<Arc<ProxyState>>, body: Body) -> Response {
    embed(&st, body).await.unwrap_or_else(Answer::openai)
}

async fn embed(st: &ProxyState, body: Body) -> Result<Response, Refusal> {
    let caller = st.live().v1beta.clone();
    let v = read_object(st, body).await?;
    let model = body_model(&v)?;
    let demand = embedding_demand(&v);
    let _permit = slot(st).await?;
    confirm_model(st, &caller, VERSION, &model).await?;
    let r = caller
        .call_openai(OpenAiRoute::Embeddings, &model, demand, v)
        .await
        .map_err(|e| failure(st, &e))?;
    Ok(st.relay(r.raw))
}

async fn list_models(State(st): State<Arc<ProxyState>>) -> Response {
    unmetered(&st, "openai/models")
        .await
        .unwrap_or_else(Answer::openai)
}

async fn get_model(State(st): State<Arc<ProxyState>>, Path(name): Path<String>) -> Response {
    let path = keyturn_gemini::model_id(&name).map(|m| format!("openai/models/{m}"));
    match path {
        Ok(path) => unmetered(&st, &path).await,
        Err(e) => Err(invalid(&e.to_string()).into()),
    }
    .unwrap_or_else(Answer::openai)
}

async fn unmetered(st: &ProxyState, path: &str) -> Result<Response, Refusal> {
    let _permit = slot(st).await?;
    let r = st
        .live()
        .v1beta
        .call_unmetered(path, None)
        .await
        .map_err(|e| failure(st, &e))?;
    Ok(st.relay(r.raw))
}

/// Relays a chat stream as OpenAI's server-sent events, chunk by chunk, and ends it with
/// `data: [DONE]` when it ended whole. Usage the proxy asked for on the client's behalf is not
/// passed on: a usage-only chunk is dropped, a `usage` beside choices removed. The in-flight
/// permit is released when the stream ends.
fn stream_response(
    st: &ProxyState,
    chunks: keyturn_gemini::ChunkStream,
    client_asked: bool,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let scrubber = st.live().scrubber.clone();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let broken_at_end = broken.clone();
    let frames = chunks
        .filter_map(move |c| {
            let frame = match c {
                Ok(mut v) => {
                    if !client_asked && v.get("usage").is_some() {
                        let choices = v.get("choices").and_then(Value::as_array);
                        if choices.is_none_or(Vec::is_empty) {
                            return futures::future::ready(None);
                        }
                        if let Some(o) = v.as_object_mut() {
                            o.remove("usage");
                        }
                    }
                    format!("data: {v}\n\n")
                }
                Err(e) => {
                    // Headers are gone: the client sees the stream end without `[DONE]`.
                    tracing::warn!(error = %e.to_string().escape_debug(), "upstream stream broke off");
                    broken.store(true, std::sync::atomic::Ordering::Relaxed);
                    return futures::future::ready(None);
                }
            };
            let frame = match scrubber.scrub_known(frame.as_bytes()) {
                Some(clean) => Bytes::from(clean),
                None => Bytes::from(frame),
            };
            futures::future::ready(Some(Ok::<Bytes, std::convert::Infallible>(frame)))
        })
        .chain(futures::stream::once(async move {
            drop(permit);
            let whole = !broken_at_end.load(std::sync::atomic::Ordering::Relaxed);
            Ok(Bytes::from_static(if whole { b"data: [DONE]\n\n" } else { b"" }))
        }));
    let mut r = Response::new(Body::from_stream(frames));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    *r.status_mut() = StatusCode::OK;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_estimates_read_strings_and_text_parts() {
        let v = json!({"messages": [
            {"role": "system", "content": "abcdef"},
            {"role": "user", "content": [{"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        ]});
        assert_eq!(chat_tokens(&v), 3 + 8);
    }

    #[test]
    fn usage_is_asked_for_once_and_other_options_kept() {
        let mut v = json!({"stream": true, "stream_options": {"other": 1}});
        assert!(!ask_for_usage(&mut v));
        assert_eq!(
            v["stream_options"],
            json!({"other": 1, "include_usage": true})
        );
        let mut v = json!({"stream": true, "stream_options": {"include_usage": true}});
        assert!(ask_for_usage(&mut v));
        let mut v = json!({"stream": true});
        assert!(!ask_for_usage(&mut v));
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn embedding_demand_counts_each_input() {
        assert_eq!(
            embedding_demand(&json!({"input": ["abc", "abcdef"]})),
            Demand::batch(2, 3)
        );
        assert_eq!(
            embedding_demand(&json!({"input": "abcdef"})),
            Demand::tokens(2)
        );
        assert_eq!(
            embedding_demand(&json!({"input": [1, 2, 3]})),
            Demand::tokens(3)
        );
    }
}
