//! Submitting the queue as jobs over the projects that take them.

use keyturn_gemini::batch::batch_refused;
use keyturn_gemini::{BatchRequest, BatchState, ErrorKind};
use keyturn_store::{BatchEpisode, BatchRecord};

use super::*;
use crate::graph::extraction_schema;

impl Driver<'_, '_> {
    /// Submits the queue as jobs over the projects that take them.
    pub(super) async fn submit_all(&mut self, tally: &mut Tally) -> Result<(), SeedError> {
        // Jobs recorded without a name (an answer lost on submit) are resolved first.
        let unresolved: Vec<usize> = (0..self.live.len())
            .filter(|&i| self.live[i].record.name.is_none())
            .collect();
        for i in unresolved.into_iter().rev() {
            let l = self.live.remove(i);
            self.adopt(l.display, l.record, l.key).await?;
        }
        while !self.queue.is_empty() && tally.stop.is_none() {
            let Some(slot) = self.pick_slot() else {
                return self.no_project_left(tally).await;
            };
            let (key, project) = (
                self.slots[slot].key.clone(),
                self.slots[slot].project.clone(),
            );
            let mut episodes = Vec::new();
            let mut requests = Vec::new();
            let schema = extraction_schema();
            let model = self.sink.ctx.opts.model.clone();
            while let Some(id) = self.queue.front() {
                let Some(w) = self.work.get(id) else {
                    self.queue.pop_front();
                    continue;
                };
                let n = w.prepared.chunks.len();
                if !requests.is_empty() && requests.len() + n > self.opts.max_requests {
                    break;
                }
                let p = episodes.len();
                for c in &w.prepared.chunks {
                    let req = extraction_request(&w.item, c, &model);
                    requests.push(BatchRequest {
                        key: format!("{p}-{}", c.index),
                        request: keyturn_llm::json_request_body(&req, &schema),
                    });
                }
                episodes.push(BatchEpisode {
                    id: w.item.key.clone(),
                    hash: w.item.hash.clone(),
                    requests: n,
                });
                self.queue.pop_front();
            }
            if episodes.is_empty() {
                continue;
            }
            self.seq += 1;
            let display = format!("keyturn-{}-{}", self.run_id, self.seq);
            let mut rec = BatchRecord {
                name: None,
                project: project.clone(),
                key_fingerprint: key.fingerprint().to_string(),
                model: model.clone(),
                episodes,
                submitted_at_ms: self.now(),
            };
            let checkpoints = self.sink.checkpoints;
            checkpoints.record_batch(&display, rec.clone(), self.now())?;
            match self.client.submit(&key, &model, &display, &requests).await {
                Ok(job) => {
                    self.report.submitted += 1;
                    abort_after_submit_hook(self.report.submitted);
                    rec.name = Some(job.name.clone());
                    checkpoints.record_batch(&display, rec.clone(), self.now())?;
                    self.sink.progress.note(&format!(
                        "batch job {} on project {project}: {} episodes, {} requests",
                        job.name,
                        rec.episodes.len(),
                        requests.len()
                    ));
                    self.last_state
                        .insert(display.clone(), (project.clone(), job.state));
                    self.live.push(Live {
                        display,
                        record: rec,
                        key,
                        state: job.state,
                    });
                }
                Err(e) if e.kind() == ErrorKind::Transient => {
                    // Gemini may have accepted it: keep the record and look it up by display
                    // name before anything is sent again.
                    let job = display.as_str();
                    tracing::warn!(job, error = %e, "batch submit got no answer; will look the job up");
                    self.live.push(Live {
                        display,
                        record: rec,
                        key,
                        state: BatchState::Unknown,
                    });
                    return Ok(());
                }
                Err(e) if matches!(e.kind(), ErrorKind::Throttled(_)) => {
                    // A batch limit of the project (concurrent jobs, enqueued tokens): Gemini
                    // refused the job, so it goes again after the next poll, when jobs may
                    // have finished.
                    checkpoints.forget_batch(&display, self.now())?;
                    for ep in rec.episodes.iter().rev() {
                        self.queue.push_front(ep.id.clone());
                    }
                    let job = display.as_str();
                    tracing::info!(job, project = %project, error = %e, "batch limit reached; submitting again later");
                    return Ok(());
                }
                Err(e) => {
                    checkpoints.forget_batch(&display, self.now())?;
                    for ep in rec.episodes.iter().rev() {
                        self.queue.push_front(ep.id.clone());
                    }
                    let why = if batch_refused(&e) {
                        format!("Gemini refused batch jobs there ({e})")
                    } else {
                        e.to_string()
                    };
                    self.sink.progress.note(&format!(
                        "batch mode switched off for project {project}: {why}"
                    ));
                    self.report.projects_off.insert(project, why);
                    self.slots[slot].off = true;
                }
            }
        }
        Ok(())
    }

    fn pick_slot(&mut self) -> Option<usize> {
        let n = self.slots.len();
        for i in 0..n {
            let s = (self.next_slot + i) % n;
            if !self.slots[s].off {
                self.next_slot = s + 1;
                return Some(s);
            }
        }
        None
    }

    /// No project takes batch jobs: the queue goes interactive, or fails.
    async fn no_project_left(&mut self, tally: &mut Tally) -> Result<(), SeedError> {
        let ctx = self.sink.ctx;
        while let Some(id) = self.queue.pop_front() {
            let Some(w) = self.work.remove(&id) else {
                continue;
            };
            let item = w.item;
            let result = match self.opts.fallback {
                BatchFallback::Interactive => {
                    self.report.interactive_episodes += 1;
                    process(ctx, &item).await
                }
                BatchFallback::Batch => Err(EpisodeError::Failed(
                    "no project of the pool can run batch jobs (each refused them: see the run report's batch.projects_off); rerun without --batch, or with --batch-fallback interactive".into(),
                )),
            };
            tally.settle(self.sink, &item, result, 0).await?;
        }
        Ok(())
    }
}
