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

mod persistence;
mod pick;
mod scope;
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

/// Least-loaded: keys the tree offers that turn out not to fit before the pick scans them all.
const LEAST_LOADED_MISSES: usize = 8;

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

/// Why `try_acquire` found nothing, with what waiting would need.
#[derive(Debug)]
struct Blocked {
    error: AcquireError,
    retry_at: Option<i64>,
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

    fn model_index(&self, inner: &mut Inner, model: &str, now_ms: i64) -> usize {
        let model = normalize_model(model);
        if let Some(i) = inner.models.iter().position(|m| m.name == model) {
            return i;
        }
        // First use of a model: give every project a scope for it (the only allocating path).
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

    /// Acquires without waiting. Allocation-free unless the model is new or the answer is an error.
    pub fn try_acquire(&self, model: &str, demand: Demand) -> Result<Lease, AcquireError> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        self.try_acquire_locked(&mut inner, model, demand, now)
            .map_err(|b| b.error)
    }

    fn try_acquire_locked(
        &self,
        inner: &mut Inner,
        model: &str,
        demand: Demand,
        now: i64,
    ) -> Result<Lease, Blocked> {
        let demand = Demand {
            requests: demand.requests.max(1),
            ..demand
        };
        let m = self.model_index(inner, model, now);
        let n = inner.health.len();
        let Inner {
            health,
            retired,
            weights,
            key_project,
            project_keys,
            schedule,
            models,
            scopes,
            project_gates,
            past,
            epoch,
            version,
            shape,
            ..
        } = inner;
        let ms = &mut models[m];
        // The cursor is always below `n`; no division on the hot path (the `%` by a runtime `n`
        // showed in the profile of the pick).
        let start = (ms.cursor as usize).min(n.saturating_sub(1));

        let scope_of = |k: usize| ms_scopes_index(&ms.scopes, key_project, k);
        let mut pick: Option<(usize, Pass)> = None;
        let gates = &*project_gates;
        let project_of = |k: usize| &gates[key_project[k] as usize];
        // A request pinned to a resource's project: only that project's keys are candidates.
        let pinned = pinned_project(key_project, demand);
        let outside = |k: usize| pinned.is_some_and(|p| key_project[k] != p);
        match self.cfg.policy {
            Policy::RoundRobin => {
                for i in 0..n {
                    let k = wrap(start + i, n);
                    if outside(k) {
                        continue;
                    }
                    if let Some(pass) = eligible(
                        retired[k],
                        &health[k],
                        project_of(k),
                        &mut scopes[scope_of(k)],
                        demand,
                        now,
                    ) {
                        pick = Some((k, pass));
                        break;
                    }
                }
            }
            Policy::LeastLoaded => {
                // A demand pinned to one project (rare: a request naming a file) is decided
                // by the scan below, which sees only that project's keys.
                if pinned.is_none() {
                    let sec = sec_of(now);
                    if !ms.ll.fresh(sec, *shape) {
                        ms.ll.rebuild(n, sec, *shape, |k| {
                            if retired[k] || health[k].disabled.is_some() {
                                return None;
                            }
                            let s = &mut scopes[scope_of(k)];
                            s.refresh(now);
                            Some(s.headroom())
                        });
                    }
                    // Keys with room, but not for this demand: back in the tree after this pick.
                    let mut too_small = [(0usize, 0.0f64); LEAST_LOADED_MISSES];
                    let mut missed = 0;
                    for _ in 0..LEAST_LOADED_MISSES {
                        let Some(k) = ms.ll.top() else { break };
                        if let Some(pass) = eligible(
                            retired[k],
                            &health[k],
                            project_of(k),
                            &mut scopes[scope_of(k)],
                            demand,
                            now,
                        ) {
                            pick = Some((k, pass));
                            break;
                        }
                        let smallest = Demand::tokens(0);
                        let s = &mut scopes[scope_of(k)];
                        if eligible(retired[k], &health[k], project_of(k), s, smallest, now)
                            .is_some()
                        {
                            too_small[missed] = (k, ms.ll.score(k));
                            missed += 1;
                        }
                        // Closed (a breaker, a cooldown, a switch-off): out until the next
                        // rebuild, and the scan below still sees it.
                        ms.ll.set(k, None);
                    }
                    for &(k, h) in &too_small[..missed] {
                        ms.ll.set(k, Some(h));
                    }
                }
                let mut best = -1.0f64;
                for i in 0..if pick.is_some() { 0 } else { n } {
                    let k = wrap(start + i, n);
                    if outside(k) {
                        continue;
                    }
                    if let Some(pass) = eligible(
                        retired[k],
                        &health[k],
                        project_of(k),
                        &mut scopes[scope_of(k)],
                        demand,
                        now,
                    ) {
                        let h = scopes[scope_of(k)].headroom();
                        if h > best {
                            best = h;
                            pick = Some((k, pass));
                        }
                    }
                }
            }
            Policy::Weighted => {
                // A pinned demand is decided by the scan below (its project's keys only).
                if let Some(schedule) = schedule.as_ref().filter(|_| pinned.is_none()) {
                    let len = schedule.len();
                    let mut c = ms.wcursor as usize % len;
                    // Every key taking requests is in the cycle: `n` entries in a row that
                    // cannot take the request make the scan below decide (O(keys) at worst).
                    for _ in 0..n.min(len) {
                        let k = schedule[c] as usize;
                        c = (c + 1) % len;
                        if let Some(pass) = eligible(
                            retired[k],
                            &health[k],
                            project_of(k),
                            &mut scopes[scope_of(k)],
                            demand,
                            now,
                        ) {
                            pick = Some((k, pass));
                            break;
                        }
                    }
                    ms.wcursor = c as u32;
                }
                let mut total = 0i64;
                for k in 0..if pick.is_some() { 0 } else { n } {
                    if outside(k) {
                        continue;
                    }
                    if let Some(pass) = eligible(
                        retired[k],
                        &health[k],
                        project_of(k),
                        &mut scopes[scope_of(k)],
                        demand,
                        now,
                    ) {
                        let w = i64::from(weights[k]);
                        ms.wrr[k] += w;
                        total += w;
                        if pick.is_none_or(|(b, _)| ms.wrr[k] > ms.wrr[b]) {
                            pick = Some((k, pass));
                        }
                    }
                }
                if let (Some((b, _)), true) = (pick, total > 0) {
                    ms.wrr[b] -= total;
                }
            }
        }

        let Some((k, pass)) = pick else {
            return Err(self.blocked(inner, m, demand, now));
        };
        let adm = pass.admission;
        ms.cursor = wrap(k + 1, n) as u32;
        health[k].breaker.admitted(adm, now, &self.cfg.breaker);
        let s = &mut scopes[ms.scopes[key_project[k] as usize] as usize];
        let sec = s.window.record(u64::from(demand.requests), demand.tokens);
        if pass.scope_probe || pass.project_probe {
            let out = Some(ProbeOut {
                key: k as u32,
                sec,
                deadline: now.saturating_add(self.cfg.breaker.probe_timeout.as_millis() as i64),
            });
            if pass.scope_probe {
                s.probe = out;
            }
            if pass.project_probe {
                project_gates[key_project[k] as usize].probe = out;
            }
        }
        s.day.add(u64::from(demand.requests));
        s.day.add_tokens(now, demand.tokens as i64);
        let day_start = s.day.day().start_ms;
        let cell = &mut ms.today[k];
        if cell.day_start_ms != day_start {
            // A new day for this key and model (allocates at most once a day).
            if cell.requests > 0 || cell.tokens > 0 {
                past.push(PastUsage {
                    day_start_ms: cell.day_start_ms,
                    key: k as u32,
                    model: m as u32,
                    requests: cell.requests,
                    served: cell.served,
                    refused: cell.refused,
                    tokens: cell.tokens,
                });
                prune_past(past, history_cutoff(now));
            }
            *cell = UsageCell {
                day_start_ms: day_start,
                ..UsageCell::default()
            };
        }
        cell.requests = cell.requests.saturating_add(u64::from(demand.requests));
        cell.tokens = cell.tokens.saturating_add(demand.tokens);
        if self.cfg.policy == Policy::LeastLoaded {
            let p = key_project[k] as usize;
            let h = scopes[ms.scopes[p] as usize].headroom();
            ms.ll.picked(k, h);
            for &j in project_keys[p].iter().filter(|j| **j as usize != k) {
                ms.ll.rescore(j as usize, h);
            }
        }
        *version += 1;
        Ok(Lease::new(
            KeyId(k as u32),
            m as u32,
            sec,
            demand,
            adm == Admission::Probe,
            *epoch,
        ))
    }

