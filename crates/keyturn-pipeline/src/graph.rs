//! What extraction returns, how entities resolve to stable ids, and the outputs other tools rely
//! on: `episodes/<episode-id>.json` (one per episode, written atomically), `graph/nodes.jsonl`
//! and `graph/edges.jsonl` rebuilt from them, and exports (Neo4j bulk-import CSV, JSONL).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Episode file schema version.
pub const EPISODE_SCHEMA: u32 = 1;

/// Entity types extraction may use.
pub const ENTITY_TYPES: &[&str] = &[
    "PERSON",
    "ORGANIZATION",
    "PLACE",
    "PRODUCT",
    "EVENT",
    "CONCEPT",
    "WORK",
];

/// The JSON response schema sent with every extraction request.
pub fn extraction_schema() -> Value {
    json!({
        "type": "OBJECT",
        "properties": {
            "entities": {"type": "ARRAY", "items": {"type": "OBJECT", "properties": {
                "name": {"type": "STRING", "description": "The entity's name as said"},
                "type": {"type": "STRING", "enum": ENTITY_TYPES},
                "description": {"type": "STRING", "description": "One sentence on who or what it is, from the excerpt"}
            }, "required": ["name", "type", "description"], "propertyOrdering": ["name", "type", "description"]}},
            "relationships": {"type": "ARRAY", "items": {"type": "OBJECT", "properties": {
                "source": {"type": "STRING", "description": "Name of an entity above"},
                "target": {"type": "STRING", "description": "Name of an entity above"},
                "type": {"type": "STRING", "description": "The relation, e.g. WORKED_WITH, FOUNDED, LOCATED_IN"},
                "evidence": {"type": "STRING", "description": "The words in the excerpt that say so"}
            }, "required": ["source", "target", "type", "evidence"], "propertyOrdering": ["source", "target", "type", "evidence"]}},
            "quotes": {"type": "ARRAY", "items": {"type": "OBJECT", "properties": {
                "text": {"type": "STRING"},
                "speaker": {"type": "STRING"},
                "timestamp": {"type": "STRING", "description": "hh:mm:ss if known"}
            }, "required": ["text", "speaker"], "propertyOrdering": ["text", "speaker", "timestamp"]}}
        },
        "required": ["entities", "relationships", "quotes"],
        "propertyOrdering": ["entities", "relationships", "quotes"]
    })
}

/// The instruction that goes with it.
pub const EXTRACTION_INSTRUCTION: &str = "You build a knowledge graph from podcast transcripts. \
From the excerpt, extract the notable entities (people, organizations, places, products, events, \
concepts, works) with one-sentence descriptions grounded in the excerpt; the relationships between \
those entities, each with the words that support it; and memorable quotes with their speaker. Use \
only what the excerpt says. Name entities as they are named in the excerpt.";

/// Extraction output for one chunk, as the model returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extraction {
    /// Entities.
    #[serde(default)]
    pub entities: Vec<RawEntity>,
    /// Relationships.
    #[serde(default)]
    pub relationships: Vec<RawRelationship>,
    /// Quotes.
    #[serde(default)]
    pub quotes: Vec<RawQuote>,
}

/// An entity as extracted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawEntity {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Type.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// A relationship as extracted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawRelationship {
    /// Source entity name.
    #[serde(default)]
    pub source: String,
    /// Target entity name.
    #[serde(default)]
    pub target: String,
    /// Relation.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Supporting words.
    #[serde(default)]
    pub evidence: String,
}

/// A quote as extracted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RawQuote {
    /// Text.
    #[serde(default)]
    pub text: String,
    /// Speaker.
    #[serde(default)]
    pub speaker: String,
    /// hh:mm:ss.
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// A name reduced to what identifies it: lower case, letters and digits, single spaces, no
/// leading article.
pub fn normalize_name(name: &str) -> String {
    let lowered: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let words: Vec<&str> = lowered.split_whitespace().collect();
    let words = match words.first() {
        Some(&"the") | Some(&"a") | Some(&"an") if words.len() > 1 => &words[1..],
        _ => &words[..],
    };
    words.join(" ")
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The stable id of an entity: its type and normalized name.
pub fn entity_id(kind: &str, name: &str) -> String {
    format!("ent-{}", short_hash(&[kind, &normalize_name(name)]))
}

/// An entity type from the fixed set (anything else is a CONCEPT).
pub fn entity_type(raw: &str) -> &'static str {
    let up = raw.trim().to_uppercase();
    ENTITY_TYPES
        .iter()
        .find(|t| **t == up)
        .copied()
        .unwrap_or("CONCEPT")
}

