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
use crate::key::{KeyId, KeyRing};
use crate::lease::{Demand, Lease};
use crate::ledger::{LedgerConfig, QuotaLedger, ResetTarget};
use crate::limits::{LimitSource, ModelLimits, Tier, normalize_model};
use crate::outcome::{Outcome, ThrottleKind};
use crate::policy::Policy;
use crate::snapshot::{
    Disabled, KeySnapshot, LimitOrigin, LimitOrigins, NoticeMark, PoolStatus, ProjectSnapshot,
    SCHEMA_VERSION, ScopeSnapshot, ScopeState, ScopeStatus, Snapshot, UsageDay,
};
use crate::window::{DayCounter, RollingWindow, sec_of};

#[derive(Debug, Clone, Default)]
struct KeyHealth {
    disabled: Option<Disabled>,
    breaker: Breaker,
}

/// The one real request let through a switch-off that has expired: which key sent it, in which
/// window second (a lease is known by the two), and until when it holds the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProbeOut {
    key: u32,
    sec: i64,
    deadline: i64,
}

impl ProbeOut {
    fn is(&self, key: usize, sec: i64) -> bool {
        self.key as usize == key && self.sec == sec
    }
}

/// What a switch-off lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Not switched off.
    Open,
    /// Off, but its time is up and no re-probe is out: one request may go.
    Probe,
    /// Off.
    Shut,
}

/// A switch-off (a project's, or a model's for a project) and its re-probe.
fn gate(off: bool, until: i64, probe: Option<ProbeOut>, now_ms: i64) -> Gate {
    if !off {
        Gate::Open
    } else if until != 0 && now_ms >= until && probe.is_none_or(|p| p.deadline <= now_ms) {
        Gate::Probe
    } else {
        Gate::Shut
    }
}

/// A whole project switched off (402, a zero whole-API quota).
#[derive(Debug, Clone, Copy, Default)]
struct ProjectGate {
    /// Switched off since (Unix ms); 0: on.
    off_since: i64,
    /// A re-probe may go from then.
    until: i64,
    probe: Option<ProbeOut>,
}

impl ProjectGate {
    fn is_off(&self) -> bool {
        self.off_since != 0
    }

    fn gate(&self, now_ms: i64) -> Gate {
        gate(self.is_off(), self.until, self.probe, now_ms)
    }
}

#[derive(Debug, Clone)]
struct Scope {
    project: u32,
    configured: ModelLimits,
    source: LimitSource,
    /// The project's tier, which chose `configured` and under which `learned` was learned.
    tier: Tier,
    learned: ModelLimits,
    /// When `learned` expires (0: nothing learned).
    learned_until: i64,
    /// The re-probe out through a learned switch-off.
    probe: Option<ProbeOut>,
    effective: ModelLimits,
    window: RollingWindow,
    day: DayCounter,
    cooldown_until: i64,
    exhausted_until: i64,
}

impl Scope {
    /// Moves the windows and the day to `now`, and forgets learned limits whose time is up (a
    /// learned switch-off stays until its re-probe answers).
    fn refresh(&mut self, now_ms: i64) {
        self.window.advance(sec_of(now_ms));
        self.day.roll(now_ms);
        if self.learned_until != 0 && now_ms >= self.learned_until && !self.learned.is_off() {
            self.forget_learned();
        }
    }

    fn set_learned(&mut self, learned: ModelLimits) {
        self.learned = learned;
        self.effective = self.configured.min(learned);
    }

    fn forget_learned(&mut self) {
        self.set_learned(ModelLimits::UNLIMITED);
        self.learned_until = 0;
        self.probe = None;
    }

    /// Whether the server switched this model off for the project (as opposed to the
    /// configuration, which knows no re-probe).
    fn learned_off(&self) -> bool {
        self.learned.is_off() && !self.configured.is_off()
    }

