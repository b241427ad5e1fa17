//! The Gemini surface on models: `GET models`, `GET models/{m}` and `POST
//! models/{m}:{method}` (generate, stream, count, embed, Batch Mode), each request validated,
//! sized, pinned to the project owning what it names, and sent through the rotation; answers
//! relayed byte for byte, streams event by event.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures::StreamExt;
use keyturn_core::Demand;
use keyturn_gemini::GeminiCall;
use serde_json::{Value, json};

use crate::answer::{Answer, failure, invalid, not_found};
use crate::request::{embed_tokens, estimate, json_values, max_json_values, read_body, slot};
use crate::{MAX_MODELS, ProxyState, Refusal, affinity, auth, files};

/// The methods the proxy serves on `models/{model}:{method}`.
const METHODS: &[&str] = &[
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "embedContent",
    "batchEmbedContents",
    "batchGenerateContent",
    "asyncBatchEmbedContent",
];

/// The Batch Mode methods: they create a batch the creating project owns.
const BATCH_METHODS: [&str; 2] = ["batchGenerateContent", "asyncBatchEmbedContent"];

/// `{model}` or `{model}:{method}` from the path, validated before anything else happens:
/// whatever a client encoded, only a model id and a known method go on.
fn parse_name(name: &str) -> Result<(&str, Option<&str>), Refusal> {
    let (model, method) = match name.split_once(':') {
        Some((m, a)) => (m, Some(a)),
        None => (name, None),
    };
    let model = keyturn_gemini::model_id(model).map_err(|e| invalid(&e.to_string()))?;
    match method {
        Some(a) if !METHODS.contains(&a) => Err(not_found().into()),
        _ => Ok((model, method)),
    }
}

pub(crate) async fn list_models(
    State(st): State<Arc<ProxyState>>,
    Path(version): Path<String>,
) -> Response {
    let Some(caller) = st.caller(&version) else {
        return Answer::from(not_found()).gemini();
    };
    let _permit = match slot(&st).await {
        Ok(p) => p,
        Err(r) => return r.gemini(),
    };
    match caller.call_unmetered("models", None).await {
        Ok(r) => st.relay(r.raw),
        Err(e) => failure(&st, &e).gemini(),
    }
}

pub(crate) async fn get_model(
    State(st): State<Arc<ProxyState>>,
    Path((version, name)): Path<(String, String)>,
) -> Response {
    let Some(caller) = st.caller(&version) else {
        return Answer::from(not_found()).gemini();
    };
    let model = match parse_name(&name) {
        Ok((m, None)) => m,
        Ok(_) => return Answer::from(not_found()).gemini(),
        Err(r) => return r.gemini(),
    };
    let _permit = match slot(&st).await {
        Ok(p) => p,
        Err(r) => return r.gemini(),
    };
    match caller
        .call_unmetered(&format!("models/{model}"), None)
        .await
    {
        Ok(r) => st.relay(r.raw),
        Err(e) => failure(&st, &e).gemini(),
    }
}

