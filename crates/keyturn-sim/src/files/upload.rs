//! Uploads to the Files API: `POST upload/v1beta/files`, resumable, multipart or raw.
//!
//! The resumable protocol is Google's (ai.google.dev/gemini-api/docs/files, REST tab; the
//! google-genai SDK's `files.upload` + `_api_client._upload_fd`): `start` with
//! `X-Goog-Upload-Protocol: resumable`, `X-Goog-Upload-Header-Content-Length/-Type` and a
//! `{"file": {...}}` body is answered with an empty body and `X-Goog-Upload-URL` +
//! `X-Goog-Upload-Status: active`; the bytes go to that URL in chunks (`upload`, the last one
//! `upload, finalize`, with `X-Goog-Upload-Offset`); the finalize answer is `{"file": {...}}`
//! with `X-Goog-Upload-Status: final`. The upload URL carries the session, as Google's
//! `upload_id` does, so the chunks need no key; a key sent with them is counted.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::base_of;
use super::multipart::split_multipart;
use crate::admission::{Peer, authorize, error_response as refuse, not_found, peer_ip, version_ok};
use crate::config::Route;
use crate::errors::{self, ApiError};
use crate::resources::{StoredFile, Upload, new_id, shown, storage_exhausted, valid_id};
use crate::server::json_response;
use crate::state::{KeyInfo, SimState};

/// Query parameters of an upload.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UploadQuery {
    key: Option<String>,
    upload_id: Option<String>,
    #[serde(rename = "uploadType")]
    upload_type: Option<String>,
}

/// The largest `start` or metadata body read (it is a small JSON object).
const METADATA_CAP: usize = 64 * 1024;

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn too_large(max: u64) -> ApiError {
    // Google's upload front end refuses a body past the limit with 400 (the real body was not
    // found; the wording names the documented limit).
    errors::invalid_argument(&format!(
        "File size exceeds the maximum allowed size of {max} bytes."
    ))
}

/// Reads a body up to `cap` bytes, never more: `Err` once it would pass it.
async fn read_capped(body: Body, cap: usize) -> Result<Vec<u8>, ()> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ())?;
        if out.len() + chunk.len() > cap {
            return Err(());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// What a streamed upload has received.
struct Received {
    len: u64,
    hasher: Sha256,
    content: Option<Vec<u8>>,
}

/// Streams a body into `into`: counted and hashed, kept while within `keep` bytes; `Err` once
/// the total would pass `max` (the rest is not read).
async fn stream_into(body: Body, into: &mut Received, max: u64, keep: u64) -> Result<(), ()> {
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk.map_err(|_| ())?;
        let len = into.len + chunk.len() as u64;
        if len > max {
            return Err(());
        }
        into.len = len;
        into.hasher.update(&chunk);
        if len > keep {
            into.content = None;
        } else if let Some(c) = &mut into.content {
            c.extend_from_slice(&chunk);
        }
    }
    Ok(())
}

/// The metadata a client sends for a new file (`{"file": {...}}`, either spelling).
#[derive(Debug, Default)]
struct FileMeta {
    id: Option<String>,
    display_name: Option<String>,
    mime_type: Option<String>,
}

fn read_meta(body: &[u8]) -> Result<FileMeta, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(FileMeta::default());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| errors::invalid_payload(&crate::wire::describe_parse_error(&e)))?;
    let f = v.get("file").cloned().unwrap_or(Value::Null);
    let s = |a: &str, b: &str| {
        f.get(a)
            .or_else(|| f.get(b))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let id = match s("name", "name") {
        Some(n) => {
            let id = n.strip_prefix("files/").unwrap_or(&n).to_owned();
            if !valid_id(&id) {
                return Err(errors::invalid_argument(&format!(
                    "* File.name: Invalid file name \"{}\": up to 40 lowercase letters, digits or dashes, not starting or ending with a dash.\n",
                    shown(&n)
                )));
            }
            Some(id)
        }
        None => None,
    };
    Ok(FileMeta {
        id,
        display_name: s("displayName", "display_name"),
        mime_type: s("mimeType", "mime_type"),
    })
}

