//! Resuming: which of the items found the checkpoint already holds, finished and with their
//! episode file still what was written, and which must be done (again).

use std::collections::BTreeMap;
use std::path::Path;

use keyturn_core::Clock;
use keyturn_store::CheckpointStore;

use super::{Item, SeedError, Skipped, verify_episode_file};
use crate::graph::episode_id;
use crate::progress::Progress;

/// The items split by what the checkpoint says of them.
pub(super) struct Resumed {
    /// To do: new, changed, or finished before but with an episode file lost or altered.
    pub(super) pending: Vec<Item>,
    /// Finished in an earlier run and redone in this one, with why.
    pub(super) redone: Vec<Skipped>,
    /// Finished in an earlier run and kept.
    pub(super) already_done: usize,
}

/// Sorts `items` against the checkpoint in `checkpoints`: a finished item is kept while its
/// episode file in `out` is what was written; a changed one loses its old episode file. What is
/// redone is forgotten by the checkpoint, and output hashes learned are recorded.
pub(super) fn resume(
    items: Vec<Item>,
    checkpoints: &CheckpointStore,
    out: &Path,
    progress: &Progress,
    clock: &dyn Clock,
) -> Result<Resumed, SeedError> {
    let mut already_done = 0;
    let previous = checkpoints.checkpoint();
    // Output hashes recorded per episode file: items with the same content share one file.
    let mut recorded: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in previous.items.values() {
        if let Some(sha) = &r.output_sha256 {
            recorded.entry(r.hash.as_str()).or_default().push(sha);
        }
    }
    let mut pending = Vec::new();
    let mut redone: Vec<Skipped> = Vec::new();
    let mut learned: Vec<(String, String)> = Vec::new();
    for item in items {
        match previous.items.get(&item.key) {
            Some(r) if r.hash == item.hash => {
                // A checkpoint is trusted only while the episode file it vouches for is there
                // and is what was written.
                let file = out
                    .join("episodes")
                    .join(format!("{}.json", episode_id(&r.hash)));
                let shas = recorded.get(r.hash.as_str()).map_or(&[][..], Vec::as_slice);
                match verify_episode_file(&file, r, shas) {
                    Ok(sha) => {
                        already_done += 1;
                        if let Some(sha) = sha {
                            learned.push((item.key.clone(), sha));
                        }
                    }
                    Err(why) => {
                        progress.note(&format!(
                            "redoing {} ({}): {why}",
                            item.title,
                            item.path.display()
                        ));
                        checkpoints.forget(&item.key, clock.now_ms())?;
                        redone.push(Skipped {
                            path: item.path.display().to_string(),
                            reason: why,
                        });
                        pending.push(item);
                    }
                }
            }
            Some(r) => {
                // The file changed: its old episode goes, the new content is redone.
                let old = out
                    .join("episodes")
                    .join(format!("{}.json", episode_id(&r.hash)));
                std::fs::remove_file(&old).ok();
                checkpoints.forget(&item.key, clock.now_ms())?;
                pending.push(item);
            }
            None => pending.push(item),
        }
    }
    checkpoints.record_outputs(&learned, clock.now_ms())?;
    if already_done > 0 {
        tracing::info!(
            finished = already_done,
            left = pending.len(),
            "resuming: finished episodes are kept"
        );
    }
    Ok(Resumed {
        pending,
        redone,
        already_done,
    })
}
