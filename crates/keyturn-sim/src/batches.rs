//! Batch Mode, per project: `models/{m}:batchGenerateContent`, `models/{m}:asyncBatchEmbedContent`,
//! `GET batches/{id}`, `GET batches`, `POST batches/{id}:cancel`, `DELETE batches/{id}`.
//!
//! Shapes: ai.google.dev/api/batch-mode and the google-genai SDK 3.6 (`batches.py`): the
//! request is `{"batch": {"displayName", "inputConfig": {"requests": {"requests": [{"request",
//! "metadata"}]}} | {"fileName": "files/…"}}}`; the answer is an `Operation` (see
//! [`crate::resources::Batch::operation`]); a list is `{"operations": [...], "nextPageToken"}`.
//! A batch moves PENDING → RUNNING → SUCCEEDED (or FAILED when no request of it is valid) on the
//! simulator's clock (`[resources] batch_pending_secs`, `batch_running_secs`), so
//! `/admin/advance` moves it; CANCELLED on `:cancel`; EXPIRED when it would run past 48 hours.
//! Each result is what the interactive route answers for the same request.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use crate::admission::{Peer, not_found};
use crate::answers::generate;
use crate::config::{Route, Tier};
use crate::content::embedding;
use crate::corpus::{self, Names};
use crate::errors::{self, ApiError};
use crate::files::{file_uris, foreign_file, generate_files};
use crate::models::{dims, embed_text};
use crate::owned::{Owned, ResourceQuery, acted_on, owned, owned_fields};
use crate::resources::{Batch, BatchItems, StoredFile, new_id, shown};
use crate::server::json_response;
use crate::state::{KeyInfo, SimState};
use crate::wire::{
    EmbedContentRequest, GenerateContentRequest, count_tokens, describe_parse_error,
};

impl Owned for Batch {
    const COLLECTION: &'static str = "batches";
    const LIST_FIELD: &'static str = "operations";
    const PAGE_SIZE: (usize, usize) = (10, 100);
    const GET: Route = Route::GetBatch;
    const DELETE: Route = Route::DeleteBatch;
    const LIST: Route = Route::ListBatches;

    owned_fields!(batches);

    fn json(&self, now: i64) -> Value {
        self.operation(now)
    }
    /// A 404, as for a batch that never was.
    fn denied(_id: &str) -> ApiError {
        not_found()
    }
    fn settle(st: &SimState, id: &str) {
        settle(st, id);
    }
    fn addressable(name: &str) -> bool {
        !name.contains(':')
    }
}

/// A field in either spelling.
fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

/// The 429 when a project has too many batches in flight, or too many tokens enqueued for a
/// model. Google documents both limits (ai.google.dev/gemini-api/docs/rate-limits, "Batch
/// API") but no refusal body was found: this one is reasoned, in the 2026 shape of its other
/// quota refusals, with a long retry (a batch frees room only when one ends).
fn batch_quota(quota_id: &str, metric: &str, model: &str, limit: u64) -> ApiError {
    ApiError {
        status: 429,
        body: json!({"error": {
            "code": 429,
            "message": format!("You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}"),
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{
                        "quotaMetric": metric,
                        "quotaId": quota_id,
                        "quotaDimensions": {"model": model},
                        "quotaValue": limit.to_string(),
                    }],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
                },
            ],
        }}),
    }
}

