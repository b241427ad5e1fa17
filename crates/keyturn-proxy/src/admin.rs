//! The operator's side of the proxy: a JSON admin API under `/admin/` and the web console at
//! `/console` that uses it (see docs/PROXY.md).
//!
//! - Access needs an **admin token**, never a client token: `Authorization: Bearer`, or the
//!   `keyturn_admin` cookie the console's sign-in sets (`HttpOnly`, `SameSite=Strict`). Admin
//!   tokens are kept only as SHA-256 digests and compared in constant time, like client tokens.
//!   On loopback with no admin token configured, only this machine may use them (the rule the
//!   proxy applies to clients without tokens); listening beyond loopback with no admin token
//!   turns both off.
//! - Status, the 30-day usage history, recent events, and actions: reset a key (which
//!   re-enables a disabled one), reset a scope, re-check a key now.
//! - Events come from watching the ledger's status (a key disabled or back, a breaker open, a
//!   scope cooling, exhausted or switched off), from the actions taken here, and from whoever
//!   holds [`crate::ProxyState::events`] (`keyturn serve` adds the pool monitor's warnings); the last
//!   [`EVENTS_KEPT`] are kept in memory.
//! - Keys are shown by label and fingerprint only.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyturn_core::snapshot::ScopeStatus;
use keyturn_core::{BreakerState, PoolStatus, ResetTarget, ScopeState};
use keyturn_gemini::{KeyCheck, Transport, check_key};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::ProxyState;
use crate::auth::{digest, from_this_machine};

/// How many recent events the proxy keeps.
pub const EVENTS_KEPT: usize = 500;

/// The cookie the console's sign-in sets.
const COOKIE: &str = "keyturn_admin";

const CONSOLE_HTML: &str = include_str!("../assets/console.html");
const LOGIN_HTML: &str = include_str!("../assets/login.html");
const CONSOLE_JS: &str = include_str!("../assets/console.js");
const CONSOLE_CSS: &str = include_str!("../assets/console.css");
const UPLOT_JS: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");

/// The console page may load only what this server embeds, and run no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One thing the proxy saw happen to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Increasing number (`/admin/events?after=` takes the last one seen).
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// `key_disabled`, `key_reenabled`, `breaker_open`, `breaker_closed`, `throttled`,
    /// `exhausted`, `model_off`, `scope_ready`, `admin_reset`, `admin_recheck`, `warning`.
    pub kind: &'static str,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// The key's label, for key events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Project, for scope events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Model, for scope events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// In words.
    pub message: String,
}

/// The recent events, oldest first, at most [`EVENTS_KEPT`].
#[derive(Debug, Default)]
pub struct Events(Mutex<(u64, VecDeque<Event>)>);

/// An event before it is numbered.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// See [`Event::kind`].
    pub kind: &'static str,
    /// See [`Event::severity`].
    pub severity: &'static str,
    /// See [`Event::key`].
    pub key: Option<String>,
    /// See [`Event::project`].
    pub project: Option<String>,
    /// See [`Event::model`].
    pub model: Option<String>,
    /// See [`Event::message`].
    pub message: String,
}

impl Events {
    /// Records an event, forgetting the oldest past [`EVENTS_KEPT`].
    pub fn push(&self, at_ms: i64, e: NewEvent) {
        let mut g = self.0.lock();
        g.0 += 1;
        let seq = g.0;
        if g.1.len() >= EVENTS_KEPT {
            g.1.pop_front();
        }
        g.1.push_back(Event {
            seq,
            at_ms,
            kind: e.kind,
            severity: e.severity,
            key: e.key,
            project: e.project,
            model: e.model,
            message: e.message,
        });
    }

    /// Events numbered above `after`, oldest first.
    pub fn since(&self, after: u64) -> Vec<Event> {
        self.0
            .lock()
            .1
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect()
    }
}

