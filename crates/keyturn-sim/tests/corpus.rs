//! The simulator sends every error shape of the real-body corpus, scripted by id, and answers the
//! cost-free probes (`GET models…`) the way the real service does in each case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{
    KeyState, Limits, ProjectState, Route, ScriptRule, SimConfig, SimKey, Simulator,
};
use serde_json::{Value, json};

const MODEL: &str = "gemini-3-flash-preview";
const OTHER: &str = "gemini-2.5-flash";
const EMBED: &str = "gemini-embedding-001";

/// What the corpus's bodies name as their model, read off the file by hand: a body that names a
/// model and is missing here fails `every_corpus_id_can_be_scripted…`.
const NAMED_MODELS: &[(&str, &str)] = &[
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

fn corpus() -> Vec<Value> {
    serde_json::from_str(include_str!("../data/gemini-errors/bodies.json")).unwrap()
}

fn entry(id: &str) -> Value {
    corpus().into_iter().find(|e| e["id"] == id).unwrap()
}

/// The corpus body as the simulator must send it for a request with key `label` of `project`
/// on `model`, from 127.0.0.1: the placeholders and the named model replaced.
fn expected(e: &Value, label: &str, project: &str, model: &str) -> Value {
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

fn key(secret: &str, label: &str, project: &str, state: KeyState) -> SimKey {
    SimKey {
        key: secret.into(),
        label: Some(label.into()),
        project: Some(project.into()),
        state,
    }
}

/// Made-up keys, built at run time so no key-shaped literal is committed.
fn secret(n: u32) -> String {
    format!("AIza{}{n:02}", "x".repeat(33))
}

fn base_config() -> SimConfig {
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

struct Sim {
    sim: Simulator,
    http: reqwest::Client,
}

impl Sim {
    async fn start(cfg: SimConfig) -> Self {
        Self {
            sim: Simulator::start(cfg).await.unwrap(),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.base_url())
    }

    async fn reply(r: reqwest::Response) -> (u16, Value) {
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
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

    async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .header("x-goog-api-key", key)
            .send()
            .await
            .unwrap();
        Self::reply(r).await
    }

    async fn generate(&self, key: &str, model: &str) -> (u16, Value) {
        self.post(
            &format!("/v1beta/models/{model}:generateContent"),
            key,
            hello(None),
        )
        .await
    }

    async fn embed(&self, key: &str) -> (u16, Value) {
        self.post(
            &format!("/v1beta/models/{EMBED}:embedContent"),
            key,
            json!({"content": {"parts": [{"text": "hello"}]}}),
        )
        .await
    }

    async fn count(&self, key: &str, model: &str, body: Value) -> (u16, Value) {
        self.post(&format!("/v1beta/models/{model}:countTokens"), key, body)
            .await
    }

    /// Both probes, on both versions: every answer's status.
    async fn probes(&self, key: &str, model: &str) -> Vec<(u16, Value)> {
        let mut out = Vec::new();
        for v in ["v1beta", "v1"] {
            out.push(self.get(&format!("/{v}/models"), key).await);
            out.push(self.get(&format!("/{v}/models/{model}"), key).await);
        }
        out
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        Self::reply(r).await
    }

    async fn script(&self, rule: Value) -> (u16, Value) {
        self.admin(reqwest::Method::POST, "/admin/script", rule)
            .await
    }

    async fn stats(&self) -> Value {
        self.get("/admin/stats", "").await.1
    }

    async fn key_row(&self, label: &str) -> Value {
        self.stats().await["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["label"] == label)
            .unwrap()
            .clone()
    }
}

fn hello(file_uri: Option<&str>) -> Value {
    let mut parts = vec![json!({"text": "hello"})];
    if let Some(uri) = file_uri {
        parts.push(json!({"fileData": {"mimeType": "application/pdf", "fileUri": uri}}));
    }
    json!({"contents": [{"role": "user", "parts": parts}]})
}

#[test]
fn the_corpus_copy_is_byte_equal_to_the_classifiers() {
    let here = concat!(env!("CARGO_MANIFEST_DIR"), "/data/gemini-errors");
    let there = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../keyturn-gemini/tests/data/gemini-errors"
    );
    for file in ["bodies.json", "README.md"] {
        let a = std::fs::read(format!("{here}/{file}")).unwrap();
        let b = std::fs::read(format!("{there}/{file}")).unwrap();
        assert!(
            a == b,
            "{file}: the simulator's copy and keyturn-gemini's differ; copy the newer over the other"
        );
    }
    // What is compiled in is that file.
    assert_eq!(
        keyturn_sim::corpus::BODIES_JSON.as_bytes(),
        std::fs::read(format!("{here}/bodies.json")).unwrap()
    );
    // Every entry names where it was seen.
    for e in corpus() {
        assert!(!e["source"].as_str().unwrap().is_empty(), "{}", e["id"]);
    }
}

#[tokio::test]
async fn every_corpus_id_can_be_scripted_and_comes_back_as_the_real_body() {
    let s = Sim::start(base_config()).await;
    let entries = corpus();
    assert!(entries.len() >= 34);
    for e in &entries {
        let id = e["id"].as_str().unwrap();
        let text = serde_json::to_string(&e["body"]).unwrap();
        if !NAMED_MODELS.iter().any(|(i, _)| *i == id) {
            assert!(
                !text.contains("models/") && !text.contains("\"model\""),
                "{id} names a model: add it to NAMED_MODELS"
            );
        }
        let (st, _) = s
            .script(json!({"shape": id, "key": "k1", "model": MODEL, "times": 1}))
            .await;
        assert_eq!(st, 200, "{id}");
        let (status, body) = s.generate(&secret(1), MODEL).await;
        assert_eq!(
            u64::from(status),
            e["status"].as_u64().unwrap(),
            "{id}: {body}"
        );
        assert_eq!(body, expected(e, "k1", "p1", MODEL), "{id}");
        assert!(
            !body.to_string().contains(&secret(1)),
            "{id}: the key itself is never in a scripted body"
        );
        // Spent after one answer: the next request is served.
        assert_eq!(s.generate(&secret(1), MODEL).await.0, 200, "{id}");
    }
    // Another key and another model were never touched by the scripts.
    assert_eq!(s.generate(&secret(2), MODEL).await.0, 200);
    assert_eq!(s.key_row("k1").await["by_status"]["200"], entries.len());
}

#[tokio::test]
async fn scripts_load_from_toml_and_count_down() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sim.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[[keys]]
key = "{k1}"
label = "k1"
project = "p1"
[[keys]]
key = "{k3}"
label = "k3"
project = "p2"

[projects."p9"]
state = "credits-depleted"
models_off = {{ "{MODEL}" = "real-20" }}
files = ["files/abc123"]

[[script]]
shape = "real-39"
project = "p1"
model = "{OTHER}"
method = "generateContent"
times = 2

[[script]]
shape = "real-09"
key = "k3"
"#,
            k1 = secret(1),
            k3 = secret(3)
        ),
    )
    .unwrap();
    let cfg = SimConfig::from_file(&p).unwrap();
    assert_eq!(
        cfg.script[0],
        ScriptRule {
            shape: "real-39".into(),
            key: None,
            project: Some("p1".into()),
            model: Some(OTHER.into()),
            method: Some(Route::GenerateContent),
            times: Some(2),
        }
    );
    let p9 = &cfg.projects["p9"];
    assert_eq!(p9.state, ProjectState::CreditsDepleted);
    assert_eq!(p9.models_off[MODEL], "real-20");
    assert_eq!(cfg.file_owner("abc123"), Some("p9"));
    let s = Sim::start(cfg).await;
    let overloaded = entry("real-39");
    for _ in 0..2 {
        let (st, body) = s.generate(&secret(1), OTHER).await;
        assert_eq!((st, &body), (503, &overloaded["body"]));
    }
    let (_, listed) = s.get("/admin/script", "").await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "the first is spent: {listed}"
    );
    assert_eq!(listed[0]["shape"], "real-09");
    assert_eq!(listed[0]["remaining"], Value::Null, "always");
    assert_eq!(s.generate(&secret(1), OTHER).await.0, 200);
    // Always, on every call of k3, but a probe still answers (a throttle is not about the key).
    for _ in 0..3 {
        assert_eq!(s.generate(&secret(3), OTHER).await.0, 429);
    }
    assert!(s.probes(&secret(3), OTHER).await.iter().all(|r| r.0 == 200));
    let (st, _) = s
        .admin(reqwest::Method::DELETE, "/admin/script", json!(null))
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.generate(&secret(3), OTHER).await.0, 200);
}

