//! The batch client over real sockets, against a local server that answers with the Batch API's
//! real shapes: inline and file-based submissions (the resumable upload's two steps), polling,
//! results inline and from a results file, a free-tier project's `FAILED_PRECONDITION`, and an
//! upload URL that points at another host (never followed, so the key stays home).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use keyturn_core::{ApiKey, KeyEntry};
use keyturn_gemini::batch::batch_refused;
use keyturn_gemini::{
    BatchClient, BatchOutput, BatchRequest, BatchState, Transport, TransportConfig,
};
use parking_lot::Mutex;
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    /// (method, path, key header) of every request.
    requests: Vec<(String, String, String)>,
    /// Bodies of batchGenerateContent.
    submits: Vec<Value>,
    /// The uploaded file's bytes.
    uploaded: Vec<u8>,
}

fn key(secret: &str, label: &str, project: &str) -> KeyEntry {
    KeyEntry {
        key: ApiKey::new(secret).unwrap(),
        label: label.into(),
        project: project.into(),
        weight: 1,
    }
}

/// A server: key "AIzaSyTESTfree…" is on a free-tier project (FAILED_PRECONDITION); the job
/// `batches/inline-1` has inline results, `batches/file-1` a results file. `upload_to` is the
/// upload URL the start step hands back.
async fn server(upload_to: Option<String>) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let upload = upload_to.unwrap_or_else(|| format!("{base}/upload/v1beta/files?upload_id=u1"));
    let app = axum::Router::new().fallback(move |req: Request| {
        let seen = s2.clone();
        let upload = upload.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body: Bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let path = parts.uri.path().to_owned();
            let query = parts.uri.query().unwrap_or("").to_owned();
            let key = header(&parts.headers, "x-goog-api-key");
            seen.lock()
                .requests
                .push((parts.method.to_string(), path.clone(), key.clone()));
            if key.starts_with("AIzaSyTESTfree") {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": {"code": 400, "status": "FAILED_PRECONDITION",
                        "message": "Batch API is not available for free tier projects."}})),
                )
                    .into_response();
            }
            match (parts.method.as_str(), path.as_str()) {
                ("POST", "/v1beta/models/gemini-2.5-flash:batchGenerateContent") => {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    seen.lock().submits.push(v.clone());
                    let display = v["batch"]["displayName"].clone();
                    axum::Json(json!({"name": "batches/inline-1", "metadata": {
                        "name": "batches/inline-1", "displayName": display,
                        "state": "BATCH_STATE_PENDING"}}))
                    .into_response()
                }
                ("POST", "/upload/v1beta/files") if query.is_empty() => {
                    assert_eq!(header(&parts.headers, "x-goog-upload-command"), "start");
                    let mut h = HeaderMap::new();
                    h.insert("x-goog-upload-url", upload.parse().unwrap());
                    (h, axum::Json(json!({}))).into_response()
                }
                ("POST", "/upload/v1beta/files") => {
                    assert_eq!(
                        header(&parts.headers, "x-goog-upload-command"),
                        "upload, finalize"
                    );
                    seen.lock().uploaded = body.to_vec();
                    axum::Json(json!({"file": {"name": "files/in-1"}})).into_response()
                }
                ("GET", "/v1beta/batches/inline-1") => axum::Json(json!({
                    "name": "batches/inline-1", "done": true,
                    "metadata": {"state": "BATCH_STATE_SUCCEEDED"},
                    "response": {"inlinedResponses": {"inlinedResponses": [
                        {"response": {"candidates": [{"content": {"parts": [{"text": "{}"}]}}]}},
                        {"error": {"code": 13, "message": "internal"}}
                    ]}}}))
                .into_response(),
                ("GET", "/v1beta/batches/file-1") => axum::Json(json!({
                    "name": "batches/file-1", "done": true,
                    "metadata": {"state": "BATCH_STATE_SUCCEEDED",
                                 "output": {"responsesFile": "files/out-1"}}}))
                .into_response(),
                ("GET", "/download/v1beta/files/out-1:download") => concat!(
                    "{\"key\": \"b\", \"response\": {\"candidates\": []}}\n",
                    "{\"key\": \"a\", \"error\": {\"code\": 3, \"message\": \"bad item\"}}\n"
                )
                .into_response(),
                ("GET", "/v1beta/batches") => {
                    let page = if query.contains("pageToken=p2") {
                        json!({"operations": [{"name": "batches/two", "metadata": {"displayName": "kt-2", "state": "BATCH_STATE_RUNNING"}}]})
                    } else {
                        json!({"operations": [{"name": "batches/one", "metadata": {"displayName": "kt-1", "state": "BATCH_STATE_PENDING"}}], "nextPageToken": "p2"})
                    };
                    axum::Json(page).into_response()
                }
                ("POST", "/v1beta/batches/inline-1:cancel") => axum::Json(json!({})).into_response(),
                // A hostile upstream's words, each holding the key that asked.
                ("GET", "/v1beta/batches/echo-1") => axum::Json(json!({
                    "name": "batches/echo-1", "done": true,
                    "error": {"message": format!("job failed for key {key}")},
                    "metadata": {"state": "BATCH_STATE_SUCCEEDED"},
                    "response": {"inlinedResponses": [
                        {"error": {"message": format!("API key {key} not valid")}},
                        {"error": {"code": 7, "detail": key.clone()}}
                    ]}}))
                .into_response(),
                ("GET", "/v1beta/batches/echo-2") => axum::Json(json!({
                    "name": "batches/echo-2", "done": true,
                    "metadata": {"state": "BATCH_STATE_SUCCEEDED",
                                 "output": {"responsesFile": "files/echo-out"}}}))
                .into_response(),
                ("GET", "/download/v1beta/files/echo-out:download") => format!(
                    "{{\"key\": \"a\", \"error\": {{\"message\": \"key {key} refused\"}}}}\n"
                )
                .into_response(),
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn client(base: &str) -> BatchClient {
    BatchClient::new(
        Transport::new(&TransportConfig {
            base_url: base.into(),
            ..TransportConfig::default()
        })
        .unwrap(),
    )
}

fn requests(n: usize) -> Vec<BatchRequest> {
    (0..n)
        .map(|i| BatchRequest {
            key: format!("r{i}"),
            request: json!({"contents": [{"role": "user", "parts": [{"text": format!("request {i} {}", "x".repeat(200))}]}]}),
        })
        .collect()
}

const PAID: &str = "AIzaSyTESTpaid000000000000000000000000";
const FREE: &str = "AIzaSyTESTfree000000000000000000000000";

#[tokio::test]
async fn a_small_job_goes_inline_and_its_answers_come_back_in_order() {
    let (base, seen) = server(None).await;
    let k = key(PAID, "paid-1", "paid");
    let c = client(&base);
    let job = c
        .submit(&k, "gemini-2.5-flash", "kt-1", &requests(2))
        .await
        .unwrap();
    assert_eq!(job.name, "batches/inline-1");
    assert_eq!(job.state, BatchState::Pending);
    assert_eq!(job.display_name.as_deref(), Some("kt-1"));
    {
        let s = seen.lock();
        let sent = &s.submits[0]["batch"]["inputConfig"]["requests"]["requests"];
        assert_eq!(sent.as_array().unwrap().len(), 2);
        assert_eq!(sent[1]["metadata"]["key"], "r1");
        assert!(s.requests.iter().all(|(_, _, key)| key == PAID));
        assert!(s.uploaded.is_empty(), "a small job uploads no file");
    }
    let done = c.get(&k, &job.name).await.unwrap();
    assert_eq!(done.state, BatchState::Succeeded);
    let items = c.results(&k, &done).await.unwrap();
    assert_eq!(items.len(), 2);
    assert!(items[0].result.is_ok());
    assert_eq!(items[1].result, Err("internal".into()));
    c.cancel(&k, &job.name).await.unwrap();
}

#[tokio::test]
async fn a_job_above_the_inline_limit_goes_as_an_uploaded_jsonl_file() {
    let (base, seen) = server(None).await;
    let k = key(PAID, "paid-1", "paid");
    let c = client(&base).inline_limit(1_000);
    c.submit(&k, "gemini-2.5-flash", "kt-big", &requests(10))
        .await
        .unwrap();
    let s = seen.lock();
    assert_eq!(
        s.submits[0]["batch"]["inputConfig"],
        json!({"fileName": "files/in-1"})
    );
    let lines: Vec<Value> = s
        .uploaded
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[3]["key"], "r3");
    assert!(lines[3]["request"]["contents"].is_array());
}

