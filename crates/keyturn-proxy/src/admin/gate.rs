//! Who may use the console and the admin API: admin tokens (a header, or the session of a
//! sign-in with one in the cookie),
//! this machine only without one; the sign-in page and the embedded assets.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::Console;
use super::session::SESSION_SECS;
use super::{
    CONSOLE_CSS, CONSOLE_HTML, CONSOLE_JS, COOKIE, LOGIN_HTML, UPLOT_CSS, UPLOT_JS, html, no_store,
    problem,
};
use crate::auth::{digest, from_this_machine};

/// Why a request may not use the admin side.
pub(super) struct Refused {
    status: StatusCode,
    message: String,
}

pub(super) fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

/// The credential a request carries, and whether it came as the cookie.
pub(super) fn credential(headers: &HeaderMap) -> Option<(String, bool)> {
    if let Some((scheme, token)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some((token.trim().to_owned(), false));
    }
    if let Some(v) = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) {
        return Some((v.trim().to_owned(), false));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(|t| (t.trim().to_owned(), true))
}

pub(super) fn matches(tokens: &[(String, [u8; 32])], token: &str) -> bool {
    let d = digest(token);
    let mut found = false;
    for (_, want) in tokens {
        found |= bool::from(d.ct_eq(want));
    }
    found
}

/// Whether this request may use the console and admin API.
pub(super) fn check(st: &Console, method: &Method, headers: &HeaderMap) -> Result<(), Refused> {
    let (tokens, admin_tokens) = st.host.tokens();
    let admin = &admin_tokens;
    if admin.is_empty() && !st.loopback {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "keyturn proxy: the console and admin API are off: this proxy listens beyond loopback and has no admin token; add [[serve.admin_tokens]] (keyturn serve token new --admin --label NAME)",
        ));
    }
    let cred = credential(headers);
    if let Some((token, _)) = &cred
        && admin.is_empty()
        && matches(&tokens, token)
    {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "keyturn proxy: a client token cannot use the console or the admin API; they need an admin token",
        ));
    }
    if admin.is_empty() {
        // Loopback with no admin token: this machine only, as for clients without tokens.
        return if from_this_machine(headers) {
            Ok(())
        } else {
            Err(refused(
                StatusCode::FORBIDDEN,
                "keyturn proxy: without an admin token only this machine can use the console (add [[serve.admin_tokens]], or open it as 127.0.0.1 or localhost)",
            ))
        };
    }
    let Some((token, cookie)) = cred else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "keyturn proxy: the console and admin API need an admin token (Authorization: Bearer, or sign in at /console)",
        ));
    };
    if cookie {
        if !st.sessions.valid(&token, admin, st.clock.now_ms()) {
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "keyturn proxy: the console's sign-in has ended (it lasts 12 hours, and ends when keyturn restarts or its admin token is removed); sign in again at /console",
            ));
        }
    } else if !matches(admin, &token) {
        let what = if matches(&tokens, &token) {
            "a client token cannot use the console or the admin API; they need an admin token"
        } else {
            "admin token not recognised"
        };
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            format!("keyturn proxy: {what}"),
        ));
    }
    // The cookie rides along with any request the browser makes: actions it authorises must
    // come from the console's own page (SameSite=Strict already says so; the Origin says it
    // again for browsers that ignore SameSite).
    if cookie && *method != Method::GET && !same_origin(headers) {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "keyturn proxy: an admin action signed in by cookie must come from the console's own page",
        ));
    }
    Ok(())
}

/// Whether the request's `Origin` (if any) names the host it was sent to.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, rest)| Some(rest) == host)
}

/// Whether the console's page came over HTTPS: its `Origin` (browsers send one with every
/// POST) or a TLS-terminating reverse proxy's `X-Forwarded-Proto` says so. The cookie is then
/// `Secure`: a browser never sends it over plain HTTP, where anyone on the path would read an
/// admin credential. (A client that claims HTTPS falsely only makes its own cookie stricter.)
fn over_https(headers: &HeaderMap) -> bool {
    let origin_https = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o.len() >= 8 && o[..8].eq_ignore_ascii_case("https://"));
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|p| p.to_str().ok())
        .and_then(|p| p.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    origin_https || forwarded_https
}

/// The cookie's attributes: `Secure` over HTTPS (see [`over_https`]).
fn cookie_attributes(headers: &HeaderMap) -> &'static str {
    if over_https(headers) {
        "HttpOnly; SameSite=Strict; Path=/; Secure"
    } else {
        "HttpOnly; SameSite=Strict; Path=/"
    }
}

/// The sign-in page, with a note (escaped: it is ours, but HTML is HTML).
pub(super) fn login_page(status: StatusCode, note: &str) -> Response {
    let note = note
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    html(status, LOGIN_HTML.replace("{{note}}", &note))
}

pub(super) async fn gate(State(st): State<Arc<Console>>, req: Request, next: Next) -> Response {
    match check(&st, req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(r) => problem(r.status, &r.message),
    }
}

pub(super) async fn console(State(st): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match check(&st, &Method::GET, &headers) {
        Ok(()) => html(StatusCode::OK, CONSOLE_HTML.to_owned()),
        Err(r) if r.status == StatusCode::UNAUTHORIZED => login_page(r.status, &r.message),
        Err(r) => no_store((r.status, r.message).into_response()),
    }
}

/// `token=…` from a form body.
pub(super) fn form_token(body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    let raw = body.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(|s| s.trim().to_owned())
}

pub(super) async fn login(
    State(st): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, admin_tokens) = st.host.tokens();
    if admin_tokens.is_empty() {
        // Nothing to sign in with: the console is either off or open to this machine.
        return console(State(st), headers).await;
    }
    if !same_origin(&headers) {
        return login_page(
            StatusCode::FORBIDDEN,
            "sign in from this console's own page",
        );
    }
    let Some(token) = form_token(&body) else {
        return login_page(StatusCode::UNAUTHORIZED, "enter an admin token");
    };
    if !matches(&admin_tokens, &token) {
        tracing::warn!("console sign-in refused: not an admin token");
        return login_page(StatusCode::UNAUTHORIZED, "that is not an admin token");
    }
    let Some(session) = st.sessions.issue(&digest(&token), st.clock.now_ms()) else {
        return login_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not start a session; try again",
        );
    };
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/console"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={session}; {}; Max-Age={SESSION_SECS}",
        cookie_attributes(&headers)
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    no_store(r)
}

pub(super) async fn logout(headers: HeaderMap) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/console"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}=; {}; Max-Age=0",
        cookie_attributes(&headers)
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    no_store(r)
}

pub(super) async fn asset(Path(name): Path<String>) -> Response {
    let (kind, body) = match name.as_str() {
        "console.js" => ("text/javascript; charset=utf-8", CONSOLE_JS),
        "console.css" => ("text/css; charset=utf-8", CONSOLE_CSS),
        "uPlot.iife.min.js" => ("text/javascript; charset=utf-8", UPLOT_JS),
        "uPlot.min.css" => ("text/css; charset=utf-8", UPLOT_CSS),
        _ => return problem(StatusCode::NOT_FOUND, "no such asset"),
    };
    no_store(([(header::CONTENT_TYPE, kind)], body).into_response())
}
