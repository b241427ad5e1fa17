//! A reviewer's attacks on the proxy, over real sockets: pool keys spelled the ways an upstream
//! answer could hold them, upstream calls around `max_in_flight`, slow and silent clients.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use common::local;
use keyturn_proxy::{Proxy, ProxyConfig};
use keyturn_services::Pool;
use serde_json::Value;

const FLASH: &str = "gemini-2.5-flash";
const HELLO: &str = r#"{"contents":[{"parts":[{"text":"hello"}]}]}"#;
const LABELS: [&str; 2] = ["lbl-secret-north", "lbl-secret-south"];

/// Made-up pool keys shaped like Google's, built at run time.
fn pool_keys() -> [String; 2] {
    [
        format!("AIza{}", "Nn0-_".repeat(7)),
        format!("AIza{}", "Ss9_-".repeat(7)),
    ]
}

/// The spellings of `k` an upstream answer could carry, as JSON string content.
fn spellings(k: &str) -> Vec<String> {
    let json_escaped: String = k.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    let url_escaped: String = k.bytes().map(|b| format!("%{b:02X}")).collect();
    vec![
        k.to_owned(),
        json_escaped,
        url_escaped,
        // A stray escape start just before the key: a reader still sees the key whole.
        format!("100%4{k}"),
        format!("%+{k}"),
        // A JSON string holding a literal backslash, then "u004" and the key.
        format!("\\\\u004{k}"),
    ]
}

