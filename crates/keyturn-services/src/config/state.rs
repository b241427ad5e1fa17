//! `[state]`: where the shared state lives (a folder, or Redis).

use std::path::PathBuf;
use std::time::Duration;

use keyturn_core::serde_duration;
use serde::{Deserialize, Serialize};

/// Which state backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `FileStore` in `state.dir`: one process.
    #[default]
    File,
    /// `RedisLedger` at `state.redis_url`: many processes.
    Redis,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `file` or `redis`.
    pub backend: Backend,
    /// Folder of the file backend.
    pub dir: PathBuf,
    /// Redis URL.
    pub redis_url: String,
    /// Namespace in Redis (several pipelines can share one Redis).
    pub namespace: String,
    /// File backend: at most one write per interval.
    #[serde(with = "serde_duration")]
    pub flush_interval: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: Backend::File,
            dir: PathBuf::from(".keyturn"),
            redis_url: "redis://127.0.0.1:6379".into(),
            namespace: "default".into(),
            flush_interval: Duration::from_secs(1),
        }
    }
}
