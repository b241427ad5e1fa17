//! Gemini's error bodies, as the real service sends them (google.rpc.Status in proto3 JSON:
//! int64 values such as `quotaValue` are strings, and a zero value is left out).

use serde_json::{Value, json};

use crate::corpus::{self, Names};

/// An HTTP status with a Gemini error body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

fn status_body(code: u16, status: &str, message: &str, details: Vec<Value>) -> ApiError {
    let mut error = json!({ "code": code, "message": message, "status": status });
    if !details.is_empty() {
        error["details"] = Value::Array(details);
    }
    ApiError {
        status: code,
        body: json!({ "error": error }),
    }
}

const RATE_LIMITS_URL: &str = "https://ai.google.dev/gemini-api/docs/rate-limits";

/// Which quota a 429 is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Requests per minute.
    PerMinute,
    /// Input tokens per minute.
    Tokens,
    /// Requests per day.
    PerDay,
}

fn quota_ids(kind: QuotaKind, embedding: bool) -> (&'static str, &'static str) {
    match (kind, embedding) {
        (QuotaKind::PerMinute, false) => (
            "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        ),
        (QuotaKind::PerDay, false) => (
            "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        ),
        (QuotaKind::Tokens, false) => (
            "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
            "GenerateContentInputTokensPerModelPerMinute-FreeTier",
        ),
        (QuotaKind::PerMinute, true) => (
            "generativelanguage.googleapis.com/embed_content_free_tier_requests",
            "EmbedContentRequestsPerMinutePerUserPerProjectPerModel-FreeTier",
        ),
        (QuotaKind::PerDay, true) => (
            "generativelanguage.googleapis.com/embed_content_free_tier_requests",
            "EmbedContentRequestsPerDayPerUserPerProjectPerModel-FreeTier",
        ),
        (QuotaKind::Tokens, true) => (
            "generativelanguage.googleapis.com/embed_content_free_tier_input_token_count",
            "EmbedContentInputTokensPerModelPerMinute-FreeTier",
        ),
    }
}

fn help() -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [{ "description": "Learn more about Gemini API quotas", "url": RATE_LIMITS_URL }]
    })
}

fn violation(kind: QuotaKind, embedding: bool, model: &str, limit: u64) -> Value {
    let (metric, id) = quota_ids(kind, embedding);
    let mut v = json!({
        "quotaMetric": metric,
        "quotaId": id,
        "quotaDimensions": { "location": "global", "model": model },
    });
    if limit != 0 {
        v["quotaValue"] = Value::String(limit.to_string());
    }
    v
}

/// The 2026 wording: the usage link is `ai.dev/rate-limit`, one line per violated quota, and the
/// delay to the nanosecond (the RetryInfo detail truncates it to whole seconds).
fn exceeded_message(lines: &[(&str, u64)], model: &str, retry_ms: u64) -> String {
    let mut m = format!(
        "You exceeded your current quota, please check your plan and billing details. For more \
         information on this error, head to: {RATE_LIMITS_URL}. To monitor your current usage, \
         head to: https://ai.dev/rate-limit. "
    );
    for (metric, limit) in lines {
        m.push_str(&format!(
            "\n* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}"
        ));
    }
    m.push_str(&format!(
        "\nPlease retry in {}.{:03}000000s.",
        retry_ms / 1000,
        retry_ms % 1000
    ));
    m
}

/// RetryInfo as the real service writes it: whole seconds, truncated ("41.065029449s" → "41s").
fn retry_info(retry_ms: u64) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": format!("{}s", retry_ms / 1000)
    })
}

/// 429 RESOURCE_EXHAUSTED with Help, QuotaFailure and RetryInfo, in that order, as 2026 bodies
/// have them (corpus `real-00`, `real-02`, `real-14`; QuotaFailure first is the older order of
/// `real-01`). A per-day refusal still carries a short retryDelay, as the real service's does.
pub fn quota_exceeded(
    kind: QuotaKind,
    embedding: bool,
    model: &str,
    limit: u64,
    retry_ms: u64,
) -> ApiError {
    let (metric, _) = quota_ids(kind, embedding);
    status_body(
        429,
        "RESOURCE_EXHAUSTED",
        &exceeded_message(&[(metric, limit)], model, retry_ms),
        vec![
            help(),
            json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [violation(kind, embedding, model, limit)]
            }),
            retry_info(retry_ms),
        ],
    )
}

/// 429 for a model the project has no access to (`limit: 0`, like corpus `real-05`): every quota
/// is violated, none has a value (proto3 leaves the zero out), and the message has a line for each.
pub fn limit_zero(embedding: bool, model: &str) -> ApiError {
    let kinds = [QuotaKind::PerDay, QuotaKind::PerMinute, QuotaKind::Tokens];
    let lines: Vec<(&str, u64)> = kinds
        .iter()
        .map(|k| (quota_ids(*k, embedding).0, 0))
        .collect();
    let retry_ms = 20_000;
    status_body(
        429,
        "RESOURCE_EXHAUSTED",
        &exceeded_message(&lines, model, retry_ms),
        vec![
            help(),
            json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": kinds.iter().map(|k| violation(*k, embedding, model, 0)).collect::<Vec<_>>()
            }),
            retry_info(retry_ms),
        ],
    )
}

