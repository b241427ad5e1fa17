//! Quota that survives a restart: the same builder over a ledger that `keyturn-store` saves to a
//! state file (for several processes or machines, pass a `keyturn_store::RedisLedger` instead).
//!
//! ```sh
//! GEMINI_BASE_URL=http://127.0.0.1:8088 GEMINI_API_KEYS=key-a,key-b \
//!   KEYTURN_STATE_DIR=/tmp/keyturn-example cargo run -p keyturn-llm --example persistent_state
//! ```
//!
//! Each run prints how many requests the pool has counted today, this run's included: run it
//! twice and the count goes on from where the first run left it.

#![allow(clippy::print_stdout)]
// an example prints what it got
// A downstream program builds its own pool, so it builds the one clock too.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_llm::keyturn_core::{
    InMemoryLedger, KeyRing, KeySpec, LedgerConfig, StateStore, SystemClock,
};
use keyturn_llm::{ApiKey, GeminiLlm, GenerateRequest, LlmService, QuotaLedger};
use keyturn_store::{FileStore, Persister};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = std::env::var("GEMINI_API_KEYS").map_err(|_| "set GEMINI_API_KEYS=key1,key2")?;
    let dir = std::env::var("KEYTURN_STATE_DIR").unwrap_or(".keyturn".into());
    let specs = keys.split(',').map(|k| Ok(KeySpec::new(ApiKey::new(k)?)));
    let ring = KeyRing::new(specs.collect::<Result<_, keyturn_llm::keyturn_core::KeyError>>()?)?;
    let ledger = Arc::new(InMemoryLedger::new(
        Arc::new(ring),
        LedgerConfig::default(),
        Arc::new(SystemClock),
    ));
    let store = Arc::new(FileStore::open(&dir)?);
    if let Some(snapshot) = store.load().await? {
        ledger.restore_now(&snapshot)?;
    }
    let persister = Persister::spawn(ledger.clone(), store, Duration::from_secs(1));

    let llm = GeminiLlm::builder()
        .ledger(ledger.clone())
        .base_url(std::env::var("GEMINI_BASE_URL").unwrap_or(keyturn_llm::DEFAULT_BASE_URL.into()))
        .build()?;
    let out = llm
        .generate(&GenerateRequest::new(
            "gemini-2.5-flash",
            "One word, please.",
        ))
        .await?;
    println!("answer: {}", out.text.trim());

    let used: u64 = ledger
        .status()
        .await?
        .scopes
        .iter()
        .filter(|s| s.model == "gemini-2.5-flash")
        .map(|s| s.rpd_used)
        .sum();
    println!("requests counted today: {used}");
    persister.shutdown().await?;
    Ok(())
}
