//! `keyturn seed --batch`: the extraction requests of every pending episode go to Gemini as
//! Batch Mode jobs (half the interactive price, Gemini's own batch limits), spread over the
//! projects that can run them, and come back into the very path an interactive run takes
//! ([`crate::run::extraction_of`], [`crate::run::finish_episode`], [`crate::run::Tally`]), so
//! the episode files, the graph and the exports are the same.
//!
//! - **Pinned.** A job belongs to the project of the key that submitted it; it is polled and
//!   read with a key of that project, never another.
//! - **Checkpointed before and after submit.** The job is recorded under a display name unique
//!   to this run before it is sent and again with its `batches/…` name the moment Gemini accepts
//!   it. A rerun polls the recorded jobs; a job recorded without a name (the run died between
//!   Gemini's answer and the record, or the answer was lost) is looked up by its display name in
//!   the project's job list and adopted if Gemini has it. So an episode is never submitted twice
//!   while its job lives.
//! - **Resubmitted when the job ends without answers.** A failed, cancelled or expired job's
//!   episodes go back to the queue; an episode with failed items goes to a later job (up to
//!   [`BatchOptions::item_retries`] times), or at once to an interactive call with
//!   `--batch-fallback interactive`.
//! - **Free-tier projects refuse batches.** A `FAILED_PRECONDITION` on submit switches batch off
//!   for that project for the run, says so, and its job goes to another project. With no project
//!   left, the rest is done interactively (`--batch-fallback interactive`) or fails.
//! - **Polled with backoff**: from [`BatchOptions::poll`] doubling to [`BatchOptions::max_poll`],
//!   back to the start whenever a job changes state.
//!
//! Embeddings stay interactive (`batchEmbedContents` on the pool), as the rest of an episode.
//!
//! Test hook (never for users): `KEYTURN_TEST_ABORT_AFTER_SUBMIT=N` aborts the process right
//! after Gemini accepted the run's N-th job and before its name is checkpointed, which is how
//! `cargo xtask scenario batch` makes that crash deterministic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use keyturn_core::{KeyEntry, prices};
use keyturn_gemini::batch::batch_refused;
use keyturn_gemini::{BatchClient, BatchRequest, BatchState, ErrorKind, ItemResult};
use keyturn_store::{BatchEpisode, BatchRecord};
use serde::Serialize;
use tokio::sync::watch;

use crate::graph::extraction_schema;
use crate::run::{
    EpisodeError, Item, Prepared, SeedError, Sink, Tally, extraction_of, extraction_request,
    finish_episode, prepare, process,
};

/// The environment variable of the test hook described in the module docs.
pub const ABORT_AFTER_SUBMIT_ENV: &str = "KEYTURN_TEST_ABORT_AFTER_SUBMIT";

/// What to do with an episode whose batch items failed, or when no project can run batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchFallback {
    /// Retry in a later job (default).
    #[default]
    Batch,
    /// Call Gemini interactively for it.
    Interactive,
}

/// How a batch run goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOptions {
    /// Most requests (chunks) per job; an episode's requests never straddle jobs.
    pub max_requests: usize,
    /// First poll interval (and after any job changed state).
    pub poll: Duration,
    /// Longest poll interval.
    pub max_poll: Duration,
    /// How often an episode whose items failed goes to a later job before it fails.
    pub item_retries: u32,
    /// See [`BatchFallback`].
    pub fallback: BatchFallback,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_requests: 1_000,
            poll: Duration::from_secs(10),
            max_poll: Duration::from_secs(300),
            item_retries: 2,
            fallback: BatchFallback::Batch,
        }
    }
}

/// `run-report.json`'s `batch` section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchReport {
    /// Jobs of this run (and those it resumed) by project, then by last state seen.
    pub jobs: BTreeMap<String, BTreeMap<String, u64>>,
    /// Jobs submitted by this run.
    pub submitted: u64,
    /// Jobs found in the checkpoint and polled again.
    pub resumed: u64,
    /// Of those, jobs recorded without a name and found again by display name.
    pub adopted: u64,
    /// Projects batch mode was switched off for, with why.
    pub projects_off: BTreeMap<String, String>,
    /// Requests answered with a response.
    pub items_ok: u64,
    /// Requests answered with an error (their episode retried).
    pub items_failed: u64,
    /// Episodes extracted interactively instead (`--batch-fallback interactive`).
    pub interactive_episodes: u64,
    /// Input tokens of the answered requests (`usageMetadata.promptTokenCount`).
    pub input_tokens: u64,
    /// Output tokens (candidates and thoughts).
    pub output_tokens: u64,
    /// Estimated cost of those tokens at the batch price (USD), if the model is in the table.
    pub estimated_cost_usd: Option<f64>,
    /// The same tokens at the interactive price.
    pub interactive_cost_usd: Option<f64>,
    /// The date of the price table the estimates come from.
    pub price_table_date: &'static str,
}

