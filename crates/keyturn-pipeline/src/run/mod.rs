//! `keyturn seed`: transcripts in, a knowledge graph out — resumable, interruptible, bounded.
//!
//! Each transcript is an episode (podcast = parent folder, title = file stem, id = content hash
//! prefix). An episode goes parse → merge short cues → chunk → extract (LLM, JSON schema) →
//! resolve entities → embed chunks and entities → `episodes/<id>.json` (atomic) → checkpoint
//! (with the rotation state). The graph files are rebuilt from the episode files at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keyturn_core::Clock;
use keyturn_services::Services;
use keyturn_store::CheckpointStore;
use tokio::sync::watch;

use crate::outdir::OutDir;
use crate::progress::Progress;
use crate::term::safe;

mod episode;
mod error;
mod interactive;
mod report;
mod resume;
mod services;
mod tally;

pub use crate::inputs::{Discovered, Item, discover};
pub(crate) use crate::inputs::{hash_hex, verify_episode_file};
pub(crate) use episode::{
    Ctx, EpisodeError, Prepared, chunks_of, extraction_of, extraction_request, finish_episode,
    prepare,
};
pub use error::{SeedError, SeedErrorKind};
pub(crate) use interactive::process;
use interactive::run_interactive;
pub use report::{Counts, RunReport, Skipped, Stop};
pub use services::{RunState, SeedServices};
pub(crate) use tally::{Sink, Tally};

/// Where checkpoints live inside `--out`.
pub const CHECKPOINT_DIR: &str = ".keyturn-checkpoint";

/// How to seed.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Files and folders of transcripts.
    pub inputs: Vec<PathBuf>,
    /// Output folder.
    pub out: PathBuf,
    /// Episodes in flight.
    pub concurrency: usize,
    /// Requests in flight per episode.
    pub requests: usize,
    /// Extraction model.
    pub model: String,
    /// Embedding model.
    pub embedding_model: String,
    /// Embedding size.
    pub dimensions: Option<u32>,
    /// Target tokens per chunk.
    pub chunk_tokens: usize,
    /// Cues repeated between chunks.
    pub overlap_cues: usize,
    /// Cues shorter than this (characters) merge into the next.
    pub merge_chars: usize,
    /// Read file links that lead out of the input folder (folder links are never followed).
    pub follow_links: bool,
    /// Extraction through Gemini's Batch Mode instead of interactive calls (`--batch`).
    pub batch: Option<crate::batch::BatchOptions>,
}

/// The extraction model a seed uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "gemini-2.5-flash";
/// The embedding model a seed uses unless told otherwise.
pub const DEFAULT_EMBEDDING_MODEL: &str = "gemini-embedding-001";

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            out: PathBuf::from("out"),
            concurrency: 4,
            requests: 4,
            model: DEFAULT_MODEL.into(),
            embedding_model: DEFAULT_EMBEDDING_MODEL.into(),
            dimensions: Some(768),
            chunk_tokens: 700,
            overlap_cues: 1,
            merge_chars: 40,
            follow_links: false,
            batch: None,
        }
    }
}

/// Runs the pipeline on the factory's services: [`run_seed`] with [`SeedServices::of`].
pub async fn seed(
    opts: SeedOptions,
    services: &Services,
    interrupt: watch::Receiver<bool>,
    grace: Duration,
    progress: &Progress,
) -> Result<RunReport, SeedError> {
    run_seed(
        opts,
        &SeedServices::of(services),
        interrupt,
        grace,
        progress,
    )
    .await
}

