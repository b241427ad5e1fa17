//! The in-process ledger: every key's health and every (project, model) scope's counters behind
//! one short critical section. The hot path (`try_acquire` + `settle_now`) allocates nothing and
//! is O(keys) at worst; models are looked up by a linear scan over the few models a pool uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::breaker::{Admission, Breaker, BreakerState};
use crate::clock::Clock;
use crate::error::{AcquireError, Exhaustion, LedgerError, SnapshotError};
use crate::key::{KeyId, KeyRing, RingChange};
use crate::lease::{Demand, Lease};
use crate::ledger::{LedgerConfig, QuotaLedger, ResetTarget};
use crate::limits::{LimitSource, LimitTable, ModelLimits, Tier, normalize_model};
use crate::outcome::{Outcome, ThrottleKind};
use crate::policy::Policy;
use crate::snapshot::{
    Disabled, KeySnapshot, LimitOrigin, LimitOrigins, NoticeMark, PoolStatus, ProjectSnapshot,
    SCHEMA_VERSION, ScopeSnapshot, ScopeState, ScopeStatus, Snapshot, UsageDay,
};
use crate::window::{DayCounter, RollingWindow, sec_of};

mod acquire;
mod persistence;
mod pick;
mod scope;
mod settle;
mod status;
mod usage;

use pick::{HeadroomTree, weighted_schedule};
use scope::{Gate, KeyHealth, ProbeOut, ProjectGate, Scope};
pub use status::{breaker_state_now, scope_status_from_snapshot};
use usage::{PastUsage, UsageCell, history_cutoff, prune_past, sent_day_row};

#[derive(Debug, Clone)]
struct ModelState {
    name: String,
    /// This day's usage, per key.
    today: Vec<UsageCell>,
    /// Scope index for each project index.
    scopes: Vec<u32>,
    cursor: u32,
    /// Smooth weighted round-robin's current weights, per key (when there is no schedule).
    wrr: Vec<i64>,
    /// Weighted: the next entry of the ledger's schedule.
    wcursor: u32,
    /// Least-loaded: headroom per key, kept up to date.
    ll: HeadroomTree,
}

#[derive(Debug)]
struct Inner {
    health: Vec<KeyHealth>,
    /// Per key: removed by a reload (takes no new request, finishes what it has in flight).
    retired: Vec<bool>,
    /// Per key: its weight under the weighted policy.
    weights: Vec<u32>,
    key_project: Vec<u32>,
    /// Per project index: its keys.
    project_keys: Vec<Vec<u32>>,
    /// Weighted: smooth weighted round-robin's cycle over the keys taking requests (`None`: the
    /// policy is another, or the weights are too large for a schedule and every pick scans).
    /// Rebuilt by a reload.
    schedule: Option<Vec<u32>>,
    projects: Vec<String>,
    models: Vec<ModelState>,
    scopes: Vec<Scope>,
    /// Per project index: switched off as a whole?
    project_gates: Vec<ProjectGate>,
    /// Usage of days before each key's current one, at most `HISTORY_DAYS` days back.
    past: Vec<PastUsage>,
    /// Warnings already sent, until the end of their day.
    notices: Vec<NoticeMark>,
    /// Bumped when state is replaced wholesale; leases from an older epoch correct no counters.
    epoch: u64,
    /// Bumped on every change; the write-behind flusher saves when it moves.
    version: u64,
    /// Bumped on every change but an admission or a served answer (health, switch-offs, limits,
    /// cooldowns, resets, restores): least-loaded's trees rebuild when it moves.
    shape: u64,
}

/// The in-memory [`QuotaLedger`]. Share it (`Arc`) between all the tasks of one process.
#[derive(Debug)]
pub struct InMemoryLedger {
    /// Swapped whole by a reload, under `inner`'s lock; the hot path reads `inner` only.
    keys: arc_swap::ArcSwap<KeyRing>,
    /// The configured limits (`cfg.limits` until a reload replaces them).
    limits: arc_swap::ArcSwap<LimitTable>,
    cfg: LedgerConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    changed: Notify,
    waiters: AtomicUsize,
}