/// What the last look at the status saw, to tell what changed.
#[derive(Debug, Default)]
struct Observed {
    /// Per fingerprint: (state word, since when).
    keys: BTreeMap<String, (&'static str, i64)>,
    /// Per (project, model): state.
    scopes: BTreeMap<(String, String), ScopeState>,
}

/// The console's and admin API's share of the proxy's state.
#[derive(Debug)]
pub(crate) struct Admin {
    /// Whether the proxy listens on loopback: without an admin token the console and admin
    /// API answer only there.
    pub(crate) loopback: bool,
    /// The last reload of the configuration.
    pub(crate) last_reload: Mutex<Option<crate::LastReload>>,
    pub(crate) events: Arc<Events>,
    observed: Mutex<Observed>,
    /// For re-checking a key now; without it, `recheck` answers 501.
    pub(crate) recheck: Option<Transport>,
    /// Requests waiting for an upstream slot (`max_in_flight`).
    pub(crate) waiting_slot: AtomicUsize,
}

impl Admin {
    pub(crate) fn new(loopback: bool) -> Self {
        Self {
            loopback,
            last_reload: Mutex::new(None),
            events: Arc::new(Events::default()),
            observed: Mutex::new(Observed::default()),
            recheck: None,
            waiting_slot: AtomicUsize::new(0),
        }
    }
}

/// Counts a request as waiting while it lives.
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(crate) fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A key's state in one word, with when it ends if known.
fn key_state(
    st: &PoolStatus,
    k: &keyturn_core::snapshot::KeyStatus,
    now: i64,
) -> (&'static str, Option<i64>) {
    if k.disabled.is_some() {
        return ("disabled", None);
    }
    match k.breaker {
        BreakerState::Open { until_ms } => return ("breaker", Some(until_ms)),
        BreakerState::HalfOpen { .. } => return ("breaker", None),
        BreakerState::Closed => {}
    }
    let mine: Vec<&ScopeStatus> = st
        .scopes
        .iter()
        .filter(|s| s.project == k.project)
        .collect();
    if mine.is_empty() || mine.iter().any(|s| s.state == ScopeState::Ready) {
        return ("usable", None);
    }
    let soonest = |f: fn(&ScopeStatus) -> Option<i64>| mine.iter().filter_map(|s| f(s)).min();
    if mine.iter().any(|s| s.state == ScopeState::Cooling) {
        return (
            "cooling",
            soonest(|s| s.cooling_until_ms).filter(|t| *t > now),
        );
    }
    if mine.iter().any(|s| s.state == ScopeState::Exhausted) {
        return ("exhausted", soonest(|s| s.exhausted_until_ms));
    }
    ("off", soonest(|s| s.off_until_ms))
}

/// When a scope can serve again, if it cannot now.
fn returns_at(s: &ScopeStatus) -> Option<i64> {
    match s.state {
        ScopeState::Ready => None,
        ScopeState::Cooling => s.cooling_until_ms,
        ScopeState::Exhausted => s.exhausted_until_ms,
        ScopeState::Off => s.off_until_ms,
    }
}

fn instant(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

/// Compares this status with the last one seen, records what changed as events, and returns
/// since when each key (by fingerprint) has been in its state.
fn observe(st: &ProxyState, status: &PoolStatus) -> BTreeMap<String, i64> {
    let admin = &st.admin;
    let now = status.at_ms;
    let mut seen = admin.observed.lock();
    let mut since = BTreeMap::new();
    for k in &status.keys {
        let fp = k.fingerprint.to_string();
        let (word, until) = key_state(status, k, now);
        let start = k.disabled.map_or(now, |d| d.since_ms);
        let before = seen.keys.get(&fp).copied();
        let kept = match before {
            Some((w, s)) if w == word => s,
            _ => start,
        };
        since.insert(fp.clone(), kept);
        seen.keys.insert(fp.clone(), (word, kept));
        let was = before.map_or("usable", |(w, _)| w);
        if was == word {
            continue;
        }
        let key = Some(k.label.clone());
        let ev = match (was, word) {
            (_, "disabled") => Some(NewEvent {
                kind: "key_disabled",
                severity: "critical",
                key,
                project: Some(k.project.clone()),
                model: None,
                message: format!(
                    "key {} ({fp}) disabled: {}",
                    k.label,
                    k.disabled.map(|d| d.reason.to_string()).unwrap_or_default()
                ),
            }),
            ("disabled", _) => Some(NewEvent {
                kind: "key_reenabled",
                severity: "info",
                key,
                project: Some(k.project.clone()),
                model: None,
                message: format!("key {} ({fp}) is back in the pool", k.label),
            }),
            (_, "breaker") => Some(NewEvent {
                kind: "breaker_open",
                severity: "warning",
                key,
                project: Some(k.project.clone()),
                model: None,
                message: match until {
                    Some(u) => format!(
                        "key {} ({fp}): circuit breaker open after transient failures, until {}",
                        k.label,
                        instant(u)
                    ),
                    None => format!("key {} ({fp}): circuit breaker half-open", k.label),
                },
            }),
            ("breaker", _) => Some(NewEvent {
                kind: "breaker_closed",
                severity: "info",
                key,
                project: Some(k.project.clone()),
                model: None,
                message: format!("key {} ({fp}): circuit breaker closed", k.label),
            }),
            _ => None,
        };
        if let Some(e) = ev {
            admin.events.push(now, e);
        }
    }
    for s in &status.scopes {
        let id = (s.project.clone(), s.model.clone());
        let before = seen.scopes.insert(id, s.state).unwrap_or(ScopeState::Ready);
        if before == s.state {
            continue;
        }
        let at = returns_at(s)
            .map(instant)
            .unwrap_or_else(|| "unknown".into());
        let (kind, severity, message) = match s.state {
            ScopeState::Cooling => (
                "throttled",
                "warning",
                format!(
                    "{} in project {}: per-minute quota reached, cooling until {at}",
                    s.model, s.project
                ),
            ),
            ScopeState::Exhausted => (
                "exhausted",
                "critical",
                format!(
                    "{} in project {}: daily quota used up ({} sent), until {at}",
                    s.model, s.project, s.rpd_used
                ),
            ),
            ScopeState::Off => (
                "model_off",
                "critical",
                s.why_off()
                    .unwrap_or_else(|| format!("{} in project {} is off", s.model, s.project)),
            ),
            ScopeState::Ready if before == ScopeState::Cooling => continue,
            ScopeState::Ready => (
                "scope_ready",
                "info",
                format!("{} in project {} can serve again", s.model, s.project),
            ),
        };
        admin.events.push(
            now,
            NewEvent {
                kind,
                severity,
                key: None,
                project: Some(s.project.clone()),
                model: Some(s.model.clone()),
                message,
            },
        );
    }
    since
}

/// Looks at the ledger's status now and records what changed. The proxy calls this on a timer,
/// and each status request does too.
pub(crate) async fn watch_once(st: &ProxyState) {
    if let Ok(status) = st.live().ledger.status().await {
        observe(st, &status);
    }
}

/// The console's and admin API's routes.
pub(crate) fn router(state: Arc<ProxyState>) -> Router<Arc<ProxyState>> {
    let api = Router::new()
        .route("/admin/status", get(status))
        .route("/admin/history", get(history))
        .route("/admin/events", get(events))
        .route("/admin/keys/{key}/reset", post(reset_key))
        .route("/admin/keys/{key}/disable", post(disable_key))
        .route("/admin/keys/{key}/enable", post(enable_key))
        .route("/admin/keys/{key}/recheck", post(recheck_key))
        .route("/admin/scopes/reset", post(reset_scope))
        .route("/console/assets/{name}", get(asset))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate));
    Router::new()
        .merge(api)
        .route("/console", get(console))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
}

