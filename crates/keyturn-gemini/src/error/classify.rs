//! Reading Gemini's error answers into an [`ErrorKind`], from the HTTP status and the
//! `google.rpc.Status` body's structured details — `QuotaFailure.violations[]` (`quotaId`,
//! `quotaMetric`, `quotaValue`), `RetryInfo.retryDelay`, `ErrorInfo.reason` and
//! `ErrorInfo.metadata` — never from message text. The rules below are checked against every body
//! of `tests/data/gemini-errors/bodies.json`, errors real users received (`tests/corpus.rs`).
//!
//! Rules:
//! - 429 with a per-day quota → per-day (whatever `retryDelay` says); per-minute input-token
//!   quota → tokens; per-minute requests → per-minute. With several violations the most severe
//!   wins (requests per day > tokens per day > tokens per minute > requests per minute). A violation without `quotaValue` has the value 0 (proto3 JSON
//!   leaves zero out), and a zero limit means the model is not available to the project. The window
//!   comes from `quotaId`, or from `quotaMetric` when the id is missing. A per-day *token* quota
//!   (`GenerateContentInputTokensPerModelPerDay`) ends the day too, and its value is learned as
//!   the tokens-per-day limit (requests per day outrank it when both are named).
//! - The older 429 shape, `ErrorInfo` `RATE_LIMIT_EXCEEDED` with `metadata.quota_limit`,
//!   `quota_limit_value` and `quota_metric`, is read the same way; a zero there is limit 0 for
//!   the model, or for the whole project when the limit is the whole API's (`ApiRequests…`).
//! - 429 without anything structured → throttled, unspecified.
//! - 402 (prepayment credits depleted) → the project is off, every model.
//! - 400 `FAILED_PRECONDITION` (free tier not in this country, batch on a free project) → the model
//!   is off for the project.
//! - 400 with `ErrorInfo.reason = API_KEY_INVALID` and 401 → the key is dead (expired when the
//!   message says so). 403 with a structured reason → the key is dead with that reason
//!   (`CONSUMER_SUSPENDED`, `API_KEY_SERVICE_BLOCKED`, `API_KEY_*_BLOCKED`…), except
//!   `SERVICE_DISABLED`, which is about the project: every key of it is dead.
//! - 403 **without** a reason is not proof (a file URI of another project, a per-model refusal, a
//!   transient "unregistered callers" answer look the same as a leaked key): [`ErrorKind::Unverified`],
//!   which the caller settles with a probe that costs no quota.
//! - 408, 500, 502, 503, 504, other 5xx, timeouts, connection failures, cut-off bodies → transient.
//! - Any other 4xx (bad request, 404 unknown model) → the caller's fault; says nothing about the key.

use std::time::Duration;

use keyturn_core::{DeadReason, ThrottleKind};
use serde::Deserialize;
use serde_json::Value;

use super::ErrorKind;

#[derive(Debug, Default, Deserialize)]
struct StatusBody {
    #[serde(default)]
    error: Option<Status>,
}

#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

/// What the classifier read from an error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// Kind.
    pub kind: ErrorKind,
    /// `error.status`.
    pub status_text: String,
    /// `error.message` (not yet redacted).
    pub message: String,
    /// RetryInfo.
    pub retry_after: Option<Duration>,
    /// Quota value of the deciding violation.
    pub quota_value: Option<u64>,
}

