//! One send with one key, and where a call's sends go.

use bytes::Bytes;
use keyturn_core::KeyEntry;
use serde_json::Value;

use super::RotatingCaller;
use crate::error::{ApiFailure, GeminiError, classify, redact};
use crate::transport::{KeyHeader, OpenAiRoute, SendError};

/// Where one call's attempts go: a validated URL, the header the key goes in, and the method's
/// name for logs.
pub(super) struct Upstream {
    pub(super) url: String,
    pub(super) key_header: KeyHeader,
    pub(super) method: String,
    /// Whether a whole stream ends with `data: [DONE]` (OpenAI's); Gemini's own streams end
    /// with the connection.
    pub(super) ends_with_done: bool,
}

pub(super) enum Sent {
    Body(Bytes, Value),
    Stream(reqwest::Response),
    Failed(GeminiError),
}

impl RotatingCaller {
    pub(super) async fn read_error(
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
    /// One send with one key.
    pub(super) async fn send_once(
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
    pub(super) fn native(
        &self,
        model: &str,
        method: &str,
        stream: bool,
    ) -> Result<Upstream, GeminiError> {
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
    pub(super) fn openai(&self, route: OpenAiRoute) -> Upstream {
        Upstream {
            url: self.transport.openai_url(route),
            key_header: KeyHeader::Bearer,
            method: format!("openai/{}", route.path()),
            ends_with_done: true,
        }
    }
}
