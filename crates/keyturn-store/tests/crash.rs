//! A crash at any instant leaves the old snapshot or the new one, never a torn one: a child
//! process writes snapshots in a loop and is killed with SIGKILL at random moments, hundreds of
//! times; after each kill the file parses and is exactly one of the versions written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use keyturn_core::snapshot::{KeySnapshot, ScopeSnapshot};
use keyturn_core::{ApiKey, SCHEMA_VERSION, Snapshot, StateStore};
use keyturn_store::FileStore;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::Rng;

const CHILD_ENV: &str = "KEYTURN_CRASH_CHILD_DIR";

/// Version `i` of the state: every field derived from `i`, with a body long enough that a torn
/// write would be visible.
fn version(i: u64) -> Snapshot {
    let fp = ApiKey::new(format!("made-up-crash-{i}"))
        .unwrap()
        .fingerprint();
    Snapshot {
        schema: SCHEMA_VERSION,
        taken_at_ms: i as i64,
        keys: vec![KeySnapshot {
            fingerprint: fp,
            label: format!("k{i}"),
            project: "p".into(),
            disabled: None,
            breaker: Default::default(),
        }],
        scopes: (0..(20 + i % 50))
            .map(|j| ScopeSnapshot {
                project: format!("project-{j}"),
                model: "gemini-2.5-flash".into(),
                window: vec![(i as i64, j, i * j)],
                day_start_ms: i as i64,
                day_count: i + j,
                day_tokens: 0,
                day_served: 0,
                day_refused: 0,
                cooldown_until_ms: 0,
                exhausted_until_ms: 0,
                learned: Default::default(),
                learned_until_ms: 0,
                tier: None,
            })
            .collect(),
        usage: Vec::new(),
        notices: Vec::new(),
        projects: Vec::new(),
    }
}

/// Not a test: the body of each child process of `sigkill_never_tears_the_state_file`, which
/// runs it with `--ignored` and its environment set. Without that environment it does nothing.
#[test]
#[ignore = "child process of sigkill_never_tears_the_state_file"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = FileStore::open(&dir).unwrap();
        let start = store
            .load()
            .await
            .unwrap()
            .map_or(0, |s| s.taken_at_ms as u64 + 1);
        for i in start.. {
            store.save(&version(i)).await.unwrap();
        }
    });
}

#[test]
fn sigkill_never_tears_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut seen_versions = 0;
    for round in 0..200 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_writer", "--ignored", "--nocapture"])
            .arg("--test-threads=1")
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.random_range(2_000..25_000)));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
        match FileStore::read(&dir.path().join("state.json")) {
            Ok(Some(file)) => {
                let i = file.snapshot.taken_at_ms as u64;
                assert_eq!(
                    file.snapshot,
                    version(i),
                    "round {round}: not a written version"
                );
                seen_versions += 1;
            }
            Ok(None) => {} // killed before its first write
            Err(e) => panic!("round {round}: {e}"),
        }
        // No temporary files are left to pile up beyond the one a kill can strand.
        let strays = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert!(strays <= round + 1);
    }
    assert!(
        seen_versions > 150,
        "the writer got to write: {seen_versions}"
    );
}
