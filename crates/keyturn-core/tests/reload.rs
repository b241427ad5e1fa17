//! Reloading the in-memory ledger's keys and limits while it runs: a new key joins with a fresh
//! state, a removed key takes no new request but settles the one it has, a changed limit holds
//! at once, and a key's state survives a reload that keeps it.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use keyturn_core::{
    ApiKey, Demand, InMemoryLedger, KeyRing, KeySpec, LedgerConfig, LimitOverride, LimitTable,
    ManualClock, Outcome, QuotaLedger,
};

const MODEL: &str = "gemini-2.5-flash";

fn spec(n: u32) -> KeySpec {
    KeySpec::new(ApiKey::new(format!("AIzaSyTEST-reload-{n:04}")).unwrap()).label(format!("k{n}"))
}

fn limits(rpm: u64) -> LimitTable {
    let mut t = LimitTable::builtin();
    t.set_model(
        MODEL,
        LimitOverride {
            rpm: Some(rpm),
            tpm: Some(1_000_000),
            rpd: Some(1_000),
            tpd: None,
        },
    )
    .unwrap();
    t
}

fn ledger(keys: Vec<KeySpec>, rpm: u64) -> (InMemoryLedger, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::at_ms(1_780_340_400_000));
    let cfg = LedgerConfig {
        limits: limits(rpm),
        max_wait: std::time::Duration::ZERO,
        ..LedgerConfig::default()
    };
    let l = InMemoryLedger::new(Arc::new(KeyRing::new(keys).unwrap()), cfg, clock.clone());
    (l, clock)
}

fn label(l: &InMemoryLedger, lease: &keyturn_core::Lease) -> String {
    l.keys().get(lease.key()).unwrap().label.clone()
}

#[tokio::test]
async fn a_new_key_joins_and_a_removed_key_finishes_in_flight_and_takes_nothing_new() {
    let (l, _clock) = ledger(vec![spec(1), spec(2)], 100);
    let first = l.acquire(MODEL, Demand::tokens(1)).await.unwrap();
    assert_eq!(label(&l, &first), "k1");

    let change = l.reload(&KeyRing::new(vec![spec(2), spec(3)]).unwrap(), limits(100));
    assert_eq!(change.added, vec!["k3".to_owned()]);
    assert_eq!(change.removed, vec!["k1".to_owned()]);

    // k1's request in flight still names k1 and settles on it.
    assert_eq!(label(&l, &first), "k1");
    l.settle(first, Outcome::success(1)).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..6 {
        let lease = l.acquire(MODEL, Demand::tokens(1)).await.unwrap();
        seen.push(label(&l, &lease));
        l.settle(lease, Outcome::success(1)).await.unwrap();
    }
    assert!(seen.contains(&"k3".to_owned()), "{seen:?}");
    assert!(seen.contains(&"k2".to_owned()), "{seen:?}");
    assert!(!seen.contains(&"k1".to_owned()), "{seen:?}");

    let st = l.status().await.unwrap();
    let labels: Vec<_> = st.keys.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, ["k2", "k3"]);
    let snap = l.snapshot().await.unwrap();
    assert!(snap.keys.iter().all(|k| k.label != "k1"));
}

#[tokio::test]
async fn a_changed_limit_holds_at_once_and_a_kept_key_keeps_its_state() {
    let (l, _clock) = ledger(vec![spec(1)], 3);
    for _ in 0..3 {
        let lease = l.acquire(MODEL, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::success(1)).await.unwrap();
    }
    assert!(l.acquire(MODEL, Demand::tokens(1)).await.is_err());
    l.reload(&KeyRing::new(vec![spec(1)]).unwrap(), limits(5));
    // The three sent still count against the new limit of five.
    for _ in 0..2 {
        let lease = l.acquire(MODEL, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::success(1)).await.unwrap();
    }
    assert!(l.acquire(MODEL, Demand::tokens(1)).await.is_err());
    let st = l.status().await.unwrap();
    assert_eq!(st.scopes[0].limits.rpm, Some(5));
}

#[tokio::test]
async fn a_key_moved_to_a_new_project_draws_on_that_projects_quota() {
    let (l, _clock) = ledger(vec![spec(1).project("a"), spec(2).project("a")], 1);
    let lease = l.acquire(MODEL, Demand::tokens(1)).await.unwrap();
    l.settle(lease, Outcome::success(1)).await.unwrap();
    // Project a's one request a minute is spent: both its keys wait.
    assert!(l.acquire(MODEL, Demand::tokens(1)).await.is_err());
    l.reload(
        &KeyRing::new(vec![spec(1).project("a"), spec(2).project("b")]).unwrap(),
        limits(1),
    );
    let lease = l.acquire(MODEL, Demand::tokens(1)).await.unwrap();
    assert_eq!(label(&l, &lease), "k2");
    let st = l.status().await.unwrap();
    assert!(
        st.scopes
            .iter()
            .any(|s| s.project == "b" && s.keys == ["k2"])
    );
}

/// Least-loaded's headroom tree and weighted's cycle are indexes over the keys: after a reload
/// they cover the new key and leave out the removed one, and a demand pinned to one project is
/// still served only there.
#[tokio::test]
async fn the_pick_indexes_follow_a_reload() {
    for policy in [
        keyturn_core::Policy::LeastLoaded,
        keyturn_core::Policy::Weighted,
    ] {
        let clock = Arc::new(ManualClock::at_ms(1_780_340_400_000));
        let cfg = LedgerConfig {
            limits: limits(1_000),
            max_wait: std::time::Duration::ZERO,
            policy,
            ..LedgerConfig::default()
        };
        let l = InMemoryLedger::new(
            Arc::new(KeyRing::new(vec![spec(1), spec(2)]).unwrap()),
            cfg,
            clock.clone(),
        );
        // Both indexes built over k1, k2 before the reload.
        for _ in 0..4 {
            let lease = l.acquire(MODEL, Demand::tokens(1)).await.unwrap();
            l.settle(
                lease,
                Outcome::Success {
                    input_tokens: Some(1),
                },
            )
            .await
            .unwrap();
        }
        l.reload(
            &KeyRing::new(vec![spec(2), spec(3)]).unwrap(),
            limits(1_000),
        );
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..12 {
            let lease = l.acquire(MODEL, Demand::tokens(1)).await.unwrap();
            *seen.entry(label(&l, &lease)).or_default() += 1;
            l.settle(
                lease,
                Outcome::Success {
                    input_tokens: Some(1),
                },
            )
            .await
            .unwrap();
        }
        assert!(
            !seen.contains_key("k1"),
            "{policy:?}: a removed key was picked: {seen:?}"
        );
        assert!(
            seen.contains_key("k3"),
            "{policy:?}: the new key was never picked: {seen:?}"
        );
        let k3 = l.keys().find("k3").unwrap();
        for _ in 0..3 {
            let lease = l
                .acquire(MODEL, Demand::tokens(1).within_project_of(k3))
                .await
                .unwrap();
            assert_eq!(label(&l, &lease), "k3", "{policy:?}");
            l.settle(
                lease,
                Outcome::Success {
                    input_tokens: Some(1),
                },
            )
            .await
            .unwrap();
        }
    }
}
