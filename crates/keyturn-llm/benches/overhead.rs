//! Client-side overhead per call: GeminiLlm::generate (estimate, acquire, send, classify,
//! settle, parse) versus a bare reqwest POST of the same body to the same simulator endpoint, in
//! the same run. Run: `cargo bench -p keyturn-llm`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use keyturn_gemini::testkit::{fast_config, pool};
use keyturn_llm::{GeminiLlm, GenerateRequest, LlmConfig, LlmService};
use keyturn_sim::{Limits, SimConfig, Simulator};

const FLASH: &str = "gemini-2.5-flash";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sim = rt.block_on(async {
        let mut models = BTreeMap::new();
        models.insert(
            FLASH.to_owned(),
            Limits::new(1_000_000_000, 1_000_000_000_000, 1_000_000_000),
        );
        Simulator::start(SimConfig {
            models,
            ..SimConfig::default()
        })
        .await
        .unwrap()
    });
    let base = sim.base_url();
    let mut limits = keyturn_core::LimitTable::builtin();
    let never = keyturn_core::LimitOverride {
        rpm: Some(1_000_000_000),
        tpm: Some(1_000_000_000_000),
        rpd: Some(1_000_000_000),
        tpd: None,
    };
    limits.set_model(FLASH, never).unwrap();
    let (_, caller) = pool(
        &base,
        &[
            ("made-up-bench-1", "b1", None),
            ("made-up-bench-2", "b2", None),
        ],
        fast_config(limits),
    );
    // No cache: the clock is never read.
    let llm = Arc::new(GeminiLlm::new(
        caller,
        LlmConfig::default(),
        Arc::new(keyturn_core::ManualClock::at_ms(0)),
    ));
    let req = GenerateRequest::new(FLASH, "Hello there, how are you today?");
    let body = serde_json::to_vec(&req.body).unwrap();
    let client = reqwest::Client::new();
    let url = format!("{base}/v1beta/models/{FLASH}:generateContent");

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("generate");
    g.measurement_time(Duration::from_secs(6));
    g.bench_function("bare_reqwest", |b| {
        b.to_async(&rt).iter(|| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            async move {
                let r = client
                    .post(url)
                    .header("x-goog-api-key", "made-up-bench-1")
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let v: serde_json::Value = r.json().await.unwrap();
                assert!(v.get("candidates").is_some());
            }
        })
    });
    g.bench_function("keyturn_llm", |b| {
        b.to_async(&rt).iter(|| {
            let (llm, req) = (llm.clone(), req.clone());
            async move {
                let g = llm.generate(&req).await.unwrap();
                assert!(!g.text.is_empty());
            }
        })
    });
    g.finish();
    c.final_summary();
}
