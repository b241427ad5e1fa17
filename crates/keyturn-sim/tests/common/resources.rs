//! What the resource tests share: a simulator with keys of two paid projects (`p1`, `p2`) and a
//! free one, ample limits, and helpers to call it over real HTTP.

use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{KeyState, Limits, ResourceConfig, SimConfig, SimKey, Simulator, Tier};
use serde_json::{Value, json};

pub const FLASH: &str = "gemini-2.5-flash";
pub const LITE: &str = "gemini-2.5-flash-lite";
pub const EMBED: &str = "gemini-embedding-001";
/// p1 and p2 pay (Batch Mode served); `free` does not.
pub const P1: &str = "made-up-p1-key";
pub const P1B: &str = "made-up-p1-second";
pub const P2: &str = "made-up-p2-key";
pub const FREE: &str = "made-up-free-key";

pub fn key(k: &str, label: &str, project: &str) -> SimKey {
    SimKey {
        key: k.into(),
        label: Some(label.into()),
        project: Some(project.into()),
        state: KeyState::Valid,
    }
}

pub struct Sim {
    pub sim: Simulator,
    pub http: reqwest::Client,
}

impl Sim {
    pub async fn start(resources: ResourceConfig) -> Self {
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    pub async fn send(
        &self,
        r: reqwest::RequestBuilder,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
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

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
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

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.call("GET", path, key, None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, key, Some(body)).await
    }

    pub async fn advance(&self, seconds: u64) {
        let r = self
            .http
            .post(self.url("/admin/advance"))
            .json(&json!({ "seconds": seconds }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    pub async fn stats(&self) -> Value {
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
    pub async fn upload(&self, key: &str, bytes: &[u8], mime: &str, chunk: usize) -> Value {
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

pub fn real_32(id: &str) -> Value {
    json!({"error": {"code": 403, "message": format!("You do not have permission to access the File {id} or it may not exist."), "status": "PERMISSION_DENIED"}})
}

pub fn with_file(uri: &str, snake: bool) -> Value {
    let part = if snake {
        json!({"file_data": {"mime_type": "application/pdf", "file_uri": uri}})
    } else {
        json!({"fileData": {"mimeType": "application/pdf", "fileUri": uri}})
    };
    json!({"contents": [{"role": "user", "parts": [part, {"text": "Summarise it."}]}]})
}

pub fn gen_path(model: &str) -> String {
    format!("/v1beta/models/{model}:generateContent")
}

/// An RFC 3339 timestamp of a response, in Unix milliseconds.
pub fn ms(v: &Value) -> i64 {
    v.as_str()
        .unwrap()
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond()
}
