//! The executor alone, driven through its seams with mocks (`MockLlmService`,
//! `MockEmbeddingsService`, `MockGeminiCall`): every way a run ends, with no simulator and no
//! network. The ledger is the real in-memory one (its snapshot goes into checkpoints).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyturn_core::{
    AcquireError, ApiKey, Clock, Exhaustion, InMemoryLedger, KeyRing, KeySpec, LedgerConfig,
    LimitTable, ManualClock, Policy,
};
use keyturn_embeddings::MockEmbeddingsService;
use keyturn_gemini::{GeminiError, MockGeminiCall};
use keyturn_llm::{Generation, LlmError, MockLlmService};
use keyturn_pipeline::progress::Progress;
use keyturn_pipeline::run::{RunState, SeedOptions, SeedServices, Stop, run_seed};
use serde_json::json;

/// Saves nothing, counts the saves.
#[derive(Default)]
struct CountingState(AtomicUsize);

#[async_trait::async_trait]
impl RunState for CountingState {
    async fn flush(&self) -> Result<(), keyturn_core::StoreError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn describe(&self) -> String {
        "test state".into()
    }
}

const T0: i64 = 1_768_420_800_000;

fn ledger(clock: &ManualClock) -> Arc<InMemoryLedger> {
    let keys = KeyRing::new(vec![
        KeySpec::new(ApiKey::new("made-up-executor-key-1").unwrap()).label("one"),
    ])
    .unwrap();
    let cfg = LedgerConfig {
        policy: Policy::RoundRobin,
        breaker: Default::default(),
        max_wait: Duration::ZERO,
        default_throttle_cooldown: Duration::from_secs(15),
        limits: LimitTable::builtin(),
        models: vec![],
        relearn_after: None,
    };
    Arc::new(InMemoryLedger::new(
        Arc::new(keys),
        cfg,
        Arc::new(clock.clone()),
    ))
}

fn caller() -> Arc<MockGeminiCall> {
    let mut c = MockGeminiCall::new();
    c.expect_stats().returning(Vec::new);
    Arc::new(c)
}

/// An extraction that names one entity.
fn extraction() -> serde_json::Value {
    json!({
        "entities": [{"name": "Ada Lovelace", "type": "person", "description": "mathematician"}],
        "relationships": [],
        "quotes": []
    })
}

fn embeddings() -> MockEmbeddingsService {
    let mut e = MockEmbeddingsService::new();
    e.expect_embed_many()
        .returning(|texts, _| Ok(texts.iter().map(|_| vec![0.5_f32; 4]).collect()));
    e
}

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let show = dir.join("inputs").join("show");
    std::fs::create_dir_all(&show).unwrap();
    std::fs::write(
        show.join("one.txt"),
        "Ada Lovelace wrote the first program for the Analytical Engine.",
    )
    .unwrap();
    std::fs::write(
        show.join("two.txt"),
        "Charles Babbage designed the Analytical Engine in London.",
    )
    .unwrap();
    vec![dir.join("inputs")]
}

async fn run(
    dir: &Path,
    llm: MockLlmService,
    emb: MockEmbeddingsService,
    state: &CountingState,
) -> keyturn_pipeline::run::RunReport {
    let clock = ManualClock::at_ms(T0);
    let services = SeedServices {
        llm: Arc::new(llm),
        embeddings: Arc::new(emb),
        ledger: ledger(&clock),
        caller: caller(),
        state,
        clock: Arc::new(clock.clone()) as Arc<dyn Clock>,
        batch: None,
    };
    let opts = SeedOptions {
        inputs: inputs(dir),
        out: dir.join("out"),
        concurrency: 1,
        requests: 1,
        ..SeedOptions::default()
    };
    let (_tx, rx) = tokio::sync::watch::channel(false);
    run_seed(
        opts,
        &services,
        rx,
        Duration::from_secs(1),
        &Progress::new(false),
    )
    .await
    .unwrap()
}

