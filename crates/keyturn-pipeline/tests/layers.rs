//! The binary goes through its layers: the rotation state (its file, its lock, a ledger over it)
//! is reached only through keyturn-services, never built or opened by the pipeline itself, and
//! the one real clock is built only by keyturn-services (clippy.toml bans naming it; this checks
//! the source the same way, for a reader who runs only the tests).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn the_pipeline_reaches_the_rotation_state_only_through_keyturn_services() {
    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() >= 8, "{files:?}");
    // What only keyturn-store and keyturn-services may name: the state file and its lock, the
    // ledgers over them, and the real clock.
    let owned = [
        "FileStore",
        "RedisLedger",
        "InMemoryLedger",
        "STATE_FILE",
        "LOCK_FILE",
        "BACKUP_FILE",
        "state.json",
        "SystemClock",
    ];
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for name in owned {
                if line.contains(name) {
                    found.push(format!("{}:{}: {name}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "layers skipped:\n{}", found.join("\n"));
}
