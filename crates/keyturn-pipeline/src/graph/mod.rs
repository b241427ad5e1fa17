//! What extraction returns, how entities resolve to stable ids, and the outputs other tools rely
//! on: `episodes/<episode-id>.json` (one per episode, written atomically), `graph/nodes.jsonl`
//! and `graph/edges.jsonl` rebuilt from them, and exports (Neo4j bulk-import CSV, JSONL).
//!
//! `extraction.rs` is the extraction contract and id resolution, `episode.rs` the episode files,
//! `stream.rs` the merged graph files, `export.rs` the exports.

mod episode;
mod export;
mod extraction;
mod stream;

pub use self::episode::{
    ChunkOut, EPISODE_SCHEMA, EntityOut, Episode, QuoteOut, RelationshipOut, SourceOut, episode_id,
    resolve_episode,
};
use self::episode::{episode_files, read_episode};
pub use self::export::{ExportError, ExportFormat, export};
use self::extraction::short_hash;
pub use self::extraction::{
    ENTITY_TYPES, EXTRACTION_INSTRUCTION, Extraction, RawEntity, RawQuote, RawRelationship,
    entity_id, entity_type, extraction_schema, normalize_name, relation_type,
};
use self::stream::JsonLines;
pub use self::stream::{GraphSink, Node, Streamed, stream_graph, write_graph};

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
