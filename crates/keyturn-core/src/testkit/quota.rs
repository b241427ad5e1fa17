//! Rotation and the quota windows: spreading, project sharing, the minute and the day, tokens, batch demands, per-minute and per-day 429s, bounded counts and stale leases.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// Round-robin spreads requests evenly over keys.
pub async fn round_robin_spreads_evenly(f: &dyn LedgerFactory) {
    let l = f
        .make(solo_keys(3), config(100, 100_000, 1000), clock())
        .await;
    let mut counts = [0; 3];
    for _ in 0..30 {
        counts[take(&*l, TIGHT).await.unwrap().index()] += 1;
    }
    assert_eq!(counts, [10, 10, 10]);
}

/// Keys of one project share one quota; a key of another project has its own.
pub async fn project_keys_share_quota(f: &dyn LedgerFactory) {
    let keys = KeyRing::new(vec![
        key(0, Some("p")),
        key(1, Some("p")),
        key(2, Some("p")),
        key(3, Some("q")),
    ])
    .unwrap();
    let l = f.make(keys, config(4, 100_000, 1000), clock()).await;
    let mut per_project = [0; 2];
    while let Ok(k) = take(&*l, TIGHT).await {
        per_project[usize::from(k.index() == 3)] += 1;
    }
    assert_eq!(per_project, [4, 4]);
}

