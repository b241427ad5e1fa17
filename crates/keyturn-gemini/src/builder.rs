//! A [`RotatingCaller`] from keys in a few lines: what `GeminiLlm::builder()` and
//! `GeminiEmbeddings::builder()` build on, so a downstream crate needs no ledger, transport or
//! clock of its own to start.
//!
//! The pool is in memory by default. For quota that survives restarts or is shared between
//! processes, pass a ledger: an `InMemoryLedger` persisted by `keyturn_store::Persister` (the file
//! backend), or a `keyturn_store::RedisLedger`. This crate stays free of keyturn-store; the
//! ledger is the seam.

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::{
    ApiKey, Clock, InMemoryLedger, KeyError, KeyRing, KeySpec, LedgerConfig, QuotaLedger,
};

use crate::caller::{GeminiCall, RetryPolicy, RotatingCaller};
use crate::transport::{Transport, TransportConfig};

/// The caller could not be built. Always the caller's configuration: nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A key is malformed, missing or given twice (the message names it by label, never by
    /// its secret).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Keys and a ledger were both given; a ledger brings its own keys.
    #[error(
        "both keys and a ledger were given; a ledger rotates over its own keys, so give one or the other"
    )]
    KeysAndLedger,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// Builds a [`RotatingCaller`] over keys (or an existing ledger).
///
/// ```
/// use keyturn_gemini::{GeminiCall, RotatingCaller};
///
/// let caller = RotatingCaller::builder()
///     .keys(["made-up-key-1", "made-up-key-2"])
///     .base_url("http://127.0.0.1:8088")
///     .build()?;
/// assert_eq!(caller.ledger().keys().len(), 2);
/// # Ok::<(), keyturn_gemini::BuildError>(())
/// ```
#[derive(Debug, Default)]
pub struct CallerBuilder {
    keys: Vec<Result<KeySpec, KeyError>>,
    ledger: Option<Arc<dyn QuotaLedger>>,
    ledger_config: LedgerConfig,
    transport: TransportConfig,
    retry: RetryPolicy,
    clock: Option<Arc<dyn Clock>>,
}

impl CallerBuilder {
    /// Adds keys, each its own project and labelled by its fingerprint. An invalid key is
    /// reported by [`build`](Self::build).
    pub fn keys<I>(mut self, keys: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.keys
            .extend(keys.into_iter().map(|k| ApiKey::new(k).map(KeySpec::new)));
        self
    }

    /// Adds a key with a label or a project (keys of one project share its quota).
    pub fn key(mut self, spec: KeySpec) -> Self {
        self.keys.push(Ok(spec));
        self
    }

    /// Rotates over an existing ledger (and its keys) instead: a persisted `InMemoryLedger`, a
    /// `RedisLedger`, or the ledger another service already uses.
    pub fn ledger(mut self, ledger: Arc<dyn QuotaLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Limits, policy, breaker and wait bound of the in-memory pool built from keys.
    pub fn ledger_config(mut self, cfg: LedgerConfig) -> Self {
        self.ledger_config = cfg;
        self
    }

    /// Where Gemini is, without a version segment (`GEMINI_BASE_URL`; default: Google's).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.transport.base_url = url.into();
        self
    }

    /// `v1beta` (default) or `v1`.
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.transport.api_version = version.into();
        self
    }

    /// Connect and whole-request timeouts.
    pub fn timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.transport.connect_timeout = connect;
        self.transport.request_timeout = request;
        self
    }

    /// Retry bounds.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The clock (default: the system's).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The clock the caller will run on: the one given, else the system's (a downstream crate
    /// building a pool from keys; keyturn's own binary hands every layer the factory's clock).
    pub fn clock_in_use(&self) -> Arc<dyn Clock> {
        #[allow(clippy::disallowed_types)] // the default of a pool built from keys outside keyturn
        let system = || Arc::new(keyturn_core::SystemClock) as Arc<dyn Clock>;
        self.clock.clone().unwrap_or_else(system)
    }

    /// The caller.
    pub fn build(self) -> Result<RotatingCaller, BuildError> {
        let clock = self.clock_in_use();
        let ledger: Arc<dyn QuotaLedger> = match self.ledger {
            Some(_) if !self.keys.is_empty() => return Err(BuildError::KeysAndLedger),
            Some(ledger) => ledger,
            None => {
                let specs = self.keys.into_iter().collect::<Result<Vec<_>, _>>()?;
                let ring = Arc::new(KeyRing::new(specs)?);
                Arc::new(InMemoryLedger::new(ring, self.ledger_config, clock.clone()))
            }
        };
        let transport = Transport::new(&self.transport).map_err(BuildError::Http)?;
        Ok(RotatingCaller::new(ledger, transport, self.retry, clock))
    }

    /// The caller, shared.
    pub fn build_shared(self) -> Result<Arc<dyn GeminiCall>, BuildError> {
        Ok(Arc::new(self.build()?))
    }
}

