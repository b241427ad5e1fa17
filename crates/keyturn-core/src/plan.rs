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

use serde::{Deserialize, Serialize};

use crate::limits::{ModelLimits, Tier};
use crate::pacific::QuotaDay;
use crate::prices::{Price, price_of};

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

/// The pace and day cap of one scope for requests of `tokens` input tokens each.
struct Shape {
    /// Requests per ms (infinite without a per-minute limit).
    rate: f64,
    minute_limit: Option<Limit>,
    /// Requests per whole day (infinite without a cap).
    per_day: f64,
    day_limit: Option<Limit>,
}

fn lower(a: Option<(f64, Limit)>, b: Option<(f64, Limit)>) -> Option<(f64, Limit)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

fn shape(l: &ModelLimits, tokens: f64) -> Shape {
    let per = |v: Option<u64>, kind: Limit, tokens_based: bool| {
        v.map(|v| {
            let v = v as f64;
            let n = if tokens_based {
                if tokens > 0.0 {
                    v / tokens
                } else {
                    f64::INFINITY
                }
            } else {
                v
            };
            (n, kind)
        })
    };
    let minute = lower(per(l.rpm, Limit::Rpm, false), per(l.tpm, Limit::Tpm, true));
    let day = lower(per(l.rpd, Limit::Rpd, false), per(l.tpd, Limit::Tpd, true));
    Shape {
        rate: minute.map_or(f64::INFINITY, |(n, _)| n / MS_PER_MINUTE),
        minute_limit: minute.filter(|(n, _)| n.is_finite()).map(|(_, k)| k),
        per_day: day.map_or(f64::INFINITY, |(n, _)| n.floor()),
        day_limit: day.filter(|(n, _)| n.is_finite()).map(|(_, k)| k),
    }
}

/// What is left of today for a scope: its day cap minus what today has spent.
fn left_today(c: &Capacity, s: &Shape, tokens: f64) -> f64 {
    if c.exhausted_today {
        return 0.0;
    }
    let by_requests = c
        .limits
        .rpd
        .map_or(f64::INFINITY, |r| r.saturating_sub(c.rpd_used) as f64);
    let by_tokens = match c.limits.tpd {
        Some(t) if tokens > 0.0 => (t.saturating_sub(c.tpd_used) as f64 / tokens).floor(),
        _ => f64::INFINITY,
    };
    by_requests.min(by_tokens).min(s.per_day)
}

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

