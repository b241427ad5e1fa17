//! What the HTTP tests share: a simulator with a key in each state, and calls over real HTTP.

use std::collections::BTreeMap;

use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{Faults, KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::{Value, json};

pub const FLASH: &str = "gemini-2.5-flash";
pub const EMBED: &str = "gemini-embedding-001";

pub fn key(k: &str, project: &str, state: KeyState) -> SimKey {
    SimKey {
        key: k.into(),
        label: Some(k.trim_start_matches("made-up-").into()),
        project: Some(project.into()),
        state,
    }
}

pub async fn sim_with(limits: Limits, faults: Faults) -> Simulator {
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), limits);
    models.insert(EMBED.to_owned(), limits);
    // gemini-2.5-pro has no free tier (limit 0 by default); project p1 pays for it.
    let mut projects = BTreeMap::new();
    let mut paid = ProjectConfig::default();
    paid.models
        .insert("gemini-2.5-pro".into(), Limits::new(150, 2_000_000, 10_000));
    projects.insert("p1".to_owned(), paid);
    Simulator::start(SimConfig {
        keys: vec![
            key("made-up-good", "p1", KeyState::Valid),
            key("made-up-good2", "p2", KeyState::Valid),
            key("made-up-free", "free", KeyState::Valid),
            key("made-up-invalid", "p3", KeyState::Invalid),
            key("made-up-expired", "p3", KeyState::Expired),
            key("made-up-leaked", "p3", KeyState::Leaked),
            key("made-up-suspended", "p3", KeyState::Suspended),
            key("made-up-disabled", "p3", KeyState::ServiceDisabled),
            key("made-up-blocked", "p3", KeyState::Blocked),
        ],
        models,
        projects,
        faults,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

pub async fn roomy() -> Simulator {
    sim_with(
        Limits::new(10_000, 100_000_000, 1_000_000),
        Faults::default(),
    )
    .await
}

pub async fn post(sim: &Simulator, path: &str, key: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .header("x-goog-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn gen_body(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

pub async fn generate(sim: &Simulator, key: &str, model: &str) -> (u16, Value) {
    post(
        sim,
        &format!("/v1beta/models/{model}:generateContent"),
        key,
        gen_body("Tell me about Ada Lovelace and Charles Babbage."),
    )
    .await
}

pub async fn stats(sim: &Simulator) -> Value {
    reqwest::get(format!("{}/admin/stats", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
