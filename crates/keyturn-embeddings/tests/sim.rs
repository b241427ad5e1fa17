//! The embeddings service through the rotation, against keyturn-sim over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use keyturn_embeddings::{EmbedOptions, EmbeddingsService, GeminiEmbeddings};
use keyturn_gemini::testkit::{fast_config, pool, roomy_limits};
use keyturn_sim::{Faults, Limits, SimConfig, Simulator};
use serde_json::Value;

const EMBED: &str = "gemini-embedding-001";

async fn sim(faults: Faults) -> Simulator {
    let mut models = BTreeMap::new();
    models.insert(
        EMBED.to_owned(),
        Limits::new(100_000, 100_000_000, 1_000_000),
    );
    Simulator::start(SimConfig {
        models,
        faults,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn scope(stats: &Value) -> (u64, u64) {
    let admitted = stats["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["admitted"].as_u64().unwrap())
        .sum();
    (admitted, stats["by_status"]["503"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_at_most_100_keep_order_and_count_per_item() {
    let sim = sim(Faults::default()).await;
    let (_, caller) = pool(
        &sim.base_url(),
        &[("made-up-e1", "e1", None), ("made-up-e2", "e2", None)],
        fast_config(roomy_limits(&[EMBED])),
    );
    let svc = GeminiEmbeddings::new(caller, 100, 2);
    let texts: Vec<String> = (0..250).map(|i| format!("chunk number {i}")).collect();
    let opts = EmbedOptions::new(EMBED)
        .task_type("RETRIEVAL_DOCUMENT")
        .dimensions(16);
    let many = svc.embed_many(&texts, &opts).await.unwrap();
    assert_eq!(many.len(), 250);
    assert!(many.iter().all(|v| v.len() == 16));
    // Order: item 137 equals a single embed of text 137.
    let one = svc.embed(&texts[137], &opts).await.unwrap();
    assert_eq!(many[137], one);
    let st = sim.state().stats();
    assert_eq!(scope(&st).0, 251, "each item counts as one request");
    let batches: u64 = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["by_status"]["200"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(batches, 3 + 1, "100 + 100 + 50, and the single");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_retried_alone() {
    // Half the requests fail with 503 before admission: every batch is admitted exactly once.
    let sim = sim(Faults {
        p503: 0.5,
        ..Faults::default()
    })
    .await;
    let (_, caller) = pool(
        &sim.base_url(),
        &[
            ("made-up-e1", "e1", None),
            ("made-up-e2", "e2", None),
            ("made-up-e3", "e3", None),
        ],
        fast_config(roomy_limits(&[EMBED])),
    );
    let svc = GeminiEmbeddings::new(caller, 30, 3);
    let texts: Vec<String> = (0..300).map(|i| format!("t{i}")).collect();
    let out = svc
        .embed_many(&texts, &EmbedOptions::new(EMBED).dimensions(4))
        .await
        .unwrap();
    assert_eq!(out.len(), 300);
    let (admitted, failures) = scope(&sim.state().stats());
    assert_eq!(admitted, 300, "no batch sent twice once it succeeded");
    assert!(failures > 0, "the storm happened");
}
