//! A project whose configured tier changes between two runs on one Redis namespace: the second
//! run drops what the server taught under the old tier, keeps what was sent, and leaves the
//! other projects' learned limits alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Ledgers here run against real files, processes or Redis, on the real clock.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::snapshot::ScopeState;
use keyturn_core::testkit::{TIGHT, config};
use keyturn_core::{
    ApiKey, Demand, KeyRing, KeySpec, LedgerConfig, Outcome, QuotaLedger, SystemClock,
    ThrottleKind, Tier,
};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};

fn ring() -> Arc<KeyRing> {
    Arc::new(
        KeyRing::new(
            [("a", "p"), ("b", "q")]
                .iter()
                .map(|(k, p)| {
                    KeySpec::new(ApiKey::new(format!("made-up-tier-{k}")).unwrap())
                        .label(*k)
                        .project(*p)
                })
                .collect(),
        )
        .unwrap(),
    )
}

async fn ledger(url: &str, ns: &str, cfg: LedgerConfig) -> RedisLedger {
    RedisLedger::connect(
        url,
        ns,
        ring(),
        cfg,
        Arc::new(SystemClock),
        TimeSource::Redis,
    )
    .await
    .unwrap()
}

fn with_p_at(tier: Tier) -> LedgerConfig {
    let mut cfg = config(100, 1_000_000, 1000);
    cfg.limits.set_project_tier("p", tier);
    cfg.models = vec![TIGHT.to_owned()];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn a_changed_tier_drops_what_was_learned_under_the_old_one() {
    let redis = TestRedis::get();
    let ns = unique_namespace("tier-change");
    let first = ledger(redis.url(), &ns, with_p_at(Tier::Free)).await;
    for _ in 0..2 {
        let lease = first.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        first
            .settle(
                lease,
                Outcome::Throttled {
                    kind: ThrottleKind::RequestsPerDay,
                    retry_after: Some(Duration::ZERO),
                    quota_value: Some(20),
                },
            )
            .await
            .unwrap();
    }
    let scope = |st: &keyturn_core::PoolStatus, p: &str| {
        st.scopes
            .iter()
            .find(|s| s.project == p && s.model == TIGHT)
            .unwrap_or_else(|| panic!("no {p} scope in {st:?}"))
            .clone()
    };
    let st = first.status().await.unwrap();
    assert_eq!(scope(&st, "p").state, ScopeState::Exhausted);
    assert_eq!(scope(&st, "q").state, ScopeState::Exhausted);
    drop(first);

    // The same tier again: everything holds.
    let same = ledger(redis.url(), &ns, with_p_at(Tier::Free)).await;
    let st = same.status().await.unwrap();
    assert_eq!(scope(&st, "p").limits.rpd, Some(20));
    drop(same);

    let upgraded = ledger(redis.url(), &ns, with_p_at(Tier::Tier1)).await;
    let st = upgraded.status().await.unwrap();
    let p = scope(&st, "p");
    assert_eq!(
        (p.state, p.limits.rpd, p.learned_until_ms, p.tier),
        (ScopeState::Ready, Some(1000), None, Tier::Tier1),
        "{p:?}"
    );
    assert_eq!(p.rpd_used, 1, "what was sent still counts");
    let q = scope(&st, "q");
    assert_eq!((q.state, q.limits.rpd), (ScopeState::Exhausted, Some(20)));
    let lease = upgraded.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key().index(), 0, "p serves again");
    upgraded.settle(lease, Outcome::success(1)).await.unwrap();
}