/// The rolling minute never admits past RPM, and room returns when the window frees.
pub async fn rpm_window_rolls(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(1), config(3, 100_000, 1000), c.clone())
        .await;
    for _ in 0..3 {
        take(&*l, TIGHT).await.unwrap();
    }
    let err = take(&*l, TIGHT).await.unwrap_err();
    match &err {
        AcquireError::Exhausted {
            reason: Exhaustion::RequestsPerMinute,
            until_ms,
            model,
        } => {
            assert_eq!(model, TIGHT);
            assert_eq!(*until_ms, T0_MS + 61_000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::Throttled);
    c.advance(Duration::from_secs(60));
    assert!(
        take(&*l, TIGHT).await.is_err(),
        "60 s is not yet a free window"
    );
    c.advance(Duration::from_secs(1));
    take(&*l, TIGHT).await.unwrap();
}

/// Input tokens per minute are enforced on the estimate and reconciled exactly on settle.
pub async fn tpm_enforced_and_reconciled(f: &dyn LedgerFactory) {
    let l = f.make(solo_keys(1), config(100, 1000, 1000), clock()).await;
    let a = l.acquire(TIGHT, Demand::tokens(600)).await.unwrap();
    let err = l.acquire(TIGHT, Demand::tokens(500)).await.unwrap_err();
    assert!(matches!(
        err,
        AcquireError::Exhausted {
            reason: Exhaustion::TokensPerMinute,
            ..
        }
    ));
    // The real prompt was smaller: 600 → 100 frees 500.
    l.settle(a, Outcome::success(100)).await.unwrap();
    let b = l.acquire(TIGHT, Demand::tokens(500)).await.unwrap();
    // Larger than estimated: 500 → 900, so 100 + 900 fills the minute exactly.
    l.settle(b, Outcome::success(900)).await.unwrap();
    assert!(l.acquire(TIGHT, Demand::tokens(1)).await.is_err());
    let st = l.status().await.unwrap();
    let s = st.scopes.iter().find(|s| s.model == TIGHT).unwrap();
    assert_eq!(s.tpm_used, 1000);
    let c = l.acquire(TIGHT, Demand::tokens(0)).await.unwrap();
    l.settle(c, Outcome::success(0)).await.unwrap();
}

/// A settle whose real count is absurd (a broken or hostile upstream answering
/// `prompt_tokens: 18446744073709551615`) neither fails, panics, refunds the reservation nor
/// leaves a counter the ledger cannot read back: the count is taken as
/// [`crate::outcome::MAX_SETTLED_TOKENS`].
pub async fn absurd_token_counts_are_bounded(f: &dyn LedgerFactory) {
    use crate::outcome::MAX_SETTLED_TOKENS as MAX;
    let l = f
        .make(solo_keys(1), config(100, 100_000, 1000), clock())
        .await;
    // Sent together, settled after: the first absurd count fills the minute.
    let mut leases = Vec::new();
    for _ in 0..3 {
        leases.push(l.acquire(ROOMY, Demand::tokens(10)).await.unwrap());
    }
    for (lease, real) in leases.into_iter().zip([u64::MAX, 1 << 63, 10u64.pow(15)]) {
        l.settle(lease, Outcome::success(real)).await.unwrap();
    }
    let st = l.status().await.unwrap();
    let s = st.scopes.iter().find(|s| s.model == ROOMY).unwrap();
    assert_eq!(s.rpm_used, 3);
    assert_eq!(s.tpm_used, 3 * MAX);
    assert_eq!(s.rpd_served, 3);
    let snap = l.snapshot().await.unwrap();
    let tokens: u64 = snap.usage.iter().map(|u| u.input_tokens).sum();
    assert_eq!(tokens, 3 * MAX);
}

/// A lease taken before a reset and settled after it corrects nothing the reset zeroed: the
/// day's served count never exceeds what was sent since, and its real tokens do not land on
/// the new minute.
pub async fn a_lease_from_before_a_reset_corrects_nothing_after_it(f: &dyn LedgerFactory) {
    let l = f
        .make(solo_keys(1), config(100, 100_000, 1000), clock())
        .await;
    let stale = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
    l.reset(ResetTarget::All).await.unwrap();
    let fresh = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
    l.settle(fresh, Outcome::success(10)).await.unwrap();
    l.settle(stale, Outcome::success(500)).await.unwrap();
    let st = l.status().await.unwrap();
    let s = st.scopes.iter().find(|s| s.model == TIGHT).unwrap();
    assert_eq!(
        (
            s.rpd_used,
            s.rpd_served,
            s.rpd_refused,
            s.tpm_used,
            s.tpd_used
        ),
        (1, 1, 0, 10, 10)
    );
}

/// A request sent just before Pacific midnight and answered after it counts, served and with
/// its real tokens, in the usage history of the day it was sent, even once the key has sent
/// on the new day; the new day's counters get nothing of it.
pub async fn a_lease_settled_after_midnight_counts_on_the_day_it_was_sent(f: &dyn LedgerFactory) {
    let c = clock();
    c.advance(Duration::from_millis(
        (next_pacific_midnight(T0_MS) - 1_000 - T0_MS) as u64,
    ));
    let l = f
        .make(solo_keys(1), config(100, 100_000, 1000), c.clone())
        .await;
    let late = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
    c.advance(Duration::from_secs(2));
    let early = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
    l.settle(early, Outcome::success(20)).await.unwrap();
    l.settle(late, Outcome::success(30)).await.unwrap();
    let st = l.status().await.unwrap();
    let s = st.scopes.iter().find(|s| s.model == TIGHT).unwrap();
    assert_eq!((s.rpd_used, s.rpd_served, s.tpd_used), (1, 1, 20), "today");
    let mut rows: Vec<_> = l
        .snapshot()
        .await
        .unwrap()
        .usage
        .iter()
        .filter(|u| u.model == TIGHT)
        .map(|u| (u.date.to_string(), u.requests, u.served, u.input_tokens))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("2026-01-14".to_owned(), 1, 1, 30),
            ("2026-01-15".to_owned(), 1, 1, 20),
        ]
    );
}

