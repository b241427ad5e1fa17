//! Key health: dead keys, circuit breakers and their probes, waiting for capacity, and resets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// A dead key is disabled for every model until reset; the others carry the load.
pub async fn dead_key_disabled_until_reset(f: &dyn LedgerFactory) {
    let l = f
        .make(solo_keys(2), config(100, 100_000, 1000), clock())
        .await;
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    l.settle(lease, Outcome::KeyDead(DeadReason::Invalid))
        .await
        .unwrap();
    for m in [TIGHT, ROOMY, TIGHT, ROOMY] {
        assert_eq!(take(&*l, m).await.unwrap(), KeyId(1));
    }
    let st = l.status().await.unwrap();
    assert_eq!(
        st.keys[0].disabled.map(|d| d.reason),
        Some(DeadReason::Invalid)
    );
    l.reset(ResetTarget::Key(KeyId(0))).await.unwrap();
    let mut seen = [false; 2];
    for _ in 0..4 {
        seen[take(&*l, TIGHT).await.unwrap().index()] = true;
    }
    assert_eq!(seen, [true, true]);
}

/// Every key disabled: a permanent error naming the reasons by label.
pub async fn all_keys_disabled(f: &dyn LedgerFactory) {
    let l = f
        .make(solo_keys(2), config(100, 100_000, 1000), clock())
        .await;
    for reason in [DeadReason::Leaked, DeadReason::Expired] {
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::KeyDead(reason)).await.unwrap();
    }
    let err = take(&*l, TIGHT).await.unwrap_err();
    assert!(
        matches!(err, AcquireError::AllKeysDisabled { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("k0") && msg.contains("leaked"), "{msg}");
    assert!(!msg.contains("made-up-test-key"), "{msg}");
}

/// Transient failures open the breaker; after the cooldown exactly one probe goes; success closes.
pub async fn breaker_opens_probes_and_closes(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(1), config(100, 100_000, 1000), c.clone())
        .await;
    for _ in 0..2 {
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::Transient).await.unwrap();
    }
    let err = take(&*l, TIGHT).await.unwrap_err();
    assert!(matches!(
        err,
        AcquireError::Exhausted {
            reason: Exhaustion::CircuitOpen,
            ..
        }
    ));
    assert_eq!(err.retry_at_ms(), Some(T0_MS + 10_000));
    c.advance(Duration::from_secs(10));
    let probe = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    assert!(probe.is_probe());
    assert!(
        l.acquire(TIGHT, Demand::tokens(1)).await.is_err(),
        "only one probe while half-open"
    );
    // The probe fails: open again, for twice as long.
    l.settle(probe, Outcome::Transient).await.unwrap();
    c.advance(Duration::from_secs(19));
    assert!(l.acquire(TIGHT, Demand::tokens(1)).await.is_err());
    c.advance(Duration::from_secs(1));
    let probe = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    l.settle(probe, Outcome::success(1)).await.unwrap();
    for _ in 0..3 {
        take(&*l, TIGHT).await.unwrap();
    }
    let st = l.status().await.unwrap();
    assert_eq!(st.keys[0].breaker, BreakerState::Closed);
}

/// While a half-open key's probe is out, other callers wait for its answer (within their bound)
/// instead of failing at once; a successful probe lets them through.
pub async fn waiters_follow_the_probe(f: &dyn LedgerFactory) {
    let c = clock();
    let mut cfg = config(100, 100_000, 1000);
    cfg.max_wait = Duration::from_secs(20);
    let l = f.make(solo_keys(1), cfg, c.clone()).await;
    for _ in 0..2 {
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::Transient).await.unwrap();
    }
    c.advance(Duration::from_secs(10));
    let probe = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    assert!(probe.is_probe());
    let l2 = l.clone();
    let waiter = tokio::spawn(async move { l2.acquire(TIGHT, Demand::tokens(1)).await });
    // It waits for the probe rather than failing.
    until_parked(&c, &waiter).await;
    l.settle(probe, Outcome::success(1)).await.unwrap();
    // Polling ledgers look again within a fraction of a second of their clock.
    for _ in 0..50 {
        if waiter.is_finished() {
            break;
        }
        c.advance(Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lease = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("released when the probe succeeded")
        .unwrap()
        .unwrap();
    assert!(!lease.is_probe());
}

/// A caller fault (400, 404) changes nothing about the key.
pub async fn caller_fault_changes_nothing(f: &dyn LedgerFactory) {
    let l = f
        .make(solo_keys(1), config(100, 100_000, 1000), clock())
        .await;
    for _ in 0..10 {
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::CallerFault).await.unwrap();
    }
    let st = l.status().await.unwrap();
    assert_eq!(st.keys[0].breaker, BreakerState::Closed);
    assert_eq!(st.keys[0].failures, 0);
    assert!(st.keys[0].disabled.is_none());
    take(&*l, TIGHT).await.unwrap();
}

/// A lease dropped unsettled counts as sent.
pub async fn dropped_lease_counts_as_sent(f: &dyn LedgerFactory) {
    let l = f
        .make(solo_keys(1), config(2, 100_000, 1000), clock())
        .await;
    drop(l.acquire(TIGHT, Demand::tokens(5)).await.unwrap());
    drop(l.acquire(TIGHT, Demand::tokens(5)).await.unwrap());
    assert!(l.acquire(TIGHT, Demand::tokens(5)).await.is_err());
    let st = l.status().await.unwrap();
    assert_eq!((st.scopes[0].rpm_used, st.scopes[0].tpm_used), (2, 10));
}

