//! `cargo xtask bench [--quick] [--update-readme]`: every performance claim keyturn makes, each
//! next to the reference that bounds it, measured in one run on this machine.
//!
//! - criterion: in-process acquire+settle at 10/100/1,000 keys and a governor keyed `check_key`;
//!   Redis ledger acquires next to raw `EVALSHA` of a trivial script (serial and 64 in flight);
//!   one LLM call through keyturn next to the same call with bare reqwest;
//! - end-to-end quota utilisation: keys with known RPM limits driven harder than they allow for
//!   several minute-windows against the simulator: admitted / theoretical maximum, and 429s;
//! - simulator throughput;
//! - the proxy: a load generator (reqwest, keep-alive) against the release `keyturn sim` directly
//!   and through the release `keyturn serve` in front of it: latency added at one connection
//!   (median) and the rate at 32 connections, each next to the direct baseline of the same run,
//!   and the same two through a bare forwarder of the same crates (`bench/forward.rs`): the
//!   floor any proxy of this design has on the machine;
//! - peak RSS of `keyturn seed` (release build) on the samples and on generated 200- and
//!   1,000-episode sets.
//!
//! Writes `target/bench/report.json` and `target/bench/table.md`; `--update-readme` puts the
//! table in README.md between the `bench:start` / `bench:end` markers. `--quick` shortens every
//! measurement; `--only criterion,utilisation,simulator,proxy,rss,batch` runs some sections (for
//! work on one; `--only redis` runs only the Redis rows of criterion).
//! It runs as a release build (a debug `cargo xtask` re-runs itself with `--release`).
//! `KEYTURN_BIN=/path/to/keyturn` runs the sections against that binary instead of building one
//! (to compare an old build with a new one, alternating runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyturn_core::Demand;
use keyturn_sim::{Limits, SimConfig, SimKey, Simulator};
use serde_json::{Value, json};

use crate::world::{FLASH, root, synth_transcripts};

mod batch;
pub mod forward;

struct Opts {
    quick: bool,
    update_readme: bool,
    /// Sections to run (`criterion`, `utilisation`, `simulator`, `proxy`, `rss`, `batch`); empty: all.
    only: Vec<String>,
}

impl Opts {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root().join("target"), PathBuf::from)
}

pub fn main(args: &[String]) -> ExitCode {
    // The in-process parts (the simulator, the load generators, the caller) must be optimized
    // like the binaries they stand beside: a debug xtask re-runs itself as a release build.
    if cfg!(debug_assertions) && std::env::var_os("KEYTURN_XTASK_OPTIMIZED").is_none() {
        let status = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .current_dir(root())
            .args(["run", "--release", "-p", "xtask", "--", "bench"])
            .args(args)
            .env("KEYTURN_XTASK_OPTIMIZED", "1")
            .status();
        return match status {
            Ok(s) if s.success() => ExitCode::SUCCESS,
            _ => ExitCode::from(1),
        };
    }
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let opts = Opts {
        quick: args.iter().any(|a| a == "--quick"),
        update_readme: args.iter().any(|a| a == "--update-readme"),
        only,
    };
    if opts.update_readme && !opts.only.is_empty() {
        eprintln!("xtask bench: --update-readme needs every section (drop --only)");
        return ExitCode::from(2);
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask bench: {e}");
            ExitCode::from(1)
        }
    }
}

#[allow(clippy::disallowed_methods)] // a benchmark times itself with the real clock
fn now() -> Instant {
    Instant::now()
}