    fn gate(&self, now_ms: i64) -> Gate {
        if self.configured.is_off() {
            Gate::Shut
        } else {
            gate(
                self.learned.is_off(),
                self.learned_until,
                self.probe,
                now_ms,
            )
        }
    }

    /// The limits a request is measured against: the effective ones, or the configured ones
    /// for a re-probe through an expired switch-off.
    fn limits_for(&self, g: Gate) -> ModelLimits {
        match g {
            Gate::Probe => self.configured,
            _ => self.effective,
        }
    }

    /// Whether the demand fits now (after `refresh`).
    fn fits(&self, d: Demand, now_ms: i64) -> bool {
        let g = self.gate(now_ms);
        let l = &self.limits_for(g);
        g != Gate::Shut
            && !l.is_off()
            && self.cooldown_until <= now_ms
            && self.exhausted_until <= now_ms
            && l.rpd
                .is_none_or(|rpd| self.day.count() + u64::from(d.requests) <= rpd)
            && l.tpd
                .is_none_or(|tpd| self.day.tokens().saturating_add(d.tokens) <= tpd)
            && self
                .window
                .fits(u64::from(d.requests), d.tokens, l.rpm, l.tpm)
    }

    /// Fraction of the tightest limit still free, in [0, 1].
    fn headroom(&self) -> f64 {
        fn free(used: u64, limit: Option<u64>) -> f64 {
            match limit {
                Some(l) if l > 0 => (l.saturating_sub(used)) as f64 / l as f64,
                Some(_) => 0.0,
                None => 1.0,
            }
        }
        let l = &self.effective;
        free(self.window.requests(), l.rpm)
            .min(free(self.window.tokens(), l.tpm))
            .min(free(self.day.count(), l.rpd))
            .min(free(self.day.tokens(), l.tpd))
    }

    /// The earliest moment the demand could fit, and what binds until then; `None`: never.
    fn free_at(&self, d: Demand, now_ms: i64) -> Option<(i64, Exhaustion)> {
        let l = &self.limits_for(self.gate(now_ms));
        if l.is_off() {
            return None;
        }
        let mut at = now_ms;
        let mut why = Exhaustion::RequestsPerMinute;
        let mut later = |t: i64, w: Exhaustion| {
            if t > at {
                at = t;
                why = w;
            }
        };
        later(self.cooldown_until, Exhaustion::CoolingDown);
        if self.exhausted_until > now_ms {
            later(self.exhausted_until, Exhaustion::RequestsPerDay);
        }
        if let Some(rpd) = l.rpd {
            let r = u64::from(d.requests);
            if r > rpd {
                return None;
            }
            if self.day.count() + r > rpd {
                later(self.day.day().end_ms, Exhaustion::RequestsPerDay);
            }
        }
        if let Some(tpd) = l.tpd {
            if d.tokens > tpd {
                return None;
            }
            if self.day.tokens().saturating_add(d.tokens) > tpd {
                later(self.day.day().end_ms, Exhaustion::TokensPerDay);
            }
        }
        let r = u64::from(d.requests);
        let by_requests = self.window.free_at(now_ms, r, 0, l.rpm, None)?;
        later(by_requests, Exhaustion::RequestsPerMinute);
        let by_tokens = self.window.free_at(now_ms, 0, d.tokens, None, l.tpm)?;
        later(by_tokens, Exhaustion::TokensPerMinute);
        let both = self.window.free_at(now_ms, r, d.tokens, l.rpm, l.tpm)?;
        later(both, Exhaustion::RequestsPerMinute);
        Some((at, why))
    }

    fn state(&self, now_ms: i64) -> ScopeState {
        if self.effective.is_off() {
            ScopeState::Off
        } else if self.exhausted_until > now_ms
            || self
                .effective
                .rpd
                .is_some_and(|rpd| self.day.count() >= rpd)
            || self
                .effective
                .tpd
                .is_some_and(|tpd| self.day.tokens() >= tpd)
        {
            ScopeState::Exhausted
        } else if self.cooldown_until > now_ms || !self.fits(Demand::tokens(0), now_ms) {
            ScopeState::Cooling
        } else {
            ScopeState::Ready
        }
    }

