//! Every real error body, sent by the simulator to one key of a two-project pool, through the
//! real `RotatingCaller`: what keyturn visibly does afterwards is what the corpus's `expect` says
//! (who is disabled and why, which scopes are cooling, exhausted or off, whether the caller's
//! calls still succeed on the other project, and that a caller fault blames nothing).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use keyturn_core::{BreakerState, Demand, QuotaLedger, ScopeState};
use keyturn_gemini::testkit::{fast_config, pool, roomy_limits};
use keyturn_gemini::{ErrorKind, GeminiCall};
use keyturn_sim::config::ScriptRule;
use keyturn_sim::{Limits, SimConfig, SimKey, Simulator};
use serde_json::{Value, json};

const FLASH: &str = "gemini-2.5-flash";
const KEYS: &[keyturn_gemini::testkit::TestKey<'static>] = &[
    ("made-up-corpus-sim-a", "a", Some("pa")),
    ("made-up-corpus-sim-b", "b", Some("pb")),
];

fn corpus() -> Vec<Value> {
    serde_json::from_str(include_str!("data/gemini-errors/bodies.json")).unwrap()
}

fn reason_word(r: keyturn_core::DeadReason) -> String {
    serde_json::to_value(r)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

async fn sim() -> Simulator {
    let mut models = BTreeMap::new();
    models.insert(
        FLASH.to_owned(),
        Limits::new(10_000, 100_000_000, 1_000_000),
    );
    Simulator::start(SimConfig {
        keys: KEYS
            .iter()
            .map(|(k, l, p)| SimKey {
                key: (*k).into(),
                label: Some((*l).into()),
                project: p.map(str::to_owned),
                state: Default::default(),
            })
            .collect(),
        models,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

fn body(file: bool) -> Value {
    let mut parts = vec![json!({"text": "hello"})];
    if file {
        parts.push(json!({"fileData": {"mimeType": "application/pdf", "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/other-project-abc"}}));
    }
    json!({"contents": [{"role": "user", "parts": parts}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_real_body_has_the_consequence_the_corpus_expects() {
    let mut wrong = Vec::new();
    for e in corpus() {
        let id = e["id"].as_str().unwrap().to_owned();
        let expect = e["expect"].as_str().unwrap();
        let decided = expect.strip_prefix("probe-then-decide:").unwrap_or(expect);
        let caller_fault = decided == "caller-fault";
        let sim = sim().await;
        // A caller fault is the request's: every key gets it. Anything else is key a's (or its
        // project's), on the route that spends quota and, where the real service refuses them
        // too, on the probes.
        sim.state()
            .add_scripts(
                vec![ScriptRule {
                    shape: id.clone(),
                    key: (!caller_fault).then(|| "a".to_owned()),
                    project: None,
                    model: None,
                    method: None,
                    times: None,
                }],
                true,
            )
            .unwrap();
        let (ledger, caller) = pool(&sim.base_url(), KEYS, fast_config(roomy_limits(&[FLASH])));
        let mut results = Vec::new();
        for _ in 0..4 {
            results.push(
                caller
                    .call(
                        FLASH,
                        "generateContent",
                        Demand::tokens(10),
                        body(caller_fault),
                    )
                    .await,
            );
        }
        // The shape really went out: the simulator answered with its status.
        let status = e["status"].as_u64().unwrap().to_string();
        let sent = sim.state().stats()["by_status"][&status]
            .as_u64()
            .unwrap_or(0);
        if sent == 0 {
            wrong.push(format!("{id}: the simulator never answered {status}"));
        }
        let st = ledger.status().await.unwrap();
        let key = |l: &str| st.keys.iter().find(|k| k.label == l).unwrap().clone();
        let scope = |p: &str| {
            st.scopes
                .iter()
                .find(|s| s.project == p && s.model == FLASH)
                .cloned()
        };
        let (a, b) = (key("a"), key("b"));
        let pa = scope("pa");
        let mut check = |ok: bool, what: String| {
            if !ok {
                wrong.push(format!("{id} ({expect}): {what}"));
            }
        };
        check(
            b.disabled.is_none(),
            format!("key b is disabled: {:?}", b.disabled),
        );
        if caller_fault {
            check(
                results.iter().all(|r| {
                    r.as_ref()
                        .is_err_and(|e| e.kind() == ErrorKind::CallerFault)
                }),
                "every call fails at once as the caller's fault".into(),
            );
            check(a.disabled.is_none(), "key a is not blamed".into());
            check(
                st.scopes.iter().all(|s| s.state == ScopeState::Ready),
                format!(
                    "no scope changed: {:?}",
                    st.scopes.iter().map(|s| s.state).collect::<Vec<_>>()
                ),
            );
            continue;
        }
        check(
            results.iter().all(Result::is_ok),
            format!(
                "every call is served by the other project: {:?}",
                results
                    .iter()
                    .filter_map(|r| r.as_ref().err().map(ToString::to_string))
                    .collect::<Vec<_>>()
            ),
        );
        let state = pa.as_ref().map(|s| s.state);
        match decided
            .split_once(':')
            .map_or((decided, ""), |(w, r)| (w, r))
        {
            ("per-day", _) => check(
                state == Some(ScopeState::Exhausted),
                format!("pa exhausted: {state:?}"),
            ),
            ("per-minute-requests" | "per-minute-tokens" | "throttled-unspecified", _) => {
                check(
                    state == Some(ScopeState::Cooling),
                    format!("pa cooling: {state:?}"),
                );
                check(a.disabled.is_none(), "key a is not blamed".into());
            }
            ("model-off-for-project", _) => {
                check(state == Some(ScopeState::Off), format!("pa off: {state:?}"));
                check(
                    a.disabled.is_none(),
                    format!("key a lives: {:?}", a.disabled),
                );
            }
            ("project-off", _) => check(
                pa.as_ref().is_some_and(|s| s.project_off),
                format!("project pa off as a whole: {pa:?}"),
            ),
            ("key-dead" | "project-dead", reason) => {
                let got = a.disabled.as_ref().map(|d| reason_word(d.reason));
                // `key-dead` without a reason: any reason will do.
                check(
                    got.as_deref()
                        .is_some_and(|g| reason.is_empty() || g == reason),
                    format!("key a disabled as {reason:?}: {got:?}"),
                );
            }
            ("transient", _) => {
                check(a.disabled.is_none(), "key a is not disabled".into());
                check(
                    a.failures > 0 || a.breaker != BreakerState::Closed,
                    format!("key a's breaker counted it: {:?} {}", a.breaker, a.failures),
                );
            }
            (other, _) => check(false, format!("unknown expectation {other}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
