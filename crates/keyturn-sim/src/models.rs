//! The model routes: `GET models`, `GET models/{m}`, and `POST models/{m}:{action}` (generate,
//! stream, count, embed, batch-embed; the Batch Mode actions are handed to [`crate::batches`]),
//! with what a call that spends quota meets before it is answered.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use crate::admission::{
    ApiQuery, Peer, admit, authorize, error_response, not_found, peer_ip, version_ok,
};
use crate::answers::{generate, stream_response};
use crate::config::{Route, ServedModel};
use crate::content::embedding;
use crate::corpus::{self, Names};
use crate::errors::{self, ApiError};
use crate::faults::{Fault, draw_fault, dropped, malformed};
use crate::files::{file_uris, foreign_file, generate_files};
use crate::server::{DEFAULT_EMBEDDING_DIMS, json_response};
use crate::state::{KeyInfo, SimState};
use crate::wire::{
    BatchEmbedContentsRequest, CountTokensRequest, EmbedContentRequest, GenerateContentRequest,
    count_tokens, describe_parse_error,
};

pub(crate) fn model_json(name: &str, m: &ServedModel) -> Value {
    let methods: &[&str] = if m.embedding {
        &[
            "embedContent",
            "countTextTokens",
            "countTokens",
            "asyncBatchEmbedContent",
        ]
    } else {
        &[
            "generateContent",
            "countTokens",
            "createCachedContent",
            "batchGenerateContent",
        ]
    };
    let mut v = json!({
        "name": format!("models/{name}"),
        "version": "001",
        "displayName": name,
        "description": format!("Simulated {name}"),
        "inputTokenLimit": m.input_token_limit,
        "outputTokenLimit": m.output_token_limit,
        "supportedGenerationMethods": methods,
    });
    if !m.embedding {
        v["temperature"] = json!(1.0);
        v["topP"] = json!(0.95);
        v["topK"] = json!(64);
        v["maxTemperature"] = json!(2.0);
        v["thinking"] = json!(m.thinking);
    }
    v
}

pub(crate) async fn list_models(
    State(st): State<Arc<SimState>>,
    Path(version): Path<String>,
    Query(q): Query<ApiQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let key = match admit(
        &st,
        &version,
        &headers,
        q.key.as_deref(),
        Route::ListModels,
        None,
        &peer,
    ) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let models: Vec<Value> = st
        .served_models()
        .iter()
        .map(|(n, m)| model_json(n, m))
        .collect();
    st.record_status(Some(&key), 200);
    json_response(200, &json!({ "models": models }))
}

pub(crate) async fn get_model(
    State(st): State<Arc<SimState>>,
    Path((version, name)): Path<(String, String)>,
    Query(q): Query<ApiQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let key = match admit(
        &st,
        &version,
        &headers,
        q.key.as_deref(),
        Route::GetModel,
        Some(&name),
        &peer,
    ) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match st.served(&name) {
        Some(m) => {
            st.record_status(Some(&key), 200);
            json_response(200, &model_json(&name, &m))
        }
        None => error_response(
            &st,
            Some(&key),
            &errors::model_not_found(&name, &version, "get"),
        ),
    }
}

enum Call {
    Generate(GenerateContentRequest, bool),
    Count(CountTokensRequest),
    Embed(EmbedContentRequest),
    Batch(BatchEmbedContentsRequest),
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| errors::invalid_payload(&describe_parse_error(&e)))
}

