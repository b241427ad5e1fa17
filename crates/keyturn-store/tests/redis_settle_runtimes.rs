//! Settles that wait behind a settle call sent from another runtime are sent when it returns,
//! even when that runtime ends first: `keyturn serve` settles on its serving threads (one
//! single-threaded runtime each), which end when the proxy stops while its pool may live on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::testkit::{T0_MS, TIGHT, config, solo_keys};
use keyturn_core::{Demand, ManualClock, Outcome, QuotaLedger};
use keyturn_store::testkit::{RedisAdmin, TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn a_settle_waiting_behind_one_from_a_runtime_that_ended_gets_its_answer() {
    // A private server: it is paused below, which would stall anyone sharing it.
    let redis = TestRedis::private();
    let clock = Arc::new(ManualClock::at_ms(T0_MS));
    let l = Arc::new(
        RedisLedger::connect(
            redis.url(),
            &unique_namespace("settle-runtimes"),
            Arc::new(solo_keys(1)),
            config(1000, 1_000_000, 10_000),
            clock,
            TimeSource::Clock,
        )
        .await
        .unwrap(),
    );
    let first = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    let second = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    let mut admin = RedisAdmin::connect(redis.url()).await;
    admin.pause_scripts(2_000).await;

    // A serving thread settles the first lease; its call waits in Redis.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let lane = {
        let l = l.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                let _ = l.settle(first, Outcome::success(1)).await;
            });
            rt.block_on(async {
                stop_rx.await.ok();
            });
            // The thread's runtime ends with its settle call out, as a lane does when its
            // proxy stops.
            drop(rt);
        })
    };
    admin.until_a_call_is_held().await;
    // Another settle arrives meanwhile and waits for that call to return.
    let waiting = {
        let l = l.clone();
        tokio::spawn(async move { l.settle(second, Outcome::success(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(()).unwrap();
    lane.join().unwrap();
    admin.resume().await;

    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting settle never got an answer: nobody sent it")
        .unwrap();
    answer.unwrap();
    // And the ledger settles again afterwards.
    let third = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        l.settle(third, Outcome::success(1)),
    )
    .await
    .expect("a later settle never got an answer")
    .unwrap();
}
