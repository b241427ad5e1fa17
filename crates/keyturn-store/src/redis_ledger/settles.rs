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
}

/// Whether a settle call is out, and the settles waiting for it to return.
#[derive(Default)]
pub(super) struct SettleQueue {
    busy: bool,
    waiting: Vec<(Vec<String>, oneshot::Sender<Reply>)>,
}

/// Held by a caller sending its own settle: when it is done (or dropped), the settles that
/// arrived meanwhile go on in a task.
struct HandOn(Arc<Settler>);

impl Drop for HandOn {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock();
        if q.waiting.is_empty() {
            q.busy = false;
            self.0.idle.notify_waiters();
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                drop(q);
                rt.spawn(self.0.clone().drain());
            }
            // No runtime runs the waiters either: they get an error (their sender dropped).
            Err(_) => {
                q.waiting.clear();
                q.busy = false;
                self.0.idle.notify_waiters();
            }
        }
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
