//! The behaviour suite every [`QuotaLedger`] must pass (opendal's `behavior` tests are the model).
//! The in-memory ledger runs it in this crate's tests; `keyturn-store` runs it against Redis.
//!
//! A ledger under test is built by a [`LedgerFactory`] from keys, configuration and a
//! [`ManualClock`] that the cases move; [`ledger_behaviour_suite!`] expands to one
//! `#[tokio::test]` per case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::breaker::BreakerConfig;
use crate::breaker::BreakerState;
use crate::clock::{Clock, ManualClock};
use crate::error::{AcquireError, ErrorKind, Exhaustion};
use crate::key::{ApiKey, KeyId, KeyRing, KeySpec};
use crate::lease::Demand;
use crate::ledger::{LedgerConfig, QuotaLedger, ResetTarget};
use crate::limits::{LimitOverride, LimitTable, ModelLimits, Tier};
use crate::outcome::{DeadReason, Outcome, ThrottleKind};
use crate::pacific::next_pacific_midnight;
use crate::policy::Policy;
use crate::snapshot::{LimitOrigin, PoolStatus, ScopeState, ScopeStatus};

/// Builds the ledger under test.
#[async_trait]
pub trait LedgerFactory: Send + Sync {
    /// A fresh ledger (empty counters) over these keys, reading time from `clock`.
    async fn make(
        &self,
        keys: KeyRing,
        cfg: LedgerConfig,
        clock: ManualClock,
    ) -> Arc<dyn QuotaLedger>;
}

/// 2026-01-14 12:00:00 PST (20:00 UTC): far from any midnight.
pub const T0_MS: i64 = 1_768_420_800_000;

/// Test model names: one with tight limits, one roomy.
pub const TIGHT: &str = "test-tight";
/// See [`TIGHT`].
pub const ROOMY: &str = "test-roomy";

fn key(n: usize, project: Option<&str>) -> KeySpec {
    let spec = KeySpec::new(ApiKey::new(format!("made-up-test-key-{n:03}")).unwrap())
        .label(format!("k{n}"));
    match project {
        Some(p) => spec.project(p),
        None => spec,
    }
}

/// `n` keys, each its own project.
pub fn solo_keys(n: usize) -> KeyRing {
    KeyRing::new((0..n).map(|i| key(i, None)).collect()).unwrap()
}

/// A config with `TIGHT` at the given limits and `ROOMY` at 1000/1M/10000, failing fast.
pub fn config(rpm: u64, tpm: u64, rpd: u64) -> LedgerConfig {
    let mut limits = LimitTable::builtin();
    limits
        .set_model(
            TIGHT,
            LimitOverride {
                rpm: Some(rpm),
                tpm: Some(tpm),
                rpd: Some(rpd),
                tpd: None,
            },
        )
        .unwrap();
    limits
        .set_model(
            ROOMY,
            LimitOverride {
                rpm: Some(1000),
                tpm: Some(1_000_000),
                rpd: Some(10_000),
                tpd: None,
            },
        )
        .unwrap();
    LedgerConfig {
        policy: Policy::RoundRobin,
        breaker: BreakerConfig {
            failure_threshold: 2,
            base_cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(30),
        },
        max_wait: Duration::ZERO,
        default_throttle_cooldown: Duration::from_secs(15),
        limits,
        models: vec![],
        relearn_after: None,
    }
}

fn clock() -> ManualClock {
    ManualClock::at_ms(T0_MS)
}

async fn take(l: &dyn QuotaLedger, model: &str) -> Result<KeyId, AcquireError> {
    let lease = l.acquire(model, Demand::tokens(10)).await?;
    let k = lease.key();
    l.settle(lease, Outcome::success(10)).await.unwrap();
    Ok(k)
}

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

fn scope<'a>(st: &'a PoolStatus, project: &str, model: &str) -> &'a ScopeStatus {
    st.scopes
        .iter()
        .find(|s| s.project == project && s.model == model)
        .unwrap_or_else(|| panic!("no scope {project}/{model} in {st:?}"))
}

