//! The operator's side: a JSON admin API under `/admin/` and the web console at `/console`
//! that uses it (see docs/PROXY.md), mounted by `keyturn serve` over its live pool and by
//! `keyturn console` over a state folder or a Redis namespace ([`Console`], [`Host`]).
//!
//! - Access needs an **admin token**, never a client token: `Authorization: Bearer`, or the
//!   `keyturn_admin` cookie the console's sign-in sets (`HttpOnly`, `SameSite=Strict`; `Secure` when the page
//!   came over HTTPS), which holds a session signed by this process, never the token
//!   ([`session`]). Admin
//!   tokens are kept only as SHA-256 digests and compared in constant time, like client tokens.
//!   On loopback with no admin token configured, only this machine may use them (the rule the
//!   proxy applies to clients without tokens); listening beyond loopback with no admin token
//!   turns both off.
//! - Status, the 30-day usage history, recent events, and actions: reset a key (which
//!   re-enables a disabled one), reset a scope, disable or enable a key, re-check a key now. A
//!   read-only console ([`Console::read_only`]) answers every action with 403, and its status
//!   says `"actions": false` so the page hides the buttons.
//! - Events come from watching the ledger's status (a key disabled or back, a breaker open, a
//!   scope cooling, exhausted or switched off), from the actions taken here, and from whoever
//!   holds [`Console::events`] (`keyturn serve` adds the pool monitor's warnings); the last
//!   [`EVENTS_KEPT`] are kept in memory.
//! - Keys are shown by label and fingerprint only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyturn_core::{Clock, PoolStatus, QuotaLedger};
use keyturn_gemini::{RouteFailing, Transport};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

mod actions;
mod api;
mod events;
mod gate;
mod session;

use actions::{actions_gate, disable_key, enable_key, recheck_key, reset_key, reset_scope};
use api::{events, history, status};
use events::Observed;
pub use events::{Event, Events, NewEvent};
use gate::{asset, console, gate, login, logout};

/// The largest body the console and admin API read (a sign-in form, a scope to reset): the
/// sign-in is open to anyone who reaches the server, and `keyturn serve` lifts axum's own limit
/// for its Gemini routes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// How long a body may take to arrive unless the server says otherwise
/// ([`Console::with_body_timeout`]; `keyturn serve` passes its `[serve] body_timeout`).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many recent events the console keeps.
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

/// Token digests: (label, SHA-256).
pub type Digests = Vec<(String, [u8; 32])>;

/// What a console looks at, as it is at each request: `keyturn serve`'s live pool (swapped by
/// a reload), or `keyturn console`'s view of a state folder or a Redis namespace.
pub trait Host: Send + Sync + std::fmt::Debug + 'static {
    /// The ledger to read and act on now.
    fn ledger(&self) -> Arc<dyn QuotaLedger>;
    /// Client tokens (which may never use the console) and admin tokens, as they are now.
    fn tokens(&self) -> (Digests, Digests);
    /// What this host adds to `/admin/status` beside the pool (serve: requests in flight and
    /// the last reload; the standalone console: where its view comes from, how old it is, and
    /// the seed runs in progress).
    fn status_extra(&self, status: &PoolStatus, out: &mut Map<String, Value>);
    /// The key's egress route, if it is failing now (known where the requests are sent).
    fn route_failing(&self, _key: &keyturn_core::Fingerprint) -> Option<RouteFailing> {
        None
    }
}

/// The console and admin API over one [`Host`]: who may use them, whether actions are
/// allowed, and the recent events.
#[derive(Debug)]
pub struct Console {
    host: Arc<dyn Host>,
    clock: Arc<dyn Clock>,
    /// Whether the server listens on loopback: without an admin token the console and admin
    /// API answer only there.
    loopback: bool,
    /// Whether resets, disables, enables and re-checks are allowed (403 otherwise).
    allow_actions: bool,
    events: Arc<Events>,
    observed: Mutex<Observed>,
    /// For re-checking a key now (through each key's egress route as configured now: a reload
    /// replaces it); without it, `recheck` answers 501.
    recheck: ArcSwapOption<Transport>,
    /// How long a request's body may take to arrive (408 after).
    body_timeout: Duration,
    /// What the sign-in cookie carries instead of the token.
    sessions: session::Sessions,
}

