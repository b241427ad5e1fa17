//! `keyturn status`: the quota table, `--json`, and the usage history (`--history`).

use std::path::Path;
use std::process::ExitCode;

use keyturn_core::plan::{Work, plan};
use keyturn_core::{KeyRing, LimitTable, PoolStatus};
use keyturn_services::state::StateError;
use keyturn_services::{Config, Env, key_ring};
use keyturn_store::runs::{BatchView, RunBoard, RunRecord};

use super::{Global, fail, load};
use crate::progress::eta;
use crate::report::Outcome;
use crate::report::when;
use crate::term::{safe, safe_path};

/// The status of the configured backend without taking the file lock (a seed may be running).
pub(super) async fn read_status(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
) -> Result<Option<PoolStatus>, StateError> {
    Ok(read_state(cfg, env, cwd).await?.map(|(st, _)| st))
}

/// The status and the whole state (for the usage history) from the configured backend, without
/// taking the state over: `None` when a file backend has no state yet. A Redis ledger is asked
/// about the models a seed uses by default.
async fn read_state(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
) -> Result<Option<(PoolStatus, keyturn_core::Snapshot)>, StateError> {
    let models = [
        crate::run::DEFAULT_MODEL,
        crate::run::DEFAULT_EMBEDDING_MODEL,
    ];
    keyturn_services::state::inspect(cfg, env, cwd, &models)
        .await
        .map(|found| found.map(|i| (i.status, i.snapshot)))
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
        "{:<24} {:<24} {:>12} {:>18} {:>12} {:>15} {:>20} {:<10} {:<22} LIMITS FROM",
        "PROJECT",
        "MODEL",
        "RPM",
        "TPM",
        "RPD (SENT)",
        "SERVED/REFUSED",
        "TPD",
        "STATE",
        "NEXT RESET"
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
            "{:<24} {:<24} {:>12} {:>18} {:>12} {:>15} {:>20} {:<10} {:<22} {}",
            safe(&s.project),
            safe(&s.model),
            limit(s.rpm_used, s.limits.rpm),
            limit(s.tpm_used, s.limits.tpm),
            limit(s.rpd_used, s.limits.rpd),
            format!("{}/{}", s.rpd_served, s.rpd_refused),
            limit(s.tpd_used, s.limits.tpd),
            state,
            when(s.next_reset_ms),
            limits_from(s)
        );
    }
}

/// A seed run in progress on this machine, as `keyturn status` shows it.
#[derive(Debug, serde::Serialize)]
pub(super) struct LiveRun {
    pid: u32,
    out: std::path::PathBuf,
    started_ms: i64,
    updated_ms: i64,
    episodes_done: u64,
    episodes_total: u64,
    /// The planner's answer for the work left, against the pool as it is now.
    eta: String,
    /// When the work left would be done (ms), if it can be.
    finish_ms: Option<i64>,
    /// The Pacific days it still spans.
    days: u32,
    left: Vec<Work>,
    /// A `seed --batch` run's jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<BatchView>,
}

/// The seed runs that keep a record in this configuration's state folder, each with an ETA
/// from the same planner as `keyturn plan` and the seed's own progress line, for the work it
/// has left and the pool's capacity now.
pub(super) fn live_runs(state_dir: &Path, ring: &KeyRing, st: &PoolStatus) -> Vec<LiveRun> {
    RunBoard::new(state_dir)
        .live(st.at_ms)
        .into_iter()
        .map(|r| {
            let left: Vec<Work> = r.left.into_iter().filter(|w| w.requests > 0).collect();
            let models: Vec<&str> = left.iter().map(|w| w.model.as_str()).collect();
            let caps = crate::plan::capacity(&models, ring, &LimitTable::builtin(), Some(st));
            let p = plan(&left, &caps, st.at_ms);
            LiveRun {
                pid: r.pid,
                out: r.out,
                started_ms: r.started_ms,
                updated_ms: r.updated_ms,
                episodes_done: r.episodes_done.min(r.episodes_total),
                episodes_total: r.episodes_total,
                eta: if left.is_empty() {
                    "ETA: finishing".into()
                } else {
                    eta(&p)
                },
                finish_ms: p.finish_ms,
                days: p.days,
                left,
                batch: r.batch,
            }
        })
        .collect()
}

fn print_runs(runs: &[LiveRun]) {
    if runs.is_empty() {
        return;
    }
    println!();
    println!("seed runs in progress on this machine:");
    for r in runs {
        println!(
            "  pid {} → {}: episodes {}/{} · {}",
            r.pid,
            safe_path(&r.out),
            r.episodes_done,
            r.episodes_total,
            safe(&r.eta)
        );
        if let Some(b) = &r.batch {
            print_batch("    ", b);
        }
    }
}

