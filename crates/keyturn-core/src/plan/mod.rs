//! Know before you spend: when a job of known size would finish on a pool's quota, which limit
//! holds it back, how many Pacific days it spans, and what it costs.
//!
//! Pure arithmetic: the work (requests and input tokens per model), the capacity of each
//! (project, model) scope (its limits in force and what today has already spent) and "now" come
//! in as arguments; nothing is read or sent. `keyturn plan` feeds it the inputs of a seed; a
//! console can feed it the rate it observes ([`runs_out_today`]).
//!
//! The model is a fluid one: each scope serves requests at the pace its per-minute limits allow
//! (the lower of RPM and TPM ÷ tokens per request), until its per-day cap (the lower of RPD and
//! TPD ÷ tokens per request) is spent; then it waits for the next midnight in
//! America/Los_Angeles. Scopes of one model work side by side, as the ledger spreads requests
//! over every project with room. The pace of the caller itself (latency, concurrency) is not
//! modelled: the plan is what the quota allows, a lower bound on the time when the quota binds.
//!
//! This module holds the inputs and the plan; `fluid.rs` the fluid schedule of one model,
//! `pace.rs` the "when does it run out today" question, `tests.rs` the cases.

use serde::{Deserialize, Serialize};

use crate::limits::{ModelLimits, Tier};
use crate::pacific::QuotaDay;
use crate::prices::Price;

mod fluid;
mod pace;
#[cfg(test)]
mod tests;

use self::fluid::plan_model;
pub use self::pace::{runs_out_today, runs_out_today_at_todays_pace};

/// What a job asks of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// Model id.
    pub model: String,
    /// Requests as the quota counts them (an embedding batch of n texts counts n).
    pub requests: u64,
    /// Estimated input tokens, all requests together.
    pub input_tokens: u64,
    /// Estimated output tokens, all requests together (for the cost only).
    pub output_tokens: u64,
}

/// What one (project, model) scope can still give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Project id.
    pub project: String,
    /// Model id.
    pub model: String,
    /// Limits in force (configured, built-in or learned, whichever the ledger applies).
    pub limits: ModelLimits,
    /// The project's tier: free-tier projects are not billed.
    pub tier: Tier,
    /// Requests already counted today (Pacific).
    pub rpd_used: u64,
    /// Input tokens already counted today (Pacific).
    pub tpd_used: u64,
    /// Whether the scope admits nothing (switched off, no usable key): reported, never counted
    /// as room.
    pub off: bool,
    /// Whether the scope is exhausted for today whatever its counters say (the server said so).
    pub exhausted_today: bool,
}

/// A limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Limit {
    /// Requests per minute.
    Rpm,
    /// Input tokens per minute.
    Tpm,
    /// Requests per Pacific day.
    Rpd,
    /// Input tokens per Pacific day.
    Tpd,
}

impl Limit {
    /// Its name as the status table and Google's console spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rpm => "RPM",
            Self::Tpm => "TPM",
            Self::Rpd => "RPD",
            Self::Tpd => "TPD",
        }
    }
}

/// The plan of one (project, model) scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopePlan {
    /// Project id.
    pub project: String,
    /// Model id.
    pub model: String,
    /// Requests this scope would serve.
    pub requests: u64,
    /// Its pace while it has room (requests per minute); `None`: no per-minute limit.
    pub per_minute: Option<f64>,
    /// Which per-minute limit sets the pace.
    pub minute_limit: Option<Limit>,
    /// Requests it may serve in a whole day; `None`: no daily cap.
    pub per_day: Option<u64>,
    /// Which per-day limit caps the day.
    pub day_limit: Option<Limit>,
    /// The limit that decides when this scope's share is done: the day cap if the scope uses
    /// up a day, else the per-minute limit. `None` when the scope is off or serves nothing.
    pub binds: Option<Limit>,
    /// When its day cap runs out today (Unix ms), if it does.
    pub runs_out_today_ms: Option<i64>,
    /// Switched off or without a usable key: no room at all.
    pub off: bool,
    /// The project's tier.
    pub tier: Tier,
    /// Estimated cost of its requests, interactive (USD; 0 on the free tier).
    pub cost_usd: f64,
    /// The same through the Batch API (half price).
    pub batch_cost_usd: f64,
}