/// Why a request may not use the admin side.
struct Refused {
    status: StatusCode,
    message: String,
}

fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

/// The credential a request carries, and whether it came as the cookie.
fn credential(headers: &HeaderMap) -> Option<(String, bool)> {
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

fn matches(tokens: &[(String, [u8; 32])], token: &str) -> bool {
    let d = digest(token);
    let mut found = false;
    for (_, want) in tokens {
        found |= bool::from(d.ct_eq(want));
    }
    found
}

/// Whether this request may use the console and admin API.
fn check(st: &ProxyState, method: &Method, headers: &HeaderMap) -> Result<(), Refused> {
    let live = st.live();
    let admin = &live.admin_tokens;
    if admin.is_empty() && !st.admin.loopback {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "keyturn proxy: the console and admin API are off: this proxy listens beyond loopback and has no admin token; add [[serve.admin_tokens]] (keyturn serve token new --admin --label NAME)",
        ));
    }
    let cred = credential(headers);
    if let Some((token, _)) = &cred
        && admin.is_empty()
        && matches(&live.tokens, token)
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
    if !matches(admin, &token) {
        let what = if matches(&live.tokens, &token) {
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
fn same_origin(headers: &HeaderMap) -> bool {
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

fn no_store(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        // Browsers send `Origin: null` under `no-referrer`, which the action check would refuse.
        HeaderValue::from_static("same-origin"),
    );
    r
}

fn json_answer(status: StatusCode, v: &Value) -> Response {
    no_store(
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
    )
}

fn problem(status: StatusCode, message: &str) -> Response {
    json_answer(
        status,
        &json!({"error": {"code": status.as_u16(), "message": message}}),
    )
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    no_store(r)
}

/// The sign-in page, with a note (escaped: it is ours, but HTML is HTML).
fn login_page(status: StatusCode, note: &str) -> Response {
    let note = note
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    html(status, LOGIN_HTML.replace("{{note}}", &note))
}

async fn gate(State(st): State<Arc<ProxyState>>, req: Request, next: Next) -> Response {
    match check(&st, req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(r) => problem(r.status, &r.message),
    }
}

async fn console(State(st): State<Arc<ProxyState>>, headers: HeaderMap) -> Response {
    match check(&st, &Method::GET, &headers) {
        Ok(()) => html(StatusCode::OK, CONSOLE_HTML.to_owned()),
        Err(r) if r.status == StatusCode::UNAUTHORIZED => login_page(r.status, &r.message),
        Err(r) => no_store((r.status, r.message).into_response()),
    }
}

/// `token=…` from a form body.
fn form_token(body: &[u8]) -> Option<String> {
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

async fn login(State(st): State<Arc<ProxyState>>, headers: HeaderMap, body: Bytes) -> Response {
    let live = st.live();
    if live.admin_tokens.is_empty() {
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
    if !matches(&live.admin_tokens, &token) {
        tracing::warn!("console sign-in refused: not an admin token");
        return login_page(StatusCode::UNAUTHORIZED, "that is not an admin token");
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/console"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    no_store(r)
}

async fn logout() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/console"));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("keyturn_admin=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    no_store(r)
}

async fn asset(Path(name): Path<String>) -> Response {
    let (kind, body) = match name.as_str() {
        "console.js" => ("text/javascript; charset=utf-8", CONSOLE_JS),
        "console.css" => ("text/css; charset=utf-8", CONSOLE_CSS),
        "uPlot.iife.min.js" => ("text/javascript; charset=utf-8", UPLOT_JS),
        "uPlot.min.css" => ("text/css; charset=utf-8", UPLOT_CSS),
        _ => return problem(StatusCode::NOT_FOUND, "no such asset"),
    };
    no_store(([(header::CONTENT_TYPE, kind)], body).into_response())
}

#[derive(Serialize)]
struct KeyView {
    label: String,
    fingerprint: String,
    project: String,
    /// `usable`, `cooling`, `exhausted`, `off`, `disabled`, `breaker`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    since_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    until_ms: Option<i64>,
    failures: u32,
    /// Disabled by the operator (`POST /admin/keys/{key}/disable`), not by Gemini's verdict.
    by_admin: bool,
}

#[derive(Serialize)]
struct ScopeView<'a> {
    #[serde(flatten)]
    scope: &'a ScopeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    why_off: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    returns_at_ms: Option<i64>,
    /// At today's pace so far, when the scope's day runs out (keyturn's planner); absent when
    /// it lasts the day, or nothing was sent yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    runs_out_today_ms: Option<i64>,
}

async fn status(State(st): State<Arc<ProxyState>>) -> Response {
    let status = match st.live().ledger.status().await {
        Ok(s) => s,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the quota ledger is unavailable: {e}"),
            );
        }
    };
    let since = observe(&st, &status);
    let now = status.at_ms;
    let keys: Vec<KeyView> = status
        .keys
        .iter()
        .map(|k| {
            let (state, until_ms) = key_state(&status, k, now);
            let fingerprint = k.fingerprint.to_string();
            KeyView {
                label: k.label.clone(),
                project: k.project.clone(),
                state,
                reason: k.disabled.map(|d| d.reason.to_string()),
                since_ms: k
                    .disabled
                    .map(|d| d.since_ms)
                    .filter(|t| *t > 0)
                    .or_else(|| since.get(&fingerprint).copied())
                    .unwrap_or(now),
                until_ms,
                failures: k.failures,
                by_admin: k.disabled.is_some_and(|d| d.reason.is_admin()),
                fingerprint,
            }
        })
        .collect();
    let scopes: Vec<ScopeView> = status
        .scopes
        .iter()
        .map(|s| ScopeView {
            scope: s,
            why_off: s.why_off(),
            returns_at_ms: returns_at(s),
            runs_out_today_ms: keyturn_core::plan::runs_out_today_at_todays_pace(s, now),
        })
        .collect();
    let max = st.max_in_flight;
    let in_flight = max.saturating_sub(st.in_flight.available_permits());
    json_answer(
        StatusCode::OK,
        &json!({
            "at_ms": now,
            "next_pacific_midnight_ms": keyturn_core::next_pacific_midnight(now),
            "keys": keys,
            "scopes": scopes,
            "requests": {
                "in_flight": in_flight,
                "max_in_flight": max,
                "waiting_for_slot": st.waiting_for_slot(),
                "waiting_for_quota": st.waiting_for_quota(),
            },
            "reload": st.last_reload(),
        }),
    )
}

async fn history(State(st): State<Arc<ProxyState>>) -> Response {
    let snap = match st.live().ledger.snapshot().await {
        Ok(s) => s,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the quota ledger is unavailable: {e}"),
            );
        }
    };
    let ring = st.live().ledger.keys();
    let labels: BTreeMap<String, String> = ring
        .iter()
        .map(|(_, e)| (e.fingerprint().to_string(), e.label.clone()))
        .collect();
    let days: Vec<Value> = snap
        .usage
        .iter()
        .map(|u| {
            let fp = u.fingerprint.to_string();
            json!({
                "date": u.date.to_string(),
                "key": labels.get(&fp).cloned().unwrap_or_else(|| fp.clone()),
                "fingerprint": fp,
                "model": u.model,
                "requests": u.requests,
                "served": u.served,
                "refused": u.refused,
                "input_tokens": u.input_tokens,
            })
        })
        .collect();
    json_answer(StatusCode::OK, &json!({ "days": days }))
}

