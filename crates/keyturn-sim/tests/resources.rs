//! The simulator's Files API over real HTTP (resumable, multipart and raw uploads; get, list,
//! delete; expiry; limits), each file pinned to the project of the key that created it.
//! cachedContents and Batch Mode are in `caches_and_batches.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::resources::*;
use keyturn_sim::ResourceConfig;
use serde_json::{Value, json};

#[tokio::test]
async fn a_resumable_upload_belongs_to_its_project_and_only_its_project() {
    let s = Sim::start(ResourceConfig::default()).await;
    let pdf = b"%PDF-1.4\n".repeat(1000);
    let file = s.upload(P1, &pdf, "application/pdf", 4096).await;
    let name = file["name"].as_str().unwrap().to_owned();
    let id = name.strip_prefix("files/").unwrap().to_owned();
    assert_eq!(file["sizeBytes"], pdf.len().to_string());
    assert_eq!(file["mimeType"], "application/pdf");
    assert_eq!(file["state"], "ACTIVE");
    assert_eq!(file["displayName"], "a test file");
    assert_eq!(
        file["uri"],
        format!("{}/v1beta/files/{id}", s.sim.base_url())
    );
    let created = ms(&file["createTime"]);
    let expires = ms(&file["expirationTime"]);
    assert_eq!(expires - created, 48 * 3_600_000, "files live 48 hours");

    // Any key of p1 reads it and uses it, in both field spellings.
    for k in [P1, P1B] {
        let (status, got) = s.get(&format!("/v1beta/{name}"), k).await;
        assert_eq!((status, &got), (200, &file));
        for snake in [false, true] {
            let (status, body) = s
                .post(
                    &gen_path(FLASH),
                    k,
                    with_file(file["uri"].as_str().unwrap(), snake),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    }
    // p2's key gets the real bare 403 everywhere the file is named.
    assert_eq!(
        s.get(&format!("/v1beta/{name}"), P2).await,
        (403, real_32(&id))
    );
    assert_eq!(
        s.call("DELETE", &format!("/v1beta/{name}"), P2, None).await,
        (403, real_32(&id))
    );
    for snake in [false, true] {
        let body = with_file(file["uri"].as_str().unwrap(), snake);
        assert_eq!(
            s.post(&gen_path(FLASH), P2, body.clone()).await,
            (403, real_32(&id))
        );
        let (status, _) = s
            .post(
                &format!("/v1beta/models/{FLASH}:streamGenerateContent?alt=sse"),
                P2,
                body.clone(),
            )
            .await;
        assert_eq!(status, 403);
        let (status, _) = s
            .post(&format!("/v1beta/models/{FLASH}:countTokens"), P2, body)
            .await;
        assert_eq!(status, 403);
    }
    // A file nobody created: the same 403, as Google answers.
    let (status, body) = s.get("/v1beta/files/neverwas", P1).await;
    assert_eq!((status, body), (403, real_32("neverwas")));
    let (status, _) = s
        .post(
            &gen_path(FLASH),
            P1,
            with_file(
                "https://generativelanguage.googleapis.com/v1beta/files/neverwas",
                false,
            ),
        )
        .await;
    assert_eq!(status, 403);

    // p2 lists nothing; p1 lists it.
    assert_eq!(s.get("/v1beta/files", P2).await, (200, json!({})));
    let (_, list) = s.get("/v1beta/files", P1).await;
    assert_eq!(list["files"], json!([file]));

    // The stats say which key asked for the file, and that p2's requests were the only ones
    // that crossed projects.
    let stats = s.stats().await;
    let r = &stats["resources"];
    assert_eq!(r["by_project"]["p1"]["files"], json!([name]));
    let uses = r["uses"].as_array().unwrap();
    let on_file: Vec<&Value> = uses.iter().filter(|u| u["resource"] == name).collect();
    assert!(on_file.iter().all(|u| u["owner"] == "p1"));
    let crossing: Vec<&Value> = on_file
        .iter()
        .copied()
        .filter(|u| u["key_project"] != "p1")
        .collect();
    assert!(crossing.iter().all(|u| u["key"] == "p2-a"), "{crossing:?}");
    assert_eq!(r["cross_project_uses"], crossing.len());
    assert!(!stats.to_string().contains(P1), "no key in the stats");

    // The OpenAI-compatible route: the file as an image URL, refused in that endpoint's
    // envelope (the native body in a one-element list) for another project's key.
    let chat = json!({"model": FLASH, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in it?"},
        {"type": "image_url", "image_url": {"url": file["uri"]}},
    ]}]});
    let openai = |k: &str| {
        s.http
            .post(s.url("/v1beta/openai/chat/completions"))
            .bearer_auth(k)
            .json(&chat)
            .send()
    };
    let r = openai(P2).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([real_32(&id)]));
    assert_eq!(openai(P1B).await.unwrap().status(), 200);

    // Deleting it: gone for p1 too.
    assert_eq!(
        s.call("DELETE", &format!("/v1beta/{name}"), P1, None).await,
        (200, json!({}))
    );
    assert_eq!(
        s.get(&format!("/v1beta/{name}"), P1).await,
        (403, real_32(&id))
    );
}

