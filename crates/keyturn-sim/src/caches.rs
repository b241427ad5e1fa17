//! `cachedContents`, per project: create, get, list, patch (`ttl` or `expireTime`), delete, and
//! what `generateContent` does with a `cachedContent` (ai.google.dev/api/caching; the
//! google-genai SDK's `caches.py`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use crate::admission::{
    Peer, admit, authorize, error_response as refuse, not_found, peer_ip, version_ok,
};
use crate::config::Route;
use crate::errors::{self, ApiError};
use crate::files::{file_uris, foreign_file};
use crate::owned::{Owned, owned, owned_fields};
use crate::resources::{
    CachedContent, cache_denied, new_id, parse_duration_ms, parse_time_ms, shown,
};
use crate::server::json_response;
use crate::state::{KeyInfo, SimState};
use crate::wire::{Content, GenerateContentRequest, count_tokens, describe_parse_error};

/// A cache lives an hour unless told otherwise (ai.google.dev/gemini-api/docs/caching).
const DEFAULT_TTL_MS: i64 = 3_600_000;

/// The smallest cache per model, from Google's caching guide (December 2025: 1,024 tokens for
/// 2.5 Flash and Flash-Lite, 4,096 for 2.5 Pro, 2,048 for 3 Pro and 3 Flash previews).
pub fn min_cache_tokens(model: &str) -> u64 {
    match model {
        "gemini-2.5-pro" => 4_096,
        m if m.starts_with("gemini-3") => 2_048,
        _ => 1_024,
    }
}

impl Owned for CachedContent {
    const COLLECTION: &'static str = "cachedContents";
    const LIST_FIELD: &'static str = "cachedContents";
    // cachedContents.list: pageSize at most 1000 (ai.google.dev/api/caching).
    const PAGE_SIZE: (usize, usize) = (100, 1000);
    const GET: Route = Route::GetCachedContent;
    const DELETE: Route = Route::DeleteCachedContent;
    const LIST: Route = Route::ListCachedContents;

    owned_fields!(caches);

    fn json(&self, _now: i64) -> Value {
        CachedContent::json(self)
    }
    fn denied(_id: &str) -> ApiError {
        cache_denied()
    }
}

/// Query parameters of `create` and `patch`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CacheQuery {
    key: Option<String>,
    #[serde(rename = "updateMask", alias = "update_mask")]
    update_mask: Option<String>,
}

/// A `CachedContent` as clients send it (both spellings; unknown fields refused like the real
/// service).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CacheBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    contents: Vec<Content>,
    #[serde(default, alias = "system_instruction")]
    system_instruction: Option<Content>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default, alias = "tool_config")]
    tool_config: Option<Value>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default, alias = "expire_time")]
    expire_time: Option<String>,
    #[serde(default, alias = "display_name")]
    display_name: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

fn parse_body(body: &[u8]) -> Result<CacheBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CacheBody::default());
    }
    serde_json::from_slice(body).map_err(|e| errors::invalid_payload(&describe_parse_error(&e)))
}

/// When a cache ends: `ttl` from now or `expireTime`, not both.
fn expiry(now: i64, ttl: Option<&str>, expire_time: Option<&str>) -> Result<Option<i64>, ApiError> {
    match (ttl, expire_time) {
        (Some(_), Some(_)) => Err(errors::invalid_argument(
            "Only one of ttl or expire_time may be set.",
        )),
        (Some(t), None) => parse_duration_ms(t).map(|ms| Some(now + ms)).ok_or_else(|| {
            errors::invalid_argument(&format!(
                "Invalid value at 'cached_content.ttl' (type.googleapis.com/google.protobuf.Duration), \"{}\"",
                shown(t)
            ))
        }),
        (None, Some(e)) => parse_time_ms(e).map(Some).ok_or_else(|| {
            errors::invalid_argument(&format!(
                "Invalid value at 'cached_content.expire_time' (type.googleapis.com/google.protobuf.Timestamp), \"{}\"",
                shown(e)
            ))
        }),
        (None, None) => Ok(None),
    }
}

/// Tokens of contents as the simulator counts them: text at four characters a token, and a file
/// the Files API holds at four bytes a token (so caching a document reaches the minimum the way
/// it does on the real service).
pub(crate) fn content_tokens(st: &SimState, contents: &[&Content]) -> u64 {
    let text: u64 = contents.iter().map(|c| count_tokens(&c.text())).sum();
    let res = st.resources.lock();
    let files: u64 = contents
        .iter()
        .flat_map(|c| c.parts.iter())
        .filter_map(|p| p.file_data.as_ref())
        .filter_map(|f| f.get("fileUri").or_else(|| f.get("file_uri")))
        .filter_map(Value::as_str)
        .filter_map(|uri| res.files.get(crate::config::file_id(uri)))
        .map(|f| f.size.div_ceil(4))
        .sum();
    text + files
}

