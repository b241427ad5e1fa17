//! What every upstream route does with a request before it goes upstream: the body read under
//! its cap and its timeout, the bound on its JSON values, the input tokens it reserves, and an
//! upstream-call slot.

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use keyturn_gemini::wire::estimate_input_tokens;
use serde_json::{Value, json};

use crate::answer::Problem;
use crate::{ProxyState, Refusal, admin};

pub(crate) fn text_bytes(v: &Value) -> (u64, u64) {
    // (bytes of text, parts) under contents/systemInstruction (either spelling).
    let mut bytes = 0u64;
    let mut parts = 0u64;
    let mut visit = |c: &Value| {
        for p in c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            parts += 1;
            bytes += p
                .get("text")
                .and_then(Value::as_str)
                .map_or(0, |t| t.len() as u64);
        }
    };
    for c in v
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        visit(c);
    }
    for k in ["systemInstruction", "system_instruction"] {
        if let Some(c) = v.get(k) {
            visit(c);
        }
    }
    (bytes, parts)
}

/// Input tokens to reserve for a generate request (the pool's one rule).
pub(crate) fn estimate(v: &Value) -> u64 {
    let (bytes, parts) = text_bytes(v);
    estimate_input_tokens(bytes, parts)
}

/// Input tokens to reserve for one embedding item, as keyturn-embeddings reserves them.
pub(crate) fn embed_tokens(item: &Value) -> u64 {
    let content = item.get("content").cloned().unwrap_or(Value::Null);
    let (bytes, _) = text_bytes(&json!({"contents": [content]}));
    estimate_input_tokens(bytes, 0)
}

/// An upstream-call slot (`max_in_flight`), for every route that calls upstream.
pub(crate) async fn slot(st: &ProxyState) -> Result<tokio::sync::OwnedSemaphorePermit, Refusal> {
    let _waiting = admin::Waiting::new(&st.admin.waiting_slot);
    st.in_flight.clone().acquire_owned().await.map_err(|_| {
        // Closed at shutdown: a request still waiting for a slot is told at once to come back
        // (to this proxy once it restarts, or to another replica) rather than dropped unanswered
        // when the drain ends.
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "keyturn proxy is shutting down; retry shortly",
        )
        .retry_after(SHUTDOWN_RETRY_SECS)
        .into()
    })
}

/// What a request refused at shutdown is told to wait.
const SHUTDOWN_RETRY_SECS: u64 = 5;

/// Reads a request body under the size cap and the body timeout.
pub(crate) async fn read_body(st: &ProxyState, body: Body) -> Result<Bytes, Refusal> {
    let limit = st.max_body_bytes;
    match tokio::time::timeout(st.body_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID_ARGUMENT",
            format!(
                "keyturn proxy: the request body is larger than {limit} bytes ([serve] max_body_bytes)"
            ),
        )
        .into()),
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "DEADLINE_EXCEEDED",
            "keyturn proxy: the request body did not arrive in time ([serve] body_timeout)",
        )
        .into()),
    }
}

/// Most JSON values a request body may hold: one per 32 bytes of the body cap, at least 65,536.
/// A parsed value costs 32 bytes and more, so the parsed body stays near the size of the cap;
/// a body of tiny values (`[0,0,0,…]`) would otherwise cost 16 to 32 times its size, before any
/// in-flight slot is taken. Ordinary requests hold a few values per part or turn.
pub(crate) fn max_json_values(max_body_bytes: usize) -> usize {
    (max_body_bytes / 32).max(65_536)
}

/// About how many values a JSON text holds: its `[`, `{`, `,` and `:` outside strings (an upper
/// bound, within one, of values plus keys), in one pass and no allocation.
pub(crate) fn json_values(body: &[u8]) -> usize {
    let mut n = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' | b',' | b':' => n += 1,
                _ => {}
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_read_both_spellings() {
        let v = json!({"contents": [{"parts": [{"text": "abcdef"}]}], "system_instruction": {"parts": [{"text": "abc"}]}});
        assert_eq!(estimate(&v), 3 + 8);
    }
}
