//! The simulator's project-owned resources over real HTTP: the Files API (resumable, multipart
//! and raw uploads; get, list, delete; expiry; limits), cachedContents and Batch Mode, each
//! pinned to the project of the key that created it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{KeyState, Limits, ResourceConfig, SimConfig, SimKey, Simulator, Tier};
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const LITE: &str = "gemini-2.5-flash-lite";
const EMBED: &str = "gemini-embedding-001";
/// p1 and p2 pay (Batch Mode served); `free` does not.
const P1: &str = "made-up-p1-key";
const P1B: &str = "made-up-p1-second";
const P2: &str = "made-up-p2-key";
const FREE: &str = "made-up-free-key";

fn key(k: &str, label: &str, project: &str) -> SimKey {
    SimKey {
        key: k.into(),
        label: Some(label.into()),
        project: Some(project.into()),
        state: KeyState::Valid,
    }
}

struct Sim {
    sim: Simulator,
    http: reqwest::Client,
}

impl Sim {
    async fn start(resources: ResourceConfig) -> Self {
        let mut cfg = SimConfig {
            keys: vec![
                key(P1, "p1-a", "p1"),
                key(P1B, "p1-b", "p1"),
                key(P2, "p2-a", "p2"),
                key(FREE, "free-a", "free"),
            ],
            resources,
            ..SimConfig::default()
        };
        for m in [FLASH, LITE, EMBED] {
            cfg.models
                .insert(m.into(), Limits::new(10_000, 100_000_000, 1_000_000));
        }
        for p in ["p1", "p2"] {
            cfg.projects.insert(
                p.into(),
                ProjectConfig {
                    tier: Tier::Paid,
                    ..ProjectConfig::default()
                },
            );
        }
        Self {
            sim: Simulator::start(cfg).await.unwrap(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body, headers)
    }

    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .header("x-goog-api-key", key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let (s, b, _) = self.send(r).await;
        (s, b)
    }

    async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.call("GET", path, key, None).await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, key, Some(body)).await
    }

    async fn advance(&self, seconds: u64) {
        let r = self
            .http
            .post(self.url("/admin/advance"))
            .json(&json!({ "seconds": seconds }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn stats(&self) -> Value {
        self.http
            .get(self.url("/admin/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A resumable upload in chunks of `chunk` bytes, as the google-genai SDK sends one.
    async fn upload(&self, key: &str, bytes: &[u8], mime: &str, chunk: usize) -> Value {
        let (status, body, headers) = self
            .send(
                self.http
                    .post(self.url("/upload/v1beta/files"))
                    .header("x-goog-api-key", key)
                    .header("x-goog-upload-protocol", "resumable")
                    .header("x-goog-upload-command", "start")
                    .header(
                        "x-goog-upload-header-content-length",
                        bytes.len().to_string(),
                    )
                    .header("x-goog-upload-header-content-type", mime)
                    .json(&json!({"file": {"display_name": "a test file"}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-goog-upload-status"], "active");
        let url = headers["x-goog-upload-url"].to_str().unwrap().to_owned();
        assert!(url.starts_with(&self.sim.base_url()), "{url}");
        let mut offset = 0;
        loop {
            let end = (offset + chunk).min(bytes.len());
            let last = end == bytes.len();
            // The chunks carry no key: the upload URL is the session, as Google's upload_id is.
            let (status, body, headers) = self
                .send(
                    self.http
                        .post(&url)
                        .header(
                            "x-goog-upload-command",
                            if last { "upload, finalize" } else { "upload" },
                        )
                        .header("x-goog-upload-offset", offset.to_string())
                        .body(bytes[offset..end].to_vec()),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            if last {
                assert_eq!(headers["x-goog-upload-status"], "final");
                return body["file"].clone();
            }
            assert_eq!(headers["x-goog-upload-status"], "active");
            offset = end;
        }
    }
}

fn real_32(id: &str) -> Value {
    json!({"error": {"code": 403, "message": format!("You do not have permission to access the File {id} or it may not exist."), "status": "PERMISSION_DENIED"}})
}

fn with_file(uri: &str, snake: bool) -> Value {
    let part = if snake {
        json!({"file_data": {"mime_type": "application/pdf", "file_uri": uri}})
    } else {
        json!({"fileData": {"mimeType": "application/pdf", "fileUri": uri}})
    };
    json!({"contents": [{"role": "user", "parts": [part, {"text": "Summarise it."}]}]})
}

fn gen_path(model: &str) -> String {
    format!("/v1beta/models/{model}:generateContent")
}

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

/// An RFC 3339 timestamp of a response, in Unix milliseconds.
fn ms(v: &Value) -> i64 {
    v.as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
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

fn long_text(words: usize) -> String {
    (0..words).map(|i| format!("word{i} ")).collect()
}

#[tokio::test]
async fn cached_contents_are_the_projects_and_follow_the_clock() {
    let s = Sim::start(ResourceConfig::default()).await;
    let small = json!({"model": format!("models/{FLASH}"), "contents": [{"role": "user", "parts": [{"text": "tiny"}]}]});
    let (status, body) = s.post("/v1beta/cachedContents", P1, small).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "Cached content is too small. total_token_count=1, min_total_token_count=1024"
    );

    let text = long_text(700); // ~5,000 characters: over 1,024 tokens
    let create = json!({
        "model": format!("models/{FLASH}"),
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "system_instruction": {"parts": [{"text": "You answer from the document."}]},
        "ttl": "300s",
        "displayName": "doc",
    });
    let (status, cache) = s.post("/v1beta/cachedContents", P1, create).await;
    assert_eq!(status, 200, "{cache}");
    let name = cache["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("cachedContents/"));
    assert_eq!(cache["model"], format!("models/{FLASH}"));
    let tokens = cache["usageMetadata"]["totalTokenCount"].as_u64().unwrap();
    assert!(tokens >= 1024);
    let ttl = ms(&cache["expireTime"]) - ms(&cache["createTime"]);
    assert_eq!(ttl, 300_000);

    // Generate with it: the cached tokens are counted and named.
    let ask = json!({"cachedContent": name, "contents": [{"role": "user", "parts": [{"text": "What is word3?"}]}]});
    let (status, r) = s.post(&gen_path(FLASH), P1B, ask.clone()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usageMetadata"]["cachedContentTokenCount"], tokens);
    assert!(r["usageMetadata"]["promptTokenCount"].as_u64().unwrap() > tokens);
    // countTokens of the whole request counts the cache too, and names it.
    let (status, n) = s
        .post(
            &format!("/v1beta/models/{FLASH}:countTokens"),
            P1,
            json!({"generateContentRequest": {"model": format!("models/{FLASH}"), "cachedContent": name, "contents": ask["contents"]}}),
        )
        .await;
    assert_eq!(status, 200, "{n}");
    assert_eq!(n["cachedContentTokenCount"], tokens);
    assert!(n["totalTokens"].as_u64().unwrap() > tokens);
    // Another project's key: 403; another model: 400; settings the cache holds: 400.
    let (status, body) = s.post(&gen_path(FLASH), P2, ask.clone()).await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["message"],
        "CachedContent not found (or permission denied)"
    );
    assert_eq!(s.get(&format!("/v1beta/{name}"), P2).await.0, 403);
    let (status, body) = s.post(&gen_path(LITE), P1, ask.clone()).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has to be the same")
    );
    let mut with_si = ask.clone();
    with_si["systemInstruction"] = json!({"parts": [{"text": "x"}]});
    assert_eq!(s.post(&gen_path(FLASH), P1, with_si).await.0, 400);

    // get, list, patch the ttl, and expiry on the clock.
    assert_eq!(
        s.get(&format!("/v1beta/{name}"), P1).await,
        (200, cache.clone())
    );
    let (_, list) = s.get("/v1beta/cachedContents", P1B).await;
    assert_eq!(list["cachedContents"].as_array().unwrap().len(), 1);
    assert_eq!(s.get("/v1beta/cachedContents", P2).await, (200, json!({})));
    s.advance(200).await;
    let (status, patched) = s
        .call(
            "PATCH",
            &format!("/v1beta/{name}?updateMask=ttl"),
            P1,
            Some(json!({"ttl": "600s"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let (status, _) = s
        .call(
            "PATCH",
            &format!("/v1beta/{name}?updateMask=model"),
            P1,
            Some(json!({"ttl": "600s"})),
        )
        .await;
    assert_eq!(status, 400, "only the expiry can change");
    s.advance(500).await;
    assert_eq!(
        s.post(&gen_path(FLASH), P1, ask.clone()).await.0,
        200,
        "the patch moved the expiry"
    );
    s.advance(200).await;
    assert_eq!(s.post(&gen_path(FLASH), P1, ask).await.0, 403, "expired");
    assert_eq!(s.get("/v1beta/cachedContents", P1).await, (200, json!({})));

    // Delete.
    let (_, c2) = s
        .post(
            "/v1beta/cachedContents",
            P2,
            json!({"model": format!("models/{FLASH}"), "contents": [{"parts": [{"text": long_text(700)}]}]}),
        )
        .await;
    let n2 = c2["name"].as_str().unwrap();
    assert_eq!(
        s.call("DELETE", &format!("/v1beta/{n2}"), P1, None).await.0,
        403
    );
    assert_eq!(
        s.call("DELETE", &format!("/v1beta/{n2}"), P2, None).await,
        (200, json!({}))
    );
    assert_eq!(s.get(&format!("/v1beta/{n2}"), P2).await.0, 403);
}

fn inline_batch(prompts: &[&str]) -> Value {
    let requests: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "request": {"contents": [{"role": "user", "parts": [{"text": p}]}]},
                "metadata": {"key": format!("request-{i}")},
            })
        })
        .collect();
    json!({"batch": {"display_name": "sim batch", "input_config": {"requests": {"requests": requests}}}})
}

fn batch_path(model: &str) -> String {
    format!("/v1beta/models/{model}:batchGenerateContent")
}

#[tokio::test]
async fn a_batch_runs_on_the_clock_and_answers_like_the_interactive_route() {
    let s = Sim::start(ResourceConfig {
        batch_pending_secs: 10,
        batch_running_secs: 60,
        ..ResourceConfig::default()
    })
    .await;
    let prompts = ["Name a river in Vienna.", "Name a bridge in London."];
    // Free tier: the real FAILED_PRECONDITION.
    let (status, body) = s
        .post(&batch_path(FLASH), FREE, inline_batch(&prompts))
        .await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({"error": {"code": 400, "message": "Precondition check failed.", "status": "FAILED_PRECONDITION"}})
        )
    );

    // Billing enabled at run time: served.
    let r = s
        .http
        .put(s.url("/admin/projects"))
        .json(&json!({"project": "free", "tier": "paid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.post(&batch_path(FLASH), FREE, inline_batch(&prompts))
            .await
            .0,
        200
    );

    let (status, op) = s.post(&batch_path(FLASH), P1, inline_batch(&prompts)).await;
    assert_eq!(status, 200, "{op}");
    let name = op["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("batches/"));
    assert_eq!(
        op["metadata"]["@type"],
        "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
    );
    assert_eq!(op["metadata"]["state"], "BATCH_STATE_PENDING");
    assert_eq!(op["metadata"]["model"], format!("models/{FLASH}"));
    assert_eq!(op["metadata"]["displayName"], "sim batch");
    assert_eq!(op["metadata"]["batchStats"]["requestCount"], "2");
    assert!(op.get("done").is_none());

    let state = |v: &Value| v["metadata"]["state"].as_str().unwrap().to_owned();
    s.advance(10).await;
    let (_, running) = s.get(&format!("/v1beta/{name}"), P1B).await;
    assert_eq!(state(&running), "BATCH_STATE_RUNNING");
    // Another project's key does not see it.
    assert_eq!(s.get(&format!("/v1beta/{name}"), P2).await.0, 404);
    assert_eq!(s.get("/v1beta/batches", P2).await, (200, json!({})));
    s.advance(60).await;
    let (_, done) = s.get(&format!("/v1beta/{name}"), P1).await;
    assert_eq!(state(&done), "BATCH_STATE_SUCCEEDED");
    assert_eq!(done["done"], true);
    assert_eq!(
        done["metadata"]["batchStats"]["successfulRequestCount"],
        "2"
    );
    let inlined = done["response"]["inlinedResponses"]["inlinedResponses"]
        .as_array()
        .unwrap();
    assert_eq!(
        done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
            .as_array()
            .unwrap(),
        inlined
    );
    assert_eq!(inlined.len(), 2);
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(inlined[i]["metadata"]["key"], format!("request-{i}"));
        let (_, interactive) = s
            .post(
                &gen_path(FLASH),
                P2,
                json!({"contents": [{"role": "user", "parts": [{"text": p}]}]}),
            )
            .await;
        assert_eq!(
            inlined[i]["response"]["candidates"],
            interactive["candidates"]
        );
        assert_eq!(
            inlined[i]["response"]["usageMetadata"],
            interactive["usageMetadata"]
        );
    }
    // The same answer on every poll.
    assert_eq!(s.get(&format!("/v1beta/{name}"), P1).await.1, done);
    let (_, list) = s.get("/v1beta/batches", P1).await;
    assert_eq!(list["operations"], json!([done]));
    assert_eq!(
        s.call("DELETE", &format!("/v1beta/{name}"), P2, None)
            .await
            .0,
        404
    );
    assert_eq!(
        s.call("DELETE", &format!("/v1beta/{name}"), P1, None).await,
        (200, json!({}))
    );
    assert_eq!(s.get(&format!("/v1beta/{name}"), P1).await.0, 404);
    let stats = s.stats().await;
    let uses = stats["resources"]["uses"].as_array().unwrap();
    assert!(
        uses.iter()
            .filter(|u| u["resource"] == name)
            .any(|u| u["key"] == "p2-a" && u["owner"] == "p1")
    );
}

#[tokio::test]
async fn cancel_expiry_and_per_item_errors() {
    let s = Sim::start(ResourceConfig {
        batch_pending_secs: 10,
        batch_running_secs: 49 * 3600,
        batch_item_error_every: 2,
        ..ResourceConfig::default()
    })
    .await;
    let (_, a) = s
        .post(
            &batch_path(FLASH),
            P1,
            inline_batch(&["one", "two", "three"]),
        )
        .await;
    let (_, b) = s
        .post(&batch_path(FLASH), P1, inline_batch(&["four"]))
        .await;
    let (a, b) = (a["name"].as_str().unwrap(), b["name"].as_str().unwrap());
    assert_eq!(
        s.post(&format!("/v1beta/{a}:cancel"), P2, json!({}))
            .await
            .0,
        404
    );
    assert_eq!(
        s.post(&format!("/v1beta/{a}:cancel"), P1, json!({})).await,
        (200, json!({}))
    );
    let (_, got) = s.get(&format!("/v1beta/{a}"), P1).await;
    assert_eq!(got["metadata"]["state"], "BATCH_STATE_CANCELLED");
    assert_eq!(got["done"], true);
    assert!(got.get("response").is_none());
    // Running more than 48 hours: expired.
    s.advance(48 * 3600).await;
    let (_, got) = s.get(&format!("/v1beta/{b}"), P1).await;
    assert_eq!(got["metadata"]["state"], "BATCH_STATE_EXPIRED");

    // Per-item errors: every second request.
    let s = Sim::start(ResourceConfig {
        batch_pending_secs: 1,
        batch_running_secs: 1,
        batch_item_error_every: 2,
        ..ResourceConfig::default()
    })
    .await;
    let (_, op) = s
        .post(
            &batch_path(FLASH),
            P1,
            inline_batch(&["one", "two", "three"]),
        )
        .await;
    s.advance(5).await;
    let (_, done) = s
        .get(&format!("/v1beta/{}", op["name"].as_str().unwrap()), P1)
        .await;
    let items = done["response"]["inlinedResponses"]["inlinedResponses"]
        .as_array()
        .unwrap();
    assert!(items[0].get("response").is_some());
    assert_eq!(items[1]["error"]["code"], 13);
    assert!(items[2].get("response").is_some());
    assert_eq!(done["metadata"]["batchStats"]["failedRequestCount"], "1");
}

#[tokio::test]
async fn a_batch_from_a_jsonl_file_writes_a_results_file() {
    let s = Sim::start(ResourceConfig {
        batch_pending_secs: 1,
        batch_running_secs: 1,
        ..ResourceConfig::default()
    })
    .await;
    let jsonl = concat!(
        r#"{"key": "a", "request": {"contents": [{"parts": [{"text": "Hello there"}]}]}}"#,
        "\n",
        r#"{"key": "b", "request": {"contnets": []}}"#,
        "\n"
    );
    let input = s
        .upload(P1, jsonl.as_bytes(), "application/jsonl", 4096)
        .await;
    let input_name = input["name"].as_str().unwrap();
    let body =
        json!({"batch": {"displayName": "from file", "inputConfig": {"fileName": input_name}}});
    // Another project may not read p1's input file.
    let (status, _) = s.post(&batch_path(FLASH), P2, body.clone()).await;
    assert_eq!(status, 403);
    let (status, op) = s.post(&batch_path(FLASH), P1, body).await;
    assert_eq!(status, 200, "{op}");
    s.advance(5).await;
    let (_, done) = s
        .get(&format!("/v1beta/{}", op["name"].as_str().unwrap()), P1)
        .await;
    assert_eq!(done["metadata"]["state"], "BATCH_STATE_SUCCEEDED");
    let results = done["response"]["responsesFile"].as_str().unwrap();
    assert_eq!(done["metadata"]["output"]["responsesFile"], results);
    let r = s
        .http
        .get(s.url(&format!("/download/v1beta/{results}:download?alt=media")))
        .header("x-goog-api-key", P1B)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["key"], "a");
    let (_, interactive) = s
        .post(
            &gen_path(FLASH),
            P1,
            json!({"contents": [{"parts": [{"text": "Hello there"}]}]}),
        )
        .await;
    assert_eq!(
        lines[0]["response"]["candidates"],
        interactive["candidates"]
    );
    assert_eq!(
        (lines[1]["key"].as_str(), lines[1]["error"]["code"].as_u64()),
        (Some("b"), Some(3))
    );
    let dl = s
        .http
        .get(s.url(&format!("/download/v1beta/{results}:download?alt=media")))
        .header("x-goog-api-key", P2)
        .send()
        .await
        .unwrap();
    assert_eq!(dl.status(), 403, "the results file is p1's");
}

#[tokio::test]
async fn batch_limits_per_project_and_the_embedding_batch() {
    let s = Sim::start(ResourceConfig {
        batch_concurrent: 2,
        batch_enqueued_tokens: 40,
        ..ResourceConfig::default()
    })
    .await;
    assert_eq!(
        s.post(&batch_path(FLASH), P1, inline_batch(&["a"])).await.0,
        200
    );
    // ~25 tokens more than the 40 enqueued for the model: refused; another model has room.
    let long = "x".repeat(160);
    let (status, body) = s.post(&batch_path(FLASH), P1, inline_batch(&[&long])).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        body["error"]["details"][0]["violations"][0]["quotaValue"],
        "40"
    );
    assert_eq!(
        s.post(&batch_path(LITE), P1, inline_batch(&["b"])).await.0,
        200
    );
    // Two in flight: a third is refused for p1, not for p2.
    let (status, body) = s.post(&batch_path(LITE), P1, inline_batch(&["c"])).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        s.post(&batch_path(LITE), P2, inline_batch(&["c"])).await.0,
        200
    );

    let embed = json!({"batch": {"displayName": "vectors", "inputConfig": {"requests": {"requests": [
        {"request": {"content": {"parts": [{"text": "first"}]}, "outputDimensionality": 8}},
        {"request": {"content": {"parts": [{"text": "second"}]}, "outputDimensionality": 8}},
    ]}}}});
    let (status, op) = s
        .post(
            &format!("/v1beta/models/{EMBED}:asyncBatchEmbedContent"),
            P2,
            embed,
        )
        .await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(
        op["metadata"]["@type"],
        "type.googleapis.com/google.ai.generativelanguage.v1main.EmbedContentBatch"
    );
    s.advance(3600).await;
    let (_, done) = s
        .get(&format!("/v1beta/{}", op["name"].as_str().unwrap()), P2)
        .await;
    let items = done["response"]["inlinedResponses"]["inlinedResponses"]
        .as_array()
        .unwrap();
    let (_, single) = s
        .post(
            &format!("/v1beta/models/{EMBED}:embedContent"),
            P2,
            json!({"content": {"parts": [{"text": "first"}]}, "outputDimensionality": 8}),
        )
        .await;
    assert_eq!(items[0]["response"]["embedding"], single["embedding"]);
    // A generation model has no embedding batch, and the other way round.
    assert_eq!(
        s.post(
            &format!("/v1beta/models/{FLASH}:asyncBatchEmbedContent"),
            P2,
            json!({})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        s.post(&batch_path(EMBED), P2, inline_batch(&["x"])).await.0,
        404
    );
}
