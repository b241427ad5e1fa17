//! Resource affinity: a file, a cached content or a batch belongs to the Google Cloud project of
//! the key that created it, and any other project's key gets a bare 403 for it. The proxy
//! records each resource's owner when it is created ([`keyturn_core::ResourceMap`]), and:
//!
//! - a request that names one (`fileData.fileUri` / `file_data.file_uri`, `cachedContent` /
//!   `cached_content`, anywhere in the body; on the OpenAI-compatible routes also any string
//!   that is a file's URI or name) is admitted only on keys of the owner
//!   ([`Demand::within_project_of`]): with no room there, the client gets 429 with `RetryInfo`,
//!   never another project's key;
//! - a request naming another client's resource (with client tokens, see [`crate::access`]) is
//!   refused as Gemini refuses another project's, before any quota is spent;
//! - a resource the proxy never saw goes out on any key, and a bare 403 for it is the caller's
//!   fault (the caller's verification already says so), not the key's;
//! - calls about a resource (get, delete, upload, list) go with the owner's keys, one after the
//!   other while a key is refused as dead.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use keyturn_core::{Demand, KeyId, ResourceName};
use keyturn_gemini::{ErrorKind, KeyHeader, SendError, Transport};
use serde_json::Value;

use crate::access;
use crate::answer::{Problem, invalid};
use crate::auth::Client;
use crate::{ProxyState, Refusal};

/// Field names whose string value names a project-owned resource, in both spellings.
/// `fileName` is a batch's input file (`inputConfig.fileName`).
const RESOURCE_FIELDS: [&str; 6] = [
    "fileUri",
    "file_uri",
    "cachedContent",
    "cached_content",
    "fileName",
    "file_name",
];

/// Most resources one request may name (a request with more is refused, not walked for ever).
const MAX_REFERENCES: usize = 256;

/// The resource a string names: `files/ID`, `cachedContents/ID`, `batches/ID`, or a URL whose
/// path ends in one (`https://generativelanguage.googleapis.com/v1beta/files/ID`). A string
/// with a query, a fragment or anything that is no valid id names nothing.
pub(crate) fn resource_in(s: &str) -> Option<ResourceName> {
    let path = match s.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => s,
    };
    let mut segs = path.rsplit('/');
    let id = segs.next()?;
    let collection = segs.next()?;
    ResourceName::parse(&format!("{collection}/{id}")).ok()
}