#[derive(serde::Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn events(State(st): State<Arc<ProxyState>>, Query(q): Query<After>) -> Response {
    watch_once(&st).await;
    json_answer(
        StatusCode::OK,
        &json!({ "events": st.admin.events.since(q.after) }),
    )
}

fn find_key(st: &ProxyState, key: &str) -> Option<(keyturn_core::KeyId, String)> {
    let ring = st.live().ledger.keys();
    let id = ring.find(key)?;
    let label = ring.get(id).map(|e| e.label.clone()).unwrap_or_default();
    Some((id, label))
}

fn no_such_key() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "no key with that label or fingerprint",
    )
}

async fn reset_key(State(st): State<Arc<ProxyState>>, Path(key): Path<String>) -> Response {
    let Some((id, label)) = find_key(&st, &key) else {
        return no_such_key();
    };
    match st.live().ledger.reset(ResetTarget::Key(id)).await {
        Ok(()) => {
            tracing::info!(key = %label.escape_debug(), "key reset from the admin API");
            st.admin.events.push(
                st.clock.now_ms(),
                NewEvent {
                    kind: "admin_reset",
                    severity: "info",
                    key: Some(label.clone()),
                    project: None,
                    model: None,
                    message: format!("key {label} reset by an admin: enabled, breaker closed"),
                },
            );
            watch_once(&st).await;
            json_answer(StatusCode::OK, &json!({"reset": label}))
        }
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("could not reset: {e}"),
        ),
    }
}

