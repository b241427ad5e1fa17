//! `keyturn state info|reset|prune`: where the state lives and its maintenance. What is on disk
//! or in Redis is read and changed by keyturn-services and keyturn-store; this presents it.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use keyturn_core::Clock;
use keyturn_services::state::{Location, ResetDone};
use keyturn_services::{Backend, Config, Env};
use keyturn_store::CheckpointStore;

use super::args::StateCommand;
use super::{Global, fail, load};
use crate::report::Outcome;
use crate::run::CHECKPOINT_DIR;
use crate::term::{safe, safe_path};

/// How long ago `ms` was, by the pool's clock.
fn age(clock: &dyn Clock, ms: i64) -> String {
    let s = (clock.now_ms() - ms).max(0) / 1000;
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

pub(super) async fn cmd_state(g: &Global, env: &Env, cwd: &Path, s: StateCommand) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    match s {
        StateCommand::Info { out, .. } => {
            let clock = match keyturn_services::clock(env) {
                Ok(c) => c,
                Err(e) => return fail(Outcome::Usage, e),
            };
            info(&cfg, &clock, out.as_deref())
        }
        StateCommand::Reset { yes, .. } => {
            if !yes {
                eprint!(
                    "reset every key and quota counter ({}; usage history is kept)? type 'yes': ",
                    pool_place(&cfg)
                );
                let mut answer = String::new();
                if std::io::stdin().read_line(&mut answer).is_err() || answer.trim() != "yes" {
                    return fail(Outcome::Failed, "not reset");
                }
            }
            match keyturn_services::state::reset_or_delete(&cfg, env, cwd).await {
                Ok(ResetDone::Reset) => {
                    println!(
                        "reset every key's health and every quota counter of this configuration's keys and projects ({}); usage history kept",
                        pool_place(&cfg)
                    );
                    ExitCode::SUCCESS
                }
                Ok(ResetDone::Deleted { path, why }) => {
                    println!("deleted {} ({})", safe_path(&path), safe(&why.to_string()));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.kind(), e),
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
                    Err(e) => fail(Outcome::Failed, e),
                },
                Err(e) => fail(Outcome::from(&e), e),
            }
        }
    }
}

fn info(cfg: &Config, clock: &Arc<dyn Clock>, out: Option<&Path>) -> ExitCode {
    match keyturn_services::state::locate(cfg) {
        Location::File(f) => {
            println!("backend: file");
            println!("state:   {}", safe_path(&f.path));
            match &f.written {
                Some(w) => {
                    // By the pool's clock: the snapshot's own time when the file reads, so a
                    // shifted clock (KEYTURN_CLOCK_OFFSET_MS) does not age it by the shift.
                    let written_ms = match &w.contents {
                        Ok(Some(f)) => f.snapshot.taken_at_ms,
                        _ => w.modified_ms,
                    };
                    println!(
                        "size:    {} bytes, written {}",
                        w.size,
                        age(clock.as_ref(), written_ms)
                    );
                    match &w.contents {
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
                None => println!("(no state written yet)"),
            }
            if let Some(lock) = &f.lock {
                println!(
                    "lock:    {} (last owner pid {})",
                    if lock.held { "held" } else { "free" },
                    safe(&lock.last_pid)
                );
            }
            if let Some(bak) = &f.backup {
                println!("backup:  {}", safe_path(bak));
            }
        }
        Location::Redis { server, namespace } => {
            println!(
                "backend: redis {} (namespace {})",
                safe(&server),
                safe(&namespace)
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
                        age(clock.as_ref(), c.updated_at_ms)
                    } else {
                        "never".into()
                    }
                );
                for b in cp.backups().unwrap_or_default() {
                    println!("  backup {}", safe_path(&b));
                }
            }
            Err(e) => return fail(Outcome::from(&e), e),
        }
    }
    ExitCode::SUCCESS
}
