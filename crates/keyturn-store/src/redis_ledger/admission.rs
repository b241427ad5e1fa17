//! Admission: the acquires in flight for one model go to Redis in batches, at most
//! [`MAX_CALLS`] script calls at a time per model (the others wait for the next call, which
//! takes every one of them: no thundering herd, and a batch of 64 costs one round trip and one
//! scope read). Each demand in a
//! batch is decided in Redis exactly as if it came alone, in arrival order. A refusal is read
//! into an error and the time capacity returns; one settle script call per lease.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use super::*;

/// The most demands one acquire call decides (bounds the script's run time and reply).
const MAX_BATCH: usize = 64;

/// Acquire calls in flight at once per model. More than one, so that handing the next call to a
/// waiter (a task wake-up, slow on a busy machine) overlaps another call instead of leaving
/// Redis idle; each call is atomic in Redis, so any number is exact.
const MAX_CALLS: usize = 4;

/// How one demand was decided: the acquire script's reply for it (with the local time its
/// batch was sent), or a lease from room this process took ahead (a grant) while it waited.
pub(super) enum Decided {
    Reply(Value, i64),
    Granted(Lease),
}

/// What a waiting acquire is told: how it was decided, or that it now sends the next batch.
enum Turn {
    Done(Result<Decided, redis::RedisError>),
    Lead,
}

struct Waiter {
    demand: Demand,
    tx: oneshot::Sender<Turn>,
}

/// One model's acquires: the calls in flight, and who waits for the next.
#[derive(Default)]
pub(super) struct Queue {
    calls: usize,
    waiting: VecDeque<Waiter>,
}

/// Per model: the acquire calls in flight and the acquires waiting for the next.
pub(super) type Queues = Arc<Mutex<HashMap<String, Queue>>>;

/// Hands the model's next batch to the first waiter still waiting when a call returns, or
/// when a waiter told to lead is dropped first: the queue never stalls.
struct HandOver {
    queues: Queues,
    model: String,
}

/// A waiting acquire's end of its channel (a leader's too, waiting for its own call's answer).
/// Dropped (its acquire cancelled) after it was told to lead but before it did, it hands the
/// batch on itself; after its answer came but before it read it, it gives back what it was
/// admitted (as [`answer`] does for one gone before its answer came): exactly one of the two
/// sees the admission, as the channel is closed before it is read.
struct Waiting<'a> {
    rx: Option<oneshot::Receiver<Turn>>,
    queues: &'a Queues,
    giver: &'a Arc<grants::Giver>,
    model: &'a str,
    demand: Demand,
}

impl Waiting<'_> {
    /// Its turn, once told (`None`: the call that was to answer it was dropped unrun). Once
    /// read, the turn is the caller's: dropped, this has nothing left to hand on or give back.
    async fn turn(&mut self) -> Option<Turn> {
        let turn = match self.rx.as_mut() {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        self.rx = None;
        turn
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            match rx.try_recv() {
                Ok(Turn::Lead) => drop(HandOver {
                    queues: self.queues.clone(),
                    model: self.model.to_owned(),
                }),
                Ok(Turn::Done(Ok(decided))) => {
                    give_back_unused(self.giver, self.model, self.demand, decided);
                }
                _ => {}
            }
        }
    }
}

