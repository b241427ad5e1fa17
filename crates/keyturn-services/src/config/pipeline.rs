//! `[cache]`, `[embeddings]` and `[pipeline]`: how `keyturn seed` runs and what it keeps.

use std::time::Duration;

use keyturn_core::serde_duration;
use serde::{Deserialize, Serialize};

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Whether LLM answers are cached.
    pub enabled: bool,
    /// How long an answer stays.
    #[serde(with = "serde_duration")]
    pub ttl: Duration,
    /// Most answers in memory.
    pub max_entries: u64,
    /// Also keep answers on disk, in `<state.dir>/cache`.
    pub disk: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        let d = keyturn_llm::CacheConfig::default();
        Self {
            enabled: true,
            ttl: d.ttl,
            max_entries: d.max_entries,
            disk: false,
        }
    }
}

/// `[embeddings]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingsSettings {
    /// Items per batch (at most 100).
    pub batch_size: usize,
    /// Batches in flight.
    pub concurrency: usize,
}

impl Default for EmbeddingsSettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            concurrency: 4,
        }
    }
}

/// How `keyturn seed` sends its extraction requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineMode {
    /// One call per chunk, answers in seconds (default).
    #[default]
    Interactive,
    /// Gemini's Batch Mode: jobs answered within a day, at half the price.
    Batch,
}

/// What batch mode does with an episode whose batch items failed, or when no project can run
/// batch jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchFallbackSetting {
    /// Retry in a later job (default).
    #[default]
    Batch,
    /// Call Gemini interactively for it.
    Interactive,
}

/// `[pipeline]`: how `keyturn seed` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// `"interactive"` or `"batch"` (`--batch`).
    pub mode: PipelineMode,
    /// `"batch"` or `"interactive"` (`--batch-fallback`).
    pub batch_fallback: BatchFallbackSetting,
    /// Most requests (chunks) in one batch job.
    pub batch_max_requests: usize,
    /// First interval between polls of the batch jobs (again after any job changed state).
    #[serde(with = "serde_duration")]
    pub batch_poll: Duration,
    /// Longest interval between polls (the interval doubles while nothing changes).
    #[serde(with = "serde_duration")]
    pub batch_max_poll: Duration,
    /// In batch mode, the chunk and entity embeddings go as batch jobs too
    /// (`asyncBatchEmbedContent`) instead of interactive `batchEmbedContents` calls.
    pub batch_embeddings: bool,
    /// Most batch jobs a project has pending or running at once (Gemini: 100).
    pub batch_max_jobs: usize,
    /// Most input tokens (keyturn's estimate) of a project's pending and running jobs per
    /// model. Unset: the documented Tier 1 figure for the model where known
    /// (`keyturn_core::prices::BATCH_ENQUEUED_TOKENS_TIER1`), else none until a refusal states it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_enqueued_tokens: Option<u64>,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            mode: PipelineMode::Interactive,
            batch_fallback: BatchFallbackSetting::Batch,
            batch_max_requests: 1_000,
            batch_poll: Duration::from_secs(10),
            batch_max_poll: Duration::from_secs(300),
            batch_embeddings: false,
            batch_max_jobs: keyturn_core::prices::BATCH_CONCURRENT_JOBS as usize,
            batch_enqueued_tokens: None,
        }
    }
}

#[cfg(test)]
mod pipeline_tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::error::ConfigError;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("keyturn.toml"))
    }

    #[test]
    fn batch_mode_is_configured_in_pipeline_and_its_polls_are_checked() {
        let d = load("").unwrap().pipeline;
        assert_eq!(d.mode, PipelineMode::Interactive);
        assert_eq!(d.batch_fallback, BatchFallbackSetting::Batch);
        let p = load(
            "[pipeline]\nmode = \"batch\"\nbatch_fallback = \"interactive\"\nbatch_max_requests = 50\nbatch_poll = \"2s\"\nbatch_max_poll = \"1m\"",
        )
        .unwrap()
        .pipeline;
        assert_eq!(p.mode, PipelineMode::Batch);
        assert_eq!(p.batch_fallback, BatchFallbackSetting::Interactive);
        assert_eq!(p.batch_max_requests, 50);
        assert_eq!(p.batch_poll, Duration::from_secs(2));
        assert_eq!((d.batch_max_jobs, d.batch_enqueued_tokens), (100, None));
        let l = load("[pipeline]\nbatch_max_jobs = 2\nbatch_enqueued_tokens = 5000")
            .unwrap()
            .pipeline;
        assert_eq!(
            (l.batch_max_jobs, l.batch_enqueued_tokens),
            (2, Some(5_000))
        );
        for (bad, field) in [
            ("mode = \"later\"", "mode"),
            ("batch_max_requests = 0", "batch_max_requests"),
            ("batch_max_jobs = 0", "batch_max_jobs"),
            ("batch_enqueued_tokens = 0", "batch_enqueued_tokens"),
            ("batch_poll = \"0s\"", "batch_poll"),
            (
                "batch_poll = \"10m\"\nbatch_max_poll = \"1m\"",
                "batch_poll",
            ),
        ] {
            let e = load(&format!("[pipeline]\n{bad}")).unwrap_err().to_string();
            assert!(e.contains(field), "{bad}: {e}");
        }
    }
}
