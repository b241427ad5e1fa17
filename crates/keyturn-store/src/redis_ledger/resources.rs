//! Resource affinity in Redis: which project owns a file, a cached content or a batch, shared by
//! every process on the namespace.
//!
//! - `kt:{ns}:r:{collection}/{id}` holds the owning project, expiring with the resource
//!   (`PXAT` its expiry, so Redis forgets it by itself).
//! - `kt:{ns}:rp:{collection}` is a sorted set of the projects owning one, scored by the latest
//!   expiry among them (`ZADD GT`): listing reads the projects whose score is still ahead.
//!
//! Names are validated [`ResourceName`]s and projects come from the key ring, so nothing a
//! client sends reaches a Redis key unchecked. Never a key: projects only.

use keyturn_core::resources::valid_project;
use keyturn_core::{ResourceKind, ResourceMap, ResourceName};

use super::*;

impl RedisLedger {
    /// The candidate keys of one acquire, in the policy's order from `start`: all of them, or
    /// for a pinned demand only those of the pinned key's project.
    pub(super) fn candidate_order(&self, start: usize, demand: Demand) -> Vec<usize> {
        let n = self.candidates.len();
        let pinned = demand
            .project_of
            .map(|k| self.candidates.get(k.index()).map(|c| c.1.as_str()));
        (0..n)
            .map(|i| (start + i) % n)
            .filter(|&k| match pinned {
                None => true,
                Some(p) => p == Some(self.candidates[k].1.as_str()),
            })
            .collect()
    }

    /// The resource map on this ledger's Redis and namespace.
    pub fn resources(&self) -> RedisResources {
        RedisResources {
            conn: self.conn.clone(),
            server: self.server.clone(),
            prefix: self.prefix.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// A [`ResourceMap`] in Redis, beside a [`RedisLedger`] ([`RedisLedger::resources`]). Fails
/// closed like the ledger: with Redis down, an owner is not guessed.
#[derive(Clone)]
pub struct RedisResources {
    conn: ConnectionManager,
    server: String,
    prefix: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RedisResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisResources")
            .field("server", &self.server)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisResources {
    fn owner_key(&self, name: &ResourceName) -> String {
        format!("{}r:{name}", self.prefix)
    }

    fn projects_key(&self, kind: ResourceKind) -> String {
        format!("{}rp:{}", self.prefix, kind.collection())
    }

    fn fail(&self, e: &redis::RedisError) -> LedgerError {
        LedgerError::Backend(backend(&self.server, e))
    }
}

#[async_trait]
impl ResourceMap for RedisResources {
    async fn record(
        &self,
        name: &ResourceName,
        project: &str,
        expires_ms: i64,
    ) -> Result<(), LedgerError> {
        if !valid_project(project) {
            return Err(LedgerError::UnknownTarget(format!(
                "project '{}' cannot own a resource",
                project.escape_debug()
            )));
        }
        if expires_ms <= self.clock.now_ms() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let projects = self.projects_key(name.kind());
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.owner_key(name))
            .arg(project)
            .arg("PXAT")
            .arg(expires_ms)
            .ignore()
            .cmd("ZADD")
            .arg(&projects)
            .arg("GT")
            .arg(expires_ms)
            .arg(project)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&projects)
            .arg("-inf")
            .arg(self.clock.now_ms())
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(&e))?;
        Ok(())
    }

    async fn owner(&self, name: &ResourceName) -> Result<Option<String>, LedgerError> {
        let mut conn = self.conn.clone();
        let p: Option<String> = conn
            .get(self.owner_key(name))
            .await
            .map_err(|e| self.fail(&e))?;
        // What another writer put there is checked like a state file's contents.
        Ok(p.filter(|p| valid_project(p)))
    }

    async fn forget(&self, name: &ResourceName) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .del(self.owner_key(name))
            .await
            .map_err(|e| self.fail(&e))?;
        Ok(())
    }

    async fn projects(&self, kind: ResourceKind) -> Result<Vec<String>, LedgerError> {
        let mut conn = self.conn.clone();
        let mut p: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.projects_key(kind))
            .arg(format!("({}", self.clock.now_ms()))
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(&e))?;
        p.retain(|p| valid_project(p));
        p.sort();
        Ok(p)
    }
}
