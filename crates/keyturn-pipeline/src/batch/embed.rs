//! Batch embeddings (`[pipeline] batch_embeddings`): an extracted episode's chunk and entity
//! texts go as an `asyncBatchEmbedContent` job, and the episode is built once its vectors are
//! in — through [`finish_episode`] itself, whose embeddings service is then one that answers
//! with the job's vectors, so the episode file is the one an interactive run writes.
//!
//! - **The texts** are the ones [`finish_episode`] embeds: it is run once with a service that
//!   only records what it is asked (the episode it builds is thrown away).
//! - **Checkpointed like extraction jobs.** An embeddings job is recorded under a display name
//!   ending in [`EMBED_SUFFIX`]; the extraction job its episodes came from stays recorded until
//!   their vectors are in, so a rerun reads both jobs' answers again and submits neither.
//! - **Per-item failures** send the episode's texts to a later job (or interactive embeddings
//!   with `--batch-fallback interactive`), as for extraction items.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use keyturn_embeddings::{EmbedError, EmbedOptions, EmbeddingsService};
use keyturn_gemini::ItemResult;

use super::*;
use crate::graph::{Episode, Extraction};
use crate::run::Ctx;

/// How an embeddings job's display name ends.
pub(super) const EMBED_SUFFIX: &str = "-embed";

/// Whether the job recorded under `display` is an embeddings job.
pub(super) fn is_embed(display: &str) -> bool {
    display.ends_with(EMBED_SUFFIX)
}

/// Where an episode's embeddings stand.
#[derive(Default)]
pub(super) struct Embedding {
    /// Its extractions, once read (a rerun may read its embeddings' job first).
    extractions: Option<Vec<(usize, Extraction)>>,
    /// The texts to embed, in [`finish_episode`]'s order.
    pub(super) texts: Vec<String>,
    /// The vectors, once a job answered them all.
    vectors: Option<Vec<Vec<f32>>>,
    /// Jobs whose items for it failed.
    failures: u32,
}

/// Records the texts it is asked to embed and answers with empty vectors.
#[derive(Debug, Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

#[async_trait]
impl EmbeddingsService for Recorder {
    async fn embed(&self, text: &str, _: &EmbedOptions) -> Result<Vec<f32>, EmbedError> {
        if let Ok(mut t) = self.0.lock() {
            t.push(text.to_owned());
        }
        Ok(Vec::new())
    }

    async fn embed_many(
        &self,
        texts: &[String],
        _: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if let Ok(mut t) = self.0.lock() {
            t.extend(texts.iter().cloned());
        }
        Ok(vec![Vec::new(); texts.len()])
    }
}

/// Answers with a job's vectors, for exactly the texts they were made for.
#[derive(Debug)]
struct Answered {
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

#[async_trait]
impl EmbeddingsService for Answered {
    async fn embed(&self, text: &str, opts: &EmbedOptions) -> Result<Vec<f32>, EmbedError> {
        let mut v = self.embed_many(&[text.to_owned()], opts).await?;
        Ok(v.pop().unwrap_or_default())
    }