impl RotatingCaller {
    /// A [`CallerBuilder`]: keys (or a ledger), base URL, retry bounds.
    pub fn builder() -> CallerBuilder {
        CallerBuilder::default()
    }
}

/// The pool setters every service builder shares, written once: `keys`, `key`, `ledger`,
/// `ledger_config`, `base_url`, `retry`, `clock`, `pool` and `caller`, each forwarding to the
/// builder's `pool: CallerBuilder` field (or, for `caller`, setting its
/// `caller: Option<Arc<dyn GeminiCall>>` field). Expands inside an `impl` block; `$other` names
/// the other service whose caller can be shared, for `caller`'s documentation.
#[doc(hidden)]
#[macro_export]
macro_rules! pool_setters {
    ($other:literal) => {
        /// Adds keys, each its own project (see [`key`](Self::key) for labels and projects).
        pub fn keys<I>(mut self, keys: I) -> Self
        where
            I: IntoIterator,
            I::Item: Into<String>,
        {
            self.pool = self.pool.keys(keys);
            self
        }

        /// Adds a key with a label or a project (keys of one project share its quota).
        pub fn key(mut self, spec: ::keyturn_core::KeySpec) -> Self {
            self.pool = self.pool.key(spec);
            self
        }

        /// Rotates over an existing ledger and its keys: an `InMemoryLedger` that
        /// `keyturn_store::Persister` saves to a state file, or a `keyturn_store::RedisLedger`
        /// shared between processes.
        pub fn ledger(
            mut self,
            ledger: ::std::sync::Arc<dyn ::keyturn_core::QuotaLedger>,
        ) -> Self {
            self.pool = self.pool.ledger(ledger);
            self
        }

        /// Limits, policy, breaker and wait bound of the in-memory pool built from keys.
        pub fn ledger_config(mut self, cfg: ::keyturn_core::LedgerConfig) -> Self {
            self.pool = self.pool.ledger_config(cfg);
            self
        }

        /// Where Gemini is, without a version segment (`GEMINI_BASE_URL`: the simulator, a
        /// proxy; default [`DEFAULT_BASE_URL`](crate::DEFAULT_BASE_URL)).
        pub fn base_url(mut self, url: impl Into<String>) -> Self {
            self.pool = self.pool.base_url(url);
            self
        }

        /// Retry bounds.
        pub fn retry(mut self, retry: $crate::RetryPolicy) -> Self {
            self.pool = self.pool.retry(retry);
            self
        }

        /// The clock (default: the system's).
        pub fn clock(mut self, clock: ::std::sync::Arc<dyn ::keyturn_core::Clock>) -> Self {
            self.pool = self.pool.clock(clock);
            self
        }

        /// Any other pool setting (API version, timeouts).
        pub fn pool(
            mut self,
            f: impl FnOnce($crate::CallerBuilder) -> $crate::CallerBuilder,
        ) -> Self {
            self.pool = f(self.pool);
            self
        }

        #[doc = concat!(
            "Calls through an existing caller instead, to share one pool with another service (`",
            $other,
            "`); the pool settings above are then unused."
        )]
        pub fn caller(mut self, caller: ::std::sync::Arc<dyn $crate::GeminiCall>) -> Self {
            self.caller = Some(caller);
            self
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_a_ledger_are_exclusive_and_bad_keys_are_named_errors() {
        let ring =
            Arc::new(KeyRing::new(vec![KeySpec::new(ApiKey::new("made-up-a").unwrap())]).unwrap());
        let ledger = Arc::new(InMemoryLedger::new(
            ring,
            LedgerConfig::default(),
            Arc::new(keyturn_core::ManualClock::at_ms(1_768_420_800_000)),
        ));
        let both = RotatingCaller::builder()
            .keys(["made-up-b"])
            .ledger(ledger.clone())
            .build();
        assert!(matches!(both, Err(BuildError::KeysAndLedger)));
        let shared = RotatingCaller::builder().ledger(ledger).build().unwrap();
        assert_eq!(shared.ledger().keys().len(), 1);

        let none = RotatingCaller::builder().build();
        assert!(matches!(none, Err(BuildError::Key(KeyError::NoKeys))));
        let blank = RotatingCaller::builder().keys(["made-up-c", " "]).build();
        assert!(matches!(blank, Err(BuildError::Key(KeyError::Empty))));
        let twice = RotatingCaller::builder()
            .keys(["made-up-d", "made-up-d"])
            .build();
        assert!(matches!(
            twice,
            Err(BuildError::Key(KeyError::Duplicate { .. }))
        ));
    }
}