#[tokio::test]
async fn results_are_read_from_a_results_file_with_their_keys() {
    let (base, _) = server(None).await;
    let k = key(PAID, "paid-1", "paid");
    let c = client(&base);
    let job = c.get(&k, "batches/file-1").await.unwrap();
    assert_eq!(job.output, Some(BatchOutput::File("files/out-1".into())));
    let items = c.results(&k, &job).await.unwrap();
    assert_eq!(items[0].key.as_deref(), Some("b"));
    assert!(items[0].result.is_ok());
    assert_eq!(items[1].result, Err("bad item".into()));
}

#[tokio::test]
async fn listing_follows_every_page() {
    let (base, _) = server(None).await;
    let jobs = client(&base)
        .list(&key(PAID, "paid-1", "paid"))
        .await
        .unwrap();
    let names: Vec<_> = jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["batches/one", "batches/two"]);
    assert_eq!(jobs[1].display_name.as_deref(), Some("kt-2"));
}

#[tokio::test]
async fn a_free_tier_refusal_says_no_batches_there_and_carries_no_key() {
    let (base, _) = server(None).await;
    let e = client(&base)
        .submit(
            &key(FREE, "free-1", "free"),
            "gemini-2.5-flash",
            "kt-1",
            &requests(1),
        )
        .await
        .unwrap_err();
    assert!(batch_refused(&e), "{e:?}");
    let text = format!("{e} {e:?}");
    assert!(text.contains("free-1"));
    assert!(!text.contains(FREE));
}

