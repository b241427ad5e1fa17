//! Gemini's refusals as a typed error: [`GeminiError`], carrying context (status, model, key
//! label) and never a key, with an [`ErrorKind`] that decides what happens next (retry on another
//! key, on another project, back off, or stop) and an [`Outcome`] the ledger learns from
//! ([`GeminiError::outcome`]). How an error answer is read into a kind — from the HTTP status and
//! the `google.rpc.Status` body's structured details, never from message text — is
//! [`classify`]'s, with the rules in its module.

use std::time::Duration;

use keyturn_core::{AcquireError, DeadReason, ErrorKind as QuotaErrorKind, Outcome, ThrottleKind};

use crate::transport::{InvalidName, SendError};

mod classify;

pub use classify::{Classified, classify, parse_retry_delay, quota_kind, refused_reason};
pub use keyturn_core::redact;

/// What kind of failure, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 429: this scope is throttled; retry on another key.
    Throttled(ThrottleKind),
    /// The model is not available to this key's project (`limit: 0`); retry on another project.
    ModelUnavailable,
    /// The key is dead; retry on another key.
    DeadKey(DeadReason),
    /// The API is off for the key's whole project (`SERVICE_DISABLED`); retry on another project.
    ProjectDead(DeadReason),
    /// The project cannot be served at all for now (402 credits depleted, a zero whole-API
    /// quota); retry on another project.
    ProjectOff,
    /// A 403 without a structured reason: a probe with the same key decides what it was.
    Unverified,
    /// The service or the network failed; back off and retry.
    Transient,
    /// The request is wrong (400, 404); do not retry.
    CallerFault,
    /// No key can take the request (from the ledger), and what kind of refusal that is: for
    /// minutes, for the day, every key dead, never as asked, or the ledger unreachable.
    NoCapacity(QuotaErrorKind),
    /// An internal invariant failed (a bug): nothing is blamed, nothing is retried.
    Internal,
}

/// A failed Gemini call. Carries context (status, model, key label) and the server's message
/// with any key removed; never a key.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GeminiError {
    /// The server refused.
    #[error(transparent)]
    Api(Box<ApiFailure>),
    /// The request never got an answer (connect, timeout, cut-off body).
    #[error("no usable answer from Gemini for {model} on key '{key}': {detail}")]
    Transport {
        /// Model.
        model: String,
        /// Key label.
        key: String,
        /// What happened.
        detail: String,
    },
    /// No key could take the request.
    #[error(transparent)]
    Quota(#[from] AcquireError),
    /// Retries ran out.
    #[error(
        "gave up on {model} after {attempts} attempts over {elapsed_ms} ms; last error: {last}"
    )]
    RetriesExhausted {
        /// Model.
        model: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed_ms: u64,
        /// The last error.
        last: Box<GeminiError>,
    },
    /// An internal invariant failed (a lease naming an unknown key, no attempt made): a bug,
    /// classified [`ErrorKind::Internal`], blaming no key.
    #[error("quota ledger: {0}")]
    Ledger(String),
    /// The request names a model or method that cannot be sent upstream; no key was used.
    #[error(transparent)]
    Invalid(#[from] InvalidName),
    /// The upstream answered with a redirect, which keyturn never follows.
    #[error("no answer from Gemini for {model}: {detail}")]
    Redirected {
        /// Model (or path).
        model: String,
        /// The status and the host it pointed to.
        detail: SendError,
    },
}

impl GeminiError {
    /// The classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Api(a) => a.kind,
            Self::Transport { .. } => ErrorKind::Transient,
            Self::Quota(q) => ErrorKind::NoCapacity(q.kind()),
            Self::RetriesExhausted { last, .. } => last.kind(),
            Self::Ledger(_) => ErrorKind::Internal,
            // Neither says anything about a key, and retrying cannot help.
            Self::Invalid(_) | Self::Redirected { .. } => ErrorKind::CallerFault,
        }
    }

    /// The ledger's error, if no key could take the request (for exit codes: exhausted for the
    /// day → 3, all keys dead → 4).
    pub fn quota(&self) -> Option<&AcquireError> {
        match self {
            Self::Quota(e) => Some(e),
            Self::RetriesExhausted { last, .. } => last.quota(),
            _ => None,
        }
    }

    /// Whether capacity is gone for the day on every key.
    pub fn is_exhausted_for_day(&self) -> bool {
        self.quota()
            .is_some_and(|e| e.kind() == QuotaErrorKind::ExhaustedForDay)
    }

    /// What the ledger should learn from this error: a 402 or a zero whole-API quota switches
    /// the key's whole project off ([`Outcome::ProjectOff`]), `SERVICE_DISABLED` disables every
    /// key of it ([`Outcome::ProjectDead`]), a zero model quota or `FAILED_PRECONDITION` the
    /// model for that project ([`Outcome::ModelUnavailable`]); switch-offs last until a re-probe
    /// after the next Pacific midnight (or `relearn_after`).
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Api(a) => match a.kind {
                ErrorKind::Throttled(k) => Outcome::Throttled {
                    kind: k,
                    retry_after: a.retry_after,
                    quota_value: a.quota_value,
                },
                ErrorKind::ModelUnavailable => Outcome::ModelUnavailable,
                ErrorKind::DeadKey(r) => Outcome::KeyDead(r),
                // About the whole project: one refusal switches off every model of it (until
                // a re-probe), or disables every key of it, so no other key or model of that
                // project is spent finding out again.
                ErrorKind::ProjectOff => Outcome::ProjectOff,
                ErrorKind::ProjectDead(r) => Outcome::ProjectDead(r),
                // Settled only after the probe decided (see RotatingCaller); unresolved, it
                // blames nothing.
                ErrorKind::Unverified => Outcome::CallerFault,
                ErrorKind::Transient => Outcome::Transient,
                ErrorKind::CallerFault | ErrorKind::NoCapacity(_) | ErrorKind::Internal => {
                    Outcome::CallerFault
                }
            },
            Self::Transport { .. } => Outcome::Transient,
            // An internal failure says nothing about the key or the service.
            Self::Ledger(_)
            | Self::Quota(_)
            | Self::RetriesExhausted { .. }
            | Self::Invalid(_)
            | Self::Redirected { .. } => Outcome::CallerFault,
        }
    }
}

