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
use keyturn_core::{Clock, ErrorKind as QuotaKind, SystemClock};
use keyturn_embeddings::{EmbedOptions, EmbeddingsService};
use keyturn_gemini::KeyCallStats;
use keyturn_llm::{GenerateRequest, LlmError, LlmService};
use keyturn_services::Services;
use keyturn_store::CheckpointStore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::graph::{
    ChunkOut, EPISODE_SCHEMA, EXTRACTION_INSTRUCTION, Episode, Extraction, SourceOut, episode_id,
    extraction_schema, resolve_episode,
};
use crate::progress::Progress;
use crate::transcript::{self, Format, clock};

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
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            out: PathBuf::from("out"),
            concurrency: 4,
            requests: 4,
            model: "gemini-2.5-flash".into(),
            embedding_model: "gemini-embedding-001".into(),
            dimensions: Some(768),
            chunk_tokens: 700,
            overlap_cues: 1,
            merge_chars: 40,
        }
    }
}

/// A transcript found in the inputs.
#[derive(Debug, Clone)]
pub struct Item {
    /// The file.
    pub path: PathBuf,
    /// Checkpoint id: the path as found.
    pub key: String,
    /// Podcast.
    pub podcast: String,
    /// Title.
    pub title: String,
    /// Format.
    pub format: Format,
    /// SHA-256 of the content.
    pub hash: String,
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
        match self {
            Self::Done => 0,
            Self::Failed { .. } => 1,
            Self::ExhaustedForDay { .. } => 3,
            Self::AllKeysInvalid { .. } => 4,
            Self::Interrupted => 130,
        }
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
    /// Could not be read as transcripts.
    pub skipped: usize,
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
}

fn hash_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Finds transcripts: files given directly, and `.vtt`/`.srt`/`.txt` files in folders
/// (recursively; hidden entries are passed over). A file given directly in another format is
/// skipped with a reason. Each file is hashed, not kept.
pub fn discover(inputs: &[PathBuf]) -> (Vec<Item>, Vec<Skipped>) {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut skipped = Vec::new();
    fn walk(dir: &Path, files: &mut Vec<PathBuf>, skipped: &mut Vec<Skipped>) {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
            Err(e) => {
                skipped.push(Skipped {
                    path: dir.display().to_string(),
                    reason: format!("cannot list the folder: {e}"),
                });
                return;
            }
        };
        entries.sort();
        for p in entries {
            if is_hidden(&p) {
                continue;
            }
            if p.is_dir() {
                walk(&p, files, skipped);
            } else if Format::of(&p).is_some() {
                files.push(p);
            }
        }
    }
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut files, &mut skipped);
        } else if input.exists() {
            if Format::of(input).is_some() {
                files.push(input.clone());
            } else {
                skipped.push(Skipped {
                    path: input.display().to_string(),
                    reason: "not a .vtt, .srt or .txt file".into(),
                });
            }
        } else {
            skipped.push(Skipped {
                path: input.display().to_string(),
                reason: "no such file or folder".into(),
            });
        }
    }
    files.sort();
    files.dedup();
    let mut items = Vec::new();
    for path in files {
        let Some(format) = Format::of(&path) else {
            continue;
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let podcast = path.parent().and_then(Path::file_name).map_or_else(
                    || "podcast".to_owned(),
                    |n| n.to_string_lossy().into_owned(),
                );
                let title = path
                    .file_stem()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                items.push(Item {
                    key: path.display().to_string(),
                    hash: hash_hex(&bytes),
                    path,
                    podcast,
                    title,
                    format,
                });
            }
            Err(e) => skipped.push(Skipped {
                path: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            }),
        }
    }
    (items, skipped)
}

/// Why an episode did not finish.
#[derive(Debug)]
enum EpisodeError {
    Skip(String),
    Stop(Stop),
    Failed(String),
}

