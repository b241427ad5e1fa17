//! Output folders keyturn owns. `keyturn seed --out DIR` writes `episodes/`, `graph/`,
//! `run-report.json` and its checkpoints into DIR, replacing files of those names: it does so only
//! in a folder it owns, and only one run at a time.
//!
//! A folder is keyturn's when it holds the marker file [`MARKER`], which keyturn writes when it
//! creates the folder or takes an empty one. An existing folder without the marker is refused,
//! untouched, unless it is empty — or unless it holds a keyturn checkpoint folder
//! ([`crate::run::CHECKPOINT_DIR`]): an output folder written by a keyturn from before the marker
//! existed, which is adopted (marked) so that upgrading never stops a resume.
//!
//! `keyturn export --to DIR` (a folder outside the seed output) follows the same rule, without
//! the exception for older output folders.
//!
//! The marker is also the run's lock: an OS file lock on it is held for the whole run, so a
//! second `seed` on the same folder (even one with its own state folder, which the state lock
//! cannot see) is refused before it spends any quota.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::term::safe_path;

/// The marker file in an output folder keyturn owns.
pub const MARKER: &str = ".keyturn-out";

const MARKER_TEXT: &str = "This folder is a keyturn output folder: `keyturn seed` writes here (and replaces its own files) only while this file exists.\n";

/// Why an output folder cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutDirError {
    /// The path exists and is not a folder.
    #[error("output folder {}: it exists and is not a folder; choose a folder", safe_path(.path))]
    NotAFolder {
        /// The path.
        path: PathBuf,
    },
    /// A folder of files keyturn did not write.
    #[error(
        "output folder {} already holds files keyturn did not write ({}); keyturn writes only into a folder it created or an empty one, so nothing was touched: choose a new or empty folder",
        safe_path(.path),
        .examples.join(", ")
    )]
    NotOurs {
        /// The folder.
        path: PathBuf,
        /// A few of the names found in it (escaped).
        examples: Vec<String>,
    },
    /// Another keyturn run holds it.
    #[error(
        "output folder {} is in use by another keyturn process{}; wait for that run to finish, or choose another folder",
        safe_path(.path),
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The folder.
        path: PathBuf,
        /// The other run, if known.
        pid: Option<u32>,
    },
    /// Reading or writing the folder failed.
    #[error("output folder {}: {source}", safe_path(.path))]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl OutDirError {
    /// The classification: a folder the user must change (not a folder, not keyturn's, in use)
    /// is a usage error; a failed read or write is not.
    pub fn kind(&self) -> crate::run::SeedErrorKind {
        match self {
            Self::Io { .. } => crate::run::SeedErrorKind::Failed,
            _ => crate::run::SeedErrorKind::Usage,
        }
    }
}

/// An output folder claimed for one run: owned by keyturn and locked until dropped.
#[derive(Debug)]
pub struct OutDir {
    path: PathBuf,
    adopted: bool,
    // The OS lock lives as long as this handle.
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutDirError + '_ {
    move |source| OutDirError::Io {
        path: path.to_owned(),
        source,
    }
}