/// A request that could never fit is refused as too large, not waited for.
pub async fn demand_too_large(f: &dyn LedgerFactory) {
    let l = f.make(solo_keys(2), config(5, 1000, 1000), clock()).await;
    let err = l.acquire(TIGHT, Demand::tokens(1001)).await.unwrap_err();
    assert!(
        matches!(err, AcquireError::DemandTooLarge { .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Permanent);
    let err = l.acquire(TIGHT, Demand::batch(6, 1)).await.unwrap_err();
    assert!(
        matches!(err, AcquireError::DemandTooLarge { .. }),
        "{err:?}"
    );
}

/// A batch of n counts as n requests.
pub async fn batch_counts_as_n(f: &dyn LedgerFactory) {
    let l = f
        .make(solo_keys(1), config(10, 100_000, 1000), clock())
        .await;
    let lease = l.acquire(TIGHT, Demand::batch(7, 70)).await.unwrap();
    l.settle(lease, Outcome::success(70)).await.unwrap();
    assert!(l.acquire(TIGHT, Demand::batch(4, 1)).await.is_err());
    let lease = l.acquire(TIGHT, Demand::batch(3, 1)).await.unwrap();
    l.settle(lease, Outcome::success(1)).await.unwrap();
    let st = l.status().await.unwrap();
    assert_eq!(st.scopes[0].rpm_used, 10);
    assert_eq!(st.scopes[0].rpd_used, 10);
}

/// Requests per day reset at Pacific midnight, not UTC midnight; the error says when.
pub async fn rpd_resets_at_pacific_midnight(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(1), config(100, 100_000, 2), c.clone())
        .await;
    take(&*l, TIGHT).await.unwrap();
    take(&*l, TIGHT).await.unwrap();
    let err = take(&*l, TIGHT).await.unwrap_err();
    let midnight = next_pacific_midnight(T0_MS);
    assert_eq!(err.kind(), ErrorKind::ExhaustedForDay);
    assert_eq!(err.retry_at_ms(), Some(midnight));
    // UTC midnight (4 h after T0) changes nothing.
    c.set(crate::clock::ms_to_timestamp(
        T0_MS + 4 * 3_600_000 + 60_000,
    ));
    assert!(take(&*l, TIGHT).await.is_err());
    c.set(crate::clock::ms_to_timestamp(midnight - 1));
    assert!(take(&*l, TIGHT).await.is_err());
    c.set(crate::clock::ms_to_timestamp(midnight));
    take(&*l, TIGHT).await.unwrap();
}

/// A per-minute 429 cools that scope for retryDelay; other keys carry on meanwhile.
pub async fn per_minute_429_cools_the_scope(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(2), config(100, 100_000, 1000), c.clone())
        .await;
    let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    l.settle(
        lease,
        Outcome::Throttled {
            kind: ThrottleKind::RequestsPerMinute,
            retry_after: Some(Duration::from_secs(37)),
            quota_value: None,
        },
    )
    .await
    .unwrap();
    for _ in 0..5 {
        assert_eq!(take(&*l, TIGHT).await.unwrap(), KeyId(1));
    }
    // The other model on the same key is not affected.
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    l.settle(lease, Outcome::success(1)).await.unwrap();
    c.advance(Duration::from_secs(37));
    let mut seen = [false; 2];
    for _ in 0..4 {
        seen[take(&*l, TIGHT).await.unwrap().index()] = true;
    }
    assert_eq!(seen, [true, true]);
}

/// A per-day 429 exhausts the scope until Pacific midnight even with a short retryDelay, and its
/// quotaValue is learned.
pub async fn per_day_429_exhausts_until_midnight(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(1), config(100, 100_000, 250), c.clone())
        .await;
    let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
    l.settle(
        lease,
        Outcome::Throttled {
            kind: ThrottleKind::RequestsPerDay,
            retry_after: Some(Duration::ZERO),
            quota_value: Some(20),
        },
    )
    .await
    .unwrap();
    c.advance(Duration::from_secs(3600));
    let err = take(&*l, TIGHT).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ExhaustedForDay, "{err:?}");
    let st = l.status().await.unwrap();
    let s = st.scopes.iter().find(|s| s.model == TIGHT).unwrap();
    assert_eq!(s.state, ScopeState::Exhausted);
    assert_eq!(s.limits.rpd, Some(20), "quotaValue learned");
    assert_eq!(s.learned_until_ms, Some(next_pacific_midnight(T0_MS)));
    c.set(crate::clock::ms_to_timestamp(next_pacific_midnight(T0_MS)));
    // What was learned is forgotten with the day (Google moves projects between tiers): the
    // configured 250 hold again until the server says otherwise.
    for _ in 0..21 {
        take(&*l, TIGHT).await.unwrap();
    }
    let st = l.status().await.unwrap();
    let s = st.scopes.iter().find(|s| s.model == TIGHT).unwrap();
    assert_eq!(s.limits.rpd, Some(250));
    assert_eq!(s.learned, ModelLimits::UNLIMITED);
    assert_eq!(s.learned_until_ms, None);
}