fn classify_llm(model: &str, e: &LlmError) -> EpisodeError {
    let LlmError::Gemini(g) = e else {
        return EpisodeError::Failed(e.to_string());
    };
    match g.quota() {
        Some(q) if q.kind() == QuotaKind::ExhaustedForDay => {
            EpisodeError::Stop(Stop::ExhaustedForDay {
                model: model.to_owned(),
                until_ms: q.retry_at_ms().unwrap_or(0),
            })
        }
        Some(keyturn_core::AcquireError::AllKeysDisabled { detail, .. }) => {
            EpisodeError::Stop(Stop::AllKeysInvalid {
                detail: detail.clone(),
            })
        }
        _ => EpisodeError::Failed(g.to_string()),
    }
}

struct Ctx {
    llm: Arc<dyn LlmService>,
    embeddings: Arc<dyn EmbeddingsService>,
    opts: SeedOptions,
    chunks_done: AtomicUsize,
    invalid: AtomicUsize,
    clock: Arc<dyn Clock>,
}

async fn process(ctx: &Ctx, item: &Item) -> Result<Episode, EpisodeError> {
    let bytes =
        std::fs::read(&item.path).map_err(|e| EpisodeError::Skip(format!("cannot read: {e}")))?;
    let hash = hash_hex(&bytes);
    let cues =
        transcript::parse(item.format, &bytes).map_err(|e| EpisodeError::Skip(e.to_string()))?;
    drop(bytes);
    let cues = transcript::merge_short(cues, ctx.opts.merge_chars);
    let chunks = transcript::chunk(&cues, ctx.opts.chunk_tokens, ctx.opts.overlap_cues);
    let schema = extraction_schema();
    let model = ctx.opts.model.clone();
    let results: Vec<Result<(usize, Extraction), EpisodeError>> = futures::stream::iter(chunks.iter())
        .map(|c| {
            let schema = &schema;
            let model = &model;
            async move {
                let span = match (c.start_ms, c.end_ms) {
                    (Some(a), Some(b)) => format!(" ({}–{})", clock(a), clock(b)),
                    _ => String::new(),
                };
                let prompt = format!(
                    "Podcast: {}\nEpisode: {}\nTranscript excerpt{span}:\n\n{}",
                    item.podcast, item.title, c.text
                );
                let req = GenerateRequest::new(model.clone(), prompt).system(EXTRACTION_INSTRUCTION);
                let out = match ctx.llm.generate_json(&req, schema).await {
                    Ok((v, _)) => serde_json::from_value::<Extraction>(v).unwrap_or_else(|e| {
                        tracing::warn!(episode = %item.title, chunk = c.index, error = %e, "extraction had an unexpected shape; chunk skipped");
                        ctx.invalid.fetch_add(1, Ordering::Relaxed);
                        Extraction::default()
                    }),
                    Err(LlmError::InvalidJson { detail, .. }) => {
                        tracing::warn!(episode = %item.title, chunk = c.index, %detail, "extraction was not valid JSON; chunk skipped");
                        ctx.invalid.fetch_add(1, Ordering::Relaxed);
                        Extraction::default()
                    }
                    Err(e) => return Err(classify_llm(model, &e)),
                };
                ctx.chunks_done.fetch_add(1, Ordering::Relaxed);
                Ok((c.index, out))
            }
        })
        .buffer_unordered(ctx.opts.requests.max(1))
        .collect()
        .await;
    let mut extractions = Vec::with_capacity(results.len());
    for r in results {
        extractions.push(r?);
    }
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

/// Runs the pipeline. `interrupt` turns true on Ctrl-C/SIGTERM: no new episode starts, episodes in
/// flight get `grace` to finish, then everything is checkpointed.
pub async fn seed(
    opts: SeedOptions,
    services: &Services,
    mut interrupt: watch::Receiver<bool>,
    grace: Duration,
    progress: &Progress,
) -> Result<RunReport, String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let started = clock.now_ms();
    let out = opts.out.clone();
    std::fs::create_dir_all(out.join("episodes"))
        .map_err(|e| format!("cannot create {}: {e}", out.join("episodes").display()))?;
    // A run killed mid-write leaves its temp file (the episode itself is redone): clear them.
    for dir in [out.join("episodes"), out.join("graph")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                std::fs::remove_file(e.path()).ok();
            }
        }
    }
    let checkpoints = CheckpointStore::open(out.join(CHECKPOINT_DIR)).map_err(|e| e.to_string())?;
    checkpoints.backup(started).map_err(|e| e.to_string())?;

    let (items, mut skipped) = discover(&opts.inputs);
    let mut counts = Counts {
        found: items.len(),
        ..Counts::default()
    };
    let previous = checkpoints.checkpoint();
    let mut pending = Vec::new();
    for item in items {
        match previous.items.get(&item.key) {
            Some(r) if r.hash == item.hash => counts.already_done += 1,
            Some(r) => {
                // The file changed: its old episode goes, the new content is redone.
                let old = out
                    .join("episodes")
                    .join(format!("{}.json", episode_id(&r.hash)));
                std::fs::remove_file(&old).ok();
                checkpoints
                    .forget(&item.key, clock.now_ms())
                    .map_err(|e| e.to_string())?;
                pending.push(item);
            }
            None => pending.push(item),
        }
    }
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
    progress.start(
        pending.len() as u64,
        services.ledger.clone(),
        services.caller.clone(),
        &opts.model,
    );
    let ctx = &ctx;
    let mut stop: Option<Stop> = None;
    let mut failed: Vec<Skipped> = Vec::new();
    let mut episode_ms = BTreeMap::new();
    let mut queue = pending.into_iter();
    let mut running = FuturesUnordered::new();
    let mut interrupted = false;
    loop {
        while stop.is_none() && !interrupted && running.len() < opts.concurrency.max(1) {
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
        progress.set_chunks(ctx.chunks_done.load(Ordering::Relaxed));
        match result {
            Ok(ep) => {
                let path = out.join("episodes").join(format!("{}.json", ep.episode_id));
                let bytes = serde_json::to_vec_pretty(&ep).map_err(|e| e.to_string())?;
                keyturn_store::write_atomic(&path, &bytes, 0o644).map_err(|e| e.to_string())?;
                let snapshot = services.ledger.snapshot().await.ok();
                checkpoints
                    .record_finished(&item.key, &item.hash, clock.now_ms(), snapshot)
                    .map_err(|e| e.to_string())?;
                services.state.flush().await.ok();
                counts.processed += 1;
                counts.chunks += ep.chunks.len();
                counts.entities += ep.entities.len();
                counts.relationships += ep.relationships.len();
                counts.quotes += ep.quotes.len();
                episode_ms.insert(ep.episode_id.clone(), ms.max(0) as u64);
                progress.episode_done(&ep.title);
            }
            Err(EpisodeError::Skip(reason)) => {
                progress.note(&format!("skipped {}: {reason}", item.path.display()));
                skipped.push(Skipped {
                    path: item.path.display().to_string(),
                    reason,
                });
                progress.episode_done(&item.title);
            }
            Err(EpisodeError::Failed(e)) => {
                progress.note(&format!("failed {}: {e}", item.path.display()));
                failed.push(Skipped {
                    path: item.path.display().to_string(),
                    reason: e,
                });
                progress.episode_done(&item.title);
            }
            Err(EpisodeError::Stop(s)) => {
                if stop.is_none() {
                    stop = Some(s);
                }
            }
        }
    }
    drop(running);
    progress.finish();

    let snapshot = services.ledger.snapshot().await.ok();
    if let Some(s) = snapshot {
        checkpoints
            .save_rotation(clock.now_ms(), s)
            .map_err(|e| e.to_string())?;
    }
    services.state.flush().await.map_err(|e| e.to_string())?;
    let (nodes, edges) = crate::graph::write_graph(&out).map_err(|e| e.to_string())?;
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
        failed,
        graph: BTreeMap::from([("nodes".to_owned(), nodes), ("edges".to_owned(), edges)]),
        keys,
        throttled,
        cache: BTreeMap::from([
            ("hits".to_owned(), cache.hits),
            ("misses".to_owned(), cache.misses),
        ]),
        state: services.state.describe().to_owned(),
    };
    let bytes = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
    keyturn_store::write_atomic(&out.join("run-report.json"), &bytes, 0o644)
        .map_err(|e| e.to_string())?;
    Ok(report)
}
