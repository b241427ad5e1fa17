//! The real `keyturn` binary on a Tier 1 project and models its built-in table does not know: it
//! must not cap them at the free tier's 20 requests a day (and report "exhausted for the day",
//! exit 3); `status` says where each limit came from.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use keyturn_sim::{KeyState, Limits, SimConfig, SimKey, Simulator};
use serde_json::Value;

/// Models with no entry in the built-in table (a pro model and an embedding model).
const LLM: &str = "gemini-3.1-pro-preview";
const EMBED: &str = "gemini-embedding-001";

async fn run_cmd(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier1_project_is_not_held_to_twenty_requests_a_day_on_an_unknown_model() {
    let dir = tempfile::tempdir().unwrap();
    keyturn_pipeline::demo::write_samples(&dir.path().join("transcripts")).unwrap();
    let key = format!("made-up-tiers-key-{}", "t".repeat(8));
    std::fs::write(
        dir.path().join("keys.txt"),
        format!("{key} label=paid project=acme\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("keyturn.toml"),
        "[rotation]\nmax_wait = \"1m\"\n[retry]\nbase_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\
         [projects.\"acme\"]\ntier = \"tier1\"\n",
    )
    .unwrap();
    let mut models = BTreeMap::new();
    models.insert(LLM.to_owned(), Limits::new(1000, 10_000_000, 100_000));
    models.insert(EMBED.to_owned(), Limits::new(1000, 10_000_000, 100_000));
    let sim = Simulator::start(SimConfig {
        keys: vec![SimKey {
            key: key.clone(),
            label: Some("paid".into()),
            project: Some("acme".into()),
            state: KeyState::Valid,
        }],
        models,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let command = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keyturn"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KEYTURN_KEYS_FILE", dir.path().join("keys.txt"))
            .env("KEYTURN_CONFIG", dir.path().join("keyturn.toml"))
            .env("KEYTURN_STATE_DIR", dir.path().join("state"))
            .env("GEMINI_BASE_URL", sim.base_url())
            .current_dir(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let inputs = dir.path().join("transcripts");
    // Two whole seeds into fresh folders: well past the 20 requests a day the free tier's cap
    // would have allowed the unknown model.
    for run in ["1", "2"] {
        let out = dir.path().join(format!("out-{run}"));
        let o = run_cmd(command(&[
            "seed",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
            LLM,
            "--chunk-tokens",
            "60",
            "--dimensions",
            "16",
            "--no-cache",
        ]))
        .await;
        assert!(o.status.success(), "{}", text(&o));
    }
    let stats = sim.state().stats();
    let admitted = stats["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == "acme" && s["model"] == LLM)
        .map_or(0, |s| s["admitted"].as_u64().unwrap_or(0));
    assert!(admitted > 20, "{admitted} requests: {stats}");

    let o = run_cmd(command(&["status", "--json"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let st: Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = st["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["project"] == "acme" && s["model"] == LLM)
        .unwrap_or_else(|| panic!("no scope in {st}"));
    assert_eq!(s["source"], "family", "{s}");
    assert_eq!(s["tier"], "tier1", "{s}");
    assert_eq!(s["limits"]["rpd"], Value::Null, "no daily cap: {s}");
    assert_eq!(s["limits"]["rpm"], 1000, "{s}");
    assert_eq!(s["origin"]["rpd"], "family", "{s}");
    assert!(s["rpd_used"].as_u64().unwrap() > 20, "{s}");

    let o = run_cmd(command(&["status"])).await;
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    let row = table
        .lines()
        .find(|l| l.contains(LLM))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("tier1 family default, no daily cap"),
        "{table}"
    );
    assert!(!table.contains(&key), "a key in the status table");
}
