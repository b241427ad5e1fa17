//! The interactive run: episodes in flight up to the concurrency, each chunk's extraction a
//! call of its own.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;

use super::{
    Ctx, EpisodeError, Item, SeedError, Sink, Tally, extraction_of, extraction_request,
    finish_episode, prepare,
};
use crate::graph::{Episode, Extraction, extraction_schema};

/// An episode the interactive way: each chunk's extraction a call of its own.
pub(crate) async fn process(ctx: &Ctx, item: &Item) -> Result<Episode, EpisodeError> {
    let prepared = prepare(ctx, item)?;
    let schema = extraction_schema();
    let model = ctx.opts.model.clone();
    let results: Vec<Result<(usize, Extraction), EpisodeError>> =
        futures::stream::iter(prepared.chunks.iter())
            .map(|c| {
                let schema = &schema;
                let model = &model;
                async move {
                    let req = extraction_request(item, c, model);
                    let answer = ctx.llm.generate_json(&req, schema).await;
                    Ok((c.index, extraction_of(ctx, item, c.index, answer)?))
                }
            })
            .buffer_unordered(ctx.opts.requests.max(1))
            .collect()
            .await;
    let mut extractions = Vec::with_capacity(results.len());
    for r in results {
        extractions.push(r?);
    }
    finish_episode(ctx, item, prepared, extractions).await
}

/// The interactive run: episodes in flight up to the concurrency, each chunk a call. Returns
/// whether it was interrupted.
pub(super) async fn run_interactive(
    sink: &Sink<'_>,
    tally: &mut Tally,
    pending: Vec<Item>,
    mut interrupt: watch::Receiver<bool>,
    grace: Duration,
) -> Result<bool, SeedError> {
    let ctx = sink.ctx;
    let progress = sink.progress;
    let opts = &ctx.opts;
    let mut queue = pending.into_iter();
    let mut running = FuturesUnordered::new();
    let mut interrupted = false;
    loop {
        while tally.stop.is_none() && !interrupted && running.len() < opts.concurrency.max(1) {
            let Some(item) = queue.next() else { break };
            running.push(async move {
                let t0 = ctx.clock.now_ms();
                let r = process(ctx, &item).await;
                (item, r, ctx.clock.now_ms() - t0)
            });
        }
        if running.is_empty() {
            break;
        }
        let next = if interrupted {
            match tokio::time::timeout(grace, running.next()).await {
                Ok(n) => n,
                Err(_) => {
                    tracing::warn!(
                        in_flight = running.len(),
                        "episodes still running after the grace period; cancelled (they will be redone)"
                    );
                    break;
                }
            }
        } else {
            tokio::select! {
                n = running.next() => n,
                _ = interrupt.changed() => {
                    if *interrupt.borrow() {
                        interrupted = true;
                        progress.note("stopping: no new episodes; finishing those in flight");
                    }
                    continue;
                }
            }
        };
        let Some((item, result, ms)) = next else {
            break;
        };
        tally.settle(sink, &item, result, ms).await?;
    }
    drop(running);
    Ok(interrupted)
}
