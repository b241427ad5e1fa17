//! What a reload replaces ([`Live`]), what asks for one ([`Reload`]) and what the console
//! shows of the last one ([`LastReload`]).

use std::sync::Arc;

use keyturn_core::{QuotaLedger, Scrubber};
use keyturn_gemini::GeminiCall;

/// What a reload replaces: the pool (callers and ledger), the tokens, and the scrubber that
/// knows the pool's keys. A request reads it once, when it starts, and keeps that copy.
#[derive(Debug)]
pub(crate) struct Live {
    /// Caller per API version: v1beta, v1.
    pub(crate) v1beta: Arc<dyn GeminiCall>,
    pub(crate) v1: Arc<dyn GeminiCall>,
    pub(crate) ledger: Arc<dyn QuotaLedger>,
    /// Client tokens: (label, SHA-256 digest).
    pub(crate) tokens: Vec<(String, [u8; 32])>,
    /// Admin tokens: (label, SHA-256 digest).
    pub(crate) admin_tokens: Vec<(String, [u8; 32])>,
    /// `[serve] share_resources`: every client may use every client's files, caches, batches.
    pub(crate) share_resources: bool,
    /// Finds the pool's keys in answers relayed byte for byte.
    pub(crate) scrubber: Scrubber,
}

impl Live {
    pub(crate) fn new(
        v1beta: Arc<dyn GeminiCall>,
        v1: Arc<dyn GeminiCall>,
        ledger: Arc<dyn QuotaLedger>,
        tokens: Vec<(String, [u8; 32])>,
        admin_tokens: Vec<(String, [u8; 32])>,
        share_resources: bool,
    ) -> Self {
        // Retired keys too: an answer to a request they still have in flight is scrubbed.
        let keys = ledger.keys();
        let scrubber = Scrubber::new(keys.iter().map(|(_, e)| &e.key));
        Self {
            v1beta,
            v1,
            ledger,
            tokens,
            admin_tokens,
            share_resources,
            scrubber,
        }
    }
}

/// A new configuration for a running proxy (`keyturn serve` builds it on SIGHUP or when its
/// files change): callers over the reloaded pool, and the tokens. What it changed, by label,
/// is shown as the last reload.
#[derive(Debug)]
pub struct Reload {
    /// Caller for `/v1beta/`.
    pub v1beta: Arc<dyn GeminiCall>,
    /// Caller for `/v1/`.
    pub v1: Arc<dyn GeminiCall>,
    /// The ledger both callers share.
    pub ledger: Arc<dyn QuotaLedger>,
    /// Client tokens: (label, SHA-256 digest).
    pub tokens: Vec<(String, [u8; 32])>,
    /// Admin tokens: (label, SHA-256 digest).
    pub admin_tokens: Vec<(String, [u8; 32])>,
    /// Whether every client may use every client's files, caches and batches
    /// ([`crate::ProxyConfig::share_resources`]).
    pub share_resources: bool,
}

/// The last reload, as `/admin/status` and the console show it: when, whether it took, and
/// what changed (labels and counts, never keys).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LastReload {
    /// When (Unix ms).
    pub at_ms: i64,
    /// What asked for it: `signal` (SIGHUP) or `file` (a watched file changed).
    pub trigger: &'static str,
    /// Whether the new configuration took; when not, the old one stays.
    pub ok: bool,
    /// Why it was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Keys that take requests after it.
    pub keys: usize,
    /// Keys that joined, left (finishing what they have in flight) and changed, by label.
    #[serde(flatten)]
    pub change: keyturn_core::RingChange,
    /// Client and admin tokens after it.
    pub tokens: usize,
    /// Admin tokens after it.
    pub admin_tokens: usize,
}
