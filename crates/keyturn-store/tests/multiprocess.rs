//! Four OS processes × 32 tasks hammer one RedisLedger with a per-minute limit: the total
//! admitted equals the limit exactly, never more.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]
// Ledgers here run against real files, processes or Redis, on the real clock.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyturn_core::testkit::{TIGHT, config};
use keyturn_core::{ApiKey, Demand, KeyRing, KeySpec, Outcome, QuotaLedger, SystemClock};
use keyturn_store::testkit::{TestRedis, child_output, child_process, reported, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};

const NS_ENV: &str = "KEYTURN_MP_NAMESPACE";
const URL_ENV: &str = "KEYTURN_MP_URL";
const RPM: u64 = 257;

fn keys() -> Arc<KeyRing> {
    // Six keys in two projects: each project's quota is RPM.
    Arc::new(
        KeyRing::new(
            (0..6)
                .map(|i| {
                    KeySpec::new(ApiKey::new(format!("made-up-mp-{i}")).unwrap())
                        .project(if i % 2 == 0 { "even" } else { "odd" })
                })
                .collect(),
        )
        .unwrap(),
    )
}

/// Not a test: the body of each child process of `four_processes_never_over_admit`, which runs
/// it with `--ignored` and its environment set. Without that environment it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of four_processes_never_over_admit"]
async fn child_hammer() {
    let (Ok(ns), Ok(url)) = (std::env::var(NS_ENV), std::env::var(URL_ENV)) else {
        return;
    };
    let ledger = Arc::new(
        RedisLedger::connect(
            &url,
            &ns,
            keys(),
            config(RPM, 1_000_000_000, 1_000_000),
            Arc::new(SystemClock),
            TimeSource::Redis,
        )
        .await
        .unwrap(),
    );
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for _ in 0..32 {
        let (l, a) = (ledger.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..12 {
                if let Ok(lease) = l.acquire(TIGHT, Demand::tokens(2)).await {
                    a.fetch_add(1, Ordering::Relaxed);
                    l.settle(lease, Outcome::success(1)).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!("ADMITTED={}", admitted.load(Ordering::Relaxed));
}

#[tokio::test]
#[ignore = "needs Redis"]
async fn four_processes_never_over_admit() {
    let redis = TestRedis::get();
    let ns = unique_namespace("multiprocess");
    let children: Vec<_> = (0..4)
        .map(|_| child_process("child_hammer", &[(NS_ENV, &ns), (URL_ENV, redis.url())]))
        .collect();
    let total: u64 = children
        .into_iter()
        .map(|c| reported(&child_output(c), "ADMITTED="))
        .sum();
    // 4 × 32 × 12 = 1536 attempts against 2 projects × 257.
    assert_eq!(total, 2 * RPM);
    // And the ledger agrees.
    let l = RedisLedger::connect(
        redis.url(),
        &ns,
        keys(),
        config(RPM, 1_000_000_000, 1_000_000),
        Arc::new(SystemClock),
        TimeSource::Redis,
    )
    .await
    .unwrap();
    l.acquire(TIGHT, Demand::tokens(0)).await.unwrap_err();
    let st = l.status().await.unwrap();
    for s in st.scopes.iter().filter(|s| s.model == TIGHT) {
        assert_eq!(s.rpm_used, RPM);
        assert_eq!(s.tpm_used, RPM, "every settle reconciled 2 → 1");
    }
}
