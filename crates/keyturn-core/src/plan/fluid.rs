//! The fluid model of one model's work: each scope serves at the pace its per-minute limits
//! allow until its day cap is spent, then waits for the next Pacific midnight; scopes of one
//! model work side by side. The fluid shares are rounded to whole requests at the end.

use crate::limits::{ModelLimits, Tier};
use crate::pacific::QuotaDay;
use crate::prices::price_of;

use super::{
    Capacity, Limit, MAX_DAYS, MS_PER_MINUTE, ModelPlan, Pause, ScopePlan, Work, days_between,
};

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

pub(super) fn plan_model(w: &Work, scopes: &[&Capacity], now_ms: i64) -> ModelPlan {
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
