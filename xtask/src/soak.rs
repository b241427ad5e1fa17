//! `cargo xtask soak [MINUTES] [--release]`: `keyturn serve` driven at a steady rate for MINUTES
//! (default 10) on each state backend (file, then Redis), in front of the simulator with its faults
//! on: 5 % 503s, a 429 storm of a few seconds every minute, a key revoked mid-run, and (Redis
//! backend) its own `redis-server` restarted once. It reports requests served, p50/p99 latency
//! added over the simulator alone, the proxy's RSS and open file descriptors at the start and
//! the end, 429s from the upstream (those of the storms, and any other: self-inflicted), and state
//! file writes per second; and fails on growth, on a self-inflicted 429, or on state writes
//! faster than the flush interval. Writes `target/soak/report.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyturn_sim::{Faults, KeyState, Limits, SimConfig, SimKey, Simulator};
use keyturn_store::testkit::TestRedis;
use serde_json::{Value, json};

use crate::world::{FLASH, root};

/// Requests per second the load keeps up.
const RATE: u64 = 40;
/// Keys in the pool, each its own project with `RPM` requests per minute (the load uses about
/// half of the pool's minute even with one key revoked).
const KEYS: usize = 6;
const RPM: u64 = 1_000;
/// When each minute's storm starts (seconds into the minute) and how long it lasts.
const STORM_AT_S: u64 = 20;
const STORM_S: u64 = 3;
/// The load runs this long before the run proper (allocator pools, connection pools, first
/// snapshots), then rests, and memory and descriptors are sampled at rest.
const WARM_UP: Duration = Duration::from_secs(10);
/// Most requests the load generator keeps in flight (past it, a tick's request is shed, not
/// sent): the proxy never holds more client connections than this.
const MAX_IN_FLIGHT: usize = 32;
/// The proxy closes idle keep-alive connections after this (`[serve] header_timeout`); a rest
/// lasts a little longer, so samples at rest hold no client connection.
const IDLE_CLOSE_S: u64 = 2;

#[allow(clippy::disallowed_methods)] // a soak times itself with the real clock
fn now() -> Instant {
    Instant::now()
}

pub fn main(args: &[String]) -> ExitCode {
    let minutes: f64 = match args.iter().find(|a| !a.starts_with("--")) {
        None => 10.0,
        Some(m) => match m.parse() {
            Ok(m) if m > 0.0 => m,
            _ => {
                eprintln!("usage: cargo xtask soak [MINUTES] [--release]");
                return ExitCode::from(2);
            }
        },
    };
    let release = args.iter().any(|a| a == "--release");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xtask soak: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(minutes, release)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xtask soak: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(minutes: f64, release: bool) -> Result<bool, String> {
    let bin = crate::world::build_keyturn(release)?;
    let mut report = serde_json::Map::new();
    let mut failures = Vec::new();
    for backend in [Backend::File, Backend::Redis] {
        let name = backend.name();
        println!("\nxtask soak: {name} backend, {minutes} min at {RATE} requests/s");
        let r = soak_one(&bin, backend, Duration::from_secs_f64(minutes * 60.0)).await?;
        print_one(name, &r);
        failures.extend(
            r["failures"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(|f| format!("{name}: {f}"))),
        );
        report.insert(name.into(), r);
    }
    report.insert("minutes".into(), json!(minutes));
    report.insert("rate_per_s".into(), json!(RATE));
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| root().join("target"), PathBuf::from)
        .join("soak");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&Value::Object(report)).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("report.json"), text).map_err(|e| e.to_string())?;
    println!("\nreport: {}", dir.join("report.json").display());
    if failures.is_empty() {
        println!("soak: ok");
        Ok(true)
    } else {
        for f in &failures {
            println!("soak FAILED: {f}");
        }
        Ok(false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    File,
    Redis,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Redis => "redis",
        }
    }
}

fn key(i: usize) -> String {
    format!("made-up-soak-key-{i}")
}

fn base_faults() -> Faults {
    Faults {
        p503: 0.05,
        ..Faults::default()
    }
}

/// The proxy's open file descriptors, less its pooled connections to the upstream (`upstream_port`):
/// idle upstream connections stay pooled for a while by design (one per request that was in
/// flight at once, bounded by `max_in_flight`); anything else open at rest is the proxy's own.
fn fds_less_upstream(pid: u32, upstream_port: u16) -> Result<(u64, u64), String> {
    let mut upstream_inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let remote_port = cols
                .get(2)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(upstream_port)
                && let Some(inode) = cols.get(9)
            {
                upstream_inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let mut own = 0;
    let mut upstream = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("cannot list the proxy's fds: {e}"))?
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if upstream_inodes.contains(target.to_string_lossy().as_ref()) {
            upstream += 1;
        } else {
            own += 1;
        }
    }
    Ok((own, upstream))
}

