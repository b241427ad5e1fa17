//! One episode's work, shared by the interactive and the batch paths: read and chunk it, the
//! extraction request of each chunk, what each answer contributes, then entities resolved and
//! everything embedded into the episode file's contents.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keyturn_core::{Clock, ErrorKind as QuotaKind};
use keyturn_embeddings::{EmbedOptions, EmbeddingsService};
use keyturn_gemini::ErrorKind as GeminiKind;
use keyturn_llm::{GenerateRequest, LlmError, LlmService};

use super::{Item, SeedOptions, Stop, hash_hex};
use crate::graph::{
    ChunkOut, EPISODE_SCHEMA, EXTRACTION_INSTRUCTION, Episode, Extraction, SourceOut, episode_id,
    resolve_episode,
};
use crate::term::safe;
use crate::transcript::{self, Format, clock};

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
