//! # keyturn-proxy
//!
//! `keyturn serve`: a Gemini-compatible HTTP proxy. Clients in any language (google-genai,
//! the openai SDKs, LiteLLM, LangChain, curl) change one base URL and get keyturn's rotation: every request is
//! admitted by the shared quota ledger, sent upstream with a pool key, classified by Gemini's own
//! error details and retried on another key; several proxy replicas share one Redis ledger.
//!
//! - The Gemini surface under `/v1beta/` and `/v1/`: `models/{m}:generateContent`,
//!   `:streamGenerateContent` (SSE, passed on event by event), `:countTokens`, `:embedContent`,
//!   `:batchEmbedContents`, `GET models`, `GET models/{m}`. Request bodies go upstream unchanged
//!   (either field spelling); successful responses come back byte for byte.
//! - Google's OpenAI-compatible surface under `/v1beta/openai/` (`chat/completions`, plain and
//!   streamed, `embeddings`, `models`), through the same rotation, with the proxy's own refusals
//!   in OpenAI's error form (see the `openai` module).
//! - Files (`/upload/{v}/files`, resumable and multipart; `files`, `files/{id}`), cached contents
//!   and Batch Mode, each pinned to the project whose key created it (see the `affinity`
//!   module): any request naming one goes only to that project's keys, with a 429 and
//!   `RetryInfo` when it has no room. Owners are kept in a [`keyturn_core::ResourceMap`] on the
//!   state's backend ([`ProxyState::with_resources`]).
//! - Clients authenticate with their own proxy tokens (`x-goog-api-key` or
//!   `Authorization: Bearer`), configured only as SHA-256 digests and compared in constant time.
//!   A pool key is never accepted from, nor returned to, a client. One client's files, cached
//!   contents and batches are its own (see the `access` module) unless `share_resources`.
//! - When no key can serve, the answer is Gemini's 429 RESOURCE_EXHAUSTED with a `RetryInfo` that
//!   says when capacity returns, so SDK retry logic waits the right time. Caller faults from
//!   upstream (400, 404) pass through as they are.
//! - An admin API under `/admin/` and a web console at `/console` (see the `admin` module),
//!   behind admin tokens that client tokens can never stand in for.
//! - A request-body cap, upstream timeouts, a bound on upstream calls in flight, graceful
//!   shutdown; `/healthz` and `/readyz` (the pool has a usable key).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keyturn_core::{Clock, MemoryResources, QuotaLedger, ResourceMap};
use keyturn_gemini::GeminiCall;
use tokio::sync::Semaphore;

mod access;
mod admin;
mod affinity;
mod answer;
mod auth;
mod download;
mod files;
mod lanes;
mod live;
mod native;
mod openai;
mod owned;
mod request;
mod serve_console;
mod server;

use answer::{Answer, json_bytes, not_found};
use native::{call_model, get_model, list_models};

pub use admin::{Console, Digests, EVENTS_KEPT, Event, Events, Host, NewEvent};
pub use auth::{digest, new_token, parse_digest};
pub use files::{MAX_UPLOAD_SESSIONS, UPLOAD_SESSION_MS};
use live::Live;
pub use live::{LastReload, Reload};
pub use server::{ConsoleServer, Proxy};

/// Proxy settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Client tokens: (label, SHA-256 digest).
    pub tokens: Vec<(String, [u8; 32])>,
    /// Admin tokens for the console and the admin API: (label, SHA-256 digest). Without any,
    /// both answer only this machine on loopback, and are off beyond it.
    pub admin_tokens: Vec<(String, [u8; 32])>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Upstream calls in flight (a stream counts until it ends).
    pub max_in_flight: usize,
    /// Open client connections; past it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, and how long an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, and how long it may leave an
    /// answer untaken (a write that makes no progress for this long closes the connection).
    pub body_timeout: Duration,
    /// Largest file upload (`POST /upload/…/files`): streamed through, never held whole.
    pub max_upload_bytes: u64,
    /// Whether every client may use every client's files, cached contents and batches
    /// (`[serve] share_resources`); by default, with client tokens, each is its creator's.
    pub share_resources: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            admin_tokens: Vec::new(),
            max_body_bytes: 20 * 1024 * 1024,
            max_in_flight: 64,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            // The Files API's own limit per file.
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            share_resources: false,
        }
    }
}

