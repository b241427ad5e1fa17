//! The simulator over real HTTP: quota arithmetic and its refusals, the day, dead keys, keys in
//! the query string, faults, and config files.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::http::*;
use keyturn_sim::{Faults, Limits, SimConfig};
use serde_json::{Value, json};

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
