//! Warnings delivered to a webhook: a bounded queue that never blocks the caller, one worker that
//! POSTs each warning as JSON and retries with exponential backoff on network errors, 429 and
//! 5xx. A warning never carries a key; the webhook URL itself (which often holds a token) is
//! never logged, only its host.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::NotifySettings;

/// Version of the webhook payload; bumped only for incompatible changes.
pub const PAYLOAD_VERSION: u32 = 1;

/// One warning, as logged and as POSTed (see docs/CONFIG.md, `[notify]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Always `"keyturn"`.
    pub source: &'static str,
    /// [`PAYLOAD_VERSION`].
    pub version: u32,
    /// `quota_threshold`, `key_disabled`, `model_exhausted` or `key_reenabled`.
    pub event: &'static str,
    /// `warning` (a threshold below 100 %), `critical`, or `info` (a key back in the pool).
    pub severity: &'static str,
    /// When it was noticed (RFC 3339, UTC).
    pub at: String,
    /// The Pacific quota day it belongs to (it fires once per day).
    pub day: String,
    /// Project, for scope warnings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Model, for scope and model warnings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// For `quota_threshold`: which daily limit, `requests` or `input_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<&'static str>,
    /// The threshold crossed, in percent of that daily limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_pct: Option<u8>,
    /// Requests (or input tokens, for `metric = "input_tokens"`) used today in the scope: what
    /// the daily limit is counted against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// Of `used`, the requests Gemini served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served: Option<u64>,
    /// Of `used`, the requests Gemini refused on quota or access grounds (429s, a model or
    /// project switched off, a dead key); the rest failed otherwise or are in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
    /// The scope's daily limit (of `metric`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Key label, for key warnings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Key fingerprint, for key warnings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Why the key was disabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When capacity returns (RFC 3339), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// One line for people.
    pub message: String,
}

/// Delivery counters.
#[derive(Debug, Default)]
pub struct NotifyStats {
    /// Warnings the webhook accepted.
    pub delivered: AtomicU64,
    /// POSTs that failed and were retried or given up.
    pub failed_attempts: AtomicU64,
    /// Warnings given up on (attempts exhausted, a 4xx, or the queue full).
    pub dropped: AtomicU64,
}

/// The webhook sender.
#[derive(Debug)]
pub struct Notifier {
    tx: mpsc::Sender<Warning>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<NotifyStats>,
}

impl Notifier {
    /// Starts the worker for `url`.
    pub fn spawn(url: String, settings: &NotifySettings) -> Result<Self, reqwest::Error> {
        // A webhook that redirects is misconfigured; following it would post the warning (and
        // anything added to it later) to a host nobody configured.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .user_agent(concat!("keyturn/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (tx, mut rx) = mpsc::channel::<Warning>(settings.queue);
        let stats = Arc::new(NotifyStats::default());
        let st = stats.clone();
        let attempts = settings.max_attempts.max(1);
        let host = reqwest::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "the webhook".into());
        let task = tokio::spawn(async move {
            while let Some(w) = rx.recv().await {
                deliver(&client, &url, &host, &w, attempts, &st).await;
            }
        });
        Ok(Self { tx, task, stats })
    }

    /// Queues a warning; never waits. A full queue drops it (it is in the log already).
    pub fn send(&self, w: Warning) {
        if let Err(e) = self.tx.try_send(w) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            let w = match e {
                mpsc::error::TrySendError::Full(w) | mpsc::error::TrySendError::Closed(w) => w,
            };
            tracing::warn!(event = w.event, "webhook queue full: warning not delivered");
        }
    }

    /// Delivery counters.
    pub fn stats(&self) -> &Arc<NotifyStats> {
        &self.stats
    }

    /// Delivers what is queued, waiting at most `bound`, then stops.
    pub async fn shutdown(self, bound: Duration) {
        drop(self.tx);
        let mut task = self.task;
        if tokio::time::timeout(bound, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                "gave up delivering queued warnings to the webhook after {:?}",
                bound
            );
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    host: &str,
    w: &Warning,
    attempts: u32,
    stats: &NotifyStats,
) {
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=attempts {
        let result = client.post(url).json(w).send().await;
        let retry = match &result {
            Ok(r) if r.status().is_success() => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(r) => {
                let s = r.status();
                s.is_server_error() || s == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            Err(_) => true,
        };
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let what = match &result {
            Ok(r) => format!("answered {}", r.status().as_u16()),
            Err(e) if e.is_timeout() => "timed out".to_owned(),
            Err(_) => "could not be reached".to_owned(),
        };
        if !retry || attempt == attempts {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                event = w.event,
                host,
                attempt,
                "webhook {what}: warning not delivered"
            );
            return;
        }
        tracing::debug!(event = w.event, host, attempt, "webhook {what}; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn w(n: u64) -> Warning {
        let mut w = crate::monitor::warning("quota_threshold", false, 0, String::new());
        w.used = Some(n);
        w
    }

    /// A webhook that never answers cannot hold anything up: sending returns at once and a full
    /// queue drops (and counts) what does not fit.
    #[tokio::test(flavor = "current_thread")]
    async fn a_stuck_webhook_never_blocks_the_sender() {
        // Accepts connections and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let settings = NotifySettings {
            queue: 2,
            timeout: Duration::from_secs(3600),
            ..NotifySettings::default()
        };
        let n = Notifier::spawn(url, &settings).unwrap();
        // On a current-thread runtime the worker has not even run: the queue holds 2.
        for i in 0..10 {
            n.send(w(i));
        }
        assert_eq!(n.stats().dropped.load(Ordering::Relaxed), 8);
        assert_eq!(n.stats().delivered.load(Ordering::Relaxed), 0);
        let stats = n.stats().clone();
        n.shutdown(Duration::from_millis(50)).await;
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
        drop(listener);
    }
}
