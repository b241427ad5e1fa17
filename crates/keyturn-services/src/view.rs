//! The state as `keyturn console` follows it, for users of the library and of `keyturn seed`
//! who do not run `keyturn serve`.
//!
//! - **File backend, read-only** ([`StateView::follow`]): a running seed holds the state file's
//!   OS lock, so the view never takes it and never writes the file. [`StateView::refresh`]
//!   re-reads the file (once a second from the console) into a fresh in-memory ledger; a file
//!   that is missing, half-written or unreadable keeps the last good view, and
//!   [`StateView::freshness`] says how old it is and why.
//! - **File backend with actions** ([`StateView::own`]): the pool opens the state normally,
//!   taking its lock (a seed or serve holding it is a configuration error naming the pid), and
//!   saves what the actions change.
//! - **Redis** ([`StateView::shared`]): a ledger over the namespace, as any process sharing it
//!   has; what it changes, the others see.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keyturn_core::{Clock, InMemoryLedger, KeyRing, LedgerConfig, QuotaLedger};
use keyturn_store::{FileStore, RedisLedger, TimeSource};
use serde::Serialize;

use crate::state::StateError;
use crate::{
    Backend, Config, Env, Pool, ServiceError, clock, create_pool, key_ring, ledger_config,
};

/// How fresh the view is, for the console's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Freshness {
    /// Where the view comes from, in words (a path or a Redis server without its password).
    pub source: String,
    /// When the state was last read whole (Unix ms); `None` before the first good read, and
    /// for a live ledger (always current).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_at_ms: Option<i64>,
    /// How long ago that was, at the last refresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<i64>,
    /// When the state file was written, as it says (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_at: Option<String>,
    /// Why the last read did not take (the last good view is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A state file followed read-only.
#[derive(Debug)]
struct Followed {
    path: PathBuf,
    keys: Arc<KeyRing>,
    lcfg: LedgerConfig,
    current: Mutex<Arc<dyn QuotaLedger>>,
}

/// A console's view of the configured state.
#[derive(Debug)]
pub struct StateView {
    kind: Kind,
    clock: Arc<dyn Clock>,
    freshness: Mutex<Freshness>,
}

#[derive(Debug)]
enum Kind {
    /// The state file, re-read into a fresh ledger; never locked, never written.
    Follow(Box<Followed>),
    /// The pool that owns the state folder (its lock taken).
    Own(Box<Pool>),
    /// A ledger over a Redis namespace.
    Shared(Arc<dyn QuotaLedger>),
}

impl StateView {
    /// The file backend's state, followed read-only (see the module docs); also the view of a
    /// state folder where nothing was written yet (every key fresh, until a file appears).
    pub fn follow(cfg: &Config, env: &Env, cwd: &Path) -> Result<Self, StateError> {
        let (ring, _) = key_ring(cfg, env, cwd).map_err(ServiceError::from)?;
        let keys = Arc::new(ring);
        let lcfg = ledger_config(cfg).map_err(ServiceError::from)?;
        let clock = clock(env).map_err(ServiceError::from)?;
        let path = cfg.state.dir.join(keyturn_store::file::STATE_FILE);
        let empty: Arc<dyn QuotaLedger> = Arc::new(InMemoryLedger::new(
            keys.clone(),
            lcfg.clone(),
            clock.clone(),
        ));
        let view = Self {
            freshness: Mutex::new(Freshness {
                source: format!("state file {} (read-only)", path.display()),
                read_at_ms: None,
                age_ms: None,
                written_at: None,
                error: None,
            }),
            kind: Kind::Follow(Box::new(Followed {
                path,
                keys,
                lcfg,
                current: Mutex::new(empty),
            })),
            clock,
        };
        view.refresh();
        Ok(view)
    }

    /// The file backend's state, opened as a run opens it (the lock taken, changes saved).
    /// Another process holding the lock is a [`crate::ServiceErrorKind::Configuration`] error
    /// naming the file and its pid.
    pub async fn own(cfg: &Config, env: &Env, cwd: &Path) -> Result<Self, StateError> {
        let pool = create_pool(cfg, env, cwd).await?;
        let source = format!("{} (this console holds its lock)", pool.state.describe());
        Ok(Self {
            clock: pool.clock.clone(),
            kind: Kind::Own(Box::new(pool)),
            freshness: Mutex::new(live(source)),
        })
    }

