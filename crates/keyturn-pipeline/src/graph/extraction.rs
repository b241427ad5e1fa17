//! What extraction is asked for and returns (the schema, the instruction, the raw entities,
//! relationships and quotes), and how names resolve to stable ids and types.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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

pub(super) fn short_hash(parts: &[&str]) -> String {
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
