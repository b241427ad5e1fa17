//! `episodes/<episode-id>.json`: one episode's resolved entities, relationships and quotes,
//! built from its chunks' extractions, written atomically, read back for the graph.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Extraction, entity_id, entity_type, normalize_name, relation_type, short_hash};

/// Episode file schema version.
pub const EPISODE_SCHEMA: u32 = 1;

/// A chunk in an episode file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkOut {
    /// Position.
    pub index: usize,
    /// hh:mm:ss.
    pub start: Option<String>,
    /// hh:mm:ss.
    pub end: Option<String>,
    /// Text.
    pub text: String,
    /// Embedding.
    pub embedding: Vec<f32>,
}

/// A resolved entity in an episode file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityOut {
    /// Stable id.
    pub id: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Name (first seen).
    pub name: String,
    /// Longest description seen.
    pub description: String,
    /// Mentions in this episode.
    pub mentions: u32,
    /// Chunks it appears in.
    pub chunks: Vec<usize>,
    /// Embedding of "name: description".
    pub embedding: Vec<f32>,
}

/// A relationship in an episode file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelationshipOut {
    /// Source entity id.
    pub source: String,
    /// Target entity id.
    pub target: String,
    /// UPPER_SNAKE type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Supporting words.
    pub evidence: String,
    /// Chunk.
    pub chunk: usize,
}

/// A quote in an episode file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuoteOut {
    /// Stable id.
    pub id: String,
    /// Text.
    pub text: String,
    /// Speaker.
    pub speaker: String,
    /// Speaker's entity id, if the speaker is a known person.
    pub speaker_entity: Option<String>,
    /// hh:mm:ss.
    pub timestamp: Option<String>,
    /// Chunk.
    pub chunk: usize,
}

/// The source file of an episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceOut {
    /// Path as given.
    pub path: String,
    /// vtt, srt, txt.
    pub format: String,
    /// SHA-256 of the bytes.
    pub content_hash: String,
}

/// `episodes/<episode-id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Schema.
    pub schema: u32,
    /// `ep-` + first 12 hex digits of the content hash.
    pub episode_id: String,
    /// Podcast (the parent folder's name).
    pub podcast: String,
    /// Title (the file's stem).
    pub title: String,
    /// Source.
    pub source: SourceOut,
    /// When processed (RFC 3339).
    pub processed_at: String,
    /// Extraction model.
    pub model: String,
    /// Embedding model.
    pub embedding_model: String,
    /// Chunks.
    pub chunks: Vec<ChunkOut>,
    /// Entities.
    pub entities: Vec<EntityOut>,
    /// Relationships.
    pub relationships: Vec<RelationshipOut>,
    /// Quotes.
    pub quotes: Vec<QuoteOut>,
    /// Relationships dropped because an end was not an extracted entity.
    pub dropped_relationships: u32,
}

/// The episode id of some content.
pub fn episode_id(content_hash: &str) -> String {
    format!("ep-{}", &content_hash[..12.min(content_hash.len())])
}

/// Entities, relationships and quotes of an episode from its chunks' extractions.
pub fn resolve_episode(
    extractions: &[(usize, Extraction)],
) -> (Vec<EntityOut>, Vec<RelationshipOut>, Vec<QuoteOut>, u32) {
    let mut entities: BTreeMap<String, EntityOut> = BTreeMap::new();
    // Normalized name → id, for relationships and speakers (names may repeat across types).
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for (chunk, x) in extractions {
        for e in &x.entities {
            let name = e.name.trim();
            if normalize_name(name).is_empty() {
                continue;
            }
            let kind = entity_type(&e.kind);
            let id = entity_id(kind, name);
            by_name
                .entry(normalize_name(name))
                .or_insert_with(|| id.clone());
            let ent = entities.entry(id.clone()).or_insert_with(|| EntityOut {
                id,
                kind: kind.to_owned(),
                name: name.to_owned(),
                description: String::new(),
                mentions: 0,
                chunks: Vec::new(),
                embedding: Vec::new(),
            });
            ent.mentions += 1;
            if e.description.len() > ent.description.len() {
                ent.description = e.description.trim().to_owned();
            }
            if !ent.chunks.contains(chunk) {
                ent.chunks.push(*chunk);
            }
        }
    }
    let mut relationships = Vec::new();
    let mut dropped = 0;
    for (chunk, x) in extractions {
        for r in &x.relationships {
            let (Some(s), Some(t)) = (
                by_name.get(&normalize_name(&r.source)),
                by_name.get(&normalize_name(&r.target)),
            ) else {
                dropped += 1;
                continue;
            };
            if s == t {
                dropped += 1;
                continue;
            }
            let rel = RelationshipOut {
                source: s.clone(),
                target: t.clone(),
                kind: relation_type(&r.kind),
                evidence: r.evidence.trim().to_owned(),
                chunk: *chunk,
            };
            if !relationships.iter().any(|x: &RelationshipOut| {
                x.source == rel.source && x.target == rel.target && x.kind == rel.kind
            }) {
                relationships.push(rel);
            }
        }
    }
    let mut quotes = Vec::new();
    for (chunk, x) in extractions {
        for q in &x.quotes {
            let text = q.text.trim();
            if text.is_empty() {
                continue;
            }
            let id = format!("q-{}", short_hash(&[text, q.speaker.trim()]));
            if quotes.iter().any(|x: &QuoteOut| x.id == id) {
                continue;
            }
            let speaker_entity = by_name
                .get(&normalize_name(&q.speaker))
                .filter(|id| entities.get(*id).is_some_and(|e| e.kind == "PERSON"))
                .cloned();
            quotes.push(QuoteOut {
                id,
                text: text.to_owned(),
                speaker: q.speaker.trim().to_owned(),
                speaker_entity,
                timestamp: q.timestamp.clone().filter(|t| !t.is_empty()),
                chunk: *chunk,
            });
        }
    }
    (
        entities.into_values().collect(),
        relationships,
        quotes,
        dropped,
    )
}

/// The episode files in `out/episodes`, sorted by name (the episode id).
pub(super) fn episode_files(out: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(out.join("episodes")) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
}

pub(super) fn read_episode(p: &Path) -> Result<Episode, String> {
    std::fs::read(p)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<Episode>(&b).map_err(|e| e.to_string()))
}
