//! Polling the live jobs and reading a succeeded job's answers into episodes.

use std::collections::{BTreeMap, HashMap};

use keyturn_gemini::{BatchState, ErrorKind, ItemResult};

use super::*;

impl Driver<'_, '_> {
    /// Polls every live job once; returns whether any changed state.
    pub(super) async fn poll_all(&mut self, tally: &mut Tally) -> Result<bool, SeedError> {
        let mut changed = false;
        let mut i = 0;
        while i < self.live.len() {
            let Some(name) = self.live[i].record.name.clone() else {
                i += 1;
                continue;
            };
            let got = self.client.get(&self.live[i].key, &name).await;
            let job = match got {
                Ok(job) => job,
                Err(e) if e.kind() == ErrorKind::CallerFault => {
                    // Gone (deleted, or never this project's): its episodes go again.
                    let l = self.live.remove(i);
                    self.sink.progress.note(&format!(
                        "batch job {name} cannot be read any more ({e}); its episodes are submitted again"
                    ));
                    self.requeue(&l)?;
                    changed = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(job = %name, error = %e, "polling a batch job failed; will poll again");
                    // With the project's next key: the key or its route may be what fails.
                    let (project, key) = (
                        self.live[i].record.project.clone(),
                        self.live[i].key.clone(),
                    );
                    if let Some(next) = self.next_key_in(&project, &key).await {
                        self.live[i].key = next;
                    }
                    i += 1;
                    continue;
                }
            };
            let l = &mut self.live[i];
            if job.state != l.state {
                changed = true;
                l.state = job.state;
                self.last_state
                    .insert(l.display.clone(), (l.record.project.clone(), job.state));
            }
            if !job.state.is_final() {
                i += 1;
                continue;
            }
            let l = self.live.remove(i);
            if job.state == BatchState::Succeeded {
                match self.client.results(&l.key, &job).await {
                    Ok(items) if embed::is_embed(&l.display) => {
                        self.collect_embeddings(tally, &l, &items).await?
                    }
                    Ok(items) => self.collect(tally, &l, &items).await?,
                    Err(e) => {
                        tracing::warn!(job = %name, error = %e, "reading a batch job's results failed; will read again");
                        self.live.insert(i, l);
                        i += 1;
                        continue;
                    }
                }
            } else {
                self.sink.progress.note(&format!(
                    "batch job {name} ended {}{}; its episodes are submitted again",
                    job.state.as_str(),
                    job.error
                        .as_deref()
                        .map(|e| format!(" ({})", crate::term::safe(e)))
                        .unwrap_or_default()
                ));
                self.requeue(&l)?;
            }
            self.progress_line();
        }
        Ok(changed)
    }

    fn requeue(&mut self, l: &Live) -> Result<(), SeedError> {
        let embed = embed::is_embed(&l.display);
        for e in &l.record.episodes {
            self.requeue_one(&e.id, embed, false);
        }
        self.sink.checkpoints.forget_batch(&l.display, self.now())?;
        Ok(())
    }

    fn progress_line(&self) {
        self.tell_progress();
        let mut by: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
        for l in &self.live {
            *by.entry(l.record.project.as_str())
                .or_default()
                .entry(l.state.as_str())
                .or_default() += 1;
        }
        let jobs: Vec<String> = by
            .iter()
            .map(|(p, st)| {
                let s: Vec<String> = st.iter().map(|(k, n)| format!("{k} {n}")).collect();
                format!("{p}: {}", s.join(", "))
            })
            .collect();
        self.sink.progress.note(&format!(
            "batch: {} requests answered, {} failed; jobs waiting — {}",
            self.report.items_ok,
            self.report.items_failed,
            if jobs.is_empty() {
                "none".to_owned()
            } else {
                jobs.join("; ")
            }
        ));
    }

