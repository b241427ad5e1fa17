//! The attempt loop: acquire → send → classify → settle, and retry by the error's kind.

use std::time::Duration;

use bytes::Bytes;
use keyturn_core::{Demand, KeyEntry, Lease, Outcome};
use rand::Rng;
use serde_json::Value;
use tracing::Instrument;

use super::send::{Sent, Upstream};
use super::stats::{WaitingForQuota, count};
use super::{Reply, RotatingCaller};
use crate::error::{ErrorKind, GeminiError};
use crate::wire::HasUsage;

/// What the loop ended with: a whole answer, or a stream that started (its lease still open).
pub(super) enum Attempt {
    Done(Reply),
    Streaming(
        reqwest::Response,
        Lease,
        KeyEntry,
        crate::metrics::Stopwatch,
    ),
}

impl RotatingCaller {
    /// Runs the loop for a whole answer.
    pub(super) async fn call_at(
        &self,
        model: &str,
        upstream: &Upstream,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError> {
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        match self.run(model, upstream, demand, bytes, false).await? {
            Attempt::Done(r) => Ok(r),
            Attempt::Streaming(..) => Err(GeminiError::Ledger("unexpected stream".into())),
        }
    }

    fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .retry
            .base_backoff
            .saturating_mul(1u32.checked_shl(n.min(20)).unwrap_or(u32::MAX))
            .min(self.retry.max_backoff);
        let ms = cap.as_millis() as u64;
        Duration::from_millis(if ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=ms)
        })
    }

    /// Counts, reports (metrics) and settles one request.
    pub(super) async fn settle(
        &self,
        lease: Lease,
        entry: &KeyEntry,
        model: &str,
        outcome: Outcome,
        output_tokens: Option<u64>,
        took: Duration,
    ) {
        count(&self.stats, lease.key(), &outcome);
        crate::metrics::record_request(entry, model, &outcome, output_tokens, Some(took));
        if let Err(e) = self.ledger.settle(lease, outcome).await {
            tracing::warn!(error = %e, "could not record a call's outcome in the quota ledger");
        }
    }
    /// The loop shared by calls and streams.
    pub(super) async fn run(
        &self,
        model: &str,
        upstream: &Upstream,
        demand: Demand,
        body: Bytes,
        stream: bool,
    ) -> Result<Attempt, GeminiError> {
        let method = upstream.method.as_str();
        let start = self.clock.now_ms();
        let deadline = start.saturating_add(self.retry.max_elapsed.as_millis() as i64);
        let mut transient = 0u32;
        let mut last: Option<GeminiError> = None;
        let mut attempts = 0;
        while attempts < self.retry.max_attempts.max(1) && self.clock.now_ms() <= deadline {
            attempts += 1;
            let waiting = crate::metrics::Stopwatch::start();
            let lease = {
                let _waiting = WaitingForQuota::new(&self.waiting_for_quota);
                self.ledger.acquire(model, demand).await?
            };
            // Read after the lease: a reload may have added the key it names since the call began.
            let keys = self.ledger.keys();
            let Some(entry) = keys.get(lease.key()) else {
                return Err(GeminiError::Ledger("a lease named an unknown key".into()));
            };
            crate::metrics::record_acquire_wait(entry, model, waiting.elapsed());
            let span = tracing::debug_span!(
                "gemini.call",
                model,
                method,
                key = %entry.label,
                attempt = attempts,
                outcome = tracing::field::Empty,
                retry = tracing::field::Empty,
            );
            let sending = crate::metrics::Stopwatch::start();
            let sent = self
                .send_once(entry, upstream, body.clone(), model, stream)
                .instrument(span.clone())
                .await;
            let took = sending.elapsed();
            let e = match sent {
                Sent::Body(raw, v) => {
                    let input_tokens = v.input_tokens();
                    span.record("outcome", "ok");
                    let outcome = Outcome::Success { input_tokens };
                    self.settle(lease, entry, model, outcome, v.output_tokens(), took)
                        .await;
                    return Ok(Attempt::Done(Reply {
                        body: v,
                        raw,
                        key: entry.label.clone(),
                        attempts,
                    }));
                }
                Sent::Stream(resp) => {
                    span.record("outcome", "streaming");
                    return Ok(Attempt::Streaming(resp, lease, entry.clone(), sending));
                }
                Sent::Failed(e) if e.kind() == ErrorKind::Unverified => {
                    self.verify(entry, lease.key(), &body, e).await
                }
                Sent::Failed(e) => e,
            };
            let outcome = e.outcome();
            span.record("outcome", crate::metrics::outcome_label(&outcome));
            self.settle(lease, entry, model, outcome, None, took).await;
            let retry = match e.kind() {
                ErrorKind::CallerFault | ErrorKind::NoCapacity(_) | ErrorKind::Internal => None,
                ErrorKind::Transient => Some("transient"),
                ErrorKind::Throttled(_) => Some("throttled"),
                ErrorKind::ModelUnavailable => Some("limit-0"),
                ErrorKind::ProjectOff => Some("project-off"),
                ErrorKind::DeadKey(_) | ErrorKind::ProjectDead(_) => Some("dead-key"),
                ErrorKind::Unverified => None,
            };
            if let Some(reason) = retry {
                span.record("retry", reason);
                crate::metrics::record_retry(model, reason);
            }
            // Upstream text (Gemini quotes clients back) is escaped: it must not write log lines.
            span.in_scope(|| tracing::debug!(kind = ?e.kind(), error = %e.to_string().escape_debug(), "attempt failed"));
            match e.kind() {
                ErrorKind::CallerFault
                | ErrorKind::NoCapacity(_)
                | ErrorKind::Unverified
                | ErrorKind::Internal => {
                    return Err(e);
                }
                ErrorKind::Transient => {
                    let wake = self
                        .clock
                        .now_ms()
                        .saturating_add(self.backoff(transient).as_millis() as i64);
                    transient += 1;
                    if wake > deadline {
                        last = Some(e);
                        break;
                    }
                    self.clock.sleep_until(wake).await;
                }
                // The ledger learned; the next acquire picks another key or waits for one.
                ErrorKind::Throttled(_)
                | ErrorKind::ModelUnavailable
                | ErrorKind::ProjectOff
                | ErrorKind::DeadKey(_)
                | ErrorKind::ProjectDead(_) => {}
            }
            last = Some(e);
        }
        Err(GeminiError::RetriesExhausted {
            model: model.to_owned(),
            attempts,
            elapsed_ms: (self.clock.now_ms() - start).max(0) as u64,
            last: Box::new(last.unwrap_or(GeminiError::Ledger("no attempt was made".into()))),
        })
    }
}
