//! Errors at keyturn-core's boundary. Each carries context (model, label, scope), never a key.

use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::ms_to_timestamp;
use crate::key::Fingerprint;
use crate::pacific::QUOTA_TIME_ZONE;

/// A key or key set that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Empty string.
    #[error("an API key is empty")]
    Empty,
    /// White space or control characters inside.
    #[error("an API key contains white space or control characters")]
    Malformed,
    /// No keys at all.
    #[error("no API keys were given")]
    NoKeys,
    /// More keys than a `KeyId` can count.
    #[error("too many API keys")]
    TooMany,
    /// The same key twice.
    #[error("keys '{first}' and '{second}' are the same key ({fingerprint}); give each key once")]
    Duplicate {
        /// Label of the first occurrence.
        first: String,
        /// Label of the second.
        second: String,
        /// Their fingerprint.
        fingerprint: Fingerprint,
    },
    /// Two keys with one label.
    #[error("two keys are labelled '{label}'; labels must be unique")]
    DuplicateLabel {
        /// The label.
        label: String,
    },
    /// A weight of zero would starve the key.
    #[error("key '{label}' has weight 0; weights start at 1")]
    ZeroWeight {
        /// The key's label.
        label: String,
    },
}

/// A limit override the core cannot accept (the limit table's part of the configuration; the
/// configuration as a whole is keyturn-services' `ConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A configured limit of zero.
    #[error(
        "{scope}: {field} = 0 is not a limit; leave the field out for the default, or remove the model"
    )]
    ZeroLimit {
        /// Which table entry.
        scope: String,
        /// Which field.
        field: &'static str,
    },
}

/// Why no key can take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exhaustion {
    /// Requests per minute used up.
    RequestsPerMinute,
    /// Input tokens per minute used up.
    TokensPerMinute,
    /// Requests per day used up (until Pacific midnight).
    RequestsPerDay,
    /// Input tokens per day used up (until Pacific midnight).
    TokensPerDay,
    /// The server refused with a 429 and asked us to wait.
    CoolingDown,
    /// The keys' circuit breakers are open after transient failures.
    CircuitOpen,
    /// What is left is a switched-off model or project whose one re-probe is out: its answer
    /// decides whether it serves again.
    Reprobing,
}

impl std::fmt::Display for Exhaustion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RequestsPerMinute => "requests per minute used up",
            Self::TokensPerMinute => "input tokens per minute used up",
            Self::RequestsPerDay => "requests per day used up",
            Self::TokensPerDay => "input tokens per day used up",
            Self::CoolingDown => "rate limited by the server, cooling down",
            Self::CircuitOpen => "keys failing (circuit breakers open)",
            Self::Reprobing => {
                "the model or project was switched off by the server and one request is re-probing it"
            }
        })
    }
}

/// Formats an instant for people: UTC and Pacific.
pub fn describe_instant(ms: i64) -> String {
    let ts = ms_to_timestamp(ms);
    let pacific = jiff::tz::db()
        .get(QUOTA_TIME_ZONE)
        .map(|tz| ts.to_zoned_datetime(tz).strftime("%H:%M:%S %Z").to_string())
        .unwrap_or_default();
    format!("{} ({pacific})", ts.strftime("%Y-%m-%dT%H:%M:%SZ"))
}

