//! The Redis ledger against the same behaviour suite the in-memory ledger passes. Time comes
//! from the suite's manual clock (TimeSource::Clock) so windows and days are driven, not slept.
//! Each case gets its own namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use async_trait::async_trait;
use keyturn_core::testkit::LedgerFactory;
use keyturn_core::{KeyRing, LedgerConfig, ManualClock, QuotaLedger};
use keyturn_store::testkit::{TestRedis, unique_namespace};
use keyturn_store::{RedisLedger, TimeSource};

struct Redis;

#[async_trait]
impl LedgerFactory for Redis {
    async fn make(
        &self,
        keys: KeyRing,
        cfg: LedgerConfig,
        clock: ManualClock,
    ) -> Arc<dyn QuotaLedger> {
        let redis = TestRedis::get();
        let ledger = RedisLedger::connect(
            redis.url(),
            &unique_namespace("behaviour"),
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

keyturn_core::ledger_behaviour_suite!(Redis, ignore = "needs Redis");