/// A tokens-per-day limit (configured, or learned from a per-day token 429): admitted against
/// the estimate, corrected by the real count, refused until Pacific midnight when full, too large
/// when no day could hold it, and what was learned forgotten with the day.
pub async fn tpd_enforced_learned_and_reconciled(f: &dyn LedgerFactory) {
    let c = clock();
    let mut cfg = config(100, 100_000, 1000);
    cfg.limits
        .set_model(
            TIGHT,
            LimitOverride {
                tpd: Some(1000),
                ..Default::default()
            },
        )
        .unwrap();
    let l = f.make(solo_keys(1), cfg, c.clone()).await;
    let a = l.acquire(TIGHT, Demand::tokens(400)).await.unwrap();
    l.settle(a, Outcome::success(400)).await.unwrap();
    // Estimated 400, really 100: the day holds 500.
    let b = l.acquire(TIGHT, Demand::tokens(400)).await.unwrap();
    l.settle(b, Outcome::success(100)).await.unwrap();
    c.advance(Duration::from_secs(120));
    let d = l.acquire(TIGHT, Demand::tokens(450)).await.unwrap();
    l.settle(d, Outcome::success(450)).await.unwrap();
    let err = l.acquire(TIGHT, Demand::tokens(100)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AcquireError::Exhausted {
                reason: Exhaustion::TokensPerDay,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::ExhaustedForDay);
    let st = l.status().await.unwrap();
    let s = only(&st, TIGHT);
    assert_eq!((s.tpd_used, s.limits.tpd), (950, Some(1000)));
    let err = l.acquire(TIGHT, Demand::tokens(2000)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AcquireError::DemandTooLarge {
                what: "input tokens per day",
                ..
            }
        ),
        "{err:?}"
    );
    take(&*l, TIGHT).await.unwrap();

    // Learned from the server: GenerateContentInputTokensPerModelPerDay, quotaValue 5000.
    let e = l.acquire(ROOMY, Demand::tokens(10)).await.unwrap();
    l.settle(
        e,
        Outcome::Throttled {
            kind: ThrottleKind::TokensPerDay,
            retry_after: Some(Duration::from_secs(30)),
            quota_value: Some(5000),
        },
    )
    .await
    .unwrap();
    let err = take(&*l, ROOMY).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ExhaustedForDay, "{err:?}");
    let midnight = next_pacific_midnight(T0_MS);
    let st = l.status().await.unwrap();
    let s = only(&st, ROOMY);
    assert_eq!(s.limits.tpd, Some(5000));
    assert_eq!(s.origin.tpd, LimitOrigin::Learned);
    assert_eq!(s.learned_until_ms, Some(midnight));
    assert_eq!(s.state, ScopeState::Exhausted);

    c.set(crate::clock::ms_to_timestamp(midnight));
    take(&*l, ROOMY).await.unwrap();
    take(&*l, TIGHT).await.unwrap();
    let st = l.status().await.unwrap();
    let s = only(&st, ROOMY);
    assert_eq!((s.limits.tpd, s.tpd_used), (None, 10));
    assert_eq!(only(&st, TIGHT).tpd_used, 10, "a new day");
}
