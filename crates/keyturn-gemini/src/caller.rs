//! The rotated call: acquire a lease → send with its key → classify the answer → settle the lease
//! with real usage → on a refusal, retry on another key according to the error's kind.
//!
//! - Throttled, model unavailable, dead key: the ledger has learned; retry at once (it will pick
//!   another key, or wait for one, or say none is left).
//! - Transient: capped exponential backoff with full jitter, then retry.
//! - Caller fault: return the error; key health untouched.
//! - Bounded by attempts and by total time. Cancellation-safe: a dropped call drops its lease
//!   unsettled, which the ledger counts as sent; a lost half-open probe frees itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use keyturn_core::{Clock, Demand, KeyEntry, KeyId, Lease, Outcome, QuotaLedger};
use rand::Rng;
use serde_json::Value;
use tracing::Instrument;

use crate::check::{KeyCheck, check_key};
use crate::error::{ApiFailure, ErrorKind, GeminiError, classify, redact};
use crate::transport::{KeyHeader, OpenAiRoute, SendError, Transport};
use crate::wire::HasUsage;

/// Retry bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most attempts per call (keys tried, transient retries included).
    pub max_attempts: u32,
    /// Most time per call, waiting for capacity included.
    pub max_elapsed: Duration,
    /// First backoff after a transient failure.
    pub base_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            max_elapsed: Duration::from_secs(600),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// A successful call's answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// The response body.
    pub body: Value,
    /// The response body exactly as the server sent it (for pass-through).
    pub raw: Bytes,
    /// Label of the key that served it.
    pub key: String,
    /// Attempts it took.
    pub attempts: u32,
}

/// What one key did, as seen by this process's calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyCallStats {
    /// Key label.
    pub label: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// Requests sent.
    pub requests: u64,
    /// Answered with success.
    pub ok: u64,
    /// 429s by kind: per-minute, tokens, per-day, unspecified, limit-0.
    pub throttled: std::collections::BTreeMap<String, u64>,
    /// Transient failures.
    pub transient: u64,
    /// Refusals that disabled the key.
    pub dead: u64,
    /// Caller faults.
    pub caller_faults: u64,
    /// Input tokens Gemini counted on successes.
    pub input_tokens: u64,
}

/// A stream of response chunks.
pub type ChunkStream = BoxStream<'static, Result<Value, GeminiError>>;

