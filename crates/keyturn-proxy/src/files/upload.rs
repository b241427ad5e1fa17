//! Uploads through the proxy: the sessions this process keeps (by an opaque id the client
//! holds), the resumable commands relayed with the key that started them, and multipart uploads.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use keyturn_core::{Fingerprint, KeyId};
use serde_json::Value;

use super::{bad_gateway, learn, transport};
use crate::affinity::{self, Sent};
use crate::answer::{Answer, Problem, invalid};
use crate::auth::{Client, SessionOnly};
use crate::request::slot;
use crate::{ProxyState, Refusal};

/// Most upload sessions kept at once; past it, the oldest of the client holding the most goes,
/// so one client starting sessions without end evicts only its own.
pub const MAX_UPLOAD_SESSIONS: usize = 4096;

/// How long an upload session is kept (Gemini's last about a week; an upload takes minutes).
pub const UPLOAD_SESSION_MS: i64 = 24 * 3600 * 1000;

/// An upload under way.
#[derive(Debug, Clone)]
struct Session {
    upstream: String,
    /// The key that started it, by fingerprint: a reload may renumber the ring (Redis) or
    /// remove the key, and a session goes on only with that very key.
    key: Fingerprint,
    client: Option<String>,
    version: String,
    started_ms: i64,
    /// Bytes of the file streamed upstream so far, for a chunk that states no offset.
    streamed: Arc<std::sync::atomic::AtomicU64>,
    /// The file's length its start announced (`X-Goog-Upload-Header-Content-Length`), if any.
    announced: Option<u64>,
}

/// The upload sessions of this process, by the opaque id the client holds.
#[derive(Debug, Default)]
pub(crate) struct Uploads(parking_lot::Mutex<HashMap<String, Session>>);

impl Uploads {
    fn insert(&self, id: String, s: Session, now: i64) {
        let mut map = self.0.lock();
        map.retain(|_, s| now - s.started_ms < UPLOAD_SESSION_MS);
        if map.len() >= MAX_UPLOAD_SESSIONS {
            let mut held: HashMap<&Option<String>, usize> = HashMap::new();
            for v in map.values() {
                *held.entry(&v.client).or_default() += 1;
            }
            let greediest = held
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(c, _)| c.clone());
            if let Some(oldest) = map
                .iter()
                .filter(|(_, v)| Some(&v.client) == greediest.as_ref())
                .min_by_key(|(_, v)| v.started_ms)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(id, s);
    }

    fn get(&self, id: &str, now: i64) -> Option<Session> {
        self.0
            .lock()
            .get(id)
            .filter(|s| now - s.started_ms < UPLOAD_SESSION_MS)
            .cloned()
    }

    fn remove(&self, id: &str) {
        self.0.lock().remove(id);
    }
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct UploadQuery {
    upload_id: Option<String>,
    #[serde(rename = "uploadType")]
    upload_type: Option<String>,
}

/// `POST /upload/{version}/files`.
pub(crate) async fn upload(
    State(st): State<Arc<ProxyState>>,
    Path(version): Path<String>,
    Query(q): Query<UploadQuery>,
    Extension(client): Extension<Client>,
    session_only: Option<Extension<SessionOnly>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        let transport = transport(&st, &version)?.clone();
        let _permit = slot(&st).await?;
        match q.upload_id.as_deref() {
            Some(id) => {
                // Without a token, the session id alone admits the command.
                let who = session_only.is_none().then_some(&client);
                continue_upload(&st, &transport, &version, id, who, &headers, body).await
            }
            None => {
                start_upload(
                    &st,
                    &transport,
                    &version,
                    q.upload_type.as_deref(),
                    &client,
                    &headers,
                    body,
                )
                .await
            }
        }
    };
    run.await.unwrap_or_else(Answer::gemini)
}