impl InMemoryLedger {
    /// A ledger over `keys` with fresh counters.
    pub fn new(keys: Arc<KeyRing>, cfg: LedgerConfig, clock: Arc<dyn Clock>) -> Self {
        let mut projects: Vec<String> = Vec::new();
        let mut key_project = Vec::with_capacity(keys.len());
        for (_, e) in keys.iter() {
            let idx = match projects.iter().position(|p| *p == e.project) {
                Some(i) => i,
                None => {
                    projects.push(e.project.clone());
                    projects.len() - 1
                }
            };
            key_project.push(idx as u32);
        }
        let mut project_keys = vec![Vec::new(); projects.len()];
        for (k, p) in key_project.iter().enumerate() {
            project_keys[*p as usize].push(k as u32);
        }
        let retired: Vec<bool> = keys.iter().map(|(id, _)| keys.is_retired(id)).collect();
        let weights: Vec<u32> = keys.iter().map(|(_, e)| e.weight).collect();
        let schedule = schedule_of(cfg.policy, &weights, &retired);
        let inner = Inner {
            project_gates: vec![ProjectGate::default(); projects.len()],
            health: vec![KeyHealth::default(); keys.len()],
            retired,
            weights,
            key_project,
            project_keys,
            schedule,
            projects,
            models: Vec::new(),
            scopes: Vec::new(),
            past: Vec::new(),
            notices: Vec::new(),
            epoch: 0,
            version: 0,
            shape: 0,
        };
        let ledger = Self {
            keys: arc_swap::ArcSwap::new(keys),
            limits: arc_swap::ArcSwap::from_pointee(cfg.limits.clone()),
            cfg,
            clock,
            inner: Mutex::new(inner),
            changed: Notify::new(),
            waiters: AtomicUsize::new(0),
        };
        {
            let now = ledger.clock.now_ms();
            let mut inner = ledger.inner.lock();
            for m in ledger.cfg.models.clone() {
                ledger.model_index(&mut inner, &m, now);
            }
        }
        ledger
    }

    /// The clock this ledger reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Reloads the configuration without a restart: the keys of `next` take requests from now
    /// on (a new one with a fresh state, a known one with the state it has), a key `next` lacks
    /// takes no new request and finishes what it has in flight (its id stays valid until then),
    /// and `limits` hold at once for every scope. Returns what changed, by label.
    pub fn reload(&self, next: &KeyRing, limits: LimitTable) -> RingChange {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let (ring, change) = self.keys.load().reloaded(next);
        self.limits.store(Arc::new(limits));
        let limits = self.limits.load();
        for (id, e) in ring.iter() {
            let k = id.index();
            let p = match inner.projects.iter().position(|p| *p == e.project) {
                Some(p) => p,
                None => {
                    // A project this pool has not had: a gate and a scope for each model in use.
                    inner.projects.push(e.project.clone());
                    inner.project_gates.push(ProjectGate::default());
                    let p = inner.projects.len() - 1;
                    for m in &mut inner.models {
                        inner.scopes.push(Scope::fresh(
                            p as u32,
                            limits.resolve(&e.project, &m.name),
                            limits.tier(&e.project),
                            now,
                        ));
                        m.scopes.push((inner.scopes.len() - 1) as u32);
                    }
                    p
                }
            };
            if k == inner.health.len() {
                inner.health.push(KeyHealth::default());
                inner.retired.push(false);
                inner.weights.push(e.weight);
                inner.key_project.push(p as u32);
            }
            inner.retired[k] = ring.is_retired(id);
            inner.weights[k] = e.weight;
            inner.key_project[k] = p as u32;
        }
        let n = inner.health.len();
        for m in &mut inner.models {
            m.today.resize(n, UsageCell::default());
            m.wrr.resize(n, 0);
            m.wcursor = 0;
        }
        inner.project_keys = vec![Vec::new(); inner.projects.len()];
        for (k, p) in inner.key_project.iter().enumerate() {
            inner.project_keys[*p as usize].push(k as u32);
        }
        inner.schedule = schedule_of(self.cfg.policy, &inner.weights, &inner.retired);
        // The least-loaded trees are rebuilt over the new keys at their next pick.
        inner.shape += 1;
        for m in &inner.models {
            for (p, &si) in m.scopes.iter().enumerate() {
                let project = &inner.projects[p];
                inner.scopes[si as usize]
                    .reconfigure(limits.resolve(project, &m.name), limits.tier(project));
            }
        }
        self.keys.store(Arc::new(ring));
        inner.version += 1;
        self.changed.notify_waiters();
        change
    }

