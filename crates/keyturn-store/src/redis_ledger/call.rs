//! One acquire script call, owned: what it sends and what it needs once answered (the model's
//! grants, the round-robin cursor), so that it can complete in a task of its own when the
//! acquire that leads it is cancelled mid-call (see `admission.rs`).

use super::grants::{Batch, Giver, MAX_GRANT};
use super::*;

/// Per model: where the next round-robin walk starts.
pub(super) type Cursors = Arc<Mutex<HashMap<String, usize>>>;

/// An acquire call deciding its demands in order, planned and not yet sent.
pub(super) struct Call {
    model: String,
    demands: Vec<Demand>,
    /// The local time it was planned (sent right after): grants' ends are measured from it.
    pub(super) sent_local: i64,
    now: String,
    policy: &'static str,
    midnights: [i64; 4],
    probe_timeout_ms: i64,
    relearn_ms: i64,
    /// The candidate keys in ring order (every key, or a pinned demand's project's), and where
    /// the walk starts among them.
    order: Vec<usize>,
    start: usize,
    limits: Arc<Vec<[i64; 4]>>,
    /// Admissions to take ahead, and their shape.
    want: usize,
    shape: (u32, u64),
    /// The model's give-backs it carries, and the count spent from grants since its last call.
    back: Unsent,
    spent: usize,
    /// The grants' era when it was planned (see [`Giver::retire`]).
    era: u64,
    ring: usize,
    round_robin: bool,
    giver: Arc<Giver>,
    cursors: Cursors,
}

/// A planned call's give-backs, taken from the model's: dropped unsent (the call's task dropped
/// before it ran, its runtime shutting down), it keeps them to be sent again as a failed call
/// does (see [`Giver::after_call`]), instead of letting them go with it.
struct Unsent {
    giver: Arc<Giver>,
    model: String,
    batches: Vec<Batch>,
}

impl Drop for Unsent {
    fn drop(&mut self) {
        let batches = std::mem::take(&mut self.batches);
        if !batches.is_empty() {
            self.giver
                .after_call(&self.model, false, batches, Vec::new());
        }
    }
}

impl RedisLedger {
    /// Plans one acquire call deciding `demands` in order. A batch of the whole ring takes
    /// admissions ahead too (a grant) and carries what the model's last grants did not spend;
    /// a pinned demand (always alone in its call) does neither.
    pub(super) fn plan(&self, model: &str, demands: Vec<Demand>, sent_local: i64) -> Call {
        let ring = self.keys.len();
        let round_robin = matches!(self.cfg.policy, Policy::RoundRobin);
        let cursor = if round_robin {
            self.cursors.lock().get(model).copied().unwrap_or(0) % ring
        } else {
            0
        };
        let pinned = demands.first().is_some_and(|d| d.project_of.is_some());
        // Every key, or for a pinned demand that project's keys; the walk starts at the
        // cursor's place among them.
        let order: Vec<usize> = match demands.first() {
            Some(d) if pinned => self.pinned_order(*d),
            _ => (0..ring).collect(),
        };
        let start = order.iter().position(|&k| k >= cursor).unwrap_or(0);
        let (back, spent) = if pinned {
            (Vec::new(), 0)
        } else {
            self.giver.take_all(model)
        };
        let want = if pinned {
            0
        } else {
            MAX_GRANT.min(2 * (spent + demands.len()))
        };
        let shape = demands
            .last()
            .map_or((1, 0), |d| (d.requests.max(1), d.tokens));
        Call {
            model: model.to_owned(),
            sent_local,
            now: self.now_arg(sent_local),
            policy: match self.cfg.policy {
                Policy::RoundRobin => "rr",
                Policy::LeastLoaded => "ll",
                Policy::Weighted => "w",
            },
            midnights: self.midnights(),
            probe_timeout_ms: self.cfg.breaker.probe_timeout.as_millis() as i64,
            relearn_ms: self
                .cfg
                .relearn_after
                .map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            order,
            start,
            limits: self.limits_for(model),
            want,
            shape,
            back: Unsent {
                giver: self.giver.clone(),
                model: model.to_owned(),
                batches: back,
            },
            spent,
            era: self.giver.era.load(std::sync::atomic::Ordering::Acquire),
            ring,
            round_robin,
            demands,
            giver: self.giver.clone(),
            cursors: self.cursors.clone(),
        }
    }
}

