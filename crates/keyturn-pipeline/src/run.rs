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

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use keyturn_core::{Clock, ErrorKind as QuotaKind};
use keyturn_embeddings::{EmbedOptions, EmbeddingsService};
use keyturn_gemini::{ErrorKind as GeminiKind, KeyCallStats};
use keyturn_llm::{GenerateRequest, LlmError, LlmService};
use keyturn_services::Services;
use keyturn_store::{CheckpointError, CheckpointStore};
use serde::Serialize;
use tokio::sync::watch;

use crate::graph::{
    ChunkOut, EPISODE_SCHEMA, EXTRACTION_INSTRUCTION, Episode, Extraction, SourceOut, episode_id,
    extraction_schema, resolve_episode,
};
use crate::outdir::{OutDir, OutDirError};
use crate::progress::Progress;
use crate::term::safe;
use crate::transcript::{self, Format, clock};

pub use crate::inputs::{Discovered, Item, discover};
pub(crate) use crate::inputs::{hash_hex, verify_episode_file};

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

/// A file that was not processed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Why the run stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "stop", rename_all = "kebab-case")]
pub enum Stop {
    /// Every episode that could be read is done.
    Done,
    /// Some episodes failed for reasons other than quota.
    Failed {
        /// How many.
        episodes: usize,
    },
    /// Every key's quota for a needed model is used up for the day.
    ExhaustedForDay {
        /// The model.
        model: String,
        /// When capacity returns (Unix ms).
        until_ms: i64,
    },
    /// Every key was rejected.
    AllKeysInvalid {
        /// Labels and reasons.
        detail: String,
    },
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

impl Stop {
    /// The exit code DESIGN.md promises.
    pub fn exit_code(&self) -> u8 {
        crate::report::exit_code(self.into())
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Transcripts found.
    pub found: usize,
    /// Finished in an earlier run (skipped now).
    pub already_done: usize,
    /// Finished in this run.
    pub processed: usize,
    /// Could not be read as transcripts (links not followed included).
    pub skipped: usize,
    /// Symbolic links not followed (folder links, links out of the input folder, broken links).
    pub links_skipped: usize,
    /// Finished in an earlier run, but their episode file was missing or had changed: redone.
    pub redone: usize,
    /// Failed.
    pub failed: usize,
    /// Chunks extracted.
    pub chunks: usize,
    /// Chunks whose extraction was not valid JSON (their episode kept the rest).
    pub invalid_extractions: usize,
    /// Entities (per episode, before merging across episodes).
    pub entities: usize,
    /// Relationships.
    pub relationships: usize,
    /// Quotes.
    pub quotes: usize,
}

/// `run-report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339).
    pub finished_at: String,
    /// Duration.
    pub duration_ms: u64,
    /// Why it stopped.
    pub result: Stop,
    /// Totals.
    pub items: Counts,
    /// Episode processing times (ms), by episode id.
    pub episode_ms: BTreeMap<String, u64>,
    /// Files skipped, with reasons.
    pub skipped: Vec<Skipped>,
    /// Episodes finished in an earlier run and redone in this one, with why.
    pub redone: Vec<Skipped>,
    /// Episodes failed, with errors.
    pub failed: Vec<Skipped>,
    /// Graph size after the run.
    pub graph: BTreeMap<String, usize>,
    /// Per key (label and fingerprint): requests, outcomes, tokens.
    pub keys: Vec<KeyCallStats>,
    /// 429s by kind, all keys.
    pub throttled: BTreeMap<String, u64>,
    /// LLM cache hits and misses.
    pub cache: BTreeMap<String, u64>,
    /// Where state lives.
    pub state: String,
    /// Batch mode: jobs per project and state, items, tokens and the estimated cost against an
    /// interactive run (absent in an interactive run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<crate::batch::BatchReport>,
}

/// Why a run could not start or finish. Its [`SeedError::kind`] decides the exit code
/// ([`crate::report::exit_code`]); the cause is kept as the error's source, not flattened to text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// An input that does not exist or cannot be read: the user must change the command.
    #[error("{0}")]
    Input(String),
    /// The output folder cannot be used (not keyturn's, held by another run) or read.
    #[error(transparent)]
    OutDir(#[from] OutDirError),
    /// The checkpoint is unusable (a user must act) or could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A folder of the output could not be made.
    #[error("cannot create {}: {source}", safe(&.path.display().to_string()))]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An output file (an episode, the graph, the run report) could not be written.
    #[error(transparent)]
    Write(#[from] keyturn_core::StoreError),
    /// An output could not be encoded as JSON.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// Which output.
        what: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
    /// The rotation state could not be saved at the end of the run.
    #[error("cannot save the quota state: {0}")]
    State(#[source] keyturn_core::StoreError),
}

/// What kind of failure stopped a run before it could report (a report's own outcome is its
/// [`Stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeedErrorKind {
    /// The user must change something first.
    Usage,
    /// Anything else.
    Failed,
}

impl SeedError {
    /// The classification, which decides the exit code: an input that does not exist, an output
    /// folder keyturn does not own or another run holds, an unusable checkpoint are usage
    /// errors; a disk error is not.
    pub fn kind(&self) -> SeedErrorKind {
        match self {
            Self::Input(_) => SeedErrorKind::Usage,
            Self::OutDir(e) => e.kind(),
            Self::Checkpoint(e) if e.is_unusable() => SeedErrorKind::Usage,
            _ => SeedErrorKind::Failed,
        }
    }

    /// The exit code of its kind ([`crate::report::exit_code`]): 2 for a usage error, else 1.
    pub fn exit_code(&self) -> u8 {
        crate::report::exit_code(self.kind().into())
    }
}

/// Why an episode did not finish.
#[derive(Debug)]
pub(crate) enum EpisodeError {
    Skip(String),
    Stop(Stop),
    Failed(String),
}

/// What an episode's failed call means for the run, by the error's kind: the day used up stops
/// it (exit 3), every key dead stops it (exit 4), anything else fails this episode only.
pub(crate) fn classify_llm(model: &str, e: &LlmError) -> EpisodeError {
    let LlmError::Gemini(g) = e else {
        return EpisodeError::Failed(e.to_string());
    };
    match g.kind() {
        GeminiKind::NoCapacity(QuotaKind::ExhaustedForDay) => {
            EpisodeError::Stop(Stop::ExhaustedForDay {
                model: model.to_owned(),
                until_ms: g.quota().and_then(|q| q.retry_at_ms()).unwrap_or(0),
            })
        }
        GeminiKind::NoCapacity(QuotaKind::KeysDead) => EpisodeError::Stop(Stop::AllKeysInvalid {
            detail: match g.quota() {
                Some(keyturn_core::AcquireError::AllKeysDisabled { detail, .. }) => detail.clone(),
                _ => g.to_string(),
            },
        }),
        _ => EpisodeError::Failed(g.to_string()),
    }
}

/// The chunks a seed extracts from one transcript: parsed, short cues merged, chunked by the
/// options (`keyturn plan` counts the same ones).
pub(crate) fn chunks_of(
    format: Format,
    bytes: &[u8],
    opts: &SeedOptions,
) -> Result<Vec<transcript::Chunk>, String> {
    let cues = transcript::parse(format, bytes).map_err(|e| e.to_string())?;
    let cues = transcript::merge_short(cues, opts.merge_chars);
    Ok(transcript::chunk(
        &cues,
        opts.chunk_tokens,
        opts.overlap_cues,
    ))
}

/// The extraction request a seed sends for one chunk (the JSON schema is added by
/// `generate_json`; it is not input text): `keyturn plan` estimates its input tokens.
pub(crate) fn extraction_request(
    item: &Item,
    c: &transcript::Chunk,
    model: &str,
) -> GenerateRequest {
    let span = match (c.start_ms, c.end_ms) {
        (Some(a), Some(b)) => format!(" ({}–{})", clock(a), clock(b)),
        _ => String::new(),
    };
    let prompt = format!(
        "Podcast: {}\nEpisode: {}\nTranscript excerpt{span}:\n\n{}",
        item.podcast, item.title, c.text
    );
    GenerateRequest::new(model.to_owned(), prompt).system(EXTRACTION_INSTRUCTION)
}

pub(crate) struct Ctx {
    pub(crate) llm: Arc<dyn LlmService>,
    pub(crate) embeddings: Arc<dyn EmbeddingsService>,
    pub(crate) opts: SeedOptions,
    pub(crate) chunks_done: AtomicUsize,
    pub(crate) invalid: AtomicUsize,
    pub(crate) clock: Arc<dyn Clock>,
}

/// An episode read and chunked, ready for extraction.
pub(crate) struct Prepared {
    /// Content hash.
    pub(crate) hash: String,
    /// Its chunks.
    pub(crate) chunks: Vec<transcript::Chunk>,
}

/// Reads and chunks an episode.
pub(crate) fn prepare(ctx: &Ctx, item: &Item) -> Result<Prepared, EpisodeError> {
    let bytes =
        std::fs::read(&item.source).map_err(|e| EpisodeError::Skip(format!("cannot read: {e}")))?;
    let hash = hash_hex(&bytes);
    let chunks = chunks_of(item.format, &bytes, &ctx.opts).map_err(EpisodeError::Skip)?;
    Ok(Prepared { hash, chunks })
}

/// What one chunk's answer contributes, however it came (a call or a batch job's item): its
/// extraction; an answer that is not JSON or not of the schema's shape is logged and counts as
/// an empty extraction, as it always has; any other failure is the episode's.
pub(crate) fn extraction_of(
    ctx: &Ctx,
    item: &Item,
    chunk: usize,
    answer: Result<(serde_json::Value, keyturn_llm::Generation), LlmError>,
) -> Result<Extraction, EpisodeError> {
    let out = match answer {
        Ok((v, _)) => serde_json::from_value::<Extraction>(v).unwrap_or_else(|e| {
            tracing::warn!(episode = %safe(&item.title), chunk, error = %safe(&e.to_string()), "extraction had an unexpected shape; chunk skipped");
            ctx.invalid.fetch_add(1, Ordering::Relaxed);
            Extraction::default()
        }),
        Err(LlmError::InvalidJson { detail, .. }) => {
            tracing::warn!(episode = %safe(&item.title), chunk, detail = %safe(&detail), "extraction was not valid JSON; chunk skipped");
            ctx.invalid.fetch_add(1, Ordering::Relaxed);
            Extraction::default()
        }
        Err(e) => return Err(classify_llm(&ctx.opts.model, &e)),
    };
    ctx.chunks_done.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// An episode the interactive way: each chunk's extraction a call of its own.
pub(crate) async fn process(ctx: &Ctx, item: &Item) -> Result<Episode, EpisodeError> {
    let prepared = prepare(ctx, item)?;
    let schema = extraction_schema();
    let model = ctx.opts.model.clone();
    let results: Vec<Result<(usize, Extraction), EpisodeError>> =
        futures::stream::iter(prepared.chunks.iter())
            .map(|c| {
                let schema = &schema;
                let model = &model;
                async move {
                    let req = extraction_request(item, c, model);
                    let answer = ctx.llm.generate_json(&req, schema).await;
                    Ok((c.index, extraction_of(ctx, item, c.index, answer)?))
                }
            })
            .buffer_unordered(ctx.opts.requests.max(1))
            .collect()
            .await;
    let mut extractions = Vec::with_capacity(results.len());
    for r in results {
        extractions.push(r?);
    }
    finish_episode(ctx, item, prepared, extractions).await
}

/// The rest of an episode once every chunk has its extraction, whichever way they came:
/// entities resolved, chunks and entities embedded, the episode built.
pub(crate) async fn finish_episode(
    ctx: &Ctx,
    item: &Item,
    prepared: Prepared,
    mut extractions: Vec<(usize, Extraction)>,
) -> Result<Episode, EpisodeError> {
    let Prepared { hash, chunks } = prepared;
    extractions.sort_by_key(|(i, _)| *i);
    let (mut entities, relationships, quotes, dropped) = resolve_episode(&extractions);

    let mut opts =
        EmbedOptions::new(ctx.opts.embedding_model.clone()).task_type("RETRIEVAL_DOCUMENT");
    if let Some(d) = ctx.opts.dimensions {
        opts = opts.dimensions(d);
    }
    let mut texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
    texts.extend(entities.iter().map(|e| {
        if e.description.is_empty() {
            e.name.clone()
        } else {
            format!("{}: {}", e.name, e.description)
        }
    }));
    let vectors = ctx
        .embeddings
        .embed_many(&texts, &opts)
        .await
        .map_err(|e| match e {
            keyturn_embeddings::EmbedError::Gemini(g) => {
                classify_llm(&ctx.opts.embedding_model, &LlmError::Gemini(g))
            }
            other => EpisodeError::Failed(other.to_string()),
        })?;
    let mut vectors = vectors.into_iter();
    let chunks_out: Vec<ChunkOut> = chunks
        .iter()
        .map(|c| ChunkOut {
            index: c.index,
            start: c.start_ms.map(clock),
            end: c.end_ms.map(clock),
            text: c.text.clone(),
            embedding: vectors.next().unwrap_or_default(),
        })
        .collect();
    for e in &mut entities {
        e.embedding = vectors.next().unwrap_or_default();
    }
    Ok(Episode {
        schema: EPISODE_SCHEMA,
        episode_id: episode_id(&hash),
        podcast: item.podcast.clone(),
        title: item.title.clone(),
        source: SourceOut {
            path: item.path.display().to_string(),
            format: item.format.to_string(),
            content_hash: hash,
        },
        processed_at: ctx.clock.now().to_string(),
        model: ctx.opts.model.clone(),
        embedding_model: ctx.opts.embedding_model.clone(),
        chunks: chunks_out,
        entities,
        relationships,
        quotes,
        dropped_relationships: dropped,
    })
}

/// Where a run keeps the rotation state: saved after each episode and at the end, and named in
/// the run report. The factory's [`keyturn_services::StateHandle`] is one; a test can give its own.
#[async_trait::async_trait]
pub trait RunState: Send + Sync {
    /// Saves the state now (the file backend; Redis is always current).
    async fn flush(&self) -> Result<(), keyturn_core::StoreError>;
    /// Where it lives (the state file's path, or the Redis server and namespace).
    fn describe(&self) -> String;
}

#[async_trait::async_trait]
impl RunState for keyturn_services::StateHandle {
    async fn flush(&self) -> Result<(), keyturn_core::StoreError> {
        keyturn_services::StateHandle::flush(self).await
    }

    fn describe(&self) -> String {
        keyturn_services::StateHandle::describe(self).to_owned()
    }
}

/// What a run uses, each behind its seam so the executor can be driven with mocks: the LLM and
/// embeddings services, the ledger (its snapshot goes into each checkpoint; the progress line
/// reads its status), the caller (per-key statistics for the progress line and the report),
/// where the rotation state is saved, and the one clock.
#[derive(Clone)]
pub struct SeedServices<'a> {
    /// Extraction.
    pub llm: Arc<dyn LlmService>,
    /// Embeddings of chunks and entities.
    pub embeddings: Arc<dyn EmbeddingsService>,
    /// The pool's ledger.
    pub ledger: Arc<dyn keyturn_core::QuotaLedger>,
    /// The caller both services share.
    pub caller: Arc<dyn keyturn_gemini::GeminiCall>,
    /// Where the rotation state is saved.
    pub state: &'a dyn RunState,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Batch Mode jobs, with the pool's transport (needed only with [`SeedOptions::batch`]).
    pub batch: Option<keyturn_gemini::BatchClient>,
}

impl std::fmt::Debug for SeedServices<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedServices")
            .field("llm", &self.llm)
            .field("embeddings", &self.embeddings)
            .field("state", &self.state.describe())
            .finish_non_exhaustive()
    }
}

