//! What the corpus and project-state tests share: a simulator over keys of several projects and
//! states, the corpus as data, and the body each id should come back as.

use std::collections::BTreeMap;

use keyturn_sim::{KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::{Value, json};

pub const MODEL: &str = "gemini-3-flash-preview";
pub const OTHER: &str = "gemini-2.5-flash";
pub const EMBED: &str = "gemini-embedding-001";

/// What the corpus's bodies name as their model, read off the file by hand: a body that names a
/// model and is missing here fails `every_corpus_id_can_be_scripted…`.
pub const NAMED_MODELS: &[(&str, &str)] = &[
    ("real-00", "gemini-2.5-flash-lite"),
    ("real-01", "gemini-2.5-flash"),
    ("real-02", "gemini-2.5-flash"),
    ("real-03", "gemini-2.5-pro"),
    ("real-04", "gemini-2.5-pro"),
    ("real-05", "gemini-2.0-flash"),
    ("real-06", "gemini-2.5-pro"),
    ("real-07", "gemini-2.5-flash-preview-image"),
    ("real-12", "gemini-2.5-flash"),
    ("real-14", "gemini-embedding-2"),
    ("real-36", "gemma-3-12b-it"),
    ("real-37", "gemini-robotics-er-1.5-preview"),
];

pub fn corpus() -> Vec<Value> {
    serde_json::from_str(include_str!("../../data/gemini-errors/bodies.json")).unwrap()
}

pub fn entry(id: &str) -> Value {
    corpus().into_iter().find(|e| e["id"] == id).unwrap()
}

/// The corpus body as the simulator must send it for a request with key `label` of `project`
/// on `model`, from 127.0.0.1: the placeholders and the named model replaced.
pub fn expected(e: &Value, label: &str, project: &str, model: &str) -> Value {
    let id = e["id"].as_str().unwrap();
    let mut text = serde_json::to_string(&e["body"]).unwrap();
    text = text
        .replace("[key]", label)
        .replace("[project id hidden]", project)
        .replace("[project]", project)
        .replace("[ip]", "127.0.0.1");
    if let Some((_, named)) = NAMED_MODELS.iter().find(|(i, _)| *i == id) {
        text = text.replace(named, model);
    }
    serde_json::from_str(&text).unwrap()
}

pub fn key(secret: &str, label: &str, project: &str, state: KeyState) -> SimKey {
    SimKey {
        key: secret.into(),
        label: Some(label.into()),
        project: Some(project.into()),
        state,
    }
}

/// Made-up keys, built at run time so no key-shaped literal is committed.
pub fn secret(n: u32) -> String {
    format!("AIza{}{n:02}", "x".repeat(33))
}

pub fn base_config() -> SimConfig {
    let roomy = Limits::new(10_000, 100_000_000, 1_000_000);
    let mut models = BTreeMap::new();
    for m in [MODEL, OTHER, EMBED] {
        models.insert(m.to_owned(), roomy);
    }
    SimConfig {
        keys: vec![
            key(&secret(1), "k1", "p1", KeyState::Valid),
            key(&secret(2), "k2", "p1", KeyState::Valid),
            key(&secret(3), "k3", "p2", KeyState::Valid),
        ],
        models,
        ..SimConfig::default()
    }
}

pub struct Sim {
    pub sim: Simulator,
    pub http: reqwest::Client,
}

impl Sim {
    pub async fn start(cfg: SimConfig) -> Self {
        Self {
            sim: Simulator::start(cfg).await.unwrap(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    pub async fn reply(r: reqwest::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .header("x-goog-api-key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::reply(r).await
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .header("x-goog-api-key", key)
            .send()
            .await
            .unwrap();
        Self::reply(r).await
    }

    pub async fn generate(&self, key: &str, model: &str) -> (u16, Value) {
        self.post(
            &format!("/v1beta/models/{model}:generateContent"),
            key,
            hello(None),
        )
        .await
    }

    pub async fn embed(&self, key: &str) -> (u16, Value) {
        self.post(
            &format!("/v1beta/models/{EMBED}:embedContent"),
            key,
            json!({"content": {"parts": [{"text": "hello"}]}}),
        )
        .await
    }

    pub async fn count(&self, key: &str, model: &str, body: Value) -> (u16, Value) {
        self.post(&format!("/v1beta/models/{model}:countTokens"), key, body)
            .await
    }

    /// Both probes, on both versions: every answer's status.
    pub async fn probes(&self, key: &str, model: &str) -> Vec<(u16, Value)> {
        let mut out = Vec::new();
        for v in ["v1beta", "v1"] {
            out.push(self.get(&format!("/{v}/models"), key).await);
            out.push(self.get(&format!("/{v}/models/{model}"), key).await);
        }
        out
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::reply(r).await
    }

    pub async fn script(&self, rule: Value) -> (u16, Value) {
        self.admin(reqwest::Method::POST, "/admin/script", rule)
            .await
    }

    pub async fn stats(&self) -> Value {
        self.get("/admin/stats", "").await.1
    }

    pub async fn key_row(&self, label: &str) -> Value {
        self.stats().await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["label"] == label)
            .unwrap()
            .clone()
    }
}

pub fn hello(file_uri: Option<&str>) -> Value {
    let mut parts = vec![json!({"text": "hello"})];
    if let Some(uri) = file_uri {
        parts.push(json!({"fileData": {"mimeType": "application/pdf", "fileUri": uri}}));
    }
    json!({"contents": [{"role": "user", "parts": parts}]})
}
