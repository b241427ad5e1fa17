//! The proxy against hostile clients, over real sockets: random encoded paths, streams that
//! hold their slot, random model names, and what error answers may tell.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use common::local;
use keyturn_proxy::{Proxy, ProxyConfig, digest};
use keyturn_services::Pool;
use proptest::prelude::*;

const FLASH: &str = "gemini-2.5-flash";
const TOKEN: &str = "kt_made-up-hostile-token";

/// Records each upstream path; answers like Gemini would for a model that exists when its
/// name starts with "gemini", else 404. `stream` models hold their SSE stream open until
/// `release` is notified.
#[derive(Clone, Default)]
struct Recorder {
    paths: Arc<Mutex<Vec<String>>>,
    posts: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
}

async fn upstream(rec: Recorder) -> String {
    let app = axum::Router::new().fallback(move |req: Request| {
        let rec = rec.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            rec.paths.lock().unwrap().push(path.clone());
            let name = path
                .split('/')
                .nth(3)
                .unwrap_or_default()
                .split([':', '?'])
                .next()
                .unwrap_or_default()
                .to_owned();
            if !name.starts_with("gemini") {
                let body = "{\"error\":{\"code\":404,\"message\":\"models/x is not found\",\"status\":\"NOT_FOUND\"}}";
                return (StatusCode::NOT_FOUND, body).into_response();
            }
            if req.method() == Method::GET {
                return format!("{{\"name\":\"models/{name}\"}}").into_response();
            }
            rec.posts.fetch_add(1, Ordering::SeqCst);
            let answer = "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"ok\"}]}}],\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":1}}";
            if path.contains("streamGenerateContent") {
                let release = rec.release.clone();
                let first = futures::stream::once(async move {
                    Ok::<_, std::convert::Infallible>(format!("data: {answer}\r\n\r\n"))
                });
                let held = futures::stream::once(async move {
                    release.notified().await;
                    Ok(format!("data: {answer}\r\n\r\n"))
                });
                return Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(futures::StreamExt::chain(first, held)))
                    .unwrap();
            }
            answer.into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    format!("http://{addr}")
}

async fn proxy(upstream: &str, dir: &Path, cfg: ProxyConfig) -> (Proxy, Pool) {
    let keys = [
        ("made-up-hostile-key-1", "alpha", "p1"),
        ("made-up-hostile-key-2", "beta", "p2"),
    ];
    common::proxy(upstream, dir, cfg, &keys).await
}

const HELLO: &str = r#"{"contents":[{"parts":[{"text":"hello"}]}]}"#;

/// Pieces a hostile path segment is made of: letters, and encoded separators.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{1,6}".prop_map(|s| s),
        Just("gemini-2.5-flash".to_owned()),
        Just("..".to_owned()),
        Just("%2F".to_owned()),
        Just("%2f".to_owned()),
        Just("%252F".to_owned()),
        Just("%3A".to_owned()),
        Just("%253A".to_owned()),
        Just("%3F".to_owned()),
        Just("%23".to_owned()),
        Just("%2E".to_owned()),
        Just("%00".to_owned()),
        Just("%0A".to_owned()),
        Just("%20".to_owned()),
        Just("%25".to_owned()),
        Just(":".to_owned()),
        Just("generateContent".to_owned()),
        Just("countTokens".to_owned()),
        Just("admin".to_owned()),
    ]
}

