//! Unmetered calls (model lookups, countTokens) after a reload replaced the pool's keys: the
//! ring keeps the removed keys (retired) ahead of the new ones, and the attempts must go to keys
//! that take requests, whatever the cursor. Over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The ledger runs on the real clock, like every test pool.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;

use axum::response::IntoResponse;
use keyturn_core::{ApiKey, InMemoryLedger, KeyRing, KeySpec, LimitTable, SystemClock};
use keyturn_gemini::testkit::{fast_config, roomy_limits};
use keyturn_gemini::{GeminiCall, RetryPolicy, RotatingCaller, Transport, TransportConfig};

const MODEL: &str = "gemini-2.5-flash";

fn spec(n: u32) -> KeySpec {
    KeySpec::new(ApiKey::new(format!("AIzaSyTEST-unmetered-reload-{n:04}")).unwrap())
        .label(format!("k{n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmetered_calls_find_the_keys_a_reload_added() {
    let app = axum::Router::new().fallback(|| async {
        axum::Json(serde_json::json!({"name": "models/gemini-2.5-flash"})).into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });

    let ledger = Arc::new(InMemoryLedger::new(
        Arc::new(KeyRing::new(vec![spec(1), spec(2), spec(3)]).unwrap()),
        fast_config(roomy_limits(&[MODEL])),
        Arc::new(SystemClock),
    ));
    // Every key replaced: the ring is k1, k2, k3 (removed), k4.
    let limits: LimitTable = roomy_limits(&[MODEL]);
    ledger.reload(&KeyRing::new(vec![spec(4)]).unwrap(), limits);
    let transport = Transport::new(&TransportConfig {
        base_url: url,
        ..TransportConfig::default()
    })
    .unwrap();
    let two = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    let caller = RotatingCaller::new(ledger, transport, two, Arc::new(SystemClock));
    for i in 0..4 {
        let r = caller
            .call_unmetered(&format!("models/{MODEL}"), None)
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(r.key, "k4");
    }
}