fn run(opts: &Opts) -> Result<(), String> {
    let started = now();
    let mut report = serde_json::Map::new();
    report.insert("machine".into(), machine());
    report.insert("quick".into(), json!(opts.quick));

    if opts.runs("criterion") {
        let crit = criterion(opts)?;
        report.insert("core".into(), crit.0);
        report.insert("redis".into(), crit.1);
        report.insert("client_overhead".into(), crit.2);
        report.insert("filestore".into(), crit.3);
    } else if opts.runs("redis") {
        // The Redis rows alone (`--only redis`): the store's Redis benches, nothing else.
        std::fs::remove_dir_all(target_dir().join("criterion").join("redis")).ok();
        cargo_bench("keyturn-store", "store", Some("redis"), opts)?;
        report.insert("redis".into(), redis_rows(&criterion_medians()));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    if opts.runs("utilisation") {
        report.insert("utilisation".into(), rt.block_on(utilisation(opts))?);
    }
    if opts.runs("simulator") {
        report.insert("simulator".into(), rt.block_on(sim_throughput(opts))?);
    }
    if opts.runs("proxy") {
        report.insert("proxy".into(), rt.block_on(proxy(opts))?);
    }
    if opts.runs("rss") {
        report.insert("rss".into(), rt.block_on(rss(opts))?);
    }
    if opts.runs("batch") {
        report.insert("batch".into(), rt.block_on(batch::run(opts.quick))?);
    }
    report.insert("took_s".into(), json!(started.elapsed().as_secs()));

    let report = Value::Object(report);
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("report.json"), text).map_err(|e| e.to_string())?;
    let table = table(&report);
    std::fs::write(dir.join("table.md"), &table).map_err(|e| e.to_string())?;
    println!("\n{table}");
    println!("report: {}", dir.join("report.json").display());
    if opts.update_readme {
        update_readme(&table)?;
        println!("README.md: table updated");
    }
    Ok(())
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({ "cpus": cpus, "cpu": model, "os": std::env::consts::OS, "commit": commit })
}

/// Runs one criterion bench target; returns its stdout.
fn cargo_bench(
    package: &str,
    bench: &str,
    filter: Option<&str>,
    opts: &Opts,
) -> Result<String, String> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
    cmd.current_dir(root())
        .args(["bench", "-p", package, "--bench", bench, "--"]);
    if let Some(f) = filter {
        cmd.arg(f);
    }
    if opts.quick {
        cmd.args([
            "--warm-up-time",
            "0.5",
            "--measurement-time",
            "1",
            "--sample-size",
            "10",
        ]);
    } else {
        cmd.args(["--warm-up-time", "1", "--measurement-time", "3"]);
    }
    cmd.stderr(Stdio::inherit());
    eprintln!("xtask: {cmd:?}");
    let out = cmd.output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("cargo bench -p {package} failed:\n{stdout}"));
    }
    Ok(stdout)
}

/// Medians (ns per iteration) of every criterion result under target/criterion, by full id.
fn criterion_medians() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for f in crate::world::walk(&target_dir().join("criterion")) {
        if !f.ends_with("new/benchmark.json") {
            continue;
        }
        let est = f.with_file_name("estimates.json");
        let read = |p: &Path| -> Option<Value> {
            serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
        };
        if let (Some(b), Some(e)) = (read(&f), read(&est))
            && let (Some(id), Some(m)) = (
                b["full_id"].as_str(),
                e["median"]["point_estimate"].as_f64(),
            )
        {
            out.insert(id.to_owned(), m);
        }
    }
    out
}

fn criterion(opts: &Opts) -> Result<(Value, Value, Value, Value), String> {
    for group in [
        "acquire_settle",
        "acquire",
        "governor_check_key",
        "redis",
        "generate",
    ] {
        std::fs::remove_dir_all(target_dir().join("criterion").join(group)).ok();
    }
    cargo_bench("keyturn-core", "acquire", None, opts)?;
    let store_out = cargo_bench("keyturn-store", "store", Some("redis"), opts)?;
    cargo_bench("keyturn-llm", "overhead", None, opts)?;
    let m = criterion_medians();
    let get = |id: &str| m.get(id).copied();

    let mut core = serde_json::Map::new();
    for n in [10, 100, 1000] {
        core.insert(
            format!("keys_{n}"),
            json!({
                "acquire_settle_ns": get(&format!("acquire_settle/RoundRobin/{n}")),
                "acquire_ns": get(&format!("acquire/RoundRobin/{n}")),
                "least_loaded_ns": get(&format!("acquire_settle/LeastLoaded/{n}")),
                "weighted_ns": get(&format!("acquire_settle/Weighted/{n}")),
                "contended_2_threads_ns": get(&format!("acquire_settle/RoundRobin-2-threads/{n}")),
                "governor_check_key_ns": get(&format!("governor_check_key/{n}")),
            }),
        );
    }
    if let (Some(a), Some(b)) = (
        get("acquire_settle/RoundRobin/1000"),
        get("acquire_settle/RoundRobin/10"),
    ) {
        core.insert("ratio_1000_vs_10_keys".into(), json!(a / b));
    }
    let ratio = |a: &str, b: &str| get(a).zip(get(b)).map(|(a, b)| a / b);
    core.insert(
        "pick_vs_governor_100".into(),
        json!(ratio("acquire/RoundRobin/100", "governor_check_key/100")),
    );
    for (name, policy) in [("least_loaded", "LeastLoaded"), ("weighted", "Weighted")] {
        core.insert(
            format!("{name}_vs_round_robin_1000"),
            json!(ratio(
                &format!("acquire_settle/{policy}/1000"),
                "acquire_settle/RoundRobin/1000"
            )),
        );
    }

    let redis = redis_rows(&m);
    let bare = get("generate/bare_reqwest").map(|ns| ns / 1000.0);
    let ours = get("generate/keyturn_llm").map(|ns| ns / 1000.0);
    let client = json!({
        "bare_reqwest_us": bare,
        "keyturn_llm_us": ours,
        "overhead_us": ours.zip(bare).map(|(o, b)| o - b),
    });
    // "filestore: N acquires in S s (R/s), W snapshot writes (X/s; flush interval 1 s)"
    let filestore = store_out
        .lines()
        .find(|l| l.starts_with("filestore:"))
        .map_or(Value::Null, |l| {
            let num = |after: &str, before: &str| -> Option<f64> {
                let s = l.split(after).nth(1)?.split(before).next()?;
                s.trim().parse().ok()
            };
            json!({
                "acquires_per_s": num("s (", "/s)"),
                "writes_per_s": num("writes (", "/s;"),
                "line": l,
            })
        });
    Ok((Value::Object(core), redis, client, filestore))
}

