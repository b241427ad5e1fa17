//! A small world for the monitoring tests: the simulator with two live keys in two projects and
//! one invalid key, a tiny daily quota, and a configuration whose limits match the simulator's.

#![allow(dead_code)]

pub mod forward;

use std::collections::BTreeMap;
use std::path::Path;

use keyturn_core::Demand;
use keyturn_gemini::GeminiCall;
use keyturn_services::config::Env;
use keyturn_services::{Config, Overrides};
use keyturn_sim::{KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::json;

pub const FLASH: &str = "gemini-2.5-flash";
/// (made-up key, label, project, valid)
pub const KEYS: &[(&str, &str, &str, bool)] = &[
    ("made-up-monitor-key-alpha", "alpha", "proj-a", true),
    ("made-up-monitor-key-beta", "beta", "proj-b", true),
    ("made-up-monitor-key-gone", "gone", "proj-c", false),
];
/// Requests per day per project, in the simulator and in keyturn's configuration.
pub const RPD: u64 = 5;

pub async fn sim() -> Simulator {
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(1000, 10_000_000, RPD));
    Simulator::start(SimConfig {
        keys: KEYS
            .iter()
            .map(|(k, l, p, ok)| SimKey {
                key: (*k).into(),
                label: Some((*l).into()),
                project: Some((*p).into()),
                state: if *ok {
                    KeyState::Valid
                } else {
                    KeyState::Invalid
                },
            })
            .collect(),
        models,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

pub fn keys_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("keys.txt");
    let lines: String = KEYS
        .iter()
        .map(|(k, l, p, _)| format!("{k} label={l} project={p}\n"))
        .collect();
    std::fs::write(&p, lines).unwrap();
    p
}

/// The configuration, with `extra` TOML appended.
pub fn config(dir: &Path, sim: &Simulator, extra: &str) -> (Config, Env) {
    let toml = format!(
        "[state]\ndir = \"{}\"\n[rotation]\nmax_wait = \"0s\"\n[retry]\nbase_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n\
         [models.\"{FLASH}\"]\nrpm = 1000\ntpm = 10000000\nrpd = {RPD}\n{extra}",
        dir.join("state").display()
    );
    std::fs::write(dir.join("keyturn.toml"), toml).unwrap();
    let env: Env = [
        (
            "KEYTURN_KEYS_FILE".to_owned(),
            keys_file(dir).display().to_string(),
        ),
        ("GEMINI_BASE_URL".to_owned(), sim.base_url()),
    ]
    .into_iter()
    .collect();
    let cfg = Config::load(
        Some(&dir.join("keyturn.toml")),
        &env,
        dir,
        &Overrides::default(),
    )
    .unwrap();
    (cfg, env)
}

/// Calls until the pool refuses: every live project's day used up. Returns the successes.
pub async fn spend_the_day(caller: &dyn GeminiCall) -> u64 {
    let ok = spend(caller, 50).await;
    assert!(ok < 50, "the pool never ran out");
    ok
}

/// Up to `n` successful calls; stops at the first refusal. Returns the successes.
pub async fn spend(caller: &dyn GeminiCall, n: u64) -> u64 {
    let mut ok = 0;
    for i in 0..n {
        let body =
            json!({"contents": [{"role": "user", "parts": [{"text": format!("question {i}")}]}]});
        match caller
            .call(FLASH, "generateContent", Demand::tokens(20), body)
            .await
        {
            Ok(_) => ok += 1,
            Err(_) => return ok,
        }
    }
    ok
}
