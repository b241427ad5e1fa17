//! The simulator over real HTTP: endpoint shapes, request checks, streams, tokens, embeddings.
//! Quotas, the day, dead keys and faults are in `quotas_and_faults.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::http::*;
use serde_json::{Value, json};

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

/// Google takes a request of up to 20 MB with its data inline (above it, the Files API); axum's
/// own default (2 MB) refused a 3 MB request with a plain-text 413 that no Gemini client can
/// read, so batch jobs of a realistic size could not be tried against the simulator.
#[tokio::test]
async fn a_request_up_to_twenty_megabytes_is_taken_and_a_larger_one_refused_as_google_does() {
    let sim = roomy().await;
    let path = format!("/v1beta/models/{FLASH}:generateContent");
    let (s, v) = post(
        &sim,
        &path,
        "made-up-good",
        gen_body(&"word ".repeat(600_000)),
    )
    .await;
    assert_eq!(s, 200, "a 3 MB request: {v}");
    let (s, v) = post(
        &sim,
        &path,
        "made-up-good",
        gen_body(&"x".repeat(21 * 1024 * 1024)),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        v["error"]["message"],
        "Request payload size exceeds the limit: 20971520 bytes."
    );
}
