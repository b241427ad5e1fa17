//! The Redis ledger on a real Redis Cluster (three masters, a replica each, started by the test
//! with `redis-server --cluster-enabled yes` and `redis-cli --cluster create`): the behaviour
//! suite every ledger passes, and a master killed under load: typed errors while the cluster
//! promotes its replica, then exactly the day's budget admitted, not a request more.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use async_trait::async_trait;
use keyturn_core::testkit::{LedgerFactory, T0_MS, TIGHT, config};
use keyturn_core::{
    AcquireError, ApiKey, Demand, KeyRing, KeySpec, LedgerConfig, ManualClock, Outcome, QuotaLedger,
};
use keyturn_store::testkit::{TestCluster, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};

struct Cluster;

#[async_trait]
impl LedgerFactory for Cluster {
    async fn make(
        &self,
        keys: KeyRing,
        cfg: LedgerConfig,
        clock: ManualClock,
    ) -> Arc<dyn QuotaLedger> {
        let url = TestCluster::shared()
            .unwrap_or_else(|why| panic!("this test needs a Redis Cluster: {why}"));
        let ledger = RedisLedger::connect(
            &url,
            &unique_namespace("cluster"),
            Arc::new(keys),
            cfg,
            Arc::new(clock),
            TimeSource::Clock,
        )
        .await
        .unwrap();
        Arc::new(ledger)
    }
}

keyturn_core::ledger_behaviour_suite!(Cluster, ignore = "needs Redis");

fn ring() -> Arc<KeyRing> {
    Arc::new(
        KeyRing::new(
            (0..2)
                .map(|i| {
                    KeySpec::new(ApiKey::new(format!("AIzaSyTEST-cluster-{i:02}")).unwrap())
                        .label(format!("k{i}"))
                        .project("p")
                })
                .collect(),
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_killed_master_gives_typed_errors_then_its_replica_admits_exactly_the_budget() {
    let Some(mut cluster) = TestCluster::or_skip(1000) else {
        return;
    };
    let ns = unique_namespace("failover");
    let clock = ManualClock::at_ms(T0_MS);
    // 40 requests a day for the project, plenty per minute: the day's count is what must survive.
    let l = RedisLedger::connect(
        &cluster.url(),
        &ns,
        ring(),
        config(1000, 1_000_000, 40),
        Arc::new(clock.clone()),
        TimeSource::Clock,
    )
    .await
    .unwrap();
    let mut admitted = 0u32;
    for _ in 0..15 {
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::success(1)).await.unwrap();
        admitted += 1;
    }
    let (master, replica) = cluster
        .master_and_replica_of(&format!("kt:{{{ns}}}:anything"))
        .unwrap();
    cluster.wait_replicated(master, replica).unwrap();
    // Admissions taken ahead and not spent when the master dies (counted on the replica too)
    // go back once the promoted replica answers: their give-back fails while the master is
    // down and is sent again, applied once.
    cluster.kill(master);
    // The failover takes time: admissions this process took ahead (grants, counted in Redis
    // before the kill) end with their second, and nothing more is admitted until Redis answers.
    clock.advance(std::time::Duration::from_secs(1));

    // Until the replica is promoted, every acquire is a typed backend error (no panic, no hang).
    let mut outage_errors = 0u32;
    let mut back = false;
    for _ in 0..2000 {
        match l.acquire(TIGHT, Demand::tokens(1)).await {
            Ok(lease) => {
                l.settle(lease, Outcome::success(1)).await.unwrap();
                admitted += 1;
                back = true;
                break;
            }
            Err(AcquireError::Backend(e)) => {
                assert!(!e.to_string().contains("AIzaSy"), "no key in an error: {e}");
                outage_errors += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(other) => panic!("not a backend error while the master is down: {other:?}"),
        }
    }
    assert!(back, "the ledger never came back after the failover");
    assert!(outage_errors > 0, "the outage was seen as errors");
    assert!(cluster.is_master(replica), "the replica was promoted");

    // After the failover: the day's budget, counted across it, and not a request more.
    loop {
        match l.acquire(TIGHT, Demand::tokens(1)).await {
            Ok(lease) => {
                l.settle(lease, Outcome::success(1)).await.unwrap();
                admitted += 1;
                assert!(admitted <= 40, "over-admission after the failover");
            }
            Err(AcquireError::Exhausted { .. }) => break,
            Err(other) => panic!("{other:?}"),
        }
    }
    // Every request of the day's budget was admitted: none stayed stranded in a grant.
    assert_eq!(admitted, 40);
    let st = l.status().await.unwrap();
    let used: u64 = st
        .scopes
        .iter()
        .filter(|s| s.model == TIGHT)
        .map(|s| s.rpd_used)
        .sum();
    assert_eq!(used, 40);
}