impl OutDir {
    /// Creates `path` (and its parents) or takes it if it is empty, already keyturn's, or an
    /// output folder of an older keyturn (it holds `legacy_dir`, the checkpoint folder, when
    /// given); then locks it for this run. Anything else is refused without writing a byte.
    pub fn claim(path: &Path, legacy_dir: Option<&str>) -> Result<Self, OutDirError> {
        let marker = path.join(MARKER);
        let mut adopted = false;
        match fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(path).map_err(io(path))?;
            }
            Err(e) => return Err(io(path)(e)),
            Ok(m) if !m.is_dir() => {
                return Err(OutDirError::NotAFolder {
                    path: path.to_owned(),
                });
            }
            Ok(_) => {
                // The marker must be a plain file: a link there could point the pid we write
                // anywhere.
                let marked = fs::symlink_metadata(&marker).is_ok_and(|m| m.is_file());
                let legacy = legacy_dir
                    .is_some_and(|d| fs::symlink_metadata(path.join(d)).is_ok_and(|m| m.is_dir()));
                let mut names: Vec<String> = fs::read_dir(path)
                    .map_err(io(path))?
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !(marked && n == MARKER))
                    .collect();
                if !marked && !legacy && !names.is_empty() {
                    names.sort();
                    let more = names.len().saturating_sub(3);
                    let mut examples: Vec<String> = names
                        .iter()
                        .take(3)
                        .map(|n| format!("'{}'", crate::term::safe(n)))
                        .collect();
                    if more > 0 {
                        examples.push(format!("{more} more"));
                    }
                    return Err(OutDirError::NotOurs {
                        path: path.to_owned(),
                        examples,
                    });
                }
                adopted = !marked && legacy;
            }
        }
        if fs::symlink_metadata(&marker).is_ok_and(|m| !m.is_file()) {
            return Err(OutDirError::NotOurs {
                path: path.to_owned(),
                examples: vec![format!("'{MARKER}' is not a plain file")],
            });
        }
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&marker)
            .map_err(io(&marker))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut s = String::new();
                lock.read_to_string(&mut s).ok();
                let pid = s
                    .lines()
                    .find_map(|l| l.strip_prefix("pid "))
                    .and_then(|p| p.trim().parse().ok());
                return Err(OutDirError::Locked {
                    path: path.to_owned(),
                    pid,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&marker)(e)),
        }
        lock.set_len(0).map_err(io(&marker))?;
        lock.write_all(format!("{MARKER_TEXT}pid {}\n", std::process::id()).as_bytes())
            .map_err(io(&marker))?;
        Ok(Self {
            path: path.to_owned(),
            adopted,
            _lock: lock,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this run adopted a folder an older keyturn wrote (it had a checkpoint, no marker).
    pub fn adopted(&self) -> bool {
        self.adopted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CP: Option<&str> = Some(".keyturn-checkpoint");

    #[test]
    fn creates_takes_empty_adopts_legacy_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("a/b");
        let o = OutDir::claim(&new, CP).unwrap();
        assert!(new.join(MARKER).is_file() && !o.adopted());
        drop(o);
        OutDir::claim(&new, CP).unwrap();

        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        OutDir::claim(&empty, CP).unwrap();

        let legacy = dir.path().join("legacy");
        fs::create_dir_all(legacy.join(".keyturn-checkpoint")).unwrap();
        // Without a legacy folder name (an export target), a checkpoint folder proves nothing.
        assert!(matches!(
            OutDir::claim(&legacy, None).unwrap_err(),
            OutDirError::NotOurs { .. }
        ));
        fs::write(legacy.join("run-report.json"), "{}").unwrap();
        assert!(OutDir::claim(&legacy, CP).unwrap().adopted());
        assert!(!OutDir::claim(&legacy, CP).unwrap().adopted(), "marked now");

        let users = dir.path().join("users");
        fs::create_dir_all(&users).unwrap();
        fs::write(users.join("run-report.json"), "mine").unwrap();
        let e = OutDir::claim(&users, CP).unwrap_err();
        assert!(matches!(e, OutDirError::NotOurs { .. }), "{e}");
        assert!(e.to_string().contains("run-report.json"), "{e}");
        assert!(!users.join(MARKER).exists(), "nothing written");

        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(
            OutDir::claim(&file, CP).unwrap_err(),
            OutDirError::NotAFolder { .. }
        ));
    }

    #[test]
    fn a_held_folder_is_refused_with_the_holders_pid_and_a_linked_marker_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let held = OutDir::claim(dir.path(), CP).unwrap();
        // flock locks belong to the open file: a second open in this process conflicts too.
        match OutDir::claim(dir.path(), CP).unwrap_err() {
            OutDirError::Locked { pid, .. } => assert_eq!(pid, Some(std::process::id())),
            e => panic!("{e}"),
        }
        drop(held);
        OutDir::claim(dir.path(), CP).unwrap();

        let linked = dir.path().join("linked");
        fs::create_dir(&linked).unwrap();
        let target = dir.path().join("elsewhere");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, linked.join(MARKER)).unwrap();
        assert!(matches!(
            OutDir::claim(&linked, CP).unwrap_err(),
            OutDirError::NotOurs { .. }
        ));
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    }
}
