//! `FileStore`: the embedded default. One schema-versioned JSON snapshot per state folder, written
//! atomically, owned by one process through an OS file lock; and [`Persister`], the write-behind
//! task that saves at most once per flush interval.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use keyturn_core::{
    BackendError, InMemoryLedger, SCHEMA_VERSION, Snapshot, StateStore, StoreError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// The largest state file [`FileStore::read`] reads: far past what a pool of thousands of keys
/// writes (a few MB).
pub const MAX_STATE_BYTES: u64 = 256 * 1024 * 1024;

/// The state file's name inside the state folder.
pub const STATE_FILE: &str = "state.json";
/// The lock file's name.
pub const LOCK_FILE: &str = "state.lock";
/// The copy of the state found at start-up.
pub const BACKUP_FILE: &str = "state.json.bak";

/// What the state file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateFile {
    /// Schema version.
    pub schema: u32,
    /// When written (RFC 3339).
    pub written_at: String,
    /// Which program wrote it.
    pub writer: String,
    /// The pool's state.
    pub snapshot: Snapshot,
}

#[derive(Deserialize)]
struct SchemaOnly {
    schema: Option<u32>,
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` so that a crash at any instant leaves the old file or the new one,
/// never a torn one: a temporary file in the same folder, fsync, rename over, fsync the folder.
/// The file gets mode `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    write_atomic_with(path, mode, |w| w.write_all(bytes))
}

/// [`write_atomic`] for content written piece by piece (a graph of any size) through a buffered
/// writer, never held whole in memory: the same temp file, fsync, rename, fsync of the folder.
/// If `write` fails, the old file stays as it was.
pub fn write_atomic_with<T>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<T>,
) -> Result<T, StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| io_err(path, e))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_err(path, e))?;
    let mut w = std::io::BufWriter::new(tmp);
    let value = write(&mut w).map_err(|e| io_err(path, e))?;
    let tmp = w.into_inner().map_err(|e| io_err(path, e.into_error()))?;
    tmp.as_file().sync_all().map_err(|e| io_err(path, e))?;
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    Ok(value)
}

/// Creates a folder (and parents) with mode 0700 if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// The user this process runs as (the owner of a file it creates).
fn effective_uid() -> std::io::Result<u32> {
    Ok(tempfile::tempfile()?.metadata()?.uid())
}

/// Makes sure nobody else can write in the state folder: anyone who can would replace the state
/// (or the lock) under keyturn. A folder of this user's that group or others may write is made
/// private (0700) and that is logged; one that belongs to someone else is refused.
pub fn secure_state_dir(dir: &Path) -> Result<(), StoreError> {
    let meta = fs::metadata(dir).map_err(|e| io_err(dir, e))?;
    if !meta.is_dir() {
        return Err(io_err(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "the state folder is not a folder; use KEYTURN_STATE_DIR (or state.dir) to name a folder",
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 == 0 {
        return Ok(());
    }
    let me = effective_uid().map_err(|e| io_err(dir, e))?;
    if meta.uid() != me {
        return Err(io_err(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the state folder is writable by other users (mode {mode:o}) and belongs to another user (uid {}), so keyturn cannot make it private; use a folder of your own (KEYTURN_STATE_DIR or state.dir)",
                    meta.uid()
                ),
            ),
        ));
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io_err(dir, e))?;
    tracing::info!(
        dir = %dir.display(),
        was = %format!("{mode:o}"),
        "the state folder was writable by other users; made it private (0700)"
    );
    Ok(())
}

/// What [`FileStore::info`] found in a state folder.
#[derive(Debug)]
pub struct FileInfo {
    /// The state file (it may not exist).
    pub path: PathBuf,
    /// The state file, if one was written.
    pub written: Option<WrittenFile>,
    /// The lock file, if a process ever took the folder.
    pub lock: Option<LockInfo>,
    /// The copy of the state taken at the last start, if any.
    pub backup: Option<PathBuf>,
}

/// A state file as found on disk.
#[derive(Debug)]
pub struct WrittenFile {
    /// Size in bytes.
    pub size: u64,
    /// Last modified, in milliseconds since the epoch (the file system's clock).
    pub modified_ms: i64,
    /// Its contents, checked as [`FileStore::read`] checks them.
    pub contents: Result<Option<StateFile>, StoreError>,
}

/// The state folder's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Whether a process holds it now.
    pub held: bool,
    /// The pid of the last process that took it, as written in the lock file.
    pub last_pid: String,
}

