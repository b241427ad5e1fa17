//! Gemini's two batch limits per project, kept before submitting rather than found by refusal:
//! jobs pending or running at once (100 documented, `[pipeline] batch_max_jobs`), and input
//! tokens enqueued per model (`[pipeline] batch_enqueued_tokens`, else the documented Tier 1
//! figure for the model, [`prices::batch_enqueued_tokens_of`], else none until learned).
//!
//! - **The estimate** is the interactive path's own reservation
//!   ([`keyturn_llm::local_estimate`] per extraction request, [`keyturn_embeddings::estimate_tokens`]
//!   per embedding text): ⌈UTF-8 bytes / 3⌉ + 4 a part. Gemini counts about four characters a
//!   token (the simulator exactly ⌈chars / 4⌉ of the system instruction and the contents), so
//!   the estimate is above the count, by about a third for English text: a project is never
//!   filled past its limit by the estimate being low.
//! - **Slot choice** ([`Driver::pick_slot`]) passes over a project whose live jobs are at its
//!   limit or whose enqueued tokens leave no room for the next episode; a job is then cut
//!   (whole episodes) to the room left. An episode bigger than every project's whole limit is
//!   named and fails (or goes interactive with `--batch-fallback interactive`) instead of waiting
//!   for room that never comes.
//! - **Learned from a refusal** ([`Driver::learn`]): a 429 naming
//!   `BatchConcurrentRequestsPerProject` or `BatchEnqueuedTokensPerProjectPerModel` with a value
//!   lowers that limit for the project for the run, never above what it had just live (so the
//!   same job is never sent again into the same refusal); a bare 429 lowers the project's job
//!   limit to the jobs it had live (at least 1), so it waits for one of them to end. Said in the
//!   progress notes and in `run-report.json`'s `batch.limits_learned`.

use keyturn_gemini::GeminiError;

use super::*;

/// What refusals taught about one project's limits, for `run-report.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Learned {
    /// Jobs it may have pending or running at once, if lowered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u64>,
    /// Input tokens it may have enqueued, by model, if lowered.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub enqueued_tokens: BTreeMap<String, u64>,
}

/// Which limit a submit's 429 names, with the value it states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `BatchConcurrentRequestsPerProject`.
    Jobs(Option<u64>),
    /// `BatchEnqueuedTokensPerProjectPerModel`.
    Tokens(Option<u64>),
    /// Neither (a bare 429, or another quota).
    Bare,
}

/// Where the next job can go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pick {
    /// This slot has room for it.
    Slot(usize),
    /// Every project that takes jobs is at a limit: after the next poll.
    Wait,
    /// No project takes batch jobs any more.
    NoneLeft,
}

/// Estimated input tokens of an episode's extraction requests, as the interactive path reserves
/// them for the same requests.
pub(super) fn extraction_tokens(item: &Item, prepared: &Prepared, model: &str) -> u64 {
    prepared
        .chunks
        .iter()
        .map(|c| keyturn_llm::local_estimate(&extraction_request(item, c, model).body))
        .sum()
}

/// Estimated input tokens of embedding texts, as the interactive embeddings reserve them.
pub(super) fn embedding_tokens(texts: &[String]) -> u64 {
    texts
        .iter()
        .map(|t| keyturn_embeddings::estimate_tokens(t))
        .sum()
}

/// The limit a refused submit names, read from the error's `QuotaFailure` (by `quotaId` or
/// `quotaMetric`, and `quotaValue`).
pub(super) fn refusal_of(e: &GeminiError) -> Refusal {
    let mut e = e;
    let body = loop {
        match e {
            GeminiError::Api(a) => break a.body.as_str(),
            GeminiError::RetriesExhausted { last, .. } => e = last,
            _ => return Refusal::Bare,
        }
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return Refusal::Bare;
    };
    let details = v
        .pointer("/error/details")
        .and_then(serde_json::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for violation in details
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|t| t.ends_with("QuotaFailure"))
        })
        .filter_map(|d| d.get("violations")?.as_array())
        .flatten()
    {
        let name: String = ["quotaId", "quotaMetric"]
            .iter()
            .filter_map(|k| violation.get(*k)?.as_str())
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        let value = match violation.get("quotaValue") {
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        if name.contains("batchconcurrent") {
            return Refusal::Jobs(value);
        }
        if name.contains("batchenqueued") {
            return Refusal::Tokens(value);
        }
    }
    Refusal::Bare
}

