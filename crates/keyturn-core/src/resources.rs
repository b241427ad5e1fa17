//! Which project owns a resource: a file (Files API), a cached content, a batch. Each can only be
//! used with a key of the project that created it, so a pool of keys across projects must send
//! every request that names one with a key of its owner ([`crate::Demand::within_project_of`]).
//!
//! [`ResourceMap`] is the seam; [`MemoryResources`] the one-process map. keyturn-store keeps the
//! same map in the state folder and in Redis. Only names, project ids and the label of the proxy
//! client that created each resource are kept: never a key, never a token.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::LedgerError;

/// The kinds of resource a project owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResourceKind {
    /// `files/{id}`: expires 48 h after upload.
    Files,
    /// `cachedContents/{id}`: expires at its `expireTime`.
    CachedContents,
    /// `batches/{id}`: kept until deleted (and for [`BATCH_RETENTION`] at most).
    Batches,
}

impl ResourceKind {
    /// The collection's name in paths.
    pub const fn collection(self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::CachedContents => "cachedContents",
            Self::Batches => "batches",
        }
    }

    /// All kinds.
    pub const ALL: [Self; 3] = [Self::Files, Self::CachedContents, Self::Batches];
}

/// How long a file lives on Gemini after its upload.
pub const FILE_LIFETIME_MS: i64 = 48 * 3600 * 1000;

/// How long the map keeps a batch it was not told to forget: Gemini keeps a batch job's
/// results for 48 h after it ends and a job runs at most 48 h, so a week is ample.
pub const BATCH_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Longest resource id accepted (Gemini's are about 12 to 40 characters).
pub const MAX_RESOURCE_ID_LEN: usize = 128;

/// A resource's name, `{collection}/{id}`, validated: the id is 1 to 128 of `[A-Za-z0-9_-]`, so
/// no `/`, `.`, `%`, `?`, `#` or `:` can reach an upstream path or a storage key through it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceName {
    kind_index: u8,
    id: String,
}

/// A resource name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{name}' is not a resource name: expected files/ID, cachedContents/ID or batches/ID with an ID of 1 to 128 letters, digits, '-' or '_'"
)]
pub struct InvalidResource {
    /// The name as given (control characters escaped, cut to 200 characters).
    pub name: String,
}

impl ResourceName {
    /// Parses `files/abc`, `cachedContents/abc`, `batches/abc`.
    pub fn parse(name: &str) -> Result<Self, InvalidResource> {
        let bad = || InvalidResource {
            name: name
                .chars()
                .take(200)
                .collect::<String>()
                .escape_debug()
                .to_string(),
        };
        let (collection, id) = name.split_once('/').ok_or_else(bad)?;
        let kind = ResourceKind::ALL
            .into_iter()
            .position(|k| k.collection() == collection)
            .ok_or_else(bad)?;
        if !valid_id(id) {
            return Err(bad());
        }
        Ok(Self {
            kind_index: kind as u8,
            id: id.to_owned(),
        })
    }

    /// A name from its kind and id.
    pub fn new(kind: ResourceKind, id: &str) -> Result<Self, InvalidResource> {
        Self::parse(&format!("{}/{id}", kind.collection()))
    }

    /// Its kind.
    pub fn kind(&self) -> ResourceKind {
        ResourceKind::ALL[usize::from(self.kind_index)]
    }

    /// Its id (validated).
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Display for ResourceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind().collection(), self.id)
    }
}

impl TryFrom<String> for ResourceName {
    type Error = InvalidResource;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ResourceName> for String {
    fn from(n: ResourceName) -> Self {
        n.to_string()
    }
}

/// Whether `id` can be a resource id: 1 to 128 of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RESOURCE_ID_LEN
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
}

/// Whether `project` can be kept as an owner: what a key ring holds (1 to 256 printable
/// characters without spaces), so a hostile state file cannot smuggle anything else in.
pub fn valid_project(project: &str) -> bool {
    !project.is_empty()
        && project.len() <= 256
        && project
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace())
}

/// Whether `label` can be kept as a resource's client: what a `[[serve.tokens]]` label may be
/// (not blank, no control character, at most 128 characters), so a hostile state file or Redis
/// value cannot smuggle anything else in.
pub fn valid_client(label: &str) -> bool {
    !label.trim().is_empty() && !label.chars().any(char::is_control) && label.chars().count() <= 128
}

/// [`valid_project`] as every [`ResourceMap::record`] checks it: an error naming the project.
pub fn check_owner(project: &str) -> Result<(), LedgerError> {
    if valid_project(project) {
        Ok(())
    } else {
        Err(LedgerError::UnknownTarget(format!(
            "project '{}' cannot own a resource",
            project.escape_debug()
        )))
    }
}

