//! `[serve]` and `[metrics]`: the rotating proxy and its Prometheus exporter.

use std::time::Duration;

use keyturn_core::serde_duration;
use serde::{Deserialize, Serialize};

/// A client token of the proxy: only its SHA-256 is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeToken {
    /// Who holds it.
    pub label: String,
    /// SHA-256 of the token, 64 hex digits (`keyturn serve token new` prints it).
    pub sha256: String,
}

/// `[serve]`: the rotating proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSettings {
    /// Where to listen.
    pub listen: String,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Largest file upload (`POST /upload/…/files`), streamed through, never held whole.
    pub max_upload_bytes: u64,
    /// Upstream calls in flight at once (a stream counts until it ends); more wait.
    pub max_in_flight: usize,
    /// Client connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a proxied request may wait for quota (the proxy's bound in place of
    /// `[rotation] max_wait`); past it the client gets 429 with `RetryInfo` at once. SDKs time
    /// out at about 60 s and retry, so a long wait only doubles the load.
    #[serde(with = "serde_duration")]
    pub max_queue_wait: Duration,
    /// How long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection stays open.
    #[serde(with = "serde_duration")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body, and to take an answer it has left
    /// untaken.
    #[serde(with = "serde_duration")]
    pub body_timeout: Duration,
    /// Client tokens (`[[serve.tokens]]`). Required to listen beyond loopback.
    pub tokens: Vec<ServeToken>,
    /// Admin tokens for the console and the admin API (`[[serve.admin_tokens]]`), never usable
    /// as client tokens nor the other way round. Without any, the console answers only this
    /// machine on loopback and is off beyond it.
    pub admin_tokens: Vec<ServeToken>,
    /// Whether every client token may use the files, cached contents and batches another client
    /// token created through the proxy (one team's tokens). Off by default: each is its
    /// creator's, and another client is answered as Gemini answers for another project's.
    pub share_resources: bool,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 20 * 1024 * 1024,
            // The Files API's own limit per file.
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            max_in_flight: 64,
            max_connections: 1024,
            max_queue_wait: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            tokens: Vec::new(),
            admin_tokens: Vec::new(),
            share_resources: false,
        }
    }
}

/// `[metrics]`: the Prometheus exporter (off unless an address is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where to serve `/metrics` (`--metrics-addr` overrides).
    pub addr: Option<std::net::SocketAddr>,
}
