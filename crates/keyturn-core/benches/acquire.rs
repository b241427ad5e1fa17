//! acquire + settle on the in-memory ledger with 10, 100 and 1,000 keys × 3 models, every rule on
//! (RPM, TPM, RPD, breaker, cooldowns), single task and contended; the pick alone (acquire, its
//! leases settled outside the timed part); a governor keyed `check_key` in the same run as the
//! reference point, keyed like keyturn's scopes: one cell per (key, model), so 3 × keys cells.
//! Run: `cargo bench -p keyturn-core`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // a benchmark times itself with the real clock

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use keyturn_core::{
    ApiKey, Demand, InMemoryLedger, KeyRing, KeySpec, LedgerConfig, LimitOverride, LimitTable,
    Outcome, Policy, SystemClock,
};

const MODELS: [&str; 3] = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001"];

fn ledger(n: usize, policy: Policy) -> InMemoryLedger {
    let mut limits = LimitTable::builtin();
    for m in MODELS {
        // Limits that are checked on every call but never bind within a benchmark run.
        let o = LimitOverride {
            rpm: Some(u64::MAX / 4),
            tpm: Some(u64::MAX / 4),
            rpd: Some(u64::MAX / 4),
            tpd: Some(u64::MAX / 4),
        };
        limits.set_model(m, o).unwrap();
    }
    let keys = KeyRing::new(
        (0..n)
            .map(|i| KeySpec::new(ApiKey::new(format!("made-up-bench-key-{i}")).unwrap()))
            .collect(),
    )
    .unwrap();
    InMemoryLedger::new(
        Arc::new(keys),
        LedgerConfig {
            policy,
            limits,
            models: MODELS.iter().map(|m| m.to_string()).collect(),
            ..LedgerConfig::default()
        },
        Arc::new(SystemClock),
    )
}

fn one(l: &InMemoryLedger, i: usize) {
    let lease = l
        .try_acquire(MODELS[i % 3], Demand::tokens(black_box(120)))
        .unwrap();
    l.settle_now(lease, Outcome::success(black_box(100)));
}

fn acquire_settle(c: &mut Criterion) {
    let mut g = c.benchmark_group("acquire_settle");
    g.measurement_time(Duration::from_secs(4));
    for n in [10usize, 100, 1000] {
        for policy in [Policy::RoundRobin, Policy::LeastLoaded, Policy::Weighted] {
            if policy != Policy::RoundRobin && n == 10 {
                continue;
            }
            let l = ledger(n, policy);
            let mut i = 0usize;
            g.bench_function(BenchmarkId::new(format!("{policy:?}"), n), |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    one(&l, i)
                })
            });
        }
        // Contended: both cores, each thread timing its own calls.
        let l = Arc::new(ledger(n, Policy::RoundRobin));
        g.bench_function(BenchmarkId::new("RoundRobin-2-threads", n), |b| {
            b.iter_custom(|iters| {
                let other = {
                    let l = l.clone();
                    std::thread::spawn(move || {
                        for i in 0..iters as usize {
                            one(&l, i)
                        }
                    })
                };
                let start = Instant::now();
                for i in 0..iters as usize {
                    one(&l, i)
                }
                let took = start.elapsed();
                other.join().unwrap();
                took
            })
        });
    }
    g.finish();
}

/// The pick alone, like for like with governor's `check_key` (which settles nothing): batches of
/// acquires timed together, their leases settled after the clock stops.
fn acquire_alone(c: &mut Criterion) {
    const BATCH: usize = 64;
    let mut g = c.benchmark_group("acquire");
    g.measurement_time(Duration::from_secs(4));
    for n in [10usize, 100, 1000] {
        let l = ledger(n, Policy::RoundRobin);
        let mut leases = Vec::with_capacity(BATCH);
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("RoundRobin", n), |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let batch = left.min(BATCH);
                    let start = Instant::now();
                    for _ in 0..batch {
                        i = i.wrapping_add(1);
                        leases.push(
                            l.try_acquire(MODELS[i % 3], Demand::tokens(black_box(120)))
                                .unwrap(),
                        );
                    }
                    took += start.elapsed();
                    for lease in leases.drain(..) {
                        l.settle_now(lease, Outcome::success(100));
                    }
                    left -= batch;
                }
                took
            })
        });
    }
    g.finish();
}

fn governor_reference(c: &mut Criterion) {
    use governor::{Quota, RateLimiter};
    let mut g = c.benchmark_group("governor_check_key");
    g.measurement_time(Duration::from_secs(4));
    for n in [10usize, 100, 1000] {
        let limiter = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(u32::MAX).unwrap()));
        let mut i = 0usize;
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                black_box(limiter.check_key(&(i % n, i % 3))).ok();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, acquire_settle, acquire_alone, governor_reference);
criterion_main!(benches);
