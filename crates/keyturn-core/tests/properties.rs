//! Property tests of the quota arithmetic: never admit past a limit in any window, tokens
//! reconcile exactly, no key starves. Regressions persist in `tests/properties.proptest-regressions`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::testkit::{T0_MS, TIGHT, config, solo_keys};
use keyturn_core::{
    ApiKey, Clock, Demand, InMemoryLedger, KeyRing, KeySpec, ManualClock, Outcome, QuotaDay,
    QuotaLedger,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Acquire {
        requests: u32,
        tokens: u64,
        actual_discount: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..20_000).prop_map(Op::Advance),
        (1u32..4, 0u64..400, 0u64..100).prop_map(|(requests, tokens, d)| Op::Acquire {
            requests,
            tokens,
            actual_discount: d
        }),
    ]
}

fn project_keys(n: usize, projects: usize) -> KeyRing {
    KeyRing::new(
        (0..n)
            .map(|i| {
                KeySpec::new(ApiKey::new(format!("made-up-prop-key-{i}")).unwrap())
                    .label(format!("k{i}"))
                    .project(format!("p{}", i % projects))
            })
            .collect(),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever the sequence, no 60 s span of any project holds more requests or tokens than its
    /// limit, and no Pacific day more requests than RPD.
    #[test]
    fn never_admits_past_any_limit(
        ops in prop::collection::vec(op(), 1..400),
        rpm in 1u64..20, tpm in 300u64..3000, rpd in 5u64..200,
        nkeys in 1usize..6, nprojects in 1usize..4,
    ) {
        let clock = ManualClock::at_ms(T0_MS + 3 * 3_600_000 + 59 * 60_000); // near UTC midnight
        let ledger = InMemoryLedger::new(
            Arc::new(project_keys(nkeys, nprojects)),
            config(rpm, tpm, rpd),
            Arc::new(clock.clone()),
        );
        // (time, project, requests, tokens) of each admission, tokens as settled.
        let mut admitted: Vec<(i64, String, u64, u64)> = vec![];
        for op in ops {
            match op {
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::Acquire { requests, tokens, actual_discount } => {
                    if let Ok(lease) = ledger.try_acquire(TIGHT, Demand::batch(requests, tokens)) {
                        let actual = tokens.saturating_sub(actual_discount);
                        let project = ledger.keys().get(lease.key()).unwrap().project.clone();
                        admitted.push((clock.now_ms(), project, u64::from(requests), actual));
                        ledger.settle_now(lease, Outcome::success(actual));
                    }
                }
            }
        }
        for (t, p, _, _) in &admitted {
            let span: Vec<_> = admitted.iter()
                .filter(|(u, q, _, _)| q == p && *u >= *t && *u < *t + 60_000).collect();
            let reqs: u64 = span.iter().map(|a| a.2).sum();
            let toks: u64 = span.iter().map(|a| a.3).sum();
            prop_assert!(reqs <= rpm, "{reqs} requests > {rpm} in the 60 s from {t}");
            prop_assert!(toks <= tpm, "{toks} tokens > {tpm} in the 60 s from {t}");
            let day = QuotaDay::containing(*t);
            let daily: u64 = admitted.iter()
                .filter(|(u, q, _, _)| q == p && day.contains(*u)).map(|a| a.2).sum();
            prop_assert!(daily <= rpd, "{daily} > {rpd} on {}", day.date);
        }
    }

    /// Within one minute, the tokens the ledger counts equal the real usage settled, exactly.
    #[test]
    fn tokens_reconcile_exactly(
        calls in prop::collection::vec((0u64..1000, 0u64..1000), 1..50),
    ) {
        let clock = ManualClock::at_ms(T0_MS);
        let ledger = InMemoryLedger::new(
            Arc::new(solo_keys(1)), config(1000, 10_000_000, 10_000), Arc::new(clock.clone()));
        let mut real_total = 0;
        let mut leases = vec![];
        for (estimate, real) in &calls {
            leases.push((ledger.try_acquire(TIGHT, Demand::tokens(*estimate)).unwrap(), *real));
            clock.advance(Duration::from_millis(300));
        }
        for (lease, real) in leases {
            ledger.settle_now(lease, Outcome::success(real));
            real_total += real;
        }
        let st = ledger.status_now();
        prop_assert_eq!(st.scopes[0].tpm_used, real_total);
    }

    /// Round-robin over keys that all have room: counts differ by at most one, at every point.
    #[test]
    fn round_robin_starves_no_key(nkeys in 1usize..12, calls in 1usize..300) {
        let ledger = InMemoryLedger::new(
            Arc::new(solo_keys(nkeys)), config(1000, 10_000_000, 10_000),
            Arc::new(ManualClock::at_ms(T0_MS)));
        let mut counts = vec![0u32; nkeys];
        for _ in 0..calls {
            let lease = ledger.try_acquire(TIGHT, Demand::tokens(1)).unwrap();
            counts[lease.key().index()] += 1;
            ledger.settle_now(lease, Outcome::success(1));
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "{counts:?}");
        }
    }

    /// Round-robin with some keys cooling: every key with room keeps being served.
    #[test]
    fn weighted_shares_follow_weights(w in prop::collection::vec(1u32..5, 2..6)) {
        let mut cfg = config(100_000, 100_000_000, 1_000_000);
        cfg.policy = keyturn_core::Policy::Weighted;
        let keys = KeyRing::new(w.iter().enumerate().map(|(i, w)| {
            KeySpec::new(ApiKey::new(format!("made-up-w-{i}")).unwrap()).weight(*w)
        }).collect()).unwrap();
        let ledger = InMemoryLedger::new(Arc::new(keys), cfg, Arc::new(ManualClock::at_ms(T0_MS)));
        let total: u32 = w.iter().sum();
        let rounds = 7;
        let mut counts = vec![0u32; w.len()];
        for _ in 0..total * rounds {
            let lease = ledger.try_acquire(TIGHT, Demand::tokens(1)).unwrap();
            counts[lease.key().index()] += 1;
            ledger.settle_now(lease, Outcome::success(1));
        }
        let expected: Vec<u32> = w.iter().map(|x| x * rounds).collect();
        prop_assert_eq!(counts, expected);
    }
}