/// A relation type in UPPER_SNAKE_CASE (Neo4j relationship type form).
pub fn relation_type(raw: &str) -> String {
    let s: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let s = s
        .split('_')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    if s.is_empty() { "RELATED_TO".into() } else { s }
}

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
fn episode_files(out: &Path) -> Vec<PathBuf> {
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

fn read_episode(p: &Path) -> Result<Episode, String> {
    std::fs::read(p)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<Episode>(&b).map_err(|e| e.to_string()))
}

/// A graph node as written to `graph/nodes.jsonl`.
pub type Node = serde_json::Map<String, Value>;

/// Where a streamed graph goes: one call per node and per edge.
pub trait GraphSink {
    /// A node (each id once).
    fn node(&mut self, n: &Node) -> std::io::Result<()>;
    /// An edge.
    fn edge(&mut self, e: &Value) -> std::io::Result<()>;
}

/// What [`stream_graph`] wrote: node and edge counts, and the episode files it could not read.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Nodes written.
    pub nodes: usize,
    /// Edges written.
    pub edges: usize,
    /// Episode files skipped, with why.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// An entity merged across episodes: what its node shows, without chunks or embeddings.
#[derive(Debug)]
struct Merged {
    kind: String,
    name: String,
    description: String,
    mentions: u32,
    episodes: Vec<String>,
}

/// Streams the graph of the episodes in `out` into `sink`, one episode file in memory at a
/// time: episode and quote nodes and every edge as each episode is read; podcasts and entities
/// (merged across episodes by id) at the end. Memory grows with the graph's distinct entities,
/// never with the episodes' chunks and embeddings.
pub fn stream_graph(out: &Path, sink: &mut dyn GraphSink) -> std::io::Result<Streamed> {
    let mut entities: BTreeMap<String, Merged> = BTreeMap::new();
    let mut podcasts: BTreeMap<String, String> = BTreeMap::new();
    // Node ids already written: a quote said in two episodes appears once.
    let mut seen = std::collections::HashSet::new();
    let (mut n_nodes, mut n_edges) = (0usize, 0usize);
    let mut bad = Vec::new();
    let mut node = |sink: &mut dyn GraphSink, n: Node| -> std::io::Result<()> {
        if seen.insert(n.get("id").map(Value::to_string).unwrap_or_default()) {
            n_nodes += 1;
            sink.node(&n)?;
        }
        Ok(())
    };
    let mut edge = |sink: &mut dyn GraphSink, e: Value| -> std::io::Result<()> {
        n_edges += 1;
        sink.edge(&e)
    };
    for path in episode_files(out) {
        let ep = match read_episode(&path) {
            Ok(e) => e,
            Err(e) => {
                bad.push((path, e));
                continue;
            }
        };
        let pod_id = format!("pod-{}", short_hash(&[&normalize_name(&ep.podcast)]));
        podcasts
            .entry(pod_id.clone())
            .or_insert_with(|| ep.podcast.clone());
        let mut n = Node::new();
        n.insert("id".into(), json!(ep.episode_id));
        n.insert("type".into(), json!("Episode"));
        n.insert("name".into(), json!(ep.title));
        n.insert("podcast".into(), json!(ep.podcast));
        n.insert("source".into(), json!(ep.source.path));
        node(sink, n)?;
        edge(
            sink,
            json!({"source": pod_id, "target": ep.episode_id, "type": "HAS_EPISODE"}),
        )?;
        for e in &ep.entities {
            let slot = entities.entry(e.id.clone()).or_insert_with(|| Merged {
                kind: e.kind.clone(),
                name: e.name.clone(),
                description: String::new(),
                mentions: 0,
                episodes: Vec::new(),
            });
            slot.mentions += e.mentions;
            if e.description.len() > slot.description.len() {
                slot.description.clone_from(&e.description);
            }
            slot.episodes.push(ep.episode_id.clone());
            edge(
                sink,
                json!({"source": ep.episode_id, "target": e.id, "type": "MENTIONS", "count": e.mentions}),
            )?;
        }
        for r in &ep.relationships {
            edge(
                sink,
                json!({"source": r.source, "target": r.target, "type": r.kind, "evidence": r.evidence, "episode": ep.episode_id}),
            )?;
        }
        for q in &ep.quotes {
            let mut n = Node::new();
            n.insert("id".into(), json!(q.id));
            n.insert("type".into(), json!("Quote"));
            n.insert(
                "name".into(),
                json!(q.text.chars().take(80).collect::<String>()),
            );
            n.insert("text".into(), json!(q.text));
            n.insert("speaker".into(), json!(q.speaker));
            n.insert("timestamp".into(), json!(q.timestamp));
            node(sink, n)?;
            edge(
                sink,
                json!({"source": ep.episode_id, "target": q.id, "type": "HAS_QUOTE"}),
            )?;
            if let Some(s) = &q.speaker_entity {
                edge(sink, json!({"source": s, "target": q.id, "type": "SAID"}))?;
            }
        }
    }
    for (id, name) in podcasts {
        let mut n = Node::new();
        n.insert("id".into(), json!(id));
        n.insert("type".into(), json!("Podcast"));
        n.insert("name".into(), json!(name));
        node(sink, n)?;
    }
    for (id, e) in entities {
        let mut n = Node::new();
        n.insert("id".into(), json!(id));
        n.insert("type".into(), json!(e.kind));
        n.insert("name".into(), json!(e.name));
        n.insert("description".into(), json!(e.description));
        n.insert("mentions".into(), json!(e.mentions));
        n.insert("episodes".into(), json!(e.episodes));
        node(sink, n)?;
    }
    Ok(Streamed {
        nodes: n_nodes,
        edges: n_edges,
        unreadable: bad,
    })
}

