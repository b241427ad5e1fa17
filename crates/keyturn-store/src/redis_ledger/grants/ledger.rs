//! The ledger's side of grants: spending one on an acquire, the counts it reports, giving
//! every model's back, and `close` (and a drop) at a process's end.

use super::*;

impl RedisLedger {
    /// An acquire served from a grant, if one fits: the next admission taken ahead for the
    /// model, while it lives, with the same requests and at least the demand's tokens (the
    /// difference goes back).
    pub(in crate::redis_ledger) fn spend_grant(
        &self,
        model: &str,
        slot: u32,
        demand: Demand,
    ) -> Option<Lease> {
        let now = self.clock.now_ms();
        let mut grants = self.giver.grants.lock();
        let h = grants.get_mut(model)?;
        while h.ahead.front().is_some_and(|a| a.until <= now) {
            if let Some(a) = h.ahead.pop_front() {
                h.back.push((a.key, a.sec, a.epoch, a.requests, a.tokens));
            }
        }
        let a = *h.ahead.front()?;
        if a.requests != demand.requests || a.tokens < demand.tokens {
            return None;
        }
        h.ahead.pop_front();
        if a.tokens > demand.tokens {
            h.back
                .push((a.key, a.sec, a.epoch, 0, a.tokens - demand.tokens));
        }
        h.spent += 1;
        self.giver
            .spent_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(Lease::new(
            KeyId(a.key as u32),
            slot,
            a.sec,
            demand,
            false,
            a.epoch,
        ))
    }

    /// Admissions this ledger served from grants, without a call to Redis (since it connected).
    pub fn spent_from_grants(&self) -> u64 {
        self.giver
            .spent_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Admissions this ledger holds ahead right now, across models.
    pub fn held_in_grants(&self) -> usize {
        self.giver
            .grants
            .lock()
            .values()
            .map(|h| h.ahead.len())
            .sum()
    }

    /// Gives back every model's grants, so that Redis's counts are what this process sent:
    /// before status, snapshots, resets, disables and restores, and after a settle that changes
    /// what may be admitted.
    pub(in crate::redis_ledger) async fn give_back_all(&self) -> Result<(), LedgerError> {
        let models: Vec<String> = self.giver.grants.lock().keys().cloned().collect();
        for model in models {
            self.give_back_model(&model).await?;
        }
        Ok(())
    }

    /// Gives back one model's grants, with the batches whose call failed (if Redis cannot be
    /// asked, they are sent again later: see [`Giver::after_call`]).
    pub(in crate::redis_ledger) async fn give_back_model(
        &self,
        model: &str,
    ) -> Result<(), LedgerError> {
        let (back, spent) = self.giver.take_all(model);
        // The spent count stays for the next call's sizing.
        if let Some(h) = self.giver.grants.lock().get_mut(model) {
            h.spent += spent;
        }
        self.giver.give_back(model, back).await
    }
}

impl Held {
    /// Keeps the count a failed call was to report, for the next call's sizing.
    pub(in crate::redis_ledger) fn count_spent(&mut self, spent: usize) {
        self.spent += spent;
    }
}

impl RedisLedger {
    /// Waits for the settles still to be sent (see `settles.rs`) and the calls out with
    /// give-backs, then gives back this ledger's
    /// unspent grants, with those whose give-back failed before (each applied once), and
    /// deletes the marks of give-backs already answered. A clean shutdown
    /// calls it before dropping the ledger; a ledger dropped without it gives them back in a task
    /// on the runtime it connected on, wherever it is dropped (a runtime shutting down may not
    /// run it: they then stay counted as sent, the minute's room back once their second leaves the window, the
    /// day's lost for the day).
    pub async fn close(&self) -> Result<(), LedgerError> {
        // The settles still out or waiting (their callers may have stopped waiting) first: a
        // process exits after close, and a settle left to a task would go with it.
        self.settler.idle().await;
        // Then the calls out with give-backs (a timer's, an acquire's): once they return, what
        // they carried is applied or kept, and what is kept goes now.
        self.giver.quiet().await;
        self.give_back_all().await?;
        // The marks the last calls left (a call with nothing to give back only deletes them).
        self.giver.give_back("", Vec::new()).await
    }
}

impl Drop for RedisLedger {
    fn drop(&mut self) {
        let models: Vec<String> = self.giver.grants.lock().keys().cloned().collect();
        let held: Vec<(String, Vec<Batch>)> = models
            .into_iter()
            .map(|m| {
                let (back, _) = self.giver.take_all(&m);
                (m, back)
            })
            .filter(|(_, back)| !back.is_empty())
            .collect();
        if held.is_empty() {
            return;
        }
        // On the runtime the ledger connected on, where its connection is driven: the one
        // dropping it may be none, or one about to end (a proxy's serving thread).
        let giver = self.giver.clone();
        self.giver.home.clone().spawn(async move {
            for (model, back) in held {
                let _ = giver.give_back(&model, back).await;
            }
        });
    }
}