    /// A counter that moves whenever state changes (for write-behind persistence).
    pub fn version(&self) -> u64 {
        self.inner.lock().version
    }

    #[inline(always)]
    fn model_index(&self, inner: &mut Inner, model: &str, now_ms: i64) -> usize {
        let model = normalize_model(model);
        match inner.models.iter().position(|m| same_name(&m.name, model)) {
            Some(i) => i,
            None => self.add_model(inner, model, now_ms),
        }
    }

    /// First use of a model: gives every project a scope for it (the only allocating path).
    #[cold]
    #[inline(never)]
    fn add_model(&self, inner: &mut Inner, model: &str, now_ms: i64) -> usize {
        let mut scopes = Vec::with_capacity(inner.projects.len());
        let mut warned = false;
        let limits = self.limits.load();
        for (p, project) in inner.projects.iter().enumerate() {
            let (configured, source) = limits.resolve(project, model);
            if source == LimitSource::Family && !warned {
                tracing::warn!(
                    model,
                    limits = ?configured,
                    "model has no entry in keyturn's limit table for this project's tier; using its family's per-minute defaults and no per-day cap until the server reports one"
                );
                warned = true;
            }
            inner.scopes.push(Scope::fresh(
                p as u32,
                (configured, source),
                limits.tier(project),
                now_ms,
            ));
            scopes.push((inner.scopes.len() - 1) as u32);
        }
        inner.models.push(ModelState {
            name: model.to_owned(),
            today: vec![UsageCell::default(); inner.health.len()],
            scopes,
            cursor: 0,
            wrr: vec![0; inner.health.len()],
            wcursor: 0,
            ll: HeadroomTree::default(),
        });
        inner.version += 1;
        inner.models.len() - 1
    }

    fn do_reset(&self, target: ResetTarget) -> Result<(), LedgerError> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        match target {
            ResetTarget::Key(id) => {
                let h = inner
                    .health
                    .get_mut(id.index())
                    .ok_or_else(|| LedgerError::UnknownTarget(format!("no key #{}", id.0)))?;
                *h = KeyHealth::default();
            }
            ResetTarget::Scope { project, model } => {
                let model = normalize_model(&model);
                let p = inner
                    .projects
                    .iter()
                    .position(|x| *x == project)
                    .ok_or_else(|| LedgerError::UnknownTarget(format!("no project '{project}'")))?;
                let si = inner
                    .models
                    .iter()
                    .find(|m| m.name == model)
                    .map(|m| m.scopes[p] as usize)
                    .ok_or_else(|| {
                        LedgerError::UnknownTarget(format!("no model '{model}' in use"))
                    })?;
                inner.scopes[si].clear(now);
                inner.epoch += 1;
            }
            ResetTarget::All => {
                for h in &mut inner.health {
                    *h = KeyHealth::default();
                }
                for s in &mut inner.scopes {
                    s.clear(now);
                }
                inner.project_gates.fill(ProjectGate::default());
                inner.epoch += 1;
            }
        }
        inner.version += 1;
        inner.shape += 1;
        drop(inner);
        self.changed.notify_waiters();
        Ok(())
    }
}

/// `a == b` for model names, eight bytes at a time (the last eight overlapping the ones before):
/// no call to `memcmp` and no byte loop for the names a pool uses (the call and the search
/// around it were an eighth of the pick's instructions).
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a == b;
    }
    let mut i = 0;
    while i + 8 < n {
        if word(a, i) != word(b, i) {
            return false;
        }
        i += 8;
    }
    word(a, n - 8) == word(b, n - 8)
}