impl Call {
    /// Sends it: one reply per demand. Keeps the grant it brings and moves the round-robin
    /// cursor past the last key it admitted on.
    pub(super) async fn send(self) -> Result<Vec<Value>, redis::RedisError> {
        let Call {
            model,
            demands,
            sent_local,
            now,
            policy,
            midnights,
            probe_timeout_ms,
            relearn_ms,
            order,
            start,
            limits,
            want,
            shape,
            mut back,
            spent,
            era,
            ring,
            round_robin,
            giver,
            cursors,
        } = self;
        // From here the call's InFlight holds them.
        let back = std::mem::take(&mut back.batches);
        let mut inv = giver.acquire.prepare_invoke();
        inv.key(&giver.anchor);
        inv.arg(&giver.prefix).arg(&model).arg(now).arg(policy);
        for m in midnights {
            inv.arg(m);
        }
        inv.arg(probe_timeout_ms)
            .arg(order.len())
            .arg(relearn_ms)
            .arg(start)
            .arg(demands.len());
        for d in &demands {
            inv.arg(d.requests).arg(d.tokens);
        }
        for &k in &order {
            let (fp, project, weight) = &giver.candidates[k];
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
        // The call's id: Redis records under it what the call admits, so that a call whose
        // answer is lost can be voided (all of it given back, once), its callers having been
        // told it failed.
        let id = giver.next_id();
        let answered = giver.grant_args(&mut inv, want, shape, Some(id), &back);
        // Also when this future is dropped mid-call.
        let carried = giver.in_flight(&model, back, answered);
        let mut conn = giver.conn.clone();
        let sent: Result<Vec<Value>, _> = inv.invoke_async(&mut conn).await;
        // The script may have run with only its answer lost (a timeout), or not at all: what it
        // was to give back is sent again later under the same ids, applied once.
        // (A call that came after its void ran nothing: a failure too.)
        let voided = matches!(&sent, Ok(r) if matches!(r.first(), Some(Value::BulkString(b)) if b == b"void"));
        carried.done(sent.is_ok() && !voided);
        let mut replies: Vec<Value> = match sent {
            Ok(r) if !voided => {
                // Its record (a call that admitted nothing has none) goes with the next call.
                let took_ahead = want > 0
                    && r.len() > demands.len()
                    && matches!(r.last(), Some(Value::Array(g)) if g.len() > 3);
                let admitted = r[..r.len().min(demands.len())].iter().any(
                    |v| matches!(v, Value::Array(a) if matches!(a.first(), Some(Value::Int(1)))),
                );
                if admitted || took_ahead {
                    giver.answered.lock().push(id);
                }
                r
            }
            sent => {
                // Its callers are told it failed; what it may have admitted is voided with the
                // model's next call (or its timer, status, close): nothing it admitted is used.
                giver.after_call(
                    &model,
                    false,
                    vec![Batch::void(id, giver.clock.now_ms())],
                    Vec::new(),
                );
                // The count spent stays for the next call's sizing.
                let mut grants = giver.grants.lock();
                let h = grants.entry(model.clone()).or_default();
                h.count_spent(spent);
                return Err(sent.err().unwrap_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "the acquire call came after its void",
                    ))
                }));
            }
        };
        let granted = if want > 0 && replies.len() > demands.len() {
            replies.pop()
        } else {
            None
        };
        if round_robin {
            // The next batch starts after the last key this one admitted on (or took ahead).
            let ahead = match &granted {
                Some(Value::Array(g)) if g.len() >= 6 => match g.get(g.len() - 3) {
                    Some(Value::Int(k)) => Some(*k as usize),
                    _ => None,
                },
                _ => None,
            };
            let last = ahead.or_else(|| {
                replies.iter().rev().find_map(|r| match r {
                    Value::Array(v) if matches!(v.first(), Some(Value::Int(1))) => match v.get(1) {
                        Some(Value::Int(k)) => Some(*k as usize),
                        _ => None,
                    },
                    _ => None,
                })
            });
            if let Some(k) = last {
                cursors.lock().insert(model.clone(), (k + 1) % ring);
            }
        }
        if let Some(g) = granted {
            giver.keep(&model, &g, sent_local, era);
        }
        Ok(replies)
    }
}
