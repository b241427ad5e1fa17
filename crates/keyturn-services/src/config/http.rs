//! `[http]`: the base URL, timeouts and the egress proxy (whose password never reaches a log).

use std::time::Duration;

use keyturn_core::serde_duration;
use serde::{Deserialize, Serialize};

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Base URL without version (`GEMINI_BASE_URL`).
    pub base_url: String,
    /// `v1beta` or `v1`.
    pub api_version: String,
    /// Connect timeout.
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Request timeout.
    #[serde(with = "serde_duration")]
    pub request_timeout: Duration,
    /// The egress route of every key without its own (`[[keys]] proxy`); none: straight out
    /// (or through `HTTPS_PROXY`/`ALL_PROXY`, which reqwest honours).
    #[serde(default, skip_serializing)]
    pub proxy: Option<ProxyUrl>,
}

/// An egress proxy URL as configured. It may hold a password, so `Debug` shows only scheme,
/// host and port (or that it does not parse).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ProxyUrl(String);

impl ProxyUrl {
    /// The URL as written, for the one place that builds the route from it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match keyturn_gemini::EgressRoute::parse(&self.0) {
            Ok(r) => write!(f, "ProxyUrl({r})"),
            Err(_) => f.write_str("ProxyUrl(not a URL)"),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = keyturn_gemini::TransportConfig::default();
        Self {
            base_url: d.base_url,
            api_version: d.api_version,
            connect_timeout: d.connect_timeout,
            request_timeout: d.request_timeout,
            proxy: None,
        }
    }
}
