//! Resource affinity in the state folder: `resources.json` beside `state.json`, naming the
//! project that owns each file, cached content and batch the proxy saw created, with its expiry
//! and, when a proxy client created it, that client's token label (`client`).
//!
//! - Schema 2 added `client`; a file with no client in it is still written as schema 1, so a
//!   keyturn from before reads it, and one from before meets a schema-2 file with a clear
//!   "newer schema" refusal rather than dropping the clients and sharing every resource.
//! - Written atomically (temp file, fsync, rename, fsync the folder), mode 0600, on each change:
//!   changes are creations and deletions, a few a minute at most, not one per request.
//! - Bounded: at most [`MAX_RESOURCES`] entries (the soonest to expire go first) and
//!   [`MAX_FILE_BYTES`] on disk; a larger, malformed or hostile file (a name that is no resource
//!   name, a project that is no project id) is refused with an error naming the file, never
//!   read in part and never overwritten.
//! - The folder's lock belongs to the process that opened the state (`FileStore::open`): one
//!   process per folder, as for the state itself.
//! - Only names, project ids and client labels: never a key, never a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use keyturn_core::resources::{MAX_RESOURCES, check_ownership, valid_client, valid_project};
use keyturn_core::{
    BackendError, Clock, LedgerError, Owner, Ownership, ResourceKind, ResourceMap, ResourceName,
    ResourceTable, StoreError,
};
use serde::{Deserialize, Serialize};

/// The file's name in the state folder.
pub const RESOURCES_FILE: &str = "resources.json";

/// Largest `resources.json` read: ample for [`MAX_RESOURCES`] entries.
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// Schema of `resources.json`: 2 since entries name their client (written as 1 while none does).
pub const RESOURCES_SCHEMA: u32 = 2;

/// The schema a file is written with when no entry names a client: what keyturn wrote before.
const SCHEMA_WITHOUT_CLIENTS: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourcesFile {
    schema: u32,
    resources: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    name: ResourceName,
    project: String,
    /// The proxy client that created it; absent in files from before schema 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    expires_ms: i64,
}

/// A [`ResourceMap`] kept in the state folder.
#[derive(Debug)]
pub struct FileResources {
    path: PathBuf,
    table: tokio::sync::Mutex<ResourceTable>,
    clock: Arc<dyn Clock>,
}

fn corrupt(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

impl FileResources {
    /// Opens `dir/resources.json` (an absent file is an empty map). A file that is too large,
    /// malformed, or names anything but resources and projects is an error.
    pub fn open(dir: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let path = dir.as_ref().join(RESOURCES_FILE);
        let table = Self::read(&path, clock.now_ms())?;
        Ok(Self {
            path,
            table: tokio::sync::Mutex::new(table),
            clock,
        })
    }

    /// Where the map lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(path: &Path, now_ms: i64) -> Result<ResourceTable, StoreError> {
        use std::io::Read;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ResourceTable::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut text = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|source| StoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(corrupt(
                path,
                format!("larger than {MAX_FILE_BYTES} bytes; no resource map is this large"),
            ));
        }
        let f: ResourcesFile = serde_json::from_slice(&text)
            .map_err(|e| corrupt(path, format!("not a resource map: {e}")))?;
        if f.schema > RESOURCES_SCHEMA {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found: f.schema,
                supported: RESOURCES_SCHEMA,
            });
        }
        if f.resources.len() > MAX_RESOURCES {
            return Err(corrupt(
                path,
                format!("more than {MAX_RESOURCES} resources"),
            ));
        }
        let mut table = ResourceTable::new();
        for e in f.resources {
            if !valid_project(&e.project) {
                return Err(corrupt(path, format!("{} names no valid project", e.name)));
            }
            if e.client.as_deref().is_some_and(|c| !valid_client(c)) {
                return Err(corrupt(path, format!("{} names no valid client", e.name)));
            }
            if e.expires_ms > now_ms {
                let owner = Ownership {
                    project: e.project,
                    client: e.client,
                };
                table.record(&e.name, &owner, e.expires_ms, now_ms);
            }
        }
        Ok(table)
    }

    async fn write(&self, table: &ResourceTable) -> Result<(), LedgerError> {
        let resources: Vec<Entry> = table
            .entries()
            .into_iter()
            .map(|(n, o)| Entry {
                name: n.clone(),
                project: o.project.clone(),
                client: o.client.clone(),
                expires_ms: o.expires_ms,
            })
            .collect();
        let schema = if resources.iter().any(|e| e.client.is_some()) {
            RESOURCES_SCHEMA
        } else {
            SCHEMA_WITHOUT_CLIENTS
        };
        let file = ResourcesFile { schema, resources };
        let fail = |e: String| LedgerError::Backend(BackendError::new(e));
        let bytes = serde_json::to_vec(&file).map_err(|e| fail(e.to_string()))?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::write_atomic(&path, &bytes, 0o600))
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))
    }
}

#[async_trait]
impl ResourceMap for FileResources {
    async fn record(
        &self,
        name: &ResourceName,
        owner: &Ownership,
        expires_ms: i64,
    ) -> Result<(), LedgerError> {
        check_ownership(owner)?;
        let now = self.clock.now_ms();
        let mut table = self.table.lock().await;
        table.prune(now);
        table.record(name, owner, expires_ms, now);
        self.write(&table).await
    }

    async fn owner(&self, name: &ResourceName) -> Result<Option<Ownership>, LedgerError> {
        let now = self.clock.now_ms();
        Ok(self
            .table
            .lock()
            .await
            .owner(name, now)
            .map(Owner::ownership))
    }

