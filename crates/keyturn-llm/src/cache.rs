//! The response cache: in memory (moka: TTL and a size bound), optionally backed by files in the
//! state folder so hits survive restarts. Keys are SHA-256 of the model and the request body;
//! hits spend no quota.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use keyturn_core::Clock;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Cache settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long an answer stays.
    pub ttl: Duration,
    /// Most answers kept in memory.
    pub max_entries: u64,
    /// Folder for the on-disk copy (`None`: memory only).
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(7 * 24 * 3600),
            max_entries: 10_000,
            dir: None,
        }
    }
}

/// Hits and misses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Lookups that went to Gemini.
    pub misses: u64,
}

/// The cache.
#[derive(Debug)]
pub struct ResponseCache {
    mem: moka::future::Cache<String, Value>,
    cfg: CacheConfig,
    // The pool's clock: a copy on disk is stamped and aged by the time the ledger reads, so
    // under `KEYTURN_CLOCK_OFFSET_MS` the cache and the quota agree on what "now" is.
    clock: Arc<dyn Clock>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ResponseCache {
    /// A cache whose copies on disk age by `clock`.
    pub fn new(cfg: CacheConfig, clock: Arc<dyn Clock>) -> Self {
        let mem = moka::future::Cache::builder()
            .max_capacity(cfg.max_entries)
            .time_to_live(cfg.ttl)
            .build();
        if let Some(d) = &cfg.dir
            && let Err(e) = std::fs::create_dir_all(d)
        {
            tracing::warn!(dir = %d.display(), error = %e, "cannot create the response cache folder; caching in memory only");
        }
        Self {
            mem,
            cfg,
            clock,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The key of a request.
    pub fn key(&self, model: &str, body: &Value) -> String {
        let mut h = Sha256::new();
        h.update(model.strip_prefix("models/").unwrap_or(model).as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(body).unwrap_or_default());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn file(&self, key: &str) -> Option<PathBuf> {
        self.cfg.dir.as_ref().map(|d| d.join(format!("{key}.json")))
    }

    /// A cached answer, from memory or disk.
    pub async fn get(&self, key: &str) -> Option<Value> {
        if let Some(v) = self.mem.get(key).await {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(v);
        }
        if let Some(path) = self.file(key)
            && let Ok(meta) = std::fs::metadata(&path)
            && let Some(written_ms) = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
            && self.clock.now_ms().saturating_sub(written_ms) < self.cfg.ttl.as_millis() as i64
            && let Ok(bytes) = std::fs::read(&path)
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
        {
            self.mem.insert(key.to_owned(), v.clone()).await;
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(v);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Stores an answer.
    pub async fn put(&self, key: String, value: Value) {
        if let Some(path) = self.file(&key)
            && let Some(dir) = path.parent()
        {
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            // Stamped with the pool's clock, not the file system's, as `get` ages it.
            let stamp =
                SystemTime::UNIX_EPOCH + Duration::from_millis(self.clock.now_ms().max(0) as u64);
            let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut f| {
                std::io::Write::write_all(&mut f, &bytes)?;
                f.as_file().set_modified(stamp)?;
                f.persist(&path).map_err(|e| e.error)?;
                Ok(())
            });
            if let Err(e) = written {
                tracing::debug!(error = %e, "could not write a cached answer to disk");
            }
        }
        self.mem.insert(key, value).await;
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use keyturn_core::ManualClock;

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::at_ms(1_800_000_000_000))
    }

    #[tokio::test]
    async fn disk_copies_survive_a_new_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CacheConfig {
            dir: Some(dir.path().to_owned()),
            ..CacheConfig::default()
        };
        let clock = clock();
        let a = ResponseCache::new(cfg.clone(), clock.clone());
        let k = a.key("m", &serde_json::json!({"x": 1}));
        assert_eq!(a.get(&k).await, None);
        a.put(k.clone(), serde_json::json!({"answer": 42})).await;
        let b = ResponseCache::new(cfg, clock);
        assert_eq!(b.get(&k).await, Some(serde_json::json!({"answer": 42})));
        assert_eq!(b.stats(), CacheStats { hits: 1, misses: 0 });
    }

    /// A copy on disk lives `ttl` by the pool's clock, whatever the system clock says: with the
    /// clock moved (`KEYTURN_CLOCK_OFFSET_MS`, or a test's manual clock) the cache and the
    /// ledger agree on when an answer expired.
    #[tokio::test]
    async fn disk_copies_expire_by_the_pools_clock() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CacheConfig {
            ttl: Duration::from_secs(3600),
            dir: Some(dir.path().to_owned()),
            ..CacheConfig::default()
        };
        let clock = clock();
        let a = ResponseCache::new(cfg.clone(), clock.clone());
        let k = a.key("m", &serde_json::json!({"x": 2}));
        a.put(k.clone(), serde_json::json!({"answer": 1})).await;
        clock.advance(Duration::from_secs(3599));
        let fresh = ResponseCache::new(cfg.clone(), clock.clone());
        assert!(
            fresh.get(&k).await.is_some(),
            "younger than ttl by the pool's clock"
        );
        clock.advance(Duration::from_secs(2));
        let later = ResponseCache::new(cfg, clock);
        assert_eq!(
            later.get(&k).await,
            None,
            "older than ttl by the pool's clock"
        );
    }
}