fn plan_model(w: &Work, scopes: &[&Capacity], now_ms: i64) -> ModelPlan {
    let tokens = if w.requests > 0 {
        w.input_tokens as f64 / w.requests as f64
    } else {
        0.0
    };
    let shapes: Vec<Shape> = scopes.iter().map(|c| shape(&c.limits, tokens)).collect();
    let usable: Vec<bool> = scopes
        .iter()
        .zip(&shapes)
        .map(|(c, s)| !c.off && !c.limits.is_off() && s.rate > 0.0 && s.per_day >= 1.0)
        .collect();
    let mut served = vec![0.0_f64; scopes.len()];
    let mut runs_out: Vec<Option<i64>> = vec![None; scopes.len()];
    let mut pauses = Vec::new();
    let mut blocked = None;
    let mut finish_ms = None;

    if w.requests == 0 {
        finish_ms = Some(now_ms);
    } else if !usable.iter().any(|u| *u) {
        blocked = Some(if scopes.is_empty() {
            format!("no project has a key for {}", w.model)
        } else {
            format!(
                "every project has {} switched off or at a zero limit",
                w.model
            )
        });
    } else {
        let mut left = w.requests as f64;
        let mut t = now_ms as f64;
        let mut day = QuotaDay::containing(now_ms);
        let mut room: Vec<f64> = scopes
            .iter()
            .zip(&shapes)
            .map(|(c, s)| left_today(c, s, tokens))
            .collect();
        // A scope whose day is already spent ran out before now.
        for (i, r) in room.iter().enumerate() {
            if usable[i] && *r < 1.0 {
                runs_out[i] = Some(now_ms);
            }
        }
        let mut first_day = true;
        let mut n_days = 0;
        // Work that remains below this is done: floating point leaves crumbs.
        const EPS: f64 = 1e-6;
        while left > EPS && n_days < MAX_DAYS {
            let active: Vec<usize> = (0..scopes.len())
                .filter(|&i| usable[i] && room[i] >= 1.0 - EPS)
                .collect();
            if active.is_empty() {
                // Out of room until midnight.
                pauses.push(Pause {
                    from_ms: t.round() as i64,
                    until_ms: day.end_ms,
                });
                t = day.end_ms as f64;
                day = QuotaDay::containing(day.end_ms);
                room = shapes.iter().map(|s| s.per_day).collect();
                first_day = false;
                n_days += 1;
                continue;
            }
            // Scopes without a per-minute limit serve their room at once.
            let instant: Vec<usize> = active
                .iter()
                .copied()
                .filter(|&i| shapes[i].rate.is_infinite())
                .collect();
            if !instant.is_empty() {
                for i in instant {
                    let take = room[i].min(left);
                    served[i] += take;
                    room[i] -= take;
                    left -= take;
                    if room[i] < 1.0 - EPS && first_day && runs_out[i].is_none() {
                        runs_out[i] = Some(t.round() as i64);
                    }
                }
                continue;
            }
            let total: f64 = active.iter().map(|&i| shapes[i].rate).sum();
            let to_finish = left / total;
            let to_midnight = day.end_ms as f64 - t;
            let to_run_out = active
                .iter()
                .map(|&i| room[i] / shapes[i].rate)
                .fold(f64::INFINITY, f64::min);
            let dt = to_finish.min(to_midnight).min(to_run_out).max(0.0);
            for &i in &active {
                let take = (shapes[i].rate * dt).min(room[i]);
                served[i] += take;
                room[i] -= take;
                if room[i] < 1.0 - EPS && first_day && runs_out[i].is_none() {
                    runs_out[i] = Some((t + dt).round() as i64);
                }
            }
            left -= total * dt;
            t += dt;
            if left <= EPS {
                finish_ms = Some(t.round() as i64);
            } else if dt >= to_midnight {
                day = QuotaDay::containing(day.end_ms);
                t = day.start_ms as f64;
                room = shapes.iter().map(|s| s.per_day).collect();
                first_day = false;
                n_days += 1;
            }
        }
        if left > EPS {
            blocked = Some(format!("{} would take more than {MAX_DAYS} days", w.model));
        } else if finish_ms.is_none() {
            finish_ms = Some(t.round() as i64);
        }
    }

    let shares = whole_requests(&served, if finish_ms.is_some() { w.requests } else { 0 });
    let price = price_of(&w.model).copied();
    let per_request = |total: u64| {
        if w.requests > 0 {
            total as f64 / w.requests as f64
        } else {
            0.0
        }
    };
    let (in_per, out_per) = (per_request(w.input_tokens), per_request(w.output_tokens));
    let scope_plans: Vec<ScopePlan> = scopes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let s = &shapes[i];
            let requests = shares[i];
            let used_a_day = runs_out[i].is_some()
                || (finish_ms.is_some_and(|f| days_between(now_ms, f) > 1) && requests > 0);
            let binds = if !usable[i] || requests == 0 {
                None
            } else if used_a_day && s.day_limit.is_some() {
                s.day_limit
            } else {
                s.minute_limit.or(s.day_limit)
            };
            let billed = c.tier != Tier::Free;
            let cost = match (&price, billed) {
                (Some(p), true) => p.cost(requests as f64 * in_per, requests as f64 * out_per),
                _ => 0.0,
            };
            ScopePlan {
                project: c.project.clone(),
                model: c.model.clone(),
                requests,
                per_minute: s.rate.is_finite().then_some(s.rate * MS_PER_MINUTE),
                minute_limit: s.minute_limit,
                per_day: s.per_day.is_finite().then_some(s.per_day as u64),
                day_limit: s.day_limit,
                binds,
                runs_out_today_ms: runs_out[i],
                off: !usable[i],
                tier: c.tier,
                cost_usd: cost,
                batch_cost_usd: cost * crate::prices::BATCH_DISCOUNT,
            }
        })
        .collect();
    // A day already spent sends nothing: the work starts after the first pause.
    let starts_ms = match pauses.first() {
        Some(p) if p.from_ms <= now_ms => p.until_ms,
        _ => now_ms,
    };
    let days = match (finish_ms, w.requests) {
        (_, 0) => 0,
        (Some(f), _) => days_between(starts_ms, f),
        (None, _) => 0,
    };
    ModelPlan {
        starts_ms: (w.requests > 0 && blocked.is_none()).then_some(starts_ms),
        model: w.model.clone(),
        requests: w.requests,
        input_tokens: w.input_tokens,
        output_tokens: w.output_tokens,
        cost_usd: scope_plans.iter().map(|s| s.cost_usd).sum(),
        batch_cost_usd: scope_plans.iter().map(|s| s.batch_cost_usd).sum(),
        scopes: scope_plans,
        finish_ms,
        days,
        pauses,
        blocked,
        price,
    }
}