#[tokio::test]
async fn scripts_from_outside_are_checked() {
    let s = Sim::start(base_config()).await;
    for (rule, says) in [
        (json!({"shape": "real-99"}), "real-99"),
        (json!({"shape": "real-26", "times": 0}), "times"),
        (json!({"shape": "real-26", "key": "nobody"}), "nobody"),
        (json!({"shape": "real-26", "project": "p9"}), "p9"),
        (json!({"shape": "real-26", "model": "gemini-9"}), "gemini-9"),
        (
            json!({"shape": "real-26", "method": "deleteModel"}),
            "deleteModel",
        ),
        (json!({"shape": "real-26", "colour": "red"}), "colour"),
        (
            json!({"shape": "real-26", "model": MODEL, "method": "listModels"}),
            "listModels",
        ),
        (
            json!({"shape": "real-26", "key": "k1", "project": "p2"}),
            "p2",
        ),
        (json!([{"shape": "real-26"}, {"shape": "nope"}]), "nope"),
    ] {
        let (st, v) = s.script(rule.clone()).await;
        assert_eq!(st, 400, "{rule}");
        assert!(v["error"].as_str().unwrap().contains(says), "{rule}: {v}");
    }
    // Nothing of a refused list was kept.
    assert_eq!(s.get("/admin/script", "").await.1, json!([]));
    let mut cfg = base_config();
    cfg.script.push(ScriptRule {
        shape: "real-\u{7}26".into(),
        key: None,
        project: None,
        model: None,
        method: None,
        times: None,
    });
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("real-26") && !e.contains('\u{7}'),
        "named, without the control character: {e}"
    );
    let mut cfg = base_config();
    let mut p1 = ProjectConfig::default();
    p1.models_off.insert(MODEL.into(), "real-98".into());
    cfg.projects.insert("p1".into(), p1);
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("models_off") && e.contains("real-98"), "{e}");
}

