//! The planner's arithmetic, case by case.

use super::*;
use crate::prices::price_of;

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
