//! Several configurations on one Redis namespace (a team's workers, some holding subsets of the
//! keys): an admin reset from one of them touches its own keys and projects only. Another set's
//! counters, disabled keys and running weights stay exactly as they were.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Ledgers here run against real files, processes or Redis, on the real clock.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;

use keyturn_core::testkit::{TIGHT, config};
use keyturn_core::{
    ApiKey, DeadReason, Demand, KeyRing, KeySpec, Outcome, Policy, QuotaLedger, ResetTarget,
    SystemClock,
};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};

fn ring(keys: &[(&str, &str)]) -> Arc<KeyRing> {
    Arc::new(
        KeyRing::new(
            keys.iter()
                .map(|(k, p)| {
                    KeySpec::new(ApiKey::new(format!("made-up-shared-{k}")).unwrap())
                        .label(*k)
                        .project(*p)
                })
                .collect(),
        )
        .unwrap(),
    )
}

async fn ledger(url: &str, ns: &str, keys: Arc<KeyRing>, policy: Policy) -> RedisLedger {
    let mut cfg = config(100, 1_000_000, 1000);
    cfg.policy = policy;
    RedisLedger::connect(url, ns, keys, cfg, Arc::new(SystemClock), TimeSource::Redis)
        .await
        .unwrap()
}

async fn spend(l: &RedisLedger, n: usize) {
    for _ in 0..n {
        let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
        l.settle(lease, Outcome::success(10)).await.unwrap();
    }
}

async fn used(l: &RedisLedger, project: &str) -> u64 {
    l.status()
        .await
        .unwrap()
        .scopes
        .iter()
        .filter(|s| s.project == project && s.model == TIGHT)
        .map(|s| s.rpd_used)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_reset_from_one_key_set_leaves_another_key_sets_state_alone() {
    let redis = TestRedis::get();
    let ns = unique_namespace("shared");
    // A: two keys of project pa. B: one key of project pb and one of project shared; C (a
    // subset worker) holds only B's shared key.
    let a = ledger(
        redis.url(),
        &ns,
        ring(&[("a1", "pa"), ("a2", "pa")]),
        Policy::Weighted,
    )
    .await;
    let b = ledger(
        redis.url(),
        &ns,
        ring(&[("b1", "pb"), ("s1", "shared")]),
        Policy::Weighted,
    )
    .await;
    let c = ledger(
        redis.url(),
        &ns,
        ring(&[("s1", "shared")]),
        Policy::RoundRobin,
    )
    .await;
    spend(&a, 3).await;
    spend(&b, 4).await;
    spend(&c, 1).await;
    // C's unspent grants (room it took ahead on the shared project) go back now, not at its
    // timer: B's view of the shared project below must not change when C's second ends.
    c.status().await.unwrap();
    // B's first key is found dead.
    let lease = b.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    let dead_label = b.keys().get(lease.key()).unwrap().label.clone();
    b.settle(lease, Outcome::KeyDead(DeadReason::Invalid))
        .await
        .unwrap();
    let before_b = (used(&b, "pb").await, used(&b, "shared").await);
    assert!(before_b.0 + before_b.1 >= 5, "{before_b:?}");
    assert_eq!(used(&a, "pa").await, 3);

    a.reset(ResetTarget::All).await.unwrap();

    assert_eq!(used(&a, "pa").await, 0, "A's own counters are reset");
    assert_eq!(
        (used(&b, "pb").await, used(&b, "shared").await),
        before_b,
        "B's counters are not A's to reset"
    );
    let disabled: Vec<String> = b
        .status()
        .await
        .unwrap()
        .keys
        .iter()
        .filter(|k| k.disabled.is_some())
        .map(|k| k.label.clone())
        .collect();
    assert_eq!(disabled, [dead_label], "B's dead key stays disabled");

    // A worker holding a subset resets what it holds: the shared key and its project, for
    // everyone holding them (the quota is the project's), and nothing of B's other project.
    let pb = used(&b, "pb").await;
    c.reset(ResetTarget::All).await.unwrap();
    assert_eq!(used(&b, "shared").await, 0);
    assert_eq!(used(&b, "pb").await, pb);

    // B resetting everything it holds clears its own state.
    b.reset(ResetTarget::All).await.unwrap();
    assert!(
        b.status()
            .await
            .unwrap()
            .keys
            .iter()
            .all(|k| k.disabled.is_none())
    );
    assert_eq!(used(&b, "pb").await, 0);
}