#[tokio::test]
async fn an_upload_url_on_another_host_is_never_followed() {
    let (evil, evil_seen) = server(None).await;
    let (base, _) = server(Some(format!("{evil}/upload/v1beta/files?upload_id=x"))).await;
    let e = client(&base)
        .inline_limit(10)
        .submit(
            &key(PAID, "paid-1", "paid"),
            "gemini-2.5-flash",
            "kt-1",
            &requests(2),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("upload URL"), "{e}");
    assert!(
        evil_seen.lock().requests.is_empty(),
        "the key went to the other host"
    );
}

#[tokio::test]
async fn names_from_answers_cannot_steer_the_url() {
    let (base, seen) = server(None).await;
    let c = client(&base);
    let k = key(PAID, "paid-1", "paid");
    for bad in [
        "batches/../files/x",
        "batches/a?b",
        "other/abc",
        "batches/",
        "batches/a/b",
    ] {
        assert!(c.get(&k, bad).await.is_err(), "{bad}");
    }
    assert!(seen.lock().requests.is_empty());
}

#[tokio::test]
async fn upstream_words_in_jobs_and_items_never_carry_the_key() {
    let (base, _) = server(None).await;
    let k = key(PAID, "paid-1", "paid");
    let c = client(&base);
    let mut words = Vec::new();
    for name in ["batches/echo-1", "batches/echo-2"] {
        let job = c.get(&k, name).await.unwrap();
        words.push(format!("{job:?}"));
        let items = c.results(&k, &job).await.unwrap();
        assert!(items.iter().all(|i| i.result.is_err()), "{items:?}");
        words.push(format!("{items:?}"));
    }
    for w in &words {
        assert!(!w.contains(PAID), "{w}");
    }
    assert!(words[0].contains("job failed for key"), "{}", words[0]);
}
