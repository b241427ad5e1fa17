//! Quota grants: admissions taken ahead of demand and spent at in-process speed.
//!
//! An acquire call to Redis that decides a batch also asks for `want` more admissions of the
//! batch's last shape (requests, tokens), decided one by one by the same script and rules as
//! any other, and recorded exactly as admissions (the second's bucket, the day's counts, the
//! usage history). The process keeps them in order and hands them to the next acquires of that
//! model whose demand fits (the same requests, no more tokens): no round trip. Each lives until
//! the end of the Redis second it was recorded in (measured from when its call was sent, so on
//! the local clock it ends no later than in Redis): the minute window counts whole seconds, so
//! a grant spent within its second is counted exactly as an acquire made then.
//!
//! What a grant did not spend (it expired, a demand took fewer tokens than it held, or the
//! process needs its counts true) goes back: with the next acquire call of the model, or by a
//! timer at the grant's end when the process is idle, or at once before `status`, `snapshot`,
//! a reset, a disable, a restore, and after a settle that changes what may be admitted.
//!
//! Give-backs are exact: each batch carries an id that the script marks (SET NX, under the
//! namespace's hash tag) in the same call that applies it, so a batch is applied at most once
//! however often it is sent. A call that fails may have run with only its answer lost (a
//! timeout) or not at all (a dropped connection), and so may one whose caller stopped waiting
//! (its future dropped mid-call): its batches are kept and sent again, as they
//! were, with the model's next calls, by the model's timer (backing off from 1 s to 30 s), before
//! `status` and on [`RedisLedger::close`], for at most [`RESEND_FOR_MS`] (then they stay counted
//! as sent: never over-admission). A mark is deleted by the call after the one that answered its
//! first send (no copy of it can still be on its way); a resent batch's mark expires after
//! [`MARK_TTL_MS`], past any resend. An acquire call whose answer is lost is voided the same
//! way ([`Batch::void`]): Redis recorded what it admitted under the call's id, and all of it
//! goes back, once.
//!
//! Sizing (the trade-off between round trips and fairness): `want` is twice what the process
//! spent since its last call plus the batch, at most [`MAX_GRANT`]; the script takes at most
//! 1/[`SHARE`] of a scope's free room per call, so near a limit grants shrink to nothing and the
//! last requests of a window or a day are decided in Redis one by one. Never a breaker probe or
//! a re-probe. A crashed process's unspent grant stays counted as sent (never over-admission):
//! the minute's room comes back when its second leaves the window (61 s), the day's is lost for
//! the day (at most one grant per model and call in flight, [`MAX_GRANT`] requests, and no more
//! than 1/[`SHARE`] of what was free).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::*;

mod ledger;

/// The most admissions one call takes ahead for a model.
pub(super) const MAX_GRANT: usize = 256;

/// One call takes ahead at most 1/`SHARE` of a scope's free room.
pub(super) const SHARE: usize = 4;

/// How long after its first send a give-back whose call failed is still sent again.
pub(super) const RESEND_FOR_MS: i64 = 10 * 60_000;

/// How long Redis keeps a give-back's mark when nobody deletes it: well past the last resend
/// and any copy of it still queued, so a late copy finds it.
pub(super) const MARK_TTL_MS: i64 = 60 * 60_000;

/// The model timer's first and longest wait before sending failed give-backs again.
const RETRY_FIRST_MS: i64 = 1_000;
const RETRY_MAX_MS: i64 = 30_000;

/// One admission taken ahead.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    key: usize,
    sec: i64,
    epoch: u64,
    requests: u32,
    tokens: u64,
    /// Local time at which it expires.
    until: i64,
}

/// Something to give back: (key, second, generation, requests, tokens).
pub(super) type Give = (usize, i64, u64, u32, u64);

/// Give-backs sent together under one id: Redis applies them once, however often they are sent.
#[derive(Debug)]
pub(super) struct Batch {
    id: u64,
    gives: Vec<Give>,
    /// Local time of its first send.
    since: i64,
    /// Whether it was sent before (a copy of it may still reach Redis: its mark stays).
    resent: bool,
    /// Not give-backs but an acquire call whose answer was lost: what that call recorded it
    /// admitted goes back, once (see acquire.lua).
    void: bool,
}