/// [`check_owner`], and [`valid_client`] for the client: what every [`ResourceMap::record`]
/// checks.
pub fn check_ownership(owner: &Ownership) -> Result<(), LedgerError> {
    check_owner(&owner.project)?;
    match owner.client.as_deref() {
        Some(c) if !valid_client(c) => Err(LedgerError::UnknownTarget(format!(
            "client '{}' cannot own a resource",
            c.escape_debug()
        ))),
        _ => Ok(()),
    }
}

/// Who owns a live resource: the project whose key created it, and the proxy client (the label
/// of its `[[serve.tokens]]` token) that created it, when one did. A resource with no client —
/// created before clients were recorded, without client tokens, or found upstream and never
/// seen created — belongs to every client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ownership {
    /// The project id, as the key ring names it.
    pub project: String,
    /// The creating client's token label.
    pub client: Option<String>,
}

impl Ownership {
    /// A resource of `project` created by `client`.
    pub fn new(project: impl Into<String>, client: Option<&str>) -> Self {
        Self {
            project: project.into(),
            client: client.map(str::to_owned),
        }
    }
}

/// Who owns a resource, and until when the map keeps it (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The project id, as the key ring names it.
    pub project: String,
    /// The proxy client that created it ([`Ownership::client`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// When the resource expires on Gemini (the map forgets it then).
    pub expires_ms: i64,
}

impl Owner {
    /// Its project and client.
    pub fn ownership(&self) -> Ownership {
        Ownership {
            project: self.project.clone(),
            client: self.client.clone(),
        }
    }
}

/// Most resources a map keeps; past it, the ones closest to expiring go first.
pub const MAX_RESOURCES: usize = 100_000;

/// Resource → owning project and client, shared by every process that shares the ledger.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ResourceMap: Send + Sync + std::fmt::Debug {
    /// Records (or moves the expiry of) a resource's owner. An owner without a client leaves a
    /// client already recorded in place: what is learned later from an answer about the
    /// resource never takes it away from the client that created it.
    async fn record(
        &self,
        name: &ResourceName,
        owner: &Ownership,
        expires_ms: i64,
    ) -> Result<(), LedgerError>;

    /// The owner of a resource not yet expired, if known.
    async fn owner(&self, name: &ResourceName) -> Result<Option<Ownership>, LedgerError>;

    /// The owners of several resources, in order (for filtering a list page: one read).
    async fn owners(&self, names: &[ResourceName]) -> Result<Vec<Option<Ownership>>, LedgerError>;

    /// Forgets a resource (deleted).
    async fn forget(&self, name: &ResourceName) -> Result<(), LedgerError>;

    /// The projects that own at least one live resource of `kind`, sorted.
    async fn projects(&self, kind: ResourceKind) -> Result<Vec<String>, LedgerError>;
}

/// The map's contents, as the file backend persists them and the memory map holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceTable {
    entries: HashMap<ResourceName, Owner>,
}