async fn disable_key(State(st): State<Arc<ProxyState>>, Path(key): Path<String>) -> Response {
    set_disabled(&st, &key, true).await
}

async fn enable_key(State(st): State<Arc<ProxyState>>, Path(key): Path<String>) -> Response {
    set_disabled(&st, &key, false).await
}

/// Takes a key out of rotation, or puts it back (only the operator's disable is lifted).
async fn set_disabled(st: &ProxyState, key: &str, disabled: bool) -> Response {
    let Some((id, label)) = find_key(st, key) else {
        return no_such_key();
    };
    let (kind, did, message) = if disabled {
        (
            "admin_disable",
            "disabled",
            format!("key {label} disabled by an admin: it takes no request until enabled"),
        )
    } else {
        (
            "admin_enable",
            "enabled",
            format!("key {label} enabled by an admin"),
        )
    };
    match st.live().ledger.disable_by_admin(id, disabled).await {
        Ok(()) => {
            tracing::info!(key = %label.escape_debug(), "key {did} from the admin API");
            st.admin.events.push(
                st.clock.now_ms(),
                NewEvent {
                    kind,
                    severity: if disabled { "warning" } else { "info" },
                    key: Some(label.clone()),
                    project: None,
                    model: None,
                    message,
                },
            );
            watch_once(st).await;
            json_answer(StatusCode::OK, &json!({ did: label }))
        }
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("could not change the key: {e}"),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeTarget {
    project: String,
    model: String,
}

async fn reset_scope(State(st): State<Arc<ProxyState>>, body: Bytes) -> Response {
    let Ok(t) = serde_json::from_slice::<ScopeTarget>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "expected {\"project\": …, \"model\": …}",
        );
    };
    let status = match st.live().ledger.status().await {
        Ok(s) => s,
        Err(e) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the quota ledger is unavailable: {e}"),
            );
        }
    };
    if !status
        .scopes
        .iter()
        .any(|s| s.project == t.project && s.model == t.model)
    {
        return problem(StatusCode::NOT_FOUND, "no such project and model");
    }
    let target = ResetTarget::Scope {
        project: t.project.clone(),
        model: t.model.clone(),
    };
    match st.live().ledger.reset(target).await {
        Ok(()) => {
            st.admin.events.push(
                st.clock.now_ms(),
                NewEvent {
                    kind: "admin_reset",
                    severity: "info",
                    key: None,
                    project: Some(t.project.clone()),
                    model: Some(t.model.clone()),
                    message: format!(
                        "{} in project {} reset by an admin: counters, cooldown, exhaustion and learned limits cleared",
                        t.model, t.project
                    ),
                },
            );
            watch_once(&st).await;
            json_answer(
                StatusCode::OK,
                &json!({"reset": {"project": t.project, "model": t.model}}),
            )
        }
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("could not reset: {e}"),
        ),
    }
}

