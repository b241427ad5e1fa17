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
//!   looked for with one key per project (free calls), and its owner learned when found.
//! - `GET files`: the files of every project that owns one the proxy knows of, one project's
//!   page after another, behind a page token of the proxy's own (`{project index}.{hex of
//!   upstream token}`; a hostile token is refused).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use keyturn_core::resources::{BATCH_RETENTION_MS, FILE_LIFETIME_MS};
use keyturn_core::{Fingerprint, KeyId, ResourceKind, ResourceName};
use serde_json::{Value, json};

use crate::affinity::{self, Sent};
use crate::answer::{Answer, Problem, invalid, not_found};
use crate::auth::{Client, SessionOnly};
use crate::{ProxyState, Refusal, slot};

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

#[derive(Debug, serde::Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "pageSize")]
    page_size: Option<u32>,
    #[serde(rename = "pageToken")]
    page_token: Option<String>,
}

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
        let meta = crate::read_body(st, body).await?;
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
    finish(st, key, sent, &over, None).await
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
    let room = st.max_upload_bytes.saturating_sub(offset);
    if offset > st.max_upload_bytes
        || header_u64(headers, "content-length").is_some_and(|n| n > room)
    {
        return Err(too_large(st));
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
    finish(st, key, sent, &over, Some(id)).await
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
/// and the session closed.
async fn finish(
    st: &ProxyState,
    key: KeyId,
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
        learn(st, key, file).await?;
        if let Some(id) = session {
            st.uploads.remove(id);
        }
    }
    Ok(answer_with_upload_headers(st, &sent))
}

