//! `keyturn export`: the graph in an output folder, for other tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{cwd, fail};
use crate::graph::ExportFormat;
use crate::term::safe_path;

pub(super) fn cmd_export(out: &Path, format: ExportFormat, to: Option<PathBuf>) -> ExitCode {
    // An export into a folder of its own (not under --out, which is keyturn's) follows the
    // same rule as --out: a folder keyturn created, or an empty one; never the user's
    // own nodes.csv. Held locked while it is written.
    let _claimed = match to.as_deref().filter(|t| !is_inside(t, out)) {
        Some(t) => match crate::outdir::OutDir::claim(t, None) {
            Ok(c) => Some(c),
            Err(e) => return fail(e.kind(), e),
        },
        None => None,
    };
    let to = to.unwrap_or_else(|| {
        out.join("export").join(match format {
            ExportFormat::Neo4jCsv => "neo4j-csv",
            ExportFormat::Jsonl => "jsonl",
        })
    });
    match crate::graph::export(out, &to, format) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", safe_path(&f));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.kind(), e),
    }
}

/// Whether `path` lies inside `dir` (both made absolute and resolved as far as they exist).
fn is_inside(path: &Path, dir: &Path) -> bool {
    fn resolve(p: &Path) -> PathBuf {
        let abs = if p.is_absolute() {
            p.to_owned()
        } else {
            cwd().join(p)
        };
        // The longest existing ancestor, canonical, with the rest appended.
        let mut head = abs.as_path();
        let mut tail = Vec::new();
        loop {
            if let Ok(c) = std::fs::canonicalize(head) {
                return tail.iter().rev().fold(c, |acc, part| acc.join(part));
            }
            match (head.parent(), head.file_name()) {
                (Some(parent), Some(name)) => {
                    tail.push(name.to_owned());
                    head = parent;
                }
                _ => return abs,
            }
        }
    }
    let (p, d) = (resolve(path), resolve(dir));
    p.components().all(|c| c != std::path::Component::ParentDir) && p.starts_with(d)
}