/// The resources a request body names. Native bodies: the values of [`RESOURCE_FIELDS`] at any
/// depth. With `any_string` (the OpenAI-compatible routes, where a file may come as an image or
/// file part's URL): every string value that names one.
pub(crate) fn referenced(v: &Value, any_string: bool) -> Result<Vec<ResourceName>, Refusal> {
    fn walk(v: &Value, any: bool, named: bool, out: &mut Vec<ResourceName>, depth: u32) {
        if depth > 128 {
            return;
        }
        match v {
            Value::String(s) if named || any => {
                if let Some(r) = resource_in(s)
                    && !out.contains(&r)
                {
                    out.push(r);
                }
            }
            Value::Object(m) => {
                for (k, v) in m {
                    walk(
                        v,
                        any,
                        RESOURCE_FIELDS.contains(&k.as_str()),
                        out,
                        depth + 1,
                    );
                }
            }
            Value::Array(a) => {
                for v in a {
                    walk(v, any, false, out, depth + 1);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, any_string, false, &mut out, 0);
    if out.len() > MAX_REFERENCES {
        return Err(invalid(&format!(
            "the request names more than {MAX_REFERENCES} files or cached contents"
        ))
        .into());
    }
    Ok(out)
}

/// The first key (in ring order) of `project`, if the pool has one (a key a reload removed is
/// in the ring no more than in the pool: no key here ever picks it).
pub(crate) fn key_of(st: &ProxyState, project: &str) -> Option<KeyId> {
    st.live()
        .ledger
        .keys()
        .active()
        .find(|(_, e)| e.project == project)
        .map(|(id, _)| id)
}

/// A key by its label (a reply names the key that served it by label).
pub(crate) fn key_by_label(st: &ProxyState, label: &str) -> Option<KeyId> {
    st.live()
        .ledger
        .keys()
        .iter()
        .find(|(_, e)| e.label == label)
        .map(|(id, _)| id)
}

/// The keys the ledger has switched off — disabled by an operator, or dead — which take no
/// call about a resource either. When the ledger cannot say, none are assumed off (a call on
/// an off key is refused upstream, and tried on the next).
pub(crate) async fn switched_off(st: &ProxyState) -> Vec<keyturn_core::Fingerprint> {
    match st.live().ledger.status().await {
        Ok(status) => status
            .keys
            .into_iter()
            .filter(|k| k.disabled.is_some())
            .map(|k| k.fingerprint)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The fingerprint of a key, by id.
pub(crate) fn fingerprint_of(st: &ProxyState, key: KeyId) -> Option<keyturn_core::Fingerprint> {
    st.live().ledger.keys().get(key).map(|e| e.fingerprint())
}

/// The id of the key with this fingerprint, if the pool holds it now (not removed by a reload).
pub(crate) fn active_key(st: &ProxyState, fingerprint: keyturn_core::Fingerprint) -> Option<KeyId> {
    st.live()
        .ledger
        .keys()
        .active()
        .find(|(_, e)| e.fingerprint() == fingerprint)
        .map(|(id, _)| id)
}

/// The project of a key, by id.
pub(crate) fn project_of(st: &ProxyState, key: KeyId) -> Option<String> {
    st.live().ledger.keys().get(key).map(|e| e.project.clone())
}

/// `demand`, pinned to the project that owns what the body names, when the proxy knows it.
/// Resources of two projects in one request cannot be served by any key: refused; so is one
/// whose known owner has no key in the pool, and one of another client.
pub(crate) async fn pin(
    st: &ProxyState,
    client: &Client,
    body: &Value,
    demand: Demand,
    any_string: bool,
) -> Result<Demand, Refusal> {
    match owner(st, client, body, any_string).await? {
        Some(p) => match key_of(st, &p) {
            Some(k) => Ok(demand.within_project_of(k)),
            // A reload between the two reads removed the project's last key.
            None => Err(no_key_of_owner()),
        },
        None => Ok(demand),
    }
}

/// A request naming a resource whose known owner has no key in the pool.
fn no_key_of_owner() -> Refusal {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "FAILED_PRECONDITION",
        "keyturn proxy: the file or cached content the request names belongs to a project none of this pool's keys is in (any more); upload it again",
    )
    .into()
}

/// The project that owns what the body names, when the proxy knows it. Resources of two
/// projects in one request cannot be served by any key, nor one whose known owner has no key in
/// the pool: refused; a resource of another client is refused as Gemini refuses another
/// project's ([`access::denied`]).
pub(crate) async fn owner(
    st: &ProxyState,
    client: &Client,
    body: &Value,
    any_string: bool,
) -> Result<Option<String>, Refusal> {
    let named = referenced(body, any_string)?;
    if named.is_empty() {
        return Ok(None);
    }
    let owners = st
        .resources
        .owners(&named)
        .await
        .map_err(|_| unavailable())?;
    let mut owner: Option<String> = None;
    for (r, o) in named.iter().zip(owners) {
        let Some(o) = o else {
            continue;
        };
        access::check(st, client, r, Some(&o))?;
        let p = o.project;
        match &owner {
            Some(o) if *o != p => {
                return Err(invalid(
                    "the request names files or cached contents of two different projects; no key can use both",
                )
                .into());
            }
            _ => owner = Some(p),
        }
    }
    match owner {
        None => Ok(None),
        Some(p) if key_of(st, &p).is_some() => Ok(Some(p)),
        // The owner is known and no key of the pool is in it (a reload removed them, or the
        // map names a project that was never ours): every key here would be refused for it,
        // so none is sent.
        Some(_) => Err(no_key_of_owner()),
    }
}

/// The resource map could not be read: the proxy does not guess an owner.
pub(crate) fn unavailable() -> Refusal {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "keyturn proxy: the resource map is unavailable; retry shortly",
    )
    .retry_after(5)
    .into()
}

/// The keys to try for a call about a resource: the owner's, or every key, from a rotating start.
pub(crate) fn keys_for(st: &ProxyState, project: Option<&str>) -> Vec<KeyId> {
    let ring = st.live().ledger.keys();
    let ids: Vec<KeyId> = ring
        .active()
        .filter(|(_, e)| project.is_none_or(|p| e.project == p))
        .map(|(id, _)| id)
        .collect();
    let start = st
        .resource_cursor
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let n = ids.len().max(1);
    (0..ids.len()).map(|i| ids[(start + i) % n]).collect()
}

/// The keys an upload of `client` goes to: its home project's first (the same for all its
/// uploads, so a request naming several of its files has one project that owns them all: a
/// digest of its token's label picks it among the pool's projects), then every other key, tried
/// only if all of the home project's are unreachable or refused as dead.
pub(crate) fn upload_keys(st: &ProxyState, client: Option<&str>) -> Vec<KeyId> {
    use sha2::Digest;
    let projects = one_key_per_project(st);
    let Some(n) = std::num::NonZeroUsize::new(projects.len()) else {
        return Vec::new();
    };
    let digest = sha2::Sha256::digest(client.unwrap_or_default().as_bytes());
    let pick = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]) as usize
        % n.get();
    let home = projects[pick].1.clone();
    let mut keys = keys_for(st, Some(&home));
    let others = st
        .live()
        .ledger
        .keys()
        .active()
        .filter(|(_, e)| e.project != home)
        .map(|(id, _)| id)
        .collect::<Vec<_>>();
    keys.extend(others);
    keys
}

/// One key per project of the pool, for finding a resource the proxy has not seen.
pub(crate) fn one_key_per_project(st: &ProxyState) -> Vec<(KeyId, String)> {
    let mut seen: Vec<(KeyId, String)> = Vec::new();
    for (id, e) in st.live().ledger.keys().active() {
        if !seen.iter().any(|(_, p)| *p == e.project) {
            seen.push((id, e.project.clone()));
        }
    }
    seen
}

/// A request about a resource, sent with the given keys in turn: the next is tried only when
/// one could not be reached or was refused as dead (its answer says nothing about the resource).
pub(crate) struct Sent {
    pub(crate) key: KeyId,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// An upstream answer to a resource call, read with keyturn-gemini's bounds: a successful one
/// whole up to [`keyturn_gemini::body::MAX_ANSWER_BYTES`] (refused past it), an error's first
/// [`keyturn_gemini::body::MAX_ERROR_BYTES`]. A hostile or broken upstream cannot make the proxy
/// hold an endless body.
pub(crate) async fn read_bounded(
    resp: reqwest::Response,
) -> Result<(StatusCode, HeaderMap, Bytes), Refusal> {
    use keyturn_gemini::body::{MAX_ANSWER_BYTES, MAX_ERROR_BYTES, read_answer, read_error};
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = resp.headers().clone();
    let body = if status.is_success() {
        read_answer(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| send_failed(&SendError::Failed(e)))?
    } else {
        read_error(resp, MAX_ERROR_BYTES).await
    };
    Ok((status, headers, body))
}

pub(crate) async fn send_with(
    st: &ProxyState,
    transport: &Transport,
    keys: &[KeyId],
    method: reqwest::Method,
    url: &str,
    headers: &HeaderMap,
    body: Option<Bytes>,
) -> Result<Sent, Refusal> {
    let ring = st.live().ledger.keys();
    let off = switched_off(st).await;
    let mut last: Option<Refusal> = None;
    for &id in keys {
        let Some(entry) = ring.get(id) else { continue };
        if off.contains(&entry.fingerprint()) {
            continue;
        }
        let sent = transport
            .send_as(
                method.clone(),
                KeyHeader::GoogApiKey,
                &entry.key,
                url,
                headers.clone(),
                body.clone().map(reqwest::Body::from),
            )
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                last = Some(send_failed(&e));
                continue;
            }
        };
        let (status, headers, bytes) = match read_bounded(resp).await {
            Ok(r) => r,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        if !status.is_success()
            && matches!(
                keyturn_gemini::classify(status.as_u16(), &bytes).kind,
                ErrorKind::DeadKey(_) | ErrorKind::ProjectDead(_)
            )
        {
            tracing::warn!(key = %entry.label, status = status.as_u16(), "a key was refused on a resource call; trying the next");
            last = Some(
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "keyturn proxy: every key of the project that owns this resource was refused",
                )
                .retry_after(60)
                .into(),
            );
            continue;
        }
        return Ok(Sent {
            key: id,
            status,
            headers,
            body: bytes,
        });
    }
    Err(last.unwrap_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "keyturn proxy: no key of the project that owns this resource is in the pool",
        )
        .into()
    }))
}