/// The seam between services and the network, so each service's own logic can be tested alone.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait GeminiCall: Send + Sync + std::fmt::Debug {
    /// POSTs `body` to `models/{model}:{method}` through the rotation.
    async fn call(
        &self,
        model: &str,
        method: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError>;

    /// `streamGenerateContent?alt=sse` through the rotation: retries until a stream starts; the
    /// lease is settled when the stream ends (with the last chunk's usage).
    async fn stream(
        &self,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<ChunkStream, GeminiError>;

    /// POSTs an OpenAI-format body to Gemini's OpenAI-compatible surface
    /// (`openai/chat/completions`, `openai/embeddings`) through the same rotation, the key as
    /// `Authorization: Bearer`; settled with the answer's `usage.prompt_tokens`. `model` (from the
    /// body) names the quota scope; the body goes upstream as given.
    async fn call_openai(
        &self,
        route: OpenAiRoute,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError>;

    /// A streamed `openai/chat/completions` (the body says `"stream": true`) through the
    /// rotation: retries until a stream starts; each chunk is one JSON value, the terminating
    /// `[DONE]` ends the stream, and the lease is settled then with the last `usage` seen. A
    /// stream whose connection ends before `[DONE]` was cut short: its last item is an error and
    /// the lease is settled as a transient failure.
    async fn stream_openai(
        &self,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<ChunkStream, GeminiError>;

    /// POSTs `body` to a resource collection (`cachedContents`: creating a cache spends the
    /// model's input tokens) through the same rotation, the quota scope named by `model`; the
    /// path is validated ([`Transport::resource_url`]). Pin `demand` to a project to keep the
    /// call on its keys.
    async fn call_resource(
        &self,
        model: &str,
        path: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError>;

    /// A call that spends no generation quota (countTokens, GET models): any usable key.
    async fn call_unmetered(
        &self,
        url_path: &str,
        body: Option<Value>,
    ) -> Result<Reply, GeminiError>;

    /// The pool behind the calls.
    fn ledger(&self) -> Arc<dyn QuotaLedger>;

    /// Per-key statistics of this process's calls, in key order.
    fn stats(&self) -> Vec<KeyCallStats>;

    /// Calls waiting now for quota (inside the ledger's acquire): a gauge for the console.
    fn waiting_for_quota(&self) -> usize {
        0
    }
}

/// Counts a call as waiting for quota while it lives.
struct WaitingForQuota<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> WaitingForQuota<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for WaitingForQuota<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The Gemini implementation of [`GeminiCall`].
#[derive(Debug, Clone)]
pub struct RotatingCaller {
    ledger: Arc<dyn QuotaLedger>,
    transport: Transport,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    unmetered_cursor: Arc<std::sync::atomic::AtomicUsize>,
    /// Calls inside the ledger's acquire now.
    waiting_for_quota: Arc<std::sync::atomic::AtomicUsize>,
    stats: Arc<parking_lot::Mutex<Vec<KeyCallStats>>>,
    /// Recent probe answers per key (Unix ms, answer), so a burst of bare 403s probes once.
    probes: Arc<parking_lot::Mutex<HashMap<KeyId, (i64, KeyCheck)>>>,
}

/// How long a probe's answer about a key is reused.
pub const PROBE_TTL: Duration = Duration::from_secs(60);

enum Attempt {
    Done(Reply),
    Streaming(
        reqwest::Response,
        Lease,
        KeyEntry,
        crate::metrics::Stopwatch,
    ),
}

/// Where one call's attempts go: a validated URL, the header the key goes in, and the method's
/// name for logs.
struct Upstream {
    url: String,
    key_header: KeyHeader,
    method: String,
    /// Whether a whole stream ends with `data: [DONE]` (OpenAI's); Gemini's own streams end
    /// with the connection.
    ends_with_done: bool,
}

enum Sent {
    Body(Bytes, Value),
    Stream(reqwest::Response),
    Failed(GeminiError),
}

impl RotatingCaller {
    /// A caller over a pool.
    pub fn new(
        ledger: Arc<dyn QuotaLedger>,
        transport: Transport,
        retry: RetryPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let stats = ledger
            .keys()
            .iter()
            .map(|(_, e)| KeyCallStats {
                label: e.label.clone(),
                fingerprint: e.fingerprint().to_string(),
                ..KeyCallStats::default()
            })
            .collect();
        Self {
            ledger,
            transport,
            retry,
            clock,
            unmetered_cursor: Arc::default(),
            waiting_for_quota: Arc::default(),
            stats: Arc::new(parking_lot::Mutex::new(stats)),
            probes: Arc::default(),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
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
    async fn settle(
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

    async fn read_error(
        &self,
        resp: reqwest::Response,
        model: &str,
        entry: &KeyEntry,
    ) -> GeminiError {
        let status = resp.status().as_u16();
        let body = crate::body::read_error(resp, crate::body::MAX_ERROR_BYTES).await;
        let c = classify(status, &body);
        let key = entry.key.expose();
        GeminiError::Api(Box::new(ApiFailure {
            body: redact(&String::from_utf8_lossy(&body), key),
            status,
            status_text: c.status_text,
            message: redact(&c.message, entry.key.expose()),
            model: model.to_owned(),
            key: entry.label.clone(),
            kind: c.kind,
            retry_after: c.retry_after,
            quota_value: c.quota_value,
        }))
    }

    /// [`check_key`] for `entry`'s key, cached per key for [`PROBE_TTL`] so a burst of bare
    /// 403s probes once.
    async fn probe(&self, entry: &KeyEntry, id: KeyId) -> KeyCheck {
        let now = self.clock.now_ms();
        if let Some((at, p)) = self.probes.lock().get(&id).cloned()
            && now.saturating_sub(at) < PROBE_TTL.as_millis() as i64
        {
            return p;
        }
        let answer = check_key(&self.transport, &entry.key).await;
        tracing::debug!(key = %entry.label, ?answer, "probed a key after a 403 without a reason");
        self.probes
            .lock()
            .insert(id, (self.clock.now_ms(), answer.clone()));
        answer
    }

    /// Decides what a 403 without a reason was: the key is dead if the probe is refused too;
    /// if the key works, the request was at fault when it named a resource another project may
    /// own (a file, a cached content), else the model is off for this project.
    async fn verify(
        &self,
        entry: &KeyEntry,
        id: KeyId,
        body: &[u8],
        e: GeminiError,
    ) -> GeminiError {
        let GeminiError::Api(mut a) = e else {
            return e;
        };
        a.kind = match self.probe(entry, id).await {
            KeyCheck::Refused(reason) => ErrorKind::DeadKey(reason),
            KeyCheck::Alive if names_project_resource(body) => ErrorKind::CallerFault,
            KeyCheck::Alive => ErrorKind::ModelUnavailable,
            KeyCheck::Unknown(_) => ErrorKind::Transient,
        };
        GeminiError::Api(a)
    }

    /// One send with one key.
    async fn send_once(
        &self,
        entry: &KeyEntry,
        upstream: &Upstream,
        body: Bytes,
        model: &str,
        stream: bool,
    ) -> Sent {
        let transport_err = |detail: String| GeminiError::Transport {
            model: model.to_owned(),
            key: entry.label.clone(),
            detail,
        };
        let sent = self
            .transport
            .post_as(upstream.key_header, &entry.key, &upstream.url, body)
            .await;
        match sent {
            Err(detail @ SendError::Redirected { .. }) => Sent::Failed(GeminiError::Redirected {
                model: model.to_owned(),
                detail,
            }),
            Err(SendError::Failed(detail)) => Sent::Failed(transport_err(detail)),
            Ok(resp) if resp.status().is_success() => {
                if stream {
                    return Sent::Stream(resp);
                }
                match crate::body::read_answer(resp, crate::body::MAX_ANSWER_BYTES).await {
                    Err(detail) => Sent::Failed(transport_err(detail)),
                    Ok(b) => match serde_json::from_slice::<Value>(&b) {
                        Ok(v) => Sent::Body(b, v),
                        Err(e) => {
                            Sent::Failed(transport_err(format!("the answer was not JSON: {e}")))
                        }
                    },
                }
            }
            Ok(resp) => Sent::Failed(self.read_error(resp, model, entry).await),
        }
    }

    /// Where a native call goes: `models/{model}:{method}`, `?alt=sse` for a stream.
    fn native(&self, model: &str, method: &str, stream: bool) -> Result<Upstream, GeminiError> {
        let url = self.transport.model_url(model, method)?;
        Ok(Upstream {
            url: if stream {
                format!("{url}?alt=sse")
            } else {
                url
            },
            key_header: KeyHeader::GoogApiKey,
            method: method.to_owned(),
            ends_with_done: false,
        })
    }

    /// Where an OpenAI-compatible call goes: a fixed path, the key as a bearer token.
    fn openai(&self, route: OpenAiRoute) -> Upstream {
        Upstream {
            url: self.transport.openai_url(route),
            key_header: KeyHeader::Bearer,
            method: format!("openai/{}", route.path()),
            ends_with_done: true,
        }
    }

    /// The loop shared by calls and streams.
    async fn run(
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

#[async_trait]
impl GeminiCall for RotatingCaller {
    async fn call(
        &self,
        model: &str,
        method: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError> {
        let upstream = self.native(model, method, false)?;
        self.call_at(model, &upstream, demand, body).await
    }

    async fn stream(
        &self,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<ChunkStream, GeminiError> {
        let upstream = self.native(model, "streamGenerateContent", true)?;
        self.stream_at(model, &upstream, demand, body).await
    }

    async fn call_openai(
        &self,
        route: OpenAiRoute,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError> {
        let upstream = self.openai(route);
        self.call_at(model, &upstream, demand, body).await
    }

    async fn stream_openai(
        &self,
        model: &str,
        demand: Demand,
        body: Value,
    ) -> Result<ChunkStream, GeminiError> {
        let upstream = self.openai(OpenAiRoute::ChatCompletions);
        self.stream_at(model, &upstream, demand, body).await
    }

    async fn call_resource(
        &self,
        model: &str,
        path: &str,
        demand: Demand,
        body: Value,
    ) -> Result<Reply, GeminiError> {
        let upstream = Upstream {
            url: self.transport.resource_url(path)?,
            key_header: KeyHeader::GoogApiKey,
            method: path.to_owned(),
            ends_with_done: false,
        };
        self.call_at(model, &upstream, demand, body).await
    }

    async fn call_unmetered(
        &self,
        url_path: &str,
        body: Option<Value>,
    ) -> Result<Reply, GeminiError> {
        self.unmetered(url_path, body).await
    }

    fn ledger(&self) -> Arc<dyn QuotaLedger> {
        self.ledger.clone()
    }

    fn stats(&self) -> Vec<KeyCallStats> {
        self.stats.lock().clone()
    }

    fn waiting_for_quota(&self) -> usize {
        self.waiting_for_quota
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl RotatingCaller {
    async fn call_at(
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

    async fn stream_at(
        &self,
        model: &str,
        upstream: &Upstream,
        demand: Demand,
        body: Value,
    ) -> Result<ChunkStream, GeminiError> {
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let (resp, lease, entry, sending) =
            match self.run(model, upstream, demand, bytes, true).await? {
                Attempt::Streaming(resp, lease, entry, sending) => (resp, lease, entry, sending),
                Attempt::Done(r) => {
                    return Ok(futures::stream::once(async move { Ok(r.body) }).boxed());
                }
            };
        let events = eventsource_stream::Eventsource::eventsource(crate::body::bounded_events(
            resp.bytes_stream(),
            crate::body::MAX_EVENT_BYTES,
        ));
        let state = StreamState {
            stats: self.stats.clone(),
            events: events.boxed(),
            lease: Some(lease),
            ledger: self.ledger.clone(),
            input_tokens: None,
            output_tokens: None,
            model: model.to_owned(),
            entry,
            sending,
            ends_with_done: upstream.ends_with_done,
        };
        Ok(futures::stream::unfold(state, |mut st| async move {
            let lease = st.lease.take()?;
            // OpenAI's stream ends with `data: [DONE]`, Gemini's with the connection: either is
            // the end of a complete stream; an OpenAI stream whose connection ended first was
            // cut short.
            let next = st.events.next().await;
            let done = matches!(&next, Some(Ok(ev)) if ev.data.trim() == "[DONE]");
            let next = if done { None } else { next };
            match next {
                Some(Ok(ev)) => match serde_json::from_str::<Value>(&ev.data) {
                    Ok(v) => {
                        if let Some(t) = v.input_tokens() {
                            st.input_tokens = Some(t);
                        }
                        if let Some(t) = v.output_tokens() {
                            st.output_tokens = Some(t);
                        }
                        st.lease = Some(lease);
                        Some((Ok(v), st))
                    }
                    Err(e) => {
                        let err = st.broken(format!("a streamed chunk was not JSON: {e}"));
                        st.record(&lease, &Outcome::Transient);
                        st.ledger.settle(lease, Outcome::Transient).await.ok();
                        Some((Err(err), st))
                    }
                },
                Some(Err(e)) => {
                    let err = st.broken(format!("the stream broke off: {e}"));
                    st.record(&lease, &Outcome::Transient);
                    st.ledger.settle(lease, Outcome::Transient).await.ok();
                    Some((Err(err), st))
                }
                None if st.ends_with_done && !done => {
                    let err = st.broken("the stream ended without [DONE]".to_owned());
                    st.record(&lease, &Outcome::Transient);
                    st.ledger.settle(lease, Outcome::Transient).await.ok();
                    Some((Err(err), st))
                }
                None => {
                    let outcome = Outcome::Success {
                        input_tokens: st.input_tokens,
                    };
                    st.record(&lease, &outcome);
                    st.ledger.settle(lease, outcome).await.ok();
                    None
                }
            }
        })
        .boxed())
    }

    async fn unmetered(&self, url_path: &str, body: Option<Value>) -> Result<Reply, GeminiError> {
        let keys = self.ledger.keys();
        let (url, how) = self.transport.unmetered_url(url_path)?;
        // A key a reload removed takes no new request, metered or not; the attempts go to keys
        // that do (counted over the removed ones, a ring whose first keys were all removed
        // answered "no key" although the pool has keys).
        let active: Vec<keyturn_core::KeyId> = keys.active().map(|(id, _)| id).collect();
        let n = active.len();
        let start = self
            .unmetered_cursor
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        // Try each key once; a dead key is reported to the ledger like any other answer would be.
        for i in 0..n.min(self.retry.max_attempts.max(1) as usize) {
            let id = active[(start + i) % n];
            let Some(entry) = keys.get(id) else {
                continue;
            };
            let sent = match &body {
                Some(b) => {
                    let bytes = Bytes::from(serde_json::to_vec(b).unwrap_or_default());
                    self.transport.post_as(how, &entry.key, &url, bytes).await
                }
                None => self.transport.get_as(how, &entry.key, &url).await,
            };
            let err = match sent {
                Err(detail @ SendError::Redirected { .. }) => GeminiError::Redirected {
                    model: url_path.to_owned(),
                    detail,
                },
                Err(SendError::Failed(detail)) => GeminiError::Transport {
                    model: url_path.to_owned(),
                    key: entry.label.clone(),
                    detail,
                },
                Ok(resp) if resp.status().is_success() => {
                    let b = crate::body::read_answer(resp, crate::body::MAX_ANSWER_BYTES)
                        .await
                        .map_err(|detail| GeminiError::Transport {
                            model: url_path.to_owned(),
                            key: entry.label.clone(),
                            detail,
                        })?;
                    let v = serde_json::from_slice(&b).map_err(|e| GeminiError::Transport {
                        model: url_path.to_owned(),
                        key: entry.label.clone(),
                        detail: format!("the answer was not JSON: {e}"),
                    })?;
                    return Ok(Reply {
                        body: v,
                        raw: b,
                        key: entry.label.clone(),
                        attempts: i as u32 + 1,
                    });
                }
                Ok(resp) => self.read_error(resp, url_path, entry).await,
            };
            // A bare 403 here blames no key either: unmetered calls settle nothing.
            if matches!(err.kind(), ErrorKind::CallerFault | ErrorKind::Unverified) {
                return Err(err);
            }
            last = Some(err);
        }
        Err(last.unwrap_or(GeminiError::Ledger("no key to call with".into())))
    }
}

/// Whether a request body names something that belongs to one project: a file
/// (`fileData.fileUri`) or a cached content. Such a request fails with a bare 403 on a key of
/// another project, which says nothing about that key.
fn names_project_resource(body: &[u8]) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| {
                matches!(
                    k.as_str(),
                    "fileUri" | "file_uri" | "cachedContent" | "cached_content"
                ) && v.as_str().is_some_and(|s| !s.is_empty())
                    || walk(v)
            }),
            Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    serde_json::from_slice::<Value>(body).is_ok_and(|v| walk(&v))
}

struct StreamState {
    stats: Arc<parking_lot::Mutex<Vec<KeyCallStats>>>,
    events: BoxStream<
        'static,
        Result<
            eventsource_stream::Event,
            eventsource_stream::EventStreamError<crate::body::EventTooLarge<reqwest::Error>>,
        >,
    >,
    lease: Option<Lease>,
    ledger: Arc<dyn QuotaLedger>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    model: String,
    entry: KeyEntry,
    sending: crate::metrics::Stopwatch,
    /// Whether only `data: [DONE]` ends the stream whole.
    ends_with_done: bool,
}

impl StreamState {
    fn broken(&self, detail: String) -> GeminiError {
        GeminiError::Transport {
            model: self.model.clone(),
            key: self.entry.label.clone(),
            detail,
        }
    }

    /// Counts and reports the stream's request, as the call loop does for a call; the caller
    /// then settles the lease.
    fn record(&self, lease: &Lease, outcome: &Outcome) {
        count(&self.stats, lease.key(), outcome);
        let output = matches!(outcome, Outcome::Success { .. })
            .then_some(self.output_tokens)
            .flatten();
        crate::metrics::record_request(
            &self.entry,
            &self.model,
            outcome,
            output,
            Some(self.sending.elapsed()),
        );
    }
}

/// Adds one request's outcome to a key's statistics.
fn count(
    stats: &parking_lot::Mutex<Vec<KeyCallStats>>,
    key: keyturn_core::KeyId,
    outcome: &Outcome,
) {
    let mut all = stats.lock();
    let Some(s) = all.get_mut(key.index()) else {
        return;
    };
    s.requests += 1;
    match outcome {
        Outcome::Success { input_tokens } => {
            s.ok += 1;
            s.input_tokens += input_tokens.unwrap_or(0);
        }
        Outcome::Throttled { kind, .. } => {
            let k = match kind {
                keyturn_core::ThrottleKind::RequestsPerMinute => "per-minute",
                keyturn_core::ThrottleKind::TokensPerMinute => "tokens",
                keyturn_core::ThrottleKind::RequestsPerDay => "per-day",
                keyturn_core::ThrottleKind::TokensPerDay => "tokens-per-day",
                keyturn_core::ThrottleKind::Unspecified => "unspecified",
            };
            *s.throttled.entry(k.to_owned()).or_default() += 1;
        }
        Outcome::ModelUnavailable => *s.throttled.entry("limit-0".to_owned()).or_default() += 1,
        Outcome::ProjectOff => {
            *s.throttled.entry("project-off".to_owned()).or_default() += 1;
        }
        Outcome::KeyDead(_) | Outcome::ProjectDead(_) => s.dead += 1,
        Outcome::Transient => s.transient += 1,
        Outcome::CallerFault => s.caller_faults += 1,
    }
}
