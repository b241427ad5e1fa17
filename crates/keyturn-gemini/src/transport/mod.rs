//! The HTTP transport: one pooled reqwest client (rustls, HTTP/2 where offered), connect and
//! total timeouts, a base URL without a version segment (like google-genai's `base_url`), and the
//! key only in a header marked sensitive: `x-goog-api-key`, or `Authorization: Bearer` on
//! Gemini's OpenAI-compatible routes ([`KeyHeader`]). Never `?key=`: URLs end up in logs.
//!
//! Two rules keep the key on the host it was meant for:
//! - **No redirects.** Gemini never redirects an API call, and an HTTP client that follows one
//!   carries `x-goog-api-key` (which, unlike `Authorization`, no client strips) and, on 307/308,
//!   the body to whatever host the answer names. Every 3xx is a [`SendError::Redirected`] naming
//!   the status and the target host.
//! - **Upstream paths only from validated segments.** A model name becomes part of the path only
//!   if it is a model id ([`valid_model`]: letters, digits, `.`, `-`, `_`, starting with a letter
//!   or digit), and a method only if it is letters: no `/`, `?`, `#`, `%`, `:` or `..` can reach
//!   the upstream URL, however a client encoded it.

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::{ApiKey, Fingerprint};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};

use crate::route::{EgressRoute, RouteBoard, RouteFault};

mod lanes;
mod urls;
pub use lanes::{lane_count, serve_on_lane};
pub use urls::{InvalidName, model_id, valid_method, valid_model};

/// The real service.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// Transport settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// Base URL without version (`GEMINI_BASE_URL`).
    pub base_url: String,
    /// `v1beta` (default) or `v1`.
    pub api_version: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (for streams: until the response starts).
    pub request_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_version: "v1beta".to_owned(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// A request that got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Connect, timeout, cut-off: in words, without the URL.
    #[error("{0}")]
    Failed(String),
    /// The server answered with a redirect, which keyturn never follows.
    #[error(
        "the server answered {status} redirecting to {host}; keyturn follows no redirects (Gemini never sends them), so the key and the request went nowhere else: check GEMINI_BASE_URL"
    )]
    Redirected {
        /// The 3xx status.
        status: u16,
        /// The host the answer pointed to (or "another path" when it named none).
        host: String,
    },
}

/// How a request carries its key: Gemini's own routes take `x-goog-api-key`; its
/// OpenAI-compatible routes (`/{version}/openai/…`) take `Authorization: Bearer`, as OpenAI
/// clients send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHeader {
    /// `x-goog-api-key: KEY`.
    GoogApiKey,
    /// `Authorization: Bearer KEY`.
    Bearer,
}

/// The POST routes of Gemini's OpenAI-compatible surface that spend quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAiRoute {
    /// `openai/chat/completions`.
    ChatCompletions,
    /// `openai/embeddings`.
    Embeddings,
}

impl OpenAiRoute {
    /// The path under `openai/`.
    pub const fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat/completions",
            Self::Embeddings => "embeddings",
        }
    }
}

/// Sends requests to Gemini (or anything that speaks its API).
#[derive(Debug, Clone)]
pub struct Transport {
    /// The client for keys without a route: one per serving lane ([`serve_on_lane`]).
    clients: Arc<lanes::Clients>,
    /// What built them, to build a lane's on its first use.
    config: TransportConfig,
    /// Keys with their own egress route, the client for it (one per distinct route) and the
    /// route.
    routes: Arc<Vec<(Fingerprint, reqwest::Client, EgressRoute)>>,
    /// Where route failures are recorded, if anyone reads them.
    route_board: Option<Arc<RouteBoard>>,
    /// `{root}/{version}`.
    base: String,
    /// The base URL as configured, without a trailing `/`.
    root: String,
    /// `v1beta` or `v1`.
    version: String,
    /// URLs already parsed ([`ParsedUrls`]).
    parsed: Arc<crate::url_cache::ParsedUrls>,
}