fn generation() -> Generation {
    Generation {
        text: extraction().to_string(),
        finish_reason: Some("STOP".into()),
        usage: Default::default(),
        response: Default::default(),
        cache_hit: false,
        key: Some("one".into()),
        attempts: 1,
    }
}

#[tokio::test]
async fn a_run_that_serves_everything_is_done_and_a_rerun_resumes_without_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut llm = MockLlmService::new();
    llm.expect_generate_json()
        .times(2)
        .returning(|_, _| Ok((extraction(), generation())));
    llm.expect_cache_stats().returning(Default::default);
    let state = CountingState::default();
    let report = run(dir.path(), llm, embeddings(), &state).await;
    assert_eq!(report.result, Stop::Done);
    assert_eq!(report.result.exit_code(), 0);
    assert_eq!(report.items.processed, 2);
    assert!(
        state.0.load(Ordering::Relaxed) >= 3,
        "saved per episode and at the end"
    );

    // The same output again: both episodes are checkpointed, so no call at all (the mocks
    // panic on any call they were not told to expect).
    let mut llm = MockLlmService::new();
    llm.expect_generate_json().never();
    llm.expect_cache_stats().returning(Default::default);
    let mut emb = MockEmbeddingsService::new();
    emb.expect_embed_many().never();
    let report = run(dir.path(), llm, emb, &CountingState::default()).await;
    assert_eq!(report.result, Stop::Done);
    assert_eq!((report.items.already_done, report.items.processed), (2, 0));
}

#[tokio::test]
async fn a_day_used_up_stops_the_run_with_exit_3_and_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut llm = MockLlmService::new();
    llm.expect_generate_json().returning(|req, _| {
        Err(LlmError::Gemini(GeminiError::Quota(
            AcquireError::Exhausted {
                model: req.model.clone(),
                reason: Exhaustion::RequestsPerDay,
                until_ms: T0 + 3_600_000,
            },
        )))
    });
    llm.expect_cache_stats().returning(Default::default);
    let report = run(dir.path(), llm, embeddings(), &CountingState::default()).await;
    match &report.result {
        Stop::ExhaustedForDay { until_ms, .. } => assert_eq!(*until_ms, T0 + 3_600_000),
        other => panic!("{other:?}"),
    }
    assert_eq!(report.result.exit_code(), 3);
    assert_eq!(report.items.processed, 0);
}

#[tokio::test]
async fn every_key_dead_stops_the_run_with_exit_4() {
    let dir = tempfile::tempdir().unwrap();
    let mut llm = MockLlmService::new();
    llm.expect_generate_json().returning(|req, _| {
        Err(LlmError::Gemini(GeminiError::Quota(
            AcquireError::AllKeysDisabled {
                model: req.model.clone(),
                detail: "one: invalid key".into(),
            },
        )))
    });
    llm.expect_cache_stats().returning(Default::default);
    let report = run(dir.path(), llm, embeddings(), &CountingState::default()).await;
    match &report.result {
        Stop::AllKeysInvalid { detail } => assert!(detail.contains("invalid key")),
        other => panic!("{other:?}"),
    }
    assert_eq!(report.result.exit_code(), 4);
}

#[tokio::test]
async fn an_invalid_extraction_skips_its_chunk_and_keeps_the_episode() {
    let dir = tempfile::tempdir().unwrap();
    let mut llm = MockLlmService::new();
    llm.expect_generate_json().returning(|req, _| {
        Err(LlmError::InvalidJson {
            model: req.model.clone(),
            detail: "expected value at line 1".into(),
            finish: Some("MAX_TOKENS".into()),
        })
    });
    llm.expect_cache_stats().returning(Default::default);
    let report = run(dir.path(), llm, embeddings(), &CountingState::default()).await;
    assert_eq!(report.result, Stop::Done);
    assert_eq!(report.items.processed, 2);
    assert_eq!(report.items.invalid_extractions, 2);
    assert_eq!(report.items.entities, 0);
}