/// The Redis rows: ledger acquires (and acquire + settle) next to a trivial `EVALSHA`, serial
/// and with 64 in flight, in one run against one server.
fn redis_rows(m: &BTreeMap<String, f64>) -> Value {
    let per_s = |id: &str| m.get(id).copied().map(|ns| 1e9 / ns);
    let mut redis = serde_json::Map::new();
    for mode in ["serial", "64-in-flight"] {
        let evalsha = per_s(&format!("redis/evalsha_trivial/{mode}"));
        let acquire = per_s(&format!("redis/acquire/{mode}"));
        let both = per_s(&format!("redis/acquire_settle/{mode}"));
        redis.insert(
            mode.into(),
            json!({
                "evalsha_trivial_per_s": evalsha,
                "acquire_per_s": acquire,
                "acquire_settle_per_s": both,
                "acquire_vs_evalsha": acquire.zip(evalsha).map(|(a, e)| a / e),
            }),
        );
    }
    Value::Object(redis)
}

/// Drives keys with known RPM limits harder than they allow, through keyturn's caller against the
/// simulator, for several minute-windows; counts what the server admitted and refused.
async fn utilisation(opts: &Opts) -> Result<Value, String> {
    let (n_keys, rpm) = (4u64, 30u64);
    let secs: u64 = if opts.quick { 70 } else { 150 };
    let mut models = BTreeMap::new();
    models.insert(FLASH.to_owned(), Limits::new(rpm, 100_000_000, 1_000_000));
    let keys: Vec<(String, String)> = (0..n_keys)
        .map(|i| (format!("made-up-bench-util-{i}"), format!("u{i}")))
        .collect();
    let sim = Simulator::start(SimConfig {
        keys: keys
            .iter()
            .map(|(k, l)| SimKey {
                key: k.clone(),
                label: Some(l.clone()),
                project: Some(format!("proj-{l}")),
                state: keyturn_sim::KeyState::Valid,
            })
            .collect(),
        models,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let keys_file: String = keys
        .iter()
        .map(|(k, l)| format!("{k} label={l} project=proj-{l}\n"))
        .collect();
    std::fs::write(dir.path().join("keys.txt"), keys_file).map_err(|e| e.to_string())?;
    let toml = format!(
        "[state]\ndir = \"{}\"\n[rotation]\nmax_wait = \"2m\"\n[cache]\nenabled = false\n[models.\"{FLASH}\"]\nrpm = {rpm}\ntpm = 100000000\nrpd = 1000000\n",
        dir.path().join("state").display()
    );
    let cfg = keyturn_services::Config::from_toml(&toml, Path::new("(bench)"))
        .map_err(|e| e.to_string())?;
    let env: keyturn_services::Env = [
        (
            "KEYTURN_KEYS_FILE".to_owned(),
            dir.path().join("keys.txt").display().to_string(),
        ),
        ("GEMINI_BASE_URL".to_owned(), sim.base_url()),
    ]
    .into_iter()
    .collect();
    let mut cfg = cfg;
    cfg.apply_env(&env);
    let pool = keyturn_services::create_pool(&cfg, &env, dir.path())
        .await
        .map_err(|e| e.to_string())?;
    let caller = pool.caller.clone();
    let sent = Arc::new(AtomicU64::new(0));
    eprintln!("xtask bench: quota utilisation, {n_keys} keys × {rpm} RPM for {secs} s…");
    let started = now();
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (caller, sent) = (caller.clone(), sent.clone());
            tokio::spawn(async move {
                for i in 0u64.. {
                    let body = json!({"contents": [{"role": "user", "parts": [{"text": format!("worker {w} request {i}")}]}]});
                    if caller
                        .call(FLASH, "generateContent", Demand::tokens(20), body)
                        .await
                        .is_ok()
                    {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    for w in &workers {
        w.abort();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let in-flight answers land before reading the server's count.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = sim.state().stats();
    let admitted: u64 = stats["scopes"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|s| s["model"] == FLASH)
            .filter_map(|s| s["admitted"].as_u64())
            .sum()
    });
    let refused_429 = stats["by_status"]["429"].as_u64().unwrap_or(0);
    // A rolling minute admits at most `rpm` in any 60 s: from a cold start, ⌈T/60⌉ windows' worth.
    let windows = elapsed / 60.0;
    let theoretical = n_keys * rpm * windows.ceil() as u64;
    pool.state.shutdown().await.ok();
    sim.shutdown().await;
    Ok(json!({
        "keys": n_keys,
        "rpm_per_key": rpm,
        "seconds": elapsed,
        "admitted": admitted,
        "answered_ok": sent.load(Ordering::Relaxed),
        "theoretical_max": theoretical,
        "utilisation": admitted as f64 / theoretical as f64,
        "server_429s": refused_429,
    }))
}

/// A simulator in open mode (any key) whose quotas never bind for these models.
async fn unlimited_sim(models: &[&str]) -> Result<Simulator, String> {
    let huge = Limits::new(u64::MAX / 4, u64::MAX / 4, u64::MAX / 4);
    let models = models.iter().map(|m| ((*m).to_owned(), huge)).collect();
    Simulator::start(SimConfig {
        models,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// Responses per second from the simulator, with the load generator in the same process.
async fn sim_throughput(opts: &Opts) -> Result<Value, String> {
    let sim = unlimited_sim(&[FLASH]).await?;
    let url = format!("{}/v1beta/models/{FLASH}:generateContent", sim.base_url());
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(
        &json!({"contents": [{"parts": [{"text": "How fast is the simulator?"}]}]}),
    )
    .map_err(|e| e.to_string())?;
    let secs = if opts.quick { 3 } else { 8 };
    let done = Arc::new(AtomicU64::new(0));
    let started = now();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (client, url, body, done) =
                (client.clone(), url.clone(), body.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    let ok = client
                        .post(&url)
                        .header("x-goog-api-key", format!("made-up-bench-sim-{}", i % 8))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    for t in &tasks {
        t.abort();
    }
    let rps = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    sim.shutdown().await;
    Ok(
        json!({ "responses_per_s": rps, "connections": 32, "seconds": secs, "note": "load generator in the same process, same cores" }),
    )
}

/// A generate request's body, as the load generators send it.
const GENERATE_BODY: &str = r#"{"contents":[{"parts":[{"text":"How fast is the proxy?"}]}]}"#;

/// A client token for `keyturn serve` and the `[[serve.tokens]]` entry that admits it, from
/// `keyturn serve token new`.
pub fn serve_token(bin: &Path, label: &str) -> Result<(String, String), String> {
    let out = Command::new(bin)
        .args(["serve", "token", "new", "--label", label])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kt_"))
        .ok_or("keyturn serve token new printed no token")?
        .to_owned();
    let toml = text
        .lines()
        .skip_while(|l| !l.starts_with("[[serve.tokens]]"))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok((token, toml))
}

/// One request; its status and how long it took, the body read to the end.
async fn one_request(
    client: &reqwest::Client,
    url: &str,
    auth: &str,
) -> Result<(u16, Duration), String> {
    let t = now();
    let r = client
        .post(url)
        .header("x-goog-api-key", auth)
        .header("content-type", "application/json")
        .body(GENERATE_BODY)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    r.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, t.elapsed()))
}

/// Rounds of the proxy's latency measurement.
const LATENCY_ROUNDS: usize = 5;

/// Median and 99th percentile of `samples`.
fn quantiles(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// How long (µs) each of `n` requests in a row on one keep-alive connection took, after `warm`
/// unmeasured ones; every answer must be a 200. The client runs alone on a thread
/// of its own, one event loop as `wrk -t1` would: on a multi-thread runtime its request and its
/// connection's task wake each other across threads, and on two cores shared with the servers
/// that hand-off, not the server measured, can be most of a loopback round trip.
async fn serial_latency(url: &str, auth: &str, warm: usize, n: usize) -> Result<Vec<f64>, String> {
    let (url, auth) = (url.to_owned(), auth.to_owned());
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(serial_on_this_thread(&url, &auth, warm, n))
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn serial_on_this_thread(
    url: &str,
    auth: &str,
    warm: usize,
    n: usize,
) -> Result<Vec<f64>, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .map_err(|e| e.to_string())?;
    let mut took = Vec::with_capacity(n);
    for i in 0..warm + n {
        let (status, t) = one_request(&client, url, auth).await?;
        if status != 200 {
            return Err(format!("{url} answered {status}"));
        }
        if i >= warm {
            took.push(t.as_secs_f64() * 1e6);
        }
    }
    Ok(took)
}

/// 200s per second over `secs` seconds with `conns` connections, each its own client sending
/// one request after another.
async fn rate(url: &str, auth: &str, conns: usize, secs: u64) -> Result<f64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = now() + Duration::from_secs(secs);
    let started = now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (url, auth, done, failed) = (
                url.to_owned(),
                auth.to_owned(),
                done.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .map_err(|e| e.to_string())?;
                while now() < until {
                    match one_request(&client, &url, &auth).await {
                        Ok((200, _)) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let took = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} requests to {url} failed or were refused"));
    }
    Ok(done.load(Ordering::Relaxed) as f64 / took)
}

/// `keyturn serve` in front of `keyturn sim`, both release builds in their own processes, with
/// limits that never bind: what the proxy adds at one connection, and what it keeps of the
/// simulator's rate at 32, each against the simulator alone in the same run.
async fn proxy(opts: &Opts) -> Result<Value, String> {
    let bin = crate::world::build_keyturn(true)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let huge = (u64::MAX / 4).to_string();
    let mut sim = Command::new(&bin);
    sim.args([
        "sim", "--port", "0", "--rpm", &huge, "--tpm", &huge, "--rpd", &huge,
    ]);
    let (_sim, sim_url) = crate::examples::spawn_announcing(sim, "GEMINI_BASE_URL=")?;
    let (token, tokens_toml) = serve_token(&bin, "bench")?;
    let config = dir.path().join("keyturn.toml");
    let toml =
        format!("{tokens_toml}\n[models.\"{FLASH}\"]\nrpm = {huge}\ntpm = {huge}\nrpd = {huge}\n");
    std::fs::write(&config, toml).map_err(|e| e.to_string())?;
    let mut serve = Command::new(&bin);
    serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("KEYTURN_CONFIG", &config)
        .env("KEYTURN_STATE_DIR", dir.path().join("state"))
        .env("GEMINI_BASE_URL", &sim_url)
        .env(
            "GEMINI_API_KEYS",
            (1..=8)
                .map(|i| format!("made-up-bench-proxy-{i}"))
                .collect::<Vec<_>>()
                .join(","),
        )
        .env_remove("KEYTURN_REDIS_URL")
        .env_remove("RUST_LOG");
    let (_serve, listening) =
        crate::examples::spawn_announcing(serve, "keyturn serve listening on ")?;
    let proxy_url = listening.split_whitespace().next().unwrap_or_default();
    let path = format!("/v1beta/models/{FLASH}:generateContent");
    let direct = format!("{sim_url}{path}");
    let through = format!("{proxy_url}{path}");
    let sim_key = "made-up-bench-proxy-1";
    let (warm, n, secs) = if opts.quick {
        (100, 1_000, 3)
    } else {
        (200, 5_000, 8)
    };
    // The floor: a bare forwarder of the same crates in its own release process (bench/forward.rs).
    let mut fwd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    fwd.args(["bench-forward", &sim_url, sim_key]);
    let (_fwd, fwd_url) = crate::examples::spawn_announcing(fwd, "forwarding on ")?;
    let bare = format!("{}{path}", fwd_url.trim());
    eprintln!("xtask bench: proxy latency at one connection…");
    // In rounds, the three paths in turn: on two shared cores where the scheduler puts a client
    // and its server (one core or two) moves a loopback round trip by 2-3×, and such a shift
    // then falls on all three alike rather than on whichever ran during it.
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..LATENCY_ROUNDS {
        for (i, (url, auth)) in [(&direct, sim_key), (&bare, "unused"), (&through, &token)]
            .into_iter()
            .enumerate()
        {
            samples[i].extend(serial_latency(url, auth, warm, n / LATENCY_ROUNDS).await?);
        }
    }
    let [(d50, d99), (b50, _), (p50, p99)] = samples.map(|mut s| quantiles(&mut s));
    eprintln!("xtask bench: proxy rate at 32 connections…");
    let d_rate = rate(&direct, sim_key, 32, secs).await?;
    let b_rate = rate(&bare, "unused", 32, secs).await?;
    let p_rate = rate(&through, &token, 32, secs).await?;
    Ok(json!({
        "requests_serial": n,
        "direct_median_us": d50,
        "direct_p99_us": d99,
        "proxy_median_us": p50,
        "proxy_p99_us": p99,
        "added_median_us": p50 - d50,
        "bare_forwarder_median_us": b50,
        "bare_added_median_us": b50 - d50,
        "connections": 32,
        "seconds": secs,
        "direct_per_s": d_rate,
        "proxy_per_s": p_rate,
        "proxy_vs_direct": p_rate / d_rate,
        "bare_forwarder_per_s": b_rate,
        "bare_vs_direct": b_rate / d_rate,
        "note": "release keyturn sim and keyturn serve in their own processes; the load generator on the same cores",
    }))
}

/// Peak RSS of the release `keyturn seed` on three workloads, each in its own child process.
async fn rss(opts: &Opts) -> Result<Value, String> {
    let bin = crate::world::build_keyturn(true)?;
    let sim = unlimited_sim(&[FLASH, "gemini-embedding-001"]).await?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    keyturn_pipeline::demo::write_samples(&dir.path().join("samples"))
        .map_err(|e| e.to_string())?;
    let (small, large) = if opts.quick { (50, 250) } else { (200, 1000) };
    synth_transcripts(&dir.path().join(format!("gen-{small}")), small, "rss")
        .map_err(|e| e.to_string())?;
    synth_transcripts(&dir.path().join(format!("gen-{large}")), large, "rss")
        .map_err(|e| e.to_string())?;
    let mut out = serde_json::Map::new();
    for (name, episodes) in [
        ("samples".to_owned(), 5),
        (format!("gen-{small}"), small),
        (format!("gen-{large}"), large),
    ] {
        eprintln!("xtask bench: peak RSS of keyturn seed on {name}…");
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let started = now();
        let o = tokio::process::Command::new(me)
            .arg("bench-rss-child")
            .arg(&bin)
            .arg(dir.path().join(&name))
            .arg(dir.path().join(format!("out-{name}")))
            .arg(sim.base_url())
            .arg(dir.path().join(format!("state-{name}")))
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&o.stdout);
        let kb: Option<u64> = text.lines().find_map(|l| {
            l.strip_prefix("max_rss_kb=")
                .and_then(|v| v.trim().parse().ok())
        });
        if !o.status.success() || kb.is_none() {
            return Err(format!(
                "seed on {name} failed: {text} {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        out.insert(
            name,
            json!({ "episodes": episodes, "max_rss_kb": kb, "seconds": started.elapsed().as_secs_f64() }),
        );
    }
    let kb = |k: &str| {
        out.get(k)
            .and_then(|v| v["max_rss_kb"].as_f64())
            .unwrap_or(0.0)
    };
    let growth = kb(&format!("gen-{large}")) / kb(&format!("gen-{small}")).max(1.0);
    out.insert(format!("growth_{large}_vs_{small}"), json!(growth));
    sim.shutdown().await;
    Ok(Value::Object(out))
}

/// The child side of [`rss`]: runs one seed and reports the peak RSS of it alone.
pub fn rss_child(args: &[String]) -> ExitCode {
    let [bin, inputs, out, base, state] = args else {
        eprintln!("usage: bench-rss-child BIN INPUTS OUT BASE_URL STATE_DIR");
        return ExitCode::from(2);
    };
    // Limits that never bind: this measures memory, not waiting for quota.
    let config = Path::new(state).with_extension("toml");
    let toml = format!(
        "[models.\"{FLASH}\"]\nrpm = 1000000\ntpm = 1000000000\nrpd = 100000000\n\
         [models.\"gemini-embedding-001\"]\nrpm = 1000000\ntpm = 1000000000\nrpd = 100000000\n"
    );
    if let Err(e) = std::fs::write(&config, toml) {
        eprintln!("cannot write {}: {e}", config.display());
        return ExitCode::from(1);
    }
    let status = Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "GEMINI_API_KEYS",
            "made-up-rss-1 made-up-rss-2 made-up-rss-3",
        )
        .env("GEMINI_BASE_URL", base)
        .env("KEYTURN_STATE_DIR", state)
        .env("KEYTURN_CONFIG", &config)
        .args([
            "seed",
            inputs,
            "--out",
            out,
            "--dimensions",
            "64",
            "--no-cache",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("the seed failed");
        return ExitCode::from(1);
    }
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            println!("max_rss_kb={}", u.max_rss());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("getrusage: {e}");
            ExitCode::from(1)
        }
    }
}

fn f(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

fn thousands(v: &Value) -> String {
    v.as_f64().map_or_else(
        || "–".into(),
        |x| {
            let s = format!("{:.0}", x);
            let mut out = String::new();
            for (i, c) in s.chars().rev().enumerate() {
                if i > 0 && i % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out.chars().rev().collect()
        },
    )
}

/// The readable table (Markdown), from the report alone.
pub fn table(r: &Value) -> String {
    let c = &r["core"];
    let red = &r["redis"];
    let u = &r["utilisation"];
    let cl = &r["client_overhead"];
    let rss = &r["rss"];
    let mut rows: Vec<[String; 4]> = Vec::new();
    for n in ["10", "100", "1000"] {
        let k = &c[format!("keys_{n}")];
        rows.push([
            format!("acquire + settle, {n} keys × 3 models (median)"),
            format!("{} ns", f(&k["acquire_settle_ns"], 1)),
            format!(
                "governor `check_key`: {} ns",
                f(&k["governor_check_key_ns"], 1)
            ),
            if n == "100" {
                "≤ 65 ns".into()
            } else {
                String::new()
            },
        ]);
    }
    let k100 = &c["keys_100"];
    rows.push([
        "the pick alone (acquire), 100 keys × 3 models (median)".into(),
        format!("{} ns", f(&k100["acquire_ns"], 1)),
        format!(
            "governor `check_key`, 300 cells: {} ns → {}×",
            f(&k100["governor_check_key_ns"], 1),
            f(&c["pick_vs_governor_100"], 2)
        ),
        "≤ 1.5×".into(),
    ]);
    let k1000 = &c["keys_1000"];
    for (label, key, ratio) in [
        (
            "least-loaded",
            "least_loaded_ns",
            "least_loaded_vs_round_robin_1000",
        ),
        ("weighted", "weighted_ns", "weighted_vs_round_robin_1000"),
    ] {
        rows.push([
            format!("acquire + settle, {label}, 1,000 keys (median)"),
            format!("{} ns", f(&k1000[key], 1)),
            format!(
                "round-robin: {} ns → {}×",
                f(&k1000["acquire_settle_ns"], 1),
                f(&c[ratio], 2)
            ),
            "≤ 3×".into(),
        ]);
    }
    rows.push([
        "acquire + settle, 1,000 vs 10 keys".into(),
        format!("{}×", f(&c["ratio_1000_vs_10_keys"], 2)),
        String::new(),
        "≤ 2×".into(),
    ]);
    for (mode, label) in [("serial", "serial"), ("64-in-flight", "64 in flight")] {
        let m = &red[mode];
        rows.push([
            format!("Redis ledger acquires/s, {label}"),
            thousands(&m["acquire_per_s"]),
            format!(
                "raw `EVALSHA` (trivial): {}/s → {}%",
                thousands(&m["evalsha_trivial_per_s"]),
                f(
                    &json!(m["acquire_vs_evalsha"].as_f64().map(|x| x * 100.0)),
                    0
                )
            ),
            "≥ 80 % of EVALSHA".into(),
        ]);
    }
    rows.push([
        format!(
            "quota used, {} keys × {} RPM for {} s against the simulator",
            u["keys"],
            u["rpm_per_key"],
            f(&u["seconds"], 0)
        ),
        format!(
            "{}% ({} of {})",
            f(&json!(u["utilisation"].as_f64().map(|x| x * 100.0)), 1),
            u["admitted"],
            u["theoretical_max"]
        ),
        format!("429s from the server: {}", u["server_429s"]),
        "≥ 95 %, 0 429s".into(),
    ]);
    rows.push([
        "one LLM call through keyturn vs bare reqwest (median)".into(),
        format!("+{} µs", f(&cl["overhead_us"], 0)),
        format!(
            "{} µs vs {} µs",
            f(&cl["keyturn_llm_us"], 0),
            f(&cl["bare_reqwest_us"], 0)
        ),
        String::new(),
    ]);
    rows.push([
        "simulator throughput (32 connections)".into(),
        format!("{}/s", thousands(&r["simulator"]["responses_per_s"])),
        "load generator on the same cores".into(),
        String::new(),
    ]);
    let px = &r["proxy"];
    rows.push([
        "`keyturn serve` added latency, 1 connection (median)".into(),
        format!("+{} µs", f(&px["added_median_us"], 0)),
        format!(
            "{} µs through vs {} µs direct to `keyturn sim`",
            f(&px["proxy_median_us"], 0),
            f(&px["direct_median_us"], 0)
        ),
        "≤ 60 µs".into(),
    ]);
    rows.push([
        "`keyturn serve` rate, 32 connections".into(),
        format!(
            "{}/s ({}% of direct)",
            thousands(&px["proxy_per_s"]),
            f(&json!(px["proxy_vs_direct"].as_f64().map(|x| x * 100.0)), 0)
        ),
        format!("`keyturn sim` direct: {}/s", thousands(&px["direct_per_s"])),
        "≥ 50 % of direct".into(),
    ]);
    rows.push([
        "a bare forwarder of the same crates (no keyturn logic), 1 connection / 32".into(),
        format!(
            "+{} µs; {}/s ({}% of direct)",
            f(&px["bare_added_median_us"], 0),
            thousands(&px["bare_forwarder_per_s"]),
            f(&json!(px["bare_vs_direct"].as_f64().map(|x| x * 100.0)), 0)
        ),
        "the floor of the two rows above on this machine".into(),
        String::new(),
    ]);
    rows.push([
        "state file writes under 50,000 acquires/s".into(),
        format!("{}/s", f(&r["filestore"]["writes_per_s"], 2)),
        "flush interval 1 s".into(),
        "≤ 1/s".into(),
    ]);
    if let Some(m) = rss.as_object() {
        for (name, v) in m {
            if let Some(kb) = v["max_rss_kb"].as_f64() {
                rows.push([
                    format!(
                        "peak RSS, `keyturn seed` on {name} ({} episodes)",
                        v["episodes"]
                    ),
                    format!("{:.1} MiB", kb / 1024.0),
                    format!("{} s", f(&v["seconds"], 2)),
                    String::new(),
                ]);
            } else if name.starts_with("growth") {
                rows.push([
                    format!("peak RSS {}", name.replace('_', " ")),
                    format!("{}×", f(v, 2)),
                    String::new(),
                    "flat (memory does not grow with finished episodes)".into(),
                ]);
            }
        }
    }
    rows.extend(batch::row(r));
    let mut t =
        String::from("| measure | keyturn | reference (same run) | target |\n|---|---|---|---|\n");
    for [a, b, c, d] in rows {
        t.push_str(&format!("| {a} | {b} | {c} | {d} |\n"));
    }
    t.push_str(&format!(
        "\nOne run of `cargo xtask bench` on {} CPUs ({}), commit {}{}.\n",
        r["machine"]["cpus"],
        r["machine"]["cpu"].as_str().unwrap_or("?"),
        r["machine"]["commit"].as_str().unwrap_or("?"),
        if r["quick"] == true { ", --quick" } else { "" }
    ));
    t
}

fn update_readme(table: &str) -> Result<(), String> {
    let path = root().join("README.md");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let (start, end) = ("<!-- bench:start -->", "<!-- bench:end -->");
    let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
        return Err("README.md has no bench:start / bench:end markers".into());
    };
    let new = format!("{}{start}\n{table}{}", &text[..a], &text[b..]);
    std::fs::write(&path, new).map_err(|e| e.to_string())
}