/// The one scope of `model` (a pool with one project).
fn only<'a>(st: &'a PoolStatus, model: &str) -> &'a ScopeStatus {
    st.scopes
        .iter()
        .find(|s| s.model == model)
        .unwrap_or_else(|| panic!("no scope of {model} in {st:?}"))
}

/// Keys 0 and 1 in project p, key 2 in project q.
fn two_projects() -> KeyRing {
    KeyRing::new(vec![
        key(0, Some("p")),
        key(1, Some("p")),
        key(2, Some("q")),
    ])
    .unwrap()
}

/// A model nobody has used before a project was switched off.
const FRESH: &str = "test-fresh";

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

/// Holds `n` leases of `model` and says which keys they went to.
async fn hold(l: &dyn QuotaLedger, model: &str, n: usize) -> Vec<crate::lease::Lease> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(l.acquire(model, Demand::tokens(1)).await.unwrap());
    }
    out
}

/// Splits held leases into those on keys of project p (0, 1) and the rest.
fn split_p(
    leases: Vec<crate::lease::Lease>,
) -> (Vec<crate::lease::Lease>, Vec<crate::lease::Lease>) {
    leases.into_iter().partition(|l| l.key().index() < 2)
}

async fn settle_all(l: &dyn QuotaLedger, leases: Vec<crate::lease::Lease>) {
    for lease in leases {
        l.settle(lease, Outcome::success(1)).await.unwrap();
    }
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

/// Waits until `waiter` is parked: asleep on `c` until a moment still ahead. Checking that it
/// has not finished proves it waits only after this; before, it may simply not have run yet.
pub async fn until_parked<T>(c: &ManualClock, waiter: &tokio::task::JoinHandle<T>) {
    for _ in 0..10_000 {
        assert!(!waiter.is_finished(), "it answered instead of waiting");
        if c.sleepers_ahead() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the waiter never went to sleep on the clock");
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

/// Snapshot and restore carry counters, health and learned limits across a restart.
pub async fn snapshot_restore_round_trip(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(2), config(3, 100_000, 10), c.clone())
        .await;
    for _ in 0..4 {
        take(&*l, TIGHT).await.unwrap();
    }
    let lease = l.acquire(ROOMY, Demand::tokens(1)).await.unwrap();
    let dead = lease.key();
    l.settle(lease, Outcome::KeyDead(DeadReason::Expired))
        .await
        .unwrap();
    let snap = l.snapshot().await.unwrap();
    let text = serde_json::to_string(&snap).unwrap();
    assert!(
        !text.contains("made-up-test-key"),
        "no secret in a snapshot"
    );

    let l2 = f
        .make(solo_keys(2), config(3, 100_000, 10), c.clone())
        .await;
    l2.restore(serde_json::from_str(&text).unwrap())
        .await
        .unwrap();
    let st = l2.status().await.unwrap();
    assert!(st.keys[dead.index()].disabled.is_some());
    let used: u64 = st
        .scopes
        .iter()
        .filter(|s| s.model == TIGHT)
        .map(|s| s.rpd_used)
        .sum();
    assert_eq!(used, 4);
    // The live key has 1 RPM left in its minute (3 limit, 2 used).
    let live = KeyId(1 - dead.0);
    assert_eq!(take(&*l2, TIGHT).await.unwrap(), live);
    assert!(take(&*l2, TIGHT).await.is_err());

    let mut newer = snap.clone();
    newer.schema = crate::snapshot::SCHEMA_VERSION + 1;
    assert!(l2.restore(newer).await.is_err());
}

/// Status shows used vs limit and the next reset for each scope.
pub async fn status_reports_usage(f: &dyn LedgerFactory) {
    let l = f.make(solo_keys(2), config(5, 1000, 50), clock()).await;
    for _ in 0..3 {
        take(&*l, TIGHT).await.unwrap();
    }
    let st = l.status().await.unwrap();
    assert_eq!(st.keys.len(), 2);
    let tight: Vec<_> = st.scopes.iter().filter(|s| s.model == TIGHT).collect();
    assert_eq!(tight.len(), 2);
    let used: Vec<u64> = tight.iter().map(|s| s.rpd_used).collect();
    assert_eq!(used, vec![2, 1]);
    assert!(tight.iter().all(|s| s.limits.rpm == Some(5)
        && s.state == ScopeState::Ready
        && s.next_reset_ms == next_pacific_midnight(T0_MS)));
    assert_eq!(tight[0].tpm_used, 20);
}

/// Least-loaded picks the key with most headroom; weighted follows weights.
pub async fn other_policies(f: &dyn LedgerFactory) {
    let mut cfg = config(10, 100_000, 1000);
    cfg.policy = Policy::LeastLoaded;
    let l = f.make(solo_keys(3), cfg.clone(), clock()).await;
    // Load key 0 with 5, key 1 with 2 via round-robin-independent picks: use all, then compare.
    let mut counts = [0; 3];
    for _ in 0..9 {
        counts[take(&*l, TIGHT).await.unwrap().index()] += 1;
    }
    assert_eq!(counts, [3, 3, 3], "least-loaded balances equal keys");

    cfg.policy = Policy::Weighted;
    cfg.limits
        .set_model(
            TIGHT,
            LimitOverride {
                rpm: Some(1000),
                ..Default::default()
            },
        )
        .unwrap();
    let keys = KeyRing::new(vec![
        key(0, None).weight(3),
        key(1, None).weight(1),
        key(2, None).weight(1),
    ])
    .unwrap();
    let l = f.make(keys, cfg, clock()).await;
    let mut counts = [0; 3];
    for _ in 0..50 {
        counts[take(&*l, TIGHT).await.unwrap().index()] += 1;
    }
    assert_eq!(counts, [30, 10, 10]);
}

/// Usage history: requests and real input tokens per key, model and Pacific day, kept across
/// midnight (today and the days before), carried by snapshot and restore, and not wiped by a reset.
pub async fn usage_history_per_key_model_and_day(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(2), config(100, 100_000, 1000), c.clone())
        .await;
    // Day one: key 0 sends 2 TIGHT (real 7 and 9 tokens) and 1 ROOMY, key 1 sends 1 TIGHT.
    for real in [7, 5, 9] {
        let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
        l.settle(lease, Outcome::success(real)).await.unwrap();
    }
    let lease = l.acquire(ROOMY, Demand::tokens(4)).await.unwrap();
    assert_eq!(lease.key(), KeyId(0));
    drop(lease); // unsettled: counts as sent, with its estimate
    // Day two: key 1 (next in turn) sends one more TIGHT.
    c.advance(Duration::from_millis(
        (next_pacific_midnight(T0_MS) + 3_600_000 - T0_MS) as u64,
    ));
    let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
    assert_eq!(lease.key(), KeyId(1));
    l.settle(lease, Outcome::success(3)).await.unwrap();
    l.reset(ResetTarget::All).await.unwrap();

    let fp = |k: usize| {
        crate::key::ApiKey::new(format!("made-up-test-key-{k:03}"))
            .unwrap()
            .fingerprint()
    };
    let rows = |snap: &crate::snapshot::Snapshot| {
        snap.usage
            .iter()
            .map(|u| {
                let k = (0..2).find(|k| fp(*k) == u.fingerprint).unwrap();
                (
                    u.date.to_string(),
                    k,
                    u.model.clone(),
                    u.requests,
                    u.input_tokens,
                )
            })
            .collect::<Vec<_>>()
    };
    let snap = l.snapshot().await.unwrap();
    let expect = vec![
        ("2026-01-14".to_owned(), 0, ROOMY.to_owned(), 1, 4),
        ("2026-01-14".to_owned(), 0, TIGHT.to_owned(), 2, 16),
        ("2026-01-14".to_owned(), 1, TIGHT.to_owned(), 1, 5),
        ("2026-01-15".to_owned(), 1, TIGHT.to_owned(), 1, 3),
    ];
    let mut got = rows(&snap);
    got.sort();
    let mut want = expect.clone();
    want.sort();
    assert_eq!(got, want, "usage after a day change and a reset");

    // A restart: a fresh ledger restored from the snapshot reports the same history.
    let l2 = f
        .make(solo_keys(2), config(100, 100_000, 1000), c.clone())
        .await;
    let text = serde_json::to_string(&snap).unwrap();
    l2.restore(serde_json::from_str(&text).unwrap())
        .await
        .unwrap();
    let mut again = rows(&l2.snapshot().await.unwrap());
    again.sort();
    assert_eq!(again, want, "history survives a restart");

    // Thirty days on, day one has aged out; the restored today-counter keeps adding.
    let now = c.now_ms();
    c.advance(Duration::from_millis(
        (T0_MS + 30 * 86_400_000 - now) as u64,
    ));
    take(&*l2, TIGHT).await.unwrap();
    let late = rows(&l2.snapshot().await.unwrap());
    assert!(late.iter().all(|r| r.0 != "2026-01-14"), "{late:?}");
    assert!(late.iter().any(|r| r.0 == "2026-01-15"), "{late:?}");
    assert!(
        late.iter().any(|r| r.0 == "2026-02-13" && r.3 == 1),
        "{late:?}"
    );
}

/// Requests sent, served and refused are kept apart: the daily account (what the limit is
/// counted against) counts every request sent, the status and the usage history say how many
/// of them Gemini served and how many it refused, and both survive a restart.
pub async fn sent_served_and_refused_kept_apart(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f
        .make(solo_keys(1), config(100, 100_000, 1000), c.clone())
        .await;
    let settle = |o: Outcome| {
        let l = l.clone();
        async move {
            let lease = l.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
            l.settle(lease, o).await.unwrap();
        }
    };
    settle(Outcome::success(10)).await;
    settle(Outcome::success(10)).await;
    settle(Outcome::Throttled {
        kind: ThrottleKind::RequestsPerMinute,
        retry_after: Some(Duration::from_secs(1)),
        quota_value: None,
    })
    .await;
    c.advance(Duration::from_secs(2));
    settle(Outcome::Transient).await;
    settle(Outcome::CallerFault).await;
    drop(l.acquire(TIGHT, Demand::tokens(10)).await.unwrap()); // sent, never answered

    let scope = |st: &PoolStatus| {
        st.scopes
            .iter()
            .find(|s| s.model == TIGHT)
            .map(|s| (s.rpd_used, s.rpd_served, s.rpd_refused))
            .unwrap()
    };
    let row = |snap: &crate::snapshot::Snapshot| {
        snap.usage
            .iter()
            .find(|u| u.model == TIGHT)
            .map(|u| (u.requests, u.served, u.refused))
            .unwrap()
    };
    assert_eq!(scope(&l.status().await.unwrap()), (6, 2, 1), "status");
    let snap = l.snapshot().await.unwrap();
    assert_eq!(row(&snap), (6, 2, 1), "usage history");

    let l2 = f
        .make(solo_keys(1), config(100, 100_000, 1000), c.clone())
        .await;
    let text = serde_json::to_string(&snap).unwrap();
    l2.restore(serde_json::from_str(&text).unwrap())
        .await
        .unwrap();
    assert_eq!(
        scope(&l2.status().await.unwrap()),
        (6, 2, 1),
        "after a restart"
    );
    assert_eq!(row(&l2.snapshot().await.unwrap()), (6, 2, 1));

    // A key found dead refuses too; a new Pacific day starts from nothing.
    let lease = l2.acquire(TIGHT, Demand::tokens(10)).await.unwrap();
    l2.settle(lease, Outcome::KeyDead(DeadReason::Invalid))
        .await
        .unwrap();
    assert_eq!(scope(&l2.status().await.unwrap()), (7, 2, 2));
    l2.reset(ResetTarget::All).await.unwrap();
    c.advance(Duration::from_millis(
        (next_pacific_midnight(T0_MS) + 1_000 - c.now_ms()) as u64,
    ));
    take(&*l2, TIGHT).await.unwrap();
    assert_eq!(scope(&l2.status().await.unwrap()), (1, 1, 0), "a new day");
    let snap = l2.snapshot().await.unwrap();
    let mut days: Vec<_> = snap
        .usage
        .iter()
        .filter(|u| u.model == TIGHT)
        .map(|u| (u.date.to_string(), u.requests, u.served, u.refused))
        .collect();
    days.sort();
    assert_eq!(
        days,
        vec![
            ("2026-01-14".to_owned(), 7, 2, 2),
            ("2026-01-15".to_owned(), 1, 1, 0)
        ],
        "history keeps each day's answers apart"
    );
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

/// A warning mark is claimed once until it expires, and travels with snapshots.
pub async fn notices_are_claimed_once(f: &dyn LedgerFactory) {
    let c = clock();
    let l = f.make(solo_keys(1), config(5, 1000, 50), c.clone()).await;
    let until = next_pacific_midnight(T0_MS);
    assert!(
        l.claim_notice("quota-80|p|m|2026-01-14", until)
            .await
            .unwrap()
    );
    assert!(
        !l.claim_notice("quota-80|p|m|2026-01-14", until)
            .await
            .unwrap()
    );
    assert!(
        l.claim_notice("quota-100|p|m|2026-01-14", until)
            .await
            .unwrap()
    );
    let snap = l.snapshot().await.unwrap();
    let l2 = f.make(solo_keys(1), config(5, 1000, 50), c.clone()).await;
    l2.restore(snap).await.unwrap();
    assert!(
        !l2.claim_notice("quota-80|p|m|2026-01-14", until)
            .await
            .unwrap()
    );
    c.advance(Duration::from_millis((until + 1 - T0_MS) as u64));
    assert!(
        l2.claim_notice("quota-80|p|m|2026-01-14", until + 86_400_000)
            .await
            .unwrap()
    );
}

/// Expands to one `#[tokio::test]` per behaviour case, each building its ledger with `$factory`.
/// With `ignore = "reason"`, every case is `#[ignore = "reason"]`: for backends that need a
/// server (Redis), so a run without one lists the cases as ignored instead of passing them, and
/// `cargo test -- --include-ignored` runs them (and fails if the factory cannot reach its server).
#[macro_export]
macro_rules! ledger_behaviour_suite {
    ($factory:expr) => {
        $crate::ledger_behaviour_suite!(@list $factory, []);
    };
    ($factory:expr, ignore = $reason:literal) => {
        $crate::ledger_behaviour_suite!(@list $factory, [#[ignore = $reason]]);
    };
    (@list $factory:expr, [$($attr:tt)*]) => {
        $crate::ledger_behaviour_suite!(@cases $factory, [$($attr)*];
            round_robin_spreads_evenly, project_keys_share_quota, rpm_window_rolls,
            tpm_enforced_and_reconciled, demand_too_large, batch_counts_as_n,
            rpd_resets_at_pacific_midnight, per_minute_429_cools_the_scope,
            per_day_429_exhausts_until_midnight, limit_zero_turns_model_off_for_project,
            dead_key_disabled_until_reset, all_keys_disabled, breaker_opens_probes_and_closes,
            waiters_follow_the_probe, caller_fault_changes_nothing, dropped_lease_counts_as_sent, acquire_waits_for_capacity,
            no_wait_beyond_the_bound, resets, snapshot_restore_round_trip, status_reports_usage,
            other_policies, usage_history_per_key_model_and_day, notices_are_claimed_once,
            project_off_switches_every_model_off, project_dead_disables_every_key_of_it,
            off_scope_reprobed_once_after_pacific_midnight,
            off_project_reprobed_once_after_pacific_midnight, relearn_after_replaces_the_midnight,
            waiters_follow_a_reprobe,
            switch_offs_survive_restart, tier_change_drops_what_was_learned,
            tpd_enforced_learned_and_reconciled, sent_served_and_refused_kept_apart,
            model_unavailable_says_who_decided, absurd_token_counts_are_bounded,
            a_lease_from_before_a_reset_corrects_nothing_after_it,
            a_lease_settled_after_midnight_counts_on_the_day_it_was_sent);
    };
    (@cases $factory:expr, $attrs:tt; $($case:ident),* $(,)?) => {
        $(
            $crate::ledger_behaviour_suite!(@case $factory, $attrs, $case);
        )*
    };
    (@case $factory:expr, [$($attr:tt)*], $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $case() {
            let factory = $factory;
            $crate::testkit::$case(&factory).await;
        }
    };
}
