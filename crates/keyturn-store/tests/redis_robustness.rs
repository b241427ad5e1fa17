//! Redis is shared and refusals can come fast: a hash another tool, a foreign version or a
//! careless `HSET` wrote garbage into hides only itself (it does not take the status and history
//! down), and a refusal's words cost a read of the refused model's state, not of all of it.

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
    let days: Vec<String> = conn.keys(format!("kt:{{{ns}}}:u:*")).await.unwrap();
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

/// Calls of one Redis command since the last `CONFIG RESETSTAT`, from `INFO commandstats`
/// (a private server: nothing else runs commands on it).
async fn calls(conn: &mut redis::aio::MultiplexedConnection, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A request for a model the built-in table switches off is refused with who decided it; the
/// words cost a read of that model's scopes, not of every model the pool has used, so clients
/// hammering an off model cannot make each refusal a scan of the whole state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_refusal_for_an_off_model_reads_only_that_model() {
    let redis = TestRedis::private();
    let ring = KeyRing::new(vec![
        KeySpec::new(ApiKey::new("made-up-offmodel-key-a").unwrap()).label("a"),
    ])
    .unwrap();
    let mut cfg = config(100, 1_000_000, 1000);
    let others: Vec<String> = (0..20).map(|i| format!("test-other-{i}")).collect();
    for m in &others {
        cfg.limits
            .set_model(
                m,
                keyturn_core::LimitOverride {
                    rpm: Some(100),
                    tpm: Some(1_000_000),
                    rpd: Some(1000),
                    tpd: None,
                },
            )
            .unwrap();
    }
    let ledger = RedisLedger::connect(
        redis.url(),
        &unique_namespace("off-model"),
        Arc::new(ring),
        cfg,
        Arc::new(SystemClock),
        TimeSource::Redis,
    )
    .await
    .unwrap();
    for m in &others {
        let lease = ledger.acquire(m, Demand::tokens(1)).await.unwrap();
        ledger.settle(lease, Outcome::success(1)).await.unwrap();
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The built-in table gives the free tier no 2.5 pro: keyturn refuses without asking Gemini.
    let err = ledger
        .acquire("gemini-2.5-pro", Demand::tokens(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, keyturn_core::AcquireError::ModelUnavailable { ref detail, .. } if detail.contains("built-in limit table")),
        "{err:?}"
    );
    let read = calls(&mut conn, "hgetall").await;
    assert!(
        read < others.len() as u64,
        "one refusal ran {read} HGETALLs for {} models in use",
        others.len() + 1
    );
}