#[tokio::test]
async fn a_per_model_refusal_still_answers_the_probes() {
    let mut cfg = base_config();
    let mut p2 = ProjectConfig::default();
    p2.models_off.insert(MODEL.into(), "real-05".into());
    cfg.projects.insert("p2".into(), p2);
    let s = Sim::start(cfg).await;
    // A bare 403 on one model for every key of p1, scripted.
    let (st, _) = s
        .script(json!({"shape": "real-34", "project": "p1", "model": MODEL}))
        .await;
    assert_eq!(st, 200);
    for k in [secret(1), secret(2)] {
        let (status, body) = s.generate(&k, MODEL).await;
        assert_eq!((status, body), (403, entry("real-34")["body"].clone()));
        for (status, body) in s.probes(&k, MODEL).await {
            assert_eq!(status, 200, "{body}");
        }
        assert_eq!(s.generate(&k, OTHER).await.0, 200, "another model works");
        assert_eq!(s.embed(&k).await.0, 200);
    }
    // p2: the model is off with real-05's limit 0, named for this model; probes answer.
    let (status, body) = s.generate(&secret(3), MODEL).await;
    assert_eq!(status, 429);
    assert_eq!(body, expected(&entry("real-05"), "k3", "p2", MODEL));
    assert!(s.probes(&secret(3), MODEL).await.iter().all(|r| r.0 == 200));
    assert_eq!(s.generate(&secret(3), OTHER).await.0, 200);
    // Turned back on at run time.
    let (st, _) = s
        .admin(
            reqwest::Method::PUT,
            "/admin/projects",
            json!({"project": "p2", "models_off": {}}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.generate(&secret(3), MODEL).await.0, 200);
}

#[tokio::test]
async fn a_dead_key_is_refused_on_the_probes_the_same_way() {
    let states = [
        (KeyState::Invalid, "real-17"),
        (KeyState::Deleted, "real-18"),
        (KeyState::Leaked, "real-24"),
        (KeyState::Suspended, ""),
        (KeyState::IpBlocked, "real-28"),
        (KeyState::ReferrerBlocked, "real-29"),
        (KeyState::CredentialsMissing, "real-35"),
        (KeyState::Expired, ""),
        (KeyState::Blocked, ""),
    ];
    let mut cfg = base_config();
    for (i, (state, _)) in states.iter().enumerate() {
        cfg.keys.push(key(
            &secret(10 + i as u32),
            &format!("dead{i}"),
            "p3",
            *state,
        ));
    }
    let s = Sim::start(cfg).await;
    for (i, (state, id)) in states.iter().enumerate() {
        let k = secret(10 + i as u32);
        let (status, body) = s.generate(&k, MODEL).await;
        assert!(status == 400 || status == 401 || status == 403, "{state:?}");
        if !id.is_empty() {
            assert_eq!(
                body,
                expected(&entry(id), &format!("dead{i}"), "p3", MODEL),
                "{state:?}"
            );
        }
        for (pstatus, pbody) in s.probes(&k, MODEL).await {
            assert_eq!(pstatus, status, "{state:?}: the probe is refused too");
            assert_eq!(
                pbody["error"]["status"], body["error"]["status"],
                "{state:?}"
            );
            if *state == KeyState::Blocked {
                // The refusal quotes the RPC: a probe is ModelService's, not GenerativeService's.
                let m = pbody["error"]["message"].as_str().unwrap();
                assert!(m.contains("v1beta.ModelService."), "{m}");
            } else {
                assert_eq!(pbody, body, "{state:?}: refused the same way");
            }
        }
        assert_eq!(s.key_row(&format!("dead{i}")).await["probes"], 4);
    }
    // A scripted leak (no route named) reaches the probes too; the other key of p1 is fine.
    s.script(json!({"shape": "real-24", "key": "k1"})).await;
    for (status, body) in s.probes(&secret(1), MODEL).await {
        assert_eq!((status, body), (403, entry("real-24")["body"].clone()));
    }
    assert!(s.probes(&secret(2), MODEL).await.iter().all(|r| r.0 == 200));
    // A key's state can be changed at run time, and persists until changed again.
    s.admin(
        reqwest::Method::PUT,
        "/admin/keys",
        json!({"label": "k2", "state": "ip-blocked"}),
    )
    .await;
    for _ in 0..2 {
        let (status, body) = s.get(&format!("/v1beta/models/{MODEL}"), &secret(2)).await;
        assert_eq!(status, 403);
        assert_eq!(body, expected(&entry("real-28"), "k2", "p1", MODEL));
    }
}

#[tokio::test]
async fn service_disabled_refuses_every_key_of_the_project_on_every_route() {
    let s = Sim::start(base_config()).await;
    let (st, v) = s
        .admin(
            reqwest::Method::PUT,
            "/admin/projects",
            json!({"project": "p1", "state": "service-disabled"}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let want = expected(&entry("real-26"), "", "p1", MODEL);
    for k in [secret(1), secret(2)] {
        let mut answers = vec![
            s.generate(&k, MODEL).await,
            s.embed(&k).await,
            s.count(&k, MODEL, hello(None)).await,
        ];
        answers.extend(s.probes(&k, MODEL).await);
        for (status, body) in answers {
            assert_eq!((status, &body), (403, &want));
        }
    }
    assert_eq!(s.generate(&secret(3), MODEL).await.0, 200, "p2 is not p1");
    // Scripted by project, the same reach.
    s.script(json!({"shape": "real-26", "project": "p2"})).await;
    let (status, body) = s.get("/v1/models", &secret(3)).await;
    assert_eq!(
        (status, body),
        (403, expected(&entry("real-26"), "", "p2", ""))
    );
}

#[tokio::test]
async fn out_of_credits_refuses_calls_but_answers_probes() {
    let mut cfg = base_config();
    cfg.projects.insert(
        "p1".into(),
        ProjectConfig {
            state: ProjectState::CreditsDepleted,
            ..ProjectConfig::default()
        },
    );
    let s = Sim::start(cfg).await;
    let want = entry("real-16")["body"].clone();
    for k in [secret(1), secret(2)] {
        assert_eq!(s.generate(&k, MODEL).await, (402, want.clone()));
        assert_eq!(s.generate(&k, OTHER).await, (402, want.clone()));
        assert_eq!(s.embed(&k).await, (402, want.clone()));
        assert!(s.probes(&k, MODEL).await.iter().all(|r| r.0 == 200));
        assert_eq!(s.count(&k, MODEL, hello(None)).await.0, 200);
    }
    assert_eq!(s.generate(&secret(3), MODEL).await.0, 200);
    let row = &s.stats().await["projects"]["p1"];
    assert_eq!(row["state"], "credits-depleted");
}

#[tokio::test]
async fn whole_api_limit_zero_and_billing_denial_refuse_everything() {
    let s = Sim::start(base_config()).await;
    s.admin(
        reqwest::Method::PUT,
        "/admin/projects",
        json!({"project": "p1", "state": "api-limit-zero"}),
    )
    .await;
    s.admin(
        reqwest::Method::PUT,
        "/admin/projects",
        json!({"project": "p2", "state": "billing-denied"}),
    )
    .await;
    let mut answers = vec![
        s.generate(&secret(1), MODEL).await,
        s.embed(&secret(2)).await,
    ];
    answers.extend(s.probes(&secret(1), MODEL).await);
    for (status, body) in answers {
        assert_eq!(status, 429);
        let info = &body["error"]["details"][0];
        assert_eq!(info["reason"], "RATE_LIMIT_EXCEEDED");
        assert_eq!(
            info["metadata"]["quota_limit"],
            "ApiRequestsPerMinutePerProjectPerRegion"
        );
        assert_eq!(info["metadata"]["quota_limit_value"], "0");
        assert_eq!(info["metadata"]["consumer"], "p1");
    }
    let want = expected(&entry("real-30"), "k3", "p2", MODEL);
    let mut answers = vec![s.generate(&secret(3), MODEL).await];
    answers.extend(s.probes(&secret(3), MODEL).await);
    for a in answers {
        assert_eq!(a, (403, want.clone()));
    }
    // Bad states and shapes from outside are refused.
    for body in [
        json!({"project": "p1", "state": "bankrupt"}),
        json!({"project": "p1", "models_off": {MODEL: "real-99"}}),
        json!({"project": "p1", "models_off": {"gemini-9": "real-05"}}),
        json!({"project": "p1", "files": [""]}),
        json!({"project": "p9", "state": "credits-depleted"}),
    ] {
        let (st, _) = s
            .admin(reqwest::Method::PUT, "/admin/projects", body.clone())
            .await;
        assert_eq!(st, 400, "{body}");
    }
}

#[tokio::test]
async fn another_projects_file_is_refused_only_where_it_is_named() {
    let mut cfg = base_config();
    cfg.projects.insert(
        "p1".into(),
        ProjectConfig {
            files: vec!["files/owned-by-p1".into()],
            ..ProjectConfig::default()
        },
    );
    let s = Sim::start(cfg).await;
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let foreign = "https://generativelanguage.googleapis.com/v1beta/files/other-project-abc";
    let p1_file = "https://generativelanguage.googleapis.com/v1beta/files/owned-by-p1";
    let refusal = |file: &str| {
        let mut v = entry("real-32")["body"].clone();
        v["error"]["message"] = json!(format!(
            "You do not have permission to access the File {file} or it may not exist."
        ));
        v
    };
    for k in [secret(1), secret(3)] {
        let (status, body) = s.post(&path, &k, hello(Some(foreign))).await;
        assert_eq!((status, body), (403, refusal("other-project-abc")));
        let (status, _) = s.count(&k, MODEL, hello(Some(foreign))).await;
        assert_eq!(status, 403, "countTokens reads the file too");
        assert_eq!(s.post(&path, &k, hello(None)).await.0, 200);
        assert!(s.probes(&k, MODEL).await.iter().all(|r| r.0 == 200));
    }
    // The file p1 created: p1's keys may use it, p2's may not (rotation across uploads).
    assert_eq!(s.post(&path, &secret(2), hello(Some(p1_file))).await.0, 200);
    let (status, body) = s.post(&path, &secret(3), hello(Some(p1_file))).await;
    assert_eq!((status, body), (403, refusal("owned-by-p1")));
    let embed = json!({"content": {"parts": [{"fileData": {"fileUri": foreign}}, {"text": "x"}]}});
    let (status, _) = s
        .post(
            &format!("/v1beta/models/{EMBED}:embedContent"),
            &secret(1),
            embed,
        )
        .await;
    assert_eq!(status, 403, "an embedding reads the file too");
    // snake_case spelling, in the system instruction.
    let body = json!({"system_instruction": {"parts": [{"file_data": {"file_uri": foreign}}]},
        "contents": [{"parts": [{"text": "hi"}]}]});
    assert_eq!(s.post(&path, &secret(1), body).await.0, 403);
}

#[tokio::test]
async fn stats_count_each_keys_requests_per_route_probes_included() {
    let mut cfg = base_config();
    cfg.keys
        .push(key(&secret(9), "leaked", "p3", KeyState::Leaked));
    let s = Sim::start(cfg).await;
    s.generate(&secret(1), MODEL).await;
    s.generate(&secret(1), MODEL).await;
    s.embed(&secret(1)).await;
    s.get(&format!("/v1beta/models/{MODEL}"), &secret(1)).await;
    s.get("/v1beta/models", &secret(1)).await;
    s.get(&format!("/v1beta/models/{MODEL}"), &secret(9)).await;
    s.count(&secret(9), MODEL, hello(None)).await;
    let k1 = s.key_row("k1").await;
    assert_eq!(
        k1["by_route"],
        json!({"generateContent": 2, "embedContent": 1, "getModel": 1, "listModels": 1})
    );
    assert_eq!(k1["probes"], 2);
    assert_eq!(k1["requests"], 5);
    let leaked = s.key_row("leaked").await;
    assert_eq!(
        leaked["by_route"],
        json!({"getModel": 1, "countTokens": 1}),
        "refused requests are counted"
    );
    assert_eq!(leaked["probes"], 1);
    assert_eq!(leaked["by_status"], json!({"403": 2}));
}

#[tokio::test]
async fn the_simulators_own_429s_have_the_2026_form() {
    // real-00: free-tier per-day on gemini-2.5-flash-lite, limit 20, as sent in 2026.
    let real = entry("real-00")["body"].clone();
    let mut cfg = base_config();
    cfg.models.insert(
        "gemini-2.5-flash-lite".into(),
        Limits::new(1_000, 1_000_000, 20),
    );
    let s = Sim::start(cfg).await;
    for _ in 0..20 {
        assert_eq!(s.generate(&secret(1), "gemini-2.5-flash-lite").await.0, 200);
    }
    let (status, ours) = s.generate(&secret(1), "gemini-2.5-flash-lite").await;
    assert_eq!(status, 429);
    let types = |v: &Value| -> Vec<String> {
        v["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["@type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(types(&ours), types(&real), "Help, QuotaFailure, RetryInfo");
    assert_eq!(ours["error"]["details"][0], real["error"]["details"][0]);
    assert_eq!(ours["error"]["details"][1], real["error"]["details"][1]);
    let message = |v: &Value| v["error"]["message"].as_str().unwrap().to_owned();
    let (ours_m, real_m) = (message(&ours), message(&real));
    let cut = |m: &str| m[..m.find("Please retry in").unwrap()].to_owned();
    assert_eq!(
        cut(&ours_m),
        cut(&real_m),
        "ai.dev/rate-limit and the quota line"
    );
    // "Please retry in 41.065029449s." → retryDelay "41s": truncated, not rounded up.
    let secs = ours_m
        .rsplit_once("Please retry in ")
        .unwrap()
        .1
        .trim_end_matches("s.");
    let (whole, frac) = secs.split_once('.').unwrap();
    assert_eq!(frac.len(), 9, "nanoseconds, like the real message: {secs}");
    assert_eq!(
        ours["error"]["details"][2]["retryDelay"],
        format!("{whole}s")
    );

    // limit 0 (real-05's form): the same order, a line per violated quota, no quotaValue.
    let mut cfg = base_config();
    let mut free = ProjectConfig::default();
    free.models.insert(OTHER.into(), Limits::new(0, 0, 0));
    cfg.projects.insert("p1".into(), free);
    let s = Sim::start(cfg).await;
    let (status, ours) = s.generate(&secret(1), OTHER).await;
    assert_eq!(status, 429);
    assert_eq!(types(&ours), types(&entry("real-05")["body"]));
    let m = message(&ours);
    assert_eq!(
        m.matches("\n* Quota exceeded for metric:").count(),
        3,
        "{m}"
    );
    assert!(m.contains("https://ai.dev/rate-limit. "), "{m}");
}
