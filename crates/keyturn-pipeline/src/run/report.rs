//! What a run reports: `run-report.json` ([`RunReport`]), its totals, the files it passed over
//! and why it stopped ([`Stop`], which decides the exit code).

use std::collections::BTreeMap;
use std::path::Path;

use keyturn_gemini::KeyCallStats;
use serde::Serialize;

use super::SeedError;

/// A file that was not processed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Why the run stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "stop", rename_all = "kebab-case")]
pub enum Stop {
    /// Every episode that could be read is done.
    Done,
    /// Some episodes failed for reasons other than quota.
    Failed {
        /// How many.
        episodes: usize,
    },
    /// Every key's quota for a needed model is used up for the day.
    ExhaustedForDay {
        /// The model.
        model: String,
        /// When capacity returns (Unix ms).
        until_ms: i64,
    },
    /// Every key was rejected.
    AllKeysInvalid {
        /// Labels and reasons.
        detail: String,
    },
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl Stop {
    /// The exit code DESIGN.md promises.
    pub fn exit_code(&self) -> u8 {
        crate::report::exit_code(self.into())
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Transcripts found.
    pub found: usize,
    /// Finished in an earlier run (skipped now).
    pub already_done: usize,
    /// Finished in this run.
    pub processed: usize,
    /// Could not be read as transcripts (links not followed included).
    pub skipped: usize,
    /// Symbolic links not followed (folder links, links out of the input folder, broken links).
    pub links_skipped: usize,
    /// Finished in an earlier run, but their episode file was missing or had changed: redone.
    pub redone: usize,
    /// Failed.
    pub failed: usize,
    /// Chunks extracted.
    pub chunks: usize,
    /// Chunks whose extraction was not valid JSON (their episode kept the rest).
    pub invalid_extractions: usize,
    /// Entities (per episode, before merging across episodes).
    pub entities: usize,
    /// Relationships.
    pub relationships: usize,
    /// Quotes.
    pub quotes: usize,
}

/// `run-report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339).
    pub finished_at: String,
    /// Duration.
    pub duration_ms: u64,
    /// Why it stopped.
    pub result: Stop,
    /// Totals.
    pub items: Counts,
    /// Episode processing times (ms), by episode id.
    pub episode_ms: BTreeMap<String, u64>,
    /// Files skipped, with reasons.
    pub skipped: Vec<Skipped>,
    /// Episodes finished in an earlier run and redone in this one, with why.
    pub redone: Vec<Skipped>,
    /// Episodes failed, with errors.
    pub failed: Vec<Skipped>,
    /// Graph size after the run.
    pub graph: BTreeMap<String, usize>,
    /// Per key (label and fingerprint): requests, outcomes, tokens.
    pub keys: Vec<KeyCallStats>,
    /// 429s by kind, all keys.
    pub throttled: BTreeMap<String, u64>,
    /// LLM cache hits and misses.
    pub cache: BTreeMap<String, u64>,
    /// Where state lives.
    pub state: String,
    /// Batch mode: jobs per project and state, items, tokens and the estimated cost against an
    /// interactive run (absent in an interactive run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<crate::batch::BatchReport>,
}
impl RunReport {
    /// Writes the report as `run-report.json` in `out`, atomically.
    pub(super) fn write(&self, out: &Path) -> Result<(), SeedError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| SeedError::Encode {
            what: "the run report",
            source,
        })?;
        keyturn_store::write_atomic(&out.join("run-report.json"), &bytes, 0o644)?;
        Ok(())
    }
}

/// 429s by kind, summed over every key.
pub(super) fn throttled(keys: &[KeyCallStats]) -> BTreeMap<String, u64> {
    let mut throttled: BTreeMap<String, u64> = BTreeMap::new();
    for k in keys {
        for (kind, n) in &k.throttled {
            *throttled.entry(kind.clone()).or_default() += n;
        }
    }
    throttled
}