/// Stores a finished upload, if the project's storage has room.
fn store_file(
    st: &SimState,
    project: &str,
    id: String,
    meta: FileMeta,
    received: Received,
    base: String,
) -> Result<StoredFile, ApiError> {
    let cfg = st.resource_config();
    let now = st.clock.now_ms();
    let mut res = st.resources.lock();
    res.purge(now);
    if res.files.contains_key(&id) {
        return Err(already_exists(&id));
    }
    if res.stored_bytes(project) + received.len > cfg.project_storage_bytes {
        return Err(storage_exhausted(cfg.project_storage_bytes));
    }
    let mut received = received;
    if res.kept_bytes() + received.len > cfg.kept_total_bytes {
        received.content = None;
    }
    let file = StoredFile {
        id: id.clone(),
        project: project.to_owned(),
        display_name: meta.display_name,
        mime_type: meta
            .mime_type
            .unwrap_or_else(|| "application/octet-stream".into()),
        size: received.len,
        sha256_hex: format!("{:x}", received.hasher.finalize()),
        create_ms: now,
        expire_ms: now + cfg.file_ttl_secs as i64 * 1000,
        content: received.content,
        base,
        source: "UPLOADED",
    };
    res.files.insert(id, file.clone());
    Ok(file)
}

fn already_exists(id: &str) -> ApiError {
    ApiError {
        status: 409,
        body: json!({"error": {"code": 409, "message": format!("File files/{} already exists.", shown(id)), "status": "ALREADY_EXISTS"}}),
    }
}

fn with_upload_status(mut r: Response, status: &'static str) -> Response {
    r.headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static(status));
    r
}

fn finalized(st: &SimState, key: &KeyInfo, file: &StoredFile) -> Response {
    st.note_use(
        Route::CreateFile,
        format!("files/{}", file.id),
        Some(file.project.clone()),
        key,
    );
    // A session's bytes sent without a key are the session key's, but not counted as its request.
    st.record_status((key.index != usize::MAX).then_some(key), 200);
    with_upload_status(json_response(200, &json!({"file": file.json()})), "final")
}

/// A new id for a file, or the client's own (refused if taken).
fn file_id_for(st: &SimState, meta: &FileMeta) -> Result<String, ApiError> {
    match &meta.id {
        Some(id) => {
            let now = st.clock.now_ms();
            let mut res = st.resources.lock();
            res.purge(now);
            let taken =
                res.files.contains_key(id) || res.uploads.values().any(|u| u.file_id == *id);
            if taken {
                Err(already_exists(id))
            } else {
                Ok(id.clone())
            }
        }
        None => Ok(new_id()),
    }
}

