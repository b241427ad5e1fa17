//! A give-back whose answer is lost (Redis was slow: the call timed out, then ran) must not be
//! given back a second time: that would take other admissions off the counts, and the ledger
//! would admit past the limit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// A private Redis server, paused from a second connection.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;

use keyturn_core::testkit::{T0_MS, TIGHT, config, solo_keys};
use keyturn_core::{Demand, ManualClock, Outcome, QuotaLedger};
use keyturn_store::testkit::TestRedis;
use keyturn_store::{RedisLedger, TimeSource};

async fn day_used(l: &RedisLedger) -> (u64, u64) {
    let st = l.status().await.unwrap();
    let s = st.scopes.iter().find(|s| s.model == TIGHT).unwrap();
    (s.rpm_used, s.rpd_used)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_give_back_whose_answer_was_lost_is_not_given_back_twice() {
    // A private server: it is paused below, which would stall anyone sharing it.
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let l = RedisLedger::connect(
        redis.url(),
        "giveback",
        Arc::new(solo_keys(1)),
        config(100, 1_000_000, 1000),
        clock.clone(),
        TimeSource::Clock,
    )
    .await
    .unwrap();
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::success(1)).await.unwrap();
    assert!(l.held_in_grants() > 0, "the first acquire takes a grant");

    // Redis stalls past the ledger's answer timeout (3 s), then runs what it was sent.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4_500)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    // The give-back before status is sent, its answer never comes in time.
    assert!(l.status().await.is_err(), "Redis was paused");
    // Once the pause ends, Redis has run the give-back it was sent (a PING waits for it; this
    // connection's own answer timeout may cut a wait short, so it asks again).
    while redis::cmd("PING")
        .query_async::<String>(&mut admin)
        .await
        .is_err()
    {}

    // One request was sent today and this minute, whatever happened to the give-back's answer.
    assert_eq!(day_used(&l).await, (1, 1));
    assert_eq!(day_used(&l).await, (1, 1));
}