/// What the slot choice sees of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotView {
    /// Batch mode is off for it.
    pub(super) off: bool,
    /// Its jobs pending or running.
    pub(super) live_jobs: usize,
    /// Most it may have.
    pub(super) max_jobs: usize,
    /// Tokens it can still take for the model (`None`: no limit known).
    pub(super) room: Option<u64>,
}

/// The first project from `next` round-robin that is on, below its job limit and with room for
/// `need` tokens; with where the next choice starts.
pub(super) fn choose(views: &[SlotView], next: usize, need: u64) -> (Pick, usize) {
    let n = views.len();
    for i in 0..n {
        let s = (next + i) % n;
        let v = views[s];
        if v.off || v.live_jobs >= v.max_jobs || v.room.is_some_and(|room| room < need) {
            continue;
        }
        return (Pick::Slot(s), s + 1);
    }
    if views.iter().any(|v| !v.off) {
        (Pick::Wait, next)
    } else {
        (Pick::NoneLeft, next)
    }
}

/// The largest of the whole token limits of the projects that take jobs, when all are known and
/// below `need`.
pub(super) fn largest_below(limits: &[Option<u64>], need: u64) -> Option<u64> {
    if limits.is_empty() || limits.iter().any(|l| l.is_none_or(|l| l >= need)) {
        return None;
    }
    limits.iter().flatten().copied().max()
}

/// A project's job limit after a 429 naming it (`stated`, if it said) or a bare one (`None`):
/// no more than it had live (at least 1), the stated value, or the limit before.
pub(super) fn jobs_after(stated: Option<u64>, live: usize, was: usize) -> usize {
    let stated = stated.map_or(usize::MAX, |v| usize::try_from(v).unwrap_or(usize::MAX));
    live.max(1).min(stated).min(was).max(1)
}

/// A project's enqueued-token limit for a model after a 429 naming it: the stated value, and
/// below the `refused` total (its live jobs' tokens and the refused job's) so the same job is
/// never sent into the same refusal, and never above the limit before.
pub(super) fn tokens_after(stated: Option<u64>, refused: u64, was: Option<u64>) -> u64 {
    stated
        .unwrap_or(u64::MAX)
        .min(refused.saturating_sub(1))
        .min(was.unwrap_or(u64::MAX))
}

