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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyturn_gemini::Transport;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::ProxyState;

mod actions;
mod api;
mod events;
mod gate;

use actions::{disable_key, enable_key, recheck_key, reset_key, reset_scope};
use api::{events, history, status};
use events::Observed;
pub(crate) use events::watch_once;
pub use events::{Event, Events, NewEvent};
use gate::{asset, console, gate, login, logout};

/// How many recent events the proxy keeps.
pub const EVENTS_KEPT: usize = 500;

/// The cookie the console's sign-in sets.
const COOKIE: &str = "keyturn_admin";

const CONSOLE_HTML: &str = include_str!("../../assets/console.html");
const LOGIN_HTML: &str = include_str!("../../assets/login.html");
const CONSOLE_JS: &str = include_str!("../../assets/console.js");
const CONSOLE_CSS: &str = include_str!("../../assets/console.css");
const UPLOT_JS: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot/uPlot.min.css");

/// The console page may load only what this server embeds, and run no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

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
