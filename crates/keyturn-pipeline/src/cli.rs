//! The `keyturn` command line. Exit codes: 0 done; 2 usage or configuration error; 3 every key's
//! quota for a needed model is exhausted (resumable); 4 every key was rejected as invalid;
//! 130 interrupted (resumable); 1 anything else.

#![allow(clippy::print_stdout, clippy::print_stderr)] // this module is the binary's UI

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use keyturn_core::{
    Clock, InMemoryLedger, Policy, PoolStatus, QuotaLedger, ResetTarget, SystemClock,
};
use keyturn_services::{
    Backend, Config, ConfigError, Env, Overrides, ServiceError, create_gemini_services,
    create_pool, key_ring, ledger_config, process_env,
};
use keyturn_store::{CheckpointStore, FileStore, RedisLedger, TimeSource};
use tokio::sync::watch;

use crate::graph::ExportFormat;
use crate::progress::Progress;
use crate::run::{CHECKPOINT_DIR, RunReport, SeedOptions, Stop, seed};
use crate::term::{safe, safe_path, safe_text};

/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "keyturn",
    version,
    about = "Run LLM work across many Gemini API keys without ever sending a request the quota will refuse.",
    after_help = "Examples:\n  keyturn demo                                   # no key, no network: the simulator and sample transcripts\n  GEMINI_API_KEY_1=… GEMINI_API_KEY_2=… keyturn seed transcripts/ --out graph-out\n  keyturn status\n  keyturn keys check\n  keyturn export --out graph-out --format neo4j-csv\n\nExit codes: 0 done, 2 usage/config error, 3 quota exhausted for the day (resumable),\n4 every key invalid, 130 interrupted (resumable), 1 anything else."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Args)]
struct Global {
    /// Configuration file (default: $KEYTURN_CONFIG, else ./keyturn.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// State folder of the file backend (default: $KEYTURN_STATE_DIR, else .keyturn).
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Share quota through Redis (default: $KEYTURN_REDIS_URL).
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,
    /// Gemini endpoint without version (default: $GEMINI_BASE_URL, else Google's).
    #[arg(long, global = true, value_name = "URL")]
    base_url: Option<String>,
    /// Key selection policy.
    #[arg(long, global = true, value_parser = ["round-robin", "least-loaded", "weighted"])]
    policy: Option<String>,
    /// Machine-readable JSON log lines on stderr.
    #[arg(long, global = true)]
    json_log: bool,
    /// Serve Prometheus metrics on this address (seed, demo, serve, sim; default: [metrics] addr).
    #[arg(long, global = true, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// More log detail (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Seed a knowledge graph from transcripts (.vtt, .srt, .txt); resumable.
    #[command(
        after_help = "Example:\n  keyturn seed podcasts/ --out graph-out --concurrency 4\n\nA rerun with the same --out skips finished episodes and redoes changed files."
    )]
    Seed(SeedArgs),
    /// The pipeline on bundled sample transcripts against the built-in simulator (no key, no network).
    Demo(DemoArgs),
    /// The Gemini simulator alone.
    Sim(keyturn_sim::SimArgs),
    /// Quota state per key and model: used vs limit, breakers, disabled keys, next reset.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Usage per key and model per Pacific day (requests, input tokens) instead of quota.
        #[arg(long)]
        history: bool,
        /// With --history: how many days back, today included (the state keeps 30).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=30))]
        days: u32,
    },
    /// List, check or reset keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Export the graph in --out for other tools.
    #[command(
        after_help = "Example:\n  keyturn export --out graph-out --format neo4j-csv\n  neo4j-admin database import full --nodes=graph-out/export/neo4j-csv/nodes.csv --relationships=graph-out/export/neo4j-csv/relationships.csv"
    )]
    Export {
        /// The seed output folder.
        #[arg(long)]
        out: PathBuf,
        /// Format.
        #[arg(long, value_enum, default_value = "neo4j-csv")]
        format: ExportFormat,
        /// Where to write (default: <out>/export/<format>).
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Where the state lives, and maintenance.
    #[command(subcommand)]
    State(StateCommand),
    /// A Gemini-compatible proxy that rotates keys for clients in any language.
    #[command(
        after_help = "Examples:\n  keyturn serve                       # 127.0.0.1:8080 (or [serve] listen)\n  keyturn serve token new --label team-a\n  curl -H 'x-goog-api-key: <token>' http://127.0.0.1:8080/v1beta/models\n\nSee docs/PROXY.md for google-genai, LiteLLM and curl."
    )]
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// Address to listen on (default: [serve] listen, 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    #[command(subcommand)]
    command: Option<ServeCommand>,
}