impl<'a> SeedServices<'a> {
    /// The factory's services, on the pool's one clock.
    pub fn of(services: &'a Services) -> Self {
        Self {
            llm: services.llm.clone(),
            embeddings: services.embeddings.clone(),
            ledger: services.ledger.clone(),
            caller: services.caller.clone(),
            state: &services.state,
            clock: services.clock.clone(),
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
    for input in &opts.inputs {
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
    let owned = OutDir::claim(&out, Some(CHECKPOINT_DIR))?;
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

    let Discovered {
        items,
        skipped,
        links_skipped,
    } = discover(&opts.inputs, opts.follow_links);
    let mut counts = Counts {
        found: items.len(),
        links_skipped,
        ..Counts::default()
    };
    let previous = checkpoints.checkpoint();
    // Output hashes recorded per episode file: items with the same content share one file.
    let mut recorded: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in previous.items.values() {
        if let Some(sha) = &r.output_sha256 {
            recorded.entry(r.hash.as_str()).or_default().push(sha);
        }
    }
    let mut pending = Vec::new();
    let mut redone: Vec<Skipped> = Vec::new();
    let mut learned: Vec<(String, String)> = Vec::new();
    for item in items {
        match previous.items.get(&item.key) {
            Some(r) if r.hash == item.hash => {
                // A checkpoint is trusted only while the episode file it vouches for is there
                // and is what was written.
                let file = out
                    .join("episodes")
                    .join(format!("{}.json", episode_id(&r.hash)));
                let shas = recorded.get(r.hash.as_str()).map_or(&[][..], Vec::as_slice);
                match verify_episode_file(&file, r, shas) {
                    Ok(sha) => {
                        counts.already_done += 1;
                        if let Some(sha) = sha {
                            learned.push((item.key.clone(), sha));
                        }
                    }
                    Err(why) => {
                        progress.note(&format!(
                            "redoing {} ({}): {why}",
                            item.title,
                            item.path.display()
                        ));
                        checkpoints.forget(&item.key, clock.now_ms())?;
                        redone.push(Skipped {
                            path: item.path.display().to_string(),
                            reason: why,
                        });
                        pending.push(item);
                    }
                }
            }
            Some(r) => {
                // The file changed: its old episode goes, the new content is redone.
                let old = out
                    .join("episodes")
                    .join(format!("{}.json", episode_id(&r.hash)));
                std::fs::remove_file(&old).ok();
                checkpoints.forget(&item.key, clock.now_ms())?;
                pending.push(item);
            }
            None => pending.push(item),
        }
    }
    checkpoints.record_outputs(&learned, clock.now_ms())?;
    counts.redone = redone.len();
    if counts.already_done > 0 {
        tracing::info!(
            finished = counts.already_done,
            left = pending.len(),
            "resuming: finished episodes are kept"
        );
    }

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
    let mut throttled: BTreeMap<String, u64> = BTreeMap::new();
    for k in &keys {
        for (kind, n) in &k.throttled {
            *throttled.entry(kind.clone()).or_default() += n;
        }
    }
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
    let bytes = serde_json::to_vec_pretty(&report).map_err(|source| SeedError::Encode {
        what: "the run report",
        source,
    })?;
    keyturn_store::write_atomic(&out.join("run-report.json"), &bytes, 0o644)?;
    drop(owned);
    Ok(report)
}

/// What a run has done so far.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) counts: Counts,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) failed: Vec<Skipped>,
    pub(crate) episode_ms: BTreeMap<String, u64>,
    /// Why the run must stop (the day used up, every key dead), once known.
    pub(crate) stop: Option<Stop>,
}

/// Where finished episodes go: their files, the checkpoint, the progress display.
pub(crate) struct Sink<'a> {
    pub(crate) out: &'a Path,
    pub(crate) checkpoints: &'a CheckpointStore,
    pub(crate) services: &'a SeedServices<'a>,
    pub(crate) progress: &'a Progress,
    pub(crate) ctx: &'a Ctx,
}

impl Tally {
    /// One episode's end, however it was extracted: a finished episode is written atomically
    /// and checkpointed with the rotation state before the next one is counted.
    pub(crate) async fn settle(
        &mut self,
        sink: &Sink<'_>,
        item: &Item,
        result: Result<Episode, EpisodeError>,
        ms: i64,
    ) -> Result<(), SeedError> {
        let progress = sink.progress;
        progress.set_chunks(sink.ctx.chunks_done.load(Ordering::Relaxed));
        match result {
            Ok(ep) => {
                let path = sink
                    .out
                    .join("episodes")
                    .join(format!("{}.json", ep.episode_id));
                let bytes = serde_json::to_vec_pretty(&ep).map_err(|source| SeedError::Encode {
                    what: "an episode",
                    source,
                })?;
                keyturn_store::write_atomic(&path, &bytes, 0o644)?;
                let snapshot = sink.services.ledger.snapshot().await.ok();
                sink.checkpoints.record_finished(
                    &item.key,
                    &item.hash,
                    Some(&hash_hex(&bytes)),
                    sink.ctx.clock.now_ms(),
                    snapshot,
                )?;
                sink.services.state.flush().await.ok();
                let counts = &mut self.counts;
                counts.processed += 1;
                counts.chunks += ep.chunks.len();
                counts.entities += ep.entities.len();
                counts.relationships += ep.relationships.len();
                counts.quotes += ep.quotes.len();
                self.episode_ms
                    .insert(ep.episode_id.clone(), ms.max(0) as u64);
                progress.episode("done", &ep.title);
            }
            Err(EpisodeError::Skip(reason)) => {
                progress.note(&format!("skipped {}: {reason}", item.path.display()));
                self.skipped.push(Skipped {
                    path: item.path.display().to_string(),
                    reason,
                });
                progress.episode("skipped", &item.title);
            }
            Err(EpisodeError::Failed(e)) => {
                progress.note(&format!("failed {}: {e}", item.path.display()));
                self.failed.push(Skipped {
                    path: item.path.display().to_string(),
                    reason: e,
                });
                progress.episode("failed", &item.title);
            }
            Err(EpisodeError::Stop(s)) => {
                if self.stop.is_none() {
                    self.stop = Some(s);
                }
            }
        }
        Ok(())
    }
}

/// The interactive run: episodes in flight up to the concurrency, each chunk a call. Returns
/// whether it was interrupted.
async fn run_interactive(
    sink: &Sink<'_>,
    tally: &mut Tally,
    pending: Vec<Item>,
    mut interrupt: watch::Receiver<bool>,
    grace: Duration,
) -> Result<bool, SeedError> {
    let ctx = sink.ctx;
    let progress = sink.progress;
    let opts = &ctx.opts;
    let mut queue = pending.into_iter();
    let mut running = FuturesUnordered::new();
    let mut interrupted = false;
    loop {
        while tally.stop.is_none() && !interrupted && running.len() < opts.concurrency.max(1) {
            let Some(item) = queue.next() else { break };
            running.push(async move {
                let t0 = ctx.clock.now_ms();
                let r = process(ctx, &item).await;
                (item, r, ctx.clock.now_ms() - t0)
            });
        }
        if running.is_empty() {
            break;
        }
        let next = if interrupted {
            match tokio::time::timeout(grace, running.next()).await {
                Ok(n) => n,
                Err(_) => {
                    tracing::warn!(
                        in_flight = running.len(),
                        "episodes still running after the grace period; cancelled (they will be redone)"
                    );
                    break;
                }
            }
        } else {
            tokio::select! {
                n = running.next() => n,
                _ = interrupt.changed() => {
                    if *interrupt.borrow() {
                        interrupted = true;
                        progress.note("stopping: no new episodes; finishing those in flight");
                    }
                    continue;
                }
            }
        };
        let Some((item, result, ms)) = next else {
            break;
        };
        tally.settle(sink, &item, result, ms).await?;
    }
    drop(running);
    Ok(interrupted)
}