/// A quota or state backend that failed (Redis, the state writer). It carries a message for
/// people — what failed and where, the server without its password, never a key — and, when
/// there is one, the cause as its [`std::error::Error::source`] rather than flattened into the
/// text. A cause must itself be safe to print: the Redis ledger gives its own description of a
/// Redis error, never the client's text (which can quote the URL and its password).
#[derive(Debug, Clone)]
pub struct BackendError {
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {
    // The cause itself, not the `Arc` around it, so callers can downcast it.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl BackendError {
    /// A failure with no underlying error (an invariant of the backend itself).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A failure caused by `source`, kept as the error's source.
    pub fn caused_by(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Two backend failures are the same when they say the same thing (the cause is not compared:
/// errors have no equality), which is what tests and retries compare.
impl PartialEq for BackendError {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message
    }
}

impl Eq for BackendError {}

impl From<String> for BackendError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for BackendError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// How callers should react to an error: the classification, not the message, drives retries
/// (and the binary's exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Capacity returns within minutes: wait and retry.
    Throttled,
    /// Capacity returns at the next Pacific midnight: checkpoint and stop (exit 3).
    ExhaustedForDay,
    /// Every key is disabled: fix or replace the keys (exit 4).
    KeysDead,
    /// No key will serve this as asked (the model is off for every project, one request needs
    /// more than a whole limit): change the request or the configuration.
    Permanent,
    /// The quota backend is unreachable: retry later; nothing was admitted.
    Unavailable,
}

/// `acquire` could not give a lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// Every usable key is out of capacity for the model.
    #[error("no key has capacity for {model}: {reason}; capacity returns at {}", describe_instant(*until_ms))]
    Exhausted {
        /// The model asked for.
        model: String,
        /// What ran out.
        reason: Exhaustion,
        /// The earliest moment any key can serve again (Unix ms).
        until_ms: i64,
    },
    /// Every key is disabled.
    #[error(
        "every key is disabled for {model} ({detail}); fix or replace the keys, then run `keyturn keys check` (it re-enables the keys that answer) or `keyturn keys reset LABEL` for each; `keys reset --all` would also zero every quota counter"
    )]
    AllKeysDisabled {
        /// The model asked for.
        model: String,
        /// Labels and reasons.
        detail: String,
    },
    /// No project we have may send this model: the built-in table or the configuration gives
    /// it no quota, or the server reported `limit: 0` for it or switched the projects off as a
    /// whole (402 credits depleted); what the server switched off is re-probed after its expiry.
    #[error(
        "model {model} is not available to any configured project now: {detail}; use another model or a project with access"
    )]
    ModelUnavailable {
        /// The model asked for.
        model: String,
        /// Per project, who decided and until when ([`crate::snapshot::ScopeStatus::why_off`]).
        detail: String,
    },
    /// One request needs more than a whole minute's or day's limit: it can never be admitted.
    #[error("one request for {model} needs {demand} {what}, more than the limit of {limit}")]
    DemandTooLarge {
        /// The model asked for.
        model: String,
        /// "requests per minute", "input tokens per minute", "requests per day".
        what: &'static str,
        /// What was asked.
        demand: u64,
        /// The limit.
        limit: u64,
    },
    /// The shared ledger could not be reached; nothing was admitted (fail closed).
    #[error("quota ledger unavailable: {0}")]
    Backend(#[source] BackendError),
}

impl AcquireError {
    /// The classification that drives what the caller does next.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Exhausted {
                reason: Exhaustion::RequestsPerDay | Exhaustion::TokensPerDay,
                ..
            } => ErrorKind::ExhaustedForDay,
            Self::Exhausted { .. } => ErrorKind::Throttled,
            Self::AllKeysDisabled { .. } => ErrorKind::KeysDead,
            Self::ModelUnavailable { .. } | Self::DemandTooLarge { .. } => ErrorKind::Permanent,
            Self::Backend(_) => ErrorKind::Unavailable,
        }
    }

    /// When capacity returns, if it will.
    pub fn retry_at_ms(&self) -> Option<i64> {
        match self {
            Self::Exhausted { until_ms, .. } => Some(*until_ms),
            _ => None,
        }
    }
}

/// A ledger operation other than acquire failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The reset target does not exist.
    #[error("nothing to reset: {0}")]
    UnknownTarget(String),
    /// A snapshot cannot be restored.
    #[error("cannot restore state: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The backend failed.
    #[error("quota ledger unavailable: {0}")]
    Backend(#[source] BackendError),
}

/// A snapshot that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Written by a newer keyturn.
    #[error(
        "state schema {found} is newer than this keyturn understands ({supported}); upgrade keyturn or move the state aside"
    )]
    NewerSchema {
        /// Schema in the snapshot.
        found: u32,
        /// Newest this build reads.
        supported: u32,
    },
}

/// A state store failed. Paths are shown; contents and keys never.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("state file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error(
        "state file {} is not valid keyturn state ({detail}); it was left untouched: move it aside or run `keyturn state reset`",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Written by a newer keyturn.
    #[error(
        "state file {} has schema {found}, newer than this keyturn understands ({supported}); it was left untouched: upgrade keyturn or use another KEYTURN_STATE_DIR",
        path.display()
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Schema found.
        found: u32,
        /// Newest supported.
        supported: u32,
    },
    /// Another process owns the file.
    #[error(
        "state file {} is locked by another keyturn process{}; use KEYTURN_REDIS_URL to share quota between processes",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The file.
        path: PathBuf,
        /// The owner, if known.
        pid: Option<u32>,
    },
    /// Another backend failed (Redis).
    #[error("state backend unavailable: {0}")]
    Backend(#[source] BackendError),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[test]
    fn a_backend_failure_keeps_its_cause_as_the_source_not_in_the_text() {
        let e = AcquireError::Backend(BackendError::caused_by(
            "Redis at redis://h:6379 did not answer",
            Refused,
        ));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let backend = e.source().expect("the backend failure is the source");
        let cause = backend.source().expect("its cause is kept");
        assert!(cause.is::<Refused>());
        assert_eq!(
            e.to_string(),
            "quota ledger unavailable: Redis at redis://h:6379 did not answer"
        );
        // Clone and equality survive the boxed cause.
        assert_eq!(e.clone(), e);
        let store = StoreError::Backend(BackendError::caused_by("state writer stopped", Refused));
        assert!(
            store
                .source()
                .and_then(|b| b.source())
                .is_some_and(|c| c.is::<Refused>())
        );
    }
}
