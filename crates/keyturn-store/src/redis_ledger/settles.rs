//! Settles sent together: while one settle call is out, the settles that arrive wait, and when
//! it returns they go in one call (up to [`MAX_SETTLES`]), which settle.lua decides one by one,
//! in arrival order, exactly as if each came alone. A settle alone is sent at once by its
//! caller. Fail closed as before: when a call fails, each settle it carried returns the error
//! (none is sent again: a settle is never counted twice), and a settle is never left unsent.
//! A caller that stops waiting (its future dropped) leaves its settle to be sent; one that was
//! sending hands the waiting settles to a task. [`RedisLedger::close`] waits until none is out
//! or waiting, so a process that exits after it loses none.

use tokio::sync::oneshot;

use super::*;

/// The most settles one call carries.
pub(super) const MAX_SETTLES: usize = 64;

type Reply = Result<Vec<String>, LedgerError>;

/// The settle script's connection, and the settles waiting for the call out.
pub(super) struct Settler {
    pub(super) conn: Conn,
    pub(super) script: Script,
    pub(super) anchor: String,
    pub(super) server: String,
    pub(super) queue: Mutex<SettleQueue>,
    /// Told when no settle call is out and none waits (for [`Settler::idle`]).
    pub(super) idle: tokio::sync::Notify,
    /// Settle calls sent since the ledger connected.
    pub(super) calls: std::sync::atomic::AtomicU64,
    /// The runtime the ledger connected on, where the settles that waited go on: the runtime of
    /// the call they waited for may end before the ledger (a proxy's serving thread, when the
    /// proxy stops), and a task it was handed would be dropped unrun, leaving them, and every
    /// settle after them, waiting for good.
    pub(super) home: tokio::runtime::Handle,
}

/// Whether a settle call is out, and the settles waiting for it to return.
#[derive(Default)]
pub(super) struct SettleQueue {
    busy: bool,
    waiting: Vec<(Vec<String>, oneshot::Sender<Reply>)>,
}

/// Held by a caller sending its own settle: when it is done (or dropped), the settles that
/// arrived meanwhile go on in a task on the ledger's runtime ([`Settler::home`]).
struct HandOn(Arc<Settler>);

impl Drop for HandOn {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock();
        if q.waiting.is_empty() {
            q.busy = false;
            self.0.idle.notify_waiters();
            return;
        }
        drop(q);
        self.0.home.spawn(self.0.clone().drain());
    }
}

impl Settler {
    /// Settles one lease (`args`: settle.lua's arguments for it) and returns its state changes.
    pub(super) async fn settle(self: &Arc<Self>, args: Vec<String>) -> Reply {
        let wait = {
            let mut q = self.queue.lock();
            if q.busy {
                let (tx, rx) = oneshot::channel();
                q.waiting.push((args, tx));
                Err(rx)
            } else {
                q.busy = true;
                Ok(args)
            }
        };
        match wait {
            Ok(args) => {
                let _hand_on = HandOn(self.clone());
                match self.call(vec![args]).await {
                    Ok(mut replies) => replies.pop().unwrap_or_else(|| Ok(Vec::new())),
                    Err(e) => Err(LedgerError::Backend(settle_backend(&self.server, &e))),
                }
            }
            Err(rx) => rx.await.unwrap_or_else(|_| {
                Err(LedgerError::Backend(BackendError::new(format!(
                    "the settle call to Redis at {} was abandoned; the settle may not have been counted",
                    self.server
                ))))
            }),
        }
    }

    /// Returns once no settle call is out and none waits: every settle handed to the ledger
    /// so far has its answer (or its error).
    pub(super) async fn idle(&self) {
        loop {
            let told = self.idle.notified();
            tokio::pin!(told);
            // Registered before looking, so a notice between the look and the wait is not missed.
            told.as_mut().enable();
            if !self.queue.lock().busy {
                return;
            }
            told.await;
        }
    }

    /// Sends the waiting settles, a call at a time, until none waits.
    async fn drain(self: Arc<Self>) {
        loop {
            let batch: Vec<_> = {
                let mut q = self.queue.lock();
                if q.waiting.is_empty() {
                    q.busy = false;
                    self.idle.notify_waiters();
                    return;
                }
                let n = q.waiting.len().min(MAX_SETTLES);
                q.waiting.drain(..n).collect()
            };
            let (settles, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            match self.call(settles).await {
                Ok(replies) => {
                    for (tx, r) in answers.into_iter().zip(replies) {
                        let _ = tx.send(r);
                    }
                }
                Err(e) => {
                    for tx in answers {
                        let _ =
                            tx.send(Err(LedgerError::Backend(settle_backend(&self.server, &e))));
                    }
                }
            }
        }
    }

    /// One call of settle.lua for `settles`: each one's reply, or the call's error.
    async fn call(&self, settles: Vec<Vec<String>>) -> Result<Vec<Reply>, redis::RedisError> {
        let mut inv = self.script.prepare_invoke();
        inv.key(&self.anchor);
        inv.arg(settles.len());
        for s in &settles {
            inv.arg(s.len());
            for a in s {
                inv.arg(a);
            }
        }
        let mut conn = self.conn.clone();
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replies: Vec<Vec<String>> = inv.invoke_async(&mut conn).await?;
        Ok(replies
            .into_iter()
            .map(|r| match r.first() {
                Some(w) if w == "!" => Err(LedgerError::Backend(BackendError::new(format!(
                    "Redis at {} could not settle a lease (the settle script failed: {})",
                    self.server,
                    r.get(1).map_or("", String::as_str)
                )))),
                _ => Ok(r),
            })
            .collect())
    }
}

impl RedisLedger {
    /// Settle calls this ledger sent to Redis since it connected (settles that arrive together
    /// share one).
    pub fn settle_calls(&self) -> u64 {
        self.settler
            .calls
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl RedisLedger {
    /// Settles a lease: one script call, or a part of one (see `settles.rs`).
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
        let mut args: Vec<String> = vec![
            self.prefix.clone(),
            model.clone(),
            self.now_arg(self.clock.now_ms()),
            entry.fingerprint().to_string(),
            entry.project.clone(),
            lease.second().to_string(),
            lease.reserved_tokens().to_string(),
            code.to_owned(),
            real.to_string(),
            kind.to_owned(),
            retry.to_string(),
            qv.to_string(),
            reason,
            if lease.is_probe() { "1" } else { "0" }.to_owned(),
            b.failure_threshold.to_string(),
            (b.base_cooldown.as_millis() as i64).to_string(),
            (b.max_cooldown.as_millis() as i64).to_string(),
            (self.cfg.default_throttle_cooldown.as_millis() as i64).to_string(),
        ];
        args.extend(self.midnights().iter().map(i64::to_string));
        args.push(
            self.cfg
                .relearn_after
                .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .to_string(),
        );
        args.push(lease.requests().to_string());
        args.push(lease.epoch().to_string());
        if code == "pdead" {
            let same: Vec<&String> = self
                .candidates
                .iter()
                .filter(|(_, p, _)| *p == entry.project)
                .map(|(fp, _, _)| fp)
                .collect();
            args.push(same.len().to_string());
            args.extend(same.into_iter().cloned());
        } else {
            args.push("0".to_owned());
        }
        // Sent at once, or with the settles that arrive while another settle call is out.
        let events = self.settler.settle(args).await?;
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