/// A job this run waits for.
struct Live {
    display: String,
    record: BatchRecord,
    key: KeyEntry,
    state: BatchState,
}

/// An episode still to extract.
struct Work {
    item: Item,
    prepared: Prepared,
    failures: u32,
}

/// A project that may take jobs, and the key its jobs go with.
struct Slot {
    project: String,
    key: KeyEntry,
    off: bool,
}

/// Runs the pending episodes' extraction as batch jobs; returns whether it was interrupted and
/// the batch report. Jobs still running when interrupted stay in the checkpoint, to be polled
/// by the next run.
pub(crate) async fn run_batches(
    sink: &Sink<'_>,
    tally: &mut Tally,
    pending: Vec<Item>,
    opts: &BatchOptions,
    mut interrupt: watch::Receiver<bool>,
) -> Result<(bool, BatchReport), SeedError> {
    let ctx = sink.ctx;
    let Some(client) = sink.services.batch.clone() else {
        return Err(SeedError::Input(
            "batch mode needs a batch client (SeedServices::batch); nothing was done".into(),
        ));
    };
    let mut d = Driver {
        sink,
        client,
        opts,
        work: BTreeMap::new(),
        queue: VecDeque::new(),
        live: Vec::new(),
        slots: slots(sink).await,
        next_slot: 0,
        seq: 0,
        run_id: ctx.clock.now_ms(),
        report: BatchReport {
            price_table_date: prices::PRICE_TABLE_DATE,
            ..BatchReport::default()
        },
        last_state: HashMap::new(),
    };
    for item in pending {
        match prepare(ctx, &item) {
            Ok(prepared) => {
                d.work.insert(
                    item.key.clone(),
                    Work {
                        item,
                        prepared,
                        failures: 0,
                    },
                );
            }
            Err(e) => tally.settle(sink, &item, Err(e), 0).await?,
        }
    }
    d.resume().await?;
    // An episode waits for a live job only if the job carries its present content: one changed
    // since it was submitted is submitted again (the job's answer for the old content is passed
    // over).
    let in_jobs: std::collections::HashSet<&str> = d
        .live
        .iter()
        .flat_map(|l| l.record.episodes.iter())
        .filter(|e| d.work.get(&e.id).is_some_and(|w| w.item.hash == e.hash))
        .map(|e| e.id.as_str())
        .collect();
    let queue: VecDeque<String> = d
        .work
        .keys()
        .filter(|k| !in_jobs.contains(k.as_str()))
        .cloned()
        .collect();
    d.queue = queue;

    let mut delay = opts.poll;
    let mut interrupted = false;
    loop {
        if tally.stop.is_some() {
            break;
        }
        d.submit_all(tally).await?;
        if d.live.is_empty() && d.queue.is_empty() {
            break;
        }
        let signalled = tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            changed = interrupt.changed() => match changed {
                Ok(()) => *interrupt.borrow(),
                // No one can signal any more: wait out the interval instead of spinning.
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    false
                }
            },
        };
        if signalled {
            interrupted = true;
            sink.progress.note(
                "stopping: batch jobs keep running at Gemini; rerun the same command to collect them",
            );
            break;
        }
        let changed = d.poll_all(tally).await?;
        delay = if changed {
            opts.poll
        } else {
            delay.saturating_mul(2).min(opts.max_poll)
        };
    }
    for l in &d.live {
        d.last_state
            .insert(l.display.clone(), (l.record.project.clone(), l.state));
    }
    let mut jobs: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (project, state) in d.last_state.values() {
        *jobs
            .entry(project.clone())
            .or_default()
            .entry(state.as_str().to_owned())
            .or_default() += 1;
    }
    d.report.jobs = jobs;
    if let Some(p) = prices::price_of(&ctx.opts.model) {
        let cost = p.cost(d.report.input_tokens as f64, d.report.output_tokens as f64);
        d.report.interactive_cost_usd = Some(cost);
        d.report.estimated_cost_usd = Some(cost * prices::BATCH_DISCOUNT);
    }
    Ok((interrupted, d.report))
}