/// Snapshot persistence in one file, for one process.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    path: PathBuf,
    // Held for the life of the store: the OS lock is released when the file closes.
    _lock: File,
    saves: AtomicU64,
}

impl FileStore {
    /// Opens (creating) the state folder and takes the lock. A second process gets
    /// [`StoreError::Locked`] naming the file and the owner's pid. An existing folder that others
    /// may write is made private first, or refused (see [`secure_state_dir`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_owned();
        ensure_private_dir(&dir)?;
        secure_state_dir(&dir)?;
        let path = dir.join(STATE_FILE);
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut s = String::new();
                lock.read_to_string(&mut s).ok();
                return Err(StoreError::Locked {
                    path,
                    pid: s.trim().parse().ok(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path, e)),
        }
        lock.set_len(0).map_err(|e| io_err(&lock_path, e))?;
        lock.write_all(std::process::id().to_string().as_bytes())
            .map_err(|e| io_err(&lock_path, e))?;
        Ok(Self {
            dir,
            path,
            _lock: lock,
            saves: AtomicU64::new(0),
        })
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Snapshots written so far by this process.
    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::Relaxed)
    }

    /// Reads and checks a state file without taking the lock (for `keyturn state info`, and
    /// `keyturn console`, which re-reads it every second). Anything but a regular file (a pipe
    /// would block the read for ever, a device never end) or a file over [`MAX_STATE_BYTES`] is
    /// refused unread.
    pub fn read(path: &Path) -> Result<Option<StateFile>, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        };
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, e)),
        };
        let too_large = || {
            corrupt(format!(
                "larger than {} MiB: not a state file keyturn wrote",
                MAX_STATE_BYTES >> 20
            ))
        };
        if !meta.is_file() {
            return Err(corrupt("not a regular file".into()));
        }
        if meta.len() > MAX_STATE_BYTES {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(f) => f
                .take(MAX_STATE_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| io_err(path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, e)),
        };
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(too_large());
        }
        let head: SchemaOnly =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
        match head.schema {
            None => return Err(corrupt("no schema field".into())),
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    path: path.to_owned(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(_) => {}
        }
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(file))
    }

    /// What a state folder holds, read without taking it over (a seed may be running): the
    /// state file's size, time and contents (or what is wrong with them), whether its lock is
    /// held and by which pid it was last taken, and whether a backup exists. Creates nothing.
    pub fn info(dir: impl AsRef<Path>) -> FileInfo {
        let dir = dir.as_ref();
        let path = dir.join(STATE_FILE);
        let written = fs::metadata(&path).ok().map(|m| WrittenFile {
            size: m.len(),
            modified_ms: m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as i64),
            contents: Self::read(&path),
        });
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::read_to_string(&lock_path).ok().map(|pid| LockInfo {
            // A shared lock is refused only while an owner holds the exclusive one.
            held: File::open(&lock_path)
                .is_ok_and(|f| matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock))),
            last_pid: pid.trim().to_owned(),
        });
        let backup = Some(dir.join(BACKUP_FILE)).filter(|b| b.exists());
        FileInfo {
            path,
            written,
            lock,
            backup,
        }
    }

    /// Deletes the state file this store owns (the lock proves no other keyturn process uses
    /// it): the way out of a state file that cannot be read. The backup and the lock stay.
    pub fn delete(&self) -> Result<(), StoreError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.path, e)),
        }
    }

    fn encode(&self, snapshot: &Snapshot) -> Result<Vec<u8>, StoreError> {
        let file = StateFile {
            schema: SCHEMA_VERSION,
            written_at: keyturn_core::clock::ms_to_timestamp(snapshot.taken_at_ms).to_string(),
            writer: concat!("keyturn-store ", env!("CARGO_PKG_VERSION")).to_owned(),
            snapshot: snapshot.clone(),
        };
        serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }
}