async fn recheck_key(State(st): State<Arc<ProxyState>>, Path(key): Path<String>) -> Response {
    let Some((id, label)) = find_key(&st, &key) else {
        return no_such_key();
    };
    let Some(transport) = &st.admin.recheck else {
        return problem(
            StatusCode::NOT_IMPLEMENTED,
            "this proxy was started without a way to re-check keys",
        );
    };
    let ring = st.live().ledger.keys();
    let Some(entry) = ring.get(id) else {
        return problem(StatusCode::NOT_FOUND, "no such key");
    };
    let answer = check_key(transport, &entry.key).await;
    let disabled = st
        .live()
        .ledger
        .status()
        .await
        .ok()
        .and_then(|s| s.keys.into_iter().find(|k| k.label == label))
        // Gemini's verdict only: the operator's disable is lifted by enabling the key.
        .is_some_and(|k| k.disabled.is_some_and(|d| !d.reason.is_admin()));
    let (result, detail) = match &answer {
        KeyCheck::Alive if disabled => match st.live().ledger.reset(ResetTarget::Key(id)).await {
            Ok(()) => ("alive", "the key answers; re-enabled".to_owned()),
            Err(e) => (
                "alive",
                format!("the key answers, but could not re-enable it: {e}"),
            ),
        },
        KeyCheck::Alive => ("alive", "the key answers".to_owned()),
        KeyCheck::Refused(reason) => ("refused", format!("Gemini refuses the key: {reason}")),
        KeyCheck::Unknown(why) => (
            "unknown",
            // In words without the key; scrubbed again in case a server quoted it.
            format!("no clear answer: {}", st.live().scrubber.redact(why)),
        ),
    };
    st.admin.events.push(
        st.clock.now_ms(),
        NewEvent {
            kind: "admin_recheck",
            severity: if result == "alive" { "info" } else { "warning" },
            key: Some(label.clone()),
            project: Some(entry.project.clone()),
            model: None,
            message: format!("key {label} re-checked by an admin: {detail}"),
        },
    );
    watch_once(&st).await;
    json_answer(
        StatusCode::OK,
        &json!({"key": label, "result": result, "detail": detail}),
    )
}