pub(crate) fn send_failed(e: &SendError) -> Refusal {
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "UNAVAILABLE",
        format!("keyturn proxy: no usable answer from Gemini: {e}"),
    )
    .into()
}

/// An upstream answer as the client gets it: status, JSON body less any pool key.
pub(crate) fn relay(st: &ProxyState, status: StatusCode, body: &Bytes) -> Response {
    let body = match st.live().scrubber.scrub_known(body) {
        Some(clean) => Bytes::from(clean),
        None => body.clone(),
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_found_in_both_spellings_and_only_where_they_can_be() {
        let v = json!({
            "contents": [{"parts": [
                {"fileData": {"fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc", "mimeType": "application/pdf"}},
                {"file_data": {"file_uri": "files/def"}},
                {"text": "files/not-a-reference"},
            ]}],
            "cached_content": "cachedContents/c1",
        });
        let mut got: Vec<String> = referenced(&v, false)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        got.sort();
        assert_eq!(got, ["cachedContents/c1", "files/abc", "files/def"]);
        let chat = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://generativelanguage.googleapis.com/v1beta/files/img1"}}
        ]}]});
        assert!(referenced(&chat, false).unwrap().is_empty());
        assert_eq!(
            referenced(&chat, true).unwrap()[0].to_string(),
            "files/img1"
        );
        for hostile in [
            "files/../models/x",
            "files/a?x=1",
            "https://h/v1beta/files/a#b",
            "files/%2e%2e",
            "https://h/v1beta/files/",
        ] {
            assert!(resource_in(hostile).is_none(), "{hostile}");
        }
    }
}
