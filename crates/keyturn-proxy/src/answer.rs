//! What clients get back: Gemini's own error shape for every refusal, with messages that name
//! neither pool keys nor their labels, and failures mapped to the status an SDK retries right.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use keyturn_core::AcquireError;
use keyturn_gemini::{ErrorKind, GeminiError};
use serde_json::{Value, json};

use crate::ProxyState;

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

pub(crate) fn not_found() -> Response {
    gemini_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "Requested entity was not found.",
        vec![],
    )
}

pub(crate) fn invalid(message: &str) -> Response {
    gemini_error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        &format!("keyturn proxy: {message}"),
        vec![],
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
pub(crate) fn failure(st: &ProxyState, e: &GeminiError) -> Response {
    if let GeminiError::Api(a) = e
        && matches!(a.kind, ErrorKind::CallerFault | ErrorKind::Unverified)
    {
        // The request was at fault: the client sees Gemini's own answer, less any pool key.
        let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_REQUEST);
        return json_bytes(status, Bytes::from(st.scrubber.redact(&a.body)));
    }
    let message = st
        .scrubber
        .redact(&format!("keyturn proxy: {}", client_message(e)));
    match e {
        GeminiError::Invalid(_) => return invalid(&client_message(e)),
        GeminiError::Redirected { .. } => {
            return gemini_error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &message, vec![]);
        }
        _ => {}
    }
    match e.quota() {
        Some(AcquireError::Exhausted { until_ms, .. }) => {
            let secs = ((until_ms - st.clock.now_ms()).max(0) as u64)
                .div_ceil(1000)
                .max(1);
            gemini_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                &message,
                vec![
                    json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{secs}s")}),
                ],
            )
        }
        Some(AcquireError::ModelUnavailable { .. }) => gemini_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            &message,
            vec![],
        ),
        Some(AcquireError::DemandTooLarge { .. }) => gemini_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            &message,
            vec![],
        ),
        _ => gemini_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            &message,
            vec![],
        ),
    }
}
