//! The pipeline's checkpoints: which work items finished (with the content hash they finished
//! with), and the rotation state at each checkpoint, written atomically. On resume it answers
//! "what is left": items never finished, and items whose content changed since. Each record may
//! carry the SHA-256 of the output file the item produced, so that a caller can check the output
//! is still what was written before trusting the record.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use keyturn_core::{SCHEMA_VERSION, Snapshot, StoreError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::file::{ensure_private_dir, write_atomic};

/// The checkpoint file's name inside the checkpoint folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// Where timestamped backups go.
pub const BACKUP_DIR: &str = "backups";

/// How many backups a run keeps (the newest); `keyturn state prune --keep N` prunes further.
pub const KEEP_BACKUPS: usize = 10;

/// One finished item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Content hash the item finished with.
    pub hash: String,
    /// When it finished (Unix ms).
    pub finished_at_ms: i64,
    /// SHA-256 (hex) of the output file written for it. Absent in checkpoints written before
    /// keyturn recorded it: the caller then checks the output some other way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
}

/// Why a checkpoint cannot be used. Never about the quota state: the remedies named here leave
/// it alone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The checkpoint does not parse (truncated, edited).
    #[error(
        "checkpoint {} is not a valid keyturn checkpoint ({detail}); it was left untouched, and the quota state is not affected. {}",
        path.display(),
        corrupt_remedy(path, newest_backup.as_deref())
    )]
    Corrupt {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
        /// The newest backup of it, if there is one.
        newest_backup: Option<PathBuf>,
    },
    /// Written by a newer keyturn.
    #[error(
        "checkpoint {} has schema {found}, newer than this keyturn understands ({supported}); it was left untouched: upgrade keyturn, or give this run another output folder",
        path.display()
    )]
    NewerSchema {
        /// The checkpoint file.
        path: PathBuf,
        /// Schema found.
        found: u32,
        /// Newest supported.
        supported: u32,
    },
    /// Reading or writing the checkpoint failed.
    #[error("checkpoint {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Encoding failed.
    #[error("checkpoint {}: {detail}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

fn corrupt_remedy(path: &Path, backup: Option<&Path>) -> String {
    match backup {
        Some(b) => format!(
            "To resume from the newest backup (episodes finished after it are redone): cp '{}' '{}'; to redo every episode instead: mv '{}' '{}.broken'",
            b.display(),
            path.display(),
            path.display(),
            path.display()
        ),
        None => format!(
            "There is no backup of it: move it aside (mv '{}' '{}.broken') and rerun; every episode is then redone",
            path.display(),
            path.display()
        ),
    }
}

impl CheckpointError {
    /// True when the checkpoint itself is unusable (a user must act), not a passing I/O failure.
    pub fn is_unusable(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::NewerSchema { .. })
    }
}

impl From<StoreError> for CheckpointError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io { path, source } => Self::Io { path, source },
            other => Self::Encode {
                path: PathBuf::new(),
                detail: other.to_string(),
            },
        }
    }
}

/// What a checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Schema version.
    pub schema: u32,
    /// Last update (Unix ms).
    pub updated_at_ms: i64,
    /// Finished items by id.
    pub items: BTreeMap<String, ItemRecord>,
    /// The rotation state at the last checkpoint (keys by fingerprint only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Snapshot>,
    /// Batch jobs in flight, by the display name keyturn gave each (`keyturn seed --batch`).
    /// Absent in checkpoints of interactive runs and of keyturn before batch mode.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub batches: BTreeMap<String, BatchRecord>,
}

/// A batch job the run is waiting for, recorded before it is submitted and again the moment
/// Gemini accepts it, so a run killed at any point finds it again: by its `name`, or — killed
/// between submit and this record — by its display name in the project's job list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// `batches/…` once Gemini accepted the job; `None` while submitting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The project that owns the job (only its keys can poll it).
    pub project: String,
    /// Fingerprint of the key that submitted it.
    pub key_fingerprint: String,
    /// Model.
    pub model: String,
    /// The episodes it carries, in request order.
    pub episodes: Vec<BatchEpisode>,
    /// When it was submitted (Unix ms).
    pub submitted_at_ms: i64,
}