/// Parses "37s", "0.5s", "1.250s" (protobuf Duration JSON).
pub fn parse_retry_delay(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The quota a `quotaId` (or a `quotaMetric`) names, by its structure: `…PerDay…` /
/// `…per_day…` (in tokens: `GenerateContentInputTokensPerModelPerDay`, a tokens-per-day
/// limit), `…Token…` / `…token…`, `…PerMinute…` / `…per_minute…`.
pub fn quota_kind(quota_id: &str) -> ThrottleKind {
    let id: String = quota_id
        .chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    if id.contains("perday") && id.contains("token") {
        ThrottleKind::TokensPerDay
    } else if id.contains("perday") {
        ThrottleKind::RequestsPerDay
    } else if id.contains("token") {
        ThrottleKind::TokensPerMinute
    } else if id.contains("perminute") {
        ThrottleKind::RequestsPerMinute
    } else {
        ThrottleKind::Unspecified
    }
}

/// Whether a quota limits the whole API for the project, not one model's method.
fn whole_api(quota_id: &str) -> bool {
    quota_id.starts_with("ApiRequests") || quota_id.starts_with("api_requests")
}

fn severity(k: ThrottleKind) -> u8 {
    match k {
        ThrottleKind::RequestsPerDay => 4,
        ThrottleKind::TokensPerDay => 3,
        ThrottleKind::TokensPerMinute => 2,
        ThrottleKind::RequestsPerMinute => 1,
        ThrottleKind::Unspecified => 0,
    }
}

fn detail_type(d: &Value) -> &str {
    d.get("@type")
        .and_then(Value::as_str)
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
}

fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// One violated quota, from either shape.
struct Violation {
    kind: ThrottleKind,
    /// The limit; `None` when the shape does not say (the older shape without a value).
    value: Option<u64>,
    whole_api: bool,
}

fn quota_failure(v: &Value) -> Violation {
    let id = v
        .get("quotaId")
        .and_then(Value::as_str)
        .or_else(|| v.get("quotaMetric").and_then(Value::as_str))
        .unwrap_or("");
    Violation {
        kind: quota_kind(id),
        // proto3 JSON leaves a zero int64 out.
        value: Some(number(v.get("quotaValue")).unwrap_or(0)),
        whole_api: whole_api(id),
    }
}

fn rate_limit_info(d: &Value) -> Violation {
    let meta = d.get("metadata");
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    let id = field("quota_limit").or(field("quota_metric")).unwrap_or("");
    Violation {
        kind: quota_kind(id),
        value: number(meta.and_then(|m| m.get("quota_limit_value"))),
        whole_api: whole_api(id),
    }
}

fn dead_reason(reason: &str, message: &str) -> DeadReason {
    match reason {
        "CONSUMER_SUSPENDED" => DeadReason::Suspended,
        "SERVICE_DISABLED" => DeadReason::ServiceDisabled,
        "API_KEY_SERVICE_BLOCKED" => DeadReason::ServiceBlocked,
        "API_KEY_IP_ADDRESS_BLOCKED"
        | "API_KEY_HTTP_REFERRER_BLOCKED"
        | "API_KEY_ANDROID_APP_BLOCKED"
        | "API_KEY_IOS_APP_BLOCKED" => DeadReason::Blocked,
        "API_KEY_INVALID" => invalid_reason(message),
        _ => DeadReason::PermissionDenied,
    }
}

/// An invalid key; the message may only pick the more precise label.
fn invalid_reason(message: &str) -> DeadReason {
    if message.to_ascii_lowercase().contains("expired") {
        DeadReason::Expired
    } else {
        DeadReason::Invalid
    }
}

/// The label for a key a probe confirmed dead after a bare 403: the message may only pick the
/// more precise one.
pub fn refused_reason(message: &str) -> DeadReason {
    if message.to_ascii_lowercase().contains("leaked") {
        DeadReason::Leaked
    } else {
        DeadReason::PermissionDenied
    }
}

/// The `google.rpc.Status` of an error body, in either envelope Gemini answers with:
/// `{"error": {…}}` on the native routes, and the same object wrapped in a JSON list,
/// `[{"error": {…}}]`, on the OpenAI-compatible routes (`/v1beta/openai/…`). Public reports of
/// the list form: a 429 from `v1beta/openai/chat/completions`
/// (<https://github.com/n4ze3m/page-assist/issues/406>), and a 400 and a 429 with `errors[]` and
/// `status` inside the one-element list (<https://github.com/google-gemini/gemini-cli/issues/4635>,
/// <https://github.com/google-gemini/gemini-cli/issues/14831>). The list is unwrapped and the
/// object read by the same rules, so a refusal means the same on both surfaces.
fn status_of(body: &[u8]) -> Status {
    let envelope = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items.into_iter().next(),
        Ok(v) => Some(v),
        Err(_) => None,
    };
    envelope
        .and_then(|v| serde_json::from_value::<StatusBody>(v).ok())
        .and_then(|b| b.error)
        .unwrap_or_default()
}