/// Fraction of the tightest limit a scope has free, as least-loaded reads it.
fn headroom(s: &keyturn_core::snapshot::ScopeStatus) -> f64 {
    fn free(used: u64, limit: Option<u64>) -> f64 {
        match limit {
            Some(l) if l > 0 => l.saturating_sub(used) as f64 / l as f64,
            Some(_) => 0.0,
            None => 1.0,
        }
    }
    free(s.rpm_used, s.limits.rpm)
        .min(free(s.tpm_used, s.limits.tpm))
        .min(free(s.rpd_used, s.limits.rpd))
        .min(free(s.tpd_used, s.limits.tpd))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Least-loaded, kept in an index rather than found by a scan: with nothing switched off or
    /// cooling, every pick is a key of a scope with the most headroom among those the demand fits,
    /// whatever mix of admissions, token corrections and time went before; and it refuses only
    /// when no scope fits.
    #[test]
    fn least_loaded_picks_the_most_headroom(
        ops in prop::collection::vec(op(), 1..300),
        rpm in 1u64..20, tpm in 300u64..3000, rpd in 5u64..200,
        nkeys in 1usize..8, nprojects in 1usize..5,
    ) {
        let mut cfg = config(rpm, tpm, rpd);
        cfg.policy = keyturn_core::Policy::LeastLoaded;
        // Known from the start, so the status shows its scopes before the first pick.
        cfg.models = vec![TIGHT.to_owned()];
        let clock = Arc::new(ManualClock::at_ms(T0_MS));
        let ledger = InMemoryLedger::new(
            Arc::new(project_keys(nkeys, nprojects)), cfg, clock.clone());
        for op in ops {
            match op {
                Op::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                Op::Acquire { requests, tokens, actual_discount } => {
                    let st = ledger.status_now();
                    let fits: Vec<(String, f64)> = st.scopes.iter()
                        .filter(|s| s.model == TIGHT)
                        .filter(|s| s.limits.rpm.is_none_or(|l| s.rpm_used + u64::from(requests) <= l)
                            && s.limits.tpm.is_none_or(|l| s.tpm_used + tokens <= l)
                            && s.limits.rpd.is_none_or(|l| s.rpd_used + u64::from(requests) <= l)
                            && s.limits.tpd.is_none_or(|l| s.tpd_used + tokens <= l))
                        .map(|s| (s.project.clone(), headroom(s)))
                        .collect();
                    let best = fits.iter().map(|(_, h)| *h).fold(f64::NAN, f64::max);
                    match ledger.try_acquire(TIGHT, Demand::batch(requests, tokens)) {
                        Ok(lease) => {
                            let project = format!("p{}", lease.key().index() % nprojects);
                            let h = fits.iter().find(|(p, _)| *p == project).map(|(_, h)| *h);
                            prop_assert_eq!(h, Some(best), "picked {} of {:?}", project, fits);
                            ledger.settle_now(lease, Outcome::success(tokens.saturating_sub(actual_discount)));
                        }
                        Err(e) => prop_assert!(fits.is_empty(), "refused ({e}) with room in {fits:?}"),
                    }
                }
            }
        }
    }
}
