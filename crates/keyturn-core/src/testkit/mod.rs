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

mod health;
mod quota;
mod state;
mod switch_offs;

pub use health::*;
pub use quota::*;
pub use state::*;
pub use switch_offs::*;

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
            dead_key_disabled_until_reset, admin_disable_holds_until_enabled, all_keys_disabled, breaker_opens_probes_and_closes,
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
