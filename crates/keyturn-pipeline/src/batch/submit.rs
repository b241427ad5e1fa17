//! Submitting the queue as jobs over the projects that take them.

use keyturn_core::{AcquireError, Demand, Lease, Outcome};
use keyturn_gemini::batch::batch_refused;
use keyturn_gemini::check::KeyCheck;
use keyturn_gemini::{BatchRequest, BatchState, ErrorKind, GeminiError};
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
        for embed in [false, true] {
            self.submit_queue(tally, embed).await?;
        }
        Ok(())
    }

    /// Submits one queue (extraction, or with `embed` embeddings) as jobs.
    async fn submit_queue(&mut self, tally: &mut Tally, embed: bool) -> Result<(), SeedError> {
        let model = if embed {
            self.sink.ctx.opts.embedding_model.clone()
        } else {
            self.sink.ctx.opts.model.clone()
        };
        while tally.stop.is_none() {
            let Some(need) = self.front_tokens(embed) else {
                break;
            };
            if let Some(largest) = self.too_big(&model, need) {
                self.fail_too_big(tally, embed, &model, need, largest)
                    .await?;
                continue;
            }
            let slot = match self.pick_slot(&model, need) {
                limits::Pick::Slot(s) => s,
                // Room comes back as jobs end: the job goes after the next poll.
                limits::Pick::Wait => return Ok(()),
                limits::Pick::NoneLeft => return self.no_project_left(tally).await,
            };
            let project = self.slots[slot].project.clone();
            let (lease, key) = match self.lease_in(slot, &model).await {
                Ok(got) => got,
                Err(e) if matches!(e, AcquireError::Exhausted { .. }) => {
                    // Room comes back with time: the job goes after the next poll.
                    tracing::info!(project = %project, error = %e, "no key of the project may send now; submitting later");
                    return Ok(());
                }
                Err(e) => {
                    self.switch_off(slot, format!("no key of it can submit ({e})"));
                    continue;
                }
            };
            let budget = self.room(slot, &model);
            let (episodes, requests, tokens) = if embed {
                self.embeddings_job(budget)
            } else {
                self.extraction_job(&model, budget)
            };
            if episodes.is_empty() {
                self.settle(lease, Outcome::CallerFault).await;
                continue;
            }
            self.seq += 1;
            let display = format!(
                "keyturn-{}-{}{}",
                self.run_id,
                self.seq,
                if embed { embed::EMBED_SUFFIX } else { "" }
            );
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
            let sent = if embed {
                self.client
                    .submit_embeddings(&key, &model, &display, &requests)
                    .await
            } else {
                self.client.submit(&key, &model, &display, &requests).await
            };
            let outcome = match &sent {
                Ok(_) => Outcome::Success {
                    input_tokens: Some(0),
                },
                Err(e) => self.outcome_of(&key, e).await,
            };
            let dead = matches!(outcome, Outcome::KeyDead(_) | Outcome::ProjectDead(_));
            self.settle(lease, outcome).await;
            match sent {
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
                        tokens,
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
                        tokens,
                    });
                    return Ok(());
                }
                Err(e) if matches!(e.kind(), ErrorKind::Throttled(_)) => {
                    // A batch limit of the project (concurrent jobs, enqueued tokens) that the
                    // estimate missed: Gemini refused the job. The limit is lowered for the
                    // run, and the job goes again after the next poll, cut to the room left.
                    checkpoints.forget_batch(&display, self.now())?;
                    for ep in rec.episodes.iter().rev() {
                        self.queue_of(embed).push_front(ep.id.clone());
                    }
                    self.report.limit_refusals += 1;
                    self.learn(slot, &model, tokens, &e);
                    let job = display.as_str();
                    tracing::info!(job, project = %project, error = %e, "batch limit reached; submitting again later");
                    return Ok(());
                }
                Err(e) => {
                    checkpoints.forget_batch(&display, self.now())?;
                    for ep in rec.episodes.iter().rev() {
                        self.queue_of(embed).push_front(ep.id.clone());
                    }
                    if batch_refused(&e) {
                        self.switch_off(slot, format!("Gemini refused batch jobs there ({e})"));
                    } else if dead {
                        // The key, not the project: the ledger knows it now (a dead key is
                        // passed over), and the same project goes again with its next key.
                        self.sink.progress.note(&format!(
                            "batch job of project {project} refused on key '{}' ({e}); trying the project's next key",
                            key.label
                        ));
                        self.next_slot = slot;
                    } else {
                        // Anything else (a request Gemini will not take, a bare 403 on a key
                        // its probe found alive, a project switched off) would be refused
                        // again: the project takes no more jobs this run, rather than being
                        // asked the same in a loop.
                        self.switch_off(slot, e.to_string());
                    }
                }
            }
        }
        Ok(())
    }

    fn queue_of(&mut self, embed: bool) -> &mut VecDeque<String> {
        if embed {
            &mut self.embed_queue
        } else {
            &mut self.queue
        }
    }

    /// The estimated tokens of the queue's first episode (passing over ids no longer waiting
    /// for that queue); `None` when the queue is empty.
    fn front_tokens(&mut self, embed: bool) -> Option<u64> {
        loop {
            let id = self.queue_of(embed).front()?.clone();
            let tokens = match self.work.get(&id) {
                Some(w) if !embed => Some(w.tokens),
                Some(w) => w.embed.as_ref().map(|s| limits::embedding_tokens(&s.texts)),
                None => None,
            };
            match tokens {
                Some(t) => return Some(t),
                None => {
                    self.queue_of(embed).pop_front();
                }
            }
        }
    }

    /// The queue's first episode needs more tokens than any project may have enqueued: it is
    /// named and fails, or goes interactive with `--batch-fallback interactive`.
    async fn fail_too_big(
        &mut self,
        tally: &mut Tally,
        embed: bool,
        model: &str,
        need: u64,
        largest: u64,
    ) -> Result<(), SeedError> {
        let Some(id) = self.queue_of(embed).pop_front() else {
            return Ok(());
        };
        let Some(w) = self.work.remove(&id) else {
            return Ok(());
        };
        let item = w.item.clone();
        let why = format!(
            "too big for a batch job: its {} need about {need} input tokens (keyturn's estimate) and no project may have more than {largest} enqueued for {model}; rerun with --batch-fallback interactive, or raise [pipeline] batch_enqueued_tokens if the projects' limit is higher",
            if embed {
                "embedding texts"
            } else {
                "extraction requests"
            }
        );
        self.sink.progress.note(&format!(
            "episode '{}' is {why}",
            crate::term::safe(&item.title)
        ));
        let result = match (self.opts.fallback, embed) {
            (BatchFallback::Interactive, false) => {
                self.report.interactive_episodes += 1;
                process(self.sink.ctx, &item).await
            }
            (BatchFallback::Interactive, true) => self.finish_interactively(w).await,
            (BatchFallback::Batch, _) => Err(EpisodeError::Failed(why)),
        };
        tally.settle(self.sink, &item, result, 0).await?;
        self.release_held()
    }

    /// The next extraction job from the queue: whole episodes, up to the request limit and
    /// within `budget` estimated tokens (the first episode fits: [`Self::pick_slot`]).
    fn extraction_job(
        &mut self,
        model: &str,
        budget: Option<u64>,
    ) -> (Vec<BatchEpisode>, Vec<BatchRequest>, u64) {
        let mut episodes = Vec::new();
        let mut requests = Vec::new();
        let mut tokens = 0u64;
        let schema = extraction_schema();
        while let Some(id) = self.queue.front() {
            let Some(w) = self.work.get(id) else {
                self.queue.pop_front();
                continue;
            };
            let n = w.prepared.chunks.len();
            if !requests.is_empty() && requests.len() + n > self.opts.max_requests {
                break;
            }
            if !episodes.is_empty() && budget.is_some_and(|b| tokens + w.tokens > b) {
                break;
            }
            tokens += w.tokens;
            let p = episodes.len();
            for c in &w.prepared.chunks {
                let req = extraction_request(&w.item, c, model);
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
        (episodes, requests, tokens)
    }

    /// The next embeddings job: whole episodes' texts, up to the request limit and within
    /// `budget` estimated tokens.
    fn embeddings_job(
        &mut self,
        budget: Option<u64>,
    ) -> (Vec<BatchEpisode>, Vec<BatchRequest>, u64) {
        let opts = embed::options(self.sink.ctx);
        let mut episodes = Vec::new();
        let mut requests = Vec::new();
        let mut tokens = 0u64;
        while let Some(id) = self.embed_queue.front() {
            let Some(texts) = self
                .work
                .get(id)
                .and_then(|w| w.embed.as_ref())
                .map(|s| &s.texts)
            else {
                self.embed_queue.pop_front();
                continue;
            };
            let n = texts.len();
            if !requests.is_empty() && requests.len() + n > self.opts.max_requests {
                break;
            }
            let t = limits::embedding_tokens(texts);
            if !episodes.is_empty() && budget.is_some_and(|b| tokens + t > b) {
                break;
            }
            tokens += t;
            let p = episodes.len();
            for (i, t) in texts.iter().enumerate() {
                requests.push(BatchRequest {
                    key: format!("{p}-{i}"),
                    request: opts.batch_request(t),
                });
            }
            if let Some(w) = self.work.get(id) {
                episodes.push(BatchEpisode {
                    id: w.item.key.clone(),
                    hash: w.item.hash.clone(),
                    requests: n,
                });
            }
            self.embed_queue.pop_front();
        }
        (episodes, requests, tokens)
    }

    /// A key of the slot's project for one submit, chosen by the ledger (a lease pinned to the
    /// project): a key it knows dead, disabled by an operator or failing (its breaker open, its
    /// route down) is passed over, and what the submit meets is settled on the key that met it.
    /// The lease asks for no tokens: a job's tokens count against the batch limits, not the
    /// interactive ones.
    async fn lease_in(&self, slot: usize, model: &str) -> Result<(Lease, KeyEntry), AcquireError> {
        let demand = Demand::tokens(0).within_project_of(self.slots[slot].pin);
        let lease = self.sink.services.ledger.acquire(model, demand).await?;
        let key = self.sink.services.ledger.keys().get(lease.key()).cloned();
        match key {
            Some(key) => Ok((lease, key)),
            None => {
                self.settle(lease, Outcome::CallerFault).await;
                Err(AcquireError::AllKeysDisabled {
                    model: model.to_owned(),
                    detail: "the ledger leased a key its ring does not hold".into(),
                })
            }
        }
    }

    /// What the ledger learns from a refused submit. About the key or its project as a whole
    /// (dead, disabled, credits depleted, no answer): what an interactive call would teach. A
    /// bare 403 is settled by the same free probe an interactive call makes. The rest is about
    /// batches only and blames nothing: a free-tier project's `FAILED_PRECONDITION` says
    /// nothing about its interactive calls, and a batch limit's 429 nothing about their limits.
    async fn outcome_of(&self, key: &KeyEntry, e: &GeminiError) -> Outcome {
        match e.kind() {
            ErrorKind::DeadKey(_)
            | ErrorKind::ProjectDead(_)
            | ErrorKind::ProjectOff
            | ErrorKind::Transient => e.outcome(),
            ErrorKind::Unverified => {
                match keyturn_gemini::check::check_key(self.client.transport(), &key.key).await {
                    KeyCheck::Refused(reason) => Outcome::KeyDead(reason),
                    KeyCheck::Alive | KeyCheck::Unknown(_) => Outcome::CallerFault,
                }
            }
            _ => Outcome::CallerFault,
        }
    }

    async fn settle(&self, lease: Lease, outcome: Outcome) {
        if let Err(e) = self.sink.services.ledger.settle(lease, outcome).await {
            tracing::warn!(error = %e, "could not settle a batch submit with the ledger");
        }
    }

    /// Batch mode off for the slot's project for the rest of the run, said and reported.
    fn switch_off(&mut self, slot: usize, why: String) {
        let project = self.slots[slot].project.clone();
        self.sink.progress.note(&format!(
            "batch mode switched off for project {project}: {why}"
        ));
        self.report.projects_off.insert(project, why);
        self.slots[slot].off = true;
    }

    /// No project takes batch jobs: the queues go interactive, or fail.
    async fn no_project_left(&mut self, tally: &mut Tally) -> Result<(), SeedError> {
        let ctx = self.sink.ctx;
        let none = "no project of the pool can run batch jobs (each refused them: see the run report's batch.projects_off); rerun without --batch, or with --batch-fallback interactive";
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
                BatchFallback::Batch => Err(EpisodeError::Failed(none.into())),
            };
            tally.settle(self.sink, &item, result, 0).await?;
        }
        while let Some(id) = self.embed_queue.pop_front() {
            let Some(w) = self.work.remove(&id) else {
                continue;
            };
            let item = w.item.clone();
            let result = match self.opts.fallback {
                BatchFallback::Interactive => self.finish_interactively(w).await,
                BatchFallback::Batch => Err(EpisodeError::Failed(none.into())),
            };
            tally.settle(self.sink, &item, result, 0).await?;
        }
        self.release_held()
    }
}