/// A 429 with no details at all.
pub fn bare_429() -> ApiError {
    status_body(
        429,
        "RESOURCE_EXHAUSTED",
        "Resource has been exhausted (e.g. check quota).",
        vec![],
    )
}

fn error_info(reason: &str, metadata: Value) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": metadata
    })
}

fn localized(message: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "en-US",
        "message": message
    })
}

/// 400 API_KEY_INVALID (corpus `real-17`).
pub fn key_invalid() -> ApiError {
    corpus::render("real-17", &Names::default())
}

/// 400 API_KEY_INVALID for an expired key.
pub fn key_expired() -> ApiError {
    let m = "API key expired. Please renew the API key.";
    status_body(
        400,
        "INVALID_ARGUMENT",
        m,
        vec![
            error_info(
                "API_KEY_INVALID",
                json!({ "service": "generativelanguage.googleapis.com" }),
            ),
            localized(m),
        ],
    )
}

/// 403 for a key reported as leaked (corpus `real-24`: no details at all).
pub fn key_leaked() -> ApiError {
    corpus::render("real-24", &Names::default())
}

/// 403 CONSUMER_SUSPENDED. Like the real service, the message names the consumer — the key
/// itself — so a client that logs server messages verbatim leaks it; tests rely on that.
pub fn key_suspended(key: &str) -> ApiError {
    status_body(
        403,
        "PERMISSION_DENIED",
        &format!("Permission denied: Consumer 'api_key:{key}' has been suspended."),
        vec![error_info(
            "CONSUMER_SUSPENDED",
            json!({ "consumer": format!("projects/{}", project_number(key)), "service": "generativelanguage.googleapis.com" }),
        )],
    )
}

/// 403 SERVICE_DISABLED for a project (corpus `real-26`).
pub fn service_disabled(project: &str) -> ApiError {
    corpus::render(
        "real-26",
        &Names {
            project: Some(project),
            ..Names::default()
        },
    )
}

/// 403 API_KEY_SERVICE_BLOCKED; `method` is the RPC, `GenerativeService.GenerateContent`.
pub fn key_blocked(method: &str) -> ApiError {
    status_body(
        403,
        "PERMISSION_DENIED",
        &format!(
            "Requests to this API generativelanguage.googleapis.com method \
             google.ai.generativelanguage.v1beta.{method} are blocked."
        ),
        vec![error_info(
            "API_KEY_SERVICE_BLOCKED",
            json!({ "service": "generativelanguage.googleapis.com", "methodName": format!("google.ai.generativelanguage.v1beta.{method}") }),
        )],
    )
}

/// 403 without any key.
pub fn no_key() -> ApiError {
    status_body(
        403,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). \
         Please use API Key or other form of API consumer identity to call this API.",
        vec![],
    )
}

/// 404 for a model that does not exist or does not serve the method.
pub fn model_not_found(model: &str, version: &str, method: &str) -> ApiError {
    status_body(
        404,
        "NOT_FOUND",
        &format!(
            "models/{model} is not found for API version {version}, or is not supported for \
             {method}. Call ListModels to see the list of available models and their supported methods."
        ),
        vec![],
    )
}

/// 400 for a batch of more than 100.
pub fn batch_too_large() -> ApiError {
    status_body(
        400,
        "INVALID_ARGUMENT",
        "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n",
        vec![],
    )
}

/// 400 for a body that is not a valid request.
pub fn invalid_payload(detail: &str) -> ApiError {
    status_body(
        400,
        "INVALID_ARGUMENT",
        &format!("Invalid JSON payload received. {detail}"),
        vec![json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{ "description": format!("Invalid JSON payload received. {detail}") }]
        })],
    )
}

/// 400 for a request that parses but is not acceptable.
pub fn invalid_argument(message: &str) -> ApiError {
    status_body(400, "INVALID_ARGUMENT", message, vec![])
}

/// The most bytes one call's request may carry. Google documents 20 MB for a request with
/// inline data (ai.google.dev/gemini-api/docs/files, "when the total request size is over
/// 20 MB, use the Files API"); Google's front end refuses a larger body before reading it.
pub const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;

/// 400 INVALID_ARGUMENT for a request body over [`MAX_REQUEST_BYTES`], in the words of Google's
/// front end (the same sentence as other Google APIs, with this limit in bytes).
pub fn payload_too_large() -> ApiError {
    invalid_argument(&format!(
        "Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
    ))
}

/// 500 INTERNAL.
pub fn internal() -> ApiError {
    status_body(
        500,
        "INTERNAL",
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        vec![],
    )
}

/// 503 UNAVAILABLE.
pub fn overloaded() -> ApiError {
    status_body(
        503,
        "UNAVAILABLE",
        "The model is overloaded. Please try again later.",
        vec![],
    )
}

/// 504 DEADLINE_EXCEEDED.
pub fn deadline() -> ApiError {
    status_body(
        504,
        "DEADLINE_EXCEEDED",
        "Deadline expired before operation could complete.",
        vec![],
    )
}

/// A stable made-up project number for messages.
fn project_number(s: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    100_000_000_000 + u64::from_be_bytes([0, 0, 0, d[0], d[1], d[2], d[3], d[4]]) % 900_000_000_000
}