/// Runs the pipeline. `interrupt` turns true on Ctrl-C/SIGTERM: no new episode starts, episodes in
/// flight get `grace` to finish, then everything is checkpointed.
///
/// Before anything is written: every input must exist, and the output folder must be keyturn's
/// ([`OutDir::claim`], held locked until the run ends).
pub async fn run_seed(
    opts: SeedOptions,
    services: &SeedServices<'_>,
    interrupt: watch::Receiver<bool>,
    grace: Duration,
    progress: &Progress,
) -> Result<RunReport, SeedError> {
    // The pool's clock: the report, the checkpoints and the ledger agree on the time.
    let clock: Arc<dyn Clock> = services.clock.clone();
    let started = clock.now_ms();
    let out = opts.out.clone();
    check_inputs(&opts.inputs)?;
    let (owned, checkpoints) = open_out(&out, started)?;

    let Discovered {
        items,
        skipped,
        links_skipped,
    } = discover(&opts.inputs, opts.follow_links);
    let found = items.len();
    let resume::Resumed {
        pending,
        redone,
        already_done,
    } = resume::resume(items, &checkpoints, &out, progress, clock.as_ref())?;
    let counts = Counts {
        found,
        links_skipped,
        already_done,
        redone: redone.len(),
        ..Counts::default()
    };

    let ctx = Ctx {
        llm: services.llm.clone(),
        embeddings: services.embeddings.clone(),
        opts: opts.clone(),
        chunks_done: AtomicUsize::new(0),
        invalid: AtomicUsize::new(0),
        clock: clock.clone(),
    };
    progress.expect(crate::plan::work_of(&pending, &opts));
    progress.start(
        pending.len() as u64,
        services.ledger.clone(),
        services.caller.clone(),
        clock.clone(),
        &opts.model,
    );
    let sink = Sink {
        out: &out,
        checkpoints: &checkpoints,
        services,
        progress,
        ctx: &ctx,
    };
    let mut tally = Tally {
        counts,
        skipped,
        ..Tally::default()
    };
    let (interrupted, batch) = match &opts.batch {
        Some(batch) => {
            let (interrupted, report) =
                crate::batch::run_batches(&sink, &mut tally, pending, batch, interrupt).await?;
            (interrupted, Some(report))
        }
        None => (
            run_interactive(&sink, &mut tally, pending, interrupt, grace).await?,
            None,
        ),
    };
    progress.finish();
    let Tally {
        mut counts,
        skipped,
        failed,
        episode_ms,
        stop,
    } = tally;
    let snapshot = services.ledger.snapshot().await.ok();
    if let Some(s) = snapshot {
        checkpoints.save_rotation(clock.now_ms(), s)?;
    }
    services.state.flush().await.map_err(SeedError::State)?;
    let (nodes, edges) = crate::graph::write_graph(&out)?;
    counts.skipped = skipped.len();
    counts.failed = failed.len();
    counts.invalid_extractions = ctx.invalid.load(Ordering::Relaxed);
    let result = match stop {
        Some(s) => s,
        None if interrupted => Stop::Interrupted,
        None if !failed.is_empty() => Stop::Failed {
            episodes: failed.len(),
        },
        None => Stop::Done,
    };
    let keys = services.caller.stats();
    let throttled = report::throttled(&keys);
    let cache = services.llm.cache_stats();
    let finished = clock.now_ms();
    let report = RunReport {
        started_at: keyturn_core::clock::ms_to_timestamp(started).to_string(),
        finished_at: keyturn_core::clock::ms_to_timestamp(finished).to_string(),
        duration_ms: (finished - started).max(0) as u64,
        result,
        items: counts,
        episode_ms,
        skipped,
        redone,
        failed,
        graph: BTreeMap::from([("nodes".to_owned(), nodes), ("edges".to_owned(), edges)]),
        keys,
        throttled,
        cache: BTreeMap::from([
            ("hits".to_owned(), cache.hits),
            ("misses".to_owned(), cache.misses),
        ]),
        state: services.state.describe(),
        batch,
    };
    report.write(&out)?;
    drop(owned);
    Ok(report)
}

/// Every input must exist before anything is written.
fn check_inputs(inputs: &[PathBuf]) -> Result<(), SeedError> {
    for input in inputs {
        if let Err(e) = std::fs::metadata(input) {
            return Err(SeedError::Input(
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "input {} does not exist; nothing was done",
                        safe(&input.display().to_string())
                    )
                } else {
                    format!("input {}: {e}", safe(&input.display().to_string()))
                },
            ));
        }
    }
    Ok(())
}

/// Claims the output folder (held locked while the returned [`OutDir`] lives), makes its
/// `episodes/` folder, clears what a killed run left half-written, and opens its checkpoint,
/// backed up as it was when this run started.
fn open_out(out: &Path, started: i64) -> Result<(OutDir, CheckpointStore), SeedError> {
    let owned = OutDir::claim(out, Some(CHECKPOINT_DIR))?;
    if owned.adopted() {
        tracing::info!(
            out = %safe(&out.display().to_string()),
            "output folder written by an earlier keyturn (it holds a checkpoint): marked as keyturn's"
        );
    }
    std::fs::create_dir_all(out.join("episodes")).map_err(|source| SeedError::CreateDir {
        path: out.join("episodes"),
        source,
    })?;
    // A run killed mid-write leaves its temp file (the episode itself is redone): clear them.
    for dir in [out.join("episodes"), out.join("graph")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(e.path()).ok();
            }
        }
    }
    let checkpoints = CheckpointStore::open(out.join(CHECKPOINT_DIR))?;
    checkpoints.backup(started)?;
    // One backup per run would pile up without end: keep the newest few.
    checkpoints.prune(keyturn_store::checkpoint::KEEP_BACKUPS)?;
    Ok((owned, checkpoints))
}
