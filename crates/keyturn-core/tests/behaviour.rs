//! The in-memory ledger against the shared ledger behaviour suite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use async_trait::async_trait;
use keyturn_core::testkit::LedgerFactory;
use keyturn_core::{InMemoryLedger, KeyRing, LedgerConfig, ManualClock, QuotaLedger};

struct InMemory;

#[async_trait]
impl LedgerFactory for InMemory {
    async fn make(
        &self,
        keys: KeyRing,
        cfg: LedgerConfig,
        clock: ManualClock,
    ) -> Arc<dyn QuotaLedger> {
        Arc::new(InMemoryLedger::new(Arc::new(keys), cfg, Arc::new(clock)))
    }
}

keyturn_core::ledger_behaviour_suite!(InMemory);
