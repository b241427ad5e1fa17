//! The end of a run, for people: the summary of `run-report.json` on stdout, what stopped the
//! run and how to resume it on stderr, and the exit code. Shared by `keyturn seed` and
//! `keyturn demo`.

#![allow(clippy::print_stdout, clippy::print_stderr)] // the binary's UI

use std::process::ExitCode;

use keyturn_core::ErrorKind;
use keyturn_services::ServiceErrorKind;
use keyturn_store::checkpoint::CheckpointError;

use crate::run::{RunReport, SeedErrorKind, Stop};
use crate::term::safe;

/// What became of a command, in the terms DESIGN.md and docs/CLI.md promise exit codes for.
/// Every error kind a command can end with maps to one of these (the `From` impls below), and
/// [`exit_code`] is the one place a number is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Finished.
    Done,
    /// The user must change something first: usage or configuration.
    Usage,
    /// Every key's quota for a needed model is used up for the day (resumable).
    DayUsedUp,
    /// Every key was rejected (dead keys).
    KeysDead,
    /// Ctrl-C or SIGTERM (resumable).
    Interrupted,
    /// Anything else.
    Failed,
}

/// The exit code of an outcome: 0 done, 2 usage or configuration, 3 day used up, 4 every key
/// dead, 130 interrupted, 1 anything else.
pub const fn exit_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Done => 0,
        Outcome::Usage => 2,
        Outcome::DayUsedUp => 3,
        Outcome::KeysDead => 4,
        Outcome::Interrupted => 130,
        Outcome::Failed => 1,
    }
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> Self {
        Self::from(exit_code(outcome))
    }
}

impl From<ErrorKind> for Outcome {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::ExhaustedForDay => Self::DayUsedUp,
            ErrorKind::KeysDead => Self::KeysDead,
            _ => Self::Failed,
        }
    }
}

impl From<ServiceErrorKind> for Outcome {
    fn from(kind: ServiceErrorKind) -> Self {
        match kind {
            ServiceErrorKind::Configuration => Self::Usage,
            _ => Self::Failed,
        }
    }
}

impl From<SeedErrorKind> for Outcome {
    fn from(kind: SeedErrorKind) -> Self {
        match kind {
            SeedErrorKind::Usage => Self::Usage,
            _ => Self::Failed,
        }
    }
}

impl From<&CheckpointError> for Outcome {
    fn from(e: &CheckpointError) -> Self {
        if e.is_unusable() {
            Self::Usage
        } else {
            Self::Failed
        }
    }
}

impl From<&Stop> for Outcome {
    fn from(stop: &Stop) -> Self {
        match stop {
            Stop::Done => Self::Done,
            Stop::Failed { .. } => Self::Failed,
            Stop::ExhaustedForDay { .. } => Self::DayUsedUp,
            Stop::AllKeysInvalid { .. } => Self::KeysDead,
            Stop::Interrupted => Self::Interrupted,
        }
    }
}

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
    Outcome::from(&report.result).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_the_exit_code_design_md_promises() {
        for (outcome, code) in [
            (Outcome::Done, 0),
            (Outcome::Failed, 1),
            (Outcome::Usage, 2),
            (Outcome::DayUsedUp, 3),
            (Outcome::KeysDead, 4),
            (Outcome::Interrupted, 130),
        ] {
            assert_eq!(exit_code(outcome), code, "{outcome:?}");
        }
    }

    #[test]
    fn error_kinds_map_to_their_outcomes() {
        assert_eq!(
            Outcome::from(ErrorKind::ExhaustedForDay),
            Outcome::DayUsedUp
        );
        assert_eq!(Outcome::from(ErrorKind::KeysDead), Outcome::KeysDead);
        for k in [
            ErrorKind::Throttled,
            ErrorKind::Permanent,
            ErrorKind::Unavailable,
        ] {
            assert_eq!(Outcome::from(k), Outcome::Failed, "{k:?}");
        }
        assert_eq!(
            Outcome::from(ServiceErrorKind::Configuration),
            Outcome::Usage
        );
        assert_eq!(Outcome::from(ServiceErrorKind::Failed), Outcome::Failed);
        assert_eq!(Outcome::from(SeedErrorKind::Usage), Outcome::Usage);
        assert_eq!(Outcome::from(SeedErrorKind::Failed), Outcome::Failed);
        let stops = [
            (Stop::Done, 0),
            (Stop::Failed { episodes: 1 }, 1),
            (
                Stop::ExhaustedForDay {
                    model: "m".into(),
                    until_ms: 0,
                },
                3,
            ),
            (
                Stop::AllKeysInvalid {
                    detail: String::new(),
                },
                4,
            ),
            (Stop::Interrupted, 130),
        ];
        for (stop, code) in stops {
            assert_eq!(exit_code(Outcome::from(&stop)), code, "{stop:?}");
            assert_eq!(stop.exit_code(), code, "{stop:?}");
        }
    }

    #[test]
    fn a_seed_error_is_a_usage_error_only_when_the_user_must_act() {
        use crate::outdir::OutDirError;
        use crate::run::SeedError;
        let code = |e: SeedError| exit_code(e.kind().into());
        let corrupt = CheckpointError::Corrupt {
            path: "checkpoint.json".into(),
            detail: "truncated".into(),
            newest_backup: None,
        };
        assert_eq!(code(corrupt.into()), 2);
        let disk = CheckpointError::Io {
            path: "checkpoint.json".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(code(disk.into()), 1);
        let held = OutDirError::Locked {
            path: "out".into(),
            pid: Some(7),
        };
        assert_eq!(code(held.into()), 2);
        assert_eq!(code(SeedError::Input("input x does not exist".into())), 2);
        let mkdir = SeedError::CreateDir {
            path: "out/episodes".into(),
            source: std::io::Error::other("read-only"),
        };
        assert_eq!(code(mkdir), 1);
    }
}