/// The keys the ledger has switched off (dead, or disabled by an operator): they submit, poll
/// and read no job. When the ledger cannot say, none.
async fn switched_off(sink: &Sink<'_>) -> Vec<keyturn_core::Fingerprint> {
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

/// One project's first key (in ring order) that the ledger has not switched off, per project:
/// the key its jobs go with.
async fn slots(sink: &Sink<'_>) -> Vec<Slot> {
    let off = switched_off(sink).await;
    let ring = sink.services.ledger.keys();
    let mut out: Vec<Slot> = Vec::new();
    for (_, e) in ring.active() {
        if off.contains(&e.fingerprint()) {
            continue;
        }
        if !out.iter().any(|s| s.project == e.project) {
            out.push(Slot {
                project: e.project.clone(),
                key: e.clone(),
                off: false,
            });
        }
    }
    out
}

struct Driver<'a, 'b> {
    sink: &'a Sink<'b>,
    client: BatchClient,
    opts: &'a BatchOptions,
    work: BTreeMap<String, Work>,
    queue: VecDeque<String>,
    live: Vec<Live>,
    slots: Vec<Slot>,
    next_slot: usize,
    seq: u64,
    run_id: i64,
    report: BatchReport,
    /// Every job's project and last state seen, by display name.
    last_state: HashMap<String, (String, BatchState)>,
}

impl Driver<'_, '_> {
    fn now(&self) -> i64 {
        self.sink.ctx.clock.now_ms()
    }

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

    /// Takes up the jobs the checkpoint records.
    async fn resume(&mut self) -> Result<(), SeedError> {
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
    async fn adopt(
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
                            for e in rec.episodes.iter().rev() {
                                if self.work.contains_key(&e.id) && !self.queue.contains(&e.id) {
                                    self.queue.push_front(e.id.clone());
                                }
                            }
                            return Ok(());
                        }
                    }
                }
                Err(e) => {
                    let job = display.as_str();
                    tracing::warn!(job, error = %e, "could not list batch jobs; will look again");
                }
            }
        }
        self.live.push(Live {
            display,
            record: rec,
            key,
            state: BatchState::Unknown,
        });
        Ok(())
    }

    /// Submits the queue as jobs over the projects that take them.
    async fn submit_all(&mut self, tally: &mut Tally) -> Result<(), SeedError> {
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

    /// Polls every live job once; returns whether any changed state.
    async fn poll_all(&mut self, tally: &mut Tally) -> Result<bool, SeedError> {
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
        for e in &l.record.episodes {
            if self.work.contains_key(&e.id) && !self.queue.contains(&e.id) {
                self.queue.push_back(e.id.clone());
            }
        }
        self.sink.checkpoints.forget_batch(&l.display, self.now())?;
        Ok(())
    }

    fn progress_line(&self) {
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
                    None => finish_episode(ctx, &item, w.prepared, extractions).await,
                }
            };
            tally
                .settle(self.sink, &item, result, self.now() - t0)
                .await?;
        }
        self.sink.checkpoints.forget_batch(&l.display, self.now())?;
        Ok(())
    }
}

/// Input and output tokens of one answer's `usageMetadata`.
fn usage_of(response: &serde_json::Value) -> (u64, u64) {
    let u = |k: &str| {
        response
            .pointer(&format!("/usageMetadata/{k}"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    (
        u("promptTokenCount"),
        u("candidatesTokenCount").saturating_add(u("thoughtsTokenCount")),
    )
}

/// The test hook of the module docs: aborts after the `n`-th accepted job when the variable
/// names that number.
fn abort_after_submit_hook(n: u64) {
    if std::env::var(ABORT_AFTER_SUBMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        == Some(n)
    {
        tracing::error!(
            "{ABORT_AFTER_SUBMIT_ENV}={n}: aborting after submit, before the checkpoint (test hook)"
        );
        std::process::abort();
    }
}
