//! Settles that arrive together go to Redis in one call, and each counts exactly once: 64 tasks
//! acquire and settle with fewer tokens than reserved; the minute and the day show exactly the
//! real tokens of every request (a settle lost would leave its reservation, one counted twice
//! would take another's tokens off), in fewer calls than settles.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use keyturn_core::testkit::{T0_MS, TIGHT, config, solo_keys};
use keyturn_core::{Demand, ManualClock, Outcome, QuotaLedger};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};

const TASKS: u64 = 64;
const ROUNDS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn settles_sent_together_each_count_once() {
    let redis = TestRedis::get();
    // The clock stands still: every request is in one second of one day.
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let l = Arc::new(
        RedisLedger::connect(
            redis.url(),
            &unique_namespace("settle-batch"),
            Arc::new(solo_keys(3)),
            config(1_000_000, 1_000_000_000, 1_000_000),
            clock,
            TimeSource::Clock,
        )
        .await
        .unwrap(),
    );
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
                    l.settle(lease, Outcome::success(3)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = TASKS * ROUNDS;
    let st = l.status().await.unwrap();
    let scopes: Vec<_> = st.scopes.iter().filter(|s| s.model == TIGHT).collect();
    let sum = |f: fn(&keyturn_core::snapshot::ScopeStatus) -> u64| {
        scopes.iter().map(|s| f(s)).sum::<u64>()
    };
    assert_eq!(sum(|s| s.rpm_used), n);
    assert_eq!(sum(|s| s.rpd_used), n);
    assert_eq!(
        sum(|s| s.tpm_used),
        3 * n,
        "each settle corrected its tokens once"
    );
    let calls = l.settle_calls();
    assert!(
        calls < n,
        "{n} settles from {TASKS} tasks at once took {calls} calls: none went together"
    );
}
