//! `keyturn demo`: the whole pipeline on bundled sample transcripts against the built-in Gemini
//! simulator on loopback, with made-up keys in three projects, small limits, one revoked key and a
//! few 503s — rotation, cooldowns and a disabled key happen live. No key, no network.

#![allow(clippy::print_stdout, clippy::print_stderr)] // the binary's UI

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use keyturn_services::{Config, Env, create_gemini_services};
use keyturn_sim::config::ProjectConfig;
use keyturn_sim::{Faults, KeyState, Limits, SimConfig, SimKey, Simulator};

use crate::progress::Progress;
use crate::report::Outcome;
use crate::run::{SeedOptions, seed};

/// The bundled transcripts: (podcast, file name, content). Written for keyturn (CC0).
pub const SAMPLES: &[(&str, &str, &str)] = &[
    (
        "History of Computing",
        "01 The Engine and the Poet.vtt",
        include_str!("../samples/History of Computing/01 The Engine and the Poet.vtt"),
    ),
    (
        "History of Computing",
        "02 Grace Hopper and the Compiler.vtt",
        include_str!("../samples/History of Computing/02 Grace Hopper and the Compiler.vtt"),
    ),
    (
        "History of Computing",
        "03 Turing at Bletchley Park.srt",
        include_str!("../samples/History of Computing/03 Turing at Bletchley Park.srt"),
    ),
    (
        "Rivers and Cities",
        "01 The Danube.vtt",
        include_str!("../samples/Rivers and Cities/01 The Danube.vtt"),
    ),
    (
        "Rivers and Cities",
        "02 The Thames.txt",
        include_str!("../samples/Rivers and Cities/02 The Thames.txt"),
    ),
];

/// The demo's made-up keys: (key, label, project, state in the simulator).
pub const DEMO_KEYS: &[(&str, &str, &str, KeyState)] = &[
    (
        "demo-made-up-key-alpha-1",
        "alpha-1",
        "demo-alpha",
        KeyState::Valid,
    ),
    (
        "demo-made-up-key-alpha-2",
        "alpha-2",
        "demo-alpha",
        KeyState::Valid,
    ),
    (
        "demo-made-up-key-beta-1",
        "beta-1",
        "demo-beta",
        KeyState::Valid,
    ),
    (
        "demo-made-up-key-gamma-1",
        "gamma-1",
        "demo-gamma",
        KeyState::Valid,
    ),
    (
        "demo-made-up-key-revoked",
        "revoked",
        "demo-delta",
        KeyState::Invalid,
    ),
];

const FLASH: &str = crate::run::DEFAULT_MODEL;
const EMBED: &str = crate::run::DEFAULT_EMBEDDING_MODEL;

/// Writes the samples into `dir/<podcast>/<file>`.
pub fn write_samples(dir: &Path) -> std::io::Result<()> {
    for (podcast, file, text) in SAMPLES {
        let d = dir.join(podcast);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(file), text)?;
    }
    Ok(())
}

/// The simulator the demo runs against.
pub fn demo_sim_config() -> SimConfig {
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(8, 250_000, 200));
    models.insert(EMBED.to_owned(), Limits::new(100, 1_000_000, 1_000));
    // Project beta's real limit is lower than keyturn believes: keyturn meets a per-minute 429,
    // cools the project down and learns the limit.
    let mut beta = ProjectConfig::default();
    beta.models
        .insert(FLASH.to_owned(), Limits::new(2, 250_000, 200));
    SimConfig {
        keys: DEMO_KEYS
            .iter()
            .map(|(k, l, p, s)| SimKey {
                key: (*k).into(),
                label: Some((*l).into()),
                project: Some((*p).into()),
                state: *s,
            })
            .collect(),
        models,
        projects: BTreeMap::from([("demo-beta".to_owned(), beta)]),
        faults: Faults {
            p503: 0.05,
            latency_ms: 20,
            jitter_ms: 40,
            ..Faults::default()
        },
        ..SimConfig::default()
    }
}

