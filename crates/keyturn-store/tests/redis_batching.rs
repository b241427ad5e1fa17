//! Many acquires in flight in one process share one acquire call per model at a time (a batch):
//! each is decided in Redis as if it came alone. These cases drive hundreds at once against a
//! real Redis: never more admitted than the budget, one probe through an open breaker, one
//! re-probe through an expired switch-off, and cancelled acquires (a leader among them) never
//! stall the rest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::testkit::{T0_MS, TIGHT, config, solo_keys};
use keyturn_core::{
    AcquireError, Demand, LedgerConfig, ManualClock, Outcome, QuotaLedger, next_pacific_midnight,
};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};
use tokio::task::JoinSet;

async fn ledger(keys: usize, cfg: LedgerConfig, clock: &ManualClock) -> Arc<RedisLedger> {
    let redis = TestRedis::get();
    Arc::new(
        RedisLedger::connect(
            redis.url(),
            &unique_namespace("batching"),
            Arc::new(solo_keys(keys)),
            cfg,
            Arc::new(clock.clone()),
            TimeSource::Clock,
        )
        .await
        .unwrap(),
    )
}

/// Runs `n` acquires at once; the leases admitted (settled as served) and the refusals.
async fn burst(l: &Arc<RedisLedger>, n: usize) -> (Vec<bool>, Vec<AcquireError>) {
    let mut set = JoinSet::new();
    for _ in 0..n {
        let l = l.clone();
        set.spawn(async move {
            let r = l.acquire(TIGHT, Demand::tokens(3)).await;
            match r {
                Ok(lease) => {
                    let probe = lease.is_probe();
                    l.settle(lease, Outcome::success(3)).await.unwrap();
                    Ok(probe)
                }
                Err(e) => Err(e),
            }
        });
    }
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(probe) => ok.push(probe),
            Err(e) => refused.push(e),
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn hundreds_in_flight_admit_exactly_the_budget() {
    let clock = ManualClock::at_ms(T0_MS);
    // Three keys of one project each (solo_keys): 3 × 70 requests a day.
    let l = ledger(3, config(1000, 1_000_000, 70), &clock).await;
    let (ok, refused) = burst(&l, 500).await;
    assert_eq!(ok.len(), 210, "refusals: {:?}", refused.first());
    assert!(
        refused
            .iter()
            .all(|e| matches!(e, AcquireError::Exhausted { .. })),
        "{:?}",
        refused.first()
    );
    let st = l.status().await.unwrap();
    let used: Vec<u64> = st.scopes.iter().map(|s| s.rpd_used).collect();
    assert_eq!(
        used,
        [70, 70, 70],
        "round-robin across the batch, each to its budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn one_probe_through_an_open_breaker_however_many_ask_at_once() {
    let clock = ManualClock::at_ms(T0_MS);
    let l = ledger(1, config(1000, 1_000_000, 1000), &clock).await;
    for _ in 0..2 {
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::Transient).await.unwrap();
    }
    clock.advance(Duration::from_secs(10));
    let mut set = JoinSet::new();
    for _ in 0..64 {
        let l = l.clone();
        // Held, not settled: the probe stays out while the others are decided.
        set.spawn(async move {
            l.acquire(TIGHT, Demand::tokens(1))
                .await
                .map(|x| x.is_probe())
        });
    }
    let mut probes = 0;
    while let Some(r) = set.join_next().await {
        if let Ok(probe) = r.unwrap() {
            assert!(probe, "only a probe goes through a half-open breaker");
            probes += 1;
        }
    }
    assert_eq!(probes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn one_reprobe_through_an_expired_switch_off_however_many_ask_at_once() {
    let clock = ManualClock::at_ms(T0_MS);
    let l = ledger(1, config(1000, 1_000_000, 1000), &clock).await;
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
    clock.advance(Duration::from_millis(
        (next_pacific_midnight(T0_MS) - T0_MS) as u64,
    ));
    let mut set = JoinSet::new();
    for _ in 0..64 {
        let l = l.clone();
        set.spawn(async move { l.acquire(TIGHT, Demand::tokens(1)).await.is_ok() });
    }
    let mut through = 0;
    while let Some(r) = set.join_next().await {
        through += usize::from(r.unwrap());
    }
    assert_eq!(through, 1, "one re-probe decides the switch-off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn cancelled_acquires_never_stall_the_others_nor_free_what_they_took() {
    let clock = ManualClock::at_ms(T0_MS);
    let l = ledger(2, config(1000, 1_000_000, 400), &clock).await;
    for round in 0..10 {
        let mut set = JoinSet::new();
        let mut handles = Vec::new();
        for _ in 0..32 {
            let l = l.clone();
            handles.push(
                set.spawn(
                    async move { l.acquire(TIGHT, Demand::tokens(1)).await.map(drop).is_ok() },
                ),
            );
        }
        // Cancel every third, wherever it is: waiting, leading a call, or done.
        for (i, h) in handles.iter().enumerate() {
            if (i + round) % 3 == 0 {
                tokio::task::yield_now().await;
                h.abort();
            }
        }
        while set.join_next().await.is_some() {}
    }
    // Nothing stalled: a fresh acquire is decided. And nothing cancelled was given back: the
    // day's count covers every admission anyone saw, and never passes the budget.
    let st = l.status().await.unwrap();
    let used: u64 = st.scopes.iter().map(|s| s.rpd_used).sum();
    assert!(used <= 320, "{used}");
    let (ok, _) = burst(&l, 1000).await;
    let st = l.status().await.unwrap();
    let after: u64 = st.scopes.iter().map(|s| s.rpd_used).sum();
    assert_eq!(after, 800, "every request of the budget counted, none more");
    assert_eq!(after - used, ok.len() as u64);
}
