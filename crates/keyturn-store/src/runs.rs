//! Seed runs in progress, as `keyturn status` shows them. A run keeps a small record in
//! `<state dir>/runs/`, whichever backend holds the quota: refreshed while it runs (with the work
//! it has left), removed when it ends. A record not refreshed for [`STALE_AFTER_MS`] belongs to a
//! run that died without cleaning up, and is not shown.
//!
//! The folder is the state folder's own (private, like the state file). What is read back from
//! it is still outside input: only regular files named like a record are read, each up to
//! [`MAX_RECORD_BYTES`], at most [`MAX_RECORDS`] of them, and one that does not parse is skipped.

use std::io::Read;
use std::path::{Path, PathBuf};

use keyturn_core::StoreError;
use keyturn_core::plan::Work;
use serde::{Deserialize, Serialize};

use crate::file::{ensure_private_dir, write_atomic};

/// The folder, inside the state folder.
pub const RUNS_DIR: &str = "runs";
/// A record older than this is a dead run's.
pub const STALE_AFTER_MS: i64 = 60_000;
/// The largest record read.
pub const MAX_RECORD_BYTES: u64 = 64 << 10;
/// The most records read.
pub const MAX_RECORDS: usize = 64;

/// One run in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's process.
    pub pid: u32,
    /// The output folder it writes.
    pub out: PathBuf,
    /// When it started (ms since the epoch, the pool's clock).
    pub started_ms: i64,
    /// When this record was written.
    pub updated_ms: i64,
    /// Episodes finished (done, skipped or failed) of those it set out to do.
    pub episodes_done: u64,
    /// Episodes it set out to do.
    pub episodes_total: u64,
    /// The requests and tokens it still has to send, per model.
    pub left: Vec<Work>,
    /// A `seed --batch` run's jobs and items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchView>,
}

/// Where a `seed --batch` run's jobs stand: what `keyturn status` shows of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchView {
    /// When this was seen (ms since the epoch, the pool's clock).
    pub at_ms: i64,
    /// Jobs by project, then by state (`pending`, `running`, `succeeded`, …).
    pub jobs: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// Requests answered so far.
    pub items_done: u64,
    /// Requests answered, failed, in live jobs and still queued: the run's total as known now.
    pub items_total: u64,
    /// Estimated cost of the tokens answered so far at the batch price (USD).
    pub estimated_cost_usd: Option<f64>,
    /// The same tokens at the interactive price.
    pub interactive_cost_usd: Option<f64>,
}

impl RunRecord {
    fn file_name(&self) -> String {
        format!("{}-{}.json", self.pid, self.started_ms)
    }
}

/// The last `seed --batch` run's record, kept when it ends (beside the live records, under a
/// name [`RunBoard::live`] does not read).
pub const LAST_BATCH: &str = "last-batch.json";

/// The records of one state folder.
#[derive(Debug, Clone)]
pub struct RunBoard {
    dir: PathBuf,
}

impl RunBoard {
    /// The board of the state folder `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(RUNS_DIR),
        }
    }

    /// Writes (or rewrites) `run`'s record, atomically.
    pub fn publish(&self, run: &RunRecord) -> Result<(), StoreError> {
        ensure_private_dir(&self.dir)?;
        let path = self.dir.join(run.file_name());
        let bytes = serde_json::to_vec_pretty(run).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        write_atomic(&path, &bytes, 0o600)
    }

    /// Removes `run`'s record; one already gone is fine.
    pub fn remove(&self, run: &RunRecord) -> Result<(), StoreError> {
        let path = self.dir.join(run.file_name());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Keeps `run` as the last batch run's record (atomically, replacing the one before).
    pub fn keep_last_batch(&self, run: &RunRecord) -> Result<(), StoreError> {
        ensure_private_dir(&self.dir)?;
        let path = self.dir.join(LAST_BATCH);
        let bytes = serde_json::to_vec_pretty(run).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        write_atomic(&path, &bytes, 0o600)
    }

    /// The last batch run's record, if one was kept (read as carefully as the live ones).
    pub fn last_batch(&self) -> Option<RunRecord> {
        read_record(&self.dir.join(LAST_BATCH)).filter(|r| r.batch.is_some())
    }

    /// The runs whose records were refreshed within [`STALE_AFTER_MS`] of `now_ms`, oldest
    /// first. A missing folder means no run.
    pub fn live(&self, now_ms: i64) -> Vec<RunRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut runs: Vec<RunRecord> = entries
            .filter_map(Result::ok)
            .filter(|e| is_record_name(&e.file_name().to_string_lossy()))
            .take(MAX_RECORDS)
            .filter_map(|e| read_record(&e.path()))
            .filter(|r| now_ms.saturating_sub(r.updated_ms) <= STALE_AFTER_MS && alive(r.pid))
            .collect();
        runs.sort_by_key(|r| (r.started_ms, r.pid));
        runs
    }
}

