//! Refusals about a whole project, through the real `RotatingCaller` over HTTP: the real 402
//! "prepayment credits depleted" body switches every model of that project off, and the real
//! `SERVICE_DISABLED` body disables every key of it, so no other key or model of the project
//! spends a request finding out again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use keyturn_core::{DeadReason, Demand, QuotaLedger, ScopeState};
use keyturn_gemini::GeminiCall;
use keyturn_gemini::testkit::{fast_config, pool, roomy_limits};
use parking_lot::Mutex;
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const LITE: &str = "gemini-2.5-flash-lite";

/// Keys in ring order: project "credits" is out of prepayment credits, project "disabled" has
/// the API disabled, project "fine" serves.
const KEYS: &[keyturn_gemini::testkit::TestKey<'static>] = &[
    ("made-up-wide-key-credits-1", "credits-1", Some("credits")),
    ("made-up-wide-key-credits-2", "credits-2", Some("credits")),
    (
        "made-up-wide-key-disabled-1",
        "disabled-1",
        Some("disabled"),
    ),
    (
        "made-up-wide-key-disabled-2",
        "disabled-2",
        Some("disabled"),
    ),
    ("made-up-wide-key-fine", "fine", Some("fine")),
];

fn corpus_body(id: &str) -> (u16, Value) {
    let all: Vec<Value> =
        serde_json::from_str(include_str!("data/gemini-errors/bodies.json")).unwrap();
    let e = all.into_iter().find(|e| e["id"] == id).unwrap();
    (e["status"].as_u64().unwrap() as u16, e["body"].clone())
}

/// A server answering each key as its project's situation says, counting requests per key.
async fn upstream() -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let counted = seen.clone();
    let credits = corpus_body("real-16");
    let disabled = corpus_body("real-26");
    assert_eq!(credits.0, 402);
    assert_eq!(disabled.0, 403);
    let app = axum::Router::new().fallback(move |req: Request| {
        let counted = counted.clone();
        let (credits, disabled) = (credits.clone(), disabled.clone());
        async move {
            let key = req
                .headers()
                .get("x-goog-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            *counted.lock().entry(key.clone()).or_default() += 1;
            let refuse = |(status, body): (u16, Value)| {
                (
                    StatusCode::from_u16(status).unwrap(),
                    [("content-type", "application/json")],
                    body.to_string(),
                )
                    .into_response()
            };
            if key.contains("credits") {
                refuse(credits)
            } else if key.contains("disabled") {
                refuse(disabled)
            } else {
                axum::Json(json!({
                    "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]},
                                    "finishReason": "STOP"}],
                    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1,
                                      "totalTokenCount": 4}
                }))
                .into_response()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (format!("http://{addr}"), seen)
}

fn hello() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_402_or_service_disabled_costs_that_project_one_request_in_all() {
    let (url, seen) = upstream().await;
    let (ledger, caller) = pool(&url, KEYS, fast_config(roomy_limits(&[FLASH, LITE])));
    for _ in 0..5 {
        for model in [FLASH, LITE] {
            caller
                .call(model, "generateContent", Demand::tokens(10), hello())
                .await
                .unwrap();
        }
    }
    let seen = seen.lock().clone();
    let sent = |label: &str| {
        let secret = KEYS.iter().find(|k| k.1 == label).unwrap().0;
        seen.get(secret).copied().unwrap_or(0)
    };
    assert_eq!(
        sent("credits-1") + sent("credits-2"),
        1,
        "out of credits: one refusal for the whole project, every model"
    );
    assert_eq!(
        sent("disabled-1") + sent("disabled-2"),
        1,
        "API disabled: one refusal disables every key of the project"
    );
    assert_eq!(sent("fine"), 10);

    let st = ledger.status().await.unwrap();
    let reason = |label: &str| {
        st.keys
            .iter()
            .find(|k| k.label == label)
            .unwrap()
            .disabled
            .map(|d| d.reason)
    };
    assert_eq!(reason("disabled-1"), Some(DeadReason::ServiceDisabled));
    assert_eq!(reason("disabled-2"), Some(DeadReason::ServiceDisabled));
    assert_eq!(reason("credits-1"), None, "credits are not the key's fault");
    assert_eq!(reason("credits-2"), None);
    for s in st.scopes.iter().filter(|s| s.project == "credits") {
        assert!(s.state == ScopeState::Off && s.project_off, "{s:?}");
        assert!(s.off_until_ms.is_some(), "{s:?}");
    }
}