impl Batch {
    /// The void of acquire call `id`, whose answer was lost (it may or may not have run).
    pub(super) fn void(id: u64, since: i64) -> Self {
        Self {
            id,
            gives: Vec::new(),
            since,
            resent: true,
            void: true,
        }
    }
}

/// One model's grants in this process.
#[derive(Default)]
pub(super) struct Held {
    ahead: VecDeque<Ahead>,
    back: Vec<Give>,
    /// Batches whose call failed: sent again, as they were.
    unsure: Vec<Batch>,
    /// When the timer sends `unsure` again, and how many times it has in a row.
    retry_at: i64,
    retries: u32,
    /// Admissions spent from grants since the model's last call to Redis.
    spent: usize,
    /// Whether a timer gives back what expires.
    timer: bool,
}

/// Every model's grants, shared with the timers.
pub(super) type Grants = Arc<Mutex<HashMap<String, Held>>>;

/// What a timer needs to give back without the ledger: a returns-only call of the acquire script.
pub(super) struct Giver {
    pub(super) conn: Conn,
    pub(super) acquire: Script,
    pub(super) anchor: String,
    pub(super) prefix: String,
    pub(super) server: String,
    pub(super) time: TimeSource,
    pub(super) clock: Arc<dyn Clock>,
    /// Per key, in ring order: fingerprint as text, project, weight.
    pub(super) candidates: Arc<Vec<(String, String, u32)>>,
    pub(super) grants: Grants,
    /// Admissions served from grants since the ledger connected.
    pub(super) spent_total: AtomicU64,
    /// This ledger's part of every give-back id (random: ids never meet another ledger's).
    pub(super) instance: u64,
    /// The last give-back id handed out.
    pub(super) last_id: AtomicU64,
    /// Ids of batches answered on their first send, whose marks the next call deletes.
    pub(super) answered: Mutex<Vec<u64>>,
    /// Calls out that carry give-backs or mark deletions (see [`Giver::in_flight`]), and the
    /// notice that none is (for [`Giver::quiet`]).
    pub(super) out: AtomicUsize,
    pub(super) quiet: tokio::sync::Notify,
    /// Moves on whenever what may be admitted changes here (see [`Giver::retire`]): a call
    /// planned before keeps no grant.
    pub(super) era: AtomicU64,
    /// The runtime the ledger connected on, where its timers run: a timer started by a call on
    /// a runtime that ends before the ledger (a proxy's serving thread, when the proxy stops and
    /// its pool lives on) would end with it, its model marked as timed for good, and what it
    /// was to give back would stay counted in Redis until the next call, for the day.
    pub(super) home: tokio::runtime::Handle,
}

/// A random 64-bit number without a random-number crate: std's hasher keys are seeded from
/// the OS per process.
pub(super) fn random_instance() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// `gives` summed per key, second and generation: a give-back costs Redis one update per key,
/// however many it holds.
fn summed(gives: impl Iterator<Item = Give>) -> Vec<Give> {
    let mut back: Vec<Give> = Vec::new();
    for (k, sec, epoch, r, t) in gives {
        match back
            .iter_mut()
            .find(|b| b.0 == k && b.1 == sec && b.2 == epoch)
        {
            Some(b) => {
                b.3 = b.3.saturating_add(r);
                b.4 = b.4.saturating_add(t);
            }
            None => back.push((k, sec, epoch, r, t)),
        }
    }
    back
}

/// Four Pacific midnights around `now` (yesterday's start … tomorrow's end).
pub(super) fn midnights_around(now: i64) -> [i64; 4] {
    let today = QuotaDay::containing(now);
    let yesterday = QuotaDay::containing(today.start_ms - 1);
    let tomorrow = QuotaDay::containing(today.end_ms);
    [
        yesterday.start_ms,
        today.start_ms,
        today.end_ms,
        tomorrow.end_ms,
    ]
}