    async fn owners(&self, names: &[ResourceName]) -> Result<Vec<Option<Ownership>>, LedgerError> {
        let now = self.clock.now_ms();
        let table = self.table.lock().await;
        Ok(names
            .iter()
            .map(|n| table.owner(n, now).map(Owner::ownership))
            .collect())
    }

    async fn forget(&self, name: &ResourceName) -> Result<(), LedgerError> {
        let mut table = self.table.lock().await;
        if table.forget(name) {
            self.write(&table).await?;
        }
        Ok(())
    }

    async fn projects(&self, kind: ResourceKind) -> Result<Vec<String>, LedgerError> {
        let now = self.clock.now_ms();
        Ok(self.table.lock().await.projects(kind, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyturn_core::ManualClock;

    fn name(s: &str) -> ResourceName {
        ResourceName::parse(s).unwrap()
    }

    #[tokio::test]
    async fn owners_survive_a_restart_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_ms(1_000_000));
        let map = FileResources::open(dir.path(), clock.clone()).unwrap();
        let p1 = Ownership::new("p1", None);
        let p2 = Ownership::new("p2", None);
        map.record(&name("files/a"), &p1, 2_000_000).await.unwrap();
        map.record(&name("cachedContents/c"), &p2, 1_500_000)
            .await
            .unwrap();
        map.record(&name("batches/b"), &p2, 9_000_000)
            .await
            .unwrap();
        map.forget(&name("batches/b")).await.unwrap();
        let text = std::fs::read_to_string(map.path()).unwrap();
        assert!(text.contains("files/a") && !text.contains("batches/b"));
        // No client anywhere: written as before, readable by a keyturn from before.
        assert!(
            text.starts_with(r#"{"schema":1,"#) && !text.contains("client"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(map.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(map);

        let again = FileResources::open(dir.path(), clock.clone()).unwrap();
        assert_eq!(again.owner(&name("files/a")).await.unwrap(), Some(p1));
        assert_eq!(again.owner(&name("batches/b")).await.unwrap(), None);
        clock.advance(std::time::Duration::from_millis(600_000));
        assert_eq!(again.owner(&name("cachedContents/c")).await.unwrap(), None);
        assert_eq!(
            again.projects(ResourceKind::Files).await.unwrap(),
            vec!["p1".to_owned()]
        );
    }

    #[test]
    fn hostile_files_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_ms(0));
        let path = dir.path().join(RESOURCES_FILE);
        for bad in [
            "not json",
            r#"{"schema":1,"resources":[{"name":"files/../x","project":"p","expiresMs":9}]}"#,
            r#"{"schema":1,"resources":[{"name":"files/a%2Fb","project":"p","expiresMs":9}]}"#,
            r#"{"schema":1,"resources":[{"name":"files/a","project":"p q\n","expiresMs":9}]}"#,
            r#"{"schema":1,"resources":[{"name":"files/a","project":"","expiresMs":9}]}"#,
            r#"{"schema":1,"resources":[],"key":"AIzaSyTEST"}"#,
            r#"{"schema":1,"resources":[{"name":"files/a","project":"p","expiresMs":"soon"}]}"#,
            r#"{"schema":2,"resources":[{"name":"files/a","project":"p","client":"","expiresMs":9}]}"#,
            r#"{"schema":2,"resources":[{"name":"files/a","project":"p","client":"a\u0007","expiresMs":9}]}"#,
            r#"{"schema":2,"resources":[{"name":"files/a","project":"p","client":7,"expiresMs":9}]}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = FileResources::open(dir.path(), clock.clone()).unwrap_err();
            assert!(matches!(e, StoreError::Corrupt { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains(RESOURCES_FILE));
            assert_eq!(std::fs::read_to_string(&path).unwrap(), bad);
        }
        std::fs::write(&path, r#"{"schema":99,"resources":[]}"#).unwrap();
        assert!(matches!(
            FileResources::open(dir.path(), clock.clone()),
            Err(StoreError::NewerSchema { .. })
        ));
        let big = vec![b' '; MAX_FILE_BYTES as usize + 1];
        std::fs::write(&path, big).unwrap();
        assert!(matches!(
            FileResources::open(dir.path(), clock),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn clients_round_trip_and_files_from_before_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_ms(1_000));
        let path = dir.path().join(RESOURCES_FILE);
        // Written by a keyturn from before clients were recorded.
        std::fs::write(
            &path,
            r#"{"schema":1,"resources":[{"name":"files/old","project":"p1","expiresMs":900000}]}"#,
        )
        .unwrap();
        let map = FileResources::open(dir.path(), clock.clone()).unwrap();
        assert_eq!(
            map.owner(&name("files/old")).await.unwrap(),
            Some(Ownership::new("p1", None))
        );
        let alice = Ownership::new("p2", Some("alice team"));
        map.record(&name("cachedContents/c"), &alice, 800_000)
            .await
            .unwrap();
        // Learned again without a client: the client stays, on disk too.
        map.record(
            &name("cachedContents/c"),
            &Ownership::new("p2", None),
            850_000,
        )
        .await
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(r#"{"schema":2,"#) && text.contains(r#""client":"alice team""#),
            "{text}"
        );
        drop(map);
        let again = FileResources::open(dir.path(), clock).unwrap();
        assert_eq!(
            again
                .owners(&[
                    name("files/old"),
                    name("cachedContents/c"),
                    name("batches/x")
                ])
                .await
                .unwrap(),
            vec![Some(Ownership::new("p1", None)), Some(alice), None]
        );
    }
}