impl ResourceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an owner; drops the expired, and past [`MAX_RESOURCES`] the soonest to expire.
    /// Without a client, a client already recorded for the resource stays.
    pub fn record(&mut self, name: &ResourceName, owner: &Ownership, expires_ms: i64, now_ms: i64) {
        if !self.entries.contains_key(name) && self.entries.len() >= MAX_RESOURCES {
            self.prune(now_ms);
        }
        if !self.entries.contains_key(name) && self.entries.len() >= MAX_RESOURCES {
            let soonest = self
                .entries
                .iter()
                .min_by_key(|(_, o)| o.expires_ms)
                .map(|(n, _)| n.clone());
            if let Some(n) = soonest {
                self.entries.remove(&n);
            }
        }
        let client = owner.client.clone().or_else(|| {
            self.entries
                .get(name)
                .filter(|o| o.expires_ms > now_ms)
                .and_then(|o| o.client.clone())
        });
        self.entries.insert(
            name.clone(),
            Owner {
                project: owner.project.clone(),
                client,
                expires_ms,
            },
        );
    }

    /// The owner of a live resource.
    pub fn owner(&self, name: &ResourceName, now_ms: i64) -> Option<&Owner> {
        self.entries.get(name).filter(|o| o.expires_ms > now_ms)
    }

    /// Forgets a resource; whether it was there.
    pub fn forget(&mut self, name: &ResourceName) -> bool {
        self.entries.remove(name).is_some()
    }

    /// Drops what has expired.
    pub fn prune(&mut self, now_ms: i64) {
        self.entries.retain(|_, o| o.expires_ms > now_ms);
    }

    /// Projects owning a live resource of `kind`, sorted and once each.
    pub fn projects(&self, kind: ResourceKind, now_ms: i64) -> Vec<String> {
        let mut p: Vec<String> = self
            .entries
            .iter()
            .filter(|(n, o)| n.kind() == kind && o.expires_ms > now_ms)
            .map(|(_, o)| o.project.clone())
            .collect();
        p.sort();
        p.dedup();
        p
    }

    /// Every entry, sorted by name (for persistence).
    pub fn entries(&self) -> Vec<(&ResourceName, &Owner)> {
        let mut v: Vec<_> = self.entries.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A [`ResourceMap`] in one process's memory, on the pool's clock.
#[derive(Debug)]
pub struct MemoryResources {
    table: parking_lot::Mutex<ResourceTable>,
    clock: std::sync::Arc<dyn crate::Clock>,
}

impl MemoryResources {
    /// An empty map.
    pub fn new(clock: std::sync::Arc<dyn crate::Clock>) -> Self {
        Self {
            table: parking_lot::Mutex::default(),
            clock,
        }
    }
}

#[async_trait]
impl ResourceMap for MemoryResources {
    async fn record(
        &self,
        name: &ResourceName,
        owner: &Ownership,
        expires_ms: i64,
    ) -> Result<(), LedgerError> {
        check_ownership(owner)?;
        let now = self.clock.now_ms();
        self.table.lock().record(name, owner, expires_ms, now);
        Ok(())
    }

    async fn owner(&self, name: &ResourceName) -> Result<Option<Ownership>, LedgerError> {
        let now = self.clock.now_ms();
        Ok(self.table.lock().owner(name, now).map(Owner::ownership))
    }

    async fn owners(&self, names: &[ResourceName]) -> Result<Vec<Option<Ownership>>, LedgerError> {
        let now = self.clock.now_ms();
        let table = self.table.lock();
        Ok(names
            .iter()
            .map(|n| table.owner(n, now).map(Owner::ownership))
            .collect())
    }

    async fn forget(&self, name: &ResourceName) -> Result<(), LedgerError> {
        self.table.lock().forget(name);
        Ok(())
    }

    async fn projects(&self, kind: ResourceKind) -> Result<Vec<String>, LedgerError> {
        let now = self.clock.now_ms();
        Ok(self.table.lock().projects(kind, now))
    }
}

fn _object_safe(_: Box<dyn ResourceMap>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_before_anything_uses_them() {
        let n = ResourceName::parse("files/abc-123").unwrap();
        assert_eq!(n.kind(), ResourceKind::Files);
        assert_eq!(n.to_string(), "files/abc-123");
        assert_eq!(
            ResourceName::parse("cachedContents/x_1").unwrap().kind(),
            ResourceKind::CachedContents
        );
        for bad in [
            "files/",
            "files/../x",
            "files/%2e%2e",
            "files/a?b",
            "files/a#b",
            "files/a/b",
            "files/a%2Fb",
            "files/a:b",
            "files/a.b",
            "models/x",
            "files",
            "Files/abc",
            &format!("files/{}", "a".repeat(129)),
        ] {
            assert!(ResourceName::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[tokio::test]
    async fn owners_expire_and_are_forgotten() {
        let clock = std::sync::Arc::new(crate::ManualClock::at_ms(1_000));
        let map = MemoryResources::new(clock.clone());
        let f = ResourceName::parse("files/a").unwrap();
        map.record(&f, &Ownership::new("p1", None), 2_000)
            .await
            .unwrap();
        assert_eq!(
            map.owner(&f).await.unwrap(),
            Some(Ownership::new("p1", None))
        );
        assert_eq!(
            map.projects(ResourceKind::Files).await.unwrap(),
            vec!["p1".to_owned()]
        );
        assert!(
            map.projects(ResourceKind::Batches)
                .await
                .unwrap()
                .is_empty()
        );
        clock.advance(std::time::Duration::from_millis(1_000));
        assert_eq!(map.owner(&f).await.unwrap(), None);
        map.record(&f, &Ownership::new("p2", None), 10_000)
            .await
            .unwrap();
        map.forget(&f).await.unwrap();
        assert_eq!(map.owner(&f).await.unwrap(), None);
    }

    #[tokio::test]
    async fn only_a_project_a_key_ring_could_hold_owns_a_resource() {
        let map = MemoryResources::new(std::sync::Arc::new(crate::ManualClock::at_ms(1_000)));
        let f = ResourceName::parse("files/a").unwrap();
        for bad in ["", "p 1", "p\n1", &"p".repeat(257)] {
            let owner = Ownership::new(bad, None);
            assert!(map.record(&f, &owner, 2_000).await.is_err(), "{bad:?}");
        }
        for bad in ["", "  ", "a\nb", "a\u{7f}", &"c".repeat(129)] {
            let owner = Ownership::new("p", Some(bad));
            assert!(map.record(&f, &owner, 2_000).await.is_err(), "{bad:?}");
        }
        assert_eq!(map.owner(&f).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_creating_client_is_kept_and_never_taken_away_by_a_later_record() {
        let clock = std::sync::Arc::new(crate::ManualClock::at_ms(1_000));
        let map = MemoryResources::new(clock.clone());
        let f = ResourceName::parse("files/a").unwrap();
        let g = ResourceName::parse("files/g").unwrap();
        let alice = Ownership::new("p1", Some("alice team"));
        map.record(&f, &alice, 2_000).await.unwrap();
        map.record(&g, &Ownership::new("p1", None), 2_000)
            .await
            .unwrap();
        assert_eq!(map.owner(&f).await.unwrap(), Some(alice.clone()));
        // Learned again from an answer (no client): the expiry moves, the client stays.
        map.record(&f, &Ownership::new("p1", None), 5_000)
            .await
            .unwrap();
        assert_eq!(
            map.owners(&[g.clone(), f.clone()]).await.unwrap(),
            vec![Some(Ownership::new("p1", None)), Some(alice.clone())]
        );
        clock.advance(std::time::Duration::from_millis(2_000));
        assert_eq!(map.owner(&f).await.unwrap(), Some(alice));
        assert_eq!(map.owners(&[g]).await.unwrap(), vec![None]);
        // An expired record's client is not carried over to a new one.
        clock.advance(std::time::Duration::from_millis(5_000));
        map.record(&f, &Ownership::new("p1", None), 9_000)
            .await
            .unwrap();
        assert_eq!(
            map.owner(&f).await.unwrap(),
            Some(Ownership::new("p1", None))
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = ResourceTable::new();
        for i in 0..MAX_RESOURCES + 5 {
            let n = ResourceName::new(ResourceKind::Files, &format!("f{i}")).unwrap();
            t.record(&n, &Ownership::new("p", None), 1_000 + i as i64, 0);
        }
        assert_eq!(t.len(), MAX_RESOURCES);
        let first = ResourceName::parse("files/f0").unwrap();
        assert!(t.owner(&first, 0).is_none());
    }

    #[tokio::test]
    async fn a_pinned_demand_goes_only_to_its_project_and_waits_for_it() {
        use crate::{
            AcquireError, ApiKey, Demand, InMemoryLedger, KeyId, KeyRing, KeySpec, LedgerConfig,
            LimitOverride, LimitTable, ManualClock, Policy, QuotaLedger,
        };
        let mut limits = LimitTable::builtin();
        let one = LimitOverride {
            rpm: Some(1),
            ..LimitOverride::default()
        };
        limits.set_model("gemini-2.5-flash", one).unwrap();
        let keys = KeyRing::new(vec![
            KeySpec::new(ApiKey::new("AIzaSyTEST-pin-a1").unwrap()).project("a"),
            KeySpec::new(ApiKey::new("AIzaSyTEST-pin-b1").unwrap()).project("b"),
            KeySpec::new(ApiKey::new("AIzaSyTEST-pin-b2").unwrap()).project("b"),
        ])
        .unwrap();
        for policy in [Policy::RoundRobin, Policy::LeastLoaded, Policy::Weighted] {
            let cfg = LedgerConfig {
                limits: limits.clone(),
                max_wait: std::time::Duration::ZERO,
                policy,
                ..LedgerConfig::default()
            };
            let clock = std::sync::Arc::new(ManualClock::at_ms(1_780_340_400_000));
            let ledger = InMemoryLedger::new(std::sync::Arc::new(keys.clone()), cfg, clock);
            let in_b = Demand::tokens(1).within_project_of(KeyId(2));
            let lease = ledger.acquire("gemini-2.5-flash", in_b).await.unwrap();
            assert!(
                lease.key() == KeyId(1) || lease.key() == KeyId(2),
                "{policy:?}"
            );
            ledger
                .settle(lease, crate::Outcome::success(1))
                .await
                .unwrap();
            // Project b's one request a minute is spent; a has room, and is not used.
            let refused = ledger.acquire("gemini-2.5-flash", in_b).await.unwrap_err();
            assert!(
                matches!(refused, AcquireError::Exhausted { .. }),
                "{policy:?}: {refused:?}"
            );
            let free = ledger
                .acquire("gemini-2.5-flash", Demand::tokens(1))
                .await
                .unwrap();
            assert_eq!(free.key(), KeyId(0), "{policy:?}");
            ledger
                .settle(free, crate::Outcome::success(1))
                .await
                .unwrap();
        }
    }
}
