//! The HTTP transport: one pooled reqwest client (rustls, HTTP/2 where offered), connect and
//! total timeouts, a base URL without a version segment (like google-genai's `base_url`), and the
//! key only in the `x-goog-api-key` header, marked sensitive. Never `?key=`: URLs end up in logs.

use std::time::Duration;

use keyturn_core::ApiKey;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};

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

/// Sends requests to Gemini (or anything that speaks its API).
#[derive(Debug, Clone)]
pub struct Transport {
    client: reqwest::Client,
    base: String,
}

impl Transport {
    /// A transport.
    pub fn new(cfg: &TransportConfig) -> Result<Self, reqwest::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("keyturn/", env!("CARGO_PKG_VERSION"))),
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        let base = format!(
            "{}/{}",
            cfg.base_url.trim_end_matches('/'),
            cfg.api_version.trim_matches('/')
        );
        Ok(Self { client, base })
    }

    /// `{base}/{version}/models/{model}:{method}`.
    pub fn model_url(&self, model: &str, method: &str) -> String {
        let model = model.strip_prefix("models/").unwrap_or(model);
        format!("{}/models/{model}:{method}", self.base)
    }

    /// `{base}/{version}/{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    fn key_header(key: &ApiKey) -> Result<HeaderValue, String> {
        let mut v = HeaderValue::from_str(key.expose())
            .map_err(|_| format!("key {} cannot be sent in a header", key.fingerprint()))?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// POSTs a JSON body with the key in the header.
    pub async fn post(
        &self,
        key: &ApiKey,
        url: &str,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, String> {
        let header = Self::key_header(key)?;
        self.client
            .post(url)
            .header("x-goog-api-key", header)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(describe)
    }

    /// GETs with the key in the header.
    pub async fn get(&self, key: &ApiKey, url: &str) -> Result<reqwest::Response, String> {
        let header = Self::key_header(key)?;
        self.client
            .get(url)
            .header("x-goog-api-key", header)
            .send()
            .await
            .map_err(describe)
    }
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