/// The `x-goog-upload-*` headers and the content type a client sent, for upstream; nothing
/// else (no token, no cookie, no host) goes on.
fn upload_headers(from: &HeaderMap) -> Result<HeaderMap, Refusal> {
    let mut out = HeaderMap::new();
    for (name, value) in from {
        let n = name.as_str();
        let keep = n.starts_with("x-goog-upload-")
            || n == header::CONTENT_TYPE.as_str()
            || n == header::CONTENT_LENGTH.as_str();
        if !keep {
            continue;
        }
        if value.as_bytes().iter().any(|b| !(0x20..0x7f).contains(b)) {
            return Err(
                invalid(&format!("header {n} holds characters no upload header has")).into(),
            );
        }
        out.append(name.clone(), value.clone());
    }
    Ok(out)
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn too_large(st: &ProxyState) -> Refusal {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "INVALID_ARGUMENT",
        format!(
            "keyturn proxy: the upload is larger than {} bytes ([serve] max_upload_bytes)",
            st.max_upload_bytes
        ),
    )
    .into()
}

fn longer_than_announced(announced: u64) -> Refusal {
    invalid(&format!(
        "keyturn proxy: the upload is longer than the {announced} bytes its start announced (X-Goog-Upload-Header-Content-Length)"
    ))
    .into()
}