pub(crate) async fn call_model(
    State(st): State<Arc<SimState>>,
    Path((version, name)): Path<(String, String)>,
    Query(q): Query<ApiQuery>,
    peer: Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !version_ok(&version) {
        return error_response(&st, None, &not_found());
    }
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            return error_response(&st, None, &errors::payload_too_large());
        }
        Err(e) => return error_response(&st, None, &errors::invalid_argument(&e.body_text())),
    };
    let Some((model, action)) = name.split_once(':') else {
        return error_response(&st, None, &not_found());
    };
    // The action is read once, here; everything after matches the route.
    let route = match action {
        "generateContent" => Route::GenerateContent,
        "streamGenerateContent" => Route::StreamGenerateContent,
        "countTokens" => Route::CountTokens,
        "embedContent" => Route::EmbedContent,
        "batchEmbedContents" => Route::BatchEmbedContents,
        "batchGenerateContent" => Route::BatchGenerateContent,
        "asyncBatchEmbedContent" => Route::AsyncBatchEmbedContent,
        _ => return error_response(&st, None, &not_found()),
    };
    let ip = peer_ip(&peer);
    let key = match authorize(&st, &headers, q.key.as_deref(), route, Some(model), ip) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let served = st.served(model);
    let embed_action = matches!(
        route,
        Route::EmbedContent | Route::BatchEmbedContents | Route::AsyncBatchEmbedContent
    );
    let generate_action = matches!(
        route,
        Route::GenerateContent | Route::StreamGenerateContent | Route::BatchGenerateContent
    );
    let Some(served) =
        served.filter(|m| (m.embedding && !generate_action) || (!m.embedding && !embed_action))
    else {
        return error_response(
            &st,
            Some(&key),
            &errors::model_not_found(model, &version, action),
        );
    };

    let parsed = match route {
        Route::GenerateContent => parse(&body).map(|r| Call::Generate(r, false)),
        Route::StreamGenerateContent => parse(&body).map(|r| Call::Generate(r, true)),
        Route::CountTokens => parse(&body).map(Call::Count),
        Route::EmbedContent => parse(&body).map(Call::Embed),
        Route::BatchEmbedContents => parse(&body).map(Call::Batch),
        Route::BatchGenerateContent | Route::AsyncBatchEmbedContent => {
            return match crate::batches::create(&st, &key, route, model, &body) {
                Ok(op) => {
                    st.record_status(Some(&key), 200);
                    json_response(200, &op)
                }
                Err(e) => error_response(&st, Some(&key), &e),
            };
        }
        _ => return error_response(&st, None, &not_found()),
    };
    let call = match parsed {
        Ok(c) => c,
        Err(e) => return error_response(&st, Some(&key), &e),
    };

    // countTokens spends no generation quota and gets no faults.
    let call = match call {
        Call::Count(mut req) => {
            // A whole request may name a cached content: its tokens are counted too, and
            // reported apart, as Google's CountTokensResponse does.
            let mut cached = 0;
            if let Some(g) = req.generate_content_request.as_mut() {
                match crate::caches::apply(&st, &key, route, model, g) {
                    Ok(n) => cached = n,
                    Err(e) => return error_response(&st, Some(&key), &e),
                }
            }
            let files = match (&req.contents, &req.generate_content_request) {
                (_, Some(g)) => generate_files(g),
                (Some(cs), None) => file_uris(cs.iter()),
                (None, None) => Vec::new(),
            };
            if let Some(e) = foreign_file(&st, &key, route, &files) {
                return error_response(&st, Some(&key), &e);
            }
            let text = match (&req.contents, &req.generate_content_request) {
                (_, Some(g)) => g.prompt_text(),
                (Some(cs), None) => cs.iter().map(|c| c.text()).collect::<Vec<_>>().join(" "),
                (None, None) => String::new(),
            };
            let n = count_tokens(&text);
            st.record_status(Some(&key), 200);
            let mut v = json!({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]});
            if cached > 0 {
                v["cachedContentTokenCount"] = json!(cached);
            }
            return json_response(200, &v);
        }
        other => other,
    };

    // A cached content joins the request first: its turns count and are answered.
    let mut cached_tokens = 0;
    let mut call = call;
    if let Call::Generate(r, _) = &mut call {
        match crate::caches::apply(&st, &key, route, model, r) {
            Ok(n) => cached_tokens = n,
            Err(e) => return error_response(&st, Some(&key), &e),
        }
    }

    // Validate before spending quota, as the real service does.
    let (requests, tokens) = match &call {
        Call::Generate(r, _) => {
            if let Some(e) = foreign_file(&st, &key, route, &generate_files(r)) {
                return error_response(&st, Some(&key), &e);
            }
            (1, count_tokens(&r.prompt_text()))
        }
        Call::Embed(r) => {
            if let Err(e) = check_embed(r, model, false) {
                return error_response(&st, Some(&key), &e);
            }
            if let Some(e) = foreign_file(&st, &key, route, &file_uris(std::iter::once(&r.content)))
            {
                return error_response(&st, Some(&key), &e);
            }
            (1, count_tokens(&embed_text(r)))
        }
        Call::Batch(b) => {
            if b.requests.len() > 100 {
                return error_response(&st, Some(&key), &errors::batch_too_large());
            }
            if b.requests.is_empty() {
                return error_response(
                    &st,
                    Some(&key),
                    &errors::invalid_argument(
                        "* BatchEmbedContentsRequest.requests: requests must not be empty\n",
                    ),
                );
            }
            for r in &b.requests {
                if let Err(e) = check_embed(r, model, true) {
                    return error_response(&st, Some(&key), &e);
                }
            }
            let files = file_uris(b.requests.iter().map(|r| &r.content));
            if let Some(e) = foreign_file(&st, &key, route, &files) {
                return error_response(&st, Some(&key), &e);
            }
            let t = b
                .requests
                .iter()
                .map(|r| count_tokens(&embed_text(r)))
                .sum();
            (b.requests.len() as u64, t)
        }
        Call::Count(_) => (0, 0),
    };

    let fault = match spend(&st, &key, model, &served, requests, tokens, ip).await {
        Ok(f) => f,
        Err(e) => return error_response(&st, Some(&key), &e),
    };

    let response_id = st.next_response_id();
    let body = match call {
        Call::Generate(req, true) => {
            st.record_status(Some(&key), 200);
            if fault == Fault::Drop {
                return dropped();
            }
            let sse = q.alt.as_deref() == Some("sse");
            return stream_response(&req, model, &served, &response_id, sse, st.faults());
        }
        Call::Generate(req, false) => {
            let mut v = generate(&req, model, &served, &response_id);
            if cached_tokens > 0 {
                v["usageMetadata"]["cachedContentTokenCount"] = json!(cached_tokens);
            }
            v
        }
        Call::Embed(req) => {
            json!({"embedding": {"values": embedding(&embed_text(&req), req.task_type.as_deref().unwrap_or(""), dims(&req))}})
        }
        Call::Batch(b) => {
            let embeddings: Vec<Value> = b
                .requests
                .iter()
                .map(|r| json!({"values": embedding(&embed_text(r), r.task_type.as_deref().unwrap_or(""), dims(r))}))
                .collect();
            json!({ "embeddings": embeddings })
        }
        Call::Count(_) => Value::Null,
    };
    st.record_status(Some(&key), 200);
    match fault {
        Fault::Drop => dropped(),
        Fault::Malformed => malformed(&body),
        _ => json_response(200, &body),
    }
}