    /// Works out why nothing fit and when it will: the cold path, allowed to allocate.
    fn blocked(&self, inner: &mut Inner, m: usize, demand: Demand, now: i64) -> Blocked {
        let model = inner.models[m].name.clone();
        let mut disabled = Vec::new();
        let mut off = 0usize;
        let mut off_detail: Vec<(String, String)> = Vec::new();
        let mut too_large: Option<AcquireError> = None;
        let mut best: Option<(i64, Exhaustion)> = None;
        let keys = self.keys.load();
        let pinned = pinned_project(&inner.key_project, demand);
        let mut candidates = 0usize;
        for k in 0..inner.health.len() {
            if inner.retired[k] || pinned.is_some_and(|p| inner.key_project[k] != p) {
                continue;
            }
            candidates += 1;
            let h = &inner.health[k];
            if let Some(d) = h.disabled {
                let label = keys
                    .get(KeyId(k as u32))
                    .map_or_else(String::new, |e| e.label.clone());
                disabled.push(format!("{label}: {}", d.reason));
                continue;
            }
            let p = inner.key_project[k] as usize;
            let s = &mut inner.scopes[inner.models[m].scopes[p] as usize];
            s.refresh(now);
            // Off; or a re-probe of it is out, whose answer may free it: wait for that (up to
            // the probe's deadline; its settle wakes waiters sooner).
            let pg = &inner.project_gates[p];
            let mut reprobe_at: Option<i64> = None;
            for (g, probe) in [(pg.gate(now), pg.probe), (s.gate(now), s.probe)] {
                if g == Gate::Shut {
                    match probe.filter(|o| o.deadline > now) {
                        Some(o) => {
                            reprobe_at = Some(reprobe_at.map_or(o.deadline, |t| t.max(o.deadline)))
                        }
                        None => reprobe_at = Some(i64::MAX),
                    }
                }
            }
            match reprobe_at {
                Some(i64::MAX) => {
                    off += 1;
                    let project = &inner.projects[p];
                    if !off_detail.iter().any(|(q, _)| q == project) {
                        let project_off = pg.is_off().then_some(pg.until);
                        let st = s.status(project.clone(), model.clone(), vec![], now, project_off);
                        if let Some(why) = st.why_off() {
                            off_detail.push((project.clone(), why));
                        }
                    }
                    continue;
                }
                Some(at) => {
                    if best.is_none_or(|(b, _)| at < b) {
                        best = Some((at, Exhaustion::Reprobing));
                    }
                    continue;
                }
                None => {}
            }
            let Some((mut at, mut why)) = s.free_at(demand, now) else {
                too_large.get_or_insert_with(|| demand_too_large(&model, demand, &s.effective));
                continue;
            };
            if let Admission::NotUntil(t) = h.breaker.check(now)
                && t > at
            {
                at = t;
                why = Exhaustion::CircuitOpen;
            }
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, why));
            }
        }
        if disabled.len() == candidates {
            return Blocked {
                error: AcquireError::AllKeysDisabled {
                    model,
                    detail: disabled.join(", "),
                },
                retry_at: None,
            };
        }
        match best {
            Some((at, why)) => Blocked {
                error: AcquireError::Exhausted {
                    model,
                    reason: why,
                    until_ms: at.max(now + 1),
                },
                retry_at: Some(at.max(now + 1)),
            },
            None => Blocked {
                error: too_large.unwrap_or(if off > 0 {
                    AcquireError::ModelUnavailable {
                        model,
                        detail: off_detail
                            .into_iter()
                            .map(|(_, why)| why)
                            .collect::<Vec<_>>()
                            .join("; "),
                    }
                } else {
                    AcquireError::AllKeysDisabled {
                        model,
                        detail: disabled.join(", "),
                    }
                }),
                retry_at: None,
            },
        }
    }

    /// Settles a lease synchronously (the in-memory ledger never blocks on I/O).
    pub fn settle_now(&self, lease: Lease, outcome: Outcome) {
        // A success needs no clock: a correction to a bucket that has since left the window is
        // cleared with it on the next advance. Only state changes are timed.
        let now = match outcome {
            Outcome::Success { .. } => 0,
            _ => self.clock.now_ms(),
        };
        let k = lease.key().index();
        let mut notify = false;
        {
            let mut inner = self.inner.lock();
            let inner = &mut *inner;
            if k >= inner.health.len() {
                return;
            }
            let current = lease.epoch() == inner.epoch;
            let scope_idx = inner
                .models
                .get(lease.model_slot() as usize)
                .and_then(|m| m.scopes.get(inner.key_project[k] as usize))
                .copied();
            let label = || {
                self.keys
                    .load()
                    .get(lease.key())
                    .map_or_else(String::new, |e| e.label.clone())
            };
            let p = inner.key_project[k] as usize;
            // A re-probe through an expired switch-off: its answer decides the switch.
            let answer = match outcome {
                Outcome::Success { .. }
                | Outcome::Throttled {
                    kind:
                        ThrottleKind::RequestsPerDay
                        | ThrottleKind::TokensPerDay
                        | ThrottleKind::RequestsPerMinute
                        | ThrottleKind::TokensPerMinute,
                    ..
                } => ProbeAnswer::Serves,
                Outcome::ModelUnavailable => ProbeAnswer::ProjectServes,
                _ => ProbeAnswer::Nothing,
            };
            let sec = lease.second();
            // Anything but a served answer may change what least-loaded's trees hold.
            let mut reshape = !matches!(outcome, Outcome::Success { .. });
            if let Some(si) = scope_idx {
                let s = &mut inner.scopes[si as usize];
                if s.probe.is_some_and(|o| o.is(k, sec)) {
                    if answer == ProbeAnswer::Serves {
                        s.forget_learned();
                        tracing::info!(
                            key = %label(),
                            model = %inner.models[lease.model_slot() as usize].name,
                            project = %inner.projects[p],
                            "re-probe served: the model is back for this project"
                        );
                    }
                    s.probe = None;
                    notify = true;
                    reshape = true;
                }
            }
            let g = &mut inner.project_gates[p];
            if g.probe.is_some_and(|o| o.is(k, sec)) {
                if matches!(answer, ProbeAnswer::Serves | ProbeAnswer::ProjectServes) {
                    *g = ProjectGate::default();
                    tracing::info!(
                        key = %label(),
                        project = %inner.projects[p],
                        "re-probe answered: the project is back"
                    );
                }
                g.probe = None;
                notify = true;
                reshape = true;
            }
            // Served or refused, on the day the request was sent (sent requests were counted at
            // admission).
            let how = outcome.answered();
            if how != crate::outcome::Answered::Neither && current {
                let sent_ms = lease.second() * 1000;
                let n = u64::from(lease.requests());
                if let Some(si) = scope_idx {
                    inner.scopes[si as usize].day.answered(sent_ms, n, how);
                }
                let cell = inner
                    .models
                    .get_mut(lease.model_slot() as usize)
                    .and_then(|m| m.today.get_mut(k));
                if let Some(row) =
                    sent_day_row(cell, &mut inner.past, k as u32, lease.model_slot(), sent_ms)
                {
                    match how {
                        crate::outcome::Answered::Served => {
                            *row.served = row.served.saturating_add(n);
                        }
                        _ => *row.refused = row.refused.saturating_add(n),
                    }
                }
            }
            match outcome {
                Outcome::Success { input_tokens } => {
                    if let (Some(real), Some(si), true) = (input_tokens, scope_idx, current) {
                        // Bounded, so an absurd count can neither overflow nor wrap to a refund.
                        let real = real.min(crate::outcome::MAX_SETTLED_TOKENS) as i64;
                        let delta = real - lease.reserved_tokens() as i64;
                        if delta != 0 {
                            let s = &mut inner.scopes[si as usize];
                            s.window.adjust_tokens(lease.second(), delta);
                            s.day.add_tokens(lease.second() * 1000, delta);
                            notify |= delta < 0;
                            if self.cfg.policy == Policy::LeastLoaded {
                                let h = s.headroom();
                                if let Some(m) = inner.models.get_mut(lease.model_slot() as usize) {
                                    for &j in &inner.project_keys[p] {
                                        m.ll.rescore(j as usize, h);
                                    }
                                }
                            }
                            // The usage history counts real tokens too, on the day it was sent.
                            let cell = inner
                                .models
                                .get_mut(lease.model_slot() as usize)
                                .and_then(|m| m.today.get_mut(k));
                            if let Some(row) = sent_day_row(
                                cell,
                                &mut inner.past,
                                k as u32,
                                lease.model_slot(),
                                lease.second() * 1000,
                            ) {
                                *row.tokens = row.tokens.saturating_add_signed(delta);
                            }
                        }
                    }
                    if inner.health[k].breaker.on_success() {
                        tracing::info!(key = %label(), "key recovered: circuit breaker closed");
                        notify = true;
                        reshape = true;
                    }
                }
                Outcome::Throttled {
                    kind,
                    retry_after,
                    quota_value,
                } => {
                    // The server answered: the key and the service work.
                    notify |= inner.health[k].breaker.on_success();
                    if let Some(si) = scope_idx {
                        let s = &mut inner.scopes[si as usize];
                        s.refresh(now);
                        self.on_throttled(s, kind, retry_after, quota_value, now);
                        let model = &inner.models[lease.model_slot() as usize].name;
                        let project = &inner.projects[s.project as usize];
                        tracing::info!(
                            key = %label(), project = %project, model = %model, ?kind,
                            until = %crate::error::describe_instant(s.cooldown_until.max(s.exhausted_until)),
                            "scope rate limited by the server"
                        );
                    }
                }
                Outcome::ModelUnavailable => {
                    if let Some(si) = scope_idx {
                        let s = &mut inner.scopes[si as usize];
                        let learned = s.learned.min(ModelLimits {
                            rpd: Some(0),
                            ..ModelLimits::UNLIMITED
                        });
                        s.set_learned(learned);
                        s.learned_until = self.cfg.relearn_at(now);
                        s.probe = None;
                        tracing::info!(
                            key = %label(),
                            model = %inner.models[lease.model_slot() as usize].name,
                            project = %inner.projects[s.project as usize],
                            reprobe = %crate::error::describe_instant(s.learned_until),
                            "model not available for this project (limit 0): switched off until a re-probe"
                        );
                    }
                    notify |= inner.health[k].breaker.on_success();
                }
                Outcome::ProjectOff => {
                    let g = &mut inner.project_gates[p];
                    if !g.is_off() {
                        g.off_since = now.max(1);
                    }
                    g.until = self.cfg.relearn_at(now);
                    g.probe = None;
                    tracing::info!(
                        key = %label(),
                        project = %inner.projects[p],
                        reprobe = %crate::error::describe_instant(g.until),
                        "project cannot be served (credits depleted or no quota at all): every model switched off until a re-probe"
                    );
                    notify |= inner.health[k].breaker.on_success();
                }
                Outcome::KeyDead(reason) => {
                    if inner.health[k].disabled.is_none() {
                        tracing::info!(key = %label(), %reason, "key disabled until reset");
                        inner.health[k].disabled = Some(Disabled {
                            reason,
                            since_ms: now,
                        });
                    }
                }
                Outcome::ProjectDead(reason) => {
                    for (j, h) in inner.health.iter_mut().enumerate() {
                        if inner.key_project[j] as usize == p && h.disabled.is_none() {
                            let shown = self
                                .keys
                                .load()
                                .get(KeyId(j as u32))
                                .map_or_else(String::new, |e| e.label.clone());
                            tracing::info!(
                                key = %shown, project = %inner.projects[p], %reason,
                                "key disabled until reset: its project is"
                            );
                            h.disabled = Some(Disabled {
                                reason,
                                since_ms: now,
                            });
                        }
                    }
                }
                Outcome::Transient => {
                    let cfg = &self.cfg.breaker;
                    if inner.health[k]
                        .breaker
                        .on_failure(lease.is_probe(), now, cfg)
                    {
                        tracing::info!(key = %label(), "circuit breaker opened after transient failures");
                        // Waiters on this key's probe re-plan with the new cooldown.
                        notify = true;
                    }
                }
                Outcome::CallerFault => {
                    if lease.is_probe() {
                        inner.health[k].breaker.release_probe();
                        notify = true;
                    }
                }
            }
            inner.version += 1;
            if reshape {
                inner.shape += 1;
            }
        }
        if notify {
            self.wake();
        }
    }

    fn on_throttled(
        &self,
        s: &mut Scope,
        kind: ThrottleKind,
        retry_after: Option<std::time::Duration>,
        quota_value: Option<u64>,
        now: i64,
    ) {
        let learn = |s: &mut Scope, f: fn(&mut ModelLimits) -> &mut Option<u64>| {
            if let Some(v) = quota_value.filter(|v| *v > 0) {
                let mut l = s.learned;
                let slot = f(&mut l);
                if slot.is_none_or(|old| v <= old) {
                    *slot = Some(v);
                    s.set_learned(l);
                    // Said again, it holds again for as long.
                    s.learned_until = self.cfg.relearn_at(now);
                }
            }
        };
        let delay_until = retry_after.map(|d| now.saturating_add(d.as_millis() as i64));
        match kind {
            ThrottleKind::RequestsPerDay | ThrottleKind::TokensPerDay => {
                if kind == ThrottleKind::RequestsPerDay {
                    learn(s, |l| &mut l.rpd);
                } else {
                    learn(s, |l| &mut l.tpd);
                }
                // Classified by quotaId, never by retryDelay: a per-day 429 still says "37s".
                s.exhausted_until = s.exhausted_until.max(s.day.day().end_ms);
            }
            ThrottleKind::RequestsPerMinute | ThrottleKind::TokensPerMinute => {
                if kind == ThrottleKind::RequestsPerMinute {
                    learn(s, |l| &mut l.rpm);
                } else {
                    learn(s, |l| &mut l.tpm);
                }
                // Without a delay: until the oldest request we see in the window leaves it.
                let until = delay_until.unwrap_or_else(|| {
                    s.window
                        .occupied()
                        .next()
                        .map(|(sec, _, _)| (sec + crate::window::BUCKETS as i64) * 1000)
                        .unwrap_or(now + self.cfg.default_throttle_cooldown.as_millis() as i64)
                });
                s.cooldown_until = s.cooldown_until.max(until.max(now + 1000));
            }
            ThrottleKind::Unspecified => {
                let until = delay_until
                    .unwrap_or(now + self.cfg.default_throttle_cooldown.as_millis() as i64);
                s.cooldown_until = s.cooldown_until.max(until);
            }
        }
    }

    fn wake(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Acquires, waiting (up to the configured bound) for the earliest moment capacity returns or
    /// for a settle or reset that may free some.
    pub async fn acquire_waiting(
        &self,
        model: &str,
        demand: Demand,
    ) -> Result<Lease, AcquireError> {
        let start = self.clock.now_ms();
        let deadline = start.saturating_add(self.cfg.max_wait.as_millis() as i64);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.clock.now_ms();
            let blocked = {
                let mut inner = self.inner.lock();
                match self.try_acquire_locked(&mut inner, model, demand, now) {
                    Ok(lease) => return Ok(lease),
                    Err(b) => b,
                }
            };
            // A breaker's time, or a re-probe's, is only an upper bound (a probe may settle any
            // moment and wake us): wait for it up to the bound. Anything else returns at a known time.
            let circuit = matches!(
                blocked.error,
                AcquireError::Exhausted {
                    reason: Exhaustion::CircuitOpen | Exhaustion::Reprobing,
                    ..
                }
            );
            let at = match blocked.retry_at {
                Some(t) if t <= deadline => t,
                Some(_) if circuit && now < deadline => deadline,
                _ => return Err(blocked.error),
            };
            self.waiters.fetch_add(1, Ordering::AcqRel);
            let _guard = WaiterGuard(&self.waiters);
            tokio::select! {
                () = self.clock.sleep_until(at) => {}
                () = &mut notified => {}
            }
        }
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

/// What a settled request says about a switch-off it re-probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeAnswer {
    /// The model served (or named a real quota): model and project are back.
    Serves,
    /// The model is off, but the project answered: the project is back.
    ProjectServes,
    /// Nothing learned (a fault, a failure, a dead key): another re-probe may go.
    Nothing,
}

