//! Attacks on the resource routes of `keyturn serve`, over real sockets, in front of a local
//! upstream that answers whatever a hostile or broken Gemini could: endless answers to a file
//! lookup, any upload chunk accepted. Also what a reload must end at once: a removed client's
//! upload sessions, a removed key's resource calls; and one client filling the session table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyturn_proxy::{Proxy, ProxyConfig, ProxyState, Reload, digest};
use keyturn_services::{Env, Pool, create_pool};

const TOKEN_A: &str = "kt_made-up-resource-attack-client-a";
const TOKEN_B: &str = "kt_made-up-resource-attack-client-b";

/// Two keys of one project.
const KEYS: [(&str, &str, &str); 2] = [
    ("AIzaSyTESTresourceAttackKeyOne000001", "one", "p1"),
    ("AIzaSyTESTresourceAttackKeyTwo000002", "two", "p1"),
];

/// What the upstream saw: the key of each request, by path.
#[derive(Clone, Default)]
struct Seen {
    keys: Arc<Mutex<Vec<(String, String)>>>,
    sessions: Arc<AtomicUsize>,
}

/// A body of `n` bytes of JSON-looking filler, streamed in 64 KiB pieces.
fn filler(n: usize) -> Body {
    let piece = bytes::Bytes::from(vec![b' '; 64 << 10]);
    let count = n.div_ceil(piece.len());
    Body::from_stream(futures::stream::iter(
        (0..count).map(move |_| Ok::<_, std::io::Error>(piece.clone())),
    ))
}

