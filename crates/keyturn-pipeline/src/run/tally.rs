//! Where finished episodes go, however they were extracted: their files, the checkpoint, the
//! progress display, and the run's totals.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use keyturn_store::CheckpointStore;

use super::{Counts, Ctx, EpisodeError, Item, SeedError, SeedServices, Skipped, Stop, hash_hex};
use crate::graph::Episode;
use crate::progress::Progress;

/// What a run has done so far.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) counts: Counts,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) failed: Vec<Skipped>,
    pub(crate) episode_ms: BTreeMap<String, u64>,
    /// Why the run must stop (the day used up, every key dead), once known.
    pub(crate) stop: Option<Stop>,
}

/// Where finished episodes go: their files, the checkpoint, the progress display.
pub(crate) struct Sink<'a> {
    pub(crate) out: &'a Path,
    pub(crate) checkpoints: &'a CheckpointStore,
    pub(crate) services: &'a SeedServices<'a>,
    pub(crate) progress: &'a Progress,
    pub(crate) ctx: &'a Ctx,
}

impl Tally {
    /// One episode's end, however it was extracted: a finished episode is written atomically
    /// and checkpointed with the rotation state before the next one is counted.
    pub(crate) async fn settle(
        &mut self,
        sink: &Sink<'_>,
        item: &Item,
        result: Result<Episode, EpisodeError>,
        ms: i64,
    ) -> Result<(), SeedError> {
        let progress = sink.progress;
        progress.set_chunks(sink.ctx.chunks_done.load(Ordering::Relaxed));
        match result {
            Ok(ep) => {
                let path = sink
                    .out
                    .join("episodes")
                    .join(format!("{}.json", ep.episode_id));
                let bytes = serde_json::to_vec_pretty(&ep).map_err(|source| SeedError::Encode {
                    what: "an episode",
                    source,
                })?;
                keyturn_store::write_atomic(&path, &bytes, 0o644)?;
                let snapshot = sink.services.ledger.snapshot().await.ok();
                sink.checkpoints.record_finished(
                    &item.key,
                    &item.hash,
                    Some(&hash_hex(&bytes)),
                    sink.ctx.clock.now_ms(),
                    snapshot,
                )?;
                sink.services.state.flush().await.ok();
                let counts = &mut self.counts;
                counts.processed += 1;
                counts.chunks += ep.chunks.len();
                counts.entities += ep.entities.len();
                counts.relationships += ep.relationships.len();
                counts.quotes += ep.quotes.len();
                self.episode_ms
                    .insert(ep.episode_id.clone(), ms.max(0) as u64);
                progress.episode("done", &ep.title);
            }
            Err(EpisodeError::Skip(reason)) => {
                progress.note(&format!("skipped {}: {reason}", item.path.display()));
                self.skipped.push(Skipped {
                    path: item.path.display().to_string(),
                    reason,
                });
                progress.episode("skipped", &item.title);
            }
            Err(EpisodeError::Failed(e)) => {
                progress.note(&format!("failed {}: {e}", item.path.display()));
                self.failed.push(Skipped {
                    path: item.path.display().to_string(),
                    reason: e,
                });
                progress.episode("failed", &item.title);
            }
            Err(EpisodeError::Stop(s)) => {
                if self.stop.is_none() {
                    self.stop = Some(s);
                }
            }
        }
        Ok(())
    }
}
