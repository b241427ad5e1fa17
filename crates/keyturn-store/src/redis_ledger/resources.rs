//! Resource affinity in Redis: which project owns a file, a cached content or a batch, shared by
//! every process on the namespace.
//!
//! - `kt:{ns}:r:{collection}/{id}` holds the owning project, expiring with the resource
//!   (`PXAT` its expiry, so Redis forgets it by itself).
//! - `kt:{ns}:rc:{collection}/{id}` holds the label of the proxy client that created it, when
//!   one did, with the same expiry; written in the same `MULTI` as the owner, in the same slot
//!   (the namespace is the hash tag). A record without a client moves an existing client's
//!   expiry with the owner's and leaves it in place. A process from before reads the owner key
//!   as it always did.
//! - `kt:{ns}:rp:{collection}` is a sorted set of the projects owning one, scored by the latest
//!   expiry among them (`ZADD GT`): listing reads the projects whose score is still ahead.
//!
//! Names are validated [`ResourceName`]s and projects come from the key ring, so nothing a
//! client sends reaches a Redis key unchecked. Never a key: projects and client labels only.

use keyturn_core::resources::{check_ownership, valid_client, valid_project};
use keyturn_core::{Ownership, ResourceKind, ResourceMap, ResourceName};

use super::*;

impl RedisLedger {
    /// The keys a demand pinned to a resource's project may use, in ring order: those of the
    /// pinned key's project (none for a key this ledger does not know).
    pub(super) fn pinned_order(&self, demand: Demand) -> Vec<usize> {
        let Some(project) = demand
            .project_of
            .and_then(|k| self.candidates.get(k.index()))
            .map(|c| c.1.as_str())
        else {
            return Vec::new();
        };
        (0..self.candidates.len())
            .filter(|&k| self.candidates[k].1 == project)
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
    conn: Conn,
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

    fn client_key(&self, name: &ResourceName) -> String {
        format!("{}rc:{name}", self.prefix)
    }

    /// The owner and client keys of each name, read in one `MGET` (one slot: the hash tag).
    async fn read(&self, names: &[ResourceName]) -> Result<Vec<Option<Ownership>>, LedgerError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for n in names {
            cmd.arg(self.owner_key(n)).arg(self.client_key(n));
        }
        let mut conn = self.conn.clone();
        let got: Vec<Option<String>> = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| self.fail(&e))?;
        Ok(got
            .chunks(2)
            .map(|pair| {
                // What another writer put there is checked like a state file's contents.
                let project = pair
                    .first()
                    .cloned()
                    .flatten()
                    .filter(|p| valid_project(p))?;
                let client = pair.get(1).cloned().flatten().filter(|c| valid_client(c));
                Some(Ownership { project, client })
            })
            .collect())
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
        owner: &Ownership,
        expires_ms: i64,
    ) -> Result<(), LedgerError> {
        check_ownership(owner)?;
        if expires_ms <= self.clock.now_ms() {
            return Ok(());
        }
        let project = owner.project.as_str();
        let mut conn = self.conn.clone();
        let projects = self.projects_key(name.kind());
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.owner_key(name))
            .arg(project)
            .arg("PXAT")
            .arg(expires_ms)
            .ignore();
        match owner.client.as_deref() {
            Some(client) => pipe
                .cmd("SET")
                .arg(self.client_key(name))
                .arg(client)
                .arg("PXAT")
                .arg(expires_ms)
                .ignore(),
            // A client already recorded stays, expiring with the owner.
            None => pipe
                .cmd("PEXPIREAT")
                .arg(self.client_key(name))
                .arg(expires_ms)
                .ignore(),
        };
        let _: () = pipe
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

    async fn owner(&self, name: &ResourceName) -> Result<Option<Ownership>, LedgerError> {
        Ok(self
            .read(std::slice::from_ref(name))
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    async fn owners(&self, names: &[ResourceName]) -> Result<Vec<Option<Ownership>>, LedgerError> {
        self.read(names).await
    }

    async fn forget(&self, name: &ResourceName) -> Result<(), LedgerError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .del(&[self.owner_key(name), self.client_key(name)])
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
