//! The "waiting for quota" gauge: a call that waits inside the ledger for room counts while it
//! waits and stops counting when it is admitted. Time is a manual clock, so nothing sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::{
    ApiKey, Demand, InMemoryLedger, KeyRing, KeySpec, LedgerConfig, LimitOverride, LimitTable,
    ManualClock,
};
use keyturn_gemini::{GeminiCall, RetryPolicy, RotatingCaller, Transport, TransportConfig};
use serde_json::json;

const FLASH: &str = "gemini-2.5-flash";

async fn upstream() -> String {
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]},
                            "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1,
                              "totalTokenCount": 4}
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_quota_is_counted_until_it_is_admitted() {
    let url = upstream().await;
    let mut limits = LimitTable::builtin();
    limits
        .set_model(
            FLASH,
            LimitOverride {
                rpm: Some(1),
                tpm: Some(1_000_000),
                rpd: Some(1_000),
                tpd: None,
            },
        )
        .unwrap();
    // 2026-06-01 12:00 Pacific: no midnight near.
    let clock = Arc::new(ManualClock::at_ms(1_780_340_400_000));
    let ring = KeyRing::new(vec![KeySpec::new(
        ApiKey::new("made-up-waiting-key-0001").unwrap(),
    )])
    .unwrap();
    let ledger = Arc::new(InMemoryLedger::new(
        Arc::new(ring),
        LedgerConfig {
            limits,
            max_wait: Duration::from_secs(120),
            ..LedgerConfig::default()
        },
        clock.clone(),
    ));
    let transport = Transport::new(&TransportConfig {
        base_url: url,
        ..TransportConfig::default()
    })
    .unwrap();
    let caller = Arc::new(RotatingCaller::new(
        ledger,
        transport,
        RetryPolicy::default(),
        clock.clone(),
    ));
    let hello = json!({"contents": [{"parts": [{"text": "hello"}]}]});
    caller
        .call(FLASH, "generateContent", Demand::tokens(1), hello.clone())
        .await
        .unwrap();
    assert_eq!(caller.waiting_for_quota(), 0);
    let c = caller.clone();
    let waiter = tokio::spawn(async move {
        c.call(FLASH, "generateContent", Demand::tokens(1), hello)
            .await
    });
    keyturn_core::testkit::until_parked(&clock, &waiter).await;
    assert_eq!(
        caller.waiting_for_quota(),
        1,
        "the second call waits for the minute"
    );
    clock.advance(Duration::from_secs(61));
    waiter.await.unwrap().unwrap();
    assert_eq!(caller.waiting_for_quota(), 0);
}
