//! What the server switches off (a model for a project, a whole project, the API) and how it comes back: re-probes after Pacific midnight, relearning, restarts, tier changes, and the words of a refusal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// `limit: 0` switches the model off for that project only.
pub async fn limit_zero_turns_model_off_for_project(f: &dyn LedgerFactory) {
    let keys = KeyRing::new(vec![key(0, Some("p")), key(1, Some("q"))]).unwrap();
    let l = f.make(keys, config(100, 100_000, 1000), clock()).await;
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
    for _ in 0..4 {
        assert_eq!(take(&*l, TIGHT).await.unwrap(), KeyId(1));
    }
    let mut seen = [false; 2];
    for _ in 0..4 {
        seen[take(&*l, ROOMY).await.unwrap().index()] = true;
    }
    assert_eq!(seen, [true, true], "other models of project p still work");
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
    let err = take(&*l, TIGHT).await.unwrap_err();
    assert!(
        matches!(err, AcquireError::ModelUnavailable { .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Permanent);
}

/// A project out of credits (402) or with no quota at all: every model of it is off, models it
/// never used included; other projects carry on; with every project off, a permanent error.
pub async fn project_off_switches_every_model_off(f: &dyn LedgerFactory) {
    let l = f
        .make(two_projects(), config(100, 100_000, 1000), clock())
        .await;
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    l.settle(lease, Outcome::ProjectOff).await.unwrap();
    for m in [TIGHT, ROOMY, FRESH, TIGHT, ROOMY, FRESH] {
        assert_eq!(take(&*l, m).await.unwrap(), KeyId(2), "{m}");
    }
    let st = l.status().await.unwrap();
    let midnight = next_pacific_midnight(T0_MS);
    for m in [TIGHT, ROOMY, FRESH] {
        let s = scope(&st, "p", m);
        assert_eq!(
            (s.state, s.project_off, s.off_until_ms),
            (ScopeState::Off, true, Some(midnight)),
            "{m}"
        );
        assert_eq!(scope(&st, "q", m).state, ScopeState::Ready, "{m}");
    }
    assert!(
        st.keys.iter().all(|k| k.disabled.is_none()),
        "no key is blamed"
    );
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key(), KeyId(2));
    l.settle(lease, Outcome::ProjectOff).await.unwrap();
    let err = take(&*l, FRESH).await.unwrap_err();
    assert!(
        matches!(err, AcquireError::ModelUnavailable { .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Permanent);
    let msg = err.to_string();
    assert!(
        msg.contains(FRESH) && msg.contains("credits") && msg.contains("re-probes it from"),
        "{msg}"
    );
}

/// `SERVICE_DISABLED`: every key of the project is disabled with that reason, not one at a time.
pub async fn project_dead_disables_every_key_of_it(f: &dyn LedgerFactory) {
    let l = f
        .make(two_projects(), config(100, 100_000, 1000), clock())
        .await;
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    l.settle(lease, Outcome::ProjectDead(DeadReason::ServiceDisabled))
        .await
        .unwrap();
    for m in [TIGHT, ROOMY, TIGHT, ROOMY] {
        assert_eq!(take(&*l, m).await.unwrap(), KeyId(2));
    }
    let st = l.status().await.unwrap();
    let reasons: Vec<_> = st
        .keys
        .iter()
        .map(|k| k.disabled.map(|d| d.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            Some(DeadReason::ServiceDisabled),
            Some(DeadReason::ServiceDisabled),
            None
        ]
    );
    l.reset(ResetTarget::Key(KeyId(1))).await.unwrap();
    let mut seen = [false; 3];
    for _ in 0..4 {
        seen[take(&*l, TIGHT).await.unwrap().index()] = true;
    }
    assert_eq!(seen, [false, true, true], "a reset key serves again");
}

/// A model switched off for a project comes back by itself: after the next Pacific midnight
/// exactly one real request goes to it (the others skip it while that request is out); limit 0
/// again keeps it off until the following midnight; a success brings it back. A re-probe lost
/// (its lease dropped) frees the gate after the probe timeout.
pub async fn off_scope_reprobed_once_after_pacific_midnight(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(two_projects(), config(100, 100_000, 1000), c.clone())
        .await;
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
    let midnight = next_pacific_midnight(T0_MS);
    let st = l.status().await.unwrap();
    let s = scope(&st, "p", TIGHT);
    assert_eq!(
        (s.state, s.project_off, s.off_until_ms),
        (ScopeState::Off, false, Some(midnight))
    );
    c.set(crate::clock::ms_to_timestamp(midnight - 1));
    let (on_p, rest) = split_p(hold(&*l, TIGHT, 4).await);
    assert!(on_p.is_empty(), "still off before midnight");
    settle_all(&*l, rest).await;

    // Midnight: one re-probe, and only one, while it is out.
    c.set(crate::clock::ms_to_timestamp(midnight));
    let (mut on_p, rest) = split_p(hold(&*l, TIGHT, 6).await);
    assert_eq!(on_p.len(), 1, "exactly one re-probe");
    settle_all(&*l, rest).await;
    assert_eq!(
        scope(&l.status().await.unwrap(), "p", TIGHT).state,
        ScopeState::Off,
        "off until the re-probe answers"
    );
    // Limit 0 again: off until the next midnight.
    l.settle(on_p.pop().unwrap(), Outcome::ModelUnavailable)
        .await
        .unwrap();
    c.advance(Duration::from_secs(3600));
    let (on_p, rest) = split_p(hold(&*l, TIGHT, 4).await);
    assert!(on_p.is_empty(), "refused again: off for the day");
    settle_all(&*l, rest).await;
    let midnight2 = next_pacific_midnight(midnight);
    assert_eq!(
        scope(&l.status().await.unwrap(), "p", TIGHT).off_until_ms,
        Some(midnight2)
    );

    // The next midnight: the re-probe is lost (dropped unsettled); after the probe timeout
    // another goes, and its success brings the model back for every key of p.
    c.set(crate::clock::ms_to_timestamp(midnight2));
    let (mut on_p, rest) = split_p(hold(&*l, TIGHT, 3).await);
    assert_eq!(on_p.len(), 1);
    settle_all(&*l, rest).await;
    let _lost = on_p.pop();
    c.advance(Duration::from_secs(29));
    let (on_p, rest) = split_p(hold(&*l, TIGHT, 3).await);
    assert!(
        on_p.is_empty(),
        "the lost re-probe holds the gate until its timeout"
    );
    settle_all(&*l, rest).await;
    c.advance(Duration::from_secs(1));
    let (mut on_p, rest) = split_p(hold(&*l, TIGHT, 3).await);
    assert_eq!(on_p.len(), 1);
    settle_all(&*l, rest).await;
    l.settle(on_p.pop().unwrap(), Outcome::success(1))
        .await
        .unwrap();
    let st = l.status().await.unwrap();
    let s = scope(&st, "p", TIGHT);
    assert_eq!((s.state, s.off_until_ms), (ScopeState::Ready, None));
    let mut seen = [false; 3];
    for _ in 0..6 {
        seen[take(&*l, TIGHT).await.unwrap().index()] = true;
    }
    assert_eq!(seen, [true, true, true], "back for every key of p");
}

/// A project switched off as a whole is re-probed the same way: one request (on any model)
/// after the next Pacific midnight; while it is out, the others are told to wait for its
/// answer (not that the model is gone), and before and after it, that the model is unavailable.
pub async fn off_project_reprobed_once_after_pacific_midnight(f: &dyn LedgerFactory) {
    let c = clock();
    let keys = KeyRing::new(vec![key(0, Some("p")), key(1, Some("p"))]).unwrap();
    let l = f.make(keys, config(100, 100_000, 1000), c.clone()).await;
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::ProjectOff).await.unwrap();
    let midnight = next_pacific_midnight(T0_MS);
    c.set(crate::clock::ms_to_timestamp(midnight - 1));
    assert!(matches!(
        take(&*l, TIGHT).await.unwrap_err(),
        AcquireError::ModelUnavailable { .. }
    ));
    c.set(crate::clock::ms_to_timestamp(midnight));
    let probe = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    for m in [TIGHT, ROOMY, FRESH] {
        let err = l.acquire(m, Demand::tokens(1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                AcquireError::Exhausted {
                    reason: Exhaustion::Reprobing,
                    ..
                }
            ),
            "{m}: {err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Throttled);
    }
    // Status reads while the re-probe is out (the monitor does, every second).
    let st = l.status().await.unwrap();
    assert!(st.scopes.iter().all(|s| s.project_off), "{:?}", st.scopes);
    l.settle(probe, Outcome::ProjectOff).await.unwrap();
    c.advance(Duration::from_secs(3600));
    assert!(take(&*l, ROOMY).await.is_err(), "off again for the day");
    let midnight2 = next_pacific_midnight(midnight);
    let st = l.status().await.unwrap();
    assert!(
        st.scopes
            .iter()
            .all(|s| s.project_off && s.off_until_ms == Some(midnight2))
    );
    c.set(crate::clock::ms_to_timestamp(midnight2));
    let probe = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    l.settle(probe, Outcome::success(1)).await.unwrap();
    let mut seen = [false; 2];
    for m in [TIGHT, ROOMY, FRESH, TIGHT] {
        seen[take(&*l, m).await.unwrap().index()] = true;
    }
    assert_eq!(seen, [true, true]);
    let st = l.status().await.unwrap();
    assert!(
        st.scopes
            .iter()
            .all(|s| !s.project_off && s.state == ScopeState::Ready)
    );
}

/// Callers that find only a re-probe out wait for its answer (within their bound) rather than
/// fail: served, they get a lease; refused again, they learn the model is unavailable.
pub async fn waiters_follow_a_reprobe(f: &dyn LedgerFactory) {
    for served in [true, false] {
        let c = clock();
        let mut cfg = config(100, 100_000, 1000);
        cfg.max_wait = Duration::from_secs(20);
        let l = f.make(solo_keys(1), cfg, c.clone()).await;
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
        c.set(crate::clock::ms_to_timestamp(next_pacific_midnight(T0_MS)));
        let probe = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire(TIGHT, Demand::tokens(1)).await });
        // It waits for the re-probe's answer.
        until_parked(&c, &waiter).await;
        let answer = if served {
            Outcome::success(1)
        } else {
            Outcome::ModelUnavailable
        };
        l.settle(probe, answer).await.unwrap();
        for _ in 0..50 {
            if waiter.is_finished() {
                break;
            }
            c.advance(Duration::from_millis(200));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("released when the re-probe answered")
            .unwrap();
        if served {
            l.settle(got.unwrap(), Outcome::success(1)).await.unwrap();
        } else {
            let err = got.unwrap_err();
            assert!(
                matches!(err, AcquireError::ModelUnavailable { .. }),
                "{err:?}"
            );
        }
    }
}

/// With `relearn_after` set, learned limits and switch-offs hold that long instead of until
/// the next Pacific midnight.
pub async fn relearn_after_replaces_the_midnight(f: &dyn LedgerFactory) {
    let c = clock();
    let mut cfg = config(100, 100_000, 1000);
    cfg.relearn_after = Some(Duration::from_secs(2 * 3600));
    let keys = KeyRing::new(vec![key(0, Some("p"))]).unwrap();
    let l = f.make(keys, cfg, c.clone()).await;
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    l.settle(
        lease,
        Outcome::Throttled {
            kind: ThrottleKind::RequestsPerMinute,
            retry_after: Some(Duration::from_secs(1)),
            quota_value: Some(40),
        },
    )
    .await
    .unwrap();
    let two_h = T0_MS + 2 * 3_600_000;
    let st = l.status().await.unwrap();
    assert_eq!(scope(&st, "p", TIGHT).off_until_ms, Some(two_h));
    assert_eq!(scope(&st, "p", ROOMY).limits.rpm, Some(40));
    assert_eq!(scope(&st, "p", ROOMY).learned_until_ms, Some(two_h));
    c.set(crate::clock::ms_to_timestamp(two_h - 1));
    assert!(take(&*l, TIGHT).await.is_err());
    c.set(crate::clock::ms_to_timestamp(two_h));
    let st = l.status().await.unwrap();
    assert_eq!(scope(&st, "p", ROOMY).limits.rpm, Some(1000), "forgotten");
    take(&*l, TIGHT).await.unwrap();
    assert_eq!(
        scope(&l.status().await.unwrap(), "p", TIGHT).state,
        ScopeState::Ready
    );
}

/// Switch-offs and their expiry survive a restart; a state file from before expiries were
/// recorded loads, its learned limits expiring at the next Pacific midnight.
pub async fn switch_offs_survive_restart(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(two_projects(), config(100, 100_000, 1000), c.clone())
        .await;
    let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    l.settle(lease, Outcome::ProjectOff).await.unwrap();
    let text = serde_json::to_string(&l.snapshot().await.unwrap()).unwrap();
    let midnight = next_pacific_midnight(T0_MS);

    let l2 = f
        .make(two_projects(), config(100, 100_000, 1000), c.clone())
        .await;
    l2.restore(serde_json::from_str(&text).unwrap())
        .await
        .unwrap();
    let st = l2.status().await.unwrap();
    let s = scope(&st, "p", TIGHT);
    assert_eq!(
        (s.state, s.project_off, s.off_until_ms),
        (ScopeState::Off, true, Some(midnight))
    );
    assert_eq!(scope(&st, "p", TIGHT).learned_until_ms, Some(midnight));
    assert_eq!(scope(&st, "p", ROOMY).state, ScopeState::Off);
    assert_eq!(take(&*l2, ROOMY).await.unwrap(), KeyId(2));

    // An older file: no project switch-offs, no expiry on what was learned.
    let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
    old.as_object_mut().unwrap().remove("projects");
    for s in old["scopes"].as_array_mut().unwrap() {
        s.as_object_mut().unwrap().remove("learned_until_ms");
    }
    let l3 = f
        .make(two_projects(), config(100, 100_000, 1000), c.clone())
        .await;
    l3.restore(serde_json::from_value(old).unwrap())
        .await
        .unwrap();
    let st = l3.status().await.unwrap();
    let s = scope(&st, "p", TIGHT);
    assert_eq!((s.state, s.off_until_ms), (ScopeState::Off, Some(midnight)));
    assert_eq!(scope(&st, "p", ROOMY).state, ScopeState::Ready);
    c.set(crate::clock::ms_to_timestamp(midnight));
    let (on_p, rest) = split_p(hold(&*l3, TIGHT, 4).await);
    assert_eq!(on_p.len(), 1, "one re-probe after the midnight");
    settle_all(&*l3, rest).await;
    settle_all(&*l3, on_p).await;
    assert_eq!(
        scope(&l3.status().await.unwrap(), "p", TIGHT).state,
        ScopeState::Ready
    );
}

/// A project whose configured tier changed drops what the server taught under the old one
/// (limits, switch-offs, the day's exhaustion) and keeps what was sent; a project whose tier
/// did not change keeps all of it.
pub async fn tier_change_drops_what_was_learned(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(two_projects(), config(100, 100_000, 1000), c.clone())
        .await;
    for project_key in [KeyId(0), KeyId(2)] {
        // Round-robin: p's key first, then q's.
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        assert_eq!(lease.key().index() < 2, project_key.index() < 2);
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
    }
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    assert!(lease.key().index() < 2);
    l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
    let text = serde_json::to_string(&l.snapshot().await.unwrap()).unwrap();

    let mut upgraded = config(100, 100_000, 1000);
    upgraded.limits.set_project_tier("p", Tier::Tier1);
    let l2 = f.make(two_projects(), upgraded, c.clone()).await;
    l2.restore(serde_json::from_str(&text).unwrap())
        .await
        .unwrap();
    let st = l2.status().await.unwrap();
    let s = scope(&st, "p", TIGHT);
    assert_eq!(s.tier, Tier::Tier1);
    assert_eq!(
        (s.state, s.learned, s.learned_until_ms, s.limits.rpd),
        (ScopeState::Ready, ModelLimits::UNLIMITED, None, Some(1000)),
        "p's tier changed: its per-day 429 and limit are forgotten"
    );
    assert_eq!(s.rpd_used, 1, "what was sent still counts");
    assert_eq!(scope(&st, "p", ROOMY).state, ScopeState::Ready);
    let q = scope(&st, "q", TIGHT);
    assert_eq!(q.tier, Tier::Free);
    assert_eq!(
        (q.state, q.limits.rpd),
        (ScopeState::Exhausted, Some(20)),
        "q's tier did not change"
    );
    assert_eq!(
        (q.origin.rpm, q.origin.rpd),
        (LimitOrigin::Configured, LimitOrigin::Learned)
    );
    assert_eq!(s.origin.rpd, LimitOrigin::Configured);
    let mut seen_p = false;
    for _ in 0..4 {
        seen_p |= take(&*l2, TIGHT).await.unwrap().index() < 2;
    }
    assert!(seen_p, "p serves TIGHT again");
    assert!(take(&*l2, ROOMY).await.unwrap().index() < 3);

    // The same tier keeps everything.
    let l3 = f
        .make(two_projects(), config(100, 100_000, 1000), c.clone())
        .await;
    l3.restore(serde_json::from_str(&text).unwrap())
        .await
        .unwrap();
    let st = l3.status().await.unwrap();
    assert_eq!(scope(&st, "p", TIGHT).state, ScopeState::Exhausted);
    assert_eq!(scope(&st, "p", TIGHT).limits.rpd, Some(20));
    assert_eq!(scope(&st, "p", ROOMY).state, ScopeState::Off);
    assert_eq!(scope(&st, "p", ROOMY).origin.rpd, LimitOrigin::ServerOff);
}

/// A model no project may send names who decided it, per project: keyturn's built-in table
/// (with its date and tier) or the server, and when it is re-probed. (The configuration cannot
/// set a limit of 0.) A refusal keyturn made itself is never blamed on Gemini.
pub async fn model_unavailable_says_who_decided(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(1), config(10, 100_000, 100), c.clone())
        .await;
    let why = |e: AcquireError| match e {
        AcquireError::ModelUnavailable { detail, .. } => detail,
        other => panic!("{other:?}"),
    };

    // The built-in table has no free-tier quota for 2.5 pro: Gemini was never asked.
    let e = why(l
        .acquire("gemini-2.5-pro", Demand::tokens(10))
        .await
        .unwrap_err());
    assert!(
        e.contains("built-in limit table (dated ")
            && e.contains(crate::limits::BUILTIN_TABLE_DATE)
            && e.contains("free tier")
            && !e.contains("Gemini reported"),
        "{e}"
    );
    // The server says 0: learned, with the re-probe's time.
    let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
    l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
    let err = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap_err();
    let text = err.to_string();
    let e = why(err);
    assert!(
        e.contains("Gemini reported a limit of 0") && e.contains("re-probes it from"),
        "{e}"
    );
    assert!(text.contains(&e), "the message carries the detail: {text}");
    // The server says the whole project is off.
    let lease = l.acquire(ROOMY, Demand::tokens(10)).await.unwrap();
    l.settle(lease, Outcome::ProjectOff).await.unwrap();
    let e = why(l.acquire(ROOMY, Demand::tokens(10)).await.unwrap_err());
    assert!(e.contains("cannot be served at all"), "{e}");
}
