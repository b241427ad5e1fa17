//! The simulator's cachedContents and Batch Mode over real HTTP, each pinned to the project of
//! the key that created it, on the simulated clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::resources::*;
use keyturn_sim::ResourceConfig;
use serde_json::{Value, json};

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
