//! The pick: `try_acquire` under the lock (round-robin, least-loaded through its tree, weighted
//! through its schedule), why nothing fit when nothing did, and the waiting acquire.

use super::*;

/// Least-loaded: keys the tree offers that turn out not to fit before the pick scans them all.
const LEAST_LOADED_MISSES: usize = 8;

/// Why `try_acquire` found nothing, with what waiting would need.
#[derive(Debug)]
struct Blocked {
    error: AcquireError,
    retry_at: Option<i64>,
}

impl InMemoryLedger {
    /// Acquires without waiting. Allocation-free unless the model is new or the answer is an error.
    pub fn try_acquire(&self, model: &str, demand: Demand) -> Result<Lease, AcquireError> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        self.try_acquire_locked(&mut inner, model, demand, now)
            .map_err(|b| b.error)
    }

    /// Inlined in `try_acquire`, whose hot path then returns the lease without building the
    /// larger `Blocked` result.
    #[inline(always)]
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
        // Each policy's pick is its own function, so round-robin's loop is not compiled inside
        // the other two (one 13 KB function with a 1 KB frame spilled the round-robin loop's
        // registers; seen in the profile of the pick).
        let pick = match self.cfg.policy {
            Policy::RoundRobin => round_robin(inner, m, demand, now),
            Policy::LeastLoaded => least_loaded(inner, m, demand, now),
            Policy::Weighted => weighted(inner, m, demand, now),
        };
        match pick {
            Some((k, pass)) => Ok(self.admit(inner, m, k, pass, demand, now)),
            None => Err(self.blocked(inner, m, demand, now)),
        }
    }

    /// Admits the demand on key `k` for model `m`: the breaker's and the switch-offs' probes,
    /// the scope's window and day, the key's usage today, the cursor.
    #[inline(always)]
    fn admit(
        &self,
        inner: &mut Inner,
        m: usize,
        k: usize,
        pass: Pass,
        demand: Demand,
        now: i64,
    ) -> Lease {
        let n = inner.health.len();
        let Inner {
            health,
            key_project,
            models,
            scopes,
            project_gates,
            past,
            ..
        } = inner;
        let ms = &mut models[m];
        let adm = if pass.breaker_probe {
            Admission::Probe
        } else {
            Admission::Yes
        };
        ms.cursor = wrap(k + 1, n) as u32;
        health[k].breaker.admitted(adm, now, &self.cfg.breaker);
        let p = key_project[k] as usize;
        let s = &mut scopes[ms.scopes[p] as usize];
        let sec = s.window.record(u64::from(demand.requests), demand.tokens);
        if pass.scope_probe || pass.project_probe {
            let out = ProbeOut {
                key: k as u32,
                sec,
                deadline: now.saturating_add(self.cfg.breaker.probe_timeout.as_millis() as i64),
            };
            if pass.scope_probe {
                s.probe = Some(out);
            }
            if pass.project_probe {
                project_gates[p].probe = Some(out);
            }
        }
        s.day.add(u64::from(demand.requests));
        s.day.add_tokens(now, demand.tokens as i64);
        let day_start = s.day.day().start_ms;
        let cell = &mut ms.today[k];
        if cell.day_start_ms != day_start {
            new_usage_day(past, cell, k, m, day_start, now);
        }
        cell.requests = cell.requests.saturating_add(u64::from(demand.requests));
        cell.tokens = cell.tokens.saturating_add(demand.tokens);
        if self.cfg.policy == Policy::LeastLoaded {
            least_loaded_picked(inner, m, k);
        }
        inner.version += 1;
        Lease::new(
            KeyId(k as u32),
            m as u32,
            sec,
            demand,
            adm == Admission::Probe,
            inner.epoch,
        )
    }

    /// Works out why nothing fit and when it will: the cold path, allowed to allocate.
    #[cold]
    #[inline(never)]
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
}

/// Round-robin: the first key from the model's cursor on that can take the demand.
#[inline(always)]
fn round_robin(inner: &mut Inner, m: usize, demand: Demand, now: i64) -> Option<(usize, Pass)> {
    let n = inner.health.len();
    let Inner {
        health,
        retired,
        key_project,
        models,
        scopes,
        project_gates,
        ..
    } = inner;
    let ms = &models[m];
    // The cursor is always below `n`; no division on the hot path (the `%` by a runtime `n`
    // showed in the profile of the pick).
    let start = (ms.cursor as usize).min(n.saturating_sub(1));
    // A request pinned to a resource's project: only that project's keys are candidates.
    let pinned = pinned_project(key_project, demand);
    for i in 0..n {
        let k = wrap(start + i, n);
        let p = key_project[k];
        if pinned.is_some_and(|q| p != q) {
            continue;
        }
        if let Some(pass) = eligible(
            retired[k],
            &health[k],
            &project_gates[p as usize],
            &mut scopes[ms.scopes[p as usize] as usize],
            demand,
            now,
        ) {
            return Some((k, pass));
        }
    }
    None
}