#[test]
fn upstream_paths_are_only_ever_valid_models_and_methods() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let (p, _pool) = rt.block_on(async {
        let url = upstream(rec.clone()).await;
        proxy(&url, dir.path(), local()).await
    });
    let addr = p.addr();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(
                proptest::collection::vec(piece(), 1..6),
                prop_oneof![Just("GET"), Just("POST")],
                proptest::option::of(prop_oneof![
                    Just("generateContent"),
                    Just("countTokens"),
                    Just("embedContent"),
                    Just("streamGenerateContent"),
                ]),
            ),
            |(pieces, method, action)| {
                let segment: String = pieces.concat();
                let path = match action {
                    Some(a) => format!("/v1beta/models/{segment}:{a}"),
                    None => format!("/v1beta/models/{segment}"),
                };
                let (status, _) = common::raw(addr, method, &path, "", HELLO);
                prop_assert!(status != 0 && status != 500, "{method} {path}: {status}");
                Ok(())
            },
        )
        .unwrap();
    let valid = |p: &str| {
        let Some(rest) = p.strip_prefix("/v1beta/models") else {
            return false;
        };
        if rest.is_empty() {
            return true;
        }
        let rest = rest.strip_prefix('/').unwrap_or("!");
        let rest = rest.strip_suffix("?alt=sse").unwrap_or(rest);
        let (model, method) = rest.split_once(':').unwrap_or((rest, "generateContent"));
        keyturn_gemini::valid_model(model)
            && !method.is_empty()
            && method.bytes().all(|b| b.is_ascii_alphabetic())
    };
    let paths = rec.paths.lock().unwrap().clone();
    assert!(
        !paths.is_empty(),
        "some random paths were valid and went upstream"
    );
    for path in &paths {
        assert!(valid(path), "the upstream saw {path}");
    }
    rt.block_on(p.shutdown(Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holds_its_in_flight_slot_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let url = upstream(rec.clone()).await;
    let (p, _pool) = proxy(
        &url,
        dir.path(),
        ProxyConfig {
            max_in_flight: 1,
            ..local()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let mut stream = client
        .post(format!(
            "{}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse",
            p.base_url()
        ))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    assert_eq!(rec.posts.load(Ordering::SeqCst), 1);
    // A second call waits for the slot the open stream holds.
    let second = tokio::spawn({
        let client = client.clone();
        let url = format!("{}/v1beta/models/{FLASH}:generateContent", p.base_url());
        async move { client.post(url).body(HELLO).send().await.unwrap().status() }
    });
    // Until the proxy counts it as parked on the slot.
    while p.state().waiting_for_slot() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        rec.posts.load(Ordering::SeqCst),
        1,
        "a second upstream call started while the stream held the only slot"
    );
    // The admin status shows it waiting, and the stream in flight.
    let st: serde_json::Value = client
        .get(format!("{}/admin/status", p.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["requests"]["waiting_for_slot"], 1, "{st}");
    assert_eq!(st["requests"]["in_flight"], 1, "{st}");
    rec.release.notify_one();
    while stream.chunk().await.unwrap().is_some() {}
    assert_eq!(second.await.unwrap(), 200);
    assert_eq!(rec.posts.load(Ordering::SeqCst), 2);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_model_names_grow_no_state() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let url = upstream(rec.clone()).await;
    let (p, pool) = proxy(&url, dir.path(), local()).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            p.base_url()
        ))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let scopes = pool.ledger.status().await.unwrap().scopes.len();
    let snapshot = serde_json::to_vec(&pool.ledger.snapshot().await.unwrap())
        .unwrap()
        .len();
    for i in 0..300 {
        let r = client
            .post(format!(
                "{}/v1beta/models/made-up-model-{i}:generateContent",
                p.base_url()
            ))
            .body(HELLO)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "the upstream's own 404 passes through");
    }
    assert_eq!(pool.ledger.status().await.unwrap().scopes.len(), scopes);
    let after = serde_json::to_vec(&pool.ledger.snapshot().await.unwrap())
        .unwrap()
        .len();
    assert!(
        after <= snapshot + 64,
        "the snapshot grew from {snapshot} to {after} bytes"
    );
    assert_eq!(
        rec.posts.load(Ordering::SeqCst),
        1,
        "no unknown model was sent"
    );
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_schemes_oversized_bodies_and_error_messages() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let url = upstream(rec.clone()).await;
    let (p, _pool) = proxy(
        &url,
        dir.path(),
        ProxyConfig {
            tokens: vec![("team".into(), digest(TOKEN))],
            max_body_bytes: 256,
            ..local()
        },
    )
    .await;
    let path = format!("/v1beta/models/{FLASH}:generateContent");
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, body) = common::raw(
            p.addr(),
            "POST",
            &path,
            &format!("Authorization: {scheme} {TOKEN}\r\n"),
            HELLO,
        );
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    let (status, body) = common::raw(
        p.addr(),
        "POST",
        &path,
        &format!("x-goog-api-key: {TOKEN}\r\n"),
        &"x".repeat(1000),
    );
    assert_eq!(status, 413, "{body}");
    let json: serde_json::Value =
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["error"]["code"], 413);
    assert_eq!(json["error"]["status"], "INVALID_ARGUMENT");

    // Every key answers 503: the client learns that, not the pool's key labels.
    drop(p);
    let dir = tempfile::tempdir().unwrap();
    let dead = axum::Router::new().fallback(|req: Request| async move {
        if req.method() == Method::GET {
            return "{\"name\":\"models/gemini-2.5-flash\"}".into_response();
        }
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}",
        )
            .into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, dead).await.ok() });
    let (p, _pool) = proxy(&format!("http://{addr}"), dir.path(), local()).await;
    let (status, body) = common::raw(p.addr(), "POST", &path, "", HELLO);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("overloaded"), "{body}");
    assert!(
        !body.contains("alpha") && !body.contains("beta"),
        "a key label reached the client: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_lookups_do_not_fill_the_set_of_served_models() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let url = upstream(rec.clone()).await;
    let (p, _pool) = proxy(&url, dir.path(), local()).await;
    let client = reqwest::Client::new();
    // An upstream (or gateway) that says yes to every name: looking them up is free and must
    // not use up the proxy's room for models.
    for i in 0..(keyturn_proxy::MAX_MODELS + 10) {
        let r = client
            .get(format!("{}/v1beta/models/gemini-made-up-{i}", p.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = client
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            p.base_url()
        ))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_request_waiting_for_a_slot_is_told_to_come_back_and_a_stream_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let url = upstream(rec.clone()).await;
    let (p, _pool) = proxy(
        &url,
        dir.path(),
        ProxyConfig {
            max_in_flight: 1,
            ..local()
        },
    )
    .await;
    let base = p.base_url();
    let client = reqwest::Client::new();
    let mut stream = client
        .post(format!(
            "{base}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse"
        ))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.chunk().await.unwrap().is_some());
    // The only slot is held by the stream: this one waits for it.
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/v1beta/models/{FLASH}:generateContent");
        async move { client.post(url).body(HELLO).send().await.unwrap() }
    });
    // Until the proxy counts it as parked on the slot.
    while p.state().waiting_for_slot() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stopping = tokio::spawn(p.shutdown(Duration::from_secs(30)));
    let r = waiting.await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"][0]["retryDelay"], "5s", "{v}");
    assert_eq!(
        rec.posts.load(Ordering::SeqCst),
        1,
        "the waiting call never went upstream"
    );
    // The stream already upstream finishes within the drain.
    rec.release.notify_one();
    let mut rest = 0;
    while let Some(c) = stream.chunk().await.unwrap() {
        rest += c.len();
    }
    assert!(rest > 0, "the stream's second event arrived");
    stopping.await.unwrap();
}
