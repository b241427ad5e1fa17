//! Admission: one acquire script call per attempt (with the refusal read into an error and
//! a time capacity returns), one settle script call per lease.

use super::*;

impl RedisLedger {
    /// One attempt, no waiting. On refusal: the error and, if capacity returns, when — on the
    /// local clock, anchored at the moment the request was sent (a slow reply must not stretch
    /// the wait).
    pub(super) async fn try_acquire(
        &self,
        model: &str,
        demand: Demand,
    ) -> Result<Lease, (AcquireError, Option<i64>)> {
        let model = keyturn_core::limits::normalize_model(model);
        let slot = self.model_slot(model);
        let n = self.keys.len();
        let start = match self.cfg.policy {
            Policy::RoundRobin => self.cursors.lock().get(model).copied().unwrap_or(0) % n,
            _ => 0,
        };
        let policy = match self.cfg.policy {
            Policy::RoundRobin => "rr",
            Policy::LeastLoaded => "ll",
            Policy::Weighted => "w",
        };
        let demand = Demand {
            requests: demand.requests.max(1),
            ..demand
        };
        let sent_local = self.clock.now_ms();
        let mut inv = self.acquire.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(model)
            .arg(self.now_arg(sent_local))
            .arg(demand.requests)
            .arg(demand.tokens)
            .arg(policy);
        for m in self.midnights() {
            inv.arg(m);
        }
        // A request pinned to a resource's project: only that project's keys are candidates.
        let order = self.candidate_order(start, demand);
        inv.arg(self.cfg.breaker.probe_timeout.as_millis() as i64)
            .arg(order.len())
            .arg(
                self.cfg
                    .relearn_after
                    .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            );
        let limits = self.limits_for(model);
        for &k in &order {
            let (fp, project, weight) = &self.candidates[k];
            let [rpm, tpm, rpd, tpd] = limits[k];
            inv.arg(k)
                .arg(fp)
                .arg(project)
                .arg(rpm)
                .arg(tpm)
                .arg(rpd)
                .arg(tpd)
                .arg(*weight);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| (AcquireError::Backend(backend(&self.server, &e)), None))?;
        let int = |i: usize| -> i64 {
            match reply.get(i) {
                Some(Value::Int(x)) => *x,
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).parse().unwrap_or(-1),
                _ => -1,
            }
        };
        let text = |i: usize| -> String {
            match reply.get(i) {
                Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(Value::SimpleString(s)) => s.clone(),
                Some(Value::Int(x)) => x.to_string(),
                _ => String::new(),
            }
        };
        if int(0) == 1 {
            let k = int(1) as usize;
            if matches!(self.cfg.policy, Policy::RoundRobin) {
                self.cursors.lock().insert(model.to_owned(), (k + 1) % n);
            }
            return Ok(Lease::new(
                KeyId(k as u32),
                slot,
                int(2),
                demand,
                int(3) == 1,
                // The scope hash's generation: a reset or restore since makes the lease stale.
                int(5).max(0) as u64,
            ));
        }
        let (retry_at, why, n_off, disabled_csv) = (int(1), text(2), int(3), text(4));
        let (tl_what, tl_demand, tl_limit, server_now) = (text(5), int(6), int(7), int(8));
        let disabled: Vec<usize> = disabled_csv
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect();
        let model_s = model.to_owned();
        if disabled.len() == order.len() {
            let detail = self.disabled_detail(&disabled).await;
            return Err((
                AcquireError::AllKeysDisabled {
                    model: model_s,
                    detail,
                },
                None,
            ));
        }
        if retry_at >= 0 {
            let reason = match why.as_str() {
                "tpm" => Exhaustion::TokensPerMinute,
                "rpd" => Exhaustion::RequestsPerDay,
                "tpd" => Exhaustion::TokensPerDay,
                "cooling" => Exhaustion::CoolingDown,
                "circuit" => Exhaustion::CircuitOpen,
                "reprobe" => Exhaustion::Reprobing,
                _ => Exhaustion::RequestsPerMinute,
            };
            let until = retry_at.max(server_now + 1);
            return Err((
                AcquireError::Exhausted {
                    model: model_s,
                    reason,
                    until_ms: until,
                },
                Some(sent_local.saturating_add(until - server_now)),
            ));
        }
        if !tl_what.is_empty() {
            let what = match tl_what.as_str() {
                "rpm" => "requests per minute",
                "rpd" => "requests per day",
                "tpd" => "input tokens per day",
                _ => "input tokens per minute",
            };
            return Err((
                AcquireError::DemandTooLarge {
                    model: model_s,
                    what,
                    demand: tl_demand.max(0) as u64,
                    limit: tl_limit.max(0) as u64,
                },
                None,
            ));
        }
        if n_off > 0 {
            // The cold path: who switched the model off, read from the status every ledger
            // shares (the built-in table, the configuration, or the server and until when).
            let detail = self.off_detail(&model_s, &disabled).await;
            return Err((
                AcquireError::ModelUnavailable {
                    model: model_s,
                    detail,
                },
                None,
            ));
        }
        let detail = self.disabled_detail(&disabled).await;
        Err((
            AcquireError::AllKeysDisabled {
                model: model_s,
                detail,
            },
            None,
        ))
    }

    /// Settles a lease: one script call.
    pub(super) async fn settle_lease(
        &self,
        lease: Lease,
        outcome: Outcome,
    ) -> Result<(), LedgerError> {
        let k = lease.key();
        let Some(entry) = self.keys.get(k) else {
            return Ok(());
        };
        let Some(model) = self.models.lock().get(lease.model_slot() as usize).cloned() else {
            return Ok(());
        };
        let (code, real, kind, retry, qv, reason) = match outcome {
            Outcome::Success { input_tokens } => (
                "ok",
                input_tokens.map_or(-1, |t| {
                    t.min(keyturn_core::outcome::MAX_SETTLED_TOKENS) as i64
                }),
                "none",
                -1,
                -1,
                String::new(),
            ),
            Outcome::Throttled {
                kind,
                retry_after,
                quota_value,
            } => (
                "thr",
                -1,
                match kind {
                    ThrottleKind::RequestsPerMinute => "rpm",
                    ThrottleKind::TokensPerMinute => "tpm",
                    ThrottleKind::RequestsPerDay => "rpd",
                    ThrottleKind::TokensPerDay => "tpd",
                    ThrottleKind::Unspecified => "none",
                },
                retry_after.map_or(-1, |d| d.as_millis() as i64),
                quota_value.map_or(-1, |v| v as i64),
                String::new(),
            ),
            Outcome::ModelUnavailable => ("off", -1, "none", -1, -1, String::new()),
            Outcome::ProjectOff => ("poff", -1, "none", -1, -1, String::new()),
            Outcome::KeyDead(r) => ("dead", -1, "none", -1, -1, reason_code(r)),
            Outcome::ProjectDead(r) => ("pdead", -1, "none", -1, -1, reason_code(r)),
            Outcome::Transient => ("trans", -1, "none", -1, -1, String::new()),
            Outcome::CallerFault => ("fault", -1, "none", -1, -1, String::new()),
        };
        let b = &self.cfg.breaker;
        let mut inv = self.settle.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&model)
            .arg(self.now_arg(self.clock.now_ms()))
            .arg(entry.fingerprint().to_string())
            .arg(&entry.project)
            .arg(lease.second())
            .arg(lease.reserved_tokens())
            .arg(code)
            .arg(real)
            .arg(kind)
            .arg(retry)
            .arg(qv)
            .arg(reason)
            .arg(if lease.is_probe() { "1" } else { "0" })
            .arg(b.failure_threshold)
            .arg(b.base_cooldown.as_millis() as i64)
            .arg(b.max_cooldown.as_millis() as i64)
            .arg(self.cfg.default_throttle_cooldown.as_millis() as i64);
        for m in self.midnights() {
            inv.arg(m);
        }
        inv.arg(
            self.cfg
                .relearn_after
                .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        );
        inv.arg(lease.requests());
        inv.arg(lease.epoch());
        if code == "pdead" {
            let same: Vec<&String> = self
                .candidates
                .iter()
                .filter(|(_, p, _)| *p == entry.project)
                .map(|(fp, _, _)| fp)
                .collect();
            inv.arg(same.len());
            for fp in same {
                inv.arg(fp);
            }
        } else {
            inv.arg(0);
        }
        let mut conn = self.conn.clone();
        let events: Vec<String> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| LedgerError::Backend(backend(&self.server, &e)))?;
        for ev in events {
            match ev.as_str() {
                "disabled" => tracing::info!(key = %entry.label, "key disabled until reset"),
                "opened" => {
                    tracing::info!(key = %entry.label, "circuit breaker opened after transient failures")
                }
                "closed" => {
                    tracing::info!(key = %entry.label, "key recovered: circuit breaker closed")
                }
                "off" => {
                    tracing::info!(key = %entry.label, model = %model, project = %entry.project, "model not available for this project (limit 0): switched off until a re-probe")
                }
                "project-off" => {
                    tracing::info!(key = %entry.label, project = %entry.project, "project cannot be served (credits depleted or no quota at all): every model switched off until a re-probe")
                }
                "back" => {
                    tracing::info!(key = %entry.label, model = %model, project = %entry.project, "re-probe served: the model is back for this project")
                }
                "project-back" => {
                    tracing::info!(key = %entry.label, project = %entry.project, "re-probe answered: the project is back")
                }
                other if other.starts_with("disabled:") => {
                    let fp = &other["disabled:".len()..];
                    let shown = self
                        .keys
                        .iter()
                        .find(|(_, e)| e.fingerprint().to_string() == fp)
                        .map_or_else(String::new, |(_, e)| e.label.clone());
                    tracing::info!(key = %shown, project = %entry.project, "key disabled until reset: its project is");
                }
                other => {
                    tracing::info!(key = %entry.label, model = %model, project = %entry.project, state = other, "scope rate limited by the server")
                }
            }
        }
        Ok(())
    }
}
