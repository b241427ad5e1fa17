//! Who may use the proxy: client tokens, kept only as SHA-256 digests and compared in constant
//! time (`x-goog-api-key`, `Authorization: Bearer` in any case, or `?key=`); without tokens, only
//! this machine, as far as a browser can tell (`Host` and `Origin`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::answer::{Answer, Problem};
use crate::{ProxyError, ProxyState};

/// SHA-256 of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Parses a configured hex digest.
pub fn parse_digest(label: &str, hex: &str) -> Result<[u8; 32], ProxyError> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return Err(ProxyError::BadDigest(label.to_owned()));
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16)
            .map_err(|_| ProxyError::BadDigest(label.to_owned()))?;
    }
    Ok(out)
}

/// A fresh client token and its digest: `kt_` + 64 hex digits of randomness.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "kt_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let d = digest(&token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    (token, d)
}

fn client_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    // The scheme is case-insensitive (RFC 9110 §11.1).
    if let Some((scheme, token)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(token.trim().to_owned());
    }
    // `?key=`, as Gemini itself accepts it: some clients know no other way. It is read here and
    // never sent upstream (upstream URLs are built from validated segments only).
    query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("key="))
            .map(str::to_owned)
    })
}

/// Whether `host` (a URL's or a `Host` header's, with or without a port) names this machine.
fn loopback_host(host_port: &str) -> bool {
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split([':', '/']).next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a request comes from this machine as far as a browser can tell: its `Host` names
/// this machine (a page whose name was rebound to 127.0.0.1 still sends its own name), and its
/// `Origin` (which browsers send with every POST) is absent — clients that are not browsers send
/// none — or names a page on this machine.
pub(crate) fn from_this_machine(headers: &HeaderMap) -> bool {
    let host_ok = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_none_or(loopback_host);
    let origin_ok = match headers.get(header::ORIGIN) {
        None => true,
        // "null" (a sandboxed page, a file) and anything unreadable are refused.
        Some(o) => o
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, rest)| loopback_host(rest)),
    };
    host_ok && origin_ok
}

/// The label of the client token a request came with (`None` without tokens configured): an
/// upload session belongs to the client that started it, and a file, cached content or batch
/// to the client that created it ([`crate::access`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Client(pub(crate) Option<String>);

/// Whether a request may use the proxy, and who it is; the refusal, in neither dialect yet.
fn check(st: &ProxyState, req: &Request) -> Result<Client, Problem> {
    let live = st.live();
    if live.tokens.is_empty() {
        // Without tokens anything that reaches loopback is served, and a web page can: a
        // cross-site POST spends the pool's quota blind, and a page whose name was rebound to
        // 127.0.0.1 reads the answers too. Browsers name the page (`Origin`) and the host they
        // think they talk to (`Host`); anything not on this machine is refused.
        if !from_this_machine(req.headers()) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "keyturn proxy: without client tokens only this machine can use the proxy: the request named another host or came from a web page elsewhere (add [[serve.tokens]], or call it as 127.0.0.1 or localhost)",
            ));
        }
        return Ok(Client(None));
    }
    let Some(token) = client_token(req.headers(), req.uri().query()) else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "keyturn proxy: missing client token (x-goog-api-key, Authorization: Bearer, or ?key=)",
        ));
    };
    let d = digest(&token);
    // Every digest is compared, in constant time, so timing says nothing about which matched.
    let mut found: Option<&str> = None;
    for (label, want) in &live.tokens {
        if bool::from(d.ct_eq(want)) {
            found = Some(label);
        }
    }
    match found {
        Some(label) => {
            tracing::debug!(client = label, path = %req.uri().path().escape_debug(), "proxy request");
            Ok(Client(Some(label.to_owned())))
        }
        None => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "keyturn proxy: client token not recognised",
        )),
    }
}

/// The native routes' gate: refusals in Gemini's form.
pub(crate) async fn authenticate(
    State(st): State<Arc<ProxyState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match check(&st, &req) {
        Ok(client) => {
            req.extensions_mut().insert(client);
            next.run(req).await
        }
        Err(p) => Answer::from(p).gemini(),
    }
}

/// Marks an upload command that came with no client token: its 256-bit session id is its
/// credential, as Google's `upload_id` is (google-genai sends an upload's chunks with no key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionOnly;

/// The upload route's gate: a start needs a client token like any request; a command on a
/// session (`?upload_id=`) may come without one, and then only the session id admits it (a
/// token, if sent, must still be valid, and be the session's client's).
pub(crate) async fn authenticate_upload(
    State(st): State<Arc<ProxyState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let on_session = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("upload_id=")));
    let presented = client_token(req.headers(), req.uri().query()).is_some();
    if on_session && !presented && !st.live().tokens.is_empty() {
        req.extensions_mut().insert(Client(None));
        req.extensions_mut().insert(SessionOnly);
        return next.run(req).await;
    }
    match check(&st, &req) {
        Ok(client) => {
            req.extensions_mut().insert(client);
            next.run(req).await
        }
        Err(p) => Answer::from(p).gemini(),
    }
}

/// The OpenAI-compatible routes' gate: the same rules, refusals in OpenAI's form.
pub(crate) async fn authenticate_openai(
    State(st): State<Arc<ProxyState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match check(&st, &req) {
        Ok(client) => {
            req.extensions_mut().insert(client);
            next.run(req).await
        }
        Err(p) => Answer::from(p).openai(),
    }
}