    async fn embed_many(
        &self,
        texts: &[String],
        opts: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts != self.texts.as_slice() || self.vectors.len() != texts.len() {
            return Err(EmbedError::Mismatch {
                model: opts.model.clone(),
                got: self.vectors.len(),
                sent: texts.len(),
            });
        }
        Ok(self.vectors.clone())
    }
}

/// The run's context with another embeddings service.
fn with_embeddings(ctx: &Ctx, embeddings: Arc<dyn EmbeddingsService>) -> Ctx {
    Ctx {
        llm: ctx.llm.clone(),
        embeddings,
        opts: ctx.opts.clone(),
        chunks_done: AtomicUsize::new(0),
        invalid: AtomicUsize::new(0),
        clock: ctx.clock.clone(),
    }
}

fn copy(p: &Prepared) -> Prepared {
    Prepared {
        hash: p.hash.clone(),
        chunks: p.chunks.clone(),
    }
}

/// The embedding request options of a seed, as [`finish_episode`] sets them.
pub(super) fn options(ctx: &Ctx) -> EmbedOptions {
    let mut opts =
        EmbedOptions::new(ctx.opts.embedding_model.clone()).task_type("RETRIEVAL_DOCUMENT");
    if let Some(d) = ctx.opts.dimensions {
        opts = opts.dimensions(d);
    }
    opts
}

impl Driver<'_, '_> {
    /// An episode's extractions are in: its texts wait for an embeddings job (queued, unless
    /// a live job already carries them). Returns the episode when its vectors were already in
    /// (a rerun that read the embeddings' job first), else `None` (the episode is back in the
    /// work, waiting).
    pub(super) async fn await_embeddings(
        &mut self,
        mut w: Work,
        extractions: Vec<(usize, Extraction)>,
    ) -> Option<Result<Episode, EpisodeError>> {
        let recorder = Arc::new(Recorder::default());
        let ctx = with_embeddings(self.sink.ctx, recorder.clone());
        // Only the texts it asks for are wanted; the episode it builds is thrown away.
        let _ = finish_episode(&ctx, &w.item, copy(&w.prepared), extractions.clone()).await;
        let texts = recorder
            .0
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let mut stage = w.embed.take().unwrap_or_default();
        stage.texts = texts;
        stage.extractions = Some(extractions);
        if let Some(vectors) = stage.vectors.take() {
            return Some(self.finish_with(w, stage, vectors).await);
        }
        let id = w.item.key.clone();
        let carried = self.live.iter().any(|l| {
            is_embed(&l.display)
                && l.record
                    .episodes
                    .iter()
                    .any(|e| e.id == id && e.hash == w.item.hash)
        });
        w.embed = Some(stage);
        self.work.insert(id.clone(), w);
        if !carried && !self.embed_queue.contains(&id) {
            self.embed_queue.push_back(id);
        }
        None
    }

    /// The episode built with the job's vectors.
    async fn finish_with(
        &self,
        w: Work,
        stage: Embedding,
        vectors: Vec<Vec<f32>>,
    ) -> Result<Episode, EpisodeError> {
        let answered = Arc::new(Answered {
            texts: stage.texts,
            vectors,
        });
        let ctx = with_embeddings(self.sink.ctx, answered);
        finish_episode(
            &ctx,
            &w.item,
            w.prepared,
            stage.extractions.unwrap_or_default(),
        )
        .await
    }

    /// The episode with interactive embeddings, as an interactive run finishes it.
    pub(super) async fn finish_interactively(&mut self, w: Work) -> Result<Episode, EpisodeError> {
        self.report.interactive_episodes += 1;
        let extractions = w.embed.and_then(|s| s.extractions).unwrap_or_default();
        finish_episode(self.sink.ctx, &w.item, w.prepared, extractions).await
    }