/// `%XX` decoded, as a URL reader would.
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (b[i], hex) {
            (b'%', Some(h)) => {
                out.push(u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap());
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// The body a client got holds no pool key in any reading, no key label, and is JSON (each
/// `data:` line, for SSE).
fn assert_clean(what: &str, body: &str) {
    let keys = pool_keys();
    let docs: Vec<&str> = if body.contains("data: ") {
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect()
    } else {
        vec![body]
    };
    for doc in docs {
        let v: Value = serde_json::from_str(doc)
            .unwrap_or_else(|e| panic!("{what}: the client got no JSON ({e}): {doc}"));
        let mut texts = vec![doc.to_owned()];
        strings(&v, &mut texts);
        for t in texts {
            for k in &keys {
                assert!(
                    !t.contains(k.as_str()) && !url_decode(&t).contains(k.as_str()),
                    "{what}: a pool key reached the client: {doc}"
                );
            }
            for l in LABELS {
                assert!(
                    !t.contains(l),
                    "{what}: a key label reached the client: {doc}"
                );
            }
        }
    }
}

/// Answers with the pool key it was called with, spelled as `spelling` says (an index into
/// [`spellings`]), in every kind of answer the proxy relays. Model names pick the answer:
/// `gemini-ok` 200, `gemini-bad` 400, `gemini-down` 503; GETs confirm any `gemini*` model.
/// `stream` posts are held open until `release` is notified.
#[derive(Clone, Default)]
struct Upstream {
    spelling: Arc<AtomicUsize>,
    gets: Arc<AtomicUsize>,
    posts: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    paths: Arc<Mutex<Vec<String>>>,
}

async fn upstream(up: Upstream) -> String {
    let app = axum::Router::new().fallback(move |req: Request| {
        let up = up.clone();
        async move {
            let path = req.uri().path().to_owned();
            up.paths.lock().unwrap().push(path.clone());
            let key = req
                .headers()
                .get("x-goog-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let leak = spellings(&key)[up.spelling.load(Ordering::SeqCst)].clone();
            let name = path
                .split('/')
                .nth(3)
                .unwrap_or_default()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            if !name.starts_with("gemini") && !path.ends_with("/models") {
                let body = "{\"error\":{\"code\":404,\"message\":\"not found\",\"status\":\"NOT_FOUND\"}}";
                return (StatusCode::NOT_FOUND, body).into_response();
            }
            if req.method() == Method::GET {
                up.gets.fetch_add(1, Ordering::SeqCst);
                return format!("{{\"name\":\"models/{name}\",\"description\":\"{leak}\"}}")
                    .into_response();
            }
            up.posts.fetch_add(1, Ordering::SeqCst);
            // Read the whole request, as Gemini would, before answering.
            axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .unwrap();
            let answer = format!(
                "{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{leak}\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":3,\"candidatesTokenCount\":1}}}}"
            );
            if name.starts_with("gemini-forge") {
                // Gemini quotes a client's own text back in its 400s.
                let body = "{\"error\":{\"code\":400,\"message\":\"Unknown name \\\"x\\n2026-01-01T00:00:00Z ERROR forged line\\\"\",\"status\":\"INVALID_ARGUMENT\"}}";
                return (StatusCode::BAD_REQUEST, body).into_response();
            }
            if name.starts_with("gemini-bad") {
                let body = format!(
                    "{{\"error\":{{\"code\":400,\"message\":\"Invalid value {leak}\",\"status\":\"INVALID_ARGUMENT\"}}}}"
                );
                return (StatusCode::BAD_REQUEST, body).into_response();
            }
            if name.starts_with("gemini-down") {
                let body = format!(
                    "{{\"error\":{{\"code\":503,\"message\":\"overloaded for {leak}\",\"status\":\"UNAVAILABLE\"}}}}"
                );
                return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
            }
            if path.contains("streamGenerateContent") && name.starts_with("gemini-empty") {
                return Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::empty())
                    .unwrap();
            }
            if path.contains("streamGenerateContent") {
                let release = up.release.clone();
                let first = format!("data: {answer}\r\n\r\n");
                let second = first.clone();
                let held = name.starts_with("gemini-held");
                let s = futures::StreamExt::chain(
                    futures::stream::once(async move { Ok::<_, std::convert::Infallible>(first) }),
                    futures::stream::once(async move {
                        if held {
                            release.notified().await;
                        }
                        Ok(second)
                    }),
                );
                return Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(s))
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
    let [k1, k2] = pool_keys();
    let keys = [
        (k1.as_str(), LABELS[0], "p1"),
        (k2.as_str(), LABELS[1], "p2"),
    ];
    common::proxy(upstream, dir, cfg, &keys).await
}

/// One raw request without extra headers.
fn raw(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    common::raw(addr, method, path, "", body)
}

fn body_of(answer: &str) -> String {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    // De-chunk.
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_pool_key_reaches_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::default();
    let url = upstream(up.clone()).await;
    let (p, _pool) = proxy(&url, dir.path(), local()).await;
    let addr = p.addr();
    for (i, spelled) in spellings("K").iter().enumerate() {
        up.spelling.store(i, Ordering::SeqCst);
        // A model of its own for each call: the pool's default limits for a new model are low.
        let cases = [
            ("POST", "gemini-ok-a-{i}:generateContent", 200),
            ("POST", "gemini-ok-b-{i}:countTokens", 200),
            ("POST", "gemini-ok-c-{i}:streamGenerateContent?alt=sse", 200),
            ("POST", "gemini-ok-d-{i}:streamGenerateContent", 200),
            ("GET", "gemini-ok-e-{i}", 200),
            ("GET", "", 200),
            ("POST", "gemini-bad-{i}:generateContent", 400),
            ("POST", "gemini-down-{i}:generateContent", 0),
        ]
        .map(|(m, path, want)| {
            let path = if path.is_empty() {
                "/v1beta/models".to_owned()
            } else {
                format!("/v1beta/models/{}", path.replace("{i}", &i.to_string()))
            };
            (m, path, want)
        });
        let answers = tokio::task::spawn_blocking(move || {
            cases.map(|(m, path, want)| {
                let answer = raw(addr, m, &path, HELLO);
                (m, path, want, answer)
            })
        })
        .await
        .unwrap();
        for (m, path, want, (status, answer)) in answers {
            let what = format!("{m} {path} with the key spelled like {spelled}");
            // 0: a refusal of the proxy's own (503, or 429 once the circuit breakers open).
            if want == 0 {
                assert!(status == 503 || status == 429, "{what}: {answer}");
            } else {
                assert_eq!(status, want, "{what}: {answer}");
            }
            assert_clean(&what, &body_of(&answer));
        }
    }
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_routes_wait_for_an_in_flight_slot_too() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::default();
    let url = upstream(up.clone()).await;
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
            "{}/v1beta/models/gemini-held:streamGenerateContent?alt=sse",
            p.base_url()
        ))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    stream.chunk().await.unwrap().unwrap();
    let gets_before = up.gets.load(Ordering::SeqCst);
    // GET models/{m} and GET models are upstream calls like any other.
    let waiting: Vec<_> = ["models/gemini-other", "models"]
        .into_iter()
        .map(|path| {
            let client = client.clone();
            let url = format!("{}/v1beta/{path}", p.base_url());
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.gets.load(Ordering::SeqCst),
        gets_before,
        "a GET went upstream while a stream held the only in-flight slot"
    );
    up.release.notify_one();
    while stream.chunk().await.unwrap().is_some() {}
    for w in waiting {
        assert_eq!(w.await.unwrap(), 200);
    }
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::default();
    let url = upstream(up.clone()).await;
    let (p, _pool) = proxy(
        &url,
        dir.path(),
        ProxyConfig {
            header_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            ..local()
        },
    )
    .await;
    let addr = p.addr();
    tokio::task::spawn_blocking(move || {
        // Each socket waits at most 5 s for the proxy (which should give up after 0.3 s):
        // a read that times out means the proxy still held the connection.
        let connect = || {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        };
        // Says nothing: closed.
        let mut s = connect();
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).is_ok(), "a silent client was held");
        // Half the headers, then nothing: closed.
        let mut s = connect();
        write!(s, "POST /v1beta/models/{FLASH}:generateContent HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
        let mut out = Vec::new();
        assert!(s.read_to_end(&mut out).is_ok(), "slow headers were waited for");
        // A body that never finishes: 408.
        let mut s = connect();
        write!(
            s,
            "POST /v1beta/models/{FLASH}:generateContent HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{{\"con"
        )
        .unwrap();
        let n = s.read(&mut buf).expect("a slow body was waited for");
        let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("DEADLINE_EXCEEDED"), "{answer}");
    })
    .await
    .unwrap();
    assert_eq!(up.posts.load(Ordering::SeqCst), 0);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_does_not_hold_a_connection_slot() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::default();
    let url = upstream(up.clone()).await;
    let (p, _pool) = proxy(
        &url,
        dir.path(),
        ProxyConfig {
            max_connections: 1,
            header_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            ..local()
        },
    )
    .await;
    let addr = p.addr();
    let held = tokio::task::spawn_blocking(move || {
        // Pipelined requests for small answers, none of them read, until the proxy stops
        // taking more: its answers fill the socket.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let one = "GET /nothing-here HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(1000);
        let mut sent = 0usize;
        while s.write_all(one.as_bytes()).is_ok() {
            sent += one.len();
            assert!(sent < 512 << 20, "the proxy read 512 MiB of requests");
        }
        s
    })
    .await
    .unwrap();
    // Someone else, meanwhile, gets an answer.
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).map(|_| out)
    })
    .await
    .unwrap();
    drop(held);
    let answer = answer.expect("the only connection slot was held by a client that never reads");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_events_is_still_a_json_array() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::default();
    let url = upstream(up.clone()).await;
    let (p, _pool) = proxy(&url, dir.path(), local()).await;
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/gemini-empty:streamGenerateContent",
            p.base_url()
        ))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the client got no JSON ({e}): {text:?}"));
    assert!(v.is_array(), "{text}");
    p.shutdown(Duration::from_secs(1)).await;
}

