//! Resource affinity in Redis: owners shared between processes, expiring with the resource, and
//! acquires pinned to one project's keys by the Redis ledger's admission.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Ledgers here run against real Redis, on the real clock.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::{
    AcquireError, ApiKey, Clock, Demand, KeyId, KeyRing, KeySpec, LedgerConfig, LimitOverride,
    LimitTable, Outcome, Ownership, QuotaLedger, ResourceKind, ResourceMap, ResourceName,
    SystemClock,
};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};

fn two_projects() -> KeyRing {
    KeyRing::new(vec![
        KeySpec::new(ApiKey::new("AIzaSyTEST-res-a1").unwrap()).project("a"),
        KeySpec::new(ApiKey::new("AIzaSyTEST-res-b1").unwrap()).project("b"),
        KeySpec::new(ApiKey::new("AIzaSyTEST-res-b2").unwrap()).project("b"),
    ])
    .unwrap()
}

fn one_a_minute() -> LedgerConfig {
    let mut limits = LimitTable::builtin();
    limits
        .set_model(
            "gemini-2.5-flash",
            LimitOverride {
                rpm: Some(1),
                ..LimitOverride::default()
            },
        )
        .unwrap();
    LedgerConfig {
        limits,
        max_wait: Duration::ZERO,
        ..LedgerConfig::default()
    }
}

async fn ledger(redis: &TestRedis, ns: &str) -> RedisLedger {
    RedisLedger::connect(
        redis.url(),
        ns,
        Arc::new(two_projects()),
        one_a_minute(),
        Arc::new(SystemClock),
        TimeSource::Redis,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn owners_are_shared_expire_with_the_resource_and_are_forgotten() {
    let redis = TestRedis::get();
    let ns = unique_namespace("resources");
    let one = ledger(&redis, &ns).await.resources();
    let other = ledger(&redis, &ns).await.resources();
    let now = SystemClock.now_ms();
    let file = ResourceName::parse("files/abc-1").unwrap();
    let cache = ResourceName::parse("cachedContents/c1").unwrap();
    let b = Ownership::new("b", None);
    one.record(&file, &b, now + 60_000).await.unwrap();
    one.record(&cache, &Ownership::new("a", None), now + 300)
        .await
        .unwrap();
    assert_eq!(other.owner(&file).await.unwrap(), Some(b.clone()));
    assert_eq!(
        other.owner(&cache).await.unwrap(),
        Some(Ownership::new("a", None))
    );
    assert_eq!(
        other.projects(ResourceKind::Files).await.unwrap(),
        vec!["b".to_owned()]
    );
    // Redis forgets by itself when the resource expires.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(other.owner(&cache).await.unwrap(), None);
    assert!(
        other
            .projects(ResourceKind::CachedContents)
            .await
            .unwrap()
            .is_empty()
    );
    other.forget(&file).await.unwrap();
    assert_eq!(one.owner(&file).await.unwrap(), None);
    // Projects only: no key in any value.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    one.record(&file, &b, now + 60_000).await.unwrap();
    let v: String = redis::cmd("GET")
        .arg(format!("kt:{{{ns}}}:r:files/abc-1"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "b");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("kt:{{{ns}}}:r:files/abc-1"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
}

/// The creating client is kept beside the owner, in the same slot, with the same expiry; a
/// record learned later without a client keeps it; another process reads both; forgetting
/// drops both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn the_creating_client_round_trips_beside_the_owner() {
    let redis = TestRedis::get();
    let ns = unique_namespace("resource-clients");
    let one = ledger(&redis, &ns).await.resources();
    let other = ledger(&redis, &ns).await.resources();
    let now = SystemClock.now_ms();
    let file = ResourceName::parse("files/mine-1").unwrap();
    let batch = ResourceName::parse("batches/shared-1").unwrap();
    let alice = Ownership::new("a", Some("alice team"));
    one.record(&file, &alice, now + 60_000).await.unwrap();
    one.record(&batch, &Ownership::new("b", None), now + 60_000)
        .await
        .unwrap();
    assert_eq!(other.owner(&file).await.unwrap(), Some(alice.clone()));
    // Learned again from an answer, with a later expiry: the client stays and moves with it.
    other
        .record(&file, &Ownership::new("a", None), now + 120_000)
        .await
        .unwrap();
    let unknown = ResourceName::parse("cachedContents/none").unwrap();
    assert_eq!(
        one.owners(&[batch.clone(), file.clone(), unknown])
            .await
            .unwrap(),
        vec![Some(Ownership::new("b", None)), Some(alice), None]
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let label: String = redis::cmd("GET")
        .arg(format!("kt:{{{ns}}}:rc:files/mine-1"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(label, "alice team");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("kt:{{{ns}}}:rc:files/mine-1"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 60_000 && ttl <= 120_000, "{ttl}");
    // A value another writer left that no token label could be is not taken for a client.
    let _: () = redis::cmd("SET")
        .arg(format!("kt:{{{ns}}}:rc:batches/shared-1"))
        .arg("x\u{7}y")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        one.owner(&batch).await.unwrap(),
        Some(Ownership::new("b", None))
    );
    one.forget(&file).await.unwrap();
    assert_eq!(other.owner(&file).await.unwrap(), None);
    let left: i64 = redis::cmd("EXISTS")
        .arg(format!("kt:{{{ns}}}:rc:files/mine-1"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_pinned_acquire_takes_only_its_projects_keys() {
    let redis = TestRedis::get();
    let ns = unique_namespace("pinned");
    let ledger = ledger(&redis, &ns).await;
    let in_b = Demand::tokens(1).within_project_of(KeyId(1));
    let lease = ledger.acquire("gemini-2.5-flash", in_b).await.unwrap();
    assert!(lease.key() == KeyId(1) || lease.key() == KeyId(2));
    ledger.settle(lease, Outcome::success(1)).await.unwrap();
    // b's one request a minute is spent; a has room and is not used for b's resource.
    let refused = ledger.acquire("gemini-2.5-flash", in_b).await.unwrap_err();
    assert!(
        matches!(refused, AcquireError::Exhausted { .. }),
        "{refused:?}"
    );
    let free = ledger
        .acquire("gemini-2.5-flash", Demand::tokens(1))
        .await
        .unwrap();
    assert_eq!(free.key(), KeyId(0));
    ledger.settle(free, Outcome::success(1)).await.unwrap();
}
