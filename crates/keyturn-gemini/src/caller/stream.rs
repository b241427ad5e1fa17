//! A started stream, read to its end: usage taken from its chunks, its lease settled when it
//! ends whole or breaks off.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use keyturn_core::{Demand, KeyEntry, Lease, Outcome, QuotaLedger};
use serde_json::Value;

use super::run::Attempt;
use super::send::Upstream;
use super::stats::count;
use super::{ChunkStream, KeyCallStats, RotatingCaller};
use crate::error::GeminiError;
use crate::wire::HasUsage;

impl RotatingCaller {
    pub(super) async fn stream_at(
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