/// A writer that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One thread runs the proxy, so the test's subscriber sees everything it logs.
#[tokio::test(flavor = "current_thread")]
async fn upstream_text_cannot_forge_a_log_line() {
    let captured = Captured::default();
    let c2 = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || c2.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::default();
    let url = upstream(up.clone()).await;
    let (p, _pool) = proxy(&url, dir.path(), local()).await;
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/gemini-forge:generateContent",
            p.base_url()
        ))
        .body(HELLO)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    p.shutdown(Duration::from_secs(1)).await;
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("forged line"), "the 400 was logged: {logs}");
    for line in logs.lines() {
        assert!(
            !line.starts_with("2026-01-01T00:00:00Z"),
            "an upstream answer wrote its own log line: {logs}"
        );
    }
}

/// A body of many tiny values (`[0,0,0,…]`) costs 16 to 32 times its size as a parsed JSON
/// value, before any in-flight slot is taken: 20 MB of it is more than 300 MB. The proxy refuses
/// bodies with more values than a body of ordinary requests could hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_tiny_values_is_refused_before_it_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::default();
    let url = upstream(up.clone()).await;
    let (p, _pool) = proxy(
        &url,
        dir.path(),
        ProxyConfig {
            max_body_bytes: 8 << 20,
            ..local()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(format!(
                "{}/v1beta/models/gemini-ok-values:generateContent",
                p.base_url()
            ))
            .body(body)
            .send()
    };
    let zeros = vec!["0"; 3_000_000].join(",");
    let bomb = format!(r#"{{"contents":[{{"parts":[{{"text":"hi"}}]}}],"x":[{zeros}]}}"#);
    let r = post(bomb).await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(up.posts.load(Ordering::SeqCst), 0);
    // An ordinary long conversation passes, and so does a long text in one value.
    let turns: Vec<String> = (0..5_000)
        .map(|i| format!(r#"{{"role":"user","parts":[{{"text":"turn {i}"}}]}}"#))
        .collect();
    let long = format!(r#"{{"contents":[{}]}}"#, turns.join(","));
    assert_eq!(post(long).await.unwrap().status(), 200);
    let text = format!(
        r#"{{"contents":[{{"parts":[{{"text":"hi"}}]}}],"labels":{{"note":"{}"}}}}"#,
        "a, b: [c] {d} \\\" ".repeat(400_000)
    );
    assert_eq!(post(text).await.unwrap().status(), 200);
    p.shutdown(Duration::from_secs(1)).await;
}

/// Without client tokens the proxy answers anyone who can reach loopback, and a web page can:
/// a cross-site `fetch(…, {mode: "no-cors", method: "POST"})` spends the pool's quota blind, and
/// a page whose name was rebound to 127.0.0.1 (DNS rebinding) also reads the answers. Browsers
/// name the page in `Origin`; a request from a page that is not on this machine is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_elsewhere_cannot_use_a_tokenless_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::default();
    let url = upstream(up.clone()).await;
    let (p, _pool) = proxy(&url, dir.path(), local()).await;
    let client = reqwest::Client::new();
    let post = |origin: Option<&'static str>| {
        let mut r = client
            .post(format!(
                "{}/v1beta/models/gemini-ok-web:generateContent",
                p.base_url()
            ))
            .header("content-type", "text/plain")
            .body(HELLO);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    for origin in [
        "http://evil.example",
        "http://evil.example:8080",
        "null",
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.example",
    ] {
        let r = post(Some(origin)).await.unwrap();
        assert_eq!(r.status(), 403, "{origin}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    }
    assert_eq!(
        up.posts.load(Ordering::SeqCst),
        0,
        "a web page's request went upstream"
    );
    for origin in [
        None,
        Some("http://localhost:3000"),
        Some("http://127.0.0.1:5173"),
        Some("http://[::1]:8000"),
    ] {
        assert_eq!(post(origin).await.unwrap().status(), 200, "{origin:?}");
    }
    // DNS rebinding: a page whose name now resolves to 127.0.0.1 sends GETs without an Origin,
    // but with its own name as the Host.
    for (host, want) in [
        ("evil.example", 403),
        ("evil.example:8080", 403),
        ("127.0.0.1.evil.example", 403),
        ("localhost", 200),
        ("127.0.0.1:9", 200),
        ("[::1]:9", 200),
    ] {
        let mut sock = TcpStream::connect(p.addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            sock,
            "GET /v1beta/models HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        sock.read_to_string(&mut out).ok();
        let status: u16 = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert_eq!(status, want, "Host: {host}: {out}");
    }
    p.shutdown(Duration::from_secs(1)).await;
}

/// A body refused before it is read (over the cap: 413) is still on its way when the answer is
/// sent. Closing a socket with unread data resets it, and the client saw "connection reset" or
/// "broken pipe" instead of the 413 (Python's http.client: 19 of 20 sign-ins of 4 MiB). The
/// proxy now lingers: it shuts its side, reads and drops what still comes, and the client gets
/// to send its body and read the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_refused_body_reads_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::default();
    let url = upstream(up.clone()).await;
    let (p, _pool) = proxy(
        &url,
        dir.path(),
        ProxyConfig {
            max_body_bytes: 1 << 20,
            ..local()
        },
    )
    .await;
    let addr = p.addr();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let total = 6 << 20;
        write!(
            s,
            "POST /v1beta/models/{FLASH}:generateContent HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
        )
        .unwrap();
        let chunk = vec![b' '; 1 << 20];
        s.write_all(&chunk).unwrap();
        // By now the proxy has answered and closed; the rest arrives after that.
        std::thread::sleep(Duration::from_millis(300));
        for _ in 1..6 {
            s.write_all(&chunk)
                .expect("the proxy reset the connection while the body was still coming");
        }
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .expect("the proxy reset the connection before its answer was read");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    })
    .await
    .unwrap();
    assert_eq!(up.posts.load(Ordering::SeqCst), 0);
    p.shutdown(Duration::from_secs(1)).await;
}