/// A refusal from the server, in detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Gemini answered {status} {status_text} for {model} on key '{key}': {message}")]
pub struct ApiFailure {
    /// HTTP status.
    pub status: u16,
    /// `error.status` (RESOURCE_EXHAUSTED, …).
    pub status_text: String,
    /// The message, redacted.
    pub message: String,
    /// Model.
    pub model: String,
    /// Key label.
    pub key: String,
    /// Classification.
    pub kind: ErrorKind,
    /// `RetryInfo.retryDelay`.
    pub retry_after: Option<Duration>,
    /// The violated quota's value.
    pub quota_value: Option<u64>,
    /// The error body as the server sent it, with any key removed (for pass-through).
    pub body: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn failure(status: u16, b: &[u8]) -> GeminiError {
        let c = classify(status, b);
        GeminiError::Api(Box::new(ApiFailure {
            status,
            status_text: c.status_text,
            message: c.message,
            model: "gemini-2.5-flash".into(),
            key: "k0".into(),
            kind: c.kind,
            retry_after: c.retry_after,
            quota_value: c.quota_value,
            body: String::new(),
        }))
    }

    /// What a project-wide refusal does to a pool: the ledger hears about the project, not one
    /// key or one model of it.
    #[test]
    fn project_wide_refusals_settle_as_project_outcomes() {
        use keyturn_core::testkit::{ROOMY, TIGHT, config};
        use keyturn_core::{ApiKey, Demand, InMemoryLedger, KeyRing, KeySpec, ManualClock};
        use std::sync::Arc;

        let credits = body(
            json!({"error": {"code": 402, "status": "FAILED_PRECONDITION",
            "message": "Your prepayment credits are depleted."}}),
        );
        let disabled = body(
            json!({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "API disabled",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "SERVICE_DISABLED", "domain": "googleapis.com"}]}}),
        );
        assert_eq!(failure(402, &credits).outcome(), Outcome::ProjectOff);
        assert_eq!(
            failure(403, &disabled).outcome(),
            Outcome::ProjectDead(DeadReason::ServiceDisabled)
        );

        // Keys 0 and 1 share project p; key 2 is project q.
        let spec = |n: usize, p: &str| {
            KeySpec::new(ApiKey::new(format!("made-up-outcome-key-{n:03}")).unwrap())
                .label(format!("k{n}"))
                .project(p)
        };
        let ring =
            || Arc::new(KeyRing::new(vec![spec(0, "p"), spec(1, "p"), spec(2, "q")]).unwrap());
        let clock = Arc::new(ManualClock::at_ms(keyturn_core::testkit::T0_MS));
        let l = InMemoryLedger::new(ring(), config(100, 100_000, 1000), clock.clone());
        let lease = l.try_acquire(TIGHT, Demand::tokens(1)).unwrap();
        assert_eq!(lease.key().index(), 0);
        l.settle_now(lease, failure(402, &credits).outcome());
        for m in [TIGHT, ROOMY, TIGHT, ROOMY] {
            let lease = l.try_acquire(m, Demand::tokens(1)).unwrap();
            assert_eq!(lease.key().index(), 2, "{m}: project p is off, every model");
            l.settle_now(lease, Outcome::success(1));
        }

        let l = InMemoryLedger::new(ring(), config(100, 100_000, 1000), clock);
        let lease = l.try_acquire(TIGHT, Demand::tokens(1)).unwrap();
        l.settle_now(lease, failure(403, &disabled).outcome());
        let st = l.status_now();
        let dead: Vec<bool> = st.keys.iter().map(|k| k.disabled.is_some()).collect();
        assert_eq!(dead, [true, true, false], "every key of project p, at once");
    }

    #[test]
    fn redaction_removes_the_key_and_key_shaped_strings() {
        let key = "made-up-key-123";
        assert_eq!(
            redact(
                "Consumer 'api_key:made-up-key-123' has been suspended.",
                key
            ),
            "Consumer 'api_key:[key]' has been suspended."
        );
        let google_shaped = format!("x AIza{} y", "a".repeat(35));
        assert_eq!(redact(&google_shaped, "other"), "x [key] y");
        assert_eq!(redact("AIzaShort", ""), "AIzaShort");
    }
}
