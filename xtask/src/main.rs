//! Project tasks: `cargo xtask <task>`.
//!
//! - `fuzz [SECONDS]`: runs each fuzz target (transcript parsers, redaction, the proxy's upstream
//!   paths) for a bounded time (default 60 s each)
//!   with cargo-fuzz on the nightly toolchain; installs cargo-fuzz if it is missing.
//! - `examples`: every crate example (`crates/*/examples/`) against `keyturn sim`, checked by
//!   its exit status and output.
//! - `sdk`: the official google-genai and openai Python SDKs and LiteLLM (installed from PyPI
//!   into `target/sdk-venv`) and curl, unmodified, against `keyturn serve` in front of `keyturn
//!   sim` with keys of three projects (the openai SDK, LiteLLM and curl also on the
//!   OpenAI-compatible routes, `/v1beta/openai/`); google-genai's files, caches and batches
//!   first straight against the simulator, then through the proxy when it serves them.
//! - `browser`: the web console in Debian's chromium (`/usr/bin/chromium`, or `$CHROMIUM`), driven
//!   by playwright-core from `tests/browser/` (installed with `npm ci`), against `keyturn serve`
//!   in front of `keyturn sim`, then `keyturn console` (read-only) beside it; screenshots in
//!   `target/browser/`.
//! - `scenario <name>|all`: the real `keyturn` binary against the simulator, check by check, with
//!   PASS/FAIL per scenario (`scenario list` names them).
//! - `bench [--quick]`: the benchmarks, written to `target/bench/report.json` and printed as a
//!   table (the README's "How it performs" comes from it).
//! - `soak [MINUTES] [--release]`: `keyturn serve` on each state backend at a steady rate with the
//!   simulator's faults on (503s, a 429 storm a minute, a key revoked, Redis restarted); fails on
//!   growth of memory or file descriptors, on a self-inflicted 429, or on state writes faster
//!   than the flush interval.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool
#![allow(clippy::unwrap_used, clippy::expect_used)] // a developer tool: a broken invariant may stop it

mod bench;
mod docs;
mod examples;
mod scenario;
mod sdk;
mod soak;
mod world;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn run(cmd: &mut Command) -> bool {
    eprintln!("xtask: {cmd:?}");
    cmd.status().is_ok_and(|s| s.success())
}

/// The fuzz targets under `fuzz/fuzz_targets/`.
const FUZZ_TARGETS: &[&str] = &["transcripts", "redact", "proxy_path"];

fn fuzz(seconds: u64) -> ExitCode {
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz
        && !run(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))
    {
        eprintln!(
            "xtask fuzz: needs the nightly toolchain and cargo-fuzz (cargo +nightly install cargo-fuzz)"
        );
        return ExitCode::from(2);
    }
    // Each target gets the whole budget: the transcript parsers, redaction, the proxy's paths.
    let ok = FUZZ_TARGETS.iter().all(|target| {
        run(Command::new("cargo")
            .current_dir(root().join("fuzz"))
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}")))
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn browser() -> Result<(), String> {
    let root = root();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Err(format!(
            "no chromium at {chromium}: apt-get install -y chromium (or set CHROMIUM)"
        ));
    }
    if !run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--bin", "keyturn"]))
    {
        return Err("cannot build keyturn".into());
    }
    let dir = root.join("tests/browser");
    if !run(Command::new("npm")
        .current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund"]))
    {
        return Err("npm ci in tests/browser failed (is npm installed?)".into());
    }
    if !run(Command::new("node")
        .current_dir(&dir)
        .arg("console.test.mjs")
        .arg(root.join("target/debug/keyturn"))
        .arg(root.join("target/browser"))
        .env("CHROMIUM", &chromium))
    {
        return Err("the console's browser checks failed".into());
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

fn scenarios(which: &str) -> ExitCode {
    if which == "list" {
        for s in scenario::SCENARIOS {
            println!("{:<16} {}", s.name, s.shows);
        }
        return ExitCode::SUCCESS;
    }
    let chosen: Result<Vec<&scenario::Scenario>, &str> = if which == "all" {
        Ok(scenario::SCENARIOS.iter().collect())
    } else {
        which
            .split(',')
            .map(|n| scenario::find(n).ok_or(n))
            .collect()
    };
    let chosen = match chosen {
        Ok(c) => c,
        Err(bad) => {
            eprintln!("xtask scenario: no scenario named {bad} (see `cargo xtask scenario list`)");
            return ExitCode::from(2);
        }
    };
    let bin = match world::build_keyturn(false) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xtask scenario: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = runtime();
    let mut verdicts = Vec::new();
    for s in chosen {
        let name = s.name;
        println!("\n== {name}: {}", s.shows);
        let v = rt.block_on(s.run(&bin));
        match &v {
            scenario::Verdict::Pass => println!("PASS {name}"),
            scenario::Verdict::Fail(f) => println!("FAIL {name}: {}", f.join("; ")),
            scenario::Verdict::Skip(why) => println!("SKIP {name}: {why}"),
        }
        verdicts.push((name, v));
    }
    println!("\nscenarios:");
    let mut failed = false;
    for (name, v) in &verdicts {
        let word = match v {
            scenario::Verdict::Pass => "PASS",
            scenario::Verdict::Fail(_) => {
                failed = true;
                "FAIL"
            }
            scenario::Verdict::Skip(_) => "SKIP",
        };
        println!("  {word}  {name}");
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("scenario") => scenarios(args.get(1).map_or("all", String::as_str)),
        Some("bench") => bench::main(&args[1..]),
        Some("soak") => soak::main(&args[1..]),
        Some("docs") => docs::main(&args[1..]),
        Some("bench-rss-child") => bench::rss_child(&args[1..]),
        Some("bench-forward") => bench::forward::main(&args[1..]),
        Some("examples") => examples::main(),
        Some("fuzz") => fuzz(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60)),
        Some("browser") => match browser() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask browser: {e}");
                ExitCode::from(1)
            }
        },
        Some("sdk") => match sdk::main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask sdk: {e}");
                ExitCode::from(1)
            }
        },
        _ => {
            eprintln!(
                "usage: cargo xtask browser | docs [--check] | examples | fuzz [SECONDS] | sdk | scenario <name>[,<name>…]|all|list | bench [--quick] | soak [MINUTES] [--release]"
            );
            ExitCode::from(2)
        }
    }
}