#[async_trait]
impl StateStore for FileStore {
    async fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        let found = Self::read(&self.path)?;
        if found.is_some() {
            // One backup per run: the state as it was before this process touched it.
            fs::copy(&self.path, self.dir.join(BACKUP_FILE))
                .map_err(|e| io_err(&self.dir.join(BACKUP_FILE), e))?;
        }
        Ok(found.map(|f| f.snapshot))
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let bytes = self.encode(snapshot)?;
        let path = self.path.clone();
        // fsyncs block: keep them off the async workers.
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes, 0o600))
            .await
            .map_err(|e| {
                StoreError::Backend(BackendError::caused_by("state writer task failed", e))
            })??;
        self.saves.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

enum Command {
    Flush(oneshot::Sender<Result<(), StoreError>>),
    Stop(oneshot::Sender<Result<(), StoreError>>),
}

/// Write-behind persistence of an in-memory ledger: a background task saves a snapshot at most
/// once per interval, and only when the ledger changed; [`Persister::flush`] saves now (for
/// checkpoints) and [`Persister::shutdown`] saves a last time. Never one write per request.
#[derive(Debug)]
pub struct Persister {
    tx: mpsc::Sender<Command>,
    writes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Persister {
    /// Starts the task. The ledger should already hold the loaded state.
    pub fn spawn(
        ledger: Arc<InMemoryLedger>,
        store: Arc<dyn StateStore>,
        interval: Duration,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Command>(8);
        let writes = Arc::new(AtomicU64::new(0));
        let w = writes.clone();
        // Read before spawning: a change made between `spawn` returning and the task's first poll
        // (a `keys reset` right after start-up) must still count as unsaved.
        let mut last = ledger.version();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let save = |last: &mut u64| {
                let ledger = ledger.clone();
                let store = store.clone();
                let w = w.clone();
                let prev = *last;
                async move {
                    let v = ledger.version();
                    if v == prev {
                        return (prev, Ok(()));
                    }
                    let r = store.save(&ledger.snapshot_now()).await;
                    if r.is_ok() {
                        w.fetch_add(1, Ordering::Relaxed);
                        (v, r)
                    } else {
                        (prev, r)
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let (v, r) = save(&mut last).await;
                        last = v;
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "could not save quota state; will retry");
                        }
                    }
                    cmd = rx.recv() => match cmd {
                        Some(Command::Flush(reply)) => {
                            let (v, r) = save(&mut last).await;
                            last = v;
                            reply.send(r).ok();
                        }
                        Some(Command::Stop(reply)) => {
                            let (_, r) = save(&mut last).await;
                            reply.send(r).ok();
                            return;
                        }
                        None => {
                            let (_, r) = save(&mut last).await;
                            if let Err(e) = r {
                                tracing::warn!(error = %e, "could not save quota state at exit");
                            }
                            return;
                        }
                    }
                }
            }
        });
        Self { tx, writes, task }
    }

    /// Saves now if anything changed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(reply)).await.is_err() {
            return Err(StoreError::Backend(BackendError::new(
                "the state writer has stopped",
            )));
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Backend(BackendError::new(
                "the state writer has stopped",
            )))
        })
    }

    /// Saves a last time and stops.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Stop(reply)).await.is_err() {
            return Ok(());
        }
        let r = rx.await.unwrap_or_else(|_| {
            Err(StoreError::Backend(BackendError::new(
                "the state writer has stopped",
            )))
        });
        self.task.await.ok();
        r
    }

    /// Snapshots written by this persister.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}
