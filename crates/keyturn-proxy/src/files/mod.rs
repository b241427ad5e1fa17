//! The Files API through the proxy, each file pinned to the project whose key uploaded it.
//!
//! - `POST /upload/{version}/files`, resumable (`X-Goog-Upload-Protocol: resumable`): the
//!   `start` goes upstream with a pool key; the answer's `X-Goog-Upload-URL` is checked (it must
//!   stay on `GEMINI_BASE_URL`'s host) and replaced by the proxy's own
//!   `…/upload/{version}/files?upload_id=ID`, where ID is 256 random bits that name a session
//!   kept in this process: the upstream URL, the key that started it, the client token that
//!   started it. `upload`, `finalize` and `query` commands go to the upstream session with that
//!   same key; an unknown id, or another client's, is 404. A command may come without a client
//!   token (google-genai sends chunks without a key): the session id is then its credential, as
//!   Google's `upload_id` is. The client never sees a key or the upstream URL.
//! - Multipart (`X-Goog-Upload-Protocol: multipart`, or `uploadType=multipart`): one request,
//!   streamed upstream with a pool key.
//! - Upload bodies stream through, never held whole, under `max_upload_bytes`; a body that stalls
//!   for `body_timeout` is cut off.
//! - On the answer that holds the file (`{"file": {"name": "files/…", "expirationTime": …}}`) the
//!   owner is recorded, until the file's `expirationTime` (48 h when absent).
//! - `GET files/{id}`, `DELETE files/{id}`: with the owner's keys; a file the proxy never saw is
//!   looked for with one key per project (free calls), and its owner learned when found. With
//!   client tokens, the owner is recorded with the client that uploaded it, and only that
//!   client may get, delete, download or name it (see [`crate::access`]).
//! - `GET files`: the files of every project that owns one the proxy knows of, one project's
//!   page after another, behind a page token of the proxy's own (`{project index}.{hex of
//!   upstream token}`; a hostile token is refused); with client tokens, less other clients'.
//!
//! `upload.rs` holds the upload sessions and the upload commands; `resource.rs` the calls about
//! one resource and the merged lists, which `crate::owned` uses for caches and batches too.

mod resource;
mod upload;

use axum::http::StatusCode;
use keyturn_core::resources::{BATCH_RETENTION_MS, FILE_LIFETIME_MS};
use keyturn_core::{KeyId, Ownership, ResourceKind, ResourceName};
use serde_json::Value;

use crate::affinity;
use crate::answer::{Problem, not_found};
use crate::{ProxyState, Refusal};

pub(crate) use self::resource::{
    About, ListQuery, about, count_tokens_of, delete_file, get_file, list, list_files,
};
pub use self::upload::{MAX_UPLOAD_SESSIONS, UPLOAD_SESSION_MS};
pub(crate) use self::upload::{Uploads, upload};

pub(crate) fn transport<'a>(
    st: &'a ProxyState,
    version: &str,
) -> Result<&'a keyturn_gemini::Transport, Refusal> {
    let Some(up) = &st.upstream else {
        return Err(not_found().into());
    };
    match version {
        "v1beta" => Ok(&up.v1beta),
        "v1" => Ok(&up.v1),
        _ => Err(not_found().into()),
    }
}

/// Records the owner of a resource the upstream described: a file (`name`, `expirationTime`,
/// 48 h when absent), a cached content (`expireTime`, an hour when absent), a batch (its
/// operation's `name`; kept for [`BATCH_RETENTION_MS`] unless deleted); the project of `key`,
/// and `client`, the client that created it (`None` keeps a client already recorded: an answer
/// about a resource never takes it from its creator).
pub(crate) async fn learn(
    st: &ProxyState,
    key: KeyId,
    client: Option<&str>,
    v: &Value,
) -> Result<(), Refusal> {
    let Some(name) = v
        .get("name")
        .and_then(Value::as_str)
        .and_then(|n| ResourceName::parse(n).ok())
    else {
        return Ok(());
    };
    let Some(project) = affinity::project_of(st, key) else {
        return Ok(());
    };
    let now = st.clock.now_ms();
    let at = |field: &str| {
        v.get(field)
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
    };
    let expires = match name.kind() {
        ResourceKind::Files => at("expirationTime").unwrap_or(now.saturating_add(FILE_LIFETIME_MS)),
        ResourceKind::CachedContents => at("expireTime").unwrap_or(now.saturating_add(3_600_000)),
        ResourceKind::Batches => now.saturating_add(BATCH_RETENTION_MS),
    };
    st.resources
        .record(&name, &Ownership::new(project, client), expires)
        .await
        .map_err(|_| affinity::unavailable())
}

/// The results file a finished batch names (`response.responsesFile`, or
/// `metadata.output.responsesFile`), recorded as the batch's: same project and client, so
/// another client cannot download what the batch answered.
pub(crate) async fn learn_results_file(
    st: &ProxyState,
    key: KeyId,
    batch: &Ownership,
    v: &Value,
) -> Result<(), Refusal> {
    let file = [
        v.pointer("/response/responsesFile"),
        v.pointer("/metadata/output/responsesFile"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_str)
    .and_then(|f| ResourceName::parse(f).ok())
    .filter(|f| f.kind() == ResourceKind::Files);
    let (Some(file), Some(project)) = (file, affinity::project_of(st, key)) else {
        return Ok(());
    };
    let known = st
        .resources
        .owner(&file)
        .await
        .map_err(|_| affinity::unavailable())?;
    if known.is_some() {
        return Ok(());
    }
    let expires = st.clock.now_ms().saturating_add(FILE_LIFETIME_MS);
    let owner = Ownership::new(project, batch.client.as_deref());
    st.resources
        .record(&file, &owner, expires)
        .await
        .map_err(|_| affinity::unavailable())
}

pub(super) fn bad_gateway(detail: &str) -> Refusal {
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "UNAVAILABLE",
        format!("keyturn proxy: {detail}"),
    )
    .into()
}