/// Records the owner of a resource the upstream described: a file (`name`, `expirationTime`,
/// 48 h when absent), a cached content (`expireTime`, an hour when absent), a batch (its
/// operation's `name`; kept for [`BATCH_RETENTION_MS`] unless deleted).
pub(crate) async fn learn(st: &ProxyState, key: KeyId, v: &Value) -> Result<(), Refusal> {
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
        .record(&name, &project, expires)
        .await
        .map_err(|_| affinity::unavailable())
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

fn bad_gateway(detail: &str) -> Refusal {
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "UNAVAILABLE",
        format!("keyturn proxy: {detail}"),
    )
    .into()
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

/// `GET /{version}/files/{id}`.
pub(crate) async fn get_file(
    State(st): State<Arc<ProxyState>>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    about_file(&st, &version, &id, reqwest::Method::GET)
        .await
        .unwrap_or_else(Answer::gemini)
}

/// `DELETE /{version}/files/{id}`.
pub(crate) async fn delete_file(
    State(st): State<Arc<ProxyState>>,
    Path((version, id)): Path<(String, String)>,
) -> Response {
    about_file(&st, &version, &id, reqwest::Method::DELETE)
        .await
        .unwrap_or_else(Answer::gemini)
}

async fn about_file(
    st: &ProxyState,
    version: &str,
    id: &str,
    method: reqwest::Method,
) -> Result<Response, Refusal> {
    let name = ResourceName::new(ResourceKind::Files, id)
        .map_err(|e| Refusal::from(invalid(&e.to_string())))?;
    let what = About {
        method,
        action: None,
        query: None,
        body: None,
    };
    about(st, version, &name, what).await
}

/// What is done to one resource: the method, an action (`cancel`), a query (`updateMask=ttl`,
/// already validated), a JSON body.
pub(crate) struct About {
    pub(crate) method: reqwest::Method,
    pub(crate) action: Option<&'static str>,
    pub(crate) query: Option<String>,
    pub(crate) body: Option<Bytes>,
}

/// A call about one resource, with its owner's keys (or, never seen, one key per project until
/// one has it: these calls cost no quota); what the answer says about the resource is learned
/// (its owner and expiry), and a deleted one forgotten.
pub(crate) async fn about(
    st: &ProxyState,
    version: &str,
    name: &ResourceName,
    what: About,
) -> Result<Response, Refusal> {
    let About {
        method,
        action,
        query,
        body,
    } = what;
    let transport = transport(st, version)?.clone();
    let path = match action {
        Some(a) => format!("{name}:{a}"),
        None => name.to_string(),
    };
    let mut url = transport
        .resource_url(&path)
        .map_err(|e| Refusal::from(invalid(&e.to_string())))?;
    if let Some(q) = query {
        url = format!("{url}?{q}");
    }
    let mut headers = HeaderMap::new();
    if body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let _permit = slot(st).await?;
    let owner = st
        .resources
        .owner(name)
        .await
        .map_err(|_| affinity::unavailable())?;
    let known = owner
        .as_deref()
        .filter(|p| affinity::key_of(st, p).is_some());
    let keys: Vec<Vec<KeyId>> = match known {
        Some(p) => vec![affinity::keys_for(st, Some(p))],
        // Each project's keys, tried in turn only while refused or unreachable (or switched off).
        None => affinity::one_key_per_project(st)
            .into_iter()
            .map(|(_, p)| affinity::keys_for(st, Some(&p)))
            .collect(),
    };
    let mut last = None;
    for keys in keys {
        let sent = affinity::send_with(
            st,
            &transport,
            &keys,
            method.clone(),
            &url,
            &headers,
            body.clone(),
        )
        .await?;
        let done = sent.status.is_success();
        last = Some(sent);
        if done {
            break;
        }
    }
    let sent = last.ok_or_else(affinity::unavailable)?;
    if sent.status.is_success() {
        if method == reqwest::Method::DELETE {
            st.resources
                .forget(name)
                .await
                .map_err(|_| affinity::unavailable())?;
        } else if let Ok(v) = serde_json::from_slice::<Value>(&sent.body)
            && v.get("name").and_then(Value::as_str) == Some(name.to_string().as_str())
        {
            learn(st, sent.key, &v).await?;
        }
    }
    Ok(affinity::relay(st, sent.status, &sent.body))
}

/// `GET /{version}/files`.
pub(crate) async fn list_files(
    State(st): State<Arc<ProxyState>>,
    Path(version): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    list(&st, &version, ResourceKind::Files, q)
        .await
        .unwrap_or_else(Answer::gemini)
}

/// Longest upstream page token the proxy wraps.
const MAX_UPSTREAM_TOKEN: usize = 2048;

fn page_token(project: usize, upstream: &str) -> String {
    let hex: String = upstream.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{project}.{hex}")
}

fn parse_page_token(token: &str) -> Option<(usize, String)> {
    let (p, hex) = token.split_once('.')?;
    if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if hex.len() % 2 != 0 || hex.len() > MAX_UPSTREAM_TOKEN * 2 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((p.parse().ok()?, String::from_utf8(bytes).ok()?))
}

/// A merged list: one project's page per client page, the projects in order.
pub(crate) async fn list(
    st: &ProxyState,
    version: &str,
    kind: ResourceKind,
    q: ListQuery,
) -> Result<Response, Refusal> {
    let transport = transport(st, version)?.clone();
    let bad_token = || Refusal::from(invalid("pageToken is not one this proxy gave out"));
    let (index, upstream_token) = match q.page_token.as_deref().filter(|t| !t.is_empty()) {
        Some(t) => parse_page_token(t).ok_or_else(bad_token)?,
        None => (0, String::new()),
    };
    let projects: Vec<String> = st
        .resources
        .projects(kind)
        .await
        .map_err(|_| affinity::unavailable())?
        .into_iter()
        .filter(|p| affinity::key_of(st, p).is_some())
        .collect();
    let Some(project) = projects.get(index) else {
        if index == 0 {
            return Ok(affinity::relay(
                st,
                StatusCode::OK,
                &Bytes::from_static(b"{}"),
            ));
        }
        return Err(bad_token());
    };
    let token = (!upstream_token.is_empty()).then_some(upstream_token.as_str());
    let url = transport
        .list_url(
            kind.collection(),
            q.page_size.map(|n| n.clamp(1, 1000)),
            token,
        )
        .map_err(|e| Refusal::from(invalid(&e.to_string())))?;
    let _permit = slot(st).await?;
    let keys = affinity::keys_for(st, Some(project));
    let sent = affinity::send_with(
        st,
        &transport,
        &keys,
        reqwest::Method::GET,
        &url,
        &HeaderMap::new(),
        None,
    )
    .await?;
    if !sent.status.is_success() {
        return Ok(affinity::relay(st, sent.status, &sent.body));
    }
    let mut page: Value = serde_json::from_slice(&sent.body)
        .map_err(|_| bad_gateway("a list answer was not JSON"))?;
    let next = match page
        .get("nextPageToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        Some(t) if t.len() <= MAX_UPSTREAM_TOKEN => Some(page_token(index, t)),
        Some(_) => return Err(bad_gateway("an upstream page token was too long")),
        None if index + 1 < projects.len() => Some(page_token(index + 1, "")),
        None => None,
    };
    if let Some(o) = page.as_object_mut() {
        o.remove("nextPageToken");
        if let Some(t) = next {
            o.insert("nextPageToken".into(), json!(t));
        }
    }
    Ok(affinity::relay(
        st,
        StatusCode::OK,
        &Bytes::from(page.to_string()),
    ))
}

/// `models/{model}:countTokens` for a body naming a resource of `project`: sent with that
/// project's keys (no quota is spent counting).
pub(crate) async fn count_tokens_of(
    st: &ProxyState,
    version: &str,
    model: &str,
    project: &str,
    body: &Value,
) -> Result<Response, Response> {
    let fail = |r: Refusal| r.gemini();
    let transport = transport(st, version).map_err(fail)?;
    let url = transport
        .model_url(model, "countTokens")
        .map_err(|e| fail(invalid(&e.to_string()).into()))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let keys = affinity::keys_for(st, Some(project));
    let sent = affinity::send_with(
        st,
        transport,
        &keys,
        reqwest::Method::POST,
        &url,
        &headers,
        Some(Bytes::from(body.to_string())),
    )
    .await
    .map_err(fail)?;
    Ok(affinity::relay(st, sent.status, &sent.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_hostile_ones_are_refused() {
        let t = page_token(2, "abc&x=1/..");
        assert_eq!(parse_page_token(&t), Some((2, "abc&x=1/..".to_owned())));
        assert_eq!(parse_page_token("0."), Some((0, String::new())));
        for bad in [
            "",
            ".",
            "x.00",
            "1.0",
            "1.zz",
            "-1.00",
            "99999999.00",
            "1.ff",
        ] {
            assert_eq!(parse_page_token(bad), None, "{bad}");
        }
    }

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