/// A client body as an upstream body: streamed chunk by chunk, cut off past the cap or after
/// `body_timeout` without a byte. `over` says afterwards whether the cap cut it; `count`, if
/// any, grows by each chunk sent on.
fn streamed(
    st: &ProxyState,
    body: Body,
    cap: u64,
    over: Arc<std::sync::atomic::AtomicBool>,
    count: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> reqwest::Body {
    let idle = st.body_timeout;
    let data = body.into_data_stream();
    let chunks = futures::stream::unfold((data, 0u64), move |(mut data, seen)| {
        let over = over.clone();
        let count = count.clone();
        async move {
            let next = match tokio::time::timeout(idle, data.next()).await {
                Ok(n) => n?,
                Err(_) => {
                    return Some((
                        Err(std::io::Error::other(
                            "the upload stalled ([serve] body_timeout)",
                        )),
                        (data, seen),
                    ));
                }
            };
            match next {
                Ok(chunk) => {
                    let seen = seen + chunk.len() as u64;
                    if seen > cap {
                        over.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Some((
                            Err(std::io::Error::other("the upload is too large")),
                            (data, seen),
                        ));
                    }
                    if let Some(c) = &count {
                        c.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some((Ok(chunk), (data, seen)))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), (data, seen))),
            }
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

async fn start_upload(
    st: &ProxyState,
    transport: &keyturn_gemini::Transport,
    version: &str,
    upload_type: Option<&str>,
    client: &Client,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let protocol = headers
        .get("x-goog-upload-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let resumable = protocol.as_deref() == Some("resumable");
    let multipart = protocol.as_deref() == Some("multipart") || upload_type == Some("multipart");
    if !resumable && !multipart {
        return Err(invalid(
            "an upload is resumable (X-Goog-Upload-Protocol: resumable) or multipart",
        )
        .into());
    }
    for h in ["x-goog-upload-header-content-length", "content-length"] {
        if header_u64(headers, h).is_some_and(|n| n > st.max_upload_bytes) {
            return Err(too_large(st));
        }
    }
    let fwd = upload_headers(headers)?;
    // All of a client's uploads go to one project, so its files can be named together.
    let keys = affinity::upload_keys(st, client.0.as_deref());
    let url = transport.upload_url();
    if resumable {
        // The start carries only the file's metadata: small, read whole under the body cap.
        let meta = crate::request::read_body(st, body).await?;
        let sent = affinity::send_with(
            st,
            transport,
            &keys,
            reqwest::Method::POST,
            &url,
            &fwd,
            Some(meta),
        )
        .await?;
        if !sent.status.is_success() {
            return Ok(affinity::relay(st, sent.status, &sent.body));
        }
        let answered = sent
            .headers
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                bad_gateway("the upload start was answered without X-Goog-Upload-URL")
            })?;
        let upstream = transport
            .checked_upload_session(answered)
            .map_err(|e| bad_gateway(&e.to_string()))?;
        let id = new_upload_id();
        let ours = proxy_upload_url(headers, version, &id)?;
        st.uploads.insert(
            id,
            Session {
                upstream,
                key: affinity::fingerprint_of(st, sent.key).ok_or_else(affinity::unavailable)?,
                client: client.0.clone(),
                version: version.to_owned(),
                started_ms: st.clock.now_ms(),
                streamed: Arc::default(),
                announced: header_u64(headers, "x-goog-upload-header-content-length"),
            },
            st.clock.now_ms(),
        );
        let mut r = answer_with_upload_headers(st, &sent);
        r.headers_mut().insert(
            "x-goog-upload-url",
            HeaderValue::from_str(&ours)
                .map_err(|_| bad_gateway("no upload URL could be written"))?,
        );
        return Ok(r);
    }
    // Multipart: one streamed request, on the first key that takes it (a stream cannot be
    // sent twice) and is not switched off.
    let off = affinity::switched_off(st).await;
    let ring = st.live().ledger.keys();
    let Some(&key) = keys
        .iter()
        .find(|&&k| ring.get(k).is_some_and(|e| !off.contains(&e.fingerprint())))
    else {
        return Err(affinity::unavailable());
    };
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = send_streamed(
        st,
        transport,
        key,
        &url,
        fwd,
        streamed(st, body, st.max_upload_bytes, over.clone(), None),
    )
    .await;
    finish(st, key, client.0.as_deref(), sent, &over, None).await
}

async fn continue_upload(
    st: &ProxyState,
    transport: &keyturn_gemini::Transport,
    version: &str,
    id: &str,
    client: Option<&Client>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    let valid = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let session = valid
        .then(|| st.uploads.get(id, st.clock.now_ms()))
        .flatten()
        // Another client's session, or one for the other API version, is as unknown as a forged id.
        .filter(|s| client.is_none_or(|c| s.client == c.0) && s.version == version)
        // Admitted by its id alone, a session is only as good as its client: once a reload
        // removed that client's token, its sessions admit nothing more.
        .filter(|s| client.is_some() || still_a_client(st, s.client.as_deref()))
        .ok_or_else(|| {
            Refusal::from(Problem::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "keyturn proxy: no such upload session",
            ))
        })?;
    // The cap is on the file, not on each chunk: a chunk at `X-Goog-Upload-Offset` may bring
    // the file up to the cap and no further (the upstream holds the client to the offset it
    // states, so it cannot understate it); a chunk that states none starts where the bytes
    // streamed so far end.
    let offset = header_u64(headers, "x-goog-upload-offset")
        .unwrap_or_else(|| session.streamed.load(std::sync::atomic::Ordering::Relaxed));
    if offset > st.max_upload_bytes {
        return Err(too_large(st));
    }
    // A file longer than its start announced is refused by Gemini; the proxy refuses it
    // itself, at once, rather than leave the upstream to cut the stream off under it (which
    // the client would see as the proxy's send failing: a 502).
    let cap_room = st.max_upload_bytes - offset;
    let (room, past) = match session.announced {
        Some(a) if a.saturating_sub(offset) < cap_room => {
            (a.saturating_sub(offset), longer_than_announced(a))
        }
        _ => (cap_room, too_large(st)),
    };
    match header_u64(headers, "content-length") {
        // Past the cap: the proxy's own limit comes first.
        Some(n) if n > cap_room => return Err(too_large(st)),
        Some(n) if n > room => return Err(past),
        _ => {}
    }
    // The key that started the session, where the pool has it now; a key a reload removed
    // takes nothing more, and no other key can go on with its session.
    let off = affinity::switched_off(st).await;
    let key = affinity::active_key(st, session.key)
        .filter(|_| !off.contains(&session.key))
        .ok_or_else(|| {
        Refusal::from(Problem::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "keyturn proxy: no such upload session (the key that started it left the pool or was switched off; start the upload again)",
        ))
    })?;
    let fwd = upload_headers(headers)?;
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = send_streamed(
        st,
        transport,
        key,
        &session.upstream,
        fwd,
        streamed(st, body, room, over.clone(), Some(session.streamed.clone())),
    )
    .await;
    if over.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(past);
    }
    finish(st, key, session.client.as_deref(), sent, &over, Some(id)).await
}

