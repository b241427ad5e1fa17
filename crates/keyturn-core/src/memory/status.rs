//! The one projection from state to status, shared by every ledger and by anyone holding a
//! snapshot (the CLI reading a state file).

use super::*;

pub(super) fn effective_breaker(b: &Breaker, now: i64) -> BreakerState {
    match b.state {
        BreakerState::Open { until_ms } if now >= until_ms => BreakerState::HalfOpen {
            probe_deadline_ms: None,
        },
        s => s,
    }
}

/// The status of a scope held elsewhere (a shared ledger) as a snapshot: the same rules the
/// in-memory ledger applies to its own scopes.
///
/// `project_off`: the project's switch-off, if the whole project is off.
pub fn scope_status_from_snapshot(
    ss: &ScopeSnapshot,
    configured: (ModelLimits, LimitSource),
    tier: Tier,
    keys: Vec<String>,
    now_ms: i64,
    project_off: Option<&ProjectSnapshot>,
) -> ScopeStatus {
    let mut s = Scope::fresh(0, configured, tier, now_ms);
    s.apply_snapshot(ss, now_ms, ss.learned_until_ms);
    s.refresh(now_ms);
    s.status(
        ss.project.clone(),
        ss.model.clone(),
        keys,
        now_ms,
        project_off.map(|p| p.reprobe_at_ms),
    )
}

impl PoolStatus {
    /// The status a snapshot stands for, read by the rules every ledger shares: the one
    /// projection from state to status, used by the in-memory ledger, the Redis ledger and
    /// anyone holding a snapshot (the CLI reading a state file). `limits` and `keys` are the
    /// pool's configuration (the configured limits and tiers, the labels of each project's keys);
    /// "now" is when the snapshot was taken. Scopes come sorted by project, then model.
    pub fn from_snapshot(
        snap: &Snapshot,
        limits: &crate::limits::LimitTable,
        keys: &KeyRing,
    ) -> Self {
        let now = snap.taken_at_ms;
        let key_status = snap
            .keys
            .iter()
            .map(|k| crate::snapshot::KeyStatus {
                label: k.label.clone(),
                fingerprint: k.fingerprint,
                project: k.project.clone(),
                disabled: k.disabled,
                breaker: effective_breaker(&k.breaker, now),
                failures: k.breaker.failures,
            })
            .collect();
        let mut scopes: Vec<ScopeStatus> = snap
            .scopes
            .iter()
            .map(|ss| {
                let labels = keys
                    .active()
                    .filter(|(_, e)| e.project == ss.project)
                    .map(|(_, e)| e.label.clone())
                    .collect();
                let off = snap.projects.iter().find(|p| p.project == ss.project);
                scope_status_from_snapshot(
                    ss,
                    limits.resolve(&ss.project, &ss.model),
                    limits.tier(&ss.project),
                    labels,
                    now,
                    off,
                )
            })
            .collect();
        scopes.sort_by(|a, b| (&a.project, &a.model).cmp(&(&b.project, &b.model)));
        PoolStatus {
            at_ms: now,
            keys: key_status,
            scopes,
        }
    }
}

/// Whether a breaker reads as half-open now (its cooldown has passed), for status views.
pub fn breaker_state_now(b: &Breaker, now_ms: i64) -> BreakerState {
    effective_breaker(b, now_ms)
}