#[tokio::test]
async fn multipart_and_raw_uploads_and_a_chosen_name() {
    let s = Sim::start(ResourceConfig::default()).await;
    let boundary = "sim-boundary";
    let audio = vec![7u8; 3000];
    let mut body = format!(
        "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{{\"file\": {{\"displayName\": \"clip\", \"name\": \"files/my-clip\"}}}}\r\n--{boundary}\r\nContent-Type: audio/mpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&audio);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (status, got, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files?uploadType=multipart"))
                .header("x-goog-api-key", P2)
                .header(
                    "content-type",
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(body.clone()),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["file"]["name"], "files/my-clip");
    assert_eq!(got["file"]["mimeType"], "audio/mpeg");
    assert_eq!(got["file"]["sizeBytes"], "3000");
    // The same name again: taken.
    let (status, again, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files?uploadType=multipart"))
                .header("x-goog-api-key", P2)
                .header(
                    "content-type",
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(body),
        )
        .await;
    assert_eq!(
        (status, again["error"]["status"].as_str()),
        (409, Some("ALREADY_EXISTS"))
    );
    assert_eq!(
        s.get("/v1beta/files/my-clip", P1).await,
        (403, real_32("my-clip"))
    );

    let (status, raw, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files"))
                .header("x-goog-api-key", P2)
                .header("content-type", "text/plain")
                .body("hello file"),
        )
        .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(raw["file"]["sizeBytes"], "10");
    let (_, list) = s.get("/v1beta/files?pageSize=1", P2).await;
    assert_eq!(list["files"].as_array().unwrap().len(), 1);
    let token = list["nextPageToken"].as_str().unwrap();
    let (_, rest) = s
        .get(&format!("/v1beta/files?pageSize=1&pageToken={token}"), P2)
        .await;
    assert_eq!(rest["files"].as_array().unwrap().len(), 1);
    assert!(rest.get("nextPageToken").is_none());
    assert_ne!(list["files"][0]["name"], rest["files"][0]["name"]);
}

#[tokio::test]
async fn files_expire_after_48_hours_of_simulated_time() {
    let s = Sim::start(ResourceConfig::default()).await;
    let file = s.upload(P1, b"short lived", "text/plain", 1024).await;
    let name = file["name"].as_str().unwrap();
    let id = name.strip_prefix("files/").unwrap();
    s.advance(47 * 3600).await;
    assert_eq!(s.get(&format!("/v1beta/{name}"), P1).await.0, 200);
    s.advance(3600).await;
    assert_eq!(
        s.get(&format!("/v1beta/{name}"), P1).await,
        (403, real_32(id))
    );
    assert_eq!(s.get("/v1beta/files", P1).await, (200, json!({})));
    let (status, _) = s
        .post(
            &gen_path(FLASH),
            P1,
            with_file(file["uri"].as_str().unwrap(), false),
        )
        .await;
    assert_eq!(status, 403, "an expired file is gone");
}

#[tokio::test]
async fn file_size_and_project_storage_limits_answer_like_google() {
    let s = Sim::start(ResourceConfig {
        max_file_bytes: 1000,
        project_storage_bytes: 1500,
        kept_file_bytes: 600,
        ..ResourceConfig::default()
    })
    .await;
    // Announced too large: refused at start.
    let (status, body, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files"))
                .header("x-goog-api-key", P1)
                .header("x-goog-upload-protocol", "resumable")
                .header("x-goog-upload-command", "start")
                .header("x-goog-upload-header-content-length", "1001")
                .json(&json!({})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["status"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
    // Not announced, sent too large: refused without storing.
    let (status, _, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files"))
                .header("x-goog-api-key", P1)
                .body(vec![0u8; 1001]),
        )
        .await;
    assert_eq!(status, 400);
    // A multipart body past what the simulator parses whole: refused.
    let (status, _, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files?uploadType=multipart"))
                .header("x-goog-api-key", P1)
                .header("content-type", "multipart/related; boundary=b")
                .body(vec![b'x'; 600 + 64 * 1024 + 1]),
        )
        .await;
    assert_eq!(status, 400);
    // 900 + 900 passes the project's 1500: the real FileStorageBytesPerProject 429.
    s.upload(P1, &[1u8; 900], "application/octet-stream", 300)
        .await;
    let (status, body, _) = s
        .send(
            s.http
                .post(s.url("/upload/v1beta/files"))
                .header("x-goog-api-key", P1B)
                .header("x-goog-upload-protocol", "resumable")
                .header("x-goog-upload-command", "start")
                .header("x-goog-upload-header-content-length", "900")
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, 429);
    let v = &body["error"]["details"][0]["violations"][0];
    assert_eq!(v["quotaId"], "FileStorageBytesPerProject");
    assert_eq!(v["quotaValue"], "1500");
    // Another project's storage is its own.
    s.upload(P2, &[1u8; 900], "application/octet-stream", 900)
        .await;
    assert_eq!(
        s.stats().await["resources"]["by_project"]["p1"]["files"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