/// Whether `label` names a client token the proxy holds now.
fn still_a_client(st: &ProxyState, label: Option<&str>) -> bool {
    label.is_some_and(|l| st.live().tokens.iter().any(|(t, _)| t == l))
}

async fn send_streamed(
    st: &ProxyState,
    transport: &keyturn_gemini::Transport,
    key: KeyId,
    url: &str,
    headers: HeaderMap,
    body: reqwest::Body,
) -> Result<Sent, Refusal> {
    let ring = st.live().ledger.keys();
    let entry = ring.get(key).ok_or_else(affinity::unavailable)?;
    let resp = transport
        .send_as(
            reqwest::Method::POST,
            keyturn_gemini::KeyHeader::GoogApiKey,
            &entry.key,
            url,
            headers,
            Some(body),
        )
        .await
        .map_err(|e| affinity::send_failed(&e))?;
    let (status, headers, body) = affinity::read_bounded(resp).await?;
    Ok(Sent {
        key,
        status,
        headers,
        body,
    })
}

/// After an upload command: the answer relayed, and when it holds the file, its owner recorded
/// (the key's project, and the client that started the upload) and the session closed.
async fn finish(
    st: &ProxyState,
    key: KeyId,
    client: Option<&str>,
    sent: Result<Sent, Refusal>,
    over: &std::sync::atomic::AtomicBool,
    session: Option<&str>,
) -> Result<Response, Refusal> {
    if over.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(too_large(st));
    }
    let sent = sent?;
    if sent.status.is_success()
        && let Ok(v) = serde_json::from_slice::<Value>(&sent.body)
        && let Some(file) = v.get("file")
    {
        learn(st, key, client, file).await?;
        if let Some(id) = session {
            st.uploads.remove(id);
        }
    }
    Ok(answer_with_upload_headers(st, &sent))
}

/// The answer to an upload command: status, body (less any pool key), content type and the
/// `x-goog-upload-*` headers that describe the session's state — never the upstream URLs.
fn answer_with_upload_headers(st: &ProxyState, sent: &Sent) -> Response {
    let mut r = affinity::relay(st, sent.status, &sent.body);
    for (name, value) in &sent.headers {
        let n = name.as_str();
        if n.starts_with("x-goog-upload-")
            && n != "x-goog-upload-url"
            && n != "x-goog-upload-control-url"
        {
            r.headers_mut()
                .append(HeaderName::clone(name), value.clone());
        }
    }
    r
}

fn new_upload_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The proxy's own session URL, on the host the client called (`Host`; `X-Forwarded-Proto:
/// https` behind a TLS terminator).
fn proxy_upload_url(headers: &HeaderMap, version: &str, id: &str) -> Result<String, Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .ok_or_else(|| Refusal::from(invalid("an upload needs a Host header naming this proxy")))?;
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let scheme = if https { "https" } else { "http" };
    Ok(format!(
        "{scheme}://{host}/upload/{version}/files?upload_id={id}&upload_protocol=resumable"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_upload_headers_go_upstream() {
        let mut h = HeaderMap::new();
        h.insert("x-goog-upload-command", HeaderValue::from_static("start"));
        h.insert("x-goog-api-key", HeaderValue::from_static("kt_client"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer kt_client"),
        );
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let out = upload_headers(&h).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.get("x-goog-api-key").is_none() && out.get(header::AUTHORIZATION).is_none());
    }
}