/// `POST models/{m}:batchGenerateContent` or `:asyncBatchEmbedContent`, after the key and the
/// model were checked.
pub(crate) fn create(
    st: &SimState,
    key: &KeyInfo,
    route: Route,
    model: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    // Free-tier projects: Batch Mode needs billing (corpus real-22).
    if st.tier(&key.project) == Tier::Free {
        return Err(corpus::render(
            "real-22",
            &Names {
                model: Some(model),
                project: Some(&key.project),
                key_label: Some(&key.label),
                ..Names::default()
            },
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| errors::invalid_payload(&describe_parse_error(&e)))?;
    let batch = v
        .get("batch")
        .ok_or_else(|| errors::invalid_argument("* Batch: batch is required\n"))?;
    let input = field(batch, "inputConfig", "input_config").ok_or_else(|| {
        errors::invalid_argument("* Batch.input_config: input_config is required\n")
    })?;
    let embed = route == Route::AsyncBatchEmbedContent;
    let (items, input_file) = if let Some(name) = field(input, "fileName", "file_name") {
        let name = name.as_str().unwrap_or("");
        let id = crate::config::file_id(name).to_owned();
        let file = owned::<StoredFile>(st, key, route, &id)?;
        let Some(bytes) = file.content else {
            return Err(errors::invalid_argument(&format!(
                "The input file files/{} is too large for this simulator to read back.",
                shown(&id)
            )));
        };
        (read_jsonl(&bytes, embed), Some(format!("files/{id}")))
    } else if let Some(reqs) = field(input, "requests", "requests")
        .and_then(|r| r.get("requests"))
        .and_then(Value::as_array)
    {
        (read_inline(reqs, embed, model)?, None)
    } else {
        return Err(errors::invalid_argument(
            "* Batch.input_config: one of requests or file_name is required\n",
        ));
    };
    if items.is_empty() {
        return Err(errors::invalid_argument(
            "* Batch.input_config: the batch has no requests\n",
        ));
    }
    // Files named by the requests must be the project's too.
    let uris: Vec<String> = match &items {
        BatchItems::Generate(v) => v
            .iter()
            .filter_map(|(r, _)| r.as_ref().ok())
            .flat_map(generate_files)
            .collect(),
        BatchItems::Embed(v) => file_uris(
            v.iter()
                .filter_map(|(r, _)| r.as_ref().ok())
                .map(|r| &r.content),
        ),
    };
    if let Some(e) = foreign_file(st, key, route, &uris) {
        return Err(e);
    }
    let tokens: u64 = match &items {
        BatchItems::Generate(v) => v
            .iter()
            .filter_map(|(r, _)| r.as_ref().ok())
            .map(|r| count_tokens(&r.prompt_text()))
            .sum(),
        BatchItems::Embed(v) => v
            .iter()
            .filter_map(|(r, _)| r.as_ref().ok())
            .map(|r| count_tokens(&embed_text(r)))
            .sum(),
    };
    let cfg = st.resource_config();
    let now = st.clock.now_ms();
    let id = new_id();
    let display_name = field(batch, "displayName", "display_name")
        .and_then(Value::as_str)
        .map_or_else(|| format!("batch-{id}"), str::to_owned);
    let run_ms = now + cfg.batch_pending_secs as i64 * 1000;
    let job = Batch {
        id: id.clone(),
        project: key.project.clone(),
        model: model.to_owned(),
        display_name,
        items,
        input_file,
        tokens,
        create_ms: now,
        run_ms,
        finish_ms: run_ms + cfg.batch_running_secs as i64 * 1000,
        cancelled_ms: None,
        output: None,
    };
    let op = {
        let mut res = st.resources.lock();
        let active: Vec<&Batch> = res
            .batches
            .values()
            .filter(|b| b.project == key.project && !b.state(now).done())
            .collect();
        if active.len() as u64 >= cfg.batch_concurrent {
            return Err(batch_quota(
                "BatchConcurrentRequestsPerProject",
                "generativelanguage.googleapis.com/batch_concurrent_requests",
                model,
                cfg.batch_concurrent,
            ));
        }
        let enqueued: u64 = active
            .iter()
            .filter(|b| b.model == model)
            .map(|b| b.tokens)
            .sum();
        if enqueued + tokens > cfg.batch_enqueued_tokens {
            return Err(batch_quota(
                "BatchEnqueuedTokensPerProjectPerModel",
                "generativelanguage.googleapis.com/batch_enqueued_tokens",
                model,
                cfg.batch_enqueued_tokens,
            ));
        }
        let op = job.operation(now);
        res.batches.insert(id.clone(), job);
        op
    };
    st.note_use(
        route,
        format!("batches/{id}"),
        Some(key.project.clone()),
        key,
    );
    Ok(op)
}

/// Inline requests: each parsed strictly, like the interactive route (a bad one refuses the
/// whole batch, as the real service validates inline requests when the batch is created).
fn read_inline(reqs: &[Value], embed: bool, model: &str) -> Result<BatchItems, ApiError> {
    let mut gen_items = Vec::new();
    let mut embed_items = Vec::new();
    for (i, item) in reqs.iter().enumerate() {
        let request = item.get("request").cloned().unwrap_or(Value::Null);
        let metadata = item.get("metadata").cloned().unwrap_or(Value::Null);
        let bad = |e: serde_json::Error| {
            errors::invalid_payload(&format!(
                "requests[{i}].request: {}",
                describe_parse_error(&e)
            ))
        };
        if embed {
            let r: EmbedContentRequest = serde_json::from_value(request).map_err(bad)?;
            embed_items.push((Ok(r), metadata));
        } else {
            let r: GenerateContentRequest = serde_json::from_value(request).map_err(bad)?;
            if let Some(m) = r.model.as_deref()
                && m.strip_prefix("models/").unwrap_or(m) != model
            {
                return Err(errors::invalid_argument(&format!(
                    "Model {} in requests[{i}] does not match the model models/{model} of the batch.",
                    shown(m)
                )));
            }
            gen_items.push((Ok(r), metadata));
        }
    }
    Ok(if embed {
        BatchItems::Embed(embed_items)
    } else {
        BatchItems::Generate(gen_items)
    })
}

/// A JSONL input file (`{"key": "…", "request": {…}}` per line, the batch-mode guide's format).
/// A line that does not parse becomes that item's error, as the real service reports per line.
fn read_jsonl(bytes: &[u8], embed: bool) -> BatchItems {
    let text = String::from_utf8_lossy(bytes);
    let lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut gen_items = Vec::new();
    let mut embed_items = Vec::new();
    for line in lines {
        let v: Result<Value, String> = serde_json::from_str(line).map_err(|e| e.to_string());
        let key = v
            .as_ref()
            .ok()
            .and_then(|v| v.get("key"))
            .cloned()
            .unwrap_or(Value::Null);
        let request = v.and_then(|v| {
            v.get("request")
                .cloned()
                .ok_or_else(|| "no request".to_owned())
        });
        let meta = json!({ "key": key });
        if embed {
            let r = request.and_then(|r| {
                serde_json::from_value::<EmbedContentRequest>(r)
                    .map_err(|e| describe_parse_error(&e))
            });
            embed_items.push((r, meta));
        } else {
            let r = request.and_then(|r| {
                serde_json::from_value::<GenerateContentRequest>(r)
                    .map_err(|e| describe_parse_error(&e))
            });
            gen_items.push((r, meta));
        }
    }
    if embed {
        BatchItems::Embed(embed_items)
    } else {
        BatchItems::Generate(gen_items)
    }
}

/// Computes a finished batch's results once: the interactive answer for each request, an error
/// for each invalid one and for every `batch_item_error_every`-th; a file input gets a results
/// file (JSONL, `{"key", "response"|"error"}` per line) in the project.
fn settle(st: &SimState, id: &str) {
    let now = st.clock.now_ms();
    let every = st.resource_config().batch_item_error_every;
    let job = {
        let res = st.resources.lock();
        match res.batches.get(id) {
            Some(b)
                if b.output.is_none()
                    && b.state(now) == crate::resources::BatchState::Succeeded =>
            {
                b.clone()
            }
            _ => return,
        }
    };
    let Some(served) = st.served(&job.model) else {
        return;
    };
    let injected = |i: usize| every > 0 && (i as u64 + 1).is_multiple_of(every);
    let internal = json!({"code": 13, "message": "Internal error encountered."});
    let results: Vec<Value> = match &job.items {
        BatchItems::Generate(items) => items
            .iter()
            .enumerate()
            .map(|(i, (r, meta))| {
                let mut out = match r {
                    _ if injected(i) => json!({ "error": internal }),
                    Ok(req) => json!({ "response": generate(req, &job.model, &served, &st.next_response_id()) }),
                    Err(e) => json!({ "error": {"code": 3, "message": e} }),
                };
                if !meta.is_null() {
                    out["metadata"] = meta.clone();
                }
                out
            })
            .collect(),
        BatchItems::Embed(items) => items
            .iter()
            .enumerate()
            .map(|(i, (r, meta))| {
                let mut out = match r {
                    _ if injected(i) => json!({ "error": internal }),
                    Ok(req) => json!({ "response": { "embedding": { "values": embedding(
                        &embed_text(req),
                        req.task_type.as_deref().unwrap_or(""),
                        dims(req),
                    ) } } }),
                    Err(e) => json!({ "error": {"code": 3, "message": e} }),
                };
                if !meta.is_null() {
                    out["metadata"] = meta.clone();
                }
                out
            })
            .collect(),
    };
    let mut res = st.resources.lock();
    let file = job.input_file.as_ref().map(|_| {
        let lines: String = results
            .iter()
            .map(|r| {
                let mut line = json!({ "key": r.get("metadata").and_then(|m| m.get("key")).cloned().unwrap_or(Value::Null) });
                for k in ["response", "error"] {
                    if let Some(v) = r.get(k) {
                        line[k] = v.clone();
                    }
                }
                format!("{line}\n")
            })
            .collect();
        let fid = format!("batch-{}", job.id);
        let base = res
            .files
            .values()
            .find(|f| Some(format!("files/{}", f.id)) == job.input_file)
            .map_or_else(|| "http://127.0.0.1".to_owned(), |f| f.base.clone());
        let bytes = lines.into_bytes();
        use sha2::Digest;
        let file = StoredFile {
            id: fid.clone(),
            project: job.project.clone(),
            display_name: Some(format!("{} results", job.display_name)),
            mime_type: "application/jsonl".into(),
            size: bytes.len() as u64,
            sha256_hex: format!("{:x}", sha2::Sha256::digest(&bytes)),
            create_ms: job.finish_ms,
            expire_ms: job.finish_ms + 48 * 3_600_000,
            content: Some(bytes),
            base,
            source: "GENERATED",
        };
        res.files.insert(fid.clone(), file);
        format!("files/{fid}")
    });
    if let Some(b) = res.batches.get_mut(id) {
        b.output = Some((results, file));
    }
}

/// `POST batches/{id}:cancel`: a pending or running batch is cancelled; answers `{}`.
pub(crate) async fn cancel(
    State(st): State<Arc<SimState>>,
    Path((version, name)): Path<(String, String)>,
    Query(q): Query<ResourceQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let acted = acted_on::<Batch>(
        &st,
        &version,
        &name,
        ":cancel",
        &q,
        &peer,
        &headers,
        Route::CancelBatch,
    );
    let (key, batch) = match acted {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let now = st.clock.now_ms();
    if let Some(b) = st.resources.lock().batches.get_mut(&batch.id)
        && !b.state(now).done()
    {
        b.cancelled_ms = Some(now);
    }
    st.record_status(Some(&key), 200);
    json_response(200, &json!({}))
}