    /// A succeeded embeddings job's vectors into episodes.
    pub(super) async fn collect_embeddings(
        &mut self,
        tally: &mut Tally,
        l: &Live,
        items: &[ItemResult],
    ) -> Result<(), SeedError> {
        let mut order = Vec::new();
        for (p, e) in l.record.episodes.iter().enumerate() {
            for i in 0..e.requests {
                order.push(format!("{p}-{i}"));
            }
        }
        let keyed = items.iter().all(|it| it.key.is_some());
        let mut by_key: HashMap<String, &ItemResult> = HashMap::new();
        for (n, it) in items.iter().enumerate() {
            let k = match (&it.key, keyed) {
                (Some(k), true) => k.clone(),
                _ => order.get(n).cloned().unwrap_or_default(),
            };
            by_key.insert(k, it);
        }
        for (p, e) in l.record.episodes.iter().enumerate() {
            if self.work.get(&e.id).is_none_or(|w| w.item.hash != e.hash) {
                continue;
            }
            let t0 = self.now();
            let mut vectors = Vec::with_capacity(e.requests);
            let mut item_error = None;
            for i in 0..e.requests {
                let got = by_key.get(&format!("{p}-{i}")).map(|it| &it.result);
                match got.map(|r| r.as_ref().map(keyturn_embeddings::vector_of)) {
                    Some(Ok(Some(v))) => {
                        self.report.items_ok += 1;
                        vectors.push(v);
                    }
                    Some(Ok(None)) => {
                        self.report.items_failed += 1;
                        item_error = Some("the answer held no embedding".to_owned());
                    }
                    Some(Err(why)) => {
                        self.report.items_failed += 1;
                        item_error = Some(why.clone());
                    }
                    None => {
                        self.report.items_failed += 1;
                        item_error = Some("the job returned no answer for it".to_owned());
                    }
                }
            }
            let Some(mut w) = self.work.remove(&e.id) else {
                continue;
            };
            let mut stage = w.embed.take().unwrap_or_default();
            let item = w.item.clone();
            let result = match item_error {
                None if stage.extractions.is_some() => {
                    if stage.texts.len() != vectors.len() {
                        Err(EpisodeError::Failed(format!(
                            "the embeddings job answered {} vectors for {} texts",
                            vectors.len(),
                            stage.texts.len()
                        )))
                    } else {
                        self.finish_with(w, stage, vectors).await
                    }
                }
                None => {
                    // A rerun read this job before the extraction job: the vectors wait.
                    stage.vectors = Some(vectors);
                    w.embed = Some(stage);
                    self.work.insert(e.id.clone(), w);
                    continue;
                }
                Some(why) => {
                    stage.failures += 1;
                    let failures = stage.failures;
                    let extracted = stage.extractions.is_some();
                    w.embed = Some(stage);
                    if !extracted {
                        // Submitted again once its extraction job is read.
                        self.work.insert(e.id.clone(), w);
                        continue;
                    }
                    match self.opts.fallback {
                        BatchFallback::Interactive => self.finish_interactively(w).await,
                        BatchFallback::Batch if failures <= self.opts.item_retries => {
                            tracing::info!(episode = %crate::term::safe(&item.title), error = %crate::term::safe(&why), "batch embedding items failed; the episode's texts go to a later job");
                            self.work.insert(e.id.clone(), w);
                            self.embed_queue.push_back(e.id.clone());
                            continue;
                        }
                        BatchFallback::Batch => Err(EpisodeError::Failed(format!(
                            "batch embedding items failed {failures} times; last: {}",
                            crate::term::safe(&why)
                        ))),
                    }
                }
            };
            tally
                .settle(self.sink, &item, result, self.now() - t0)
                .await?;
        }
        self.sink.checkpoints.forget_batch(&l.display, self.now())?;
        self.release_held()
    }

    /// Forgets the held extraction jobs none of whose episodes waits any more.
    pub(super) fn release_held(&mut self) -> Result<(), SeedError> {
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].1.iter().any(|id| self.work.contains_key(id)) {
                i += 1;
                continue;
            }
            let (display, _) = self.held.remove(i);
            self.sink.checkpoints.forget_batch(&display, self.now())?;
        }
        Ok(())
    }

    /// Puts an episode of a job that ended without answers back in line: for extraction, or,
    /// for an embeddings job, for embedding (when its extractions are in; else its extraction
    /// job, when read, queues it).
    pub(super) fn requeue_one(&mut self, id: &str, embed: bool, front: bool) {
        let Some(w) = self.work.get(id) else {
            return;
        };
        let queue = if embed {
            if w.embed.as_ref().is_none_or(|s| s.extractions.is_none()) {
                return;
            }
            &mut self.embed_queue
        } else {
            &mut self.queue
        };
        if queue.iter().any(|q| q == id) {
            return;
        }
        if front {
            queue.push_front(id.to_owned());
        } else {
            queue.push_back(id.to_owned());
        }
    }
}