/// Nodes and edges as JSON lines to two writers.
struct JsonLines<'a> {
    nodes: &'a mut dyn std::io::Write,
    edges: &'a mut dyn std::io::Write,
}

impl GraphSink for JsonLines<'_> {
    fn node(&mut self, n: &Node) -> std::io::Result<()> {
        serde_json::to_writer(&mut *self.nodes, n)?;
        self.nodes.write_all(b"\n")
    }

    fn edge(&mut self, e: &Value) -> std::io::Result<()> {
        serde_json::to_writer(&mut *self.edges, e)?;
        self.edges.write_all(b"\n")
    }
}

/// Writes `graph/nodes.jsonl` and `graph/edges.jsonl` (each atomically) from the episode files,
/// streaming: one episode in memory at a time.
pub fn write_graph(out: &Path) -> Result<(usize, usize), keyturn_core::StoreError> {
    let dir = out.join("graph");
    keyturn_store::file::ensure_private_dir(&dir)?;
    keyturn_store::write_atomic_with(&dir.join("nodes.jsonl"), 0o644, |nodes| {
        keyturn_store::write_atomic_with(&dir.join("edges.jsonl"), 0o644, |edges| {
            let s = stream_graph(out, &mut JsonLines { nodes, edges })?;
            Ok((s.nodes, s.edges))
        })
        .map_err(std::io::Error::other)
    })
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Files `neo4j-admin database import full` accepts.
    Neo4jCsv,
    /// nodes.jsonl and edges.jsonl.
    Jsonl,
}

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The output folder holds no episodes (no seed ran there, or it is another folder).
    #[error("no episodes in {}; export reads the --out folder of a `keyturn seed` run", crate::term::safe_path(.dir))]
    NoEpisodes {
        /// The episodes folder looked in.
        dir: PathBuf,
    },
    /// The export folder could not be made.
    #[error("{}: {source}", crate::term::safe_path(.path))]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing the files failed, or an episode file could not be read (any earlier export was
    /// left as it was).
    #[error(transparent)]
    Write(#[from] keyturn_core::StoreError),
}

impl ExportError {
    /// The classification, which decides the exit code: none of these is the user's usage (a
    /// folder without episodes is reported as a failure, as it always was), so every kind is
    /// [`crate::run::SeedErrorKind::Failed`].
    pub fn kind(&self) -> crate::run::SeedErrorKind {
        crate::run::SeedErrorKind::Failed
    }
}

/// Writes an export of the graph in `out` to `to`. Returns the files written.
pub fn export(out: &Path, to: &Path, format: ExportFormat) -> Result<Vec<PathBuf>, ExportError> {
    if episode_files(out).is_empty() {
        return Err(ExportError::NoEpisodes {
            dir: out.join("episodes"),
        });
    }
    std::fs::create_dir_all(to).map_err(|source| ExportError::CreateDir {
        path: to.to_owned(),
        source,
    })?;
    let (np, ep) = match format {
        ExportFormat::Jsonl => (to.join("nodes.jsonl"), to.join("edges.jsonl")),
        ExportFormat::Neo4jCsv => (to.join("nodes.csv"), to.join("relationships.csv")),
    };
    // Both files are written atomically, streaming; an unreadable episode file stops the export
    // and leaves any earlier export as it was.
    let stream = |sink: &mut dyn GraphSink| -> std::io::Result<()> {
        match stream_graph(out, sink)?.unreadable.first() {
            Some((p, e)) => Err(std::io::Error::other(format!("{}: {e}", p.display()))),
            None => Ok(()),
        }
    };
    keyturn_store::write_atomic_with(&np, 0o644, |nodes| {
        keyturn_store::write_atomic_with(&ep, 0o644, |edges| match format {
            ExportFormat::Jsonl => stream(&mut JsonLines { nodes, edges }),
            ExportFormat::Neo4jCsv => {
                let mut sink = Neo4jCsv::new(nodes, edges)?;
                stream(&mut sink)?;
                sink.flush()
            }
        })
        .map_err(std::io::Error::other)
    })?;
    Ok(vec![np, ep])
}