/// Least-loaded: the key with the most headroom, through the model's tree; a full scan when the
/// tree offers nothing that fits (or the demand is pinned to a project).
#[inline(never)]
fn least_loaded(inner: &mut Inner, m: usize, demand: Demand, now: i64) -> Option<(usize, Pass)> {
    let n = inner.health.len();
    let Inner {
        health,
        retired,
        key_project,
        models,
        scopes,
        project_gates,
        shape,
        ..
    } = inner;
    let ms = &mut models[m];
    let start = (ms.cursor as usize).min(n.saturating_sub(1));
    let scope_of = |k: usize| ms_scopes_index(&ms.scopes, key_project, k);
    let gates = &*project_gates;
    let project_of = |k: usize| &gates[key_project[k] as usize];
    let pinned = pinned_project(key_project, demand);
    let outside = |k: usize| pinned.is_some_and(|p| key_project[k] != p);
    let mut pick: Option<(usize, Pass)> = None;
    // A demand pinned to one project (rare: a request naming a file) is decided by the scan
    // below, which sees only that project's keys.
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
            if eligible(retired[k], &health[k], project_of(k), s, smallest, now).is_some() {
                too_small[missed] = (k, ms.ll.score(k));
                missed += 1;
            }
            // Closed (a breaker, a cooldown, a switch-off): out until the next rebuild, and
            // the scan below still sees it.
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
    pick
}

/// After a least-loaded admission on key `k`: its headroom in the tree, and its project's other
/// keys' (they share the scope).
#[inline(never)]
fn least_loaded_picked(inner: &mut Inner, m: usize, k: usize) {
    let Inner {
        key_project,
        project_keys,
        models,
        scopes,
        ..
    } = inner;
    let ms = &mut models[m];
    let p = key_project[k] as usize;
    let h = scopes[ms.scopes[p] as usize].headroom();
    ms.ll.picked(k, h);
    for &j in project_keys[p].iter().filter(|j| **j as usize != k) {
        ms.ll.rescore(j as usize, h);
    }
}

/// Weighted: the next key of the smooth weighted round-robin cycle that can take the demand;
/// a scan when there is no cycle (or the demand is pinned to a project).
#[inline(never)]
fn weighted(inner: &mut Inner, m: usize, demand: Demand, now: i64) -> Option<(usize, Pass)> {
    let n = inner.health.len();
    let Inner {
        health,
        retired,
        weights,
        key_project,
        schedule,
        models,
        scopes,
        project_gates,
        ..
    } = inner;
    let ms = &mut models[m];
    let scope_of = |k: usize| ms_scopes_index(&ms.scopes, key_project, k);
    let gates = &*project_gates;
    let project_of = |k: usize| &gates[key_project[k] as usize];
    let pinned = pinned_project(key_project, demand);
    let outside = |k: usize| pinned.is_some_and(|p| key_project[k] != p);
    let mut pick: Option<(usize, Pass)> = None;
    // A pinned demand is decided by the scan below (its project's keys only).
    if let Some(schedule) = schedule.as_ref().filter(|_| pinned.is_none()) {
        let len = schedule.len();
        // The cursor is kept below `len` (a reload resets it): no division here.
        let mut c = ms.wcursor as usize;
        if c >= len {
            c %= len;
        }
        // Every key taking requests is in the cycle: `n` entries in a row that cannot take
        // the request make the scan below decide (O(keys) at worst).
        for _ in 0..n.min(len) {
            let k = schedule[c] as usize;
            c = if c + 1 == len { 0 } else { c + 1 };
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
    pick
}

/// A new day for key `k`'s use of model `m`: the finished one goes to the history (allocates at
/// most once a day).
#[cold]
fn new_usage_day(
    past: &mut Vec<PastUsage>,
    cell: &mut UsageCell,
    k: usize,
    m: usize,
    day_start: i64,
    now: i64,
) {
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

/// How a key may take a request: whether it goes as its breaker's probe, and whether it is the
/// re-probe of an expired switch-off (the scope's, the project's). Three flags rather than the
/// breaker's `Admission` (whose `NotUntil` never gets here): a pick carries it through its loop,
/// and the larger value cost the loop spills (seen in the profile of the pick).
#[derive(Debug, Clone, Copy)]
struct Pass {
    breaker_probe: bool,
    scope_probe: bool,
    project_probe: bool,
}

/// Whether key `k` can take the demand now: healthy, breaker admits, project and scope not off
/// (or due a re-probe), scope has room. Refreshes the scope's windows as a side effect.
#[inline(always)]
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
    let breaker_probe = match h.breaker.check(now) {
        Admission::Yes => false,
        Admission::Probe => true,
        Admission::NotUntil(_) => return None,
    };
    scope.refresh(now);
    let scope_gate = scope.gate(now);
    scope.fits_under(scope_gate, demand, now).then_some(Pass {
        breaker_probe,
        scope_probe: scope_gate == Gate::Probe,
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
