//! The serializable state of a pool (for state files, Redis dumps and checkpoints) and the status
//! view shown to people. Keys appear only by fingerprint and label.

use serde::{Deserialize, Serialize};

use crate::breaker::{Breaker, BreakerState};
use crate::key::Fingerprint;
use crate::limits::{LimitSource, ModelLimits, Tier};
use crate::outcome::DeadReason;

/// The newest snapshot schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Why and since when a key is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disabled {
    /// The server's reason.
    pub reason: DeadReason,
    /// When (Unix ms).
    pub since_ms: i64,
}

/// One key's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySnapshot {
    /// The key's fingerprint.
    pub fingerprint: Fingerprint,
    /// Its label when the snapshot was taken.
    pub label: String,
    /// Its project.
    pub project: String,
    /// Set if disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
    /// Its breaker.
    #[serde(default)]
    pub breaker: Breaker,
}

/// One (project, model) scope's counters and flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeSnapshot {
    /// Project id.
    pub project: String,
    /// Model id.
    pub model: String,
    /// Occupied rolling-window buckets: (second, requests, tokens).
    #[serde(default)]
    pub window: Vec<(i64, u64, u64)>,
    /// Start of the Pacific day `day_count` belongs to (Unix ms).
    pub day_start_ms: i64,
    /// Requests that day.
    pub day_count: u64,
    /// Input tokens that day (absent in older files: 0).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub day_tokens: u64,
    /// Of `day_count`, the requests Gemini served (absent in older files: 0).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub day_served: u64,
    /// Of `day_count`, the requests Gemini refused on quota or access grounds (absent in older
    /// files: 0).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub day_refused: u64,
    /// A server 429 asked us to wait until then.
    #[serde(default)]
    pub cooldown_until_ms: i64,
    /// Per-day exhaustion until then (a Pacific midnight).
    #[serde(default)]
    pub exhausted_until_ms: i64,
    /// Limits the server reported (lower than configured); `Some(0)` turns the model off.
    #[serde(default)]
    pub learned: ModelLimits,
    /// When `learned` expires (Unix ms; 0: not recorded, as in older files, which then expire
    /// at the next one from the moment they are loaded). Expired limits are forgotten; an
    /// expired switch-off lets one re-probe through.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub learned_until_ms: i64,
    /// The project's tier when this was written (absent in older files). A ledger configured
    /// with another tier for the project drops what was learned: it was about the old tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// A project switched off as a whole (402 credits depleted, a zero whole-API quota).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectSnapshot {
    /// Project id.
    pub project: String,
    /// When it was switched off (Unix ms).
    pub off_since_ms: i64,
    /// From when one re-probe may go (Unix ms).
    pub reprobe_at_ms: i64,
}

/// How many Pacific days of usage history a ledger keeps (today and the 29 before it).
pub const HISTORY_DAYS: usize = 30;

/// What one key sent to one model on one Pacific day: requests admitted and input tokens (the
/// estimate reserved at admission, corrected by the real count when the call settles). Output
/// tokens do not count against any quota and are reported by the metrics instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDay {
    /// The Pacific calendar date.
    pub date: jiff::civil::Date,
    /// The key's fingerprint.
    pub fingerprint: Fingerprint,
    /// Model id.
    pub model: String,
    /// Requests sent (admitted).
    pub requests: u64,
    /// Of those, the requests Gemini served (absent in older files: 0).
    #[serde(default)]
    pub served: u64,
    /// Of those, the requests Gemini refused on quota or access grounds: 429s, a model or
    /// project switched off, a dead key (absent in older files: 0). The rest failed otherwise
    /// (5xx, timeouts, the caller's 400s) or are still in flight.
    #[serde(default)]
    pub refused: u64,
    /// Input tokens.
    pub input_tokens: u64,
}

/// A warning already sent, so it is sent once per scope and day however many processes watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeMark {
    /// What was announced (`quota-80|proj|model|2026-11-28`, …).
    pub id: String,
    /// When the mark may be forgotten (Unix ms): the end of its day.
    pub until_ms: i64,
}

/// The whole state of a pool at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// When it was taken (Unix ms).
    pub taken_at_ms: i64,
    /// Keys' health.
    pub keys: Vec<KeySnapshot>,
    /// Scopes' counters.
    pub scopes: Vec<ScopeSnapshot>,
    /// Usage per key, model and day, for the last [`HISTORY_DAYS`] days (absent in older files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage: Vec<UsageDay>,
    /// Warnings already sent today (absent in older files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<NoticeMark>,
    /// Projects switched off as a whole (absent in older files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<ProjectSnapshot>,
}

/// What a scope can do right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeState {
    /// Has room.
    Ready,
    /// Its minute is full, or the server asked it to wait.
    Cooling,
    /// Its day is used up.
    Exhausted,
    /// The model is off for this project (`limit: 0`, `FAILED_PRECONDITION`), or the whole
    /// project is (402, a zero whole-API quota): see [`ScopeStatus::off_until_ms`].
    Off,
}