    /// A Redis namespace's state; `models` are the models whose scopes status reads (Redis
    /// keeps no list of them).
    pub async fn shared(
        cfg: &Config,
        env: &Env,
        cwd: &Path,
        models: &[String],
    ) -> Result<Self, StateError> {
        let (ring, _) = key_ring(cfg, env, cwd).map_err(ServiceError::from)?;
        let mut lcfg = ledger_config(cfg).map_err(ServiceError::from)?;
        lcfg.models = models.to_vec();
        let clock = clock(env).map_err(ServiceError::from)?;
        let ledger = RedisLedger::connect(
            &cfg.state.redis_url,
            &cfg.state.namespace,
            Arc::new(ring),
            lcfg,
            clock.clone(),
            TimeSource::Redis,
        )
        .await?;
        let source = format!(
            "Redis {} namespace {}",
            keyturn_store::redact_url(&cfg.state.redis_url),
            cfg.state.namespace
        );
        Ok(Self {
            clock,
            kind: Kind::Shared(Arc::new(ledger)),
            freshness: Mutex::new(live(source)),
        })
    }

    /// [`StateView::follow`], [`StateView::own`] or [`StateView::shared`], as the configured
    /// backend and `actions` ask.
    pub async fn open(
        cfg: &Config,
        env: &Env,
        cwd: &Path,
        actions: bool,
        models: &[String],
    ) -> Result<Self, StateError> {
        match (cfg.state.backend, actions) {
            (Backend::File, false) => Self::follow(cfg, env, cwd),
            (Backend::File, true) => Self::own(cfg, env, cwd).await,
            (Backend::Redis, _) => Self::shared(cfg, env, cwd, models).await,
        }
    }

    /// The ledger to read (and, unless followed read-only, to act on) now.
    pub fn ledger(&self) -> Arc<dyn QuotaLedger> {
        match &self.kind {
            Kind::Follow(f) => f
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            Kind::Own(pool) => pool.ledger.clone(),
            Kind::Shared(l) => l.clone(),
        }
    }

    /// The pool's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// Whether the view only follows a file it must not change.
    pub fn is_read_only(&self) -> bool {
        matches!(self.kind, Kind::Follow(_))
    }

    /// Re-reads a followed state file (a live ledger needs nothing), and says how fresh the
    /// view is now.
    pub fn refresh(&self) -> Freshness {
        let now = self.clock.now_ms();
        let mut f = self
            .freshness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Kind::Follow(followed) = &self.kind {
            let Followed {
                path,
                keys,
                lcfg,
                current,
            } = &**followed;
            let read = FileStore::read(path).map_err(|e| e.to_string());
            match read {
                Ok(Some(file)) => {
                    let ledger =
                        InMemoryLedger::new(keys.clone(), lcfg.clone(), self.clock.clone());
                    match ledger.restore_now(&file.snapshot) {
                        Ok(()) => {
                            *current
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Arc::new(ledger);
                            f.read_at_ms = Some(now);
                            f.written_at = Some(file.written_at);
                            f.error = None;
                        }
                        Err(e) => f.error = Some(format!("{}: {e}", path.display())),
                    }
                }
                Ok(None) => {
                    f.error = Some(format!(
                        "no state file at {} (yet): nothing has been sent, or it was moved",
                        path.display()
                    ));
                }
                Err(e) => f.error = Some(e),
            }
            f.age_ms = f.read_at_ms.map(|t| now.saturating_sub(t).max(0));
        }
        f.clone()
    }

    /// How fresh the view was at the last refresh.
    pub fn freshness(&self) -> Freshness {
        let f = self
            .freshness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match f.read_at_ms {
            Some(t) => Freshness {
                age_ms: Some(self.clock.now_ms().saturating_sub(t).max(0)),
                ..f
            },
            None => f,
        }
    }

    /// Saves what the actions changed now (an owned state folder; the others need nothing).
    pub async fn flush(&self) -> Result<(), keyturn_core::StoreError> {
        match &self.kind {
            Kind::Own(pool) => pool.state.flush().await,
            Kind::Follow(_) | Kind::Shared(_) => Ok(()),
        }
    }
}

fn live(source: String) -> Freshness {
    Freshness {
        source,
        read_at_ms: None,
        age_ms: None,
        written_at: None,
        error: None,
    }
}
