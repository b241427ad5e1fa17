//! The builders downstream code starts from, against keyturn-sim over real HTTP: keys in, a
//! rotating service out; one pool shared by the LLM and embeddings services; a ledger passed in
//! is the one that counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use keyturn_core::{InMemoryLedger, KeyRing, KeySpec, ManualClock, QuotaLedger};
use keyturn_embeddings::{ApiKey, EmbedOptions, EmbeddingsService, GeminiEmbeddings, LedgerConfig};
use keyturn_llm::{GeminiLlm, GenerateRequest, LlmService};
use keyturn_sim::{SimConfig, Simulator};

const FLASH: &str = "gemini-2.5-flash";
const EMBED: &str = "gemini-embedding-001";

/// Made-up keys, built at run time.
fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("made-up-builder-{}-{i}", std::process::id()))
        .collect()
}

fn requests_per_key(sim: &Simulator) -> Vec<u64> {
    let mut v: Vec<u64> = sim.state().stats()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["requests"].as_u64().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_a_rotating_llm_out_and_embeddings_on_the_same_pool() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let llm = GeminiLlm::builder()
        .keys(keys(3))
        .base_url(sim.base_url())
        .build()
        .unwrap();
    let req = GenerateRequest::new(FLASH, "Name three rivers.");
    let mut served_by = Vec::new();
    for _ in 0..3 {
        served_by.push(llm.generate(&req).await.unwrap().key.unwrap());
    }
    served_by.sort();
    served_by.dedup();
    assert_eq!(served_by.len(), 3, "three calls, three keys: {served_by:?}");
    assert_eq!(requests_per_key(&sim), [1, 1, 1]);

    // The embeddings service on the LLM's caller: one pool, one account.
    let embeddings = GeminiEmbeddings::builder()
        .caller(llm.caller().clone())
        .build()
        .unwrap();
    assert!(Arc::ptr_eq(
        &embeddings.caller().ledger(),
        &llm.caller().ledger()
    ));
    let v = embeddings
        .embed("a text", &EmbedOptions::new(EMBED).dimensions(8))
        .await
        .unwrap();
    assert_eq!(v.len(), 8);
    let status = llm.caller().ledger().status().await.unwrap();
    let used = |model: &str| -> u64 {
        status
            .scopes
            .iter()
            .filter(|s| s.model == model)
            .map(|s| s.rpd_used)
            .sum()
    };
    assert_eq!((used(FLASH), used(EMBED)), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_passed_in_is_the_one_that_counts_and_excludes_keys() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let specs = keys(2)
        .into_iter()
        .map(|k| KeySpec::new(ApiKey::new(k).unwrap()))
        .collect();
    let ledger = Arc::new(InMemoryLedger::new(
        Arc::new(KeyRing::new(specs).unwrap()),
        LedgerConfig::default(),
        Arc::new(ManualClock::at_ms(1_767_225_600_000)),
    ));
    let embeddings = GeminiEmbeddings::builder()
        .ledger(ledger.clone())
        .base_url(sim.base_url())
        .batch_size(10)
        .build()
        .unwrap();
    let texts: Vec<String> = (0..25).map(|i| format!("text {i}")).collect();
    let vectors = embeddings
        .embed_many(&texts, &EmbedOptions::new(EMBED).dimensions(4))
        .await
        .unwrap();
    assert_eq!(vectors.len(), 25);
    let status = ledger.status().await.unwrap();
    let used: u64 = status.scopes.iter().map(|s| s.rpd_used).sum();
    assert_eq!(used, 25, "each item counts once, in the ledger given");
    let batches: u64 = requests_per_key(&sim).iter().sum();
    assert_eq!(batches, 3, "batches of at most 10");

    let both = GeminiEmbeddings::builder()
        .ledger(ledger)
        .keys(keys(1))
        .build();
    assert!(matches!(
        both,
        Err(keyturn_embeddings::BuildError::KeysAndLedger)
    ));
}