/// An episode inside a batch job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEpisode {
    /// The item's id.
    pub id: String,
    /// Its content hash when submitted.
    pub hash: String,
    /// How many requests (chunks) it has in the job.
    pub requests: usize,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self {
            schema: SCHEMA_VERSION,
            updated_at_ms: 0,
            items: BTreeMap::new(),
            rotation: None,
            batches: BTreeMap::new(),
        }
    }
}

/// Checkpoints of one pipeline output.
#[derive(Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    path: PathBuf,
    data: Mutex<Checkpoint>,
}

impl CheckpointStore {
    /// Opens the checkpoint folder, reading the checkpoint if there is one. A corrupt or newer one
    /// is an error naming the checkpoint and what to do: it is never overwritten silently.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, CheckpointError> {
        let dir = dir.as_ref().to_owned();
        ensure_private_dir(&dir)?;
        let path = dir.join(CHECKPOINT_FILE);
        let data = match fs::read(&path) {
            Ok(bytes) => {
                let cp: Checkpoint = match serde_json::from_slice(&bytes) {
                    Ok(cp) => cp,
                    Err(e) => {
                        return Err(CheckpointError::Corrupt {
                            newest_backup: list_backups(&dir.join(BACKUP_DIR))
                                .ok()
                                .and_then(|mut b| b.pop()),
                            path,
                            detail: e.to_string(),
                        });
                    }
                };
                if cp.schema > SCHEMA_VERSION {
                    return Err(CheckpointError::NewerSchema {
                        path,
                        found: cp.schema,
                        supported: SCHEMA_VERSION,
                    });
                }
                cp
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        Ok(Self {
            dir,
            path,
            data: Mutex::new(data),
        })
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `id` finished with this content hash.
    pub fn is_finished(&self, id: &str, hash: &str) -> bool {
        self.data
            .lock()
            .items
            .get(id)
            .is_some_and(|r| r.hash == hash)
    }

    /// Of these (id, hash) items, the ids still to do: never finished, or finished with another
    /// content hash.
    pub fn pending<'a>(&self, items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
        let data = self.data.lock();
        items
            .into_iter()
            .filter(|(id, hash)| data.items.get(*id).is_none_or(|r| r.hash != *hash))
            .map(|(id, _)| id.to_owned())
            .collect()
    }

    /// Number of finished items.
    pub fn finished(&self) -> usize {
        self.data.lock().items.len()
    }

    /// A copy of the whole checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        self.data.lock().clone()
    }

    /// The rotation state saved with the last checkpoint.
    pub fn rotation(&self) -> Option<Snapshot> {
        self.data.lock().rotation.clone()
    }

    /// Records a finished item, the SHA-256 of the output written for it, and the rotation state,
    /// durably, before returning.
    pub fn record_finished(
        &self,
        id: &str,
        hash: &str,
        output_sha256: Option<&str>,
        now_ms: i64,
        rotation: Option<Snapshot>,
    ) -> Result<(), CheckpointError> {
        let bytes = {
            let mut data = self.data.lock();
            data.items.insert(
                id.to_owned(),
                ItemRecord {
                    hash: hash.to_owned(),
                    finished_at_ms: now_ms,
                    output_sha256: output_sha256.map(str::to_owned),
                },
            );
            if rotation.is_some() {
                data.rotation = rotation;
            }
            data.updated_at_ms = now_ms;
            self.encode(&data)?
        };
        Ok(write_atomic(&self.path, &bytes, 0o600)?)
    }

    /// Records output hashes for items that finished without one (checkpoints from before they
    /// were recorded), in one write. Ids not finished are passed over.
    pub fn record_outputs(
        &self,
        outputs: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), CheckpointError> {
        if outputs.is_empty() {
            return Ok(());
        }
        let bytes = {
            let mut data = self.data.lock();
            for (id, sha) in outputs {
                if let Some(r) = data.items.get_mut(id) {
                    r.output_sha256 = Some(sha.clone());
                }
            }
            data.updated_at_ms = now_ms;
            self.encode(&data)?
        };
        Ok(write_atomic(&self.path, &bytes, 0o600)?)
    }

    /// Saves the rotation state alone (at shutdown).
    pub fn save_rotation(&self, now_ms: i64, rotation: Snapshot) -> Result<(), CheckpointError> {
        let bytes = {
            let mut data = self.data.lock();
            data.rotation = Some(rotation);
            data.updated_at_ms = now_ms;
            self.encode(&data)?
        };
        Ok(write_atomic(&self.path, &bytes, 0o600)?)
    }