impl Driver<'_, '_> {
    /// The enqueued-token limit of the slot's project for `model`: the lowest of what a refusal
    /// stated and what is configured (or, unconfigured, documented); `None`: no limit known.
    pub(super) fn token_limit(&self, slot: usize, model: &str) -> Option<u64> {
        let learned = self.slots[slot].learned_tokens.get(model).copied();
        let configured = self
            .opts
            .enqueued_tokens
            .or_else(|| prices::batch_enqueued_tokens_of(model));
        match (learned, configured) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn live_jobs(&self, project: &str) -> usize {
        self.live
            .iter()
            .filter(|l| l.record.project == project)
            .count()
    }

    fn enqueued(&self, project: &str, model: &str) -> u64 {
        self.live
            .iter()
            .filter(|l| l.record.project == project && l.record.model == model)
            .map(|l| l.tokens)
            .sum()
    }

    /// Tokens the slot's project can still take for `model` (`None`: no limit known).
    pub(super) fn room(&self, slot: usize, model: &str) -> Option<u64> {
        self.token_limit(slot, model)
            .map(|limit| limit.saturating_sub(self.enqueued(&self.slots[slot].project, model)))
    }

    /// The next project, round-robin, with a job to spare and room for `need` tokens of `model`.
    pub(super) fn pick_slot(&mut self, model: &str, need: u64) -> Pick {
        let views: Vec<SlotView> = (0..self.slots.len())
            .map(|s| SlotView {
                off: self.slots[s].off,
                live_jobs: self.live_jobs(&self.slots[s].project),
                max_jobs: self.slots[s].max_jobs,
                room: self.room(s, model),
            })
            .collect();
        let (pick, next) = choose(&views, self.next_slot, need);
        self.next_slot = next;
        pick
    }

    /// The largest whole limit among the projects that take jobs, when every one of them is
    /// below `need`: the episode can never go as a batch job.
    pub(super) fn too_big(&self, model: &str, need: u64) -> Option<u64> {
        let limits: Vec<Option<u64>> = (0..self.slots.len())
            .filter(|&s| !self.slots[s].off)
            .map(|s| self.token_limit(s, model))
            .collect();
        largest_below(&limits, need)
    }

    /// Estimated input tokens of a recorded job, from the episodes still waiting for it (a
    /// resumed job's requests were not kept; episodes finished since count nothing).
    pub(super) fn record_tokens(&self, display: &str, rec: &BatchRecord) -> u64 {
        let embed = embed::is_embed(display);
        rec.episodes
            .iter()
            .filter_map(|e| self.work.get(&e.id).filter(|w| w.item.hash == e.hash))
            .map(|w| {
                if embed {
                    w.embed.as_ref().map_or(0, |s| embedding_tokens(&s.texts))
                } else {
                    w.tokens
                }
            })
            .sum()
    }

    /// A submit to the slot's project refused with a 429 (`e`) for a job of `tokens` tokens of
    /// `model`: the limit it names is lowered for the run (see the module docs), said and
    /// reported.
    pub(super) fn learn(&mut self, slot: usize, model: &str, tokens: u64, e: &GeminiError) {
        let project = self.slots[slot].project.clone();
        let live = self.live_jobs(&project);
        let (what, now) = match refusal_of(e) {
            Refusal::Tokens(stated) => {
                let now = tokens_after(
                    stated,
                    self.enqueued(&project, model).saturating_add(tokens),
                    self.token_limit(slot, model),
                );
                self.slots[slot]
                    .learned_tokens
                    .insert(model.to_owned(), now);
                self.report
                    .limits_learned
                    .entry(project.clone())
                    .or_default()
                    .enqueued_tokens
                    .insert(model.to_owned(), now);
                (format!("enqueued input tokens for {model}"), now)
            }
            Refusal::Jobs(stated) => {
                let now = jobs_after(stated, live, self.slots[slot].max_jobs) as u64;
                self.slots[slot].max_jobs = now as usize;
                self.report
                    .limits_learned
                    .entry(project.clone())
                    .or_default()
                    .max_jobs = Some(now);
                ("jobs at once".to_owned(), now)
            }
            Refusal::Bare => {
                let now = jobs_after(None, live, self.slots[slot].max_jobs) as u64;
                self.slots[slot].max_jobs = now as usize;
                self.report
                    .limits_learned
                    .entry(project.clone())
                    .or_default()
                    .max_jobs = Some(now);
                ("jobs at once (a 429 naming no limit)".to_owned(), now)
            }
        };
        self.sink.progress.note(&format!(
            "batch limit of project {project}: {what} lowered to {now} for this run; Gemini refused a job ({})",
            crate::term::safe(&e.to_string())
        ));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn api(body: serde_json::Value) -> GeminiError {
        let c = keyturn_gemini::error::classify(429, body.to_string().as_bytes());
        GeminiError::Api(Box::new(keyturn_gemini::error::ApiFailure {
            status: 429,
            status_text: c.status_text,
            message: c.message,
            model: "gemini-2.5-flash".into(),
            key: "test-key-label".into(),
            kind: c.kind,
            retry_after: c.retry_after,
            quota_value: c.quota_value,
            body: body.to_string(),
        }))
    }

    fn quota(id: &str, value: &str) -> serde_json::Value {
        serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota",
            "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaId": id, "quotaValue": value}]}]}})
    }

    #[test]
    fn the_slot_choice_passes_over_projects_off_at_their_job_limit_or_without_room() {
        let v = |off, live_jobs, max_jobs, room| SlotView {
            off,
            live_jobs,
            max_jobs,
            room,
        };
        let views = [
            v(true, 0, 100, None),        // off
            v(false, 2, 2, Some(10_000)), // at its job limit
            v(false, 0, 2, Some(500)),    // room for less than the job
            v(false, 1, 2, Some(1_000)),  // room for it exactly
            v(false, 0, 100, None),       // no token limit known
        ];
        assert_eq!(choose(&views, 0, 1_000), (Pick::Slot(3), 4));
        // Round-robin from where the last choice ended, wrapping round.
        assert_eq!(choose(&views, 4, 1_000), (Pick::Slot(4), 5));
        assert_eq!(choose(&views, 5, 1_000), (Pick::Slot(3), 4));
        assert_eq!(choose(&views, 0, 400), (Pick::Slot(2), 3));
        // Nothing with room: wait for a job to end; nothing on: no project left.
        assert_eq!(choose(&views[..3], 1, 1_000), (Pick::Wait, 1));
        assert_eq!(choose(&views[..1], 0, 1), (Pick::NoneLeft, 0));
        assert_eq!(choose(&[], 0, 1), (Pick::NoneLeft, 0));
    }

    #[test]
    fn an_episode_is_too_big_only_when_every_project_that_takes_jobs_has_a_smaller_limit() {
        assert_eq!(
            largest_below(&[Some(1_200), Some(1_000)], 1_495),
            Some(1_200)
        );
        assert_eq!(largest_below(&[Some(1_200), Some(1_500)], 1_495), None);
        assert_eq!(largest_below(&[Some(1_200), None], 1_495), None);
        assert_eq!(largest_below(&[], 1_495), None);
    }

    #[test]
    fn a_refusal_lowers_a_limit_never_raises_it_and_never_to_what_was_just_refused() {
        // Stated 2 with 1 live (another client's job, say): what it had live.
        assert_eq!(jobs_after(Some(2), 1, 100), 1);
        assert_eq!(jobs_after(Some(2), 5, 100), 2);
        // Bare: the jobs live, at least 1; never above the limit before.
        assert_eq!(jobs_after(None, 0, 100), 1);
        assert_eq!(jobs_after(None, 3, 100), 3);
        assert_eq!(jobs_after(None, 3, 2), 2);
        // Tokens: the stated value, below what was refused, not above the limit before.
        assert_eq!(tokens_after(Some(2_500), 4_966, Some(3_000_000)), 2_500);
        assert_eq!(tokens_after(Some(5_000), 3_000, None), 2_999);
        assert_eq!(tokens_after(None, 3_000, Some(2_000)), 2_000);
    }

    #[test]
    fn a_refusal_names_its_batch_limit_and_value_or_none() {
        assert_eq!(
            refusal_of(&api(quota("BatchConcurrentRequestsPerProject", "2"))),
            Refusal::Jobs(Some(2))
        );
        assert_eq!(
            refusal_of(&api(quota(
                "BatchEnqueuedTokensPerProjectPerModel",
                "3000000"
            ))),
            Refusal::Tokens(Some(3_000_000))
        );
        let bare = serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Resource has been exhausted (e.g. check quota)."}});
        assert_eq!(refusal_of(&api(bare)), Refusal::Bare);
        assert_eq!(
            refusal_of(&api(quota(
                "GenerateRequestsPerMinutePerProjectPerModel",
                "10"
            ))),
            Refusal::Bare
        );
    }

    #[test]
    fn the_estimate_is_the_interactive_reservation_and_never_below_the_simulators_count() {
        let dir = tempfile::tempdir().unwrap();
        crate::demo::write_samples(dir.path()).unwrap();
        let items = crate::run::discover(&[dir.path().to_path_buf()], false).items;
        assert!(!items.is_empty());
        let (mut est, mut sim) = (0u64, 0u64);
        for item in &items {
            let opts = crate::run::SeedOptions {
                chunk_tokens: 90,
                ..crate::run::SeedOptions::default()
            };
            let bytes = std::fs::read(&item.source).unwrap();
            let prepared = Prepared {
                hash: item.hash.clone(),
                chunks: crate::run::chunks_of(item.format, &bytes, &opts).unwrap(),
            };
            let tokens = extraction_tokens(item, &prepared, "gemini-2.5-flash");
            let mut counted = 0;
            for c in &prepared.chunks {
                let req = extraction_request(item, c, "gemini-2.5-flash");
                let wire: keyturn_sim::wire::GenerateContentRequest = serde_json::from_value(
                    keyturn_llm::json_request_body(&req, &crate::graph::extraction_schema()),
                )
                .unwrap();
                counted += keyturn_sim::wire::count_tokens(&wire.prompt_text());
            }
            assert!(tokens >= counted, "{tokens} < {counted}");
            est += tokens;
            sim += counted;
        }
        // About a third above for English text (bytes / 3 against characters / 4).
        let ratio = est as f64 / sim as f64;
        assert!((1.2..1.5).contains(&ratio), "{est} vs {sim}: {ratio}");
    }
}
