//! Redis is shared: a hash another tool, a foreign version or a careless `HSET` wrote garbage
//! into must not take the whole status and history down with it. What cannot be read is read as
//! absent; everything else is shown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The ledger runs against a real Redis, on the real clock.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;

use keyturn_core::testkit::{TIGHT, config};
use keyturn_core::{ApiKey, Demand, KeyRing, KeySpec, Outcome, QuotaLedger, SystemClock};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_garbage_usage_field_hides_only_itself() {
    let redis = TestRedis::get();
    let ns = unique_namespace("garbage");
    let ring = KeyRing::new(vec![
        KeySpec::new(ApiKey::new("made-up-garbage-key-a").unwrap()).label("a"),
    ])
    .unwrap();
    let mut cfg = config(100, 1_000_000, 1000);
    cfg.models = vec![TIGHT.to_owned()];
    let ledger = RedisLedger::connect(
        redis.url(),
        &ns,
        Arc::new(ring),
        cfg,
        Arc::new(SystemClock),
        TimeSource::Redis,
    )
    .await
    .unwrap();
    let lease = ledger.acquire(TIGHT, Demand::tokens(5)).await.unwrap();
    ledger.settle(lease, Outcome::success(5)).await.unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let days: Vec<String> = conn.keys(format!("kt:{ns}:u:*")).await.unwrap();
    assert_eq!(days.len(), 1, "{days:?}");
    let fields: Vec<String> = conn.hkeys(&days[0]).await.unwrap();
    let served = fields.iter().find(|f| f.ends_with("|s")).unwrap();
    let _: () = conn.hset(&days[0], served, "not a number").await.unwrap();
    let _: () = conn.hset(&days[0], "stray", "1.5e3").await.unwrap();

    let snap = ledger.snapshot().await.unwrap();
    let rows: Vec<_> = snap
        .usage
        .iter()
        .map(|u| (u.model.as_str(), u.requests, u.served, u.input_tokens))
        .collect();
    assert_eq!(rows, vec![(TIGHT, 1, 0, 5)]);
    ledger.status().await.unwrap();
}
