//! Usage history on the hot path: a per-key cell for the current day of each model, and the
//! finished days (at most [`crate::snapshot::HISTORY_DAYS`] back).

/// What one key sent to one model on the current day (the hot path's part of usage history).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct UsageCell {
    pub(super) day_start_ms: i64,
    pub(super) requests: u64,
    pub(super) served: u64,
    pub(super) refused: u64,
    pub(super) tokens: u64,
}

/// A finished day of one key's use of one model.
#[derive(Debug, Clone, Copy)]
pub(super) struct PastUsage {
    pub(super) day_start_ms: i64,
    pub(super) key: u32,
    pub(super) model: u32,
    pub(super) requests: u64,
    pub(super) served: u64,
    pub(super) refused: u64,
    pub(super) tokens: u64,
}

/// What a settle corrects in one row of the usage history.
pub(super) struct Answers<'a> {
    pub(super) served: &'a mut u64,
    pub(super) refused: &'a mut u64,
    pub(super) tokens: &'a mut u64,
}

/// The usage history row of the day a request was sent (`sent_ms`) by `key` to `model`: the
/// key's current cell, or, once the key has sent on a later day, that day's finished row. A
/// request answered after Pacific midnight is counted on the day it was sent. Searching the
/// finished days happens only then, and allocates nothing.
pub(super) fn sent_day_row<'a>(
    cell: Option<&'a mut UsageCell>,
    past: &'a mut [PastUsage],
    key: u32,
    model: u32,
    sent_ms: i64,
) -> Option<Answers<'a>> {
    let cell = cell?;
    if cell.day_start_ms <= sent_ms {
        return Some(Answers {
            served: &mut cell.served,
            refused: &mut cell.refused,
            tokens: &mut cell.tokens,
        });
    }
    let day = crate::pacific::QuotaDay::containing(sent_ms).start_ms;
    past.iter_mut()
        .find(|p| p.key == key && p.model == model && p.day_start_ms == day)
        .map(|p| Answers {
            served: &mut p.served,
            refused: &mut p.refused,
            tokens: &mut p.tokens,
        })
}

/// Drops finished days older than the history window (those starting before `cutoff_ms`).
pub(super) fn prune_past(past: &mut Vec<PastUsage>, cutoff_ms: i64) {
    past.retain(|p| p.day_start_ms >= cutoff_ms);
}

/// Start of the oldest day the usage history keeps, for the day containing `now`.
pub(super) fn history_cutoff(now_ms: i64) -> i64 {
    crate::pacific::QuotaDay::containing(now_ms)
        .and_before(crate::snapshot::HISTORY_DAYS)
        .last()
        .map_or(now_ms, |d| d.start_ms)
}
