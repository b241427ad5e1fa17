//! Redis stopped mid-run: acquire fails closed with a clear error (never admits, never panics),
//! and admission works again once Redis is back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Ledgers here run against real files, processes or Redis, on the real clock.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::testkit::{TIGHT, config, solo_keys};
use keyturn_core::{Demand, ErrorKind, Outcome, QuotaLedger, SystemClock};
use keyturn_store::testkit::TestRedis;
use keyturn_store::{RedisFailure, RedisLedger, TimeSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis"]
async fn fails_closed_while_down_and_recovers() {
    let mut redis = TestRedis::private();
    let url = format!(
        "redis://:made-up-password@{}",
        redis.url().trim_start_matches("redis://")
    );
    // The server has no password: use the plain URL to connect, the other to check redaction.
    let ledger = RedisLedger::connect(
        redis.url(),
        "restart",
        Arc::new(solo_keys(2)),
        config(100, 1_000_000, 1000),
        Arc::new(SystemClock),
        TimeSource::Redis,
    )
    .await
    .unwrap();
    let lease = ledger.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    ledger.settle(lease, Outcome::success(1)).await.unwrap();

    redis.stop();
    // Admissions taken ahead before the stop (a grant, counted in Redis) may be spent for the
    // rest of their second; nothing Redis did not count is admitted.
    let mut from_grant = 0;
    while let Ok(lease) = ledger.acquire(TIGHT, Demand::tokens(1)).await {
        drop(lease);
        from_grant += 1;
        assert!(from_grant <= 256, "admitted without Redis");
    }
    for _ in 0..3 {
        let err = ledger.acquire(TIGHT, Demand::tokens(1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("127.0.0.1") && msg.contains("nothing was admitted"),
            "{msg}"
        );
        // The cause is kept as the error's source, typed, not only flattened into the text.
        let cause = std::error::Error::source(&err)
            .and_then(std::error::Error::source)
            .and_then(|c| c.downcast_ref::<RedisFailure>());
        assert!(
            matches!(
                cause,
                Some(
                    RedisFailure::ConnectionRefused
                        | RedisFailure::ConnectionLost
                        | RedisFailure::TimedOut
                )
            ),
            "{cause:?}"
        );
    }
    assert!(ledger.status().await.is_err());

    redis.start().unwrap();
    let mut ok = false;
    for _ in 0..50 {
        match ledger.acquire(TIGHT, Demand::tokens(1)).await {
            Ok(lease) => {
                ledger.settle(lease, Outcome::success(1)).await.unwrap();
                ok = true;
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(ok, "admission resumed after Redis came back");

    // A password in the URL never reaches a message.
    assert!(!keyturn_store::redact_url(&url).contains("made-up-password"));
}
