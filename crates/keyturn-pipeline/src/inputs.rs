//! The inputs of a run, found as `seed` and `plan` find them: transcripts under the input
//! folders (links followed only as asked, hidden and unreadable files passed over with why),
//! each with its podcast, title, format and content hash; and the check that a checkpointed
//! episode's file is still what was written.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::graph::Episode;
use crate::run::Skipped;
use crate::transcript::Format;

/// A transcript found in the inputs.
#[derive(Debug, Clone)]
pub struct Item {
    /// The file, as found (a link's own path).
    pub path: PathBuf,
    /// What is read: the file itself, or where its link resolved to when it was found.
    pub source: PathBuf,
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

pub(crate) fn hash_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// What [`discover`] found.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Transcripts to process.
    pub items: Vec<Item>,
    /// Files and links passed over, with why.
    pub skipped: Vec<Skipped>,
    /// How many of `skipped` are symbolic links not followed.
    pub links_skipped: usize,
}

/// A file to read: where it was found, and what to read.
struct Found {
    path: PathBuf,
    source: PathBuf,
}

fn skip(skipped: &mut Vec<Skipped>, p: &Path, reason: impl Into<String>) {
    skipped.push(Skipped {
        path: p.display().to_string(),
        reason: reason.into(),
    });
}

/// Walks `dir` (inside the input folder `root`, canonical). Folder links are never followed (a
/// link loop would be walked until the OS gave up); file links are followed only when they
/// resolve inside `root`, or everywhere with `follow_links`. Only regular files are read: a FIFO
/// named `x.vtt` would block the run forever.
fn walk(root: &Path, dir: &Path, follow_links: bool, files: &mut Vec<Found>, d: &mut Discovered) {
    let mut entries: Vec<(PathBuf, std::io::Result<std::fs::FileType>)> =
        match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| (e.path(), e.file_type()))
                .collect(),
            Err(e) => {
                skip(&mut d.skipped, dir, format!("cannot list the folder: {e}"));
                return;
            }
        };
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, ft) in entries {
        if is_hidden(&p) {
            continue;
        }
        let ft = match ft {
            Ok(ft) => ft,
            Err(e) => {
                skip(&mut d.skipped, &p, format!("cannot read: {e}"));
                continue;
            }
        };
        if ft.is_dir() {
            walk(root, &p, follow_links, files, d);
        } else if ft.is_symlink() {
            let transcript = Format::of(&p).is_some();
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => {
                    d.links_skipped += 1;
                    skip(
                        &mut d.skipped,
                        &p,
                        "symbolic link to a folder: not followed",
                    );
                }
                Ok(_) if !transcript => {}
                Ok(m) if !m.is_file() => {
                    d.links_skipped += 1;
                    skip(
                        &mut d.skipped,
                        &p,
                        "symbolic link to something that is not a regular file: not followed",
                    );
                }
                Ok(_) => match std::fs::canonicalize(&p) {
                    Ok(target) if follow_links || target.starts_with(root) => {
                        files.push(Found {
                            path: p,
                            source: target,
                        });
                    }
                    Ok(_) => {
                        d.links_skipped += 1;
                        skip(
                            &mut d.skipped,
                            &p,
                            "symbolic link to a file outside the input folder: not followed (--follow-links reads it)",
                        );
                    }
                    Err(e) => {
                        d.links_skipped += 1;
                        skip(&mut d.skipped, &p, format!("cannot resolve the link: {e}"));
                    }
                },
                Err(_) if transcript => {
                    d.links_skipped += 1;
                    skip(&mut d.skipped, &p, "broken symbolic link");
                }
                Err(_) => {}
            }
        } else if Format::of(&p).is_some() {
            if ft.is_file() {
                files.push(Found {
                    source: p.clone(),
                    path: p,
                });
            } else {
                skip(&mut d.skipped, &p, "not a regular file");
            }
        }
    }
}

/// Finds transcripts: files given directly, and `.vtt`/`.srt`/`.txt` files in folders
/// (recursively; hidden entries are passed over, links as [`walk`] says). A file given directly
/// in another format is skipped with a reason; a path given directly is the user's choice and
/// is followed if it is a link. Each file is hashed, not kept.
pub fn discover(inputs: &[PathBuf], follow_links: bool) -> Discovered {
    let mut files: Vec<Found> = Vec::new();
    let mut d = Discovered::default();
    for input in inputs {
        if input.is_dir() {
            match std::fs::canonicalize(input) {
                Ok(root) => walk(&root, input, follow_links, &mut files, &mut d),
                Err(e) => skip(&mut d.skipped, input, format!("cannot resolve: {e}")),
            }
        } else if input.is_file() {
            if Format::of(input).is_some() {
                files.push(Found {
                    path: input.clone(),
                    source: input.clone(),
                });
            } else {
                skip(&mut d.skipped, input, "not a .vtt, .srt or .txt file");
            }
        } else if input.exists() {
            skip(&mut d.skipped, input, "not a regular file or a folder");
        } else {
            skip(&mut d.skipped, input, "no such file or folder");
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files.dedup_by(|a, b| a.path == b.path);
    for Found { path, source } in files {
        let Some(format) = Format::of(&path) else {
            continue;
        };
        match std::fs::read(&source) {
            Ok(bytes) => {
                let podcast = path.parent().and_then(Path::file_name).map_or_else(
                    || "podcast".to_owned(),
                    |n| n.to_string_lossy().into_owned(),
                );
                let title = path
                    .file_stem()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                d.items.push(Item {
                    key: path.display().to_string(),
                    hash: hash_hex(&bytes),
                    path,
                    source,
                    podcast,
                    title,
                    format,
                });
            }
            Err(e) => skip(&mut d.skipped, &path, format!("cannot read: {e}")),
        }
    }
    d
}

/// Checks that a finished episode's file is still what was written: the SHA-256 the checkpoint
/// recorded (any of `recorded`: items with the same content share one episode file), or, for a
/// record from before hashes were kept, a file that reads back as this episode. `Ok(Some(sha))`
/// asks the caller to record the hash it now knows.
pub(crate) fn verify_episode_file(
    file: &Path,
    record: &keyturn_store::checkpoint::ItemRecord,
    recorded: &[&str],
) -> Result<Option<String>, String> {
    let name = format!(
        "episodes/{}",
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("its episode file {name} is missing"));
        }
        Err(e) => return Err(format!("its episode file {name} cannot be read ({e})")),
    };
    let sha = hash_hex(&bytes);
    if record.output_sha256.is_some() {
        return if recorded.contains(&sha.as_str()) {
            Ok(None)
        } else {
            Err(format!(
                "its episode file {name} changed or was damaged since it was written"
            ))
        };
    }
    match serde_json::from_slice::<Episode>(&bytes) {
        Ok(ep) if ep.source.content_hash == record.hash => Ok(Some(sha)),
        _ => Err(format!(
            "its episode file {name} changed or was damaged (it does not read back as this episode)"
        )),
    }
}