impl Giver {
    /// Appends the grant arguments of an acquire call: want, share, shape, the call's own id
    /// (`call`: it records what it admits, see acquire.lua), then the give-backs (the marks and
    /// records to delete, the calls to void, and `batches`). Returns the ids whose marks it
    /// deletes, to put back if the call fails.
    pub(super) fn grant_args(
        &self,
        inv: &mut redis::ScriptInvocation<'_>,
        want: usize,
        shape: (u32, u64),
        call: Option<u64>,
        batches: &[Batch],
    ) -> Vec<u64> {
        inv.arg(want).arg(SHARE).arg(shape.0).arg(shape.1);
        inv.arg(MARK_TTL_MS);
        inv.arg(call.map_or_else(String::new, |id| self.mark(id)));
        let answered = std::mem::take(&mut *self.answered.lock());
        inv.arg(answered.len());
        for &id in &answered {
            inv.arg(self.mark(id));
        }
        let (voids, batches): (Vec<&Batch>, Vec<&Batch>) = batches.iter().partition(|b| b.void);
        inv.arg(voids.len());
        for b in voids {
            inv.arg(self.mark(b.id));
        }
        inv.arg(batches.len());
        for b in batches {
            inv.arg(self.mark(b.id)).arg(b.gives.len());
            for &(k, sec, epoch, r, t) in &b.gives {
                let (fp, project, _) = &self.candidates[k];
                inv.arg(fp).arg(project).arg(sec).arg(epoch).arg(r).arg(t);
            }
        }
        answered
    }

