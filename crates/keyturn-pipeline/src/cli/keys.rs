//! `keyturn keys list|check|reset`.

use std::path::Path;
use std::process::ExitCode;

use keyturn_gemini::ModelCheck;
use keyturn_services::state::Reset;
use keyturn_services::{Config, ConfigError, Env, key_ring};

use super::args::KeysCommand;
use super::status::read_status;
use super::{Global, fail, load};
use crate::report::Outcome;
use crate::term::safe;

pub(super) async fn cmd_keys(g: &Global, env: &Env, cwd: &Path, k: KeysCommand) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    match k {
        KeysCommand::List { .. } => list(&cfg, env, cwd).await,
        KeysCommand::Check { model, .. } => check(&cfg, env, cwd, &model).await,
        KeysCommand::Reset { key, all, .. } => {
            let target = match (key, all) {
                (_, true) => None,
                (Some(k), false) => Some(k),
                (None, false) => {
                    return fail(
                        Outcome::Usage,
                        "name a key (label or fingerprint) or pass --all",
                    );
                }
            };
            let what = target.as_deref().map_or(Reset::All, Reset::Key);
            match keyturn_services::state::reset(&cfg, env, cwd, what).await {
                Ok(()) => {
                    println!(
                        "reset {}",
                        safe(target.as_deref().unwrap_or("all keys and counters"))
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.kind(), e),
            }
        }
    }
}

async fn list(cfg: &Config, env: &Env, cwd: &Path) -> ExitCode {
    let found = match keyturn_services::discover(cfg, env, cwd) {
        Ok(f) => f,
        Err(e) => return fail(Outcome::Usage, e),
    };
    let status = read_status(cfg, env, cwd).await.ok().flatten();
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
            Outcome::Usage,
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

async fn check(cfg: &Config, env: &Env, cwd: &Path, model: &str) -> ExitCode {
    let (ring, found) = match key_ring(cfg, env, cwd) {
        Ok(r) => r,
        Err(e) => return fail(Outcome::Usage, e),
    };
    // Each key is asked through its own egress route, as its requests go.
    let transport = match keyturn_services::key_transport(cfg, &found) {
        Ok(t) => t,
        Err(e) => return fail(Outcome::Failed, e),
    };
    if let Err(e) = transport.model_info_url(model) {
        return fail(Outcome::Usage, e);
    }
    let (mut dead, mut good) = (0, 0);
    let mut alive = Vec::new();
    println!("{:<22} {:<9} RESULT", "LABEL", "FP");
    for (id, e) in ring.iter() {
        let answer = match keyturn_gemini::check_key_for_model(&transport, &e.key, model).await {
            Ok(a) => a,
            Err(e) => return fail(Outcome::Usage, e),
        };
        let result = match answer {
            ModelCheck::NoAnswer(detail) => format!("no answer: {detail}"),
            ModelCheck::Alive => {
                good += 1;
                alive.push(id);
                "valid".into()
            }
            ModelCheck::Refused(reason) => {
                dead += 1;
                format!("REJECTED: {reason}")
            }
            ModelCheck::ModelRefused(status) => {
                good += 1;
                alive.push(id);
                format!("valid key, but {model} answered {status}")
            }
            ModelCheck::Inconclusive(status, kind) => format!("inconclusive ({status}, {kind:?})"),
        };
        // The detail quotes upstream bodies and the model the user typed: escaped.
        println!(
            "{:<22} {:<9} {}",
            safe(&e.label),
            e.fingerprint().to_string(),
            safe(&result)
        );
    }
    reenable(cfg, env, cwd, &alive).await;
    // 0 only when a key is known good; 4 when every key was refused; 1 when some keys could not
    // be checked (no answer, inconclusive) and none is known good.
    if good > 0 {
        ExitCode::SUCCESS
    } else if dead == ring.len() {
        fail(Outcome::KeysDead, "every key was rejected")
    } else {
        fail(
            Outcome::Failed,
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

/// Re-enables the keys `keys check` found alive that the quota state has disabled. The state may
/// be held by a running process (file backend): then it says how to do it later.
async fn reenable(cfg: &Config, env: &Env, cwd: &Path, alive: &[keyturn_core::KeyId]) {
    let done = match keyturn_services::state::reenable(cfg, env, cwd, alive).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "keyturn: could not open the quota state to re-enable keys that answered ({}); `keyturn keys reset LABEL` does it later",
                safe(&e.to_string())
            );
            return;
        }
    };
    for (label, result) in &done.keys {
        match result {
            Ok(()) => println!("re-enabled {}: it answers again", safe(label)),
            Err(e) => eprintln!(
                "keyturn: could not re-enable {}: {}",
                safe(label),
                safe(&e.to_string())
            ),
        }
    }
    if let Err(e) = &done.saved {
        eprintln!(
            "keyturn: could not save the quota state: {}",
            safe(&e.to_string())
        );
    }
}
