//! The `keyturn` command line: it parses, hands each command to the part that owns it, and
//! presents the answer. Exit codes: 0 done; 2 usage or configuration error; 3 every key's quota
//! for a needed model is exhausted (resumable); 4 every key was rejected as invalid;
//! 130 interrupted (resumable); 1 anything else.
//!
//! `args` holds what the command line accepts; one file per command family presents it.

#![allow(clippy::print_stdout, clippy::print_stderr)] // this module is the binary's UI

mod args;
mod console;
mod export;
mod keys;
mod plan;
mod seed;
mod serve;
mod sim;
mod state;
mod status;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use keyturn_core::Policy;
use keyturn_services::{Config, ConfigError, Env, Overrides, ServiceError, process_env};
use tokio::sync::watch;

use crate::report::Outcome;
use crate::term::safe_text;
use args::{Cli, Command, Global, Logging};

fn init_logging(g: &Logging) {
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

/// Prints an error and ends with the exit code of its outcome: a kind ([`Outcome`], or any error
/// kind that converts into one), never a number ([`crate::report::exit_code`] chooses those).
fn fail(outcome: impl Into<Outcome>, msg: impl std::fmt::Display) -> ExitCode {
    // Errors quote paths, names and upstream messages: escaped on the way out.
    eprintln!("keyturn: {}", safe_text(&msg.to_string()));
    outcome.into().into()
}

/// Runs the command line; the binary's `main`.
pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    init_logging(&cli.logging);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(Outcome::Failed, format!("cannot start the runtime: {e}")),
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

async fn run(cli: Cli) -> ExitCode {
    let env = process_env();
    let cwd = cwd();
    // A bad KEYTURN_CLOCK_OFFSET_MS is a configuration error for every command that reads it.
    if let Err(e) = keyturn_services::clock_offset_ms(&env) {
        return fail(Outcome::Usage, e);
    }
    let Cli {
        setup: top_setup,
        metrics: top_metrics,
        command,
        ..
    } = cli;
    let g = |setup, metrics| Global::resolve(&top_setup, &top_metrics, setup, metrics);
    match command {
        Command::Seed(a) => {
            let g = g(Some(&a.setup), Some(&a.metrics));
            seed::cmd_seed(&g, &env, &cwd, a).await
        }
        Command::Plan(a) => {
            let g = g(Some(&a.setup), None);
            plan::cmd_plan(&g, &env, &cwd, a).await
        }
        Command::Demo(a) => {
            let g = g(None, Some(&a.metrics));
            crate::demo::run(&a.out, &cwd, g.metrics_addr).await
        }
        Command::Sim(a) => sim::cmd_sim(&g(None, Some(&a.metrics)), a.sim).await,
        Command::Status {
            json,
            history: false,
            setup,
            ..
        } => status::cmd_status(&g(Some(&setup), None), &env, &cwd, json).await,
        Command::Status {
            json,
            history: true,
            days,
            setup,
        } => status::cmd_history(&g(Some(&setup), None), &env, &cwd, json, days).await,
        Command::Keys(k) => {
            let g = g(Some(k.setup()), None);
            keys::cmd_keys(&g, &env, &cwd, k).await
        }
        Command::Export { out, format, to } => export::cmd_export(&out, format, to),
        Command::State(s) => {
            let g = g(s.setup(), None);
            state::cmd_state(&g, &env, &cwd, s).await
        }
        Command::Console(a) => {
            let g = g(Some(&a.setup), None);
            console::cmd_console(&g, &env, &cwd, a).await
        }
        Command::Serve(a) => {
            let g = g(Some(&a.setup), Some(&a.metrics));
            serve::cmd_serve(&g, &env, &cwd, a).await
        }
    }
}
