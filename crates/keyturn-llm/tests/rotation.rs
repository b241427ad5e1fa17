//! The LLM service through the rotation, against keyturn-sim over real HTTP: spreading, each kind
//! of refusal handled as Gemini means it, storms, caller faults, the cache, streaming, and no key
//! anywhere it should not be.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use keyturn_core::{QuotaLedger, ScopeState};
use keyturn_gemini::ErrorKind;
use keyturn_gemini::testkit::{TestKey, fast_config, pool, roomy_limits};
use keyturn_llm::{CacheConfig, GeminiLlm, GenerateRequest, LlmConfig, LlmError, LlmService};
use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const PRO: &str = "gemini-2.5-pro";

struct Setup {
    sim: Simulator,
    ledger: Arc<keyturn_core::InMemoryLedger>,
    llm: GeminiLlm,
}

fn sim_key(key: &str, project: &str, state: KeyState) -> SimKey {
    SimKey {
        key: key.into(),
        label: Some(key.into()),
        project: Some(project.into()),
        state,
    }
}

/// A simulator with these keys and per-project limits, and keyturn believing roomy limits (so the
/// server, not keyturn, refuses — the situations under test).
async fn setup(
    keys: &[(&str, &str, KeyState)],
    projects: &[(&str, &str, Limits)],
    cache: bool,
) -> Setup {
    let mut proj: BTreeMap<String, ProjectConfig> = BTreeMap::new();
    for (p, m, l) in projects {
        proj.entry((*p).to_owned())
            .or_default()
            .models
            .insert((*m).to_owned(), *l);
    }
    let mut models = BTreeMap::new();
    for m in [FLASH, PRO] {
        models.insert(m.to_owned(), Limits::new(10_000, 100_000_000, 1_000_000));
    }
    let sim = Simulator::start(SimConfig {
        keys: keys.iter().map(|(k, p, s)| sim_key(k, p, *s)).collect(),
        models,
        projects: proj,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    // keyturn's labels are not the secrets (the simulator's stats use the secrets as labels).
    let tk: Vec<TestKey<'_>> = keys
        .iter()
        .map(|(k, p, _)| (*k, k.trim_start_matches("made-up-"), Some(*p)))
        .collect();
    let (ledger, caller) = pool(
        &sim.base_url(),
        &tk,
        fast_config(roomy_limits(&[FLASH, PRO])),
    );
    let llm = GeminiLlm::new(
        caller,
        LlmConfig {
            cache: cache.then(CacheConfig::default),
            ..LlmConfig::default()
        },
        // The cache is in memory only here (moka's own timer); the pool's clock is unused.
        Arc::new(keyturn_core::ManualClock::at_ms(0)),
    );
    Setup { sim, ledger, llm }
}

fn key_requests(stats: &Value, label: &str) -> u64 {
    stats["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] == label)
        .map_or(0, |k| k["requests"].as_u64().unwrap())
}

async fn set_faults(sim: &Simulator, f: Value) {
    let r = reqwest::Client::new()
        .put(format!("{}/admin/faults", sim.base_url()))
        .json(&f)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn req(n: usize) -> GenerateRequest {
    GenerateRequest::new(FLASH, format!("Question number {n} about Ada Lovelace."))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_spreads_load_evenly() {
    let keys = [
        ("made-up-a", "pa", KeyState::Valid),
        ("made-up-b", "pb", KeyState::Valid),
        ("made-up-c", "pc", KeyState::Valid),
    ];
    let s = setup(&keys, &[], false).await;
    for i in 0..30 {
        let g = s.llm.generate(&req(i)).await.unwrap();
        assert!(!g.text.is_empty() && g.usage.prompt_token_count > 0);
    }
    let st = s.sim.state().stats();
    for (k, _, _) in keys {
        assert_eq!(key_requests(&st, k), 10, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_minute_429_moves_to_another_key_and_respects_retry_delay() {
    let keys = [
        ("made-up-a", "pa", KeyState::Valid),
        ("made-up-b", "pb", KeyState::Valid),
    ];
    // The server allows project pa 1 request a minute; keyturn believes 10,000.
    let s = setup(
        &keys,
        &[("pa", FLASH, Limits::new(1, 100_000_000, 1_000_000))],
        false,
    )
    .await;
    for i in 0..10 {
        s.llm.generate(&req(i)).await.unwrap();
    }
    let st = s.sim.state().stats();
    // a: 1 admitted + 1 refused; then it cools for the retryDelay (≈ 60 s) and is not tried again.
    assert_eq!(key_requests(&st, "made-up-a"), 2, "{st}");
    assert_eq!(key_requests(&st, "made-up-b"), 9);
    let status = s.ledger.status().await.unwrap();
    let a = status
        .scopes
        .iter()
        .find(|x| x.project == "pa" && x.model == FLASH)
        .unwrap();
    assert_eq!(a.state, ScopeState::Cooling);
    assert_eq!(a.limits.rpm, Some(1), "quotaValue learned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_day_429_with_zero_retry_delay_exhausts_until_pacific_midnight() {
    let keys = [
        ("made-up-a", "pa", KeyState::Valid),
        ("made-up-b", "pb", KeyState::Valid),
    ];
    let s = setup(
        &keys,
        &[("pa", FLASH, Limits::new(10_000, 100_000_000, 1))],
        false,
    )
    .await;
    set_faults(&s.sim, json!({"per_day_retry_delay_ms": 0})).await;
    for i in 0..12 {
        s.llm.generate(&req(i)).await.unwrap();
    }
    let st = s.sim.state().stats();
    assert_eq!(
        key_requests(&st, "made-up-a"),
        2,
        "not retried every second: {st}"
    );
    let status = s.ledger.status().await.unwrap();
    let a = status
        .scopes
        .iter()
        .find(|x| x.project == "pa" && x.model == FLASH)
        .unwrap();
    assert_eq!(a.state, ScopeState::Exhausted);
    assert_eq!(
        a.exhausted_until_ms,
        Some(a.next_reset_ms),
        "until the next Pacific midnight"
    );
    // The key itself is healthy: another model still uses it.
    let pro = GenerateRequest::new(PRO, "x");
    let mut served_by_a = false;
    for _ in 0..4 {
        served_by_a |= s.llm.generate(&pro).await.unwrap().key.as_deref() == Some("a");
    }
    assert!(served_by_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_key_is_disabled_after_one_answer_and_calls_still_succeed() {
    let keys = [
        ("made-up-dead", "pa", KeyState::Invalid),
        ("made-up-b", "pb", KeyState::Valid),
    ];
    let s = setup(&keys, &[], false).await;
    for i in 0..6 {
        let g = s.llm.generate(&req(i)).await.unwrap();
        assert_eq!(g.key.as_deref(), Some("b"));
    }
    assert_eq!(key_requests(&s.sim.state().stats(), "made-up-dead"), 1);
    let status = s.ledger.status().await.unwrap();
    let dead = status.keys.iter().find(|k| k.label == "dead").unwrap();
    assert_eq!(
        dead.disabled.map(|d| d.reason),
        Some(keyturn_core::DeadReason::Invalid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_zero_switches_the_model_off_for_that_project_only() {
    let keys = [
        ("made-up-free", "free", KeyState::Valid),
        ("made-up-paid", "paid", KeyState::Valid),
    ];
    let s = setup(&keys, &[("free", PRO, Limits::new(0, 0, 0))], false).await;
    for _ in 0..5 {
        let g = s
            .llm
            .generate(&GenerateRequest::new(PRO, "x"))
            .await
            .unwrap();
        assert_eq!(g.key.as_deref(), Some("paid"));
    }
    let mut free_used = false;
    for i in 0..4 {
        free_used |= s.llm.generate(&req(i)).await.unwrap().key.as_deref() == Some("free");
    }
    assert!(free_used, "flash still runs on the free project");
    let status = s.ledger.status().await.unwrap();
    let off = status
        .scopes
        .iter()
        .find(|x| x.project == "free" && x.model == PRO)
        .unwrap();
    assert_eq!(off.state, ScopeState::Off);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_opens_breakers_and_calls_finish_when_it_ends() {
    let keys = [
        ("made-up-a", "pa", KeyState::Valid),
        ("made-up-b", "pb", KeyState::Valid),
    ];
    let s = Arc::new(setup(&keys, &[], false).await);
    set_faults(&s.sim, json!({"p503": 1.0})).await;
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.llm.generate(&req(i)).await })
        })
        .collect();
    // Let the storm open the breakers before it ends.
    let mut opened = false;
    for _ in 0..200 {
        let st = s.ledger.status().await.unwrap();
        if st
            .keys
            .iter()
            .all(|k| k.breaker != keyturn_core::BreakerState::Closed)
        {
            opened = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(opened, "both breakers opened during the storm");
    set_faults(&s.sim, json!({})).await;
    for c in calls {
        c.await.unwrap().unwrap();
    }
    // A breaker closes on its half-open probe's success, which takes a request: on a loaded
    // machine the four calls may all have finished on the key that recovered first. Keep
    // calling (bounded) until every breaker has had its probe.
    let mut st = s.ledger.status().await.unwrap();
    for i in 0..100 {
        if st
            .keys
            .iter()
            .all(|k| k.breaker == keyturn_core::BreakerState::Closed)
        {
            break;
        }
        s.llm.generate(&req(100 + i)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        st = s.ledger.status().await.unwrap();
    }
    assert!(
        st.keys
            .iter()
            .all(|k| k.breaker == keyturn_core::BreakerState::Closed),
        "{:?}",
        st.keys
    );
    assert!(s.sim.state().stats()["by_status"]["503"].as_u64().unwrap() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_model_fails_fast_without_touching_key_health() {
    let keys = [("made-up-a", "pa", KeyState::Valid)];
    let s = setup(&keys, &[], false).await;
    let e = s
        .llm
        .generate(&GenerateRequest::new("gemini-2.5-flsh", "x"))
        .await
        .unwrap_err();
    let LlmError::Gemini(g) = &e else {
        panic!("{e}")
    };
    assert_eq!(g.kind(), ErrorKind::CallerFault);
    assert!(e.to_string().contains("404"), "{e}");
    assert_eq!(key_requests(&s.sim.state().stats(), "made-up-a"), 1);
    let st = s.ledger.status().await.unwrap();
    assert_eq!((st.keys[0].failures, st.keys[0].disabled), (0, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_send_nothing() {
    let keys = [("made-up-a", "pa", KeyState::Valid)];
    let s = setup(&keys, &[], true).await;
    let first = s.llm.generate(&req(1)).await.unwrap();
    let before = s.sim.state().stats()["responses"].as_u64().unwrap();
    let again = s.llm.generate(&req(1)).await.unwrap();
    assert!(again.cache_hit && !first.cache_hit);
    assert_eq!(again.text, first.text);
    assert_eq!(s.sim.state().stats()["responses"].as_u64().unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_structured_output() {
    let keys = [("made-up-a", "pa", KeyState::Valid)];
    let s = setup(&keys, &[], false).await;
    let mut stream = s.llm.stream(&req(7)).await.unwrap();
    let mut text = String::new();
    let mut chunks = 0;
    let mut finish = None;
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        text.push_str(&c.text);
        chunks += 1;
        finish = c.finish_reason.or(finish);
    }
    assert!(
        chunks >= 2 && text.starts_with("Simulated answer:") && finish.as_deref() == Some("STOP")
    );
    // The stream's lease was settled with the real prompt tokens.
    let st = s.ledger.status().await.unwrap();
    let sc = st.scopes.iter().find(|x| x.model == FLASH).unwrap();
    assert_eq!(
        sc.tpm_used, 10,
        "'Question number 7 about Ada Lovelace.' is 38 chars → 10 tokens"
    );

    let schema = json!({"type": "OBJECT", "properties": {"people": {"type": "ARRAY", "items": {"type": "STRING"}}}});
    let (v, g) = s.llm.generate_json(&req(8), &schema).await.unwrap();
    assert!(v["people"].is_array(), "{v}");
    assert!(g.usage.prompt_token_count > 0);
    assert_eq!(s.llm.count_tokens(&req(8)).await.unwrap(), 10);
}

/// A writer that keeps everything logged, to search it for keys.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_in_errors_logs_or_debug_output_and_never_in_the_url() {
    let captured = Captured::default();
    let c2 = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || c2.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let secrets = [
        "made-up-suspended-key-1",
        "made-up-invalid-key-2",
        "made-up-leaked-key-3",
        "made-up-good-key-4",
    ];
    let keys = [
        (secrets[0], "p1", KeyState::Suspended),
        (secrets[1], "p2", KeyState::Invalid),
        (secrets[2], "p3", KeyState::Leaked),
        (secrets[3], "p4", KeyState::Valid),
    ];
    let s = setup(&keys, &[], false).await;
    let mut shown = String::new();
    for i in 0..6 {
        let g = s.llm.generate(&req(i)).await.unwrap();
        shown.push_str(&format!("{g:?}"));
    }
    set_faults(&s.sim, json!({"p500": 1.0})).await;
    let e = s.llm.generate(&req(99)).await.unwrap_err();
    shown.push_str(&format!("{e} {e:?}"));
    let e = s
        .llm
        .generate(&GenerateRequest::new("nope", "x"))
        .await
        .unwrap_err();
    shown.push_str(&format!("{e} {e:?}"));
    shown.push_str(&format!(
        "{:?} {:?}",
        s.llm,
        s.ledger.status().await.unwrap()
    ));
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("key disabled"),
        "state changes are logged: {logs}"
    );
    for secret in secrets {
        assert!(
            !logs.contains(secret),
            "{secret} in the logs: {}",
            logs.lines()
                .filter(|l| l.contains(secret))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(!shown.contains(secret), "{secret} in output: {shown}");
    }
    // The suspended key's refusal quotes the key; the message we keep is redacted.
    assert_eq!(s.sim.state().stats()["query_key_uses"], 0);
}
