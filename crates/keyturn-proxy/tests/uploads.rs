//! Uploads through `keyturn serve` in front of `keyturn sim`: multipart uploads recorded and
//! pinned, forged and foreign upload sessions refused, hostile file ids refused before anything
//! goes upstream, the upload cap, and a file's bytes downloaded with its project's key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::affinity::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_is_recorded_and_pinned_too() {
    let s = setup(1000, None).await;
    let boundary = "keyturn-test-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{{\"file\": {{\"display_name\": \"notes\"}}}}\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nsome notes\r\n--{boundary}--\r\n"
    );
    let (status, got, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files?uploadType=multipart"))
                .header("x-goog-api-key", TOKEN_A)
                .header("x-goog-upload-protocol", "multipart")
                .header(
                    "content-type",
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(body),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    let name = got["file"]["name"].as_str().unwrap().to_owned();
    let uri = got["file"]["uri"].as_str().unwrap().to_owned();
    for i in 0..6 {
        let (status, body) = s.generate(&with_file(&uri, i % 2 == 1)).await;
        assert_eq!(status, 200, "{body}");
    }
    let uses = s.uses_of(&name).await;
    assert!(uses.len() >= 6);
    assert!(uses.iter().all(|(asked, own)| asked == own), "{uses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_upload_sessions_are_refused() {
    let s = setup(1000, None).await;
    let url = s.start_upload(TOKEN_A, 10).await;
    // Another client holding the URL gets nothing of it.
    let (status, _, _) = s
        .send(
            s.http
                .post(&url)
                .header("x-goog-api-key", TOKEN_B)
                .header("x-goog-upload-command", "upload, finalize")
                .header("x-goog-upload-offset", "0")
                .body(vec![b'x'; 10]),
        )
        .await;
    assert_eq!(status, 404);
    // A token that is no client's is refused as anywhere else.
    let (status, _, _) = s
        .send(
            s.http
                .post(&url)
                .header("x-goog-api-key", "kt_not-a-client")
                .header("x-goog-upload-command", "upload, finalize")
                .body(vec![b'x'; 10]),
        )
        .await;
    assert_eq!(status, 401);
    // Without a session id, no token is no entry.
    let (status, _, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files"))
                .header("x-goog-upload-protocol", "resumable")
                .header("x-goog-upload-command", "start")
                .json(&json!({"file": {}})),
        )
        .await;
    assert_eq!(status, 401);
    // Made-up, malformed and hostile ids are unknown sessions, with or without a token; nothing
    // goes upstream for them.
    for id in [
        "0".repeat(64),
        "zz".repeat(32),
        "..%2F..%2Fv1beta%2Fmodels".to_owned(),
        String::new(),
    ] {
        for token in [Some(TOKEN_A), None] {
            let mut r = s
                .http
                .post(s.url(&format!("/upload/v1beta/files?upload_id={id}")))
                .header("x-goog-upload-command", "upload, finalize")
                .body(vec![b'x'; 10]);
            if let Some(t) = token {
                r = r.header("x-goog-api-key", t);
            }
            let (status, body, _) = s.send(r).await;
            assert!(status == 404 || status == 400, "{id}: {status} {body}");
        }
    }
    // The session's owner still finishes it.
    let (status, body, _) = s
        .send(
            s.http
                .post(&url)
                .header("x-goog-api-key", TOKEN_A)
                .header("x-goog-upload-command", "upload, finalize")
                .header("x-goog-upload-offset", "0")
                .body(vec![b'x'; 10]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[test]
fn hostile_file_ids_are_refused_before_anything_goes_upstream() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup(1000, None));
    let addr = s.proxy.addr();
    let auth = format!("x-goog-api-key: {TOKEN_A}\r\n");
    for path in [
        "/v1beta/files/..%2F..%2Fmodels",
        "/v1beta/files/%2e%2e",
        "/v1beta/files/a%3Fkey%3Dx",
        "/v1beta/files/a%23b",
        "/v1beta/files/a:download",
        "/v1beta/files/a.b",
    ] {
        let (status, text) = common::raw(addr, "GET", path, &auth, "");
        assert_eq!(status, 400, "{path}: {text}");
    }
    let (status, text) = common::raw(addr, "GET", "/v1beta/files?pageToken=..%2Fx", &auth, "");
    assert_eq!(status, 400, "{text}");
    let stats: Value = rt.block_on(async {
        reqwest::get(format!("{}/admin/stats", s.sim.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert!(
        stats["resources"]["uses"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_cap_are_refused_whether_announced_or_streamed() {
    let s = setup_with(1000, None, 1000).await;
    // Announced at the start: refused before anything goes upstream.
    let (status, body, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files"))
                .header("x-goog-api-key", TOKEN_A)
                .header("x-goog-upload-protocol", "resumable")
                .header("x-goog-upload-command", "start")
                .header("x-goog-upload-header-content-length", "1001")
                .json(&json!({"file": {}})),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    // A chunk whose length says it is past the cap: refused before anything goes upstream.
    let url = s.start_upload(TOKEN_A, 10).await;
    let (status, body, _) = s
        .send(
            s.http
                .post(&url)
                .header("x-goog-upload-command", "upload, finalize")
                .header("x-goog-upload-offset", "0")
                .body(vec![b'x'; 1001]),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    // Streamed without a length, past the 10 bytes its start announced: cut off there and
    // refused by the proxy itself (400, as Gemini refuses a file longer than announced), never
    // left to the upstream to cut the stream off under the proxy's send (a 502). No file came
    // to be.
    let chunks = futures::stream::iter(
        (0..40).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 100]))),
    );
    let sent = s
        .http
        .post(&url)
        .header("x-goog-api-key", TOKEN_A)
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    // A client still writing may see the connection closed instead of the answer.
    if let Ok(r) = sent {
        assert_eq!(r.status().as_u16(), 400);
    }
    let stats: Value = s
        .http
        .get(format!("{}/admin/stats", s.sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let files: Vec<&Value> = stats["resources"]["by_project"]
        .as_object()
        .map(|m| {
            m.values()
                .flat_map(|p| p["files"].as_array().into_iter().flatten())
                .collect()
        })
        .unwrap_or_default();
    assert!(files.is_empty(), "{stats}");
}

/// A file's bytes (a batch's results file, here a small upload) come through the proxy's
/// download route, fetched with the owning project's key; a name that is not a file's is refused
/// before anything goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_bytes_are_downloaded_with_its_projects_key() {
    let s = setup(1000, None).await;
    let content = b"{\"key\": \"a\", \"response\": {}}\n".repeat(40);
    let file = s.upload(TOKEN_A, &content).await;
    let name = file["name"].as_str().unwrap().to_owned();
    let id = name.strip_prefix("files/").unwrap();
    for _ in 0..4 {
        let resp = s
            .http
            .get(s.url(&format!("/download/v1beta/files/{id}:download?alt=media")))
            .header("x-goog-api-key", TOKEN_A)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap().as_ref(), content.as_slice());
    }
    let uses = s.uses_of(&name).await;
    assert!(uses.len() >= 4, "{uses:?}");
    assert!(uses.iter().all(|(asked, own)| asked == own), "{uses:?}");
    for bad in ["..%2Fmodels:download", "abc", "a.b:download", "abc:delete"] {
        let resp = s
            .http
            .get(s.url(&format!("/download/v1beta/files/{bad}")))
            .header("x-goog-api-key", TOKEN_A)
            .send()
            .await
            .unwrap();
        assert!(
            matches!(resp.status().as_u16(), 400 | 404),
            "{bad}: {}",
            resp.status()
        );
    }
    // Without a client token: refused like every route.
    let resp = s
        .http
        .get(s.url(&format!("/download/v1beta/files/{id}:download?alt=media")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}
