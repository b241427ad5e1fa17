//! `keyturn plan`: what a seed of these inputs would ask of each model, read exactly as `seed`
//! reads them (the same discovery, parsers and chunking, skipping what a checkpoint in `--out`
//! says is done), and the capacity the pool has for it. Nothing is sent; the arithmetic is
//! `keyturn_core::plan`.

use std::collections::BTreeMap;
use std::path::Path;

use keyturn_core::plan::{Capacity, Work};
use keyturn_core::{KeyRing, LimitTable, PoolStatus};
use keyturn_store::{CheckpointError, CheckpointStore};
use serde::Serialize;

use crate::graph::episode_id;
use crate::run::{
    CHECKPOINT_DIR, Discovered, Item, SeedOptions, chunks_of, discover, extraction_request,
    verify_episode_file,
};

/// Entities a seed embeds per extracted chunk, after merging the same entity within an
/// episode. An assumption, not a measurement: a 700-token chunk of conversation names a handful
/// of people, organizations and topics, and episodes repeat them.
pub const ENTITIES_PER_CHUNK: u64 = 3;

/// Bytes of one entity's embedded text ("name: description").
pub const ENTITY_TEXT_BYTES: u64 = 80;

/// Output tokens per extraction request, for the cost only: the JSON (entities, relationships,
/// quotes) and the thinking tokens Gemini 2.5 models bill as output. An assumption.
pub const EXTRACTION_OUTPUT_TOKENS: u64 = 1_500;

/// What a seed of the inputs would ask.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Demand {
    /// Transcripts found.
    pub found: usize,
    /// Finished in an earlier run (a checkpoint in `--out` vouches for them).
    pub already_done: usize,
    /// Could not be read as transcripts (they cost nothing).
    pub skipped: usize,
    /// Transcripts left to do.
    pub pending: usize,
    /// Chunks left to extract: one extraction request each.
    pub chunks: u64,
    /// Entities assumed ([`ENTITIES_PER_CHUNK`] a chunk).
    pub entities_assumed: u64,
    /// Embedding calls (`batchEmbedContents`), per episode in batches of `batch_size`; the
    /// quota counts each text in a batch as a request.
    pub embedding_calls: u64,
    /// Per model, as the quota counts it.
    pub work: Vec<Work>,
}

/// Reads the inputs as a seed would and counts what it would ask: extraction requests and
/// their input tokens by the LLM service's own estimate, and embedding requests (chunks and
/// assumed entities, in batches of `batch_size`). Reads, never writes: the output folder is
/// not claimed, the checkpoint is only read (a checkpoint that cannot be read is the error).
pub fn demand(opts: &SeedOptions, batch_size: usize) -> Result<Demand, CheckpointError> {
    let Discovered { items, skipped, .. } = discover(&opts.inputs, opts.follow_links);
    let mut d = Demand {
        found: items.len(),
        skipped: skipped.len(),
        ..Demand::default()
    };
    let checkpoint_dir = opts.out.join(CHECKPOINT_DIR);
    let previous = if checkpoint_dir.is_dir() {
        Some(CheckpointStore::open(&checkpoint_dir)?.checkpoint())
    } else {
        None
    };
    let mut recorded: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in previous.iter().flat_map(|p| p.items.values()) {
        if let Some(sha) = &r.output_sha256 {
            recorded.entry(r.hash.as_str()).or_default().push(sha);
        }
    }
    let mut pending = Vec::new();
    for item in &items {
        // Done as `seed` decides it: same content hash, and the episode file still what was
        // written.
        if let Some(r) = previous.as_ref().and_then(|p| p.items.get(&item.key))
            && r.hash == item.hash
        {
            let file = opts
                .out
                .join("episodes")
                .join(format!("{}.json", episode_id(&r.hash)));
            let shas = recorded.get(r.hash.as_str()).map_or(&[][..], Vec::as_slice);
            if verify_episode_file(&file, r, shas).is_ok() {
                d.already_done += 1;
                continue;
            }
        }
        pending.push(item.clone());
    }
    count(&pending, opts, batch_size, &mut d);
    Ok(d)
}

