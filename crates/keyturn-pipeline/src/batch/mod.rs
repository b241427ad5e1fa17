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
//! - **A key's refusal is the key's.** Each submit goes with a key the ledger leases within the
//!   project (so a key it knows dead, disabled or failing is passed over) and is settled on it:
//!   a dead key (or a bare 403 its free probe confirms) is reported as any call would report
//!   it, and the project's next key takes the job; a transient failure counts toward that key's
//!   breaker. Batch-only refusals (`FAILED_PRECONDITION`, a batch limit's 429) blame nothing
//!   the interactive calls rely on. Polls and look-ups that fail move to the project's next key.
//! - **Polled with backoff**: from [`BatchOptions::poll`] doubling to [`BatchOptions::max_poll`],
//!   back to the start whenever a job changes state.
//!
//! Embeddings are interactive (`batchEmbedContents` on the pool), or with `[pipeline]
//! batch_embeddings` batch jobs too ([`embed`]).
//!
//! Test hook (never for users): `KEYTURN_TEST_ABORT_AFTER_SUBMIT=N` aborts the process right
//! after Gemini accepted the run's N-th job and before its name is checkpointed, which is how
//! `cargo xtask scenario batch` makes that crash deterministic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use keyturn_core::{KeyEntry, prices};
use keyturn_gemini::{BatchClient, BatchState};
use keyturn_store::BatchRecord;
use serde::Serialize;
use tokio::sync::watch;

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
    /// The embeddings go as batch jobs too (`[pipeline] batch_embeddings`).
    pub embeddings: bool,
    /// Most jobs a project has pending or running at once (`[pipeline] batch_max_jobs`).
    pub max_jobs: usize,
    /// Most estimated input tokens of a project's live jobs per model (`[pipeline]
    /// batch_enqueued_tokens`); `None`: the documented Tier 1 figure for the model where known
    /// ([`prices::batch_enqueued_tokens_of`]), else none until a refusal states it.
    pub enqueued_tokens: Option<u64>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_requests: 1_000,
            poll: Duration::from_secs(10),
            max_poll: Duration::from_secs(300),
            item_retries: 2,
            fallback: BatchFallback::Batch,
            embeddings: false,
            max_jobs: prices::BATCH_CONCURRENT_JOBS as usize,
            enqueued_tokens: None,
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
    /// Submits Gemini refused with a 429 (a batch limit met).
    pub limit_refusals: u64,
    /// Limits lowered for the run by those refusals, by project.
    pub limits_learned: BTreeMap<String, limits::Learned>,
}

/// A job this run waits for.
struct Live {
    display: String,
    record: BatchRecord,
    key: KeyEntry,
    state: BatchState,
    /// Estimated input tokens of its requests ([`limits`]).
    tokens: u64,
}

/// An episode still to extract (or, with batch embeddings, to embed).
struct Work {
    item: Item,
    prepared: Prepared,
    failures: u32,
    /// Estimated input tokens of its extraction requests ([`limits::extraction_tokens`]).
    tokens: u64,
    /// With `[pipeline] batch_embeddings`: where its embeddings stand.
    embed: Option<embed::Embedding>,
}

/// A project that may take jobs, and one key of it (the ledger picks the key each job goes
/// with among that project's).
struct Slot {
    project: String,
    pin: keyturn_core::KeyId,
    off: bool,
    /// Most jobs it may have live (`[pipeline] batch_max_jobs`, lowered by refusals).
    max_jobs: usize,
    /// Enqueued-token limits refusals stated, by model.
    learned_tokens: BTreeMap<String, u64>,
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
        embed_queue: VecDeque::new(),
        held: Vec::new(),
        live: Vec::new(),
        slots: keys::slots(sink, opts.max_jobs).await,
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
                let tokens = limits::extraction_tokens(&item, &prepared, &ctx.opts.model);
                d.work.insert(
                    item.key.clone(),
                    Work {
                        item,
                        prepared,
                        failures: 0,
                        tokens,
                        embed: None,
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
        if d.live.is_empty() && d.queue.is_empty() && d.embed_queue.is_empty() {
            // An episode still here waits for a job no longer live (a checkpoint that lost the
            // extraction job its embeddings' job came from): it is extracted again.
            let left: Vec<String> = d.work.keys().cloned().collect();
            if left.is_empty() || tally.stop.is_some() {
                break;
            }
            for id in left {
                if let Some(w) = d.work.get_mut(&id) {
                    w.embed = None;
                }
                d.queue.push_back(id);
            }
            continue;
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
        d.tell_progress();
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
    (d.report.estimated_cost_usd, d.report.interactive_cost_usd) = d.costs();
    d.tell_progress();
    Ok((interrupted, d.report))
}

mod embed;
mod keys;
mod limits;
mod poll;
mod submit;

struct Driver<'a, 'b> {
    sink: &'a Sink<'b>,
    client: BatchClient,
    opts: &'a BatchOptions,
    work: BTreeMap<String, Work>,
    queue: VecDeque<String>,
    /// Episodes extracted whose embeddings go in the next embeddings' job.
    embed_queue: VecDeque<String>,
    /// Succeeded extraction jobs kept in the checkpoint until their episodes' embeddings are
    /// in (a rerun reads their answers again), with those episodes.
    held: Vec<(String, Vec<String>)>,
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

    /// The tokens answered so far at the batch price and at the interactive price, if the
    /// model is in the price table.
    fn costs(&self) -> (Option<f64>, Option<f64>) {
        match prices::price_of(&self.sink.ctx.opts.model) {
            Some(p) => {
                let cost = p.cost(
                    self.report.input_tokens as f64,
                    self.report.output_tokens as f64,
                );
                (Some(cost * prices::BATCH_DISCOUNT), Some(cost))
            }
            None => (None, None),
        }
    }

    /// Tells the progress display (and through it `keyturn status`) where the jobs stand.
    fn tell_progress(&self) {
        let mut jobs: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (project, state) in self.last_state.values() {
            *jobs
                .entry(project.clone())
                .or_default()
                .entry(state.as_str().to_owned())
                .or_default() += 1;
        }
        let in_jobs: u64 = self
            .live
            .iter()
            .flat_map(|l| l.record.episodes.iter())
            .map(|e| e.requests as u64)
            .sum();
        let queued: u64 = self
            .queue
            .iter()
            .filter_map(|id| self.work.get(id))
            .map(|w| w.prepared.chunks.len() as u64)
            .chain(
                self.embed_queue
                    .iter()
                    .filter_map(|id| self.work.get(id)?.embed.as_ref())
                    .map(|s| s.texts.len() as u64),
            )
            .sum();
        let (estimated_cost_usd, interactive_cost_usd) = self.costs();
        self.sink.progress.batch(keyturn_store::runs::BatchView {
            at_ms: self.now(),
            jobs,
            items_done: self.report.items_ok,
            items_total: self.report.items_ok + in_jobs + queued,
            estimated_cost_usd,
            interactive_cost_usd,
        });
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