    /// A succeeded job's answers into episodes, through the interactive path's own reading.
    async fn collect(
        &mut self,
        tally: &mut Tally,
        l: &Live,
        items: &[ItemResult],
    ) -> Result<(), SeedError> {
        let ctx = self.sink.ctx;
        let model = l.record.model.clone();
        // By the key Gemini echoed, else by position (answers come in request order).
        let mut by_key: HashMap<String, &ItemResult> = HashMap::new();
        let mut order = Vec::new();
        for (p, e) in l.record.episodes.iter().enumerate() {
            if let Some(w) = self.work.get(&e.id) {
                for c in &w.prepared.chunks {
                    order.push(format!("{p}-{}", c.index));
                }
            } else {
                // Finished since, or changed: its answers are passed over, in order.
                for c in 0..e.requests {
                    order.push(format!("{p}-?{c}"));
                }
            }
        }
        let keyed = items.iter().all(|it| it.key.is_some());
        for (n, it) in items.iter().enumerate() {
            let k = match (&it.key, keyed) {
                (Some(k), true) => k.clone(),
                _ => order.get(n).cloned().unwrap_or_default(),
            };
            by_key.insert(k, it);
        }
        let mut held = false;
        for (p, e) in l.record.episodes.iter().enumerate() {
            let Some(w) = self.work.get(&e.id) else {
                continue;
            };
            if w.item.hash != e.hash {
                continue;
            }
            let t0 = self.now();
            let mut answers = Vec::with_capacity(w.prepared.chunks.len());
            let mut item_error = None;
            for c in &w.prepared.chunks {
                match by_key.get(&format!("{p}-{}", c.index)).map(|it| &it.result) {
                    Some(Ok(v)) => {
                        self.report.items_ok += 1;
                        let (i, o) = usage_of(v);
                        self.report.input_tokens += i;
                        self.report.output_tokens += o;
                        answers.push((c.index, v.clone()));
                    }
                    Some(Err(why)) => {
                        self.report.items_failed += 1;
                        item_error = Some(why.clone());
                    }
                    None => {
                        self.report.items_failed += 1;
                        item_error = Some("the job returned no answer for it".into());
                    }
                }
            }
            let Some(mut w) = self.work.remove(&e.id) else {
                continue;
            };
            let item = w.item.clone();
            let result = if let Some(why) = item_error {
                w.failures += 1;
                match self.opts.fallback {
                    BatchFallback::Interactive => {
                        self.report.interactive_episodes += 1;
                        process(ctx, &item).await
                    }
                    BatchFallback::Batch if w.failures <= self.opts.item_retries => {
                        tracing::info!(episode = %crate::term::safe(&w.item.title), error = %crate::term::safe(&why), "batch items failed; the episode goes to a later job");
                        let id = w.item.key.clone();
                        self.work.insert(id.clone(), w);
                        self.queue.push_back(id);
                        continue;
                    }
                    BatchFallback::Batch => Err(EpisodeError::Failed(format!(
                        "batch items failed {} times; last: {}",
                        w.failures,
                        crate::term::safe(&why)
                    ))),
                }
            } else {
                let mut extractions = Vec::with_capacity(answers.len());
                let mut failed = None;
                for (c, v) in answers {
                    match extraction_of(ctx, &w.item, c, keyturn_llm::json_answer(&model, v)) {
                        Ok(x) => extractions.push((c, x)),
                        Err(err) => {
                            failed = Some(err);
                            break;
                        }
                    }
                }
                match failed {
                    Some(err) => Err(err),
                    None if self.opts.embeddings => {
                        match self.await_embeddings(w, extractions).await {
                            Some(result) => result,
                            None => {
                                held = true;
                                continue;
                            }
                        }
                    }
                    None => finish_episode(ctx, &item, w.prepared, extractions).await,
                }
            };
            tally
                .settle(self.sink, &item, result, self.now() - t0)
                .await?;
        }
        if held {
            // Its answers are these episodes' extractions until their embeddings are in: a
            // rerun reads them again from Gemini.
            let ids = l.record.episodes.iter().map(|e| e.id.clone()).collect();
            self.held.push((l.display.clone(), ids));
        } else {
            self.sink.checkpoints.forget_batch(&l.display, self.now())?;
        }
        self.release_held()
    }
}