/// `POST cachedContents`.
pub(crate) async fn create(
    State(st): State<Arc<SimState>>,
    Path(version): Path<String>,
    Query(q): Query<CacheQuery>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !version_ok(&version) {
        return refuse(&st, None, &not_found());
    }
    let ip = peer_ip(&peer);
    let parsed = parse_body(&body);
    let model_named = parsed
        .as_ref()
        .ok()
        .and_then(|b| b.model.as_deref())
        .map(|m| m.strip_prefix("models/").unwrap_or(m).to_owned());
    let key = match authorize(
        &st,
        &headers,
        q.key.as_deref(),
        Route::CreateCachedContent,
        model_named.as_deref(),
        ip,
    ) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let b = match parsed {
        Ok(b) => b,
        Err(e) => return refuse(&st, Some(&key), &e),
    };
    let Some(model) = model_named else {
        return refuse(
            &st,
            Some(&key),
            &errors::invalid_argument("* CachedContent.model: model is required\n"),
        );
    };
    if st.served(&model).is_none_or(|m| m.embedding) {
        return refuse(
            &st,
            Some(&key),
            &errors::model_not_found(&model, &version, "createCachedContent"),
        );
    }
    let parts: Vec<&Content> = b
        .system_instruction
        .iter()
        .chain(b.contents.iter())
        .collect();
    let uris = file_uris(parts.iter().copied());
    if let Some(e) = foreign_file(&st, &key, Route::CreateCachedContent, &uris) {
        return refuse(&st, Some(&key), &e);
    }
    let now = st.clock.now_ms();
    let expire_ms = match expiry(now, b.ttl.as_deref(), b.expire_time.as_deref()) {
        Ok(e) => e.unwrap_or(now + DEFAULT_TTL_MS),
        Err(e) => return refuse(&st, Some(&key), &e),
    };
    let tokens = content_tokens(&st, &parts);
    let min = min_cache_tokens(&model);
    if tokens < min {
        // Wording of the real refusal, as users quote it ("Cached content is too small.
        // total_token_count=…, min_total_token_count=…").
        return refuse(
            &st,
            Some(&key),
            &errors::invalid_argument(&format!(
                "Cached content is too small. total_token_count={tokens}, min_total_token_count={min}"
            )),
        );
    }
    let _ = b.name;
    let cache = CachedContent {
        id: new_id(),
        project: key.project.clone(),
        model,
        display_name: b.display_name,
        contents: b.contents,
        system_instruction: b.system_instruction,
        tools: b.tools,
        tool_config: b.tool_config,
        tokens,
        create_ms: now,
        update_ms: now,
        expire_ms,
    };
    let v = cache.json();
    st.note_use(
        Route::CreateCachedContent,
        format!("cachedContents/{}", cache.id),
        Some(key.project.clone()),
        &key,
    );
    st.resources.lock().caches.insert(cache.id.clone(), cache);
    st.record_status(Some(&key), 200);
    json_response(200, &v)
}

/// `PATCH cachedContents/{id}?updateMask=ttl` (or `expireTime`): only the expiry can change.
pub(crate) async fn patch(
    State(st): State<Arc<SimState>>,
    Path((version, id)): Path<(String, String)>,
    Query(q): Query<CacheQuery>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match admit(
        &st,
        &version,
        &headers,
        q.key.as_deref(),
        Route::UpdateCachedContent,
        None,
        &peer,
    ) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let b = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return refuse(&st, Some(&key), &e),
    };
    let cache = match owned::<CachedContent>(&st, &key, Route::UpdateCachedContent, &id) {
        Ok(c) => c,
        Err(e) => return refuse(&st, Some(&key), &e),
    };
    // Only the expiration can be updated (ai.google.dev/api/caching#method:-cachedcontents.patch).
    if let Some(mask) = q.update_mask.as_deref() {
        for field in mask.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if !matches!(field, "ttl" | "expireTime" | "expire_time") {
                return refuse(
                    &st,
                    Some(&key),
                    &errors::invalid_argument(&format!(
                        "Invalid update mask path: {}. Only the expiration (ttl or expire_time) of a CachedContent can be updated.",
                        shown(field)
                    )),
                );
            }
        }
    }
    let now = st.clock.now_ms();
    let expire_ms = match expiry(now, b.ttl.as_deref(), b.expire_time.as_deref()) {
        Ok(Some(e)) => e,
        Ok(None) => {
            return refuse(
                &st,
                Some(&key),
                &errors::invalid_argument("Either ttl or expire_time must be set."),
            );
        }
        Err(e) => return refuse(&st, Some(&key), &e),
    };
    let v = {
        let mut res = st.resources.lock();
        match res.caches.get_mut(&cache.id) {
            Some(c) => {
                c.expire_ms = expire_ms;
                c.update_ms = now;
                Some(c.json())
            }
            None => None,
        }
    };
    match v {
        Some(v) => {
            st.record_status(Some(&key), 200);
            json_response(200, &v)
        }
        None => refuse(&st, Some(&key), &cache_denied()),
    }
}

/// A `generateContent` with `cachedContent`: the cache must be the key's project's (else the
/// 403), for the same model (else 400, Google's wording), and the request may not set what the
/// cache holds. On success the request is the cache's turns followed by its own, and the answer
/// counts the cached tokens; returns how many.
pub(crate) fn apply(
    st: &SimState,
    key: &KeyInfo,
    route: Route,
    model: &str,
    req: &mut GenerateContentRequest,
) -> Result<u64, ApiError> {
    let Some(name) = req.cached_content.clone() else {
        return Ok(0);
    };
    let id = name.strip_prefix("cachedContents/").unwrap_or(&name);
    let cache = owned::<CachedContent>(st, key, route, id)?;
    if cache.model != model {
        return Err(errors::invalid_argument(&format!(
            "Model used by GenerateContent request (models/{model}) and CachedContent (models/{}) has to be the same.",
            cache.model
        )));
    }
    if req.system_instruction.is_some() || req.tools.is_some() || req.tool_config.is_some() {
        return Err(errors::invalid_argument(
            "CachedContent can not be used with GenerateContent request setting system_instruction, tools or tool_config.\n\nProposed fix: move those values to CachedContent from GenerateContent request.",
        ));
    }
    let mut contents = cache.contents.clone();
    contents.append(&mut req.contents);
    req.contents = contents;
    req.system_instruction = cache.system_instruction.clone();
    req.tools = cache.tools.clone();
    req.tool_config = cache.tool_config.clone();
    req.cached_content = None;
    Ok(cache.tokens)
}