/// `POST upload/{version}/files`.
pub(crate) async fn upload(
    State(st): State<Arc<SimState>>,
    Path(version): Path<String>,
    Query(q): Query<UploadQuery>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !version_ok(&version) {
        return refuse(&st, None, &not_found());
    }
    let ip = peer_ip(&peer);
    if let Some(upload_id) = &q.upload_id {
        return upload_bytes(&st, upload_id, q.key.as_deref(), &headers, ip, body).await;
    }
    let key = match authorize(&st, &headers, q.key.as_deref(), Route::CreateFile, None, ip) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let cfg = st.resource_config();
    let protocol = header_str(&headers, "x-goog-upload-protocol").unwrap_or("");
    let content_type = header_str(&headers, "content-type").unwrap_or("");
    if protocol.eq_ignore_ascii_case("resumable") {
        let Ok(raw) = read_capped(body, METADATA_CAP).await else {
            return refuse(
                &st,
                Some(&key),
                &errors::invalid_argument("Metadata is too large."),
            );
        };
        let meta = match read_meta(&raw) {
            Ok(m) => m,
            Err(e) => return refuse(&st, Some(&key), &e),
        };
        if !header_str(&headers, "x-goog-upload-command")
            .is_some_and(|c| c.eq_ignore_ascii_case("start"))
        {
            return refuse(
                &st,
                Some(&key),
                &errors::invalid_argument(
                    "A resumable upload begins with X-Goog-Upload-Command: start.",
                ),
            );
        }
        let declared = header_str(&headers, "x-goog-upload-header-content-length")
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared {
            if n > cfg.max_file_bytes {
                return refuse(&st, Some(&key), &too_large(cfg.max_file_bytes));
            }
            let stored = {
                let mut res = st.resources.lock();
                res.purge(st.clock.now_ms());
                res.stored_bytes(&key.project)
            };
            if stored + n > cfg.project_storage_bytes {
                return refuse(
                    &st,
                    Some(&key),
                    &storage_exhausted(cfg.project_storage_bytes),
                );
            }
        }
        let file_id = match file_id_for(&st, &meta) {
            Ok(id) => id,
            Err(e) => return refuse(&st, Some(&key), &e),
        };
        let mime_type = header_str(&headers, "x-goog-upload-header-content-type")
            .map(str::to_owned)
            .or(meta.mime_type)
            .unwrap_or_else(|| "application/octet-stream".into());
        let upload_id = format!("{}{}", new_id(), new_id());
        let base = base_of(&headers);
        let url = format!(
            "{base}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"
        );
        st.resources.lock().uploads.insert(
            upload_id,
            Upload {
                project: key.project.clone(),
                key_label: key.label.clone(),
                file_id: file_id.clone(),
                display_name: meta.display_name,
                mime_type,
                declared,
                received: 0,
                hasher: Sha256::new(),
                content: Some(Vec::new()),
                base,
                start_ms: st.clock.now_ms(),
            },
        );
        st.note_use(
            Route::CreateFile,
            format!("files/{file_id}"),
            Some(key.project.clone()),
            &key,
        );
        st.record_status(Some(&key), 200);
        let mut r = Response::new(Body::empty());
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&url) {
            h.insert("x-goog-upload-url", v.clone());
            h.insert("x-goog-upload-control-url", v);
        }
        h.insert(
            "x-goog-upload-chunk-granularity",
            HeaderValue::from_static("8388608"),
        );
        return with_upload_status(r, "active");
    }
    let multipart = q.upload_type.as_deref() == Some("multipart")
        || content_type
            .to_ascii_lowercase()
            .starts_with("multipart/related");
    let base = base_of(&headers);
    if multipart {
        let cap = cfg.kept_file_bytes as usize + METADATA_CAP;
        let Ok(raw) = read_capped(body, cap).await else {
            return refuse(&st, Some(&key), &too_large(cfg.kept_file_bytes));
        };
        let (meta_bytes, mime, data) = match split_multipart(content_type, &raw) {
            Ok(p) => p,
            Err(e) => return refuse(&st, Some(&key), &errors::invalid_argument(&e)),
        };
        let mut meta = match read_meta(meta_bytes) {
            Ok(m) => m,
            Err(e) => return refuse(&st, Some(&key), &e),
        };
        if data.len() as u64 > cfg.max_file_bytes {
            return refuse(&st, Some(&key), &too_large(cfg.max_file_bytes));
        }
        if meta.mime_type.is_none() {
            meta.mime_type = mime;
        }
        let id = match file_id_for(&st, &meta) {
            Ok(id) => id,
            Err(e) => return refuse(&st, Some(&key), &e),
        };
        let received = Received {
            len: data.len() as u64,
            hasher: Sha256::new_with_prefix(data),
            content: Some(data.to_vec()),
        };
        return match store_file(&st, &key.project, id, meta, received, base) {
            Ok(f) => finalized(&st, &key, &f),
            Err(e) => refuse(&st, Some(&key), &e),
        };
    }
    // A raw (media) upload: the body is the file.
    let meta = FileMeta {
        mime_type: (!content_type.is_empty()).then(|| content_type.to_owned()),
        ..FileMeta::default()
    };
    let mut received = Received {
        len: 0,
        hasher: Sha256::new(),
        content: Some(Vec::new()),
    };
    if stream_into(body, &mut received, cfg.max_file_bytes, cfg.kept_file_bytes)
        .await
        .is_err()
    {
        return refuse(&st, Some(&key), &too_large(cfg.max_file_bytes));
    }
    match store_file(&st, &key.project, new_id(), meta, received, base) {
        Ok(f) => finalized(&st, &key, &f),
        Err(e) => refuse(&st, Some(&key), &e),
    }
}

