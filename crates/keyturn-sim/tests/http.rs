//! The simulator over real HTTP: endpoint shapes, error bodies, quota arithmetic, the day, faults.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{Faults, KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const EMBED: &str = "gemini-embedding-001";

fn key(k: &str, project: &str, state: KeyState) -> SimKey {
    SimKey {
        key: k.into(),
        label: Some(k.trim_start_matches("made-up-").into()),
        project: Some(project.into()),
        state,
    }
}

async fn sim_with(limits: Limits, faults: Faults) -> Simulator {
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

async fn roomy() -> Simulator {
    sim_with(
        Limits::new(10_000, 100_000_000, 1_000_000),
        Faults::default(),
    )
    .await
}

async fn post(sim: &Simulator, path: &str, key: &str, body: Value) -> (u16, Value) {
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

fn gen_body(text: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": text}]}]})
}

async fn generate(sim: &Simulator, key: &str, model: &str) -> (u16, Value) {
    post(
        sim,
        &format!("/v1beta/models/{model}:generateContent"),
        key,
        gen_body("Tell me about Ada Lovelace and Charles Babbage."),
    )
    .await
}

async fn stats(sim: &Simulator) -> Value {
    reqwest::get(format!("{}/admin/stats", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn generate_content_has_the_real_shape_on_both_versions() {
    let sim = roomy().await;
    for version in ["v1beta", "v1"] {
        let (s, v) = post(
            &sim,
            &format!("/{version}/models/{FLASH}:generateContent"),
            "made-up-good",
            gen_body("Hello there, simulator friend"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let c = &v["candidates"][0];
        assert_eq!(c["content"]["role"], "model");
        assert!(c["content"]["parts"][0]["text"].as_str().unwrap().len() > 10);
        assert_eq!(c["finishReason"], "STOP");
        let u = &v["usageMetadata"];
        let (p, k, t) = (
            u["promptTokenCount"].as_u64().unwrap(),
            u["candidatesTokenCount"].as_u64().unwrap(),
            u["thoughtsTokenCount"].as_u64().unwrap_or(0),
        );
        assert_eq!(p, 8, "29 chars / 4, rounded up");
        assert_eq!(u["totalTokenCount"].as_u64().unwrap(), p + k + t);
        assert!(t > 0, "2.5 models think");
        assert_eq!(v["modelVersion"], FLASH);
        assert!(v["responseId"].as_str().unwrap().starts_with("sim-"));
    }
}

#[tokio::test]
async fn snake_case_bodies_and_json_schema_output() {
    let sim = roomy().await;
    let body = json!({
        "contents": [{"role": "user", "parts": [{"text": "Extract: Grace Hopper worked at Harvard University with Howard Aiken."}]}],
        "system_instruction": {"parts": [{"text": "You extract entities."}]},
        "generation_config": {
            "response_mime_type": "application/json",
            "response_schema": {"type": "OBJECT", "properties": {
                "entities": {"type": "ARRAY", "items": {"type": "OBJECT", "properties": {
                    "name": {"type": "STRING"}, "type": {"type": "STRING", "enum": ["PERSON", "ORG"]}}}}
            }}
        }
    });
    let (s, v) = post(
        &sim,
        &format!("/v1beta/models/{FLASH}:generateContent"),
        "made-up-good",
        body,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let text = v["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    let out: Value = serde_json::from_str(text).unwrap();
    let ents = out["entities"].as_array().unwrap();
    assert!(!ents.is_empty());
    for e in ents {
        assert!(["PERSON", "ORG"].contains(&e["type"].as_str().unwrap()));
        assert!(
            ["Grace Hopper", "Harvard University", "Howard Aiken"]
                .contains(&e["name"].as_str().unwrap()),
            "{e}"
        );
    }
}

#[tokio::test]
async fn unknown_fields_are_400_like_the_real_service() {
    let sim = roomy().await;
    let (s, v) = post(
        &sim,
        &format!("/v1beta/models/{FLASH}:generateContent"),
        "made-up-good",
        json!({"contents": [], "generationConfig": {"maxTokens": 5}}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unknown name \"maxTokens\""),
        "{v}"
    );
}

#[tokio::test]
async fn sse_stream_is_framed_as_data_events() {
    let sim = roomy().await;
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse",
            sim.base_url()
        ))
        .header("x-goog-api-key", "made-up-good")
        .json(&gen_body("Stream me a story about the sea and ships"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let body = r.text().await.unwrap();
    let events: Vec<&str> = body.split("\r\n\r\n").filter(|e| !e.is_empty()).collect();
    assert!(events.len() >= 2, "{body}");
    let mut text = String::new();
    for (i, e) in events.iter().enumerate() {
        let json: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
        text.push_str(
            json["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap(),
        );
        let last = i == events.len() - 1;
        assert_eq!(json["candidates"][0]["finishReason"] == "STOP", last);
        assert!(json["usageMetadata"]["promptTokenCount"].as_u64().unwrap() > 0);
    }
    assert!(text.starts_with("Simulated answer:"));

    // Without alt=sse: one JSON array.
    let (s, v) = post(
        &sim,
        &format!("/v1beta/models/{FLASH}:streamGenerateContent"),
        "made-up-good",
        gen_body("x y z"),
    )
    .await;
    assert_eq!(s, 200);
    assert!(v.as_array().unwrap().len() >= 2, "{v}");
}

#[tokio::test]
async fn count_tokens_and_models() {
    let sim = roomy().await;
    let (s, v) = post(
        &sim,
        &format!("/v1beta/models/{FLASH}:countTokens"),
        "made-up-good",
        gen_body("abcdefgh"),
    )
    .await;
    assert_eq!((s, v["totalTokens"].as_u64()), (200, Some(2)));
    let (s, v) = post(
        &sim,
        &format!("/v1/models/{FLASH}:countTokens"),
        "made-up-good",
        json!({"generateContentRequest": {"model": "models/gemini-2.5-flash", "contents": [{"parts": [{"text": "abcd"}]}]}}),
    )
    .await;
    assert_eq!((s, v["totalTokens"].as_u64()), (200, Some(1)));

    let c = reqwest::Client::new();
    let v: Value = c
        .get(format!("{}/v1beta/models", sim.base_url()))
        .header("x-goog-api-key", "made-up-good")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"models/gemini-2.5-flash")
            && names.contains(&"models/gemini-embedding-001")
    );
    let r = c
        .get(format!("{}/v1beta/models/{EMBED}", sim.base_url()))
        .header("x-goog-api-key", "made-up-good")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["supportedGenerationMethods"][0], "embedContent");
    // Listing models spends no quota.
    assert!(stats(&sim).await["scopes"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn embeddings_single_and_batch() {
    let sim = roomy().await;
    let (s, v) = post(
        &sim,
        &format!("/v1beta/models/{EMBED}:embedContent"),
        "made-up-good",
        json!({"content": {"parts": [{"text": "hello"}]}, "task_type": "RETRIEVAL_DOCUMENT", "output_dimensionality": 256}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let values = v["embedding"]["values"].as_array().unwrap();
    assert_eq!(values.len(), 256);
    let norm: f64 = values.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
    assert!((norm - 1.0).abs() < 1e-3);

    let items: Vec<Value> = (0..7)
        .map(|i| json!({"model": format!("models/{EMBED}"), "content": {"parts": [{"text": format!("doc {i}")}]}, "outputDimensionality": 8}))
        .collect();
    let (s, v) = post(
        &sim,
        &format!("/v1beta/models/{EMBED}:batchEmbedContents"),
        "made-up-good",
        json!({"requests": items}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let embs = v["embeddings"].as_array().unwrap();
    assert_eq!(embs.len(), 7);
    // Order preserved: item 3 equals a single embed of "doc 3".
    let (_, single) = post(
        &sim,
        &format!("/v1beta/models/{EMBED}:embedContent"),
        "made-up-good",
        json!({"content": {"parts": [{"text": "doc 3"}]}, "outputDimensionality": 8}),
    )
    .await;
    assert_eq!(embs[3]["values"], single["embedding"]["values"]);
    // A batch of 7 counts as 7 requests.
    let st = stats(&sim).await;
    let scope = st["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["model"] == EMBED)
        .unwrap();
    assert_eq!(scope["admitted"], 9);
}

#[tokio::test]
async fn batch_over_100_gets_the_real_400() {
    let sim = roomy().await;
    let items: Vec<Value> = (0..101)
        .map(|i| json!({"model": format!("models/{EMBED}"), "content": {"parts": [{"text": format!("d{i}")}]}}))
        .collect();
    let (s, v) = post(
        &sim,
        &format!("/v1beta/models/{EMBED}:batchEmbedContents"),
        "made-up-good",
        json!({"requests": items}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n"
    );
}

#[tokio::test]
async fn per_minute_429_has_quota_failure_and_retry_info() {
    let sim = sim_with(Limits::new(2, 1_000_000, 1000), Faults::default()).await;
    assert_eq!(generate(&sim, "made-up-good", FLASH).await.0, 200);
    assert_eq!(generate(&sim, "made-up-good", FLASH).await.0, 200);
    let (s, v) = generate(&sim, "made-up-good", FLASH).await;
    assert_eq!(s, 429);
    let e = &v["error"];
    assert_eq!(
        (e["code"].as_u64(), e["status"].as_str()),
        (Some(429), Some("RESOURCE_EXHAUSTED"))
    );
    let types: Vec<&str> = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["@type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/google.rpc.Help",
            "type.googleapis.com/google.rpc.QuotaFailure",
            "type.googleapis.com/google.rpc.RetryInfo"
        ]
    );
    let viol = &e["details"][1]["violations"][0];
    assert_eq!(
        viol["quotaId"],
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    );
    assert_eq!(
        viol["quotaMetric"],
        "generativelanguage.googleapis.com/generate_content_free_tier_requests"
    );
    assert_eq!(
        viol["quotaValue"], "2",
        "int64 as a string, as proto3 JSON writes it"
    );
    assert_eq!(viol["quotaDimensions"]["model"], FLASH);
    let delay = e["details"][2]["retryDelay"].as_str().unwrap();
    let secs: u64 = delay.trim_end_matches('s').parse().unwrap();
    assert!((1..=61).contains(&secs), "{delay}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("limit: 2, model: gemini-2.5-flash")
    );
    // Another project is not affected.
    assert_eq!(generate(&sim, "made-up-good2", FLASH).await.0, 200);
}

#[tokio::test]
async fn per_day_429_still_has_a_short_retry_delay_and_the_day_advances() {
    let sim = sim_with(Limits::new(100, 1_000_000, 2), Faults::default()).await;
    for _ in 0..2 {
        assert_eq!(generate(&sim, "made-up-good", FLASH).await.0, 200);
    }
    let (s, v) = generate(&sim, "made-up-good", FLASH).await;
    assert_eq!(s, 429);
    let viol = &v["error"]["details"][1]["violations"][0];
    assert_eq!(
        viol["quotaId"],
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    );
    assert_eq!(viol["quotaValue"], "2");
    let delay: u64 = v["error"]["details"][2]["retryDelay"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        delay <= 60,
        "a per-day refusal says {delay}s: classify by quotaId, never by delay"
    );
    let before = stats(&sim).await["pacific_date"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = reqwest::Client::new()
        .post(format!("{}/admin/advance-day", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = stats(&sim).await["pacific_date"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(before, after);
    assert_eq!(generate(&sim, "made-up-good", FLASH).await.0, 200);
}

#[tokio::test]
async fn token_quota_refuses_with_the_token_quota_id() {
    let sim = sim_with(Limits::new(100, 20, 1000), Faults::default()).await;
    // 47 chars → 12 tokens: one fits in 20, two do not.
    assert_eq!(generate(&sim, "made-up-good", FLASH).await.0, 200);
    let (s, v) = generate(&sim, "made-up-good", FLASH).await;
    assert_eq!(s, 429);
    assert_eq!(
        v["error"]["details"][1]["violations"][0]["quotaId"],
        "GenerateContentInputTokensPerModelPerMinute-FreeTier"
    );
}

#[tokio::test]
async fn limit_zero_names_no_quota_value() {
    let sim = roomy().await;
    let (s, v) = generate(&sim, "made-up-free", "gemini-2.5-pro").await;
    assert_eq!(s, 429);
    // 2026 order (corpus real-05): Help, QuotaFailure, RetryInfo.
    let viols = v["error"]["details"][1]["violations"].as_array().unwrap();
    assert_eq!(viols.len(), 3);
    assert!(viols.iter().all(|x| x.get("quotaValue").is_none()));
    assert!(v["error"]["message"].as_str().unwrap().contains("limit: 0"));
    // The same model for a project that pays for it works.
    assert_eq!(
        generate(&sim, "made-up-good", "gemini-2.5-pro").await.0,
        200
    );
}

#[tokio::test]
async fn dead_keys_get_their_real_refusals() {
    let sim = roomy().await;
    let cases = [
        (
            "made-up-invalid",
            400,
            "INVALID_ARGUMENT",
            Some("API_KEY_INVALID"),
            "API key not valid",
        ),
        (
            "made-up-expired",
            400,
            "INVALID_ARGUMENT",
            Some("API_KEY_INVALID"),
            "API key expired",
        ),
        (
            "made-up-leaked",
            403,
            "PERMISSION_DENIED",
            None,
            "reported as leaked",
        ),
        (
            "made-up-suspended",
            403,
            "PERMISSION_DENIED",
            Some("CONSUMER_SUSPENDED"),
            "has been suspended",
        ),
        (
            "made-up-disabled",
            403,
            "PERMISSION_DENIED",
            Some("SERVICE_DISABLED"),
            "is disabled",
        ),
        (
            "made-up-blocked",
            403,
            "PERMISSION_DENIED",
            Some("API_KEY_SERVICE_BLOCKED"),
            "are blocked",
        ),
        (
            "made-up-unknown",
            400,
            "INVALID_ARGUMENT",
            Some("API_KEY_INVALID"),
            "API key not valid",
        ),
    ];
    for (k, code, status, reason, text) in cases {
        let (s, v) = generate(&sim, k, FLASH).await;
        assert_eq!(s, code, "{k}: {v}");
        assert_eq!(v["error"]["status"], status, "{k}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(text),
            "{k}: {v}"
        );
        let got = v["error"]["details"]
            .as_array()
            .and_then(|d| {
                d.iter()
                    .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
            })
            .map(|d| d["reason"].as_str().unwrap().to_owned());
        assert_eq!(got.as_deref(), reason, "{k}");
    }
    // As the real service does, the suspended refusal names the key: clients must not log it.
    let (_, v) = generate(&sim, "made-up-suspended", FLASH).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("made-up-suspended")
    );
    // No key at all.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            sim.base_url()
        ))
        .json(&gen_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn unknown_model_gets_the_real_404() {
    let sim = roomy().await;
    let (s, v) = generate(&sim, "made-up-good", "gemini-2.5-flsh").await;
    assert_eq!(s, 404);
    assert_eq!(
        v["error"]["message"],
        "models/gemini-2.5-flsh is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."
    );
    // An embedding model does not generate.
    assert_eq!(generate(&sim, "made-up-good", EMBED).await.0, 404);
}

#[tokio::test]
async fn keys_in_the_query_string_work_but_are_counted() {
    let sim = roomy().await;
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent?key=made-up-good",
            sim.base_url()
        ))
        .json(&gen_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    generate(&sim, "made-up-good", FLASH).await;
    let st = stats(&sim).await;
    assert_eq!(st["query_key_uses"], 1);
    let k = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == "good")
        .unwrap();
    assert_eq!(
        (k["requests"].as_u64(), k["query_key_uses"].as_u64()),
        (Some(2), Some(1))
    );
    // Stats name keys by label and fingerprint, never by value.
    assert!(!st.to_string().contains("made-up-good"));
}

#[tokio::test]
async fn rpm_is_never_exceeded_under_concurrency_and_the_clock_advances() {
    let sim = sim_with(Limits::new(5, 1_000_000, 1000), Faults::default()).await;
    let mut tasks = vec![];
    for _ in 0..40 {
        let url = format!("{}/v1beta/models/{FLASH}:generateContent", sim.base_url());
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .header("x-goog-api-key", "made-up-good")
                .json(&gen_body("hi"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 5);
    let c = reqwest::Client::new();
    c.post(format!("{}/admin/advance", sim.base_url()))
        .json(&json!({"seconds": 61}))
        .send()
        .await
        .unwrap();
    assert_eq!(generate(&sim, "made-up-good", FLASH).await.0, 200);
    let st = stats(&sim).await;
    let scope = &st["scopes"][0];
    assert_eq!(
        (scope["peak_rpm"].as_u64(), scope["rpm_limit"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(scope["refused"]["per-minute"], 35);
}

#[tokio::test]
async fn fault_probabilities_hold_within_statistical_bounds() {
    let sim = roomy().await;
    let c = reqwest::Client::new();
    let faults = json!({"p500": 0.1, "p503": 0.2, "p429_bare": 0.05});
    assert_eq!(
        c.put(format!("{}/admin/faults", sim.base_url()))
            .json(&faults)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let n = 2000;
    let mut counts: BTreeMap<u16, u64> = BTreeMap::new();
    for _ in 0..n {
        *counts
            .entry(generate(&sim, "made-up-good", FLASH).await.0)
            .or_default() += 1;
    }
    // Each count within 5 standard deviations of n·p.
    for (status, p) in [(500u16, 0.1f64), (503, 0.2), (429, 0.05), (200, 0.65)] {
        let expected = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        let got = counts.get(&status).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() < 5.0 * sd,
            "{status}: {got} vs {expected}±{sd}: {counts:?}"
        );
    }
    // Bare 429s have no details; a 503 has the real text.
    c.put(format!("{}/admin/faults", sim.base_url()))
        .json(&json!({"p429_bare": 1.0}))
        .send()
        .await
        .unwrap();
    let (_, v) = generate(&sim, "made-up-good", FLASH).await;
    assert!(v["error"].get("details").is_none());
    c.put(format!("{}/admin/faults", sim.base_url()))
        .json(&json!({"p503": 1.0}))
        .send()
        .await
        .unwrap();
    let (s, v) = generate(&sim, "made-up-good", FLASH).await;
    assert_eq!(
        (s, v["error"]["message"].as_str()),
        (
            503,
            Some("The model is overloaded. Please try again later.")
        )
    );
    // Out-of-range faults are refused.
    let r = c
        .put(format!("{}/admin/faults", sim.base_url()))
        .json(&json!({"p503": 1.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn dropped_connections_and_malformed_bodies() {
    let sim = sim_with(
        Limits::new(10_000, 100_000_000, 1_000_000),
        Faults {
            p_drop: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            sim.base_url()
        ))
        .header("x-goog-api-key", "made-up-good")
        .json(&gen_body("x"))
        .send()
        .await;
    let failed = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(failed, "a dropped connection is an error for the client");

    let c = reqwest::Client::new();
    c.put(format!("{}/admin/faults", sim.base_url()))
        .json(&json!({"p_malformed": 1.0}))
        .send()
        .await
        .unwrap();
    let r = c
        .post(format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            sim.base_url()
        ))
        .header("x-goog-api-key", "made-up-good")
        .json(&gen_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert!(
        serde_json::from_slice::<Value>(&body).is_err(),
        "cut-off JSON"
    );
}

#[tokio::test]
async fn config_files_load_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sim.toml");
    std::fs::write(
        &p,
        r#"
port = 0
[[keys]]
key = "made-up-a"
label = "a"
project = "acme"
[models."gemini-2.5-flash"]
rpm = 7
[projects."acme".models."gemini-2.5-pro"]
rpd = 0
[faults]
p503 = 0.25
"#,
    )
    .unwrap();
    let cfg = SimConfig::from_file(&p).unwrap();
    assert_eq!(
        cfg.limits("acme", FLASH),
        Limits {
            rpm: Some(7),
            tpm: Some(250_000),
            rpd: Some(20)
        }
    );
    assert!(cfg.limits("acme", "gemini-2.5-pro").is_zero());
    assert_eq!(cfg.faults.p503, 0.25);
    std::fs::write(&p, "[faults]\np503 = 2.0\n").unwrap();
    assert!(
        SimConfig::from_file(&p)
            .unwrap_err()
            .to_string()
            .contains("p503")
    );
    std::fs::write(&p, "prot = 1\n").unwrap();
    let e = SimConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("prot") && e.contains("sim.toml"), "{e}");
}