/// The proxy process's resident memory (KiB) and open file descriptors.
fn rss_and_fds(pid: u32) -> Result<(u64, u64), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read the proxy's /proc status: {e}"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or("no VmRSS in /proc status")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("cannot list the proxy's fds: {e}"))?
        .count() as u64;
    Ok((rss, fds))
}

/// The simulator's 429s so far.
fn upstream_429s(sim: &Simulator) -> u64 {
    sim.state().stats()["by_status"]["429"]
        .as_u64()
        .unwrap_or(0)
}

/// Median and 99th percentile of `v` (sorted in place).
fn p50_p99(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    refused_429: AtomicU64,
    /// Not sent: `MAX_IN_FLIGHT` were out.
    shed: AtomicU64,
    other: AtomicU64,
    failed: AtomicU64,
    latencies_us: std::sync::Mutex<Vec<f64>>,
}

async fn soak_one(bin: &Path, backend: Backend, length: Duration) -> Result<Value, String> {
    let limits = Limits {
        rpm: Some(RPM),
        tpm: Some(100_000_000),
        rpd: Some(100_000_000),
    };
    let sim = Simulator::start(SimConfig {
        keys: (0..KEYS)
            .map(|i| SimKey {
                key: key(i),
                label: Some(format!("soak-{i}")),
                project: None,
                state: KeyState::Valid,
            })
            .collect(),
        models: [(FLASH.to_owned(), limits)].into_iter().collect(),
        faults: base_faults(),
        ..SimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (token, tokens_toml) = crate::bench::serve_token(bin, "soak")?;
    let config = dir.path().join("keyturn.toml");
    // keyturn believes the limits the simulator enforces: any quota 429 would be its own doing.
    std::fs::write(
        &config,
        format!(
            "[serve]\nheader_timeout = \"{IDLE_CLOSE_S}s\"\n\n{tokens_toml}\n[models.\"{FLASH}\"]\nrpm = {RPM}\ntpm = 100000000\nrpd = 100000000\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let state_dir = dir.path().join("state");
    let mut redis = match backend {
        // Its own server, on a free port: the one restarted mid-run is never the machine's.
        Backend::Redis => Some(TestRedis::private()),
        Backend::File => None,
    };
    let mut serve = Command::new(bin);
    serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("KEYTURN_CONFIG", &config)
        .env("KEYTURN_STATE_DIR", &state_dir)
        .env("GEMINI_BASE_URL", sim.base_url())
        .env(
            "GEMINI_API_KEYS",
            (0..KEYS).map(key).collect::<Vec<_>>().join(","),
        )
        .env_remove("KEYTURN_REDIS_URL")
        .env_remove("RUST_LOG");
    if let Some(r) = &redis {
        serve.env("KEYTURN_REDIS_URL", r.url());
    }
    let (proxy, listening) =
        crate::examples::spawn_announcing(serve, "keyturn serve listening on ")?;
    let pid = proxy.0.id();
    let proxy_url = listening
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let path = format!("/v1beta/models/{FLASH}:generateContent");
    let body = r#"{"contents":[{"parts":[{"text":"Still standing?"}]}]}"#;
    let new_client = || {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(MAX_IN_FLIGHT)
            .build()
            .map_err(|e| e.to_string())
    };
    let client = new_client()?;

    // The simulator alone, for the latency the proxy adds (faults off while measured).
    sim.state().set_faults(Faults::default());
    let mut direct = Vec::new();
    for _ in 0..300 {
        let t = now();
        let r = client
            .post(format!("{}{path}", sim.base_url()))
            .header("x-goog-api-key", key(0))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.bytes().await.map_err(|e| e.to_string())?;
        direct.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (direct_p50, direct_p99) = p50_p99(&mut direct);
    // Its minute for key 0 is given back, so the proxy starts on an even pool.
    sim.state().reset();
    sim.state().set_faults(base_faults());

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let url = format!("{proxy_url}{path}");
    let fire = |client: &reqwest::Client, tally: &Arc<Tally>, measured: bool| {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tally.shed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let (client, url, token, tally) =
            (client.clone(), url.clone(), token.clone(), tally.clone());
        Some(tokio::spawn(async move {
            let _slot = slot;
            send(&client, &url, &token, body, &tally, measured).await;
        }))
    };
    // Warm-up, then a rest: the first sample.
    let warm = Arc::new(Tally::default());
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let warm_until = now() + WARM_UP;
    let mut in_flight = Vec::new();
    while now() < warm_until {
        tick.tick().await;
        in_flight.extend(fire(&client, &warm, false));
    }
    for h in in_flight.drain(..) {
        h.await.ok();
    }
    drop(client);
    tokio::time::sleep(Duration::from_secs(IDLE_CLOSE_S + 1)).await;
    let (start_rss, _) = rss_and_fds(pid)?;
    let (start_fds, start_upstream) = fds_less_upstream(pid, sim.addr().port())?;
    let client = new_client()?;

    let tally = Arc::new(Tally::default());
    let started = now();
    let until = started + length;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut peak_rss = 0u64;
    let mut storm_429s = 0u64;
    let mut storm: Option<(Instant, u64)> = None;
    let mut storms = 0u64;
    let mut revoked = false;
    let mut redis_restarted = false;
    let mut next_sample = started;
    let state_file = state_dir.join("state.json");
    let mut last_inode: Option<u64> = None;
    let mut state_writes = 0u64;
    let mut restart: Option<tokio::task::JoinHandle<Result<TestRedis, String>>> = None;
    while now() < until {
        tick.tick().await;
        let t = now();
        let elapsed = t - started;
        // The load: one request per tick, each on its own task so a slow answer keeps no
        // other from going.
        in_flight.extend(fire(&client, &tally, true));
        in_flight.retain(|h| !h.is_finished());

        // Each minute's storm: every upstream answer a detail-less 429 for a few seconds. The
        // 429s counted from its start to a moment after its end are the storm's.
        let second = elapsed.as_secs();
        match storm {
            None if second % 60 == STORM_AT_S && second >= STORM_AT_S => {
                storm = Some((t, upstream_429s(&sim)));
                sim.state().set_faults(Faults {
                    p429_bare: 1.0,
                    ..base_faults()
                });
            }
            Some((from, before)) if t - from >= Duration::from_secs(STORM_S) => {
                sim.state().set_faults(base_faults());
                // Requests already answered 429 are counted by now; give stragglers a moment.
                tokio::time::sleep(Duration::from_millis(300)).await;
                storm_429s += upstream_429s(&sim) - before;
                storms += 1;
                storm = None;
            }
            _ => {}
        }
        // A key revoked (API_KEY_INVALID) at 40 % of the run.
        if !revoked && elapsed >= length.mul_f64(0.4) {
            sim.state().set_key_state("soak-2", KeyState::Invalid);
            revoked = true;
        }
        // Redis killed (as a crash would) at 60 % and started again 2 s later, beside the load.
        if !redis_restarted
            && elapsed >= length.mul_f64(0.6)
            && let Some(mut r) = redis.take()
        {
            restart = Some(tokio::task::spawn_blocking(move || {
                r.stop();
                std::thread::sleep(Duration::from_secs(2));
                r.start().map(|()| r)
            }));
            redis_restarted = true;
        }
        // Samples: memory and fds every second; state writes by the file's inode (each write
        // is a new file renamed over the old), every tick.
        if t >= next_sample {
            let (rss, _) = rss_and_fds(pid)?;
            peak_rss = peak_rss.max(rss);
            next_sample += Duration::from_secs(1);
        }
        if backend == Backend::File {
            use std::os::unix::fs::MetadataExt;
            let inode = std::fs::metadata(&state_file).ok().map(|m| m.ino());
            if inode.is_some() && inode != last_inode {
                if last_inode.is_some() {
                    state_writes += 1;
                }
                last_inode = inode;
            }
        }
    }
    let took = started.elapsed();
    for h in in_flight {
        h.await.ok();
    }
    if let Some(h) = restart {
        redis = Some(h.await.map_err(|e| e.to_string())??);
    }
    // A rest again: the second sample, like the first.
    drop(client);
    tokio::time::sleep(Duration::from_secs(IDLE_CLOSE_S + 1)).await;
    let (end_rss, _) = rss_and_fds(pid)?;
    let (end_fds, end_upstream) = fds_less_upstream(pid, sim.addr().port())?;
    drop(proxy);
    let total_429s = upstream_429s(&sim);
    let self_inflicted = total_429s.saturating_sub(storm_429s);
    let mut latencies = tally
        .latencies_us
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let (p50, p99) = p50_p99(&mut latencies);
    let measured_s = took.as_secs_f64();
    let writes_per_s = (backend == Backend::File).then(|| state_writes as f64 / measured_s);

    let mut failures: Vec<String> = Vec::new();
    // Flat: within a fifth of the warm start plus 8 MiB (allocator arenas settle in steps).
    if end_rss > start_rss + start_rss / 5 + 8 * 1024 {
        failures.push(format!("RSS grew from {start_rss} KiB to {end_rss} KiB"));
    }
    // At rest no client connection is open: every descriptor but the pooled upstream ones is the
    // proxy's own (listener, state file, Redis, runtime), and those must not grow.
    if end_fds > start_fds + 2 {
        failures.push(format!(
            "open file descriptors grew from {start_fds} to {end_fds}"
        ));
    }
    if self_inflicted > 0 {
        failures.push(format!(
            "{self_inflicted} upstream 429s outside the storms (keyturn's own doing)"
        ));
    }
    if writes_per_s.is_some_and(|w| w > 1.1) {
        failures.push(format!(
            "{:.2} state file writes per second (flush interval 1 s)",
            writes_per_s.unwrap_or_default()
        ));
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let sent = tally.sent.load(Ordering::Relaxed);
    let shed = tally.shed.load(Ordering::Relaxed);
    if ok < sent / 2 {
        failures.push(format!("only {ok} of {sent} requests served"));
    }
    if storms == 0 && length >= Duration::from_secs(STORM_AT_S + STORM_S + 1) {
        failures.push("no storm ran".into());
    }
    drop(redis);
    sim.shutdown().await;
    Ok(json!({
        "seconds": took.as_secs_f64(),
        "requests_sent": sent,
        "requests_shed": shed,
        "requests_served": ok,
        "answered_429": tally.refused_429.load(Ordering::Relaxed),
        "answered_other": tally.other.load(Ordering::Relaxed),
        "failed": tally.failed.load(Ordering::Relaxed),
        "direct_p50_us": direct_p50,
        "direct_p99_us": direct_p99,
        "p50_us": p50,
        "p99_us": p99,
        "added_p50_us": p50 - direct_p50,
        "added_p99_us": p99 - direct_p99,
        "rss_kib_start": start_rss,
        "rss_kib_end": end_rss,
        "rss_kib_peak": peak_rss,
        "fds_start": start_fds,
        "fds_end": end_fds,
        "upstream_pooled_start": start_upstream,
        "upstream_pooled_end": end_upstream,
        "storms": storms,
        "upstream_429s": total_429s,
        "upstream_429s_in_storms": storm_429s,
        "upstream_429s_self_inflicted": self_inflicted,
        "key_revoked": revoked,
        "redis_restarted": redis_restarted,
        "state_writes_per_s": writes_per_s,
        "failures": failures,
    }))
}

/// One request through the proxy, tallied.
async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &'static str,
    tally: &Tally,
    measured: bool,
) {
    tally.sent.fetch_add(1, Ordering::Relaxed);
    let t = now();
    let r = client
        .post(url)
        .header("x-goog-api-key", token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let status = match r {
        Ok(r) => {
            let s = r.status().as_u16();
            if r.bytes().await.is_err() {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            s
        }
        Err(_) => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    match status {
        200 => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
            if measured && let Ok(mut v) = tally.latencies_us.lock() {
                v.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        429 => {
            tally.refused_429.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            tally.other.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn print_one(name: &str, r: &Value) {
    let f = |k: &str| r[k].as_f64().map_or("–".into(), |x| format!("{x:.0}"));
    println!("  {name}: {} s", f("seconds"));
    println!(
        "    requests: {} sent ({} shed at {MAX_IN_FLIGHT} in flight), {} served, {} answered 429, {} other, {} failed",
        r["requests_sent"],
        r["requests_shed"],
        r["requests_served"],
        r["answered_429"],
        r["answered_other"],
        r["failed"]
    );
    println!(
        "    added latency: p50 {} µs, p99 {} µs (through {} / {} µs, direct {} / {} µs)",
        f("added_p50_us"),
        f("added_p99_us"),
        f("p50_us"),
        f("p99_us"),
        f("direct_p50_us"),
        f("direct_p99_us")
    );
    println!(
        "    at rest before and after: RSS {} KiB → {} KiB (peak {} under load); fds {} → {} (and {} → {} pooled upstream connections)",
        r["rss_kib_start"],
        r["rss_kib_end"],
        r["rss_kib_peak"],
        r["fds_start"],
        r["fds_end"],
        r["upstream_pooled_start"],
        r["upstream_pooled_end"]
    );
    println!(
        "    upstream 429s: {} ({} in {} storms, {} self-inflicted); key revoked: {}; redis restarted: {}",
        r["upstream_429s"],
        r["upstream_429s_in_storms"],
        r["storms"],
        r["upstream_429s_self_inflicted"],
        r["key_revoked"],
        r["redis_restarted"]
    );
    if let Some(w) = r["state_writes_per_s"].as_f64() {
        println!("    state file writes: {w:.2}/s");
    }
}