/// Status of one (project, model) scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeStatus {
    /// Project id.
    pub project: String,
    /// Model id.
    pub model: String,
    /// Labels of the keys that share this scope.
    pub keys: Vec<String>,
    /// Limits in force (configured, lowered by learned).
    pub limits: ModelLimits,
    /// Where the configured limits came from.
    pub source: LimitSource,
    /// The project's tier, whose column of the built-in table (dated
    /// [`crate::limits::BUILTIN_TABLE_DATE`]) and family defaults apply (absent in older
    /// status JSON: free).
    #[serde(default)]
    pub tier: Tier,
    /// The date of the built-in table, when `source` is the built-in table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_date: Option<String>,
    /// Where each limit in force comes from (absent in older status JSON).
    #[serde(default)]
    pub origin: LimitOrigins,
    /// Limits the server reported.
    pub learned: ModelLimits,
    /// Requests in the rolling minute.
    pub rpm_used: u64,
    /// Input tokens in the rolling minute.
    pub tpm_used: u64,
    /// Requests sent today (Pacific): what the daily limit is counted against.
    pub rpd_used: u64,
    /// Of `rpd_used`, the requests Gemini served (absent in older status JSON: 0).
    #[serde(default)]
    pub rpd_served: u64,
    /// Of `rpd_used`, the requests Gemini refused on quota or access grounds: 429s, a model or
    /// project switched off, a dead key (absent in older status JSON: 0). The rest failed
    /// otherwise or are in flight.
    #[serde(default)]
    pub rpd_refused: u64,
    /// Input tokens today (Pacific).
    #[serde(default)]
    pub tpd_used: u64,
    /// State now.
    pub state: ScopeState,
    /// Cooling until (Unix ms), if cooling.
    pub cooling_until_ms: Option<i64>,
    /// Exhausted until (Unix ms), if exhausted.
    pub exhausted_until_ms: Option<i64>,
    /// Next Pacific midnight (Unix ms): when `rpd_used` resets.
    pub next_reset_ms: i64,
    /// If off: from when one re-probe may go (Unix ms); `None` for a model the configuration
    /// itself has no quota for (the built-in table's "no free tier"), which is never probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_until_ms: Option<i64>,
    /// Whether the whole project is off (402 credits depleted, a zero whole-API quota), rather
    /// than this model for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub project_off: bool,
    /// When the learned limits expire (Unix ms), if any are learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_until_ms: Option<i64>,
}

/// Where one limit in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitOrigin {
    /// The built-in table's entry for the project's tier.
    Builtin,
    /// The family default for the project's tier (no entry in the table).
    Family,
    /// Configuration.
    Configured,
    /// Learned from the server's 429 (`quotaValue`); holds until `learned_until_ms`.
    Learned,
    /// The server switched the model or the project off (limit 0, 402, `FAILED_PRECONDITION`);
    /// re-probed from `off_until_ms`.
    ServerOff,
    /// Not known (older status JSON).
    #[default]
    Unknown,
}

/// Where each limit in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LimitOrigins {
    /// Requests per minute.
    pub rpm: LimitOrigin,
    /// Input tokens per minute.
    pub tpm: LimitOrigin,
    /// Requests per day.
    pub rpd: LimitOrigin,
    /// Input tokens per day.
    #[serde(default)]
    pub tpd: LimitOrigin,
}

/// Status of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// Label.
    pub label: String,
    /// Fingerprint.
    pub fingerprint: Fingerprint,
    /// Project.
    pub project: String,
    /// Set if disabled.
    pub disabled: Option<Disabled>,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Consecutive transient failures.
    pub failures: u32,
}

/// The status view: per key and per scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// When (Unix ms).
    pub at_ms: i64,
    /// Keys.
    pub keys: Vec<KeyStatus>,
    /// Scopes, by project then model.
    pub scopes: Vec<ScopeStatus>,
}

impl ScopeStatus {
    /// Why this scope admits nothing, and who decided it — keyturn's built-in table (with its
    /// date and the project's tier), the configuration, or Gemini (and until when) — or `None`
    /// if it is not switched off. Used by `AcquireError::ModelUnavailable` so a refusal keyturn
    /// decided is never blamed on the server.
    pub fn why_off(&self) -> Option<String> {
        let p = &self.project;
        let reprobe = |what: &str| match self.off_until_ms {
            Some(at) => format!(
                "{what}; one request re-probes it from {}",
                crate::error::describe_instant(at)
            ),
            None => what.to_owned(),
        };
        if self.project_off {
            return Some(reprobe(&format!(
                "project {p}: Gemini said the project cannot be served at all (out of prepayment credits, or no quota for any model)"
            )));
        }
        if self.origin.rpd == LimitOrigin::ServerOff {
            return Some(reprobe(&format!(
                "project {p}: Gemini reported a limit of 0 for this model (learned from the server)"
            )));
        }
        if self.limits.rpd != Some(0) {
            return None;
        }
        Some(match self.source {
            crate::limits::LimitSource::Builtin => format!(
                "project {p} ({} tier): keyturn's built-in limit table (dated {}) has no {} tier quota for this model, so nothing was sent to Gemini; if the project has access, set its tier ([projects.\"{p}\"] tier) or the model's limits in keyturn.toml",
                self.tier,
                self.table_date
                    .as_deref()
                    .unwrap_or(crate::limits::BUILTIN_TABLE_DATE),
                self.tier
            ),
            crate::limits::LimitSource::Configured => format!(
                "project {p}: the configuration sets a daily limit of 0 for this model, so nothing was sent to Gemini"
            ),
            crate::limits::LimitSource::Default | crate::limits::LimitSource::Family => format!(
                "project {p} ({} tier): the family default gives this model no quota, so nothing was sent to Gemini",
                self.tier
            ),
        })
    }
}
