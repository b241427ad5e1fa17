//! The end of a run, for people: the summary of `run-report.json` on stdout, what stopped the
//! run and how to resume it on stderr, and the exit code. Shared by `keyturn seed` and
//! `keyturn demo`.

#![allow(clippy::print_stdout, clippy::print_stderr)] // the binary's UI

use std::process::ExitCode;

use crate::run::{RunReport, Stop};
use crate::term::safe;

/// A moment for people: Pacific time (the quota day's zone), then the local time.
pub fn when(ms: i64) -> String {
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