/// How a key may take a request: its breaker's admission, and whether the request is the
/// re-probe of an expired switch-off (the scope's, the project's).
#[derive(Debug, Clone, Copy)]
struct Pass {
    admission: Admission,
    scope_probe: bool,
    project_probe: bool,
}

/// Whether key `k` can take the demand now: healthy, breaker admits, project and scope not off
/// (or due a re-probe), scope has room. Refreshes the scope's windows as a side effect.
fn eligible(
    retired: bool,
    h: &KeyHealth,
    project: &ProjectGate,
    scope: &mut Scope,
    demand: Demand,
    now: i64,
) -> Option<Pass> {
    if retired || h.disabled.is_some() {
        return None;
    }
    let project_gate = project.gate(now);
    if project_gate == Gate::Shut {
        return None;
    }
    let adm = h.breaker.check(now);
    if let Admission::NotUntil(_) = adm {
        return None;
    }
    scope.refresh(now);
    scope.fits(demand, now).then(|| Pass {
        admission: adm,
        scope_probe: scope.gate(now) == Gate::Probe,
        project_probe: project_gate == Gate::Probe,
    })
}

/// The project index a pinned demand is limited to (a key the ring does not hold pins to no
/// project at all, so nothing is admitted).
fn pinned_project(key_project: &[u32], demand: Demand) -> Option<u32> {
    demand
        .project_of
        .map(|k| key_project.get(k.index()).copied().unwrap_or(u32::MAX))
}

/// `i % n` for `i < 2n`.
#[inline]
fn wrap(i: usize, n: usize) -> usize {
    if i >= n { i - n } else { i }
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

fn ms_scopes_index(model_scopes: &[u32], key_project: &[u32], k: usize) -> usize {
    model_scopes[key_project[k] as usize] as usize
}

fn demand_too_large(model: &str, d: Demand, l: &ModelLimits) -> AcquireError {
    let r = u64::from(d.requests);
    let (what, demand, limit) = if let Some(rpm) = l.rpm.filter(|x| r > *x) {
        ("requests per minute", r, rpm)
    } else if let Some(rpd) = l.rpd.filter(|x| r > *x) {
        ("requests per day", r, rpd)
    } else if let Some(tpd) = l.tpd.filter(|x| d.tokens > *x) {
        ("input tokens per day", d.tokens, tpd)
    } else {
        (
            "input tokens per minute",
            d.tokens,
            l.tpm.unwrap_or(u64::MAX),
        )
    };
    AcquireError::DemandTooLarge {
        model: model.to_owned(),
        what,
        demand,
        limit,
    }
}

struct WaiterGuard<'a>(&'a AtomicUsize);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