/// Runs the demo.
pub async fn run(out: &Path, cwd: &Path, metrics_addr: Option<std::net::SocketAddr>) -> ExitCode {
    if let Some(addr) = metrics_addr
        && let Err(e) = keyturn_services::install_metrics_exporter(addr)
    {
        eprintln!("keyturn demo: {e}");
        return Outcome::Failed.into();
    }
    let work = match tempfile::tempdir() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("keyturn demo: cannot create a temporary folder: {e}");
            return Outcome::Failed.into();
        }
    };
    let inputs = work.path().join("transcripts");
    if let Err(e) = write_samples(&inputs) {
        eprintln!("keyturn demo: cannot write the samples: {e}");
        return Outcome::Failed.into();
    }
    let sim = match Simulator::start(demo_sim_config()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keyturn demo: cannot start the simulator: {e}");
            return Outcome::Failed.into();
        }
    };
    println!(
        "keyturn demo: Gemini simulator on {} (loopback; no network, made-up keys)",
        sim.base_url()
    );
    println!(
        "  keys: alpha-1, alpha-2 (project demo-alpha), beta-1 (demo-beta), gamma-1 (demo-gamma), revoked (demo-delta, invalid)"
    );
    println!(
        "  limits: {FLASH} 8 requests/min per project (demo-beta really allows 2), 5% of requests answer 503"
    );
    let keys_file = work.path().join("keys.txt");
    let lines: String = DEMO_KEYS
        .iter()
        .map(|(k, l, p, _)| format!("{k} label={l} project={p}\n"))
        .collect();
    if let Err(e) = std::fs::write(&keys_file, lines) {
        eprintln!("keyturn demo: cannot write the keys file: {e}");
        return Outcome::Failed.into();
    }
    let mut env = Env::new();
    env.insert("KEYTURN_KEYS_FILE".into(), keys_file.display().to_string());
    env.insert("GEMINI_BASE_URL".into(), sim.base_url());
    let toml = format!(
        "[state]\ndir = {}\nflush_interval = \"500ms\"\n[rotation]\nmax_wait = \"3m\"\n[breaker]\nbase_cooldown = \"2s\"\nmax_cooldown = \"20s\"\n[retry]\nbase_backoff = \"100ms\"\nmax_backoff = \"2s\"\nmax_attempts = 12\n[models.\"{FLASH}\"]\nrpm = 8\ntpm = 250000\nrpd = 200\n[models.\"{EMBED}\"]\nrpm = 100\ntpm = 1000000\nrpd = 1000\n",
        // A JSON string is a TOML basic string: quotes or backslashes in TMPDIR stay text.
        serde_json::to_string(&work.path().join("state").display().to_string()).unwrap_or_default()
    );
    let cfg = match Config::from_toml(&toml, Path::new("(demo configuration)")).and_then(|mut c| {
        c.apply_env(&env);
        c.validate().map(|()| c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keyturn demo: {e}");
            return Outcome::Failed.into();
        }
    };
    let services = match create_gemini_services(&cfg, &env, cwd).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keyturn demo: {e}");
            return Outcome::Failed.into();
        }
    };
    let out = if out.is_relative() {
        cwd.join(out)
    } else {
        out.to_owned()
    };
    let opts = SeedOptions {
        inputs: vec![inputs],
        out: out.clone(),
        concurrency: 3,
        requests: 2,
        chunk_tokens: 90,
        dimensions: Some(64),
        ..SeedOptions::default()
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let result = seed(opts, &services, rx, Duration::from_secs(5), &progress).await;
    services.state.shutdown().await.ok();
    let stats = sim.state().stats();
    sim.shutdown().await;
    match result {
        Ok(report) => {
            let code = crate::report::report_and_exit(&report, "keyturn demo");
            println!(
                "simulator saw: {} responses, by status {}",
                stats["responses"], stats["by_status"]
            );
            let out = crate::term::safe_path(&out);
            println!(
                "outputs: {out}/episodes, {out}/graph/nodes.jsonl, {out}/graph/edges.jsonl, {out}/run-report.json"
            );
            println!("next: keyturn export --out {out} --format neo4j-csv");
            code
        }
        Err(e) => {
            eprintln!("keyturn demo: {}", crate::term::safe_text(&e.to_string()));
            Outcome::from(e.kind()).into()
        }
    }
}