    /// The status view of this scope (after `refresh`); `project_off`: from when the project's
    /// re-probe may go, if the whole project is off.
    fn status(
        &self,
        project: String,
        model: String,
        keys: Vec<String>,
        now: i64,
        project_off: Option<i64>,
    ) -> ScopeStatus {
        let state = if project_off.is_some() {
            ScopeState::Off
        } else {
            self.state(now)
        };
        let off_until_ms = match project_off {
            Some(t) => Some(t),
            None if state == ScopeState::Off && self.learned_off() && self.learned_until != 0 => {
                Some(self.learned_until)
            }
            None => None,
        };
        ScopeStatus {
            project,
            model,
            keys,
            limits: self.effective,
            source: self.source,
            tier: self.tier,
            table_date: (self.source == LimitSource::Builtin)
                .then(|| crate::limits::BUILTIN_TABLE_DATE.to_owned()),
            origin: self.origins(project_off.is_some()),
            learned: self.learned,
            rpm_used: self.window.requests(),
            tpm_used: self.window.tokens(),
            rpd_used: self.day.count(),
            rpd_served: self.day.served(),
            rpd_refused: self.day.refused(),
            tpd_used: self.day.tokens(),
            state,
            cooling_until_ms: (state == ScopeState::Cooling).then(|| {
                self.free_at(Demand::tokens(0), now)
                    .map_or(self.cooldown_until, |(t, _)| t)
            }),
            exhausted_until_ms: (state == ScopeState::Exhausted)
                .then(|| self.exhausted_until.max(self.day.day().end_ms)),
            next_reset_ms: self.day.day().end_ms,
            off_until_ms,
            project_off: project_off.is_some(),
            learned_until_ms: (self.learned != ModelLimits::UNLIMITED && self.learned_until != 0)
                .then_some(self.learned_until),
        }
    }

    /// Where each limit in force comes from.
    fn origins(&self, project_off: bool) -> LimitOrigins {
        let configured = match self.source {
            LimitSource::Builtin => LimitOrigin::Builtin,
            LimitSource::Configured => LimitOrigin::Configured,
            LimitSource::Default | LimitSource::Family => LimitOrigin::Family,
        };
        let one = |learned: Option<u64>, configured_v: Option<u64>| {
            if project_off || (self.learned_off() && learned == Some(0)) {
                LimitOrigin::ServerOff
            } else if learned.is_some_and(|l| configured_v.is_none_or(|c| l < c)) {
                LimitOrigin::Learned
            } else {
                configured
            }
        };
        LimitOrigins {
            rpm: one(self.learned.rpm, self.configured.rpm),
            tpm: one(self.learned.tpm, self.configured.tpm),
            rpd: one(self.learned.rpd, self.configured.rpd),
            tpd: one(self.learned.tpd, self.configured.tpd),
        }
    }

    /// Rebuilds a scope's counters from a snapshot, as of `now`; learned limits the snapshot
    /// gives no expiry (older files) expire at `relearn_at`.
    fn apply_snapshot(&mut self, ss: &ScopeSnapshot, now: i64, relearn_at: i64) {
        self.window = RollingWindow::restore(sec_of(now), ss.window.iter().copied());
        self.day = DayCounter::restore(now, ss.day_start_ms, ss.day_count, ss.day_tokens)
            .with_answers(ss.day_start_ms, ss.day_served, ss.day_refused);
        self.cooldown_until = ss.cooldown_until_ms;
        self.exhausted_until = if ss.exhausted_until_ms > now {
            ss.exhausted_until_ms
        } else {
            0
        };
        self.set_learned(ss.learned);
        self.probe = None;
        self.learned_until = if ss.learned == ModelLimits::UNLIMITED {
            0
        } else if ss.learned_until_ms == 0 {
            relearn_at
        } else {
            ss.learned_until_ms
        };
        self.refresh(now);
    }