/// A batch run's jobs per project and state, items done, and the estimated cost.
fn print_batch(indent: &str, b: &BatchView) {
    for (project, states) in &b.jobs {
        let s: Vec<String> = states.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("{indent}jobs on {}: {}", safe(project), s.join(", "));
    }
    let usd = |c: Option<f64>| c.map_or_else(|| "unknown".to_owned(), |c| format!("${c:.4}"));
    println!(
        "{indent}items {}/{} · estimated cost {} at the batch price ({} interactive)",
        b.items_done,
        b.items_total,
        usd(b.estimated_cost_usd),
        usd(b.interactive_cost_usd)
    );
}

/// The last batch seed's record, once it ended (`None` while none was kept).
fn print_last_batch(last: Option<&RunRecord>) {
    let Some((r, b)) = last.and_then(|r| Some((r, r.batch.as_ref()?))) else {
        return;
    };
    println!();
    println!(
        "last batch seed → {} ({}): episodes {}/{}",
        safe_path(&r.out),
        when(b.at_ms),
        r.episodes_done,
        r.episodes_total
    );
    print_batch("  ", b);
}

pub(super) async fn cmd_status(g: &Global, env: &Env, cwd: &Path, json: bool) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    let ring = match key_ring(&cfg, env, cwd) {
        Ok((r, _)) => r,
        Err(e) => return fail(Outcome::Usage, e),
    };
    match read_status(&cfg, env, cwd).await {
        Ok(Some(st)) if json => {
            // The pool's status with the runs in progress beside it.
            let runs = live_runs(&cfg.state.dir, &ring, &st);
            let last = RunBoard::new(&cfg.state.dir).last_batch();
            let mut v = serde_json::to_value(&st).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "runs".into(),
                    serde_json::to_value(&runs).unwrap_or_default(),
                );
                o.insert(
                    "last_batch".into(),
                    serde_json::to_value(&last).unwrap_or_default(),
                );
            }
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(Some(st)) => {
            print_status(&st);
            print_runs(&live_runs(&cfg.state.dir, &ring, &st));
            print_last_batch(RunBoard::new(&cfg.state.dir).last_batch().as_ref());
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
        Err(e) => fail(e.kind(), e),
    }
}

/// One row of `keyturn status --history`.
#[derive(serde::Serialize)]
struct HistoryRow {
    date: String,
    key: String,
    fingerprint: String,
    model: String,
    /// Requests sent.
    requests: u64,
    /// Of those, served by Gemini.
    served: u64,
    /// Of those, refused by Gemini on quota or access grounds.
    refused: u64,
    input_tokens: u64,
}

pub(super) async fn cmd_history(
    g: &Global,
    env: &Env,
    cwd: &Path,
    json: bool,
    days: u32,
) -> ExitCode {
    let cfg = match load(g, env, cwd, false) {
        Ok(c) => c,
        Err(e) => return fail(Outcome::Usage, e),
    };
    let ring = match key_ring(&cfg, env, cwd) {
        Ok((r, _)) => r,
        Err(e) => return fail(Outcome::Usage, e),
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
        Err(e) => return fail(e.kind(), e),
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
            served: u.served,
            refused: u.refused,
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
        "usage per key and model, by Pacific day (last {days} days; requests sent, and of those \
         served and refused by Gemini; input tokens as counted against TPM)"
    );
    println!(
        "{:<10}  {:<22} {:<9} {:<24} {:>9} {:>9} {:>9} {:>13}",
        "DATE", "KEY", "FP", "MODEL", "SENT", "SERVED", "REFUSED", "INPUT TOKENS"
    );
    for r in &rows {
        println!(
            "{:<10}  {:<22} {:<9} {:<24} {:>9} {:>9} {:>9} {:>13}",
            r.date,
            safe(&r.key),
            r.fingerprint,
            safe(&r.model),
            r.requests,
            r.served,
            r.refused,
            r.input_tokens
        );
    }
    let (req, srv, rfs, tok) = rows.iter().fold((0, 0, 0, 0), |(r, s, f, t), x| {
        (
            r + x.requests,
            s + x.served,
            f + x.refused,
            t + x.input_tokens,
        )
    });
    println!(
        "{:<10}  {:<22} {:<9} {:<24} {req:>9} {srv:>9} {rfs:>9} {tok:>13}",
        "total", "", "", ""
    );
    ExitCode::SUCCESS
}