/// The proxy cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Listening beyond loopback with no client token would hand the keys to anyone.
    #[error(
        "refusing to listen on {0} without client tokens: add [[serve.tokens]] (keyturn serve token new --label NAME) or listen on 127.0.0.1"
    )]
    OpenToTheWorld(SocketAddr),
    /// `keyturn console` beyond loopback with no admin token would show the pool to anyone.
    #[error(
        "refusing to serve the console on {0} without an admin token: add [[serve.admin_tokens]] (keyturn serve token new --admin --label NAME) or listen on 127.0.0.1"
    )]
    ConsoleOpenToTheWorld(SocketAddr),
    /// A configured digest is not 64 hex digits.
    #[error("serve.tokens '{0}': sha256 must be 64 hex digits")]
    BadDigest(String),
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The serving threads could not start.
    #[error("cannot start the threads that serve connections: {0}")]
    Threads(std::io::Error),
}

impl ProxyConfig {
    /// Checks the listen address against the tokens.
    pub fn validate(&self) -> Result<(), ProxyError> {
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() {
            return Err(ProxyError::OpenToTheWorld(self.listen));
        }
        Ok(())
    }

    /// Whether the console and the admin API answer: always with an admin token, else only
    /// on loopback.
    pub fn console_enabled(&self) -> bool {
        !self.admin_tokens.is_empty() || self.listen.ip().is_loopback()
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct ProxyState {
    /// Swapped whole by a reload.
    live: Arc<arc_swap::ArcSwap<Live>>,
    in_flight: Arc<Semaphore>,
    /// The console's and the admin API's state: recent events, waiting counts, last reload.
    admin: serve_console::ServeAdmin,
    clock: Arc<dyn Clock>,
    /// Models the upstream has confirmed, per API version: only these get quota scopes and
    /// metric labels, so a client sending random names cannot grow the state.
    models: KnownModels,
    body_timeout: Duration,
    max_body_bytes: usize,
    max_upload_bytes: u64,
    /// Which project owns each file, cached content and batch the proxy saw created.
    resources: Arc<dyn ResourceMap>,
    /// Where resource calls go (files, uploads), per API version; without them those routes
    /// answer 404.
    upstream: Option<ResourceUpstream>,
    uploads: files::Uploads,
    resource_cursor: std::sync::atomic::AtomicUsize,
}

/// The transports resource calls go through, one per API version.
#[derive(Debug, Clone)]
pub struct ResourceUpstream {
    /// For `/v1beta/`.
    pub v1beta: keyturn_gemini::Transport,
    /// For `/v1/`.
    pub v1: keyturn_gemini::Transport,
}

/// Most distinct models the proxy admits (Gemini serves a few dozen).
pub const MAX_MODELS: usize = 256;

/// Confirmed models per API version, looked up by `&str` (no allocation per request).
#[derive(Debug, Default)]
struct KnownModels(parking_lot::RwLock<KnownSets>);

#[derive(Debug, Default)]
struct KnownSets {
    v1beta: std::collections::HashSet<String>,
    v1: std::collections::HashSet<String>,
}

impl KnownSets {
    fn of(&mut self, version: &str) -> Option<&mut std::collections::HashSet<String>> {
        match version {
            "v1beta" => Some(&mut self.v1beta),
            "v1" => Some(&mut self.v1),
            _ => None,
        }
    }
}

impl KnownModels {
    fn contains(&self, version: &str, model: &str) -> bool {
        let sets = self.0.read();
        match version {
            "v1beta" => sets.v1beta.contains(model),
            "v1" => sets.v1.contains(model),
            _ => false,
        }
    }

    /// Records a confirmed model; false when the set is full.
    fn insert(&self, version: &str, model: &str) -> bool {
        let mut sets = self.0.write();
        if sets.v1beta.len() + sets.v1.len() >= MAX_MODELS {
            return false;
        }
        match sets.of(version) {
            Some(set) => {
                set.insert(model.to_owned());
                true
            }
            None => false,
        }
    }
}

impl ProxyState {
    /// State over a pool: a caller for `/v1beta/` and one for `/v1/`, sharing one ledger, and
    /// the pool's clock (retry delays are counted from the time the ledger reads).
    pub fn new(
        v1beta: Arc<dyn GeminiCall>,
        v1: Arc<dyn GeminiCall>,
        ledger: Arc<dyn QuotaLedger>,
        clock: Arc<dyn Clock>,
        cfg: &ProxyConfig,
    ) -> Self {
        let clock_for_resources = clock.clone();
        let live = Arc::new(arc_swap::ArcSwap::from_pointee(Live::new(
            v1beta,
            v1,
            ledger,
            cfg.tokens.clone(),
            cfg.admin_tokens.clone(),
            cfg.share_resources,
        )));
        let max_in_flight = cfg.max_in_flight.max(1);
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        let admin = serve_console::ServeAdmin::new(
            live.clone(),
            in_flight.clone(),
            max_in_flight,
            clock.clone(),
            cfg.listen.ip().is_loopback(),
            cfg.body_timeout,
        );
        Self {
            live,
            in_flight,
            admin,
            clock,
            models: KnownModels::default(),
            body_timeout: cfg.body_timeout,
            max_body_bytes: cfg.max_body_bytes,
            max_upload_bytes: cfg.max_upload_bytes,
            resources: Arc::new(MemoryResources::new(clock_for_resources)),
            upstream: None,
            uploads: files::Uploads::default(),
            resource_cursor: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// With the resource map the pool's backend keeps (`FileResources` in the state folder,
    /// `RedisResources` beside the Redis ledger; in memory by default) and the transports that
    /// serve the Files API routes.
    pub fn with_resources(
        mut self,
        resources: Arc<dyn ResourceMap>,
        upstream: ResourceUpstream,
    ) -> Self {
        self.resources = resources;
        self.upstream = Some(upstream);
        self
    }

    /// With a transport for re-checking keys from the admin API (`POST
    /// /admin/keys/{key}/recheck`): a request that costs no quota, as `keyturn keys check` sends.
    pub fn with_recheck(self, transport: keyturn_gemini::Transport) -> Self {
        self.admin.console.set_recheck(transport);
        self
    }

    /// Replaces the transport re-checks go out with (a reload changed the keys' egress routes).
    pub fn set_recheck(&self, transport: keyturn_gemini::Transport) {
        self.admin.console.set_recheck(transport);
    }

    /// With the pool's record of failing egress routes, so the console says when a key cools
    /// because its route fails.
    pub fn with_route_board(self, board: Arc<keyturn_gemini::RouteBoard>) -> Self {
        self.admin.route_board.set(board).ok();
        self
    }

    /// What requests starting now use.
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Takes a reloaded configuration: requests that start from now on use it, those in flight
    /// finish with what they started with. The caller has checked it (`ProxyConfig::validate`
    /// with the new client tokens) and records the outcome ([`ProxyState::record_reload`]).
    pub fn reload(&self, next: Reload) {
        self.live.store(Arc::new(Live::new(
            next.v1beta,
            next.v1,
            next.ledger,
            next.tokens,
            next.admin_tokens,
            next.share_resources,
        )));
    }

    /// Records a reload's outcome (a refused one changes nothing else), for `/admin/status`.
    pub fn record_reload(&self, last: LastReload) {
        *self.admin.last_reload.lock() = Some(last);
    }

    /// The last reload, if any.
    pub fn last_reload(&self) -> Option<LastReload> {
        self.admin.last_reload.lock().clone()
    }

    /// Requests waiting now for quota (a key with room), in the current callers.
    pub fn waiting_for_quota(&self) -> usize {
        let live = self.live();
        live.v1beta.waiting_for_quota() + live.v1.waiting_for_quota()
    }

    /// Requests waiting now for an upstream slot (`max_in_flight`).
    pub fn waiting_for_slot(&self) -> usize {
        self.admin
            .waiting_slot
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The recent events the console shows; others (the pool's monitor) may add to them.
    pub fn events(&self) -> Arc<Events> {
        self.admin.console.events()
    }

    /// The console and admin API over this proxy's pool.
    pub fn console(&self) -> &Arc<Console> {
        &self.admin.console
    }

    /// A successful answer relayed as it came, unless it holds a pool key.
    fn relay(&self, raw: Bytes) -> Response {
        let body = match self.live().scrubber.scrub_known(&raw) {
            Some(clean) => {
                tracing::warn!(
                    "an upstream answer held a pool key; it was replaced before relaying"
                );
                Bytes::from(clean)
            }
            None => raw,
        };
        json_bytes(StatusCode::OK, body)
    }

    fn caller(&self, version: &str) -> Option<Arc<dyn GeminiCall>> {
        let live = self.live();
        match version {
            "v1beta" => Some(live.v1beta.clone()),
            "v1" => Some(live.v1.clone()),
            _ => None,
        }
    }
}

/// The proxy's router.
pub fn router(state: Arc<ProxyState>) -> Router {
    let api = Router::new()
        .route("/{version}/models", get(list_models))
        .route("/{version}/models/{name}", get(get_model).post(call_model))
        .route("/{version}/files", get(files::list_files))
        .route(
            "/{version}/files/{id}",
            get(files::get_file).delete(files::delete_file),
        )
        .route(
            "/{version}/cachedContents",
            get(owned::list_caches).post(owned::create_cache),
        )
        .route(
            "/{version}/cachedContents/{id}",
            get(owned::get_cache)
                .patch(owned::patch_cache)
                .delete(owned::delete_cache),
        )
        .route("/{version}/batches", get(owned::list_batches))
        .route(
            "/download/{version}/files/{name}",
            get(download::download_file),
        )
        .route(
            "/{version}/batches/{name}",
            get(owned::get_batch)
                .post(owned::cancel_batch)
                .delete(owned::delete_batch),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    // Uploads have their own gate: google-genai sends an upload's chunks without a key.
    let upload = Router::new()
        .route(
            "/upload/{version}/files",
            axum::routing::post(files::upload),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate_upload,
        ));
    Router::new()
        .merge(api)
        .merge(upload)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(openai::router(state.clone()))
        .merge(state.admin.console.clone().router())
        .fallback(|| async { Answer::from(not_found()).gemini() })
        // Bodies are read by the handler, under the cap and the body timeout.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn readyz(State(st): State<Arc<ProxyState>>) -> Response {
    match st.live().ledger.status().await {
        Ok(s) if s.keys.iter().any(|k| k.disabled.is_none()) => {
            (StatusCode::OK, "ready").into_response()
        }
        Ok(_) => (StatusCode::SERVICE_UNAVAILABLE, "every key is disabled").into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the quota ledger is unavailable",
        )
            .into_response(),
    }
}

/// An answer that ends a request early, rendered in the dialect of the route.
type Refusal = Answer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_open_listeners_are_refused() {
        let (token, hex) = new_token();
        assert!(token.starts_with("kt_") && token.len() == 67);
        assert_eq!(parse_digest("t", &hex).unwrap(), digest(&token));
        assert!(parse_digest("t", "zz").is_err());
        let open = ProxyConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            tokens: vec![],
            max_body_bytes: 1,
            max_in_flight: 1,
            ..ProxyConfig::default()
        };
        assert!(matches!(
            open.validate(),
            Err(ProxyError::OpenToTheWorld(_))
        ));
        let closed = ProxyConfig {
            tokens: vec![("a".into(), digest("x"))],
            ..open.clone()
        };
        assert!(closed.validate().is_ok());
        let local = ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..open
        };
        assert!(local.validate().is_ok());
    }
}
