//! A hostile or broken upstream cannot make the caller hold an endless body in memory: an
//! answer larger than the bound is refused as a transport failure, only the head of an error
//! body is read, and a streamed event that never ends fails the stream. Each case over real
//! sockets, through the real `RotatingCaller`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The ledger runs on the real clock, like every test pool.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use keyturn_core::{ApiKey, Demand, InMemoryLedger, KeyRing, KeySpec, SystemClock};
use keyturn_gemini::body::{MAX_ANSWER_BYTES, MAX_ERROR_BYTES, MAX_EVENT_BYTES};
use keyturn_gemini::testkit::{fast_config, roomy_limits};
use keyturn_gemini::{
    GeminiCall, GeminiError, RetryPolicy, RotatingCaller, Transport, TransportConfig,
};
use serde_json::json;

const MODEL: &str = "gemini-2.5-flash";
const PIECE: usize = 64 << 10;

/// `total` bytes of one JSON document, `{"pad":"aaa…"}`, sent in pieces with no length.
fn endless_json(total: usize) -> Body {
    let head = Bytes::from_static(b"{\"pad\":\"");
    let tail = Bytes::from_static(b"\"}");
    let pieces = (total - head.len() - tail.len()) / PIECE;
    let body = futures::stream::once(async move { head })
        .chain(futures::stream::iter(
            (0..pieces).map(|_| Bytes::from(vec![b'a'; PIECE])),
        ))
        .chain(futures::stream::once(async move { tail }))
        .map(Ok::<_, std::io::Error>);
    Body::from_stream(body)
}

/// An upstream whose every answer is what `path` asks for.
async fn upstream() -> String {
    let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let path = req.uri().path().to_owned();
        if path.contains("streamGenerateContent") {
            // One event whose data line never ends within the bound.
            let body = futures::stream::once(async { Bytes::from_static(b"data: \"") })
                .chain(futures::stream::iter(
                    (0..MAX_EVENT_BYTES / PIECE + 2).map(|_| Bytes::from(vec![b'a'; PIECE])),
                ))
                .chain(futures::stream::once(async {
                    Bytes::from_static(b"\"\n\n")
                }))
                .map(Ok::<_, std::io::Error>);
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(body))
                .unwrap();
        }
        let status = match req.headers().get("x-goog-api-key").map(|v| v.as_bytes()) {
            Some(b"made-up-bounded-key-error") => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        };
        (status, endless_json(MAX_ANSWER_BYTES + 4 * PIECE)).into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    format!("http://{addr}")
}

/// A one-key pool that tries once, so each test sees exactly one upstream answer.
fn caller(url: &str, secret: &str) -> RotatingCaller {
    let ring = KeyRing::new(vec![
        KeySpec::new(ApiKey::new(secret).unwrap()).label("only"),
    ])
    .unwrap();
    let ledger = Arc::new(InMemoryLedger::new(
        Arc::new(ring),
        fast_config(roomy_limits(&[MODEL])),
        Arc::new(SystemClock),
    ));
    let transport = Transport::new(&TransportConfig {
        base_url: url.to_owned(),
        request_timeout: Duration::from_secs(60),
        ..TransportConfig::default()
    })
    .unwrap();
    let once = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    RotatingCaller::new(ledger, transport, once, Arc::new(SystemClock))
}

fn hello() -> serde_json::Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_past_the_bound_is_refused_not_read_whole() {
    let url = upstream().await;
    let err = caller(&url, "made-up-bounded-key-answer")
        .call(MODEL, "generateContent", Demand::tokens(10), hello())
        .await
        .expect_err("a 32 MiB+ answer must not be taken");
    let text = err.to_string();
    assert!(text.contains("larger than 32 MiB"), "{text}");
    assert!(!text.contains("made-up-bounded-key"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_head_of_an_error_body_is_read() {
    let url = upstream().await;
    let err = caller(&url, "made-up-bounded-key-error")
        .call(MODEL, "generateContent", Demand::tokens(10), hello())
        .await
        .expect_err("a 500 is an error");
    let err = match err {
        GeminiError::RetriesExhausted { last, .. } => *last,
        other => other,
    };
    let GeminiError::Api(f) = err else {
        panic!("expected an API failure, got {err}");
    };
    assert_eq!(f.status, 500);
    assert!(
        f.body.len() <= MAX_ERROR_BYTES,
        "read {} bytes of an error body",
        f.body.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_event_past_the_bound_fails_the_stream() {
    let url = upstream().await;
    let items: Vec<_> = caller(&url, "made-up-bounded-key-stream")
        .stream(MODEL, Demand::tokens(10), hello())
        .await
        .expect("the stream starts")
        .collect()
        .await;
    let last = items.last().expect("the stream yields its failure");
    let err = last.as_ref().expect_err("an endless event is a failure");
    assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
}
