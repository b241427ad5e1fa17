//! Settling a lease: what a served answer, a 429, a switch-off or a failure does to the key's
//! health, the scope's counters and limits, and the re-probes out.

use super::*;

impl InMemoryLedger {
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