/// A pause: every scope of a model out of room until the next Pacific midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// From (Unix ms).
    pub from_ms: i64,
    /// Until: a Pacific midnight (Unix ms).
    pub until_ms: i64,
}

/// The plan of one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelPlan {
    /// Model id.
    pub model: String,
    /// Requests as the quota counts them.
    pub requests: u64,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// Estimated output tokens.
    pub output_tokens: u64,
    /// Per project.
    pub scopes: Vec<ScopePlan>,
    /// When the last request would go (Unix ms); `None` if it never can ([`Self::blocked`]).
    pub finish_ms: Option<i64>,
    /// When the first request could go (Unix ms): now, or the next midnight if today is spent.
    pub starts_ms: Option<i64>,
    /// Pacific days on which the model's requests go, from its start to its finish (0 for no
    /// work).
    pub days: u32,
    /// Waits for midnight on the way.
    pub pauses: Vec<Pause>,
    /// Why the work cannot be done at all (every project has the model off, or a zero limit).
    pub blocked: Option<String>,
    /// The price used, if the table has the model.
    pub price: Option<Price>,
    /// Estimated cost, interactive (USD, billed projects only).
    pub cost_usd: f64,
    /// The same through the Batch API.
    pub batch_cost_usd: f64,
}

/// The plan of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// When it was made (Unix ms).
    pub at_ms: i64,
    /// Per model.
    pub models: Vec<ModelPlan>,
    /// When the whole job would be done (the last model's finish); `None` if some model is
    /// blocked.
    pub finish_ms: Option<i64>,
    /// Pacific days on which the job sends requests, from the first to the last.
    pub days: u32,
    /// Estimated cost, interactive (USD).
    pub cost_usd: f64,
    /// Estimated cost through the Batch API (USD).
    pub batch_cost_usd: f64,
}

/// How far the planner looks before it calls a job endless (ten years of days).
const MAX_DAYS: u32 = 3_660;

const MS_PER_MINUTE: f64 = 60_000.0;

/// Plans `work` on `capacity` from `now_ms`. Scopes of models the work does not name are
/// ignored; a model the work names with no scope at all is blocked.
pub fn plan(work: &[Work], capacity: &[Capacity], now_ms: i64) -> Plan {
    let models: Vec<ModelPlan> = work
        .iter()
        .map(|w| {
            let scopes: Vec<&Capacity> = capacity.iter().filter(|c| c.model == w.model).collect();
            plan_model(w, &scopes, now_ms)
        })
        .collect();
    let blocked = models.iter().any(|m| m.blocked.is_some());
    let finish_ms = if blocked {
        None
    } else {
        Some(
            models
                .iter()
                .filter_map(|m| m.finish_ms)
                .max()
                .unwrap_or(now_ms),
        )
    };
    let days = match finish_ms {
        Some(f) if models.iter().any(|m| m.requests > 0) => days_between(
            models
                .iter()
                .filter_map(|m| m.starts_ms)
                .min()
                .unwrap_or(now_ms),
            f,
        ),
        _ => models.iter().map(|m| m.days).max().unwrap_or(0),
    };
    Plan {
        at_ms: now_ms,
        cost_usd: models.iter().map(|m| m.cost_usd).sum(),
        batch_cost_usd: models.iter().map(|m| m.batch_cost_usd).sum(),
        models,
        finish_ms,
        days,
    }
}

/// Pacific days from the one holding `from` to the one holding `to`, both counted.
pub fn days_between(from_ms: i64, to_ms: i64) -> u32 {
    let mut day = QuotaDay::containing(from_ms);
    let mut n = 1;
    while day.end_ms <= to_ms && n < MAX_DAYS {
        day = QuotaDay::containing(day.end_ms);
        n += 1;
    }
    n
}

impl Capacity {
    /// A scope's capacity as the ledger's status reports it now.
    pub fn of_status(s: &crate::snapshot::ScopeStatus) -> Self {
        Self {
            project: s.project.clone(),
            model: s.model.clone(),
            limits: s.limits,
            tier: s.tier,
            rpd_used: s.rpd_used,
            tpd_used: s.tpd_used,
            off: s.state == crate::snapshot::ScopeState::Off || s.project_off,
            exhausted_today: s.state == crate::snapshot::ScopeState::Exhausted,
        }
    }
}
