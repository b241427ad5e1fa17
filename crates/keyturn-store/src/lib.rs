//! # keyturn-store
//!
//! State that survives crashes and is shared between processes.
//!
//! - [`FileStore`]: the embedded default for one process. One schema-versioned JSON snapshot,
//!   keys only by fingerprint, mode 0600 in a 0700 folder, written atomically, owned through an OS
//!   lock (a second process is told to use Redis), never overwritten when corrupt or newer.
//!   [`Persister`] writes it behind the ledger: at most once per flush interval.
//! - [`RedisLedger`]: a `QuotaLedger` for many processes on many machines. One atomic script
//!   per acquire, Redis's own clock, counters that expire by themselves, shared health and
//!   learned limits; fails closed while Redis is down.
//! - Resource affinity (which project owns a file, a cached content, a batch):
//!   [`FileResources`] in the state folder, [`RedisResources`] beside the Redis ledger.
//! - [`CheckpointStore`]: which pipeline items finished (with their content hash) and the
//!   rotation state at each checkpoint; answers "what is left" on resume.
//!
//! When to use which: one `keyturn` process per quota (a laptop, a single worker) → the file
//! store; several processes or machines spending the same keys → Redis, so they never both spend
//! a key's last requests.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use keyturn_core::*;
//! use keyturn_store::{FileStore, Persister};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = Arc::new(KeyRing::new(vec![KeySpec::new(ApiKey::new("made-up-key")?)])?);
//! let ledger = Arc::new(InMemoryLedger::new(keys, LedgerConfig::default(), Arc::new(SystemClock)));
//! let store = Arc::new(FileStore::open(".keyturn")?);
//! if let Some(snapshot) = store.load().await? {
//!     ledger.restore_now(&snapshot)?;
//! }
//! let persister = Persister::spawn(ledger.clone(), store, Duration::from_secs(1));
//! // ... acquire and settle through `ledger` ...
//! persister.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod file;
pub mod redis_ledger;
pub mod resources;
pub mod runs;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use checkpoint::{BatchEpisode, BatchRecord, Checkpoint, CheckpointError, CheckpointStore};
pub use file::{
    FileInfo, FileStore, LockInfo, Persister, StateFile, WrittenFile, write_atomic,
    write_atomic_with,
};
pub use redis_ledger::{
    ConnectError, RedisFailure, RedisLedger, RedisResources, TimeSource, redact_url,
};
pub use resources::{FileResources, RESOURCES_FILE};