    /// The batch jobs in flight, by display name.
    pub fn batches(&self) -> BTreeMap<String, BatchRecord> {
        self.data.lock().batches.clone()
    }

    /// Records a batch job under its display name, durably, before returning: before it is
    /// submitted (no name yet) and again once Gemini accepted it (with its name).
    pub fn record_batch(
        &self,
        display_name: &str,
        record: BatchRecord,
        now_ms: i64,
    ) -> Result<(), CheckpointError> {
        self.change(now_ms, |data| {
            data.batches.insert(display_name.to_owned(), record);
        })
    }

    /// Forgets a batch job (finished, refused, failed or gone).
    pub fn forget_batch(&self, display_name: &str, now_ms: i64) -> Result<(), CheckpointError> {
        self.change(now_ms, |data| {
            data.batches.remove(display_name);
        })
    }

    fn change(&self, now_ms: i64, f: impl FnOnce(&mut Checkpoint)) -> Result<(), CheckpointError> {
        let bytes = {
            let mut data = self.data.lock();
            f(&mut data);
            data.updated_at_ms = now_ms;
            self.encode(&data)?
        };
        Ok(write_atomic(&self.path, &bytes, 0o600)?)
    }

    /// Forgets an item (its output is gone, say).
    pub fn forget(&self, id: &str, now_ms: i64) -> Result<(), CheckpointError> {
        let bytes = {
            let mut data = self.data.lock();
            if data.items.remove(id).is_none() {
                return Ok(());
            }
            data.updated_at_ms = now_ms;
            self.encode(&data)?
        };
        Ok(write_atomic(&self.path, &bytes, 0o600)?)
    }