#[derive(Debug, Clone, Subcommand)]
enum ServeCommand {
    /// Client tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Clone, Subcommand)]
enum TokenCommand {
    /// Prints a fresh client token (once) and the lines to paste into keyturn.toml.
    New {
        /// Who will use it.
        #[arg(long)]
        label: String,
    },
}

#[derive(Debug, Clone, Args)]
struct SeedArgs {
    /// Transcript files or folders (the podcast is a file's parent folder).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Episodes in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Requests in flight per episode.
    #[arg(long, default_value_t = 4)]
    requests: usize,
    /// Extraction model.
    #[arg(long, default_value = "gemini-2.5-flash")]
    model: String,
    /// Embedding model.
    #[arg(long, default_value = "gemini-embedding-001")]
    embedding_model: String,
    /// Embedding size.
    #[arg(long, default_value_t = 768)]
    dimensions: u32,
    /// Target tokens per chunk.
    #[arg(long, default_value_t = 700)]
    chunk_tokens: usize,
    /// Do not answer from the response cache.
    #[arg(long)]
    no_cache: bool,
    /// Also read transcripts through symbolic links to files outside the input folders (by
    /// default such links are skipped and reported; links to folders are never followed).
    #[arg(long)]
    follow_links: bool,
}

#[derive(Debug, Clone, Args)]
struct DemoArgs {
    /// Output folder.
    #[arg(long, default_value = "keyturn-demo")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// The keys keyturn found, where, and their health.
    List,
    /// Asks Gemini about each key with a call that spends no generation quota (GET models/{m}).
    Check {
        /// The model to ask about.
        #[arg(long, default_value = "gemini-2.5-flash")]
        model: String,
    },
    /// Clears a key's disabled flag and breaker (or, with --all, every key and quota counter of this configuration; usage history is kept).
    Reset {
        /// A key's label or fingerprint.
        key: Option<String>,
        /// Everything: all keys and all counters.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Backend, location, size, age, last flush, checkpoints and backups.
    Info {
        /// A seed output folder, to include its checkpoints.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Resets every key and quota counter (asks first); usage history is kept.
    Reset {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Deletes old checkpoint backups.
    Prune {
        /// The seed output folder.
        #[arg(long)]
        out: PathBuf,
        /// Backups to keep.
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },
}

fn init_logging(g: &Global) {
    let default = match g.verbose {
        0 => "warn,keyturn_core=info,keyturn_store=info,keyturn_pipeline=info",
        1 => {
            "info,keyturn_core=debug,keyturn_gemini=debug,keyturn_store=debug,keyturn_pipeline=debug"
        }
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if g.json_log {
        b.json().init();
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn overrides(g: &Global, no_cache: bool) -> Overrides {
    Overrides {
        state_dir: g.state_dir.clone(),
        redis_url: g.redis_url.clone(),
        base_url: g.base_url.clone(),
        policy: g.policy.as_deref().and_then(|p| p.parse::<Policy>().ok()),
        no_cache,
        metrics_addr: g.metrics_addr,
    }
}

/// Starts the Prometheus exporter if `--metrics-addr` or `[metrics] addr` asks for it.
fn start_metrics(cfg: &Config) -> Result<(), ServiceError> {
    if let Some(addr) = cfg.metrics.addr {
        keyturn_services::install_metrics_exporter(addr)?;
        tracing::info!(%addr, "serving Prometheus metrics");
    }
    Ok(())
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    // Errors quote paths, names and upstream messages: escaped on the way out.
    eprintln!("keyturn: {}", safe_text(&msg.to_string()));
    ExitCode::from(code)
}

fn service_exit(e: &ServiceError) -> u8 {
    match e {
        ServiceError::Config(_) => EXIT_USAGE,
        ServiceError::State(keyturn_core::StoreError::Locked { .. })
        | ServiceError::State(keyturn_core::StoreError::Corrupt { .. })
        | ServiceError::State(keyturn_core::StoreError::NewerSchema { .. }) => EXIT_USAGE,
        _ => 1,
    }
}

/// Runs the command line; the binary's `main`.
pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    init_logging(&cli.global);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the runtime: {e}")),
    };
    rt.block_on(run(cli))
}

/// A reader that went away (`keyturn status | head -1`) ends the command quietly with 0, as it
/// does for any Unix tool: Rust ignores SIGPIPE, so `println!` would panic on the closed pipe.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

async fn run(cli: Cli) -> ExitCode {
    let env = process_env();
    let cwd = cwd();
    // A bad KEYTURN_CLOCK_OFFSET_MS is a configuration error for every command that reads it.
    if let Err(e) = keyturn_services::clock(&env) {
        return fail(EXIT_USAGE, e);
    }
    let g = cli.global.clone();
    match cli.command {
        Command::Seed(a) => cmd_seed(&g, &env, &cwd, a).await,
        Command::Demo(a) => crate::demo::run(&a.out, &cwd, g.metrics_addr).await,
        Command::Sim(a) => cmd_sim(&g, a).await,
        Command::Status {
            json,
            history: false,
            ..
        } => cmd_status(&g, &env, &cwd, json).await,
        Command::Status {
            json,
            history: true,
            days,
        } => cmd_history(&g, &env, &cwd, json, days).await,
        Command::Keys(k) => cmd_keys(&g, &env, &cwd, k).await,
        Command::Export { out, format, to } => {
            // An export into a folder of its own (not under --out, which is keyturn's) follows the
            // same rule as --out: a folder keyturn created, or an empty one; never the user's
            // own nodes.csv. Held locked while it is written.
            let _claimed = match to.as_deref().filter(|t| !is_inside(t, &out)) {
                Some(t) => match crate::outdir::OutDir::claim(t, None) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let code = match e {
                            crate::outdir::OutDirError::Io { .. } => 1,
                            _ => EXIT_USAGE,
                        };
                        return fail(code, e);
                    }
                },
                None => None,
            };
            let to = to.unwrap_or_else(|| {
                out.join("export").join(match format {
                    ExportFormat::Neo4jCsv => "neo4j-csv",
                    ExportFormat::Jsonl => "jsonl",
                })
            });
            match crate::graph::export(&out, &to, format) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", safe_path(&f));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
        Command::State(s) => cmd_state(&g, &env, &cwd, s).await,
        Command::Serve(a) => cmd_serve(&g, &env, &cwd, a).await,
    }
}

fn load(g: &Global, env: &Env, cwd: &Path, no_cache: bool) -> Result<Config, ConfigError> {
    Config::load(g.config.as_deref(), env, cwd, &overrides(g, no_cache))
}

/// A watch that turns true on Ctrl-C or SIGTERM.
fn interrupts() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term_fut = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term_fut => {}
        }
        tx.send(true).ok();
    });
    rx
}

