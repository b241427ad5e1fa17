//! `graph/nodes.jsonl` and `graph/edges.jsonl`, rebuilt from the episode files by streaming:
//! any [`GraphSink`] receives the merged nodes and edges one at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{episode_files, normalize_name, read_episode, short_hash};

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
pub(super) struct JsonLines<'a> {
    pub(super) nodes: &'a mut dyn std::io::Write,
    pub(super) edges: &'a mut dyn std::io::Write,
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
