//! What happened to a request, as the ledger needs to know it. The transport classifies Gemini's
//! answers (by status and `quotaId`, never by message text) into an [`Outcome`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which quota a 429 named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThrottleKind {
    /// `…RequestsPerMinute…`.
    RequestsPerMinute,
    /// `…InputTokens…PerMinute…`.
    TokensPerMinute,
    /// `…RequestsPerDay…`: exhausted until Pacific midnight, whatever `retryDelay` says.
    RequestsPerDay,
    /// `…InputTokensPerModelPerDay…`: exhausted until Pacific midnight; its `quotaValue` is
    /// learned as the tokens-per-day limit.
    TokensPerDay,
    /// A 429 without details.
    Unspecified,
}

/// Why a key was disabled. Only codes, never server text (which is not ours to store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeadReason {
    /// 400 `API_KEY_INVALID`.
    Invalid,
    /// 400 `API_KEY_INVALID` saying the key expired.
    Expired,
    /// 403: the key was reported as leaked.
    Leaked,
    /// 403 `CONSUMER_SUSPENDED`.
    Suspended,
    /// 403 `SERVICE_DISABLED`.
    ServiceDisabled,
    /// 403 `API_KEY_SERVICE_BLOCKED`.
    ServiceBlocked,
    /// 403 `API_KEY_IP_ADDRESS_BLOCKED`, `…_HTTP_REFERRER_BLOCKED`, `…_ANDROID_APP_BLOCKED`,
    /// `…_IOS_APP_BLOCKED`: the key's restrictions refuse this caller.
    Blocked,
    /// Any other 403 `PERMISSION_DENIED`.
    PermissionDenied,
    /// Not Gemini's verdict: the operator took the key out of rotation
    /// ([`crate::QuotaLedger::disable_by_admin`]) until they put it back. No re-check re-enables
    /// it; a reset of the key does.
    ByAdmin,
}

impl DeadReason {
    /// Whether the operator disabled the key, rather than Gemini.
    pub fn is_admin(self) -> bool {
        self == Self::ByAdmin
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Invalid => "invalid key",
            Self::Expired => "expired key",
            Self::Leaked => "reported as leaked",
            Self::Suspended => "consumer suspended",
            Self::ServiceDisabled => "Generative Language API disabled for the project",
            Self::ServiceBlocked => "key not allowed to call this API",
            Self::Blocked => "key restricted to other callers (IP, referrer or app)",
            Self::PermissionDenied => "permission denied",
            Self::ByAdmin => "disabled by admin",
        })
    }
}

/// The most input tokens a settle counts for one lease. Gemini's largest context is a few
/// million tokens, so a larger "real" count (a broken or hostile upstream's `prompt_tokens`) is
/// no request's; it is counted as this many, which still fills any window, so no counter
/// overflows and the Redis ledger keeps every counter an integer Lua can write exactly.
pub const MAX_SETTLED_TOKENS: u64 = 1 << 40;

/// The result of a request sent under a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered. `input_tokens` is `usageMetadata.promptTokenCount` when known; it
    /// replaces the estimate reserved at acquire.
    Success {
        /// Real input tokens.
        input_tokens: Option<u64>,
    },
    /// 429 RESOURCE_EXHAUSTED.
    Throttled {
        /// Which quota (from `quotaId`).
        kind: ThrottleKind,
        /// `RetryInfo.retryDelay`.
        retry_after: Option<Duration>,
        /// `QuotaFailure…quotaValue`: the limit the server enforces, learned when lower than ours.
        quota_value: Option<u64>,
    },
    /// The server reported `limit: 0` (or `FAILED_PRECONDITION`): the model is off for this key's
    /// project, every key of it, until a re-probe (one real request after the next Pacific
    /// midnight, or after `relearn_after`).
    ModelUnavailable,
    /// The whole project cannot be served (402 prepayment credits depleted, a zero whole-API
    /// quota): every model is off for every key of the key's project, models it has not used
    /// yet included, until a re-probe as for [`Outcome::ModelUnavailable`].
    ProjectOff,
    /// The key is dead (all models) until a forced reset.
    KeyDead(DeadReason),
    /// The API is disabled for the key's whole project (`SERVICE_DISABLED`): every key of that
    /// project is disabled with this reason, as [`Outcome::KeyDead`] would do for each.
    ProjectDead(DeadReason),
    /// 500/503/504, timeouts, connection failures: counts toward the key's circuit breaker.
    Transient,
    /// The request was at fault (400, 404): says nothing about the key.
    CallerFault,
}

/// How a settled request counts in the day's account and the usage history: Gemini served it,
/// Gemini refused it on quota or access grounds (429, a model or project switched off, a dead
/// key), or neither (a transient failure, the caller's own fault). Requests *sent* are counted
/// at admission; served and refused are kept apart from them, so a day that sent 22 requests
/// to a limit of 20 shows that Gemini served 20 and refused 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// A 2xx answer.
    Served,
    /// Refused for quota or access.
    Refused,
    /// Any other failure.
    Neither,
}

impl Outcome {
    /// How this outcome counts in the usage account.
    pub fn answered(&self) -> Answered {
        match self {
            Self::Success { .. } => Answered::Served,
            Self::Throttled { .. }
            | Self::ModelUnavailable
            | Self::ProjectOff
            | Self::KeyDead(_)
            | Self::ProjectDead(_) => Answered::Refused,
            Self::Transient | Self::CallerFault => Answered::Neither,
        }
    }

    /// Success with real usage.
    pub fn success(input_tokens: u64) -> Self {
        Self::Success {
            input_tokens: Some(input_tokens),
        }
    }
}
