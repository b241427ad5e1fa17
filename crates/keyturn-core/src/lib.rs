//! # keyturn-core
//!
//! The rotation core of keyturn: which Gemini API key may send the next request, and the exact
//! account that lets keyturn never send a request the quota will refuse.
//!
//! - [`ApiKey`]: a secret that never shows itself; keys are named by label and [`Fingerprint`].
//! - Quota scope = (project, model): keys of one project share its requests per minute (RPM),
//!   input tokens per minute (TPM) and requests per Pacific day (RPD). See [`window`] for the
//!   exact rolling-minute rule and [`pacific`] for the day.
//! - [`LimitTable`]: a dated built-in table of Gemini models, overridable per model and project;
//!   limits the server reports are learned and win when lower.
//! - [`QuotaLedger`]: acquire a [`Lease`] (waiting, up to a bound, for capacity), send, then settle
//!   it with the [`Outcome`]. [`InMemoryLedger`] is the one-process implementation.
//! - Circuit breakers ([`breaker`]), selection [`Policy`], forced resets, status and snapshots.
//! - Time is injected through [`Clock`]; [`ManualClock`] drives tests without sleeping.
//!
//! This crate does no I/O.
//!
//! ```
//! use std::sync::Arc;
//! use keyturn_core::*;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = KeyRing::new(vec![
//!     KeySpec::new(ApiKey::new("made-up-key-1")?).label("a").project("demo"),
//!     KeySpec::new(ApiKey::new("made-up-key-2")?).label("b"),
//! ])?;
//! let ledger = InMemoryLedger::new(Arc::new(keys), LedgerConfig::default(), Arc::new(SystemClock));
//!
//! let lease = ledger.acquire("gemini-2.5-flash", Demand::tokens(1_200)).await?;
//! let key = ledger.keys().get(lease.key()).map(|e| e.label.clone());
//! // ... send the request with that key's secret in `x-goog-api-key` ...
//! ledger.settle(lease, Outcome::success(1_057)).await?;
//! assert_eq!(key.as_deref(), Some("a"));
//! # Ok(()) }
//! ```

pub mod breaker;
pub mod clock;
pub mod error;
pub mod key;
pub mod lease;
pub mod ledger;
pub mod limits;
pub mod memory;
pub mod outcome;
pub mod pacific;
pub mod plan;
pub mod policy;
pub mod prices;
pub mod redact;
pub mod resources;
pub mod serde_duration;
pub mod snapshot;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod window;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
#[allow(clippy::disallowed_types)] // re-exported for the factory that builds the one clock
pub use clock::{Clock, ManualClock, OffsetClock, SystemClock};
pub use error::{
    AcquireError, BackendError, ErrorKind, Exhaustion, KeyError, LedgerError, LimitError,
    SnapshotError, StoreError,
};
pub use key::{ApiKey, Fingerprint, KeyEntry, KeyId, KeyRing, KeySpec, RingChange};
pub use lease::{Demand, Lease};
pub use ledger::{
    LedgerConfig, MemoryStore, QuotaLedger, ResetTarget, RotationSettings, StateStore,
};
#[cfg(any(test, feature = "mock"))]
pub use ledger::{MockQuotaLedger, MockStateStore};
pub use limits::{LimitOverride, LimitSource, LimitTable, ModelLimits, Tier};
pub use memory::InMemoryLedger;
// The status projection keyturn-store's `RedisLedger` shares with the in-memory ledger: not part
// of the surface downstream code should build on (reachable as `memory::…` for that one user).
#[doc(hidden)]
pub use memory::{breaker_state_now, scope_status_from_snapshot};
pub use outcome::{Answered, DeadReason, Outcome, ThrottleKind};
pub use pacific::{QuotaDay, next_pacific_midnight};
pub use policy::Policy;
pub use redact::{Scrubber, redact};
#[cfg(any(test, feature = "mock"))]
pub use resources::MockResourceMap;
pub use resources::{
    InvalidResource, MemoryResources, Owner, Ownership, ResourceKind, ResourceMap, ResourceName,
    ResourceTable,
};
pub use snapshot::{
    HISTORY_DAYS, NoticeMark, PoolStatus, SCHEMA_VERSION, ScopeState, Snapshot, UsageDay,
};