    /// A new id for a give-back batch or an acquire call.
    pub(super) fn next_id(&self) -> u64 {
        self.last_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A give-back id as the script marks it: this ledger's instance and the batch's number.
    fn mark(&self, id: u64) -> String {
        format!("{:016x}.{id:x}", self.instance)
    }

    /// After a call that carried `batches` (and deleted the marks `answered`): on success the
    /// marks of batches sent once may go with the next call; on failure the batches are kept to
    /// be sent again (the call may not have run) and the marks are deleted later.
    pub(super) fn after_call(
        self: &Arc<Self>,
        model: &str,
        ok: bool,
        batches: Vec<Batch>,
        answered: Vec<u64>,
    ) {
        if ok {
            let mut marks = self.answered.lock();
            marks.extend(batches.iter().filter(|b| !b.resent).map(|b| b.id));
            if let Some(h) = self.grants.lock().get_mut(model) {
                h.retries = 0;
            }
            return;
        }
        self.answered.lock().extend(answered);
        if batches.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let start_timer = {
            let mut grants = self.grants.lock();
            let h = grants.entry(model.to_owned()).or_default();
            h.unsure.extend(batches.into_iter().map(|mut b| {
                b.resent = true;
                b
            }));
            let wait = RETRY_FIRST_MS
                .saturating_mul(1 << h.retries.min(5))
                .min(RETRY_MAX_MS);
            h.retries = h.retries.saturating_add(1);
            h.retry_at = now.saturating_add(wait);
            !std::mem::replace(&mut h.timer, true)
        };
        if start_timer {
            self.start_timer(model);
        }
    }

    /// Starts a model's timer on the ledger's own runtime ([`Giver::home`]), not the caller's.
    fn start_timer(self: &Arc<Self>, model: &str) {
        self.home.spawn(self.clone().expire(model.to_owned()));
    }

    /// Gives back an admission nobody will send (its acquire was cancelled while its answer
    /// came): with the model's next call, or at once by its timer.
    pub(super) fn unused(self: &Arc<Self>, model: &str, give: Give) {
        let start_timer = {
            let mut grants = self.grants.lock();
            let h = grants.entry(model.to_owned()).or_default();
            h.back.push(give);
            !std::mem::replace(&mut h.timer, true)
        };
        if start_timer {
            self.start_timer(model);
        }
    }

    /// Holds what a call carries (its give-back batches and the marks it deletes) until the
    /// call's result is known: a call whose future is dropped first (its caller stopped
    /// waiting) may or may not reach Redis, so it counts as failed and its batches are sent
    /// again, instead of going with the future.
    pub(super) fn in_flight<'a>(
        self: &'a Arc<Self>,
        model: &'a str,
        batches: Vec<Batch>,
        answered: Vec<u64>,
    ) -> InFlight<'a> {
        self.out.fetch_add(1, Ordering::AcqRel);
        InFlight {
            giver: self,
            model,
            carried: Some((batches, answered)),
        }
    }

    /// Counts as a call out for [`Giver::quiet`] while it lives: an acquire call's task holds
    /// one until its waiters are answered and what they will not use is among the model's
    /// give-backs, so [`RedisLedger::close`] gives that back too.
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.out.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// One call or task fewer out; the last one tells [`Giver::quiet`].
    fn leave(&self) {
        if self.out.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.quiet.notify_waiters();
        }
    }

    /// Returns once no call carrying give-backs is out (each one's batches are then either
    /// applied or kept to be sent again).
    pub(super) async fn quiet(&self) {
        loop {
            let told = self.quiet.notified();
            tokio::pin!(told);
            // Registered before looking, so a notice between the look and the wait is not missed.
            told.as_mut().enable();
            if self.out.load(Ordering::Acquire) == 0 {
                return;
            }
            told.await;
        }
    }

    /// Gives `batches` to Redis in one call. A failure keeps them to be sent again (see
    /// [`Giver::after_call`]) and is logged.
    pub(super) async fn give_back(
        self: &Arc<Self>,
        model: &str,
        batches: Vec<Batch>,
    ) -> Result<(), LedgerError> {
        if batches.is_empty() && self.answered.lock().is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let mut inv = self.acquire.prepare_invoke();
        inv.key(&self.anchor);
        inv.arg(&self.prefix).arg(model);
        match self.time {
            TimeSource::Redis => inv.arg(""),
            TimeSource::Clock => inv.arg(now),
        };
        inv.arg("rr");
        for m in midnights_around(now) {
            inv.arg(m);
        }
        // probe timeout, n, relearn, start, k: no candidates, no demands.
        inv.arg(0).arg(0).arg(-1).arg(0).arg(0);
        let answered = self.grant_args(&mut inv, 0, (1, 0), None, &batches);
        let carried = self.in_flight(model, batches, answered);
        let mut conn = self.conn.clone();
        let sent: Result<Vec<Value>, _> = inv.invoke_async(&mut conn).await;
        carried.done(sent.is_ok());
        match sent {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(model = %model, "could not give back unspent grants; they are sent again when Redis answers (applied once)");
                Err(LedgerError::Backend(backend(&self.server, &e)))
            }
        }
    }

    /// A model's give-backs to send now: the batches whose call failed (those past
    /// [`RESEND_FOR_MS`] dropped: they stay counted as sent) and, in a new batch, what `h.back`
    /// holds and, with `all`, every live grant, summed per key, second and generation.
    fn batches(&self, model: &str, h: &mut Held, all: bool) -> Vec<Batch> {
        let now = self.clock.now_ms();
        let before = h.unsure.len();
        h.unsure
            .retain(|b| now.saturating_sub(b.since) <= RESEND_FOR_MS);
        if h.unsure.len() < before {
            tracing::warn!(model = %model, batches = before - h.unsure.len(), "gave up sending unspent grants back after 10 minutes without Redis; they stay counted as sent (the minute's room comes back with their second, the day's does not)");
        }
        let mut out = std::mem::take(&mut h.unsure);
        let ahead = if all { h.ahead.len() } else { 0 };
        let gives = summed(
            h.back.drain(..).chain(
                h.ahead
                    .drain(..ahead)
                    .map(|a| (a.key, a.sec, a.epoch, a.requests, a.tokens)),
            ),
        );
        if !gives.is_empty() {
            out.push(Batch {
                id: self.next_id(),
                gives,
                since: now,
                resent: false,
                void: false,
            });
        }
        out
    }

    /// Takes a model's grants and what goes back, all of it (with the batches whose call
    /// failed), and the count spent since the model's last call. Every call of the model gives
    /// back all of it before deciding (and takes a fresh grant after), so its decisions see this
    /// process's own unspent room as free: one process never strands room it holds itself.
    pub(super) fn take_all(&self, model: &str) -> (Vec<Batch>, usize) {
        let mut grants = self.grants.lock();
        let Some(h) = grants.get_mut(model) else {
            return (Vec::new(), 0);
        };
        let batches = self.batches(model, h, true);
        (batches, std::mem::take(&mut h.spent))
    }

    /// What may be admitted changed in this process (a settle that says so, a disable, a
    /// reset, a restore): the grants held, and those the calls out bring back (decided before
    /// the change), are not spent but given back, so the next acquires decide afresh.
    pub(super) fn retire(self: &Arc<Self>) {
        self.era.fetch_add(1, Ordering::AcqRel);
        let mut timers = Vec::new();
        for (model, h) in self.grants.lock().iter_mut() {
            let ahead = h.ahead.drain(..);
            h.back
                .extend(ahead.map(|a| (a.key, a.sec, a.epoch, a.requests, a.tokens)));
            if !h.back.is_empty() && !std::mem::replace(&mut h.timer, true) {
                timers.push(model.clone());
            }
        }
        for model in timers {
            self.start_timer(&model);
        }
    }

    /// Keeps the grant a call planned in `era` brought (given back if the era has moved on).
    pub(super) fn keep(self: &Arc<Self>, model: &str, reply: &Value, sent_local: i64, era: u64) {
        let Value::Array(v) = reply else {
            return;
        };
        let int = |i: usize| match v.get(i) {
            Some(Value::Int(x)) => Some(*x),
            _ => None,
        };
        let (Some(server_now), Some(requests), Some(tokens)) = (int(0), int(1), int(2)) else {
            return;
        };
        if v.len() <= 3 {
            return;
        }
        // The end of the Redis second, on the local clock: from the moment the call was sent,
        // so never later than in Redis.
        let until =
            sent_local.saturating_add((server_now.div_euclid(1000) + 1) * 1000 - server_now);
        let start_timer = {
            let mut grants = self.grants.lock();
            // Read under the lock: a retire that moves the era on after this drains what it adds.
            let retired = self.era.load(Ordering::Acquire) != era;
            let h = grants.entry(model.to_owned()).or_default();
            for i in (3..v.len()).step_by(3) {
                let (Some(key), Some(sec), Some(epoch)) = (int(i), int(i + 1), int(i + 2)) else {
                    break;
                };
                let a = Ahead {
                    key: key as usize,
                    sec,
                    epoch: epoch.max(0) as u64,
                    requests: requests as u32,
                    tokens: tokens.max(0) as u64,
                    until,
                };
                if retired {
                    h.back.push((a.key, a.sec, a.epoch, a.requests, a.tokens));
                } else {
                    h.ahead.push_back(a);
                }
            }
            !std::mem::replace(&mut h.timer, true)
        };
        if start_timer {
            self.start_timer(model);
        }
    }

    /// A model's timer: at each grant's end, gives back what was not spent, and sends failed
    /// give-backs again (backing off); stops when the model holds nothing.
    async fn expire(self: Arc<Self>, model: String) {
        loop {
            let next = {
                let mut grants = self.grants.lock();
                let Some(h) = grants.get_mut(&model) else {
                    return;
                };
                let retry = (!h.unsure.is_empty()).then_some(h.retry_at);
                match (h.ahead.front(), retry) {
                    (Some(a), Some(r)) => Some(a.until.min(r)),
                    (Some(a), None) => Some(a.until),
                    (None, _) if !h.back.is_empty() => None,
                    (None, Some(r)) => Some(r),
                    (None, None) => {
                        h.timer = false;
                        return;
                    }
                }
            };
            if let Some(next) = next {
                self.clock.sleep_until(next).await;
            }
            let batches = {
                let now = self.clock.now_ms();
                let mut grants = self.grants.lock();
                let Some(h) = grants.get_mut(&model) else {
                    return;
                };
                while h.ahead.front().is_some_and(|a| a.until <= now) {
                    if let Some(a) = h.ahead.pop_front() {
                        h.back.push((a.key, a.sec, a.epoch, a.requests, a.tokens));
                    }
                }
                self.batches(&model, h, false)
            };
            // A failure keeps the batches and sets when to try again.
            let _ = self.give_back(&model, batches).await;
        }
    }
}

/// A call's give-backs and mark deletions, until its result is known (see
/// [`Giver::in_flight`]).
pub(super) struct InFlight<'a> {
    giver: &'a Arc<Giver>,
    model: &'a str,
    carried: Option<(Vec<Batch>, Vec<u64>)>,
}

impl InFlight<'_> {
    /// The call returned: `ok` or not (see [`Giver::after_call`]).
    pub(super) fn done(mut self, ok: bool) {
        self.end(ok);
    }

    fn end(&mut self, ok: bool) {
        if let Some((batches, answered)) = self.carried.take() {
            self.giver.after_call(self.model, ok, batches, answered);
            self.giver.leave();
        }
    }
}

/// See [`Giver::busy`].
pub(super) struct Busy(Arc<Giver>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.end(false);
    }
}
