//! What clients get back when a request fails: the proxy's own refusals ([`Problem`]) in the
//! dialect of the route they came in on — Gemini's `google.rpc.Status` on the native routes,
//! OpenAI's `{"error": {"message", "type", "param", "code"}}` on the OpenAI-compatible ones —
//! with messages that name neither pool keys nor their labels, and failures mapped to the status
//! an SDK retries right.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use keyturn_core::AcquireError;
use keyturn_gemini::{ErrorKind, GeminiError};
use serde_json::{Value, json};

use crate::ProxyState;

/// How long a client is told to wait when the proxy knows no better time (a model no key can
/// serve, the ledger unavailable): OpenAI clients expect `Retry-After` on every 429 and 503.
const DEFAULT_RETRY_SECS: u64 = 60;

/// A refusal the proxy writes itself.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    /// `google.rpc` status name (`RESOURCE_EXHAUSTED`, …), for Gemini's form.
    pub(crate) state: &'static str,
    pub(crate) message: String,
    /// When capacity returns, when the proxy knows: `RetryInfo` and `Retry-After`.
    pub(crate) retry_secs: Option<u64>,
}

impl Problem {
    pub(crate) fn new(status: StatusCode, state: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            state,
            message: message.into(),
            retry_secs: None,
        }
    }

    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_secs = Some(secs);
        self
    }
}

/// What a failed request answers: the proxy's own refusal, or an upstream answer that was the
/// request's fault, relayed as Gemini sent it (less any pool key).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    Problem(Problem),
    Relay { status: StatusCode, body: String },
}

impl From<Problem> for Answer {
    fn from(p: Problem) -> Self {
        Self::Problem(p)
    }
}

impl Answer {
    /// In Gemini's form, for the native routes.
    pub(crate) fn gemini(self) -> Response {
        let p = match self {
            Self::Relay { status, body } => return json_bytes(status, Bytes::from(body)),
            Self::Problem(p) => p,
        };
        let details = p
            .retry_secs
            .map(|s| {
                vec![
                    json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{s}s")}),
                ]
            })
            .unwrap_or_default();
        let mut r = gemini_error(p.status, p.state, &p.message, details);
        if let Some(s) = p.retry_secs {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }

    /// In OpenAI's form, for the OpenAI-compatible routes: `type` and `code` as OpenAI's own
    /// clients read them, and `Retry-After` on every 429 and 503.
    pub(crate) fn openai(self) -> Response {
        let p = match self {
            Self::Relay { status, body } => return json_bytes(status, Bytes::from(body)),
            Self::Problem(p) => p,
        };
        let (kind, code) = match p.status.as_u16() {
            401 => ("authentication_error", "invalid_api_key"),
            403 => ("permission_error", "permission_denied"),
            404 => ("invalid_request_error", "not_found"),
            429 => ("rate_limit_error", "rate_limit_exceeded"),
            500..=599 => ("server_error", "service_unavailable"),
            _ => ("invalid_request_error", "invalid_request"),
        };
        let body =
            json!({"error": {"message": p.message, "type": kind, "param": null, "code": code}});
        let mut r = json_bytes(p.status, Bytes::from(body.to_string()));
        if matches!(p.status.as_u16(), 429 | 503) {
            let secs = p.retry_secs.unwrap_or(DEFAULT_RETRY_SECS);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

/// A Gemini-format error.
pub(crate) fn gemini_error(
    status: StatusCode,
    state: &str,
    message: &str,
    details: Vec<Value>,
) -> Response {
    let mut error = json!({"code": status.as_u16(), "message": message, "status": state});
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    json_bytes(status, Bytes::from(json!({ "error": error }).to_string()))
}

pub(crate) fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

pub(crate) fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "Requested entity was not found.",
    )
}

pub(crate) fn invalid(message: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        format!("keyturn proxy: {message}"),
    )
}

/// What a client may read about a failure: no key, and no key label either (labels name the
/// pool's accounts; clients see neither).
pub(crate) fn client_message(e: &GeminiError) -> String {
    match e {
        GeminiError::Api(a) => format!(
            "Gemini answered {} {}: {}",
            a.status, a.status_text, a.message
        ),
        GeminiError::Transport { model, detail, .. } => {
            format!("no usable answer from Gemini for {model}: {detail}")
        }
        GeminiError::Quota(AcquireError::AllKeysDisabled { model, .. }) => {
            format!("every key of the pool is disabled for {model}")
        }
        GeminiError::Quota(AcquireError::Backend(_)) | GeminiError::Ledger(_) => {
            "the quota ledger is unavailable".to_owned()
        }
        GeminiError::RetriesExhausted {
            model,
            attempts,
            last,
            ..
        } => format!(
            "gave up on {model} after {attempts} attempts; last error: {}",
            client_message(last)
        ),
        other => other.to_string(),
    }
}

/// Maps a failed call to what the client gets.
pub(crate) fn failure(st: &ProxyState, e: &GeminiError) -> Answer {
    if let GeminiError::Api(a) = e
        && matches!(a.kind, ErrorKind::CallerFault | ErrorKind::Unverified)
    {
        // The request was at fault: the client sees Gemini's own answer, less any pool key.
        let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_REQUEST);
        return Answer::Relay {
            status,
            body: st.live().scrubber.redact(&a.body),
        };
    }
    let message = st
        .live()
        .scrubber
        .redact(&format!("keyturn proxy: {}", client_message(e)));
    match e {
        GeminiError::Invalid(_) => return invalid(&client_message(e)).into(),
        GeminiError::Redirected { .. } => {
            return Problem::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message).into();
        }
        _ => {}
    }
    let p = match e.quota() {
        Some(AcquireError::Exhausted { until_ms, .. }) => {
            let secs = ((until_ms - st.clock.now_ms()).max(0) as u64)
                .div_ceil(1000)
                .max(1);
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", message)
                .retry_after(secs)
        }
        Some(AcquireError::ModelUnavailable { .. }) => {
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", message)
        }
        Some(AcquireError::DemandTooLarge { .. }) => {
            Problem::new(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
        }
        _ => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message),
    };
    p.into()
}