    fn encode(&self, data: &Checkpoint) -> Result<Vec<u8>, CheckpointError> {
        serde_json::to_vec(data).map_err(|e| CheckpointError::Encode {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    /// Copies the current checkpoint to `backups/checkpoint-<ms>.json` (at the start of a run).
    pub fn backup(&self, now_ms: i64) -> Result<Option<PathBuf>, CheckpointError> {
        if !self.path.exists() {
            return Ok(None);
        }
        let dir = self.dir.join(BACKUP_DIR);
        ensure_private_dir(&dir)?;
        let to = dir.join(format!("checkpoint-{now_ms}.json"));
        let bytes = fs::read(&self.path).map_err(|source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        })?;
        write_atomic(&to, &bytes, 0o600)?;
        Ok(Some(to))
    }

    /// Backups, oldest first.
    pub fn backups(&self) -> Result<Vec<PathBuf>, CheckpointError> {
        list_backups(&self.dir.join(BACKUP_DIR))
    }

    /// Deletes all but the newest `keep` backups; returns what was deleted.
    pub fn prune(&self, keep: usize) -> Result<Vec<PathBuf>, CheckpointError> {
        let all = self.backups()?;
        let cut = all.len().saturating_sub(keep);
        let mut gone = Vec::new();
        for p in all.into_iter().take(cut) {
            fs::remove_file(&p).map_err(|source| CheckpointError::Io {
                path: p.clone(),
                source,
            })?;
            gone.push(p);
        }
        Ok(gone)
    }
}

fn list_backups(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut out: Vec<(i64, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ms = name
                .strip_prefix("checkpoint-")?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some((ms, e.path()))
        })
        .collect();
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_pending_sees_changed_content() {
        let dir = tempfile::tempdir().unwrap();
        let cp = CheckpointStore::open(dir.path()).unwrap();
        cp.record_finished("ep1", "aaa", Some("out1"), 1, None)
            .unwrap();
        cp.record_finished("ep2", "bbb", None, 2, None).unwrap();
        drop(cp);
        let cp = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(cp.finished(), 2);
        let left = cp.pending([("ep1", "aaa"), ("ep2", "CHANGED"), ("ep3", "ccc")]);
        assert_eq!(left, vec!["ep2".to_owned(), "ep3".to_owned()]);
        let c = cp.checkpoint();
        assert_eq!(c.items["ep1"].output_sha256.as_deref(), Some("out1"));
        assert_eq!(c.items["ep2"].output_sha256, None);
        cp.record_outputs(
            &[("ep2".into(), "out2".into()), ("nope".into(), "x".into())],
            3,
        )
        .unwrap();
        drop(cp);
        let c = CheckpointStore::open(dir.path()).unwrap().checkpoint();
        assert_eq!(c.items["ep2"].output_sha256.as_deref(), Some("out2"));
        assert!(!c.items.contains_key("nope"));
    }

    #[test]
    fn checkpoints_from_before_output_hashes_still_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(CHECKPOINT_FILE),
            br#"{"schema":1,"updated_at_ms":5,"items":{"a.vtt":{"hash":"h","finished_at_ms":5}}}"#,
        )
        .unwrap();
        let cp = CheckpointStore::open(dir.path()).unwrap();
        assert!(cp.is_finished("a.vtt", "h"));
        assert_eq!(cp.checkpoint().items["a.vtt"].output_sha256, None);
    }

    #[test]
    fn batch_jobs_are_recorded_durably_and_old_checkpoints_have_none() {
        let dir = tempfile::tempdir().unwrap();
        // A checkpoint written before batch mode (and by an interactive run) loads with no jobs
        // and keeps its items.
        fs::write(
            dir.path().join(CHECKPOINT_FILE),
            br#"{"schema":1,"updated_at_ms":5,"items":{"a.vtt":{"hash":"h","finished_at_ms":5,"output_sha256":"o"}}}"#,
        )
        .unwrap();
        let cp = CheckpointStore::open(dir.path()).unwrap();
        assert!(cp.batches().is_empty());
        assert!(cp.is_finished("a.vtt", "h"));
        let mut rec = BatchRecord {
            name: None,
            project: "p1".into(),
            key_fingerprint: "abcd1234".into(),
            model: "gemini-2.5-flash".into(),
            episodes: vec![BatchEpisode {
                id: "b.vtt".into(),
                hash: "hb".into(),
                requests: 3,
            }],
            submitted_at_ms: 7,
        };
        cp.record_batch("kt-1", rec.clone(), 7).unwrap();
        drop(cp);
        let cp = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(cp.batches()["kt-1"], rec);
        rec.name = Some("batches/x1".into());
        cp.record_batch("kt-1", rec.clone(), 8).unwrap();
        cp.record_finished("c.vtt", "hc", None, 9, None).unwrap();
        drop(cp);
        let cp = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(cp.batches()["kt-1"].name.as_deref(), Some("batches/x1"));
        assert_eq!(cp.finished(), 2);
        cp.forget_batch("kt-1", 10).unwrap();
        drop(cp);
        let text = fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert!(!text.contains("batches"), "no jobs, no field: {text}");
    }

    #[test]
    fn corrupt_checkpoints_are_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CHECKPOINT_FILE);
        fs::write(&p, b"{\"schema\": 1, \"items\": {").unwrap();
        let e = CheckpointStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("checkpoint.json") && msg.contains("mv "),
            "{msg}"
        );
        // Not the state file, and no advice that would wipe the quota state.
        assert!(
            !msg.contains("state file") && !msg.contains("state reset"),
            "{msg}"
        );
        assert_eq!(fs::read(&p).unwrap(), b"{\"schema\": 1, \"items\": {");
        // With a backup, the advice is to put the newest one back.
        let bak = dir.path().join(BACKUP_DIR);
        fs::create_dir_all(&bak).unwrap();
        fs::write(bak.join("checkpoint-10.json"), b"{}").unwrap();
        fs::write(bak.join("checkpoint-20.json"), b"{}").unwrap();
        let msg = CheckpointStore::open(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("cp '") && msg.contains("checkpoint-20.json"),
            "{msg}"
        );
    }

    #[test]
    fn backups_and_prune_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cp = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(cp.backup(5).unwrap(), None);
        cp.record_finished("a", "h", None, 1, None).unwrap();
        for t in [10, 30, 20] {
            cp.backup(t).unwrap();
        }
        let gone = cp.prune(1).unwrap();
        assert_eq!(gone.len(), 2);
        let left = cp.backups().unwrap();
        assert!(left[0].ends_with("checkpoint-30.json"), "{left:?}");
    }
}
