//! Exports of the graph: Neo4j bulk-import CSV, or JSONL.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{GraphSink, JsonLines, Node, episode_files, stream_graph};

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
