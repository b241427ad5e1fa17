//! Error bodies the real Gemini API sent to real users (`tests/data/gemini-errors/`, with their
//! sources), each with what keyturn must do. The classifier is checked against every one; the
//! bare 403s, which only a probe can decide, go through the real `RotatingCaller` against a local
//! server that answers the probe as the real service did in each case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use keyturn_core::{Demand, QuotaLedger, ScopeState, ThrottleKind};
use keyturn_gemini::testkit::{fast_config, pool, roomy_limits};
use keyturn_gemini::{ErrorKind, GeminiCall, classify};
use serde_json::{Value, json};

fn corpus() -> Vec<Value> {
    let text = include_str!("data/gemini-errors/bodies.json");
    serde_json::from_str(text).unwrap()
}

/// The corpus's word for a key's or project's dead reason.
fn reason_word(r: keyturn_core::DeadReason) -> String {
    serde_json::to_value(r)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// What the classifier decided, in the corpus's words.
fn expect_word(kind: ErrorKind) -> String {
    match kind {
        // Either per-day window ends the day (the corpus's word); which one is asserted below.
        ErrorKind::Throttled(ThrottleKind::RequestsPerDay | ThrottleKind::TokensPerDay) => {
            "per-day".into()
        }
        ErrorKind::Throttled(ThrottleKind::TokensPerMinute) => "per-minute-tokens".into(),
        ErrorKind::Throttled(ThrottleKind::RequestsPerMinute) => "per-minute-requests".into(),
        ErrorKind::Throttled(ThrottleKind::Unspecified) => "throttled-unspecified".into(),
        ErrorKind::ModelUnavailable => "model-off-for-project".into(),
        ErrorKind::ProjectOff => "project-off".into(),
        ErrorKind::ProjectDead(r) => format!("project-dead:{}", reason_word(r)),
        ErrorKind::DeadKey(r) => format!("key-dead:{}", reason_word(r)),
        ErrorKind::Unverified => "probe-then-decide".into(),
        ErrorKind::CallerFault => "caller-fault".into(),
        ErrorKind::Transient => "transient".into(),
        ErrorKind::NoCapacity(_) => "no-capacity".into(),
        ErrorKind::Internal => "internal".into(),
        other => format!("{other:?}"),
    }
}

#[test]
fn every_real_body_is_classified_as_the_corpus_expects() {
    let corpus = corpus();
    assert!(corpus.len() >= 34);
    let mut wrong = Vec::new();
    for e in &corpus {
        let id = e["id"].as_str().unwrap();
        let status = e["status"].as_u64().unwrap() as u16;
        let body = serde_json::to_vec(&e["body"]).unwrap();
        let c = classify(status, &body);
        let expect = e["expect"].as_str().unwrap();
        let got = expect_word(c.kind);
        let matches = match expect.strip_prefix("probe-then-decide:") {
            Some(_) => got == "probe-then-decide",
            // `service-disabled` is the corpus's word for keyturn's ServiceDisabled.
            None => got == expect,
        };
        if !matches {
            wrong.push(format!("{id}: expected {expect}, got {got}"));
        }
        // `learn`: the limit the classifier hands to the ledger.
        if let Some(learn) = e.get("learn").and_then(Value::as_object) {
            for (_, v) in learn {
                let want = match v {
                    Value::Number(n) => n.as_u64(),
                    // "quotaValue": whatever the body's violation says, which must be a limit.
                    _ => None,
                };
                match (want, c.quota_value) {
                    (Some(w), Some(q)) if w == q => {}
                    (None, Some(q)) if q > 0 => {}
                    (w, q) => wrong.push(format!("{id}: learns {q:?}, expected {w:?}")),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_older_quota_shape_and_metric_only_violations_say_their_window() {
    let old = |limit: &str, value: Option<&str>| {
        let mut meta = json!({"quota_limit": limit, "quota_metric": "generativelanguage.googleapis.com/generate_content_requests"});
        if let Some(v) = value {
            meta["quota_limit_value"] = json!(v);
        }
        serde_json::to_vec(&json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "m",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED", "metadata": meta}]}}))
        .unwrap()
    };
    let c = classify(
        429,
        &old(
            "GenerateContentRequestsPerMinutePerProjectPerRegion",
            Some("60"),
        ),
    );
    assert_eq!(
        c.kind,
        ErrorKind::Throttled(ThrottleKind::RequestsPerMinute)
    );
    assert_eq!(c.quota_value, Some(60));
    assert_eq!(
        classify(
            429,
            &old(
                "GenerateContentRequestsPerMinutePerProjectPerRegion",
                Some("0")
            )
        )
        .kind,
        ErrorKind::ModelUnavailable
    );
    assert_eq!(
        classify(
            429,
            &old("ApiRequestsPerMinutePerProjectPerRegion", Some("0"))
        )
        .kind,
        ErrorKind::ProjectOff
    );
    // No value in the older shape is no limit of 0: it says nothing about the value.
    let c = classify(
        429,
        &old("GenerateContentRequestsPerMinutePerProjectPerRegion", None),
    );
    assert_eq!(
        c.kind,
        ErrorKind::Throttled(ThrottleKind::RequestsPerMinute)
    );
    assert_eq!(c.quota_value, None);
    let metric_only = serde_json::to_vec(&json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_day", "quotaValue": "250"}]}]}}))
    .unwrap();
    let c = classify(429, &metric_only);
    assert_eq!(c.kind, ErrorKind::Throttled(ThrottleKind::RequestsPerDay));
    assert_eq!(c.quota_value, Some(250));
    // A per-day token quota ends the day, and its value is learned as tokens per day.
    let tokens_per_day = serde_json::to_vec(&json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaId": "GenerateContentInputTokensPerModelPerDay-FreeTier", "quotaValue": "3000000"}]}]}}))
    .unwrap();
    let c = classify(429, &tokens_per_day);
    assert_eq!(c.kind, ErrorKind::Throttled(ThrottleKind::TokensPerDay));
    assert_eq!(c.quota_value, Some(3_000_000));
}

const FLASH: &str = "gemini-2.5-flash";
const KEYS: &[keyturn_gemini::testkit::TestKey<'static>] = &[
    ("made-up-corpus-key-a", "a", Some("pa")),
    ("made-up-corpus-key-b", "b", Some("pb")),
    ("made-up-corpus-key-c", "c", Some("pc")),
];

/// A server that answers every generate with `body` (status 403) and the probe
/// (`GET …/models?pageSize=1`) with the same refusal when `probe_refused`, else a model list.
async fn refusing_upstream(body: Value, probe_refused: bool) -> (String, Arc<AtomicUsize>) {
    let probes = Arc::new(AtomicUsize::new(0));
    let counted = probes.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let body = body.clone();
        let counted = counted.clone();
        async move {
            let refusal = (
                StatusCode::FORBIDDEN,
                [("content-type", "application/json")],
                body.to_string(),
            );
            if req.method() == Method::GET {
                counted.fetch_add(1, Ordering::SeqCst);
                if probe_refused {
                    return refusal.into_response();
                }
                return axum::Json(json!({"models": [{"name": "models/gemini-2.5-flash"}]}))
                    .into_response();
            }
            refusal.into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (format!("http://{addr}"), probes)
}

fn entry(id: &str) -> Value {
    corpus().into_iter().find(|e| e["id"] == id).unwrap()
}

fn hello(file_uri: Option<&str>) -> Value {
    let mut parts = vec![json!({"text": "hello"})];
    if let Some(uri) = file_uri {
        parts.push(json!({"fileData": {"mimeType": "application/pdf", "fileUri": uri}}));
    }
    json!({"contents": [{"role": "user", "parts": parts}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_403_is_decided_by_a_probe_that_costs_no_quota() {
    // (corpus id, probe refused too, request names a file, what must follow)
    let cases = [
        ("real-24", true, false, "key-dead:leaked"),
        ("real-30", true, false, "key-dead:permission-denied"),
        ("real-32", false, true, "caller-fault"),
        ("real-34", false, false, "model-off-for-project"),
    ];
    for (id, refused, file, want) in cases {
        let e = entry(id);
        assert!(
            e["expect"]
                .as_str()
                .unwrap()
                .starts_with("probe-then-decide:"),
            "{id}"
        );
        let (url, probes) = refusing_upstream(e["body"].clone(), refused).await;
        let (ledger, caller) = pool(&url, KEYS, fast_config(roomy_limits(&[FLASH])));
        let body =
            hello(file.then_some("https://generativelanguage.googleapis.com/v1beta/files/abc123"));
        let err = caller
            .call(FLASH, "generateContent", Demand::tokens(10), body)
            .await
            .unwrap_err();
        let status = ledger.status().await.unwrap();
        let dead: Vec<_> = status
            .keys
            .iter()
            .filter_map(|k| k.disabled.as_ref().map(|d| reason_word(d.reason)))
            .collect();
        let off = status
            .scopes
            .iter()
            .filter(|s| s.model == FLASH && s.state == ScopeState::Off)
            .count();
        match want {
            "caller-fault" => {
                assert_eq!(err.kind(), ErrorKind::CallerFault, "{id}: {err}");
                assert!(dead.is_empty() && off == 0, "{id}: nothing is blamed");
                assert_eq!(probes.load(Ordering::SeqCst), 1, "{id}: one probe");
            }
            "model-off-for-project" => {
                assert!(dead.is_empty(), "{id}: no key dies: {dead:?}");
                assert_eq!(off, KEYS.len(), "{id}: the model is off for each project");
            }
            dead_reason => {
                let reason = dead_reason.strip_prefix("key-dead:").unwrap();
                assert_eq!(dead, vec![reason; KEYS.len()], "{id}");
                assert_eq!(off, 0, "{id}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_file_uri_disables_no_key_however_often_it_is_sent() {
    let e = entry("real-32");
    let (url, probes) = refusing_upstream(e["body"].clone(), false).await;
    let (ledger, caller) = pool(&url, KEYS, fast_config(roomy_limits(&[FLASH])));
    for _ in 0..10 {
        let body = hello(Some(
            "https://generativelanguage.googleapis.com/v1beta/files/stale",
        ));
        let err = caller
            .call(FLASH, "generateContent", Demand::tokens(10), body)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CallerFault, "{err}");
    }
    let status = ledger.status().await.unwrap();
    assert!(status.keys.iter().all(|k| k.disabled.is_none()));
    assert!(
        status.scopes.iter().all(|s| s.state != ScopeState::Off),
        "no scope was switched off"
    );
    assert!(
        probes.load(Ordering::SeqCst) <= KEYS.len(),
        "each key is probed at most once within the probe TTL"
    );
}
