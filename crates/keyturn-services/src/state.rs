//! The quota state seen from outside a run: read it without taking it over (a seed or a proxy may
//! be running), say where it lives, and reset it. The binary presents what these return; only
//! keyturn-store touches the state on disk or in Redis.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyturn_core::{
    InMemoryLedger, KeyId, LedgerError, PoolStatus, QuotaLedger, ResetTarget, Snapshot,
    SnapshotError, StoreError,
};
use keyturn_store::{ConnectError, FileInfo, FileStore, RedisLedger, TimeSource};

use crate::{
    Backend, Config, Env, ServiceError, ServiceErrorKind, clock, create_pool, key_ring,
    ledger_config,
};

/// What went wrong while reading or resetting the state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Configuration, or the state backend could not be opened.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// Redis could not be reached or refused keyturn.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The ledger refused the operation.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The state holds a snapshot this configuration cannot restore.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// No configured key has this label or fingerprint.
    #[error("no key labelled or fingerprinted '{0}'")]
    UnknownKey(String),
}

impl StateError {
    /// The classification, which decides the binary's exit code: what the user must change
    /// (configuration, a state file another process holds, a Redis that refuses keyturn's
    /// credentials, a key label that matches nothing) apart from everything else.
    pub fn kind(&self) -> ServiceErrorKind {
        match self {
            Self::Service(e) => e.kind(),
            Self::Connect(e) if e.is_configuration() => ServiceErrorKind::Configuration,
            Self::UnknownKey(_) => ServiceErrorKind::Configuration,
            _ => ServiceErrorKind::Failed,
        }
    }
}

/// The state as it is now.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Per key and scope: used vs limit, breakers, disabled keys, next reset.
    pub status: PoolStatus,
    /// The whole state (usage history included).
    pub snapshot: Snapshot,
}

/// Reads the configured backend's state without taking it over: the file backend reads the
/// state file without its lock, Redis is asked directly. `models` are the models whose scopes a
/// Redis ledger reads (a file holds every scope it ever saw). `None`: no state written yet.
pub async fn inspect(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
    models: &[&str],
) -> Result<Option<Inspection>, StateError> {
    let (ring, _) = key_ring(cfg, env, cwd).map_err(ServiceError::from)?;
    let keys = Arc::new(ring);
    let mut lcfg = ledger_config(cfg).map_err(ServiceError::from)?;
    let clock = clock(env).map_err(ServiceError::from)?;
    match cfg.state.backend {
        Backend::File => {
            let path = cfg.state.dir.join(keyturn_store::file::STATE_FILE);
            let Some(file) = FileStore::read(&path).map_err(ServiceError::from)? else {
                return Ok(None);
            };
            let ledger = InMemoryLedger::new(keys, lcfg, clock);
            ledger.restore_now(&file.snapshot)?;
            Ok(Some(Inspection {
                status: ledger.status_now(),
                snapshot: ledger.snapshot_now(),
            }))
        }
        Backend::Redis => {
            lcfg.models = models.iter().map(|m| (*m).to_owned()).collect();
            let ledger = RedisLedger::connect(
                &cfg.state.redis_url,
                &cfg.state.namespace,
                keys,
                lcfg,
                clock,
                TimeSource::Redis,
            )
            .await?;
            Ok(Some(Inspection {
                status: ledger.status().await?,
                snapshot: ledger.snapshot().await?,
            }))
        }
    }
}

/// Where the state lives and what is there, for `keyturn state info`.
#[derive(Debug)]
pub enum Location {
    /// The file backend's folder, as found.
    File(Box<FileInfo>),
    /// A Redis server (its URL without password) and namespace.
    Redis {
        /// The server, redacted.
        server: String,
        /// The namespace.
        namespace: String,
    },
}

/// Where the configured state lives; reads, never creates or locks.
pub fn locate(cfg: &Config) -> Location {
    match cfg.state.backend {
        Backend::File => Location::File(Box::new(FileStore::info(&cfg.state.dir))),
        Backend::Redis => Location::Redis {
            server: keyturn_store::redact_url(&cfg.state.redis_url),
            namespace: cfg.state.namespace.clone(),
        },
    }
}

/// What to reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset<'a> {
    /// Every key's health and every quota counter of this configuration's keys and projects.
    All,
    /// One key's disabled flag and breaker, by label or fingerprint.
    Key(&'a str),
}

/// What a reset did.
#[derive(Debug)]
pub enum ResetDone {
    /// The ledger was reset and saved; usage history is kept.
    Reset,
    /// The state file could not be read (`why`), so it was deleted instead (file backend,
    /// [`reset_or_delete`] only).
    Deleted {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        why: StoreError,
    },
}

/// Resets through the pool, as a run would: the file lock proves no keyturn process is using
/// the state, and the usage history is kept (what was sent stays sent).
pub async fn reset(cfg: &Config, env: &Env, cwd: &Path, what: Reset<'_>) -> Result<(), StateError> {
    let pool = create_pool(cfg, env, cwd).await?;
    let target = match what {
        Reset::All => ResetTarget::All,
        Reset::Key(k) => match pool.keys.find(k) {
            Some(id) => ResetTarget::Key(id),
            None => {
                pool.state.shutdown().await.ok();
                return Err(StateError::UnknownKey(k.to_owned()));
            }
        },
    };
    let result = pool.ledger.reset(target).await;
    let saved = pool.state.shutdown().await;
    result?;
    saved.map_err(ServiceError::from)?;
    Ok(())
}

/// [`reset`] of everything; a state file that cannot be read (corrupt, or written by a newer
/// keyturn) is the one thing a reset must still clear, so it is deleted under the lock.
pub async fn reset_or_delete(cfg: &Config, env: &Env, cwd: &Path) -> Result<ResetDone, StateError> {
    match reset(cfg, env, cwd, Reset::All).await {
        Ok(()) => Ok(ResetDone::Reset),
        Err(StateError::Service(ServiceError::State(
            why @ (StoreError::Corrupt { .. } | StoreError::NewerSchema { .. }),
        ))) if cfg.state.backend == Backend::File => {
            let store = FileStore::open(&cfg.state.dir).map_err(ServiceError::from)?;
            store.delete().map_err(ServiceError::from)?;
            Ok(ResetDone::Deleted {
                path: store.path().to_owned(),
                why,
            })
        }
        Err(e) => Err(e),
    }
}

/// What [`reenable`] did.
#[derive(Debug)]
pub struct Reenabled {
    /// Each disabled key found answering, by label, with the result of its reset.
    pub keys: Vec<(String, Result<(), LedgerError>)>,
    /// Whether the state was saved afterwards.
    pub saved: Result<(), StoreError>,
}

/// Brings back the keys among `alive` (found answering) that the state has disabled.
pub async fn reenable(
    cfg: &Config,
    env: &Env,
    cwd: &Path,
    alive: &[KeyId],
) -> Result<Reenabled, StateError> {
    let mut keys = Vec::new();
    if alive.is_empty() {
        return Ok(Reenabled {
            keys,
            saved: Ok(()),
        });
    }
    let pool = create_pool(cfg, env, cwd).await?;
    if let Ok(st) = pool.ledger.status().await {
        for id in alive {
            let Some(k) = st.keys.get(id.index()) else {
                continue;
            };
            // Only Gemini's verdict: the operator's disable is the operator's to lift.
            if k.disabled.is_none_or(|d| d.reason.is_admin()) {
                continue;
            }
            keys.push((
                k.label.clone(),
                pool.ledger.reset(ResetTarget::Key(*id)).await,
            ));
        }
    }
    let saved = pool.state.shutdown().await;
    Ok(Reenabled { keys, saved })
}