/// Classifies an error answer from its status and body. Never fails: garbage bodies are read by
/// status alone.
pub fn classify(status: u16, body: &[u8]) -> Classified {
    let st = status_of(body);
    let mut retry_after = None;
    let mut violations: Vec<Violation> = Vec::new();
    let mut reason: Option<String> = None;
    for d in &st.details {
        match detail_type(d) {
            "RetryInfo" => {
                retry_after = d
                    .get("retryDelay")
                    .and_then(Value::as_str)
                    .and_then(parse_retry_delay);
            }
            "QuotaFailure" => violations.extend(
                d.get("violations")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(quota_failure),
            ),
            "ErrorInfo" => {
                reason = d.get("reason").and_then(Value::as_str).map(str::to_owned);
                if reason.as_deref() == Some("RATE_LIMIT_EXCEEDED") {
                    violations.push(rate_limit_info(d));
                }
            }
            _ => {}
        }
    }
    let mut quota_value_out = None;
    let kind = match status {
        429 => {
            let zero = |v: &&Violation| v.value == Some(0) && v.kind != ThrottleKind::Unspecified;
            if violations.iter().filter(zero).any(|v| v.whole_api) {
                ErrorKind::ProjectOff
            } else if violations.iter().any(|v| zero(&v)) {
                ErrorKind::ModelUnavailable
            } else if let Some(v) = violations.iter().max_by_key(|v| severity(v.kind)) {
                // Learned as the limit of the window it names (a per-day token count as TPD).
                quota_value_out = v.value;
                ErrorKind::Throttled(v.kind)
            } else {
                ErrorKind::Throttled(ThrottleKind::Unspecified)
            }
        }
        402 => ErrorKind::ProjectOff,
        400 if reason.as_deref() == Some("API_KEY_INVALID") => {
            ErrorKind::DeadKey(invalid_reason(&st.message))
        }
        400 if st.status == "FAILED_PRECONDITION" => ErrorKind::ModelUnavailable,
        401 => ErrorKind::DeadKey(DeadReason::Invalid),
        403 => match reason.as_deref() {
            None => ErrorKind::Unverified,
            Some("SERVICE_DISABLED") => ErrorKind::ProjectDead(DeadReason::ServiceDisabled),
            Some(r) => ErrorKind::DeadKey(dead_reason(r, &st.message)),
        },
        408 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::CallerFault,
    };
    Classified {
        kind,
        status_text: st.status,
        message: st.message,
        retry_after,
        quota_value: quota_value_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn quota_429(id: &str, value: Option<&str>, delay: &str) -> Vec<u8> {
        let mut viol =
            json!({"quotaMetric": "m", "quotaId": id, "quotaDimensions": {"model": "x"}});
        if let Some(v) = value {
            viol["quotaValue"] = json!(v);
        }
        body(
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [viol]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}}),
        )
    }

    #[test]
    fn quota_ids_decide_not_the_delay() {
        let c = classify(
            429,
            &quota_429(
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                Some("20"),
                "37s",
            ),
        );
        assert_eq!(c.kind, ErrorKind::Throttled(ThrottleKind::RequestsPerDay));
        assert_eq!(c.quota_value, Some(20));
        assert_eq!(c.retry_after, Some(Duration::from_secs(37)));
        let c = classify(
            429,
            &quota_429(
                "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                Some("5"),
                "0.5s",
            ),
        );
        assert_eq!(
            c.kind,
            ErrorKind::Throttled(ThrottleKind::RequestsPerMinute)
        );
        assert_eq!(c.retry_after, Some(Duration::from_millis(500)));
        let c = classify(
            429,
            &quota_429(
                "GenerateContentInputTokensPerModelPerMinute-FreeTier",
                Some("250000"),
                "3s",
            ),
        );
        assert_eq!(c.kind, ErrorKind::Throttled(ThrottleKind::TokensPerMinute));
        let c = classify(
            429,
            &quota_429(
                "EmbedContentRequestsPerDayPerUserPerProjectPerModel-FreeTier",
                Some("1000"),
                "0s",
            ),
        );
        assert_eq!(c.kind, ErrorKind::Throttled(ThrottleKind::RequestsPerDay));
    }

    #[test]
    fn a_per_day_token_quota_is_learned_as_tokens_per_day() {
        let c = classify(
            429,
            &quota_429(
                "GenerateContentInputTokensPerModelPerDay-PaidTier",
                Some("50000000"),
                "12s",
            ),
        );
        assert_eq!(
            (c.kind, c.quota_value),
            (
                ErrorKind::Throttled(ThrottleKind::TokensPerDay),
                Some(50_000_000)
            )
        );
        // Beside a per-minute one, the day's window decides.
        let b = body(
            json!({"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier", "quotaValue": "250000"},
            {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count_per_day",
             "quotaValue": "3000000"}]}]}}),
        );
        let c = classify(429, &b);
        assert_eq!(
            (c.kind, c.quota_value),
            (
                ErrorKind::Throttled(ThrottleKind::TokensPerDay),
                Some(3_000_000)
            )
        );
    }

    #[test]
    fn missing_quota_value_is_limit_zero() {
        let c = classify(
            429,
            &quota_429(
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                None,
                "20s",
            ),
        );
        assert_eq!(c.kind, ErrorKind::ModelUnavailable);
    }

    #[test]
    fn the_most_severe_violation_wins() {
        let b = body(
            json!({"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "quotaValue": "5"},
            {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "quotaValue": "20"}]}]}}),
        );
        let c = classify(429, &b);
        assert_eq!(
            (c.kind, c.quota_value),
            (ErrorKind::Throttled(ThrottleKind::RequestsPerDay), Some(20))
        );
    }

    #[test]
    fn the_openai_endpoints_list_envelope_reads_like_the_native_body() {
        // As page-assist#406 quotes it: the 429 wrapped in a one-element list.
        let bare = br#"[{
  "error": {
    "code": 429,
    "message": "Resource has been exhausted (e.g. check quota).",
    "status": "RESOURCE_EXHAUSTED"
  }
}
]"#;
        let c = classify(429, bare);
        assert_eq!(c.kind, ErrorKind::Throttled(ThrottleKind::Unspecified));
        assert_eq!(c.status_text, "RESOURCE_EXHAUSTED");
        // The structured details decide inside the list exactly as outside it.
        for native in [
            quota_429(
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                Some("20"),
                "37s",
            ),
            quota_429(
                "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                None,
                "20s",
            ),
            body(
                json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "API key not valid. Please pass a valid API key.",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}),
            ),
        ] {
            let v: Value = serde_json::from_slice(&native).unwrap();
            let listed = body(json!([v]));
            let status = v["error"]["code"].as_u64().unwrap() as u16;
            assert_eq!(classify(status, &listed), classify(status, &native));
        }
        assert_eq!(
            classify(429, b"[]").kind,
            ErrorKind::Throttled(ThrottleKind::Unspecified)
        );
    }

    #[test]
    fn bare_429_and_garbage() {
        let c = classify(429, br#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#);
        assert_eq!(c.kind, ErrorKind::Throttled(ThrottleKind::Unspecified));
        assert_eq!(
            classify(429, b"<html>").kind,
            ErrorKind::Throttled(ThrottleKind::Unspecified)
        );
        assert_eq!(classify(503, b"\x00\xff").kind, ErrorKind::Transient);
        assert_eq!(classify(400, b"").kind, ErrorKind::CallerFault);
        assert_eq!(classify(418, b"{}").kind, ErrorKind::CallerFault);
    }

    #[test]
    fn dead_keys_and_caller_faults() {
        let invalid = body(
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "API key not valid. Please pass a valid API key.",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}),
        );
        assert_eq!(
            classify(400, &invalid).kind,
            ErrorKind::DeadKey(DeadReason::Invalid)
        );
        let suspended = body(
            json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "Permission denied: Consumer 'api_key:x' has been suspended.",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CONSUMER_SUSPENDED"}]}}),
        );
        assert_eq!(
            classify(403, &suspended).kind,
            ErrorKind::DeadKey(DeadReason::Suspended)
        );
        let leaked = body(
            json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "Your API key was reported as leaked. Please use another API key."}}),
        );
        // No reason: not proof by itself (a probe decides); the message only picks the label.
        let c = classify(403, &leaked);
        assert_eq!(c.kind, ErrorKind::Unverified);
        assert_eq!(refused_reason(&c.message), DeadReason::Leaked);
        // "rate" appears in "generateContent": a 404 is still a caller fault.
        let not_found = body(
            json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "models/gemini-2.5-flsh is not found for API version v1beta, or is not supported for generateContent."}}),
        );
        assert_eq!(classify(404, &not_found).kind, ErrorKind::CallerFault);
        let bad = body(
            json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid JSON payload received. Unknown name \"x\""}}),
        );
        assert_eq!(classify(400, &bad).kind, ErrorKind::CallerFault);
        for s in [408, 500, 502, 503, 504] {
            assert_eq!(classify(s, b"{}").kind, ErrorKind::Transient, "{s}");
        }
    }
}
