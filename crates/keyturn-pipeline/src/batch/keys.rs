//! Which key a project's jobs go with, and taking up the jobs the checkpoint records.

use keyturn_core::KeyEntry;
use keyturn_gemini::BatchState;
use keyturn_store::BatchRecord;

use super::*;

/// The keys the ledger has switched off (dead, or disabled by an operator): they submit, poll
/// and read no job. When the ledger cannot say, none.
pub(super) async fn switched_off(sink: &Sink<'_>) -> Vec<keyturn_core::Fingerprint> {
    sink.services
        .ledger
        .status()
        .await
        .map(|st| {
            st.keys
                .into_iter()
                .filter(|k| k.disabled.is_some())
                .map(|k| k.fingerprint)
                .collect()
        })
        .unwrap_or_default()
}

/// Every project with a key the ledger has not switched off, in ring order.
pub(super) async fn slots(sink: &Sink<'_>, max_jobs: usize) -> Vec<Slot> {
    let off = switched_off(sink).await;
    let ring = sink.services.ledger.keys();
    let mut out: Vec<Slot> = Vec::new();
    for (id, e) in ring.active() {
        if off.contains(&e.fingerprint()) {
            continue;
        }
        if !out.iter().any(|s| s.project == e.project) {
            out.push(Slot {
                project: e.project.clone(),
                pin: id,
                off: false,
                max_jobs: max_jobs.max(1),
                learned_tokens: BTreeMap::new(),
            });
        }
    }
    out
}

impl Driver<'_, '_> {
    /// The key to poll a recorded job with: the one that submitted it, else any key of its
    /// project (never another project's: the job is not theirs); never one the ledger switched
    /// off.
    async fn key_for(&self, rec: &BatchRecord) -> Option<KeyEntry> {
        let off = switched_off(self.sink).await;
        let ring = self.sink.services.ledger.keys();
        let entries: Vec<KeyEntry> = ring
            .active()
            .filter(|(_, e)| !off.contains(&e.fingerprint()))
            .map(|(_, e)| e.clone())
            .collect();
        entries
            .iter()
            .find(|e| e.fingerprint().to_string() == rec.key_fingerprint)
            .or_else(|| entries.iter().find(|e| e.project == rec.project))
            .cloned()
    }

    /// The key of `project` after `key` in ring order (wrapping round), among those the ledger
    /// has not switched off: where a job's calls go when its key's calls fail.
    pub(super) async fn next_key_in(&self, project: &str, key: &KeyEntry) -> Option<KeyEntry> {
        let off = switched_off(self.sink).await;
        let ring = self.sink.services.ledger.keys();
        let keys: Vec<&KeyEntry> = ring
            .active()
            .map(|(_, e)| e)
            .filter(|e| e.project == project && !off.contains(&e.fingerprint()))
            .collect();
        let at = keys
            .iter()
            .position(|e| e.fingerprint() == key.fingerprint());
        let next = match at {
            Some(i) => keys.get(i + 1).or_else(|| keys.first()),
            None => keys.first(),
        };
        next.map(|e| (*e).clone())
    }

    /// Takes up the jobs the checkpoint records.
    pub(super) async fn resume(&mut self) -> Result<(), SeedError> {
        let checkpoints = self.sink.checkpoints;
        for (display, rec) in checkpoints.batches() {
            let Some(key) = self.key_for(&rec).await else {
                self.sink.progress.note(&format!(
                    "batch job {display} belongs to project {} and no key of it is configured now; its episodes are submitted again",
                    rec.project
                ));
                checkpoints.forget_batch(&display, self.now())?;
                continue;
            };
            self.report.resumed += 1;
            self.adopt(display, rec, key).await?;
        }
        Ok(())
    }

    /// A recorded job: polled if it has a name; else found by display name in its project's
    /// list (adopted), or forgotten if Gemini never accepted it. A list that fails leaves the
    /// record for the next round, so nothing is submitted twice on a guess.
    pub(super) async fn adopt(
        &mut self,
        display: String,
        mut rec: BatchRecord,
        key: KeyEntry,
    ) -> Result<(), SeedError> {
        let checkpoints = self.sink.checkpoints;
        if rec.name.is_none() {
            match self.client.list(&key).await {
                Ok(jobs) => {
                    match jobs
                        .into_iter()
                        .find(|j| j.display_name.as_deref() == Some(display.as_str()))
                    {
                        Some(j) => {
                            rec.name = Some(j.name);
                            checkpoints.record_batch(&display, rec.clone(), self.now())?;
                            self.report.adopted += 1;
                            self.sink.progress.note(&format!(
                                "batch job {display} was accepted before the last run stopped; polling it"
                            ));
                        }
                        None => {
                            checkpoints.forget_batch(&display, self.now())?;
                            let embed = embed::is_embed(&display);
                            for e in rec.episodes.iter().rev() {
                                self.requeue_one(&e.id, embed, true);
                            }
                            return Ok(());
                        }
                    }
                }
                Err(e) => {
                    let job = display.as_str();
                    tracing::warn!(job, error = %e, "could not list batch jobs; will look again");
                    // The key (or its route) may be what fails: the next look goes with the
                    // project's next key, so one broken key cannot hold the job forever.
                    let next = self.next_key_in(&rec.project, &key).await;
                    let tokens = self.record_tokens(&display, &rec);
                    self.live.push(Live {
                        display,
                        record: rec,
                        key: next.unwrap_or(key),
                        state: BatchState::Unknown,
                        tokens,
                    });
                    return Ok(());
                }
            }
        }
        let tokens = self.record_tokens(&display, &rec);
        self.live.push(Live {
            display,
            record: rec,
            key,
            state: BatchState::Unknown,
            tokens,
        });
        Ok(())
    }
}
