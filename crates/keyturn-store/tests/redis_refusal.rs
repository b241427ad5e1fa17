//! Redis refusing keyturn's commands during a run (an ACL tightened under it) is reported as what
//! it is — a configuration problem — and not as an outage that ends by itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Ledgers here run against real files, processes or Redis, on the real clock.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;

use keyturn_core::testkit::{TIGHT, config, solo_keys};
use keyturn_core::{Demand, Outcome, QuotaLedger, SystemClock};
use keyturn_store::testkit::TestRedis;
use keyturn_store::{RedisLedger, TimeSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn an_acl_that_denies_scripts_mid_run_is_named_a_configuration_error() {
    // A private server: this test changes its ACL.
    let redis = TestRedis::private();
    let ledger = RedisLedger::connect(
        redis.url(),
        "refusal",
        Arc::new(solo_keys(2)),
        config(100, 1_000_000, 1000),
        Arc::new(SystemClock),
        TimeSource::Redis,
    )
    .await
    .unwrap();
    let lease = ledger.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    ledger.settle(lease, Outcome::success(1)).await.unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-@scripting")
        .query_async(&mut admin)
        .await
        .unwrap();

    // Admissions already taken ahead (a grant, counted in Redis before the change) may still be
    // spent, for the rest of their second; the first acquire that asks Redis is refused.
    let mut from_grant = 0;
    let err = loop {
        match ledger.acquire(TIGHT, Demand::tokens(1)).await {
            Ok(lease) => drop(lease),
            Err(e) => break e,
        }
        from_grant += 1;
        assert!(from_grant <= 256, "never asked Redis");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("refused keyturn") && msg.contains("NOPERM"),
        "{msg}"
    );
    assert!(msg.contains("configuration error"), "{msg}");
    assert!(!msg.contains("retries when Redis is back"), "{msg}");
}