/// What a call that spends quota meets once its request is valid, in the real service's order:
/// a model off for the project (with its chosen shape), an injected fault or latency, a zero
/// limit, then the quota windows. `Ok` carries the fault still to apply to the answer (a dropped
/// connection, a cut-off body).
pub(crate) async fn spend(
    st: &SimState,
    key: &KeyInfo,
    model: &str,
    served: &ServedModel,
    requests: u64,
    tokens: u64,
    ip: Option<std::net::IpAddr>,
) -> Result<Fault, ApiError> {
    // A model off for this project answers with its chosen shape; probes still answer for it.
    if let Some(shape) = st.model_off(&key.project, model) {
        let names = Names {
            model: Some(model),
            project: Some(&key.project),
            key_label: Some(&key.label),
            caller_ip: ip,
            file: None,
        };
        return Err(corpus::render(&shape, &names));
    }

    let (fault, delay) = draw_fault(&st.faults());
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let early = match fault {
        Fault::Internal => Some(errors::internal()),
        Fault::Overloaded => Some(errors::overloaded()),
        Fault::Deadline => Some(errors::deadline()),
        Fault::Bare429 => Some(errors::bare_429()),
        _ => None,
    };
    if let Some(e) = early {
        return Err(e);
    }

    let limits = st.limits(&key.project, model);
    if limits.is_zero() {
        return Err(errors::limit_zero(served.embedding, model));
    }
    if let Err(mut r) = st.admit(&key.project, model, requests, tokens) {
        if r.kind == errors::QuotaKind::PerDay
            && let Some(ms) = st.faults().per_day_retry_delay_ms
        {
            r.retry_ms = ms;
        }
        return Err(errors::quota_exceeded(
            r.kind,
            served.embedding,
            model,
            r.limit,
            r.retry_ms,
        ));
    }
    Ok(fault)
}

pub(crate) fn embed_text(r: &EmbedContentRequest) -> String {
    match &r.title {
        Some(t) => format!("{t} {}", r.content.text()),
        None => r.content.text(),
    }
}

pub(crate) fn dims(r: &EmbedContentRequest) -> usize {
    r.output_dimensionality.unwrap_or(DEFAULT_EMBEDDING_DIMS) as usize
}

fn check_embed(r: &EmbedContentRequest, model: &str, in_batch: bool) -> Result<(), ApiError> {
    if in_batch {
        match r.model.as_deref() {
            None => {
                return Err(errors::invalid_argument(
                    "* BatchEmbedContentsRequest.requests[0].model: unexpected model name format\n",
                ));
            }
            Some(m) if m.strip_prefix("models/").unwrap_or(m) != model => {
                return Err(errors::invalid_argument(&format!(
                    "Model {m} in the request does not match the model models/{model} in the URL."
                )));
            }
            Some(_) => {}
        }
    }
    if r.content.text().trim().is_empty() {
        return Err(errors::invalid_argument(
            "* EmbedContentRequest.content: contents must not be empty\n",
        ));
    }
    if let Some(d) = r.output_dimensionality
        && !(1..=DEFAULT_EMBEDDING_DIMS).contains(&d)
    {
        return Err(errors::invalid_argument(&format!(
            "* EmbedContentRequest.output_dimensionality: must be between 1 and {DEFAULT_EMBEDDING_DIMS}, got {d}\n"
        )));
    }
    Ok(())
}
