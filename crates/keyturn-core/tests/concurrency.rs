//! Many OS threads and many tokio tasks against one ledger: the total admitted equals the limit
//! exactly, never more, and every settle is accounted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keyturn_core::testkit::{T0_MS, TIGHT, config};
use keyturn_core::{
    ApiKey, Demand, InMemoryLedger, KeyRing, KeySpec, ManualClock, Outcome, QuotaLedger,
};

fn keys(n: usize, projects: usize) -> Arc<KeyRing> {
    Arc::new(
        KeyRing::new(
            (0..n)
                .map(|i| {
                    KeySpec::new(ApiKey::new(format!("made-up-conc-{i}")).unwrap())
                        .project(format!("p{}", i % projects))
                })
                .collect(),
        )
        .unwrap(),
    )
}

#[test]
fn threads_never_over_admit() {
    for round in 0..20 {
        let rpm = 97 + round;
        let ledger = Arc::new(InMemoryLedger::new(
            keys(8, 3),
            config(rpm, 1_000_000, 100_000),
            Arc::new(ManualClock::at_ms(T0_MS)),
        ));
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (ledger, admitted) = (ledger.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        if let Ok(lease) = ledger.try_acquire(TIGHT, Demand::tokens(3)) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            ledger.settle_now(lease, Outcome::success(2));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Three projects, each exactly rpm.
        assert_eq!(admitted.load(Ordering::Relaxed), 3 * rpm);
        let st = ledger.status_now();
        for s in &st.scopes {
            assert_eq!(s.rpm_used, rpm);
            assert_eq!(s.tpm_used, 2 * rpm, "every settle reconciled");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_never_over_admit() {
    let ledger: Arc<dyn QuotaLedger> = Arc::new(InMemoryLedger::new(
        keys(5, 5),
        config(40, 1_000_000, 100_000),
        Arc::new(ManualClock::at_ms(T0_MS)),
    ));
    let mut tasks = vec![];
    for _ in 0..64 {
        let ledger = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            for _ in 0..20 {
                if let Ok(lease) = ledger.acquire(TIGHT, Demand::tokens(1)).await {
                    n += 1;
                    tokio::task::yield_now().await;
                    ledger.settle(lease, Outcome::success(1)).await.unwrap();
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 5 * 40);
}