impl Drop for HandOver {
    fn drop(&mut self) {
        let mut queues = self.queues.lock();
        let Some(q) = queues.get_mut(&self.model) else {
            return;
        };
        while let Some(w) = q.waiting.pop_front() {
            if w.tx.send(Turn::Lead).is_ok() {
                return;
            }
        }
        q.calls = q.calls.saturating_sub(1);
    }
}

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
        let demand = Demand {
            requests: demand.requests.max(1),
            ..demand
        };
        if demand.project_of.is_none()
            && let Some(lease) = self.spend_grant(model, slot, demand)
        {
            return Ok(lease);
        }
        if demand.project_of.is_some() && self.pinned_order(demand).is_empty() {
            // Pinned to a project none of these keys belongs to (a key from before a reload):
            // no key may take it.
            return Err((
                AcquireError::AllKeysDisabled {
                    model: model.to_owned(),
                    detail: "no key of the project that owns this resource".into(),
                },
                None,
            ));
        }
        let (reply, sent_local) = match self
            .decide(model, slot, demand)
            .await
            .map_err(|e| (AcquireError::Backend(backend(&self.server, &e)), None))?
        {
            Decided::Granted(lease) => return Ok(lease),
            Decided::Reply(reply, sent_local) => (reply, sent_local),
        };
        let reply: Vec<Value> = match reply {
            Value::Array(v) => v,
            _ => Vec::new(),
        };
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
        let candidates = if demand.project_of.is_some() {
            self.pinned_order(demand).len()
        } else {
            n
        };
        if disabled.len() == candidates {
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

    /// How one demand is decided: in the call in flight's successor batch for `model`, sent by
    /// whichever waiter leads it (from a grant that came meanwhile, if one fits).
    async fn decide(
        &self,
        model: &str,
        slot: u32,
        demand: Demand,
    ) -> Result<Decided, redis::RedisError> {
        if demand.project_of.is_some() {
            // Pinned to a resource's project: decided alone, over that project's keys only
            // (such requests are few; a batch shares one candidate list). From a task too, so
            // that one cancelled mid-call gives its admission back.
            let (tx, rx) = oneshot::channel();
            self.send_from_task(model, vec![Waiter { demand, tx }], None);
            return self.own_answer(model, demand, rx).await;
        }
        loop {
            let rx = {
                let mut queues = self.batches.lock();
                let q = queues.entry(model.to_owned()).or_default();
                if q.calls >= MAX_CALLS {
                    let (tx, rx) = oneshot::channel();
                    q.waiting.push_back(Waiter { demand, tx });
                    Some(rx)
                } else {
                    q.calls += 1;
                    None
                }
            };
            let turn = match rx {
                None => Some(Turn::Lead),
                Some(rx) => self.waiting(model, demand, rx).turn().await,
            };
            match turn {
                Some(Turn::Done(reply)) => return reply,
                Some(Turn::Lead) => return self.lead(model, slot, demand).await,
                // The call that carried it was dropped unrun (its runtime shutting down): ask
                // again. What that call may have admitted for this demand counts as sent (as a
                // dropped lease), never as free, so asking again can only under-use.
                None => {}
            }
        }
    }

    /// Sends one batch: `own` first, then every waiter (up to [`MAX_BATCH`]); answers the
    /// waiters and hands the next batch on.
    ///
    /// Room taken ahead by another call while these demands waited (a grant) serves them first,
    /// in arrival order, exactly as if each had arrived after it: only the rest go to Redis.
    /// Without this, with many acquires in flight, each call gave back the grant the call
    /// before had just brought (a call gives back every unspent grant of its model), and the
    /// demands waiting behind it went to Redis one batch after another.
    ///
    /// The call goes from a task of its own, so it completes when this acquire is cancelled
    /// mid-call (a proxy client that hangs up): its grant is kept, its waiters are answered,
    /// what it admitted for an acquire that stopped waiting (this one included) goes back, and
    /// the next batch is handed on when it returns.
    async fn lead(
        &self,
        model: &str,
        slot: u32,
        own: Demand,
    ) -> Result<Decided, redis::RedisError> {
        let hand_over = HandOver {
            queues: self.batches.clone(),
            model: model.to_owned(),
        };
        // Waiters whose acquire was cancelled while they waited are left out: decided with the
        // rest, one would take room (or a breaker's one probe) from a demand behind it that is
        // still wanted, and give it back only after that demand was refused.
        let waiting: Vec<Waiter> = {
            let mut queues = self.batches.lock();
            let q = queues.entry(model.to_owned()).or_default();
            let mut waiting = Vec::new();
            while waiting.len() < MAX_BATCH - 1
                && let Some(w) = q.waiting.pop_front()
            {
                if !w.tx.is_closed() {
                    waiting.push(w);
                }
            }
            waiting
        };
        let own_lease = self.spend_grant(model, slot, own);
        let mut batch = Vec::with_capacity(waiting.len() + 1);
        for w in waiting {
            match self.spend_grant(model, slot, w.demand) {
                Some(lease) => answer(&self.giver, model, w, Ok(Decided::Granted(lease))),
                None => batch.push(w),
            }
        }
        if batch.is_empty()
            && let Some(lease) = own_lease
        {
            drop(hand_over);
            return Ok(Decided::Granted(lease));
        }
        // The leader is answered like its waiters, first.
        let own_rx = match own_lease {
            Some(_) => None,
            None => {
                let (tx, rx) = oneshot::channel();
                batch.insert(0, Waiter { demand: own, tx });
                Some(rx)
            }
        };
        self.send_from_task(model, batch, Some(hand_over));
        match (own_lease, own_rx) {
            (Some(lease), _) => Ok(Decided::Granted(lease)),
            (None, Some(rx)) => self.own_answer(model, own, rx).await,
            (None, None) => unreachable!("a leader without a lease is answered by its call"),
        }
    }

    /// Sends `batch`'s demands in one call from a task of its own, which answers each waiter
    /// (giving back what one gone was admitted), then hands the model's next batch on (a
    /// pinned call, outside the queue, has none to hand on). It holds a [`grants::Giver::busy`]
    /// guard until then, so [`RedisLedger::close`] gives back what the waiters will not use.
    fn send_from_task(&self, model: &str, batch: Vec<Waiter>, hand_over: Option<HandOver>) {
        let call = self.plan(
            model,
            batch.iter().map(|w| w.demand).collect(),
            self.clock.now_ms(),
        );
        let giver = self.giver.clone();
        let busy = giver.busy();
        let model = model.to_owned();
        tokio::spawn(async move {
            let sent_local = call.sent_local;
            match call.send().await {
                Ok(replies) => {
                    let mut replies = replies.into_iter();
                    for w in batch {
                        let r = replies.next().unwrap_or(Value::Nil);
                        answer(&giver, &model, w, Ok(Decided::Reply(r, sent_local)));
                    }
                }
                Err(e) => {
                    for w in batch {
                        let _ = w.tx.send(Turn::Done(Err(e.clone())));
                    }
                }
            }
            drop(hand_over);
            drop(busy);
        });
    }

    /// `demand`'s end of its channel, until its turn is read.
    fn waiting<'a>(
        &'a self,
        model: &'a str,
        demand: Demand,
        rx: oneshot::Receiver<Turn>,
    ) -> Waiting<'a> {
        Waiting {
            rx: Some(rx),
            queues: &self.batches,
            giver: &self.giver,
            model,
            demand,
        }
    }

    /// What an acquire's own call (from [`RedisLedger::send_from_task`]) decided for it.
    /// Cancelled before it reads the answer, it gives back what it was admitted.
    async fn own_answer(
        &self,
        model: &str,
        demand: Demand,
        rx: oneshot::Receiver<Turn>,
    ) -> Result<Decided, redis::RedisError> {
        match self.waiting(model, demand, rx).turn().await {
            Some(Turn::Done(decided)) => decided,
            // Its task was dropped unrun: the runtime is shutting down.
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the acquire call was dropped unsent: the runtime is shutting down",
            ))),
        }
    }
}