/// The bytes of a resumable upload, to the URL its `start` handed out.
async fn upload_bytes(
    st: &Arc<SimState>,
    upload_id: &str,
    query_key: Option<&str>,
    headers: &HeaderMap,
    ip: Option<std::net::IpAddr>,
    body: Body,
) -> Response {
    let Some(mut up) = st.resources.lock().uploads.remove(upload_id) else {
        return refuse(st, None, &not_found());
    };
    // The session authorises the bytes; a key sent along is still counted (and must be valid).
    let key = if headers.contains_key("x-goog-api-key") || query_key.is_some() {
        match authorize(st, headers, query_key, Route::CreateFile, None, ip) {
            Ok(k) => k,
            Err(r) => {
                st.resources.lock().uploads.insert(upload_id.to_owned(), up);
                return *r;
            }
        }
    } else {
        KeyInfo {
            index: usize::MAX,
            label: up.key_label.clone(),
            project: up.project.clone(),
            state: crate::config::KeyState::Valid,
        }
    };
    let key_ref = (key.index != usize::MAX).then_some(&key);
    let command = header_str(headers, "x-goog-upload-command")
        .unwrap_or("")
        .to_ascii_lowercase();
    let commands: Vec<&str> = command.split(',').map(str::trim).collect();
    if commands.contains(&"cancel") {
        st.record_status(key_ref, 200);
        return with_upload_status(Response::new(Body::empty()), "cancelled");
    }
    if let Some(offset) =
        header_str(headers, "x-goog-upload-offset").and_then(|v| v.parse::<u64>().ok())
        && offset != up.received
    {
        let received = up.received;
        st.resources.lock().uploads.insert(upload_id.to_owned(), up);
        return refuse(
            st,
            key_ref,
            &errors::invalid_argument(&format!(
                "Invalid upload offset {offset}: {received} bytes were received."
            )),
        );
    }
    let cfg = st.resource_config();
    let max = up
        .declared
        .unwrap_or(cfg.max_file_bytes)
        .min(cfg.max_file_bytes);
    let mut received = Received {
        len: up.received,
        hasher: up.hasher.clone(),
        content: up.content.take(),
    };
    if commands.contains(&"upload")
        && stream_into(body, &mut received, max, cfg.kept_file_bytes)
            .await
            .is_err()
    {
        // The session is dropped: what was sent past the limit is never stored.
        return refuse(st, key_ref, &too_large(max));
    }
    if !commands.contains(&"finalize") {
        up.received = received.len;
        up.hasher = received.hasher;
        up.content = received.content;
        let n = up.received;
        st.resources.lock().uploads.insert(upload_id.to_owned(), up);
        st.record_status(key_ref, 200);
        let mut r = with_upload_status(Response::new(Body::empty()), "active");
        if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
            r.headers_mut().insert("x-goog-upload-size-received", v);
        }
        return r;
    }
    if let Some(d) = up.declared
        && d != received.len
    {
        return refuse(
            st,
            key_ref,
            &errors::invalid_argument(&format!(
                "The upload was finalized with {} bytes; {d} were announced.",
                received.len
            )),
        );
    }
    let meta = FileMeta {
        id: None,
        display_name: up.display_name.clone(),
        mime_type: Some(up.mime_type.clone()),
    };
    match store_file(
        st,
        &up.project,
        up.file_id.clone(),
        meta,
        received,
        up.base.clone(),
    ) {
        Ok(f) => finalized(st, &key, &f),
        Err(e) => refuse(st, key_ref, &e),
    }
}