/// Whether process `pid` exists, where the system says (`/proc`); elsewhere the record's age
/// alone decides.
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// `<pid>-<started_ms>.json`, digits only: nothing else in the folder is read.
fn is_record_name(name: &str) -> bool {
    name.strip_suffix(".json")
        .and_then(|stem| stem.split_once('-'))
        .is_some_and(|(pid, ms)| {
            [pid, ms]
                .iter()
                .all(|s| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// A regular file (not a link, a pipe or a device), at most [`MAX_RECORD_BYTES`], that parses.
fn read_record(path: &Path) -> Option<RunRecord> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() || meta.len() > MAX_RECORD_BYTES {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A record of this very process, which is alive.
    fn run(updated_ms: i64) -> RunRecord {
        let pid = std::process::id();
        RunRecord {
            pid,
            out: PathBuf::from("/tmp/out"),
            started_ms: 1_000,
            updated_ms,
            episodes_done: 3,
            episodes_total: 10,
            left: vec![Work {
                model: "gemini-2.5-flash".into(),
                requests: 70,
                input_tokens: 70_000,
                output_tokens: 0,
            }],
            batch: None,
        }
    }

    #[test]
    fn the_last_batch_run_is_kept_apart_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let board = RunBoard::new(dir.path());
        assert_eq!(board.last_batch(), None);
        let mut r = run(5_000);
        board.keep_last_batch(&r).unwrap();
        assert_eq!(
            board.last_batch(),
            None,
            "a record without jobs is no batch run"
        );
        r.batch = Some(BatchView {
            at_ms: 5_000,
            items_done: 4,
            items_total: 9,
            ..BatchView::default()
        });
        board.keep_last_batch(&r).unwrap();
        assert_eq!(board.last_batch(), Some(r));
        assert!(board.live(5_000).is_empty(), "not a live run");
    }

    #[test]
    fn a_published_run_is_live_until_removed_or_stale() {
        let dir = tempfile::tempdir().unwrap();
        let board = RunBoard::new(dir.path());
        assert!(board.live(0).is_empty(), "no folder, no run");
        let r = run(10_000);
        board.publish(&r).unwrap();
        assert_eq!(board.live(10_000), vec![r.clone()]);
        assert!(
            board.live(10_000 + STALE_AFTER_MS + 1).is_empty(),
            "a run that stopped refreshing its record died"
        );
        board.remove(&r).unwrap();
        board.remove(&r).unwrap();
        assert!(board.live(10_000).is_empty());
    }

    #[test]
    fn only_regular_small_well_named_records_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let board = RunBoard::new(dir.path());
        board.publish(&run(5_000)).unwrap();
        let runs = dir.path().join(RUNS_DIR);
        let name = format!("{}-1000.json", std::process::id());
        let good = std::fs::read(runs.join(&name)).unwrap();
        // A record under another name, a link to one, a huge one and a broken one.
        std::fs::write(runs.join("notes.json"), &good).unwrap();
        std::os::unix::fs::symlink(runs.join(&name), runs.join("2-1000.json")).unwrap();
        let mut huge = good.clone();
        huge.resize(MAX_RECORD_BYTES as usize + 10, b' ');
        std::fs::write(runs.join("3-1000.json"), huge).unwrap();
        std::fs::write(runs.join("4-1000.json"), b"{\"pid\": ").unwrap();
        let live = board.live(5_000);
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].pid, std::process::id());
    }

    #[test]
    fn a_record_of_a_process_that_is_gone_is_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let board = RunBoard::new(dir.path());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        board.publish(&RunRecord { pid, ..run(5_000) }).unwrap();
        assert!(board.live(5_000).is_empty(), "pid {pid} has exited");
    }

    #[test]
    fn record_names_are_digits_dash_digits_json() {
        assert!(is_record_name("12-1700000000000.json"));
        for bad in [
            "12.json",
            "-1.json",
            "1-.json",
            "../1-2.json",
            "1-2.json.tmp",
            "a-1.json",
        ] {
            assert!(!is_record_name(bad), "{bad}");
        }
    }
}
