//! Redis state written before learned limits had an expiry (a `l:<model>|<project>` hash with
//! no `until`): it must not hold forever. It expires as if learned when first read, like an
//! older state file restored into the in-memory ledger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::testkit::{ROOMY, T0_MS, TIGHT, config};
use keyturn_core::{
    AcquireError, ApiKey, Demand, KeyRing, KeySpec, ManualClock, Outcome, QuotaLedger,
    next_pacific_midnight,
};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn learned_state_from_before_expiries_expires_at_the_next_pacific_midnight() {
    let redis = TestRedis::get();
    let ns = unique_namespace("legacy");
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // As the previous release left them: TIGHT switched off for p, ROOMY's RPM learned at 7.
    let _: () = conn
        .hset(format!("kt:{ns}:l:{TIGHT}|p"), "rpd", 0)
        .await
        .unwrap();
    let _: () = conn
        .hset(format!("kt:{ns}:l:{ROOMY}|p"), "rpm", 7)
        .await
        .unwrap();

    let keys = KeyRing::new(vec![
        KeySpec::new(ApiKey::new("made-up-legacy-key-000").unwrap())
            .label("k0")
            .project("p"),
    ])
    .unwrap();
    let clock = ManualClock::at_ms(T0_MS);
    let mut cfg = config(100, 100_000, 1000);
    cfg.models = vec![TIGHT.into(), ROOMY.into()];
    let l = RedisLedger::connect(
        redis.url(),
        &ns,
        Arc::new(keys),
        cfg,
        Arc::new(clock.clone()),
        TimeSource::Clock,
    )
    .await
    .unwrap();
    let err = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap_err();
    assert!(
        matches!(err, AcquireError::ModelUnavailable { .. }),
        "{err:?}"
    );
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::success(1)).await.unwrap();
    let midnight = next_pacific_midnight(T0_MS);
    let st = l.status().await.unwrap();
    let scope = |m: &str| st.scopes.iter().find(|s| s.model == m).unwrap().clone();
    assert_eq!(scope(TIGHT).off_until_ms, Some(midnight));
    assert_eq!(scope(ROOMY).limits.rpm, Some(7));
    assert_eq!(scope(ROOMY).learned_until_ms, Some(midnight));

    clock.advance(Duration::from_millis((midnight - T0_MS) as u64));
    let probe = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    l.settle(probe, Outcome::success(1)).await.unwrap();
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::success(1)).await.unwrap();
    let st = l.status().await.unwrap();
    let scope = |m: &str| st.scopes.iter().find(|s| s.model == m).unwrap().clone();
    assert_eq!(scope(TIGHT).off_until_ms, None);
    assert_eq!(scope(ROOMY).limits.rpm, Some(1000), "RPM 7 forgotten");
}