/// Tells a waiter how its demand was decided. A waiter gone (its acquire cancelled) never sends
/// what it was admitted: the admission goes back (see [`give_back_unused`]).
fn answer(
    giver: &Arc<grants::Giver>,
    model: &str,
    w: Waiter,
    decided: Result<Decided, redis::RedisError>,
) {
    if let Err(Turn::Done(Ok(decided))) = w.tx.send(Turn::Done(decided)) {
        give_back_unused(giver, model, w.demand, decided);
    }
}

/// Gives back an admission decided for `demand` that its acquire, cancelled, will never send
/// (a probe's stays counted as sent and holds its breaker until the probe times out).
fn give_back_unused(giver: &Arc<grants::Giver>, model: &str, demand: Demand, decided: Decided) {
    let give = match decided {
        Decided::Granted(l) => Some((
            l.key().0 as usize,
            l.second(),
            l.epoch(),
            l.requests(),
            l.reserved_tokens(),
        )),
        Decided::Reply(Value::Array(v), _) => match v.as_slice() {
            [
                Value::Int(1),
                Value::Int(idx),
                Value::Int(sec),
                Value::Int(0),
                _,
                Value::Int(gen_),
                ..,
            ] => Some((
                *idx as usize,
                *sec,
                (*gen_).max(0) as u64,
                demand.requests,
                demand.tokens,
            )),
            _ => None,
        },
        Decided::Reply(..) => None,
    };
    if let Some(give) = give {
        giver.unused(model, give);
    }
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use keyturn_core::testkit::{T0_MS, TIGHT, config, solo_keys};
    use keyturn_core::{ManualClock, next_pacific_midnight};

    use super::*;
    use crate::testkit::{TestRedis, unique_namespace};

    async fn ledger(clock: &ManualClock) -> RedisLedger {
        let redis = TestRedis::get();
        RedisLedger::connect(
            redis.url(),
            &unique_namespace("batch-unit"),
            Arc::new(solo_keys(1)),
            config(1000, 1_000_000, 1000),
            Arc::new(clock.clone()),
            TimeSource::Clock,
        )
        .await
        .unwrap()
    }

    /// How many of one 64-demand call were admitted (and how many as breaker probes).
    async fn one_call_of_64(l: &RedisLedger, clock: &ManualClock) -> (usize, usize) {
        let replies = l
            .plan(TIGHT, vec![Demand::tokens(1); 64], clock.now_ms())
            .send()
            .await
            .unwrap();
        assert_eq!(replies.len(), 64);
        let field = |r: &Value, i: usize| match r {
            Value::Array(v) => matches!(v.get(i), Some(Value::Int(1))),
            _ => panic!("{r:?}"),
        };
        let admitted = replies.iter().filter(|r| field(r, 0)).count();
        let probes = replies
            .iter()
            .filter(|r| field(r, 0) && field(r, 3))
            .count();
        (admitted, probes)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis"]
    async fn one_call_lets_one_breaker_probe_through() {
        let clock = ManualClock::at_ms(T0_MS);
        let l = ledger(&clock).await;
        for _ in 0..2 {
            let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
            l.settle(lease, Outcome::Transient).await.unwrap();
        }
        clock.advance(Duration::from_secs(10));
        assert_eq!(one_call_of_64(&l, &clock).await, (1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis"]
    async fn one_call_lets_one_reprobe_through_an_expired_switch_off() {
        let clock = ManualClock::at_ms(T0_MS);
        let l = ledger(&clock).await;
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::ModelUnavailable).await.unwrap();
        clock.advance(Duration::from_millis(
            (next_pacific_midnight(T0_MS) - T0_MS) as u64,
        ));
        assert_eq!(one_call_of_64(&l, &clock).await, (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis"]
    async fn one_call_lets_one_reprobe_through_a_project_switched_off() {
        let clock = ManualClock::at_ms(T0_MS);
        let l = ledger(&clock).await;
        let lease = l.acquire(TIGHT, Demand::tokens(1)).await.unwrap();
        l.settle(lease, Outcome::ProjectOff).await.unwrap();
        clock.advance(Duration::from_millis(
            (next_pacific_midnight(T0_MS) - T0_MS) as u64,
        ));
        assert_eq!(one_call_of_64(&l, &clock).await, (1, 0));
    }
}