/// The eight bytes of `name` from `at` as one word (`at + 8 <= name.len()`).
#[inline(always)]
fn word(name: &[u8], at: usize) -> u64 {
    name.get(at..at + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
        .map_or(0, u64::from_ne_bytes)
}

/// The weighted policy's cycle over the keys taking requests (retired ones left out), as key
/// indices; `None` for another policy or weights too large for a cycle.
fn schedule_of(policy: Policy, weights: &[u32], retired: &[bool]) -> Option<Vec<u32>> {
    if policy != Policy::Weighted {
        return None;
    }
    let active: Vec<u32> = (0..weights.len() as u32)
        .filter(|&k| !retired[k as usize])
        .collect();
    let w: Vec<u32> = active.iter().map(|&k| weights[k as usize]).collect();
    weighted_schedule(&w).map(|cycle| cycle.into_iter().map(|i| active[i as usize]).collect())
}

#[async_trait]
impl QuotaLedger for InMemoryLedger {
    fn keys(&self) -> Arc<KeyRing> {
        self.keys.load_full()
    }

    async fn acquire(&self, model: &str, demand: Demand) -> Result<Lease, AcquireError> {
        self.acquire_waiting(model, demand).await
    }

    async fn settle(&self, lease: Lease, outcome: Outcome) -> Result<(), LedgerError> {
        self.settle_now(lease, outcome);
        Ok(())
    }

    async fn reset(&self, target: ResetTarget) -> Result<(), LedgerError> {
        self.do_reset(target)
    }

    async fn disable_by_admin(&self, key: KeyId, disabled: bool) -> Result<(), LedgerError> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let h = inner
            .health
            .get_mut(key.index())
            .ok_or_else(|| LedgerError::UnknownTarget(format!("no key #{}", key.0)))?;
        match (disabled, h.disabled) {
            (true, Some(d)) if d.reason.is_admin() => return Ok(()),
            (true, _) => {
                h.disabled = Some(Disabled {
                    reason: crate::outcome::DeadReason::ByAdmin,
                    since_ms: now,
                });
            }
            (false, Some(d)) if d.reason.is_admin() => h.disabled = None,
            (false, _) => return Ok(()),
        }
        inner.version += 1;
        drop(inner);
        self.changed.notify_waiters();
        Ok(())
    }

    async fn status(&self) -> Result<PoolStatus, LedgerError> {
        Ok(self.status_now())
    }

    async fn snapshot(&self) -> Result<Snapshot, LedgerError> {
        Ok(self.snapshot_now())
    }

    async fn restore(&self, snapshot: Snapshot) -> Result<(), LedgerError> {
        Ok(self.restore_now(&snapshot)?)
    }

    async fn claim_notice(&self, id: &str, until_ms: i64) -> Result<bool, LedgerError> {
        Ok(self.claim_notice_now(id, until_ms))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::same_name;

    proptest! {
        /// The word-wise comparison says what `==` says, at every length around its eight-byte
        /// words and with the bytes that differ anywhere (first, middle, last, the overlap).
        #[test]
        fn same_name_is_string_equality(
            a in "[a-c./-]{0,40}",
            flip in any::<prop::sample::Index>(),
            same_len_other in "[a-c./-]{0,40}",
        ) {
            prop_assert!(same_name(&a, &a.clone()));
            prop_assert_eq!(same_name(&a, &same_len_other), a == same_len_other);
            if !a.is_empty() {
                // One byte changed: never the same name.
                let mut b = a.clone().into_bytes();
                let i = flip.index(b.len());
                b[i] = if b[i] == b'a' { b'b' } else { b'a' };
                let b = String::from_utf8(b).unwrap();
                prop_assert!(!same_name(&a, &b), "{a:?} vs {b:?}");
                prop_assert!(!same_name(&a, &a[..a.len() - 1]));
            }
        }
    }
}