impl Console {
    /// A console over `host` that allows actions, for a server listening on loopback or not.
    pub fn new(host: Arc<dyn Host>, clock: Arc<dyn Clock>, loopback: bool) -> Self {
        Self {
            host,
            clock,
            loopback,
            allow_actions: true,
            events: Arc::new(Events::default()),
            observed: Mutex::new(Observed::default()),
            recheck: ArcSwapOption::empty(),
            body_timeout: BODY_TIMEOUT,
            sessions: session::Sessions::default(),
        }
    }

    /// With another bound on how long a request's body may take to arrive.
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Refuses every action (403, naming `--allow-actions`); the page hides the buttons.
    pub fn read_only(mut self) -> Self {
        self.allow_actions = false;
        self
    }

    /// With a transport for re-checking keys (`POST /admin/keys/{key}/recheck`): a request
    /// that costs no quota, as `keyturn keys check` sends, through each key's egress route.
    pub fn with_recheck(self, transport: Transport) -> Self {
        self.set_recheck(transport);
        self
    }

    /// [`Console::with_recheck`] on a console already shared, replacing the transport it had
    /// (a reload's routes).
    pub(crate) fn set_recheck(&self, transport: Transport) {
        self.recheck.store(Some(Arc::new(transport)));
    }

    /// Whether actions are allowed.
    pub fn allows_actions(&self) -> bool {
        self.allow_actions
    }

    /// The recent events; others (the pool's monitor) may add to them.
    pub fn events(&self) -> Arc<Events> {
        self.events.clone()
    }

    /// Looks at the ledger's status now and records what changed as events. A server calls
    /// this on a timer, and each status request does too.
    pub async fn watch_once(&self) {
        if let Ok(status) = self.host.ledger().status().await {
            events::observe(self, &status);
        }
    }

    /// The console's and admin API's routes, to merge into a server's router.
    pub fn router<S: Clone + Send + Sync + 'static>(self: Arc<Self>) -> Router<S> {
        let actions = Router::new()
            .route("/admin/keys/{key}/reset", post(reset_key))
            .route("/admin/keys/{key}/disable", post(disable_key))
            .route("/admin/keys/{key}/enable", post(enable_key))
            .route("/admin/keys/{key}/recheck", post(recheck_key))
            .route("/admin/scopes/reset", post(reset_scope))
            .route_layer(middleware::from_fn_with_state(self.clone(), actions_gate));
        // The token gate wraps the actions' gate: a stranger learns nothing about actions.
        let api = Router::new()
            .route("/admin/status", get(status))
            .route("/admin/history", get(history))
            .route("/admin/events", get(events))
            .route("/console/assets/{name}", get(asset))
            .merge(actions)
            .route_layer(middleware::from_fn_with_state(self.clone(), gate));
        Router::new()
            .merge(api)
            .route("/console", get(console))
            .route("/console/login", post(login))
            .route("/console/logout", post(logout))
            .layer(middleware::from_fn_with_state(self.clone(), bounded_body))
            .with_state(self)
    }
}

/// Reads a request's body before anything else looks at it: at most [`MAX_BODY_BYTES`] (413
/// past it), within the console's body timeout (408 after it). The sign-in form is open to
/// anyone who reaches the server, so neither a huge body nor one trickled a byte at a time may
/// hold memory or a connection.
async fn bounded_body(State(st): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(st.body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("keyturn console: a body over {MAX_BODY_BYTES} bytes"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            "keyturn console: the request body did not arrive in time",
        )
            .into_response(),
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