/// With a wait bound, acquire waits for the window to free instead of failing.
pub async fn acquire_waits_for_capacity(f: &dyn LedgerFactory) {
    let c = clock();
    let mut cfg = config(1, 100_000, 1000);
    cfg.max_wait = Duration::from_secs(120);
    let l = f.make(solo_keys(1), cfg, c.clone()).await;
    take(&*l, TIGHT).await.unwrap();
    let l2 = l.clone();
    let waiter = tokio::spawn(async move { l2.acquire(TIGHT, Demand::tokens(1)).await });
    until_parked(&c, &waiter).await;
    // Half the window later it is still asleep, until a moment still ahead (a polling ledger
    // has looked again and gone back to sleep).
    c.advance(Duration::from_secs(30));
    until_parked(&c, &waiter).await;
    c.advance(Duration::from_secs(31));
    let lease = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woke when the window freed")
        .unwrap()
        .unwrap();
    assert_eq!(lease.key(), KeyId(0));
}

/// Waiting past the bound fails at once instead (per-day exhaustion is never waited for).
pub async fn no_wait_beyond_the_bound(f: &dyn LedgerFactory) {
    let mut cfg = config(100, 100_000, 1);
    cfg.max_wait = Duration::from_secs(120);
    let l = f.make(solo_keys(1), cfg, clock()).await;
    take(&*l, TIGHT).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), l.acquire(TIGHT, Demand::tokens(1)))
        .await
        .expect("fails at once")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ExhaustedForDay);
}

/// Reset of a scope clears its counters; reset all clears everything.
pub async fn resets(f: &dyn LedgerFactory) {
    let keys = KeyRing::new(vec![key(0, Some("p")), key(1, Some("q"))]).unwrap();
    let l = f.make(keys, config(1, 100_000, 1000), clock()).await;
    take(&*l, TIGHT).await.unwrap();
    take(&*l, TIGHT).await.unwrap();
    assert!(take(&*l, TIGHT).await.is_err());
    l.reset(ResetTarget::Scope {
        project: "p".into(),
        model: TIGHT.into(),
    })
    .await
    .unwrap();
    assert_eq!(take(&*l, TIGHT).await.unwrap(), KeyId(0));
    assert!(take(&*l, TIGHT).await.is_err());
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::KeyDead(DeadReason::Suspended))
        .await
        .unwrap();
    l.reset(ResetTarget::All).await.unwrap();
    let st = l.status().await.unwrap();
    assert!(st.keys.iter().all(|k| k.disabled.is_none()));
    assert!(st.scopes.iter().all(|s| s.rpm_used == 0));
    assert!(
        l.reset(ResetTarget::Scope {
            project: "nope".into(),
            model: TIGHT.into()
        })
        .await
        .is_err()
    );
}

/// The operator takes a key out of rotation: it takes no request until put back, shows as
/// disabled by admin since when, survives a snapshot and restore (a restart), and putting back
/// clears only the operator's disable, never Gemini's.
pub async fn admin_disable_holds_until_enabled(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(3), config(100, 100_000, 1000), c.clone())
        .await;
    l.disable_by_admin(KeyId(0), true).await.unwrap();
    for _ in 0..4 {
        assert_ne!(take(&*l, TIGHT).await.unwrap(), KeyId(0));
    }
    let st = l.status().await.unwrap();
    let d = st.keys[0].disabled.unwrap();
    assert_eq!(d.reason, DeadReason::ByAdmin);
    assert!(d.since_ms > 0);
    // Gemini's verdict on another key is not the operator's to lift.
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    let dead = lease.key();
    l.settle(lease, Outcome::KeyDead(DeadReason::Invalid))
        .await
        .unwrap();
    l.disable_by_admin(dead, false).await.unwrap();
    let st = l.status().await.unwrap();
    assert_eq!(
        st.keys[dead.index()].disabled.map(|d| d.reason),
        Some(DeadReason::Invalid)
    );

    // A restart: the snapshot carries the operator's disable.
    let text = serde_json::to_string(&l.snapshot().await.unwrap()).unwrap();
    let l2 = f
        .make(solo_keys(3), config(100, 100_000, 1000), c.clone())
        .await;
    l2.restore(serde_json::from_str(&text).unwrap())
        .await
        .unwrap();
    let st = l2.status().await.unwrap();
    assert_eq!(st.keys[0].disabled, Some(d));
    // Keys 1 and 2 are the others: the one Gemini did not disable is the only one left.
    let live = KeyId((3 - dead.index()) as u32);
    assert_ne!(dead, KeyId(0));
    for _ in 0..3 {
        assert_eq!(take(&*l2, TIGHT).await.unwrap(), live);
    }
    l2.disable_by_admin(KeyId(0), false).await.unwrap();
    let mut seen = [false; 3];
    for _ in 0..4 {
        seen[take(&*l2, TIGHT).await.unwrap().index()] = true;
    }
    assert!(seen[0], "put back: it takes requests again");
    assert!(l2.status().await.unwrap().keys[0].disabled.is_none());
}