/// Files `neo4j-admin database import full` accepts: `nodes.csv` and `relationships.csv`.
struct Neo4jCsv<'a> {
    nodes: csv::Writer<&'a mut dyn std::io::Write>,
    edges: csv::Writer<&'a mut dyn std::io::Write>,
}

impl<'a> Neo4jCsv<'a> {
    fn new(
        nodes: &'a mut dyn std::io::Write,
        edges: &'a mut dyn std::io::Write,
    ) -> std::io::Result<Self> {
        let mut nodes = csv::Writer::from_writer(nodes);
        nodes.write_record([
            "id:ID",
            ":LABEL",
            "name",
            "description",
            "mentions:int",
            "podcast",
            "speaker",
            "timestamp",
        ])?;
        let mut edges = csv::Writer::from_writer(edges);
        edges.write_record([
            ":START_ID",
            ":END_ID",
            ":TYPE",
            "evidence",
            "count:int",
            "episode",
        ])?;
        Ok(Self { nodes, edges })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.nodes.flush()?;
        self.edges.flush()
    }
}

/// A field as CSV text: strings bare, absent and null empty, anything else as JSON.
fn field(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

impl GraphSink for Neo4jCsv<'_> {
    fn node(&mut self, n: &Node) -> std::io::Result<()> {
        let s = |k: &str| field(n.get(k));
        let label = s("type");
        // Neo4j labels: Entity plus its type, so all entities can be queried together.
        let labels = match label.as_str() {
            "Episode" | "Podcast" | "Quote" => label.clone(),
            t => format!("Entity;{}", to_label(t)),
        };
        self.nodes.write_record([
            s("id"),
            labels,
            s("name"),
            s("description"),
            s("mentions"),
            s("podcast"),
            s("speaker"),
            s("timestamp"),
        ])?;
        Ok(())
    }

    fn edge(&mut self, e: &Value) -> std::io::Result<()> {
        let g = |k: &str| field(e.get(k));
        self.edges.write_record([
            g("source"),
            g("target"),
            g("type"),
            g("evidence"),
            g("count"),
            g("episode"),
        ])?;
        Ok(())
    }
}

fn to_label(t: &str) -> String {
    let mut c = t.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + &c.as_str().to_lowercase(),
        None => "Entity".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(n: &str, t: &str, d: &str) -> RawEntity {
        RawEntity {
            name: n.into(),
            kind: t.into(),
            description: d.into(),
        }
    }

    #[test]
    fn names_normalize_and_ids_are_stable() {
        assert_eq!(normalize_name("  The  Royal Society! "), "royal society");
        assert_eq!(
            entity_id("ORGANIZATION", "the Royal Society"),
            entity_id("ORGANIZATION", "Royal  society")
        );
        assert_ne!(entity_id("PERSON", "Ada"), entity_id("PLACE", "Ada"));
        assert_eq!(relation_type("worked with"), "WORKED_WITH");
        assert_eq!(relation_type("  "), "RELATED_TO");
        assert_eq!(entity_type("person"), "PERSON");
        assert_eq!(entity_type("SPACESHIP"), "CONCEPT");
    }

    #[test]
    fn resolution_merges_across_chunks_and_drops_dangling_relationships() {
        let x1 = Extraction {
            entities: vec![
                ent("Ada Lovelace", "PERSON", "A mathematician."),
                ent("Analytical Engine", "PRODUCT", ""),
            ],
            relationships: vec![RawRelationship {
                source: "ada lovelace".into(),
                target: "The Analytical Engine".into(),
                kind: "wrote about".into(),
                evidence: "she wrote".into(),
            }],
            quotes: vec![RawQuote {
                text: "It weaves patterns.".into(),
                speaker: "Ada Lovelace".into(),
                timestamp: None,
            }],
        };
        let x2 = Extraction {
            entities: vec![ent(
                "ADA LOVELACE",
                "person",
                "A mathematician who wrote the first program.",
            )],
            relationships: vec![RawRelationship {
                source: "Ada Lovelace".into(),
                target: "Nobody".into(),
                kind: "knew".into(),
                evidence: "".into(),
            }],
            quotes: vec![],
        };
        let (ents, rels, quotes, dropped) = resolve_episode(&[(0, x1), (1, x2)]);
        assert_eq!(ents.len(), 2);
        let ada = ents.iter().find(|e| e.kind == "PERSON").unwrap();
        assert_eq!((ada.mentions, ada.chunks.clone()), (2, vec![0, 1]));
        assert_eq!(
            ada.description,
            "A mathematician who wrote the first program."
        );
        assert_eq!(rels.len(), 1);
        assert_eq!(rels[0].kind, "WROTE_ABOUT");
        assert_eq!(dropped, 1);
        assert_eq!(quotes[0].speaker_entity.as_deref(), Some(ada.id.as_str()));
    }
}