impl Transport {
    /// A transport.
    pub fn new(cfg: &TransportConfig) -> Result<Self, reqwest::Error> {
        let clients = Arc::new(lanes::Clients::new(Self::client(cfg, None)?));
        let root = cfg.base_url.trim_end_matches('/').to_owned();
        let version = cfg.api_version.trim_matches('/').to_owned();
        let base = format!("{root}/{version}");
        Ok(Self {
            clients,
            config: cfg.clone(),
            routes: Arc::default(),
            route_board: None,
            parsed: Arc::default(),
            base,
            root,
            version,
        })
    }

    /// Sends any request with the key in the header `how` names: `body` streams as given
    /// (an upload), `headers` are added as they are (the caller chose them).
    pub async fn send_as(
        &self,
        method: reqwest::Method,
        how: KeyHeader,
        key: &ApiKey,
        url: &str,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, SendError> {
        let mut req = self.client_for(key).request(method, url).headers(headers);
        if let Some(b) = body {
            req = req.body(b);
        }
        let sent = Self::with_key(req, how, key)?.send().await;
        self.through_route(key, sent)
    }

    /// A transport whose keys leave through their own routes: each key in `routes` through its
    /// proxy, every other key as [`Transport::new`]'s do. One client per distinct route, built
    /// here, once. A route that cannot be reached fails like any connection (a transient fault
    /// of that key's path: its breaker cools it; the key is not dead), and its error names the
    /// route and how it failed ([`RouteFault`]).
    pub fn with_routes(
        cfg: &TransportConfig,
        routes: &[(Fingerprint, EgressRoute)],
    ) -> Result<Self, reqwest::Error> {
        let mut t = Self::new(cfg)?;
        let mut built: Vec<(&EgressRoute, reqwest::Client)> = Vec::new();
        let mut per_key = Vec::with_capacity(routes.len());
        for (fp, route) in routes {
            let client = match built.iter().find(|(r, _)| *r == route) {
                Some((_, c)) => c.clone(),
                None => {
                    let c = Self::client(cfg, Some(route))?;
                    built.push((route, c.clone()));
                    c
                }
            };
            per_key.push((*fp, client, route.clone()));
        }
        t.routes = Arc::new(per_key);
        Ok(t)
    }

    /// Records every send through a route on `board` (see [`RouteBoard`]).
    pub fn with_route_board(mut self, board: Arc<RouteBoard>) -> Self {
        self.route_board = Some(board);
        self
    }

    fn client(
        cfg: &TransportConfig,
        route: Option<&EgressRoute>,
    ) -> Result<reqwest::Client, reqwest::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("keyturn/", env!("CARGO_PKG_VERSION"))),
        );
        let mut b = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true);
        if let Some(r) = route {
            b = b.proxy(reqwest::Proxy::all(r.0.clone())?);
        }
        b.build()
    }

    /// The client a key's requests leave through.
    fn client_for(&self, key: &ApiKey) -> &reqwest::Client {
        let fp = key.fingerprint();
        self.routes.iter().find(|(f, _, _)| *f == fp).map_or_else(
            || {
                self.clients
                    .for_this_lane(|| Self::client(&self.config, None))
            },
            |(_, c, _)| c,
        )
    }

    /// A send's result, with a failure of the key's route said as one and recorded: a route
    /// that brings no HTTP answer back, or answers 407 (Gemini never does), fails the route.
    fn through_route(
        &self,
        key: &ApiKey,
        sent: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<reqwest::Response, SendError> {
        let fp = key.fingerprint();
        let Some((_, _, route)) = self.routes.iter().find(|(f, _, _)| *f == fp) else {
            return no_redirect(sent);
        };
        let fault = match &sent {
            Ok(r) if r.status() == reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED => Some((
                RouteFault::Refused,
                "407 proxy authentication required".to_owned(),
            )),
            Ok(_) => None,
            Err(e) => RouteFault::of(e).map(|f| (f, String::new())),
        };
        let Some((fault, said)) = fault else {
            if sent.is_ok()
                && let Some(b) = &self.route_board
            {
                b.carried(fp);
            }
            return no_redirect(sent);
        };
        let detail = match sent {
            Err(e) => describe(e),
            Ok(_) => said,
        };
        if let Some(b) = &self.route_board {
            b.failed(fp, route, fault, &detail);
        }
        Err(SendError::Failed(format!(
            "egress route {route} {fault} ({detail}): a fault of the key's path, not of the key"
        )))
    }

    fn key_header(key: &ApiKey) -> Result<HeaderValue, String> {
        let mut v = HeaderValue::from_str(key.expose())
            .map_err(|_| format!("key {} cannot be sent in a header", key.fingerprint()))?;
        v.set_sensitive(true);
        Ok(v)
    }

    fn with_key(
        req: reqwest::RequestBuilder,
        how: KeyHeader,
        key: &ApiKey,
    ) -> Result<reqwest::RequestBuilder, SendError> {
        Ok(match how {
            KeyHeader::GoogApiKey => req.header(
                "x-goog-api-key",
                Self::key_header(key).map_err(SendError::Failed)?,
            ),
            KeyHeader::Bearer => {
                let mut v =
                    HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                        SendError::Failed(format!(
                            "key {} cannot be sent in a header",
                            key.fingerprint()
                        ))
                    })?;
                v.set_sensitive(true);
                req.header(AUTHORIZATION, v)
            }
        })
    }

    /// POSTs a JSON body with the key in the header.
    pub async fn post(
        &self,
        key: &ApiKey,
        url: &str,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, SendError> {
        self.post_as(KeyHeader::GoogApiKey, key, url, body).await
    }

    /// POSTs a JSON body with the key in the header `how` names.
    pub async fn post_as(
        &self,
        how: KeyHeader,
        key: &ApiKey,
        url: &str,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, SendError> {
        let client = self.client_for(key);
        let req = match self.parsed.get(url) {
            Some(u) => client.post(u),
            None => client.post(url),
        };
        let req = req.header(CONTENT_TYPE, "application/json").body(body);
        let sent = Self::with_key(req, how, key)?.send().await;
        self.through_route(key, sent)
    }

    /// GETs with the key in the header.
    pub async fn get(&self, key: &ApiKey, url: &str) -> Result<reqwest::Response, SendError> {
        self.get_as(KeyHeader::GoogApiKey, key, url).await
    }

    /// GETs with the key in the header `how` names.
    pub async fn get_as(
        &self,
        how: KeyHeader,
        key: &ApiKey,
        url: &str,
    ) -> Result<reqwest::Response, SendError> {
        let client = self.client_for(key);
        let req = match self.parsed.get(url) {
            Some(u) => client.get(u),
            None => client.get(url),
        };
        let sent = Self::with_key(req, how, key)?.send().await;
        self.through_route(key, sent)
    }
}

/// A 3xx is an error: the client follows none, and the caller must not read it as an answer.
fn no_redirect(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<reqwest::Response, SendError> {
    let resp = sent.map_err(|e| SendError::Failed(describe(e)))?;
    if !resp.status().is_redirection() {
        return Ok(resp);
    }
    let host = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .and_then(|l| resp.url().join(l).ok())
        .and_then(|u| u.host_str().map(|h| h.escape_debug().to_string()))
        .unwrap_or_else(|| "no host".to_owned());
    Err(SendError::Redirected {
        status: resp.status().as_u16(),
        host,
    })
}

/// A transport error in words, without the URL.
pub fn describe(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off"
    } else if e.is_request() {
        "the request failed"
    } else {
        "transport error"
    };
    let cause = std::error::Error::source(&e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    format!("{what}{cause}")
}
