//! Test helpers: a pool of made-up keys and a rotating caller pointed at a simulator.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Test pools talk to a real simulator over real sockets, on the real clock.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::Duration;

use keyturn_core::{
    ApiKey, BreakerConfig, InMemoryLedger, KeyRing, KeySpec, LedgerConfig, LimitOverride,
    LimitTable, SystemClock,
};

use crate::{RetryPolicy, RotatingCaller, Transport, TransportConfig};

/// A key: (secret, label, project).
pub type TestKey<'a> = (&'a str, &'a str, Option<&'a str>);

/// Limits keyturn believes in for every model used in tests: roomy unless a test says otherwise.
pub fn roomy_limits(models: &[&str]) -> LimitTable {
    let mut t = LimitTable::builtin();
    for m in models {
        t.set_model(
            m,
            LimitOverride {
                rpm: Some(10_000),
                tpm: Some(100_000_000),
                rpd: Some(1_000_000),
                tpd: None,
            },
        )
        .unwrap();
    }
    t
}

/// Fast retries and breakers, so storms pass in test time.
pub fn fast_config(limits: LimitTable) -> LedgerConfig {
    LedgerConfig {
        breaker: BreakerConfig {
            failure_threshold: 2,
            base_cooldown: Duration::from_millis(100),
            max_cooldown: Duration::from_millis(400),
            probe_timeout: Duration::from_secs(5),
        },
        max_wait: Duration::from_secs(5),
        limits,
        ..LedgerConfig::default()
    }
}

/// A pool and a caller against `base_url`.
pub fn pool(
    base_url: &str,
    keys: &[TestKey<'_>],
    cfg: LedgerConfig,
) -> (Arc<InMemoryLedger>, Arc<RotatingCaller>) {
    let ring = KeyRing::new(
        keys.iter()
            .map(|(secret, label, project)| {
                let s = KeySpec::new(ApiKey::new(*secret).unwrap()).label(*label);
                match project {
                    Some(p) => s.project(*p),
                    None => s,
                }
            })
            .collect(),
    )
    .unwrap();
    let ledger = Arc::new(InMemoryLedger::new(
        Arc::new(ring),
        cfg,
        Arc::new(SystemClock),
    ));
    let transport = Transport::new(&TransportConfig {
        base_url: base_url.to_owned(),
        request_timeout: Duration::from_secs(20),
        ..TransportConfig::default()
    })
    .unwrap();
    let retry = RetryPolicy {
        max_attempts: 40,
        max_elapsed: Duration::from_secs(60),
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
    };
    let caller = Arc::new(RotatingCaller::new(
        ledger.clone(),
        transport,
        retry,
        Arc::new(SystemClock),
    ));
    (ledger, caller)
}