/// Confirms with the upstream, once per model, that a model exists before it gets a quota
/// scope: `GET models/{model}` costs no quota. `Err` is the answer for the client.
pub(crate) async fn confirm_model(
    st: &ProxyState,
    caller: &Arc<dyn GeminiCall>,
    version: &str,
    model: &str,
) -> Result<(), Refusal> {
    if st.models.contains(version, model) {
        return Ok(());
    }
    match caller
        .call_unmetered(&format!("models/{model}"), None)
        .await
    {
        Ok(_) if st.models.insert(version, model) => Ok(()),
        Ok(_) => Err(invalid(&format!(
            "this proxy already serves {MAX_MODELS} models; {model} is one too many"
        ))
        .into()),
        Err(e) => Err(failure(st, &e)),
    }
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct StreamQuery {
    alt: Option<String>,
}

pub(crate) async fn call_model(
    State(st): State<Arc<ProxyState>>,
    axum::Extension(client): axum::Extension<auth::Client>,
    Path((version, name)): Path<(String, String)>,
    Query(q): Query<StreamQuery>,
    body: Body,
) -> Response {
    let Some(caller) = st.caller(&version) else {
        return Answer::from(not_found()).gemini();
    };
    let (model, action) = match parse_name(&name) {
        Ok((m, Some(a))) => (m, a),
        Ok(_) => return Answer::from(not_found()).gemini(),
        Err(r) => return r.gemini(),
    };
    let body = match read_body(&st, body).await {
        Ok(b) => b,
        Err(r) => return r.gemini(),
    };
    let most = max_json_values(st.max_body_bytes);
    if json_values(&body) > most {
        return Answer::from(invalid(&format!(
            "the request body holds more than {most} JSON values; no Gemini request needs as many"
        )))
        .gemini();
    }
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return Answer::from(invalid(&format!("Invalid JSON payload received. {e}")))
                    .gemini();
            }
        }
    };
    let permit = match slot(&st).await {
        Ok(p) => p,
        Err(r) => return r.gemini(),
    };
    if action == "countTokens" {
        // A count naming a file or cached content the proxy knows goes with a key of the
        // project that owns it (any other project's key gets a bare 403).
        return match affinity::owner(&st, &client, &value, false).await {
            Err(r) => r.gemini(),
            Ok(Some(project)) => {
                match files::count_tokens_of(&st, &version, model, &project, &value).await {
                    Ok(r) | Err(r) => r,
                }
            }
            Ok(None) => match caller
                .call_unmetered(&format!("models/{model}:countTokens"), Some(value))
                .await
            {
                Ok(r) => st.relay(r.raw),
                Err(e) => failure(&st, &e).gemini(),
            },
        };
    }
    if let Err(r) = confirm_model(&st, &caller, &version, model).await {
        return r.gemini();
    }
    let demand = match action {
        "embedContent" => Demand::tokens(embed_tokens(&value)),
        "batchEmbedContents" => {
            let items = value.get("requests").and_then(Value::as_array);
            let n = items.map_or(1, |i| i.len().max(1)) as u32;
            let t = items.into_iter().flatten().map(embed_tokens).sum();
            Demand::batch(n, t)
        }
        // Creating a batch is one request on the model's scope; its items run under Batch
        // Mode's own limits (concurrent batches, enqueued tokens), which Gemini enforces.
        a if BATCH_METHODS.contains(&a) => Demand::tokens(0),
        _ => Demand::tokens(estimate(&value)),
    };
    // A request naming a file or cached content goes only to keys of the project that owns it.
    let demand = match affinity::pin(&st, &client, &value, demand, false).await {
        Ok(d) => d,
        Err(r) => return r.gemini(),
    };
    if action == "streamGenerateContent" {
        let sse = q.alt.as_deref() == Some("sse");
        return match caller.stream(model, demand, value).await {
            Ok(chunks) => stream_response(&st, chunks, sse, permit),
            Err(e) => failure(&st, &e).gemini(),
        };
    }
    match caller.call(model, action, demand, value).await {
        Ok(r) => {
            if BATCH_METHODS.contains(&action)
                && let Some(key) = affinity::key_by_label(&st, &r.key)
                && files::learn(&st, key, client.0.as_deref(), &r.body)
                    .await
                    .is_err()
            {
                // The batch exists: the client gets it, though its owner could not be noted.
                tracing::warn!("a batch was created but its owner could not be recorded");
            }
            st.relay(r.raw)
        }
        Err(e) => failure(&st, &e).gemini(),
    }
}

/// Relays a stream event by event. The in-flight permit travels with the body and is released
/// when the stream ends (or the client goes away), so `max_in_flight` bounds streams too.
fn stream_response(
    st: &ProxyState,
    chunks: keyturn_gemini::ChunkStream,
    sse: bool,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    let scrubber = st.live().scrubber.clone();
    // Whether the JSON array has been opened: by the first value, not by a failure, and the
    // end closes it either way (a stream with no value is `[]`, not `]`).
    let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opened_at_end = opened.clone();
    let frames = chunks
        .map(move |c| {
            let frame = match c {
                Ok(v) if sse => format!("data: {v}\r\n\r\n"),
                Ok(v) if !opened.swap(true, std::sync::atomic::Ordering::Relaxed) => {
                    format!("[{v}")
                }
                Ok(v) => format!(",\r\n{v}"),
                Err(e) => {
                    // Headers are gone: the best the client can get is the stream's end.
                    tracing::warn!(error = %e.to_string().escape_debug(), "upstream stream broke off");
                    String::new()
                }
            };
            let frame = match scrubber.scrub_known(frame.as_bytes()) {
                Some(clean) => Bytes::from(clean),
                None => Bytes::from(frame),
            };
            Ok::<Bytes, std::convert::Infallible>(frame)
        })
        .chain(futures::stream::once(async move {
            drop(permit);
            let end = match (
                sse,
                opened_at_end.load(std::sync::atomic::Ordering::Relaxed),
            ) {
                (true, _) => "",
                (false, true) => "]",
                (false, false) => "[]",
            };
            Ok(Bytes::from(end))
        }));
    let mut r = Response::new(Body::from_stream(frames));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if sse {
            "text/event-stream"
        } else {
            "application/json; charset=UTF-8"
        }),
    );
    r
}