    fn fresh(
        project: u32,
        (configured, source): (ModelLimits, LimitSource),
        tier: Tier,
        now_ms: i64,
    ) -> Self {
        let mut window = RollingWindow::new();
        window.advance(sec_of(now_ms));
        Self {
            project,
            configured,
            source,
            tier,
            learned: ModelLimits::UNLIMITED,
            learned_until: 0,
            probe: None,
            effective: configured,
            window,
            day: DayCounter::new(now_ms),
            cooldown_until: 0,
            exhausted_until: 0,
        }
    }

    /// Drops what the server taught (limits, switch-off, per-day exhaustion, cooldown) and
    /// keeps what was sent.
    fn forget_what_the_server_said(&mut self) {
        self.cooldown_until = 0;
        self.exhausted_until = 0;
        self.forget_learned();
    }

    fn clear(&mut self, now_ms: i64) {
        self.window = RollingWindow::new();
        self.window.advance(sec_of(now_ms));
        self.day = DayCounter::new(now_ms);
        self.cooldown_until = 0;
        self.exhausted_until = 0;
        self.forget_learned();
    }
}

/// What one key sent to one model on the current day (the hot path's part of usage history).
#[derive(Debug, Clone, Copy, Default)]
struct UsageCell {
    day_start_ms: i64,
    requests: u64,
    served: u64,
    refused: u64,
    tokens: u64,
}

/// A finished day of one key's use of one model.
#[derive(Debug, Clone, Copy)]
struct PastUsage {
    day_start_ms: i64,
    key: u32,
    model: u32,
    requests: u64,
    served: u64,
    refused: u64,
    tokens: u64,
}

/// Drops finished days older than the history window (those starting before `cutoff_ms`).
fn prune_past(past: &mut Vec<PastUsage>, cutoff_ms: i64) {
    past.retain(|p| p.day_start_ms >= cutoff_ms);
}

/// Start of the oldest day the usage history keeps, for the day containing `now`.
fn history_cutoff(now_ms: i64) -> i64 {
    crate::pacific::QuotaDay::containing(now_ms)
        .and_before(crate::snapshot::HISTORY_DAYS)
        .last()
        .map_or(now_ms, |d| d.start_ms)
}

#[derive(Debug, Clone)]
struct ModelState {
    name: String,
    /// This day's usage, per key.
    today: Vec<UsageCell>,
    /// Scope index for each project index.
    scopes: Vec<u32>,
    cursor: u32,
    /// Smooth weighted round-robin's current weights, per key.
    wrr: Vec<i64>,
}