/// Whole requests per scope from the fluid shares, summing to `total` when the work is done
/// (largest remainders first), so the table adds up.
fn whole_requests(served: &[f64], total: u64) -> Vec<u64> {
    let mut whole: Vec<u64> = served.iter().map(|x| x.floor().max(0.0) as u64).collect();
    if total == 0 {
        return whole;
    }
    let mut order: Vec<usize> = (0..served.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = served[a] - served[a].floor();
        let rb = served[b] - served[b].floor();
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    let mut missing = total.saturating_sub(whole.iter().sum());
    for i in order.into_iter().cycle().take(served.len() * 2) {
        if missing == 0 {
            break;
        }
        if served[i] > 0.0 {
            whole[i] += 1;
            missing -= 1;
        }
    }
    whole
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

/// The proxy operator's question for one scope of a status taken at `now_ms`: at today's pace
/// (today's requests and input tokens over the minutes since Pacific midnight), when does it
/// run out today? `None`: not today (or nothing was sent yet, so there is no pace).
pub fn runs_out_today_at_todays_pace(s: &crate::snapshot::ScopeStatus, now_ms: i64) -> Option<i64> {
    let minutes = (now_ms - QuotaDay::containing(now_ms).start_ms) as f64 / MS_PER_MINUTE;
    let c = Capacity::of_status(s);
    if minutes <= 0.0 {
        return runs_out_today(&c, 0.0, 0.0, now_ms);
    }
    runs_out_today(
        &c,
        s.rpd_used as f64 / minutes,
        s.tpd_used as f64 / minutes,
        now_ms,
    )
}

/// At today's pace, when a scope runs out of its day (Unix ms): `None` if its day cap outlasts
/// today at that pace, or it has none. The proxy's question: "at today's rate, when does each
/// project and model run out today". `requests_per_minute` and `tokens_per_minute` are the pace
/// observed (e.g. today's use divided by the minutes since midnight).
pub fn runs_out_today(
    c: &Capacity,
    requests_per_minute: f64,
    tokens_per_minute: f64,
    now_ms: i64,
) -> Option<i64> {
    let day = QuotaDay::containing(now_ms);
    if c.off || c.limits.is_off() || c.exhausted_today {
        return Some(now_ms);
    }
    let by = |cap: Option<u64>, used: u64, pace: f64| -> Option<f64> {
        let cap = cap?;
        let left = cap.saturating_sub(used) as f64;
        if left <= 0.0 {
            return Some(0.0);
        }
        (pace > 0.0).then(|| left / pace * MS_PER_MINUTE)
    };
    let in_ms = [
        by(c.limits.rpd, c.rpd_used, requests_per_minute),
        by(c.limits.tpd, c.tpd_used, tokens_per_minute),
    ]
    .into_iter()
    .flatten()
    .fold(f64::INFINITY, f64::min);
    let at = now_ms as f64 + in_ms;
    (at < day.end_ms as f64).then(|| at.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn cap(project: &str, model: &str, limits: ModelLimits) -> Capacity {
        Capacity {
            project: project.into(),
            model: model.into(),
            limits,
            tier: Tier::Free,
            rpd_used: 0,
            tpd_used: 0,
            off: false,
            exhausted_today: false,
        }
    }

    fn work(model: &str, requests: u64, tokens: u64) -> Work {
        Work {
            model: model.into(),
            requests,
            input_tokens: tokens,
            output_tokens: 0,
        }
    }

    const M: &str = "gemini-2.5-flash";
    // 10:00 Pacific (PST, UTC-8) on a Tuesday: 14 hours before midnight.
    const TEN_AM_PT: &str = "2026-12-01T18:00:00Z";

    #[test]
    fn rpm_binds_when_requests_are_small_and_the_day_is_roomy() {
        let now = ms(TEN_AM_PT);
        let p = plan(
            &[work(M, 600, 600 * 1_000)],
            &[cap("p", M, ModelLimits::new(10, 1_000_000, 10_000))],
            now,
        );
        let m = &p.models[0];
        let s = &m.scopes[0];
        assert_eq!(s.minute_limit, Some(Limit::Rpm));
        assert_eq!(s.binds, Some(Limit::Rpm));
        // 600 requests at 10 a minute: one hour.
        assert_eq!(m.finish_ms, Some(now + 60 * 60_000));
        assert_eq!(m.days, 1);
        assert!(m.pauses.is_empty());
    }

    #[test]
    fn tpm_binds_when_requests_are_large() {
        let now = ms(TEN_AM_PT);
        // 10 RPM, but 20,000 TPM of 4,000-token requests allows only 5 a minute.
        let p = plan(
            &[work(M, 50, 50 * 4_000)],
            &[cap("p", M, ModelLimits::new(10, 20_000, 10_000))],
            now,
        );
        let m = &p.models[0];
        assert_eq!(m.scopes[0].minute_limit, Some(Limit::Tpm));
        assert_eq!(m.scopes[0].binds, Some(Limit::Tpm));
        assert_eq!(m.finish_ms, Some(now + 10 * 60_000));
    }

    #[test]
    fn a_job_larger_than_a_day_pauses_at_the_cap_and_spans_pacific_midnights() {
        let now = ms(TEN_AM_PT);
        // 250 requests, 100 a day, 60 a minute: 100 today (done in 100 s), pause, 100
        // tomorrow, 50 the day after.
        let p = plan(
            &[work(M, 250, 250 * 100)],
            &[cap("p", M, ModelLimits::new(60, 1_000_000, 100))],
            now,
        );
        let m = &p.models[0];
        assert_eq!(m.days, 3);
        assert_eq!(p.days, 3);
        assert_eq!(m.scopes[0].binds, Some(Limit::Rpd));
        assert_eq!(m.pauses.len(), 2);
        assert_eq!(m.pauses[0].from_ms, now + 100_000);
        let midnight = ms("2026-12-02T08:00:00Z");
        assert_eq!(m.pauses[0].until_ms, midnight);
        assert_eq!(m.scopes[0].runs_out_today_ms, Some(now + 100_000));
        // The last 50 go on the third day, 50 s after its midnight.
        assert_eq!(m.finish_ms, Some(ms("2026-12-03T08:00:50Z")));
    }

    #[test]
    fn usage_already_spent_today_is_not_available_again() {
        let now = ms(TEN_AM_PT);
        let mut c = cap("p", M, ModelLimits::new(60, 1_000_000, 100));
        c.rpd_used = 90;
        let p = plan(&[work(M, 20, 2_000)], &[c], now);
        let m = &p.models[0];
        // 10 today, the other 10 after midnight.
        assert_eq!(m.days, 2);
        assert_eq!(m.pauses.len(), 1);
        assert_eq!(m.finish_ms, Some(ms("2026-12-02T08:00:10Z")));
        assert_eq!(m.scopes[0].runs_out_today_ms, Some(now + 10_000));
        // A day already spent ran out before now.
        let mut spent = cap("p", M, ModelLimits::new(60, 1_000_000, 100));
        spent.rpd_used = 100;
        let p = plan(&[work(M, 20, 2_000)], &[spent], now);
        assert_eq!(p.models[0].scopes[0].runs_out_today_ms, Some(now));
        assert_eq!(p.models[0].scopes[0].binds, Some(Limit::Rpd));
        // Nothing goes today: the work starts at midnight and takes one day.
        assert_eq!(p.models[0].starts_ms, Some(ms("2026-12-02T08:00:00Z")));
        assert_eq!(p.models[0].days, 1);
        assert_eq!(p.days, 1);
        // Without the spent part it fits today.
        let fresh = plan(
            &[work(M, 20, 2_000)],
            &[cap("p", M, ModelLimits::new(60, 1_000_000, 100))],
            now,
        );
        assert_eq!(fresh.models[0].days, 1);
    }

    #[test]
    fn daily_token_caps_count_too() {
        let now = ms(TEN_AM_PT);
        let mut l = ModelLimits::new(60, 1_000_000, 1_000);
        l.tpd = Some(10_000);
        // 1,000-token requests: the TPD allows 10 a day, far below the RPD.
        let p = plan(&[work(M, 15, 15_000)], &[cap("p", M, l)], now);
        let m = &p.models[0];
        assert_eq!(m.scopes[0].day_limit, Some(Limit::Tpd));
        assert_eq!(m.scopes[0].binds, Some(Limit::Tpd));
        assert_eq!(m.days, 2);
    }

    #[test]
    fn projects_work_side_by_side() {
        let now = ms(TEN_AM_PT);
        let l = ModelLimits::new(10, 1_000_000, 10_000);
        let p = plan(
            &[work(M, 600, 600)],
            &[cap("a", M, l), cap("b", M, l), cap("c", "other-model", l)],
            now,
        );
        let m = &p.models[0];
        assert_eq!(m.scopes.len(), 2, "only the model's own scopes");
        assert_eq!(m.finish_ms, Some(now + 30 * 60_000));
        assert_eq!(m.scopes[0].requests, 300);
        assert_eq!(m.scopes[1].requests, 300);
        // An odd count still adds up.
        let odd = plan(&[work(M, 17, 17)], &[cap("a", M, l), cap("b", M, l)], now);
        let shares: Vec<u64> = odd.models[0].scopes.iter().map(|s| s.requests).collect();
        assert_eq!(shares.iter().sum::<u64>(), 17, "{shares:?}");
    }

    #[test]
    fn a_model_that_is_off_everywhere_is_blocked_not_endless() {
        let now = ms(TEN_AM_PT);
        let mut off = cap("a", M, ModelLimits::new(10, 1_000_000, 100));
        off.off = true;
        let zero = cap("b", M, ModelLimits::new(0, 0, 0));
        let p = plan(&[work(M, 10, 100)], &[off, zero], now);
        let m = &p.models[0];
        assert!(m.blocked.as_deref().unwrap().contains("switched off"));
        assert_eq!(m.finish_ms, None);
        assert!(m.scopes.iter().all(|s| s.off && s.binds.is_none()));
        assert_eq!(p.finish_ms, None);
        // No key at all for the model: blocked too.
        let none = plan(&[work(M, 10, 100)], &[], now);
        assert!(none.models[0].blocked.is_some());
    }

    #[test]
    fn an_off_project_leaves_the_work_to_the_others() {
        let now = ms(TEN_AM_PT);
        let l = ModelLimits::new(10, 1_000_000, 10_000);
        let mut off = cap("a", M, l);
        off.off = true;
        let p = plan(&[work(M, 100, 100)], &[off, cap("b", M, l)], now);
        let m = &p.models[0];
        assert_eq!(m.finish_ms, Some(now + 10 * 60_000));
        assert!(m.scopes[0].off);
        assert_eq!(m.scopes[0].requests, 0);
        assert_eq!(m.scopes[1].requests, 100);
    }

    #[test]
    fn an_exhausted_scope_waits_for_midnight() {
        let now = ms(TEN_AM_PT);
        let mut c = cap("p", M, ModelLimits::new(60, 1_000_000, 100));
        c.exhausted_today = true;
        let p = plan(&[work(M, 60, 600)], &[c], now);
        let m = &p.models[0];
        assert_eq!(m.pauses[0].from_ms, now);
        assert_eq!(m.finish_ms, Some(ms("2026-12-02T08:01:00Z")));
        assert_eq!(m.days, 1, "today sends nothing");
    }

    #[test]
    fn the_job_ends_with_its_slowest_model() {
        let now = ms(TEN_AM_PT);
        let p = plan(
            &[work(M, 10, 100), work("gemini-embedding-001", 300, 300)],
            &[
                cap("p", M, ModelLimits::new(10, 1_000_000, 1_000)),
                cap(
                    "p",
                    "gemini-embedding-001",
                    ModelLimits::new(100, 1_000_000, 200),
                ),
            ],
            now,
        );
        assert_eq!(p.models[1].days, 2);
        assert_eq!(p.days, 2);
        assert_eq!(p.finish_ms, p.models[1].finish_ms);
    }

    #[test]
    fn cost_counts_billed_projects_and_batch_is_half() {
        let now = ms(TEN_AM_PT);
        let l = ModelLimits::new(1_000, 100_000_000, 1_000_000);
        let mut paid = cap("paid", M, l);
        paid.tier = Tier::Tier1;
        let w = Work {
            model: M.into(),
            requests: 1_000,
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
        };
        let p = plan(std::slice::from_ref(&w), &[paid.clone()], now);
        let price = price_of(M).unwrap();
        let expect = price.input_usd_per_million + price.output_usd_per_million;
        assert!((p.cost_usd - expect).abs() < 1e-9, "{}", p.cost_usd);
        assert!((p.batch_cost_usd - expect / 2.0).abs() < 1e-9);
        // The same work on a free-tier project costs nothing.
        let free = plan(&[w], &[cap("free", M, l)], now);
        assert_eq!(free.cost_usd, 0.0);
    }

    #[test]
    fn runs_out_today_at_the_observed_pace() {
        let now = ms(TEN_AM_PT);
        let mut c = cap("p", M, ModelLimits::new(60, 1_000_000, 1_000));
        c.rpd_used = 400;
        // 600 left at 2 a minute: 300 minutes, 15:00 PT, before midnight.
        assert_eq!(runs_out_today(&c, 2.0, 0.0, now), Some(now + 300 * 60_000));
        // At 0.5 a minute it outlasts the day.
        assert_eq!(runs_out_today(&c, 0.5, 0.0, now), None);
        // Switched off: out now.
        c.off = true;
        assert_eq!(runs_out_today(&c, 0.5, 0.0, now), Some(now));
    }

    #[test]
    fn a_status_runs_out_at_the_pace_of_its_day_so_far() {
        let now = ms(TEN_AM_PT);
        let minutes = (now - QuotaDay::containing(now).start_ms) / 60_000; // 600
        let status = |used: u64, state| crate::snapshot::ScopeStatus {
            project: "p".into(),
            model: M.into(),
            keys: vec![],
            limits: ModelLimits::new(60, 1_000_000, 1_000),
            source: crate::limits::LimitSource::Configured,
            tier: Tier::Tier1,
            table_date: None,
            origin: Default::default(),
            learned: ModelLimits::UNLIMITED,
            rpm_used: 0,
            tpm_used: 0,
            rpd_used: used,
            rpd_served: used,
            rpd_refused: 0,
            tpd_used: 0,
            state,
            cooling_until_ms: None,
            exhausted_until_ms: None,
            next_reset_ms: QuotaDay::containing(now).end_ms,
            off_until_ms: None,
            project_off: false,
            learned_until_ms: None,
        };
        use crate::snapshot::ScopeState::{Exhausted, Off, Ready};
        // 800 in 600 minutes: the 200 left last 150 more minutes, to 12:30 PT.
        assert_eq!(
            runs_out_today_at_todays_pace(&status(800, Ready), now),
            Some(now + 200 * minutes / 800 * 60_000)
        );
        // 300 in 600 minutes: 700 left need 1,400 minutes, past midnight.
        assert_eq!(
            runs_out_today_at_todays_pace(&status(300, Ready), now),
            None
        );
        // Nothing sent yet: no pace, no answer.
        assert_eq!(runs_out_today_at_todays_pace(&status(0, Ready), now), None);
        // The server ended the day, or switched it off: out now.
        assert_eq!(
            runs_out_today_at_todays_pace(&status(5, Exhausted), now),
            Some(now)
        );
        assert_eq!(
            runs_out_today_at_todays_pace(&status(0, Off), now),
            Some(now)
        );
    }

    #[test]
    fn a_day_is_counted_in_pacific_time_across_a_dst_change() {
        // 2026-03-08 is 23 hours long in Los Angeles.
        let start = ms("2026-03-08T09:00:00Z"); // 01:00 PST
        let next = ms("2026-03-09T07:00:00Z"); // 00:00 PDT
        assert_eq!(days_between(start, next - 1), 1);
        assert_eq!(days_between(start, next), 2);
    }
}
