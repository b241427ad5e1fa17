//! A namespace written before the keys carried hash tags (`kt:<ns>:…`, the previous release's
//! layout on a single Redis) is renamed to `kt:{<ns>}:…` by the first process that connects:
//! the day's counts carry over, nothing is lost silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use keyturn_core::testkit::{T0_MS, TIGHT, config};
use keyturn_core::{
    AcquireError, ApiKey, Demand, KeyRing, KeySpec, ManualClock, Outcome, QuotaLedger,
};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};
use redis::AsyncCommands;

fn ring() -> Arc<KeyRing> {
    Arc::new(
        KeyRing::new(vec![
            KeySpec::new(ApiKey::new("AIzaSyTEST-layout-00").unwrap())
                .label("k0")
                .project("p"),
        ])
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn an_old_layout_namespace_is_renamed_with_its_counts() {
    let redis = TestRedis::get();
    let ns = unique_namespace("layout");
    let clock = ManualClock::at_ms(T0_MS);
    let connect = || {
        RedisLedger::connect(
            redis.url(),
            &ns,
            ring(),
            config(1000, 1_000_000, 10),
            Arc::new(clock.clone()),
            TimeSource::Clock,
        )
    };
    let l = connect().await.unwrap();
    for _ in 0..6 {
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::success(1)).await.unwrap();
    }
    // A clean shutdown: what the ledger took ahead (grants) goes back first.
    l.close().await.unwrap();
    drop(l);
    // Put the namespace back as the previous release laid it out, without the marker.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let new = format!("kt:{{{ns}}}:");
    let keys: Vec<String> = conn.keys(format!("{new}*")).await.unwrap();
    assert!(keys.len() > 2, "{keys:?}");
    for k in keys {
        if k == format!("{new}layout") {
            let _: () = conn.del(&k).await.unwrap();
        } else {
            let old = format!("kt:{ns}:{}", &k[new.len()..]);
            let _: () = conn.rename(&k, &old).await.unwrap();
        }
    }

    let l = connect().await.unwrap();
    let left: Vec<String> = conn.keys(format!("kt:{ns}:*")).await.unwrap();
    assert!(left.is_empty(), "every old key moved: {left:?}");
    let mut more = 0;
    loop {
        match l.acquire(TIGHT, Demand::tokens(1)).await {
            Ok(lease) => {
                l.settle(lease, Outcome::success(1)).await.unwrap();
                more += 1;
            }
            Err(AcquireError::Exhausted { .. }) => break,
            Err(e) => panic!("{e:?}"),
        }
        assert!(more <= 4, "the day's six were forgotten");
    }
    assert_eq!(more, 4);
    let snap = l.snapshot().await.unwrap();
    let sent: u64 = snap.usage.iter().map(|u| u.requests).sum();
    assert_eq!(sent, 10, "the usage history moved too");
}