fn when(ms: i64) -> String {
    let ts = keyturn_core::clock::ms_to_timestamp(ms);
    let pacific = jiff::tz::db()
        .get(keyturn_core::pacific::QUOTA_TIME_ZONE)
        .map(|tz| {
            ts.to_zoned_datetime(tz)
                .strftime("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .unwrap_or_default();
    let local = jiff::tz::TimeZone::try_system()
        .map(|tz| {
            ts.to_zoned_datetime(tz)
                .strftime("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .unwrap_or_else(|_| ts.to_string());
    format!("{pacific} (local {local})")
}

/// Prints the end-of-run summary and returns the exit code.
pub fn report_and_exit(report: &RunReport, resume: &str) -> ExitCode {
    println!();
    println!(
        "episodes: {} processed, {} already done, {} skipped, {} failed · chunks {} · entities {} · graph {} nodes / {} edges",
        report.items.processed,
        report.items.already_done,
        report.items.skipped,
        report.items.failed,
        report.items.chunks,
        report.items.entities,
        report.graph.get("nodes").copied().unwrap_or(0),
        report.graph.get("edges").copied().unwrap_or(0),
    );
    println!(
        "{:<22} {:<9} {:>8} {:>6} {:>6} {:>9} {:>6} {:>12}",
        "KEY", "FP", "REQUESTS", "OK", "429", "TRANSIENT", "DEAD", "INPUT TOK"
    );
    for k in &report.keys {
        let t: u64 = k.throttled.values().sum();
        println!(
            "{:<22} {:<9} {:>8} {:>6} {:>6} {:>9} {:>6} {:>12}",
            safe(&k.label),
            k.fingerprint,
            k.requests,
            k.ok,
            t,
            k.transient,
            k.dead,
            k.input_tokens
        );
    }
    if !report.throttled.is_empty() {
        let kinds: Vec<String> = report
            .throttled
            .iter()
            .map(|(k, v)| format!("{} {v}", safe(k)))
            .collect();
        println!("429s by kind: {}", kinds.join(", "));
    }
    println!(
        "cache: {} hits, {} misses · state: {}",
        report.cache.get("hits").copied().unwrap_or(0),
        report.cache.get("misses").copied().unwrap_or(0),
        safe(&report.state)
    );
    for s in &report.skipped {
        eprintln!("skipped {}: {}", safe(&s.path), safe(&s.reason));
    }
    for s in &report.failed {
        eprintln!("failed {}: {}", safe(&s.path), safe(&s.reason));
    }
    let resume = safe(resume);
    match &report.result {
        Stop::Done => {}
        Stop::Failed { episodes } => {
            eprintln!("keyturn: {episodes} episode(s) failed; rerun to retry them: {resume}")
        }
        Stop::ExhaustedForDay { model, until_ms } => eprintln!(
            "keyturn: every key's quota for {} is used up for today; capacity returns at {}. Finished episodes are saved; resume then with: {resume}",
            safe(model),
            when(*until_ms)
        ),
        Stop::AllKeysInvalid { detail } => eprintln!(
            "keyturn: every key was rejected ({}); fix the keys, run `keyturn keys check` (it re-enables the keys that answer), then: {resume}",
            safe(detail)
        ),
        Stop::Interrupted => {
            eprintln!("keyturn: interrupted; finished episodes are saved. Resume with: {resume}")
        }
    }
    ExitCode::from(report.result.exit_code())
}

/// Whether `path` lies inside `dir` (both made absolute and resolved as far as they exist).
fn is_inside(path: &Path, dir: &Path) -> bool {
    fn resolve(p: &Path) -> PathBuf {
        let abs = if p.is_absolute() {
            p.to_owned()
        } else {
            cwd().join(p)
        };
        // The longest existing ancestor, canonical, with the rest appended.
        let mut head = abs.as_path();
        let mut tail = Vec::new();
        loop {
            if let Ok(c) = std::fs::canonicalize(head) {
                return tail.iter().rev().fold(c, |acc, part| acc.join(part));
            }
            match (head.parent(), head.file_name()) {
                (Some(parent), Some(name)) => {
                    tail.push(name.to_owned());
                    head = parent;
                }
                _ => return abs,
            }
        }
    }
    let (p, d) = (resolve(path), resolve(dir));
    p.components().all(|c| c != std::path::Component::ParentDir) && p.starts_with(d)
}

/// A path as one POSIX shell word, for a command line the user can paste back.
fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// `keyturn` and these arguments, each quoted unless it is plainly one shell word.
fn resume_command(args: impl Iterator<Item = std::ffi::OsString>) -> String {
    let plain = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b))
    };
    let mut line = String::from("keyturn");
    for a in args {
        let w = a.to_string_lossy();
        line.push(' ');
        if plain(&w) {
            line.push_str(&w);
        } else {
            line.push_str(&shell_quote(Path::new(&*w)));
        }
    }
    line
}

async fn cmd_seed(g: &Global, env: &Env, cwd: &Path, a: SeedArgs) -> ExitCode {
    let cfg = match load(g, env, cwd, a.no_cache) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Err(e) = start_metrics(&cfg) {
        return fail(1, e);
    }
    let services = match create_gemini_services(&cfg, env, cwd).await {
        Ok(s) => s,
        Err(e) => return fail(service_exit(&e), e),
    };
    tracing::info!(keys = services.keys.len(), state = %safe(services.state.describe()), "starting");
    let opts = SeedOptions {
        inputs: a.inputs.clone(),
        out: a.out.clone(),
        concurrency: a.concurrency.max(1),
        requests: a.requests.max(1),
        model: a.model,
        embedding_model: a.embedding_model,
        dimensions: Some(a.dimensions),
        chunk_tokens: a.chunk_tokens.max(50),
        follow_links: a.follow_links,
        ..SeedOptions::default()
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
    // The command as it was given, every flag included (global ones like --state-dir and
    // --config too), each word quoted: pasted back, it resumes this very run.
    let resume = resume_command(std::env::args_os().skip(1));
    let result = seed(
        opts,
        &services,
        interrupts(),
        Duration::from_secs(5),
        &progress,
    )
    .await;
    let shutdown = services.state.shutdown().await;
    match result {
        Ok(report) => {
            if let Err(e) = shutdown {
                eprintln!(
                    "keyturn: could not save the quota state: {}",
                    safe(&e.to_string())
                );
            }
            report_and_exit(&report, &resume)
        }
        Err(e) => fail(e.exit_code(), e),
    }
}

async fn cmd_sim(g: &Global, a: keyturn_sim::SimArgs) -> ExitCode {
    let cfg = match a.to_config() {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Some(addr) = g.metrics_addr {
        if let Err(e) = keyturn_services::install_metrics_exporter(addr) {
            return fail(1, e);
        }
        println!("metrics on http://{addr}/metrics");
    }
    match keyturn_sim::Simulator::start(cfg).await {
        Ok(sim) => {
            println!("keyturn sim listening on {}", sim.base_url());
            println!("GEMINI_BASE_URL={}", sim.base_url());
            sim.wait().await;
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, format!("cannot listen: {e}")),
    }
}

/// The status of the configured backend without taking the file lock (a seed may be running).
async fn read_status(cfg: &Config, env: &Env, cwd: &Path) -> Result<Option<PoolStatus>, String> {
    Ok(read_state(cfg, env, cwd).await?.map(|(st, _)| st))
}

/// The status and the whole state (for the usage history) from the configured backend, without
/// taking the state over: `None` when a file backend has no state yet.
async fn read_state(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
) -> Result<Option<(PoolStatus, keyturn_core::Snapshot)>, String> {
    let (ring, _) = key_ring(cfg, env, cwd).map_err(|e| e.to_string())?;
    let keys = Arc::new(ring);
    let lcfg = ledger_config(cfg).map_err(|e| e.to_string())?;
    let clock = keyturn_services::clock(env).map_err(|e| e.to_string())?;
    match cfg.state.backend {
        Backend::File => {
            let path = cfg.state.dir.join(keyturn_store::file::STATE_FILE);
            let Some(file) = FileStore::read(&path).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let ledger = InMemoryLedger::new(keys, lcfg, clock);
            ledger
                .restore_now(&file.snapshot)
                .map_err(|e| e.to_string())?;
            Ok(Some((ledger.status_now(), ledger.snapshot_now())))
        }
        Backend::Redis => {
            let mut lcfg = lcfg;
            lcfg.models = vec!["gemini-2.5-flash".into(), "gemini-embedding-001".into()];
            let l = RedisLedger::connect(
                &cfg.state.redis_url,
                &cfg.state.namespace,
                keys,
                lcfg,
                clock,
                TimeSource::Redis,
            )
            .await
            .map_err(|e| e.to_string())?;
            let st = l.status().await.map_err(|e| e.to_string())?;
            let snap = l.snapshot().await.map_err(|e| e.to_string())?;
            Ok(Some((st, snap)))
        }
    }
}

fn limit(used: u64, l: Option<u64>) -> String {
    match l {
        Some(l) => format!("{used}/{l}"),
        None => format!("{used}/∞"),
    }
}

/// Where a scope's limits come from, for the status table: the base (built-in table with its
/// date and the project's tier, the tier's family default, configuration), then each limit the
/// server changed: learned until when, or switched off.
fn limits_from(s: &keyturn_core::snapshot::ScopeStatus) -> String {
    use keyturn_core::LimitSource;
    use keyturn_core::snapshot::LimitOrigin;
    let mut out = match s.source {
        LimitSource::Builtin => format!(
            "built-in {} ({})",
            s.table_date
                .as_deref()
                .unwrap_or(keyturn_core::limits::BUILTIN_TABLE_DATE),
            s.tier
        ),
        LimitSource::Configured => format!("configured ({})", s.tier),
        LimitSource::Default | LimitSource::Family => {
            format!(
                "{} family default, no daily cap until the server sets one",
                s.tier
            )
        }
    };
    let learned: Vec<&str> = [
        ("rpm", s.origin.rpm),
        ("tpm", s.origin.tpm),
        ("rpd", s.origin.rpd),
        ("tpd", s.origin.tpd),
    ]
    .into_iter()
    .filter(|(_, o)| *o == LimitOrigin::Learned)
    .map(|(f, _)| f)
    .collect();
    if !learned.is_empty() {
        out.push_str(&format!("; {} learned from the server", learned.join("/")));
        if let Some(until) = s.learned_until_ms {
            out.push_str(&format!(" until {}", when(until)));
        }
    }
    if [s.origin.rpm, s.origin.tpm, s.origin.rpd, s.origin.tpd].contains(&LimitOrigin::ServerOff) {
        out.push_str("; switched off by the server");
    }
    out
}

fn print_status(st: &PoolStatus) {
    println!("{:<22} {:<9} {:<24} STATE", "KEY", "FP", "PROJECT");
    for k in &st.keys {
        let state = match (&k.disabled, &k.breaker) {
            (Some(d), _) => format!(
                "disabled: {} (since {})",
                safe(&d.reason.to_string()),
                when(d.since_ms)
            ),
            (None, keyturn_core::BreakerState::Open { until_ms }) => {
                format!("breaker open until {}", when(*until_ms))
            }
            (None, keyturn_core::BreakerState::HalfOpen { .. }) => {
                "breaker half-open (probing)".into()
            }
            (None, keyturn_core::BreakerState::Closed) => "ok".into(),
        };
        println!(
            "{:<22} {:<9} {:<24} {state}",
            safe(&k.label),
            k.fingerprint.to_string(),
            safe(&k.project)
        );
    }
    println!();
    println!(
        "{:<24} {:<24} {:>12} {:>18} {:>12} {:>20} {:<10} {:<22} LIMITS FROM",
        "PROJECT", "MODEL", "RPM", "TPM", "RPD", "TPD", "STATE", "NEXT RESET"
    );
    for s in &st.scopes {
        let mut state = format!("{:?}", s.state).to_lowercase();
        if s.project_off {
            state = "project off".into();
        }
        if let Some(at) = s.off_until_ms {
            state = format!("{state} (re-probed from {})", when(at));
        }
        println!(
            "{:<24} {:<24} {:>12} {:>18} {:>12} {:>20} {:<10} {:<22} {}",
            safe(&s.project),
            safe(&s.model),
            limit(s.rpm_used, s.limits.rpm),
            limit(s.tpm_used, s.limits.tpm),
            limit(s.rpd_used, s.limits.rpd),
            limit(s.tpd_used, s.limits.tpd),
            state,
            when(s.next_reset_ms),
            limits_from(s)
        );
    }
}

async fn cmd_status(g: &Global, env: &Env, cwd: &Path, json: bool) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Err(e) = key_ring(&cfg, env, cwd) {
        return fail(EXIT_USAGE, e);
    }
    match read_status(&cfg, env, cwd).await {
        Ok(Some(st)) if json => {
            println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(Some(st)) => {
            print_status(&st);
            ExitCode::SUCCESS
        }
        Ok(None) => {
            if json {
                println!("null");
            } else {
                println!("no quota state yet in {}", safe_path(&cfg.state.dir));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(1, e),
    }
}

/// One row of `keyturn status --history`.
#[derive(serde::Serialize)]
struct HistoryRow {
    date: String,
    key: String,
    fingerprint: String,
    model: String,
    requests: u64,
    input_tokens: u64,
}

async fn cmd_history(g: &Global, env: &Env, cwd: &Path, json: bool, days: u32) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let ring = match key_ring(&cfg, env, cwd) {
        Ok((r, _)) => r,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let (st, snap) = match read_state(&cfg, env, cwd).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            if json {
                println!("[]");
            } else {
                println!("no quota state yet in {}", safe_path(&cfg.state.dir));
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(1, e),
    };
    let Some(first) = keyturn_core::QuotaDay::containing(st.at_ms)
        .and_before(days as usize)
        .pop()
    else {
        return ExitCode::SUCCESS;
    };
    let mut rows: Vec<HistoryRow> = snap
        .usage
        .iter()
        .filter(|u| u.date >= first.date)
        .map(|u| HistoryRow {
            date: u.date.to_string(),
            key: ring
                .iter()
                .find(|(_, e)| e.fingerprint() == u.fingerprint)
                .map_or_else(String::new, |(_, e)| e.label.clone()),
            fingerprint: u.fingerprint.to_string(),
            model: u.model.clone(),
            requests: u.requests,
            input_tokens: u.input_tokens,
        })
        .collect();
    // Newest day first; within a day, by model then key.
    rows.sort_by(|a, b| (&b.date, &a.model, &a.key).cmp(&(&a.date, &b.model, &b.key)));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "usage per key and model, by Pacific day (last {days} days; input tokens as counted against TPM)"
    );
    println!(
        "{:<10}  {:<22} {:<9} {:<24} {:>9} {:>13}",
        "DATE", "KEY", "FP", "MODEL", "REQUESTS", "INPUT TOKENS"
    );
    for r in &rows {
        println!(
            "{:<10}  {:<22} {:<9} {:<24} {:>9} {:>13}",
            r.date,
            safe(&r.key),
            r.fingerprint,
            safe(&r.model),
            r.requests,
            r.input_tokens
        );
    }
    let (req, tok) = rows
        .iter()
        .fold((0, 0), |(r, t), x| (r + x.requests, t + x.input_tokens));
    println!(
        "{:<10}  {:<22} {:<9} {:<24} {req:>9} {tok:>13}",
        "total", "", "", ""
    );
    ExitCode::SUCCESS
}

async fn cmd_keys(g: &Global, env: &Env, cwd: &Path, k: KeysCommand) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    match k {
        KeysCommand::List => {
            let found = match keyturn_services::discover(&cfg, env, cwd) {
                Ok(f) => f,
                Err(e) => return fail(EXIT_USAGE, e),
            };
            let status = read_status(&cfg, env, cwd).await.ok().flatten();
            println!(
                "{:<22} {:<9} {:<24} {:<30} HEALTH",
                "LABEL", "FP", "PROJECT", "SOURCE"
            );
            for f in &found {
                let fp = f.spec.key.fingerprint();
                let health = status
                    .as_ref()
                    .and_then(|s| s.keys.iter().find(|k| k.fingerprint == fp))
                    .map_or_else(
                        || "-".to_owned(),
                        |k| match &k.disabled {
                            Some(d) => format!("disabled: {}", safe(&d.reason.to_string())),
                            None => "ok".into(),
                        },
                    );
                println!(
                    "{:<22} {:<9} {:<24} {:<30} {health}",
                    safe(f.spec.label.as_deref().unwrap_or_default()),
                    fp.to_string(),
                    f.spec
                        .project
                        .as_deref()
                        .map_or_else(|| format!("key:{fp}"), |p| safe(p).into_owned()),
                    safe(&f.source)
                );
            }
            if found.is_empty() {
                return fail(
                    EXIT_USAGE,
                    ConfigError::NoKeys {
                        looked_at: keyturn_services::discovery::LOOKED_AT
                            .iter()
                            .map(|s| (*s).to_owned())
                            .collect(),
                    },
                );
            }
            ExitCode::SUCCESS
        }
        KeysCommand::Check { model } => {
            let (ring, _) = match key_ring(&cfg, env, cwd) {
                Ok(r) => r,
                Err(e) => return fail(EXIT_USAGE, e),
            };
            let transport = match keyturn_services::transport(&cfg, &cfg.http.api_version) {
                Ok(t) => t,
                Err(e) => return fail(1, e),
            };
            let url = match transport.model_info_url(&model) {
                Ok(u) => u,
                Err(e) => return fail(EXIT_USAGE, e),
            };
            let (mut dead, mut good) = (0, 0);
            let mut alive = Vec::new();
            println!("{:<22} {:<9} RESULT", "LABEL", "FP");
            for (id, e) in ring.iter() {
                let result = match transport.get(&e.key, &url).await {
                    Err(detail) => format!("no answer: {detail}"),
                    Ok(r) if r.status().is_success() => {
                        good += 1;
                        alive.push(id);
                        "valid".into()
                    }
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.bytes().await.unwrap_or_default();
                        let c = keyturn_gemini::classify(status, &body);
                        match c.kind {
                            keyturn_gemini::ErrorKind::DeadKey(reason)
                            | keyturn_gemini::ErrorKind::ProjectDead(reason) => {
                                dead += 1;
                                format!("REJECTED: {reason}")
                            }
                            // This request costs no quota and names no resource: a bare 403
                            // here is about the key itself.
                            keyturn_gemini::ErrorKind::Unverified => {
                                dead += 1;
                                format!(
                                    "REJECTED: {}",
                                    keyturn_gemini::error::refused_reason(&c.message)
                                )
                            }
                            keyturn_gemini::ErrorKind::CallerFault => {
                                good += 1;
                                alive.push(id);
                                format!("valid key, but {model} answered {status}")
                            }
                            other => format!("inconclusive ({status}, {other:?})"),
                        }
                    }
                };
                // The detail quotes upstream bodies and the model the user typed: escaped.
                println!(
                    "{:<22} {:<9} {}",
                    safe(&e.label),
                    e.fingerprint().to_string(),
                    safe(&result)
                );
            }
            reenable(&cfg, env, cwd, &alive).await;
            // 0 only when a key is known good; 4 when every key was refused; 1 when some keys
            // could not be checked (no answer, inconclusive) and none is known good.
            if good > 0 {
                ExitCode::SUCCESS
            } else if dead == ring.len() {
                fail(4, "every key was rejected")
            } else {
                fail(
                    1,
                    format!(
                        "no key could be confirmed good: {} of {} got no clear answer{}; check GEMINI_BASE_URL and the network, then try again",
                        ring.len() - dead,
                        ring.len(),
                        if dead > 0 {
                            format!(", {dead} rejected")
                        } else {
                            String::new()
                        }
                    ),
                )
            }
        }
        KeysCommand::Reset { key, all } => {
            let target = match (key, all) {
                (_, true) => None,
                (Some(k), false) => Some(k),
                (None, false) => {
                    return fail(
                        EXIT_USAGE,
                        "name a key (label or fingerprint) or pass --all",
                    );
                }
            };
            let pool = match create_pool(&cfg, env, cwd).await {
                Ok(p) => p,
                Err(e) => return fail(service_exit(&e), e),
            };
            let result = match &target {
                None => pool.ledger.reset(ResetTarget::All).await,
                Some(k) => match pool.keys.find(k) {
                    Some(id) => pool.ledger.reset(ResetTarget::Key(id)).await,
                    None => {
                        pool.state.shutdown().await.ok();
                        return fail(
                            EXIT_USAGE,
                            format!("no key labelled or fingerprinted '{k}'"),
                        );
                    }
                },
            };
            let saved = pool.state.shutdown().await;
            match (result, saved) {
                (Ok(()), Ok(())) => {
                    println!(
                        "reset {}",
                        safe(target.as_deref().unwrap_or("all keys and counters"))
                    );
                    ExitCode::SUCCESS
                }
                (Err(e), _) => fail(1, e),
                (_, Err(e)) => fail(1, e),
            }
        }
    }
}

fn age(ms: i64) -> String {
    let s = (SystemClock.now_ms() - ms).max(0) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// Where the state lives, for messages.
fn pool_place(cfg: &Config) -> String {
    match cfg.state.backend {
        Backend::File => safe_path(&cfg.state.dir),
        Backend::Redis => format!("redis namespace {}", safe(&cfg.state.namespace)),
    }
}

/// Re-enables the keys `keys check` found alive that the quota state has disabled. The state may
/// be held by a running process (file backend): then it says how to do it later.
async fn reenable(cfg: &Config, env: &Env, cwd: &Path, alive: &[keyturn_core::KeyId]) {
    if alive.is_empty() {
        return;
    }
    let pool = match create_pool(cfg, env, cwd).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "keyturn: could not open the quota state to re-enable keys that answered ({}); `keyturn keys reset LABEL` does it later",
                safe(&e.to_string())
            );
            return;
        }
    };
    if let Ok(st) = pool.ledger.status().await {
        for id in alive {
            let Some(k) = st.keys.get(id.index()) else {
                continue;
            };
            if k.disabled.is_none() {
                continue;
            }
            match pool.ledger.reset(ResetTarget::Key(*id)).await {
                Ok(()) => println!("re-enabled {}: it answers again", safe(&k.label)),
                Err(e) => eprintln!(
                    "keyturn: could not re-enable {}: {}",
                    safe(&k.label),
                    safe(&e.to_string())
                ),
            }
        }
    }
    if let Err(e) = pool.state.shutdown().await {
        eprintln!(
            "keyturn: could not save the quota state: {}",
            safe(&e.to_string())
        );
    }
}

async fn cmd_state(g: &Global, env: &Env, cwd: &Path, s: StateCommand) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    match s {
        StateCommand::Info { out } => {
            match cfg.state.backend {
                Backend::File => {
                    let path = cfg.state.dir.join(keyturn_store::file::STATE_FILE);
                    println!("backend: file");
                    println!("state:   {}", safe_path(&path));
                    match std::fs::metadata(&path) {
                        Ok(m) => {
                            let modified = m
                                .modified()
                                .ok()
                                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                .map_or(0, |d| d.as_millis() as i64);
                            println!("size:    {} bytes, written {}", m.len(), age(modified));
                            match FileStore::read(&path) {
                                Ok(Some(f)) => println!(
                                    "last flush: {} · schema {} · {} keys, {} scopes · by {}",
                                    f.written_at,
                                    f.schema,
                                    f.snapshot.keys.len(),
                                    f.snapshot.scopes.len(),
                                    safe(&f.writer)
                                ),
                                Ok(None) => {}
                                Err(e) => println!("problem: {}", safe(&e.to_string())),
                            }
                        }
                        Err(_) => println!("(no state written yet)"),
                    }
                    let lock = cfg.state.dir.join(keyturn_store::file::LOCK_FILE);
                    if let Ok(pid) = std::fs::read_to_string(&lock) {
                        let held = std::fs::File::open(&lock).is_ok_and(|f| {
                            matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
                        });
                        println!(
                            "lock:    {} (last owner pid {})",
                            if held { "held" } else { "free" },
                            safe(pid.trim())
                        );
                    }
                    let bak = cfg.state.dir.join(keyturn_store::file::BACKUP_FILE);
                    if bak.exists() {
                        println!("backup:  {}", safe_path(&bak));
                    }
                }
                Backend::Redis => {
                    println!(
                        "backend: redis {} (namespace {})",
                        safe(&keyturn_store::redact_url(&cfg.state.redis_url)),
                        safe(&cfg.state.namespace)
                    );
                }
            }
            // Looking never creates: a folder that holds no checkpoint is said so, not given one.
            if let Some(out) = out.filter(|o| {
                let has = o.join(CHECKPOINT_DIR).is_dir();
                if !has {
                    println!("no checkpoint in {}", safe_path(o));
                }
                has
            }) {
                match CheckpointStore::open(out.join(CHECKPOINT_DIR)) {
                    Ok(cp) => {
                        let c = cp.checkpoint();
                        println!(
                            "checkpoint: {} · {} finished episodes · updated {}",
                            safe_path(cp.path()),
                            c.items.len(),
                            if c.updated_at_ms > 0 {
                                age(c.updated_at_ms)
                            } else {
                                "never".into()
                            }
                        );
                        for b in cp.backups().unwrap_or_default() {
                            println!("  backup {}", safe_path(&b));
                        }
                    }
                    Err(e) => return fail(if e.is_unusable() { EXIT_USAGE } else { 1 }, e),
                }
            }
            ExitCode::SUCCESS
        }
        StateCommand::Reset { yes } => {
            if !yes {
                eprint!(
                    "reset every key and quota counter ({}; usage history is kept)? type 'yes': ",
                    pool_place(&cfg)
                );
                let mut answer = String::new();
                if std::io::stdin().read_line(&mut answer).is_err() || answer.trim() != "yes" {
                    return fail(1, "not reset");
                }
            }
            // Through the pool, as `keys reset --all` does: the lock proves no keyturn process
            // is using the state, and a reset keeps the usage history (what was sent stays sent).
            match create_pool(&cfg, env, cwd).await {
                Ok(pool) => {
                    let reset = pool.ledger.reset(ResetTarget::All).await;
                    let saved = pool.state.shutdown().await;
                    match (reset, saved) {
                        (Ok(()), Ok(())) => {
                            println!(
                                "reset every key's health and every quota counter of this configuration's keys and projects ({}); usage history kept",
                                pool_place(&cfg)
                            );
                            ExitCode::SUCCESS
                        }
                        (Err(e), _) => fail(1, e),
                        (_, Err(e)) => fail(1, e),
                    }
                }
                // A state file that cannot be read is the one thing a reset must still clear.
                Err(ServiceError::State(
                    e @ (keyturn_core::StoreError::Corrupt { .. }
                    | keyturn_core::StoreError::NewerSchema { .. }),
                )) if cfg.state.backend == Backend::File => {
                    let store = match FileStore::open(&cfg.state.dir) {
                        Ok(s) => s,
                        Err(e) => return fail(EXIT_USAGE, e),
                    };
                    match std::fs::remove_file(store.path()) {
                        Ok(()) => {
                            println!(
                                "deleted {} ({})",
                                safe_path(store.path()),
                                safe(&e.to_string())
                            );
                            ExitCode::SUCCESS
                        }
                        Err(e) => fail(1, e),
                    }
                }
                Err(e) => fail(service_exit(&e), e),
            }
        }
        StateCommand::Prune { out, keep } => {
            if !out.join(CHECKPOINT_DIR).is_dir() {
                println!("no checkpoint in {}: nothing to prune", safe_path(&out));
                return ExitCode::SUCCESS;
            }
            match CheckpointStore::open(out.join(CHECKPOINT_DIR)) {
                Ok(cp) => match cp.prune(keep) {
                    Ok(gone) => {
                        for p in &gone {
                            println!("deleted {}", safe_path(p));
                        }
                        println!(
                            "{} backup(s) deleted, {} kept",
                            gone.len(),
                            cp.backups().map_or(0, |b| b.len())
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(1, e),
                },
                Err(e) => fail(if e.is_unusable() { EXIT_USAGE } else { 1 }, e),
            }
        }
    }
}

async fn cmd_serve(g: &Global, env: &Env, cwd: &Path, a: ServeArgs) -> ExitCode {
    if let Some(ServeCommand::Token(TokenCommand::New { label })) = &a.command {
        let (token, digest) = keyturn_proxy::new_token();
        println!(
            "token for {} (shown once; give it to the client as its API key):",
            safe(label)
        );
        println!("  {token}");
        println!();
        println!("add to keyturn.toml:");
        println!("[[serve.tokens]]");
        // A JSON string is a valid TOML basic string, with every control character escaped.
        println!(
            "label = {}",
            serde_json::to_string(label).unwrap_or_default()
        );
        println!("sha256 = \"{digest}\"");
        return ExitCode::SUCCESS;
    }
    let mut cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    // The proxy's own bound on waiting for quota: a client is told when to come back (429 with
    // RetryInfo) rather than held past its SDK's timeout.
    cfg.rotation.max_wait = cfg.rotation.max_wait.min(cfg.serve.max_queue_wait);
    let listen = a.listen.clone().unwrap_or_else(|| cfg.serve.listen.clone());
    let Ok(listen) = listen.parse::<std::net::SocketAddr>() else {
        return fail(
            EXIT_USAGE,
            format!("--listen '{listen}' is not an address like 127.0.0.1:8080"),
        );
    };
    let mut tokens = Vec::new();
    for t in &cfg.serve.tokens {
        match keyturn_proxy::parse_digest(&t.label, &t.sha256) {
            Ok(d) => tokens.push((t.label.clone(), d)),
            Err(e) => return fail(EXIT_USAGE, e),
        }
    }
    let pcfg = keyturn_proxy::ProxyConfig {
        listen,
        tokens,
        max_body_bytes: cfg.serve.max_body_bytes,
        max_in_flight: cfg.serve.max_in_flight,
        max_connections: cfg.serve.max_connections,
        header_timeout: cfg.serve.header_timeout,
        body_timeout: cfg.serve.body_timeout,
    };
    if let Err(e) = pcfg.validate() {
        return fail(EXIT_USAGE, e);
    }
    if let Err(e) = start_metrics(&cfg) {
        return fail(1, e);
    }
    let mut pool = match create_pool(&cfg, env, cwd).await {
        Ok(p) => p,
        Err(e) => return fail(service_exit(&e), e),
    };
    if let Err(e) = pool.watch(&cfg) {
        return fail(1, e);
    }
    let callers = (
        pool.caller_for_version(&cfg, "v1beta"),
        pool.caller_for_version(&cfg, "v1"),
    );
    let (Ok(v1beta), Ok(v1)) = callers else {
        return fail(1, "cannot set up the HTTP client");
    };
    let state = Arc::new(keyturn_proxy::ProxyState::new(
        v1beta,
        v1,
        pool.ledger.clone(),
        pool.clock.clone(),
        &pcfg,
    ));
    let proxy = match keyturn_proxy::Proxy::start(state, &pcfg).await {
        Ok(p) => p,
        Err(e) => return fail(1, e),
    };
    println!(
        "keyturn serve listening on {} ({} keys, state: {}, {} client token(s))",
        proxy.base_url(),
        pool.keys.len(),
        safe(pool.state.describe()),
        pcfg.tokens.len()
    );
    let mut stop = interrupts();
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    eprintln!("keyturn serve: draining requests in flight…");
    proxy.shutdown(Duration::from_secs(10)).await;
    match pool.state.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, format!("could not save the quota state: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_lines_quote_paths_as_one_shell_word_each() {
        assert_eq!(shell_quote(Path::new("a b")), "'a b'");
        assert_eq!(shell_quote(Path::new("it's")), "'it'\\''s'");
        let args = [
            "seed",
            "my pods",
            "--out",
            "o",
            "--state-dir",
            "st2",
            "-v",
            "--model",
            "it's",
        ];
        assert_eq!(
            resume_command(args.iter().map(std::ffi::OsString::from)),
            "keyturn seed 'my pods' --out o --state-dir st2 -v --model 'it'\\''s'"
        );
    }
}