#[derive(Debug)]
struct Inner {
    health: Vec<KeyHealth>,
    key_project: Vec<u32>,
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
    keys: Arc<KeyRing>,
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
        let inner = Inner {
            project_gates: vec![ProjectGate::default(); projects.len()],
            health: vec![KeyHealth::default(); keys.len()],
            key_project,
            projects,
            models: Vec::new(),
            scopes: Vec::new(),
            past: Vec::new(),
            notices: Vec::new(),
            epoch: 0,
            version: 0,
        };
        let ledger = Self {
            keys,
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
        for (p, project) in inner.projects.iter().enumerate() {
            let (configured, source) = self.cfg.limits.resolve(project, model);
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
                self.cfg.limits.tier(project),
                now_ms,
            ));
            scopes.push((inner.scopes.len() - 1) as u32);
        }
        inner.models.push(ModelState {
            name: model.to_owned(),
            today: vec![UsageCell::default(); self.keys.len()],
            scopes,
            cursor: 0,
            wrr: vec![0; self.keys.len()],
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
        let n = self.keys.len();
        let Inner {
            health,
            key_project,
            models,
            scopes,
            project_gates,
            past,
            epoch,
            version,
            ..
        } = inner;
        let ms = &mut models[m];
        let start = ms.cursor as usize % n;

        let scope_of = |k: usize| ms_scopes_index(&ms.scopes, key_project, k);
        let mut pick: Option<(usize, Pass)> = None;
        let gates = &*project_gates;
        let project_of = |k: usize| &gates[key_project[k] as usize];
        match self.cfg.policy {
            Policy::RoundRobin => {
                for i in 0..n {
                    let k = (start + i) % n;
                    if let Some(pass) = eligible(
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
                let mut best = -1.0f64;
                for i in 0..n {
                    let k = (start + i) % n;
                    if let Some(pass) = eligible(
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
                let mut total = 0i64;
                for k in 0..n {
                    if let Some(pass) = eligible(
                        &health[k],
                        project_of(k),
                        &mut scopes[scope_of(k)],
                        demand,
                        now,
                    ) {
                        let w = i64::from(self.keys_weight(k));
                        ms.wrr[k] += w;
                        total += w;
                        if pick.is_none_or(|(b, _)| ms.wrr[k] > ms.wrr[b]) {
                            pick = Some((k, pass));
                        }
                    }
                }
                if let Some((b, _)) = pick {
                    ms.wrr[b] -= total;
                }
            }
        }

        let Some((k, pass)) = pick else {
            return Err(self.blocked(inner, m, demand, now));
        };
        let adm = pass.admission;
        ms.cursor = ((k + 1) % n) as u32;
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
        cell.requests += u64::from(demand.requests);
        cell.tokens = cell.tokens.saturating_add(demand.tokens);
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

    fn keys_weight(&self, k: usize) -> u32 {
        self.keys.get(KeyId(k as u32)).map_or(1, |e| e.weight)
    }

    /// Works out why nothing fit and when it will: the cold path, allowed to allocate.
    fn blocked(&self, inner: &mut Inner, m: usize, demand: Demand, now: i64) -> Blocked {
        let model = inner.models[m].name.clone();
        let mut disabled = Vec::new();
        let mut off = 0usize;
        let mut off_detail: Vec<(String, String)> = Vec::new();
        let mut too_large: Option<AcquireError> = None;
        let mut best: Option<(i64, Exhaustion)> = None;
        for k in 0..self.keys.len() {
            let h = &inner.health[k];
            if let Some(d) = h.disabled {
                let label = self
                    .keys
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
        let n = self.keys.len();
        if disabled.len() == n {
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
                if let Some(cell) = inner
                    .models
                    .get_mut(lease.model_slot() as usize)
                    .and_then(|m| m.today.get_mut(k))
                    && cell.day_start_ms <= sent_ms
                {
                    match how {
                        crate::outcome::Answered::Served => cell.served += n,
                        _ => cell.refused += n,
                    }
                }
            }
            match outcome {
                Outcome::Success { input_tokens } => {
                    if let (Some(real), Some(si), true) = (input_tokens, scope_idx, current) {
                        let delta = real as i64 - lease.reserved_tokens() as i64;
                        if delta != 0 {
                            let s = &mut inner.scopes[si as usize];
                            s.window.adjust_tokens(lease.second(), delta);
                            s.day.add_tokens(lease.second() * 1000, delta);
                            notify |= delta < 0;
                            // The usage history counts real tokens too, if the day is current.
                            if let Some(cell) = inner
                                .models
                                .get_mut(lease.model_slot() as usize)
                                .and_then(|m| m.today.get_mut(k))
                                && cell.day_start_ms <= lease.second() * 1000
                            {
                                cell.tokens = cell.tokens.saturating_add_signed(delta);
                            }
                        }
                    }
                    if inner.health[k].breaker.on_success() {
                        tracing::info!(key = %label(), "key recovered: circuit breaker closed");
                        notify = true;
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
        drop(inner);
        self.changed.notify_waiters();
        Ok(())
    }

    /// The status view now.
    pub fn status_now(&self) -> PoolStatus {
        PoolStatus::from_snapshot(&self.snapshot_at(false), &self.cfg.limits, &self.keys)
    }

    /// The whole state now.
    pub fn snapshot_now(&self) -> Snapshot {
        self.snapshot_at(true)
    }

    /// The state now; `with_history` adds the usage history (status does not show it).
    fn snapshot_at(&self, with_history: bool) -> Snapshot {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let keys = self
            .keys
            .iter()
            .map(|(id, e)| {
                let h = &inner.health[id.index()];
                KeySnapshot {
                    fingerprint: e.fingerprint(),
                    label: e.label.clone(),
                    project: e.project.clone(),
                    disabled: h.disabled,
                    breaker: h.breaker,
                }
            })
            .collect();
        let mut scopes = Vec::new();
        for m in &inner.models {
            for (p, &si) in m.scopes.iter().enumerate() {
                let s = &mut inner.scopes[si as usize];
                s.refresh(now);
                scopes.push(ScopeSnapshot {
                    project: inner.projects[p].clone(),
                    model: m.name.clone(),
                    window: s.window.occupied().collect(),
                    day_start_ms: s.day.day().start_ms,
                    day_count: s.day.count(),
                    day_tokens: s.day.tokens(),
                    day_served: s.day.served(),
                    day_refused: s.day.refused(),
                    cooldown_until_ms: s.cooldown_until,
                    exhausted_until_ms: s.exhausted_until,
                    learned: s.learned,
                    learned_until_ms: s.learned_until,
                    tier: Some(s.tier),
                });
            }
        }
        let cutoff = history_cutoff(now);
        let day_of = |start: i64| crate::pacific::QuotaDay::containing(start).date;
        let mut usage: Vec<UsageDay> = Vec::new();
        let mut add = |key: usize, model: &str, c: UsageCell| {
            if !with_history || c.day_start_ms < cutoff || (c.requests == 0 && c.tokens == 0) {
                return;
            }
            if let Some(e) = self.keys.get(KeyId(key as u32)) {
                usage.push(UsageDay {
                    date: day_of(c.day_start_ms),
                    fingerprint: e.fingerprint(),
                    model: model.to_owned(),
                    requests: c.requests,
                    served: c.served,
                    refused: c.refused,
                    input_tokens: c.tokens,
                });
            }
        };
        for p in &inner.past {
            let model = &inner.models[p.model as usize].name;
            let cell = UsageCell {
                day_start_ms: p.day_start_ms,
                requests: p.requests,
                served: p.served,
                refused: p.refused,
                tokens: p.tokens,
            };
            add(p.key as usize, model, cell);
        }
        for m in &inner.models {
            for (k, c) in m.today.iter().enumerate() {
                add(k, &m.name, *c);
            }
        }
        usage.sort_by(|a, b| {
            (a.date, &a.model, a.fingerprint.to_string()).cmp(&(
                b.date,
                &b.model,
                b.fingerprint.to_string(),
            ))
        });
        let notices = inner
            .notices
            .iter()
            .filter(|n| n.until_ms > now)
            .cloned()
            .collect();
        let projects = inner
            .projects
            .iter()
            .zip(&inner.project_gates)
            .filter(|(_, g)| g.is_off())
            .map(|(p, g)| ProjectSnapshot {
                project: p.clone(),
                off_since_ms: g.off_since,
                reprobe_at_ms: g.until,
            })
            .collect();
        Snapshot {
            schema: SCHEMA_VERSION,
            taken_at_ms: now,
            keys,
            scopes,
            usage,
            notices,
            projects,
        }
    }

    /// Records that a warning was sent; `false` if it already was (until `until_ms`).
    pub fn claim_notice_now(&self, id: &str, until_ms: i64) -> bool {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        inner.notices.retain(|n| n.until_ms > now);
        if inner.notices.iter().any(|n| n.id == id) {
            return false;
        }
        inner.notices.push(NoticeMark {
            id: id.to_owned(),
            until_ms,
        });
        inner.version += 1;
        true
    }

    /// Replaces the state with a snapshot's. Keys are matched by fingerprint (labels may have
    /// changed), scopes by (project, model); what the snapshot does not know starts fresh, and
    /// what this pool no longer has is dropped.
    pub fn restore_now(&self, snap: &Snapshot) -> Result<(), SnapshotError> {
        if snap.schema > SCHEMA_VERSION {
            return Err(SnapshotError::NewerSchema {
                found: snap.schema,
                supported: SCHEMA_VERSION,
            });
        }
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        for (id, e) in self.keys.iter() {
            let h = snap
                .keys
                .iter()
                .find(|k| k.fingerprint == e.fingerprint())
                .map(|k| KeyHealth {
                    disabled: k.disabled,
                    breaker: k.breaker,
                })
                .unwrap_or_default();
            inner.health[id.index()] = h;
        }
        for ss in &snap.scopes {
            let Some(p) = inner.projects.iter().position(|x| *x == ss.project) else {
                continue;
            };
            let m = self.model_index(&mut inner, &ss.model, now);
            let si = inner.models[m].scopes[p] as usize;
            let tier = self.cfg.limits.tier(&ss.project);
            inner.scopes[si].apply_snapshot(ss, now, self.cfg.relearn_at(now));
            if ss.tier.is_some_and(|t| t != tier) {
                // Learned under another tier: none of it describes this one.
                inner.scopes[si].forget_what_the_server_said();
            }
        }
        inner.project_gates.fill(ProjectGate::default());
        for ps in &snap.projects {
            if let Some(p) = inner.projects.iter().position(|x| *x == ps.project) {
                inner.project_gates[p] = ProjectGate {
                    off_since: ps.off_since_ms.max(1),
                    until: ps.reprobe_at_ms,
                    probe: None,
                };
            }
        }
        let today = crate::pacific::QuotaDay::containing(now).start_ms;
        let cutoff = history_cutoff(now);
        inner.past.clear();
        for m in &mut inner.models {
            m.today.fill(UsageCell::default());
        }
        for u in &snap.usage {
            let Some((id, _)) = self
                .keys
                .iter()
                .find(|(_, e)| e.fingerprint() == u.fingerprint)
            else {
                continue;
            };
            let day_start = crate::pacific::QuotaDay::of_date(u.date).start_ms;
            if day_start < cutoff {
                continue;
            }
            let m = self.model_index(&mut inner, &u.model, now);
            if day_start == today {
                let cell = &mut inner.models[m].today[id.index()];
                cell.day_start_ms = today;
                cell.requests += u.requests;
                cell.served += u.served;
                cell.refused += u.refused;
                cell.tokens += u.input_tokens;
            } else {
                inner.past.push(PastUsage {
                    day_start_ms: day_start,
                    key: id.0,
                    model: m as u32,
                    requests: u.requests,
                    served: u.served,
                    refused: u.refused,
                    tokens: u.input_tokens,
                });
            }
        }
        inner.notices = snap
            .notices
            .iter()
            .filter(|n| n.until_ms > now)
            .cloned()
            .collect();
        inner.epoch += 1;
        inner.version += 1;
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
    h: &KeyHealth,
    project: &ProjectGate,
    scope: &mut Scope,
    demand: Demand,
    now: i64,
) -> Option<Pass> {
    if h.disabled.is_some() {
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

fn ms_scopes_index(model_scopes: &[u32], key_project: &[u32], k: usize) -> usize {
    model_scopes[key_project[k] as usize] as usize
}

fn effective_breaker(b: &Breaker, now: i64) -> BreakerState {
    match b.state {
        BreakerState::Open { until_ms } if now >= until_ms => BreakerState::HalfOpen {
            probe_deadline_ms: None,
        },
        s => s,
    }
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
        self.keys.clone()
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
                    .iter()
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
