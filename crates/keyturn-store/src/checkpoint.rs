//! The pipeline's checkpoints: which work items finished (with the content hash they finished
//! with), and the rotation state at each checkpoint, written atomically. On resume it answers
//! "what is left": items never finished, and items whose content changed since.

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

/// One finished item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Content hash the item finished with.
    pub hash: String,
    /// When it finished (Unix ms).
    pub finished_at_ms: i64,
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
}

impl Default for Checkpoint {
    fn default() -> Self {
        Self {
            schema: SCHEMA_VERSION,
            updated_at_ms: 0,
            items: BTreeMap::new(),
            rotation: None,
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
    /// is an error: it is never overwritten silently.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_owned();
        ensure_private_dir(&dir)?;
        let path = dir.join(CHECKPOINT_FILE);
        let data = match fs::read(&path) {
            Ok(bytes) => {
                let cp: Checkpoint =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?;
                if cp.schema > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        path,
                        found: cp.schema,
                        supported: SCHEMA_VERSION,
                    });
                }
                cp
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
            Err(source) => return Err(StoreError::Io { path, source }),
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

    /// Records a finished item (and the rotation state with it), durably, before returning.
    pub fn record_finished(
        &self,
        id: &str,
        hash: &str,
        now_ms: i64,
        rotation: Option<Snapshot>,
    ) -> Result<(), StoreError> {
        let bytes = {
            let mut data = self.data.lock();
            data.items.insert(
                id.to_owned(),
                ItemRecord {
                    hash: hash.to_owned(),
                    finished_at_ms: now_ms,
                },
            );
            if rotation.is_some() {
                data.rotation = rotation;
            }
            data.updated_at_ms = now_ms;
            self.encode(&data)?
        };
        write_atomic(&self.path, &bytes, 0o600)
    }

    /// Saves the rotation state alone (at shutdown).
    pub fn save_rotation(&self, now_ms: i64, rotation: Snapshot) -> Result<(), StoreError> {
        let bytes = {
            let mut data = self.data.lock();
            data.rotation = Some(rotation);
            data.updated_at_ms = now_ms;
            self.encode(&data)?
        };
        write_atomic(&self.path, &bytes, 0o600)
    }

    /// Forgets an item (its output is gone, say).
    pub fn forget(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        let bytes = {
            let mut data = self.data.lock();
            if data.items.remove(id).is_none() {
                return Ok(());
            }
            data.updated_at_ms = now_ms;
            self.encode(&data)?
        };
        write_atomic(&self.path, &bytes, 0o600)
    }

    fn encode(&self, data: &Checkpoint) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(data).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    /// Copies the current checkpoint to `backups/checkpoint-<ms>.json` (at the start of a run).
    pub fn backup(&self, now_ms: i64) -> Result<Option<PathBuf>, StoreError> {
        if !self.path.exists() {
            return Ok(None);
        }
        let dir = self.dir.join(BACKUP_DIR);
        ensure_private_dir(&dir)?;
        let to = dir.join(format!("checkpoint-{now_ms}.json"));
        let bytes = fs::read(&self.path).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        write_atomic(&to, &bytes, 0o600)?;
        Ok(Some(to))
    }

    /// Backups, oldest first.
    pub fn backups(&self) -> Result<Vec<PathBuf>, StoreError> {
        list_backups(&self.dir.join(BACKUP_DIR))
    }

    /// Deletes all but the newest `keep` backups; returns what was deleted.
    pub fn prune(&self, keep: usize) -> Result<Vec<PathBuf>, StoreError> {
        let all = self.backups()?;
        let cut = all.len().saturating_sub(keep);
        let mut gone = Vec::new();
        for p in all.into_iter().take(cut) {
            fs::remove_file(&p).map_err(|source| StoreError::Io {
                path: p.clone(),
                source,
            })?;
            gone.push(p);
        }
        Ok(gone)
    }
}

fn list_backups(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StoreError::Io {
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
        cp.record_finished("ep1", "aaa", 1, None).unwrap();
        cp.record_finished("ep2", "bbb", 2, None).unwrap();
        drop(cp);
        let cp = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(cp.finished(), 2);
        let left = cp.pending([("ep1", "aaa"), ("ep2", "CHANGED"), ("ep3", "ccc")]);
        assert_eq!(left, vec!["ep2".to_owned(), "ep3".to_owned()]);
    }

    #[test]
    fn corrupt_checkpoints_are_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(CHECKPOINT_FILE);
        fs::write(&p, b"{\"schema\": 1, \"items\": {").unwrap();
        let e = CheckpointStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("checkpoint.json"));
        assert_eq!(fs::read(&p).unwrap(), b"{\"schema\": 1, \"items\": {");
    }

    #[test]
    fn backups_and_prune_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let cp = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(cp.backup(5).unwrap(), None);
        cp.record_finished("a", "h", 1, None).unwrap();
        for t in [10, 30, 20] {
            cp.backup(t).unwrap();
        }
        let gone = cp.prune(1).unwrap();
        assert_eq!(gone.len(), 2);
        let left = cp.backups().unwrap();
        assert!(left[0].ends_with("checkpoint-30.json"), "{left:?}");
    }
}