/// What a seed of `items` (none of them done) would ask of each model: [`Demand::work`], the
/// extraction model first. The seed's progress line plans the rest of its run from it.
pub fn work_of(items: &[Item], opts: &SeedOptions) -> Vec<Work> {
    let mut d = Demand::default();
    count(items, opts, keyturn_embeddings::MAX_BATCH, &mut d);
    d.work
}

fn count(items: &[Item], opts: &SeedOptions, batch_size: usize, d: &mut Demand) {
    let batch = batch_size.clamp(1, keyturn_embeddings::MAX_BATCH) as u64;
    let (mut x_tokens, mut e_requests, mut e_tokens) = (0u64, 0u64, 0u64);
    for item in items {
        let Ok(bytes) = std::fs::read(&item.source) else {
            d.skipped += 1;
            continue;
        };
        let Ok(chunks) = chunks_of(item.format, &bytes, opts) else {
            d.skipped += 1;
            continue;
        };
        d.pending += 1;
        let n = chunks.len() as u64;
        d.chunks += n;
        let entities = n * ENTITIES_PER_CHUNK;
        d.entities_assumed += entities;
        for c in &chunks {
            let req = extraction_request(item, c, &opts.model);
            x_tokens += keyturn_llm::local_estimate(&req.body);
            e_tokens += keyturn_embeddings::estimate_tokens(&c.text);
        }
        e_tokens += entities * keyturn_gemini::wire::estimate_input_tokens(ENTITY_TEXT_BYTES, 0);
        let texts = n + entities;
        e_requests += texts;
        d.embedding_calls += texts.div_ceil(batch);
    }
    d.work = vec![
        Work {
            model: opts.model.clone(),
            requests: d.chunks,
            input_tokens: x_tokens,
            output_tokens: d.chunks * EXTRACTION_OUTPUT_TOKENS,
        },
        Work {
            model: opts.embedding_model.clone(),
            requests: e_requests,
            input_tokens: e_tokens,
            output_tokens: 0,
        },
    ];
}

/// The capacity of every (project, model) scope the work names: from the ledger's status where
/// the state has the scope (limits in force, learned ones included; today's use; switched off or
/// exhausted), else from the configured and built-in limits with nothing used. A project whose
/// keys are all disabled has no room.
pub fn capacity(
    models: &[&str],
    keys: &KeyRing,
    limits: &LimitTable,
    status: Option<&PoolStatus>,
) -> Vec<Capacity> {
    let mut projects: Vec<&str> = keys.iter().map(|(_, e)| e.project.as_str()).collect();
    projects.sort_unstable();
    projects.dedup();
    let mut out = Vec::new();
    for model in models {
        for project in &projects {
            let live = keys.iter().any(|(_, e)| {
                e.project == *project
                    && status.is_none_or(|st| {
                        st.keys
                            .iter()
                            .find(|k| k.fingerprint == e.fingerprint())
                            .is_none_or(|k| k.disabled.is_none())
                    })
            });
            let scope = status.and_then(|st| {
                st.scopes.iter().find(|s| {
                    s.project == *project
                        && keyturn_core::limits::normalize_model(&s.model)
                            == keyturn_core::limits::normalize_model(model)
                })
            });
            let c = match scope {
                Some(s) => {
                    let mut c = Capacity::of_status(s);
                    // The plan's names, as asked (the status may spell the model `models/…`).
                    c.project = (*project).to_owned();
                    c.model = (*model).to_owned();
                    c.off |= !live;
                    c
                }
                None => Capacity {
                    project: (*project).to_owned(),
                    model: (*model).to_owned(),
                    limits: limits.resolve(project, model).0,
                    tier: limits.tier(project),
                    rpd_used: 0,
                    tpd_used: 0,
                    off: !live,
                    exhausted_today: false,
                },
            };
            out.push(c);
        }
    }
    out
}

/// Whether `dir` holds a seed's checkpoint (for the plan's heading).
pub fn has_checkpoint(out: &Path) -> bool {
    out.join(CHECKPOINT_DIR).is_dir()
}
