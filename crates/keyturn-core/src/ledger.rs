//! The seams: [`QuotaLedger`] (who may send what, now) and [`StateStore`] (where state persists),
//! and the configuration every ledger shares.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerConfig;
use crate::error::{AcquireError, LedgerError, StoreError};
use crate::key::{KeyId, KeyRing};
use crate::lease::{Demand, Lease};
use crate::limits::LimitTable;
use crate::outcome::Outcome;
use crate::policy::Policy;
use crate::snapshot::{PoolStatus, Snapshot};

/// What a forced reset clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTarget {
    /// One key's health: disabled flag and circuit breaker.
    Key(KeyId),
    /// One scope's counters, cooldown, exhaustion and learned limits (a project switched off as
    /// a whole stays off: reset all, or wait for its re-probe).
    Scope {
        /// Project id.
        project: String,
        /// Model id.
        model: String,
    },
    /// Everything: all keys' health, all scopes and all projects' switch-offs.
    All,
}

/// Settings shared by every ledger.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Selection policy.
    pub policy: Policy,
    /// Circuit breaker settings.
    pub breaker: BreakerConfig,
    /// How long `acquire` may wait for capacity before failing (0: fail at once).
    pub max_wait: Duration,
    /// Cooldown after a 429 that names no delay and no window we can see.
    pub default_throttle_cooldown: Duration,
    /// Configured limits.
    pub limits: LimitTable,
    /// Models to show in status before they are first used.
    pub models: Vec<String>,
    /// How long what the server taught (learned limits, a model or project switched off) holds:
    /// `None` until the next Pacific midnight after it was learned (when Google's day turns and
    /// tiers move), `Some(d)` for `d` after it was learned. An expired switch-off lets exactly
    /// one real request through (a re-probe); its answer decides.
    pub relearn_after: Option<Duration>,
}

impl LedgerConfig {
    /// When something learned at `now_ms` expires.
    pub fn relearn_at(&self, now_ms: i64) -> i64 {
        match self.relearn_after {
            Some(d) => now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            None => crate::pacific::next_pacific_midnight(now_ms),
        }
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            breaker: BreakerConfig::default(),
            max_wait: Duration::from_secs(90),
            default_throttle_cooldown: Duration::from_secs(15),
            limits: LimitTable::builtin(),
            models: Vec::new(),
            relearn_after: None,
        }
    }
}

/// Rotation-wide settings as they appear in configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationSettings {
    /// Selection policy.
    pub policy: Policy,
    /// Longest wait in acquire.
    #[serde(with = "crate::serde_duration")]
    pub max_wait: Duration,
    /// Cooldown for a 429 with no retry information.
    #[serde(with = "crate::serde_duration")]
    pub default_throttle_cooldown: Duration,
}

impl Default for RotationSettings {
    fn default() -> Self {
        let d = LedgerConfig::default();
        Self {
            policy: d.policy,
            max_wait: d.max_wait,
            default_throttle_cooldown: d.default_throttle_cooldown,
        }
    }
}

/// The quota ledger: admits requests within every limit, learns from outcomes, and reports.
///
/// Implementations: [`crate::InMemoryLedger`] (one process), `keyturn_store::RedisLedger` (many
/// processes). Both pass the same behaviour suite.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait QuotaLedger: Send + Sync + std::fmt::Debug {
    /// The keys this ledger rotates over.
    fn keys(&self) -> Arc<KeyRing>;

    /// A lease on a key whose (project, model) scope has room for `demand` in RPM, TPM and RPD
    /// and whose breaker admits it, reserving that room. Waits up to the configured bound for the
    /// earliest moment room appears; otherwise fails with the reason and when capacity returns.
    async fn acquire(&self, model: &str, demand: Demand) -> Result<Lease, AcquireError>;

    /// Reports what happened to a leased request.
    async fn settle(&self, lease: Lease, outcome: Outcome) -> Result<(), LedgerError>;

    /// Forced reset.
    async fn reset(&self, target: ResetTarget) -> Result<(), LedgerError>;

    /// Takes a key out of rotation (`true`) until the operator puts it back (`false`): it shows
    /// as disabled with [`crate::DeadReason::ByAdmin`] and since when, persists like any
    /// disabled key, and no re-check re-enables it. Putting back clears only the operator's
    /// disable: a key Gemini disabled stays disabled.
    async fn disable_by_admin(&self, key: KeyId, disabled: bool) -> Result<(), LedgerError>;

    /// Per key and scope: used vs limit, breaker, disabled reason, next reset.
    async fn status(&self) -> Result<PoolStatus, LedgerError>;

    /// The whole state, for persistence and checkpoints.
    async fn snapshot(&self) -> Result<Snapshot, LedgerError>;

    /// Replaces the state with a snapshot's (keys matched by fingerprint, scopes by name).
    async fn restore(&self, snapshot: Snapshot) -> Result<(), LedgerError>;

    /// Marks a warning as sent until `until_ms`: `true` the first time, `false` while the mark
    /// stands, for every process that shares this ledger. Warnings fire once, not per watcher.
    async fn claim_notice(&self, id: &str, until_ms: i64) -> Result<bool, LedgerError>;
}

/// Where snapshots persist.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// The last saved snapshot, if any. A corrupt or newer-schema one is an error, never `None`.
    async fn load(&self) -> Result<Option<Snapshot>, StoreError>;

    /// Saves a snapshot (atomically: a crash leaves the old or the new one).
    async fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// Where the state lives, for messages ("file .keyturn/state.json").
    fn describe(&self) -> String;
}

/// A [`StateStore`] in memory, for tests and for runs that persist nothing.
#[derive(Debug, Default)]
pub struct MemoryStore {
    saved: parking_lot::Mutex<Option<Snapshot>>,
    saves: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times `save` was called.
    pub fn saves(&self) -> u64 {
        self.saves.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        let snap = self.saved.lock().clone();
        if let Some(s) = &snap
            && s.schema > crate::snapshot::SCHEMA_VERSION
        {
            return Err(StoreError::NewerSchema {
                path: "memory".into(),
                found: s.schema,
                supported: crate::snapshot::SCHEMA_VERSION,
            });
        }
        Ok(snap)
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        *self.saved.lock() = Some(snapshot.clone());
        self.saves
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

// The seams stay object-safe (tower's check).
fn _object_safe(_: Box<dyn QuotaLedger>, _: Box<dyn StateStore>) {}
