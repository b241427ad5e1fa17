//! A key's health, the switch-offs (a project's, a model's for a project) with their re-probe,
//! and a (project, model) scope: its limits (configured, learned, effective), rolling minute,
//! Pacific day and cooldowns, with the rules that read them.

use super::*;

#[derive(Debug, Clone, Default)]
pub(super) struct KeyHealth {
    pub(super) disabled: Option<Disabled>,
    pub(super) breaker: Breaker,
}

/// The one real request let through a switch-off that has expired: which key sent it, in which
/// window second (a lease is known by the two), and until when it holds the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProbeOut {
    pub(super) key: u32,
    pub(super) sec: i64,
    pub(super) deadline: i64,
}

impl ProbeOut {
    pub(super) fn is(&self, key: usize, sec: i64) -> bool {
        self.key as usize == key && self.sec == sec
    }
}

/// What a switch-off lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Not switched off.
    Open,
    /// Off, but its time is up and no re-probe is out: one request may go.
    Probe,
    /// Off.
    Shut,
}

/// A switch-off (a project's, or a model's for a project) and its re-probe.
pub(super) fn gate(off: bool, until: i64, probe: Option<ProbeOut>, now_ms: i64) -> Gate {
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
pub(super) struct ProjectGate {
    /// Switched off since (Unix ms); 0: on.
    pub(super) off_since: i64,
    /// A re-probe may go from then.
    pub(super) until: i64,
    pub(super) probe: Option<ProbeOut>,
}

impl ProjectGate {
    pub(super) fn is_off(&self) -> bool {
        self.off_since != 0
    }

    pub(super) fn gate(&self, now_ms: i64) -> Gate {
        gate(self.is_off(), self.until, self.probe, now_ms)
    }
}

/// `repr(C)`, in the order a pick reads it: the limits in force, the cooldowns, the day and the
/// window's totals first (three cache lines, with the alignment), the window's buckets and what
/// only a switch-off or a status reads after them. Hundreds of scopes of 1.9 KB do not stay in a
/// core's cache; a pick that read fields spread over the whole scope missed on each.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
pub(super) struct Scope {
    /// `configured.min(learned)`, kept by `set_learned` (so it is off when either is).
    pub(super) effective: ModelLimits,
    pub(super) cooldown_until: i64,
    pub(super) exhausted_until: i64,
    /// When `learned` expires (0: nothing learned).
    pub(super) learned_until: i64,
    pub(super) day: DayCounter,
    pub(super) window: RollingWindow,
    /// The re-probe out through a learned switch-off.
    pub(super) probe: Option<ProbeOut>,
    pub(super) configured: ModelLimits,
    pub(super) learned: ModelLimits,
    pub(super) project: u32,
    pub(super) source: LimitSource,
    /// The project's tier, which chose `configured` and under which `learned` was learned.
    pub(super) tier: Tier,
}

impl Scope {
    /// Moves the windows and the day to `now`, and forgets learned limits whose time is up (a
    /// learned switch-off stays until its re-probe answers).
    #[inline]
    pub(super) fn refresh(&mut self, now_ms: i64) {
        self.window.advance(sec_of(now_ms));
        self.day.roll(now_ms);
        if self.learned_until != 0 && now_ms >= self.learned_until && !self.learned.is_off() {
            self.forget_learned();
        }
    }

    pub(super) fn set_learned(&mut self, learned: ModelLimits) {
        self.learned = learned;
        self.effective = self.configured.min(learned);
    }

    pub(super) fn forget_learned(&mut self) {
        self.set_learned(ModelLimits::UNLIMITED);
        self.learned_until = 0;
        self.probe = None;
    }

    /// Whether the server switched this model off for the project (as opposed to the
    /// configuration, which knows no re-probe).
    pub(super) fn learned_off(&self) -> bool {
        self.learned.is_off() && !self.configured.is_off()
    }

    #[inline]
    pub(super) fn gate(&self, now_ms: i64) -> Gate {
        // Neither the configuration nor the server switched it off (the pick's case): the
        // effective limits say so without reading the other two.
        if !self.effective.is_off() {
            return Gate::Open;
        }
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
    #[inline]
    pub(super) fn limits_for(&self, g: Gate) -> &ModelLimits {
        match g {
            Gate::Probe => &self.configured,
            _ => &self.effective,
        }
    }

    /// Whether the demand fits now (after `refresh`).
    pub(super) fn fits(&self, d: Demand, now_ms: i64) -> bool {
        self.fits_under(self.gate(now_ms), d, now_ms)
    }

    /// [`Scope::fits`] with the scope's gate now already read.
    #[inline]
    pub(super) fn fits_under(&self, g: Gate, d: Demand, now_ms: i64) -> bool {
        let l = self.limits_for(g);
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
    pub(super) fn headroom(&self) -> f64 {
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
    pub(super) fn free_at(&self, d: Demand, now_ms: i64) -> Option<(i64, Exhaustion)> {
        let l = self.limits_for(self.gate(now_ms));
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

    pub(super) fn state(&self, now_ms: i64) -> ScopeState {
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
    pub(super) fn status(
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
    pub(super) fn origins(&self, project_off: bool) -> LimitOrigins {
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
    pub(super) fn apply_snapshot(&mut self, ss: &ScopeSnapshot, now: i64, relearn_at: i64) {
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

    pub(super) fn fresh(
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

    /// Takes new configured limits (a reload): they hold at once; what the server taught
    /// stays unless the tier changed, under which none of it describes the project any more.
    pub(super) fn reconfigure(
        &mut self,
        (configured, source): (ModelLimits, LimitSource),
        tier: Tier,
    ) {
        if tier != self.tier {
            self.forget_what_the_server_said();
            self.tier = tier;
        }
        self.configured = configured;
        self.source = source;
        self.set_learned(self.learned);
    }

    /// Drops what the server taught (limits, switch-off, per-day exhaustion, cooldown) and
    /// keeps what was sent.
    pub(super) fn forget_what_the_server_said(&mut self) {
        self.cooldown_until = 0;
        self.exhausted_until = 0;
        self.forget_learned();
    }

    pub(super) fn clear(&mut self, now_ms: i64) {
        self.window = RollingWindow::new();
        self.window.advance(sec_of(now_ms));
        self.day = DayCounter::new(now_ms);
        self.cooldown_until = 0;
        self.exhausted_until = 0;
        self.forget_learned();
    }
}
