//! The in-memory ledger's state as a [`Snapshot`] and back: status, snapshot, restore, and the
//! warning marks that travel with them.

use super::*;

impl InMemoryLedger {
    /// The status view now.
    pub fn status_now(&self) -> PoolStatus {
        PoolStatus::from_snapshot(
            &self.snapshot_at(false),
            &self.limits.load(),
            &self.keys.load(),
        )
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
        let ring = self.keys.load();
        let keys = ring
            .active()
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
            if let Some(e) = ring
                .get(KeyId(key as u32))
                .filter(|_| !ring.is_retired(KeyId(key as u32)))
            {
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
        let ring = self.keys.load_full();
        for (id, e) in ring.iter() {
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
            let tier = self.limits.load().tier(&ss.project);
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
            let Some((id, _)) = ring
                .active()
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
        inner.shape += 1;
        drop(inner);
        self.changed.notify_waiters();
        Ok(())
    }
}
