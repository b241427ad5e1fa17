//! The Files API, per project: `POST upload/v1beta/files` (resumable, multipart, raw),
//! `GET files/{id}`, `GET files`, `DELETE files/{id}`, and the download of a file the service
//! wrote (a batch's results).
//!
//! The resumable protocol is Google's (ai.google.dev/gemini-api/docs/files, REST tab; the
//! google-genai SDK's `files.upload` + `_api_client._upload_fd`): `start` with
//! `X-Goog-Upload-Protocol: resumable`, `X-Goog-Upload-Header-Content-Length/-Type` and a
//! `{"file": {...}}` body is answered with an empty body and `X-Goog-Upload-URL` +
//! `X-Goog-Upload-Status: active`; the bytes go to that URL in chunks (`upload`, the last one
//! `upload, finalize`, with `X-Goog-Upload-Offset`); the finalize answer is `{"file": {...}}`
//! with `X-Goog-Upload-Status: final`. The upload URL carries the session, as Google's
//! `upload_id` does, so the chunks need no key; a key sent with them is counted.

mod multipart;
mod upload;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use serde_json::Value;

pub(crate) use self::upload::upload;
use crate::admission::{Peer, error_response as refuse};
use crate::config::{Route, file_id};
use crate::errors::{self, ApiError};
use crate::owned::{Owned, ResourceQuery, acted_on, owned_fields};
use crate::resources::{StoredFile, file_denied, shown};
use crate::state::{KeyInfo, SimState};
use crate::wire::{Content, GenerateContentRequest};

impl Owned for StoredFile {
    const COLLECTION: &'static str = "files";
    const LIST_FIELD: &'static str = "files";
    // Files API: pageSize default 10, at most 100 (ai.google.dev/api/files#method:-files.list).
    const PAGE_SIZE: (usize, usize) = (10, 100);
    const GET: Route = Route::GetFile;
    const DELETE: Route = Route::DeleteFile;
    const LIST: Route = Route::ListFiles;

    owned_fields!(files);

    fn json(&self, _now: i64) -> Value {
        StoredFile::json(self)
    }
    /// `real-32`'s 403 (also for an unknown or expired file, as Google answers).
    fn denied(id: &str) -> ApiError {
        file_denied(id)
    }
}

/// `GET download/{version}/files/{id}:download?alt=media`: the bytes of a file the simulator
/// kept (a batch's results file, or a small upload).
pub(crate) async fn download_file(
    State(st): State<Arc<SimState>>,
    Path((version, name)): Path<(String, String)>,
    Query(q): Query<ResourceQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let acted = acted_on(
        &st,
        &version,
        &name,
        ":download",
        &q,
        &peer,
        &headers,
        Route::GetFile,
    );
    match acted {
        Ok((
            key,
            StoredFile {
                content: Some(bytes),
                mime_type,
                ..
            },
        )) => {
            st.record_status(Some(&key), 200);
            let mut r = Response::new(Body::from(bytes));
            if let Ok(v) = HeaderValue::from_str(&mime_type) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        Ok((key, _)) => refuse(
            &st,
            Some(&key),
            &errors::invalid_argument("This file's content is not available for download."),
        ),
        Err(r) => *r,
    }
}

/// `http://host:port` as the client reached the simulator (its `Host` header, when it is a
/// plain host and port), for the URLs the simulator hands out: upload URLs and file URIs.
pub(crate) fn base_of(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// The `fileData.fileUri`s a request names.
pub(crate) fn file_uris<'a>(contents: impl Iterator<Item = &'a Content>) -> Vec<String> {
    contents
        .flat_map(|c| c.parts.iter())
        .filter_map(|p| p.file_data.as_ref())
        .filter_map(|f| f.get("fileUri").or_else(|| f.get("file_uri")))
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

pub(crate) fn generate_files(r: &GenerateContentRequest) -> Vec<String> {
    file_uris(r.system_instruction.iter().chain(r.contents.iter()))
}

/// `real-32`'s bare 403 for the first Files API file the key's project may not use: one another
/// project created, one whose URI says `other-project`, one expired or never created (Google
/// answers all of them alike). URIs outside the Files API (`gs://`, YouTube) are not checked.
/// Each file named is noted with its owner, for the stats.
pub(crate) fn foreign_file(
    st: &SimState,
    key: &KeyInfo,
    route: Route,
    uris: &[String],
) -> Option<ApiError> {
    uris.iter()
        .filter(|uri| uri.contains("files/"))
        .find_map(|uri| {
            let id = file_id(uri);
            let owner = st.file_owner(id);
            st.note_use(route, format!("files/{}", shown(id)), owner.clone(), key);
            let foreign = match owner {
                Some(owner) => owner != key.project,
                None => true,
            } || uri.contains("other-project");
            foreign.then(|| file_denied(id))
        })
}