/// An upstream on loopback: an upload start opens a session on its own host; any chunk is
/// taken (the finalize answers a file); `files/huge` answers 40 MiB, `files/hugeerror` a 404
/// of 40 MiB; any other file is found.
async fn upstream(seen: Seen) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let own = base.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let seen = seen.clone();
        let base = own.clone();
        async move {
            let path = req.uri().path().to_owned();
            let key = req
                .headers()
                .get("x-goog-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            seen.keys.lock().unwrap().push((path.clone(), key));
            let command = req
                .headers()
                .get("x-goog-upload-command")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if path == "/upload/v1beta/files" && command == "start" {
                let n = seen.sessions.fetch_add(1, Ordering::SeqCst);
                return Response::builder()
                    .header("x-goog-upload-status", "active")
                    .header(
                        "x-goog-upload-url",
                        format!("{base}/upload/v1beta/files?upload_id=up{n}"),
                    )
                    .body(Body::empty())
                    .unwrap();
            }
            if path == "/upload/v1beta/files" {
                let body = axum::body::to_bytes(req.into_body(), usize::MAX)
                    .await
                    .unwrap_or_default();
                let fin = command.contains("finalize");
                let answer = if fin {
                    format!(
                        "{{\"file\":{{\"name\":\"files/up{}\",\"sizeBytes\":\"{}\"}}}}",
                        body.len(),
                        body.len()
                    )
                } else {
                    String::new()
                };
                return Response::builder()
                    .header("x-goog-upload-status", if fin { "final" } else { "active" })
                    .body(Body::from(answer))
                    .unwrap();
            }
            match path.as_str() {
                "/v1beta/files/huge" => Response::new(filler(40 << 20)),
                "/v1beta/files/hugeerror" => {
                    let mut r = Response::new(filler(40 << 20));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                }
                p => {
                    format!("{{\"name\":\"{}\"}}", p.trim_start_matches("/v1beta/")).into_response()
                }
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    base
}

struct Setup {
    proxy: Proxy,
    state: Arc<ProxyState>,
    pool: Pool,
    dir: tempfile::TempDir,
    env: Env,
    seen: Seen,
    http: reqwest::Client,
}

async fn setup(max_upload_bytes: u64) -> Setup {
    let seen = Seen::default();
    let base = upstream(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    common::write_keys(dir.path(), &KEYS);
    let env = common::env(dir.path(), &base);
    let cfg = common::config(dir.path(), &env, "", "");
    let pool = create_pool(&cfg, &env, dir.path()).await.unwrap();
    let pcfg = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: vec![("a".into(), digest(TOKEN_A)), ("b".into(), digest(TOKEN_B))],
        max_upload_bytes,
        ..ProxyConfig::default()
    };
    let resources = pool.state.resources(pool.clock.clone()).unwrap();
    let state = Arc::new(
        common::state(&pool, &cfg, &pcfg)
            .with_resources(resources, common::resource_upstream(&cfg)),
    );
    let proxy = Proxy::start(state.clone(), &pcfg).await.unwrap();
    Setup {
        proxy,
        state,
        pool,
        dir,
        env,
        seen,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.base_url())
    }

    /// Starts a resumable upload as `token`: the proxy's session URL.
    async fn start_upload(&self, token: &str) -> String {
        let r = self
            .http
            .post(self.url("/upload/v1beta/files"))
            .header("x-goog-api-key", token)
            .header("x-goog-upload-protocol", "resumable")
            .header("x-goog-upload-command", "start")
            // The file's length as announced: as much as the smallest cap here allows, so
            // that what refuses a chunk below is the cap (a chunk past the announced length
            // is refused too, with 400: uploads.rs).
            .header("x-goog-upload-header-content-length", "1000")
            .body("{\"file\":{}}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["x-goog-upload-url"]
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// An upload command on a session, without a client token (as google-genai sends chunks).
    async fn chunk(&self, url: &str, offset: u64, bytes: usize) -> u16 {
        self.http
            .post(url)
            .header("x-goog-upload-command", "upload, finalize")
            .header("x-goog-upload-offset", offset.to_string())
            .body(vec![b'x'; bytes])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Reloads the proxy as `keyturn serve` does: these keys, these client tokens.
    async fn reload(&mut self, keys: &[(&str, &str, &str)], tokens: &[(&str, &str)]) {
        common::write_keys(self.dir.path(), keys);
        let cfg = common::config(self.dir.path(), &self.env, "", "");
        self.pool
            .reload(&cfg, &self.env, self.dir.path())
            .await
            .unwrap();
        self.state.reload(Reload {
            v1beta: self.pool.caller_for_version(&cfg, "v1beta").unwrap(),
            v1: self.pool.caller_for_version(&cfg, "v1").unwrap(),
            ledger: self.pool.ledger.clone(),
            tokens: tokens
                .iter()
                .map(|(l, t)| ((*l).to_owned(), digest(t)))
                .collect(),
            admin_tokens: Vec::new(),
            share_resources: false,
        });
    }

    /// The key the upstream saw on each request so far.
    fn keys_seen(&self) -> Vec<(String, String)> {
        self.seen.keys.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_to_resource_calls_are_read_with_a_bound() {
    let s = setup(ProxyConfig::default().max_upload_bytes).await;
    // A 40 MiB answer to a file lookup is refused, not held whole and relayed.
    let r = s
        .http
        .get(s.url("/v1beta/files/huge"))
        .header("x-goog-api-key", TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.len() < 4096, "{} bytes relayed", text.len());
    // Of an error, only the head is read.
    let r = s
        .http
        .get(s.url("/v1beta/files/hugeerror"))
        .header("x-goog-api-key", TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let len = r.bytes().await.unwrap().len();
    assert!(len <= 64 << 10, "{len} bytes of an error relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_filling_the_session_table_evicts_only_its_own_sessions() {
    let s = setup(ProxyConfig::default().max_upload_bytes).await;
    let a = s.start_upload(TOKEN_A).await;
    for _ in 0..keyturn_proxy::MAX_UPLOAD_SESSIONS {
        s.start_upload(TOKEN_B).await;
    }
    assert_eq!(
        s.chunk(&a, 0, 10).await,
        200,
        "client a's session was evicted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_cap_holds_over_a_sessions_chunks_not_per_chunk() {
    let s = setup(1000).await;
    let url = s.start_upload(TOKEN_A).await;
    // Each chunk under the cap, the file past it: refused before anything goes upstream.
    let before = s.keys_seen().len();
    assert_eq!(s.chunk(&url, 900, 200).await, 413);
    assert_eq!(s.chunk(&url, 5000, 1).await, 413);
    assert_eq!(
        s.keys_seen().len(),
        before,
        "a chunk past the cap went upstream"
    );
    // Up to the cap, taken.
    assert_eq!(s.chunk(&url, 900, 100).await, 200);
    // Chunks that state no offset count from the bytes already streamed.
    let url = s.start_upload(TOKEN_A).await;
    let plain = |n: usize| {
        s.http
            .post(&url)
            .header("x-goog-upload-command", "upload")
            .body(vec![b'x'; n])
            .send()
    };
    assert_eq!(plain(600).await.unwrap().status(), 200);
    let before = s.keys_seen().len();
    assert_eq!(plain(600).await.unwrap().status(), 413);
    assert_eq!(
        s.keys_seen().len(),
        before,
        "a chunk past the cap went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_a_removed_clients_sessions_and_a_removed_keys_calls() {
    let mut s = setup(ProxyConfig::default().max_upload_bytes).await;
    // Client a's token is removed: its session, admitted by id alone, admits nothing more.
    let a = s.start_upload(TOKEN_A).await;
    s.reload(&KEYS, &[("b", TOKEN_B)]).await;
    assert_eq!(s.chunk(&a, 0, 10).await, 404);

    // The key that started b's session is removed: the session ends (no other key can go on
    // with it), and no later call about a resource goes out with the removed key.
    let b = s.start_upload(TOKEN_B).await;
    let started_with = s
        .keys_seen()
        .last()
        .map(|(_, k)| k.clone())
        .unwrap_or_default();
    let kept: Vec<(&str, &str, &str)> = KEYS
        .iter()
        .copied()
        .filter(|(k, _, _)| *k != started_with)
        .collect();
    assert_eq!(kept.len(), 1);
    s.reload(&kept, &[("b", TOKEN_B)]).await;
    let before = s.keys_seen().len();
    assert_eq!(s.chunk(&b, 0, 10).await, 404);
    for i in 0..6 {
        let r = s
            .http
            .get(s.url(&format!("/v1beta/files/f{i}")))
            .header("x-goog-api-key", TOKEN_B)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = s.keys_seen();
    assert!(after.len() > before);
    assert!(
        after[before..].iter().all(|(_, k)| *k == kept[0].0),
        "a removed key was used after the reload: {:?}",
        after[before..]
            .iter()
            .map(|(p, k)| (p, *k == started_with))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_operator_disabled_takes_no_call_about_a_resource() {
    let s = setup(ProxyConfig::default().max_upload_bytes).await;
    let url = s.start_upload(TOKEN_A).await;
    let started_with = s
        .keys_seen()
        .last()
        .map(|(_, k)| k.clone())
        .unwrap_or_default();
    let ring = s.pool.ledger.keys();
    let (id, _) = ring
        .iter()
        .find(|(_, e)| e.key.expose() == started_with)
        .unwrap();
    s.pool.ledger.disable_by_admin(id, true).await.unwrap();
    let before = s.keys_seen().len();
    // Its upload session takes nothing more.
    assert_eq!(s.chunk(&url, 0, 10).await, 404);
    // Lookups, new uploads (resumable and multipart) go with the other key only.
    for i in 0..4 {
        let r = s
            .http
            .get(s.url(&format!("/v1beta/files/g{i}")))
            .header("x-goog-api-key", TOKEN_A)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        s.start_upload(TOKEN_A).await;
        let r = s
            .http
            .post(s.url("/upload/v1beta/files?uploadType=multipart"))
            .header("x-goog-api-key", TOKEN_A)
            .header("content-type", "multipart/related; boundary=x")
            .body("--x\r\n\r\n{}\r\n--x--\r\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = s.keys_seen();
    assert!(after.len() >= before + 12);
    assert!(
        after[before..].iter().all(|(_, k)| *k != started_with),
        "the disabled key was used: {:?}",
        after[before..]
            .iter()
            .map(|(p, k)| (p, *k == started_with))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_project_left_the_pool_is_sent_with_no_other_projects_key() {
    let mut s = setup(ProxyConfig::default().max_upload_bytes).await;
    let url = s.start_upload(TOKEN_A).await;
    assert_eq!(s.chunk(&url, 0, 10).await, 200);
    // The upstream named the file files/up10 (10 bytes); its owner is p1.
    s.reload(
        &[("AIzaSyTESTresourceAttackKeyThree0003", "three", "p2")],
        &[("a", TOKEN_A)],
    )
    .await;
    let before = s.keys_seen().len();
    let body = serde_json::json!({"contents": [{"role": "user", "parts": [
        {"fileData": {"mimeType": "application/pdf", "fileUri": "files/up10"}}
    ]}]});
    let r = s
        .http
        .post(s.url("/v1beta/models/gemini-2.5-flash:generateContent"))
        .header("x-goog-api-key", TOKEN_A)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("FAILED_PRECONDITION"), "{text}");
    let sent: Vec<_> = s.keys_seen()[before..]
        .iter()
        .filter(|(p, _)| p.contains("generateContent"))
        .cloned()
        .collect();
    assert!(sent.is_empty(), "sent with another project's key: {sent:?}");
}
